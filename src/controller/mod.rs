//! Controllers: one module per resource (fetch → plan → act → report), the modules they share,
//! and the [`Context`] every reconcile receives.

pub mod balancing;
pub mod bmc;
mod class_watch;
pub mod cloud_init;
pub mod context;
pub mod credentials;
pub mod evacuation;
pub mod ha;
pub mod host_pool;
pub mod hosts;
pub mod image_import;
pub mod migration;
pub mod permissions;
pub mod power;
pub mod run;
pub mod scheduling;
pub mod status;
pub mod virtual_machine;

pub use context::{Context, HA_VERDICT_TTL, lock};

/// Field manager of every server-side apply ferry makes.
pub const FIELD_MANAGER: &str = "ferry";

/// How soon a reconcile that found the [`crate::gate::ActionGate`] closed looks again.
pub const GATE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
