//! Measured load: what a host's running domains use, from libvirt's cumulative counters sampled
//! now and then and kept as a short rolling window per host.
//!
//! A domain's CPU use is the growth of its CPU time between the window's oldest sample that has
//! it and the newest, over the time between them; its memory is what its QEMU process holds in
//! the newest sample (resident set). A counter that went back (the domain restarted, or another
//! domain took its UUID) starts the domain's window again. A domain in only one sample has no CPU
//! figure yet.

use super::balance::Usage;
use k8s_openapi::jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// One running domain's cumulative counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainCounters {
    /// Domain UUID, lower-case hyphenated.
    pub uuid: String,
    /// CPU time used since it started, in nanoseconds.
    pub cpu_time_ns: u64,
    /// Memory its QEMU process holds (resident set), in bytes.
    pub rss_bytes: u64,
}

/// The counters of a host's running domains at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub at: Timestamp,
    pub domains: Vec<DomainCounters>,
}

/// The samples of one host within a span of time.
#[derive(Debug, Clone)]
pub struct Window {
    span: Duration,
    samples: VecDeque<Sample>,
}

/// What a host's domains use, by the window.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostUse {
    /// Per domain UUID; CPU is 0 for a domain seen in one sample only.
    pub domains: BTreeMap<String, Usage>,
    /// The sum over the domains.
    pub total: Usage,
    /// Domains seen in one sample only (no CPU figure yet), by UUID.
    pub unmeasured: BTreeSet<String>,
}

impl Window {
    /// An empty window keeping samples `span` old at most (besides the newest).
    pub fn new(span: Duration) -> Window {
        Window {
            span,
            samples: VecDeque::new(),
        }
    }

    /// Add a sample. One older than the newest is dropped; samples that fell out of the span
    /// are forgotten.
    pub fn push(&mut self, s: Sample) {
        if self.samples.back().is_some_and(|last| s.at <= last.at) {
            return;
        }
        let oldest_kept =
            s.at.as_millisecond() - i64::try_from(self.span.as_millis()).unwrap_or(i64::MAX);
        self.samples.push_back(s);
        while self.samples.len() > 1
            && self
                .samples
                .front()
                .is_some_and(|f| f.at.as_millisecond() < oldest_kept)
        {
            self.samples.pop_front();
        }
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample is held.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// What the domains of the newest sample use.
    pub fn usage(&self) -> HostUse {
        let Some(newest) = self.samples.back() else {
            return HostUse::default();
        };
        let mut out = HostUse::default();
        for d in &newest.domains {
            let cpu = self.cpu_millis(d, newest.at);
            if cpu.is_none() {
                out.unmeasured.insert(d.uuid.clone());
            }
            let u = Usage {
                cpu_millis: cpu.unwrap_or(0),
                memory: d.rss_bytes,
            };
            out.total.cpu_millis = out.total.cpu_millis.saturating_add(u.cpu_millis);
            out.total.memory = out.total.memory.saturating_add(u.memory);
            out.domains.insert(d.uuid.clone(), u);
        }
        out
    }

    /// Millicores domain `d` (of the newest sample, taken at `now`) used since the oldest sample
    /// of its current run; `None` with no earlier sample of that run.
    fn cpu_millis(&self, d: &DomainCounters, now: Timestamp) -> Option<u64> {
        // Walk back from the newest sample while the counter does not grow past the newer one.
        let mut first: Option<(Timestamp, u64)> = None;
        let mut later = d.cpu_time_ns;
        for s in self.samples.iter().rev().skip(1) {
            let Some(c) = s.domains.iter().find(|c| c.uuid == d.uuid) else {
                break;
            };
            if c.cpu_time_ns > later {
                break;
            }
            later = c.cpu_time_ns;
            first = Some((s.at, c.cpu_time_ns));
        }
        let (at, ns) = first?;
        let ms = now.as_millisecond().saturating_sub(at.as_millisecond());
        if ms <= 0 {
            return None;
        }
        // ns per ms ÷ 1000 = cores × 1000 = millicores.
        let used = u128::from(d.cpu_time_ns - ns) / (ms as u128 * 1000);
        Some(u64::try_from(used).unwrap_or(u64::MAX))
    }
}

/// How much of `capacity` `used` takes, in thousandths: the mean of the CPU and memory shares,
/// each at most 1000; `None` for a capacity with either at zero.
pub fn share(used: Usage, capacity: Usage) -> Option<u64> {
    if capacity.cpu_millis == 0 || capacity.memory == 0 {
        return None;
    }
    let part = |u: u64, c: u64| ((u128::from(u) * 1000) / u128::from(c)).min(1000) as u64;
    Some((part(used.cpu_millis, capacity.cpu_millis) + part(used.memory, capacity.memory)) / 2)
}

/// Steps of the reported CPU, in millicores.
pub const CPU_STEP: u64 = 100;
/// Steps of the reported memory, in bytes.
pub const MEMORY_STEP: u64 = 64 << 20;
/// The share of a host's capacity the measured use must move by before the report changes.
pub const REPORT_CHANGE: f64 = 0.05;
/// The least time between two reports of one host.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(300);

/// A report of a host's measured use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub usage: Usage,
    /// When it was made.
    pub at: Timestamp,
}

/// What to report at `now` of a host's `measured` use: the `previous` report while it is younger
/// than [`REPORT_INTERVAL`] or `measured` stays within [`REPORT_CHANGE`] of `capacity` of it in
/// both CPU and memory; else `measured`, rounded to the nearest [`CPU_STEP`] and
/// [`MEMORY_STEP`]. A host's status is so written at most once per interval, and not at all
/// while its load holds.
pub fn report(
    previous: Option<Report>,
    measured: Usage,
    capacity: Usage,
    now: Timestamp,
) -> Report {
    let near = |a: u64, b: u64, cap: u64| (a.abs_diff(b) as f64) < REPORT_CHANGE * cap as f64;
    if let Some(p) = previous {
        let age = now.as_millisecond().saturating_sub(p.at.as_millisecond());
        let young = age < i64::try_from(REPORT_INTERVAL.as_millis()).unwrap_or(i64::MAX);
        let held = near(p.usage.cpu_millis, measured.cpu_millis, capacity.cpu_millis)
            && near(p.usage.memory, measured.memory, capacity.memory);
        if young || held {
            return p;
        }
    }
    let round = |v: u64, step: u64| v.saturating_add(step / 2) / step * step;
    Report {
        usage: Usage {
            cpu_millis: round(measured.cpu_millis, CPU_STEP),
            memory: round(measured.memory, MEMORY_STEP),
        },
        at: now,
    }
}

#[cfg(test)]
mod tests;
