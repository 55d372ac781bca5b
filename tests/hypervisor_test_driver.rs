//! `LibvirtHost` and `HostConnections` against libvirt's in-process `test:///` driver, plus
//! loopback-only failure cases (a missing unix socket, a TCP listener that never answers).
//!
//! Each test uses its own `test:///<file>` host so tests do not share state.

use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry::hypervisor::*;
use ferry::plan::domain::*;

/// Every test is bounded: a hang fails instead of blocking the suite.
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test took longer than 60 s")
}

/// A fresh fake host: `test:///<tmp>/host.xml`, with 8 CPUs and 16 GiB.
struct TestHost {
    _dir: tempfile::TempDir,
    uri: String,
}

fn test_host() -> TestHost {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("host.xml");
    std::fs::write(
        &path,
        "<node><cpu><mhz>2000</mhz><model>x86_64</model><active>8</active><nodes>1</nodes>\
         <sockets>1</sockets><cores>8</cores><threads>1</threads></cpu>\
         <memory>16777216</memory></node>",
    )
    .expect("write host file");
    TestHost {
        uri: format!("test://{}", path.display()),
        _dir: dir,
    }
}

fn opts() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_secs(5),
        call_timeout: Duration::from_secs(10),
        keepalive_interval: 2,
        keepalive_count: 3,
        ..ConnectOptions::default()
    }
}

fn definition(name: &str, uuid: &str) -> DomainDefinition {
    DomainDefinition {
        vcpus: 2,
        memory_kib: 256 * 1024,
        ..fake::sample_definition("default", name, uuid, "/pool/root.qcow2")
    }
}

const UUID: &str = "5d1f4a0e-8c47-4a8e-9a52-0c6a1e2b3c4d";

#[tokio::test]
async fn host_info_reports_the_fake_node() {
    bounded(async {
        let h = test_host();
        let host = LibvirtHost::connect(&h.uri, opts()).await.expect("connect");
        let info = host.host_info().await.expect("host_info");
        assert_eq!(info.cpus, 8);
        assert_eq!(info.memory_kib, 16 * 1024 * 1024);
        assert!(!info.hostname.is_empty());
        assert!(info.libvirt_version.starts_with("9."), "{info:?}");
        assert_eq!(info.hypervisor_version.split('.').count(), 3);
        assert!(!info.kvm, "the test driver offers no kvm domains");
        assert_eq!(host.uri(), h.uri);
        assert!(host.is_connected());
        host.close().await;
    })
    .await
}

#[tokio::test]
async fn domain_life_cycle_is_idempotent() {
    bounded(async {
        let h = test_host();
        let host = LibvirtHost::connect(&h.uri, opts()).await.expect("connect");
        let def = definition("default_vm1", UUID);

        assert_eq!(host.lookup_domain(UUID).await.expect("lookup"), None);
        host.define_domain(&def).await.expect("define");
        host.define_domain(&def).await.expect("define again");

        let d = host
            .lookup_domain(UUID)
            .await
            .expect("lookup")
            .expect("defined");
        assert_eq!(d.name, "default_vm1");
        assert_eq!(d.uuid, UUID);
        assert!(d.persistent);
        assert!(matches!(d.state, DomainState::ShutOff(_)));
        assert_eq!(d.live, None, "not running: no live metadata");
        let config = d.config.expect("ferry metadata from the inactive XML");
        assert_eq!(config.owner, def.owner);
        assert_eq!(config.definition_hash, definition_hash(&def));
        assert_eq!(config.shape, shape(&def));

        host.start_domain(UUID).await.expect("start");
        host.start_domain(UUID).await.expect("start again is fine");
        let d = host
            .lookup_domain(UUID)
            .await
            .expect("lookup")
            .expect("defined");
        assert_eq!(d.state, DomainState::Running);
        assert_eq!(
            d.live.map(|m| m.definition_hash),
            Some(definition_hash(&def))
        );

        host.shutdown_domain(UUID).await.expect("shutdown");
        let d = host
            .lookup_domain(UUID)
            .await
            .expect("lookup")
            .expect("defined");
        assert_eq!(d.state, DomainState::ShutOff(ShutOffReason::Shutdown));
        host.shutdown_domain(UUID).await.expect("shutdown when off");

        host.start_domain(UUID).await.expect("start");
        host.destroy_domain(UUID).await.expect("destroy");
        let d = host
            .lookup_domain(UUID)
            .await
            .expect("lookup")
            .expect("defined");
        assert_eq!(d.state, DomainState::ShutOff(ShutOffReason::Destroyed));
        host.destroy_domain(UUID).await.expect("destroy when off");

        host.undefine_domain(UUID).await.expect("undefine");
        assert_eq!(host.lookup_domain(UUID).await.expect("lookup"), None);
        host.undefine_domain(UUID)
            .await
            .expect("undefine when gone");
        host.destroy_domain(UUID).await.expect("destroy when gone");

        let err = host
            .start_domain(UUID)
            .await
            .expect_err("start a missing domain");
        assert!(err.is_not_found(), "{err:?}");
        assert!(!err.is_connection_lost());
        let err = host
            .shutdown_domain(UUID)
            .await
            .expect_err("shutdown a missing domain");
        assert!(err.is_not_found(), "{err:?}");
        assert!(host.is_connected());
        host.close().await;
    })
    .await
}

#[tokio::test]
async fn undefining_a_running_domain_leaves_it_transient() {
    bounded(async {
        let h = test_host();
        let host = LibvirtHost::connect(&h.uri, opts()).await.expect("connect");
        host.define_domain(&definition("t", UUID))
            .await
            .expect("define");
        host.start_domain(UUID).await.expect("start");
        host.undefine_domain(UUID)
            .await
            .expect("undefine while running");
        let d = host
            .lookup_domain(UUID)
            .await
            .expect("lookup")
            .expect("still running");
        assert!(!d.persistent);
        assert_eq!(d.state, DomainState::Running);
        assert_eq!(d.config, None, "no persistent definition any more");
        assert!(d.live.is_some());
        host.undefine_domain(UUID)
            .await
            .expect("undefine a transient domain");
        host.destroy_domain(UUID).await.expect("destroy");
        assert_eq!(host.lookup_domain(UUID).await.expect("lookup"), None);
        host.close().await;
    })
    .await
}

#[tokio::test]
async fn list_domains_includes_foreign_domains() {
    bounded(async {
        let h = test_host();
        let host = LibvirtHost::connect(&h.uri, opts()).await.expect("connect");
        let uuids = [
            "00000000-0000-4000-8000-000000000001",
            "00000000-0000-4000-8000-000000000002",
        ];
        for (i, u) in uuids.iter().enumerate() {
            host.define_domain(&definition(&format!("vm{i}"), u))
                .await
                .expect("define");
        }
        host.start_domain(uuids[1]).await.expect("start");
        // Someone else's domain, without ferry metadata.
        host.define_xml(
            "<domain type='test'><name>foreign</name><memory>65536</memory>\
             <os><type>hvm</type></os></domain>",
        )
        .await
        .expect("define foreign");

        let mut all = host.list_domains().await.expect("list");
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["foreign", "vm0", "vm1"]);
        assert_eq!(all[0].config, None);
        assert_eq!(all[0].live, None);
        assert!(matches!(all[1].state, DomainState::ShutOff(_)));
        assert_eq!(all[2].state, DomainState::Running);
        assert!(all[2].live.is_some() && all[2].config.is_some());
        host.close().await;
    })
    .await
}

#[tokio::test]
async fn refused_operations_are_not_connection_losses() {
    bounded(async {
        let h = test_host();
        let host = LibvirtHost::connect(&h.uri, opts()).await.expect("connect");
        for bad in ["<domain", "<domain type='kvm'><name>x</name></domain>", ""] {
            let err = host.define_xml(bad).await.expect_err("invalid XML");
            match &err {
                HypervisorError::OperationFailed {
                    operation, code, ..
                } => {
                    assert_eq!(*operation, "define_domain");
                    assert_ne!(*code, 0);
                }
                other => panic!("{other:?}"),
            }
        }
        let err = host
            .lookup_domain("not-a-uuid")
            .await
            .expect_err("bad uuid");
        assert!(!err.is_connection_lost(), "{err:?}");
        assert!(host.is_connected());
        assert!(host.host_info().await.is_ok());
        host.close().await;
    })
    .await
}

#[tokio::test]
async fn storage_pool_and_overlay() {
    bounded(async {
        let h = test_host();
        let host = LibvirtHost::connect(&h.uri, opts()).await.expect("connect");

        let err = host
            .ensure_pool("images", None)
            .await
            .expect_err("no pool, no path");
        assert!(err.is_not_found(), "{err:?}");
        let path = host
            .ensure_pool("images", Some("/srv/ferry/images"))
            .await
            .expect("define pool");
        assert_eq!(path, "/srv/ferry/images");
        assert_eq!(
            host.ensure_pool("images", Some("/elsewhere"))
                .await
                .expect("exists"),
            "/srv/ferry/images",
            "an existing pool is used as it is"
        );
        assert_eq!(
            host.ensure_pool("images", None).await.expect("exists"),
            path
        );

        assert_eq!(
            host.lookup_volume("images", "golden.qcow2")
                .await
                .expect("lookup"),
            None
        );
        let err = host
            .lookup_volume("nope", "x")
            .await
            .expect_err("missing pool");
        assert!(err.is_not_found(), "{err:?}");

        let golden = VolumeInfo {
            name: "golden.qcow2".into(),
            path: "/srv/ferry/images/golden.qcow2".into(),
            capacity: 64 << 20,
            format: "qcow2".into(),
        };
        let vol = host
            .create_overlay("images", "vm1-root.qcow2", &golden, "qcow2", 1 << 20)
            .await
            .expect("create overlay");
        assert_eq!(vol.name, "vm1-root.qcow2");
        assert_eq!(vol.path, "/srv/ferry/images/vm1-root.qcow2");
        assert_eq!(
            vol.capacity,
            64 << 20,
            "never smaller than the backing image"
        );
        assert_eq!(vol.format, "qcow2");
        assert_eq!(
            host.lookup_volume("images", "vm1-root.qcow2")
                .await
                .expect("lookup"),
            Some(vol.clone())
        );
        let err = host
            .create_overlay("images", "vm1-root.qcow2", &golden, "qcow2", 0)
            .await
            .expect_err("name taken");
        assert!(!err.is_connection_lost(), "{err:?}");

        host.delete_volume("images", "vm1-root.qcow2")
            .await
            .expect("delete");
        host.delete_volume("images", "vm1-root.qcow2")
            .await
            .expect("delete again");
        host.delete_volume("no-such-pool", "x")
            .await
            .expect("delete in a missing pool");
        assert_eq!(
            host.lookup_volume("images", "vm1-root.qcow2")
                .await
                .expect("lookup"),
            None
        );
        host.close().await;
    })
    .await
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(&'static str, bool)>>);

impl CallObserver for Recorder {
    fn observe(&self, op: &'static str, seconds: f64, ok: bool) {
        assert!(seconds >= 0.0);
        if let Ok(mut v) = self.0.lock() {
            v.push((op, ok));
        }
    }
}

#[tokio::test]
async fn calls_are_observed_and_closed_handles_fail_fast() {
    bounded(async {
        let h = test_host();
        let rec = Arc::new(Recorder::default());
        let o = ConnectOptions {
            observer: Some(rec.clone()),
            ..opts()
        };
        let host = LibvirtHost::connect(&h.uri, o).await.expect("connect");
        host.host_info().await.expect("host_info");
        let _ = host.define_xml("<bad").await;
        host.close().await;
        assert!(!host.is_connected());
        let err = host.host_info().await.expect_err("closed");
        assert!(err.is_connection_lost(), "{err:?}");
        host.close().await; // twice is fine

        let seen = rec.0.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(
            seen,
            vec![
                ("connect", true),
                ("host_info", true),
                ("define_domain", false),
                ("host_info", false),
            ]
        );
    })
    .await
}

#[tokio::test]
async fn concurrent_calls_on_one_handle() {
    bounded(async {
        let h = test_host();
        let host = LibvirtHost::connect(&h.uri, opts()).await.expect("connect");
        let mut tasks = Vec::new();
        for i in 0..16u32 {
            let host = host.clone();
            tasks.push(tokio::spawn(async move {
                let uuid = format!("00000000-0000-4000-8000-{i:012}");
                host.define_domain(&definition(&format!("c{i}"), &uuid))
                    .await?;
                host.start_domain(&uuid).await?;
                host.lookup_domain(&uuid).await
            }));
        }
        for t in tasks {
            let d = t.await.expect("join").expect("calls").expect("found");
            assert_eq!(d.state, DomainState::Running);
        }
        assert_eq!(host.list_domains().await.expect("list").len(), 16);
        host.close().await;
    })
    .await
}

#[tokio::test]
async fn missing_unix_socket_is_a_lost_connection() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let uri = format!(
            "qemu+unix:///system?socket={}/no-such-sock",
            dir.path().display()
        );
        let started = Instant::now();
        let err = LibvirtHost::connect(&uri, opts())
            .await
            .expect_err("no daemon");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(
            matches!(err, HypervisorError::ConnectionLost { .. }),
            "{err:?}"
        );
    })
    .await
}

/// A loopback TCP port that accepts connections and never says a word: libvirt would wait for
/// the handshake for as long as the kernel keeps the connection.
struct SilentServer {
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                if let Ok((s, _)) = listener.accept() {
                    held.push(s);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Dropping the sockets ends the abandoned libvirt attempts with EOF.
        });
        SilentServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn uri(&self) -> String {
        format!("qemu+tcp://127.0.0.1:{}/system", self.port)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test]
async fn connect_timeout_bounds_a_silent_host() {
    bounded(async {
        let server = SilentServer::start();
        let o = ConnectOptions {
            connect_timeout: Duration::from_millis(500),
            ..opts()
        };
        let started = Instant::now();
        let err = LibvirtHost::connect(&server.uri(), o)
            .await
            .expect_err("silent host");
        let took = started.elapsed();
        assert!(
            matches!(err, HypervisorError::ConnectTimeout { .. }),
            "{err:?}"
        );
        assert!(err.is_connection_lost());
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(2),
            "{took:?}"
        );
    })
    .await
}

// ------------------------------------------------------------------------------------------------
// Registry
// ------------------------------------------------------------------------------------------------

/// Counts attempts per URI, delegating to libvirt.
#[derive(Default)]
struct Counting {
    attempts: Mutex<Vec<String>>,
}

impl Counting {
    fn count(&self, uri: &str) -> usize {
        self.attempts
            .lock()
            .map(|a| a.iter().filter(|u| *u == uri).count())
            .unwrap_or(0)
    }
}

#[async_trait]
impl Connector for Counting {
    async fn connect(&self, uri: &str, opts: &ConnectOptions) -> HvResult<Arc<dyn Hypervisor>> {
        if let Ok(mut a) = self.attempts.lock() {
            a.push(uri.to_string());
        }
        LibvirtConnector.connect(uri, opts).await
    }
}

#[tokio::test]
async fn registry_reuses_and_replaces_connections() {
    bounded(async {
        let h = test_host();
        let counting = Arc::new(Counting::default());
        let reg = HostConnections::with_connector(counting.clone());
        let a = reg.get(&h.uri, &opts()).await.expect("connect");
        let b = reg.clone().get(&h.uri, &opts()).await.expect("reuse");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(counting.count(&h.uri), 1);
        assert!(reg.existing(&h.uri).await.is_some());
        assert!(reg.existing("test:///nowhere").await.is_none());

        // A handle that lost its connection is replaced at the next get.
        a.close().await;
        let c = reg.get(&h.uri, &opts()).await.expect("reconnect");
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(c.is_connected());
        assert_eq!(counting.count(&h.uri), 2);

        // invalidate closes it and the next get reconnects at once.
        reg.invalidate(&h.uri).await;
        assert!(!c.is_connected());
        assert!(reg.existing(&h.uri).await.is_none());
        let d = reg.get(&h.uri, &opts()).await.expect("reconnect");
        assert!(d.is_connected());
        assert_eq!(counting.count(&h.uri), 3);

        reg.close_all().await;
        assert!(!d.is_connected());
    })
    .await
}

/// A sibling registry opens its own connection through the same connector, and closing one
/// registry's connections leaves the other's open.
#[tokio::test]
async fn a_sibling_registry_keeps_connections_of_its_own() {
    bounded(async {
        let h = test_host();
        let counting = Arc::new(Counting::default());
        let reg = HostConnections::with_connector(counting.clone());
        let probes = reg.sibling();
        let a = reg.get(&h.uri, &opts()).await.expect("connect");
        let b = probes
            .get(&h.uri, &opts())
            .await
            .expect("connect the sibling");
        assert!(!Arc::ptr_eq(&a, &b), "two connections");
        assert_eq!(counting.count(&h.uri), 2, "both through the same connector");
        probes.invalidate(&h.uri).await;
        assert!(!b.is_connected());
        assert!(a.is_connected(), "the shared connection is untouched");
        assert!(reg.existing(&h.uri).await.is_some());
        reg.close_all().await;
        probes.close_all().await;
    })
    .await
}

#[tokio::test]
async fn registry_connects_once_for_concurrent_callers() {
    bounded(async {
        let server = SilentServer::start();
        let counting = Arc::new(Counting::default());
        let reg = HostConnections::with_connector(counting.clone())
            .with_backoff(Duration::from_secs(5), Duration::from_secs(5));
        let o = ConnectOptions {
            connect_timeout: Duration::from_millis(400),
            ..opts()
        };
        let uri = server.uri();
        let started = Instant::now();
        let results = futures::future::join_all((0..10).map(|_| reg.get(&uri, &o))).await;
        for r in &results {
            assert!(matches!(r, Err(HypervisorError::ConnectTimeout { .. })));
        }
        assert_eq!(counting.count(&uri), 1, "single flight");
        assert!(started.elapsed() < Duration::from_secs(2));

        // Same for a host that connects: one attempt, one shared handle.
        let h = test_host();
        let got = futures::future::join_all((0..10).map(|_| reg.get(&h.uri, &o))).await;
        let first = got[0].as_ref().expect("connect").clone();
        for g in &got {
            assert!(Arc::ptr_eq(g.as_ref().expect("connect"), &first));
        }
        assert_eq!(counting.count(&h.uri), 1);
        reg.close_all().await;
    })
    .await
}

#[tokio::test]
async fn registry_backs_off_after_a_failure_without_slowing_other_hosts() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let dead = format!("qemu+unix:///system?socket={}/none", dir.path().display());
        let silent = SilentServer::start();
        let h = test_host();
        let counting = Arc::new(Counting::default());
        let reg = HostConnections::with_connector(counting.clone())
            .with_backoff(Duration::from_millis(600), Duration::from_secs(2));
        let o = ConnectOptions {
            connect_timeout: Duration::from_millis(800),
            ..opts()
        };

        let first = reg.get(&dead, &o).await.expect_err("dead host");
        assert!(first.is_connection_lost());
        // Within the window: the same error, at once, without a new attempt.
        for _ in 0..5 {
            let started = Instant::now();
            let again = reg.get(&dead, &o).await.expect_err("still backing off");
            assert_eq!(again, first);
            assert!(started.elapsed() < Duration::from_millis(50));
        }
        assert_eq!(counting.count(&dead), 1);

        // A slow host being tried does not delay a healthy one.
        let slow = {
            let reg = reg.clone();
            let uri = silent.uri();
            let o = o.clone();
            tokio::spawn(async move { reg.get(&uri, &o).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        reg.get(&h.uri, &o).await.expect("healthy host");
        assert!(started.elapsed() < Duration::from_millis(300));
        assert!(slow.await.expect("join").is_err());

        // After the window: one new attempt, then a longer window.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(reg.get(&dead, &o).await.is_err());
        assert_eq!(counting.count(&dead), 2);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(reg.get(&dead, &o).await.is_err());
        assert_eq!(counting.count(&dead), 2, "second window is 1.2 s");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(reg.get(&dead, &o).await.is_err());
        assert_eq!(counting.count(&dead), 3);
        reg.close_all().await;
    })
    .await
}

/// A fake host whose connection can be made to look lost, to test the registry alone.
struct Flaky {
    uri: String,
    up: std::sync::atomic::AtomicBool,
    /// Lost because of the host (as libvirt's close callback reports), not closed by ferry.
    lost_by_host: std::sync::atomic::AtomicBool,
    closed: AtomicUsize,
    /// The observer the registry handed to this connection.
    observer: Option<Arc<dyn CallObserver>>,
}

impl Flaky {
    /// What a connection does when keepalive finds the host gone.
    fn lose(&self) {
        self.lost_by_host.store(true, Ordering::SeqCst);
        self.up.store(false, Ordering::SeqCst);
        if let Some(o) = &self.observer {
            o.connection_lost(&self.uri, "keepalive timeout");
        }
    }
}

#[async_trait]
impl Hypervisor for Flaky {
    fn uri(&self) -> &str {
        &self.uri
    }
    fn is_connected(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
    fn lost(&self) -> Option<HypervisorError> {
        self.lost_by_host
            .load(Ordering::SeqCst)
            .then(|| HypervisorError::ConnectionLost {
                uri: self.uri.clone(),
                message: "keepalive timeout".into(),
            })
    }
    async fn host_info(&self) -> HvResult<HostInfo> {
        Ok(HostInfo::default())
    }
    async fn list_domains(&self) -> HvResult<Vec<DomainInfo>> {
        Ok(vec![])
    }
    async fn lookup_domain(&self, _: &str) -> HvResult<Option<DomainInfo>> {
        Ok(None)
    }
    async fn define_domain(&self, _: &DomainDefinition) -> HvResult<()> {
        Ok(())
    }
    async fn pause_domain(&self, _: &str) -> HvResult<()> {
        Ok(())
    }
    async fn resume_domain(&self, _: &str) -> HvResult<()> {
        Ok(())
    }
    async fn start_domain(&self, _: &str) -> HvResult<()> {
        Ok(())
    }
    async fn shutdown_domain(&self, _: &str) -> HvResult<()> {
        Ok(())
    }
    async fn destroy_domain(&self, _: &str) -> HvResult<()> {
        Ok(())
    }
    async fn undefine_domain(&self, _: &str) -> HvResult<()> {
        Ok(())
    }
    async fn ensure_pool(&self, _: &str, _: Option<&str>) -> HvResult<String> {
        Ok(String::new())
    }
    async fn lookup_volume(&self, _: &str, _: &str) -> HvResult<Option<VolumeInfo>> {
        Ok(None)
    }
    async fn create_overlay(
        &self,
        _: &str,
        _: &str,
        b: &VolumeInfo,
        _: &str,
        _: u64,
    ) -> HvResult<VolumeInfo> {
        Ok(b.clone())
    }
    async fn read_volume_head(&self, _: &str, _: &str, _: usize) -> HvResult<Vec<u8>> {
        Ok(Vec::new())
    }
    async fn clone_volume(&self, _: &str, _: &str, s: &VolumeInfo) -> HvResult<VolumeInfo> {
        Ok(s.clone())
    }
    async fn upload_volume(
        &self,
        _: &str,
        name: &str,
        capacity: u64,
        _: ferry::hypervisor::UploadSource,
    ) -> HvResult<VolumeInfo> {
        Ok(VolumeInfo {
            name: name.into(),
            path: format!("/{name}"),
            capacity,
            format: "raw".into(),
        })
    }
    async fn delete_volume(&self, _: &str, _: &str) -> HvResult<()> {
        Ok(())
    }
    async fn close(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct FlakyConnector {
    made: Mutex<Vec<Arc<Flaky>>>,
}

#[async_trait]
impl Connector for FlakyConnector {
    async fn connect(&self, uri: &str, o: &ConnectOptions) -> HvResult<Arc<dyn Hypervisor>> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let f = Arc::new(Flaky {
            uri: uri.into(),
            up: true.into(),
            lost_by_host: false.into(),
            closed: AtomicUsize::new(0),
            observer: o.observer.clone(),
        });
        if let Ok(mut m) = self.made.lock() {
            m.push(f.clone());
        }
        Ok(f)
    }
}

#[tokio::test]
async fn registry_closes_lost_connections_it_replaces() {
    bounded(async {
        let connector = Arc::new(FlakyConnector::default());
        let reg = HostConnections::with_connector(connector.clone());
        let a = reg.get("fake://a", &opts()).await.expect("a");
        reg.get("fake://b", &opts()).await.expect("b");
        let made = |i: usize| connector.made.lock().map(|m| m[i].clone()).expect("made");

        // The connection reports itself lost: the next get replaces it and closes the old one.
        made(0).up.store(false, Ordering::SeqCst);
        let a2 = reg.get("fake://a", &opts()).await.expect("a again");
        assert!(!Arc::ptr_eq(&a, &a2));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(made(0).closed.load(Ordering::SeqCst), 1);
        assert_eq!(made(1).closed.load(Ordering::SeqCst), 0, "b untouched");

        reg.close_all().await;
        assert_eq!(made(1).closed.load(Ordering::SeqCst), 1);
        assert_eq!(made(2).closed.load(Ordering::SeqCst), 1);
    })
    .await
}

#[tokio::test]
async fn registry_announces_lost_connections_and_backs_off_before_reconnecting() {
    bounded(async {
        let connector = Arc::new(FlakyConnector::default());
        let reg = HostConnections::with_connector(connector.clone())
            .with_backoff(Duration::from_millis(500), Duration::from_secs(2));
        let mut lost = reg.lost_connections();
        reg.get("fake://a", &opts()).await.expect("a");
        reg.get("fake://b", &opts()).await.expect("b");
        let made = |i: usize| connector.made.lock().map(|m| m[i].clone()).expect("made");
        let count = || connector.made.lock().map(|m| m.len()).unwrap_or(0);

        // The host drops out: announced at once, and the next get reports the loss without a
        // connection attempt (no connect timeout to wait for).
        made(0).lose();
        assert_eq!(lost.try_recv().expect("announced"), "fake://a");
        let started = Instant::now();
        let e = reg.get("fake://a", &opts()).await.expect_err("lost");
        assert!(
            e.is_connection_lost() && e.to_string().contains("keepalive"),
            "{e}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(40),
            "no attempt made"
        );
        assert_eq!(reg.get("fake://a", &opts()).await.expect_err("backoff"), e);
        assert_eq!(count(), 2, "no new attempt within the backoff");
        reg.get("fake://b", &opts()).await.expect("b unaffected");

        // After the backoff: one new attempt, which succeeds.
        tokio::time::sleep(Duration::from_millis(550)).await;
        reg.get("fake://a", &opts()).await.expect("reconnected");
        assert_eq!(count(), 3);

        // A connection ferry closed itself is neither announced nor backed off.
        let b = reg.get("fake://b", &opts()).await.expect("b");
        b.close().await;
        reg.get("fake://b", &opts())
            .await
            .expect("replaced at once");
        assert_eq!(count(), 4);
        assert!(lost.try_recv().is_err(), "nothing more announced");
        reg.close_all().await;
    })
    .await
}

#[tokio::test]
async fn registry_observer_sees_connects_and_calls() {
    bounded(async {
        let h = test_host();
        let seen: Arc<Mutex<Vec<(&'static str, bool)>>> = Arc::default();
        let sink = seen.clone();
        let reg = HostConnections::new(Some(Arc::new(
            move |op: &'static str, secs: f64, ok: bool| {
                assert!(secs >= 0.0);
                if let Ok(mut v) = sink.lock() {
                    v.push((op, ok));
                }
            },
        )));
        let host = reg.get(&h.uri, &opts()).await.expect("connect");
        host.host_info().await.expect("host_info");
        assert!(host.lookup_domain(UUID).await.expect("lookup").is_none());
        reg.close_all().await;
        let seen = seen.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(
            seen,
            vec![
                ("connect", true),
                ("host_info", true),
                ("lookup_domain", true)
            ]
        );
    })
    .await
}
