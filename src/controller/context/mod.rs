//! What every reconcile shares, in named parts: the reflector caches, the host connections, and
//! what the controllers remember between reconciles. A step that takes a part rather than the
//! whole [`Context`] says by its signature what it touches.

mod backoff;
mod caches;
mod foreign;
mod ha;
pub mod host_reads;
mod hosts;
mod load;
mod migrations;
mod placement;
mod resync;
mod vm_runtime;

pub use backoff::Backoff;
pub use caches::Caches;
pub use foreign::ForeignVolumes;
pub use ha::{HA_VERDICT_TTL, HaKey, HaVerdicts, LiveHa, PolicyPool, PoolHost};
pub use hosts::HostAccess;
pub use load::{LOAD_WINDOW, LoadWindows};
pub use migrations::{Job, JobResult, MigrationBook};
pub use placement::Placement;
pub use resync::{DEFAULT_JITTER, DEFAULT_SAFETY_RESYNC, SafetyResync, jittered};
pub use vm_runtime::{PoolReports, VmRuntime};

use crate::api::{HostPool, VirtualMachine};
use crate::controller::image_import::Imports;
use crate::gate::ActionGate;
use crate::hypervisor::HostConnections;
use crate::metrics::Metrics;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use std::sync::{Arc, Mutex};

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// The one Event recorder.
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The reflector caches.
    pub caches: Caches,
    /// Libvirt connections, host facts and credentials.
    pub hosts: HostAccess,
    /// Migration slots, running jobs, evacuation migrations just created.
    pub migrations: MigrationBook,
    /// HA verdicts per host, set by the HA controller, read by placement and the VM controller.
    pub ha: HaVerdicts,
    /// Placements in flight and admission-control blocks.
    pub placement: Placement,
    /// VMs being shut down, disks resolved per VM.
    pub vm_runtime: VmRuntime,
    /// The HostPool status this process wrote last.
    pub pool_reports: PoolReports,
    /// Retry delays per object.
    pub backoff: Backoff,
    /// Image imports: their states, the slots they take turns on, the cluster's networks.
    pub imports: Imports,
    /// Measured load per host of each pool (shared with the metrics' scrape).
    pub load: Arc<LoadWindows>,
    /// The volumes libvirt domains ferry does not manage use, per host.
    pub foreign_volumes: ForeignVolumes,
    /// How long a VM in a steady state waits for its next look when no event wakes it (and
    /// how old a host's reading by the HostPool probe may grow when nothing changed it).
    pub safety_resync: SafetyResync,
    /// BMC clients to use instead of those the pools' fencing settings describe (tests).
    pub bmcs: Option<crate::fence::fake::FakeBmcs>,
    /// What the HostPool probe last read of each host.
    pub host_reads: host_reads::HostReads,
}

impl Context {
    /// A context over the given client, stores and metrics, with libvirt connections of its own.
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        pools: Store<HostPool>,
        nodes: Store<Node>,
        vms: Store<VirtualMachine>,
    ) -> Self {
        let observer = metrics.clone();
        let connections = HostConnections::new(Some(Arc::new(
            move |op: &'static str, secs: f64, ok: bool| observer.libvirt_call(op, secs, ok),
        )));
        Self::with_connections(client, recorder, metrics, pools, nodes, vms, connections)
    }

    /// A context whose host connections come from `connections` (for instance a registry over
    /// another [`crate::hypervisor::Connector`]).
    pub fn with_connections(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        pools: Store<HostPool>,
        nodes: Store<Node>,
        vms: Store<VirtualMachine>,
        connections: HostConnections,
    ) -> Self {
        Context {
            hosts: HostAccess::new(client.clone(), metrics.clone(), connections),
            client,
            recorder,
            metrics,
            caches: Caches::new(pools, nodes, vms),
            migrations: MigrationBook::default(),
            ha: HaVerdicts::default(),
            placement: Placement::default(),
            vm_runtime: VmRuntime::default(),
            pool_reports: PoolReports::default(),
            backoff: Backoff::default(),
            imports: Imports::default(),
            load: Arc::default(),
            foreign_volumes: ForeignVolumes::default(),
            safety_resync: SafetyResync::default(),
            bmcs: None,
            host_reads: Default::default(),
        }
    }

    /// Let every host and BMC action ask `gate` first (see [`crate::gate`]); a context made
    /// without it acts unconditionally, as a replica without leader election does.
    pub fn with_gate(mut self, gate: ActionGate) -> Self {
        self.hosts.connections = self.hosts.connections.clone().with_gate(gate);
        self
    }

    /// The gate every host and BMC action asks first.
    pub fn gate(&self) -> &ActionGate {
        self.hosts.connections.gate()
    }

    /// Use `store` for VirtualMachineMigrations.
    pub fn with_migrations(mut self, store: Store<crate::api::VirtualMachineMigration>) -> Self {
        self.caches.migrations = store;
        self
    }

    /// Allow in libvirt URIs what `limits` allow (the controller's flags).
    pub fn with_uri_limits(mut self, limits: crate::plan::uri_policy::Limits) -> Self {
        self.hosts.set_uri_limits(limits);
        self
    }

    /// Look at steady VMs again every `period` (jittered; the controller's
    /// `--safety-resync-seconds`).
    pub fn with_safety_resync(mut self, period: std::time::Duration) -> Self {
        self.safety_resync = SafetyResync::new(period, DEFAULT_JITTER);
        self
    }

    /// Run image imports with `imports` (the controller's flags).
    pub fn with_imports(mut self, imports: Imports) -> Self {
        self.imports = imports;
        self
    }

    /// Use `store` for the Events about ferry's objects.
    pub fn with_events(mut self, store: Store<k8s_openapi::api::core::v1::Event>) -> Self {
        self.caches.events = store;
        self
    }

    /// Reach every host's BMC through `bmcs` instead of the pools' fencing settings (tests).
    pub fn with_bmcs(mut self, bmcs: crate::fence::fake::FakeBmcs) -> Self {
        self.bmcs = Some(bmcs);
        self
    }

    /// Use `store` for VirtualMachineClasses.
    pub fn with_classes(mut self, store: Store<crate::api::VirtualMachineClass>) -> Self {
        self.caches.classes = store;
        self
    }

    /// Use `store` for HAPolicies.
    pub fn with_policies(mut self, store: Store<crate::api::HAPolicy>) -> Self {
        self.caches.policies = store;
        self
    }

    /// Drop what the controllers remember for objects that are gone: HA verdicts and storm
    /// guards of (policy, pool, host)s that no longer exist, admission blocks of policies that
    /// no longer cover the pool, the last status of deleted pools. Returns what HA state may
    /// exist now (`None`, and nothing dropped, until the caches hold their first list).
    pub fn forget_gone(&self) -> Option<LiveHa> {
        let live = self.caches.live_ha()?;
        self.ha.retain(&live);
        self.placement.retain_admission_blocks(|o| live.guards(o));
        let pools: std::collections::HashSet<String> = self
            .caches
            .pools
            .state()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        self.pool_reports.retain(|uid| pools.contains(uid));
        let pool_names: std::collections::HashSet<(String, String)> = self
            .caches
            .pools
            .state()
            .iter()
            .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        self.load
            .retain(|h| pool_names.contains(&(h.namespace.clone(), h.pool.clone())));
        let vms: std::collections::HashSet<String> = self
            .caches
            .vms
            .state()
            .iter()
            .filter_map(|v| v.metadata.uid.clone())
            .collect();
        self.ha.retain_releases(|uid| vms.contains(uid));
        Some(live)
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

/// Lock a mutex, recovering the data if a panicking thread poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
