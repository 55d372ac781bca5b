//! Where the VM runs after a failed job, or after a restart lost the job: both hosts are asked,
//! the plan says what that means, and what a failed migration left on the target is removed.

use super::*;
use crate::api::{
    HostPool, MigrationPhase, VirtualMachineMigration, VirtualMachineMigrationStatus,
};
use crate::controller::Context;
use crate::controller::context::Job;
use crate::error::Result;
use crate::hypervisor::DomainState;
use crate::plan::migration::{self, Outcome, Policy, Seen};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use std::sync::Arc;
use std::time::Duration;

/// After a failed (or aborted) job: make sure the VM runs on the source and nothing is left on
/// the target, then end the migration.
#[allow(clippy::too_many_arguments)]
pub(super) async fn settle_failure(
    m: &VirtualMachineMigration,
    api: &Api<VirtualMachineMigration>,
    ctx: &Context,
    st: VirtualMachineMigrationStatus,
    source: &str,
    target: &str,
    why: String,
    cancelled: bool,
) -> Result<Requeue> {
    let Some(vm) = vm_of(ctx, m) else {
        let phase = if cancelled {
            MigrationPhase::Cancelled
        } else {
            MigrationPhase::Failed
        };
        return finish(m, api, ctx, st, phase, why).await;
    };
    let Some(pool) = ctx.caches.pool_of(&vm) else {
        return finish(m, api, ctx, st, MigrationPhase::Failed, why).await;
    };
    let vm_uid = crate::plan::naming::vm_domain_uuid(&vm);
    let (s, t) = observe(ctx, &pool, source, target, &vm_uid).await;
    match migration::outcome(s, t) {
        Outcome::Failed => {
            clean_target(ctx, &pool, target, &vm_uid).await;
            let (phase, message) = if cancelled {
                (
                    MigrationPhase::Cancelled,
                    format!("{why}; the VM keeps running on host {source}"),
                )
            } else {
                (
                    MigrationPhase::Failed,
                    format!("{why}; the VM keeps running on host {source}"),
                )
            };
            finish(m, api, ctx, st, phase, message).await
        }
        Outcome::Succeeded => {
            // libvirt reported an error after the switch-over (or the abort came too late): the
            // VM runs on the target, which is what counts.
            let message =
                format!("moved from host {source} to host {target} (libvirt reported: {why})");
            finish(m, api, ctx, st, MigrationPhase::Succeeded, message).await
        }
        Outcome::InProgress => Ok(Requeue::requeue(POLL)),
        Outcome::Unclear(u) => {
            let mut st = st;
            st.message = Some(format!("{why}; waiting to see where the VM runs: {u}"));
            write(api, m, st).await?;
            Ok(Requeue::requeue(Duration::from_secs(5)))
        }
    }
}

/// What the source and the target say about the VM's domain.
pub(super) async fn observe(
    ctx: &Context,
    pool: &HostPool,
    source: &str,
    target: &str,
    vm_uid: &str,
) -> (Seen, Seen) {
    let see = |name: String| async move {
        let Some(node) = ctx.caches.node(&name) else {
            return Seen::Unknown;
        };
        let Ok(uri) = ctx.hosts.uri(pool, &node) else {
            return Seen::Unknown;
        };
        let Ok(hv) = ctx.hosts.connect(&uri, pool).await else {
            return Seen::Unknown;
        };
        match hv.lookup_domain(vm_uid).await {
            Ok(Some(d)) if d.state.is_active() => {
                let job = match hv.job_progress(vm_uid).await {
                    Ok(j) => j.is_some(),
                    Err(_) => return Seen::Unknown,
                };
                Seen::Active {
                    paused: d.state == DomainState::Paused,
                    job,
                }
            }
            Ok(_) => Seen::Absent,
            Err(_) => Seen::Unknown,
        }
    };
    futures::join!(see(source.to_string()), see(target.to_string()))
}

/// Remove what a failed migration left on the target: an incoming copy that is not running on
/// its own (paused, or defined and shut off). Never touches a running copy.
pub(super) async fn clean_target(ctx: &Context, pool: &HostPool, target: &str, vm_uid: &str) {
    let Some(node) = ctx.caches.node(target) else {
        return;
    };
    let Ok(uri) = ctx.hosts.uri(pool, &node) else {
        return;
    };
    let Ok(hv) = ctx.hosts.connect(&uri, pool).await else {
        return;
    };
    match hv.lookup_domain(vm_uid).await {
        Ok(Some(d)) if d.state == DomainState::Paused => {
            if let Err(e) = hv.destroy_domain(vm_uid).await {
                tracing::warn!(host = target, error = %e, "could not remove the incoming copy");
            }
            let _ = hv.undefine_domain(vm_uid).await;
        }
        Ok(Some(d)) if !d.state.is_active() => {
            if let Err(e) = hv.undefine_domain(vm_uid).await {
                tracing::warn!(host = target, error = %e, "could not undefine the leftover domain");
            }
        }
        _ => {}
    }
}

/// A Running migration this process does not run (it restarted): ask both hosts.
pub(super) async fn recover(
    m: &VirtualMachineMigration,
    api: &Api<VirtualMachineMigration>,
    ctx: &Context,
    st: VirtualMachineMigrationStatus,
) -> Result<Requeue> {
    recover_with(m, api, ctx, st, None).await
}

/// [`recover`], knowing why an adopted job was aborted, when it was.
pub(super) async fn recover_with(
    m: &VirtualMachineMigration,
    api: &Api<VirtualMachineMigration>,
    ctx: &Context,
    st: VirtualMachineMigrationStatus,
    aborted: Option<String>,
) -> Result<Requeue> {
    let source = st.source.clone().unwrap_or_default();
    let target = st.target.clone().unwrap_or_default();
    let (vm, pool) = match resume(ctx, m, &source, &target) {
        Ok(found) => found,
        Err(why) => return finish(m, api, ctx, st, MigrationPhase::Failed, why).await,
    };
    let vm_uid = crate::plan::naming::vm_domain_uuid(&vm);
    let (s, t) = observe(ctx, &pool, &source, &target, &vm_uid).await;
    match migration::outcome(s, t) {
        Outcome::InProgress => {
            // libvirt carries on with a peer-to-peer migration when its client is gone: adopt
            // the job, so that its limits and a cancel still apply.
            if let Ok(h) = hosts(ctx, &pool, &source, &target).await {
                let job = Arc::new(Job::default());
                if m.metadata.deletion_timestamp.is_some() {
                    job.request_cancel("cancelled: the VirtualMachineMigration was deleted");
                }
                ctx.migrations.add_job(&uid(m), job.clone());
                let policy = Policy::for_vm(&pool, &vm);
                let timeout = policy.completion_timeout(bytes_to_move(&pool, &vm));
                tracing::info!(migration = %m.name_any(), "adopting a migration job that outlived its controller");
                tokio::spawn(async move {
                    watch_adopted(&job, h.source_hv.as_ref(), &vm_uid, &policy, timeout).await;
                });
            }
            Ok(Requeue::requeue(POLL))
        }
        Outcome::Succeeded => {
            let mut st = st;
            if let Ok(h) = hosts(ctx, &pool, &source, &target).await
                && let Ok(Some(done)) = h.target_hv.completed_job(&vm_uid).await
            {
                st.downtime_ms = done.downtime_ms.map(|d| d as i64);
            }
            let message = format!(
                "moved from host {source} to host {target} (confirmed by both hosts after a controller restart)"
            );
            finish(m, api, ctx, st, MigrationPhase::Succeeded, message).await
        }
        Outcome::Failed => {
            clean_target(ctx, &pool, &target, &vm_uid).await;
            let phase = if m.metadata.deletion_timestamp.is_some() {
                MigrationPhase::Cancelled
            } else {
                MigrationPhase::Failed
            };
            let why = aborted.unwrap_or_else(|| {
                "the migration did not complete (the controller restarted while it ran)".into()
            });
            let message = format!("{why}; the VM keeps running on host {source}");
            finish(m, api, ctx, st, phase, message).await
        }
        Outcome::Unclear(u) => {
            let mut st = st;
            st.message = Some(format!("waiting to see where the VM runs: {u}"));
            write(api, m, st).await?;
            Ok(Requeue::requeue(Duration::from_secs(5)))
        }
    }
}
