//! Pending → Scheduled: check the VM, choose the target, take a slot within the pool's limits.

use super::*;
use crate::api::{
    HostPool, MigrationPhase, VirtualMachineMigration, VirtualMachineMigrationStatus,
};
use crate::controller::{Context, scheduling};
use crate::error::Result;
use crate::plan::migration::{self, Active, Policy};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use std::time::Duration;

/// Pending → Scheduled: check the VM, choose the target, take a slot.
pub(super) async fn schedule(
    m: &VirtualMachineMigration,
    api: &Api<VirtualMachineMigration>,
    ctx: &Context,
    mut st: VirtualMachineMigrationStatus,
) -> Result<Requeue> {
    let fail = |st, message: String| finish(m, api, ctx, st, MigrationPhase::Failed, message);
    let Some(vm) = vm_of(ctx, m) else {
        return fail(
            st,
            format!(
                "VirtualMachine {:?} does not exist in this namespace",
                m.spec.vm_name
            ),
        )
        .await;
    };
    if vm.metadata.deletion_timestamp.is_some() {
        return fail(st, "the VirtualMachine is being deleted".into()).await;
    }
    // At most one migration per VM: the oldest unfinished one goes first, later ones fail.
    let ns = m.namespace().unwrap_or_default();
    if let Some(other) = ctx
        .caches
        .migrations_of(&ns, &m.spec.vm_name)
        .into_iter()
        .find(|o| uid(o) != uid(m) && !o.is_terminal() && o.metadata.deletion_timestamp.is_none())
        .filter(|o| {
            o.holds_vm()
                || (o.metadata.creation_timestamp.as_ref(), o.name_any())
                    < (m.metadata.creation_timestamp.as_ref(), m.name_any())
        })
    {
        return fail(
            st,
            format!(
                "VirtualMachine {} already has an unfinished migration ({}); delete one of them",
                m.spec.vm_name,
                other.name_any()
            ),
        )
        .await;
    }
    let vst = vm.status.clone().unwrap_or_default();
    let (Some(source), Some(crate::api::VmPhase::Running)) = (vst.host.clone(), vst.phase) else {
        return fail(
            st,
            format!(
                "only a running VM live-migrates; VirtualMachine {} is {}",
                m.spec.vm_name,
                vst.phase
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "not placed yet".into())
            ),
        )
        .await;
    };
    let Some(pool) = ctx.caches.pool_of(&vm) else {
        return fail(st, format!("HostPool {} does not exist", vm.spec.host_pool)).await;
    };
    if m.spec.target_host.as_deref() == Some(source.as_str()) {
        return fail(
            st,
            format!("the VM already runs on host {source}: choose another targetHost"),
        )
        .await;
    }
    if let Some(t) = &m.spec.target_host
        && !pool
            .status
            .as_ref()
            .is_some_and(|s| s.hosts.iter().any(|h| &h.name == t))
    {
        return fail(
            st,
            format!(
                "targetHost {t:?} is not a host of HostPool {}",
                vm.spec.host_pool
            ),
        )
        .await;
    }
    st.source = Some(source.clone());
    let policy = Policy::of(&pool);
    // Choose and admit under one lock, so that migrations admitted at the same time see each other.
    let admitted = {
        let mut slots = ctx.migrations.slots();
        let active = active_slots(ctx, &pool, &slots, &uid(m));
        match scheduling::choose_migration_target(
            &vm,
            &pool,
            &ctx.caches,
            &ctx.ha,
            &ctx.placement,
            &source,
            m.spec.target_host.as_deref(),
        ) {
            Err(why) => Err(format!("waiting for a target host: {why}")),
            Ok(target) => match migration::admit(&policy, &active, &source, &target) {
                Err(why) => Err(format!(
                    "waiting for a migration slot to host {target}: {why}"
                )),
                Ok(()) => {
                    slots.insert(
                        uid(m),
                        Active {
                            source: source.clone(),
                            target: target.clone(),
                        },
                    );
                    Ok(target)
                }
            },
        }
    };
    match admitted {
        Err(why) => {
            st.phase = Some(MigrationPhase::Pending);
            st.message = Some(why);
            write(api, m, st).await?;
            Ok(Requeue::requeue(WAIT))
        }
        Ok(target) => {
            st.phase = Some(MigrationPhase::Scheduled);
            st.target = Some(target.clone());
            st.message = None;
            st.storage = Some(
                if pool.shared_storage() {
                    "Shared"
                } else {
                    "Copied"
                }
                .into(),
            );
            if let Err(e) = write(api, m, st).await {
                release_slot(ctx, m);
                return Err(e);
            }
            ctx.event(
                m,
                EventType::Normal,
                "Scheduled",
                "Migrate",
                format!(
                    "Moving VM {} from host {source} to host {target}",
                    m.spec.vm_name
                ),
            )
            .await;
            Ok(Requeue::requeue(Duration::ZERO))
        }
    }
}

/// Slots taken in the pool: migrations admitted here and not finished, plus those the store shows
/// as Scheduled or Running (after a restart), except `me`. A migration whose slot was released
/// here lately does not count, although the store may not show its end yet: the wake-up of the
/// waiting migrations comes right after the release, before the watch delivers the final status.
pub(super) fn active_slots(
    ctx: &Context,
    pool: &HostPool,
    slots: &std::collections::HashMap<String, Active>,
    me: &str,
) -> Vec<Active> {
    let mut out: std::collections::BTreeMap<String, Active> = slots
        .iter()
        .filter(|(k, _)| k.as_str() != me)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let pool_ns = pool.namespace();
    for m in ctx.caches.migrations.state() {
        let k = uid(&m);
        if k == me
            || out.contains_key(&k)
            || !m.holds_vm()
            || m.namespace() != pool_ns
            || ctx.migrations.released_lately(&k)
        {
            continue;
        }
        let in_pool = vm_of(ctx, &m).is_some_and(|vm| vm.spec.host_pool == pool.name_any());
        if let (true, Some(s)) = (in_pool, m.status.as_ref())
            && let (Some(source), Some(target)) = (s.source.clone(), s.target.clone())
        {
            out.insert(k, Active { source, target });
        }
    }
    out.into_values().collect()
}
