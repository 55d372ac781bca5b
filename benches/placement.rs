//! Benchmark: placement decisions per second of the pure planner (`plan::placement::choose_host`),
//! in process, for pools of 100 hosts / 1,000 VMs and 500 hosts / 10,000 VMs.
//!
//! Each decision places one more VM into a pool that already holds all the others (the last and
//! most expensive decision of filling the pool), with and without a required anti-affinity and a
//! preferred affinity term. No Kubernetes and no libvirt: what the controller's store reads and
//! API writes cost is measured end to end by `benches/scale.rs`.
//!
//! Run: `cargo bench --bench placement` (a few seconds).

use ferry::api::host_pool::PlacementStrategy;
use ferry::api::virtual_machine::VmAffinityTerm;
use ferry::plan::capacity::Amount;
use ferry::plan::placement::{Candidate, Placed, Request, Term, choose_host, terms};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

const GI: u64 = 1 << 30;

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn hosts(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            name: format!("host-{i:04}"),
            reachable: true,
            node_ready: true,
            cordoned: false,
            labels: labels(&[
                ("kubernetes.io/hostname", format!("host-{i:04}")),
                ("zone", format!("z{}", i % 4)),
            ]),
            allocatable: Some(Amount {
                cpus: 256,
                memory: 1024 * GI,
            }),
            foreign: Amount::default(),
            measured: None,
        })
        .collect()
}

/// `n` VMs spread round-robin over `hosts`, in 50 apps.
fn placed(n: usize, hosts: usize) -> Vec<Placed> {
    (0..n)
        .map(|i| Placed {
            uid: format!("uid-{i}"),
            host: format!("host-{:04}", i % hosts),
            labels: labels(&[("app", format!("app-{}", i % 50))]),
            need: Amount {
                cpus: 1 + (i % 4) as u64,
                memory: (1 + (i % 8) as u64) * GI,
            },
            excludes: vec![],
        })
        .collect()
}

fn term(app: &str, required: bool) -> Vec<Term> {
    let t = VmAffinityTerm {
        label_selector: LabelSelector {
            match_labels: Some(labels(&[("app", app.to_string())])),
            ..Default::default()
        },
        required: Some(required),
        weight: (!required).then_some(50),
    };
    terms(&[t], "affinity").expect("valid selector")
}

/// Decisions per second over at least `budget` of wall time.
fn rate(budget: Duration, mut decide: impl FnMut() -> Result<String, String>) -> (f64, usize) {
    // One untimed decision warms caches and checks that a host is found.
    decide().expect("a host fits");
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < budget || n < 3 {
        black_box(decide().expect("a host fits"));
        n += 1;
    }
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters nothing here.
    let budget = Duration::from_secs(2);
    println!("| hosts | VMs placed | terms | decisions/s | per decision |");
    println!("|---|---|---|---|---|");
    for (h, v) in [(100usize, 1_000usize), (500, 10_000)] {
        let candidates = hosts(h);
        let already = placed(v, h);
        let none: Vec<Term> = Vec::new();
        let selector = BTreeMap::new();
        let anti = term("app-7", true);
        let new_labels = labels(&[("app", "app-new".to_string())]);
        let pref = term("app-3", false);
        for (what, affinity, anti_affinity) in [
            ("none", &none, &none),
            ("required anti-affinity + preferred affinity", &pref, &anti),
        ] {
            let req = Request {
                uid: "new-vm",
                labels: &new_labels,
                need: Amount {
                    cpus: 2,
                    memory: 4 * GI,
                },
                node_selector: &selector,
                affinity,
                anti_affinity,
            };
            let (per_s, n) = rate(budget, || {
                choose_host(&candidates, &already, &req, PlacementStrategy::Spread)
            });
            println!(
                "| {h} | {v} | {what} | {per_s:.0} | {:.3} ms ({n} runs) |",
                1000.0 / per_s
            );
        }
    }
}
