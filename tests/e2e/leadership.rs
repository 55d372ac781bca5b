//! Leader election under a partition: a leader cut off from the API server keeps its libvirt
//! connections and a stale cache, and the leader-election library never tells it that it lost
//! the lease. ferry's own lease deadline must stop it before the standby takes over.

use crate::support::cluster::{self, Cluster, metric_sum, wait_for};
use crate::support::hosts::{boots, console, running};
use crate::support::lab;
use crate::support::objects::{BOOT, LABEL, pool_manifest, ready_reason, vm_manifest, wait_vm};
use ferry::api::{VirtualMachine, VmPhase};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use std::time::{Duration, Instant};

/// The holder of the controllers' Lease in the test namespace.
async fn lease_holder(c: &Cluster) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), &c.namespace);
    leases
        .get("ferry-controller")
        .await
        .ok()?
        .spec?
        .holder_identity
}

/// The libvirt calls that change a host.
const ACTIONS: [&str; 7] = [
    "define_domain",
    "start_domain",
    "shutdown_domain",
    "destroy_domain",
    "undefine_domain",
    "create_overlay",
    "delete_volume",
];

/// libvirt calls of one operation a controller made, from its `/metrics`.
fn calls(ctl: &cluster::ControllerProcess, operation: &str) -> f64 {
    let body = ctl.http_get("/metrics").map(|(_, b)| b).unwrap_or_default();
    metric_sum(
        &body,
        &format!("ferry_libvirt_call_duration_seconds_count{{operation=\"{operation}\""),
    )
}

/// Leader A reaches the API server only through a proxy; standby B directly. A runs a VM
/// (`runStrategy: Always`). The proxy is cut: A's renewals fail, B takes the lease over, and the
/// VM is halted, which B carries out. A still has its libvirt connection, hears the domain stop
/// and its stale cache still says `Always`: without its own lease deadline it would start the
/// guest again (and fight B for as long as the partition lasts). It must do nothing on any host:
/// the guest stays off (libvirt and its console agree), A makes no start call after the deadline
/// (its own metrics), and once the partition heals A stops, having lost the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn a_leader_cut_off_from_the_api_server_stops_acting() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(1).expect("lab host");
    let mut c = Cluster::new("ferry-e2e-lease").await;
    let ns = c.namespace.clone();
    let node = format!("{ns}-h1");
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let (mut a, proxy) = c.controller_behind_proxy("ferry-a");
    wait_for("A leads", Duration::from_secs(60), || async {
        (lease_holder(&c).await.as_deref() == Some("ferry-a")).then_some(())
    })
    .await;
    let b = c.controller("ferry-b");
    c.apply::<ferry::api::HostPool>(pool_manifest("lab", &lab))
        .await;
    c.apply::<VirtualMachine>(vm_manifest("vm", "lab", &lab, "Always"))
        .await;
    wait_vm(&c, "vm", "Running", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let log = console(&lab, &ns, "vm");
    lab::wait_for_console(&log, "FERRY-READY", BOOT).expect("guest ready");
    assert_eq!(lease_holder(&c).await.as_deref(), Some("ferry-a"));
    assert!(
        !b.log_text().contains("acquired leadership"),
        "B is a standby"
    );

    // The partition.
    proxy.cut();
    let cut = Instant::now();
    wait_for(
        "B takes the lease over",
        Duration::from_secs(60),
        || async { (lease_holder(&c).await.as_deref() == Some("ferry-b")).then_some(()) },
    )
    .await;
    eprintln!(
        "B holds the lease {:.1}s after the cut",
        cut.elapsed().as_secs_f64()
    );
    let a_starts = calls(&a, "start_domain");
    assert!(a_starts >= 1.0, "A started the VM before the cut");
    let a_before: Vec<f64> = ACTIONS.iter().map(|op| calls(&a, op)).collect();
    let booted = boots(&std::fs::read_to_string(&log).unwrap_or_default());

    // The new leader halts the VM; the old one must not start it again.
    c.vms()
        .patch(
            "vm",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runStrategy": "Halted"}})),
        )
        .await
        .expect("halt");
    wait_vm(&c, "vm", "Stopped by B", Duration::from_secs(90), |vm| {
        vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Stopped)
    })
    .await;
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(20) {
        assert!(
            running(&lab, "h1").is_empty(),
            "the guest runs again after B halted it: the cut-off leader started it"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        boots(&std::fs::read_to_string(&log).unwrap_or_default()),
        booted,
        "no boot after the halt"
    );
    // A's deadline had passed before B could take over (lease 6 s, margin 1 s).
    wait_for(
        "A notices that its lease lapsed",
        Duration::from_secs(10),
        || async {
            a.log_text()
                .contains("leader lease not renewed in time")
                .then_some(())
        },
    )
    .await;
    let a_after: Vec<f64> = ACTIONS.iter().map(|op| calls(&a, op)).collect();
    assert_eq!(
        a_after, a_before,
        "A made no host action after its deadline ({ACTIONS:?})"
    );

    // The partition heals: A reads the lease, sees B hold it, and stops without acting.
    proxy.heal();
    wait_for("A stops", Duration::from_secs(60), || async {
        a.log_text().contains("leadership lost").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(running(&lab, "h1").is_empty(), "still off");
    let vm = c.vms().get("vm").await.expect("vm");
    assert_eq!(vm.status.and_then(|s| s.phase), Some(VmPhase::Stopped));
    a.kill();
    drop(b);
}
