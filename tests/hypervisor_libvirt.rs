//! `LibvirtHost` and `HostConnections` against real libvirtd + QEMU hosts of the lab
//! (`e2e/lab/lab.sh`): storage, the domain XML ferry writes, the tiny guest's console protocol,
//! ACPI shutdown, and failure injection (libvirtd stopped, killed, frozen).
//!
//! Needs root, libvirt and QEMU (see scripts/setup.sh); skipped elsewhere unless `CI` is set.
//! Every wait is bounded; the lab is torn down by `Drop` even when an assertion fails.

#[path = "support/http_server.rs"]
mod http_server;
#[path = "support/lab.rs"]
mod lab;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::hypervisor::*;
use ferry::plan::domain::*;
use http_server::PythonServer;
use lab::{Lab, console_len, wait_for_console, wait_for_console_since};

/// Guest boot to FERRY-READY takes ~4–8 s under TCG on an idle machine; leave room for a busy one.
const BOOT: Duration = Duration::from_secs(120);
const POOL: &str = "ferry-test";

async fn bounded<T>(limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("test took longer than {limit:?}"))
}

fn opts() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_secs(10),
        call_timeout: Duration::from_secs(60),
        keepalive_interval: 1,
        keepalive_count: 2,
        ..ConnectOptions::default()
    }
}

/// Blocking helpers from the lab harness, run off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Polls `lookup_domain` until the state satisfies `pred` (at most `limit`).
async fn wait_state(
    host: &Arc<LibvirtHost>,
    uuid: &str,
    limit: Duration,
    pred: impl Fn(DomainState) -> bool,
) -> DomainInfo {
    let deadline = Instant::now() + limit;
    loop {
        let d = host
            .lookup_domain(uuid)
            .await
            .expect("lookup")
            .expect("domain exists");
        if pred(d.state) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "domain still {:?} after {limit:?}",
            d.state
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn file_digest(path: &Path) -> (u64, u64) {
    let bytes = std::fs::read(path).expect("read file");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    (bytes.len() as u64, h)
}

fn virt_type(lab: &Lab) -> VirtType {
    if lab.virt_type == "kvm" {
        VirtType::Kvm
    } else {
        VirtType::Qemu
    }
}

/// The tiny guest as ferry defines it: `name` in namespace `ferry-test`, booting from `disk`.
fn tiny_def(lab: &Lab, name: &str, uuid: &str, disk: &str, console: &Path) -> DomainDefinition {
    DomainDefinition {
        name: format!("ferry-lab{}_{name}", lab.id),
        uuid: uuid.to_string(),
        virt_type: virt_type(lab),
        vcpus: 1,
        cpu_model: CpuModel::HostModel,
        memory_kib: 128 * 1024,
        disks: vec![DiskDef {
            name: "root".into(),
            path: disk.to_string(),
            format: "qcow2".into(),
            bus: Bus::Virtio,
            read_only: false,
        }],
        nics: vec![],
        boot: Some(KernelBoot {
            kernel: lab.kernel.to_string_lossy().into(),
            initrd: Some(lab.initrd.to_string_lossy().into()),
            cmdline: Some(lab.cmdline.clone()),
        }),
        serial_console: true,
        console_log: Some(console.to_string_lossy().into()),
        graphics: None,
        owner: Owner {
            namespace: "ferry-test".into(),
            name: name.into(),
            uid: uuid.to_string(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_guest_life_cycle_on_a_real_host() {
    if !Lab::should_run("tiny_guest_life_cycle_on_a_real_host") {
        return;
    }
    let lab = blocking(|| Lab::up(1)).await.expect("lab up");
    bounded(Duration::from_secs(600), async {
        let h1 = lab.host("h1").clone();
        let t = Instant::now();
        let events = Arc::new(DomainEvents::default());
        let with_events = ConnectOptions {
            observer: Some(events.clone()),
            ..opts()
        };
        let host = LibvirtHost::connect(&h1.unix_uri, with_events)
            .await
            .expect("connect");
        let connect_time = t.elapsed();

        let info = host.host_info().await.expect("host_info");
        assert_eq!(info.hostname, h1.hostname);
        assert!(info.libvirt_version.starts_with("9."), "{info:?}");
        assert!(info.cpus >= 1 && info.memory_kib > 0);
        // The lab decides by booting a guest under KVM; the capabilities heuristic must agree.
        assert_eq!(info.kvm, lab.virt_type == "kvm", "{info:?}");

        // Storage: the lab has a directory with the golden image but no libvirt pool.
        let pool_dir = lab.pool_dir.to_string_lossy().to_string();
        let path = host
            .ensure_pool(POOL, Some(&pool_dir))
            .await
            .expect("define the pool");
        assert_eq!(Path::new(&path), lab.pool_dir.as_path());
        assert_eq!(host.ensure_pool(POOL, None).await.expect("exists"), path);
        let golden_file = lab.golden_path();
        let golden_before = file_digest(&golden_file);
        let golden = host
            .lookup_volume(POOL, &lab.golden)
            .await
            .expect("lookup golden")
            .expect("golden image is in the pool");
        assert_eq!(golden.format, "qcow2");
        assert_eq!(Path::new(&golden.path), golden_file.as_path());

        let overlay = host
            .create_overlay(POOL, "vm1-root.qcow2", &golden, "qcow2", 0)
            .await
            .expect("create overlay");
        assert_eq!(overlay.format, "qcow2");
        assert_eq!(overlay.capacity, golden.capacity);
        assert!(Path::new(&overlay.path).exists());
        let err = host
            .create_overlay(POOL, "vm1-root.qcow2", &golden, "qcow2", 0)
            .await
            .expect_err("name taken");
        assert!(
            matches!(err, HypervisorError::OperationFailed { code, .. } if code == error_code::STORAGE_VOL_EXIST),
            "{err:?}"
        );

        // The domain, written by ferry's XML writer.
        let uuid = format!("{:08x}-f0f0-4000-8000-000000000001", lab.id);
        let console = lab.console_path("vm1");
        let def = tiny_def(&lab, "vm1", &uuid, &overlay.path, &console);
        let t = Instant::now();
        host.define_domain(&def).await.expect("define");
        let define_time = t.elapsed();
        let d = host
            .lookup_domain(&uuid)
            .await
            .expect("lookup")
            .expect("defined");
        assert!(d.persistent);
        assert!(matches!(d.state, DomainState::ShutOff(_)), "{:?}", d.state);
        let meta = d.config.expect("ferry metadata read back from libvirt");
        assert_eq!(meta.owner, def.owner);
        assert_eq!(meta.definition_hash, definition_hash(&def));
        assert_eq!(meta.shape, shape(&def));

        let t = Instant::now();
        host.start_domain(&uuid).await.expect("start");
        let start_time = t.elapsed();
        let c = console.clone();
        blocking(move || wait_for_console(&c, "FERRY-READY", BOOT))
            .await
            .expect("guest ready");
        let boot_time = t.elapsed();
        let c = console.clone();
        let line = blocking(move || wait_for_console(&c, "FERRY-BOOT", BOOT))
            .await
            .expect("boot marker");
        assert!(line.contains("FERRY-BOOT 1"), "{line}");
        let d = host
            .lookup_domain(&uuid)
            .await
            .expect("lookup")
            .expect("defined");
        assert_eq!(d.state, DomainState::Running);
        assert_eq!(
            d.live.map(|m| m.definition_hash),
            Some(definition_hash(&def))
        );
        assert_eq!(
            host.list_domains()
                .await
                .expect("list")
                .iter()
                .filter(|d| d.uuid == uuid)
                .count(),
            1
        );

        // Measured load: the booted guest has used CPU time and its QEMU holds memory; the
        // CPU time only grows.
        let counted = |all: Vec<ferry::plan::load::DomainCounters>| {
            all.into_iter()
                .find(|c| c.uuid == uuid)
                .expect("the running domain is counted")
        };
        let first = counted(host.domain_counters().await.expect("counters"));
        assert!(first.cpu_time_ns > 0, "{first:?}");
        assert!(first.rss_bytes > 16 << 20, "{first:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = counted(host.domain_counters().await.expect("counters"));
        assert!(second.cpu_time_ns >= first.cpu_time_ns, "{first:?} {second:?}");

        // ACPI shutdown: the guest powers itself off.
        let t = Instant::now();
        host.shutdown_domain(&uuid).await.expect("shutdown");
        wait_state(&host, &uuid, Duration::from_secs(90), |s| {
            s == DomainState::ShutOff(ShutOffReason::Shutdown)
        })
        .await;
        let shutdown_time = t.elapsed();
        host.shutdown_domain(&uuid).await.expect("shutdown when off");
        // A domain that does not run is not counted.
        let off = host.domain_counters().await.expect("counters");
        assert!(off.iter().all(|c| c.uuid != uuid), "{off:?}");

        // Second boot on the same disk.
        let offset = console_len(&console);
        host.start_domain(&uuid).await.expect("start again");
        let c = console.clone();
        let line = blocking(move || wait_for_console_since(&c, offset, "FERRY-BOOT", BOOT))
            .await
            .expect("second boot marker");
        assert!(line.contains("FERRY-BOOT 2"), "{line}");

        // A QEMU process that dies is a crash to libvirt, and a lifecycle event names the domain
        // at once (ferry's VM monitoring acts on it).
        let before = events.count(&uuid);
        let out = lab::run_cmd(
            "pkill",
            &["-KILL", "-f", &format!("guest={},", def.name)],
            Duration::from_secs(10),
        );
        assert!(out.success(), "kill QEMU: {out:?}");
        let d = wait_state(&host, &uuid, Duration::from_secs(30), |s| !s.is_active()).await;
        assert_eq!(d.state, DomainState::ShutOff(ShutOffReason::Crashed));
        let deadline = Instant::now() + Duration::from_secs(10);
        while events.count(&uuid) == before {
            assert!(Instant::now() < deadline, "no lifecycle event for the crash");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A start is a change of the host (what the HostPool probe read of it no longer stands).
        let host_changes = events.host_changes();
        host.start_domain(&uuid).await.expect("start after the crash");
        wait_state(&host, &uuid, Duration::from_secs(30), |s| s.is_active()).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while events.host_changes() == host_changes {
            assert!(Instant::now() < deadline, "no host change for the start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        host.destroy_domain(&uuid).await.expect("destroy");
        let d = wait_state(&host, &uuid, Duration::from_secs(30), |s| !s.is_active()).await;
        assert_eq!(d.state, DomainState::ShutOff(ShutOffReason::Destroyed));
        host.destroy_domain(&uuid).await.expect("destroy when off");
        host.undefine_domain(&uuid).await.expect("undefine");
        assert_eq!(host.lookup_domain(&uuid).await.expect("lookup"), None);
        host.undefine_domain(&uuid).await.expect("undefine when gone");

        host.delete_volume(POOL, "vm1-root.qcow2")
            .await
            .expect("delete overlay");
        assert!(!Path::new(&overlay.path).exists());
        assert_eq!(
            host.lookup_volume(POOL, "vm1-root.qcow2")
                .await
                .expect("lookup"),
            None
        );
        host.delete_volume(POOL, "vm1-root.qcow2")
            .await
            .expect("delete again");
        // Volumes made and removed behind libvirt's back (another host on shared storage): a
        // lookup sees both, although libvirt knew the second one before its file went.
        let behind = lab.pool_dir.join("behind.qcow2");
        let made = qemu_img(&["create", "-q", "-f", "qcow2", &behind.to_string_lossy(), "1M"]);
        assert!(made.status.success(), "qemu-img create: {made:?}");
        let seen = host.lookup_volume(POOL, "behind.qcow2").await.expect("lookup");
        assert_eq!(seen.map(|v| v.format), Some("qcow2".to_string()));
        std::fs::remove_file(&behind).expect("remove behind libvirt's back");
        assert_eq!(
            host.lookup_volume(POOL, "behind.qcow2").await.expect("lookup"),
            None
        );
        assert_eq!(
            file_digest(&golden_file),
            golden_before,
            "golden image untouched"
        );
        assert_eq!(
            host.lookup_volume(POOL, &lab.golden).await.expect("lookup"),
            Some(golden)
        );
        host.close().await;
        eprintln!(
            "timings ({}): connect {connect_time:?}, define {define_time:?}, start {start_time:?}, \
             start→FERRY-READY {boot_time:?}, ACPI shutdown→shut off {shutdown_time:?}",
            lab.virt_type
        );
    })
    .await;
    blocking(move || lab.down()).await.expect("lab down");
}

/// Counts the lifecycle events libvirt reported, by domain UUID, and the changes of the host.
#[derive(Default)]
struct DomainEvents(
    std::sync::Mutex<Vec<String>>,
    std::sync::atomic::AtomicUsize,
);

impl DomainEvents {
    fn host_changes(&self) -> usize {
        self.1.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn count(&self, uuid: &str) -> usize {
        self.0
            .lock()
            .map(|v| v.iter().filter(|u| *u == uuid).count())
            .unwrap_or(0)
    }
}

impl CallObserver for DomainEvents {
    fn observe(&self, _op: &'static str, _seconds: f64, _ok: bool) {}

    fn domain_changed(&self, _uri: &str, uuid: &str) {
        if let Ok(mut v) = self.0.lock() {
            v.push(uuid.to_string());
        }
    }

    fn host_changed(&self, _uri: &str) {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Disk locks, the split-brain guard under fencing: a second host refuses to start a domain
/// whose disk a running domain on the first host holds, and starts it once that copy is off.
/// Two guards are at work and both are checked: virtlockd's lease on the shared lockspace (held
/// by the running host's virtlockd, released when its copy stops) and QEMU's image lock, which
/// is what reports the refusal because QEMU opens its disks before libvirt takes the leases at
/// the first resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_disk_never_runs_on_two_hosts() {
    if !Lab::should_run("a_leased_disk_never_runs_on_two_hosts") {
        return;
    }
    let lab = blocking(|| Lab::up(2)).await.expect("lab up");
    bounded(Duration::from_secs(300), async {
        let h1 = LibvirtHost::connect(&lab.host("h1").unix_uri, opts())
            .await
            .expect("connect h1");
        let h2 = LibvirtHost::connect(&lab.host("h2").unix_uri, opts())
            .await
            .expect("connect h2");
        let pool_dir = lab.pool_dir.to_string_lossy().to_string();
        for h in [&h1, &h2] {
            h.ensure_pool(POOL, Some(&pool_dir)).await.expect("pool");
        }
        let golden = h1
            .lookup_volume(POOL, &lab.golden)
            .await
            .expect("lookup golden")
            .expect("golden image");
        let overlay = h1
            .create_overlay(POOL, "lease-root.qcow2", &golden, "qcow2", 0)
            .await
            .expect("overlay");
        let uuid = format!("{:08x}-f0f0-4000-8000-000000000002", lab.id);
        let def = tiny_def(
            &lab,
            "lease",
            &uuid,
            &overlay.path,
            &lab.console_path("lease"),
        );
        h1.define_domain(&def).await.expect("define on h1");
        h2.define_domain(&def).await.expect("define on h2");
        h1.start_domain(&uuid).await.expect("start on h1");
        assert_eq!(
            lease_holders(&lab, Path::new(&overlay.path)),
            ["h1"],
            "h1's virtlockd leases the overlay"
        );
        let golden_path = lab.golden_path();
        assert!(
            lease_holders(&lab, &golden_path).is_empty(),
            "the read-only golden image is shared, not leased"
        );

        let err = h2
            .start_domain(&uuid)
            .await
            .expect_err("the disk is leased to h1's running copy");
        assert!(err.is_disk_locked(), "{err:?}");
        let d = h2
            .lookup_domain(&uuid)
            .await
            .expect("lookup")
            .expect("defined");
        assert!(!d.state.is_active(), "{:?}", d.state);

        assert_eq!(
            lease_holders(&lab, Path::new(&overlay.path)),
            ["h1"],
            "h2's refused start took no lease and left h1's alone"
        );
        h1.destroy_domain(&uuid).await.expect("destroy on h1");
        assert!(
            lease_holders(&lab, Path::new(&overlay.path)).is_empty(),
            "the lease is released with h1's copy"
        );
        h2.start_domain(&uuid)
            .await
            .expect("h2 starts it once the lease is free");
        assert_eq!(lease_holders(&lab, Path::new(&overlay.path)), ["h2"]);
        let err = h1.start_domain(&uuid).await.expect_err("now h1 may not");
        assert!(err.is_disk_locked(), "{err:?}");

        h2.destroy_domain(&uuid).await.expect("destroy on h2");
        for h in [&h1, &h2] {
            h.undefine_domain(&uuid).await.expect("undefine");
        }
        h1.delete_volume(POOL, "lease-root.qcow2")
            .await
            .expect("delete overlay");
        h1.close().await;
        h2.close().await;
    })
    .await;
    blocking(move || lab.down()).await.expect("lab down");
}

/// The lab hosts whose virtlockd holds the lease on `disk`: the lease is the file named by the
/// SHA-256 of the disk's path in the shared lockspace (`qemu-lockd.conf` `file_lockspace_dir`),
/// and holding it is a POSIX lock on that file (read from `/proc/locks`).
fn lease_holders(lab: &Lab, disk: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let digest = ring::digest::digest(&ring::digest::SHA256, disk.to_string_lossy().as_bytes());
    let name: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let lease = lab.shared_dir.join("lockd").join(name);
    let Ok(meta) = std::fs::metadata(&lease) else {
        return Vec::new();
    };
    let locks = std::fs::read_to_string("/proc/locks").expect("/proc/locks");
    let holders: Vec<u32> = locks
        .lines()
        .filter(|l| !l.contains("->"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "1: POSIX  ADVISORY  WRITE 31156 00:2f:1234 0 EOF"
            let inode = f.get(5)?.rsplit(':').next()?.parse::<u64>().ok()?;
            (f.get(1) == Some(&"POSIX") && inode == meta.ino())
                .then(|| f.get(4)?.parse().ok())
                .flatten()
        })
        .collect();
    lab.hosts
        .iter()
        .filter(|h| {
            std::fs::read_to_string(lab.dir.join(&h.name).join("virtlockd.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .is_some_and(|pid| holders.contains(&pid))
        })
        .map(|h| h.name.clone())
        .collect()
}

/// Sends `signal` to the host's libvirtd; `Drop` of the returned guard sends SIGCONT.
struct Frozen(String);

impl Frozen {
    fn freeze(lab: &Lab, host: &str) -> Frozen {
        let pid = std::fs::read_to_string(lab.dir.join(host).join("libvirtd.pid"))
            .expect("libvirtd pid file")
            .trim()
            .to_string();
        let out = lab::run_cmd("kill", &["-STOP", &pid], Duration::from_secs(5));
        assert!(out.success(), "kill -STOP: {out:?}");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = lab::run_cmd("kill", &["-CONT", &self.0], Duration::from_secs(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connections_are_detected_and_replaced() {
    if !Lab::should_run("lost_connections_are_detected_and_replaced") {
        return;
    }
    let lab = Arc::new(blocking(|| Lab::up(1)).await.expect("lab up"));
    let uri = lab.host("h1").unix_uri.clone();
    bounded(Duration::from_secs(300), async {
        let reg = HostConnections::new(None)
            .with_backoff(Duration::from_millis(300), Duration::from_secs(2));

        // 1. libvirtd stopped while calls are running.
        let first = reg.get(&uri, &opts()).await.expect("connect");
        first.host_info().await.expect("host_info");
        let caller = {
            let h = first.clone();
            tokio::spawn(async move {
                loop {
                    match h.list_domains().await {
                        Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                        Err(e) => return e,
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let l = lab.clone();
        let t = Instant::now();
        blocking(move || l.stop_libvirtd("h1"))
            .await
            .expect("stop libvirtd");
        let err = bounded(Duration::from_secs(20), caller)
            .await
            .expect("join");
        eprintln!(
            "call during stop-libvirtd failed after {:?}: {err}",
            t.elapsed()
        );
        assert!(err.is_connection_lost(), "{err:?}");
        assert!(!first.is_connected());

        // While it is down: a fast failure, then the same error from the backoff window.
        let t = Instant::now();
        let down = reg.get(&uri, &opts()).await.expect_err("daemon down");
        assert!(down.is_connection_lost(), "{down:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(reg.get(&uri, &opts()).await.expect_err("backoff"), down);

        // Back up: the registry reconnects once the window has passed.
        let l = lab.clone();
        blocking(move || l.start_libvirtd("h1"))
            .await
            .expect("start libvirtd");
        let t = Instant::now();
        let second = loop {
            match reg.get(&uri, &opts()).await {
                Ok(h) => break h,
                Err(e) => {
                    assert!(t.elapsed() < Duration::from_secs(30), "no reconnect: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert!(!Arc::ptr_eq(&first, &second));
        second.host_info().await.expect("host_info after restart");

        // 2. libvirtd killed (SIGKILL): the close callback fires without any call.
        let l = lab.clone();
        let t = Instant::now();
        blocking(move || l.kill_libvirtd("h1"))
            .await
            .expect("kill libvirtd");
        assert!(
            lab::wait_until(Duration::from_secs(10), || !second.is_connected()),
            "the close callback did not fire"
        );
        eprintln!("kill-libvirtd noticed after {:?}", t.elapsed());
        let l = lab.clone();
        blocking(move || l.start_libvirtd("h1"))
            .await
            .expect("start libvirtd");
        // The first get reports the loss (the host ended the connection) and starts the
        // backoff; a later one reconnects.
        let t = Instant::now();
        let third = loop {
            match reg.get(&uri, &opts()).await {
                Ok(h) => break h,
                Err(e) => {
                    assert!(t.elapsed() < Duration::from_secs(30), "no reconnect: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        third.host_info().await.expect("host_info");

        // 3. libvirtd frozen (a hung host): keepalive closes the connection (1 s × (2 + 1)),
        //    a call is bounded by the call timeout, and connecting by the connect timeout.
        let short = ConnectOptions {
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(2),
            keepalive_interval: 0,
            keepalive_count: 0,
            ..ConnectOptions::default()
        };
        let no_keepalive = LibvirtHost::connect(&uri, short.clone())
            .await
            .expect("connect");
        let mut lost = reg.lost_connections();
        let frozen = Frozen::freeze(&lab, "h1");
        let t = Instant::now();
        let err = no_keepalive.host_info().await.expect_err("frozen host");
        assert!(err.is_connection_lost(), "{err:?}");
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        assert!(!no_keepalive.is_connected());
        assert!(
            lab::wait_until(Duration::from_secs(10), || !third.is_connected()),
            "keepalive did not close the connection"
        );
        eprintln!(
            "keepalive (1 s × 2) closed the connection after {:?}",
            t.elapsed()
        );
        // The registry announced the loss, and reports it at once instead of reconnecting.
        let announced = bounded(Duration::from_secs(5), lost.recv())
            .await
            .expect("a lost connection is announced");
        assert_eq!(announced, uri);
        let asked = Instant::now();
        let err = reg.get(&uri, &opts()).await.expect_err("lost");
        assert!(err.to_string().contains("keepalive"), "{err}");
        assert!(asked.elapsed() < Duration::from_millis(100));
        let t = Instant::now();
        let err = LibvirtHost::connect(&uri, short)
            .await
            .expect_err("connect to a frozen host");
        assert!(
            matches!(err, HypervisorError::ConnectTimeout { .. }),
            "{err:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(4));
        drop(frozen);
        let fourth = loop {
            match reg.get(&uri, &opts()).await {
                Ok(h) => break h,
                Err(e) => {
                    assert!(t.elapsed() < Duration::from_secs(30), "no reconnect: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        fourth.host_info().await.expect("host_info after thaw");
        no_keepalive.close().await;
        reg.close_all().await;
    })
    .await;
    let lab = Arc::try_unwrap(lab).expect("no other lab handles");
    blocking(move || lab.down()).await.expect("lab down");
}

/// A loopback HTTP server (python3) that sends `mib` MiB slowly (64 KiB every 10 ms), killed on
/// drop.
struct SlowServer {
    child: std::process::Child,
    url: String,
}

impl SlowServer {
    fn start(mib: u64) -> SlowServer {
        let script = r#"
import http.server, sys, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        n = int(sys.argv[1]) << 20
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        block = bytes(range(256)) * 256
        for _ in range(n // len(block)):
            self.wfile.write(block)
            time.sleep(0.01)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
        let mut child = std::process::Command::new("/usr/bin/python3")
            .args(["-c", script, &mib.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 HTTP server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("port");
        let port: u16 = line.trim().parse().expect("port number");
        SlowServer {
            child,
            url: format!("http://127.0.0.1:{port}/image.raw"),
        }
    }
}

impl Drop for SlowServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An import of `url` into the lab's pool on `uri`, as a HostPool that lets imports reach
/// loopback (where the test's servers listen) would ask for it.
fn import_request(
    uri: &str,
    url: &str,
    format: ferry::api::virtual_machine::SourceFormat,
) -> ferry::controller::image_import::Request {
    let spec: ferry::api::HostPoolSpec = serde_json::from_value(serde_json::json!({
        "nodeSelector": {}, "libvirt": {"uriTemplate": uri}, "storage": {"pool": POOL},
        "imports": {"allowedNetworks": ["127.0.0.0/8"]}
    }))
    .expect("pool spec");
    ferry::controller::image_import::Request {
        uri: uri.to_string(),
        pool: POOL.into(),
        url: url.to_string(),
        format,
        policy: ferry::plan::import_policy::Policy::of("lab", &spec, &[], Vec::new())
            .expect("policy"),
        opts: opts(),
    }
}

/// The SHA-256 of what [`SlowServer`] sends.
fn slow_server_sha256(mib: u64) -> String {
    let block: Vec<u8> = (0..=255u8).cycle().take(65536).collect();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for _ in 0..(mib << 20) / 65536 {
        ctx.update(&block);
    }
    ferry::cloud_init::hex(ctx.finish().as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_in_progress_is_left_alone_and_a_cut_short_one_removed() {
    use ferry::controller::image_import::{self, ImportKey, ImportState};
    use ferry::plan::naming;
    if !Lab::should_run("an_import_in_progress_is_left_alone_and_a_cut_short_one_removed") {
        return;
    }
    let lab = blocking(|| Lab::up(1)).await.expect("lab up");
    bounded(Duration::from_secs(300), async {
        let uri = lab.host("h1").unix_uri.clone();
        let host = LibvirtHost::connect(&uri, opts()).await.expect("connect");
        let pool_dir = lab.pool_dir.to_string_lossy().to_string();
        host.ensure_pool(POOL, Some(&pool_dir)).await.expect("pool");

        // The remainder of an import cut short (a controller restart): the image volume without
        // its marker. Looking the image up removes it.
        let mib = 16;
        let sha = slow_server_sha256(mib);
        let raw = ferry::api::virtual_machine::SourceFormat::Raw;
        let name = naming::imported_image_name(&sha, raw);
        let key = ImportKey::new(&uri, &pool_dir, true, &sha, raw);
        let imports = image_import::Imports::default();
        host.upload_volume(
            POOL,
            &name,
            4096,
            Box::new(std::iter::once(Ok(vec![7u8; 4096]))),
        )
        .await
        .expect("a half image");
        assert_eq!(
            imports
                .lookup(host.as_ref(), POOL, &key)
                .await
                .expect("lookup"),
            None
        );
        assert_eq!(host.lookup_volume(POOL, &name).await.expect("lookup"), None);

        // An import running in this process: looking the image up while its volume is being
        // written (no marker yet) leaves it alone.
        let server = SlowServer::start(mib);
        let hosts = HostConnections::default();
        let source = image_import::source("lab", "lab", &server.url);
        imports.start(
            &hosts,
            key.clone(),
            &source,
            import_request(&uri, &server.url, raw),
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut looked_mid_import = 0;
        loop {
            let in_pool = host.lookup_volume(POOL, &name).await.expect("lookup");
            let found = imports
                .lookup(host.as_ref(), POOL, &key)
                .await
                .expect("lookup");
            if let Some(v) = found {
                assert_eq!(std::fs::metadata(&v.path).expect("image").len(), mib << 20);
                break;
            }
            if in_pool.is_some() && imports.running(&key) {
                looked_mid_import += 1;
            }
            if let Some(ImportState::Failed { message, .. }) =
                imports.state(&key, &source, Instant::now())
            {
                panic!("import failed: {message}");
            }
            assert!(Instant::now() < deadline, "import not done in 120 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            looked_mid_import > 0,
            "the image was never looked up while its import ran"
        );
        for v in [name.clone(), naming::imported_marker_name(&sha, raw)] {
            host.delete_volume(POOL, &v).await.expect("clean up");
        }
        drop(server);
        host.close().await;
    })
    .await;
    blocking(move || lab.down()).await.expect("lab down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_volume_is_a_standalone_copy_of_what_the_guest_sees() {
    if !Lab::should_run("a_cloned_volume_is_a_standalone_copy_of_what_the_guest_sees") {
        return;
    }
    let lab = blocking(|| Lab::up(1)).await.expect("lab up");
    bounded(Duration::from_secs(300), async {
        let host = LibvirtHost::connect(&lab.host("h1").unix_uri, opts())
            .await
            .expect("connect");
        let pool_dir = lab.pool_dir.to_string_lossy().to_string();
        host.ensure_pool(POOL, Some(&pool_dir)).await.expect("pool");
        let golden = host
            .lookup_volume(POOL, &lab.golden)
            .await
            .expect("lookup golden")
            .expect("golden image");
        let golden_before = file_digest(Path::new(&golden.path));
        let source = host
            .create_overlay(POOL, "clone-src.qcow2", &golden, "qcow2", 0)
            .await
            .expect("overlay");
        // Data of the source's own, on top of its golden image.
        let qemu = |program: &str, args: &[&str]| {
            let out = lab::run_cmd(program, args, Duration::from_secs(60));
            assert!(out.success(), "{program} {args:?}: {out:?}");
            out.stdout
        };
        qemu(
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 0x5a 1M 256k", &source.path],
        );

        let copy = host
            .clone_volume(POOL, "clone-dst.qcow2", &source)
            .await
            .expect("clone");
        assert_eq!(copy.format, "qcow2");
        assert_eq!(copy.capacity, source.capacity);
        // What a guest reads is the same, and the copy needs neither the source nor the image.
        qemu(
            "qemu-img",
            &[
                "compare",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                &source.path,
                &copy.path,
            ],
        );
        let info = qemu("qemu-img", &["info", "--output=json", &copy.path]);
        assert!(!info.contains("backing-filename"), "standalone: {info}");
        qemu(
            "qemu-io",
            &["-f", "qcow2", "-c", "read -P 0x5a 1M 256k", &copy.path],
        );

        // The name taken: refused, the existing volume untouched.
        let err = host
            .clone_volume(POOL, "clone-dst.qcow2", &source)
            .await
            .expect_err("name taken");
        assert!(
            matches!(
                err,
                HypervisorError::OperationFailed { code, .. } if code == error_code::STORAGE_VOL_EXIST
            ),
            "{err}"
        );
        qemu(
            "qemu-io",
            &["-f", "qcow2", "-c", "read -P 0x5a 1M 256k", &copy.path],
        );
        // A source that is gone: refused, nothing left behind.
        host.delete_volume(POOL, "clone-src.qcow2")
            .await
            .expect("delete source");
        assert!(
            host.clone_volume(POOL, "clone-other.qcow2", &source)
                .await
                .is_err()
        );
        assert_eq!(
            host.lookup_volume(POOL, "clone-other.qcow2")
                .await
                .expect("lookup"),
            None
        );
        qemu(
            "qemu-io",
            &["-f", "qcow2", "-c", "read -P 0x5a 1M 256k", &copy.path],
        );
        host.delete_volume(POOL, "clone-dst.qcow2")
            .await
            .expect("delete copy");
        assert_eq!(file_digest(Path::new(&golden.path)), golden_before);
        host.close().await;
    })
    .await;
    blocking(move || lab.down()).await.expect("lab down");
}

/// Domains made with plain virsh, outside ferry, as adoption reads them: a running one ferry can
/// express (a flat disk in the pool, kernel boot), and a shut-off one it cannot (a disk with a
/// backing file, a host directory passed through), each with the reason. ferry's metadata is
/// written into them and removed again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_domains_read_as_adoption_sees_them() {
    use ferry::plan::adoption::{PoolView, assess, spec_for};
    if !Lab::should_run("foreign_domains_read_as_adoption_sees_them") {
        return;
    }
    let lab = blocking(|| Lab::up(1)).await.expect("lab up");
    bounded(Duration::from_secs(300), async {
        let host = LibvirtHost::connect(&lab.host("h1").unix_uri, opts())
            .await
            .expect("connect");
        let pool_dir = lab.pool_dir.to_string_lossy().to_string();
        host.ensure_pool(POOL, Some(&pool_dir))
            .await
            .expect("define the pool");
        // A flat copy of the golden image, and an overlay on it.
        let flat = lab.pool_dir.join("legacy.qcow2");
        std::fs::copy(lab.golden_path(), &flat).expect("copy the golden image");
        // Made behind libvirt's back: describing the domain refreshes the pool to see it.
        let chained = lab.create_overlay("chained").expect("overlay");

        let dir = lab.dir.clone();
        let define = |name: &str, xml: String| {
            let file = dir.join(format!("{name}.xml"));
            std::fs::write(&file, xml).expect("write XML");
            lab.virsh_ok("h1", &["define", &file.to_string_lossy()])
                .expect("virsh define");
        };
        define(
            "legacy",
            lab.tiny_domain_xml("legacy", &flat, &lab.console_path("legacy")),
        );
        lab.virsh_ok("h1", &["start", "legacy"]).expect("virsh start");
        let shared = dir.join("shared");
        std::fs::create_dir_all(&shared).expect("mkdir");
        define(
            "odd",
            lab.tiny_domain_xml_with(
                "odd",
                &chained,
                &lab.console_path("odd"),
                "",
                &format!(
                    "    <filesystem type='mount'><source dir='{}'/><target dir='shared'/></filesystem>\n",
                    shared.display()
                ),
            ),
        );

        let boot_dirs: Vec<String> = [&lab.kernel, &lab.initrd]
            .iter()
            .filter_map(|p| p.parent())
            .map(|p| p.to_string_lossy().to_string())
            .collect();
        let pool = PoolView {
            storage_dir: Some(&pool_dir),
            golden_images: std::slice::from_ref(&lab.golden),
            boot_dirs: &boot_dirs,
        };

        let (legacy, state) = host
            .describe_domain("legacy")
            .await
            .expect("describe")
            .expect("defined");
        assert_eq!(state, DomainState::Running);
        assert!(legacy.persistent.is_some());
        let a = assess(&legacy, state, &pool);
        assert!(a.blockers.is_empty(), "{:?}", a.blockers);
        let hw = a.hardware.expect("adoptable");
        assert_eq!((hw.vcpus, hw.memory_kib), (1, 128 * 1024));
        assert_eq!(hw.disks[0].volume, "legacy.qcow2");
        assert_eq!(
            hw.boot.as_ref().map(|b| b.kernel.clone()),
            Some(lab.kernel.to_string_lossy().to_string())
        );
        assert!(hw.serial_console);
        let spec = spec_for(&hw, state, "lab");
        assert_eq!(spec.disks[0].volume.as_deref(), Some("legacy.qcow2"));
        let res = ferry::plan::class::resolve(&spec, None).expect("sized");
        ferry::plan::validate::validate(&spec, &res).expect("a valid spec");

        let (odd, state) = host
            .describe_domain("odd")
            .await
            .expect("describe")
            .expect("defined");
        assert!(matches!(state, DomainState::ShutOff(_)), "{state:?}");
        let a = assess(&odd, state, &pool);
        assert!(a.hardware.is_none());
        let golden = lab.golden_path().to_string_lossy().to_string();
        for needle in [
            format!("has the backing file {golden}"),
            "filesystem mount: host hardware or files passed through".to_string(),
        ] {
            assert!(
                a.blockers.iter().any(|b| b.contains(&needle)),
                "{:?} should mention {needle:?}",
                a.blockers
            );
        }

        assert_eq!(host.describe_domain("absent").await.expect("describe"), None);

        // Ownership recorded in the running domain's metadata and removed again, without a
        // restart (the domain keeps its ID) and in both its running and persistent XML.
        let uuid = legacy.current.uuid.clone();
        let id = || lab.virsh_ok("h1", &["domid", "legacy"]).expect("domid");
        let id_before = id();
        let console = lab.console_path("legacy");
        let def = tiny_def(&lab, "legacy", &uuid, &flat.to_string_lossy(), &console);
        let meta = FerryMetadata {
            owner: def.owner.clone(),
            definition_hash: definition_hash(&def),
            shape: shape(&def),
        };
        host.set_metadata(&uuid, Some(&meta)).await.expect("set");
        host.set_metadata(&uuid, Some(&meta)).await.expect("set again");
        let d = host.lookup_domain(&uuid).await.expect("lookup").expect("there");
        assert_eq!((d.live.as_ref(), d.config.as_ref()), (Some(&meta), Some(&meta)));
        assert_eq!(d.state, DomainState::Running);
        host.set_metadata(&uuid, None).await.expect("remove");
        host.set_metadata(&uuid, None).await.expect("remove again");
        let d = host.lookup_domain(&uuid).await.expect("lookup").expect("there");
        assert_eq!((d.live, d.config, d.state), (None, None, DomainState::Running));
        assert_eq!(id(), id_before, "the domain was not restarted");
        // Shut off: only the persistent definition has metadata to change.
        host.set_metadata(
            &odd.current.uuid,
            Some(&FerryMetadata {
                owner: Owner {
                    uid: odd.current.uuid.clone(),
                    ..meta.owner.clone()
                },
                ..meta.clone()
            }),
        )
        .await
        .expect("set on a shut-off domain");
        let d = host
            .lookup_domain(&odd.current.uuid)
            .await
            .expect("lookup")
            .expect("there");
        assert_eq!(d.config.map(|m| m.owner.uid), Some(odd.current.uuid.clone()));

        lab.virsh_ok("h1", &["destroy", "legacy"]).expect("destroy");
        for name in ["legacy", "odd"] {
            lab.virsh_ok("h1", &["undefine", name]).expect("undefine");
        }
        host.close().await;
    })
    .await;
    blocking(move || lab.down()).await.expect("lab down");
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A sparse VMDK (made by qemu-img) of `sectors` whose embedded descriptor is `descriptor`: how
/// an attacker names a host file inside a file that looks like a single-file VMDK.
fn crafted_vmdk(dir: &Path, name: &str, sectors: u64, descriptor: &str) -> Vec<u8> {
    let path = dir.join(format!("{name}.base"));
    qemu_img(&["create", "-q", "-f", "vmdk", &path.to_string_lossy(), "1M"]);
    let mut f = std::fs::read(&path).expect("vmdk");
    std::fs::remove_file(&path).expect("remove");
    f[12..20].copy_from_slice(&sectors.to_le_bytes());
    f[512..512 + 20 * 512].fill(0);
    f[512..512 + descriptor.len()].copy_from_slice(descriptor.as_bytes());
    f
}

/// Imports `url` (declared `format`, checksum `sha`) into the lab's pool and waits for the end.
async fn import_once(
    uri: &str,
    pool_dir: &str,
    url: &str,
    sha: &str,
    format: ferry::api::virtual_machine::SourceFormat,
) -> (
    ferry::controller::image_import::ImportKey,
    Result<Vec<ferry::controller::image_import::ImportState>, String>,
) {
    use ferry::controller::image_import::{FailureKind, ImportKey};
    let key = ImportKey::new(uri, pool_dir, true, sha, format);
    let outcome = import_key(&key, uri, url, format).await;
    let outcome = outcome.map_err(|(kind, message)| {
        assert_eq!(kind, FailureKind::Refused, "refused, not failed: {message}");
        message
    });
    (key, outcome)
}

/// Imports `url` (declared `format`) as `key` into the lab's pool and waits for the end: the
/// phases seen, or how it failed.
async fn import_key(
    key: &ferry::controller::image_import::ImportKey,
    uri: &str,
    url: &str,
    format: ferry::api::virtual_machine::SourceFormat,
) -> Result<
    Vec<ferry::controller::image_import::ImportState>,
    (ferry::controller::image_import::FailureKind, String),
> {
    use ferry::controller::image_import::{self, ImportState};
    let imports = image_import::Imports::default();
    let hosts = HostConnections::default();
    let source = image_import::source("lab", "lab", url);
    imports.start(
        &hosts,
        key.clone(),
        &source,
        import_request(uri, url, format),
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen = Vec::new();
    loop {
        match imports.state(key, &source, Instant::now()) {
            Some(ImportState::Done) => return Ok(seen),
            Some(ImportState::Failed { message, kind, .. }) => return Err((kind, message)),
            Some(s) => {
                let phase = match s {
                    ImportState::Running { .. } => ImportState::Running {
                        bytes: 0,
                        total: None,
                    },
                    s => s,
                };
                if seen.last() != Some(&phase) {
                    seen.push(phase);
                }
            }
            None => {}
        }
        assert!(
            Instant::now() < deadline,
            "import of {url} not done in 180 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A disk taken out of an OVA: the tiny guest's disk as a stream-optimized VMDK, the second
/// member of a tar archive after an OVF descriptor, imported by its member name and checked by
/// the whole archive's SHA-256; the converted image holds what the guest saw. A member the
/// archive lacks, or an archive whose checksum is not the one given, leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_is_taken_out_of_an_ova() {
    use ferry::api::virtual_machine::SourceFormat;
    use ferry::controller::image_import::{FailureKind, ImportKey};
    if !Lab::should_run("a_disk_is_taken_out_of_an_ova") {
        return;
    }
    let lab = blocking(|| Lab::up(1)).await.expect("lab up");
    bounded(Duration::from_secs(300), async {
        let uri = lab.host("h1").unix_uri.clone();
        let host = LibvirtHost::connect(&uri, opts()).await.expect("connect");
        let pool_dir = lab.pool_dir.to_string_lossy().to_string();
        host.ensure_pool(POOL, Some(&pool_dir)).await.expect("pool");
        let served = tempfile::tempdir().expect("tempdir");
        let server = PythonServer::serving(served.path());
        let golden = lab.pool_dir.join(&lab.golden);
        let golden = golden.to_string_lossy().to_string();
        let work = tempfile::tempdir().expect("tempdir");
        let vmdk = work.path().join("appliance-disk1.vmdk");
        qemu_img(&[
            "convert",
            "-q",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            &golden,
            &vmdk.to_string_lossy(),
        ]);
        std::fs::write(work.path().join("appliance.ovf"), "<Envelope/>").expect("ovf");
        let ova = served.path().join("appliance.ova");
        let tar = std::process::Command::new("tar")
            .args(["--format=pax", "-cf"])
            .arg(&ova)
            .args(["appliance.ovf", "appliance-disk1.vmdk"])
            .current_dir(work.path())
            .status()
            .expect("tar");
        assert!(tar.success());
        let sha = ferry::cloud_init::sha256_hex(&std::fs::read(&ova).expect("ova"));
        let url = server.url("appliance.ova");
        let key = |member: &str, sha: &str| {
            ImportKey::new(&uri, &pool_dir, true, sha, SourceFormat::Vmdk).in_archive(Some(member))
        };

        let missing = key("appliance-disk2.vmdk", &sha);
        let (kind, message) = import_key(&missing, &uri, &url, SourceFormat::Vmdk)
            .await
            .expect_err("no such member");
        assert_eq!(kind, FailureKind::Archive, "{message}");
        assert!(
            message.contains("has no member \"appliance-disk2.vmdk\""),
            "{message}"
        );
        let wrong = key("appliance-disk1.vmdk", &"0".repeat(64));
        let (kind, message) = import_key(&wrong, &uri, &url, SourceFormat::Vmdk)
            .await
            .expect_err("wrong checksum");
        assert_eq!(kind, FailureKind::Checksum, "{message}");
        for k in [&missing, &wrong] {
            for v in [Some(k.image_name()), k.download_name()]
                .into_iter()
                .flatten()
            {
                assert_eq!(
                    host.lookup_volume(POOL, &v).await.expect("lookup"),
                    None,
                    "{v}"
                );
            }
        }

        let member = key("./appliance-disk1.vmdk", &sha);
        import_key(&member, &uri, &url, SourceFormat::Vmdk)
            .await
            .unwrap_or_else(|(_, m)| panic!("imported: {m}"));
        let image = host
            .lookup_volume(POOL, &member.image_name())
            .await
            .expect("lookup")
            .expect("the member's image");
        assert_eq!(image.format, "qcow2");
        qemu_img(&["compare", "-q", "-U", &golden, &image.path]);
        assert_ne!(
            member.image_name(),
            ImportKey::new(&uri, &pool_dir, true, &sha, SourceFormat::Vmdk).image_name(),
            "a member is another image than the archive"
        );
        for v in [member.image_name(), member.marker_name()] {
            host.delete_volume(POOL, &v).await.expect("clean up");
        }
        drop(server);
        host.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_images_are_converted_and_images_naming_host_files_refused() {
    use ferry::api::virtual_machine::SourceFormat;
    use ferry::controller::image_import::ImportState;
    if !Lab::should_run("foreign_images_are_converted_and_images_naming_host_files_refused") {
        return;
    }
    let lab = blocking(|| Lab::up(1)).await.expect("lab up");
    bounded(Duration::from_secs(600), async {
        let uri = lab.host("h1").unix_uri.clone();
        let host = LibvirtHost::connect(&uri, opts()).await.expect("connect");
        let pool_dir = lab.pool_dir.to_string_lossy().to_string();
        host.ensure_pool(POOL, Some(&pool_dir)).await.expect("pool");
        let served = tempfile::tempdir().expect("tempdir");
        let server = PythonServer::serving(served.path());
        let golden = lab.pool_dir.join(&lab.golden);
        let golden = golden.to_string_lossy().to_string();

        // The tiny guest's disk in each foreign format: converted into a standalone qcow2 that
        // holds what the guest saw in the original, the download gone.
        for (format, file, opts) in [
            (SourceFormat::Vmdk, "tiny.vmdk", "subformat=streamOptimized"),
            (SourceFormat::Vmdk, "tiny-sparse.vmdk", "subformat=monolithicSparse"),
            (SourceFormat::Vdi, "tiny.vdi", "static=off"),
            (SourceFormat::Vhdx, "tiny.vhdx", "subformat=dynamic"),
            (SourceFormat::Vhdx, "tiny-fixed.vhdx", "subformat=fixed,block_size=1M"),
            (SourceFormat::Vpc, "tiny.vhd", "subformat=dynamic"),
        ] {
            let path = served.path().join(file);
            let path = path.to_string_lossy().to_string();
            qemu_img(&["convert", "-q", "-O", format.as_str(), "-o", opts, &golden, &path]);
            let sha = ferry::cloud_init::sha256_hex(&std::fs::read(&path).expect("served"));
            let (key, outcome) =
                import_once(&uri, &pool_dir, &server.url(file), &sha, format).await;
            outcome.unwrap_or_else(|m| panic!("{file}: {m}"));
            let image = host
                .lookup_volume(POOL, &key.image_name())
                .await
                .expect("lookup")
                .unwrap_or_else(|| panic!("{file}: imported"));
            assert_eq!(image.format, "qcow2", "{file}");
            let info = qemu_img(&["info", "--output=json", "-U", &image.path]);
            let info: serde_json::Value =
                serde_json::from_slice(&info.stdout).expect("qemu-img info");
            assert!(info.get("backing-filename").is_none(), "{file}: {info}");
            qemu_img(&["compare", "-q", "-U", &golden, &image.path]);
            for left in [key.download_name(), key.scratch_name()].into_iter().flatten() {
                assert_eq!(
                    host.lookup_volume(POOL, &left).await.expect("lookup"),
                    None,
                    "{file}: {left} is removed"
                );
            }
            assert!(
                host.lookup_volume(POOL, &key.marker_name())
                    .await
                    .expect("lookup")
                    .is_some(),
                "{file}: marked complete"
            );
            for v in [key.image_name(), key.marker_name()] {
                host.delete_volume(POOL, &v).await.expect("clean up");
            }
        }

        // A conversion long enough to be seen: reported as its own phase after the download.
        let raw = served.path().join("big.raw");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let data: Vec<u8> = (0..(96u64 << 20) / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        std::fs::write(&raw, &data).expect("raw");
        let big = served.path().join("big.vmdk");
        qemu_img(&[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vmdk",
            &raw.to_string_lossy(),
            &big.to_string_lossy(),
        ]);
        let sha = ferry::cloud_init::sha256_hex(&std::fs::read(&big).expect("big"));
        let (key, outcome) = import_once(
            &uri,
            &pool_dir,
            &server.url("big.vmdk"),
            &sha,
            SourceFormat::Vmdk,
        )
        .await;
        let phases = outcome.expect("big.vmdk imported");
        let running = ImportState::Running {
            bytes: 0,
            total: None,
        };
        let at = |s: &ImportState| phases.iter().position(|p| p == s);
        assert!(
            at(&running).is_some() && at(&running) < at(&ImportState::Converting),
            "downloading, then converting: {phases:?}"
        );
        for v in [key.image_name(), key.marker_name()] {
            host.delete_volume(POOL, &v).await.expect("clean up");
        }

        // Files that name a host file: refused from their first bytes, nothing stored, and the
        // file's content is nowhere in the pool.
        let secret = "FERRY-CANARY-not-for-tenants\n";
        let canary = lab.dir.join("canary.secret");
        std::fs::write(&canary, secret.repeat(64)).expect("canary");
        let canary = canary.to_string_lossy().to_string();
        let desc = |create: &str, extra: &str, extent: &str| {
            format!(
                "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"{create}\"\n{extra}{extent}\n"
            )
        };
        // A VHDX whose disk starts with a qcow2 header naming the canary as its backing file:
        // fine as a VHDX, but libvirt would probe the raw disk read out of it as qcow2.
        let inner = served.path().join("inner.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &canary,
            "-F",
            "raw",
            &inner.to_string_lossy(),
            "1M",
        ]);
        let wrapped = served.path().join("wrapped.vhdx");
        qemu_img(&[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vhdx",
            &inner.to_string_lossy(),
            &wrapped.to_string_lossy(),
        ]);
        let wrapped = std::fs::read(&wrapped).expect("vhdx");
        let vmdk = SourceFormat::Vmdk;
        let attacks: Vec<(&str, SourceFormat, Vec<u8>, &str)> = vec![
            (
                "qcow2-inside.vhdx",
                SourceFormat::Vhdx,
                wrapped,
                "reads the disk inside the vhdx file as qcow2",
            ),
            (
                "capacity-0.vmdk",
                vmdk,
                crafted_vmdk(
                    served.path(),
                    "c0",
                    0,
                    &desc("monolithicFlat", "", &format!("RW 8 FLAT \"{canary}\" 0")),
                ),
                "capacity 0",
            ),
            (
                "extent.vmdk",
                vmdk,
                crafted_vmdk(
                    served.path(),
                    "ex",
                    2048,
                    &desc("monolithicSparse", "", &format!("RW 2048 SPARSE \"{canary}\"")),
                ),
                "names the extent",
            ),
            (
                "parent.vmdk",
                vmdk,
                crafted_vmdk(
                    served.path(),
                    "pa",
                    2048,
                    &desc(
                        "monolithicSparse",
                        &format!("parentFileNameHint=\"{canary}\"\n"),
                        "RW 2048 SPARSE \"parent.vmdk\"",
                    ),
                ),
                "parentFileNameHint",
            ),
            (
                "text.vmdk",
                vmdk,
                desc("monolithicFlat", "", &format!("RW 8 FLAT \"{canary}\" 0")).into_bytes(),
                "text descriptor",
            ),
        ];
        for (file, format, bytes, why) in attacks {
            std::fs::write(served.path().join(file), &bytes).expect("serve");
            let sha = ferry::cloud_init::sha256_hex(&bytes);
            let (key, outcome) =
                import_once(&uri, &pool_dir, &server.url(file), &sha, format).await;
            let message = outcome.expect_err(file);
            assert!(message.contains(why), "{file}: {message}");
            let made = [key.image_name(), key.marker_name()];
            let left = [key.download_name(), key.scratch_name()];
            for v in made.into_iter().chain(left.into_iter().flatten()) {
                assert_eq!(
                    host.lookup_volume(POOL, &v).await.expect("lookup"),
                    None,
                    "{file}: nothing stored"
                );
            }
        }
        for entry in std::fs::read_dir(&lab.pool_dir).expect("pool dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                let content = std::fs::read(&path).expect("read");
                assert!(
                    !content
                        .windows(secret.len())
                        .any(|w| w == secret.as_bytes()),
                    "{} holds the canary",
                    path.display()
                );
            }
        }
        drop(server);
        host.close().await;
    })
    .await;
    blocking(move || lab.down()).await.expect("lab down");
}

/// Clients connected to lab host `host`'s libvirtd, as its admin interface counts them.
fn libvirtd_clients(lab: &Lab, host: &str) -> usize {
    let socket = lab.dir.join(host).join("run/libvirt/libvirt-admin-sock");
    let uri = format!("libvirtd+unix:///system?socket={}", socket.display());
    let out = lab::run_cmd(
        "virt-admin",
        &["-c", &uri, "srv-clients-list", "libvirtd"],
        Duration::from_secs(10),
    );
    assert!(out.success(), "virt-admin: {out:?}");
    // A header, a rule, then one line per client.
    out.stdout
        .lines()
        .skip(2)
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// [`libvirtd_clients`] of h1, off the async workers.
async fn h1_clients(lab: &Arc<Lab>) -> usize {
    let lab = lab.clone();
    blocking(move || libvirtd_clients(&lab, "h1")).await
}

/// libvirtd serves 5 calls at once per client: with 8 calls for one host under way, the
/// handle opens a second connection for the calls beyond 5 (every call answered), and closes it
/// with the first.
#[tokio::test]
async fn calls_beyond_what_libvirtd_serves_per_client_take_a_second_connection() {
    if !Lab::should_run("calls_beyond_what_libvirtd_serves_per_client_take_a_second_connection") {
        return;
    }
    let lab = Arc::new(blocking(|| Lab::up(1)).await.expect("lab up"));
    let uri = lab.host("h1").unix_uri.clone();
    bounded(Duration::from_secs(120), async {
        let idle = h1_clients(&lab).await;
        let opts = ConnectOptions {
            parallel_calls: 8,
            ..opts()
        };
        let host = LibvirtHost::connect(&uri, opts).await.expect("connect");
        // One call at a time: one connection.
        host.host_info().await.expect("host_info");
        let one = h1_clients(&lab).await;
        assert_eq!(one, idle + 1, "one connection for calls one at a time");
        // Many at once, for a while: the workers beyond 5 open a second connection.
        let until = Instant::now() + Duration::from_secs(2);
        let callers: Vec<_> = (0..32)
            .map(|_| {
                let h = host.clone();
                tokio::spawn(async move {
                    let mut answered = 0;
                    while Instant::now() < until {
                        h.list_domains().await.expect("list_domains");
                        answered += 1;
                    }
                    answered
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let busy = h1_clients(&lab).await;
        for c in callers {
            assert!(c.await.expect("caller") > 0, "every caller was answered");
        }
        assert_eq!(
            busy,
            idle + 2,
            "a second connection while more than 5 calls run"
        );
        host.close().await;
        let closed = h1_clients(&lab).await;
        assert_eq!(closed, idle, "both connections closed");
    })
    .await;
}
