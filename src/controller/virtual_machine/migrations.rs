//! Keeping out of a live migration's way, and taking a finished one over.

use super::*;
use crate::api::condition::{ConditionStatus, set_condition};
use crate::api::virtual_machine::VmMigrationStatus;
use crate::api::{MigrationPhase, VirtualMachine, VirtualMachineStatus, VmPhase};
use crate::controller::Context;
use crate::error::Result;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use std::time::Duration;

/// Keep out of a live migration's way, and take a finished one over. Reports the VM's latest
/// migration and its `Migrating` condition. Returns `Some(delay)` when the reconcile must stop
/// here: a migration holds the VM, or the VM just moved (its new host is in `st`).
pub(super) async fn follow(
    vm: &VirtualMachine,
    ctx: &Context,
    placed: &Placed,
    st: &mut VirtualMachineStatus,
    now: Timestamp,
) -> Result<Option<Duration>, Blocked> {
    let ns = vm.namespace().unwrap_or_default();
    let migrations = ctx.caches.migrations_of(&ns, &vm.name_any());
    let generation = vm.metadata.generation;
    st.migration = migrations.last().map(|m| {
        let s = m.status.clone().unwrap_or_default();
        VmMigrationStatus {
            name: m.name_any(),
            phase: s.phase,
            source: s.source,
            target: s.target,
            start_time: s.start_time,
            end_time: s.end_time,
            downtime_ms: s.downtime_ms,
        }
    });
    if let Some(m) = migrations.iter().find(|m| {
        m.holds_vm()
            && m.status.as_ref().and_then(|s| s.source.as_deref()) == Some(placed.name.as_str())
    }) {
        let target = m
            .status
            .as_ref()
            .and_then(|s| s.target.clone())
            .unwrap_or_default();
        st.phase = Some(VmPhase::Migrating);
        set_condition(
            &mut st.conditions,
            "Migrating",
            ConditionStatus::True,
            "Migrating",
            format!(
                "moving from host {} to host {target} ({})",
                placed.name,
                m.name_any()
            ),
            generation,
            now,
        );
        return Ok(Some(TRANSITION));
    }
    // The latest migration that left this host and succeeded: if both hosts confirm it, the VM
    // now lives on the target. Not when the target failed after it and the VM was placed anew
    // (HA proved the target off: it may never answer again).
    let landed = migrations
        .iter()
        .rev()
        .find(|m| {
            let s = m.status.clone().unwrap_or_default();
            s.phase == Some(MigrationPhase::Succeeded)
                && s.source.as_deref() == Some(placed.name.as_str())
                && s.target.as_deref().is_some_and(|t| t != placed.name)
        })
        .filter(|m| {
            let s = m.status.clone().unwrap_or_default();
            !crate::plan::migration::overtaken_by_recovery(&s, st.last_recovery.as_ref())
        });
    let (reason, message) = match migrations.last().and_then(|m| m.status.clone()) {
        Some(s) if s.phase == Some(MigrationPhase::Failed) => (
            "MigrationFailed",
            format!(
                "the last migration failed: {}",
                s.message.unwrap_or_default()
            ),
        ),
        Some(s) if s.phase == Some(MigrationPhase::Succeeded) => (
            "Migrated",
            format!(
                "moved from host {} to host {}",
                s.source.unwrap_or_default(),
                s.target.unwrap_or_default()
            ),
        ),
        _ => ("NotMigrating", "no migration in progress".to_string()),
    };
    set_condition(
        &mut st.conditions,
        "Migrating",
        ConditionStatus::False,
        reason,
        message,
        generation,
        now,
    );
    let Some(landed) = landed else {
        return Ok(None);
    };
    let uid = crate::plan::naming::vm_domain_uuid(vm);
    let here = placed
        .hv
        .lookup_domain(&uid)
        .await
        .map_err(|e| host_blocked(&placed.name, e, "looking up the domain", st.phase))?;
    if here.as_ref().is_some_and(|d| d.state.is_active()) {
        // Still here: that migration is an old record.
        return Ok(None);
    }
    let target = landed
        .status
        .as_ref()
        .and_then(|s| s.target.clone())
        .unwrap_or_default();
    let confirm = Blocked::new(
        VmPhase::Unknown,
        "MigrationUnconfirmed",
        format!(
            "migration {} reported the VM on host {target}, but that host cannot confirm it yet; ferry starts nothing until it does",
            landed.name_any()
        ),
        Retry::Backoff,
    );
    let node = ctx.caches.node(&target).ok_or_else(|| Blocked {
        message: format!("{} (Node {target} is gone)", confirm.message),
        ..Blocked::new(confirm.phase, confirm.reason, "", Retry::Backoff)
    })?;
    let there = match ctx.hosts.uri(&placed.pool, &node) {
        Ok(uri) => match ctx.hosts.connect(&uri, &placed.pool).await {
            Ok(hv) => hv.lookup_domain(&uid).await.ok().flatten(),
            Err(_) => return Err(confirm),
        },
        Err(_) => return Err(confirm),
    };
    if !there.as_ref().is_some_and(|d| d.state.is_active()) {
        // Neither host runs it: it stopped during or after the move; carry on here as usual.
        return Ok(None);
    }
    st.host = Some(target.clone());
    set_condition(
        &mut st.conditions,
        "Scheduled",
        ConditionStatus::True,
        "Migrated",
        format!("placed on host {target} by migration {}", landed.name_any()),
        generation,
        now,
    );
    ctx.event(
        vm,
        EventType::Normal,
        "Migrated",
        "Migrate",
        format!(
            "Now running on host {target} (moved from host {} by {})",
            placed.name,
            landed.name_any()
        ),
    )
    .await;
    Ok(Some(Duration::from_millis(200)))
}
