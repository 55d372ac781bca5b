//! Controller-level tests: each controller's reconcile against in-memory hosts
//! (`hypervisor::fake`, behind the same `Connector` as libvirt) and a mocked API server that
//! records every request. The hypervisor's own behaviour is tested against real libvirt
//! elsewhere; these tests are about what the controllers do with what the hosts report.

mod adoption;
mod balancing;
mod classes;
#[path = "../support/fake_pool.rs"]
mod fake_pool;
mod ha;
mod host_pool;
mod migration;
mod monitoring;
mod power;
mod release;
mod steady;
mod support;
mod virtual_machine;
