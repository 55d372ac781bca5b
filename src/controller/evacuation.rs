//! Evacuations, run by the HostPool controller: a host in maintenance (Node annotation
//! `ferry.dev/maintenance=true`), or cordoned in a pool that evacuates cordoned hosts, has its
//! running VMs live-migrated away through VirtualMachineMigrations; removing the annotation (or
//! uncordoning) withdraws the migrations that have not started. A host an HAPolicy evacuates
//! (verdict `Evacuating`: Node NotReady while libvirt answers) is evacuated the same way, so
//! both respect `evictionStrategy` and report what cannot move.

use super::Context;
use super::hosts::{cordoned, in_maintenance};
use crate::api::condition::ConditionStatus;
use crate::api::ha_policy::HostVerdict;
use crate::api::virtual_machine::EvictionStrategy;
use crate::api::{
    HAPolicy, HostPool, MigrationPhase, VirtualMachine, VirtualMachineMigration, VmPhase,
};
use crate::plan::evacuation::{self, Migration, Vm};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Label on the migrations an evacuation creates.
pub const EVACUATION_LABEL: &str = "ferry.dev/evacuation";
/// Annotation on those migrations naming the host they evacuate.
pub const EVACUATES_ANNOTATION: &str = "ferry.dev/evacuates";

/// Whether `node` is being evacuated in `pool`.
pub fn draining(pool: &HostPool, node: &Node) -> bool {
    in_maintenance(node) || (cordoned(node) && pool.evacuates_cordoned())
}

/// The `Evacuating` condition of a pool.
pub struct Report {
    pub status: ConditionStatus,
    pub reason: &'static str,
    pub message: String,
}

/// Hosts of `pool` that HAPolicies evacuate (verdict `Evacuating`, as this process decided it
/// or as a policy's status says), each with the policies that cover the pool.
fn ha_evacuating(
    pool: &HostPool,
    nodes: &[Arc<Node>],
    ctx: &Context,
) -> BTreeMap<String, Vec<Arc<HAPolicy>>> {
    let ns = pool.namespace();
    let name = pool.name_any();
    let policies: Vec<Arc<HAPolicy>> = ctx
        .caches
        .policies
        .state()
        .into_iter()
        .filter(|p| p.namespace() == ns && p.spec.host_pools.contains(&name))
        .collect();
    let in_status = |host: &str| {
        policies.iter().any(|p| {
            p.status
                .iter()
                .flat_map(|s| s.hosts.iter())
                .any(|h| h.name == host && h.pool == name && h.verdict == HostVerdict::Evacuating)
        })
    };
    if policies.is_empty() {
        return BTreeMap::new();
    }
    nodes
        .iter()
        .map(|n| n.name_any())
        .filter(|h| ctx.ha.of_host(h) == Some(HostVerdict::Evacuating) || in_status(h))
        .map(|h| (h, policies.clone()))
        .collect()
}

/// Plan and act on the evacuation of the pool's draining `nodes`; returns the condition to show.
pub async fn reconcile(pool: &HostPool, nodes: &[Arc<Node>], ctx: &Context) -> Report {
    evacuate(pool, nodes, ctx, None).await
}

/// Evacuate `host` of `pool` (whose Nodes are `nodes`) now for `policy` (its verdict
/// `Evacuating` may not be in the policy's status yet): the VMs on it that the policy covers.
/// The pool's next pass reports it in its `Evacuating` condition.
pub async fn evacuate_for_ha(
    pool: &HostPool,
    nodes: &[Arc<Node>],
    ctx: &Context,
    host: &str,
    policy: Arc<HAPolicy>,
) {
    evacuate(pool, nodes, ctx, Some((host, policy))).await;
}

async fn evacuate(
    pool: &HostPool,
    nodes: &[Arc<Node>],
    ctx: &Context,
    ha: Option<(&str, Arc<HAPolicy>)>,
) -> Report {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let in_maintenance: BTreeSet<String> = nodes
        .iter()
        .filter(|n| draining(pool, n))
        .map(|n| n.name_any())
        .collect();
    let mut by_ha = ha_evacuating(pool, nodes, ctx);
    if let Some((host, policy)) = ha {
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
    let pool_vms: Vec<_> = ctx
        .caches
        .vms
        .state()
        .into_iter()
        .filter(|v| v.namespace().as_deref() == Some(ns.as_str()) && v.spec.host_pool == name)
        .collect();
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
    let migrations: Vec<Migration> = ctx
        .caches
        .migrations
        .state()
        .iter()
        .filter(|m| {
            m.namespace().as_deref() == Some(ns.as_str()) && names.contains(&m.spec.vm_name)
        })
        .map(|m| view(m))
        .collect();
    let plan = evacuation::plan(&draining, &vms, &migrations);

    let api: Api<VirtualMachineMigration> = Api::namespaced(ctx.client.clone(), &ns);
    for withdrawn in &plan.withdraw {
        match api.delete(withdrawn, &DeleteParams::default()).await {
            Ok(_) => {
                ctx.event(
                    pool,
                    EventType::Normal,
                    "EvacuationCancelled",
                    "Evacuate",
                    format!(
                        "Withdrew queued migration {withdrawn}: its host is no longer evacuated"
                    ),
                )
                .await
            }
            Err(e) => {
                tracing::warn!(migration = %withdrawn, error = %e, "could not withdraw an evacuation migration")
            }
        }
    }
    for (vm_name, host) in &plan.create {
        let Some(vm) = pool_vms.iter().find(|v| &v.name_any() == vm_name) else {
            continue;
        };
        let uid = vm.metadata.uid.clone().unwrap_or_default();
        if !ctx.migrations.evacuation_created(&uid) {
            continue;
        }
        let migration = evacuation_migration(vm.as_ref(), host);
        let mname = migration.name_any();
        match api.create(&PostParams::default(), &migration).await {
            Ok(_) => {
                ctx.event(
                    pool,
                    EventType::Normal,
                    "Evacuating",
                    "Evacuate",
                    format!("Host {host} is evacuated: migrating VM {vm_name} ({mname})"),
                )
                .await
            }
            Err(e) => {
                ctx.migrations.evacuation_not_created(&uid);
                tracing::warn!(vm = %vm_name, error = %e, "could not create an evacuation migration");
            }
        }
    }
    if draining.is_empty() {
        return Report {
            status: ConditionStatus::False,
            reason: "NoEvacuation",
            message: "no host is being evacuated".into(),
        };
    }
    let message = evacuation::summary(&plan.hosts);
    if plan.hosts.iter().all(|h| h.done()) {
        Report {
            status: ConditionStatus::False,
            reason: "Evacuated",
            message,
        }
    } else if plan
        .hosts
        .iter()
        .all(|h| h.moving.is_empty() && h.waiting.is_empty())
    {
        // Only VMs that cannot move are left: say so, the host is not empty.
        Report {
            status: ConditionStatus::True,
            reason: "Blocked",
            message,
        }
    } else {
        Report {
            status: ConditionStatus::True,
            reason: "Evacuating",
            message,
        }
    }
}

fn view(m: &VirtualMachineMigration) -> Migration {
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

/// The migration that moves `vm` off `host`, owned by the VM (removed with it).
fn evacuation_migration(vm: &crate::api::VirtualMachine, host: &str) -> VirtualMachineMigration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        vm.metadata.uid.as_deref(),
        host,
        std::time::SystemTime::now(),
    )
        .hash(&mut h);
    let suffix = format!("{:06x}", h.finish() & 0xff_ffff);
    let base: String = vm.name_any().chars().take(253 - 16).collect();
    let mut m = VirtualMachineMigration::new(
        &format!("{}-evac-{suffix}", base.trim_end_matches(['-', '.'])),
        crate::api::VirtualMachineMigrationSpec {
            vm_name: vm.name_any(),
            target_host: None,
            reason: Some(format!("evacuation of host {host}")),
        },
    );
    m.metadata.namespace = vm.namespace();
    m.metadata.labels = Some([(EVACUATION_LABEL.to_string(), "true".to_string())].into());
    m.metadata.annotations = Some([(EVACUATES_ANNOTATION.to_string(), host.to_string())].into());
    m.metadata.owner_references = vm.controller_owner_ref(&()).map(|mut o| {
        o.controller = Some(false);
        o.block_owner_deletion = None;
        vec![o]
    });
    m
}
