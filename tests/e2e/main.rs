//! End-to-end: the real `ferry controller` process against the cluster `KUBECONFIG` names and
//! real libvirt lab hosts running real QEMU guests, one module per feature. Runs unchanged
//! against a real API server (`e2e/run.sh` starts one when it can, else the in-repo stand-in;
//! see e2e/README.md). On a server with RBAC the controller runs as the Helm chart's
//! ServiceAccount with the chart's RBAC (`support::cluster`). Every wait is bounded; labs,
//! processes and cluster objects are removed on drop. Shared helpers live in `tests/support/`,
//! which the benchmarks use too.

#[path = "../support/mod.rs"]
mod support;

mod adoption_candidates;
mod balancing;
mod cloud_init;
mod consoles;
mod credentials;
mod dashboard;
mod debian;
mod ha_adoption;
mod ha_fencing;
mod ha_not_ready;
mod ha_safety;
mod images;
mod leadership;
mod lifecycle;
mod migration;
mod pools;
mod power;
mod split_brain;
mod tenancy;
mod vm_monitoring;
