//! What a balancing run starts from: the pool's hosts and VMs as the planner sees them, with
//! their measured load, or why the measurements are not good enough to plan yet.

use crate::api::balancing::{BALANCE_FROM_ANNOTATION, BALANCE_LABEL, BalanceMove};
use crate::api::virtual_machine::EvictionStrategy;
use crate::api::{HostPool, HostPoolStatus, HostState, VirtualMachine, VmPhase};
use crate::controller::Context;
use crate::controller::context::PoolHost;
use crate::controller::scheduling;
use crate::plan::balance::{Host, PastMove, Usage, Vm};
use crate::plan::capacity::{self, Amount};
use crate::plan::load::HostUse;
use crate::plan::placement;
use kube::ResourceExt;
use std::collections::HashMap;
use std::sync::Arc;

/// The planner's inputs.
pub(super) struct Facts {
    pub(super) hosts: Vec<Host>,
    pub(super) vms: Vec<Vm>,
    /// The pool's VirtualMachines.
    pub(super) pool_vms: Vec<Arc<VirtualMachine>>,
}

/// Gather the planner's inputs for `pool`, whose fresh status is `st`, or say what to wait for:
/// migrations under way in the pool (their VMs' load is in between two hosts), or a host or
/// running VM whose load is not measured yet.
pub(super) fn gather(
    pool: &HostPool,
    st: &HostPoolStatus,
    ctx: &Context,
    recent: &[BalanceMove],
) -> Result<Facts, String> {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let pool_vms = ctx.caches.vms_in_pool(&ns, &name);
    let in_pool = |vm: &str| pool_vms.iter().any(|v| v.name_any() == vm);
    let migrations = ctx.caches.migrations.state();
    let under_way = migrations
        .iter()
        .filter(|m| m.namespace().as_deref() == Some(ns.as_str()) && in_pool(&m.spec.vm_name))
        .filter(|m| !m.is_terminal() && m.metadata.deletion_timestamp.is_none())
        .count();
    if under_way > 0 {
        return Err(format!(
            "waiting for {under_way} migration(s) under way in the pool to end before measuring again"
        ));
    }
    // Placement's view of the hosts, from the status this reconcile is about to write.
    let mut fresh = pool.clone();
    fresh.status = Some(st.clone());
    let candidates = scheduling::candidates(&fresh, &ctx.caches, &ctx.ha);
    let reserve = capacity::Policy::of(pool);
    let mut used: HashMap<String, HostUse> = HashMap::new();
    let mut hosts = Vec::new();
    for c in candidates {
        let Some(cap) = st
            .hosts
            .iter()
            .find(|h| h.name == c.name)
            .and_then(|h| h.capacity.as_ref())
            .map(Amount::from)
        else {
            continue;
        };
        let measured = ctx.load.host(&PoolHost::of(pool, &c.name));
        let ready = st
            .hosts
            .iter()
            .any(|h| h.name == c.name && h.state == HostState::Ready);
        match &measured {
            None if ready => {
                return Err(format!(
                    "waiting for the load of host {} to be measured",
                    c.name
                ));
            }
            Some(u) if ready && !u.unmeasured.is_empty() => {
                return Err(format!(
                    "waiting for a second load sample of {} domain(s) on host {}",
                    u.unmeasured.len(),
                    c.name
                ));
            }
            _ => {}
        }
        let capacity = Usage {
            cpu_millis: cap.cpus.saturating_sub(reserve.reserved_cpus) * 1000,
            memory: cap.memory.saturating_sub(reserve.reserved_memory),
        };
        if let Some(u) = measured {
            used.insert(c.name.clone(), u);
        }
        hosts.push(Host {
            candidate: c,
            capacity,
            other: Usage::default(),
        });
    }
    let mut vms = Vec::new();
    // Per host, the domains that are the pool's VMs.
    let mut ours: HashMap<String, Vec<String>> = HashMap::new();
    for v in &pool_vms {
        let Some(host) = v.status.as_ref().and_then(|s| s.host.clone()) else {
            continue;
        };
        let uid = v.metadata.uid.clone().unwrap_or_default();
        let measured = used.get(&host).and_then(|u| u.domains.get(&uid)).copied();
        ours.entry(host.clone()).or_default().push(uid.clone());
        vms.push(vm(v, uid, host, measured, recent, &migrations));
    }
    for h in &mut hosts {
        let Some(u) = used.get(&h.candidate.name) else {
            continue;
        };
        let mine = ours.get(&h.candidate.name);
        for (uuid, d) in &u.domains {
            if mine.is_some_and(|m| m.contains(uuid)) {
                continue;
            }
            h.other.cpu_millis += d.cpu_millis;
            h.other.memory += d.memory;
        }
    }
    Ok(Facts {
        hosts,
        vms,
        pool_vms,
    })
}

/// VM `v` (UID `uid`) on `host` as the planner sees it.
fn vm(
    v: &VirtualMachine,
    uid: String,
    host: String,
    measured: Option<Usage>,
    recent: &[BalanceMove],
    migrations: &[Arc<crate::api::VirtualMachineMigration>],
) -> Vm {
    let name = v.name_any();
    let spec = v.spec.placement.clone().unwrap_or_default();
    let affinity = placement::terms(&spec.affinity, "affinity");
    let anti = placement::terms(&spec.anti_affinity, "antiAffinity");
    let running = v.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Running);
    let pinned = if !running {
        Some("not running")
    } else if v.spec.eviction_strategy.unwrap_or_default() == EvictionStrategy::None {
        Some("evictionStrategy None")
    } else if affinity.is_err() || anti.is_err() {
        Some("an invalid placement term")
    } else if measured.is_none() {
        Some("not measured")
    } else {
        None
    };
    let demand = measured.unwrap_or_default();
    let mut history: Vec<PastMove> = recent
        .iter()
        .filter(|m| m.vm == name)
        .map(|m| PastMove {
            at: m.at.0,
            from: m.from.clone(),
        })
        .collect();
    let ns = v.namespace();
    for m in migrations {
        if m.namespace() != ns || m.spec.vm_name != name || !m.labels().contains_key(BALANCE_LABEL)
        {
            continue;
        }
        if let (Some(at), Some(from)) = (
            m.metadata.creation_timestamp.as_ref(),
            m.annotations().get(BALANCE_FROM_ANNOTATION),
        ) {
            history.push(PastMove {
                at: at.0,
                from: from.clone(),
            });
        }
    }
    let need = scheduling::need(v);
    let mut out = Vm {
        name,
        placed: scheduling::as_placed(v, uid, host),
        demand,
        // A live migration copies what the guest touched: its QEMU process's resident memory.
        copy_bytes: if demand.memory > 0 {
            demand.memory
        } else {
            need.memory
        },
        pinned: pinned.map(str::to_string),
        node_selector: spec.node_selector.clone(),
        affinity: affinity.unwrap_or_default(),
        anti_affinity: Vec::new(),
        history,
    };
    out.set_anti_affinity(anti.unwrap_or_default());
    out
}
