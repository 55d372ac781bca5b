//! Live migration: moves and returns, interruptions, a controller killed mid-migration,
//! maintenance evacuation within the pool's limits, and copying local disks.

use crate::support::cluster::{self, Cluster, wait_for};
use crate::support::hosts::{boots, console, domain_on, highest_tick, lab_host};
use crate::support::lab;
use crate::support::migration::{TICK, is_terminal, max_overlap, start_migration, wait_migration};
use crate::support::objects::{
    BOOT, LABEL, condition, host_of, pool_manifest, ready_reason, vm_manifest, wait_vm,
};
use ferry::api::{VirtualMachine, VmPhase};
use kube::api::{DeleteParams, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::time::Duration;

/// `n` lab hosts as Nodes of one pool whose hosts migrate to each other over TCP, `policy`
/// as the pool's migration policy, and a controller.
async fn migration_lab(
    prefix: &str,
    n: usize,
    policy: serde_json::Value,
) -> (lab::Lab, Cluster, cluster::ControllerProcess) {
    // The lab hosts have 2 CPUs; the tiny guests are mostly idle.
    let pool = |lab: &lab::Lab| {
        let mut p = pool_manifest("lab", lab);
        p["spec"]["capacity"] = json!({"cpuOvercommit": "4"});
        p
    };
    crate::support::migration::migration_lab(prefix, n, LABEL, pool, policy).await
}

fn ticking_vm(name: &str, lab: &lab::Lab) -> serde_json::Value {
    let mut vm = vm_manifest(name, "lab", lab, "Always");
    vm["spec"]["boot"]["cmdline"] = json!(format!("{} {TICK}", lab.cmdline));
    vm
}

/// Wait until the console shows ticks past `after`.
async fn ticks_past(path: &std::path::Path, after: u64) -> u64 {
    wait_for(
        &format!("console ticks past {after}"),
        Duration::from_secs(60),
        || async move { Some(highest_tick(&lab::console_log(path))).filter(|t| *t > after + 5) },
    )
    .await
}

/// Set or clear the maintenance annotation of a Node.
async fn maintenance(c: &Cluster, node: &str, on: bool) {
    let value = if on { json!("true") } else { json!(null) };
    Api::<k8s_openapi::api::core::v1::Node>::all(c.client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"ferry.dev/maintenance": value}}}),
            ),
        )
        .await
        .expect("annotate Node");
}

/// A running guest moves to the other host and back (the second time to a named target): it
/// keeps counting, never reboots, the source keeps no definition, status shows where it runs,
/// the migration's timings and the VM's Migrating condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn live_migration_moves_a_running_guest() {
    use ferry::api::MigrationPhase::*;
    assert!(cluster::enabled(), "set FERRY_E2E=1 and KUBECONFIG");
    let (lab, c, _ctl) = migration_lab("ferry-e2e-mig", 2, json!({})).await;
    let ns = c.namespace.clone();
    let domain = format!("{ns}_mover");
    c.apply::<VirtualMachine>(ticking_vm("mover", &lab)).await;
    let vm = wait_vm(&c, "mover", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let src = host_of(&vm).expect("host");
    let path = console(&lab, &ns, "mover");
    let before = ticks_past(&path, 0).await;

    for (round, target) in [(1, None), (2, Some(src.clone()))] {
        let name = format!("mover-{round}");
        let from = host_of(&c.vms().get("mover").await.expect("vm")).expect("host");
        start_migration(&c, &name, "mover", target.as_deref()).await;
        let st = wait_migration(&c, &name, "Succeeded", Duration::from_secs(240), |s| {
            is_terminal(s)
        })
        .await;
        assert_eq!(st.phase, Some(Succeeded), "{st:?}");
        let to = st.target.clone().expect("target");
        eprintln!(
            "round {round}: {from} -> {to}, downtime {:?} ms, {:?} bytes, {}",
            st.downtime_ms,
            st.data_transferred_bytes,
            st.message.clone().unwrap_or_default()
        );
        assert_eq!(st.source.as_deref(), Some(from.as_str()));
        assert_ne!(to, from);
        if let Some(t) = &target {
            assert_eq!(&to, t, "the named target");
        }
        assert!(st.start_time.is_some() && st.end_time.is_some(), "{st:?}");
        assert!(st.downtime_ms.is_some_and(|d| d >= 0), "{st:?}");
        assert!(st.data_transferred_bytes.is_some_and(|b| b > 0), "{st:?}");
        let vm = wait_vm(
            &c,
            "mover",
            "on its new host",
            Duration::from_secs(60),
            |vm| {
                host_of(vm).as_deref() == Some(to.as_str())
                    && vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Running)
                    && vm
                        .status
                        .as_ref()
                        .and_then(|s| s.migration.as_ref())
                        .is_some_and(|m| m.name == name && m.phase == Some(Succeeded))
            },
        )
        .await;
        let migrating = condition(&vm, "Migrating").expect("Migrating condition");
        assert_eq!(
            (migrating.status.as_str(), migrating.reason.as_str()),
            ("False", "Migrated")
        );
        assert_eq!(ready_reason(&vm), Some(("True".into(), "Running".into())));
        assert_eq!(
            domain_on(&lab, &lab_host(&to), &domain),
            (true, true),
            "running on the target"
        );
        assert!(
            !domain_on(&lab, &lab_host(&from), &domain).0,
            "nothing left on the source"
        );
        let now = ticks_past(&path, before).await;
        let text = lab::console_log(&path);
        assert_eq!(boots(&text), 1, "never rebooted:\n{text}");
        assert!(now > before);
    }
}

/// Slow (bandwidth-limited) migrations that are cancelled, lose their destination's libvirtd,
/// or lose the destination to a partition: each ends Cancelled or Failed with a reason, the
/// guest keeps running on its source without a reboot, and nothing is left on the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn interrupted_migrations_leave_the_vm_on_its_source() {
    use ferry::api::MigrationPhase::*;
    assert!(cluster::enabled(), "set FERRY_E2E=1 and KUBECONFIG");
    let (lab, c, _ctl) = migration_lab("ferry-e2e-migfail", 2, json!({"bandwidthMiBps": 1})).await;
    let ns = c.namespace.clone();
    let domain = format!("{ns}_stay");
    c.apply::<VirtualMachine>(ticking_vm("stay", &lab)).await;
    let vm = wait_vm(&c, "stay", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let src = host_of(&vm).expect("host");
    let src_lab = lab_host(&src);
    let dst_lab = if src_lab == "h1" { "h2" } else { "h1" }.to_string();
    let path = console(&lab, &ns, "stay");
    let mut tick = ticks_past(&path, 0).await;

    let running = |s: &ferry::api::VirtualMachineMigrationStatus| {
        s.phase == Some(Running) && s.data_transferred_bytes.is_some_and(|b| b > 0)
    };
    for (name, how) in [("cancel", "cancel"), ("kill", "kill"), ("cut", "partition")] {
        start_migration(&c, name, "stay", None).await;
        wait_migration(&c, name, "transferring", Duration::from_secs(120), running).await;
        let t = std::time::Instant::now();
        match how {
            "cancel" => {
                c.migrations()
                    .delete(name, &DeleteParams::default())
                    .await
                    .expect("delete migration");
                let api = c.migrations();
                wait_for("cancelled migration gone", Duration::from_secs(60), || {
                    let api = api.clone();
                    async move { api.get_opt(name).await.ok()?.is_none().then_some(()) }
                })
                .await;
            }
            "kill" => {
                lab.kill_libvirtd(&dst_lab)
                    .expect("kill the destination's libvirtd");
                let st =
                    wait_migration(&c, name, "ended", Duration::from_secs(120), is_terminal).await;
                assert_eq!(st.phase, Some(Failed), "{st:?}");
                assert!(
                    st.message
                        .as_deref()
                        .is_some_and(|m| m.contains(&src_lab) || m.contains(&src)),
                    "{st:?}"
                );
                lab.start_libvirtd(&dst_lab)
                    .expect("restart the destination's libvirtd");
            }
            _ => {
                lab.partition(&dst_lab).expect("partition the destination");
                let st =
                    wait_migration(&c, name, "ended", Duration::from_secs(180), is_terminal).await;
                assert_eq!(st.phase, Some(Failed), "{st:?}");
                lab.heal(&dst_lab).expect("heal");
            }
        }
        eprintln!(
            "{how}: ended {:.1}s after the interruption",
            t.elapsed().as_secs_f64()
        );
        let vm = wait_vm(
            &c,
            "stay",
            "Running on its source",
            Duration::from_secs(90),
            |vm| {
                vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Running)
                    && ready_reason(vm) == Some(("True".into(), "Running".into()))
            },
        )
        .await;
        assert_eq!(
            host_of(&vm),
            Some(src.clone()),
            "{how}: still on the source"
        );
        assert_eq!(domain_on(&lab, &src_lab, &domain), (true, true), "{how}");
        wait_for(
            &format!("{how}: no leftover on the destination"),
            Duration::from_secs(90),
            || {
                let out = lab.virsh(&dst_lab, &["list", "--all", "--name"]);
                let gone = out.success() && !out.stdout.contains(&domain);
                async move { gone.then_some(()) }
            },
        )
        .await;
        tick = ticks_past(&path, tick).await;
        assert_eq!(boots(&lab::console_log(&path)), 1, "{how}: never rebooted");
    }
}

/// The controller is killed while a slow migration runs; its successor asks both hosts and
/// converges: the migration gets a final phase, exactly one copy runs, and the VM's status
/// names the host it runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn a_controller_killed_mid_migration_converges() {
    use ferry::api::MigrationPhase::*;
    assert!(cluster::enabled(), "set FERRY_E2E=1 and KUBECONFIG");
    let (lab, c, mut ctl) =
        migration_lab("ferry-e2e-migkill", 2, json!({"bandwidthMiBps": 4})).await;
    let ns = c.namespace.clone();
    let domain = format!("{ns}_phoenix");
    c.apply::<VirtualMachine>(ticking_vm("phoenix", &lab)).await;
    wait_vm(&c, "phoenix", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let path = console(&lab, &ns, "phoenix");
    let tick = ticks_past(&path, 0).await;
    start_migration(&c, "m", "phoenix", None).await;
    wait_migration(&c, "m", "transferring", Duration::from_secs(120), |s| {
        s.phase == Some(Running) && s.data_transferred_bytes.is_some_and(|b| b > 0)
    })
    .await;
    ctl.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _successor = c.controller("ferry-e2e-migkill-2");
    let st = wait_migration(&c, "m", "ended", Duration::from_secs(240), is_terminal).await;
    eprintln!("after the restart: {:?} {:?}", st.phase, st.message);
    assert!(matches!(st.phase, Some(Succeeded | Failed)), "{st:?}");
    let expected = if st.phase == Some(Succeeded) {
        st.target.clone().expect("target")
    } else {
        st.source.clone().expect("source")
    };
    let vm = wait_vm(
        &c,
        "phoenix",
        "its true host",
        Duration::from_secs(90),
        |vm| {
            host_of(vm).as_deref() == Some(expected.as_str())
                && ready_reason(vm) == Some(("True".into(), "Running".into()))
        },
    )
    .await;
    let copies: Vec<String> = lab
        .hosts
        .iter()
        .filter(|h| domain_on(&lab, &h.name, &domain).1)
        .map(|h| h.name.clone())
        .collect();
    assert_eq!(
        copies,
        vec![lab_host(&expected)],
        "exactly one running copy: {vm:?}"
    );
    ticks_past(&path, tick).await;
    assert_eq!(boots(&lab::console_log(&path)), 1, "never rebooted");
}

/// A host put into maintenance is emptied by live migration within the pool's limit of 2 at a
/// time (checked on the migrations' recorded timeline), a VM that may not move is reported by
/// name and keeps running; ending a second evacuation early withdraws its queued migrations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn maintenance_evacuates_a_host_within_the_limits() {
    use ferry::api::MigrationPhase::*;
    assert!(cluster::enabled(), "set FERRY_E2E=1 and KUBECONFIG");
    let (lab, c, _ctl) = migration_lab(
        "ferry-e2e-evac",
        2,
        json!({"maxParallel": 2, "maxOutboundPerHost": 2, "maxInboundPerHost": 2}),
    )
    .await;
    let ns = c.namespace.clone();
    let (h1, h2) = (format!("{ns}-h1"), format!("{ns}-h2"));
    // Everything starts on h1.
    c.cordon(&h2, true).await;
    let names: Vec<String> = (1..=4).map(|i| format!("web-{i}")).collect();
    for n in &names {
        c.apply::<VirtualMachine>(vm_manifest(n, "lab", &lab, "Always"))
            .await;
    }
    let mut pinned = vm_manifest("pinned", "lab", &lab, "Always");
    pinned["spec"]["evictionStrategy"] = json!("None");
    c.apply::<VirtualMachine>(pinned).await;
    for n in names.iter().chain(std::iter::once(&"pinned".to_string())) {
        let vm = wait_vm(&c, n, "Ready", 2 * BOOT, |vm| {
            ready_reason(vm) == Some(("True".into(), "Running".into()))
        })
        .await;
        assert_eq!(host_of(&vm), Some(h1.clone()));
    }
    c.cordon(&h2, false).await;

    let t = std::time::Instant::now();
    maintenance(&c, &h1, true).await;
    let pools = c.pools();
    let evacuating = |reason: &'static str| {
        let pools = pools.clone();
        async move {
            let p = pools.get("lab").await.ok()?;
            let cond = p
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Evacuating" && c.reason == reason)?;
            Some(cond.message)
        }
    };
    let msg = wait_for(
        "h1 emptied but for the VM that may not move",
        Duration::from_secs(400),
        || evacuating("Blocked"),
    )
    .await;
    eprintln!("evacuated in {:.1}s: {msg}", t.elapsed().as_secs_f64());
    assert!(!msg.contains("web-"), "{msg}");
    assert!(msg.contains("pinned (evictionStrategy None)"), "{msg}");
    for n in &names {
        let vm = wait_vm(&c, n, "moved to h2", Duration::from_secs(60), |vm| {
            host_of(vm).as_deref() == Some(h2.as_str())
        })
        .await;
        assert_eq!(ready_reason(&vm), Some(("True".into(), "Running".into())));
    }
    let pinned = c.vms().get("pinned").await.expect("pinned");
    assert_eq!(
        host_of(&pinned),
        Some(h1.clone()),
        "evictionStrategy None stays"
    );
    assert_eq!(
        ready_reason(&pinned),
        Some(("True".into(), "Running".into()))
    );
    // The timeline: never more than 2 at once.
    let list = c
        .migrations()
        .list(&Default::default())
        .await
        .expect("list");
    let mut spans = Vec::new();
    for m in &list.items {
        let s = m.status.clone().expect("status");
        assert_eq!(s.phase, Some(Succeeded), "{}: {s:?}", m.name_any());
        let start = s.start_time.expect("start").0.as_second();
        let end = s.end_time.expect("end").0.as_second();
        eprintln!("{}: {start}..{end}", m.spec.vm_name);
        spans.push((start as f64, end as f64));
    }
    assert_eq!(spans.len(), 4, "one migration per movable VM");
    assert!(max_overlap(&spans) <= 2, "at most 2 at once: {spans:?}");
    assert!(max_overlap(&spans) >= 1);

    // A second evacuation, back to h1, one at a time and slowly; ended while the first runs.
    let mut pool = c.pools().get("lab").await.expect("pool");
    let mut policy = pool.spec.migration.clone().expect("policy");
    policy.max_parallel = Some(1);
    policy.bandwidth_mi_bps = Some(2);
    pool.spec.migration = Some(policy);
    c.pools()
        .patch(
            "lab",
            &PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"migration": pool.spec.migration}})),
        )
        .await
        .expect("patch pool");
    c.migrations()
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .expect("clear migrations");
    maintenance(&c, &h1, false).await;
    maintenance(&c, &h2, true).await;
    let api = c.migrations();
    wait_for(
        "one evacuation migration running",
        Duration::from_secs(120),
        || {
            let api = api.clone();
            async move {
                let l = api.list(&Default::default()).await.ok()?;
                (l.items.len() == 4
                    && l.items
                        .iter()
                        .any(|m| m.status.as_ref().and_then(|s| s.phase) == Some(Running)))
                .then_some(())
            }
        },
    )
    .await;
    maintenance(&c, &h2, false).await;
    wait_for(
        "queued migrations withdrawn, the running one finished",
        Duration::from_secs(240),
        || {
            let api = api.clone();
            async move {
                let l = api.list(&Default::default()).await.ok()?;
                (l.items.len() == 1
                    && l.items
                        .iter()
                        .all(|m| m.status.as_ref().and_then(|s| s.phase) == Some(Succeeded)))
                .then_some(())
            }
        },
    )
    .await;
    // Only the migration already running completed: 3 VMs stay on h2, one moved back to h1.
    let vms = c.vms();
    let names_ref = &names;
    let h2_ref = &h2;
    wait_for(
        "3 VMs on h2, 1 on h1, all Ready",
        Duration::from_secs(90),
        || {
            let vms = vms.clone();
            async move {
                let mut on_h2 = 0;
                for name in names_ref {
                    let vm = vms.get(name).await.ok()?;
                    if ready_reason(&vm) != Some(("True".into(), "Running".into())) {
                        return None;
                    }
                    if host_of(&vm).as_deref() == Some(h2_ref.as_str()) {
                        on_h2 += 1;
                    }
                }
                (on_h2 == 3).then_some(())
            }
        },
    )
    .await;
    wait_for("pool shows no evacuation", Duration::from_secs(60), || {
        evacuating("NoEvacuation")
    })
    .await;
}

/// With storage that is not shared (each host's own pool directory), a live migration copies the
/// VM's disk to the target: the guest's boot counter, kept on its disk, reads 2 after a restart
/// on the target, and the source keeps neither domain nor disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn migration_copies_local_disks() {
    use ferry::api::MigrationPhase::*;
    assert!(cluster::enabled(), "set FERRY_E2E=1 and KUBECONFIG");
    let (lab, c, _ctl) = migration_lab("ferry-e2e-migdisk", 2, json!({})).await;
    let ns = c.namespace.clone();
    // /var/lib/libvirt is private to each lab host: a pool there is local storage.
    let local = "/var/lib/libvirt/images/ferry-local";
    let golden = lab.golden_path();
    for h in &lab.hosts {
        let golden_copy = format!("{local}/{}", lab.golden);
        for cmd in [
            vec!["mkdir", "-p", local],
            vec!["cp", &golden.to_string_lossy(), &golden_copy],
        ] {
            let out = lab.exec_in_host(&h.name, &cmd);
            assert!(out.success(), "{}: {cmd:?}: {}", h.name, out.stderr);
        }
    }
    c.pools()
        .patch(
            "lab",
            &PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"spec": {"storage": {"pool": "ferry-local", "path": local, "shared": false}}}),
            ),
        )
        .await
        .expect("local storage");
    let pools = c.pools();
    wait_for(
        "the controller sees the new storage",
        Duration::from_secs(60),
        || {
            let pools = pools.clone();
            async move {
                let p = pools.get("lab").await.ok()?;
                (p.status?.observed_generation == p.metadata.generation).then_some(())
            }
        },
    )
    .await;
    c.apply::<VirtualMachine>(ticking_vm("disky", &lab)).await;
    let vm = wait_vm(&c, "disky", "Ready with its disk", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
            && vm.status.as_ref().is_some_and(|s| !s.disks.is_empty())
    })
    .await;
    eprintln!("{:?}", vm.status.as_ref().map(|s| &s.disks));
    let from = host_of(&vm).expect("host");
    let volume = vm
        .status
        .as_ref()
        .and_then(|s| s.disks.first())
        .map(|d| d.volume.clone())
        .expect("overlay volume");
    let path = console(&lab, &ns, "disky");
    lab::wait_for_console(&path, "FERRY-BOOT 1", Duration::from_secs(120)).expect("first boot");
    ticks_past(&path, 0).await;
    start_migration(&c, "copy", "disky", None).await;
    let st = wait_migration(&c, "copy", "ended", Duration::from_secs(300), is_terminal).await;
    assert_eq!(st.phase, Some(Succeeded), "{st:?}");
    assert_eq!(st.storage.as_deref(), Some("Copied"));
    let to = st.target.clone().expect("target");
    eprintln!(
        "disk migration: {:?} bytes, downtime {:?} ms, {}",
        st.data_transferred_bytes,
        st.downtime_ms,
        st.message.clone().unwrap_or_default()
    );
    wait_vm(
        &c,
        "disky",
        "on the target",
        Duration::from_secs(60),
        |vm| host_of(vm).as_deref() == Some(to.as_str()),
    )
    .await;
    let has_volume = |host: &str| {
        lab.virsh(host, &["vol-list", "ferry-local"])
            .stdout
            .contains(&volume)
    };
    assert!(has_volume(&lab_host(&to)), "the disk is on the target");
    assert!(
        !has_volume(&lab_host(&from)),
        "the source's copy is removed"
    );
    // Restart on the target: the counter on the copied disk goes on from 1.
    c.vms()
        .patch(
            "disky",
            &PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"ferry.dev/restart": "after-copy"}}}),
            ),
        )
        .await
        .expect("restart");
    lab::wait_for_console(&path, "FERRY-BOOT 2", Duration::from_secs(180))
        .expect("second boot reads the counter from the copied disk");
    let vm = wait_vm(&c, "disky", "Ready again", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    assert_eq!(host_of(&vm), Some(to));
}
