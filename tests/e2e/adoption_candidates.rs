//! Domains made with plain virsh, outside ferry, that a HostPool names in `spec.adoption.domains`:
//! described in the host's status as ferry would adopt them, and left exactly as they were; one
//! taken over without a restart, moved by ferry, and released again; a VM of ferry's released.

use crate::support::cluster::{self, Cluster, wait_for};
use crate::support::hosts::{boots, domain_on, highest_tick};
use crate::support::lab;
use crate::support::objects::{
    BOOT, LABEL, condition, host_of, pool_manifest, ready_reason, vm_manifest, wait_vm,
};
use ferry::api::host_pool::AdoptionCandidate;
use ferry::api::{HostPool, VirtualMachine};
use serde_json::json;
use std::time::Duration;

/// A running domain with a flat disk in the pool is adoptable; a shut-off one with an overlay
/// disk and a host directory passed through is not, and says why; a domain the pool does not
/// name is not listed. The running guest keeps running through it all: one boot, ticks going on,
/// and no ferry metadata in its XML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn named_foreign_domains_are_described_and_left_alone() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(1).expect("a lab host");
    let mut c = Cluster::new("ferry-e2e-adopt").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let _ctl = c.controller("e2e-adopt");

    // Outside ferry: a flat copy of the golden image, booted with plain virsh.
    let flat = lab.pool_dir.join("legacy.qcow2");
    std::fs::copy(lab.golden_path(), &flat).expect("copy the golden image");
    let log = lab.console_dir.join("legacy.log");
    let define = |name: &str, xml: String| {
        let file = lab.dir.join(format!("{name}.xml"));
        std::fs::write(&file, xml).expect("write XML");
        lab.virsh_ok("h1", &["define", &file.to_string_lossy()])
            .expect("virsh define");
    };
    define(
        "legacy",
        lab.tiny_domain_xml_with("legacy", &flat, &log, "ferry.tick_ms=50", ""),
    );
    lab.virsh_ok("h1", &["start", "legacy"])
        .expect("virsh start");
    lab::wait_for_console(&log, "FERRY-BOOT 1", BOOT).expect("legacy booted");
    // The pool's storage as a libvirt pool, as ferry defines it on a host it placed VMs on; the
    // overlay is made behind its back.
    let dir = lab.pool_dir.to_string_lossy().to_string();
    lab.virsh_ok(
        "h1",
        &["pool-define-as", "ferry", "dir", "--target", dir.as_str()],
    )
    .expect("pool-define-as");
    lab.virsh_ok("h1", &["pool-start", "ferry"])
        .expect("pool-start");
    let overlay = lab.create_overlay("legacy-odd").expect("overlay");
    let shared = lab.dir.join("shared");
    std::fs::create_dir_all(&shared).expect("mkdir");
    define(
        "legacy-odd",
        lab.tiny_domain_xml_with(
            "legacy-odd",
            &overlay,
            &lab.console_dir.join("legacy-odd.log"),
            "",
            &format!(
                "    <filesystem type='mount'><source dir='{}'/><target dir='shared'/></filesystem>\n",
                shared.display()
            ),
        ),
    );
    define(
        "unnamed",
        lab.tiny_domain_xml("unnamed", &overlay, &lab.console_dir.join("unnamed.log")),
    );
    let ticks_before = highest_tick(&lab::console_log(&log));

    let mut pool = pool_manifest("lab", &lab);
    pool["spec"]["adoption"] = json!({"domains": ["legacy*"]});
    c.apply::<HostPool>(pool).await;
    let pools = c.pools();
    let listed: Vec<AdoptionCandidate> = wait_for(
        "both named domains described in the host's status",
        Duration::from_secs(120),
        || {
            let pools = pools.clone();
            async move {
                let st = pools.get("lab").await.ok()?.status?;
                let h = st.hosts.into_iter().find(|h| h.name.ends_with("-h1"))?;
                (h.adoption_candidates.len() == 2).then_some(h.adoption_candidates)
            }
        },
    )
    .await;

    let legacy = &listed[0];
    assert_eq!(
        (
            legacy.name.as_str(),
            legacy.state.as_str(),
            legacy.adoptable
        ),
        ("legacy", "Running", true),
        "{legacy:?}"
    );
    assert_eq!((legacy.cpus, legacy.memory.as_str()), (1, "128Mi"));
    assert_eq!(legacy.volumes, ["legacy.qcow2"]);
    let odd = &listed[1];
    assert_eq!(
        (odd.name.as_str(), odd.state.as_str(), odd.adoptable),
        ("legacy-odd", "ShutOff", false)
    );
    let golden = lab.golden_path().to_string_lossy().to_string();
    for needle in [
        format!("has the backing file {golden}"),
        "filesystem mount: host hardware or files passed through".to_string(),
    ] {
        assert!(
            odd.blockers.iter().any(|b| b.contains(&needle)),
            "{:?} should mention {needle:?}",
            odd.blockers
        );
    }

    // The admin's view through the plugin.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-ferry"))
        .args(["-n", &c.namespace, "hosts", "lab"])
        .output()
        .expect("run kubectl-ferry");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let row = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        row("legacy").contains("Running  adoptable: 1 vCPU, 128Mi, volumes legacy.qcow2"),
        "{text}"
    );
    assert!(row("legacy-odd").contains("not adoptable: "), "{text}");

    // A namespace editor's VM may not attach a disk a domain ferry does not manage uses: it
    // waits, saying whose the volume is, and is placed nowhere.
    let mut taker = vm_manifest("taker", "lab", &lab, "Always");
    taker["spec"]["disks"] = json!([{"name": "root", "volume": "legacy.qcow2"}]);
    c.apply::<VirtualMachine>(taker).await;
    let vm = wait_vm(
        &c,
        "taker",
        "DiskNotAllowed",
        Duration::from_secs(60),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "DiskNotAllowed"),
    )
    .await;
    let msg = condition(&vm, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        msg.contains(
            "spec.disks[0].volume \"legacy.qcow2\" is used by a libvirt domain ferry does not manage"
        ),
        "{msg}"
    );
    // The namespace editor learns that the volume is taken, not by which domain or where.
    assert!(
        !msg.contains("-h1") && !msg.contains("domain legacy"),
        "{msg}"
    );
    assert_eq!(host_of(&vm), None, "placed nowhere");

    // Described, not touched.
    let text = lab::console_log(&log);
    assert_eq!(boots(&text), 1, "legacy booted once");
    assert!(highest_tick(&text) > ticks_before, "legacy kept running");
    assert_eq!(domain_on(&lab, "h1", "legacy"), (true, true));
    for name in ["legacy", "legacy-odd"] {
        let xml = lab.virsh_ok("h1", &["dumpxml", name]).expect("dumpxml");
        assert!(
            !xml.contains("ferry.dev/xmlns"),
            "{name} got ferry metadata"
        );
    }
    let odd_state = lab
        .virsh_ok("h1", &["domstate", "legacy-odd"])
        .expect("domstate");
    assert_eq!(odd_state.trim(), "shut off");
}

/// A VM ferry runs, released with `kubectl ferry release` while its HostPool names its domain:
/// the VM object goes, the domain keeps running on the host (one boot, ticks going on), defined,
/// with its disk and without ferry's metadata, and the pool lists it as a foreign domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn a_released_vm_keeps_running_unmanaged() {
    use crate::support::hosts::console;
    use crate::support::objects::{apply_placed, vm_manifest, wait_vm};
    use ferry::api::{VirtualMachine, VmPhase};
    use kube::api::{DeleteParams, Patch, PatchParams};
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(1).expect("a lab host");
    let mut c = Cluster::new("ferry-e2e-release").await;
    let ns = c.namespace.clone();
    c.add_node(&format!("{ns}-h1"), &lab.hosts[0].ip, LABEL)
        .await;
    let _ctl = c.controller("e2e-release");
    let mut pool = pool_manifest("lab", &lab);
    pool["spec"]["adoption"] = json!({"domains": [format!("{ns}_keep")]});
    c.apply::<HostPool>(pool).await;

    let mut vms = Vec::new();
    for name in ["keep", "other"] {
        let mut m = vm_manifest(name, "lab", &lab, "Always");
        m["spec"]["boot"]["cmdline"] = json!(format!("{} ferry.tick_ms=50", lab.cmdline));
        apply_placed(&c, m).await;
        vms.push(name);
    }
    for name in &vms {
        wait_vm(&c, name, "running", BOOT, |vm| {
            vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Running)
        })
        .await;
        lab::wait_for_console(&console(&lab, &ns, name), "FERRY-BOOT 1", BOOT).expect("booted");
    }
    let api = c.vms();
    let annotate = |name: &'static str| {
        let api = api.clone();
        async move {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"ferry.dev/release": "true"}}})),
            )
            .await
            .expect("annotate");
            api.delete(name, &DeleteParams::default())
                .await
                .expect("delete");
        }
    };

    // The pool does not name this one: the plugin refuses; annotated and deleted anyway, deletion
    // waits and the domain stays ferry's.
    let plugin = |vm: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-ferry"))
            .args(["-n", &ns, "release", vm])
            .output()
            .expect("run kubectl-ferry")
    };
    let out = plugin("other");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not name domain"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    annotate("other").await;
    let waiting: VirtualMachine = wait_vm(&c, "other", "refused", Duration::from_secs(60), |vm| {
        crate::support::objects::ready_reason(vm).is_some_and(|(_, r)| r == "ReleaseNotAllowed")
    })
    .await;
    assert!(waiting.metadata.deletion_timestamp.is_some());
    let other = format!("{ns}_other");
    assert_eq!(domain_on(&lab, "h1", &other), (true, true));

    let log = console(&lab, &ns, "keep");
    let out = plugin("keep");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("domain {ns}_keep stays on")),
        "{said}"
    );
    c.wait_vm_gone("keep", Duration::from_secs(60)).await;
    let domain = format!("{ns}_keep");
    let ticks = highest_tick(&lab::console_log(&log));
    lab::wait_for_console(
        &log,
        &format!("FERRY-TICK {}", ticks + 20),
        Duration::from_secs(60),
    )
    .expect("the guest keeps running after the release");
    let text = lab::console_log(&log);
    assert_eq!(boots(&text), 1, "booted once");
    assert_eq!(domain_on(&lab, "h1", &domain), (true, true));
    let xml = lab.virsh_ok("h1", &["dumpxml", &domain]).expect("dumpxml");
    assert!(!xml.contains("ferry.dev/xmlns"), "ferry's metadata is gone");
    let inactive = lab
        .virsh_ok("h1", &["dumpxml", "--inactive", &domain])
        .expect("dumpxml --inactive");
    assert!(!inactive.contains("ferry.dev/xmlns"));
    assert!(
        crate::support::hosts::volumes(&lab)
            .iter()
            .any(|v| v.starts_with(&format!("{ns}_keep_root_"))),
        "its disk stays"
    );
    // The pool now sees it as a foreign domain it names: described, and not adoptable as it is
    // (ferry's own overlay, on the golden image).
    let pools = c.pools();
    let listed: AdoptionCandidate = wait_for(
        "the released domain listed as a candidate",
        Duration::from_secs(90),
        || {
            let pools = pools.clone();
            let domain = domain.clone();
            async move {
                let st = pools.get("lab").await.ok()?.status?;
                let h = st.hosts.into_iter().find(|h| h.name.ends_with("-h1"))?;
                h.adoption_candidates.into_iter().find(|c| c.name == domain)
            }
        },
    )
    .await;
    assert_eq!(
        (listed.state.as_str(), listed.adoptable),
        ("Running", false)
    );

    // Let the waiting one go the ordinary way.
    api.patch(
        "other",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"ferry.dev/release": null}}})),
    )
    .await
    .expect("remove the annotation");
    c.wait_vm_gone("other", Duration::from_secs(120)).await;
    assert!(!domain_on(&lab, "h1", &other).0, "removed with its VM");
}

/// A domain defined and started with plain virsh on h1 (a flat disk in the pool, the tiny guest
/// ticking every 50 ms) is taken over with `kubectl ferry adopt` (dry run first): ferry owns and
/// reports it without restarting it (one boot, ticks go on, ferry's metadata in its running and
/// persistent XML) and live-migrates it to h2. h2 then loses power (IPMI BMC): HA fences it and
/// restarts the VM on h1 from its disk, as the same domain (name and UUID; a second boot).
/// Released with `kubectl ferry release`, it keeps running on h1 without ferry's metadata.
/// Prints the adoption time (create → status Running on the adopted domain) and the recovery
/// time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn a_running_domain_is_taken_over_moved_and_released_without_a_restart() {
    use crate::support::ha::{
        ha_policy, ipmi_fencing, ipmi_power_off, put_bmc_password, wait_recovered,
    };
    use crate::support::migration::{TICK, migration_lab, start_migration, wait_migration};
    use ferry::api::{MigrationPhase, VmPhase};
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let (lab, mut c, _ctl) = migration_lab(
        "ferry-e2e-takeover",
        2,
        LABEL,
        |lab| {
            let mut p = pool_manifest("lab", lab);
            p["spec"]["adoption"] = json!({"domains": ["legacy"]});
            p["spec"]["fencing"] = ipmi_fencing();
            p
        },
        json!({}),
    )
    .await;
    let ns = c.namespace.clone();
    let (h1, h2) = (format!("{ns}-h1"), format!("{ns}-h2"));

    let flat = lab.pool_dir.join("legacy.qcow2");
    std::fs::copy(lab.golden_path(), &flat).expect("copy the golden image");
    let log = lab.console_dir.join("legacy.log");
    let file = lab.dir.join("legacy.xml");
    std::fs::write(
        &file,
        lab.tiny_domain_xml_with("legacy", &flat, &log, TICK, ""),
    )
    .expect("write XML");
    lab.virsh_ok("h1", &["define", &file.to_string_lossy()])
        .expect("virsh define");
    lab.virsh_ok("h1", &["start", "legacy"])
        .expect("virsh start");
    lab::wait_for_console(&log, "FERRY-BOOT 1", BOOT).expect("legacy booted");
    let pools = c.pools();
    let h1_name = h1.clone();
    let candidate = wait_for(
        "legacy listed as adoptable",
        Duration::from_secs(60),
        || {
            let pools = pools.clone();
            let h1 = h1_name.clone();
            async move {
                let st = pools.get("lab").await.ok()?.status?;
                let h = st.hosts.into_iter().find(|h| h.name == h1)?;
                h.adoption_candidates
                    .into_iter()
                    .find(|c| c.name == "legacy" && c.adoptable && c.spec.is_some())
            }
        },
    )
    .await;

    let plugin = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-ferry"))
            .args(["-n", &ns])
            .args(args)
            .output()
            .expect("run kubectl-ferry");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kubectl ferry {args:?}: {said}");
        said
    };
    let dry = plugin(&["adopt", &h1, "legacy", "--dry-run"]);
    assert!(
        dry.contains("domain: legacy") && dry.contains("volume: legacy.qcow2"),
        "{dry}"
    );
    assert!(
        c.vms().get_opt("legacy").await.expect("get").is_none(),
        "dry run creates nothing"
    );

    let started = std::time::Instant::now();
    plugin(&["adopt", &h1, "legacy"]);
    let vm = wait_vm(
        &c,
        "legacy",
        "taken over and running",
        Duration::from_secs(60),
        |vm| {
            vm.status.as_ref().is_some_and(|s| {
                s.adopted_domain.as_deref() == Some("legacy") && s.phase == Some(VmPhase::Running)
            }) && ready_reason(vm).is_some_and(|(s, _)| s == "True")
        },
    )
    .await;
    let took = started.elapsed();
    eprintln!(
        "ADOPTION-TIME {} ms (create -> ferry owns and reports the running domain)",
        took.as_millis()
    );
    assert_eq!(host_of(&vm).as_deref(), Some(h1.as_str()));
    let restart = condition(&vm, "RestartRequired").expect("RestartRequired");
    assert_eq!(restart.status, "False", "{}", restart.message);
    for args in [
        vec!["dumpxml", "legacy"],
        vec!["dumpxml", "--inactive", "legacy"],
    ] {
        let xml = lab.virsh_ok("h1", &args).expect("dumpxml");
        assert!(
            xml.contains("ferry.dev/xmlns"),
            "{args:?}: ferry's metadata"
        );
    }
    let ticks = highest_tick(&lab::console_log(&log));
    lab::wait_for_console(
        &log,
        &format!("FERRY-TICK {}", ticks + 10),
        Duration::from_secs(30),
    )
    .expect("ticks go on after the takeover");
    assert_eq!(
        boots(&lab::console_log(&log)),
        1,
        "not restarted by the takeover"
    );

    // Moved by ferry.
    start_migration(&c, "move", "legacy", Some(&h2)).await;
    let m = wait_migration(
        &c,
        "move",
        "ended",
        Duration::from_secs(180),
        crate::support::migration::is_terminal,
    )
    .await;
    assert_eq!(m.phase, Some(MigrationPhase::Succeeded), "{m:?}");
    let h2_name = h2.clone();
    wait_vm(
        &c,
        "legacy",
        "running on h2",
        Duration::from_secs(60),
        move |vm| {
            host_of(vm).as_deref() == Some(h2_name.as_str())
                && vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Running)
        },
    )
    .await;
    assert_eq!(domain_on(&lab, "h2", "legacy"), (true, true));
    assert!(!domain_on(&lab, "h1", "legacy").0, "gone from h1");
    let ticks = highest_tick(&lab::console_log(&log));
    lab::wait_for_console(
        &log,
        &format!("FERRY-TICK {}", ticks + 10),
        Duration::from_secs(30),
    )
    .expect("ticks go on after the move");
    assert_eq!(
        boots(&lab::console_log(&log)),
        1,
        "not restarted by the move"
    );

    // h2 loses power: HA fences it through its BMC and restarts the VM on h1, defined by ferry
    // now (same name and UUID), from its disk.
    let sim =
        crate::support::bmc::IpmiSim::start("admin", "s3cret", &lab.power_off_command("h2"), false);
    put_bmc_password(&c, "s3cret").await;
    let bmc = sim.address().trim_start_matches("ipmi://").to_string();
    for (n, a) in [(&h2, bmc.as_str()), (&h1, "127.0.0.1:9")] {
        crate::support::ha::set_node_bmc(&c, n, a).await;
    }
    c.apply::<ferry::api::HAPolicy>(ha_policy(8, json!({})))
        .await;
    let policies: kube::Api<ferry::api::HAPolicy> = kube::Api::namespaced(c.client.clone(), &ns);
    wait_for("both hosts Healthy", Duration::from_secs(60), || {
        let p = policies.clone();
        async move {
            let s = p.get("ha").await.ok()?.status?;
            (s.hosts.len() == 2
                && s.hosts
                    .iter()
                    .all(|h| h.verdict == ferry::api::ha_policy::HostVerdict::Healthy))
            .then_some(())
        }
    })
    .await;
    let lost = std::time::Instant::now();
    ipmi_power_off(&sim);
    c.node_not_ready(&h2).await;
    wait_recovered(&c, "legacy", &h2, &h1, "Fenced").await;
    eprintln!(
        "power loss of h2 -> the adopted VM Running on h1 (status seen) after {:.1}s",
        lost.elapsed().as_secs_f64()
    );
    // ferry's definition logs the serial console under its own name for the domain.
    let log = lab.console_dir.join("legacy.console.log");
    lab::wait_for_console(&log, "FERRY-BOOT 2", BOOT).expect("booted again on h1, from its disk");
    assert_eq!(domain_on(&lab, "h1", "legacy"), (true, true));
    let uuid = lab.virsh_ok("h1", &["domuuid", "legacy"]).expect("domuuid");
    assert_eq!(uuid.trim(), candidate.uuid, "the same domain UUID");
    let vm = c.vms().get("legacy").await.expect("vm");
    assert_eq!(
        vm.status.as_ref().and_then(|s| s.adopted_domain.as_deref()),
        Some("legacy")
    );

    // Released again: still the same running guest, unmanaged.
    plugin(&["release", "legacy"]);
    c.wait_vm_gone("legacy", Duration::from_secs(60)).await;
    assert_eq!(domain_on(&lab, "h1", "legacy"), (true, true));
    for args in [
        vec!["dumpxml", "legacy"],
        vec!["dumpxml", "--inactive", "legacy"],
    ] {
        let xml = lab.virsh_ok("h1", &args).expect("dumpxml");
        assert!(
            !xml.contains("ferry.dev/xmlns"),
            "{args:?}: ferry's metadata is gone"
        );
    }
    let ticks = highest_tick(&lab::console_log(&log));
    lab::wait_for_console(
        &log,
        &format!("FERRY-TICK {}", ticks + 10),
        Duration::from_secs(30),
    )
    .expect("ticks go on after the release");
    assert!(
        !lab::console_log(&log).contains("FERRY-BOOT 3"),
        "not restarted again by the release"
    );
}
