//! Controllers: one module per resource (fetch → plan → act → report), and what they share.

pub mod cloud_init;
pub mod credentials;
pub mod host_pool;
pub mod image_import;
pub mod permissions;
pub mod run;
pub mod scheduling;
pub mod status;
pub mod virtual_machine;

use crate::api::{HostPool, VirtualMachine};
use crate::hypervisor::connections::{ConnectOptions, HostConnections};
use crate::hypervisor::{HostInfo, HvResult, Hypervisor};
use crate::metrics::Metrics;
use crate::plan::definition::ResolvedDisk;
use crate::plan::placement::Placed;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Field manager of every server-side apply ferry makes.
pub const FIELD_MANAGER: &str = "ferry";

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
    /// Placements chosen but not yet seen in `vms`, by VM UID; held under this lock while a host
    /// is chosen, so VMs placed at the same time see each other.
    pub placing: Mutex<HashMap<String, Placed>>,
    /// When ferry asked a VM's guest to shut down, by VM UID.
    pub stopping: Mutex<HashMap<String, Instant>>,
    /// Consecutive failures per object, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Last facts read from each host, by URI.
    host_facts: Mutex<HashMap<String, HostInfo>>,
    /// Disks resolved for each VM (by UID), with the generation and host they were resolved for.
    provisioned: Mutex<HashMap<String, Provisioned>>,
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
            placing: Mutex::default(),
            stopping: Mutex::default(),
            failures: Mutex::default(),
            host_facts: Mutex::default(),
            provisioned: Mutex::default(),
            pki_root: std::env::var_os("FERRY_PKI_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("ferry-pki")),
        }
    }

    /// A connection to the host at `uri`, with the pool's timeouts and, when the pool names a
    /// credentials Secret, its TLS client files as the connection's `pkipath`.
    pub async fn connect(&self, uri: &str, pool: &HostPool) -> HvResult<Arc<dyn Hypervisor>> {
        let (interval, count) = pool.keepalive();
        let opts = ConnectOptions {
            connect_timeout: pool.connect_timeout(),
            keepalive_interval: interval,
            keepalive_count: count,
            ..ConnectOptions::default()
        };
        let uri = match &pool.spec.libvirt.credentials_secret {
            Some(secret) => {
                let ns = pool.metadata.namespace.as_deref().unwrap_or_default();
                credentials::apply(&self.client, &self.pki_root, ns, secret, uri).await?
            }
            None => uri.to_string(),
        };
        self.hosts.get(&uri, &opts).await
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
