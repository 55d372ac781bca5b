//! The fake behaves as the libvirt implementation does where controllers can tell.

use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::hypervisor::migration::{MigrationRequest, StorageMode};
use crate::hypervisor::{CallObserver, error_code};
use crate::plan::domain::{DomainState, GuestInfo, GuestInterface, ShutOffReason};

const U1: &str = "00000000-0000-4000-8000-000000000001";
const U2: &str = "00000000-0000-4000-8000-000000000002";

/// Records what an observer hears.
#[derive(Default)]
struct Heard {
    calls: Mutex<Vec<(&'static str, bool)>>,
    lost: Mutex<Vec<String>>,
    changed: Mutex<Vec<String>>,
}

impl CallObserver for Heard {
    fn observe(&self, op: &'static str, _: f64, ok: bool) {
        self.calls.lock().unwrap().push((op, ok));
    }
    fn connection_lost(&self, uri: &str, _: &str) {
        self.lost.lock().unwrap().push(uri.into());
    }
    fn domain_changed(&self, _: &str, uuid: &str) {
        self.changed.lock().unwrap().push(uuid.into());
    }
}

fn opts(observer: &Arc<Heard>) -> ConnectOptions {
    ConnectOptions {
        observer: Some(observer.clone()),
        call_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        ..ConnectOptions::default()
    }
}

async fn connect(fakes: &FakeConnector, uri: &str, heard: &Arc<Heard>) -> Arc<dyn Hypervisor> {
    fakes.connect(uri, &opts(heard)).await.expect("connect")
}

#[tokio::test]
async fn a_domain_lives_through_define_start_redefine_shutdown_undefine() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host("qemu+tcp://h1/system");
    let heard = Arc::new(Heard::default());
    let hv = connect(&fakes, h1.uri(), &heard).await;

    let d = sample_definition("ns", "ns_vm", U1, "/pool/vm.qcow2");
    hv.define_domain(&d).await.expect("define");
    hv.define_domain(&d).await.expect("define again");
    let info = hv.lookup_domain(U1).await.unwrap().expect("defined");
    assert!(matches!(info.state, DomainState::ShutOff(_)));
    assert!(info.persistent && info.live.is_none() && info.config.is_some());

    hv.start_domain(U1).await.expect("start");
    hv.start_domain(U1).await.expect("start when running");
    let running = hv.lookup_domain(U1).await.unwrap().expect("running");
    assert_eq!(running.state, DomainState::Running);
    assert_eq!(running.live, running.config);

    // A new definition applies at the next start: live and config differ meanwhile.
    let mut bigger = d.clone();
    bigger.vcpus = 2;
    hv.define_domain(&bigger).await.expect("redefine");
    let info = hv.lookup_domain(U1).await.unwrap().expect("running");
    assert_eq!(info.vcpus, 1);
    assert_ne!(info.live, info.config);
    assert_eq!(h1.definition(U1), Some(bigger));

    hv.shutdown_domain(U1).await.expect("shutdown");
    let off = h1.domain(U1).expect("still defined");
    assert_eq!(off.state, DomainState::ShutOff(ShutOffReason::Shutdown));
    assert_eq!(off.vcpus, 2);
    hv.shutdown_domain(U1).await.expect("shutdown when off");
    hv.undefine_domain(U1).await.expect("undefine");
    hv.undefine_domain(U1).await.expect("undefine when gone");
    assert_eq!(hv.lookup_domain(U1).await.unwrap(), None);
    let err = hv.start_domain(U1).await.expect_err("gone");
    assert!(err.is_not_found(), "{err:?}");
    // Stops and the undefinition were events; starts and definitions are not.
    assert_eq!(*heard.changed.lock().unwrap(), [U1, U1]);
}

#[tokio::test]
async fn definitions_are_refused_as_libvirt_refuses_them() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host("qemu+tcp://h1/system");
    let hv = connect(&fakes, h1.uri(), &Arc::default()).await;
    let mut bad = sample_definition("ns", "ns_vm", U1, "/p/a\0b");
    let err = hv.define_domain(&bad).await.expect_err("NUL in a path");
    assert!(
        matches!(err, HypervisorError::InvalidDefinition { .. }),
        "{err:?}"
    );
    bad.disks[0].path = "/p/a".into();
    hv.define_domain(&bad).await.expect("define");
    let err = hv
        .define_domain(&sample_definition("ns", "ns_vm", U2, "/p/b"))
        .await
        .expect_err("name taken by another UUID");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(h1.domains().len(), 1);
}

#[tokio::test]
async fn destroying_or_undefining_a_running_domain_follows_libvirt() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host("qemu+tcp://h1/system");
    let hv = connect(&fakes, h1.uri(), &Arc::default()).await;
    h1.add_domain(
        &sample_definition("ns", "ns_a", U1, "/p/a"),
        DomainState::Running,
    )
    .unwrap();
    // Undefined while running: transient until it stops, then gone.
    hv.undefine_domain(U1).await.expect("undefine");
    let t = h1.domain(U1).expect("transient");
    assert!(!t.persistent && t.state == DomainState::Running);
    hv.destroy_domain(U1).await.expect("destroy");
    assert_eq!(h1.domain(U1), None);
    hv.destroy_domain(U1).await.expect("destroy when gone");

    // A guest that ignores the power button keeps running until destroyed.
    h1.add_domain(
        &sample_definition("ns", "ns_b", U2, "/p/b"),
        DomainState::Running,
    )
    .unwrap();
    h1.ignore_shutdown(U2, true);
    hv.shutdown_domain(U2).await.expect("asked");
    assert_eq!(h1.domain(U2).unwrap().state, DomainState::Running);
    hv.destroy_domain(U2).await.expect("destroy");
    assert_eq!(
        h1.domain(U2).unwrap().state,
        DomainState::ShutOff(ShutOffReason::Destroyed)
    );
}

#[tokio::test]
async fn a_disk_runs_on_one_host_of_a_shared_storage_at_a_time() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host("qemu+tcp://h1/system");
    let h2 = fakes.add_host_sharing_storage("qemu+tcp://h2/system", &h1);
    let h3 = fakes.add_host("qemu+tcp://h3/system");
    let d = sample_definition("ns", "ns_vm", U1, "/shared/vm.qcow2");
    h1.add_domain(&d, DomainState::Running).unwrap();
    let hv2 = connect(&fakes, h2.uri(), &Arc::default()).await;
    hv2.define_domain(&d).await.expect("define on h2");
    let err = hv2.start_domain(U1).await.expect_err("locked by h1");
    assert!(err.is_disk_locked(), "{err:?}");
    // Storage of its own: no lock to meet.
    let hv3 = connect(&fakes, h3.uri(), &Arc::default()).await;
    hv3.define_domain(&d).await.expect("define on h3");
    hv3.start_domain(U1).await.expect("h3 has its own disk");
    // h1 loses power: the lock goes with its domains.
    h1.power_off();
    hv2.start_domain(U1).await.expect("lock released");
    assert_eq!(
        h1.domain(U1).unwrap().state,
        DomainState::ShutOff(ShutOffReason::Crashed)
    );
}

#[tokio::test]
async fn lifecycle_events_reach_the_registry() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host("qemu+tcp://h1/system");
    let hosts = fakes.registry();
    let mut events = hosts.domain_events();
    let hv = hosts
        .get(h1.uri(), &ConnectOptions::default())
        .await
        .unwrap();
    hv.define_domain(&sample_definition("ns", "ns_vm", U1, "/p/vm"))
        .await
        .unwrap();
    hv.start_domain(U1).await.unwrap();
    h1.set_state(U1, DomainState::ShutOff(ShutOffReason::Crashed));
    assert_eq!(events.recv().await.unwrap(), U1);
    assert!(events.try_recv().is_err(), "start is not an event");
    h1.set_state(U1, DomainState::Running);
    assert!(events.try_recv().is_err(), "nor is a start from outside");
    h1.set_state(U1, DomainState::Paused);
    assert_eq!(events.recv().await.unwrap(), U1);
}

#[tokio::test]
async fn injected_faults_strike_as_often_as_asked() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host("qemu+tcp://h1/system");
    let heard = Arc::new(Heard::default());
    let hv = connect(&fakes, h1.uri(), &heard).await;
    h1.inject(
        Op::HostInfo,
        Fault::failed(error_code::OPERATION_INVALID, "busy"),
        Times::N(2),
    );
    for _ in 0..2 {
        match hv.host_info().await {
            Err(HypervisorError::OperationFailed {
                code, operation, ..
            }) => {
                assert_eq!(
                    (code, operation),
                    (error_code::OPERATION_INVALID, "host_info")
                );
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(hv.host_info().await.unwrap().hostname, "h1");
    assert!(
        hv.is_connected(),
        "an operation failure keeps the connection"
    );

    h1.inject(Op::ListDomains, Fault::ConnectionLost, Times::Once);
    let err = hv.list_domains().await.expect_err("lost");
    assert!(err.is_connection_lost());
    assert!(!hv.is_connected() && hv.lost().is_some());
    assert!(hv.ping().await.is_err(), "a lost connection stays lost");
    assert_eq!(*heard.lost.lock().unwrap(), [h1.uri()]);
    let log: Vec<(Op, bool)> = h1.calls().iter().map(|c| (c.op, c.ok)).collect();
    assert_eq!(
        log,
        [
            (Op::Connect, true),
            (Op::HostInfo, false),
            (Op::HostInfo, false),
            (Op::HostInfo, true),
            (Op::ListDomains, false),
            (Op::Ping, false),
        ]
    );
    assert_eq!(heard.calls.lock().unwrap().len(), 6);
}

#[tokio::test(flavor = "current_thread")]
async fn slow_calls_are_bounded_by_the_timeouts() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host("qemu+tcp://h1/system");
    h1.inject(
        Op::Connect,
        Fault::Slow(Duration::from_secs(5)),
        Times::Once,
    );
    let err = fakes
        .connect(h1.uri(), &opts(&Arc::default()))
        .await
        .expect_err("connect timeout");
    assert!(
        matches!(err, HypervisorError::ConnectTimeout { .. }),
        "{err:?}"
    );

    let hv = connect(&fakes, h1.uri(), &Arc::default()).await;
    h1.inject(
        Op::Ping,
        Fault::Slow(Duration::from_millis(20)),
        Times::Once,
    );
    hv.ping().await.expect("slow but in time");
    h1.inject(Op::Ping, Fault::Slow(Duration::from_secs(60)), Times::Once);
    let t = Instant::now();
    let err = hv.ping().await.expect_err("past the call timeout");
    assert!(err.is_connection_lost() && t.elapsed() < Duration::from_secs(10));
    assert!(!hv.is_connected());
}

#[tokio::test]
async fn a_partition_loses_connections_and_refuses_new_ones() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host("qemu+tcp://h1/system");
    let hosts = fakes
        .registry()
        .with_backoff(Duration::ZERO, Duration::ZERO);
    let mut lost = hosts.lost_connections();
    let hv = hosts
        .get(h1.uri(), &ConnectOptions::default())
        .await
        .unwrap();
    h1.add_domain(
        &sample_definition("ns", "ns_vm", U1, "/p/vm"),
        DomainState::Running,
    )
    .unwrap();
    h1.set_reachable(false);
    assert_eq!(lost.recv().await.unwrap(), h1.uri());
    assert!(!hv.is_connected());
    let err = hosts
        .get(h1.uri(), &ConnectOptions::default())
        .await
        .expect_err("the loss is reported");
    assert!(err.is_connection_lost());
    assert!(
        hosts
            .get(h1.uri(), &ConnectOptions::default())
            .await
            .is_err()
    );
    assert_eq!(h1.domain(U1).unwrap().state, DomainState::Running);

    h1.set_reachable(true);
    let again = hosts
        .get(h1.uri(), &ConnectOptions::default())
        .await
        .unwrap();
    assert!(again.lookup_domain(U1).await.unwrap().is_some());
    assert_eq!(h1.open_connections(), 1);
    let rejected = fakes.add_host("qemu+tls://h2/system");
    rejected.inject(
        Op::Connect,
        Fault::Rejected("bad certificate".into()),
        Times::Always,
    );
    let err = hosts
        .get(rejected.uri(), &ConnectOptions::default())
        .await
        .expect_err("rejected");
    assert!(matches!(err, HypervisorError::Rejected { .. }), "{err:?}");
    assert!(fakes.host("qemu+tcp://nowhere/system").is_none());
}

#[tokio::test]
async fn a_connection_opened_again_is_announced_the_first_is_not() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host("qemu+tcp://h1/system");
    let h2 = fakes.add_host("qemu+tcp://h2/system");
    let hosts = fakes
        .registry()
        .with_backoff(Duration::ZERO, Duration::ZERO);
    let mut again = hosts.reconnected();
    let opts = ConnectOptions::default();
    hosts.get(h1.uri(), &opts).await.unwrap();
    hosts.get(h1.uri(), &opts).await.unwrap();
    assert!(again.try_recv().is_err(), "a first connection is not news");

    // Lost, then opened again: announced once.
    h1.set_reachable(false);
    assert!(hosts.get(h1.uri(), &opts).await.is_err());
    assert!(hosts.get(h1.uri(), &opts).await.is_err());
    h1.set_reachable(true);
    hosts.get(h1.uri(), &opts).await.unwrap();
    hosts.get(h1.uri(), &opts).await.unwrap();
    assert_eq!(again.try_recv().unwrap(), h1.uri());
    assert!(
        again.try_recv().is_err(),
        "one announcement per new connection"
    );

    // Closed by ferry and opened again: its events were not heard either.
    hosts.invalidate(h1.uri()).await;
    hosts.get(h1.uri(), &opts).await.unwrap();
    assert_eq!(again.try_recv().unwrap(), h1.uri());

    // A host never reached until now: its first connection follows failed attempts.
    h2.set_reachable(false);
    assert!(hosts.get(h2.uri(), &opts).await.is_err());
    h2.set_reachable(true);
    hosts.get(h2.uri(), &opts).await.unwrap();
    assert_eq!(again.try_recv().unwrap(), h2.uri());
}

#[tokio::test]
async fn dedicated_connections_come_from_the_same_connector() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host("qemu+tcp://h1/system");
    let hosts = fakes.registry();
    let shared = hosts
        .get(h1.uri(), &ConnectOptions::default())
        .await
        .unwrap();
    let own = hosts
        .dedicated(h1.uri(), &ConnectOptions::default())
        .await
        .unwrap();
    shared.ping().await.unwrap();
    own.ping().await.unwrap();
    own.close().await;
    assert!(own.lost().is_none(), "closed by ferry is not a loss");
    let pings: Vec<u64> = h1
        .calls()
        .iter()
        .filter(|c| c.op == Op::Ping)
        .map(|c| c.connection)
        .collect();
    assert_eq!(pings.len(), 2);
    assert_ne!(pings[0], pings[1]);
    assert_eq!(h1.open_connections(), 1);
}

#[tokio::test]
async fn volumes_are_created_copied_uploaded_and_deleted() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host("qemu+tcp://h1/system");
    let hv = connect(&fakes, h1.uri(), &Arc::default()).await;
    let err = hv.ensure_pool("images", None).await.expect_err("no pool");
    assert!(err.is_not_found());
    assert_eq!(
        hv.ensure_pool("images", Some("/srv/images")).await.unwrap(),
        "/srv/images"
    );
    assert_eq!(
        hv.ensure_pool("images", Some("/elsewhere")).await.unwrap(),
        "/srv/images"
    );
    let golden = h1
        .add_volume("images", "golden.qcow2", 1 << 30, "qcow2")
        .unwrap();
    let overlay = hv
        .create_overlay("images", "vm.qcow2", &golden, "qcow2", 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        (
            overlay.path.as_str(),
            overlay.capacity,
            overlay.format.as_str()
        ),
        ("/srv/images/vm.qcow2", 1 << 30, "qcow2")
    );
    let err = hv
        .create_overlay("images", "vm.qcow2", &golden, "qcow2", 0)
        .await
        .expect_err("taken");
    assert!(
        matches!(err, HypervisorError::OperationFailed { code, .. } if code == error_code::STORAGE_VOL_EXIST)
    );
    let copy = hv
        .clone_volume("images", "copy.qcow2", &overlay)
        .await
        .unwrap();
    assert_eq!(copy.capacity, overlay.capacity);

    // A qcow2 image reports its virtual size; anything else is raw.
    let mut header = b"QFI\xfb".to_vec();
    header.resize(24, 0);
    header.extend_from_slice(&(5u64 << 30).to_be_bytes());
    let img = hv
        .upload_volume(
            "images",
            "img",
            4096,
            Box::new(vec![Ok(header)].into_iter()),
        )
        .await
        .unwrap();
    assert_eq!((img.format.as_str(), img.capacity), ("qcow2", 5 << 30));
    let err = hv
        .upload_volume(
            "images",
            "broken",
            10,
            Box::new(vec![Ok(vec![1u8; 10]), Err("checksum mismatch".into())].into_iter()),
        )
        .await
        .expect_err("source failed");
    assert!(err.to_string().contains("checksum mismatch"));
    assert_eq!(hv.lookup_volume("images", "broken").await.unwrap(), None);

    hv.delete_volume("images", "copy.qcow2").await.unwrap();
    hv.delete_volume("images", "copy.qcow2").await.unwrap();
    let names: Vec<String> = h1.volumes("images").into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["golden.qcow2", "img", "vm.qcow2"]);
}

#[tokio::test]
async fn guest_agents_answer_only_while_the_domain_runs() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host("qemu+tcp://h1/system");
    let hv = connect(&fakes, h1.uri(), &Arc::default()).await;
    h1.add_domain(
        &sample_definition("ns", "ns_vm", U1, "/p/vm"),
        DomainState::Running,
    )
    .unwrap();
    assert_eq!(hv.guest_info(U1).await.unwrap(), None);
    let report = GuestInfo {
        os: Some("Debian".into()),
        interfaces: vec![GuestInterface {
            name: "eth0".into(),
            mac: "52:54:00:00:00:01".into(),
            addresses: vec!["10.0.0.5".into()],
        }],
    };
    h1.set_guest_info(U1, Some(report.clone()));
    assert_eq!(hv.guest_info(U1).await.unwrap(), Some(report));
    hv.destroy_domain(U1).await.unwrap();
    assert_eq!(hv.guest_info(U1).await.unwrap(), None);
}

fn request(to: &str) -> MigrationRequest {
    MigrationRequest {
        destination_uri: to.into(),
        bandwidth_mib: None,
        auto_converge: false,
        post_copy: false,
        storage: StorageMode::Shared,
        copy_disks: vec![],
        timeout: Duration::from_secs(30),
    }
}

#[tokio::test]
async fn a_migration_moves_the_domain_and_an_abort_keeps_it() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host("qemu+unix:///system?socket=/h1");
    let h2 = fakes.add_host_sharing_storage("qemu+unix:///system?socket=/h2", &h1);
    fakes.alias("qemu+tcp://10.0.0.2/system", &h2);
    let heard = Arc::new(Heard::default());
    let src = connect(&fakes, h1.uri(), &heard).await;
    let dst = connect(&fakes, h2.uri(), &Arc::default()).await;
    h1.add_domain(
        &sample_definition("ns", "ns_vm", U1, "/shared/vm"),
        DomainState::Running,
    )
    .unwrap();

    // Aborted while it runs: the domain stays on the source.
    h1.set_migration_time(Duration::from_secs(60));
    let req = request("qemu+tcp://10.0.0.2/system");
    let job = src.migrate(U1, &req);
    let steer = async {
        loop {
            if let Some(p) = src.job_progress(U1).await.unwrap() {
                assert_eq!(p.data_total, 128 << 20);
                break;
            }
            tokio::task::yield_now().await;
        }
        src.set_migration_max_downtime(U1, 100).await.unwrap();
        src.abort_job(U1).await.unwrap();
    };
    let (result, ()) = tokio::join!(job, steer);
    assert!(result.is_err(), "{result:?}");
    assert_eq!(h1.domain(U1).unwrap().state, DomainState::Running);
    assert_eq!(src.job_progress(U1).await.unwrap(), None);

    // Completed: persistent on the destination, gone from the source.
    h1.set_migration_time(Duration::from_millis(10));
    src.migrate(U1, &req).await.expect("migrate");
    assert_eq!(h1.domain(U1), None);
    let moved = dst.lookup_domain(U1).await.unwrap().expect("on h2");
    assert!(moved.persistent && moved.state == DomainState::Running && moved.live.is_some());
    let done = dst.completed_job(U1).await.unwrap().expect("completed");
    assert_eq!(
        (done.success, done.downtime_ms.is_some()),
        (Some(true), true)
    );
    assert_eq!(*heard.changed.lock().unwrap(), [U1]);

    // Back to an unreachable host: refused, nothing moves.
    h1.set_reachable(false);
    let back = request(h1.uri());
    let err = dst.migrate(U1, &back).await.expect_err("h1 is cut off");
    assert!(!err.is_connection_lost(), "{err:?}");
    assert!(h2.domain(U1).is_some());
    let err = dst
        .migrate(U1, &request("qemu+tcp://nowhere/system"))
        .await
        .expect_err("unknown host");
    assert!(err.to_string().contains("nowhere"));
}
