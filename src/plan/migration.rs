//! Live-migration decisions: the policy with its defaults, whether a migration may start now
//! (parallelism limits), how long it may take, when a running one must be aborted, and where a
//! VM really runs after an interrupted migration.

use crate::api::{HostPool, VirtualMachine};
use std::time::Duration;

/// A migration policy with every default applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Migrations running at once in the pool.
    pub max_parallel: u32,
    /// Migrations leaving one host at once.
    pub max_outbound_per_host: u32,
    /// Migrations arriving at one host at once.
    pub max_inbound_per_host: u32,
    /// Bandwidth limit per migration in MiB/s; `None` is unlimited.
    pub bandwidth_mib: Option<u64>,
    /// Longest pause allowed at switch-over.
    pub max_downtime_ms: u64,
    /// Time allowed per GiB of guest memory (and of copied disks) before the migration is aborted.
    pub completion_timeout_per_gib: Duration,
    /// Time without progress before the migration is aborted (or switched to post-copy).
    pub progress_timeout: Duration,
    /// Throttle the guest's vCPUs when it dirties memory faster than it is sent.
    pub auto_converge: bool,
    /// Switch to post-copy instead of aborting when pre-copy does not converge.
    pub post_copy: bool,
}

impl Default for Policy {
    /// KubeVirt's defaults (5 per pool, 2 out per host, unlimited bandwidth, 150 s progress
    /// timeout and 150 s per GiB, no auto-converge, no post-copy) plus 2 in per host and QEMU's
    /// 300 ms downtime target.
    fn default() -> Self {
        Policy {
            max_parallel: 5,
            max_outbound_per_host: 2,
            max_inbound_per_host: 2,
            bandwidth_mib: None,
            max_downtime_ms: 300,
            completion_timeout_per_gib: Duration::from_secs(150),
            progress_timeout: Duration::from_secs(150),
            auto_converge: false,
            post_copy: false,
        }
    }
}

impl Policy {
    /// The pool's migration settings, defaults applied.
    pub fn of(pool: &HostPool) -> Self {
        let m = pool.spec.migration.clone().unwrap_or_default();
        let d = Policy::default();
        let count = |v: Option<i32>, default: u32| v.map(|n| n.max(1) as u32).unwrap_or(default);
        let secs = |v: Option<i32>, default: Duration| {
            v.map(|s| Duration::from_secs(s.max(1) as u64))
                .unwrap_or(default)
        };
        Policy {
            max_parallel: count(m.max_parallel, d.max_parallel),
            max_outbound_per_host: count(m.max_outbound_per_host, d.max_outbound_per_host),
            max_inbound_per_host: count(m.max_inbound_per_host, d.max_inbound_per_host),
            bandwidth_mib: m.bandwidth_mi_bps.map(|b| b.max(1) as u64),
            max_downtime_ms: m
                .max_downtime_ms
                .map(|v| v.max(1) as u64)
                .unwrap_or(d.max_downtime_ms),
            completion_timeout_per_gib: secs(
                m.completion_timeout_per_gi_b_seconds,
                d.completion_timeout_per_gib,
            ),
            progress_timeout: secs(m.progress_timeout_seconds, d.progress_timeout),
            auto_converge: m.allow_auto_converge.unwrap_or(d.auto_converge),
            post_copy: m.allow_post_copy.unwrap_or(d.post_copy),
        }
    }

    /// The pool's policy with the VM's own overrides.
    pub fn for_vm(pool: &HostPool, vm: &VirtualMachine) -> Self {
        let mut p = Policy::of(pool);
        if let Some(o) = &vm.spec.migration {
            if let Some(d) = o.max_downtime_ms {
                p.max_downtime_ms = d.max(1) as u64;
            }
            if let Some(a) = o.allow_auto_converge {
                p.auto_converge = a;
            }
            if let Some(pc) = o.allow_post_copy {
                p.post_copy = pc;
            }
        }
        p
    }
}

const GIB: u64 = 1 << 30;

impl Policy {
    /// Time the whole migration may take for `bytes` to move (guest memory, plus disks when they
    /// are copied), counting at least one GiB.
    pub fn completion_timeout(&self, bytes: u64) -> Duration {
        let gib = bytes.div_ceil(GIB).max(1);
        self.completion_timeout_per_gib
            .saturating_mul(u32::try_from(gib).unwrap_or(u32::MAX))
    }
}

/// A migration that holds a slot: from `source` to `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Active {
    /// Host the VM leaves.
    pub source: String,
    /// Host the VM moves to.
    pub target: String,
}

/// Whether a migration from `source` to `target` may start while `active` ones run; the error
/// says which limit holds it back.
pub fn admit(policy: &Policy, active: &[Active], source: &str, target: &str) -> Result<(), String> {
    let n = active.len() as u32;
    if n >= policy.max_parallel {
        return Err(format!(
            "{n} migrations already run in the pool (limit {})",
            policy.max_parallel
        ));
    }
    let out = active.iter().filter(|a| a.source == source).count() as u32;
    if out >= policy.max_outbound_per_host {
        return Err(format!(
            "{out} migrations already leave host {source} (limit {})",
            policy.max_outbound_per_host
        ));
    }
    let inbound = active.iter().filter(|a| a.target == target).count() as u32;
    if inbound >= policy.max_inbound_per_host {
        return Err(format!(
            "{inbound} migrations already arrive at host {target} (limit {})",
            policy.max_inbound_per_host
        ));
    }
    Ok(())
}

/// What the watcher of a running migration should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep going.
    Continue,
    /// Abort the job; the VM stays on the source. The message says why.
    Abort(String),
    /// Switch to post-copy: the VM runs on the target from now on and pulls the rest of its
    /// memory from the source.
    StartPostCopy,
}

/// Progress of a running migration, as the watcher tracks it between samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracker {
    /// Lowest `data_remaining` seen so far.
    pub lowest_remaining: Option<u64>,
    /// When (time since start) `lowest_remaining` last went down.
    pub last_progress: Duration,
    /// Post-copy was requested already.
    pub post_copy_started: bool,
}

impl Tracker {
    /// Take a sample (`remaining` bytes at `elapsed` since the start) and decide. Progress means
    /// the remaining data reached a new low; pre-copy that keeps resending dirtied memory makes
    /// none, and is aborted (or switched to post-copy, when allowed) after the progress timeout.
    pub fn sample(
        &mut self,
        policy: &Policy,
        timeout: Duration,
        elapsed: Duration,
        remaining: u64,
    ) -> Verdict {
        if self.lowest_remaining.is_none_or(|low| remaining < low) {
            self.lowest_remaining = Some(remaining);
            self.last_progress = elapsed;
        }
        if self.post_copy_started {
            // Post-copy cannot be aborted without losing the VM: let it finish.
            return Verdict::Continue;
        }
        let stalled = elapsed.saturating_sub(self.last_progress);
        if stalled >= policy.progress_timeout {
            if policy.post_copy {
                self.post_copy_started = true;
                return Verdict::StartPostCopy;
            }
            return Verdict::Abort(format!(
                "no progress for {}s (progressTimeoutSeconds {}): the guest dirties memory faster than it is sent; allow auto-converge or post-copy, or raise the bandwidth",
                stalled.as_secs(),
                policy.progress_timeout.as_secs()
            ));
        }
        if elapsed >= timeout {
            if policy.post_copy {
                self.post_copy_started = true;
                return Verdict::StartPostCopy;
            }
            return Verdict::Abort(format!(
                "not finished after {}s (completionTimeoutPerGiBSeconds {} for this VM's size)",
                elapsed.as_secs(),
                policy.completion_timeout_per_gib.as_secs()
            ));
        }
        Verdict::Continue
    }
}

/// How long a running migration's watcher waits before its next progress sample.
///
/// Every sample is a job-statistics call, which libvirt answers with a `query-migrate` on the
/// source's QEMU monitor inside a job of its own. At the switch-over the guest is paused and
/// libvirt's own monitor commands for the migration (its final statistics, then the hand-over
/// to the destination, which resumes the guest) wait for such a job to end, while QEMU answers
/// it only after the final copy: a sample at that moment adds its whole round trip to the
/// guest's pause. So a sample is taken every `every`, except when the last two samples (bytes
/// processed over the time between them) say the rest will be sent within two such periods:
/// then the next one waits until `hold` after the expected end, by which time the job has
/// usually ended and no sample is taken at all.
pub fn next_sample(
    previous: Option<(u64, u64)>,
    latest: (u64, u64, u64),
    every: Duration,
    hold: Duration,
) -> Duration {
    let (elapsed_ms, processed, remaining) = latest;
    let Some((prev_ms, prev_processed)) = previous else {
        return every;
    };
    let (dt_ms, sent) = (
        elapsed_ms.saturating_sub(prev_ms),
        processed.saturating_sub(prev_processed),
    );
    if dt_ms == 0 || sent == 0 {
        return every;
    }
    // Time to send the rest at the rate of the last period.
    let eta_ms = u128::from(remaining) * u128::from(dt_ms) / u128::from(sent);
    let eta = Duration::from_millis(u64::try_from(eta_ms).unwrap_or(u64::MAX));
    if eta <= every * 2 {
        (eta + hold).max(every)
    } else {
        every
    }
}

/// What a host says about the migrating VM's domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The host does not have the domain (or it is only defined, shut off).
    Absent,
    /// The domain runs there (or is paused: a migration's incoming side, or its switch-over).
    Active {
        /// Paused rather than running.
        paused: bool,
        /// A job (the migration) is still in progress there.
        job: bool,
    },
    /// The host cannot be asked.
    Unknown,
}

/// Where a VM is after a migration whose outcome ferry did not see (the controller restarted,
/// or the call failed): decided from both hosts, never guessed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The migration is still in progress: wait.
    InProgress,
    /// The VM runs on the target only.
    Succeeded,
    /// The VM runs on the source only; the target may hold a leftover to clean up.
    Failed,
    /// Neither host can be trusted to say yet (unreachable, or both show a paused copy): wait
    /// and ask again; do nothing that could start or stop a copy.
    Unclear(String),
}

/// Decide an interrupted migration's outcome from what the source and target report.
pub fn outcome(source: Seen, target: Seen) -> Outcome {
    use Seen::*;
    match (source, target) {
        (Active { job: true, .. }, _) | (_, Active { job: true, .. }) => Outcome::InProgress,
        // A source copy that runs unpaused with no job left means the switch-over never
        // happened: libvirt only resumes the target after the source stopped for good. A target
        // that cannot be asked cannot be running the VM, and cleans its incoming copy itself.
        (Active { paused: false, .. }, Absent | Unknown) => Outcome::Failed,
        // The target's incoming copy is paused until the switch-over; with no job left on the
        // source, the source copy is the live one and the target's is a leftover.
        (
            Active { paused: false, .. },
            Active {
                paused: true,
                job: false,
            },
        ) => Outcome::Failed,
        (Absent, Active { paused: false, .. }) => Outcome::Succeeded,
        (Absent, Active { paused: true, .. }) => Outcome::Unclear(
            "the VM is paused on the target and gone from the source: post-copy or switch-over in progress".into(),
        ),
        (Absent, Absent) => Outcome::Unclear(
            "neither host runs the VM: it stopped during the migration".into(),
        ),
        (Unknown, _) | (_, Unknown) => {
            Outcome::Unclear("a host of the migration does not answer".into())
        }
        (Active { paused: true, .. }, _) => Outcome::Unclear(
            "the VM is paused on the source with no migration job: resume or stop it".into(),
        ),
        (Active { paused: false, .. }, Active { paused: false, .. }) => Outcome::Unclear(
            "both hosts run the VM: refusing to touch either; stop the copy that must go".into(),
        ),
    }
}

/// Whether a migration that succeeded (status `m`) was overtaken by the VM's last recovery `r`:
/// its target host failed after the move, was proven off and the VM was placed anew, so the VM
/// is no longer looked for on that target (which may never answer again). A migration that
/// ended after the failure was detected is not overtaken.
pub fn overtaken_by_recovery(
    m: &crate::api::VirtualMachineMigrationStatus,
    r: Option<&crate::api::virtual_machine::Recovery>,
) -> bool {
    let Some(r) = r else {
        return false;
    };
    match (
        m.target.as_deref(),
        m.end_time.as_ref(),
        r.detected.as_ref(),
    ) {
        (Some(target), Some(ended), Some(detected)) => {
            r.from_host == target && r.to_host.is_some() && ended.0 <= detected.0
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_is_overtaken_by_a_later_failure_of_its_target() {
        use crate::api::VirtualMachineMigrationStatus;
        use crate::api::virtual_machine::Recovery;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let t = |s: &str| Some(Time(s.parse().expect("timestamp")));
        let moved = VirtualMachineMigrationStatus {
            source: Some("h1".into()),
            target: Some("h2".into()),
            end_time: t("2026-12-07T10:00:00Z"),
            ..VirtualMachineMigrationStatus::default()
        };
        let recovery = |from: &str, detected: &str, to: Option<&str>| Recovery {
            from_host: from.into(),
            detected: t(detected),
            to_host: to.map(str::to_string),
            ..Recovery::default()
        };
        let cases = [
            ("no recovery", None, false),
            (
                "h2 failed after the move, the VM placed anew on h1",
                Some(recovery("h2", "2026-12-07T10:01:00Z", Some("h1"))),
                true,
            ),
            (
                "h2 failed, the VM not placed anew yet",
                Some(recovery("h2", "2026-12-07T10:01:00Z", None)),
                false,
            ),
            (
                "another host failed",
                Some(recovery("h3", "2026-12-07T10:01:00Z", Some("h1"))),
                false,
            ),
            (
                "h2 failed before this move ended",
                Some(recovery("h2", "2026-12-07T09:59:00Z", Some("h1"))),
                false,
            ),
        ];
        for (what, r, want) in cases {
            assert_eq!(overtaken_by_recovery(&moved, r.as_ref()), want, "{what}");
        }
    }

    fn a(source: &str, target: &str) -> Active {
        Active {
            source: source.into(),
            target: target.into(),
        }
    }

    #[test]
    fn admission_respects_pool_outbound_and_inbound_limits() {
        let p = Policy {
            max_parallel: 3,
            max_outbound_per_host: 2,
            max_inbound_per_host: 1,
            ..Policy::default()
        };
        let cases: &[(&[Active], &str, &str, bool, &str)] = &[
            (&[], "h1", "h2", true, ""),
            (&[a("h1", "h2")], "h1", "h3", true, ""),
            (
                &[a("h1", "h2"), a("h1", "h3")],
                "h1",
                "h4",
                false,
                "leave host h1",
            ),
            (&[a("h1", "h2")], "h3", "h2", false, "arrive at host h2"),
            (
                &[a("h1", "h2"), a("h3", "h4"), a("h5", "h6")],
                "h7",
                "h8",
                false,
                "in the pool",
            ),
        ];
        for (active, s, t, ok, why) in cases {
            let r = admit(&p, active, s, t);
            assert_eq!(r.is_ok(), *ok, "{active:?} {s}->{t}: {r:?}");
            if let Err(m) = r {
                assert!(m.contains(why), "{m}");
            }
        }
    }

    #[test]
    fn no_progress_sample_is_taken_while_a_switch_over_is_expected() {
        let (every, hold) = (Duration::from_millis(500), Duration::from_secs(3));
        // First sample: no rate yet.
        assert_eq!(
            next_sample(None, (500, 10 << 20, 100 << 20), every, hold),
            every
        );
        // 20 MiB sent in 0.5 s, 100 MiB left: 2.5 s to go, sampled as usual.
        assert_eq!(
            next_sample(
                Some((500, 10 << 20)),
                (1000, 30 << 20, 100 << 20),
                every,
                hold
            ),
            every
        );
        // 5 MiB left at 40 MiB/s: the switch-over is due within 125 ms; the next sample waits
        // until well after it.
        assert_eq!(
            next_sample(
                Some((1000, 30 << 20)),
                (1500, 50 << 20, 5 << 20),
                every,
                hold
            ),
            Duration::from_millis(125) + hold
        );
        // Nothing sent in the period (stalled, or a slow host): sampled as usual, so the
        // progress timeout still applies.
        assert_eq!(
            next_sample(
                Some((1500, 50 << 20)),
                (2000, 50 << 20, 5 << 20),
                every,
                hold
            ),
            every
        );
    }

    #[test]
    fn defaults_are_at_least_as_safe_as_kubevirts() {
        let p = Policy::default();
        assert_eq!((p.max_parallel, p.max_outbound_per_host), (5, 2));
        assert!(!p.post_copy && !p.auto_converge);
        assert_eq!(p.progress_timeout, Duration::from_secs(150));
        assert_eq!(p.completion_timeout(512 << 20), Duration::from_secs(150));
        assert_eq!(p.completion_timeout(3 * GIB + 1), Duration::from_secs(600));
        assert_eq!(p.completion_timeout(0), Duration::from_secs(150));
    }

    #[test]
    fn a_stalled_migration_is_aborted_after_the_progress_timeout() {
        let p = Policy {
            progress_timeout: Duration::from_secs(10),
            ..Policy::default()
        };
        let t = Duration::from_secs(1000);
        let mut w = Tracker::default();
        let s = |x| Duration::from_secs(x);
        assert_eq!(w.sample(&p, t, s(0), 100), Verdict::Continue);
        assert_eq!(w.sample(&p, t, s(5), 50), Verdict::Continue);
        // Dirtying brings remaining back up: no new low, no progress.
        assert_eq!(w.sample(&p, t, s(10), 80), Verdict::Continue);
        assert_eq!(w.sample(&p, t, s(14), 60), Verdict::Continue);
        match w.sample(&p, t, s(15), 70) {
            Verdict::Abort(m) => assert!(m.contains("no progress for 10s"), "{m}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn progress_resets_the_stall_clock() {
        let p = Policy {
            progress_timeout: Duration::from_secs(10),
            ..Policy::default()
        };
        let mut w = Tracker::default();
        let t = Duration::from_secs(1000);
        for (sec, rem) in [(0, 100), (9, 90), (18, 80), (27, 70)] {
            assert_eq!(
                w.sample(&p, t, Duration::from_secs(sec), rem),
                Verdict::Continue
            );
        }
    }

    #[test]
    fn the_completion_timeout_aborts_or_switches_to_post_copy() {
        let t = Duration::from_secs(30);
        let mut w = Tracker::default();
        let p = Policy::default();
        assert_eq!(
            w.sample(&p, t, Duration::from_secs(29), 10),
            Verdict::Continue
        );
        assert!(matches!(
            w.sample(&p, t, Duration::from_secs(30), 9),
            Verdict::Abort(m) if m.contains("not finished after 30s")
        ));
        let p = Policy {
            post_copy: true,
            ..Policy::default()
        };
        let mut w = Tracker::default();
        assert_eq!(
            w.sample(&p, t, Duration::from_secs(31), 9),
            Verdict::StartPostCopy
        );
        // Once in post-copy, never abort.
        assert_eq!(
            w.sample(&p, t, Duration::from_secs(400), 9),
            Verdict::Continue
        );
    }

    #[test]
    fn interrupted_migrations_are_decided_from_both_hosts() {
        use Seen::*;
        let run = Active {
            paused: false,
            job: false,
        };
        let paused = Active {
            paused: true,
            job: false,
        };
        let migrating = Active {
            paused: false,
            job: true,
        };
        assert_eq!(outcome(migrating, paused), Outcome::InProgress);
        assert_eq!(outcome(migrating, Unknown), Outcome::InProgress);
        assert_eq!(outcome(run, Absent), Outcome::Failed);
        assert_eq!(outcome(run, Unknown), Outcome::Failed);
        assert_eq!(outcome(run, paused), Outcome::Failed);
        assert_eq!(outcome(Absent, run), Outcome::Succeeded);
        for (s, t) in [
            (Absent, paused),
            (Absent, Absent),
            (Unknown, run),
            (paused, Absent),
            (run, run),
        ] {
            assert!(
                matches!(outcome(s, t), Outcome::Unclear(_)),
                "{s:?} {t:?} must not be decided"
            );
        }
    }
}
