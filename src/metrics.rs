//! Prometheus metrics: reconciles per controller, their errors and durations, and libvirt call
//! latencies per operation.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
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
        Metrics {
            registry,
            reconciles,
            failures,
            durations,
            libvirt_calls,
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

    /// Record one libvirt call.
    pub fn libvirt_call(&self, operation: &'static str, seconds: f64, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.libvirt_calls
            .get_or_create(&CallLabels { operation, result })
            .observe(seconds);
    }

    /// The text exposition format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
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
    }
}
