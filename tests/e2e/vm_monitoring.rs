//! HAPolicy VM monitoring: a crashed guest is restarted within the policy's limits. The
//! controller runs with the safety resync at 10 minutes (the e2e harness's setting), so what is
//! noticed here is noticed through libvirt's events or a re-established connection.

use crate::support::cluster::{self, Cluster, wait_for};
use crate::support::hosts::{console, kill_qemu};
use crate::support::lab;
use crate::support::objects::{
    BOOT, LABEL, condition, pool_manifest, ready_reason, vm_manifest, wait_vm,
};
use ferry::api::{VirtualMachine, VmPhase};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

/// VM monitoring: a covered VM whose QEMU process dies is started again, once here
/// (`maxRestarts: 1`); the second crash leaves it stopped with `RestartLimitReached`, and a
/// restart request starts it again. Crashes are noticed within seconds (domain events), and a
/// crash while the host's libvirtd is down (its events lost) is found once ferry reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn a_crashed_guest_restarts_within_the_monitoring_limits() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(1).expect("lab host");
    let mut c = Cluster::new("ferry-e2e-crash").await;
    let ns = c.namespace.clone();
    c.add_node(&format!("{ns}-h1"), &lab.hosts[0].ip, LABEL)
        .await;
    let ctl = c.controller("e2e-crash");
    c.apply::<ferry::api::HostPool>(pool_manifest("lab", &lab))
        .await;
    c.apply::<ferry::api::HAPolicy>(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HAPolicy",
        "metadata": {"name": "ha"},
        "spec": {"hostPools": ["lab"], "vmMonitoring": {"maxRestarts": 1, "windowSeconds": 3600}}
    }))
    .await;
    c.apply::<VirtualMachine>(vm_manifest("crashy", "lab", &lab, "Always"))
        .await;
    let log = console(&lab, &ns, "crashy");
    let domain = format!("{ns}_crashy");
    let running = |vm: &VirtualMachine| ready_reason(vm) == Some(("True".into(), "Running".into()));
    wait_vm(&c, "crashy", "Running", BOOT, running).await;
    lab::wait_for_console(&log, "FERRY-READY", BOOT).expect("first boot");

    // First crash: started again, counted, within seconds (the event, not the resync).
    let crashed = std::time::Instant::now();
    kill_qemu(&domain);
    wait_for(
        "the crashed domain running again",
        Duration::from_secs(20),
        || {
            let state = lab.virsh_ok("h1", &["domstate", &domain]);
            async move { state.is_ok_and(|s| s.trim() == "running").then_some(()) }
        },
    )
    .await;
    let noticed = crashed.elapsed();
    assert!(
        noticed < Duration::from_secs(15),
        "restarted {noticed:?} after the crash"
    );
    if let Err(e) = lab::wait_for_console(&log, "FERRY-BOOT 2", BOOT) {
        // What ferry and libvirt say, for whoever reads the failure.
        let vm = c.vms().get("crashy").await.ok();
        let state = lab.virsh_ok("h1", &["domstate", "--reason", &domain]);
        let policy = c.policies().get("ha").await.ok();
        panic!(
            "not restarted after the crash: {e}\nlibvirt: {state:?}\nVM status: {:?}\nHAPolicy status: {:?}",
            vm.and_then(|v| v.status),
            policy.and_then(|p| p.status)
        );
    }
    let vm = wait_vm(
        &c,
        "crashy",
        "Running again, one restart counted",
        BOOT,
        |vm| {
            running(vm)
                && vm
                    .status
                    .as_ref()
                    .is_some_and(|s| s.unplanned_restarts.len() == 1)
        },
    )
    .await;
    assert_eq!(
        vm.status.as_ref().and_then(|s| s.phase),
        Some(VmPhase::Running)
    );
    lab::wait_for_console(&log, "FERRY-READY", BOOT).expect("second boot ready");

    // Second crash within the window: over the limit, left stopped with the reason.
    kill_qemu(&domain);
    let vm = wait_vm(&c, "crashy", "held by the restart limit", BOOT, |vm| {
        ready_reason(vm) == Some(("False".into(), "RestartLimitReached".into()))
    })
    .await;
    let message = condition(&vm, "Ready").map(|c| c.message.clone());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("HAPolicy ha") && m.contains("ferry.dev/restart")),
        "{message:?}"
    );
    assert_eq!(
        vm.status.as_ref().and_then(|s| s.phase),
        Some(VmPhase::Stopped)
    );
    // Another reconcile (a change of the VM wakes it) leaves it held.
    c.vms()
        .patch(
            "crashy",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"e2e.ferry.dev/poke": "1"}}})),
        )
        .await
        .expect("poke");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !lab::console_log(&log).contains("FERRY-BOOT 3"),
        "a held VM is not started by the next reconcile"
    );
    let state = lab.virsh_ok("h1", &["domstate", "--reason", &domain]);
    assert!(
        state.as_deref().is_ok_and(|s| s.contains("shut off")),
        "{state:?}"
    );

    // A person restarts it.
    c.vms()
        .patch(
            "crashy",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"ferry.dev/restart": "after-crash"}}}),
            ),
        )
        .await
        .expect("restart request");
    wait_vm(
        &c,
        "crashy",
        "Running after the restart request",
        BOOT,
        running,
    )
    .await;
    lab::wait_for_console(&log, "FERRY-BOOT 3", BOOT).expect("started on request");

    // Lost events: the guest dies while h1's libvirtd is down, so its stop event is never heard;
    // ferry looks at h1's VMs when it reconnects and finds it: an unplanned stop, held by the
    // limit (the window still holds the first crash's restart), whether or not a reconcile saw
    // the host unreachable in between.
    const WOKEN: &str = "host connection re-established: looking at its VMs again";
    let reconnections = ctl.log_text().matches(WOKEN).count();
    lab.kill_libvirtd("h1").expect("kill libvirtd on h1");
    kill_qemu(&domain);
    lab.start_libvirtd("h1").expect("start libvirtd on h1");
    let restarted = std::time::Instant::now();
    wait_for(
        "the stop found after reconnecting",
        Duration::from_secs(90),
        || {
            let vms = c.vms();
            async move {
                let vm = vms.get("crashy").await.ok()?;
                (ready_reason(&vm) == Some(("False".into(), "RestartLimitReached".into())))
                    .then_some(())
            }
        },
    )
    .await;
    assert!(
        ctl.log_text().matches(WOKEN).count() > reconnections,
        "the reconnection woke h1's VMs"
    );
    // Held, not started again uncounted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !lab::console_log(&log).contains("FERRY-BOOT 4"),
        "a stop while the host was unreachable was restarted uncounted"
    );
    eprintln!(
        "stop found {:?} after h1's libvirtd was back",
        restarted.elapsed()
    );
    drop(ctl);
}
