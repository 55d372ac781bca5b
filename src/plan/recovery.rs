//! A failed host's VMs → which to restart elsewhere now: in waves by priority, at most so many at
//! once in all and per target host, only where they fit. Placement itself is
//! `placement::choose_host`; this module only orders the VMs and simulates their placement one
//! after the other, so that a higher-priority VM's room is never taken by a lower-priority one.

use super::capacity::Amount;
use super::placement::{self, Candidate, Placed, Request, Term, choose_host};
use crate::api::host_pool::PlacementStrategy;
use std::collections::BTreeMap;

/// A VM of the failed host that has not been handed over yet.
#[derive(Debug, Clone)]
pub struct Stranded {
    pub uid: String,
    pub name: String,
    /// Restart priority (higher first).
    pub priority: i32,
    pub need: Amount,
    pub labels: BTreeMap<String, String>,
    pub node_selector: BTreeMap<String, String>,
    pub affinity: Vec<Term>,
    pub anti_affinity: Vec<Term>,
}

/// A VM handed over in this incident whose domain does not run yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    /// Its restart priority.
    pub priority: i32,
    /// The host it was placed on, once placed.
    pub host: Option<String>,
    /// Handed over longer ago than the policy lets lower priorities wait for it.
    pub overdue: bool,
}

/// How many restarts may be under way at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// In the whole incident (the HAPolicy's `maxConcurrentRestarts`).
    pub total: usize,
    /// On one target host (the HostPool's `capacity.maxConcurrentRestartsPerHost`).
    pub per_host: usize,
    /// Whether a lower priority waits until the higher ones run (restart waves).
    pub waves: bool,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// UIDs to hand over to the VirtualMachine controller now, in priority order, with the host
    /// the simulation expects (the VM controller places them again itself).
    pub release: Vec<(String, String)>,
    /// UIDs kept back, with the reason.
    pub waiting: Vec<(String, String)>,
}

/// Plan the next restarts, in waves by priority: a VM is handed over only when no VM of a higher
/// priority is still to start (handed over and not running, or waiting for a restart slot), so
/// no lower-priority VM starts before a higher-priority one, except past the policy's wait
/// (`overdue`) or when the higher one fits nowhere. Within a wave at most `limits.total` restarts
/// are under way, and at most `limits.per_host` on one target host (a VM handed over but not yet
/// placed counts against the total only). `placed` holds every VM of the pool that has a host
/// (including those in flight on their new host).
pub fn plan(
    stranded: &[Stranded],
    in_flight: &[InFlight],
    limits: Limits,
    candidates: &[Candidate],
    placed: &[Placed],
    strategy: PlacementStrategy,
) -> Plan {
    let mut order: Vec<&Stranded> = stranded.iter().collect();
    order.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
    let mut budget = limits.total.saturating_sub(in_flight.len());
    let mut starting: BTreeMap<&str, usize> = BTreeMap::new();
    for f in in_flight {
        if let Some(h) = &f.host {
            *starting.entry(h.as_str()).or_default() += 1;
        }
    }
    // The lowest priority that may start now: that of the highest-priority VM still to start.
    let mut gate: Option<i32> = in_flight
        .iter()
        .filter(|f| limits.waves && !f.overdue)
        .map(|f| f.priority)
        .max();
    let mut placed: Vec<Placed> = placed.to_vec();
    let mut out = Plan::default();
    let mut unplaceable = Vec::new();
    for vm in order {
        if let Some(g) = gate.filter(|g| vm.priority < *g) {
            out.waiting.push((
                vm.uid.clone(),
                format!("waiting for the VMs of priority {g} to run first"),
            ));
            continue;
        }
        let req = Request {
            uid: &vm.uid,
            labels: &vm.labels,
            need: vm.need,
            node_selector: &vm.node_selector,
            affinity: &vm.affinity,
            anti_affinity: &vm.anti_affinity,
        };
        if let Err(why) = choose_host(candidates, &placed, &req, strategy) {
            unplaceable.push((vm.uid.clone(), why));
            continue;
        }
        // It fits: it starts now or waits for a slot, and either way holds back lower priorities.
        if limits.waves {
            gate = Some(gate.map_or(vm.priority, |g| g.max(vm.priority)));
        }
        if budget == 0 {
            out.waiting.push((
                vm.uid.clone(),
                format!(
                    "waiting for a restart slot (at most {} at once)",
                    limits.total
                ),
            ));
            continue;
        }
        let free: Vec<Candidate> = candidates
            .iter()
            .filter(|c| starting.get(c.name.as_str()).copied().unwrap_or(0) < limits.per_host)
            .cloned()
            .collect();
        let Ok(host) = choose_host(&free, &placed, &req, strategy) else {
            out.waiting.push((
                vm.uid.clone(),
                format!(
                    "waiting for a restart slot on a host where it fits (at most {} at once per host)",
                    limits.per_host
                ),
            ));
            continue;
        };
        budget -= 1;
        if let Some(c) = candidates.iter().find(|c| c.name == host) {
            *starting.entry(c.name.as_str()).or_default() += 1;
        }
        placed.retain(|p| p.uid != vm.uid);
        placed.push(Placed {
            uid: vm.uid.clone(),
            host: host.clone(),
            labels: vm.labels.clone(),
            need: vm.need,
            excludes: placement::excludes(&vm.anti_affinity),
        });
        out.release.push((vm.uid.clone(), host));
    }
    if out.release.is_empty() && out.waiting.is_empty() && in_flight.is_empty() {
        // Nothing else competes for room: hand the rest over so that each shows Pending with
        // placement's reason, and is placed as soon as room appears.
        out.release
            .extend(unplaceable.iter().map(|(u, _)| (u.clone(), String::new())));
    } else {
        out.waiting.extend(unplaceable);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: u64 = 1 << 30;

    fn host(name: &str, cpus: u64, gib: u64) -> Candidate {
        Candidate {
            name: name.into(),
            reachable: true,
            node_ready: true,
            cordoned: false,
            labels: BTreeMap::new(),
            allocatable: Some(Amount {
                cpus,
                memory: gib * GI,
            }),
            foreign: Amount::default(),
            measured: None,
        }
    }

    fn vm(name: &str, priority: i32, gib: u64) -> Stranded {
        Stranded {
            uid: format!("uid-{name}"),
            name: name.into(),
            priority,
            need: Amount {
                cpus: 1,
                memory: gib * GI,
            },
            labels: BTreeMap::new(),
            node_selector: BTreeMap::new(),
            affinity: vec![],
            anti_affinity: vec![],
        }
    }

    fn uids(v: &[(String, String)]) -> Vec<&str> {
        v.iter().map(|(u, _)| u.as_str()).collect()
    }

    fn flying(priority: i32, host: Option<&str>, overdue: bool) -> InFlight {
        InFlight {
            priority,
            host: host.map(Into::into),
            overdue,
        }
    }

    #[test]
    fn table() {
        let dead = Candidate {
            reachable: false,
            node_ready: false,
            ..host("dead", 8, 8)
        };
        struct Case {
            what: &'static str,
            vms: Vec<Stranded>,
            hosts: Vec<Candidate>,
            in_flight: Vec<InFlight>,
            max: usize,
            per_host: usize,
            waves: bool,
            release: Vec<&'static str>,
            waiting: Vec<&'static str>,
        }
        let base = || Case {
            what: "",
            vms: vec![],
            hosts: vec![host("s1", 8, 8)],
            in_flight: vec![],
            max: 8,
            per_host: 8,
            waves: true,
            release: vec![],
            waiting: vec![],
        };
        let four = || {
            vec![
                vm("b", 0, 1),
                vm("a", 0, 1),
                vm("hi", 100, 1),
                vm("lo", -5, 1),
            ]
        };
        let cases = vec![
            Case {
                what: "the highest priority goes first, alone",
                vms: four(),
                hosts: vec![dead.clone(), host("s1", 8, 8)],
                release: vec!["uid-hi"],
                waiting: vec!["uid-a", "uid-b", "uid-lo"],
                ..base()
            },
            Case {
                what: "without waves: priority order, then name, all at once",
                vms: four(),
                hosts: vec![dead.clone(), host("s1", 8, 8)],
                waves: false,
                release: vec!["uid-hi", "uid-a", "uid-b", "uid-lo"],
                ..base()
            },
            Case {
                what: "one wave: the same priority starts together",
                vms: vec![vm("b", 0, 1), vm("a", 0, 1), vm("c", 0, 1)],
                release: vec!["uid-a", "uid-b", "uid-c"],
                ..base()
            },
            Case {
                what: "max concurrent counts those in flight",
                vms: vec![vm("a", 0, 1), vm("b", 0, 1), vm("c", 9, 1)],
                in_flight: vec![flying(0, None, false)],
                max: 2,
                release: vec!["uid-c"],
                waiting: vec!["uid-a", "uid-b"],
                ..base()
            },
            Case {
                what: "a higher priority waiting for a slot holds back the lower ones",
                vms: vec![vm("hi1", 9, 1), vm("hi2", 9, 1), vm("lo", 0, 1)],
                max: 1,
                release: vec!["uid-hi1"],
                waiting: vec!["uid-hi2", "uid-lo"],
                ..base()
            },
            Case {
                what: "a lower priority waits while a higher one is in flight",
                vms: vec![vm("lo", 0, 1)],
                in_flight: vec![flying(100, Some("s1"), false)],
                waiting: vec!["uid-lo"],
                ..base()
            },
            Case {
                what: "past the policy's wait, a higher one in flight holds nothing back",
                vms: vec![vm("lo", 0, 1)],
                in_flight: vec![flying(100, Some("s1"), true)],
                release: vec!["uid-lo"],
                ..base()
            },
            Case {
                what: "a lower priority in flight holds nothing back",
                vms: vec![vm("hi", 100, 1)],
                in_flight: vec![flying(0, Some("s1"), false)],
                release: vec!["uid-hi"],
                ..base()
            },
            Case {
                what: "high priority keeps its room; the next wave waits for it",
                vms: vec![vm("big", 10, 3), vm("mid", 5, 2), vm("small", 0, 1)],
                hosts: vec![host("s1", 8, 4)],
                release: vec!["uid-big"],
                waiting: vec!["uid-mid", "uid-small"],
                ..base()
            },
            Case {
                what: "a higher priority that fits nowhere does not hold back the lower ones",
                vms: vec![vm("mid", 5, 2), vm("small", 0, 1)],
                hosts: vec![host("s1", 8, 1)],
                release: vec!["uid-small"],
                waiting: vec!["uid-mid"],
                ..base()
            },
            Case {
                what: "per host: a full host is skipped for one with a free slot",
                vms: vec![vm("a", 0, 1)],
                hosts: vec![host("s1", 8, 8), host("s2", 8, 4)],
                in_flight: vec![flying(0, Some("s1"), false)],
                per_host: 1,
                release: vec!["uid-a"],
                ..base()
            },
            Case {
                what: "per host: no free slot where it fits, it waits",
                vms: vec![vm("a", 0, 1)],
                in_flight: vec![flying(0, Some("s1"), false)],
                per_host: 1,
                waiting: vec!["uid-a"],
                ..base()
            },
            Case {
                what: "per host: the limit holds within one round",
                vms: vec![vm("a", 0, 1), vm("b", 0, 1), vm("c", 0, 1)],
                per_host: 2,
                release: vec!["uid-a", "uid-b"],
                waiting: vec!["uid-c"],
                ..base()
            },
            Case {
                what: "nothing fits and nothing in flight: handed over to show Pending",
                vms: vec![vm("huge", 0, 64)],
                hosts: vec![dead.clone(), host("s1", 8, 4)],
                release: vec!["uid-huge"],
                ..base()
            },
            Case {
                what: "nothing fits while others are in flight: wait",
                vms: vec![vm("huge", 0, 64)],
                hosts: vec![host("s1", 8, 4)],
                in_flight: vec![flying(0, None, false)],
                waiting: vec!["uid-huge"],
                ..base()
            },
            Case {
                what: "no survivors",
                vms: vec![vm("a", 0, 1)],
                hosts: vec![dead.clone()],
                release: vec!["uid-a"],
                ..base()
            },
        ];
        for c in cases {
            let limits = Limits {
                total: c.max,
                per_host: c.per_host,
                waves: c.waves,
            };
            let p = plan(
                &c.vms,
                &c.in_flight,
                limits,
                &c.hosts,
                &[],
                PlacementStrategy::Spread,
            );
            assert_eq!(uids(&p.release), c.release, "{}: release", c.what);
            assert_eq!(uids(&p.waiting), c.waiting, "{}: waiting", c.what);
        }
    }

    #[test]
    fn per_host_limit_sends_the_vm_to_the_host_with_a_free_slot() {
        let hosts = vec![host("s1", 8, 8), host("s2", 8, 4)];
        let limits = Limits {
            total: 8,
            per_host: 1,
            waves: true,
        };
        let p = plan(
            &[vm("a", 0, 1)],
            &[flying(0, Some("s1"), false)],
            limits,
            &hosts,
            &[],
            PlacementStrategy::Spread,
        );
        assert_eq!(p.release, vec![("uid-a".to_string(), "s2".to_string())]);
    }

    #[test]
    fn spreads_over_survivors_and_counts_vms_already_there() {
        let hosts = vec![host("s1", 8, 4), host("s2", 8, 4)];
        let already = vec![Placed {
            uid: "x".into(),
            host: "s1".into(),
            labels: BTreeMap::new(),
            need: Amount {
                cpus: 1,
                memory: 2 * GI,
            },
            excludes: vec![],
        }];
        let vms = vec![vm("a", 0, 1), vm("b", 0, 1), vm("c", 0, 1)];
        let limits = Limits {
            total: 8,
            per_host: 8,
            waves: false,
        };
        let p = plan(
            &vms,
            &[],
            limits,
            &hosts,
            &already,
            PlacementStrategy::Spread,
        );
        let hosts: Vec<&str> = p.release.iter().map(|(_, h)| h.as_str()).collect();
        assert_eq!(hosts, vec!["s2", "s2", "s1"]);
        assert!(p.waiting.is_empty());
    }
}
