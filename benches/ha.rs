//! Benchmark: HA recovery time after a host power loss, through a real IPMI BMC emulator
//! (`ipmi_sim`): fence confirmed, VMs restarted on the survivor. Run by e2e/bench-ha.sh, which
//! sets FERRY_HA_BENCH to runs like `1x3,5x2` (3 runs with 1 VM, 2 runs with 5 VMs). Each run:
//! fresh lab and cluster, VMs running on h1, the BMC powers h1 off (its hook kills h1's guests
//! and daemons) and kubelet goes silent; measured from the power-off: detection and fence
//! confirmation (from the HAPolicy status, 1 s resolution), each domain running on h2 (virsh
//! polled every 100 ms) and each guest's second boot on its console. With
//! `FERRY_HA_BENCH_HANG=1` the host dies without the BMC knowing (it still reports On):
//! detection then waits for the Node NotReady grace and ferry powers the host off through the
//! BMC. With `FERRY_HA_BENCH_SCRIPT=1` the ideal is measured instead: the controller is stopped
//! before the power-off, and right after it a plain script defines and starts the same domains
//! (their XML as ferry defined them on h1) on h2 with `virsh`, 8 at a time.
//!
//! Each ferry run also counts, per VM, the writes that changed its status (a watch from the
//! power-off until every guest booted again and 5 s more), before the restart (the VM controller
//! reporting its host unreachable) and from the restart on (the status names the recovery); the
//! status requests the API server served for VirtualMachines in that time (its
//! `apiserver_request_total`, no-op writes included); and the Events about the VMs, by reason.
//! Needs a cluster (`KUBECONFIG`) and root; prints one `HA-BENCH` line per run.
//! `FERRY_HA_BENCH_KEEP_LOGS=DIR` keeps each run's controller log and metrics there (`.metrics`
//! at the end, `.metrics-before` just before the power-off).

#[path = "../tests/support/mod.rs"]
mod support;

use futures::StreamExt;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::ha::{ha_setup_with_ipmi, ha_status, ipmi_power_off};
use support::hosts::{console, running};
use support::lab;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Ok(spec) = std::env::var("FERRY_HA_BENCH") else {
        eprintln!("FERRY_HA_BENCH not set: nothing to measure");
        return;
    };
    let hang = std::env::var("FERRY_HA_BENCH_HANG").is_ok_and(|v| v == "1");
    let script = std::env::var("FERRY_HA_BENCH_SCRIPT").is_ok_and(|v| v == "1");
    let mut rows = Vec::new();
    for part in spec.split(',') {
        let (n, runs) = part.split_once('x').expect("NxRUNS");
        let (n, runs): (usize, usize) = (n.parse().expect("N"), runs.parse().expect("RUNS"));
        for run in 0..runs {
            let names: Vec<String> = (1..=n).map(|i| format!("vm-{i}")).collect();
            let refs: Vec<(&str, Option<&str>)> =
                names.iter().map(|n| (n.as_str(), None)).collect();
            let ((mut c, lab, h1, _h2, mut ctl), sim) =
                ha_setup_with_ipmi(&format!("ferry-bench-ha{n}-{run}"), &refs, 8, "s3cret").await;
            let ns = c.namespace.clone();
            // Let the controller see the annotation and warm h2 (its first define builds caches).
            tokio::time::sleep(Duration::from_secs(3)).await;
            let requests_before = status_requests(&c.client).await;
            let changes = watch_status_changes(Api::namespaced(c.client.clone(), &ns)).await;
            // The ideal: the controller gone, the same domains defined and started on h2 by a
            // plain script, 8 at a time, right after the power-off.
            let plain = script.then(|| {
                ctl.kill();
                names
                    .iter()
                    .map(|v| {
                        let domain = format!("{ns}_{v}");
                        let xml = lab
                            .virsh_ok("h1", &["dumpxml", "--inactive", &domain])
                            .expect("domain XML");
                        (domain, xml)
                    })
                    .collect::<Vec<_>>()
            });
            // The metrics so far (setup), so that the kept ones can be told apart from the failover's.
            let metrics_before = std::env::var("FERRY_HA_BENCH_KEEP_LOGS")
                .ok()
                .filter(|_| !script)
                .and_then(|_| ctl.http_get("/metrics").map(|(_, b)| b));
            let t0 = k8s_openapi::jiff::Timestamp::now();
            let start = std::time::Instant::now();
            if hang {
                lab.power_off("h1")
                    .expect("h1 dies; its BMC still reports On");
            } else {
                ipmi_power_off(&sim);
            }
            let script_done = plain.map(|domains| define_and_start(&lab, domains, 8));
            c.node_not_ready(&h1).await;
            // Each domain running on h2 (virsh), and each guest's second boot on its console
            // (the boot counter on its disk went to 2: it booted again on h2).
            let logs: Vec<_> = names.iter().map(|v| console(&lab, &ns, v)).collect();
            let mut each = Vec::new();
            let mut markers: Vec<Option<f64>> = vec![None; n];
            let deadline = start + Duration::from_secs(300);
            while (each.len() < n || markers.iter().any(Option::is_none))
                && std::time::Instant::now() < deadline
            {
                let now_running = running(&lab, "h2").len();
                while each.len() < now_running {
                    each.push(start.elapsed().as_secs_f64());
                }
                for (m, log) in markers.iter_mut().zip(&logs) {
                    if m.is_none() && lab::console_log(log).contains("FERRY-BOOT 2") {
                        *m = Some(start.elapsed().as_secs_f64());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(each.len(), n, "all domains running on h2");
            let last_marker = markers
                .iter()
                .map(|m| m.expect("every guest booted again on h2"))
                .fold(0.0, f64::max);
            let row = if let Some(done) = script_done {
                let failed = done.join().expect("the script's thread");
                assert!(failed.is_empty(), "virsh failed: {failed:?}");
                changes.stop();
                format!(
                    "mode=script vms={n} run={run} first_domain={:.2}s last_domain={:.2}s last_console_boot={last_marker:.2}s",
                    each[0],
                    each[n - 1]
                )
            } else {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let writes = changes.stop();
                let requests = status_requests(&c.client).await - requests_before;
                let events = vm_events(&c.client, &ns, t0).await;
                let per_vm = |f: &dyn Fn(&str) -> usize| {
                    let v: Vec<usize> = names.iter().map(|n| f(n)).collect();
                    format!(
                        "{:.1}(max {})",
                        v.iter().sum::<usize>() as f64 / n as f64,
                        v.iter().copied().max().unwrap_or(0)
                    )
                };
                let before = per_vm(&|n| writes.get(n).map_or(0, |w| w.0));
                let restart = per_vm(&|n| writes.get(n).map_or(0, |w| w.1));
                let events: Vec<String> = events.iter().map(|(r, k)| format!("{r}={k}")).collect();
                let st = ha_status(&c).await.expect("HAPolicy status");
                let inc = st
                    .incidents
                    .iter()
                    .find(|i| i.host == h1)
                    .expect("incident");
                let secs = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| {
                    (t.0.as_millisecond() - t0.as_millisecond()) as f64 / 1000.0
                };
                let detected = secs(&inc.detected);
                let fenced = inc.proven_off.as_ref().map(secs).unwrap_or(f64::NAN);
                format!(
                    "mode={} vms={n} run={run} detected={detected:.0}s fenced={fenced:.0}s first_domain={:.2}s last_domain={:.2}s last_console_boot={last_marker:.2}s status_changes_per_vm=before:{before},restart:{restart} status_requests_per_vm={:.1} vm_events={}",
                    if hang { "hang" } else { "bmc-power-off" },
                    each[0],
                    each[n - 1],
                    requests / n as f64,
                    events.join(","),
                )
            };
            eprintln!("HA-BENCH {row}");
            rows.push(row);
            // The controller's log, to see where the time went (power-off at `t0`).
            if let Ok(dir) = std::env::var("FERRY_HA_BENCH_KEEP_LOGS")
                && !script
            {
                let to = std::path::Path::new(&dir).join(format!("ha-{n}-{run}.log"));
                let head = format!("power-off at {t0}\n");
                let metrics = ctl.http_get("/metrics").map(|(_, b)| b).unwrap_or_default();
                let kept = std::fs::write(&to, head + &ctl.log_text())
                    .and_then(|()| std::fs::write(to.with_extension("metrics"), metrics))
                    .and_then(|()| {
                        std::fs::write(
                            to.with_extension("metrics-before"),
                            metrics_before.clone().unwrap_or_default(),
                        )
                    });
                if let Err(e) = kept {
                    eprintln!("cannot keep the controller log in {}: {e}", to.display());
                }
            }
            drop(ctl);
            drop(sim);
            drop(c);
            drop(lab);
        }
    }
    eprintln!("HA-BENCH summary:\n{}", rows.join("\n"));
}

/// `virsh define` + `virsh start` of each domain on h2, `concurrency` at a time, on a thread of
/// its own; the thread returns what failed.
fn define_and_start(
    lab: &lab::Lab,
    domains: Vec<(String, String)>,
    concurrency: usize,
) -> std::thread::JoinHandle<Vec<String>> {
    let uri = lab.host("h2").unix_uri.clone();
    std::thread::spawn(move || {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = Mutex::new(domains.into_iter());
        let failed = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..concurrency {
                s.spawn(|| {
                    while let Some((domain, xml)) = queue.lock().ok().and_then(|mut q| q.next()) {
                        let file = dir.path().join(format!("{domain}.xml"));
                        std::fs::write(&file, xml).expect("write the domain XML");
                        let file = file.to_string_lossy().into_owned();
                        for args in [["define", file.as_str()], ["start", domain.as_str()]] {
                            let mut full = vec!["-q", "-c", uri.as_str()];
                            full.extend_from_slice(&args);
                            let out = lab::run_cmd("virsh", &full, Duration::from_secs(60));
                            if !out.success()
                                && let Ok(mut f) = failed.lock()
                            {
                                f.push(format!("{domain}: {args:?}: {out:?}"));
                            }
                        }
                    }
                });
            }
        });
        failed.into_inner().unwrap_or_default()
    })
}

/// Per VM: status changes before its restart, and from its restart on.
type Counts = HashMap<String, (usize, usize)>;

/// A watch of the namespace's VirtualMachines that counts, per VM, the changes of its status.
struct StatusChanges {
    counts: Arc<Mutex<Counts>>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusChanges {
    /// Stop watching; the counts so far.
    fn stop(self) -> Counts {
        self.task.abort();
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Start counting status changes (the first sight of each VM is the baseline, not a change);
/// returns once the watch has listed the VMs.
async fn watch_status_changes(api: Api<ferry::api::VirtualMachine>) -> StatusChanges {
    let counts: Arc<Mutex<Counts>> = Arc::default();
    let (listed, ready) = tokio::sync::oneshot::channel();
    let task = tokio::spawn({
        let counts = counts.clone();
        async move {
            let mut last: HashMap<String, String> = HashMap::new();
            let mut listed = Some(listed);
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
            while let Some(Ok(e)) = events.next().await {
                let vm = match e {
                    watcher::Event::InitDone => {
                        if let Some(l) = listed.take() {
                            let _ = l.send(());
                        }
                        continue;
                    }
                    watcher::Event::Apply(vm) | watcher::Event::InitApply(vm) => vm,
                    _ => continue,
                };
                let status = serde_json::to_string(&vm.status).unwrap_or_default();
                let restarted = vm
                    .status
                    .as_ref()
                    .is_some_and(|s| s.last_recovery.is_some());
                let name = vm.name_any();
                match last.insert(name.clone(), status.clone()) {
                    Some(before) if before != status => {
                        if let Ok(mut c) = counts.lock() {
                            let e = c.entry(name).or_default();
                            if restarted {
                                e.1 += 1;
                            } else {
                                e.0 += 1;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(30), ready).await;
    StatusChanges { counts, task }
}

/// Status requests for VirtualMachines the API server served so far (any verb but reads).
async fn status_requests(client: &kube::Client) -> f64 {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client.request_text(req).await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            l.contains("resource=\"virtualmachines\"") && l.contains("subresource=\"status\"")
        })
        .filter(|l| {
            !l.contains("verb=\"GET\"")
                && !l.contains("verb=\"LIST\"")
                && !l.contains("verb=\"WATCH\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Events about the VirtualMachines of the namespace since `since`, by reason (a repeated Event
/// counts each time).
async fn vm_events(
    client: &kube::Client,
    ns: &str,
    since: k8s_openapi::jiff::Timestamp,
) -> std::collections::BTreeMap<String, usize> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&kube::api::ListParams::default())
        .await
        .expect("list Events");
    let mut out = std::collections::BTreeMap::new();
    for e in list.items {
        if e.regarding.as_ref().and_then(|r| r.kind.as_deref()) != Some("VirtualMachine") {
            continue;
        }
        let at = e
            .event_time
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
        if at.is_none_or(|t| t < since) {
            continue;
        }
        let times = e.series.as_ref().map_or(1, |s| s.count.max(1) as usize);
        *out.entry(e.reason.clone().unwrap_or_default()).or_default() += times;
    }
    out
}
