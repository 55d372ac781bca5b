//! Controllers: one module per resource (fetch → plan → act → report), and what they share.

pub mod cloud_init;
pub mod credentials;
pub mod evacuation;
pub mod ha;
pub mod host_pool;
pub mod hosts;
pub mod image_import;
pub mod migration;
pub mod permissions;
pub mod run;
pub mod scheduling;
pub mod status;
pub mod virtual_machine;

use crate::api::{HostPool, VirtualMachine, VirtualMachineMigration};
use crate::hypervisor::connections::{ConnectOptions, HostConnections};
use crate::hypervisor::{HostInfo, HvResult, Hypervisor, HypervisorError};
use crate::metrics::Metrics;
use crate::plan::definition::ResolvedDisk;
use crate::plan::placement::Placed;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Field manager of every server-side apply ferry makes.
pub const FIELD_MANAGER: &str = "ferry";

/// How long a host's HA verdict counts without being renewed (the HA controller renews it
/// every second).
pub const HA_VERDICT_TTL: Duration = Duration::from_secs(30);

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// The one Event recorder.
    pub recorder: Recorder,
    /// Open libvirt connections.
    pub hosts: HostConnections,
    pub metrics: Arc<Metrics>,
    /// HostPools, from a reflector.
    pub pools: Store<HostPool>,
    /// Nodes, from a reflector.
    pub nodes: Store<Node>,
    /// VirtualMachines, from the VM controller's reflector.
    pub vms: Store<VirtualMachine>,
    /// VirtualMachineMigrations, from the migration controller's reflector (empty until
    /// [`Context::with_migrations`] sets it).
    pub migrations: Store<VirtualMachineMigration>,
    /// HAPolicies, from the HA controller's reflector (empty until [`Context::with_policies`]
    /// sets it).
    pub policies: Store<crate::api::HAPolicy>,
    /// Migration slots taken by migrations admitted in this process, by migration UID.
    pub migration_slots: Mutex<HashMap<String, crate::plan::migration::Active>>,
    /// Migrations running in this process, by migration UID.
    pub migration_jobs: Mutex<HashMap<String, Arc<migration::Job>>>,
    /// Evacuation migrations created lately, by VM UID (until the cache shows them).
    pub evacuations_created: Mutex<HashMap<String, Instant>>,
    /// Signalled when a migration slot is released, so that waiting migrations are looked at
    /// again at once rather than at their next periodic check.
    pub migration_slot_freed: Arc<tokio::sync::Notify>,
    /// Placements chosen but not yet seen in `vms`, by VM UID; held under this lock while a host
    /// is chosen, so VMs placed at the same time see each other.
    pub placing: Mutex<HashMap<String, Placed>>,
    /// When ferry asked a VM's guest to shut down, by VM UID.
    pub stopping: Mutex<HashMap<String, Instant>>,
    /// The HostPool status this process wrote last, by pool UID.
    pub pool_reports: Mutex<HashMap<String, crate::api::HostPoolStatus>>,
    /// Consecutive failures per object, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Last facts read from each host, by URI.
    host_facts: Mutex<HashMap<String, HostInfo>>,
    /// Disks resolved for each VM (by UID), with the generation and host they were resolved for.
    provisioned: Mutex<HashMap<String, Provisioned>>,
    /// VMs (by UID) that admission control in `Enforce` mode keeps from being placed, with why.
    admission_blocked: Mutex<HashMap<String, String>>,
    /// HA verdicts per host (Node name), set by the HA controller.
    ha_verdicts: Mutex<HashMap<String, (crate::api::ha_policy::HostVerdict, Instant)>>,
    /// Where libvirt TLS client files from Secrets are written (`$FERRY_PKI_DIR`, default a
    /// `ferry-pki` directory in the temporary directory).
    pki_root: std::path::PathBuf,
}

impl Context {
    /// A context over the given client, stores and metrics.
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        pools: Store<HostPool>,
        nodes: Store<Node>,
        vms: Store<VirtualMachine>,
    ) -> Self {
        let observer = metrics.clone();
        Context {
            client,
            recorder,
            hosts: HostConnections::new(Some(Arc::new(
                move |op: &'static str, secs: f64, ok: bool| observer.libvirt_call(op, secs, ok),
            ))),
            metrics,
            pools,
            nodes,
            vms,
            migrations: kube::runtime::reflector::store().0,
            policies: kube::runtime::reflector::store().0,
            migration_slots: Mutex::default(),
            migration_jobs: Mutex::default(),
            evacuations_created: Mutex::default(),
            migration_slot_freed: Arc::default(),
            placing: Mutex::default(),
            stopping: Mutex::default(),
            pool_reports: Mutex::default(),
            failures: Mutex::default(),
            host_facts: Mutex::default(),
            provisioned: Mutex::default(),
            ha_verdicts: Mutex::default(),
            admission_blocked: Mutex::default(),
            pki_root: std::env::var_os("FERRY_PKI_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("ferry-pki")),
        }
    }

    /// Use `store` for VirtualMachineMigrations.
    pub fn with_migrations(mut self, store: Store<VirtualMachineMigration>) -> Self {
        self.migrations = store;
        self
    }

    /// Use `store` for HAPolicies.
    pub fn with_policies(mut self, store: Store<crate::api::HAPolicy>) -> Self {
        self.policies = store;
        self
    }

    /// The HAPolicy covering `vm` (the first by name when several do).
    pub fn covering_policy(&self, vm: &VirtualMachine) -> Option<Arc<crate::api::HAPolicy>> {
        let ns = vm.namespace();
        self.policies
            .state()
            .into_iter()
            .filter(|p| p.namespace() == ns && p.covers(&vm.spec.host_pool, vm.labels()))
            .min_by_key(|p| p.name_any())
    }

    /// Every migration of VM `name` in `ns`, oldest first.
    pub fn migrations_of(&self, ns: &str, name: &str) -> Vec<Arc<VirtualMachineMigration>> {
        let mut out: Vec<_> = self
            .migrations
            .state()
            .into_iter()
            .filter(|m| m.namespace().as_deref() == Some(ns) && m.spec.vm_name == name)
            .collect();
        out.sort_by(|a, b| {
            (a.metadata.creation_timestamp.as_ref(), a.name_any())
                .cmp(&(b.metadata.creation_timestamp.as_ref(), b.name_any()))
        });
        out
    }

    /// A connection to the host at `uri`, with the pool's timeouts and, when the pool names a
    /// credentials Secret, its TLS client files as the connection's `pkipath`.
    pub async fn connect(&self, uri: &str, pool: &HostPool) -> HvResult<Arc<dyn Hypervisor>> {
        self.connect_in(&self.hosts, uri, pool).await
    }

    /// [`Context::connect`] through another registry (see [`HostConnections::sibling`]).
    pub async fn connect_in(
        &self,
        registry: &HostConnections,
        uri: &str,
        pool: &HostPool,
    ) -> HvResult<Arc<dyn Hypervisor>> {
        let opts = pool_options(pool);
        let uri = self.credentialed_uri(uri, pool).await?;
        registry.get(&uri, &opts).await.map_err(|e| match e {
            // Name the Secret the rejected credentials came from.
            HypervisorError::Rejected { uri, message } => HypervisorError::Rejected {
                message: match &pool.spec.libvirt.credentials_secret {
                    Some(s) => format!("{message}; credentials from Secret {s}"),
                    None => message,
                },
                uri: hosts::redact(&uri),
            },
            e => e,
        })
    }

    /// `uri` with the pool's credentials applied (see [`Context::connect`]).
    pub async fn credentialed_uri(&self, uri: &str, pool: &HostPool) -> HvResult<String> {
        match &pool.spec.libvirt.credentials_secret {
            Some(secret) => {
                let ns = pool.metadata.namespace.as_deref().unwrap_or_default();
                credentials::apply(&self.client, &self.pki_root, ns, secret, uri).await
            }
            None => Ok(uri.to_string()),
        }
    }

    /// Options for a connection of its own (outside the registry), such as one that carries a
    /// long migration call, with `call_timeout` for its calls.
    pub fn dedicated_options(&self, pool: &HostPool, call_timeout: Duration) -> ConnectOptions {
        let observer = self.metrics.clone();
        ConnectOptions {
            call_timeout,
            observer: Some(Arc::new(move |op: &'static str, secs: f64, ok: bool| {
                observer.libvirt_call(op, secs, ok)
            })),
            ..pool_options(pool)
        }
    }

    /// Whether the HostPool, Node and VirtualMachine caches hold their first complete list. Until
    /// then a decision would rest on partial facts: right after a restart or a leader change every
    /// VM would find its HostPool "missing" and flip to not Ready, and placement would not see all
    /// placed VMs. A cache whose writer is gone will not fill any more and counts as ready.
    pub fn caches_ready(&self) -> bool {
        use futures::FutureExt;
        // Resolves at once (Ok when listed, Err when the writer is gone) unless still listing.
        self.pools.wait_until_ready().now_or_never().is_some()
            && self.nodes.wait_until_ready().now_or_never().is_some()
            && self.vms.wait_until_ready().now_or_never().is_some()
    }

    /// Host facts, read once per connection and then cached.
    pub async fn host_info(&self, hv: &dyn Hypervisor) -> HvResult<HostInfo> {
        if let Some(info) = lock(&self.host_facts).get(hv.uri()) {
            return Ok(info.clone());
        }
        let info = hv.host_info().await?;
        lock(&self.host_facts).insert(hv.uri().to_string(), info.clone());
        Ok(info)
    }

    /// Remember fresh host facts (the HostPool controller reads them on every probe).
    pub fn remember_host_info(&self, uri: &str, info: HostInfo) {
        lock(&self.host_facts).insert(uri.to_string(), info);
    }

    /// The disks resolved for VM `uid` at `generation` on `host`, if still known.
    pub fn provisioned(
        &self,
        uid: &str,
        generation: Option<i64>,
        host: &str,
    ) -> Option<Vec<ResolvedDisk>> {
        lock(&self.provisioned)
            .get(uid)
            .filter(|p| p.generation == generation && p.host == host)
            .map(|p| p.disks.clone())
    }

    /// Remember the disks resolved for VM `uid`.
    pub fn remember_provisioned(
        &self,
        uid: &str,
        generation: Option<i64>,
        host: &str,
        disks: &[ResolvedDisk],
    ) {
        lock(&self.provisioned).insert(
            uid.to_string(),
            Provisioned {
                generation,
                host: host.to_string(),
                disks: disks.to_vec(),
            },
        );
    }

    /// The HA verdict of a host, when an HAPolicy covers it (a verdict the HA controller has
    /// not renewed for [`HA_VERDICT_TTL`], say because its policy was deleted, no longer counts).
    pub fn ha_verdict(&self, host: &str) -> Option<crate::api::ha_policy::HostVerdict> {
        lock(&self.ha_verdicts)
            .get(host)
            .filter(|(_, at)| at.elapsed() < HA_VERDICT_TTL)
            .map(|(v, _)| *v)
    }

    /// Record a host's HA verdict (the HA controller, on every tick).
    pub fn set_ha_verdict(&self, host: &str, v: crate::api::ha_policy::HostVerdict) {
        lock(&self.ha_verdicts).insert(host.to_string(), (v, Instant::now()));
    }

    /// Why admission control keeps VM `uid` from being placed, if it does.
    pub fn admission_block(&self, uid: &str) -> Option<String> {
        lock(&self.admission_blocked).get(uid).cloned()
    }

    /// Set (or with `None` clear) the admission block of VM `uid` (the HA controller).
    pub fn set_admission_block(&self, uid: &str, why: Option<String>) {
        let mut m = lock(&self.admission_blocked);
        match why {
            Some(w) => m.insert(uid.to_string(), w),
            None => m.remove(uid),
        };
    }

    /// Forget what was resolved for VM `uid` (after a failure, or when it is deleted).
    pub fn forget_provisioned(&self, uid: &str) {
        lock(&self.provisioned).remove(uid);
    }

    /// Delay before retrying `key` after one more failure: 2 s doubling to 5 min.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut f = lock(&self.failures);
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs((1u64 << (*n).min(8)).min(300))
    }

    /// Forget `key`'s failures after a success.
    pub fn reset_backoff(&self, key: &str) {
        lock(&self.failures).remove(key);
    }

    /// Publish an Event about `obj`; failures to record are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not record Event");
        }
    }
}

/// Connection options from a pool's libvirt settings.
fn pool_options(pool: &HostPool) -> ConnectOptions {
    let (interval, count) = pool.keepalive();
    ConnectOptions {
        connect_timeout: pool.connect_timeout(),
        keepalive_interval: interval,
        keepalive_count: count,
        ..ConnectOptions::default()
    }
}

/// Disks resolved for one VM.
struct Provisioned {
    generation: Option<i64>,
    host: String,
    disks: Vec<ResolvedDisk>,
}

/// Lock a mutex, recovering the data if a panicking thread poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
