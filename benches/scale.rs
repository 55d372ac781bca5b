//! Benchmark: the real `ferry controller` at scale, against simulated hosts.
//!
//! Every host is libvirt's in-process test driver (`test:///<file>`, one XML file per host with
//! its CPUs, memory and a storage pool holding the golden image, named after its Node); one
//! HostPool's `uriTemplate` is `test://<that directory>/{name}.xml`, and the controller runs with
//! `--allow-test-driver` (`FERRY_ALLOW_TEST_DRIVER`). The Kubernetes side is whatever `KUBECONFIG`
//! names (`e2e/bench-scale.sh` starts the in-repo API stand-in when it is unset).
//!
//! Measured: time to fill the pool (VMs created → all `Ready`), controller RSS, API writes,
//! reconciles and libvirt calls per host per minute in a steady window, and after a restart the
//! time to a full resync and the writes it causes. The test driver forgets its state when the
//! process that opened it exits, so before the restart every host file is rewritten with the
//! domains and overlay volumes the first controller created there (built with ferry's own
//! definition code from the VMs' status), as a real host would keep them.
//!
//! Sizes: `FERRY_SCALE_HOSTS` (default 100), `FERRY_SCALE_VMS` (1000),
//! `FERRY_SCALE_STEADY_SECS` (120; a window shorter than the safety resync shows little of it);
//! `FERRY_SCALE_SAFETY_RESYNC` (the controller's `--safety-resync-seconds`, default 300);
//! `FERRY_SCALE_IN_FLIGHT` (default 0, no limit) holds creation
//! back while that many created VMs are not yet Ready, for API servers (like the in-repo stand-in)
//! that fall behind a burst of 10,000 creations; `FERRY_SCALE_KEEP_HOST_FILES=DIR` keeps the host
//! files (what the simulated hosts cost on their own: `examples/test_driver_rss.rs`).
//! Run: `e2e/bench-scale.sh`.

#[path = "../tests/support/mod.rs"]
mod support;

use ferry::api::{HostPool, VirtualMachine};
use ferry::hypervisor::domain_xml;
use ferry::plan::definition::{self, ResolvedDisk};
use ferry::plan::domain::VirtType;
use ferry::plan::{naming, validate::validate};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use quick_xml::Writer;
use quick_xml::events::BytesText;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::cluster::{self, Cluster, metric_sum, set_node_ready, wait_for};
use support::objects::is_ready as ready;

const HOST_LABEL: &str = "ferry.dev/scale-host";
const STORAGE_POOL: &str = "ferry";
const POOL_PATH: &str = "/var/lib/ferry/scale";
const GOLDEN: &str = "golden.qcow2";
const GOLDEN_BYTES: u64 = 64 << 20;
/// Per simulated host: 64 CPUs, 256 GiB.
const HOST_CPUS: u32 = 64;
const HOST_MEMORY_KIB: u64 = 256 << 20;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn host_name(i: usize) -> String {
    format!("scale-h{i:04}")
}

/// One volume of the pool in a host file.
struct Volume {
    name: String,
    capacity: u64,
}

/// The test driver's host file: CPUs, memory, the storage pool with its volumes, and domains
/// (ferry's domain XML, running).
fn host_file(volumes: &[Volume], domains: &[String]) -> std::io::Result<Vec<u8>> {
    let mut w = Writer::new(Vec::new());
    w.create_element("node").write_inner_content(|w| {
        w.create_element("cpu").write_inner_content(|w| {
            let cpus = HOST_CPUS.to_string();
            for (k, v) in [
                ("mhz", "2000"),
                ("model", "x86_64"),
                ("active", cpus.as_str()),
                ("nodes", "1"),
                ("sockets", "1"),
                ("cores", cpus.as_str()),
                ("threads", "1"),
            ] {
                w.create_element(k).write_text_content(BytesText::new(v))?;
            }
            Ok(())
        })?;
        w.create_element("memory")
            .write_text_content(BytesText::new(&HOST_MEMORY_KIB.to_string()))?;
        w.create_element("pool")
            .with_attribute(("type", "dir"))
            .write_inner_content(|w| {
                let total = (1u64 << 40).to_string();
                for (k, v) in [
                    ("name", STORAGE_POOL),
                    ("uuid", "6f1d2c3b-4a59-4e8f-9d7c-0b1a2c3d4e5f"),
                    ("capacity", total.as_str()),
                    ("allocation", "0"),
                    ("available", total.as_str()),
                ] {
                    w.create_element(k).write_text_content(BytesText::new(v))?;
                }
                w.create_element("source").write_empty()?;
                w.create_element("target").write_inner_content(|w| {
                    w.create_element("path")
                        .write_text_content(BytesText::new(POOL_PATH))?;
                    Ok(())
                })?;
                for v in volumes {
                    let path = format!("{POOL_PATH}/{}", v.name);
                    w.create_element("volume")
                        .with_attribute(("type", "file"))
                        .write_inner_content(|w| {
                            w.create_element("name")
                                .write_text_content(BytesText::new(&v.name))?;
                            w.create_element("key")
                                .write_text_content(BytesText::new(&path))?;
                            w.create_element("capacity")
                                .write_text_content(BytesText::new(&v.capacity.to_string()))?;
                            w.create_element("allocation")
                                .write_text_content(BytesText::new("0"))?;
                            w.create_element("target").write_inner_content(|w| {
                                w.create_element("path")
                                    .write_text_content(BytesText::new(&path))?;
                                w.create_element("format")
                                    .with_attribute(("type", "qcow2"))
                                    .write_empty()?;
                                Ok(())
                            })?;
                            Ok(())
                        })?;
                }
                Ok(())
            })?;
        // Domains are complete documents written by ferry's own XML writer.
        for d in domains {
            w.get_mut().extend_from_slice(d.as_bytes());
        }
        Ok(())
    })?;
    Ok(w.into_inner())
}

fn golden() -> Volume {
    Volume {
        name: GOLDEN.into(),
        capacity: GOLDEN_BYTES,
    }
}

/// What the first controller left on each host, as a host would keep it across a controller
/// restart: per VM its overlay volume and its domain, running.
fn host_state(
    vms: &[Arc<VirtualMachine>],
    pool: &HostPool,
) -> BTreeMap<String, (Vec<Volume>, Vec<String>)> {
    let mut hosts: BTreeMap<String, (Vec<Volume>, Vec<String>)> = BTreeMap::new();
    for vm in vms {
        let Some(host) = vm.status.as_ref().and_then(|s| s.host.clone()) else {
            continue;
        };
        let ns = vm.namespace().unwrap_or_default();
        let uid = vm.metadata.uid.clone().unwrap_or_default();
        let resources = ferry::plan::class::resolve(&vm.spec, None).expect("the VM sets its size");
        let valid = validate(&vm.spec, &resources).expect("valid VM spec");
        let disks: Vec<ResolvedDisk> = vm
            .spec
            .disks
            .iter()
            .map(|d| ResolvedDisk {
                name: d.name.clone(),
                path: format!(
                    "{POOL_PATH}/{}",
                    naming::overlay_volume_name(&ns, &vm.name_any(), &d.name, &uid)
                ),
                format: "qcow2".into(),
            })
            .collect();
        let def = definition::build(
            vm,
            &valid,
            &disks,
            &definition::macs(vm),
            VirtType::Qemu,
            pool.console_dir(),
        );
        let xml = domain_xml::to_xml(&def).expect("domain XML");
        let entry = hosts
            .entry(host)
            .or_insert_with(|| (vec![golden()], vec![]));
        for d in &vm.spec.disks {
            entry.0.push(Volume {
                name: naming::overlay_volume_name(&ns, &vm.name_any(), &d.name, &uid),
                capacity: GOLDEN_BYTES,
            });
        }
        entry.1.push(xml);
    }
    hosts
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// libvirt calls per operation (all results).
fn calls_by_op(body: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for l in body
        .lines()
        .filter(|l| l.starts_with("ferry_libvirt_call_duration_seconds_count{"))
    {
        let op = l
            .split("operation=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?");
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(op.to_string()).or_default() += v;
    }
    out
}

/// `VmRSS` and `VmHWM` of a process in MiB, and its number of threads.
fn memory(pid: u32) -> (f64, f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        field("VmRSS:") / 1024.0,
        field("VmHWM:") / 1024.0,
        field("Threads:"),
    )
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15, i.e. indexes 11 and 12 after the state.
    (ticks(11) + ticks(12)) / 100.0
}

/// Watch events (creations and changes after the initial list) seen for one kind.
#[derive(Default, Clone)]
struct Counter(Arc<AtomicU64>);

impl Counter {
    fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Count `Apply`/`Delete` events of `api` after its initial list.
fn count_changes<K>(api: Api<K>) -> (Counter, tokio::task::JoinHandle<()>)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let counter = Counter::default();
    let c = counter.clone();
    let task = tokio::spawn(async move {
        let mut s = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = s.next().await {
            if let Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) = ev {
                c.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (counter, task)
}

fn placed(v: &VirtualMachine) -> bool {
    v.status.as_ref().is_some_and(|s| s.host.is_some())
}

fn count(store: &Store<VirtualMachine>, f: fn(&VirtualMachine) -> bool) -> usize {
    store.state().iter().filter(|v| f(v)).count()
}

/// Wait until nothing of `counters` changed for `quiet`, at most `limit`.
async fn settle(counters: &[&Counter], quiet: Duration, limit: Duration) -> Duration {
    let start = Instant::now();
    let sum = || counters.iter().map(|c| c.get()).sum::<u64>();
    let mut last = sum();
    let mut since = Instant::now();
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sum();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    start.elapsed()
}

struct Row(Vec<(String, String)>);

impl Row {
    fn add(&mut self, k: impl Into<String>, v: impl Into<String>) {
        let (k, v) = (k.into(), v.into());
        eprintln!("scale: {k}: {v}");
        self.0.push((k, v));
    }
}

#[tokio::main]
async fn main() {
    if !cluster::enabled() {
        eprintln!("the scale benchmark needs FERRY_E2E=1 and KUBECONFIG: run e2e/bench-scale.sh");
        return;
    }
    let n_hosts = env_num("FERRY_SCALE_HOSTS", 100) as usize;
    let n_vms = env_num("FERRY_SCALE_VMS", 1000) as usize;
    let steady = Duration::from_secs(env_num("FERRY_SCALE_STEADY_SECS", 120));
    let in_flight = env_num("FERRY_SCALE_IN_FLIGHT", 0) as usize;
    let standin_pid = std::env::var("FERRY_STANDIN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok());
    let mut out = Row(Vec::new());
    out.add("hosts / VMs", format!("{n_hosts} / {n_vms}"));

    let dir = tempfile::Builder::new()
        .prefix("ferry-scale.")
        .tempdir()
        .expect("tempdir");
    let files: Vec<PathBuf> = (0..n_hosts)
        .map(|i| dir.path().join(format!("{}.xml", host_name(i))))
        .collect();
    let empty = host_file(&[golden()], &[]).expect("host file");
    for f in &files {
        write_file(f, &empty);
    }

    let mut c = Cluster::new("ferry-scale").await;
    let ns = c.namespace.clone();
    let t = Instant::now();
    let nodes: Api<Node> = Api::all(c.client.clone());
    futures::stream::iter(0..n_hosts)
        .map(|i| {
            let nodes = nodes.clone();
            let client = c.client.clone();
            let name = host_name(i);
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": name,
                             "labels": {HOST_LABEL: ns.clone(), "kubernetes.io/hostname": name}},
                "spec": {}
            }))
            .expect("node");
            async move {
                nodes
                    .create(&PostParams::default(), &node)
                    .await
                    .expect("create Node");
                set_node_ready(&client, &name, "127.0.0.1", true).await;
            }
        })
        .buffer_unordered(8)
        .collect::<()>()
        .await;
    // Kept Ready as kubelets would (node Lease renewals), or the node lifecycle controller of a
    // real control plane marks them Unknown 40 s on.
    let names: Vec<String> = (0..n_hosts).map(host_name).collect();
    c.keep_nodes_ready(&names, "127.0.0.1");
    out.add(
        "Nodes created",
        format!("{:.1} s", t.elapsed().as_secs_f64()),
    );

    let pool: HostPool = c
        .apply(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool", "metadata": {"name": "scale"},
            "spec": {"nodeSelector": {"matchLabels": {HOST_LABEL: ns}},
                     "libvirt": {"uriTemplate": format!("test://{}/{{name}}.xml", dir.path().display())},
                     // Raw: libvirt's test driver cannot download a volume, so the header
                     // of a qcow2 image could not be checked.
                     "storage": {"pool": STORAGE_POOL, "images": [{"name": GOLDEN, "format": "raw"}]}}
        }))
        .await;

    // Watches of what ferry writes, and a cache of the VMs.
    let vms_api = c.vms();
    let (vm_writes, vm_watch) = count_changes(vms_api.clone());
    let (pool_writes, pool_watch) = count_changes(c.pools());
    let (event_writes, event_watch) = count_changes(
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(c.client.clone(), &ns),
    );
    let (lease_writes, lease_watch) = count_changes(
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(c.client.clone(), &ns),
    );
    let (store, writer) = reflector::store::<VirtualMachine>();
    let cache = tokio::spawn(
        watcher(vms_api.clone(), watcher::Config::default())
            .reflect(writer)
            .applied_objects()
            .for_each(|_| async {}),
    );

    // The controller's default safety resync unless the run asks for another.
    let safety_resync =
        std::env::var("FERRY_SCALE_SAFETY_RESYNC").unwrap_or_else(|_| "300".to_string());
    out.add(
        "safety resync (--safety-resync-seconds)",
        format!("{safety_resync} s"),
    );
    let quiet_log = [
        ("RUST_LOG", "warn"),
        ("FERRY_ALLOW_TEST_DRIVER", "true"),
        ("FERRY_SAFETY_RESYNC_SECONDS", safety_resync.as_str()),
    ];
    let mut ctl = c.controller_with_env("scale-1", &quiet_log);
    let pid = ctl.pid().expect("controller pid");
    let t = Instant::now();
    let pools = c.pools();
    wait_for(
        "all hosts Ready in the HostPool",
        Duration::from_secs(600),
        || {
            let pools = pools.clone();
            async move {
                let p = pools.get("scale").await.ok()?;
                (p.status?.ready_hosts as usize == n_hosts).then_some(())
            }
        },
    )
    .await;
    out.add(
        "controller start → all hosts Ready in the pool",
        format!("{:.1} s", t.elapsed().as_secs_f64()),
    );
    out.add(
        "RSS, pool Ready, no VMs",
        format!("{:.0} MiB", memory(pid).0),
    );

    // Fill the pool.
    let t0 = Instant::now();
    let cpu0 = cpu_secs(pid);
    let create = {
        let vms_api = vms_api.clone();
        let store = store.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..n_vms)
                .then(|i| {
                    let store = store.clone();
                    async move {
                        // Backpressure: at most `in_flight` VMs created and not yet Ready.
                        if in_flight > 0 && i % 25 == 0 {
                            while i.saturating_sub(count(&store, ready)) > in_flight {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                        i
                    }
                })
                .map(|i| {
                    let api = vms_api.clone();
                    let vm: VirtualMachine = serde_json::from_value(json!({
                        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
                        "metadata": {"name": format!("vm-{i:05}"),
                                     "labels": {"app": format!("app-{}", i % 50)}},
                        "spec": {"hostPool": "scale", "cpu": {"cores": 1}, "memory": "512Mi",
                                 "disks": [{"name": "root", "image": GOLDEN}]}
                    }))
                    .expect("vm");
                    async move { api.create(&PostParams::default(), &vm).await.map(|_| ()) }
                })
                .buffer_unordered(8)
                .try_collect::<()>()
                .await
                .map(|_| t0.elapsed())
        })
    };
    let mut t_placed = None;
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut last_report = Instant::now();
    loop {
        let ready_n = count(&store, ready);
        if t_placed.is_none() && count(&store, placed) >= n_vms {
            t_placed = Some(t0.elapsed());
        }
        if ready_n >= n_vms {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "scale: {:.0} s: {} VMs in the cache, {} placed, {ready_n} Ready",
                t0.elapsed().as_secs_f64(),
                store.state().len(),
                count(&store, placed)
            );
            last_report = Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "VMs not all Ready within an hour"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let t_ready = t0.elapsed();
    let t_created = create
        .await
        .expect("create task")
        .expect("create VirtualMachines");
    let fill_cpu = cpu_secs(pid) - cpu0;
    out.add(
        match in_flight {
            0 => "VMs created by the benchmark (8 at a time)".to_string(),
            n => format!("VMs created by the benchmark (8 at a time, at most {n} not Ready)"),
        },
        format!("{:.1} s", t_created.as_secs_f64()),
    );
    out.add(
        "first create → all placed (status.host)",
        format!(
            "{:.1} s ({:.0} VMs/s)",
            t_placed.unwrap_or(t_ready).as_secs_f64(),
            n_vms as f64 / t_placed.unwrap_or(t_ready).as_secs_f64()
        ),
    );
    out.add(
        "first create → all Ready (defined, started)",
        format!(
            "{:.1} s ({:.0} VMs/s)",
            t_ready.as_secs_f64(),
            n_vms as f64 / t_ready.as_secs_f64()
        ),
    );
    out.add("controller CPU while filling", format!("{fill_cpu:.1} s"));
    if let Some(sp) = standin_pid {
        out.add("API stand-in CPU so far", format!("{:.1} s", cpu_secs(sp)));
    }
    out.add(
        "API writes while filling (VM changes / Events)",
        format!("{} / {}", vm_writes.get(), event_writes.get()),
    );

    // Steady state.
    let settled = settle(
        &[&vm_writes, &pool_writes, &event_writes],
        Duration::from_secs(20),
        Duration::from_secs(300),
    )
    .await;
    out.add(
        "settled (20 s without VM, pool or Event writes) after",
        format!("{:.0} s", settled.as_secs_f64()),
    );
    let m0 = ctl.http_get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let w0 = (
        vm_writes.get(),
        pool_writes.get(),
        event_writes.get(),
        lease_writes.get(),
    );
    let cpu0 = cpu_secs(pid);
    let scpu0 = standin_pid.map(cpu_secs);
    tokio::time::sleep(steady).await;
    let m1 = ctl.http_get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let minutes = steady.as_secs_f64() / 60.0;
    let per_min = |a: u64, b: u64| (b - a) as f64 / minutes;
    out.add(
        format!(
            "steady {} s: API writes/min VirtualMachines / HostPool / Events",
            steady.as_secs()
        ),
        format!(
            "{:.1} / {:.1} / {:.1}",
            per_min(w0.0, vm_writes.get()),
            per_min(w0.1, pool_writes.get()),
            per_min(w0.2, event_writes.get())
        ),
    );
    out.add(
        "steady: leader-election Lease renewals/min",
        format!("{:.1}", per_min(w0.3, lease_writes.get())),
    );
    let rec =
        |m: &str, c: &str| metric_sum(m, &format!("ferry_reconciles_total{{controller=\"{c}\"}}"));
    out.add(
        "steady: reconciles/min VirtualMachine (per VM) / HostPool",
        format!(
            "{:.0} ({:.2}) / {:.1}",
            (rec(&m1, "virtualmachine") - rec(&m0, "virtualmachine")) / minutes,
            (rec(&m1, "virtualmachine") - rec(&m0, "virtualmachine")) / minutes / n_vms as f64,
            (rec(&m1, "hostpool") - rec(&m0, "hostpool")) / minutes
        ),
    );
    let (c0, c1) = (calls_by_op(&m0), calls_by_op(&m1));
    let total: f64 = c1.values().sum::<f64>() - c0.values().sum::<f64>();
    let ops: Vec<String> = c1
        .iter()
        .map(|(op, v)| (op, v - c0.get(op).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .map(|(op, d)| format!("{op} {:.1}", d / minutes / n_hosts as f64))
        .collect();
    out.add(
        "steady: libvirt calls per host per minute",
        format!(
            "{:.1} ({})",
            total / minutes / n_hosts as f64,
            ops.join(", ")
        ),
    );
    out.add(
        "steady: controller CPU",
        format!(
            "{:.1} % of one core",
            (cpu_secs(pid) - cpu0) / steady.as_secs_f64() * 100.0
        ),
    );
    if let (Some(sp), Some(s0)) = (standin_pid, scpu0) {
        out.add(
            "steady: API stand-in CPU",
            format!(
                "{:.1} % of one core",
                (cpu_secs(sp) - s0) / steady.as_secs_f64() * 100.0
            ),
        );
    }
    let (rss, hwm, threads) = memory(pid);
    out.add(
        "controller RSS after the steady window (peak so far), threads",
        format!("{rss:.0} MiB ({hwm:.0} MiB), {threads:.0} threads"),
    );

    // Restart (SIGTERM, as a rolling update does: the Lease is released at once): what the
    // hosts keep, then a new process.
    ctl.terminate();
    let pool_now = c.pools().get("scale").await.unwrap_or(pool);
    let state = host_state(&store.state(), &pool_now);
    for (i, f) in files.iter().enumerate() {
        let bytes = match state.get(&host_name(i)) {
            Some((vols, doms)) => host_file(vols, doms).expect("host file"),
            None => empty.clone(),
        };
        write_file(f, &bytes);
    }
    let w0 = (vm_writes.get(), pool_writes.get(), event_writes.get());
    let before_restart: BTreeMap<String, serde_json::Value> = store
        .state()
        .iter()
        .map(|v| {
            (
                v.name_any(),
                serde_json::to_value(&v.status).unwrap_or_default(),
            )
        })
        .collect();
    let events_api: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(c.client.clone(), &ns);
    let events_before: std::collections::HashSet<String> = events_api
        .list(&Default::default())
        .await
        .map(|l| l.items.iter().map(|e| e.name_any()).collect())
        .unwrap_or_default();
    let t = Instant::now();
    let mut ctl = c.controller_with_env("scale-2", &quiet_log);
    let pid = ctl.pid().expect("controller pid");
    let vm_n = n_vms as f64;
    let resynced = |m: &str| {
        metric_sum(
            m,
            "ferry_libvirt_call_duration_seconds_count{operation=\"lookup_volume\"",
        ) >= vm_n
            && metric_sum(
                m,
                "ferry_reconcile_duration_seconds_count{controller=\"virtualmachine\"}",
            ) >= vm_n
            && metric_sum(
                m,
                "ferry_reconcile_duration_seconds_count{controller=\"hostpool\"}",
            ) >= 1.0
    };
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        if let Some((_, m)) = ctl.http_get("/metrics")
            && resynced(&m)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no full resync within 30 min");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t_resync = t.elapsed();
    let cpu_resync = cpu_secs(pid);
    out.add(
        "restart → full resync (every VM reconciled and its disks and domain checked, pool probed)",
        format!("{:.1} s", t_resync.as_secs_f64()),
    );
    out.add(
        "controller CPU for the resync",
        format!("{cpu_resync:.1} s"),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    out.add(
        "API writes from restart to resync + 10 s (VM / HostPool / Events)",
        format!(
            "{} / {} / {}",
            vm_writes.get() - w0.0,
            pool_writes.get() - w0.1,
            event_writes.get() - w0.2
        ),
    );
    // Say what changed, so that any write can be attributed.
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    if let Ok(l) = events_api.list(&Default::default()).await {
        for e in l
            .items
            .iter()
            .filter(|e| !events_before.contains(&e.name_any()))
        {
            *reasons
                .entry(e.reason.clone().unwrap_or_default())
                .or_default() += 1;
        }
    }
    if !reasons.is_empty() {
        out.add(
            "Events during the resync, by reason",
            format!("{reasons:?}"),
        );
    }
    let changed: Vec<String> = store
        .state()
        .iter()
        .filter_map(|v| {
            let now = serde_json::to_value(&v.status).unwrap_or_default();
            let old = before_restart.get(&v.name_any())?;
            (old != &now).then(|| format!("{}: {old} → {now}", v.name_any()))
        })
        .collect();
    if let Some(first) = changed.first() {
        eprintln!(
            "scale: {} VM statuses changed in the resync; first: {first}",
            changed.len()
        );
    }
    let (rss, hwm, threads) = memory(pid);
    out.add(
        "controller RSS after the resync (peak), threads",
        format!("{rss:.0} MiB ({hwm:.0} MiB), {threads:.0} threads"),
    );
    if std::env::var_os("FERRY_STANDIN").is_some() {
        eprintln!("scale: the API stand-in has no TokenReview: the dashboard is not measured");
    } else {
        measure_dashboard(&c, ctl.http_port, n_vms, &mut out).await;
    }
    // For a look at the process (/proc/PID/smaps, threads) before it goes.
    let hold = env_num("FERRY_SCALE_HOLD_SECS", 0);
    if hold > 0 {
        eprintln!("scale: holding the controller (PID {pid}) for {hold} s");
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    ctl.terminate();

    println!("| measure | value |");
    println!("|---|---|");
    for (k, v) in &out.0 {
        println!("| {k} | {v} |");
    }
    for t in [vm_watch, pool_watch, event_watch, lease_watch, cache] {
        t.abort();
    }
    drop(c);
    // The host files as the restarted controller found them, for examples/test_driver_rss.rs.
    if let Some(keep) = std::env::var_os("FERRY_SCALE_KEEP_HOST_FILES") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).expect("FERRY_SCALE_KEEP_HOST_FILES directory");
        for f in &files {
            if let Some(name) = f.file_name() {
                std::fs::copy(f, keep.join(name)).expect("copy a host file");
            }
        }
        eprintln!("scale: host files kept in {}", keep.display());
    }
    drop(dir);
}

/// The web dashboard at this scale, for a user with `edit` in the test namespace: API answer
/// times, update latency (a VM changed → the change event), and in headless Chromium (when
/// installed) the first page load and a switch between pages of VMs.
async fn measure_dashboard(c: &Cluster, port: u16, n_vms: usize, out: &mut Row) {
    support::consoles::apply_user_roles(c);
    let token = support::consoles::user(c, "dashboard-bench", "edit");
    let s = support::dashboard::Session::login(port, &token)
        .await
        .expect("dashboard login");
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let last = n_vms.div_ceil(50);
    for (what, path) in [
        ("overview (pools, counts)", "overview".to_string()),
        ("first page of VMs (50)", "vms?page=1".to_string()),
        ("last page of VMs", format!("vms?page={last}")),
        ("VMs filtered by name", "vms?q=vm-0999".to_string()),
        ("one VM (with Events, read as the user)", "vms/".to_string()),
    ] {
        let path = if path == "vms/" {
            format!("vms/{}/vm-00000", c.namespace)
        } else {
            path
        };
        let (median, max) = s.timed(&path, 20).await.expect("dashboard API");
        out.add(
            format!("dashboard API: {what}, median / max of 20"),
            format!("{} / {}", ms(median), ms(max)),
        );
    }
    let (median, max) = s
        .update_latency(&c.vms(), "vm-00000", 10)
        .await
        .expect("update latency");
    out.add(
        "dashboard: VM changed → change event on the page's stream, median / max of 10",
        format!("{} / {}", ms(median), ms(max)),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    match support::browser::Browser::start(dir.path()).await {
        Ok(b) => {
            let base = format!("http://127.0.0.1:{port}");
            let (load, median, max) = support::dashboard::browser_load(&b, &base, &token, 10)
                .await
                .expect("dashboard in Chromium");
            out.add(
                "dashboard in Chromium: load → first page of VMs drawn",
                ms(load),
            );
            out.add(
                "dashboard in Chromium: switch to another page of VMs, median / max of 10",
                format!("{} / {}", ms(median), ms(max)),
            );
            b.quit().await;
        }
        Err(e) => eprintln!("scale: no browser for the dashboard ({e})"),
    }
}
