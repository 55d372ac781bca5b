//! Pure decisions: no Kubernetes client, no libvirt, no clock (callers pass `now`).

pub mod admission;
pub mod bmc;
pub mod capacity;
pub mod class;
pub mod clone;
pub mod definition;
pub mod domain;
pub mod evacuation;
pub mod host_health;
pub mod host_paths;
pub mod image_header;
pub mod import_policy;
pub mod lifecycle;
pub mod mac;
pub mod migration;
pub mod monitoring;
pub mod naming;
pub mod placement;
pub mod pool_check;
pub mod quantity;
pub mod recovery;
pub mod sighting;
pub mod uri;
pub mod uri_policy;
pub mod validate;
pub mod volume_access;
