//! Table tests for placement.

use super::*;
use crate::api::virtual_machine::VmAffinityTerm;
use PlacementStrategy::{Pack, Spread};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

const GI: u64 = 1 << 30;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A healthy host with `cpus` and `gib` allocatable.
fn host(name: &str, cpus: u64, gib: u64) -> Candidate {
    Candidate {
        name: name.into(),
        reachable: true,
        node_ready: true,
        cordoned: false,
        labels: labels(&[("zone", name)]),
        allocatable: Some(Amount {
            cpus,
            memory: gib * GI,
        }),
        foreign: Amount::default(),
        measured: None,
    }
}

fn vm(uid: &str, host: &str, cpus: u64, gib: u64, app: &str) -> Placed {
    Placed {
        uid: uid.into(),
        host: host.into(),
        labels: labels(&[("app", app)]),
        need: Amount {
            cpus,
            memory: gib * GI,
        },
        excludes: vec![],
    }
}

/// `p` with a required anti-affinity against VMs labelled `app=<app>`.
fn excluding(mut p: Placed, app: &str) -> Placed {
    p.excludes = excludes(&[term(app, true, 0)]);
    p
}

fn term(app: &str, required: bool, weight: u64) -> Term {
    let t = VmAffinityTerm {
        label_selector: LabelSelector {
            match_labels: Some(labels(&[("app", app)])),
            ..Default::default()
        },
        required: Some(required),
        weight: (!required).then_some(weight as i32),
    };
    terms(&[t], "affinity").expect("valid selector").remove(0)
}

struct Case {
    name: &'static str,
    hosts: Vec<Candidate>,
    placed: Vec<Placed>,
    need: (u64, u64),
    node_selector: BTreeMap<String, String>,
    affinity: Vec<Term>,
    anti_affinity: Vec<Term>,
    labels: BTreeMap<String, String>,
    strategy: PlacementStrategy,
    want: Result<&'static str, &'static str>,
}

impl Default for Case {
    fn default() -> Self {
        Case {
            name: "",
            hosts: vec![],
            placed: vec![],
            need: (1, 1),
            node_selector: BTreeMap::new(),
            affinity: vec![],
            anti_affinity: vec![],
            labels: BTreeMap::new(),
            strategy: Spread,
            want: Err(""),
        }
    }
}

fn run(cases: Vec<Case>) {
    for c in cases {
        let req = Request {
            uid: "new",
            labels: &c.labels,
            need: Amount {
                cpus: c.need.0,
                memory: c.need.1 * GI,
            },
            node_selector: &c.node_selector,
            affinity: &c.affinity,
            anti_affinity: &c.anti_affinity,
        };
        let got = choose_host(&c.hosts, &c.placed, &req, c.strategy);
        let want = c.want.map(String::from).map_err(String::from);
        assert_eq!(got, want, "case {:?}", c.name);
    }
}

#[test]
fn fit_spread_and_pack() {
    run(vec![
        Case {
            name: "spread: least allocated host",
            hosts: vec![host("a", 4, 8), host("b", 4, 8), host("c", 4, 8)],
            placed: vec![vm("1", "a", 1, 1, "x"), vm("2", "b", 1, 1, "x")],
            want: Ok("c"),
            ..Case::default()
        },
        Case {
            name: "spread: allocation is relative to the host's size",
            hosts: vec![host("a", 16, 32), host("b", 4, 8)],
            placed: vec![vm("1", "a", 2, 4, "x")],
            want: Ok("a"),
            ..Case::default()
        },
        Case {
            name: "pack: most allocated host that fits",
            hosts: vec![host("a", 4, 8), host("b", 4, 8), host("c", 4, 8)],
            placed: vec![vm("1", "b", 1, 1, "x"), vm("2", "c", 4, 7, "x")],
            strategy: Pack,
            want: Ok("b"),
            ..Case::default()
        },
        Case {
            name: "pack: a full host is skipped",
            hosts: vec![host("a", 4, 8), host("b", 4, 8)],
            placed: vec![vm("1", "b", 4, 8, "x")],
            strategy: Pack,
            want: Ok("a"),
            ..Case::default()
        },
        Case {
            name: "fit: memory counts placed VMs not started yet and foreign domains",
            hosts: vec![
                Candidate {
                    foreign: Amount {
                        cpus: 1,
                        memory: 6 * GI,
                    },
                    ..host("a", 8, 8)
                },
                host("b", 8, 8),
            ],
            placed: vec![vm("1", "b", 1, 7, "x")],
            need: (1, 3),
            want: Err("no host fits: 2 lack memory"),
            ..Case::default()
        },
        Case {
            name: "fit: vCPUs",
            hosts: vec![host("a", 2, 64), host("b", 4, 64)],
            placed: vec![vm("1", "b", 3, 1, "x")],
            need: (2, 1),
            want: Ok("a"),
            ..Case::default()
        },
        Case {
            name: "fit: exactly full is fine",
            hosts: vec![host("a", 2, 2)],
            placed: vec![vm("1", "a", 1, 1, "x")],
            need: (1, 1),
            want: Ok("a"),
            ..Case::default()
        },
        Case {
            name: "measured load: spread weighs it with allocation (busy a loses to idle b)",
            hosts: vec![
                Candidate {
                    measured: Some(900),
                    ..host("a", 8, 8)
                },
                Candidate {
                    measured: Some(100),
                    ..host("b", 8, 8)
                },
            ],
            placed: vec![vm("1", "b", 2, 2, "x")],
            want: Ok("b"),
            ..Case::default()
        },
        Case {
            name: "measured load: without it, the less allocated host wins",
            hosts: vec![host("a", 8, 8), host("b", 8, 8)],
            placed: vec![vm("1", "b", 2, 2, "x")],
            want: Ok("a"),
            ..Case::default()
        },
        Case {
            name: "measured load breaks a tie in pack before the name does",
            hosts: vec![
                Candidate {
                    measured: Some(600),
                    ..host("a", 8, 8)
                },
                Candidate {
                    measured: Some(200),
                    ..host("b", 8, 8)
                },
            ],
            strategy: Pack,
            want: Ok("b"),
            ..Case::default()
        },
        Case {
            name: "the VM does not count against itself",
            hosts: vec![host("a", 1, 1)],
            placed: vec![vm("new", "a", 1, 1, "x")],
            want: Ok("a"),
            ..Case::default()
        },
    ]);
}

#[test]
fn overcommit_and_reservations_through_allocatable() {
    use crate::plan::capacity::{Policy, allocatable};
    let capacity = Amount {
        cpus: 4,
        memory: 8 * GI,
    };
    let with = |p: Policy| Candidate {
        allocatable: Some(allocatable(capacity, &p)),
        ..host("a", 0, 0)
    };
    let four_on_a = vec![vm("1", "a", 4, 1, "x")];
    run(vec![
        Case {
            name: "no overcommit: 4 vCPUs used of 4",
            hosts: vec![with(Policy::default())],
            placed: four_on_a.clone(),
            want: Err("no host fits: 1 lack CPU"),
            ..Case::default()
        },
        Case {
            name: "cpu overcommit 2: room for 4 more",
            hosts: vec![with(Policy {
                cpu_overcommit: 2.0,
                ..Policy::default()
            })],
            placed: four_on_a.clone(),
            need: (4, 1),
            want: Ok("a"),
            ..Case::default()
        },
        Case {
            name: "reserved CPUs shrink what overcommit multiplies",
            hosts: vec![with(Policy {
                cpu_overcommit: 2.0,
                reserved_cpus: 1,
                ..Policy::default()
            })],
            placed: four_on_a,
            need: (3, 1),
            want: Err("no host fits: 1 lack CPU"),
            ..Case::default()
        },
        Case {
            name: "reserved memory",
            hosts: vec![with(Policy {
                reserved_memory: 2 * GI,
                ..Policy::default()
            })],
            need: (1, 7),
            want: Err("no host fits: 1 lack memory"),
            ..Case::default()
        },
        Case {
            name: "memory overcommit",
            hosts: vec![with(Policy {
                reserved_memory: 2 * GI,
                memory_overcommit: 1.5,
                ..Policy::default()
            })],
            need: (1, 9),
            want: Ok("a"),
            ..Case::default()
        },
    ]);
}

#[test]
fn health_cordon_and_node_selector() {
    let unreachable = Candidate {
        reachable: false,
        ..host("u", 8, 8)
    };
    let cordoned = Candidate {
        cordoned: true,
        ..host("c", 8, 8)
    };
    let not_ready = Candidate {
        node_ready: false,
        ..host("n", 8, 8)
    };
    let unknown = Candidate {
        allocatable: None,
        ..host("k", 8, 8)
    };
    run(vec![
        Case {
            name: "only the healthy host",
            hosts: vec![
                cordoned.clone(),
                not_ready.clone(),
                unreachable.clone(),
                unknown.clone(),
                host("z", 1, 1),
            ],
            want: Ok("z"),
            ..Case::default()
        },
        Case {
            name: "counts per reason, most frequent first",
            hosts: vec![
                cordoned,
                not_ready,
                unreachable.clone(),
                Candidate {
                    name: "u2".into(),
                    ..unreachable
                },
                unknown,
                host("small-1", 1, 1),
                host("small-2", 1, 1),
                host("small-3", 1, 1),
            ],
            need: (1, 2),
            want: Err(
                "no host fits: 3 lack memory, 2 libvirt unreachable, 1 Node not Ready, \
                 1 capacity not known yet, 1 cordoned",
            ),
            ..Case::default()
        },
        Case {
            name: "nodeSelector",
            hosts: vec![host("a", 8, 8), host("b", 8, 8)],
            node_selector: labels(&[("zone", "b")]),
            want: Ok("b"),
            ..Case::default()
        },
        Case {
            name: "nodeSelector matching nothing",
            hosts: vec![host("a", 8, 8)],
            node_selector: labels(&[("zone", "q")]),
            want: Err("no host fits: 1 not matching nodeSelector"),
            ..Case::default()
        },
        Case {
            name: "empty pool",
            want: Err("the HostPool has no hosts"),
            ..Case::default()
        },
    ]);
}

#[test]
fn affinity_and_anti_affinity() {
    let hosts = || vec![host("a", 8, 8), host("b", 8, 8), host("c", 8, 8)];
    run(vec![
        Case {
            name: "required anti-affinity avoids hosts with a match",
            hosts: hosts(),
            placed: vec![vm("1", "a", 1, 1, "db"), vm("2", "c", 1, 1, "db")],
            anti_affinity: vec![term("db", true, 0)],
            strategy: Pack,
            want: Ok("b"),
            ..Case::default()
        },
        Case {
            name: "required anti-affinity everywhere",
            hosts: hosts(),
            placed: vec![
                vm("1", "a", 1, 1, "db"),
                vm("2", "b", 1, 1, "db"),
                vm("3", "c", 1, 1, "db"),
            ],
            anti_affinity: vec![term("db", true, 0)],
            want: Err("no host fits: 3 run a VM the anti-affinity excludes"),
            ..Case::default()
        },
        Case {
            name: "a placed VM's required anti-affinity keeps the new VM off its host",
            hosts: hosts(),
            placed: vec![
                excluding(vm("1", "a", 1, 1, "db"), "web"),
                vm("2", "c", 1, 1, "cache"),
            ],
            labels: labels(&[("app", "web")]),
            strategy: Pack,
            want: Ok("c"),
            ..Case::default()
        },
        Case {
            name: "placed VMs' anti-affinity everywhere",
            hosts: hosts(),
            placed: vec![
                excluding(vm("1", "a", 1, 1, "db"), "web"),
                excluding(vm("2", "b", 1, 1, "db"), "web"),
                excluding(vm("3", "c", 1, 1, "db"), "web"),
            ],
            labels: labels(&[("app", "web")]),
            want: Err("no host fits: 3 run a VM whose anti-affinity excludes this one"),
            ..Case::default()
        },
        Case {
            name: "a placed VM's anti-affinity that does not match the new VM binds nothing",
            hosts: hosts(),
            placed: vec![excluding(vm("1", "a", 1, 1, "db"), "db")],
            labels: labels(&[("app", "web")]),
            strategy: Pack,
            want: Ok("a"),
            ..Case::default()
        },
        Case {
            name: "required affinity joins the match, against the spread",
            hosts: hosts(),
            placed: vec![vm("1", "b", 4, 4, "web"), vm("2", "a", 1, 1, "x")],
            affinity: vec![term("web", true, 0)],
            want: Ok("b"),
            ..Case::default()
        },
        Case {
            name: "required affinity with no match anywhere: the first of a group",
            hosts: hosts(),
            placed: vec![vm("1", "a", 1, 1, "x")],
            affinity: vec![term("web", true, 0)],
            want: Ok("b"),
            ..Case::default()
        },
        Case {
            name: "required affinity on a full host",
            hosts: hosts(),
            placed: vec![vm("1", "b", 8, 8, "web")],
            affinity: vec![term("web", true, 0)],
            want: Err("no host fits: 2 lack a VM the affinity requires, 1 lack memory"),
            ..Case::default()
        },
        Case {
            name: "preferred affinity outweighs a small imbalance",
            hosts: hosts(),
            placed: vec![vm("1", "b", 1, 1, "web")],
            affinity: vec![term("web", false, 50)],
            want: Ok("b"),
            ..Case::default()
        },
        Case {
            name: "preferred anti-affinity under pack",
            hosts: hosts(),
            placed: vec![vm("1", "a", 4, 4, "db"), vm("2", "b", 1, 1, "x")],
            anti_affinity: vec![term("db", false, 100)],
            strategy: Pack,
            want: Ok("b"),
            ..Case::default()
        },
        Case {
            name: "a preference that cannot be met does not block",
            hosts: vec![host("a", 8, 8)],
            placed: vec![vm("1", "a", 1, 1, "db")],
            anti_affinity: vec![term("db", false, 100)],
            want: Ok("a"),
            ..Case::default()
        },
    ]);
}

#[test]
fn ties_break_by_name() {
    run(vec![
        Case {
            name: "equal hosts, spread",
            hosts: vec![host("c", 4, 4), host("a", 4, 4), host("b", 4, 4)],
            want: Ok("a"),
            ..Case::default()
        },
        Case {
            name: "equal hosts, pack",
            hosts: vec![host("c", 4, 4), host("b", 4, 4)],
            strategy: Pack,
            want: Ok("b"),
            ..Case::default()
        },
    ]);
    // Spread over a sequence lands 2/2/2 on three equal hosts.
    let hosts = vec![host("h1", 2, 1), host("h2", 2, 1), host("h3", 2, 1)];
    let mut placed: Vec<Placed> = Vec::new();
    for i in 0..6 {
        let uid = format!("vm{i}");
        let req = Request {
            uid: &uid,
            labels: &BTreeMap::new(),
            need: Amount {
                cpus: 1,
                memory: 128 << 20,
            },
            node_selector: &BTreeMap::new(),
            affinity: &[],
            anti_affinity: &[],
        };
        let h = choose_host(&hosts, &placed, &req, Spread).expect("fits");
        placed.push(Placed {
            uid: uid.clone(),
            host: h,
            labels: BTreeMap::new(),
            need: req.need,
            excludes: vec![],
        });
    }
    let on = |h: &str| placed.iter().filter(|p| p.host == h).count();
    assert_eq!((on("h1"), on("h2"), on("h3")), (2, 2, 2));
}

#[test]
fn invalid_selectors_are_named() {
    let bad = VmAffinityTerm {
        label_selector: LabelSelector {
            match_expressions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: "app".into(),
                    operator: "Sideways".into(),
                    values: None,
                },
            ]),
            ..Default::default()
        },
        ..Default::default()
    };
    let e = terms(&[bad], "antiAffinity").expect_err("invalid");
    assert!(e.contains("spec.placement.antiAffinity[0]"), "{e}");
}
