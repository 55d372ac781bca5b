//! ferry: a Kubernetes operator that runs KVM virtual machines on libvirt hosts.

pub mod api;
pub mod hypervisor;
