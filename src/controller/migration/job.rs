//! Scheduled → Running: the migration job, on a connection of its own to the source, with its
//! progress watched and the policy's limits applied (also to a job adopted after a restart).

use super::*;
use crate::api::virtual_machine::ImageFormat;
use crate::api::{
    HostPool, MigrationPhase, VirtualMachine, VirtualMachineMigration,
    VirtualMachineMigrationStatus,
};
use crate::controller::context::{Job, JobResult};
use crate::controller::{Context, scheduling};
use crate::error::{Error, Result};
use crate::hypervisor::{Hypervisor, HypervisorError, MigrationRequest, StorageMode};
use crate::metrics::MigrationOutcome;
use crate::plan::image_header;
use crate::plan::migration::{Policy, Tracker, Verdict, next_sample};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Scheduled → Running: record the start, then hand the migration to a job task.
pub(super) async fn start(
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
    let (vm, pool) = match resume(ctx, m, &source, &target) {
        Ok(found) => found,
        Err(why) => return finish(m, api, ctx, st, MigrationPhase::Failed, why).await,
    };
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
    let vm_uid = crate::plan::naming::vm_domain_uuid(&vm);
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
    let connections = ctx.hosts.connections.clone();
    tokio::spawn(async move {
        let result = run_job(
            &connections,
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
        metrics.migration_finished(match &result {
            JobResult::Succeeded { downtime_ms, .. } => MigrationOutcome::Succeeded {
                downtime: downtime_ms.map(std::time::Duration::from_millis),
            },
            JobResult::Failed(_) => MigrationOutcome::Failed,
            JobResult::Ended => MigrationOutcome::Unknown,
        });
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
pub(super) fn bytes_to_move(pool: &HostPool, vm: &VirtualMachine) -> u64 {
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

pub(super) fn request_for(
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
pub(super) struct CopyPlan {
    pool: String,
    /// Directory to define the pool at on a host that lacks it.
    path: Option<String>,
    /// (overlay, golden image, the image's declared format, size).
    overlays: Vec<(String, String, Option<ImageFormat>, u64)>,
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
                let format = pool.spec.storage.golden_image(&image);
                Some((
                    crate::plan::naming::overlay_volume_name(&ns, &vm.name_any(), &d.name, &uid),
                    image,
                    format,
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
        for (name, image, format, size) in &self.overlays {
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
            let format = format.ok_or_else(|| {
                format!(
                    "golden image {image:?} is not declared in the HostPool's spec.storage.images"
                )
            })?;
            let head = target
                .read_volume_head(&self.pool, image, image_header::HEAD_BYTES)
                .await
                .map_err(|e| format!("reading golden image {image:?} on the target: {e}"))?;
            image_header::check(format, &head).map_err(|why| {
                format!("golden image {image:?} on the target host ({format}) {why}")
            })?;
            let capacity = (*size).max(golden.capacity);
            target
                .create_overlay(&self.pool, name, &golden, format.as_str(), capacity)
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
pub(super) async fn run_job(
    connections: &crate::hypervisor::HostConnections,
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
    let dedicated = match connections.dedicated(dedicated_uri, &opts).await {
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
    // Samples are held back while a switch-over is expected (see `next_sample`).
    let mut wait = SAMPLE;
    let mut pace = Pace::default();
    let outcome = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = SAMPLE;
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
        wait = pace.next(&progress);
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
                for (name, _, _, _) in &plan.overlays {
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

pub(super) fn libvirt_reason(e: &HypervisorError) -> String {
    match e {
        HypervisorError::OperationFailed { message, .. } => message.clone(),
        HypervisorError::ConnectionLost { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Watch a migration job this process did not start (it was started before a restart): apply
/// the policy's progress and completion limits and cancels to it until it ends.
pub(super) async fn watch_adopted(
    job: &Job,
    source: &dyn Hypervisor,
    vm_uid: &str,
    policy: &Policy,
    timeout: Duration,
) {
    let mut tracker = Tracker::default();
    let mut aborted = false;
    let mut errors = 0;
    let mut wait = SAMPLE;
    let mut pace = Pace::default();
    if let Err(e) = source
        .set_migration_max_downtime(vm_uid, policy.max_downtime_ms)
        .await
    {
        tracing::debug!(error = %e, "could not set the adopted migration's maximum downtime");
    }
    loop {
        tokio::time::sleep(wait).await;
        wait = SAMPLE;
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
        wait = pace.next(&progress);
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

/// When to sample a migration job next: every [`SAMPLE`], but not while its switch-over is
/// expected ([`next_sample`] from the last two samples).
#[derive(Default)]
struct Pace(Option<(u64, u64)>);

impl Pace {
    /// The wait after the sample `p`.
    fn next(&mut self, p: &crate::hypervisor::JobProgress) -> Duration {
        let wait = next_sample(
            self.0,
            (p.elapsed_ms, p.data_processed, p.data_remaining),
            SAMPLE,
            SWITCH_OVER_HOLD,
        );
        self.0 = Some((p.elapsed_ms, p.data_processed));
        wait
    }
}
