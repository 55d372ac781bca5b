//! Running: report a job's progress, and its end.

use super::*;
use crate::api::{MigrationPhase, VirtualMachineMigration, VirtualMachineMigrationStatus};
use crate::controller::Context;
use crate::controller::context::JobResult;
use crate::error::Result;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;

/// Running: report progress while the job runs here; decide from both hosts when it does not
/// (the controller restarted).
pub(super) async fn follow(
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

pub(super) fn elapsed_secs(st: &VirtualMachineMigrationStatus) -> f64 {
    match &st.start_time {
        Some(t) => Timestamp::now().duration_since(t.0).as_secs_f64().max(0.0),
        None => 0.0,
    }
}
