//! **A test double**: in-memory libvirt hosts behind a [`Connector`], for testing controllers
//! without libvirt. Product code never uses it; it is public so that integration tests in
//! `tests/` can.
//!
//! A [`FakeConnector`] holds any number of fake hosts, each known by its URI. Hand it to
//! [`HostConnections::with_connector`] (or take [`FakeConnector::registry`]) and every
//! connection ferry opens, shared or [dedicated](HostConnections::dedicated), reaches a fake
//! host. Each host keeps:
//!
//! - **domains** with their states, persistent definitions and the definition the running
//!   instance started with, so `DomainInfo::live` and `config` differ after a redefinition as
//!   they do on libvirt. `define_domain` refuses what the XML writer refuses
//!   ([`HypervisorError::InvalidDefinition`](crate::hypervisor::HypervisorError)) and a name
//!   taken by another UUID; `start_domain` refuses a disk a running domain writes on any host
//!   that shares the storage (an error [`is_disk_locked`](crate::hypervisor::HypervisorError::is_disk_locked)
//!   recognises); shutdown, destroy and undefine follow libvirt's rules (a transient domain
//!   disappears when it stops). Guests obey a shutdown at once unless told to ignore it.
//! - **storage**: pools and volumes (overlays, copies, uploads; an uploaded qcow2 image reports
//!   its virtual size), private to the host or shared with others
//!   ([`FakeConnector::add_host_sharing_storage`]).
//! - **guest agent reports** ([`FakeHost::set_guest_info`]).
//! - **migrations** to another fake host of the same connector: the domain moves (persistent on
//!   the destination, undefined on the source) after [`FakeHost::set_migration_time`]; while it
//!   runs, `job_progress` reports it and `abort_job` rolls it back; the destination reports
//!   the completed job with its downtime. Disk copying is not modelled: storage modes other
//!   than shared move the domain all the same.
//! - **lifecycle events**: a domain that stops, crashes, pauses, resumes or is undefined (by a
//!   call or by [`FakeHost::set_state`]) is named to the `domain_changed` of every open
//!   connection's observer, which is how a registry's
//!   [`domain_events`](HostConnections::domain_events) hears of it. Starts and definitions are
//!   not reported, as with the libvirt implementation.
//! - **faults** ([`FakeHost::inject`]): per [`Op`], once, `n` times or always — a lost
//!   connection (the connection stays lost and its observer is told), an operation failure with
//!   a libvirt error code, a locked disk, a slow call (beyond the call timeout it counts as a
//!   lost connection, as on libvirt), rejected credentials on connect. Whole-host failures:
//!   [`FakeHost::set_reachable`] (a partition: open connections are lost, domains keep running)
//!   and [`FakeHost::power_off`] (domains stop too).
//! - **a call log** ([`FakeHost::calls`]): every connection attempt and call, with the
//!   connection that made it, its target and whether it succeeded. Every call is also reported
//!   to the connection's [`CallObserver`](crate::hypervisor::CallObserver) under the same
//!   operation names as libvirt's (`"start_domain"`, ...).
//!
//! ```
//! use ferry::hypervisor::Hypervisor;
//! use ferry::hypervisor::fake::{Fault, FakeConnector, Op, Times};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let fakes = FakeConnector::new();
//! let h1 = fakes.add_host("qemu+tcp://h1/system");
//! let hosts = fakes.registry();
//!
//! h1.inject(Op::StartDomain, Fault::DiskLocked, Times::Once);
//! let hv = hosts.get(h1.uri(), &Default::default()).await.unwrap();
//! let err = hv.start_domain("00000000-0000-4000-8000-000000000001").await.unwrap_err();
//! assert!(err.is_disk_locked());
//! assert_eq!(h1.count(Op::StartDomain), 1);
//! # });
//! ```

mod connection;
mod faults;
mod host;
mod migration;
mod world;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use tokio::time::Instant;

pub use connection::FakeConnection;
pub use faults::{Call, Fault, Op, Times};
pub use host::FakeHost;

use super::connections::{ConnectOptions, Connector, HostConnections};
use super::{HvResult, Hypervisor, HypervisorError};
use crate::plan::domain::{Bus, CpuModel, DiskDef, DomainDefinition, Owner, VirtType};
use connection::ConnShared;
use world::{HostState, World};

/// A small definition for tests: domain `name` of VM `namespace/name` (UID `uuid`), 1 vCPU,
/// 128 MiB, one virtio qcow2 disk at `disk`, a serial console. Change fields with struct update
/// syntax where a test needs others.
pub fn sample_definition(namespace: &str, name: &str, uuid: &str, disk: &str) -> DomainDefinition {
    DomainDefinition {
        name: name.into(),
        uuid: uuid.into(),
        virt_type: VirtType::Qemu,
        vcpus: 1,
        cpu_model: CpuModel::HostModel,
        memory_kib: 128 * 1024,
        disks: vec![DiskDef {
            name: "root".into(),
            path: disk.into(),
            format: "qcow2".into(),
            bus: Bus::Virtio,
            read_only: false,
        }],
        nics: vec![],
        boot: None,
        serial_console: true,
        console_log: None,
        graphics: None,
        owner: Owner {
            namespace: namespace.into(),
            name: name.into(),
            uid: uuid.into(),
        },
    }
}

/// The hosts behind one connector.
#[derive(Default)]
struct Net {
    world: Mutex<World>,
    next_connection: AtomicU64,
}

impl Net {
    /// The world, also after a panic elsewhere (a test double must not cascade one test's
    /// panic into another's).
    fn lock(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A [`Connector`] whose hosts are in-memory fakes. Cheap to clone: clones share the hosts.
#[derive(Clone, Default)]
pub struct FakeConnector {
    net: Arc<Net>,
}

impl std::fmt::Debug for FakeConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<String> = self.net.lock().hosts.keys().cloned().collect();
        f.debug_struct("FakeConnector")
            .field("hosts", &hosts)
            .finish()
    }
}

impl FakeConnector {
    /// A connector without hosts: connecting anywhere fails until hosts are added.
    pub fn new() -> FakeConnector {
        FakeConnector::default()
    }

    /// A host at `uri` with storage of its own (the existing host, if `uri` has one).
    pub fn add_host(&self, uri: &str) -> FakeHost {
        let mut world = self.net.lock();
        if !world.hosts.contains_key(uri) {
            let storage = world.storage.len();
            world.storage.push(Default::default());
            world
                .hosts
                .insert(uri.to_string(), HostState::new(uri, storage));
        }
        self.handle(uri)
    }

    /// A host at `uri` that sees the same storage as `other` (shared storage: same pools and
    /// volumes, and disk locks between their domains).
    pub fn add_host_sharing_storage(&self, uri: &str, other: &FakeHost) -> FakeHost {
        let mut world = self.net.lock();
        let storage = world.host(&other.uri).storage;
        world
            .hosts
            .entry(uri.to_string())
            .or_insert_with(|| HostState::new(uri, storage))
            .storage = storage;
        self.handle(uri)
    }

    /// Make `alias` another URI of `host` (the URI another host uses to reach it, as a
    /// migration's destination URI). Connections opened by alias report the alias as their URI.
    pub fn alias(&self, alias: &str, host: &FakeHost) {
        self.net
            .lock()
            .aliases
            .insert(alias.to_string(), host.uri.clone());
    }

    /// The host at `uri` (or an alias of it).
    pub fn host(&self, uri: &str) -> Option<FakeHost> {
        let canonical = self.net.lock().resolve(uri)?;
        Some(self.handle(&canonical))
    }

    /// A registry of connections to these hosts, as the controller keeps one.
    pub fn registry(&self) -> HostConnections {
        HostConnections::with_connector(Arc::new(self.clone()))
    }

    fn handle(&self, uri: &str) -> FakeHost {
        FakeHost {
            net: self.net.clone(),
            uri: uri.to_string(),
        }
    }

    async fn open(&self, uri: &str, opts: &ConnectOptions) -> HvResult<Arc<FakeConnection>> {
        let refused = |message: String| HypervisorError::ConnectionLost {
            uri: uri.to_string(),
            message,
        };
        let (host, fault) = {
            let mut world = self.net.lock();
            let Some(host) = world.resolve(uri) else {
                return Err(refused(format!(
                    "unable to connect to server at '{uri}': No route to host"
                )));
            };
            let fault = faults::take(&mut world.host(&host).faults, Op::Connect);
            (host, fault)
        };
        let failure = match fault {
            None => None,
            Some(Fault::Slow(d)) if d > opts.connect_timeout => {
                tokio::time::sleep(opts.connect_timeout).await;
                Some(HypervisorError::ConnectTimeout {
                    uri: uri.to_string(),
                    seconds: opts.connect_timeout.as_secs(),
                })
            }
            Some(Fault::Slow(d)) => {
                tokio::time::sleep(d).await;
                None
            }
            Some(Fault::Rejected(m)) => Some(Fault::Rejected(m).error(Op::Connect, uri)),
            Some(Fault::ConnectionLost) => Some(refused(format!(
                "unable to connect to server at '{uri}': Connection refused"
            ))),
            Some(f) => Some(refused(f.error(Op::Connect, uri).to_string())),
        };
        let mut world = self.net.lock();
        let state = world.host(&host);
        let failure = failure.or_else(|| {
            (!state.reachable).then(|| {
                refused(format!(
                    "unable to connect to server at '{uri}': No route to host"
                ))
            })
        });
        if let Some(e) = failure {
            state.calls.push(Call {
                connection: 0,
                op: Op::Connect,
                target: String::new(),
                ok: false,
            });
            return Err(e);
        }
        let id = self.net.next_connection.fetch_add(1, Ordering::SeqCst) + 1;
        let shared = Arc::new(ConnShared::new(
            id,
            uri,
            &host,
            opts.observer.clone(),
            opts.call_timeout,
        ));
        state.connections.push(Arc::downgrade(&shared));
        state.calls.push(Call {
            connection: id,
            op: Op::Connect,
            target: String::new(),
            ok: true,
        });
        Ok(Arc::new(FakeConnection {
            shared,
            net: self.net.clone(),
        }))
    }
}

#[async_trait]
impl Connector for FakeConnector {
    async fn connect(&self, uri: &str, opts: &ConnectOptions) -> HvResult<Arc<dyn Hypervisor>> {
        let started = Instant::now();
        let result = self.open(uri, opts).await;
        if let Some(o) = &opts.observer {
            o.observe(
                Op::Connect.as_str(),
                started.elapsed().as_secs_f64(),
                result.is_ok(),
            );
        }
        Ok(result?)
    }
}

#[cfg(test)]
mod tests;
