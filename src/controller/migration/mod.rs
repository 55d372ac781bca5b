//! The VirtualMachineMigration controller: admit a migration within the pool's limits, choose
//! its target, run it (peer to peer, on a connection of its own) while watching its progress,
//! and report the outcome. Deleting an unfinished migration aborts it.
//!
//! Who writes what: this controller writes only the migration's status; the VirtualMachine
//! controller moves `status.host` to the target once a succeeded migration is visible *and* both
//! hosts confirm it (the domain runs on the target and not on the source). While a migration is
//! `Scheduled` or `Running`, the VirtualMachine controller leaves the VM alone.

mod cleanup;
mod follow;
mod job;
mod schedule;
mod settle;

use super::hosts::allowed;
use super::{Context, status::apply_status};
use crate::api::condition::{ConditionStatus, set_condition};
use crate::api::{
    HostPool, MigrationPhase, VirtualMachine, VirtualMachineMigration,
    VirtualMachineMigrationStatus,
};
use crate::error::{Error, Result};
use crate::hypervisor::Hypervisor;
use crate::plan::migration::Active;
use crate::plan::uri;
use crate::plan::uri_policy::Role;
use cleanup::cleanup;
use follow::follow;
use job::{bytes_to_move, start, watch_adopted};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use schedule::schedule;
use settle::{recover, recover_with, settle_failure};
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "virtualmachinemigration";

/// Finalizer that lets a deleted migration be aborted before it goes.
pub const MIGRATION_FINALIZER: &str = "ferry.dev/migration";

/// How often a running migration is looked at.
const POLL: Duration = Duration::from_secs(1);

/// Delay before a running migration's next look when its last one waited for the job.
const FOLLOW_AGAIN: Duration = Duration::from_millis(10);

/// How often its progress is sampled by the job's watcher.
const SAMPLE: Duration = Duration::from_millis(500);

/// How long after a switch-over's expected time the next progress sample waits (see
/// [`crate::plan::migration::next_sample`]).
const SWITCH_OVER_HOLD: Duration = Duration::from_secs(3);

/// How often a migration that waits for a slot or a target is looked at again.
const WAIT: Duration = Duration::from_secs(10);

/// Reconcile one VirtualMachineMigration.
#[tracing::instrument(name = "reconcile", skip_all, fields(
    object.kind = "VirtualMachineMigration",
    object.namespace = %m.namespace().unwrap_or_default(),
    object.name = %m.name_any(),
))]
pub async fn reconcile(m: Arc<VirtualMachineMigration>, ctx: Arc<Context>) -> Result<Requeue> {
    if !ctx.gate().is_open() {
        // This replica may not act now (its leader lease lapsed): no host action, no write.
        return Ok(Requeue::requeue(super::GATE_WAIT));
    }
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    // Deciding without the VMs, pools and Nodes would misread a missing entry as a missing
    // object (after a restart, a running migration would look orphaned).
    let ready = async {
        ctx.caches.vms.wait_until_ready().await.is_ok()
            && ctx.caches.pools.wait_until_ready().await.is_ok()
            && ctx.caches.nodes.wait_until_ready().await.is_ok()
    };
    if !tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .unwrap_or(false)
    {
        return Ok(Requeue::requeue(POLL));
    }
    let ns = m.namespace().unwrap_or_default();
    let api: Api<VirtualMachineMigration> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, MIGRATION_FINALIZER, m, |event| async {
        match event {
            Finalizer::Apply(m) => apply(&m, &api, &ctx).await,
            Finalizer::Cleanup(m) => cleanup(&m, &api, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Retry failed reconciles with backoff.
pub fn error_policy(m: Arc<VirtualMachineMigration>, err: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.failure(CONTROLLER, err.category());
    let key = m.metadata.uid.clone().unwrap_or_else(|| m.name_any());
    let delay = match err {
        // Waiting for the VM controller to take a finished migration over is not a failure.
        Error::Finalizer(inner)
            if matches!(
                inner.as_ref(),
                kube::runtime::finalizer::Error::CleanupFailed(Error::Missing(_))
            ) =>
        {
            POLL
        }
        _ => ctx.backoff.next(&key),
    };
    tracing::debug!(migration = %m.name_any(), error = %err, retry_in = ?delay, "reconcile did not finish");
    Requeue::requeue(delay)
}

fn uid(m: &VirtualMachineMigration) -> String {
    m.metadata.uid.clone().unwrap_or_default()
}

async fn apply(
    m: &VirtualMachineMigration,
    api: &Api<VirtualMachineMigration>,
    ctx: &Context,
) -> Result<Requeue> {
    let st = m.status.clone().unwrap_or_default();
    match st.phase {
        Some(MigrationPhase::Succeeded | MigrationPhase::Failed | MigrationPhase::Cancelled) => {
            release_slot(ctx, m);
            Ok(Requeue::await_change())
        }
        None | Some(MigrationPhase::Pending) => schedule(m, api, ctx, st).await,
        Some(MigrationPhase::Scheduled) => start(m, api, ctx, st).await,
        Some(MigrationPhase::Running) => follow(m, api, ctx, st).await,
    }
}

/// Write `st` as the migration's status (when it changed).
async fn write(
    api: &Api<VirtualMachineMigration>,
    m: &VirtualMachineMigration,
    mut st: VirtualMachineMigrationStatus,
) -> Result<()> {
    st.observed_generation = m.metadata.generation;
    apply_status(api, m, m.status.as_ref(), &st).await?;
    Ok(())
}

/// Free the migration's slot (if it held one) and wake the migrations waiting for one.
fn release_slot(ctx: &Context, m: &VirtualMachineMigration) {
    ctx.migrations.release_slot(&uid(m));
}

/// Whether a migration waits to be admitted (it has no slot and has not started yet): these are
/// looked at again when a slot is freed.
pub fn waits_for_slot(m: &VirtualMachineMigration) -> bool {
    m.metadata.deletion_timestamp.is_none()
        && matches!(
            m.status.as_ref().and_then(|s| s.phase),
            None | Some(MigrationPhase::Pending)
        )
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// End the migration in `phase` with `message`; also frees its slot.
async fn finish(
    m: &VirtualMachineMigration,
    api: &Api<VirtualMachineMigration>,
    ctx: &Context,
    mut st: VirtualMachineMigrationStatus,
    phase: MigrationPhase,
    message: String,
) -> Result<Requeue> {
    st.phase = Some(phase);
    st.message = Some(message.clone());
    st.data_remaining_bytes = None;
    if st.end_time.is_none() {
        st.end_time = Some(now());
    }
    let (status, reason) = match phase {
        MigrationPhase::Succeeded => (ConditionStatus::True, "Succeeded"),
        MigrationPhase::Cancelled => (ConditionStatus::False, "Cancelled"),
        _ => (ConditionStatus::False, "Failed"),
    };
    set_condition(
        &mut st.conditions,
        "Complete",
        status,
        reason,
        message.clone(),
        m.metadata.generation,
        Timestamp::now(),
    );
    write(api, m, st).await?;
    release_slot(ctx, m);
    ctx.migrations.remove_job(&uid(m));
    let type_ = if phase == MigrationPhase::Succeeded {
        EventType::Normal
    } else {
        EventType::Warning
    };
    ctx.event(m, type_, reason, "Migrate", message.clone())
        .await;
    if let Some(vm) = vm_of(ctx, m) {
        ctx.event(
            vm.as_ref(),
            type_,
            &format!("Migration{reason}"),
            "Migrate",
            message,
        )
        .await;
    }
    Ok(Requeue::await_change())
}

fn vm_of(ctx: &Context, m: &VirtualMachineMigration) -> Option<Arc<VirtualMachine>> {
    let ns = m.namespace().unwrap_or_default();
    ctx.caches
        .vms
        .get(&ObjectRef::new(&m.spec.vm_name).within(&ns))
}

/// The migration's VM and its HostPool, or why one is missing.
fn vm_and_pool(
    ctx: &Context,
    m: &VirtualMachineMigration,
) -> Result<(Arc<VirtualMachine>, Arc<HostPool>), String> {
    let vm = vm_of(ctx, m).ok_or_else(|| "the VirtualMachine is gone".to_string())?;
    let pool = ctx
        .caches
        .pool_of(&vm)
        .ok_or_else(|| format!("HostPool {} does not exist", vm.spec.host_pool))?;
    Ok((vm, pool))
}

/// The migration's VM and pool, with the slot from `source` to `target` held by this process
/// (again, after a restart), or why the VM or pool is missing.
fn resume(
    ctx: &Context,
    m: &VirtualMachineMigration,
    source: &str,
    target: &str,
) -> Result<(Arc<VirtualMachine>, Arc<HostPool>), String> {
    let found = vm_and_pool(ctx, m)?;
    ctx.migrations.hold_slot(
        &uid(m),
        Active {
            source: source.to_string(),
            target: target.to_string(),
        },
    );
    Ok(found)
}

/// Everything a job needs to know about the two hosts.
struct Hosts {
    source: String,
    source_hv: Arc<dyn Hypervisor>,
    target_hv: Arc<dyn Hypervisor>,
    source_uri: String,
    peer_uri: String,
}

async fn hosts(
    ctx: &Context,
    pool: &HostPool,
    source: &str,
    target: &str,
) -> Result<Hosts, String> {
    let node = |name: &str| {
        ctx.caches
            .node(name)
            .ok_or_else(|| format!("Node {name} does not exist"))
    };
    let (sn, tn) = (node(source)?, node(target)?);
    let source_uri = ctx.hosts.uri(pool, &sn)?;
    let target_uri = ctx.hosts.uri(pool, &tn)?;
    let explicit_peer = pool
        .spec
        .migration
        .as_ref()
        .and_then(|m| m.peer_uri_template.clone());
    let peer_uri = match explicit_peer {
        Some(template) => {
            let u = uri::render(
                &template,
                &tn,
                pool.spec.libvirt.address_type.unwrap_or_default(),
            )
            .map_err(|e| format!("spec.migration.peerUriTemplate: {e}"))?;
            allowed(&u, Role::Peer, pool, ctx.hosts.uri_limits())
                .map_err(|e| format!("spec.migration.peerUriTemplate: {e}"))?;
            u
        }
        // The destination's own URI, checked as such.
        None => target_uri.clone(),
    };
    let source_hv = ctx
        .hosts
        .connect(&source_uri, pool)
        .await
        .map_err(|e| format!("host {source}: {e}"))?;
    let target_hv = ctx
        .hosts
        .connect(&target_uri, pool)
        .await
        .map_err(|e| format!("host {target}: {e}"))?;
    Ok(Hosts {
        source: source.into(),
        source_hv,
        target_hv,
        source_uri,
        peer_uri,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::VirtualMachineMigrationSpec;

    fn migration(phase: Option<MigrationPhase>, deleted: bool) -> VirtualMachineMigration {
        let mut m = VirtualMachineMigration::new(
            "m",
            VirtualMachineMigrationSpec {
                vm_name: "vm".into(),
                target_host: None,
                reason: None,
            },
        );
        m.status = Some(VirtualMachineMigrationStatus {
            phase,
            ..Default::default()
        });
        if deleted {
            m.metadata.deletion_timestamp = Some(now());
        }
        m
    }

    #[test]
    fn only_migrations_not_yet_admitted_wait_for_a_slot() {
        use MigrationPhase::*;
        for (phase, deleted, waits) in [
            (None, false, true),
            (Some(Pending), false, true),
            (Some(Pending), true, false),
            (Some(Scheduled), false, false),
            (Some(Running), false, false),
            (Some(Succeeded), false, false),
            (Some(Failed), false, false),
            (Some(Cancelled), false, false),
        ] {
            assert_eq!(
                waits_for_slot(&migration(phase, deleted)),
                waits,
                "{phase:?}, deleted {deleted}"
            );
        }
    }
}
