//! Table tests for the balancing planner.

use super::*;
use crate::api::virtual_machine::VmAffinityTerm;
use crate::plan::capacity::Amount;
use crate::plan::placement::terms;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

const GI: u64 = 1 << 30;
const MI: u64 = 1 << 20;

/// One label.
fn label(key: &str, value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(key.to_string(), value.to_string())])
}

/// When the planner runs.
fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).expect("a valid time")
}

/// `now` less `secs` seconds.
fn ago(secs: i64) -> Timestamp {
    Timestamp::from_second(now().as_second() - secs).expect("a valid time")
}

/// A usable host with 4 CPUs and 16 GiB, nothing else on it, room for 16 vCPUs.
fn host(name: &str) -> Host {
    Host {
        candidate: Candidate {
            name: name.into(),
            reachable: true,
            node_ready: true,
            cordoned: false,
            labels: label("zone", name),
            allocatable: Some(Amount {
                cpus: 16,
                memory: 64 * GI,
            }),
            foreign: Amount::default(),
            measured: None,
        },
        capacity: Usage {
            cpu_millis: 4000,
            memory: 16 * GI,
        },
        other: Usage::default(),
    }
}

fn with_host<F: FnOnce(&mut Host)>(mut h: Host, f: F) -> Host {
    f(&mut h);
    h
}

/// A running, movable VM on `host` using `millis` of CPU and 512 MiB, copying 512 MiB.
fn vm(name: &str, host: &str, millis: u64) -> Vm {
    Vm {
        name: name.into(),
        placed: Placed {
            uid: format!("uid-{name}"),
            host: host.into(),
            labels: label("app", name),
            need: Amount {
                cpus: 1,
                memory: GI,
            },
            excludes: vec![],
        },
        demand: Usage {
            cpu_millis: millis,
            memory: 512 * MI,
        },
        copy_bytes: 512 * MI,
        pinned: None,
        node_selector: BTreeMap::new(),
        affinity: vec![],
        anti_affinity: vec![],
        history: vec![],
    }
}

fn term(key: &str, value: &str, required: bool) -> Term {
    let t = VmAffinityTerm {
        label_selector: LabelSelector {
            match_labels: Some(label(key, value)),
            ..Default::default()
        },
        required: Some(required),
        weight: None,
    };
    terms(&[t], "affinity").expect("valid selector").remove(0)
}

fn level3() -> Settings {
    Settings::level(3, 10, 10, 10)
}

struct Case {
    name: &'static str,
    hosts: Vec<Host>,
    vms: Vec<Vm>,
    settings: Settings,
    /// The moves, as (vm, from, to).
    want: Vec<(&'static str, &'static str, &'static str)>,
    /// Words the message must contain.
    says: &'static str,
}

fn three() -> Vec<Host> {
    vec![host("h1"), host("h2"), host("h3")]
}

fn with<F: FnOnce(&mut Vm)>(mut v: Vm, f: F) -> Vm {
    f(&mut v);
    v
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "three busy VMs on one of three hosts: two moves, one to each other host",
            hosts: three(),
            vms: vec![
                vm("a", "h1", 1500),
                vm("b", "h1", 1500),
                vm("c", "h1", 1500),
            ],
            settings: level3(),
            want: vec![("a", "h1", "h2"), ("b", "h1", "h3")],
            says: "2 move(s) bring it to 0.",
        },
        Case {
            name: "even pool: nothing moves",
            hosts: three(),
            vms: vec![
                vm("a", "h1", 1500),
                vm("b", "h2", 1500),
                vm("c", "h3", 1500),
            ],
            settings: level3(),
            want: vec![],
            says: "within the target",
        },
        Case {
            name: "a small imbalance within the target: nothing moves",
            hosts: three(),
            vms: vec![vm("a", "h1", 1000), vm("b", "h2", 800), vm("c", "h3", 900)],
            settings: level3(),
            want: vec![],
            says: "within the target 12.0",
        },
        Case {
            name: "hysteresis: over the target by less than the band, nothing moves",
            hosts: three(),
            vms: vec![
                vm("a", "h1", 1200),
                vm("a2", "h1", 800),
                vm("b", "h2", 800),
                vm("c", "h3", 800),
            ],
            settings: level3(),
            want: vec![],
            says: "by less than the band 3.0",
        },
        Case {
            name: "hysteresis: past the band, a run brings the imbalance down to the target",
            hosts: three(),
            vms: vec![
                vm("a", "h1", 1200),
                vm("a2", "h1", 1000),
                vm("b", "h2", 800),
                vm("c", "h3", 800),
            ],
            settings: level3(),
            want: vec![("a2", "h1", "h2")],
            says: "1 move(s) bring it to 10.",
        },
        Case {
            name: "an imbalance within threshold 3's target moves at threshold 5",
            hosts: three(),
            vms: vec![
                vm("a", "h1", 1000),
                vm("b", "h1", 400),
                vm("c", "h2", 800),
                vm("d", "h3", 900),
            ],
            settings: Settings::level(5, 10, 10, 10),
            want: vec![("b", "h1", "h2")],
            says: "1 move(s)",
        },
        Case {
            name: "evictionStrategy None stays; the other VMs move",
            hosts: three(),
            vms: vec![
                with(vm("a", "h1", 1500), |v| {
                    v.pinned = Some("evictionStrategy None".into())
                }),
                vm("b", "h1", 1500),
                vm("c", "h1", 1500),
            ],
            settings: level3(),
            want: vec![("b", "h1", "h2"), ("c", "h1", "h3")],
            says: "2 move(s)",
        },
        Case {
            name: "nothing may move: the message says why",
            hosts: three(),
            vms: vec![
                with(vm("a", "h1", 1500), |v| {
                    v.pinned = Some("evictionStrategy None".into())
                }),
                with(vm("b", "h1", 1500), |v| v.history = vec![moved(600, "h2")]),
                with(vm("c", "h1", 1500), |v| v.history = vec![moved(600, "h3")]),
            ],
            settings: level3(),
            want: vec![],
            says: "2 in cooldown, 1 evictionStrategy None",
        },
        Case {
            name: "nodeSelector: the VM only goes where its labels are",
            hosts: three(),
            vms: vec![
                with(vm("a", "h1", 1500), |v| {
                    v.node_selector = label("zone", "h3")
                }),
                with(vm("b", "h1", 1500), |v| {
                    v.node_selector = label("zone", "h3")
                }),
                vm("c", "h1", 1500),
            ],
            settings: level3(),
            want: vec![("a", "h1", "h3"), ("c", "h1", "h2")],
            says: "2 move(s)",
        },
        Case {
            name: "a cordoned host neither gives nor takes",
            hosts: vec![
                host("h1"),
                host("h2"),
                with_host(host("h3"), |h| h.candidate.cordoned = true),
            ],
            vms: vec![
                vm("a", "h1", 1500),
                vm("b", "h1", 1500),
                vm("z", "h3", 3900),
            ],
            settings: level3(),
            want: vec![("a", "h1", "h2")],
            says: "1 move(s) bring it to 0.0",
        },
        Case {
            name: "a target without allocatable room is skipped",
            hosts: vec![
                host("h1"),
                with_host(host("h2"), |h| {
                    h.candidate.allocatable = Some(Amount {
                        cpus: 0,
                        memory: 64 * GI,
                    })
                }),
                host("h3"),
            ],
            vms: vec![vm("a", "h1", 1500), vm("b", "h1", 1500)],
            settings: level3(),
            want: vec![("a", "h1", "h3")],
            says: "1 move(s)",
        },
        Case {
            name: "required anti-affinity: not next to the VM it excludes",
            hosts: three(),
            vms: vec![
                with(vm("a", "h1", 2000), |v| {
                    v.set_anti_affinity(vec![term("app", "db", true)])
                }),
                vm("b", "h1", 2000),
                with(vm("db", "h2", 100), |v| {
                    v.placed.labels = label("app", "db")
                }),
            ],
            settings: level3(),
            want: vec![("a", "h1", "h3")],
            says: "1 move(s)",
        },
        Case {
            name: "required anti-affinity of the VM already there counts too",
            hosts: three(),
            vms: vec![
                with(vm("a", "h1", 2000), |v| {
                    v.placed.labels = label("app", "web")
                }),
                with(vm("b", "h1", 2000), |v| {
                    v.placed.labels = label("app", "web")
                }),
                with(vm("db", "h2", 100), |v| {
                    v.set_anti_affinity(vec![term("app", "web", true)])
                }),
            ],
            settings: level3(),
            want: vec![("a", "h1", "h3")],
            says: "1 move(s)",
        },
        Case {
            name: "required affinity: a VM does not leave its partner",
            hosts: three(),
            vms: vec![
                with(vm("a", "h1", 1500), |v| {
                    v.affinity = vec![term("app", "b", true)]
                }),
                vm("b", "h1", 1500),
                vm("c", "h1", 1500),
            ],
            settings: level3(),
            want: vec![("c", "h1", "h2")],
            says: "no further move gains enough",
        },
        Case {
            name: "required affinity: a VM moves only to where its partner runs",
            hosts: three(),
            vms: vec![
                with(vm("a", "h1", 1500), |v| {
                    v.affinity = vec![term("app", "p", true)]
                }),
                with(vm("b", "h1", 1500), |v| {
                    v.pinned = Some("evictionStrategy None".into())
                }),
                with(vm("p", "h3", 100), |v| v.placed.labels = label("app", "p")),
            ],
            settings: level3(),
            want: vec![("a", "h1", "h3")],
            says: "1 move(s)",
        },
        Case {
            name: "no return: a VM does not go back to a host balancing took it from",
            hosts: three(),
            vms: vec![
                with(vm("a", "h1", 1500), |v| v.history = vec![moved(7200, "h2")]),
                with(vm("b", "h1", 1500), |v| v.history = vec![moved(7200, "h2")]),
                vm("c", "h3", 1500),
            ],
            settings: level3(),
            want: vec![],
            says: "no move gains enough",
        },
        Case {
            name: "a move whose cost exceeds its gain is not made (60 GiB to copy at threshold 3)",
            hosts: three(),
            vms: vec![
                with(vm("big", "h1", 1500), |v| v.copy_bytes = 60 * GI),
                with(vm("big2", "h1", 1500), |v| v.copy_bytes = 60 * GI),
                vm("c", "h3", 1500),
            ],
            settings: level3(),
            want: vec![],
            says: "no move gains enough",
        },
        Case {
            name: "the same move is worth it at threshold 5",
            hosts: three(),
            vms: vec![
                with(vm("big", "h1", 1500), |v| v.copy_bytes = 60 * GI),
                with(vm("big2", "h1", 1500), |v| v.copy_bytes = 60 * GI),
                vm("c", "h3", 1500),
            ],
            settings: Settings::level(5, 10, 10, 10),
            want: vec![("big", "h1", "h2")],
            says: "1 move(s)",
        },
        Case {
            name: "the run's move limit: the next run continues",
            hosts: three(),
            vms: vec![
                vm("a", "h1", 1500),
                vm("b", "h1", 1500),
                vm("c", "h1", 1500),
            ],
            settings: Settings::level(3, 1, 10, 10),
            want: vec![("a", "h1", "h2")],
            says: "stopped by the run's limit of 1 move(s); the next run continues",
        },
        Case {
            name: "the per-host outgoing limit",
            hosts: three(),
            vms: vec![
                vm("a", "h1", 1500),
                vm("b", "h1", 1500),
                vm("c", "h1", 1500),
            ],
            settings: Settings::level(3, 10, 1, 10),
            want: vec![("a", "h1", "h2")],
            says: "no further move gains enough",
        },
        Case {
            name: "the per-host incoming limit",
            hosts: vec![host("h1"), host("h2")],
            vms: vec![
                vm("a", "h1", 1000),
                vm("b", "h1", 1000),
                vm("c", "h1", 1000),
                vm("d", "h1", 1000),
            ],
            settings: Settings::level(3, 10, 10, 1),
            want: vec![("a", "h1", "h2")],
            says: "no further move gains enough",
        },
        Case {
            name: "memory alone can be the imbalance",
            hosts: three(),
            vms: vec![
                with(vm("a", "h1", 10), |v| v.demand.memory = 6 * GI),
                with(vm("b", "h1", 10), |v| v.demand.memory = 6 * GI),
                with(vm("c", "h1", 10), |v| v.demand.memory = 6 * GI),
            ],
            settings: level3(),
            want: vec![("a", "h1", "h2"), ("b", "h1", "h3")],
            says: "2 move(s)",
        },
        Case {
            name: "a single usable host: nothing to balance",
            hosts: vec![
                host("h1"),
                with_host(host("h2"), |h| h.candidate.node_ready = false),
            ],
            vms: vec![vm("a", "h1", 3000)],
            settings: level3(),
            want: vec![],
            says: "1 usable host(s)",
        },
        Case {
            name: "hosts of different sizes are balanced by utilisation",
            hosts: vec![
                Host {
                    capacity: Usage {
                        cpu_millis: 8000,
                        memory: 32 * GI,
                    },
                    ..host("big")
                },
                host("small"),
            ],
            vms: vec![
                vm("a", "small", 1000),
                vm("b", "small", 1000),
                vm("c", "small", 1000),
            ],
            settings: level3(),
            want: vec![("a", "small", "big"), ("b", "small", "big")],
            says: "2 move(s)",
        },
        Case {
            name: "foreign load counts: a host busy with other domains takes nothing",
            hosts: vec![
                host("h1"),
                Host {
                    other: Usage {
                        cpu_millis: 3000,
                        memory: 0,
                    },
                    ..host("h2")
                },
                host("h3"),
            ],
            vms: vec![vm("a", "h1", 1500), vm("b", "h1", 1500)],
            settings: level3(),
            want: vec![("a", "h1", "h3")],
            says: "1 move(s)",
        },
        Case {
            name: "the no-return window over: the host left long ago takes the VM again",
            hosts: three(),
            vms: vec![
                with(vm("a", "h1", 1500), |v| {
                    v.history = vec![moved(7 * 3600, "h2")]
                }),
                with(vm("b", "h1", 1500), |v| {
                    v.history = vec![moved(7 * 3600, "h2")]
                }),
                vm("c", "h3", 1500),
            ],
            settings: level3(),
            want: vec![("a", "h1", "h2")],
            says: "1 move(s) bring it to 0.",
        },
        Case {
            name: "the cooldown over, VMs move again, but not back where they came from",
            hosts: three(),
            vms: vec![
                with(vm("a", "h1", 1500), |v| v.history = vec![moved(3600, "h3")]),
                with(vm("b", "h1", 1500), |v| v.history = vec![moved(3600, "h3")]),
                with(vm("c", "h1", 1500), |v| v.history = vec![moved(3600, "h3")]),
            ],
            settings: level3(),
            want: vec![("a", "h1", "h2")],
            says: "no further move gains enough",
        },
    ]
}

#[test]
fn planner_table() {
    for c in cases() {
        let p = plan(&c.hosts, &c.vms, &c.settings, now());
        let got: Vec<(&str, &str, &str)> = p
            .moves
            .iter()
            .map(|m| (m.vm.as_str(), m.from.as_str(), m.to.as_str()))
            .collect();
        assert_eq!(got, c.want, "{}: {}", c.name, p.message);
        assert!(
            p.message.contains(c.says),
            "{}: message {:?} lacks {:?}",
            c.name,
            p.message,
            c.says
        );
        // Every move gains at least its cost and the minimum, and the imbalance only falls.
        let mut before = p.imbalance;
        for m in &p.moves {
            assert!(
                m.gain >= m.cost && m.gain >= c.settings.min_gain,
                "{}",
                c.name
            );
            assert!(m.after < before, "{}", c.name);
            before = m.after;
        }
        assert!((p.expected - before).abs() < 1e-9, "{}", c.name);
        // The lower bound never exceeds what the planner needed when it reached the target.
        if p.expected <= p.target {
            assert!(
                p.lower_bound <= p.moves.len(),
                "{}: lower bound {} > {} moves",
                c.name,
                p.lower_bound,
                p.moves.len()
            );
        }
        // No ping-pong: once the moves are made, the same measurements plan nothing more when
        // the target was reached, and nothing moves back, even once the cooldown is over.
        let after = applied(&c.vms, &p.moves, now());
        let later = now().as_second() + c.settings.cooldown.as_secs() as i64 + 1;
        let later = Timestamp::from_second(later).expect("a valid time");
        let again = plan(&c.hosts, &after, &c.settings, later);
        if p.expected <= p.target {
            assert!(
                again.moves.is_empty(),
                "{}: a second run moves {:?}",
                c.name,
                again.moves
            );
        }
        for m in &again.moves {
            assert!(
                !p.moves.iter().any(|x| x.vm == m.vm && x.from == m.to),
                "{}: {} moves back",
                c.name,
                m.vm
            );
        }
    }
}

/// A balancing move `secs` ago from host `from`.
fn moved(secs: i64, from: &str) -> PastMove {
    PastMove {
        at: ago(secs),
        from: from.into(),
    }
}

/// The VMs with the moves made at `at`, each remembering the host it left.
fn applied(vms: &[Vm], moves: &[Move], at: Timestamp) -> Vec<Vm> {
    vms.iter()
        .map(|v| {
            let mut v = v.clone();
            if let Some(m) = moves.iter().find(|m| m.vm == v.name) {
                v.placed.host = m.to.clone();
                v.history.push(PastMove {
                    at,
                    from: m.from.clone(),
                });
            }
            v
        })
        .collect()
}

#[test]
fn imbalance_is_the_root_of_summed_variances_in_points() {
    let hosts = vec![host("h1"), host("h2")];
    // CPU 50 % and 0 %: standard deviation 25 points; memory 512Mi/16Gi and 0: 1.5625 points.
    let vms = vec![vm("a", "h1", 2000)];
    let want = 100.0 * (0.25f64 * 0.25 + 0.015625 * 0.015625).sqrt();
    assert!((imbalance(&hosts, &vms) - want).abs() < 1e-9);
    assert_eq!(imbalance(&[], &[]), 0.0);
}

#[test]
fn thresholds_go_from_conservative_to_aggressive() {
    let levels: Vec<Settings> = (1..=5).map(|l| Settings::level(l, 5, 2, 2)).collect();
    for w in levels.windows(2) {
        assert!(w[1].target < w[0].target);
        assert!(w[1].cost_per_gib < w[0].cost_per_gib);
        assert!(w[1].min_gain < w[0].min_gain);
    }
    assert_eq!(Settings::level(0, 1, 1, 1), Settings::level(1, 1, 1, 1));
    assert_eq!(Settings::level(9, 1, 1, 1), Settings::level(5, 1, 1, 1));
}

#[test]
fn runs_are_due_an_interval_after_the_last_plus_at_most_a_tenth() {
    let interval = Duration::from_secs(300);
    assert_eq!(next_run(None, interval, 7), None);
    let last = ago(0);
    let plain = next_run(Some(last), interval, 0).expect("a time");
    assert_eq!(plain.as_second() - last.as_second(), 300);
    for seed in [1u64, 499, 999, 1_000_003, u64::MAX] {
        let at = next_run(Some(last), interval, seed).expect("a time");
        let after = at.as_millisecond() - last.as_millisecond();
        assert!(
            (300_000..330_000).contains(&after),
            "seed {seed}: {after} ms"
        );
    }
    assert_ne!(
        next_run(Some(last), interval, 100),
        next_run(Some(last), interval, 900)
    );
}

#[test]
fn a_run_cut_short_by_its_limits_is_continued_below_the_band() {
    // Within the band: a new run moves nothing, a continued one goes down to the target.
    let vms = vec![
        vm("a", "h1", 1200),
        vm("a2", "h1", 800),
        vm("b", "h2", 800),
        vm("c", "h3", 800),
    ];
    let s = level3();
    assert!(plan(&three(), &vms, &s, now()).moves.is_empty());
    let p = plan(&three(), &vms, &s.continuing(), now());
    assert_eq!(p.moves.len(), 1, "{}", p.message);
    assert!(p.expected <= s.target);
}

#[test]
fn a_pools_cooldown_sets_the_no_return_window() {
    let s = level3().with_cooldown(Duration::from_secs(1800));
    assert_eq!(s.cooldown, Duration::from_secs(1800));
    assert_eq!(s.no_return, Duration::from_secs(4 * 1800));
    // A short cooldown still keeps VMs from going back for an hour.
    let short = level3().with_cooldown(Duration::from_secs(60));
    assert_eq!(short.no_return, NO_RETURN_MIN);
    assert!((s.trigger() - (s.target + s.band)).abs() < 1e-9);
    for l in 1..=5 {
        let s = Settings::level(l, 1, 1, 1);
        assert!(s.band > 0.0 && s.band < s.target, "level {l}");
    }
}

#[test]
fn lower_bound_of_three_busy_vms_on_one_host_is_two() {
    let vms = vec![
        vm("a", "h1", 1500),
        vm("b", "h1", 1500),
        vm("c", "h1", 1500),
    ];
    let s = level3();
    assert_eq!(lower_bound(&three(), &vms, &s, now()), 2);
    // Already within the target: zero.
    let lax = Settings { target: 80.0, ..s };
    assert_eq!(lower_bound(&three(), &vms, &lax, now()), 0);
}

/// A deterministic pseudo-random pool (xorshift): `hosts` hosts of 16 CPUs, `per_host` VMs each
/// on average, the first tenth of the hosts twice as busy, some VMs pinned, in cooldown, back
/// from a host lately, with node selectors, anti-affinity or affinity.
fn random_pool(seed: u64, hosts: usize, per_host: usize) -> (Vec<Host>, Vec<Vm>) {
    let mut x = seed.max(1);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let hs: Vec<Host> = (0..hosts)
        .map(|i| {
            with_host(host(&format!("h{i:04}")), |h| {
                h.capacity = Usage {
                    cpu_millis: 16_000,
                    memory: 128 * GI,
                };
                h.candidate.allocatable = Some(Amount {
                    cpus: 64,
                    memory: 128 * GI,
                });
                h.candidate.labels = label("rack", if i % 2 == 0 { "a" } else { "b" });
            })
        })
        .collect();
    let mut vms = Vec::new();
    for i in 0..hosts * per_host {
        let h = (next() as usize) % hosts;
        let busy = if h < hosts / 10 { 2 } else { 1 };
        let mut v = vm(
            &format!("vm{i:05}"),
            &hs[h].candidate.name,
            busy * (next() % 1500),
        );
        v.demand.memory = (next() % 4096) * MI;
        v.copy_bytes = v.demand.memory;
        let elsewhere = &hs[(h + 1) % hosts].candidate.name;
        match next() % 20 {
            0 => v.pinned = Some("evictionStrategy None".into()),
            1 => v.node_selector = hs[h].candidate.labels.clone(),
            2 => v.set_anti_affinity(vec![term("app", &format!("vm{:05}", i / 2), true)]),
            3 => v.affinity = vec![term("app", &format!("vm{:05}", i / 3), true)],
            4 => v.history = vec![moved(60, elsewhere)],
            5 => v.history = vec![moved(3 * 3600, elsewhere)],
            _ => {}
        }
        vms.push(v);
    }
    (hs, vms)
}

#[test]
fn random_pools_keep_every_rule() {
    for seed in 1..40u64 {
        let (hosts, vms) = random_pool(seed, 12, 6);
        let s = Settings::level((seed % 5) as i32 + 1, 8, 3, 3);
        let p = plan(&hosts, &vms, &s, now());
        assert!(p.moves.len() <= s.max_moves);
        let mut out: HashMap<&str, usize> = HashMap::new();
        let mut inn: HashMap<&str, usize> = HashMap::new();
        let mut pool = vms.clone();
        for m in &p.moves {
            *out.entry(m.from.as_str()).or_default() += 1;
            *inn.entry(m.to.as_str()).or_default() += 1;
            let v = pool.iter().find(|v| v.name == m.vm).expect("known VM");
            assert!(
                v.pinned.is_none(),
                "seed {seed}: pinned VM {} moved",
                v.name
            );
            assert_eq!(
                v.placed.host, m.from,
                "seed {seed}: a VM moves once per run"
            );
            assert!(
                v.history
                    .iter()
                    .all(|h| h.at.as_second() < ago(s.cooldown.as_secs() as i64).as_second()),
                "seed {seed}: {} moved in its cooldown",
                v.name
            );
            assert!(
                v.history.iter().all(|h| h.from != m.to),
                "seed {seed}: {} went back to {}",
                v.name,
                m.to
            );
            let target = hosts
                .iter()
                .find(|h| h.candidate.name == m.to)
                .expect("host");
            assert!(
                v.node_selector
                    .iter()
                    .all(|(k, val)| target.candidate.labels.get(k) == Some(val)),
                "seed {seed}: nodeSelector broken by {}",
                v.name
            );
            for other in pool.iter().filter(|o| o.placed.host == m.to) {
                let excludes = |a: &Vm, b: &Vm| {
                    a.anti_affinity
                        .iter()
                        .any(|t| t.required && t.selector.matches(&b.placed.labels))
                };
                assert!(
                    !excludes(v, other) && !excludes(other, v),
                    "seed {seed}: anti-affinity broken by {}",
                    v.name
                );
            }
            pool = applied(&pool, std::slice::from_ref(m), now());
        }
        // Every required affinity that held before the moves holds after them.
        let partnered = |vms: &[Vm], v: &Vm, t: &Term| {
            vms.iter().any(|o| {
                o.name != v.name
                    && o.placed.host == v.placed.host
                    && t.selector.matches(&o.placed.labels)
            })
        };
        for (before, after) in vms.iter().zip(&pool) {
            for t in before.affinity.iter().filter(|t| t.required) {
                if partnered(&vms, before, t) {
                    assert!(
                        partnered(&pool, after, t),
                        "seed {seed}: {} lost its partner",
                        before.name
                    );
                }
            }
        }
        assert!(
            out.values().all(|&n| n <= s.max_out_per_host),
            "seed {seed}"
        );
        assert!(inn.values().all(|&n| n <= s.max_in_per_host), "seed {seed}");
        assert!(p.expected <= p.imbalance, "seed {seed}");
    }
}
