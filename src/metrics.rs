//! Prometheus metrics: reconciles per controller, their errors and durations, libvirt call
//! latencies per operation, gauges of VMs by phase and hosts by state, finished migrations, and
//! the build (`ferry_build_info`: version and git commit).
//!
//! The gauges are not counted in reconciles (that drifts): at every scrape they are computed
//! afresh from the controllers' reflector caches, through the [`Inventory`] source that the
//! running controllers install ([`Metrics::set_inventory_source`]). A replica without one (a
//! standby, or before the caches are filled) does not export them at all.

use crate::api::{HostPool, HostState, VirtualMachine, VmPhase};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::RwLock;
use std::time::Instant;

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

/// Labels of a libvirt call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub operation: &'static str,
    pub result: &'static str,
}

/// Labels of the VM gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

/// Labels of the host gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// Every VM phase, in the order of the API. A VM without a phase yet counts as `Pending`.
pub const VM_PHASES: [VmPhase; 10] = [
    VmPhase::Pending,
    VmPhase::Provisioning,
    VmPhase::Starting,
    VmPhase::Running,
    VmPhase::Stopping,
    VmPhase::Stopped,
    VmPhase::Failed,
    VmPhase::Unknown,
    VmPhase::Terminating,
    VmPhase::Migrating,
];

/// Every host state, in the order of the API.
pub const HOST_STATES: [HostState; 4] = [
    HostState::Ready,
    HostState::Cordoned,
    HostState::Unreachable,
    HostState::Misconfigured,
];

fn phase_name(p: VmPhase) -> &'static str {
    // Exhaustive on purpose: a new phase must get a name here and a place in VM_PHASES.
    match p {
        VmPhase::Pending => "Pending",
        VmPhase::Provisioning => "Provisioning",
        VmPhase::Starting => "Starting",
        VmPhase::Running => "Running",
        VmPhase::Stopping => "Stopping",
        VmPhase::Stopped => "Stopped",
        VmPhase::Failed => "Failed",
        VmPhase::Unknown => "Unknown",
        VmPhase::Terminating => "Terminating",
        VmPhase::Migrating => "Migrating",
    }
}

fn state_name(s: HostState) -> &'static str {
    match s {
        HostState::Ready => "Ready",
        HostState::Cordoned => "Cordoned",
        HostState::Unreachable => "Unreachable",
        HostState::Misconfigured => "Misconfigured",
    }
}

/// VMs per phase and hosts per state, every phase and state present (zero when none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inventory {
    pub vms: Vec<(&'static str, i64)>,
    pub hosts: Vec<(&'static str, i64)>,
}

/// Count VMs by phase and hosts by state over all pools (each pool's `status.hosts`; a Node
/// selected by two pools counts in both). A VM without a phase counts as `Pending`.
pub fn inventory<'a>(
    vms: impl IntoIterator<Item = &'a VirtualMachine>,
    pools: impl IntoIterator<Item = &'a HostPool>,
) -> Inventory {
    let mut by_phase = [0i64; VM_PHASES.len()];
    for vm in vms {
        let phase = vm
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(VmPhase::Pending);
        if let Some(i) = VM_PHASES.iter().position(|p| *p == phase) {
            by_phase[i] += 1;
        }
    }
    let mut by_state = [0i64; HOST_STATES.len()];
    for pool in pools {
        for host in pool.status.iter().flat_map(|s| &s.hosts) {
            if let Some(i) = HOST_STATES.iter().position(|s| *s == host.state) {
                by_state[i] += 1;
            }
        }
    }
    Inventory {
        vms: VM_PHASES
            .iter()
            .zip(by_phase)
            .map(|(p, n)| (phase_name(*p), n))
            .collect(),
        hosts: HOST_STATES
            .iter()
            .zip(by_state)
            .map(|(s, n)| (state_name(*s), n))
            .collect(),
    }
}

/// Computes the [`Inventory`] at scrape time (reads the controllers' caches).
pub type InventorySource = Box<dyn Fn() -> Inventory + Send + Sync>;

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// All of ferry's metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    failures: Family<ErrorLabels, Counter>,
    durations: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    libvirt_calls: Family<CallLabels, Histogram, fn() -> Histogram>,
    vms: Family<PhaseLabels, Gauge>,
    hosts: Family<StateLabels, Gauge>,
    migrations: Family<ResultLabels, Counter>,
    inventory: RwLock<Option<InventorySource>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let durations = Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        let libvirt_calls = Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register(
            "reconciles",
            "Reconciles run, per controller",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, per controller and error category",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile, per controller",
            durations.clone(),
        );
        registry.register(
            "libvirt_call_duration_seconds",
            "Latency of libvirt calls, per operation and result",
            libvirt_calls.clone(),
        );
        let vms = Family::<PhaseLabels, Gauge>::default();
        let hosts = Family::<StateLabels, Gauge>::default();
        registry.register(
            "virtual_machines",
            "VirtualMachines per phase, from the controller's cache at scrape time",
            vms.clone(),
        );
        registry.register(
            "hosts",
            "Hypervisor hosts per state, over all HostPools, from the controller's cache at scrape time",
            hosts.clone(),
        );
        let migrations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "migrations",
            "Live migrations run by this controller, per result",
            migrations.clone(),
        );
        registry.register(
            "build",
            "The ferry build: version and git commit (always 1)",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", crate::GIT_COMMIT),
            ]),
        );
        Metrics {
            migrations,
            registry,
            reconciles,
            failures,
            durations,
            libvirt_calls,
            vms,
            hosts,
            inventory: RwLock::new(None),
        }
    }
}

impl Metrics {
    /// Count a reconcile and time it until the returned guard drops.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer<'_> {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }

    /// Count a failed reconcile.
    pub fn failure(&self, controller: &'static str, error: &'static str) {
        self.failures
            .get_or_create(&ErrorLabels { controller, error })
            .inc();
    }

    /// Count a finished live migration.
    pub fn migration_finished(&self, succeeded: bool) {
        let result = if succeeded { "succeeded" } else { "failed" };
        self.migrations
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Record one libvirt call.
    pub fn libvirt_call(&self, operation: &'static str, seconds: f64, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.libvirt_calls
            .get_or_create(&CallLabels { operation, result })
            .observe(seconds);
    }

    /// Install (or, with `None`, remove) what the gauges are computed from at each scrape.
    pub fn set_inventory_source(&self, source: Option<InventorySource>) {
        let removed = source.is_none();
        *self.inventory.write().unwrap_or_else(|p| p.into_inner()) = source;
        if removed {
            self.vms.clear();
            self.hosts.clear();
        }
    }

    /// Set the gauges from the inventory source, if there is one.
    fn refresh_inventory(&self) {
        let source = self.inventory.read().unwrap_or_else(|p| p.into_inner());
        let Some(source) = source.as_ref() else {
            return;
        };
        let inv = source();
        for (phase, n) in inv.vms {
            self.vms.get_or_create(&PhaseLabels { phase }).set(n);
        }
        for (state, n) in inv.hosts {
            self.hosts.get_or_create(&StateLabels { state }).set(n);
        }
    }

    /// The text exposition format; computes the gauges first.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.refresh_inventory();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Observes a reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .durations
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_counters_and_histograms() {
        let m = Metrics::default();
        drop(m.reconcile("virtualmachine"));
        m.failure("virtualmachine", "host_unreachable");
        m.libvirt_call("start_domain", 0.2, true);
        let text = m.encode().expect("encodes");
        assert!(
            text.contains("ferry_reconciles_total{controller=\"virtualmachine\"} 1"),
            "{text}"
        );
        assert!(text.contains("ferry_reconcile_errors_total{controller=\"virtualmachine\",error=\"host_unreachable\"} 1"));
        assert!(text.contains(
            "ferry_libvirt_call_duration_seconds_count{operation=\"start_domain\",result=\"ok\"} 1"
        ));
        assert!(
            text.contains(
                "ferry_reconcile_duration_seconds_count{controller=\"virtualmachine\"} 1"
            )
        );
        assert!(
            text.contains(&format!(
                "ferry_build_info{{version=\"{}\",commit=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION"),
                crate::GIT_COMMIT
            )),
            "{text}"
        );
    }

    fn vm(status: serde_json::Value) -> VirtualMachine {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web-1", "namespace": "vms"},
            "spec": {"hostPool": "rack1", "cpu": {"cores": 1}, "memory": "1Gi"},
            "status": status,
        }))
        .expect("valid VM")
    }

    fn pool(hosts: &[&str]) -> HostPool {
        let hosts: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(i, state)| serde_json::json!({"name": format!("hv-{i}"), "state": state}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool",
            "metadata": {"name": "rack1", "namespace": "vms"},
            "spec": {"nodeSelector": {"matchLabels": {"ferry.dev/hypervisor": "true"}},
                     "libvirt": {"uriTemplate": "qemu+tls://{address}/system"},
                     "storage": {"pool": "ferry"}},
            "status": {"hosts": hosts},
        }))
        .expect("valid HostPool")
    }

    #[test]
    fn inventory_counts_every_phase_and_state_zeros_included() {
        let vms = [
            vm(serde_json::json!({"phase": "Running"})),
            vm(serde_json::json!({"phase": "Running"})),
            vm(serde_json::json!({"phase": "Failed"})),
            vm(serde_json::json!({})),
            vm(serde_json::Value::Null),
        ];
        let pools = [
            pool(&["Ready", "Ready", "Unreachable"]),
            pool(&["Cordoned"]),
            pool(&[]),
        ];
        let inv = inventory(vms.iter(), pools.iter());
        assert_eq!(
            inv.vms,
            vec![
                ("Pending", 2),
                ("Provisioning", 0),
                ("Starting", 0),
                ("Running", 2),
                ("Stopping", 0),
                ("Stopped", 0),
                ("Failed", 1),
                ("Unknown", 0),
                ("Terminating", 0),
                ("Migrating", 0),
            ]
        );
        assert_eq!(
            inv.hosts,
            vec![
                ("Ready", 2),
                ("Cordoned", 1),
                ("Unreachable", 1),
                ("Misconfigured", 0),
            ]
        );
        let empty = inventory([], []);
        assert!(empty.vms.iter().chain(&empty.hosts).all(|(_, n)| *n == 0));
        assert_eq!((empty.vms.len(), empty.hosts.len()), (10, 4));
    }

    /// Every value the API's schema allows, as strings.
    fn schema_values(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(c)) = m.get("const") {
                    out.insert(c.clone());
                }
                if let Some(serde_json::Value::Array(e)) = m.get("enum") {
                    out.extend(e.iter().filter_map(|x| x.as_str().map(String::from)));
                }
                m.values().for_each(|x| schema_values(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| schema_values(x, out)),
            _ => {}
        }
    }

    #[test]
    fn label_values_cover_the_api_and_match_its_spelling() {
        let mut phases = std::collections::BTreeSet::new();
        schema_values(schemars::schema_for!(VmPhase).as_value(), &mut phases);
        let ours: std::collections::BTreeSet<String> = VM_PHASES
            .iter()
            .map(|p| phase_name(*p).to_string())
            .collect();
        assert_eq!(ours, phases);
        for p in VM_PHASES {
            assert_eq!(serde_json::json!(phase_name(p)), serde_json::json!(p));
        }
        let mut states = std::collections::BTreeSet::new();
        schema_values(schemars::schema_for!(HostState).as_value(), &mut states);
        let ours: std::collections::BTreeSet<String> = HOST_STATES
            .iter()
            .map(|s| state_name(*s).to_string())
            .collect();
        assert_eq!(ours, states);
        for s in HOST_STATES {
            assert_eq!(serde_json::json!(state_name(s)), serde_json::json!(s));
        }
    }

    #[test]
    fn every_metric_is_documented() {
        let m = Metrics::default();
        m.set_inventory_source(Some(Box::new(|| inventory([], []))));
        // A family shows once it has a sample.
        drop(m.reconcile("virtualmachine"));
        m.failure("virtualmachine", "host_unreachable");
        m.libvirt_call("start_domain", 0.1, true);
        m.migration_finished(true);
        let text = m.encode().expect("encodes");
        let page = include_str!("../docs/observability.md");
        let mut names = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
                (words.next(), words.next(), words.next(), words.next())
            {
                // The names samples carry (what queries use).
                names.push(match kind {
                    "counter" => format!("{name}_total"),
                    "info" => format!("{name}_info"),
                    _ => name.to_string(),
                });
            }
        }
        assert!(names.len() >= 8, "{text}");
        let missing: Vec<_> = names
            .iter()
            .filter(|n| !page.contains(&format!("`{n}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "not in docs/observability.md: {missing:?}"
        );
    }

    #[test]
    fn gauges_are_computed_at_scrape_time() {
        let m = Metrics::default();
        // No source (a standby, or caches not filled yet): no values, rather than false zeros.
        let text = m.encode().expect("encodes");
        assert!(!text.contains("ferry_virtual_machines"), "{text}");
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1));
        let c = count.clone();
        m.set_inventory_source(Some(Box::new(move || {
            let n = c.load(std::sync::atomic::Ordering::Relaxed);
            let vms: Vec<_> = (0..n)
                .map(|_| vm(serde_json::json!({"phase": "Running"})))
                .collect();
            inventory(vms.iter(), [pool(&["Ready"])].iter())
        })));
        let text = m.encode().expect("encodes");
        assert!(
            text.contains("# TYPE ferry_virtual_machines gauge"),
            "{text}"
        );
        assert!(
            text.contains("ferry_virtual_machines{phase=\"Running\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ferry_virtual_machines{phase=\"Failed\"} 0"),
            "{text}"
        );
        assert!(text.contains("ferry_hosts{state=\"Ready\"} 1"), "{text}");
        assert!(
            text.contains("ferry_hosts{state=\"Misconfigured\"} 0"),
            "{text}"
        );
        count.store(3, std::sync::atomic::Ordering::Relaxed);
        let text = m.encode().expect("encodes");
        assert!(
            text.contains("ferry_virtual_machines{phase=\"Running\"} 3"),
            "{text}"
        );
        m.set_inventory_source(None);
        let text = m.encode().expect("encodes");
        assert!(!text.contains("ferry_hosts{"), "{text}");
    }
}

/// Labels of counters split by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}
