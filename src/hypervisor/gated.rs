//! Every connection the registry hands out, behind the [`ActionGate`]: calls that change a host
//! (define, start, shutdown, destroy, undefine, storage pool and volume changes, migration and
//! its controls) pass only while the gate is open; reads and consoles always pass. A call that
//! changes the host's domains counts as a change of the host once it returned (see
//! [`HostConnections::changes`](super::HostConnections::changes)).

use std::sync::Arc;

use async_trait::async_trait;

use super::change_counts::ChangeCounts;
use super::{
    ConsoleKind, ConsoleStream, DomainInfo, GuestInfo, HostInfo, HvResult, Hypervisor,
    HypervisorError, JobProgress, MigrationRequest, UploadSource, VolumeInfo,
};
use crate::gate::ActionGate;
use crate::plan::domain::{DescribedDomain, DomainDefinition, DomainState, FerryMetadata};
use crate::plan::load::DomainCounters;

/// A connection whose mutating calls ask the gate first.
pub(super) struct Gated {
    inner: Arc<dyn Hypervisor>,
    gate: ActionGate,
    changes: Arc<ChangeCounts>,
}

impl Gated {
    pub(super) fn wrap(
        inner: Arc<dyn Hypervisor>,
        gate: &ActionGate,
        changes: &Arc<ChangeCounts>,
    ) -> Arc<dyn Hypervisor> {
        Arc::new(Gated {
            inner,
            gate: gate.clone(),
            changes: changes.clone(),
        })
    }

    /// `result` of a call that may have changed the host's domains (whether it failed or not):
    /// counted as a change of the host.
    fn changed<T>(&self, result: HvResult<T>) -> HvResult<T> {
        self.changes.bump(self.inner.uri());
        result
    }

    fn allow(&self, operation: &'static str) -> HvResult<()> {
        self.gate
            .check(operation)
            .map_err(|w| HypervisorError::Withheld {
                operation,
                uri: self.inner.uri().to_string(),
                reason: w.reason,
            })
    }
}

#[async_trait]
impl Hypervisor for Gated {
    fn uri(&self) -> &str {
        self.inner.uri()
    }
    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }
    fn lost(&self) -> Option<HypervisorError> {
        self.inner.lost()
    }
    async fn host_info(&self) -> HvResult<HostInfo> {
        self.inner.host_info().await
    }
    async fn ping(&self) -> HvResult<()> {
        self.inner.ping().await
    }
    async fn list_domains(&self) -> HvResult<Vec<DomainInfo>> {
        self.inner.list_domains().await
    }
    async fn lookup_domain(&self, uuid: &str) -> HvResult<Option<DomainInfo>> {
        self.inner.lookup_domain(uuid).await
    }
    async fn domain_state(&self, uuid: &str) -> HvResult<Option<DomainState>> {
        self.inner.domain_state(uuid).await
    }
    async fn describe_domain(
        &self,
        name: &str,
    ) -> HvResult<Option<(DescribedDomain, DomainState)>> {
        self.inner.describe_domain(name).await
    }
    async fn set_metadata(&self, uuid: &str, meta: Option<&FerryMetadata>) -> HvResult<()> {
        self.allow("set_metadata")?;
        let result = self.inner.set_metadata(uuid, meta).await;
        self.changed(result)
    }
    async fn define_domain(&self, def: &DomainDefinition) -> HvResult<()> {
        self.allow("define_domain")?;
        let result = self.inner.define_domain(def).await;
        self.changed(result)
    }
    async fn start_domain(&self, uuid: &str) -> HvResult<()> {
        self.allow("start_domain")?;
        let result = self.inner.start_domain(uuid).await;
        self.changed(result)
    }
    async fn pause_domain(&self, uuid: &str) -> HvResult<()> {
        self.allow("pause_domain")?;
        let result = self.inner.pause_domain(uuid).await;
        self.changed(result)
    }
    async fn resume_domain(&self, uuid: &str) -> HvResult<()> {
        self.allow("resume_domain")?;
        let result = self.inner.resume_domain(uuid).await;
        self.changed(result)
    }
    async fn shutdown_domain(&self, uuid: &str) -> HvResult<()> {
        self.allow("shutdown_domain")?;
        let result = self.inner.shutdown_domain(uuid).await;
        self.changed(result)
    }
    async fn destroy_domain(&self, uuid: &str) -> HvResult<()> {
        self.allow("destroy_domain")?;
        let result = self.inner.destroy_domain(uuid).await;
        self.changed(result)
    }
    async fn undefine_domain(&self, uuid: &str) -> HvResult<()> {
        self.allow("undefine_domain")?;
        let result = self.inner.undefine_domain(uuid).await;
        self.changed(result)
    }
    async fn ensure_pool(&self, pool: &str, path: Option<&str>) -> HvResult<String> {
        self.allow("ensure_pool")?;
        self.inner.ensure_pool(pool, path).await
    }
    async fn lookup_volume(&self, pool: &str, name: &str) -> HvResult<Option<VolumeInfo>> {
        self.inner.lookup_volume(pool, name).await
    }
    async fn create_overlay(
        &self,
        pool: &str,
        name: &str,
        backing: &VolumeInfo,
        backing_format: &str,
        capacity: u64,
    ) -> HvResult<VolumeInfo> {
        self.allow("create_overlay")?;
        self.inner
            .create_overlay(pool, name, backing, backing_format, capacity)
            .await
    }
    async fn read_volume_head(&self, pool: &str, name: &str, len: usize) -> HvResult<Vec<u8>> {
        self.inner.read_volume_head(pool, name, len).await
    }
    async fn read_volume(
        &self,
        pool: &str,
        name: &str,
        offset: u64,
        len: usize,
    ) -> HvResult<Vec<u8>> {
        self.inner.read_volume(pool, name, offset, len).await
    }
    async fn clone_volume(
        &self,
        pool: &str,
        name: &str,
        source: &VolumeInfo,
    ) -> HvResult<VolumeInfo> {
        self.allow("clone_volume")?;
        self.inner.clone_volume(pool, name, source).await
    }
    async fn upload_volume(
        &self,
        pool: &str,
        name: &str,
        capacity: u64,
        source: UploadSource,
    ) -> HvResult<VolumeInfo> {
        self.allow("upload_volume")?;
        self.inner.upload_volume(pool, name, capacity, source).await
    }
    async fn guest_info(&self, uuid: &str) -> HvResult<Option<GuestInfo>> {
        self.inner.guest_info(uuid).await
    }
    async fn domain_counters(&self) -> HvResult<Vec<DomainCounters>> {
        self.inner.domain_counters().await
    }
    async fn delete_volume(&self, pool: &str, name: &str) -> HvResult<()> {
        self.allow("delete_volume")?;
        self.inner.delete_volume(pool, name).await
    }
    async fn migrate(&self, uuid: &str, req: &MigrationRequest) -> HvResult<()> {
        self.allow("migrate")?;
        let result = self.inner.migrate(uuid, req).await;
        self.changed(result)
    }
    async fn job_progress(&self, uuid: &str) -> HvResult<Option<JobProgress>> {
        self.inner.job_progress(uuid).await
    }
    async fn completed_job(&self, uuid: &str) -> HvResult<Option<JobProgress>> {
        self.inner.completed_job(uuid).await
    }
    async fn abort_job(&self, uuid: &str) -> HvResult<()> {
        self.allow("abort_job")?;
        self.inner.abort_job(uuid).await
    }
    async fn set_migration_max_downtime(&self, uuid: &str, ms: u64) -> HvResult<()> {
        self.allow("set_migration_max_downtime")?;
        self.inner.set_migration_max_downtime(uuid, ms).await
    }
    async fn start_post_copy(&self, uuid: &str) -> HvResult<()> {
        self.allow("start_post_copy")?;
        self.inner.start_post_copy(uuid).await
    }
    /// A console changes nothing on the host: it passes with the gate closed, as reads do.
    async fn open_console(&self, uuid: &str, kind: ConsoleKind) -> HvResult<ConsoleStream> {
        self.inner.open_console(uuid, kind).await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::fake::sample_definition;
    use crate::hypervisor::fake::{FakeConnector, Op};
    use crate::hypervisor::{HostConnections, MigrationRequest, StorageMode};
    use crate::plan::domain::{DomainState, ShutOffReason};
    use std::time::{Duration, Instant};

    const U1: &str = "00000000-0000-4000-8000-000000000001";

    /// Every method of the trait is forwarded here: one left to the trait's default would answer
    /// "not supported" (or nothing) instead of reaching the host.
    #[test]
    fn every_hypervisor_method_is_forwarded() {
        let trait_src = include_str!("mod.rs");
        let start = trait_src.find("pub trait Hypervisor").expect("the trait");
        let body = &trait_src[start..];
        let body = &body[..body.find("\n}\n").expect("end of the trait")];
        let here = include_str!("gated.rs");
        let mut methods = 0;
        for line in body.lines() {
            let line = line.trim_start();
            let Some(rest) = line
                .strip_prefix("async fn ")
                .or_else(|| line.strip_prefix("fn "))
            else {
                continue;
            };
            let name = &rest[..rest.find(['(', '<']).expect("a method")];
            methods += 1;
            assert!(
                here.contains(&format!("fn {name}(")),
                "Gated does not forward Hypervisor::{name}"
            );
        }
        assert!(methods > 20, "{methods} methods found");
    }

    #[tokio::test]
    async fn a_closed_gate_withholds_every_change_and_lets_reads_through() {
        let def = sample_definition("ns", "vm", U1, "/pool/vm.qcow2");
        let fakes = FakeConnector::new();
        let h1 = fakes.add_host("qemu+tcp://h1/system");
        h1.add_domain(&def, DomainState::ShutOff(ShutOffReason::Shutdown))
            .expect("domain");
        let gate = ActionGate::leased();
        let hosts = HostConnections::with_connector(Arc::new(fakes.clone())).with_gate(gate);
        let hv = hosts
            .get(h1.uri(), &Default::default())
            .await
            .expect("connect");
        let own = hosts
            .dedicated(h1.uri(), &Default::default())
            .await
            .expect("dedicated");
        let backing = VolumeInfo {
            name: "golden".into(),
            path: "/pool/golden".into(),
            format: "qcow2".into(),
            capacity: 1,
        };
        let req = MigrationRequest {
            destination_uri: "qemu+tcp://h2/system".into(),
            bandwidth_mib: None,
            auto_converge: false,
            post_copy: false,
            storage: StorageMode::Shared,
            copy_disks: vec![],
            timeout: Duration::from_secs(5),
        };
        h1.take_calls();
        for conn in [&hv, &own] {
            let results = vec![
                conn.define_domain(&def).await.err(),
                conn.start_domain(U1).await.err(),
                conn.pause_domain(U1).await.err(),
                conn.resume_domain(U1).await.err(),
                conn.shutdown_domain(U1).await.err(),
                conn.destroy_domain(U1).await.err(),
                conn.undefine_domain(U1).await.err(),
                conn.ensure_pool("ferry", Some("/pool")).await.err(),
                conn.create_overlay("ferry", "v", &backing, "qcow2", 1)
                    .await
                    .err(),
                conn.clone_volume("ferry", "v", &backing).await.err(),
                conn.upload_volume("ferry", "v", 1, Box::new(std::iter::empty()))
                    .await
                    .err(),
                conn.delete_volume("ferry", "v").await.err(),
                conn.migrate(U1, &req).await.err(),
                conn.abort_job(U1).await.err(),
                conn.set_migration_max_downtime(U1, 100).await.err(),
                conn.start_post_copy(U1).await.err(),
            ];
            for r in results {
                assert!(
                    r.as_ref().is_some_and(HypervisorError::is_withheld),
                    "{r:?}"
                );
            }
            assert!(conn.lookup_domain(U1).await.expect("lookup").is_some());
            conn.list_domains().await.expect("list");
            conn.host_info().await.expect("host info");
        }
        let changes: Vec<_> = h1
            .take_calls()
            .into_iter()
            .filter(|c| !matches!(c.op, Op::LookupDomain | Op::ListDomains | Op::HostInfo))
            .collect();
        assert!(changes.is_empty(), "reached the host: {changes:?}");
        // Open again: the same connection acts.
        hosts
            .gate()
            .renewed_until(Instant::now() + Duration::from_secs(30));
        hv.start_domain(U1).await.expect("start");
        assert_eq!(h1.count(Op::StartDomain), 1);
    }
}
