//! Load balancing on the lab: three busy guests (the tiny guest's `ferry.busy_pct`) packed on one
//! of three hosts. `Full` brings the pool within its target with the migrations the planner
//! planned and then moves nothing for several periods; `Manual` recommends the moves and
//! `kubectl ferry recommendations apply` carries them out.

use crate::support::cluster::{self, Cluster, wait_for};
use crate::support::hosts::console;
use crate::support::lab;
use crate::support::objects::{
    BOOT, LABEL, host_of, pool_manifest, ready_reason, vm_manifest, wait_vm,
};
use ferry::api::balancing::{BALANCE_LABEL, BalancingStatus};
use ferry::api::{MigrationPhase, VirtualMachine};
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const VMS: [&str; 3] = ["busy-a", "busy-b", "busy-c"];

/// Seconds between balancing runs in these tests.
const INTERVAL: u64 = 20;

/// Three lab hosts in pool `lab` (Pack: new VMs fill one host), the three busy VMs running on
/// one of them, and a controller.
async fn packed(prefix: &str) -> (lab::Lab, Cluster, cluster::ControllerProcess) {
    let pool = |lab: &lab::Lab| {
        let mut p = pool_manifest("lab", lab);
        // The lab hosts have 2 CPUs each; the three guests fit one.
        p["spec"]["capacity"] = json!({"cpuOvercommit": "4"});
        p["spec"]["placementStrategy"] = json!("Pack");
        p
    };
    let (lab, c, ctl) =
        crate::support::migration::migration_lab(prefix, 3, LABEL, pool, json!({})).await;
    for name in VMS {
        let mut vm = vm_manifest(name, "lab", &lab, "Always");
        // 60 % of a CPU each: together more than one lab host's share of the machine.
        vm["spec"]["boot"]["cmdline"] = json!(format!("{} ferry.busy_pct=60", lab.cmdline));
        c.apply::<VirtualMachine>(vm).await;
    }
    let mut hosts = BTreeSet::new();
    for name in VMS {
        let vm = wait_vm(&c, name, "Ready", BOOT, |vm| {
            ready_reason(vm) == Some(("True".into(), "Running".into()))
        })
        .await;
        hosts.insert(host_of(&vm).expect("host"));
        let path = console(&lab, &c.namespace, name);
        wait_for(&format!("{name} busy"), Duration::from_secs(120), || {
            let path = path.clone();
            async move {
                lab::console_log(&path)
                    .contains("FERRY-BUSY 60% of a CPU")
                    .then_some(())
            }
        })
        .await;
    }
    assert_eq!(
        hosts.len(),
        1,
        "Pack puts the three VMs on one host: {hosts:?}"
    );
    (lab, c, ctl)
}

/// Turn balancing on with `automation` (threshold 4: target 8 points, band 2: the lab's busy
/// guests share the machine's two cores with everything else, so their load is modest), and
/// placement back to Spread.
async fn balance(c: &Cluster, automation: &str) {
    c.pools()
        .patch(
            "lab",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"placementStrategy": "Spread", "balancing": {
                "automation": automation, "threshold": 4, "intervalSeconds": INTERVAL,
                "vmCooldownSeconds": 600}}}),
            ),
        )
        .await
        .expect("enable balancing");
}

async fn balancing_status(c: &Cluster) -> Option<BalancingStatus> {
    c.pools().get("lab").await.ok()?.status?.balancing
}

/// The balancing migrations of the pool: (name, VM, phase).
async fn balance_migrations(c: &Cluster) -> Vec<(String, String, Option<MigrationPhase>)> {
    c.migrations()
        .list(&ListParams::default().labels(BALANCE_LABEL))
        .await
        .expect("list migrations")
        .items
        .into_iter()
        .map(|m| {
            let phase = m.phase();
            (
                m.metadata.name.clone().unwrap_or_default(),
                m.spec.vm_name,
                phase,
            )
        })
        .collect()
}

/// The hosts the VMs run on, once all are Running and none is migrating.
async fn spread(c: &Cluster) -> Option<BTreeSet<String>> {
    let mut hosts = BTreeSet::new();
    for name in VMS {
        let vm = c.vms().get(name).await.ok()?;
        (ready_reason(&vm) == Some(("True".into(), "Running".into()))).then_some(())?;
        hosts.insert(host_of(&vm)?);
    }
    Some(hosts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn full_balancing_spreads_busy_vms_and_then_holds_still() {
    assert!(cluster::enabled(), "set FERRY_E2E=1 and KUBECONFIG");
    let (_lab, c, _ctl) = packed("ferry-e2e-bal").await;
    let t0 = Instant::now();
    let enabled = k8s_openapi::jiff::Timestamp::now();
    balance(&c, "Full").await;
    // The first run that moves: how many moves the planner planned, and its lower bound.
    let first = wait_for(
        "a balancing run that migrates",
        Duration::from_secs(240),
        || {
            let c = &c;
            async move {
                balancing_status(c)
                    .await
                    .filter(|b| b.planned.is_some_and(|p| p > 0))
            }
        },
    )
    .await;
    let planned = first.planned.unwrap_or_default() as usize;
    eprintln!(
        "first run after {:.1} s: {} (planned {planned}, lower bound {:?})",
        t0.elapsed().as_secs_f64(),
        first.message.clone().unwrap_or_default(),
        first.lower_bound
    );
    assert!(
        first.lower_bound.is_some_and(|l| l as usize <= planned),
        "{first:?}"
    );
    // Every balancing migration ends well, and a later run finds the pool within its target.
    let first_run = first.last_run.clone();
    let settled = wait_for("balance reached", Duration::from_secs(400), || {
        let c = &c;
        let first_run = first_run.clone();
        async move {
            let ms = balance_migrations(c).await;
            if ms.iter().any(|m| m.2 != Some(MigrationPhase::Succeeded)) {
                return None;
            }
            spread(c).await?;
            let b = balancing_status(c).await?;
            (b.last_run > first_run && b.planned == Some(0)).then_some(b)
        }
    })
    .await;
    let made = balance_migrations(&c).await;
    let ended = c
        .migrations()
        .list(&ListParams::default().labels(BALANCE_LABEL))
        .await
        .expect("list migrations")
        .items
        .iter()
        .filter_map(|m| m.status.as_ref()?.end_time.clone())
        .max()
        .expect("an end time");
    let hosts = spread(&c).await.expect("every VM running");
    eprintln!(
        "balanced: {} migration(s) ({planned} planned, lower bound {:?}), the last ended {:.1} s after balancing was turned on; imbalance {} -> {} points (target {}); hosts {hosts:?}; {}",
        made.len(),
        first.lower_bound,
        (ended.0.as_millisecond() - enabled.as_millisecond()) as f64 / 1000.0,
        first.imbalance.clone().unwrap_or_default(),
        settled.imbalance.clone().unwrap_or_default(),
        settled.target.clone().unwrap_or_default(),
        settled.message.clone().unwrap_or_default()
    );
    assert_eq!(made.len(), planned, "{made:?}");
    // Several further periods: runs happen and nothing moves.
    let watch = Instant::now();
    let mut runs = BTreeSet::new();
    while watch.elapsed() < Duration::from_secs(4 * INTERVAL + 10) {
        if let Some(b) = balancing_status(&c).await {
            if let Some(t) = &b.last_run {
                runs.insert(t.0.to_string());
            }
            assert!(b.recommendations.is_empty(), "a later run moved: {b:?}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(runs.len() >= 3, "runs seen while watching: {runs:?}");
    assert_eq!(
        balance_migrations(&c).await.len(),
        planned,
        "nothing moved later"
    );
    assert_eq!(spread(&c).await, Some(hosts));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn manual_balancing_recommends_and_apply_carries_out() {
    assert!(cluster::enabled(), "set FERRY_E2E=1 and KUBECONFIG");
    let (_lab, c, _ctl) = packed("ferry-e2e-balm").await;
    balance(&c, "Manual").await;
    wait_for("recommendations", Duration::from_secs(240), || {
        let c = &c;
        async move {
            balancing_status(c)
                .await
                .filter(|b| !b.recommendations.is_empty())
        }
    })
    .await;
    // Nothing moves on its own.
    tokio::time::sleep(Duration::from_secs(INTERVAL + 5)).await;
    assert!(balance_migrations(&c).await.is_empty());
    // The recommendations of the latest run (a later run may have refreshed them, with other
    // VMs when the measured load moved).
    let b = balancing_status(&c).await.expect("balancing status");
    let (ok, table) = c.plugin(&["recommendations", "lab"]);
    assert!(ok, "{table}");
    eprintln!("{table}");
    for r in &b.recommendations {
        assert!(table.contains(&r.vm) && table.contains(&r.to), "{table}");
    }
    let (ok, out) = c.plugin(&["recommendations", "lab", "apply"]);
    assert!(ok, "{out}");
    eprintln!("{out}");
    assert_eq!(
        out.matches("virtualmachinemigration/").count(),
        b.recommendations.len(),
        "{out}"
    );
    let hosts = wait_for("applied moves made", Duration::from_secs(400), || {
        let c = &c;
        async move {
            let ms = balance_migrations(c).await;
            if ms.is_empty() || ms.iter().any(|m| m.2 != Some(MigrationPhase::Succeeded)) {
                return None;
            }
            spread(c).await
        }
    })
    .await;
    // Each VM shows its new host once ferry confirmed the move there (its domain gone from
    // the source): a moment after the migration reports Succeeded.
    wait_for(
        "each recommended VM on the host it was recommended",
        Duration::from_secs(60),
        || {
            let c = &c;
            let recs = &b.recommendations;
            async move {
                for r in recs {
                    let vm = c.vms().get(&r.vm).await.ok()?;
                    (host_of(&vm).as_deref() == Some(r.to.as_str())).then_some(())?;
                }
                Some(())
            }
        },
    )
    .await;
    eprintln!("after apply: {hosts:?}");
}
