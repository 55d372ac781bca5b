//! Benchmark: run time of the pure balancing planner (`plan::balance::plan`), in process, for a
//! pool of 500 hosts / 10,000 VMs (target: under 100 ms per run), and how many migrations
//! successive runs make until the pool is balanced, against the planner's lower bound.
//!
//! The pool: hosts of 32 CPUs and 256 GiB; VMs of 1–4 vCPUs and 1–8 GiB spread evenly by count,
//! each using up to 1.5 CPUs, except that VMs on the first tenth of the hosts use three times
//! as much. One VM in 20 has `evictionStrategy: None`, one in 20 a `nodeSelector` for its
//! host's rack, one in 20 a required anti-affinity to its app, one in 50 a required affinity.
//! No Kubernetes and no libvirt.
//!
//! Run: `cargo bench --bench balance` (about ten seconds).

use ferry::api::virtual_machine::VmAffinityTerm;
use ferry::plan::balance::{Host, Move, PastMove, Settings, Usage, Vm, lower_bound, plan};
use ferry::plan::capacity::Amount;
use ferry::plan::placement::{Candidate, Placed, Term, terms};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

const GI: u64 = 1 << 30;
const HOSTS: usize = 500;
const VMS: usize = 10_000;

/// A fixed pseudo-random number for `i` (splitmix64's finaliser).
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn one(key: &str, value: String) -> BTreeMap<String, String> {
    BTreeMap::from([(key.to_string(), value)])
}

fn hosts() -> Vec<Host> {
    (0..HOSTS)
        .map(|i| Host {
            candidate: Candidate {
                name: format!("host-{i:04}"),
                reachable: true,
                node_ready: true,
                cordoned: false,
                labels: one("rack", format!("r{}", i % 10)),
                allocatable: Some(Amount {
                    cpus: 128,
                    memory: 256 * GI,
                }),
                foreign: Amount::default(),
                measured: None,
            },
            capacity: Usage {
                cpu_millis: 32_000,
                memory: 256 * GI,
            },
            other: Usage::default(),
        })
        .collect()
}

fn required(key: &str, value: String) -> Vec<Term> {
    let t = VmAffinityTerm {
        label_selector: LabelSelector {
            match_labels: Some(one(key, value)),
            ..Default::default()
        },
        required: Some(true),
        weight: None,
    };
    terms(&[t], "affinity").expect("valid selector")
}

fn vms() -> Vec<Vm> {
    (0..VMS)
        .map(|i| {
            let r = mix(i as u64);
            let h = i % HOSTS;
            let busy = if h < HOSTS / 10 { 3 } else { 1 };
            let gib = 1 + r % 8;
            let app = format!("app-{}", i % 400);
            let mut vm = Vm {
                name: format!("vm-{i:05}"),
                placed: Placed {
                    uid: format!("uid-{i}"),
                    host: format!("host-{h:04}"),
                    labels: one("app", app.clone()),
                    need: Amount {
                        cpus: 1 + (r >> 8) % 4,
                        memory: gib * GI,
                    },
                    excludes: vec![],
                },
                demand: Usage {
                    cpu_millis: busy * ((r >> 16) % 1500),
                    memory: gib * GI * (50 + (r >> 24) % 50) / 100,
                },
                copy_bytes: gib * GI,
                pinned: None,
                node_selector: BTreeMap::new(),
                affinity: vec![],
                anti_affinity: vec![],
                history: vec![],
            };
            match (r >> 32) % 100 {
                0..5 => vm.pinned = Some("evictionStrategy None".into()),
                5..10 => vm.node_selector = one("rack", format!("r{}", h % 10)),
                10..15 => vm.set_anti_affinity(required("app", app)),
                15..17 => vm.affinity = required("app", format!("app-{}", (i + 1) % 400)),
                _ => {}
            }
            vm
        })
        .collect()
}

/// Median, minimum and maximum of the planner's run time over at least `budget` (and 5 runs).
fn timed(budget: Duration, mut run: impl FnMut()) -> (Duration, Duration, Duration, usize) {
    run();
    let start = Instant::now();
    let mut times = Vec::new();
    while start.elapsed() < budget || times.len() < 5 {
        let t = Instant::now();
        run();
        times.push(t.elapsed());
    }
    times.sort();
    (
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len(),
    )
}

/// The VMs after `moves`, each remembering at `at` the host it left.
fn apply(vms: &mut [Vm], moves: &[Move], at: Timestamp) {
    for m in moves {
        if let Some(v) = vms.iter_mut().find(|v| v.name == m.vm) {
            v.placed.host = m.to.clone();
            v.history.push(PastMove {
                at,
                from: m.from.clone(),
            });
        }
    }
}

fn main() {
    let hosts = hosts();
    let vms = vms();
    let now = Timestamp::from_second(1_800_000_000).expect("a valid time");
    println!("{HOSTS} hosts, {VMS} VMs");
    println!(
        "| threshold | moves per run | imbalance | run time, median (min–max) | moves | imbalance after |"
    );
    println!("|---|---|---|---|---|---|");
    for (level, max_moves) in [(3, 5), (3, 50), (5, 50)] {
        let s = Settings::level(level, max_moves, 2, 2);
        let p = plan(&hosts, &vms, &s, now);
        let (median, min, max, n) = timed(Duration::from_secs(2), || {
            black_box(plan(&hosts, &vms, &s, now));
        });
        println!(
            "| {level} | {max_moves} | {:.1} | {:.1} ms ({:.1}–{:.1}, {n} runs) | {} | {:.1} |",
            p.imbalance,
            median.as_secs_f64() * 1e3,
            min.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            p.moves.len(),
            p.expected,
        );
    }
    // Successive runs 5 minutes apart, 5 moves each (the pool's default parallel migrations),
    // until a run moves nothing.
    println!();
    println!(
        "| threshold | lower bound | runs until nothing moves | migrations | imbalance before → after |"
    );
    println!("|---|---|---|---|---|");
    for level in [3, 5] {
        let s = Settings::level(level, 5, 2, 2);
        let bound = lower_bound(&hosts, &vms, &s, now);
        let mut pool = vms.clone();
        let mut at = now;
        let mut runs = 0;
        let mut moved = 0;
        let start = plan(&hosts, &pool, &s, at).imbalance;
        let end = loop {
            // After the first run, each run continues one its limits cut short (no band).
            let s = if runs == 0 { s } else { s.continuing() };
            let p = plan(&hosts, &pool, &s, at);
            runs += 1;
            if p.moves.is_empty() || runs >= 1000 {
                break p.imbalance;
            }
            moved += p.moves.len();
            apply(&mut pool, &p.moves, at);
            at += SignedDuration::from_mins(5);
        };
        println!("| {level} | {bound} | {runs} | {moved} | {start:.1} → {end:.1} |");
    }
}
