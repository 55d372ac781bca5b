//! A domain's consoles through `LibvirtHost::open_console` on a real lab host: the serial
//! console (libvirt's console stream, relayed on the connection's thread) answers a typed line,
//! a second session takes it over, and the VNC display (a socket from
//! `virDomainOpenGraphicsFD`, no port on the host) speaks RFB.
//!
//! Needs root, libvirt and QEMU (see scripts/setup.sh); skipped elsewhere unless `CI` is set.

#[path = "support/lab.rs"]
mod lab;

use std::time::{Duration, Instant};

use ferry::hypervisor::*;
use ferry::plan::domain::*;
use lab::{Lab, wait_for_console};

async fn read_until(stream: &mut ConsoleStream, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut seen = String::new();
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.from_guest.recv()).await {
            Ok(Some(bytes)) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(None) => panic!("the console ended before {needle:?}; read {seen:?}"),
            Err(_) => panic!("no {needle:?} within {limit:?}; read {seen:?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consoles_reach_the_guest_through_libvirt() {
    if !Lab::should_run("consoles_reach_the_guest_through_libvirt") {
        return;
    }
    let lab = tokio::task::spawn_blocking(|| Lab::up(1))
        .await
        .expect("task")
        .expect("lab up");
    let h1 = lab.host("h1").clone();
    let disk = lab.create_overlay("con1").expect("overlay");
    let console = lab.console_path("con1");
    let uuid = "3f6d7a52-8c1e-4b9a-9d0e-5a1b2c3d4e5f";
    let def = DomainDefinition {
        name: format!("ferry-lab{}_con1", lab.id),
        uuid: uuid.into(),
        virt_type: if lab.virt_type == "kvm" {
            VirtType::Kvm
        } else {
            VirtType::Qemu
        },
        vcpus: 1,
        cpu_model: CpuModel::HostModel,
        memory_kib: 128 * 1024,
        disks: vec![DiskDef {
            name: "root".into(),
            path: disk.to_string_lossy().into(),
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
        graphics: Some(Graphics::Vnc),
        owner: Owner {
            namespace: "ferry-test".into(),
            name: "con1".into(),
            uid: uuid.into(),
        },
    };
    let opts = ConnectOptions::default();
    let shared = LibvirtHost::connect(&h1.unix_uri, opts.clone())
        .await
        .expect("connect");
    shared.define_domain(&def).await.expect("define");
    shared.start_domain(uuid).await.expect("start");
    let log = console.clone();
    tokio::task::spawn_blocking(move || {
        wait_for_console(&log, "FERRY-READY", Duration::from_secs(120))
    })
    .await
    .expect("task")
    .expect("guest boots");

    // Serial: a line typed is answered; the console log keeps being written meanwhile.
    let own = LibvirtHost::connect(&h1.unix_uri, opts.clone())
        .await
        .expect("connect");
    let mut serial = own
        .open_console(uuid, ConsoleKind::Serial)
        .await
        .expect("open the serial console");
    serial
        .to_guest
        .send(b"hello ferry\r".to_vec())
        .await
        .expect("send");
    read_until(
        &mut serial,
        "FERRY-ECHO hello ferry",
        Duration::from_secs(30),
    )
    .await;

    // A second session takes the console over: the first one ends.
    let other = LibvirtHost::connect(&h1.unix_uri, opts.clone())
        .await
        .expect("connect");
    let mut second = other
        .open_console(uuid, ConsoleKind::Serial)
        .await
        .expect("take the console over");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while serial.from_guest.recv().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the first session still runs");
    second
        .to_guest
        .send(b"again\r".to_vec())
        .await
        .expect("send");
    read_until(&mut second, "FERRY-ECHO again", Duration::from_secs(30)).await;
    drop(second);
    other.close().await;
    own.close().await;

    // VNC: the server greets with its protocol version, on a socket libvirt handed over.
    let mut vnc = shared
        .open_console(uuid, ConsoleKind::Vnc)
        .await
        .expect("open the display");
    let greeting = read_until(&mut vnc, "\n", Duration::from_secs(10)).await;
    assert!(greeting.starts_with("RFB 003."), "{greeting:?}");
    drop(vnc);

    // No TCP listener: the domain's live XML has no VNC port.
    let xml = lab.virsh_ok("h1", &["dumpxml", uuid]).expect("dumpxml");
    assert!(xml.contains("<listen type='none'/>"), "{xml}");
    assert!(
        xml.contains("<graphics type='vnc'>"),
        "a port or listen address: {xml}"
    );

    shared.destroy_domain(uuid).await.expect("destroy");
    shared.undefine_domain(uuid).await.expect("undefine");
    shared.close().await;
}
