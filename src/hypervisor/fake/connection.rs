//! One connection to a fake host: the [`Hypervisor`] calls, with the faults, call log, observer
//! reports and lifecycle events a test sees.

use crate::plan::domain::{DescribedDomain, DomainDescription, DomainState, FerryMetadata};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::Net;
use super::faults::{self, Call, Fault, Op};
use super::world::{Event, FakeDomain, World, failed};
use crate::hypervisor::migration::{JobProgress, MigrationRequest};
use crate::hypervisor::{
    CallObserver, HvResult, Hypervisor, HypervisorError, UploadSource, domain_xml, error_code,
};
use crate::plan::domain::{
    DomainDefinition, DomainInfo, GuestInfo, HostInfo, ShutOffReason, VolumeInfo,
};
use crate::plan::load::DomainCounters;

/// What a connection shares with the fake hosts (to be told of events and losses).
pub(super) struct ConnShared {
    pub(super) id: u64,
    /// The URI the connection was opened with.
    pub(super) uri: String,
    /// The canonical URI of the host it reaches.
    pub(super) host: String,
    lost: AtomicBool,
    closed_by_ferry: AtomicBool,
    reason: Mutex<String>,
    observer: Option<Arc<dyn CallObserver>>,
    call_timeout: Duration,
}

impl ConnShared {
    pub(super) fn new(
        id: u64,
        uri: &str,
        host: &str,
        observer: Option<Arc<dyn CallObserver>>,
        call_timeout: Duration,
    ) -> ConnShared {
        ConnShared {
            id,
            uri: uri.to_string(),
            host: host.to_string(),
            lost: AtomicBool::new(false),
            closed_by_ferry: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
            observer,
            call_timeout,
        }
    }

    pub(super) fn is_open(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
    }

    /// The host or the network ended the connection: remember why and tell the observer, once.
    pub(super) fn mark_lost(&self, reason: &str) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            if let Ok(mut r) = self.reason.lock() {
                *r = reason.to_string();
            }
            if let Some(o) = &self.observer {
                o.connection_lost(&self.uri, reason);
            }
        }
    }

    fn mark_closed(&self) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            self.closed_by_ferry.store(true, Ordering::SeqCst);
            if let Ok(mut r) = self.reason.lock() {
                *r = "connection closed by ferry".into();
            }
        }
    }

    pub(super) fn lost_error(&self) -> HypervisorError {
        HypervisorError::ConnectionLost {
            uri: self.uri.clone(),
            message: self
                .reason
                .lock()
                .map(|r| r.clone())
                .unwrap_or_else(|_| "connection lost".into()),
        }
    }

    /// Tells the observer a domain changed, as libvirt's lifecycle events do.
    pub(super) fn domain_changed(&self, uuid: &str) {
        if let Some(o) = self.observer.as_ref().filter(|_| self.is_open()) {
            o.host_changed(&self.uri);
            o.domain_changed(&self.uri, uuid);
        }
    }

    /// Tells the observer the host's domains changed, as every libvirt lifecycle event does
    /// (a start or a definition too).
    pub(super) fn host_changed(&self) {
        if let Some(o) = self.observer.as_ref().filter(|_| self.is_open()) {
            o.host_changed(&self.uri);
        }
    }

    fn observe(&self, op: Op, seconds: f64, ok: bool) {
        if let Some(o) = &self.observer {
            o.observe(op.as_str(), seconds, ok);
        }
    }
}

/// A connection to a fake host, as [`FakeConnector`](super::FakeConnector) hands it out.
pub struct FakeConnection {
    pub(super) shared: Arc<ConnShared>,
    pub(super) net: Arc<Net>,
}

impl std::fmt::Debug for FakeConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeConnection")
            .field("uri", &self.shared.uri)
            .field("id", &self.shared.id)
            .field("open", &self.shared.is_open())
            .finish()
    }
}

impl FakeConnection {
    /// Runs `f` on the world as operation `op` about `target`: faults first, then the work, then
    /// the call log, the observer and the lifecycle events `f` produced.
    async fn call<T>(
        &self,
        op: Op,
        target: &str,
        f: impl FnOnce(&mut World, &str, &mut Vec<Event>) -> HvResult<T>,
    ) -> HvResult<T> {
        let started = Instant::now();
        let result = match self.preflight(op, self.shared.call_timeout).await {
            Err(e) => Err(e),
            Ok(()) => {
                let (result, deliveries) = {
                    let mut world = self.net.lock();
                    let mut events = Vec::new();
                    let result = f(&mut world, &self.shared.host, &mut events);
                    (result, deliveries(&mut world, &events))
                };
                for (conn, uuid) in deliveries {
                    conn.domain_changed(&uuid);
                }
                result
            }
        };
        self.finish(op, target, started, result.is_ok());
        result
    }

    /// The connection is usable and no injected fault stops `op` (a slow one is waited out).
    pub(super) async fn preflight(&self, op: Op, timeout: Duration) -> HvResult<()> {
        if !self.shared.is_open() {
            return Err(self.shared.lost_error());
        }
        let fault = {
            let mut world = self.net.lock();
            faults::take(&mut world.host(&self.shared.host).faults, op)
        };
        match fault {
            None => {}
            Some(Fault::Slow(d)) if d > timeout => {
                tokio::time::sleep(timeout).await;
                self.shared.mark_lost(&format!(
                    "{} did not answer within {timeout:?}",
                    op.as_str()
                ));
                return Err(self.shared.lost_error());
            }
            Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
            Some(Fault::ConnectionLost) => {
                self.shared
                    .mark_lost(&format!("{}: injected connection loss", op.as_str()));
                return Err(self.shared.lost_error());
            }
            Some(f) => return Err(f.error(op, &self.shared.uri)),
        }
        if self.shared.is_open() {
            Ok(())
        } else {
            Err(self.shared.lost_error())
        }
    }

    fn finish(&self, op: Op, target: &str, started: Instant, ok: bool) {
        self.net.lock().host(&self.shared.host).calls.push(Call {
            connection: self.shared.id,
            op,
            target: target.to_string(),
            ok,
        });
        self.shared.observe(op, started.elapsed().as_secs_f64(), ok);
    }
}

/// The connections to tell about each event.
pub(super) fn deliveries(world: &mut World, events: &[Event]) -> Vec<(Arc<ConnShared>, String)> {
    events
        .iter()
        .flat_map(|(uri, uuid)| {
            world
                .listeners(uri)
                .into_iter()
                .map(move |c| (c, uuid.clone()))
        })
        .collect()
}

fn pool_target(pool: &str, name: &str) -> String {
    format!("{pool}/{name}")
}

#[async_trait]
impl Hypervisor for FakeConnection {
    fn uri(&self) -> &str {
        &self.shared.uri
    }

    fn is_connected(&self) -> bool {
        self.shared.is_open()
    }

    fn lost(&self) -> Option<HypervisorError> {
        (!self.shared.is_open() && !self.shared.closed_by_ferry.load(Ordering::SeqCst))
            .then(|| self.shared.lost_error())
    }

    async fn host_info(&self) -> HvResult<HostInfo> {
        self.call(Op::HostInfo, "", |w, h, _| Ok(w.host(h).info.clone()))
            .await
    }

    async fn ping(&self) -> HvResult<()> {
        self.call(Op::Ping, "", |_, _, _| Ok(())).await
    }

    async fn list_domains(&self) -> HvResult<Vec<DomainInfo>> {
        self.call(Op::ListDomains, "", |w, h, _| {
            Ok(w.host(h).domains.values().map(FakeDomain::info).collect())
        })
        .await
    }

    async fn domain_counters(&self) -> HvResult<Vec<DomainCounters>> {
        self.call(Op::DomainCounters, "", |w, h, _| {
            let host = w.host(h);
            let Some(counters) = &host.counters else {
                return Err(crate::hypervisor::unsupported("domain_counters"));
            };
            Ok(host
                .domains
                .values()
                .filter(|d| d.state.is_active())
                .map(|d| {
                    let (cpu_time_ns, rss_bytes) =
                        counters.get(&d.uuid).copied().unwrap_or_default();
                    DomainCounters {
                        uuid: d.uuid.clone(),
                        cpu_time_ns,
                        rss_bytes,
                    }
                })
                .collect())
        })
        .await
    }

    async fn lookup_domain(&self, uuid: &str) -> HvResult<Option<DomainInfo>> {
        self.call(Op::LookupDomain, uuid, |w, h, _| {
            Ok(w.host(h).domains.get(uuid).map(FakeDomain::info))
        })
        .await
    }

    async fn describe_domain(
        &self,
        name: &str,
    ) -> HvResult<Option<(DescribedDomain, DomainState)>> {
        self.call(Op::DescribeDomain, name, |w, h, _| {
            let host = w.host(h);
            let Some(dom) = host.domains.values().find(|d| d.name == name) else {
                return Ok(None);
            };
            let info = dom.info();
            let described = host
                .descriptions
                .get(&dom.uuid)
                .cloned()
                .unwrap_or_else(|| {
                    let d = DomainDescription {
                        name: info.name.clone(),
                        uuid: info.uuid.clone(),
                        virt_type: "qemu".into(),
                        arch: "x86_64".into(),
                        machine: "pc-i440fx-7.2".into(),
                        vcpus: info.vcpus,
                        memory_kib: info.memory_kib,
                        current_memory_kib: info.memory_kib,
                        clock_offset: Some("utc".into()),
                        serials: vec!["serial pty".into(), "console pty".into()],
                        ..DomainDescription::default()
                    };
                    DescribedDomain {
                        persistent: info.persistent.then(|| d.clone()),
                        current: d,
                    }
                });
            Ok(Some((described, info.state)))
        })
        .await
    }

    async fn set_metadata(&self, uuid: &str, meta: Option<&FerryMetadata>) -> HvResult<()> {
        self.call(Op::SetMetadata, uuid, |w, h, _| {
            w.set_metadata(h, uuid, meta)
        })
        .await
    }

    async fn define_domain(&self, def: &DomainDefinition) -> HvResult<()> {
        self.call(Op::DefineDomain, &def.uuid, |w, h, _| {
            domain_xml::to_xml(def).map_err(|e| HypervisorError::InvalidDefinition {
                message: e.to_string(),
            })?;
            w.define(h, def)
        })
        .await
    }

    async fn start_domain(&self, uuid: &str) -> HvResult<()> {
        self.call(Op::StartDomain, uuid, |w, h, _| w.start(h, uuid))
            .await
    }

    async fn shutdown_domain(&self, uuid: &str) -> HvResult<()> {
        self.call(Op::ShutdownDomain, uuid, |w, h, events| {
            let dom = w.host(h).domains.get(uuid).ok_or_else(|| {
                failed(
                    "shutdown_domain",
                    error_code::NO_DOMAIN,
                    format!("no domain with UUID {uuid}"),
                )
            })?;
            if !dom.ignores_shutdown && w.stop(h, uuid, ShutOffReason::Shutdown) {
                events.push((h.to_string(), uuid.to_string()));
            }
            Ok(())
        })
        .await
    }

    async fn destroy_domain(&self, uuid: &str) -> HvResult<()> {
        self.call(Op::DestroyDomain, uuid, |w, h, events| {
            if w.stop(h, uuid, ShutOffReason::Destroyed) {
                events.push((h.to_string(), uuid.to_string()));
            }
            Ok(())
        })
        .await
    }

    async fn pause_domain(&self, uuid: &str) -> HvResult<()> {
        self.call(Op::PauseDomain, uuid, |w, h, events| {
            if w.set_paused(h, uuid, true)? {
                events.push((h.to_string(), uuid.to_string()));
            }
            Ok(())
        })
        .await
    }

    async fn resume_domain(&self, uuid: &str) -> HvResult<()> {
        self.call(Op::ResumeDomain, uuid, |w, h, events| {
            if w.set_paused(h, uuid, false)? {
                events.push((h.to_string(), uuid.to_string()));
            }
            Ok(())
        })
        .await
    }

    async fn undefine_domain(&self, uuid: &str) -> HvResult<()> {
        self.call(Op::UndefineDomain, uuid, |w, h, events| {
            if w.undefine(h, uuid) {
                events.push((h.to_string(), uuid.to_string()));
            }
            Ok(())
        })
        .await
    }

    async fn ensure_pool(&self, pool: &str, path: Option<&str>) -> HvResult<String> {
        self.call(Op::EnsurePool, pool, |w, h, _| w.ensure_pool(h, pool, path))
            .await
    }

    async fn lookup_volume(&self, pool: &str, name: &str) -> HvResult<Option<VolumeInfo>> {
        self.call(Op::LookupVolume, &pool_target(pool, name), |w, h, _| {
            Ok(w.pool(h, "lookup_volume", pool)?.volumes.get(name).cloned())
        })
        .await
    }

    async fn create_overlay(
        &self,
        pool: &str,
        name: &str,
        backing: &VolumeInfo,
        _backing_format: &str,
        capacity: u64,
    ) -> HvResult<VolumeInfo> {
        self.call(Op::CreateOverlay, &pool_target(pool, name), |w, h, _| {
            w.pool(h, "create_overlay", pool)?;
            if !w.has_path(h, &backing.path) {
                return Err(failed(
                    "create_overlay",
                    38,
                    format!("Cannot access backing file '{}'", backing.path),
                ));
            }
            let capacity = capacity.max(backing.capacity);
            w.add_volume(h, "create_overlay", pool, name, capacity, "qcow2")
        })
        .await
    }

    async fn clone_volume(
        &self,
        pool: &str,
        name: &str,
        source: &VolumeInfo,
    ) -> HvResult<VolumeInfo> {
        self.call(Op::CloneVolume, &pool_target(pool, name), |w, h, _| {
            let from = w.pool(h, "clone_volume", pool)?.volumes.get(&source.name);
            let Some(from) = from.cloned() else {
                return Err(failed(
                    "clone_volume",
                    error_code::NO_STORAGE_VOL,
                    format!(
                        "Storage volume not found: no storage vol with matching name '{}'",
                        source.name
                    ),
                ));
            };
            w.add_volume(h, "clone_volume", pool, name, from.capacity, "qcow2")
        })
        .await
    }

    async fn upload_volume(
        &self,
        pool: &str,
        name: &str,
        capacity: u64,
        source: UploadSource,
    ) -> HvResult<VolumeInfo> {
        const OP: &str = "upload_volume";
        let target = pool_target(pool, name);
        let started = Instant::now();
        let result = async {
            self.preflight(Op::UploadVolume, self.shared.call_timeout)
                .await?;
            {
                let mut world = self.net.lock();
                let p = world.pool(&self.shared.host, OP, pool)?;
                if p.volumes.contains_key(name) {
                    return Err(failed(
                        OP,
                        error_code::STORAGE_VOL_EXIST,
                        format!("storage volume {name:?} exists already"),
                    ));
                }
            }
            let (head, written) = drain(source).await?;
            let (format, capacity) = match qcow2_size(&head) {
                Some(size) => ("qcow2", size),
                None => ("raw", capacity.max(written)),
            };
            let mut world = self.net.lock();
            let vol = world.add_volume(&self.shared.host, OP, pool, name, capacity, format)?;
            world
                .pool(&self.shared.host, OP, pool)?
                .heads
                .insert(name.to_string(), head);
            Ok(vol)
        }
        .await;
        self.finish(Op::UploadVolume, &target, started, result.is_ok());
        result
    }

    async fn guest_info(&self, uuid: &str) -> HvResult<Option<GuestInfo>> {
        self.call(Op::GuestInfo, uuid, |w, h, _| {
            Ok(w.host(h)
                .domains
                .get(uuid)
                .filter(|d| d.state.is_active())
                .and_then(|d| d.guest.clone()))
        })
        .await
    }

    async fn read_volume(
        &self,
        pool: &str,
        name: &str,
        offset: u64,
        len: usize,
    ) -> HvResult<Vec<u8>> {
        let end = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .saturating_add(len);
        let head = self.read_volume_head(pool, name, end).await?;
        let from = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(head.len());
        Ok(head[from..].to_vec())
    }

    async fn read_volume_head(&self, pool: &str, name: &str, len: usize) -> HvResult<Vec<u8>> {
        self.call(Op::ReadVolumeHead, &pool_target(pool, name), |w, h, _| {
            let p = w.pool(h, "read_volume_head", pool)?;
            let Some(vol) = p.volumes.get(name) else {
                return Err(failed(
                    "read_volume_head",
                    error_code::NO_STORAGE_VOL,
                    format!("Storage volume not found: no storage vol with matching name '{name}'"),
                ));
            };
            let mut head = p
                .heads
                .get(name)
                .cloned()
                .unwrap_or_else(|| super::world::blank_head(vol));
            head.truncate(len);
            Ok(head)
        })
        .await
    }

    async fn delete_volume(&self, pool: &str, name: &str) -> HvResult<()> {
        self.call(Op::DeleteVolume, &pool_target(pool, name), |w, h, _| {
            if let Some(p) = w.storage_of(h).pools.get_mut(pool) {
                p.volumes.remove(name);
                p.heads.remove(name);
            }
            Ok(())
        })
        .await
    }

    async fn migrate(&self, uuid: &str, req: &MigrationRequest) -> HvResult<()> {
        let started = Instant::now();
        let result = self.migrate_inner(uuid, req).await;
        self.finish(Op::Migrate, uuid, started, result.is_ok());
        result
    }

    async fn job_progress(&self, uuid: &str) -> HvResult<Option<JobProgress>> {
        self.call(Op::JobProgress, uuid, |w, h, _| {
            Ok(w.host(h).jobs.get(uuid).map(|j| j.progress()))
        })
        .await
    }

    async fn completed_job(&self, uuid: &str) -> HvResult<Option<JobProgress>> {
        self.call(Op::CompletedJob, uuid, |w, h, _| {
            Ok(w.host(h).completed.get(uuid).cloned())
        })
        .await
    }

    async fn abort_job(&self, uuid: &str) -> HvResult<()> {
        self.call(Op::AbortJob, uuid, |w, h, _| {
            if let Some(job) = w.host(h).jobs.get(uuid) {
                job.aborted.store(true, Ordering::SeqCst);
                job.abort.notify_one();
            }
            Ok(())
        })
        .await
    }

    async fn set_migration_max_downtime(&self, uuid: &str, ms: u64) -> HvResult<()> {
        self.call(Op::SetMigrationMaxDowntime, uuid, |w, h, _| {
            let host = w.host(h);
            match (host.domains.get(uuid), host.jobs.get(uuid)) {
                (None, _) => Err(failed(
                    "set_migration_max_downtime",
                    error_code::NO_DOMAIN,
                    format!("no domain with UUID {uuid}"),
                )),
                (Some(_), Some(job)) => {
                    job.max_downtime_ms.store(ms, Ordering::SeqCst);
                    Ok(())
                }
                (Some(_), None) => Err(failed(
                    "set_migration_max_downtime",
                    error_code::OPERATION_INVALID,
                    "Requested operation is not valid: no job is active on the domain",
                )),
            }
        })
        .await
    }

    async fn start_post_copy(&self, uuid: &str) -> HvResult<()> {
        self.call(Op::StartPostCopy, uuid, |w, h, _| {
            match w.host(h).jobs.get(uuid) {
                Some(job) if job.post_copy_allowed => {
                    job.post_copy.store(true, Ordering::SeqCst);
                    Ok(())
                }
                _ => Err(failed(
                    "start_post_copy",
                    error_code::OPERATION_INVALID,
                    "Requested operation is not valid: post-copy migration is not enabled",
                )),
            }
        })
        .await
    }

    async fn close(&self) {
        self.shared.mark_closed();
    }
}

/// Reads an upload's chunks on a blocking thread (a source may block waiting for its producer):
/// the first bytes (what the fake keeps of a volume's content) and the total length, or the
/// source's error.
async fn drain(source: UploadSource) -> HvResult<(Vec<u8>, u64)> {
    let read = tokio::task::spawn_blocking(move || {
        let (mut head, mut total) = (Vec::new(), 0u64);
        for chunk in source {
            let chunk = chunk?;
            let want = super::world::HEAD
                .saturating_sub(head.len())
                .min(chunk.len());
            head.extend_from_slice(&chunk[..want]);
            total += chunk.len() as u64;
        }
        Ok::<_, String>((head, total))
    })
    .await;
    match read {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(message)) => Err(failed("upload_volume", 0, message)),
        Err(e) => Err(failed(
            "upload_volume",
            0,
            format!("the upload stopped: {e}"),
        )),
    }
}

/// The virtual size a qcow2 header states (magic `QFI\xfb`, size at bytes 24..32), as libvirt
/// reports an uploaded qcow2 image after refreshing its pool.
fn qcow2_size(head: &[u8]) -> Option<u64> {
    if head.len() < 32 || &head[..4] != b"QFI\xfb" {
        return None;
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&head[24..32]);
    Some(u64::from_be_bytes(size))
}
