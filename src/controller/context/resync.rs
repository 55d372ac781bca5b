//! The safety resync: how long a VM in a steady state waits before it is looked at again when
//! nothing (a watch, a domain event, a reconnection to its host) wakes it earlier.
//!
//! Domain lifecycle events and the hosts' connection health are how ferry notices changes; this
//! slow resync only covers what those could miss. Each wait is jittered around the period, so
//! that VMs started together (after a restart of the controller, say) do not stay aligned and
//! the resyncs of 10,000 VMs spread evenly over time.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The default period (the controller's `--safety-resync-seconds`).
pub const DEFAULT_SAFETY_RESYNC: Duration = Duration::from_secs(300);

/// The default jitter: each wait is the period ± this fraction of it.
pub const DEFAULT_JITTER: f64 = 0.15;

/// The safety resync's period and jitter.
#[derive(Debug)]
pub struct SafetyResync {
    period: Duration,
    jitter: f64,
    /// Varies the jitter between calls for the same VM.
    calls: AtomicU64,
}

impl Default for SafetyResync {
    fn default() -> Self {
        SafetyResync::new(DEFAULT_SAFETY_RESYNC, DEFAULT_JITTER)
    }
}

impl SafetyResync {
    /// Waits of `period` ± `jitter` × `period` (`jitter` is clamped to 0..=0.5).
    pub fn new(period: Duration, jitter: f64) -> Self {
        SafetyResync {
            period,
            jitter: if jitter.is_finite() {
                jitter.clamp(0.0, 0.5)
            } else {
                0.0
            },
            calls: AtomicU64::new(0),
        }
    }

    /// The period the waits are jittered around.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// How long the object `key` (a VM's UID) waits this time.
    pub fn next(&self, key: &str) -> Duration {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        self.calls.fetch_add(1, Ordering::Relaxed).hash(&mut h);
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default()
            .hash(&mut h);
        // The top 53 bits as a fraction in [0, 1).
        let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
        jittered(self.period, self.jitter, unit)
    }
}

/// `period` moved by up to ± `jitter` × `period`: `unit` (in [0, 1)) picks where, 0.5 the
/// middle. Never less than one second.
pub fn jittered(period: Duration, jitter: f64, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let factor = 1.0 + jitter * (2.0 * unit - 1.0);
    Duration::from_secs_f64(period.as_secs_f64() * factor).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_stays_within_the_jitter_of_the_period() {
        let p = Duration::from_secs(300);
        assert_eq!(jittered(p, 0.15, 0.5), p);
        assert_eq!(jittered(p, 0.15, 0.0), Duration::from_secs(255));
        assert_eq!(jittered(p, 0.15, 1.0), Duration::from_secs(345));
        assert_eq!(jittered(p, 0.0, 0.9), p);
        assert_eq!(jittered(p, 0.15, f64::NAN), p);
        assert_eq!(
            jittered(Duration::ZERO, 0.15, 0.2),
            Duration::from_secs(1),
            "never a busy loop"
        );
    }

    #[test]
    fn waits_spread_over_the_whole_window() {
        let r = SafetyResync::new(Duration::from_secs(300), 0.15);
        // 10,000 VMs: every wait inside the window, and the window's tenths all used evenly.
        let mut tenths = [0usize; 10];
        for i in 0..10_000 {
            let d = r.next(&format!("vm-{i}")).as_secs_f64();
            assert!((255.0..=345.0).contains(&d), "{d}");
            tenths[(((d - 255.0) / 9.0) as usize).min(9)] += 1;
        }
        for (i, n) in tenths.iter().enumerate() {
            assert!(
                (700..=1300).contains(n),
                "tenth {i} holds {n} of 10000: {tenths:?}"
            );
        }
        // The same VM does not get the same wait every time.
        let same: std::collections::HashSet<u128> =
            (0..20).map(|_| r.next("vm-1").as_millis()).collect();
        assert!(same.len() > 10, "{same:?}");
    }

    #[test]
    fn the_jitter_is_bounded() {
        let r = SafetyResync::new(Duration::from_secs(100), 3.0);
        for i in 0..1000 {
            let d = r.next(&i.to_string());
            assert!(d >= Duration::from_secs(50) && d <= Duration::from_secs(150));
        }
    }
}
