//! ferry: a Kubernetes operator that runs KVM virtual machines on libvirt hosts.

pub mod access;
pub mod api;
pub mod cloud_init;
pub mod controller;
pub mod error;
pub mod fence;
pub mod gate;
pub mod http;
pub mod hypervisor;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod telemetry;
pub mod web;

pub use error::{Error, Result};

/// ferry's version and the git commit it was built from (`build.rs`), as `ferry --version`
/// prints them: `0.1.0 (git 1a2b3c4d5e6f)`, or `(git unknown)` when built without either.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("FERRY_GIT_COMMIT"),
    ")"
);

/// The git commit ferry was built from (12 hex digits), or `unknown`.
pub const GIT_COMMIT: &str = env!("FERRY_GIT_COMMIT");
