//! The migrations a `Full` run creates, each with an Event on its VM and on the pool.

use crate::api::balancing::{BALANCE_FROM_ANNOTATION, BALANCE_LABEL, BALANCE_REASON};
use crate::api::{HostPool, VirtualMachine, VirtualMachineMigration, VirtualMachineMigrationSpec};
use crate::controller::Context;
use crate::plan::balance::{Move, Plan};
use crate::plan::capacity;
use kube::api::{Api, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Event reason of a migration balancing started.
pub const BALANCING_EVENT: &str = "Balancing";

/// The VirtualMachineMigration that carries out a balancing move of `vm` from host `from` to
/// host `to` in pool `pool`: reason `balance`, labelled with the pool, annotated with the host
/// it leaves, owned by the VM (removed with it). Also what `kubectl ferry recommendations apply`
/// creates.
pub fn migration(vm: &VirtualMachine, pool: &str, from: &str, to: &str) -> VirtualMachineMigration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        vm.metadata.uid.as_deref(),
        from,
        to,
        std::time::SystemTime::now(),
    )
        .hash(&mut h);
    let suffix = format!("{:06x}", h.finish() & 0xff_ffff);
    let base: String = vm.name_any().chars().take(253 - 16).collect();
    let mut m = VirtualMachineMigration::new(
        &format!("{}-bal-{suffix}", base.trim_end_matches(['-', '.'])),
        VirtualMachineMigrationSpec {
            vm_name: vm.name_any(),
            target_host: Some(to.to_string()),
            reason: Some(BALANCE_REASON.to_string()),
        },
    );
    m.metadata.namespace = vm.namespace();
    m.metadata.labels = Some([(BALANCE_LABEL.to_string(), pool.to_string())].into());
    m.metadata.annotations = Some([(BALANCE_FROM_ANNOTATION.to_string(), from.to_string())].into());
    m.metadata.owner_references = vm.controller_owner_ref(&()).map(|mut o| {
        o.controller = Some(false);
        o.block_owner_deletion = None;
        vec![o]
    });
    m
}

/// What a move is, in numbers, for Events.
pub(super) fn describe(m: &Move, plan: &Plan) -> String {
    format!(
        "gain {:.1} points, cost {:.1} points, {} to copy; pool imbalance {:.1} → {:.1} points (target {:.1})",
        m.gain,
        m.cost,
        capacity::quantity(super::whole_mib(m.copy_bytes)),
        plan.imbalance,
        m.after,
        plan.target
    )
}

/// Create the migrations of `plan`'s moves; per move, the migration's name, or `None` when it
/// could not be created (logged; the next run plans again).
pub(super) async fn create(
    ctx: &Context,
    pool: &HostPool,
    pool_vms: &[Arc<VirtualMachine>],
    plan: &Plan,
) -> Vec<Option<String>> {
    let ns = pool.namespace().unwrap_or_default();
    let api: Api<VirtualMachineMigration> = Api::namespaced(ctx.client.clone(), &ns);
    let mut out = Vec::with_capacity(plan.moves.len());
    for mv in &plan.moves {
        let Some(vm) = pool_vms.iter().find(|v| v.name_any() == mv.vm) else {
            out.push(None);
            continue;
        };
        let m = migration(vm, &pool.name_any(), &mv.from, &mv.to);
        let name = m.name_any();
        match api.create(&PostParams::default(), &m).await {
            Ok(_) => {
                let numbers = describe(mv, plan);
                ctx.event(
                    vm.as_ref(),
                    EventType::Normal,
                    BALANCING_EVENT,
                    "Balance",
                    format!(
                        "Balancing moves the VM from host {} to host {} ({name}): {numbers}",
                        mv.from, mv.to
                    ),
                )
                .await;
                ctx.event(
                    pool,
                    EventType::Normal,
                    BALANCING_EVENT,
                    "Balance",
                    format!(
                        "Migrating VM {} from host {} to host {} ({name}): {numbers}",
                        mv.vm, mv.from, mv.to
                    ),
                )
                .await;
                out.push(Some(name));
            }
            Err(e) => {
                tracing::warn!(vm = %mv.vm, error = %e, "could not create a balancing migration");
                out.push(None);
            }
        }
    }
    out
}
