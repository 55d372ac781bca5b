//! The controller's side of placement: gather the pool's hosts and the VMs already placed from
//! the reflector stores, call [`placement::choose_host`], and remember the choice until the VM
//! store shows it, so that VMs placed at the same moment see each other.

use super::context::{Caches, HaVerdicts, LoadWindows, Placement, PoolHost};
use super::hosts::{cordoned, in_maintenance, node_ready};
use crate::api::{HostPool, HostState, VirtualMachine};
use crate::plan::balance::Usage;
use crate::plan::capacity::Amount;
use crate::plan::load;
use crate::plan::placement::{self, Candidate, Placed, Request};
use crate::plan::quantity::parse_bytes;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

/// Why no host was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotPlaced {
    /// The VM's placement spec cannot be used (an invalid selector); the message says where.
    InvalidSpec(String),
    /// No host fits now; the message counts the hosts per reason.
    NoHost(String),
}

/// vCPUs and memory a VM asks for: its spec's, else the values resolved from its class that its
/// status shows (memory 0 when the quantity does not parse: validation reports that before
/// placement).
pub fn need(vm: &VirtualMachine) -> Amount {
    let resolved = vm.status.as_ref().and_then(|s| s.resources.as_ref());
    let cpus = vm
        .spec
        .cpu
        .as_ref()
        .map(|c| c.cores)
        .or(resolved.map(|r| r.cpus));
    let memory = vm
        .spec
        .memory
        .as_deref()
        .or(resolved.map(|r| r.memory.as_str()));
    Amount {
        cpus: cpus.unwrap_or(0).max(0) as u64,
        memory: memory.and_then(|m| parse_bytes(m).ok()).unwrap_or(0),
    }
}

/// Choose a host for `vm` (asking for `need`) in `pool` (never `exclude`) and reserve it for the
/// VM until the VM store shows the VM placed (or the reservation is dropped with
/// [`Placement::forget`]).
/// In a pool balancing `Partial` or `Full`, hosts are also weighed by their measured `load`.
#[allow(clippy::too_many_arguments)]
pub fn choose(
    vm: &VirtualMachine,
    need: Amount,
    pool: &HostPool,
    caches: &Caches,
    ha: &HaVerdicts,
    placement: &Placement,
    load: &LoadWindows,
    exclude: Option<&str>,
) -> Result<String, NotPlaced> {
    let spec = vm.spec.placement.clone().unwrap_or_default();
    let affinity = placement::terms(&spec.affinity, "affinity").map_err(NotPlaced::InvalidSpec)?;
    let anti =
        placement::terms(&spec.anti_affinity, "antiAffinity").map_err(NotPlaced::InvalidSpec)?;
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    if let Some(why) = placement.admission_block(&uid) {
        return Err(NotPlaced::NoHost(why));
    }
    let mut candidates = candidates(pool, caches, ha);
    let by_load = pool
        .spec
        .balancing
        .as_ref()
        .is_some_and(|b| b.automation.places_by_load());
    for c in &mut candidates {
        if Some(c.name.as_str()) == exclude {
            c.reachable = false;
        }
        if by_load {
            c.measured = measured(pool, &c.name, load);
        }
    }
    let mut placing = placement.in_flight();
    let placed = placed_vms(pool, caches, &mut placing);
    let req = Request {
        uid: &uid,
        labels: vm.labels(),
        need,
        node_selector: &spec.node_selector,
        affinity: &affinity,
        anti_affinity: &anti,
    };
    let host = placement::choose_host(&candidates, &placed, &req, pool.placement_strategy())
        .map_err(NotPlaced::NoHost)?;
    let chosen = Placed {
        need: req.need,
        ..as_placed(vm, uid.clone(), host.clone())
    };
    placing.insert(uid.clone(), chosen);
    Ok(host)
}

/// Host `name`'s measured load in thousandths of its capacity (see [`load::share`]), when it
/// was measured and its capacity is known.
fn measured(pool: &HostPool, name: &str, load: &LoadWindows) -> Option<u64> {
    let used = load.host(&PoolHost::of(pool, name))?;
    let cap = pool
        .status
        .as_ref()?
        .hosts
        .iter()
        .find(|h| h.name == name)?
        .capacity
        .as_ref()
        .map(Amount::from)?;
    let capacity = Usage {
        cpu_millis: cap.cpus.saturating_mul(1000),
        memory: cap.memory,
    };
    load::share(used.total, capacity)
}

/// `vm` as placement counts it on `host` (under `uid`): its labels, its need and what its
/// required anti-affinity excludes from the host (an invalid term excludes nothing: such a VM
/// is not placed anywhere, and says so).
pub fn as_placed(vm: &VirtualMachine, uid: String, host: String) -> Placed {
    let anti = vm
        .spec
        .placement
        .as_ref()
        .and_then(|p| placement::terms(&p.anti_affinity, "antiAffinity").ok())
        .unwrap_or_default();
    Placed {
        uid,
        host,
        labels: vm.labels().clone(),
        need: need(vm),
        excludes: placement::excludes(&anti),
    }
}

/// Choose the target host of a live migration of `vm` away from `source`: the requested host
/// when it fits, or the best other host by the pool's placement rules. Hosts receiving a
/// migration already count that VM (see `placed_vms`). Nothing is reserved here: the migration's slot
/// reserves the target.
pub fn choose_migration_target(
    vm: &VirtualMachine,
    pool: &HostPool,
    caches: &Caches,
    ha: &HaVerdicts,
    placement: &Placement,
    source: &str,
    requested: Option<&str>,
) -> Result<String, String> {
    let spec = vm.spec.placement.clone().unwrap_or_default();
    let affinity = placement::terms(&spec.affinity, "affinity")?;
    let anti = placement::terms(&spec.anti_affinity, "antiAffinity")?;
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let candidates: Vec<Candidate> = candidates(pool, caches, ha)
        .into_iter()
        .filter(|c| c.name != source && requested.is_none_or(|r| r == c.name))
        .collect();
    if candidates.is_empty() {
        return Err(match requested {
            Some(r) => format!("host {r} is not in the pool's status yet"),
            None => "the pool has no other host".into(),
        });
    }
    let placed = {
        let mut placing = placement.in_flight();
        placed_vms(pool, caches, &mut placing)
    };
    let req = Request {
        uid: &uid,
        labels: vm.labels(),
        need: need(vm),
        node_selector: &spec.node_selector,
        affinity: &affinity,
        anti_affinity: &anti,
    };
    placement::choose_host(&candidates, &placed, &req, pool.placement_strategy())
}

/// The VMs of `pool` that have a host: from the VM store, plus choices the store does not show
/// yet. Reservations the store has caught up with are dropped.
fn placed_vms(
    pool: &HostPool,
    caches: &Caches,
    placing: &mut std::collections::HashMap<String, Placed>,
) -> Vec<Placed> {
    let ns = pool.namespace();
    let name = pool.name_any();
    let mut out: Vec<Placed> = Vec::new();
    for vm in caches.vms.state() {
        if vm.namespace() != ns || vm.spec.host_pool != name {
            continue;
        }
        let uid = vm.metadata.uid.clone().unwrap_or_default();
        match vm.status.as_ref().and_then(|s| s.host.clone()) {
            Some(host) => {
                placing.remove(&uid);
                out.push(as_placed(&vm, uid, host));
            }
            None => {
                if let Some(p) = placing.get(&uid) {
                    out.push(p.clone());
                }
            }
        }
    }
    // A VM on the move counts on its target too, from the moment the target is chosen.
    for m in caches.migrations.state() {
        if m.namespace() != ns || !m.holds_vm() {
            continue;
        }
        let Some(target) = m.status.as_ref().and_then(|s| s.target.clone()) else {
            continue;
        };
        let Some(vm) = caches
            .vms
            .get(&ObjectRef::new(&m.spec.vm_name).within(ns.as_deref().unwrap_or_default()))
        else {
            continue;
        };
        if vm.spec.host_pool != name
            || vm.status.as_ref().and_then(|s| s.host.as_deref()) == Some(target.as_str())
        {
            continue;
        }
        let uid = format!("{}@{target}", vm.metadata.uid.clone().unwrap_or_default());
        out.push(as_placed(&vm, uid, target));
    }
    out
}

/// Whether a host with this HA verdict may take new VMs.
pub fn takes_vms(v: crate::api::ha_policy::HostVerdict) -> bool {
    use crate::api::ha_policy::HostVerdict as V;
    matches!(v, V::Healthy | V::Recovered)
}

/// Placement candidates: the pool's hosts as its status reports them, with their Node's state.
pub fn candidates(pool: &HostPool, caches: &Caches, ha: &HaVerdicts) -> Vec<Candidate> {
    let hosts = pool
        .status
        .as_ref()
        .map(|s| s.hosts.as_slice())
        .unwrap_or(&[]);
    hosts
        .iter()
        .map(|h| {
            let node = caches.node(&h.name);
            Candidate {
                name: h.name.clone(),
                // A host that an HAPolicy of this pool does not judge healthy takes no new VMs
                // (another pool's view of the same Node does not count here).
                // A Standby verdict only echoes power management, whose word (On) is newer.
                reachable: matches!(h.state, HostState::Ready | HostState::Cordoned)
                    && ha
                        .of(&PoolHost::of(pool, &h.name))
                        .into_iter()
                        .all(|(_, v)| {
                            takes_vms(v)
                                || (v == crate::api::ha_policy::HostVerdict::Standby
                                    && h.power().takes_vms())
                        }),
                node_ready: node.as_deref().is_some_and(node_ready),
                // A host in maintenance takes nothing new, like a cordoned one; nor does one power
                // management empties, keeps off or is powering on.
                cordoned: node
                    .as_deref()
                    .is_some_and(|n| cordoned(n) || in_maintenance(n))
                    || !h.power().takes_vms(),
                labels: node.map(|n| n.labels().clone()).unwrap_or_default(),
                allocatable: h.allocatable.as_ref().map(Amount::from),
                foreign: h
                    .foreign_allocated
                    .as_ref()
                    .map(Amount::from)
                    .unwrap_or_default(),
                measured: None,
            }
        })
        .collect()
}
