//! Shared support for the e2e suite (`tests/e2e/`) and the benchmarks (`benches/`): the lab's
//! hypervisor hosts, BMC emulators, a test namespace on a cluster with Node objects and
//! `ferry controller` processes, and the manifests, waits and observations the scenarios share.
//! Include it with `#[path = "../support/mod.rs"] mod support;` (from `tests/e2e/main.rs`) or
//! `#[path = "../tests/support/mod.rs"] mod support;` (from a bench). Tests that need only the
//! lab or a BMC include `lab.rs` or `bmc.rs` alone.
#![allow(dead_code)]

pub mod bmc;
pub mod browser;
pub mod chart_rbac;
pub mod cluster;
pub mod consoles;
pub mod dashboard;
pub mod fake_pool;
pub mod ha;
pub mod hosts;
pub mod http_server;
pub mod lab;
pub mod migration;
pub mod netns;
pub mod objects;
pub mod openssl;
pub mod proxy;
