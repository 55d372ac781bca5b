//! A host's health verdict from its signals: a pure state machine, one step per evaluation.
//!
//! Signals: the Node's `Ready` condition (kubelet), the controller's own libvirt liveness probe,
//! the BMC's power state, the last fence attempt, and a human confirmation annotation. The
//! previous verdict is an input too, so that an incident goes forward (failed → fencing → fenced
//! → recovering → recovered) and never back to a restart that was not proven safe.
//!
//! | Node      | libvirt          | BMC | verdict                                       |
//! |-----------|------------------|-----|-----------------------------------------------|
//! | Ready     | up               |     | Healthy                                       |
//! | Ready     | down             | On  | Degraded (a partition is not a host failure)  |
//! | any       | down             | Off | Failed → fence at once (the host is down now) |
//! | NotReady  | up, < grace      |     | Suspect                                       |
//! | NotReady  | up, ≥ grace      |     | Evacuating (LiveMigrate…) or Failed (Restart) |
//! | NotReady  | down, ≥ graces   |     | Failed → fence, or ask for confirmation        |
//! | NotReady  | down, < a grace  |     | Suspect                                       |
//! | Standby or Waking (power management) | any | | Standby: no fence, no incident     |
//!
//! A host the pool's power management keeps off (`Standby`) or is powering on (`Waking`) is
//! judged `Standby` whatever its signals say, unless an incident was already under way: its
//! silence is no failure, and none of its VMs is restarted elsewhere for it (power management
//! only puts an empty host in Standby, and takes it back `On` when its libvirt answers with
//! running domains).
//!
//! A restart elsewhere is only ever decided after a confirmed fence (the host's own BMC reports
//! Off while the Node or libvirt also says the host is gone), a shut-off libvirt confirmed by
//! looking each domain up after stopping it, or a human confirmation; a host is only ever fenced when the
//! policy has VMs on it to restart.

use crate::api::HAPolicy;
use crate::api::ha_policy::{HostVerdict, NotReadyAction};
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

/// Power state as the BMC reported it (the HA controller maps the fencing client's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    On,
    Off,
    /// The BMC answered with something else (powering on/off, unknown).
    Other,
}

/// A signal that is either up or down, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    pub up: bool,
    pub since: Timestamp,
}

/// The last fence attempt on a host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FenceRecord {
    /// Attempts made in this incident.
    pub attempts: u32,
    /// When the last attempt ended.
    pub last_attempt: Option<Timestamp>,
    /// Why the last attempt failed (unset when it succeeded or none was made).
    pub last_error: Option<String>,
    /// When the BMC confirmed the host Off.
    pub confirmed_at: Option<Timestamp>,
    /// An attempt is running now.
    pub in_flight: bool,
}

/// Everything the verdict depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// Node `Ready` (`up`) and its last transition; `None` when the Node is gone.
    pub node: Option<Signal>,
    /// libvirt liveness as the controller's probe sees it.
    pub libvirt: Signal,
    /// The BMC's last reading, when fencing is configured and the BMC was asked.
    pub bmc: Option<Power>,
    /// Fencing is configured for this host.
    pub fencing_configured: bool,
    /// The confirmation annotation is on the Node (a human says the host is off).
    pub human_confirmed: bool,
    /// Fence attempts in the current incident.
    pub fence: FenceRecord,
    /// The pool's storm guard holds: fence nothing, stop or restart no VM (unless a human
    /// confirmed the host off).
    pub storm: bool,
    /// The host still has ferry VMs placed on it.
    pub has_vms: bool,
    /// After ferry asked libvirt to stop them (`StopDomains`), a lookup by UUID found the domain
    /// of every VM of the policy on the host shut off. An earlier listing, or a domain the host
    /// does not know, proves nothing.
    pub shut_off_confirmed: bool,
    /// Domains of VMs that now run elsewhere are still defined on the host (known once libvirt
    /// answers again).
    pub stale_domains: bool,
    /// The pool's power management keeps the host off or is powering it on (`Standby` or
    /// `Waking` in the pool's status).
    pub standby: bool,
    /// The previous verdict and when it was reached.
    pub previous: HostVerdict,
    pub previous_since: Timestamp,
    pub now: Timestamp,
}

/// Detection timings and actions from the HAPolicy, defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub not_ready_grace: Duration,
    pub libvirt_grace: Duration,
    pub action: NotReadyAction,
    /// With `LiveMigrateThenRestart`: how long evacuation may take before the rest is restarted.
    pub evacuation_deadline: Duration,
    /// First delay between failed fence attempts (doubling, capped at `fence_backoff_max`).
    pub fence_backoff: Duration,
    pub fence_backoff_max: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            not_ready_grace: Duration::from_secs(30),
            libvirt_grace: Duration::from_secs(10),
            action: NotReadyAction::LiveMigrate,
            evacuation_deadline: Duration::from_secs(300),
            fence_backoff: Duration::from_secs(2),
            fence_backoff_max: Duration::from_secs(60),
        }
    }
}

impl Timings {
    /// The policy's timings and action, defaults applied.
    pub fn of(policy: &HAPolicy) -> Self {
        let d = Timings::default();
        let secs = |v: Option<i32>, def: Duration| {
            v.map(|s| Duration::from_secs(s.max(0) as u64))
                .unwrap_or(def)
        };
        let s = &policy.spec;
        Timings {
            not_ready_grace: secs(s.not_ready_grace_seconds, d.not_ready_grace),
            libvirt_grace: secs(s.libvirt_unreachable_grace_seconds, d.libvirt_grace),
            action: s.not_ready_action.unwrap_or_default(),
            evacuation_deadline: secs(s.evacuation_deadline_seconds, d.evacuation_deadline),
            fence_backoff: secs(s.fence_retry_seconds, d.fence_backoff),
            fence_backoff_max: secs(s.fence_retry_max_seconds, d.fence_backoff_max),
        }
    }
}

/// What the controller should do about the host now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAction {
    /// Nothing.
    None,
    /// Live-migrate the host's VMs away (create migrations).
    Evacuate,
    /// Power the host off through its BMC and wait for the BMC to confirm Off.
    Fence,
    /// Shut the host's domains off through libvirt (it still answers) and confirm.
    StopDomains,
    /// Restart the host's VMs elsewhere: proven safe, `Evidence` says how.
    Restart(Evidence),
    /// Raise a condition asking a human to confirm the host is off.
    AskConfirmation,
    /// Undefine domains of VMs that run elsewhere now, before anything else happens there.
    CleanStaleDomains,
}

/// Why a restart elsewhere is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// The BMC confirmed the host Off.
    Fenced,
    /// libvirt confirmed the domains shut off.
    ShutOff,
    /// A human confirmed the host is off (Node annotation).
    Confirmed,
}

/// The verdict and the action, with a sentence for conditions and Events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: HostVerdict,
    pub action: HostAction,
    pub message: String,
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    let d = now.as_millisecond().saturating_sub(since.as_millisecond());
    Duration::from_millis(d.max(0) as u64)
}

fn decision(verdict: HostVerdict, action: HostAction, message: impl Into<String>) -> Decision {
    Decision {
        verdict,
        action,
        message: message.into(),
    }
}

/// Delay before fence attempt number `attempts + 1`.
pub fn fence_backoff(t: &Timings, attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    t.fence_backoff
        .saturating_mul(1u32 << shift)
        .min(t.fence_backoff_max)
}

/// One step of the state machine.
pub fn decide(i: &Inputs, t: &Timings) -> Decision {
    use HostVerdict as V;
    // An incident in progress goes forward only.
    match i.previous {
        V::Fenced | V::Recovering if !i.libvirt.up => return fenced(i),
        V::Fenced | V::Recovering => return recovering(i),
        V::Recovered if i.stale_domains || i.libvirt.up => return recovering(i),
        _ => {}
    }
    if i.standby && !i.previous.in_incident() {
        return decision(
            V::Standby,
            HostAction::None,
            "in Standby (the pool's power management keeps it off or is powering it on): not a failure, nothing is fenced or restarted",
        );
    }
    let node_ready = i.node.is_some_and(|n| n.up);
    // A Recovered host keeps its incident's fence record until it is Healthy again; that old
    // confirmation proves nothing about a new failure.
    if i.fence.confirmed_at.is_some() && i.previous != V::Recovered {
        // The BMC's Off counts only while the Node or libvirt also says the host is gone: a
        // host whose Node is Ready and whose libvirt answers is up, whatever a BMC says.
        if node_ready && i.libvirt.up {
            return decision(
                V::Healthy,
                HostAction::None,
                "the BMC reported power Off, but the Node is Ready and libvirt answers: the host is up and nothing is restarted (is the BMC this host's?)",
            );
        }
        return fenced(i);
    }
    let node_down_for = i.node.map(|n| {
        if n.up {
            Duration::ZERO
        } else {
            elapsed(n.since, i.now)
        }
    });
    let libvirt_down_for = if i.libvirt.up {
        Duration::ZERO
    } else {
        elapsed(i.libvirt.since, i.now)
    };

    if i.libvirt.up {
        if node_ready {
            return if i.fence.in_flight {
                // A fence already sent may still land; wait for its result.
                decision(
                    V::Fencing,
                    HostAction::None,
                    "host answers again while a fence is in flight; waiting for the BMC",
                )
            } else {
                decision(
                    V::Healthy,
                    HostAction::None,
                    "Node Ready and libvirt answers",
                )
            };
        }
        let down = node_down_for.unwrap_or(t.not_ready_grace);
        if down < t.not_ready_grace {
            return decision(
                V::Suspect,
                HostAction::None,
                format!(
                    "Node NotReady for {}s (grace {}s); libvirt answers",
                    down.as_secs(),
                    t.not_ready_grace.as_secs()
                ),
            );
        }
        return not_ready_with_libvirt(i, t, down);
    }

    // libvirt does not answer.
    if i.bmc == Some(Power::Off) {
        return fence_or_ask(
            i,
            t,
            "libvirt does not answer and the BMC reports power Off".to_string(),
        );
    }
    if node_ready {
        return decision(
            V::Degraded,
            HostAction::None,
            format!(
                "libvirt does not answer for {}s but the Node is Ready: treated as a partition between controller and host, no failover",
                libvirt_down_for.as_secs()
            ),
        );
    }
    let node_down = node_down_for.unwrap_or(t.not_ready_grace);
    if libvirt_down_for < t.libvirt_grace || node_down < t.not_ready_grace {
        return decision(
            V::Suspect,
            HostAction::None,
            format!(
                "libvirt unreachable for {}s (grace {}s), Node NotReady for {}s (grace {}s)",
                libvirt_down_for.as_secs(),
                t.libvirt_grace.as_secs(),
                node_down.as_secs(),
                t.not_ready_grace.as_secs()
            ),
        );
    }
    fence_or_ask(
        i,
        t,
        format!(
            "libvirt unreachable for {}s and Node NotReady for {}s",
            libvirt_down_for.as_secs(),
            node_down.as_secs()
        ),
    )
}

/// NotReady past the grace while libvirt still answers.
fn not_ready_with_libvirt(i: &Inputs, t: &Timings, down: Duration) -> Decision {
    use HostVerdict as V;
    let why = format!(
        "Node NotReady for {}s while libvirt answers",
        down.as_secs()
    );
    match t.action {
        NotReadyAction::None => decision(
            V::Suspect,
            HostAction::None,
            format!("{why}; notReadyAction None: nothing is done"),
        ),
        NotReadyAction::LiveMigrate => evacuate(i, why),
        NotReadyAction::LiveMigrateThenRestart => {
            let evacuating_for = if i.previous == V::Evacuating {
                elapsed(i.previous_since, i.now)
            } else {
                Duration::ZERO
            };
            if i.has_vms && evacuating_for >= t.evacuation_deadline
                || matches!(i.previous, V::Failed | V::Fencing)
            {
                fence_or_ask(
                    i,
                    t,
                    format!(
                        "{why}; VMs still on the host after the evacuation deadline ({}s)",
                        t.evacuation_deadline.as_secs()
                    ),
                )
            } else {
                evacuate(i, why)
            }
        }
        NotReadyAction::Restart if i.storm && (i.has_vms || i.stale_domains) => decision(
            V::Failed,
            HostAction::None,
            format!(
                "{why}; storm guard: too many hosts of the pool look failed at once, no domain is stopped or restarted"
            ),
        ),
        NotReadyAction::Restart => {
            if i.has_vms && i.shut_off_confirmed {
                decision(
                    V::Failed,
                    HostAction::Restart(Evidence::ShutOff),
                    format!(
                        "{why}; notReadyAction Restart: libvirt confirmed its domains shut off, restarting them elsewhere"
                    ),
                )
            } else if i.has_vms {
                decision(
                    V::Failed,
                    HostAction::StopDomains,
                    format!(
                        "{why}; notReadyAction Restart: stopping its domains through libvirt, then restarting them elsewhere"
                    ),
                )
            } else if i.stale_domains {
                decision(
                    V::Failed,
                    HostAction::CleanStaleDomains,
                    format!(
                        "{why}; its VMs run elsewhere now: undefining their shut-off domains here"
                    ),
                )
            } else {
                decision(
                    V::Failed,
                    HostAction::None,
                    format!("{why}; no VMs left on the host"),
                )
            }
        }
    }
}

fn evacuate(i: &Inputs, why: String) -> Decision {
    let action = if i.has_vms {
        HostAction::Evacuate
    } else {
        HostAction::None
    };
    let tail = if i.has_vms {
        "live-migrating its VMs away"
    } else {
        "no VMs left on the host"
    };
    decision(HostVerdict::Evacuating, action, format!("{why}; {tail}"))
}

/// The host failed: fence it (unless the storm guard holds), or without fencing ask a human.
fn fence_or_ask(i: &Inputs, t: &Timings, why: String) -> Decision {
    use HostVerdict as V;
    if i.human_confirmed {
        return decision(
            V::Fenced,
            HostAction::Restart(Evidence::Confirmed),
            format!("{why}; a human confirmed the host is off"),
        );
    }
    if !i.has_vms {
        // A fence is the price of restarting VMs safely: without VMs of this policy on the host
        // there is nothing to restart, and a pool that cannot reach a host (so never placed a
        // VM there) must not power off a host other pools' VMs run on.
        return decision(
            V::Failed,
            HostAction::None,
            format!("{why}; no VMs of this policy on the host: nothing is fenced"),
        );
    }
    if i.storm {
        return decision(
            V::Failed,
            HostAction::None,
            format!(
                "{why}; storm guard: too many hosts of the pool look failed at once, nothing is fenced"
            ),
        );
    }
    if !i.fencing_configured {
        return decision(
            V::Failed,
            HostAction::AskConfirmation,
            format!(
                "{why}; no fencing configured: VMs are not restarted until a human confirms the host is off"
            ),
        );
    }
    if i.fence.in_flight {
        return decision(
            V::Fencing,
            HostAction::None,
            format!("{why}; fencing through the BMC"),
        );
    }
    match (&i.fence.last_error, i.fence.last_attempt) {
        (Some(err), Some(at)) => {
            let wait = fence_backoff(t, i.fence.attempts);
            let since = elapsed(at, i.now);
            if since >= wait {
                decision(
                    V::Fencing,
                    HostAction::Fence,
                    format!(
                        "{why}; retrying the fence (attempt {}; last failed: {err})",
                        i.fence.attempts + 1
                    ),
                )
            } else {
                decision(
                    V::Failed,
                    HostAction::None,
                    format!(
                        "{why}; fence failed ({err}); VMs are not restarted; retry in {}s",
                        (wait - since).as_secs().max(1)
                    ),
                )
            }
        }
        _ => decision(
            V::Fencing,
            HostAction::Fence,
            format!("{why}; fencing through the BMC"),
        ),
    }
}

/// The host is off: restart its VMs elsewhere.
fn fenced(i: &Inputs) -> Decision {
    let evidence = if i.fence.confirmed_at.is_some() {
        Evidence::Fenced
    } else if i.human_confirmed {
        Evidence::Confirmed
    } else if i.previous == HostVerdict::Fenced || i.previous == HostVerdict::Recovering {
        // Proven before (recorded in status); a restarted controller carries on.
        Evidence::Fenced
    } else {
        return decision(
            HostVerdict::Failed,
            HostAction::None,
            "no proof the host is off",
        );
    };
    let how = match evidence {
        Evidence::Fenced => "fenced: the BMC confirmed power Off",
        Evidence::ShutOff => "its domains are shut off",
        Evidence::Confirmed => "a human confirmed the host is off",
    };
    if i.storm && evidence != Evidence::Confirmed {
        return decision(
            HostVerdict::Fenced,
            HostAction::None,
            format!(
                "{how}; storm guard: too many hosts of the pool look failed at once, its VMs are restarted once that ends"
            ),
        );
    }
    decision(
        HostVerdict::Fenced,
        HostAction::Restart(evidence),
        format!("{how}; restarting its VMs elsewhere"),
    )
}

/// The host answers again after an incident.
fn recovering(i: &Inputs) -> Decision {
    use HostVerdict as V;
    if i.stale_domains && i.storm {
        return decision(
            V::Recovering,
            HostAction::None,
            "libvirt answers again; storm guard: too many hosts of the pool look failed at once, stale domains are removed once that ends",
        );
    }
    if i.stale_domains {
        return decision(
            V::Recovering,
            HostAction::CleanStaleDomains,
            "libvirt answers again: undefining the domains of VMs that now run elsewhere",
        );
    }
    if i.previous == V::Recovered && i.node.is_some_and(|n| n.up) {
        return decision(
            V::Healthy,
            HostAction::None,
            "Node Ready and libvirt answers",
        );
    }
    decision(
        V::Recovered,
        HostAction::None,
        "back after an incident; stale domains removed",
    )
}

/// Why a host counts as failing for the storm guard, if it does: its libvirt silent past the
/// grace, its Node NotReady (or gone, or without a Ready condition) past the grace, or an
/// incident under way (Failed, Fencing, Fenced). A controller cut off from the hosts, or the API
/// server from the kubelets, makes many hosts look failed at once on either signal.
pub fn looks_failed(
    node: Option<Signal>,
    libvirt: Signal,
    previous: HostVerdict,
    now: Timestamp,
    t: &Timings,
) -> Option<String> {
    if !libvirt.up && elapsed(libvirt.since, now) >= t.libvirt_grace {
        return Some(format!(
            "libvirt silent for {}s",
            elapsed(libvirt.since, now).as_secs()
        ));
    }
    match node {
        None => return Some("its Node has no Ready condition".to_string()),
        Some(n) if !n.up && elapsed(n.since, now) >= t.not_ready_grace => {
            return Some(format!(
                "its Node NotReady for {}s",
                elapsed(n.since, now).as_secs()
            ));
        }
        Some(_) => {}
    }
    previous
        .failing_over()
        .then(|| format!("an incident under way ({previous})"))
}

/// The storm guard: whether more than `max_percent` % of a pool's `hosts` look failed at once.
/// While it holds nothing is fenced and no VM is stopped or restarted (a restart a human
/// confirmed excepted). `max_percent` is at most 99: the guard cannot be switched off.
pub fn storm(hosts: usize, failing: usize, max_percent: u32) -> bool {
    hosts > 0 && failing * 100 > hosts * max_percent.min(99) as usize
}

#[cfg(test)]
mod tests;
