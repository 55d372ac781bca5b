//! The migrations an evacuation creates.

use super::*;
use crate::api::condition::ConditionStatus;
use crate::api::{HostPool, VirtualMachine, VirtualMachineMigration};
use crate::controller::Context;
use crate::plan::evacuation::Plan;
use crate::plan::evacuation::{self};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Withdraw the queued migrations of hosts no longer evacuated, create those the plan asks for.
pub(super) async fn act(
    ctx: &Context,
    pool: &HostPool,
    pool_vms: &[Arc<VirtualMachine>],
    plan: &Plan,
) {
    let ns = pool.namespace().unwrap_or_default();
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
}

/// The `Evacuating` condition for the plan.
pub(super) fn report(draining: &BTreeSet<String>, plan: &Plan) -> Report {
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

/// The migration that moves `vm` off `host`, owned by the VM (removed with it).
pub(super) fn evacuation_migration(
    vm: &crate::api::VirtualMachine,
    host: &str,
) -> VirtualMachineMigration {
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
