//! HAPolicy VM monitoring: a crashed guest is restarted within the policy's limits.

use crate::support::cluster::{self, Cluster};
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
/// restart request starts it again.
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

    // First crash: started again, counted.
    kill_qemu(&domain);
    lab::wait_for_console(&log, "FERRY-BOOT 2", BOOT).expect("restarted after the crash");
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
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(
        !lab::console_log(&log).contains("FERRY-BOOT 3"),
        "a held VM is not started by the next resync"
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
    drop(ctl);
}
