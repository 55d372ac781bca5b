//! Benchmark: how long the controller takes from a VirtualMachine being created to its domain
//! running (the controller's share: guest boot excluded) and to `Ready`, and how many reconciles,
//! API writes and libvirt calls a VM costs in steady state.
//!
//! Needs a cluster (`KUBECONFIG`; `e2e/bench.sh` starts the in-repo API stand-in when unset) and
//! root for a lab host. Run: `e2e/bench.sh` (or `FERRY_E2E=1 cargo bench --bench lifecycle`).

#[path = "../tests/support/mod.rs"]
mod support;

use ferry::api::VirtualMachine;
use futures::StreamExt;
use kube::api::DeleteParams;
use kube::runtime::watcher;
use serde_json::json;
use std::time::{Duration, Instant};
use support::cluster::{self, Cluster, metric_sum, wait_for};
use support::hosts::running;
use support::lab;
use support::objects::is_ready as ready;

const VMS: usize = 5;
const STEADY: Duration = Duration::from_secs(120);

fn vm(name: &str, lab: &lab::Lab) -> serde_json::Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"hostPool": "lab", "cpu": {"cores": 1}, "memory": "128Mi",
                 "disks": [{"name": "root", "image": lab.golden}],
                 "boot": {"kernel": lab.kernel, "initrd": lab.initrd, "cmdline": lab.cmdline}}
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    if !cluster::enabled() || !lab::Lab::should_run("lifecycle bench") {
        eprintln!(
            "the lifecycle benchmark needs FERRY_E2E=1, KUBECONFIG and root: run e2e/bench.sh"
        );
        return;
    }
    let lab = lab::Lab::up(1).expect("lab");
    let mut c = Cluster::new("ferry-bench").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, "ferry.dev/bench-hypervisor")
        .await;
    let ctl = c.controller("bench");
    c.apply::<ferry::api::HostPool>(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool", "metadata": {"name": "lab"},
        "spec": {"nodeSelector": {"matchLabels": {"ferry.dev/bench-hypervisor": "true"}},
                 "libvirt": {"uriTemplate": lab.hosts[0].unix_uri},
                 "storage": {"pool": "ferry", "path": lab.pool_dir},
                 "console": {"logDirectory": lab.console_dir},
                 "boot": {"directories": [support::objects::boot_dir(&lab)]}}
    }))
    .await;
    let vms = c.vms();
    let ns = c.namespace.clone();

    // Warm-up: the first domain on a fresh host builds libvirt's QEMU capability cache.
    c.apply::<VirtualMachine>(vm("warmup", &lab)).await;
    wait_for("warm-up VM Ready", Duration::from_secs(180), || {
        let vms = vms.clone();
        async move { vms.get("warmup").await.ok().filter(ready).map(|_| ()) }
    })
    .await;
    let _ = vms.delete("warmup", &DeleteParams::default()).await;
    c.wait_vm_gone("warmup", Duration::from_secs(120)).await;

    let mut to_running = Vec::new();
    let mut to_ready = Vec::new();
    for i in 0..VMS {
        let name = format!("bench-{i}");
        let domain = format!("{ns}_{name}");
        let t0 = Instant::now();
        c.apply::<VirtualMachine>(vm(&name, &lab)).await;
        let mut t_run = None;
        let deadline = t0 + Duration::from_secs(120);
        loop {
            if t_run.is_none() && running(&lab, &lab.hosts[0].name).contains(&domain) {
                t_run = Some(t0.elapsed());
            }
            if let Ok(v) = vms.get(&name).await
                && ready(&v)
            {
                to_ready.push(t0.elapsed().as_secs_f64());
                t_run.get_or_insert(t0.elapsed());
                break;
            }
            assert!(Instant::now() < deadline, "VM {name} not Ready in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        to_running.push(t_run.map(|d| d.as_secs_f64()).unwrap_or_default());
    }

    // Steady state: nothing changes for STEADY; count what the controller does anyway.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = ctl.http_get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let writes = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let w = writes.clone();
    let watch_api = vms.clone();
    let watch = tokio::spawn(async move {
        let mut s = watcher(watch_api, watcher::Config::default()).boxed();
        let mut initial_done = false;
        while let Some(Ok(ev)) = s.next().await {
            match ev {
                watcher::Event::InitDone => initial_done = true,
                watcher::Event::Apply(o) | watcher::Event::Delete(o) if initial_done => {
                    if let Ok(mut w) = w.lock() {
                        w.push(kube::ResourceExt::name_any(&o));
                    }
                }
                _ => {}
            }
        }
    });
    let events_api: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(c.client.clone(), &ns);
    let reasons = |l: Vec<k8s_openapi::api::events::v1::Event>| -> Vec<String> {
        l.into_iter()
            .map(|e| e.reason.unwrap_or_default())
            .collect()
    };
    let events_before = events_api
        .list(&Default::default())
        .await
        .map(|l| reasons(l.items))
        .unwrap_or_default();
    tokio::time::sleep(STEADY).await;
    watch.abort();
    let events_after = events_api
        .list(&Default::default())
        .await
        .map(|l| reasons(l.items))
        .unwrap_or_default();
    let new_events: Vec<String> = events_after
        .iter()
        .skip(events_before.len())
        .cloned()
        .collect();
    let written = writes.lock().map(|w| w.clone()).unwrap_or_default();
    let after = ctl.http_get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let minutes = STEADY.as_secs_f64() / 60.0;
    let reconciles = (metric_sum(
        &after,
        "ferry_reconciles_total{controller=\"virtualmachine\"}",
    ) - metric_sum(
        &before,
        "ferry_reconciles_total{controller=\"virtualmachine\"}",
    )) / minutes
        / VMS as f64;
    let calls = (metric_sum(&after, "ferry_libvirt_call_duration_seconds_count")
        - metric_sum(&before, "ferry_libvirt_call_duration_seconds_count"))
        / minutes;

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| VMs | {VMS} (created one after another, 128 MiB, TCG: {}) |",
        lab.virt_type
    );
    println!(
        "| created → domain running, median (min–max) | {:.2} s ({:.2}–{:.2}) |",
        median(to_running.clone()),
        to_running.iter().cloned().fold(f64::MAX, f64::min),
        to_running.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "| created → Ready, median (min–max) | {:.2} s ({:.2}–{:.2}) |",
        median(to_ready.clone()),
        to_ready.iter().cloned().fold(f64::MAX, f64::min),
        to_ready.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "| steady state: VirtualMachine writes in {}s | {} {:?} |",
        STEADY.as_secs(),
        written.len(),
        written
    );
    println!(
        "| steady state: Events created in {}s | {} {:?} |",
        STEADY.as_secs(),
        new_events.len(),
        new_events
    );
    println!("| steady state: reconciles per VM per minute | {reconciles:.2} |");
    println!(
        "| steady state: libvirt calls per minute (whole host, {VMS} VMs + pool probe) | {calls:.1} |"
    );

    for i in 0..VMS {
        let _ = vms
            .delete(&format!("bench-{i}"), &DeleteParams::default())
            .await;
    }
    let vms2 = vms.clone();
    wait_for("bench VMs deleted", Duration::from_secs(120), || {
        let vms = vms2.clone();
        async move {
            vms.list(&Default::default())
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        }
    })
    .await;
    drop(ctl);
}
