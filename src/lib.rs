//! ferry: a Kubernetes operator that runs KVM virtual machines on libvirt hosts.

pub mod api;
pub mod cloud_init;
pub mod controller;
pub mod error;
pub mod fence;
pub mod http;
pub mod hypervisor;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod telemetry;

pub use error::{Error, Result};
