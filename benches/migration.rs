//! Benchmark: live migration through ferry (a VirtualMachineMigration from creation to
//! `Succeeded`) against plain `virsh migrate` on the same lab in the same run, for 128 MiB,
//! 512 MiB and 512 MiB guests dirtying memory; then the evacuation of one host's VMs with
//! `maxParallel` 2 against the ideal (single migration time × VMs / 2), for ferry and for virsh.
//!
//! Per migration: the job time (ferry: created → `Succeeded` seen by a client polling every
//! 20 ms; virsh: the `virsh migrate` command, timed inside the source host), libvirt's downtime
//! (`status.downtimeMs`; `virsh domjobinfo --completed` on the destination) and the longest gap
//! between the guest's console ticks (every 50 ms) around the migration.
//!
//! Needs a cluster (`KUBECONFIG`; `e2e/bench.sh migration` starts the in-repo API stand-in when
//! unset) and root for a 3-host lab. Takes about 8-12 minutes under TCG.

#[path = "../tests/support/mod.rs"]
mod support;

use ferry::api::{MigrationPhase, VirtualMachine, VirtualMachineMigration};
use kube::api::DeleteParams;
use migration::{TICK, TickWatch, is_terminal, start_migration};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::cluster::{self, Cluster};
use support::hosts::{console, lab_host};
use support::lab;
use support::migration::{self, max_overlap};
use support::objects::{host_of, is_ready, wait_vm};

/// Migrations per guest size and tool.
const RUNS: usize = 5;
/// VMs on the evacuated host.
const EVACUATED: usize = 4;
/// The pool's `maxParallel` (and per-host limits) for the evacuation.
const PARALLEL: usize = 2;
const LABEL: &str = "ferry.dev/bench-hypervisor";
const BOOT: Duration = Duration::from_secs(180);
const MIGRATION: Duration = Duration::from_secs(120);

/// A guest size under test.
struct Size {
    label: &'static str,
    short: &'static str,
    mib: u32,
    cmdline: &'static str,
}

const SIZES: [Size; 3] = [
    Size {
        label: "128 MiB idle",
        short: "s128",
        mib: 128,
        cmdline: "",
    },
    Size {
        label: "512 MiB idle",
        short: "s512",
        mib: 512,
        cmdline: "",
    },
    Size {
        label: "512 MiB dirtying 200 MiB at 30 MiB/s",
        short: "d512",
        mib: 512,
        cmdline: "ferry.dirty_mib=200 ferry.dirty_mibps=30",
    },
];

/// One migration's measurements (seconds, milliseconds).
#[derive(Default, Clone)]
struct Sample {
    job_s: f64,
    /// ferry only: created → `Running` seen (admission, before libvirt starts).
    to_running_s: Option<f64>,
    downtime_ms: Option<f64>,
    gap_ms: Option<f64>,
}

fn vm_manifest(name: &str, lab: &lab::Lab, mib: u32, extra: &str) -> serde_json::Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"hostPool": "lab", "runStrategy": "Always", "cpu": {"cores": 1},
                 "memory": format!("{mib}Mi"),
                 "disks": [{"name": "root", "image": lab.golden}],
                 "boot": {"kernel": lab.kernel, "initrd": lab.initrd,
                          "cmdline": format!("{} {TICK} {extra}", lab.cmdline).trim_end()}}
    })
}

fn pool_manifest(lab: &lab::Lab) -> serde_json::Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool", "metadata": {"name": "lab"},
        "spec": {"nodeSelector": {"matchLabels": {LABEL: "true"}},
                 "libvirt": {"uriTemplate": lab.hosts[0].unix_uri, "connectTimeoutSeconds": 5},
                 "storage": {"pool": "ferry", "path": lab.pool_dir,
                             "images": [{"name": lab.golden, "format": "qcow2"}]},
                 // Lab hosts have 2 cores: let the evacuated host hold all its VMs.
                 "capacity": {"cpuOvercommit": "8"},
                 "console": {"logDirectory": lab.console_dir},
                 "boot": {"directories": [support::objects::boot_dir(lab)]}}
    })
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn med_p90(v: &[f64]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    format!("{:.0} / {:.0}", percentile(v, 0.5), percentile(v, 0.9))
}

/// Wait until the VM is placed and Ready; its host.
async fn wait_ready(c: &Cluster, name: &str) -> String {
    let vm = wait_vm(c, name, "placed and Ready", BOOT, |v| {
        host_of(v).is_some() && is_ready(v)
    })
    .await;
    host_of(&vm).unwrap_or_default()
}

/// Wait (bounded) until the guest's console shows `needle` (its boot marker, its load).
fn wait_console(path: &std::path::Path, needle: &str) {
    lab::wait_for_console(path, needle, BOOT)
        .unwrap_or_else(|e| panic!("{}: {needle}: {e}", path.display()));
}

/// The longest tick gap around `[from, to]`, once ticks resumed after `to` (bounded).
fn tick_gap(w: &TickWatch, from: Instant, to: Instant) -> Option<f64> {
    lab::wait_until(Duration::from_secs(20), || w.last().is_some_and(|l| l > to));
    w.max_gap(from, to).map(|d| d.as_secs_f64() * 1000.0)
}

/// One ferry migration of `vm` to `target` (Node name); the status it ended with.
async fn ferry_migrate(
    c: &Cluster,
    name: &str,
    vm: &str,
    target: Option<&str>,
    w: Option<&TickWatch>,
) -> (Sample, ferry::api::VirtualMachineMigrationStatus) {
    let api = c.migrations();
    let t0 = Instant::now();
    start_migration(c, name, vm, target).await;
    let mut running_at = None;
    let st = loop {
        if let Ok(m) = api.get(name).await
            && let Some(s) = m.status
        {
            if running_at.is_none() && s.phase == Some(MigrationPhase::Running) {
                running_at = Some(t0.elapsed().as_secs_f64());
            }
            if is_terminal(&s) {
                break s;
            }
        }
        assert!(t0.elapsed() < MIGRATION, "migration {name} did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let t1 = Instant::now();
    assert_eq!(st.phase, Some(MigrationPhase::Succeeded), "{name}: {st:?}");
    let sample = Sample {
        job_s: (t1 - t0).as_secs_f64(),
        to_running_s: running_at,
        downtime_ms: st.downtime_ms.map(|d| d as f64),
        gap_ms: w.and_then(|w| tick_gap(w, t0, t1)),
    };
    (sample, st)
}

/// One `virsh migrate` of the unmanaged domain `dom` from `src` to `dst` (lab hosts), run in the
/// source host's namespaces and timed there.
fn virsh_migrate(lab: &lab::Lab, dom: &str, src: &str, dst: &str, w: Option<&TickWatch>) -> Sample {
    let script = format!(
        "s=$(date +%s%N); virsh -q -c qemu:///system migrate --live --p2p --persistent \
         --undefinesource --unsafe {dom} qemu+tcp://{}/system || exit 1; e=$(date +%s%N); \
         echo $((e - s))",
        lab.host(dst).ip
    );
    let t0 = Instant::now();
    let out = lab.exec_in_host(src, &["sh", "-c", &script]);
    let t1 = Instant::now();
    assert!(
        out.success(),
        "virsh migrate {dom} {src} -> {dst}: {}",
        out.stderr
    );
    let ns: f64 = out
        .stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("virsh timing: {:?}", out.stdout));
    let info = lab
        .virsh(dst, &["domjobinfo", "--completed", "--keep-completed", dom])
        .stdout;
    let downtime_ms = info.lines().find_map(|l| {
        l.strip_prefix("Total downtime:")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    Sample {
        job_s: ns / 1e9,
        to_running_s: None,
        downtime_ms,
        gap_ms: w.and_then(|w| tick_gap(w, t0, t1)),
    }
}

/// Define and start an unmanaged copy of the tiny guest on `host`; its console path.
fn start_plain(lab: &lab::Lab, dom: &str, host: &str, mib: u32, extra: &str) -> std::path::PathBuf {
    let disk = lab.create_overlay(dom).expect("overlay");
    let console = lab.console_path(dom);
    let xml = lab.tiny_domain_xml_sized(dom, &disk, &console, mib, &format!("{TICK} {extra}"), "");
    let file = lab.dir.join(format!("{dom}.xml"));
    std::fs::write(&file, xml).expect("write domain XML");
    lab.virsh_ok(host, &["define", &file.to_string_lossy()])
        .expect("define");
    lab.virsh_ok(host, &["start", dom]).expect("start");
    console
}

/// Destroy and undefine an unmanaged domain wherever it is.
fn remove_plain(lab: &lab::Lab, dom: &str) {
    for h in &lab.hosts {
        let _ = lab.virsh(&h.name, &["destroy", dom]);
        let _ = lab.virsh(&h.name, &["undefine", dom]);
    }
}

async fn delete_vm(c: &Cluster, name: &str) {
    let _ = c.vms().delete(name, &DeleteParams::default()).await;
    c.wait_vm_gone(name, Duration::from_secs(120)).await;
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split(':')
                    .nth(1)
                    .map(str::trim)
                    .map(String::from)
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), load average at the start {}",
        load.trim()
    )
}

#[tokio::main]
async fn main() {
    if !cluster::enabled() || !lab::Lab::should_run("migration bench") {
        eprintln!(
            "the migration benchmark needs FERRY_E2E=1, KUBECONFIG and root: run e2e/bench.sh migration"
        );
        return;
    }
    let started = Instant::now();
    let machine = machine();
    let (lab, c, ctl) = migration::migration_lab(
        "ferry-bench-mig",
        3,
        LABEL,
        pool_manifest,
        json!({"maxParallel": PARALLEL, "maxOutboundPerHost": PARALLEL,
               "maxInboundPerHost": PARALLEL}),
    )
    .await;
    let ns = c.namespace.clone();
    let node = |h: &str| format!("{ns}-{h}");

    // Warm-up: the first migration into a fresh host is slow (QEMU start, caches). Move one
    // unmanaged guest around all hosts, and one ferry VM once.
    let warm = start_plain(&lab, "warm", "h1", 128, "");
    wait_console(&warm, "FERRY-READY");
    for (s, d) in [("h1", "h2"), ("h2", "h3"), ("h3", "h1")] {
        virsh_migrate(&lab, "warm", s, d, None);
    }
    remove_plain(&lab, "warm");
    c.apply::<VirtualMachine>(vm_manifest("warm", &lab, 128, ""))
        .await;
    let host = wait_ready(&c, "warm").await;
    ferry_migrate(&c, "warm-1", "warm", None, None).await;
    let _ = host;
    delete_vm(&c, "warm").await;

    // Single migrations, ferry and virsh taking turns, both guests alive throughout.
    let mut results: Vec<(&Size, Vec<Sample>, Vec<Sample>)> = Vec::new();
    for size in &SIZES {
        let fname = format!("f-{}", size.short);
        let dname = format!("v-{}", size.short);
        c.apply::<VirtualMachine>(vm_manifest(&fname, &lab, size.mib, size.cmdline))
            .await;
        let fhost = lab_host(&wait_ready(&c, &fname).await);
        let fconsole = console(&lab, &ns, &fname);
        let vconsole = start_plain(&lab, &dname, &fhost, size.mib, size.cmdline);
        let marker = if size.cmdline.is_empty() {
            "FERRY-READY"
        } else {
            "FERRY-DIRTY"
        };
        wait_console(&fconsole, marker);
        wait_console(&vconsole, marker);
        // Let the dirtying load reach its steady rate (the initial fill is done by now).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let fw = TickWatch::start(&fconsole);
        let vw = TickWatch::start(&vconsole);
        lab::wait_until(Duration::from_secs(20), || {
            fw.last().is_some() && vw.last().is_some()
        });
        let other = if fhost == "h1" { "h2" } else { "h1" };
        let (mut fs, mut vs) = (Vec::new(), Vec::new());
        let (mut fat, mut vat) = (fhost.clone(), fhost.clone());
        for run in 0..RUNS {
            let fto = if fat == fhost { other } else { fhost.as_str() }.to_string();
            let (s, _) = ferry_migrate(
                &c,
                &format!("{fname}-{run}"),
                &fname,
                Some(&node(&fto)),
                Some(&fw),
            )
            .await;
            eprintln!(
                "{} ferry {fat}->{fto}: {:.2} s (Running seen after {:?} s), downtime {:?} ms, gap {:?} ms",
                size.label, s.job_s, s.to_running_s, s.downtime_ms, s.gap_ms
            );
            fs.push(s);
            fat = fto;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let vto = if vat == fhost { other } else { fhost.as_str() }.to_string();
            let s = virsh_migrate(&lab, &dname, &vat, &vto, Some(&vw));
            eprintln!(
                "{} virsh {vat}->{vto}: {:.2} s, downtime {:?} ms, gap {:?} ms",
                size.label, s.job_s, s.downtime_ms, s.gap_ms
            );
            vs.push(s);
            vat = vto;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        drop((fw, vw));
        remove_plain(&lab, &dname);
        delete_vm(&c, &fname).await;
        results.push((size, fs, vs));
    }

    // Evacuation through ferry: EVACUATED VMs placed on h1 (the other hosts cordoned meanwhile),
    // then one migration each, all created at once.
    let names: Vec<String> = (0..EVACUATED).map(|i| format!("e-{i}")).collect();
    for h in ["h2", "h3"] {
        c.cordon(&node(h), true).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in &names {
        c.apply::<VirtualMachine>(vm_manifest(n, &lab, 128, ""))
            .await;
    }
    for n in &names {
        let h = wait_ready(&c, n).await;
        assert_eq!(lab_host(&h), "h1", "{n} placed on h1");
    }
    for h in ["h2", "h3"] {
        c.cordon(&node(h), false).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let api = c.migrations();
    let t0 = Instant::now();
    for n in &names {
        start_migration(&c, &format!("{n}-evac"), n, None).await;
    }
    let mut most_running = 0;
    let statuses: BTreeMap<String, ferry::api::VirtualMachineMigrationStatus> = loop {
        let list = api
            .list(&Default::default())
            .await
            .expect("list migrations");
        let evac: BTreeMap<String, _> = list
            .items
            .into_iter()
            .filter(|m: &VirtualMachineMigration| kube::ResourceExt::name_any(m).ends_with("-evac"))
            .map(|m| {
                (
                    kube::ResourceExt::name_any(&m),
                    m.status.unwrap_or_default(),
                )
            })
            .collect();
        let running = evac
            .values()
            .filter(|s| s.phase == Some(MigrationPhase::Running))
            .count();
        most_running = most_running.max(running);
        if evac.len() == EVACUATED && evac.values().all(is_terminal) {
            break evac;
        }
        assert!(t0.elapsed() < MIGRATION * 2, "evacuation did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ferry_makespan = t0.elapsed().as_secs_f64();
    for (n, s) in &statuses {
        assert_eq!(s.phase, Some(MigrationPhase::Succeeded), "{n}: {s:?}");
    }
    let epoch = statuses
        .values()
        .filter_map(|s| s.start_time.as_ref())
        .map(|t| t.0.as_millisecond())
        .min()
        .unwrap_or_default();
    let timeline: Vec<(String, f64, f64, String)> = statuses
        .iter()
        .map(|(n, s)| {
            let at = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
                t.as_ref()
                    .map_or(f64::NAN, |t| (t.0.as_millisecond() - epoch) as f64 / 1000.0)
            };
            (
                n.clone(),
                at(&s.start_time),
                at(&s.end_time),
                s.target.clone().map(|t| lab_host(&t)).unwrap_or_default(),
            )
        })
        .collect();
    let status_overlap = max_overlap(
        &timeline
            .iter()
            .map(|(_, s, e, _)| (*s, *e))
            .collect::<Vec<_>>(),
    );
    for n in &names {
        delete_vm(&c, n).await;
    }

    // Evacuation with virsh: the same number of unmanaged guests on h1, PARALLEL workers.
    let doms: Vec<String> = (0..EVACUATED).map(|i| format!("ve-{i}")).collect();
    for d in &doms {
        start_plain(&lab, d, "h1", 128, "");
    }
    for d in &doms {
        wait_console(&lab.console_path(d), "FERRY-READY");
    }
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for k in 0..PARALLEL {
            let (lab, doms) = (&lab, &doms);
            s.spawn(move || {
                let dst = format!("h{}", 2 + k % 2);
                for d in doms.iter().skip(k).step_by(PARALLEL) {
                    virsh_migrate(lab, d, "h1", &dst, None);
                }
            });
        }
    });
    let virsh_makespan = t0.elapsed().as_secs_f64();
    for d in &doms {
        remove_plain(&lab, d);
    }

    // Report (markdown).
    println!("Machine: {machine}; virt type {}.", lab.virt_type);
    println!();
    println!(
        "| guest | tool | runs | job time median / p90 (ms) | ferry: created → Running seen, median / p90 (ms) | downtime median / p90 (ms) | longest tick gap median / p90 (ms) | ferry overhead (job time, medians) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut single = BTreeMap::new();
    for (size, fs, vs) in &results {
        let job = |v: &[Sample]| v.iter().map(|s| s.job_s * 1000.0).collect::<Vec<_>>();
        let down = |v: &[Sample]| v.iter().filter_map(|s| s.downtime_ms).collect::<Vec<_>>();
        let gap = |v: &[Sample]| v.iter().filter_map(|s| s.gap_ms).collect::<Vec<_>>();
        let (fj, vj) = (percentile(&job(fs), 0.5), percentile(&job(vs), 0.5));
        single.insert(size.short, (fj / 1000.0, vj / 1000.0));
        for (tool, v) in [("ferry", fs), ("virsh", vs)] {
            let to_running: Vec<f64> = v
                .iter()
                .filter_map(|s| s.to_running_s.map(|t| t * 1000.0))
                .collect();
            println!(
                "| {} | {tool} | {} | {} | {} | {} | {} | {} |",
                size.label,
                v.len(),
                med_p90(&job(v)),
                med_p90(&to_running),
                med_p90(&down(v)),
                med_p90(&gap(v)),
                if tool == "ferry" {
                    format!("{:+.0} % ({:+.0} ms)", (fj / vj - 1.0) * 100.0, fj - vj)
                } else {
                    String::new()
                }
            );
        }
    }
    let (f1, v1) = single.get("s128").copied().unwrap_or_default();
    let ideal = |one: f64| one * EVACUATED as f64 / PARALLEL as f64;
    println!();
    println!(
        "| evacuation of {EVACUATED} × 128 MiB from h1, {PARALLEL} at a time | makespan (s) | ideal = {EVACUATED} × single median / {PARALLEL} (s) | makespan / ideal |"
    );
    println!("|---|---|---|---|");
    println!(
        "| ferry (maxParallel {PARALLEL}) | {ferry_makespan:.2} | {:.2} | {:.2} |",
        ideal(f1),
        ferry_makespan / ideal(f1)
    );
    println!(
        "| virsh ({PARALLEL} workers) | {virsh_makespan:.2} | {:.2} | {:.2} |",
        ideal(v1),
        virsh_makespan / ideal(v1)
    );
    println!();
    println!(
        "ferry evacuation timeline (status startTime → endTime, s after the first start; \
         most at once by these: {status_overlap}; most seen Running at once by a 20 ms poll: \
         {most_running}):"
    );
    for (n, s, e, to) in &timeline {
        println!("- {n} → {to}: {s:.3} → {e:.3}");
    }
    println!();
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());
    assert!(
        status_overlap <= PARALLEL && most_running <= PARALLEL,
        "more than {PARALLEL} migrations at once"
    );
    drop(ctl);
}
