//! A failed host's VMs → which to restart elsewhere now: priority order, at most so many at once,
//! only where they fit. Placement itself is `placement::choose_host`; this module only orders the
//! VMs and simulates their placement one after the other, so that a higher-priority VM's room is
//! never taken by a lower-priority one.

use super::capacity::Amount;
use super::placement::{Candidate, Placed, Request, Term, choose_host};
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

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// UIDs to hand over to the VirtualMachine controller now, in priority order, with the host
    /// the simulation expects (the VM controller places them again itself).
    pub release: Vec<(String, String)>,
    /// UIDs kept back, with the reason.
    pub waiting: Vec<(String, String)>,
}

/// Plan the next restarts. `in_flight` VMs were handed over and are not running yet; `placed`
/// holds every VM of the pool that has a host (including those in flight on their new host).
pub fn plan(
    stranded: &[Stranded],
    in_flight: usize,
    max_concurrent: usize,
    candidates: &[Candidate],
    placed: &[Placed],
    strategy: PlacementStrategy,
) -> Plan {
    let mut order: Vec<&Stranded> = stranded.iter().collect();
    order.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
    let mut budget = max_concurrent.saturating_sub(in_flight);
    let mut placed: Vec<Placed> = placed.to_vec();
    let mut out = Plan::default();
    let mut unplaceable = Vec::new();
    for vm in order {
        let req = Request {
            uid: &vm.uid,
            need: vm.need,
            node_selector: &vm.node_selector,
            affinity: &vm.affinity,
            anti_affinity: &vm.anti_affinity,
        };
        match choose_host(candidates, &placed, &req, strategy) {
            Ok(host) if budget > 0 => {
                budget -= 1;
                placed.retain(|p| p.uid != vm.uid);
                placed.push(Placed {
                    uid: vm.uid.clone(),
                    host: host.clone(),
                    labels: vm.labels.clone(),
                    need: vm.need,
                });
                out.release.push((vm.uid.clone(), host));
            }
            Ok(_) => out.waiting.push((
                vm.uid.clone(),
                format!("waiting for a restart slot (at most {max_concurrent} at once)"),
            )),
            Err(why) => unplaceable.push((vm.uid.clone(), why)),
        }
    }
    if out.release.is_empty() && out.waiting.is_empty() && in_flight == 0 {
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
            in_flight: usize,
            max: usize,
            release: Vec<&'static str>,
            waiting: Vec<&'static str>,
        }
        let cases = vec![
            Case {
                what: "priority order, then name",
                vms: vec![
                    vm("b", 0, 1),
                    vm("a", 0, 1),
                    vm("hi", 100, 1),
                    vm("lo", -5, 1),
                ],
                hosts: vec![dead.clone(), host("s1", 8, 8)],
                in_flight: 0,
                max: 8,
                release: vec!["uid-hi", "uid-a", "uid-b", "uid-lo"],
                waiting: vec![],
            },
            Case {
                what: "max concurrent counts those in flight",
                vms: vec![vm("a", 0, 1), vm("b", 0, 1), vm("c", 9, 1)],
                hosts: vec![host("s1", 8, 8)],
                in_flight: 1,
                max: 2,
                release: vec!["uid-c"],
                waiting: vec!["uid-a", "uid-b"],
            },
            Case {
                what: "high priority keeps its room; a smaller low-priority VM still fits",
                vms: vec![vm("big", 10, 3), vm("mid", 5, 2), vm("small", 0, 1)],
                hosts: vec![host("s1", 8, 4)],
                in_flight: 0,
                max: 8,
                release: vec!["uid-big", "uid-small"],
                waiting: vec!["uid-mid"],
            },
            Case {
                what: "nothing fits and nothing in flight: handed over to show Pending",
                vms: vec![vm("huge", 0, 64)],
                hosts: vec![dead.clone(), host("s1", 8, 4)],
                in_flight: 0,
                max: 8,
                release: vec!["uid-huge"],
                waiting: vec![],
            },
            Case {
                what: "nothing fits while others are in flight: wait",
                vms: vec![vm("huge", 0, 64)],
                hosts: vec![host("s1", 8, 4)],
                in_flight: 1,
                max: 8,
                release: vec![],
                waiting: vec!["uid-huge"],
            },
            Case {
                what: "no survivors",
                vms: vec![vm("a", 0, 1)],
                hosts: vec![dead.clone()],
                in_flight: 0,
                max: 8,
                release: vec!["uid-a"],
                waiting: vec![],
            },
        ];
        for c in cases {
            let p = plan(
                &c.vms,
                c.in_flight,
                c.max,
                &c.hosts,
                &[],
                PlacementStrategy::Spread,
            );
            assert_eq!(uids(&p.release), c.release, "{}: release", c.what);
            assert_eq!(uids(&p.waiting), c.waiting, "{}: waiting", c.what);
        }
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
        }];
        let vms = vec![vm("a", 0, 1), vm("b", 0, 1), vm("c", 0, 1)];
        let p = plan(&vms, 0, 8, &hosts, &already, PlacementStrategy::Spread);
        let hosts: Vec<&str> = p.release.iter().map(|(_, h)| h.as_str()).collect();
        assert_eq!(hosts, vec!["s2", "s2", "s1"]);
        assert!(p.waiting.is_empty());
    }
}
