//! Prometheus metrics: reconciles per controller, their errors and durations, libvirt call
//! latencies per operation, finished migrations and their downtime, fences, the build
//! (`ferry_build_info`: version and git
//! commit), and the state of VMs, hosts and HA policies ([`inventory`]).
//!
//! The state gauges are not counted in reconciles (that drifts): at every scrape they are
//! computed afresh from the controllers' reflector caches, through the [`Inventory`] source that
//! the running controllers install ([`Metrics::set_inventory_source`]). A replica without one (a
//! standby, or before the caches are filled) does not export them at all.

pub mod inventory;

pub use inventory::{HOST_STATES, Inventory, InventorySource, VM_PHASES, inventory};

use inventory::InventoryCollector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::{Arc, RwLock};
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

/// Labels naming a host or BMC action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: &'static str,
}

/// Labels naming a HostPool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub object_namespace: String,
    pub pool: String,
}

/// Labels of a libvirt call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub operation: &'static str,
    pub result: &'static str,
}

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
    migrations: Family<ResultLabels, Counter>,
    migration_downtime: Histogram,
    fences: Family<ResultLabels, Counter>,
    ha_judged: Gauge,
    withheld: Family<ActionLabels, Counter>,
    balancing_migrations: Family<PoolLabels, Counter>,
    /// What the state gauges are computed from at each scrape (shared with the collector).
    inventory: Arc<RwLock<Option<InventorySource>>>,
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
        let inventory = Arc::new(RwLock::new(None));
        registry.register_collector(Box::new(InventoryCollector::new(inventory.clone())));
        let migrations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "migrations",
            "Live migration jobs this replica ran to their end, per result",
            migrations.clone(),
        );
        // 5 ms to 10 s: libvirt's default limit is 300 ms.
        let migration_downtime = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "migration_downtime_seconds",
            "Downtime of each successful live migration (the guest paused on the switch-over), as libvirt measured it",
            migration_downtime.clone(),
        );
        let fences = Family::<ResultLabels, Counter>::default();
        registry.register(
            "fences",
            "Fence attempts (BMC power off) this replica made, per result: confirmed (the BMC reports the host off) or failed",
            fences.clone(),
        );
        let ha_judged = Gauge::default();
        registry.register(
            "ha_hosts_judged",
            "(HAPolicy, HostPool, host) triples the HA controller judges and remembers",
            ha_judged.clone(),
        );
        let withheld = Family::<ActionLabels, Counter>::default();
        registry.register(
            "actions_withheld",
            "Host and BMC actions this replica withheld because its leader lease lapsed, per action",
            withheld.clone(),
        );
        let balancing_migrations = Family::<PoolLabels, Counter>::default();
        registry.register(
            "balancing_migrations",
            "Live migrations balancing created (automation Full), per HostPool",
            balancing_migrations.clone(),
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
            migration_downtime,
            fences,
            ha_judged,
            withheld,
            balancing_migrations,
            registry,
            reconciles,
            failures,
            durations,
            libvirt_calls,
            inventory,
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

    /// Count a live migration job that ended, and observe its downtime when it succeeded.
    pub fn migration_finished(&self, outcome: MigrationOutcome) {
        let result = match outcome {
            MigrationOutcome::Succeeded { downtime } => {
                if let Some(d) = downtime {
                    self.migration_downtime.observe(d.as_secs_f64());
                }
                "succeeded"
            }
            MigrationOutcome::Failed => "failed",
            MigrationOutcome::Unknown => "unknown",
        };
        self.migrations
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Count the migrations balancing created in pool `pool` of `namespace`.
    pub fn balancing_migrations(&self, namespace: &str, pool: &str, n: usize) {
        self.balancing_migrations
            .get_or_create(&PoolLabels {
                object_namespace: namespace.to_string(),
                pool: pool.to_string(),
            })
            .inc_by(n as u64);
    }

    /// Count a host or BMC action withheld by the [`crate::gate::ActionGate`].
    pub fn action_withheld(&self, action: &'static str) {
        self.withheld.get_or_create(&ActionLabels { action }).inc();
    }

    /// Count a fence attempt: `confirmed` when the BMC reported the host off.
    pub fn fence_finished(&self, confirmed: bool) {
        let result = if confirmed { "confirmed" } else { "failed" };
        self.fences.get_or_create(&ResultLabels { result }).inc();
    }

    /// Set how many (HAPolicy, HostPool, host) triples the HA controller remembers.
    pub fn set_ha_hosts_judged(&self, n: usize) {
        self.ha_judged.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Record one libvirt call.
    pub fn libvirt_call(&self, operation: &'static str, seconds: f64, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.libvirt_calls
            .get_or_create(&CallLabels { operation, result })
            .observe(seconds);
    }

    /// Install (or, with `None`, remove) what the state gauges are computed from at each scrape.
    pub fn set_inventory_source(&self, source: Option<InventorySource>) {
        *self.inventory.write().unwrap_or_else(|p| p.into_inner()) = source;
    }

    /// The text exposition format (the state gauges computed now).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// How a live migration job ended, as this replica saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationOutcome {
    /// The VM runs on the target; libvirt's downtime measurement when it gave one.
    Succeeded {
        downtime: Option<std::time::Duration>,
    },
    /// libvirt reported a failure, or ferry aborted the job.
    Failed,
    /// A job adopted after a restart ended; how, the hosts tell afterwards.
    Unknown,
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

    #[test]
    fn every_metric_is_documented() {
        let m = Metrics::default();
        m.set_inventory_source(Some(Box::new(|| inventory([], [], []))));
        // A family shows once it has a sample.
        drop(m.reconcile("virtualmachine"));
        m.failure("virtualmachine", "host_unreachable");
        m.libvirt_call("start_domain", 0.1, true);
        m.migration_finished(MigrationOutcome::Succeeded {
            downtime: Some(std::time::Duration::from_millis(40)),
        });
        m.fence_finished(false);
        m.action_withheld("start_domain");
        m.balancing_migrations("vms", "rack1", 2);
        let text = m.encode().expect("encodes");
        assert!(
            text.contains(
                "ferry_balancing_migrations_total{object_namespace=\"vms\",pool=\"rack1\"} 2"
            ),
            "{text}"
        );
        let page = include_str!("../../docs/observability.md");
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
        assert!(names.len() >= 15, "{text}");
        let missing: Vec<_> = names
            .iter()
            .filter(|n| !page.contains(&format!("`{n}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "not in docs/observability.md: {missing:?}"
        );
        // And the table has no row for a metric that is not exported.
        let rows: Vec<&str> = page
            .lines()
            .filter_map(|l| l.strip_prefix("| `ferry_"))
            .filter_map(|l| l.split('`').next())
            .collect();
        assert_eq!(rows.len(), names.len(), "{rows:?} vs {names:?}");
        for row in rows {
            assert!(
                names.contains(&format!("ferry_{row}")),
                "docs/observability.md lists ferry_{row}, which is not exported"
            );
        }
    }
}

/// Labels of counters split by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}
