//! VM monitoring: whether a VM whose domain crashed or stopped without ferry asking is started
//! again, within a number of such restarts per time window (as vSphere's VM monitoring resets a
//! VM at most N times per window, then leaves it alone).

use crate::api::HAPolicy;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// At most `max_restarts` unplanned restarts of one VM within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_restarts: u32,
    pub window: Duration,
}

impl Default for Limits {
    /// vSphere's defaults: 3 resets per hour.
    fn default() -> Self {
        Limits {
            max_restarts: 3,
            window: Duration::from_secs(3600),
        }
    }
}

impl Limits {
    /// The policy's VM-monitoring limits, defaults applied.
    pub fn of(policy: &HAPolicy) -> Self {
        let d = Limits::default();
        let m = policy.spec.vm_monitoring.clone().unwrap_or_default();
        Limits {
            max_restarts: m.max_restarts.map_or(d.max_restarts, |n| n.max(0) as u32),
            window: m
                .window_seconds
                .map_or(d.window, |s| Duration::from_secs(s.max(1) as u64)),
        }
    }
}

/// What to do with a VM whose domain stopped without ferry asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Start it again; this is restart `count` in the window.
    Restart { count: u32 },
    /// Leave it stopped: `count` restarts already happened in the window; the oldest of them
    /// leaves the window at `until` (never, with a limit of 0).
    Hold {
        count: u32,
        until: Option<Timestamp>,
    },
}

/// Whether the domain stopped without ferry asking: it is not active, the VM was last seen
/// running (or was already held by the limit), and no restart request explains it.
pub fn unplanned_stop(
    active: bool,
    was_running: bool,
    held: bool,
    restart_requested: bool,
) -> bool {
    !active && (was_running || held) && !restart_requested
}

/// The restarts of `history` that are still inside the window at `now`, oldest first.
pub fn in_window(history: &[Timestamp], now: Timestamp, window: Duration) -> Vec<Timestamp> {
    let window = SignedDuration::try_from(window).unwrap_or(SignedDuration::MAX);
    let mut kept: Vec<Timestamp> = history
        .iter()
        .copied()
        .filter(|t| *t <= now && now.duration_since(*t) < window)
        .collect();
    kept.sort();
    kept
}

/// Decide about an unplanned stop at `now`, given the earlier unplanned restarts.
pub fn decide(history: &[Timestamp], now: Timestamp, limits: Limits) -> Verdict {
    let recent = in_window(history, now, limits.window);
    let count = recent.len() as u32;
    if count < limits.max_restarts {
        return Verdict::Restart { count: count + 1 };
    }
    // The window frees a slot when the restart that makes the count exceed the limit leaves it.
    let until = (limits.max_restarts > 0)
        .then(|| recent.get(recent.len() - limits.max_restarts as usize))
        .flatten()
        .and_then(|oldest| {
            let window = SignedDuration::try_from(limits.window).ok()?;
            oldest.checked_add(window).ok()
        });
    Verdict::Hold { count, until }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("timestamp")
    }

    fn limits(max: u32, window: u64) -> Limits {
        Limits {
            max_restarts: max,
            window: Duration::from_secs(window),
        }
    }

    #[test]
    fn restarts_until_the_limit_then_holds_until_the_oldest_leaves_the_window() {
        struct Case {
            what: &'static str,
            history: Vec<i64>,
            now: i64,
            limits: Limits,
            want: Verdict,
        }
        let cases = [
            Case {
                what: "first crash",
                history: vec![],
                now: 0,
                limits: limits(3, 3600),
                want: Verdict::Restart { count: 1 },
            },
            Case {
                what: "third crash within the hour",
                history: vec![0, 100],
                now: 200,
                limits: limits(3, 3600),
                want: Verdict::Restart { count: 3 },
            },
            Case {
                what: "fourth crash within the hour: held until the first leaves the window",
                history: vec![0, 100, 200],
                now: 300,
                limits: limits(3, 3600),
                want: Verdict::Hold {
                    count: 3,
                    until: Some(t(3600)),
                },
            },
            Case {
                what: "old restarts no longer count",
                history: vec![0, 100, 200],
                now: 3650,
                limits: limits(3, 3600),
                want: Verdict::Restart { count: 3 },
            },
            Case {
                what: "history out of order",
                history: vec![200, 0, 100],
                now: 300,
                limits: limits(2, 3600),
                want: Verdict::Hold {
                    count: 3,
                    until: Some(t(3700)),
                },
            },
            Case {
                what: "limit 0: never restarted",
                history: vec![],
                now: 0,
                limits: limits(0, 3600),
                want: Verdict::Hold {
                    count: 0,
                    until: None,
                },
            },
            Case {
                what: "a restart in the future (clock skew) does not count",
                history: vec![5000],
                now: 0,
                limits: limits(1, 3600),
                want: Verdict::Restart { count: 1 },
            },
        ];
        for c in cases {
            let history: Vec<Timestamp> = c.history.iter().map(|s| t(*s)).collect();
            assert_eq!(decide(&history, t(c.now), c.limits), c.want, "{}", c.what);
        }
    }

    #[test]
    fn only_stops_ferry_did_not_ask_for_count() {
        // (active, was running, held, restart requested) → unplanned
        let cases = [
            ((false, true, false, false), true),
            ((false, false, true, false), true),
            ((true, true, false, false), false),
            ((false, true, false, true), false),
            ((false, false, false, false), false),
        ];
        for ((active, running, held, requested), want) in cases {
            assert_eq!(
                unplanned_stop(active, running, held, requested),
                want,
                "active={active} running={running} held={held} requested={requested}"
            );
        }
    }

    #[test]
    fn the_window_keeps_only_recent_restarts_in_order() {
        let h = [t(10), t(0), t(4000)];
        assert_eq!(in_window(&h, t(4001), Duration::from_secs(3600)), [t(4000)]);
        assert_eq!(
            in_window(&h, t(20), Duration::from_secs(3600)),
            [t(0), t(10)]
        );
    }
}
