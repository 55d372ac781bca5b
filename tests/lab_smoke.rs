//! Proof that the lab (`e2e/lab/lab.sh`) and the tiny guest work: real libvirtd hosts in
//! namespaces, the tiny guest on a qcow2 overlay, its console protocol, reboots, ACPI shutdown,
//! TCP reachability, live migration, failure injection and a teardown that leaves nothing
//! behind (also when the test process dies).
//! Needs root, libvirt and QEMU (see scripts/setup.sh); skipped elsewhere unless `CI` is set.

#[path = "support/lab.rs"]
mod lab;

use lab::{Lab, cdrom_xml, console_len, console_log, wait_for_console, wait_for_console_since};
use std::path::Path;
use std::time::{Duration, Instant};

/// Guest boot to FERRY-READY takes ~4–8 s under TCG on an idle machine; leave room for a busy one.
const BOOT: Duration = Duration::from_secs(120);

fn define_and_start(lab: &Lab, host: &str, name: &str, xml: &str) {
    let path = lab.dir.join(format!("{name}.xml"));
    std::fs::write(&path, xml).expect("write domain XML");
    lab.virsh_ok(host, &["define", &path.to_string_lossy()])
        .expect("define");
    lab.virsh_ok(host, &["start", name]).expect("start");
}

fn domstate(lab: &Lab, host: &str, name: &str) -> String {
    lab.virsh(host, &["domstate", name])
        .stdout
        .trim()
        .to_string()
}

fn last_tick(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("FERRY-TICK "))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}

fn assert_clean(id: u32, dir: &Path) {
    let left = Lab::leftovers(id, dir);
    assert!(left.is_empty(), "lab {id} left behind: {left:#?}");
}

#[test]
fn lab_smoke() {
    if !Lab::should_run("lab_smoke") {
        return;
    }
    let t = Instant::now();
    let lab = Lab::up(2).expect("lab up");
    eprintln!(
        "lab {} up with 2 hosts in {:?} ({})",
        lab.id,
        t.elapsed(),
        lab.virt_type
    );
    let (id, dir) = (lab.id, lab.dir.clone());

    assert_eq!(lab.hosts.len(), 2);
    assert!(lab.virt_type == "kvm" || lab.virt_type == "qemu");
    for h in &lab.hosts {
        let name = lab
            .virsh_ok(&h.name, &["hostname"])
            .expect("hostname over unix");
        assert_eq!(name.trim(), h.hostname);
    }
    // Distinct host UUIDs (otherwise libvirt refuses migration between them).
    let uuid = |h: &str| {
        let caps = lab.virsh_ok(h, &["capabilities"]).expect("capabilities");
        let start = caps.find("<uuid>").expect("uuid in capabilities") + 6;
        caps[start..start + 36].to_string()
    };
    assert_ne!(uuid("h1"), uuid("h2"));
    assert_eq!(uuid("h1"), lab.host("h1").host_uuid);

    // TCP from the client namespace.
    let out = lab.virsh_from_client("h2", &["hostname"], Duration::from_secs(20));
    assert!(
        out.success(),
        "virsh over TCP from the client netns: {out:?}"
    );
    assert_eq!(out.stdout.trim(), lab.host("h2").hostname);

    // The tiny guest on h1 from an overlay, with a NoCloud seed CD-ROM.
    let golden_before = std::fs::read(lab.golden_path()).expect("read golden");
    let disk = lab.create_overlay("smoke").expect("overlay");
    let console = lab.console_path("smoke");
    let seed = lab
        .create_seed_iso(
            "smoke-seed",
            &[
                ("meta-data", "instance-id: smoke-1\n"),
                ("user-data", "#cloud-config\nhostname: smoke\n"),
            ],
        )
        .expect("seed iso");
    let xml = lab.tiny_domain_xml_with("smoke", &disk, &console, "", &cdrom_xml(&seed));
    let t = Instant::now();
    define_and_start(&lab, "h1", "smoke", &xml);
    wait_for_console(&console, "FERRY-READY", BOOT).expect("first boot");
    eprintln!("guest start to FERRY-READY: {:?}", t.elapsed());
    let log = console_log(&console);
    assert!(log.contains("FERRY-DISK FERRY-GOLDEN tiny v1"), "{log}");
    assert!(log.lines().any(|l| l.trim() == "FERRY-BOOT 1"), "{log}");
    assert!(
        log.contains("FERRY-SEED meta-data: instance-id: smoke-1"),
        "{log}"
    );
    assert!(log.contains("FERRY-SEED user-data: #cloud-config"), "{log}");
    let uuid_line = wait_for_console(&console, "FERRY-UUID ", BOOT).expect("uuid line");
    let dom_uuid = lab.virsh_ok("h1", &["domuuid", "smoke"]).expect("domuuid");
    assert_eq!(uuid_line.trim(), format!("FERRY-UUID {}", dom_uuid.trim()));
    // It keeps running: ticks advance.
    let first = last_tick(&console_log(&console));
    assert!(
        lab::wait_until(Duration::from_secs(30), || last_tick(&console_log(
            &console
        )) >= first + 3),
        "ticks do not advance"
    );

    // Restart (destroy + start): the boot counter on the overlay goes to 2.
    let mark = console_len(&console);
    lab.virsh_ok("h1", &["destroy", "smoke"]).expect("destroy");
    lab.virsh_ok("h1", &["start", "smoke"])
        .expect("start again");
    let line = wait_for_console_since(&console, mark, "FERRY-BOOT ", BOOT).expect("second boot");
    assert_eq!(line.trim(), "FERRY-BOOT 2");
    wait_for_console_since(&console, mark, "FERRY-READY", BOOT).expect("second READY");

    // ACPI power button: the guest syncs and powers off.
    let t = Instant::now();
    lab.virsh_ok("h1", &["shutdown", "smoke"])
        .expect("shutdown");
    assert!(
        lab::wait_until(Duration::from_secs(30), || domstate(&lab, "h1", "smoke")
            == "shut off"),
        "ACPI shutdown did not turn the domain off; state {}",
        domstate(&lab, "h1", "smoke")
    );
    eprintln!("virsh shutdown to shut off: {:?}", t.elapsed());
    wait_for_console_since(&console, mark, "FERRY-POWEROFF", Duration::from_secs(5))
        .expect("power-off marker");

    // The golden image is never written.
    assert_eq!(
        std::fs::read(lab.golden_path()).expect("read golden"),
        golden_before
    );

    let t = Instant::now();
    lab.down().expect("lab down");
    eprintln!("lab down in {:?}", t.elapsed());
    assert_clean(id, &dir);
}

#[test]
fn lab_migration_and_failure_injection() {
    if !Lab::should_run("lab_migration_and_failure_injection") {
        return;
    }
    let lab = Lab::up(2).expect("lab up");
    let (id, dir) = (lab.id, lab.dir.clone());
    let disk = lab.create_overlay("fi").expect("overlay");
    let console = lab.console_path("fi");
    let xml = lab.tiny_domain_xml_with("fi", &disk, &console, "ferry.tick_ms=50", "");
    define_and_start(&lab, "h2", "fi", &xml);
    wait_for_console(&console, "FERRY-READY", BOOT).expect("boot");

    // Live migration h2 -> h1 over the lab network (peer to peer, shared dir: --unsafe).
    let h1_tcp = lab.host("h1").tcp_uri.clone();
    lab.virsh_ok(
        "h2",
        &[
            "migrate",
            "--live",
            "--persistent",
            "--undefinesource",
            "--unsafe",
            "--p2p",
            "fi",
            &h1_tcp,
        ],
    )
    .expect("live migration h2 -> h1");
    assert_eq!(domstate(&lab, "h1", "fi"), "running");
    let after = last_tick(&console_log(&console));
    assert!(
        lab::wait_until(Duration::from_secs(30), || last_tick(&console_log(
            &console
        )) >= after + 5),
        "guest does not tick after migration"
    );
    // Split-brain guard: the same disk cannot be started on h2 while h1 runs it.
    let again = dir.join("fi-again.xml");
    std::fs::write(&again, &xml).expect("write xml");
    lab.virsh_ok("h2", &["define", &again.to_string_lossy()])
        .expect("define on h2");
    let out = lab.virsh("h2", &["start", "fi"]);
    assert!(!out.success(), "a second copy started on h2: {out:?}");
    lab.virsh_ok("h2", &["undefine", "fi"])
        .expect("undefine on h2");

    // libvirtd stops: the guest keeps running; libvirtd comes back and finds it.
    lab.stop_libvirtd("h1").expect("stop-libvirtd");
    assert!(
        !lab.virsh("h1", &["hostname"]).success(),
        "libvirtd still answers"
    );
    let before = last_tick(&console_log(&console));
    assert!(
        lab::wait_until(Duration::from_secs(30), || last_tick(&console_log(
            &console
        )) >= before + 5),
        "guest stopped ticking without libvirtd"
    );
    lab.start_libvirtd("h1").expect("start-libvirtd");
    assert_eq!(domstate(&lab, "h1", "fi"), "running");
    // The same after a crash (SIGKILL).
    lab.kill_libvirtd("h1").expect("kill libvirtd");
    lab.start_libvirtd("h1").expect("start-libvirtd after kill");
    assert_eq!(domstate(&lab, "h1", "fi"), "running");

    // Partition h1 (running the guest): unreachable over TCP (bounded by our timeout), the
    // guest keeps running, reachable again once healed.
    lab.partition("h1").expect("partition");
    let out = lab.virsh_from_client("h1", &["hostname"], Duration::from_secs(3));
    assert!(!out.success(), "h1 reachable while partitioned: {out:?}");
    // h2 is not affected.
    let out = lab.virsh_from_client("h2", &["hostname"], Duration::from_secs(20));
    assert!(
        out.success(),
        "h2 unreachable while h1 is partitioned: {out:?}"
    );
    let before = last_tick(&console_log(&console));
    assert!(
        lab::wait_until(Duration::from_secs(30), || last_tick(&console_log(
            &console
        )) >= before + 5),
        "guest stopped ticking while its host is partitioned"
    );
    lab.heal("h1").expect("heal");
    let out = lab.virsh_from_client("h1", &["hostname"], Duration::from_secs(20));
    assert!(out.success(), "h1 unreachable after heal: {out:?}");

    // Teardown with a guest still running.
    lab.down().expect("lab down");
    assert_clean(id, &dir);
}

/// A test process that dies without tearing its lab down (SIGKILL, abort): the watchdog that
/// `lab.sh up --owner-pid` started tears the lab down.
#[test]
fn lab_watchdog_cleans_up_after_dead_owner() {
    if !Lab::should_run("lab_watchdog_cleans_up_after_dead_owner") {
        return;
    }
    // The owner: `cat` on a pipe from this process, so it also dies if this test is killed.
    let mut owner = std::process::Command::new("cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn owner");
    let (id, _lock) = lab::claim_id().expect("claim id").expect("a free lab ID");
    let id_arg = id.to_string();
    let owner_arg = owner.id().to_string();
    let out = lab::run_cmd(
        lab::LAB_SH,
        &[
            "up",
            "--id",
            &id_arg,
            "--hosts",
            "1",
            "--owner-pid",
            &owner_arg,
        ],
        Duration::from_secs(900),
    );
    assert!(out.success(), "lab.sh up: {out:?}");
    let env = Path::new(out.stdout.trim().lines().last().unwrap_or_default()).to_path_buf();
    let lab = Lab::from_env_file(&env).expect("lab.env");
    let disk = lab.create_overlay("orphan").expect("overlay");
    let console = lab.console_path("orphan");
    define_and_start(
        &lab,
        "h1",
        "orphan",
        &lab.tiny_domain_xml("orphan", &disk, &console),
    );

    owner.kill().expect("kill owner");
    owner.wait().expect("reap owner");
    let t = Instant::now();
    let clean = lab::wait_until(Duration::from_secs(60), || {
        Lab::leftovers(id, &lab.dir).is_empty()
    });
    if !clean {
        let _ = lab::run_cmd(
            lab::LAB_SH,
            &["down", "--id", &id_arg],
            Duration::from_secs(180),
        );
    }
    assert!(
        clean,
        "watchdog did not tear lab {id} down: {:#?}",
        Lab::leftovers(id, &lab.dir)
    );
    eprintln!(
        "watchdog tore the lab down {:?} after its owner died",
        t.elapsed()
    );
}
