//! Balancing, run by the HostPool controller: three busy VMs on one of three hosts. `Full`
//! creates the migrations the planner proposes (reason `balance`, Events on VM and pool) and,
//! once they are made, moves nothing more; `Manual` only recommends them in the status.

use super::support::{World, host_uri, node, pool};
use ferry::api::balancing::REBALANCE_ANNOTATION;
use ferry::api::{HostPool, VirtualMachine};
use ferry::controller::host_pool::reconcile;
use ferry::hypervisor::fake::{FakeConnector, FakeHost, sample_definition};
use ferry::plan::domain::{DomainState, ShutOffReason};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const NAMES: [&str; 3] = ["a", "b", "c"];

fn uid(name: &str) -> String {
    format!(
        "00000000-0000-4000-8000-00000000000{}",
        name.as_bytes()[0] - b'a' + 1
    )
}

/// VM `name`, running on `host`.
fn busy_vm(name: &str, host: &str) -> VirtualMachine {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "apps", "uid": uid(name), "generation": 1,
                     "finalizers": [ferry::api::FINALIZER]},
        "spec": {"hostPool": "lab", "cpu": {"cores": 1}, "memory": "128Mi",
                 "disks": [{"name": "root", "image": "tiny.qcow2"}]},
        "status": {"phase": "Running", "host": host, "domainUUID": uid(name)}
    }))
    .expect("vm")
}

fn balanced_pool(automation: &str) -> HostPool {
    let mut p = pool(3);
    p.spec.balancing = Some(
        serde_json::from_value(json!({"automation": automation, "intervalSeconds": 600,
                                      "vmCooldownSeconds": 600}))
        .expect("balancing"),
    );
    p
}

/// The pool with the `ferry.dev/rebalance` annotation set to `value`.
fn asking(p: &HostPool, value: &str) -> HostPool {
    let mut p = p.clone();
    p.metadata.annotations = Some([(REBALANCE_ANNOTATION.to_string(), value.to_string())].into());
    p
}

/// Three hosts, the three VMs running on h1.
fn world(p: &HostPool) -> (World, Vec<FakeHost>) {
    let fakes = FakeConnector::new();
    let hosts: Vec<FakeHost> = (1..=3).map(|i| fakes.add_host(&host_uri(i))).collect();
    for h in &hosts {
        // Statistics are supported on every host, busy or not.
        h.set_counters("none", 0, 0);
    }
    for n in NAMES {
        let def = sample_definition(
            "apps",
            n,
            &uid(n),
            &format!("/var/lib/ferry/images/{n}.qcow2"),
        );
        hosts[0]
            .add_domain(&def, DomainState::Running)
            .expect("domain");
        hosts[0].set_counters(&uid(n), 0, 100 << 20);
    }
    let vms = NAMES.iter().map(|n| busy_vm(n, "h1")).collect();
    let nodes = (1..=3).map(|i| node(i, true)).collect();
    let w = World::new(fakes, vec![p.clone()], nodes, vms, vec![], vec![]);
    (w, hosts)
}

/// Each VM uses three CPUs: its CPU time is three times the time since `start`.
fn cpu_time(start: std::time::Instant) -> u64 {
    (start.elapsed().as_nanos() * 3) as u64
}

/// Let the next probe's sample fall in a later second, each VM in `placed` (host index, name)
/// having used three CPUs meanwhile.
async fn tick(hosts: &[FakeHost], placed: &[(usize, &str)], start: std::time::Instant) {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // One figure for all: equal loads, so the planner's tie-break (by name) decides the order.
    let used = cpu_time(start);
    for (h, n) in placed {
        hosts[*h].set_counters(&uid(n), used, 100 << 20);
    }
}

fn migrations_created(w: &World) -> Vec<serde_json::Value> {
    w.server
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/virtualmachinemigrations"))
        .map(|s| s.body)
        .collect()
}

#[tokio::test]
async fn full_moves_two_of_three_busy_vms_once_and_then_nothing() {
    let p = balanced_pool("Full");
    let (mut w, hosts) = world(&p);
    let start = std::time::Instant::now();
    let on_h1 = [(0, "a"), (0, "b"), (0, "c")];
    // The first probe has one sample of each domain: no CPU figure yet, no run.
    reconcile(Arc::new(p.clone()), w.ctx.clone())
        .await
        .expect("reconcile");
    let st = w.server.get(&p).status.expect("status");
    let b = st.balancing.expect("balancing status");
    assert!(b.last_run.is_none());
    assert!(
        b.message.as_deref().is_some_and(
            |m| m.contains("waiting for a second load sample of 3 domain(s) on host h1")
        ),
        "{:?}",
        b.message
    );
    assert!(migrations_created(&w).is_empty());

    tick(&hosts, &on_h1, start).await;
    reconcile(Arc::new(p.clone()), w.ctx.clone())
        .await
        .expect("reconcile");
    let created = migrations_created(&w);
    let moves: Vec<(String, String)> = created
        .iter()
        .map(|m| {
            assert_eq!(m["spec"]["reason"], "balance");
            assert_eq!(m["metadata"]["labels"]["ferry.dev/balance"], "lab");
            assert_eq!(m["metadata"]["annotations"]["ferry.dev/balance-from"], "h1");
            (
                m["spec"]["vmName"].as_str().unwrap_or_default().to_string(),
                m["spec"]["targetHost"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        [
            ("a".to_string(), "h2".to_string()),
            ("b".to_string(), "h3".to_string())
        ]
    );
    // An Event on each VM moved and on the pool, with the move's numbers. (The recorder
    // folds a second Event of the same reason on the pool into the first one's series.)
    let events: Vec<(String, String, String)> = w
        .server
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/events"))
        .filter(|s| s.body["reason"] == "Balancing")
        .map(|s| {
            (
                s.body["regarding"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                s.body["regarding"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                s.body["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (kind, name) in [
        ("VirtualMachine", "a"),
        ("VirtualMachine", "b"),
        ("HostPool", "lab"),
    ] {
        let e = events
            .iter()
            .find(|e| e.0 == kind && e.1 == name)
            .unwrap_or_else(|| panic!("no Balancing Event on {kind} {name}: {events:?}"));
        assert!(
            e.2.contains("gain ") && e.2.contains("to copy; pool imbalance"),
            "{}",
            e.2
        );
    }
    let b = w
        .server
        .get(&p)
        .status
        .and_then(|s| s.balancing)
        .expect("balancing");
    assert_eq!(b.planned, Some(2));
    assert!(
        b.lower_bound.is_some_and(|l| (1..=2).contains(&l)),
        "{:?}",
        b.lower_bound
    );
    assert_eq!(b.recommendations.len(), 2);
    assert!(b.recommendations.iter().all(|r| r.migration.is_some()));
    assert_eq!(b.recent_moves.len(), 2);
    assert!(
        b.message
            .as_deref()
            .is_some_and(|m| m.contains("2 migration(s) created")),
        "{:?}",
        b.message
    );

    // Not due again for an interval: nothing new.
    reconcile(Arc::new(p.clone()), w.ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(migrations_created(&w).len(), 2);

    // The migrations were made: a on h2, b on h3.
    for (n, to) in [("a", 1), ("b", 2)] {
        hosts[0].set_state(&uid(n), DomainState::ShutOff(ShutOffReason::Migrated));
        let def = sample_definition(
            "apps",
            n,
            &uid(n),
            &format!("/var/lib/ferry/images/{n}.qcow2"),
        );
        hosts[to]
            .add_domain(&def, DomainState::Running)
            .expect("domain");
        hosts[to].set_counters(&uid(n), cpu_time(start), 100 << 20);
        let moved = busy_vm(n, &format!("h{}", to + 1));
        w.server.hold(&moved);
        w.refresh(&moved);
    }
    let placed = [(0, "c"), (1, "a"), (2, "b")];
    tick(&hosts, &placed, start).await;
    reconcile(Arc::new(p.clone()), w.ctx.clone())
        .await
        .expect("reconcile");
    // Asked for a run at once, with every VM measured on its new host: nothing moves, and
    // again later.
    for ask in ["1", "2"] {
        tick(&hosts, &placed, start).await;
        reconcile(Arc::new(asking(&p, ask)), w.ctx.clone())
            .await
            .expect("reconcile");
        let b = w
            .server
            .get(&p)
            .status
            .and_then(|s| s.balancing)
            .expect("balancing");
        assert_eq!(b.requested.as_deref(), Some(ask), "{:?}", b.message);
        assert!(
            b.message
                .as_deref()
                .is_some_and(|m| m.contains("nothing to move")),
            "{:?}",
            b.message
        );
        assert!(b.recommendations.is_empty());
    }
    assert_eq!(
        migrations_created(&w).len(),
        2,
        "nothing moved after the first run"
    );
}

#[tokio::test]
async fn manual_recommends_the_moves_without_making_them() {
    let p = balanced_pool("Manual");
    let (w, hosts) = world(&p);
    let start = std::time::Instant::now();
    let on_h1 = [(0, "a"), (0, "b"), (0, "c")];
    reconcile(Arc::new(p.clone()), w.ctx.clone())
        .await
        .expect("reconcile");
    tick(&hosts, &on_h1, start).await;
    reconcile(Arc::new(p.clone()), w.ctx.clone())
        .await
        .expect("reconcile");
    assert!(migrations_created(&w).is_empty());
    assert!(!w.server.event_reasons().iter().any(|r| r == "Balancing"));
    let b = w
        .server
        .get(&p)
        .status
        .and_then(|s| s.balancing)
        .expect("balancing");
    let recs: Vec<(&str, &str, &str, &str)> = b
        .recommendations
        .iter()
        .map(|r| {
            (
                r.namespace.as_str(),
                r.vm.as_str(),
                r.from.as_str(),
                r.to.as_str(),
            )
        })
        .collect();
    assert_eq!(recs, [("apps", "a", "h1", "h2"), ("apps", "b", "h1", "h3")]);
    assert!(
        b.recommendations
            .iter()
            .all(|r| r.migration.is_none() && r.memory == "100Mi")
    );
    assert!(b.recent_moves.is_empty());
    assert!(
        b.message
            .as_deref()
            .is_some_and(|m| m.contains("kubectl ferry recommendations lab apply")),
        "{:?}",
        b.message
    );
}

#[tokio::test]
async fn full_stays_within_the_pools_migration_limits() {
    // One migration may leave a host at once: the run makes one of the two planned moves and
    // says so; the next run carries on once it has ended.
    let mut p = balanced_pool("Full");
    p.spec.migration =
        Some(serde_json::from_value(json!({"maxOutboundPerHost": 1})).expect("policy"));
    let (w, hosts) = world(&p);
    let start = std::time::Instant::now();
    let on_h1 = [(0, "a"), (0, "b"), (0, "c")];
    reconcile(Arc::new(p.clone()), w.ctx.clone())
        .await
        .expect("reconcile");
    tick(&hosts, &on_h1, start).await;
    reconcile(Arc::new(p.clone()), w.ctx.clone())
        .await
        .expect("reconcile");
    let created = migrations_created(&w);
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["spec"]["vmName"], "a");
    let b = w
        .server
        .get(&p)
        .status
        .and_then(|s| s.balancing)
        .expect("balancing");
    assert_eq!(b.planned, Some(2));
    assert_eq!(b.recommendations.len(), 1);
    assert!(
        b.message
            .as_deref()
            .is_some_and(|m| m.contains("(2 in the whole plan; the migration limits allow 1 now)")),
        "{:?}",
        b.message
    );
}
