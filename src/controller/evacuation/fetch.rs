//! What an evacuation starts from: the hosts HAPolicies evacuate, and the pool's migrations as
//! the planner sees them.

use super::*;
use crate::api::ha_policy::HostVerdict;
use crate::api::virtual_machine::EvictionStrategy;
use crate::api::{
    HAPolicy, HostPool, MigrationPhase, VirtualMachine, VirtualMachineMigration, VmPhase,
};
use crate::controller::context::{Caches, HaKey, HaVerdicts, PoolHost};
use crate::plan::evacuation::{Migration, Vm};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The pool's evacuation as the planner sees it.
pub(super) struct Facts {
    /// Hosts being evacuated (maintenance, cordoned in a pool that evacuates them, or an
    /// HAPolicy's `Evacuating` verdict).
    pub(super) draining: BTreeSet<String>,
    /// The pool's VMs.
    pub(super) pool_vms: Vec<Arc<VirtualMachine>>,
    /// Those on a draining host that are to move.
    pub(super) vms: Vec<Vm>,
    /// Their migrations.
    pub(super) migrations: Vec<Migration>,
}

/// Gather the facts: which hosts drain, which VMs on them move (on a host only an HAPolicy
/// evacuates, only the VMs it covers), and their migrations.
pub(super) fn facts(
    pool: &HostPool,
    nodes: &[Arc<Node>],
    caches: &Caches,
    ha: &HaVerdicts,
    for_ha: Option<(&str, Arc<HAPolicy>)>,
) -> Facts {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    // Hosts power management empties for Standby (as the status about to be written says)
    // move all their VMs, as hosts in maintenance do.
    let for_standby = |host: &str| {
        pool.status
            .as_ref()
            .and_then(|s| s.hosts.iter().find(|h| h.name == host))
            .is_some_and(|h| h.power() == crate::api::power::HostPower::Draining)
    };
    let in_maintenance: BTreeSet<String> = nodes
        .iter()
        .filter(|n| draining(pool, n) || for_standby(&n.name_any()))
        .map(|n| n.name_any())
        .collect();
    let mut by_ha = ha_evacuating(pool, nodes, caches, ha);
    if let Some((host, policy)) = for_ha {
        by_ha.entry(host.to_string()).or_default().push(policy);
    }
    let draining: BTreeSet<String> = in_maintenance.iter().chain(by_ha.keys()).cloned().collect();
    // On a host only an HAPolicy evacuates, only the VMs it covers move.
    let evacuated = |v: &VirtualMachine, host: &str| {
        in_maintenance.contains(host)
            || by_ha
                .get(host)
                .is_none_or(|ps| ps.iter().any(|p| p.covers(&name, v.labels())))
    };
    let pool_vms = caches.vms_in_pool(&ns, &name);
    let vms: Vec<Vm> = pool_vms
        .iter()
        .filter_map(|v| {
            let st = v.status.as_ref()?;
            let host = st.host.as_deref()?;
            if !evacuated(v, host) {
                return None;
            }
            Some(Vm {
                name: v.name_any(),
                host: st.host.clone()?,
                running: matches!(st.phase, Some(VmPhase::Running | VmPhase::Migrating)),
                movable: v.spec.eviction_strategy.unwrap_or_default()
                    == EvictionStrategy::LiveMigrate,
            })
        })
        .collect();
    let names: BTreeSet<String> = vms.iter().map(|v| v.name.clone()).collect();
    let migrations: Vec<Migration> = caches
        .migrations
        .state()
        .iter()
        .filter(|m| {
            m.namespace().as_deref() == Some(ns.as_str()) && names.contains(&m.spec.vm_name)
        })
        .map(|m| view(m))
        .collect();
    Facts {
        draining,
        pool_vms,
        vms,
        migrations,
    }
}

/// Hosts of `pool` that HAPolicies evacuate (verdict `Evacuating`, as this process decided it
/// or as a policy's status says), each with the policies that evacuate it.
pub(super) fn ha_evacuating(
    pool: &HostPool,
    nodes: &[Arc<Node>],
    caches: &Caches,
    ha: &HaVerdicts,
) -> BTreeMap<String, Vec<Arc<HAPolicy>>> {
    let ns = pool.namespace();
    let name = pool.name_any();
    let policies: Vec<Arc<HAPolicy>> = caches
        .policies
        .state()
        .into_iter()
        .filter(|p| p.namespace() == ns && p.spec.host_pools.contains(&name))
        .collect();
    let evacuates = |p: &HAPolicy, host: &str| {
        let key = HaKey::new(&p.name_any(), PoolHost::of(pool, host));
        ha.get(&key) == Some(HostVerdict::Evacuating)
            || p.status
                .iter()
                .flat_map(|s| s.hosts.iter())
                .any(|h| h.name == host && h.pool == name && h.verdict == HostVerdict::Evacuating)
    };
    nodes
        .iter()
        .map(|n| n.name_any())
        .filter_map(|h| {
            let by: Vec<Arc<HAPolicy>> = policies
                .iter()
                .filter(|p| evacuates(p, &h))
                .cloned()
                .collect();
            (!by.is_empty()).then_some((h, by))
        })
        .collect()
}

pub(super) fn view(m: &VirtualMachineMigration) -> Migration {
    let st = m.status.clone().unwrap_or_default();
    Migration {
        name: m.name_any(),
        vm: m.spec.vm_name.clone(),
        evacuates: m.annotations().get(EVACUATES_ANNOTATION).cloned(),
        unfinished: !m.is_terminal() && m.metadata.deletion_timestamp.is_none(),
        started: m.holds_vm(),
        failed: (st.phase == Some(MigrationPhase::Failed))
            .then(|| st.message.clone().unwrap_or_default()),
        waiting: match st.phase {
            None | Some(MigrationPhase::Pending) => st.message.clone(),
            _ => None,
        },
    }
}
