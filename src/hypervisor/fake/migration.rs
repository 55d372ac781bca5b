//! Live migration between two fake hosts of one connector.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::connection::{FakeConnection, deliveries};
use super::faults::Op;
use super::world::{Event, FakeDomain, OPERATION_FAILED, World, failed};
use crate::hypervisor::migration::{JobProgress, MigrationRequest};
use crate::hypervisor::{HvResult, HypervisorError, error_code};
use crate::plan::domain::DomainState;

/// libvirt's `VIR_ERR_OPERATION_ABORTED`.
const OPERATION_ABORTED: i32 = 78;

/// A migration running from a fake host.
pub(super) struct MigrationJob {
    started: Instant,
    duration: Duration,
    bytes: u64,
    pub(super) post_copy_allowed: bool,
    pub(super) aborted: AtomicBool,
    pub(super) abort: Notify,
    pub(super) post_copy: AtomicBool,
    pub(super) max_downtime_ms: AtomicU64,
}

impl MigrationJob {
    /// What `job_progress` reports: the share of the data sent grows with the time elapsed.
    pub(super) fn progress(&self) -> JobProgress {
        let elapsed = self.started.elapsed();
        let done = if self.duration.is_zero() {
            1.0
        } else {
            (elapsed.as_secs_f64() / self.duration.as_secs_f64()).min(1.0)
        };
        let processed = (self.bytes as f64 * done) as u64;
        JobProgress {
            elapsed_ms: elapsed.as_millis() as u64,
            data_total: self.bytes,
            data_processed: processed,
            data_remaining: self.bytes - processed,
            memory_iteration: 1,
            ..JobProgress::default()
        }
    }
}

impl FakeConnection {
    /// Runs a migration of `uuid` from this connection's host to the host `req` names.
    pub(super) async fn migrate_inner(&self, uuid: &str, req: &MigrationRequest) -> HvResult<()> {
        const OP: &str = "migrate";
        self.preflight(Op::Migrate, req.timeout).await?;
        let source = self.shared.host.clone();
        let job = {
            let mut world = self.net.lock();
            let reachable = |d: &String| world.hosts.get(d).is_some_and(|h| h.reachable);
            let dest = world
                .resolve(&req.destination_uri)
                .filter(reachable)
                .ok_or_else(|| {
                    failed(
                        OP,
                        OPERATION_FAILED,
                        format!(
                            "operation failed: Failed to connect to remote libvirt URI {}",
                            req.destination_uri
                        ),
                    )
                })?;
            if dest == source {
                return Err(failed(
                    OP,
                    error_code::OPERATION_INVALID,
                    "Requested operation is not valid: Attempt to migrate guest to the same host",
                ));
            }
            let host = world.host(&source);
            let dom = host.domains.get(uuid).ok_or_else(|| {
                failed(
                    OP,
                    error_code::NO_DOMAIN,
                    format!("no domain with UUID {uuid}"),
                )
            })?;
            if dom.state != DomainState::Running {
                return Err(failed(
                    OP,
                    error_code::OPERATION_INVALID,
                    "Requested operation is not valid: domain is not running",
                ));
            }
            let bytes = dom.info().memory_kib * 1024;
            let job = Arc::new(MigrationJob {
                started: Instant::now(),
                duration: host.migration_time,
                bytes,
                post_copy_allowed: req.post_copy,
                aborted: AtomicBool::new(false),
                abort: Notify::new(),
                post_copy: AtomicBool::new(false),
                max_downtime_ms: AtomicU64::new(300),
            });
            host.jobs.insert(uuid.to_string(), job.clone());
            job
        };
        let ran = tokio::select! {
            _ = tokio::time::sleep(job.duration.min(req.timeout)) => true,
            _ = job.abort.notified() => false,
        };
        if ran && job.duration > req.timeout {
            self.net.lock().host(&source).jobs.remove(uuid);
            self.shared
                .mark_lost(&format!("migrate did not answer within {:?}", req.timeout));
            return Err(self.shared.lost_error());
        }
        let (result, deliveries, arrived) = {
            let mut world = self.net.lock();
            let mut events = Vec::new();
            let result = finish_migration(&mut world, &source, uuid, req, &job, &mut events);
            // The destination hears the domain start there (libvirt's started/migrated event).
            let arrived = match world.resolve(&req.destination_uri) {
                Some(dest) if result.is_ok() => world.listeners(&dest),
                _ => Vec::new(),
            };
            (result, deliveries(&mut world, &events), arrived)
        };
        for (conn, uuid) in deliveries {
            conn.domain_changed(&uuid);
        }
        for conn in arrived {
            conn.host_changed();
        }
        result
    }
}

/// Ends a migration job: the domain moves to the destination (persistent there, undefined here)
/// unless the job was aborted or either side went away meanwhile.
fn finish_migration(
    world: &mut World,
    source: &str,
    uuid: &str,
    req: &MigrationRequest,
    job: &MigrationJob,
    events: &mut Vec<Event>,
) -> HvResult<()> {
    const OP: &str = "migrate";
    world.host(source).jobs.remove(uuid);
    let mut stats = job.progress();
    let fail = |world: &mut World, stats: &mut JobProgress, e: HypervisorError| {
        stats.success = Some(false);
        stats.error = Some(e.to_string());
        world
            .host(source)
            .completed
            .insert(uuid.to_string(), stats.clone());
        Err(e)
    };
    if job.aborted.load(Ordering::SeqCst) {
        let e = failed(
            OP,
            OPERATION_ABORTED,
            "operation aborted: migration out job: canceled by client",
        );
        return fail(world, &mut stats, e);
    }
    let dest = world
        .resolve(&req.destination_uri)
        .filter(|d| world.hosts.get(d).is_some_and(|h| h.reachable));
    let running = world
        .host(source)
        .domains
        .get(uuid)
        .is_some_and(|d| d.state == DomainState::Running);
    let (Some(dest), true) = (dest, running) else {
        let e = failed(
            OP,
            OPERATION_FAILED,
            "operation failed: migration out job: unexpectedly failed",
        );
        return fail(world, &mut stats, e);
    };
    let Some(dom) = world.host(source).domains.remove(uuid) else {
        return Ok(());
    };
    events.push((source.to_string(), uuid.to_string()));
    stats.data_processed = stats.data_total;
    stats.data_remaining = 0;
    stats.downtime_ms = Some(job.max_downtime_ms.load(Ordering::SeqCst).min(50));
    stats.success = Some(true);
    world
        .host(source)
        .completed
        .insert(uuid.to_string(), stats.clone());
    let target = world.host(&dest);
    target.completed.insert(uuid.to_string(), stats);
    target.domains.insert(
        uuid.to_string(),
        FakeDomain {
            config: dom.config.clone().or_else(|| dom.live.clone()),
            ..dom
        },
    );
    Ok(())
}
