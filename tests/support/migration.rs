//! e2e support for live migration, shared by the e2e suite and benches/migration.rs: a pool of lab
//! hosts that migrate to each other, VirtualMachineMigration helpers, and a watcher that times
//! the tiny guest's console ticks (its guest-visible pauses).
#![allow(dead_code)]

use super::cluster::{self, Cluster, wait_for};
use super::lab;
use ferry::api::{MigrationPhase, VirtualMachineMigrationStatus};
use serde_json::json;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Node label naming the lab host (`h1`, ...) a Node stands for.
pub const LAB_HOST: &str = "ferry.dev/e2e-lab-host";

/// Guests in the migration tests tick every 50 ms, so pauses and continuity show on the console.
pub const TICK: &str = "ferry.tick_ms=50";

/// `n` lab hosts as Nodes (labelled `label=true` and [`LAB_HOST`]) of the pool `pool(&lab)`
/// (named `lab`), whose hosts migrate to each other over TCP with `policy` as the pool's
/// migration policy, and a controller. Returns once every host is Ready with capacity.
pub async fn migration_lab(
    prefix: &str,
    n: usize,
    label: &str,
    pool: impl FnOnce(&lab::Lab) -> serde_json::Value,
    policy: serde_json::Value,
) -> (lab::Lab, Cluster, cluster::ControllerProcess) {
    let lab = lab::Lab::up(n).expect("lab hosts");
    let mut c = Cluster::new(prefix).await;
    let ns = c.namespace.clone();
    for h in &lab.hosts {
        c.add_node_with_labels(
            &format!("{ns}-{}", h.name),
            &h.ip,
            &[(label, "true"), (LAB_HOST, &h.name)],
        )
        .await;
    }
    let ctl = c.controller(prefix);
    let template = lab.hosts[0]
        .unix_uri
        .replace("/h1/run/", &format!("/{{label:{LAB_HOST}}}/run/"));
    let mut pool = pool(&lab);
    pool["spec"]["libvirt"]["uriTemplate"] = json!(template);
    let mut m = policy;
    m["peerUriTemplate"] = json!("qemu+tcp://{address}/system");
    pool["spec"]["migration"] = m;
    c.apply::<ferry::api::HostPool>(pool).await;
    let pools = c.pools();
    wait_for(
        "every lab host Ready with capacity",
        Duration::from_secs(90),
        || {
            let pools = pools.clone();
            async move {
                let s = pools.get("lab").await.ok()?.status?;
                (s.hosts.len() == n
                    && s.hosts.iter().all(|h| {
                        h.state == ferry::api::HostState::Ready && h.allocatable.is_some()
                    }))
                .then_some(())
            }
        },
    )
    .await;
    (lab, c, ctl)
}

/// Create the VirtualMachineMigration `name` moving `vm` (to `target`, a Node name, if given).
pub async fn start_migration(c: &Cluster, name: &str, vm: &str, target: Option<&str>) {
    let mut m = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachineMigration",
        "metadata": {"name": name},
        "spec": {"vmName": vm, "reason": "e2e"}
    });
    if let Some(t) = target {
        m["spec"]["targetHost"] = json!(t);
    }
    c.apply::<ferry::api::VirtualMachineMigration>(m).await;
}

/// Wait until the migration's status satisfies `f`; on timeout the assertion names `what`.
pub async fn wait_migration(
    c: &Cluster,
    name: &str,
    what: &str,
    timeout: Duration,
    f: impl Fn(&VirtualMachineMigrationStatus) -> bool,
) -> VirtualMachineMigrationStatus {
    let api = c.migrations();
    wait_for(&format!("migration {name}: {what}"), timeout, || {
        let api = api.clone();
        let name = name.to_string();
        let f = &f;
        async move { api.get(&name).await.ok()?.status.filter(|s| f(s)) }
    })
    .await
}

/// Whether a migration ended (Succeeded, Failed or Cancelled).
pub fn is_terminal(s: &VirtualMachineMigrationStatus) -> bool {
    use MigrationPhase::*;
    matches!(s.phase, Some(Succeeded | Failed | Cancelled))
}

/// The last `FERRY-TICK n` on a console.
pub fn last_tick(text: &str) -> Option<u64> {
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("FERRY-TICK ")?.trim().parse().ok())
}

/// Records when each `FERRY-TICK` line appears on a console log (polled every 5 ms by a thread
/// that stops on drop), so the longest gap between ticks in a time window (the pause the guest
/// saw, plus one tick period and the polling error) can be read afterwards.
pub struct TickWatch {
    arrivals: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TickWatch {
    /// Start watching `path` from its current end.
    pub fn start(path: &Path) -> TickWatch {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s, path): (_, _, PathBuf) = (arrivals.clone(), stop.clone(), path.into());
        let thread = std::thread::spawn(move || {
            let mut offset = lab::console_len(&path) as u64;
            let mut partial = String::new();
            while !s.load(Ordering::Relaxed) {
                let mut buf = Vec::new();
                if let Ok(mut f) = std::fs::File::open(&path)
                    && f.seek(SeekFrom::Start(offset)).is_ok()
                    && f.read_to_end(&mut buf).is_ok()
                {
                    offset += buf.len() as u64;
                }
                if !buf.is_empty() {
                    let now = Instant::now();
                    partial.push_str(&String::from_utf8_lossy(&buf));
                    while let Some(i) = partial.find('\n') {
                        if partial[..i].contains("FERRY-TICK ")
                            && let Ok(mut a) = a.lock()
                        {
                            a.push(now);
                        }
                        partial.drain(..=i);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        TickWatch {
            arrivals,
            stop,
            thread: Some(thread),
        }
    }

    /// The longest time between two consecutive ticks where the later one came after `from` and
    /// the earlier one before `to`; `None` without ticks on both sides of the window.
    pub fn max_gap(&self, from: Instant, to: Instant) -> Option<Duration> {
        let a = self.arrivals.lock().ok()?;
        a.windows(2)
            .filter(|w| w[1] > from && w[0] < to)
            .map(|w| w[1] - w[0])
            .max()
            .filter(|_| a.first().is_some_and(|f| *f <= from) && a.last().is_some_and(|l| *l >= to))
    }

    /// When the last tick arrived.
    pub fn last(&self) -> Option<Instant> {
        self.arrivals.lock().ok()?.last().copied()
    }
}

impl Drop for TickWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How many of `intervals` (start, end) overlap at most at one instant; one that ends when
/// another starts does not overlap it (a slot handed over).
pub fn max_overlap(intervals: &[(f64, f64)]) -> usize {
    let mut edges: Vec<(f64, i32)> = intervals
        .iter()
        .flat_map(|(s, e)| [(*s, 1), (*e, -1)])
        .collect();
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}
