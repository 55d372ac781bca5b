//! The VirtualMachineMigration controller: admit a migration within the pool's limits, choose
//! its target, run it (peer to peer, on a connection of its own) while watching its progress,
//! and report the outcome. Deleting an unfinished migration aborts it.
//!
//! Who writes what: this controller writes only the migration's status; the VirtualMachine
//! controller moves `status.host` to the target once a succeeded migration is visible *and* both
//! hosts confirm it (the domain runs on the target and not on the source). While a migration is
//! `Scheduled` or `Running`, the VirtualMachine controller leaves the VM alone.

use super::context::{Job, JobResult};
use super::hosts::host_uri;
use super::{Context, scheduling, status::apply_status};
use crate::api::condition::{ConditionStatus, set_condition};
use crate::api::{
    HostPool, MigrationPhase, VirtualMachine, VirtualMachineMigration,
    VirtualMachineMigrationStatus,
};
use crate::error::{Error, Result};
use crate::hypervisor::{DomainState, Hypervisor, HypervisorError, MigrationRequest, StorageMode};
use crate::plan::migration::{self, Active, Outcome, Policy, Seen, Tracker, Verdict};
use crate::plan::uri;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONTROLLER: &str = "virtualmachinemigration";
/// Finalizer that lets a deleted migration be aborted before it goes.
pub const MIGRATION_FINALIZER: &str = "ferry.dev/migration";
/// How often a running migration is looked at.
const POLL: Duration = Duration::from_secs(1);
/// Delay before a running migration's next look when its last one waited for the job.
const FOLLOW_AGAIN: Duration = Duration::from_millis(10);
/// How often its progress is sampled by the job's watcher.
const SAMPLE: Duration = Duration::from_millis(500);
/// How often a migration that waits for a slot or a target is looked at again.
const WAIT: Duration = Duration::from_secs(10);

/// Reconcile one VirtualMachineMigration.
#[tracing::instrument(name = "reconcile", skip_all, fields(
    object.kind = "VirtualMachineMigration",
    object.namespace = %m.namespace().unwrap_or_default(),
    object.name = %m.name_any(),
))]
pub async fn reconcile(m: Arc<VirtualMachineMigration>, ctx: Arc<Context>) -> Result<Requeue> {
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
    let pool = pool_of(ctx, &vm)
        .ok_or_else(|| format!("HostPool {} does not exist", vm.spec.host_pool))?;
    Ok((vm, pool))
}

fn pool_of(ctx: &Context, vm: &VirtualMachine) -> Option<Arc<HostPool>> {
    let ns = vm.namespace().unwrap_or_default();
    ctx.caches
        .pools
        .get(&ObjectRef::new(&vm.spec.host_pool).within(&ns))
}

/// Pending → Scheduled: check the VM, choose the target, take a slot.
async fn schedule(
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
    let Some(pool) = pool_of(ctx, &vm) else {
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
            ctx,
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
/// as Scheduled or Running (after a restart), except `me`.
fn active_slots(
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
        if k == me || out.contains_key(&k) || !m.holds_vm() || m.namespace() != pool_ns {
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
            .nodes
            .get(&ObjectRef::new(name))
            .ok_or_else(|| format!("Node {name} does not exist"))
    };
    let (sn, tn) = (node(source)?, node(target)?);
    let source_uri = host_uri(pool, &sn)?;
    let target_uri = host_uri(pool, &tn)?;
    let peer_template = pool
        .spec
        .migration
        .as_ref()
        .and_then(|m| m.peer_uri_template.clone())
        .unwrap_or_else(|| pool.spec.libvirt.uri_template.clone());
    let peer_uri = uri::render(
        &peer_template,
        &tn,
        pool.spec.libvirt.address_type.unwrap_or_default(),
    )
    .map_err(|e| format!("spec.migration.peerUriTemplate: {e}"))?;
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

/// Scheduled → Running: record the start, then hand the migration to a job task.
async fn start(
    m: &VirtualMachineMigration,
    api: &Api<VirtualMachineMigration>,
    ctx: &Context,
    mut st: VirtualMachineMigrationStatus,
) -> Result<Requeue> {
    let (Some(source), Some(target)) = (st.source.clone(), st.target.clone()) else {
        return finish(
            m,
            api,
            ctx,
            st,
            MigrationPhase::Failed,
            "scheduled without source or target".into(),
        )
        .await;
    };
    let (vm, pool) = match vm_and_pool(ctx, m) {
        Ok(found) => found,
        Err(why) => return finish(m, api, ctx, st, MigrationPhase::Failed, why).await,
    };
    ctx.migrations.hold_slot(
        &uid(m),
        Active {
            source: source.clone(),
            target: target.clone(),
        },
    );
    let hosts = match hosts(ctx, &pool, &source, &target).await {
        Ok(h) => h,
        Err(why) => {
            return finish(
                m,
                api,
                ctx,
                st,
                MigrationPhase::Failed,
                format!("cannot reach the hosts: {why}"),
            )
            .await;
        }
    };
    // The VM controller must see this migration as holding the VM before libvirt starts: the
    // store it reads is this controller's, and it shows the migration already (it triggered this
    // reconcile), as Scheduled.
    st.phase = Some(MigrationPhase::Running);
    st.start_time = Some(now());
    st.message = Some(format!("moving from host {source} to host {target}"));
    write(api, m, st).await?;
    let job = Arc::new(Job::default());
    ctx.migrations.add_job(&uid(m), job.clone());
    let policy = Policy::for_vm(&pool, &vm);
    let request = request_for(&pool, &vm, &policy, &hosts.peer_uri);
    let vm_uid = vm.metadata.uid.clone().unwrap_or_default();
    let metrics = ctx.metrics.clone();
    let opts = ctx
        .hosts
        .dedicated_options(&pool, request.timeout + Duration::from_secs(60));
    let dedicated_uri = ctx
        .hosts
        .credentialed_uri(&hosts.source_uri, &pool)
        .await
        .map_err(Error::Hypervisor)?;
    let copy = CopyPlan::for_vm(&pool, &vm);
    tokio::spawn(async move {
        let result = run_job(
            &job,
            &hosts,
            &vm_uid,
            &request,
            &policy,
            &dedicated_uri,
            opts,
            copy,
        )
        .await;
        metrics.migration_finished(matches!(result, JobResult::Succeeded { .. }));
        job.finish(result);
    });
    ctx.event(
        m,
        EventType::Normal,
        "Started",
        "Migrate",
        format!("Live migration from host {source} to host {target} started"),
    )
    .await;
    Ok(Requeue::requeue(POLL))
}

/// Bytes a migration moves: guest memory, plus the VM's disks when storage is copied.
fn bytes_to_move(pool: &HostPool, vm: &VirtualMachine) -> u64 {
    let memory = scheduling::need(vm).memory;
    if pool.shared_storage() {
        memory
    } else {
        let disks: u64 = vm
            .spec
            .disks
            .iter()
            .filter_map(|d| d.size.as_deref())
            .filter_map(|s| crate::plan::quantity::parse_bytes(s).ok())
            .sum();
        memory.saturating_add(disks)
    }
}

fn request_for(
    pool: &HostPool,
    vm: &VirtualMachine,
    policy: &Policy,
    peer_uri: &str,
) -> MigrationRequest {
    let timeout = policy.completion_timeout(bytes_to_move(pool, vm));
    let shared = pool.shared_storage();
    MigrationRequest {
        destination_uri: peer_uri.to_string(),
        bandwidth_mib: policy.bandwidth_mib,
        auto_converge: policy.auto_converge,
        post_copy: policy.post_copy,
        storage: if shared {
            StorageMode::Shared
        } else {
            StorageMode::CopyIncremental
        },
        copy_disks: if shared {
            Vec::new()
        } else {
            crate::plan::definition::disk_targets(vm)
        },
        // The watcher aborts at the completion timeout; this only bounds the wait for libvirt.
        timeout: timeout + Duration::from_secs(120),
    }
}

/// Overlays to create on the target before a non-shared-storage migration: the target needs
/// each image disk's overlay (on its own copy of the golden image) for libvirt to copy the top
/// layer into.
struct CopyPlan {
    pool: String,
    /// Directory to define the pool at on a host that lacks it.
    path: Option<String>,
    overlays: Vec<(String, String, u64)>,
}

impl CopyPlan {
    fn for_vm(pool: &HostPool, vm: &VirtualMachine) -> Option<CopyPlan> {
        if pool.shared_storage() {
            return None;
        }
        let ns = vm.namespace().unwrap_or_default();
        let uid = vm.metadata.uid.clone().unwrap_or_default();
        let overlays = vm
            .spec
            .disks
            .iter()
            .filter_map(|d| {
                let image = d.image.clone()?;
                let size = d
                    .size
                    .as_deref()
                    .and_then(|s| crate::plan::quantity::parse_bytes(s).ok())
                    .unwrap_or(0);
                Some((
                    crate::plan::naming::overlay_volume_name(&ns, &vm.name_any(), &d.name, &uid),
                    image,
                    size,
                ))
            })
            .collect();
        Some(CopyPlan {
            pool: pool.spec.storage.pool.clone(),
            path: pool.spec.storage.path.clone(),
            overlays,
        })
    }

    /// Create the overlays on the target; returns the ones created (to remove on failure).
    async fn prepare(&self, target: &dyn Hypervisor) -> Result<Vec<String>, String> {
        let mut created = Vec::new();
        target
            .ensure_pool(&self.pool, self.path.as_deref())
            .await
            .map_err(|e| format!("storage pool {:?} on the target host: {e}", self.pool))?;
        for (name, image, size) in &self.overlays {
            if target
                .lookup_volume(&self.pool, name)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                continue;
            }
            let golden = target
                .lookup_volume(&self.pool, image)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!(
                        "golden image {image:?} is not in storage pool {:?} on the target host: storage is not shared, so every host needs its own copy",
                        self.pool
                    )
                })?;
            let capacity = (*size).max(golden.capacity);
            target
                .create_overlay(&self.pool, name, &golden, capacity)
                .await
                .map_err(|e| format!("creating overlay {name} on the target: {e}"))?;
            created.push(name.clone());
        }
        Ok(created)
    }
}

/// Run one migration to its end: start it on a dedicated connection to the source, sample its
/// progress from the shared one, abort it when the policy (or a cancel) says so.
#[allow(clippy::too_many_arguments)]
async fn run_job(
    job: &Job,
    hosts: &Hosts,
    vm_uid: &str,
    request: &MigrationRequest,
    policy: &Policy,
    dedicated_uri: &str,
    opts: crate::hypervisor::connections::ConnectOptions,
    copy: Option<CopyPlan>,
) -> JobResult {
    let mut created = Vec::new();
    if let Some(plan) = &copy {
        match plan.prepare(hosts.target_hv.as_ref()).await {
            Ok(c) => created = c,
            Err(why) => return JobResult::Failed(why),
        }
    }
    let dedicated = match crate::hypervisor::LibvirtHost::connect(dedicated_uri, opts).await {
        Ok(h) => h,
        Err(e) => {
            return JobResult::Failed(format!(
                "cannot open a migration connection to host {}: {e}",
                hosts.source
            ));
        }
    };
    let call = dedicated.migrate(vm_uid, request);
    tokio::pin!(call);
    let started = Instant::now();
    let timeout = policy
        .completion_timeout(0)
        .max(request.timeout - Duration::from_secs(120));
    let mut tracker = Tracker::default();
    let mut downtime_set = false;
    let mut aborted: Option<String> = None;
    let outcome = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = tokio::time::sleep(SAMPLE) => {}
        }
        if aborted.is_none() && job.cancel_requested() {
            let why = job.cancel_reason().unwrap_or_else(|| "cancelled".into());
            aborted = Some(why);
            if let Err(e) = hosts.source_hv.abort_job(vm_uid).await {
                tracing::warn!(error = %e, "could not abort the migration job");
            }
            continue;
        }
        let progress = match hosts.source_hv.job_progress(vm_uid).await {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "no migration progress sample");
                continue;
            }
        };
        if !downtime_set {
            downtime_set = true;
            if let Err(e) = hosts
                .source_hv
                .set_migration_max_downtime(vm_uid, policy.max_downtime_ms)
                .await
            {
                tracing::warn!(error = %e, "could not set the migration's maximum downtime");
            }
        }
        let verdict = tracker.sample(policy, timeout, started.elapsed(), progress.data_remaining);
        job.sampled(progress);
        match verdict {
            Verdict::Continue => {}
            Verdict::Abort(why) if aborted.is_none() => {
                aborted = Some(why);
                if let Err(e) = hosts.source_hv.abort_job(vm_uid).await {
                    tracing::warn!(error = %e, "could not abort the migration job");
                }
            }
            Verdict::Abort(_) => {}
            Verdict::StartPostCopy => match hosts.source_hv.start_post_copy(vm_uid).await {
                Ok(()) => job.switched_to_post_copy(),
                Err(e) => tracing::warn!(error = %e, "could not switch to post-copy"),
            },
        }
    };
    dedicated.close().await;
    match outcome {
        Ok(()) => {
            let done = hosts.target_hv.completed_job(vm_uid).await.ok().flatten();
            // Storage not shared: the disks now live on the target; the source's copies go.
            if let Some(plan) = &copy {
                for (name, _, _) in &plan.overlays {
                    if let Err(e) = hosts.source_hv.delete_volume(&plan.pool, name).await {
                        tracing::warn!(volume = %name, error = %e, "could not remove the source's copy of a migrated disk");
                    }
                }
            }
            JobResult::Succeeded {
                downtime_ms: done.as_ref().and_then(|d| d.downtime_ms),
                data_bytes: done
                    .as_ref()
                    .map(|d| d.data_processed)
                    .filter(|b| *b > 0)
                    .or_else(|| job.progress().map(|p| p.data_processed)),
            }
        }
        Err(e) => {
            let why = match aborted {
                Some(why) => why,
                None => libvirt_reason(&e),
            };
            if let Some(plan) = &copy {
                for name in &created {
                    if let Err(e) = hosts.target_hv.delete_volume(&plan.pool, name).await {
                        tracing::warn!(volume = %name, error = %e, "could not remove an overlay made for a failed migration");
                    }
                }
            }
            JobResult::Failed(why)
        }
    }
}

fn libvirt_reason(e: &HypervisorError) -> String {
    match e {
        HypervisorError::OperationFailed { message, .. } => message.clone(),
        HypervisorError::ConnectionLost { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Running: report progress while the job runs here; decide from both hosts when it does not
/// (the controller restarted).
async fn follow(
    m: &VirtualMachineMigration,
    api: &Api<VirtualMachineMigration>,
    ctx: &Context,
    mut st: VirtualMachineMigrationStatus,
) -> Result<Requeue> {
    let job = ctx.migrations.job(&uid(m));
    let Some(job) = job else {
        return recover(m, api, ctx, st).await;
    };
    if let Some(vm) = vm_of(ctx, m)
        && vm.metadata.deletion_timestamp.is_some()
    {
        job.request_cancel("the VirtualMachine is being deleted");
    }
    // Wait (up to one poll) for the job to end, so that its end is recorded as soon as libvirt
    // returns rather than at the next poll: a short migration would otherwise take up to a
    // poll longer than the libvirt job, and its slot would stay taken for as long.
    job.wait(POLL).await;
    let result = job.result();
    let source = st.source.clone().unwrap_or_default();
    let target = st.target.clone().unwrap_or_default();
    st.post_copy = job.post_copy();
    match result {
        None => {
            if let Some(p) = job.progress() {
                st.data_transferred_bytes = Some(p.data_processed as i64);
                st.data_remaining_bytes = Some(p.data_remaining as i64);
            }
            write(api, m, st).await?;
            // This reconcile already waited up to a poll for the job: look again at once, so
            // that some reconcile is always waiting when the job ends.
            Ok(Requeue::requeue(FOLLOW_AGAIN))
        }
        Some(JobResult::Succeeded {
            downtime_ms,
            data_bytes,
        }) => {
            st.downtime_ms = downtime_ms.map(|d| d as i64);
            st.data_transferred_bytes = data_bytes.map(|b| b as i64).or(st.data_transferred_bytes);
            let secs = elapsed_secs(&st);
            let message = format!(
                "moved from host {source} to host {target} in {secs:.1}s{}",
                downtime_ms
                    .map(|d| format!(", downtime {d} ms"))
                    .unwrap_or_default()
            );
            finish(m, api, ctx, st, MigrationPhase::Succeeded, message).await
        }
        Some(JobResult::Failed(why)) => {
            let cancelled = job.cancel_requested();
            settle_failure(m, api, ctx, st, &source, &target, why, cancelled).await
        }
        Some(JobResult::Ended) => {
            ctx.migrations.remove_job(&uid(m));
            let why = job.abort_reason().or_else(|| job.cancel_reason());
            recover_with(m, api, ctx, st, why).await
        }
    }
}

/// Watch a migration job this process did not start (it was started before a restart): apply
/// the policy's progress and completion limits and cancels to it until it ends.
async fn watch_adopted(
    job: &Job,
    source: &dyn Hypervisor,
    vm_uid: &str,
    policy: &Policy,
    timeout: Duration,
) {
    let mut tracker = Tracker::default();
    let mut aborted = false;
    let mut errors = 0;
    if let Err(e) = source
        .set_migration_max_downtime(vm_uid, policy.max_downtime_ms)
        .await
    {
        tracing::debug!(error = %e, "could not set the adopted migration's maximum downtime");
    }
    loop {
        tokio::time::sleep(SAMPLE).await;
        if !aborted && job.cancel_requested() {
            aborted = true;
            if let Err(e) = source.abort_job(vm_uid).await {
                tracing::warn!(error = %e, "could not abort the adopted migration job");
            }
        }
        let progress = match source.job_progress(vm_uid).await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                errors += 1;
                tracing::debug!(error = %e, "no progress sample of the adopted migration");
                if errors > 20 {
                    break;
                }
                continue;
            }
        };
        errors = 0;
        let elapsed = Duration::from_millis(progress.elapsed_ms);
        let verdict = tracker.sample(policy, timeout, elapsed, progress.data_remaining);
        job.sampled(progress);
        match verdict {
            Verdict::Abort(why) if !aborted => {
                aborted = true;
                tracing::info!(reason = %why, "aborting the adopted migration");
                job.aborted_because(why);
                let _ = source.abort_job(vm_uid).await;
            }
            Verdict::StartPostCopy if source.start_post_copy(vm_uid).await.is_ok() => {
                job.switched_to_post_copy();
            }
            _ => {}
        }
    }
    job.finish(JobResult::Ended);
}

fn elapsed_secs(st: &VirtualMachineMigrationStatus) -> f64 {
    match &st.start_time {
        Some(t) => Timestamp::now().duration_since(t.0).as_secs_f64().max(0.0),
        None => 0.0,
    }
}

/// After a failed (or aborted) job: make sure the VM runs on the source and nothing is left on
/// the target, then end the migration.
#[allow(clippy::too_many_arguments)]
async fn settle_failure(
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
    let Some(pool) = pool_of(ctx, &vm) else {
        return finish(m, api, ctx, st, MigrationPhase::Failed, why).await;
    };
    let vm_uid = vm.metadata.uid.clone().unwrap_or_default();
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
async fn observe(
    ctx: &Context,
    pool: &HostPool,
    source: &str,
    target: &str,
    vm_uid: &str,
) -> (Seen, Seen) {
    let see = |name: String| async move {
        let Some(node) = ctx.caches.nodes.get(&ObjectRef::new(&name)) else {
            return Seen::Unknown;
        };
        let Ok(uri) = host_uri(pool, &node) else {
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
async fn clean_target(ctx: &Context, pool: &HostPool, target: &str, vm_uid: &str) {
    let Some(node) = ctx.caches.nodes.get(&ObjectRef::new(target)) else {
        return;
    };
    let Ok(uri) = host_uri(pool, &node) else {
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
async fn recover(
    m: &VirtualMachineMigration,
    api: &Api<VirtualMachineMigration>,
    ctx: &Context,
    st: VirtualMachineMigrationStatus,
) -> Result<Requeue> {
    recover_with(m, api, ctx, st, None).await
}

/// [`recover`], knowing why an adopted job was aborted, when it was.
async fn recover_with(
    m: &VirtualMachineMigration,
    api: &Api<VirtualMachineMigration>,
    ctx: &Context,
    st: VirtualMachineMigrationStatus,
    aborted: Option<String>,
) -> Result<Requeue> {
    let source = st.source.clone().unwrap_or_default();
    let target = st.target.clone().unwrap_or_default();
    let (vm, pool) = match vm_and_pool(ctx, m) {
        Ok(found) => found,
        Err(why) => return finish(m, api, ctx, st, MigrationPhase::Failed, why).await,
    };
    ctx.migrations.hold_slot(
        &uid(m),
        Active {
            source: source.clone(),
            target: target.clone(),
        },
    );
    let vm_uid = vm.metadata.uid.clone().unwrap_or_default();
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

/// A migration is being deleted: abort it if it runs, and let it go once nothing can move any
/// more and a VM that did move has been taken over by the VirtualMachine controller.
async fn cleanup(
    m: &VirtualMachineMigration,
    api: &Api<VirtualMachineMigration>,
    ctx: &Context,
) -> Result<Requeue> {
    let st = m.status.clone().unwrap_or_default();
    match st.phase {
        None | Some(MigrationPhase::Pending) | Some(MigrationPhase::Scheduled) => {
            release_slot(ctx, m);
            if st.phase.is_some() {
                let _ = finish(
                    m,
                    api,
                    ctx,
                    st,
                    MigrationPhase::Cancelled,
                    "cancelled before it started".into(),
                )
                .await;
            }
            Ok(Requeue::await_change())
        }
        Some(MigrationPhase::Running) => {
            if let Some(job) = ctx.migrations.job(&uid(m)) {
                job.request_cancel("cancelled: the VirtualMachineMigration was deleted");
            }
            // Progresses the job to its end (or recovers it); the finalizer stays until then.
            follow(m, api, ctx, st).await?;
            Err(Error::Missing(
                "waiting for the cancelled migration to end".into(),
            ))
        }
        Some(MigrationPhase::Succeeded) => {
            // The VM moved: keep this record until the VM controller has taken the move over,
            // or the VM would look lost on its old host.
            let moved = vm_of(ctx, m).is_none_or(|vm| {
                vm.status.as_ref().and_then(|s| s.host.as_deref()) != st.source.as_deref()
            });
            if moved {
                Ok(Requeue::await_change())
            } else {
                Err(Error::Missing(
                    "waiting for the VirtualMachine to record its new host".into(),
                ))
            }
        }
        Some(MigrationPhase::Failed | MigrationPhase::Cancelled) => {
            release_slot(ctx, m);
            Ok(Requeue::await_change())
        }
    }
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
