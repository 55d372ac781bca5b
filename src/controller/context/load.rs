//! Measured load: a rolling window of domain counters per host of each pool, filled by the
//! HostPool probe.

use super::ha::PoolHost;
use super::lock;
use crate::plan::balance::Usage;
use crate::plan::load::{HostUse, Sample, Window};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How far back a host's measured load looks.
pub const LOAD_WINDOW: Duration = Duration::from_secs(120);

/// The load windows of every host probed, each with what its domains used at its last sample.
#[derive(Default)]
pub struct LoadWindows {
    windows: Mutex<HashMap<PoolHost, (Window, HostUse)>>,
}

impl LoadWindows {
    /// Add `sample` to `host`'s window and say what its domains use now.
    pub fn record(&self, host: &PoolHost, sample: Sample) -> HostUse {
        let mut windows = lock(&self.windows);
        let (w, last) = windows
            .entry(host.clone())
            .or_insert_with(|| (Window::new(LOAD_WINDOW), HostUse::default()));
        w.push(sample);
        *last = w.usage();
        last.clone()
    }

    /// What each measured domain (by UUID) used at its host's last sample; domains seen in one
    /// sample only are left out. A domain on two hosts (a live migration under way) counts
    /// where it uses more CPU.
    pub fn domains(&self) -> HashMap<String, Usage> {
        let windows = lock(&self.windows);
        let mut out: HashMap<String, Usage> = HashMap::new();
        for (_, last) in windows.values() {
            for (uuid, u) in &last.domains {
                if last.unmeasured.contains(uuid) {
                    continue;
                }
                let e = out.entry(uuid.clone()).or_insert(*u);
                if u.cpu_millis > e.cpu_millis {
                    *e = *u;
                }
            }
        }
        out
    }

    /// What `host`'s domains used at its last sample, if it was sampled since it last failed to
    /// answer.
    pub fn host(&self, host: &PoolHost) -> Option<HostUse> {
        lock(&self.windows).get(host).map(|(_, last)| last.clone())
    }

    /// Forget `host`'s window (it did not answer: a gap would make the next figure wrong).
    pub fn forget(&self, host: &PoolHost) {
        lock(&self.windows).remove(host);
    }

    /// Keep only the windows of hosts `keep` accepts.
    pub fn retain(&self, keep: impl Fn(&PoolHost) -> bool) {
        lock(&self.windows).retain(|h, _| keep(h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::load::DomainCounters;
    use k8s_openapi::jiff::Timestamp;

    fn sample(secs: i64, domains: &[(&str, u64)]) -> Sample {
        Sample {
            at: Timestamp::from_second(1_800_000_000 + secs).expect("a valid time"),
            domains: domains
                .iter()
                .map(|(uuid, cpu_secs)| DomainCounters {
                    uuid: uuid.to_string(),
                    cpu_time_ns: cpu_secs * 1_000_000_000,
                    rss_bytes: 1 << 20,
                })
                .collect(),
        }
    }

    #[test]
    fn domains_are_measured_from_their_second_sample_and_forgotten_with_their_host() {
        let w = LoadWindows::default();
        let (h1, h2) = (
            PoolHost::new("ns", "p", "h1"),
            PoolHost::new("ns", "p", "h2"),
        );
        w.record(&h1, sample(0, &[("a", 0)]));
        w.record(&h2, sample(0, &[("a", 0)]));
        assert!(w.domains().is_empty());
        w.record(&h1, sample(10, &[("a", 5), ("b", 0)]));
        w.record(&h2, sample(10, &[("a", 1)]));
        // a runs on both hosts (a migration): the busier side counts; b is new.
        let d = w.domains();
        assert_eq!(d.len(), 1);
        assert_eq!(d["a"].cpu_millis, 500);
        w.forget(&h1);
        assert_eq!(w.domains()["a"].cpu_millis, 100);
        w.retain(|h| h.node != "h2");
        assert!(w.domains().is_empty());
    }
}
