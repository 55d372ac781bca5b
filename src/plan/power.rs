//! Power management: which host of a pool to put in Standby, or to power on again, from the
//! hosts' measured load, the VMs waiting for capacity, the HA failover reserve and the time. A
//! pure function of its inputs (no clock: pass `now`); the controller carries the decision out.
//!
//! **Power on** (first, in this order of reasons): VMs placed on a host in Standby wait for it
//! (that host is woken); VMs wait for capacity; fewer hosts are on than
//! `Settings::min_hosts_on` plus the failover reserve; the hosts on use more than
//! `Settings::wake_above` of their CPUs or memory; or power management is off
//! (`Inputs::enabled` false) while hosts are in Standby. A host being emptied for Standby is
//! kept on first (`Action::Cancel`); otherwise the Standby host with a BMC whose last power-on
//! did not fail, then the lowest name, is woken, one at a time (a host already powering on
//! answers all of these).
//!
//! **Standby**: nothing waits, no host is powering on or off, more hosts are on than
//! `min_hosts_on` plus the reserve, and without one host the others would still use less than
//! `Settings::standby_below` of their CPUs and memory, and could lose their `failover_hosts`
//! largest hosts and still hold every VM's measured load. That must have held for
//! `Settings::standby_after`. The host chosen has a BMC, is usable, holds no VM that may not
//! move, and is the least loaded (fewest VMs, then least CPU, then the lowest name); its VMs
//! are live-migrated away before it is powered off.

use super::balance::Usage;
use crate::api::power::{
    DEFAULT_MIN_HOSTS_ON, DEFAULT_STANDBY_AFTER_SECONDS, DEFAULT_STANDBY_BELOW_PERCENT,
    DEFAULT_WAKE_ABOVE_PERCENT, PowerSpec, PowerWindow, Weekday, secs,
};
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

/// A host's power state as power management keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// On and taking VMs.
    On,
    /// Chosen for Standby: its VMs are moving away; it takes none.
    Draining,
    /// Asked to power off; or off.
    Standby,
    /// Asked to power on; waiting for its Node and libvirt.
    Waking,
}

/// A host of the pool as power management sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub name: String,
    pub power: Power,
    /// A BMC is configured for it (fencing settings resolve for this host).
    pub has_bmc: bool,
    /// Node Ready, libvirt answering, not cordoned (meaningful for hosts `On`).
    pub usable: bool,
    /// CPUs (millicores) and memory VMs may use, less reservations.
    pub capacity: Usage,
    /// Measured use of its running domains.
    pub used: Usage,
    /// VMs placed on it.
    pub vms: usize,
    /// Of those, VMs that may not move (`evictionStrategy: None`, not live-migratable).
    pub pinned: usize,
    /// VMs placed on it that wait for it to be on (meaningful in Standby).
    pub waiting: usize,
    /// Its last power-on did not bring it up (lately): others are woken first.
    pub wake_failed: bool,
}

/// The pool's power settings, defaults applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Hosts kept on whatever the load (at least 1).
    pub min_hosts_on: usize,
    /// Share (0–1) of CPUs and memory the hosts left on may use for one to go to Standby.
    pub standby_below: f64,
    /// Share (0–1) of CPUs or memory of the hosts on past which a Standby host is woken.
    pub wake_above: f64,
    /// How long the load must stay low before a host goes to Standby.
    pub standby_after: Duration,
    /// Hosts whose failure the pool must survive (the HA policy's failover reserve).
    pub failover_hosts: usize,
    /// `min_hosts_on` was raised by a window of `spec.power.schedule` (said in messages).
    pub scheduled: bool,
}

impl Settings {
    /// A pool's `spec.power` at `now`, defaults applied, with `failover_hosts` kept on besides;
    /// a window of its schedule that is on (or begins within `wakeTimeoutSeconds`) raises the
    /// hosts kept on.
    pub fn of(spec: &PowerSpec, failover_hosts: usize, now: Timestamp) -> Settings {
        let pct = |v: Option<i32>, d: i32| f64::from(v.unwrap_or(d).clamp(0, 100)) / 100.0;
        let base = usize::try_from(spec.min_hosts_on.unwrap_or(DEFAULT_MIN_HOSTS_ON))
            .unwrap_or(1)
            .max(1);
        let scheduled =
            scheduled_min_hosts_on(&spec.schedule, now, spec.wake_timeout()).filter(|n| *n > base);
        Settings {
            min_hosts_on: scheduled.unwrap_or(base),
            standby_below: pct(spec.standby_below_percent, DEFAULT_STANDBY_BELOW_PERCENT),
            wake_above: pct(spec.wake_above_percent, DEFAULT_WAKE_ABOVE_PERCENT),
            standby_after: secs(spec.standby_after_seconds, DEFAULT_STANDBY_AFTER_SECONDS),
            failover_hosts,
            scheduled: scheduled.is_some(),
        }
    }
}

/// Minutes after midnight of an `HH:MM` time; `None` if it is not one.
fn minutes(hhmm: &str) -> Option<i64> {
    let (h, m) = hhmm.split_once(':')?;
    let (h, m) = (h.parse::<i64>().ok()?, m.parse::<i64>().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some(h * 60 + m)
}

fn weekday(d: Weekday) -> k8s_openapi::jiff::civil::Weekday {
    use k8s_openapi::jiff::civil::Weekday as W;
    match d {
        Weekday::Mon => W::Monday,
        Weekday::Tue => W::Tuesday,
        Weekday::Wed => W::Wednesday,
        Weekday::Thu => W::Thursday,
        Weekday::Fri => W::Friday,
        Weekday::Sat => W::Saturday,
        Weekday::Sun => W::Sunday,
    }
}

/// The most hosts a window of `schedule` keeps on at `now` (UTC), counting a window as on from
/// `lead` before it begins (so that hosts powered on are up when it does) until it ends. A
/// window whose `to` is not after its `from` ends the next day. `None`: no window is on.
pub fn scheduled_min_hosts_on(
    schedule: &[PowerWindow],
    now: Timestamp,
    lead: Duration,
) -> Option<usize> {
    let t = now.as_second();
    let lead = i64::try_from(lead.as_secs()).unwrap_or(i64::MAX / 4);
    let today = now.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC).date();
    let midnight = t - t.rem_euclid(86_400);
    schedule
        .iter()
        .filter_map(|w| {
            let (from, to) = (minutes(&w.from)?, minutes(&w.to)?);
            let length = (to - from).rem_euclid(24 * 60) * 60;
            // The window may have begun yesterday (and run past midnight), begin today, or
            // begin tomorrow within `lead`.
            let on = (-1..=1).any(|day: i64| {
                let Ok(date) = today.checked_add(k8s_openapi::jiff::Span::new().days(day)) else {
                    return false;
                };
                let begins = midnight + day * 86_400 + from * 60;
                (w.days.is_empty() || w.days.iter().any(|d| weekday(*d) == date.weekday()))
                    && length > 0
                    && begins - lead <= t
                    && t < begins + length
            });
            on.then(|| usize::try_from(w.min_hosts_on).unwrap_or(1).max(1))
        })
        .max()
}

/// What power management sees at one moment.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub hosts: &'a [Host],
    /// VMs Pending because no host has room.
    pub pending_for_capacity: usize,
    /// Since when the load has been low enough for a Standby (from the last decision).
    pub low_since: Option<Timestamp>,
    /// Power management is on (`spec.power.enabled`); when off, hosts in Standby are woken and
    /// none is emptied.
    pub enabled: bool,
    pub now: Timestamp,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing; `low_since` is what to remember for the next decision.
    Hold { low_since: Option<Timestamp> },
    /// Drain host `host` and put it in Standby.
    Standby { host: String },
    /// Power host `host` on.
    Wake { host: String },
    /// Keep host `host`, being emptied for Standby, on.
    Cancel { host: String },
}

/// The decision and why, in a sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub action: Action,
    pub message: String,
}

fn share(used: Usage, cap: Usage) -> (f64, f64) {
    let part = |u: u64, c: u64| if c == 0 { 1.0 } else { u as f64 / c as f64 };
    (
        part(used.cpu_millis, cap.cpu_millis),
        part(used.memory, cap.memory),
    )
}

fn sum<'a>(hosts: impl Iterator<Item = &'a Host>, f: impl Fn(&Host) -> Usage) -> Usage {
    hosts.fold(Usage::default(), |a, h| {
        let u = f(h);
        Usage {
            cpu_millis: a.cpu_millis.saturating_add(u.cpu_millis),
            memory: a.memory.saturating_add(u.memory),
        }
    })
}

/// Decide (see the module's documentation).
pub fn decide(i: &Inputs<'_>, s: &Settings) -> Decision {
    let on: Vec<&Host> = i
        .hosts
        .iter()
        .filter(|h| h.power == Power::On && h.usable)
        .collect();
    let keep = s.min_hosts_on.max(1) + s.failover_hosts;
    let hold = |low_since: Option<Timestamp>, message: String| Decision {
        action: Action::Hold { low_since },
        message,
    };
    if let Some(h) = i.hosts.iter().find(|h| h.power == Power::Waking) {
        return hold(None, format!("host {} is powering on", h.name));
    }
    let (cpu, mem) = share(
        sum(on.iter().copied(), |h| h.used),
        sum(on.iter().copied(), |h| h.capacity),
    );
    let standby: Vec<&Host> = i
        .hosts
        .iter()
        .filter(|h| h.power == Power::Standby && h.has_bmc)
        .collect();
    if let Some(h) = standby.iter().find(|h| h.waiting > 0) {
        return Decision {
            action: Action::Wake {
                host: h.name.clone(),
            },
            message: format!(
                "powering host {} on: {} VM(s) placed on it wait for it",
                h.name, h.waiting
            ),
        };
    }
    let draining = i.hosts.iter().find(|h| h.power == Power::Draining);
    let wake_why = if i.pending_for_capacity > 0 {
        Some(format!(
            "{} VM(s) wait for capacity",
            i.pending_for_capacity
        ))
    } else if on.len() < keep {
        Some(format!(
            "{} host(s) on, fewer than the {keep} kept on (minimum{} and failover reserve)",
            on.len(),
            if s.scheduled {
                " of the spec.power.schedule window now on"
            } else {
                ""
            }
        ))
    } else if cpu > s.wake_above || mem > s.wake_above {
        Some(format!(
            "the hosts on use {:.0} % of their CPUs and {:.0} % of their memory, past {:.0} %",
            cpu * 100.0,
            mem * 100.0,
            s.wake_above * 100.0
        ))
    } else if !i.enabled && (draining.is_some() || !standby.is_empty()) {
        Some("power management is off".to_string())
    } else {
        None
    };
    if let Some(why) = wake_why {
        if let Some(h) = draining {
            return Decision {
                action: Action::Cancel {
                    host: h.name.clone(),
                },
                message: format!("host {} stays on: {why}", h.name),
            };
        }
        let mut standby = standby;
        standby.sort_by(|a, b| (a.wake_failed, &a.name).cmp(&(b.wake_failed, &b.name)));
        return match standby.first() {
            Some(h) => Decision {
                action: Action::Wake {
                    host: h.name.clone(),
                },
                message: format!("powering host {} on: {why}", h.name),
            },
            None => hold(None, format!("{why}, and no host is in Standby")),
        };
    }
    if !i.enabled {
        return hold(None, "power management is off".into());
    }
    if let Some(h) = draining {
        return hold(
            i.low_since,
            format!("host {} is being emptied for Standby", h.name),
        );
    }
    if on.len() <= keep {
        return hold(
            None,
            format!("{} host(s) on: no fewer than {keep} are kept on", on.len()),
        );
    }
    // The host to leave: the least loaded one that may go.
    let mut candidates: Vec<&Host> = on
        .iter()
        .copied()
        .filter(|h| h.has_bmc && h.pinned == 0)
        .collect();
    candidates.sort_by(|a, b| {
        (a.vms, a.used.cpu_millis, &a.name).cmp(&(b.vms, b.used.cpu_millis, &b.name))
    });
    let Some(host) = candidates.first() else {
        return hold(
            None,
            "no host on may go to Standby (none has a BMC and only VMs that can move)".into(),
        );
    };
    let rest: Vec<&Host> = on.iter().copied().filter(|h| h.name != host.name).collect();
    let total_used = sum(on.iter().copied(), |h| h.used);
    let (cpu, mem) = share(total_used, sum(rest.iter().copied(), |h| h.capacity));
    let (left_cpu, left_mem) = (cpu, mem);
    if cpu >= s.standby_below || mem >= s.standby_below {
        return hold(
            None,
            format!(
                "without host {} the others would use {:.0} % of their CPUs and {:.0} % of their memory, not below {:.0} %",
                host.name,
                cpu * 100.0,
                mem * 100.0,
                s.standby_below * 100.0
            ),
        );
    }
    // The failover reserve: the remaining hosts less their largest `failover_hosts` still hold
    // every VM's load.
    let mut by_size = rest.clone();
    by_size.sort_by_key(|h| std::cmp::Reverse((h.capacity.cpu_millis, h.capacity.memory)));
    let survivors = sum(by_size.iter().skip(s.failover_hosts).copied(), |h| {
        h.capacity
    });
    let (cpu, mem) = share(total_used, survivors);
    if cpu >= 1.0 || mem >= 1.0 {
        return hold(
            None,
            format!(
                "without host {} the failover reserve ({} host(s)) would not hold",
                host.name, s.failover_hosts
            ),
        );
    }
    let since = i.low_since.unwrap_or(i.now);
    let waited = i
        .now
        .as_millisecond()
        .saturating_sub(since.as_millisecond());
    if waited < i64::try_from(s.standby_after.as_millis()).unwrap_or(i64::MAX) {
        return hold(
            Some(since),
            format!(
                "the load is low enough for host {} to go to Standby; waiting until it has been so for {} s",
                host.name,
                s.standby_after.as_secs()
            ),
        );
    }
    Decision {
        action: Action::Standby {
            host: host.name.clone(),
        },
        message: format!(
            "host {} goes to Standby: without it the other {} host(s) on use {:.0} % of their CPUs and {:.0} % of their memory (below {:.0} %), and the failover reserve ({} host(s)) holds",
            host.name,
            rest.len(),
            left_cpu * 100.0,
            left_mem * 100.0,
            s.standby_below * 100.0,
            s.failover_hosts
        ),
    }
}

#[cfg(test)]
mod tests;
