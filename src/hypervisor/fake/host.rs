//! [`FakeHost`]: what a test does to a fake host (partition it, crash a guest, inject faults)
//! and reads from it (its domains, volumes, call log).

use std::sync::Arc;
use std::time::Duration;

use super::Net;
use super::faults::{Call, Fault, Op, Rule, Times};
use super::world::{Definition, FakeDomain};
use crate::hypervisor::HvResult;
use crate::plan::domain::DescribedDomain;
use crate::plan::domain::{
    DomainDefinition, DomainInfo, DomainState, GuestInfo, HostInfo, ShutOffReason, VolumeInfo,
};

/// A handle on one fake host of a [`FakeConnector`](super::FakeConnector); cheap to clone. Every
/// method takes effect at once for every connection to the host.
#[derive(Clone)]
pub struct FakeHost {
    pub(super) net: Arc<Net>,
    pub(super) uri: String,
}

impl std::fmt::Debug for FakeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHost").field("uri", &self.uri).finish()
    }
}

impl FakeHost {
    /// The URI the host was added with.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// What [`Hypervisor::host_info`](crate::hypervisor::Hypervisor::host_info) reports (by
    /// default: 8 CPUs, 16 GiB, libvirt 9.0.0, no KVM, the URI's host name).
    pub fn set_info(&self, info: HostInfo) {
        self.net.lock().host(&self.uri).info = info;
        self.changed();
    }

    /// Tell every open connection to the host that its domains changed (as libvirt's lifecycle
    /// events do for definitions, starts and stops).
    fn changed(&self) {
        let listeners = self.net.lock().listeners(&self.uri);
        for c in listeners {
            c.host_changed();
        }
    }

    /// Cut the host off (`false`) or reconnect it (`true`). Cut off, every open connection is
    /// lost at once (its observer is told, as by libvirt's keepalive) and new connections fail
    /// with `ConnectionLost`; its domains keep running and keep their disks locked.
    pub fn set_reachable(&self, reachable: bool) {
        let lost = {
            let mut world = self.net.lock();
            world.host(&self.uri).reachable = reachable;
            if reachable {
                Vec::new()
            } else {
                world.listeners(&self.uri)
            }
        };
        for c in lost {
            c.mark_lost("libvirt closed the connection: keepalive timeout");
        }
    }

    /// The host loses power: cut off as by [`set_reachable(false)`](Self::set_reachable), and
    /// every running domain stops (its disks unlocked); transient domains disappear.
    pub fn power_off(&self) {
        self.set_reachable(false);
        let mut world = self.net.lock();
        let running: Vec<String> = world
            .host(&self.uri)
            .domains
            .values()
            .filter(|d| d.state.is_active())
            .map(|d| d.uuid.clone())
            .collect();
        for uuid in running {
            world.stop(&self.uri, &uuid, ShutOffReason::Crashed);
        }
    }

    /// Power comes back: reachable again; domains stay as they are (shut off after
    /// [`power_off`](Self::power_off)).
    pub fn power_on(&self) {
        self.set_reachable(true);
    }

    /// A domain ferry defined earlier, in `state` (running states run `def`). Replaces a domain
    /// with the same UUID.
    pub fn add_domain(&self, def: &DomainDefinition, state: DomainState) -> HvResult<()> {
        {
            let mut world = self.net.lock();
            world.host(&self.uri).domains.remove(&def.uuid);
            world.define(&self.uri, def)?;
        }
        self.set_state(&def.uuid, state);
        Ok(())
    }

    /// A domain someone else defined (no ferry metadata), with 1 vCPU and 512 MiB.
    pub fn add_foreign_domain(&self, name: &str, uuid: &str, state: DomainState) {
        let def = Definition::Foreign {
            vcpus: 1,
            memory_kib: 512 * 1024,
        };
        let active = state.is_active();
        self.net.lock().host(&self.uri).domains.insert(
            uuid.to_string(),
            FakeDomain {
                name: name.to_string(),
                uuid: uuid.to_string(),
                config: Some(def.clone()),
                live: active.then_some(def),
                state,
                guest: None,
                ignores_shutdown: false,
            },
        );
        self.changed();
    }

    /// Have `describe_domain` report `described` for the domain with this UUID (as its XML
    /// would read); without it, a domain reads as a plain i440fx guest of its size with a serial
    /// console and nothing else.
    pub fn describe_as(&self, uuid: &str, described: DescribedDomain) {
        self.net
            .lock()
            .host(&self.uri)
            .descriptions
            .insert(uuid.to_string(), described);
        self.changed();
    }

    /// Have `domain_counters` report, for the running domain with this UUID, `cpu_time_ns` of
    /// CPU time used so far and `rss_bytes` resident. Until a test calls this on a host, the
    /// host's `domain_counters` is unsupported; running domains never set report zeros.
    pub fn set_counters(&self, uuid: &str, cpu_time_ns: u64, rss_bytes: u64) {
        self.net
            .lock()
            .host(&self.uri)
            .counters
            .get_or_insert_with(Default::default)
            .insert(uuid.to_string(), (cpu_time_ns, rss_bytes));
    }

    /// The domain with this UUID, as a `lookup_domain` call would report it (not logged).
    pub fn domain(&self, uuid: &str) -> Option<DomainInfo> {
        self.net
            .lock()
            .host(&self.uri)
            .domains
            .get(uuid)
            .map(FakeDomain::info)
    }

    /// Every domain of the host (not logged).
    pub fn domains(&self) -> Vec<DomainInfo> {
        self.net
            .lock()
            .host(&self.uri)
            .domains
            .values()
            .map(FakeDomain::info)
            .collect()
    }

    /// The persistent definition ferry gave the domain, if it has one.
    pub fn definition(&self, uuid: &str) -> Option<DomainDefinition> {
        let world = self.net.lock();
        match world
            .hosts
            .get(&self.uri)?
            .domains
            .get(uuid)?
            .config
            .as_ref()?
        {
            Definition::Ferry(def) | Definition::Released(def) => Some(def.as_ref().clone()),
            Definition::Foreign { .. } | Definition::TakenOver { .. } => None,
        }
    }

    /// Something outside ferry changes the domain's state (the guest powers off, QEMU crashes,
    /// someone pauses it). A domain that starts runs its persistent definition; one that stops
    /// and is transient disappears. Observers hear a lifecycle event, except for a start
    /// (libvirt's start events are not delivered, as with the libvirt implementation), which
    /// they hear only as a change of the host.
    pub fn set_state(&self, uuid: &str, state: DomainState) {
        let listeners = {
            let mut world = self.net.lock();
            let host = world.host(&self.uri);
            let Some(d) = host.domains.get_mut(uuid) else {
                return;
            };
            let started = !d.state.is_active() && state.is_active();
            if state.is_active() {
                if d.live.is_none() {
                    d.live = d.config.clone();
                }
                d.state = state;
            } else if let DomainState::ShutOff(reason) = state
                && !world.stop(&self.uri, uuid, reason)
                && let Some(d) = world.host(&self.uri).domains.get_mut(uuid)
            {
                // Already off: only the reason changes.
                d.state = state;
            }
            (started, world.listeners(&self.uri))
        };
        let (started, listeners) = listeners;
        for c in listeners {
            if started {
                c.host_changed();
            } else {
                c.domain_changed(uuid);
            }
        }
    }

    /// The guest ignores (`true`) or obeys (`false`, the default) shutdown requests.
    pub fn ignore_shutdown(&self, uuid: &str, ignore: bool) {
        if let Some(d) = self.net.lock().host(&self.uri).domains.get_mut(uuid) {
            d.ignores_shutdown = ignore;
        }
    }

    /// What the domain's guest agent reports while it runs (`None`: no agent answering).
    pub fn set_guest_info(&self, uuid: &str, info: Option<GuestInfo>) {
        if let Some(d) = self.net.lock().host(&self.uri).domains.get_mut(uuid) {
            d.guest = info;
        }
    }

    /// A storage pool at `path` (kept if it exists).
    pub fn add_pool(&self, name: &str, path: &str) {
        let _ = self.net.lock().ensure_pool(&self.uri, name, Some(path));
    }

    /// A volume in an existing pool, e.g. a golden image.
    pub fn add_volume(
        &self,
        pool: &str,
        name: &str,
        capacity: u64,
        format: &str,
    ) -> HvResult<VolumeInfo> {
        self.net
            .lock()
            .add_volume(&self.uri, "add_volume", pool, name, capacity, format)
    }

    /// Set the first bytes of a volume's content (what `read_volume_head` returns), e.g. a
    /// qcow2 header naming a backing file.
    pub fn set_volume_head(&self, pool: &str, name: &str, head: &[u8]) -> HvResult<()> {
        let mut net = self.net.lock();
        let p = net.pool(&self.uri, "set_volume_head", pool)?;
        let mut h = head.to_vec();
        h.truncate(super::world::HEAD);
        p.heads.insert(name.to_string(), h);
        Ok(())
    }

    /// The volumes of a pool, by name (empty when the pool does not exist).
    pub fn volumes(&self, pool: &str) -> Vec<VolumeInfo> {
        self.net
            .lock()
            .storage_of(&self.uri)
            .pools
            .get(pool)
            .map(|p| p.volumes.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Make `op` fail (or stall) `times` times on this host, on every connection to it. Faults
    /// for the same operation strike in the order they were injected.
    pub fn inject(&self, op: Op, fault: Fault, times: Times) {
        self.net.lock().host(&self.uri).faults.push(Rule {
            op,
            fault,
            left: times,
        });
    }

    /// Forget every injected fault not used up yet.
    pub fn clear_faults(&self) {
        self.net.lock().host(&self.uri).faults.clear();
    }

    /// How long a migration from this host takes (default: none); meanwhile `job_progress`
    /// reports it and `abort_job` cancels it.
    pub fn set_migration_time(&self, d: Duration) {
        self.net.lock().host(&self.uri).migration_time = d;
    }

    /// Every call made to this host so far, in order (connection attempts included).
    pub fn calls(&self) -> Vec<Call> {
        self.net.lock().host(&self.uri).calls.clone()
    }

    /// The calls so far, forgetting them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.net.lock().host(&self.uri).calls)
    }

    /// How many calls of `op` were made so far.
    pub fn count(&self, op: Op) -> usize {
        self.net
            .lock()
            .host(&self.uri)
            .calls
            .iter()
            .filter(|c| c.op == op)
            .count()
    }

    /// Connections to this host that are open (not closed, not lost).
    pub fn open_connections(&self) -> usize {
        self.net.lock().listeners(&self.uri).len()
    }
}
