//! Pure decisions: no Kubernetes client, no libvirt, no clock (callers pass `now`).

pub mod capacity;
pub mod class;
pub mod definition;
pub mod lifecycle;
pub mod naming;
pub mod placement;
pub mod quantity;
pub mod uri;
pub mod validate;
