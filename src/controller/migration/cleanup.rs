//! Deleting a migration: abort it if it runs, and let it go once nothing can move any more.

use super::*;
use crate::api::{MigrationPhase, VirtualMachineMigration};
use crate::controller::Context;
use crate::error::{Error, Result};
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;

/// A migration is being deleted: abort it if it runs, and let it go once nothing can move any
/// more and a VM that did move has been taken over by the VirtualMachine controller.
pub(super) async fn cleanup(
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
