//! HA safety: every piece of HA state belongs to one pool (and policy), so two namespaces' pools
//! on the same hosts never interfere; proofs that a host is off are fresh and about that host;
//! the storm guard holds for every action that stops or restarts VMs; one slow BMC holds up
//! nothing else.

use crate::support::bmc::{self, Sushy, SushySystem};
use crate::support::cluster::{self, Cluster, metric_sum, wait_for};
use crate::support::ha::{attach_ipmi, ha_policy, ipmi_fencing};
use crate::support::hosts::{boots, console, running};
use crate::support::lab;
use crate::support::migration::LAB_HOST;
use crate::support::objects::{
    BOOT, LABEL, host_of, pool_manifest, ready_reason, vm_manifest, wait_vm,
};
use ferry::api::ha_policy::{FAILOVER_ANNOTATION, HostHealth, HostVerdict};
use ferry::api::{HAPolicy, HostPool, VirtualMachine};
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use serde_json::json;
use std::time::Duration;

/// Node label of this module's tests, valued with the test's namespace: their pools select only
/// their own Nodes, whatever else the cluster holds.
const SHARED: &str = "ferry.dev/e2e-shared";

/// The lab's hosts as Nodes `<ns>-h1`, ... of `c`, labelled for the lab pools and with
/// [`SHARED`] = the namespace. Returns the Node names.
async fn add_nodes(c: &mut Cluster, lab: &lab::Lab) -> Vec<String> {
    let ns = c.namespace.clone();
    let mut names = Vec::new();
    for h in &lab.hosts {
        let name = format!("{ns}-{}", h.name);
        c.add_node_with_labels(
            &name,
            &h.ip,
            &[(LABEL, "true"), (LAB_HOST, &h.name), (SHARED, &ns)],
        )
        .await;
        names.push(name);
    }
    names
}

/// The HostPool `lab` that reaches each lab host through its socket, selecting the Nodes of
/// [`add_nodes`] (`shared` is their [`SHARED`] value).
fn working_pool(lab: &lab::Lab, shared: &str) -> serde_json::Value {
    let mut pool = pool_manifest("lab", lab);
    pool["spec"]["nodeSelector"] = json!({"matchLabels": {SHARED: shared}});
    pool["spec"]["libvirt"]["uriTemplate"] = json!(
        lab.hosts[0]
            .unix_uri
            .replace("/h1/run/", &format!("/{{label:{LAB_HOST}}}/run/"))
    );
    pool["spec"]["capacity"] = json!({"cpuOvercommit": "8"});
    pool
}

/// An HAPolicy's status.
async fn policy_status(c: &Cluster, name: &str) -> Option<ferry::api::HAPolicyStatus> {
    Api::<HAPolicy>::namespaced(c.client.clone(), &c.namespace)
        .get(name)
        .await
        .ok()?
        .status
}

/// The HAPolicy `ha`'s entries for the hosts of pool `lab`.
async fn lab_hosts(c: &Cluster) -> Vec<HostHealth> {
    policy_status(c, "ha")
        .await
        .map(|s| s.hosts.into_iter().filter(|h| h.pool == "lab").collect())
        .unwrap_or_default()
}

/// Wait until VM `name` of `c` runs (`Ready` True, `Running`) and return it.
async fn wait_running(c: &Cluster, name: &str) -> VirtualMachine {
    wait_vm(c, name, "Running", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await
}

/// Two namespaces' HostPools select the same two lab hosts, each with an HAPolicy. Team A's
/// pool works; team B's pool is broken (a URI template that reaches no libvirt, and a "BMC" of
/// its own that reports every system Off). Team A's pool places and keeps running its VMs
/// while B's pool shows the hosts unreachable: nothing is fenced or restarted for B's sake, A's
/// verdicts stay Healthy, and once B's pool and policy are deleted nothing of them is left
/// (the controller judges only A's hosts again, and A's VMs are still placed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn ha_pools_of_two_namespaces_on_the_same_hosts_keep_their_own_state() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    assert!(
        bmc::missing().is_empty(),
        "BMC emulators missing: {:?}",
        bmc::missing()
    );
    let lab = lab::Lab::up(2).expect("two lab hosts");
    let mut a = Cluster::new("ferry-e2e-ha-team-a").await;
    let b = Cluster::new("ferry-e2e-ha-team-b").await;
    let shared = a.namespace.clone();
    let nodes = add_nodes(&mut a, &lab).await;
    let (h1, h2) = (nodes[0].clone(), nodes[1].clone());
    a.cordon(&h2, true).await;
    let ctl = a.controller_all_namespaces("ferry-e2e-ha-shared").await;

    // Team A: a working pool with IPMI fencing (a BMC for h1 whose power-off kills h1), an
    // HAPolicy, and a VM on h1.
    let mut pool = working_pool(&lab, &shared);
    pool["spec"]["fencing"] = ipmi_fencing();
    a.apply::<HostPool>(pool).await;
    let sim = attach_ipmi(&a, &lab, &h1, &h2, "s3cret").await;
    a.apply::<HAPolicy>(ha_policy(8, json!({}))).await;
    a.apply::<VirtualMachine>(vm_manifest("vm-1", "lab", &lab, "Always"))
        .await;
    let vm = wait_running(&a, "vm-1").await;
    assert_eq!(host_of(&vm).as_deref(), Some(h1.as_str()));
    lab::wait_for_console(&console(&lab, &a.namespace, "vm-1"), "FERRY-READY", BOOT)
        .expect("vm-1 booted");
    a.cordon(&h2, false).await;
    wait_for("team A's hosts Healthy", Duration::from_secs(60), || {
        let a = &a;
        async move {
            let hosts = lab_hosts(a).await;
            (hosts.len() == 2 && hosts.iter().all(|h| h.verdict == HostVerdict::Healthy))
                .then_some(())
        }
    })
    .await;

    // Team B: the same Nodes, a URI template that reaches no libvirt, and a Redfish "BMC" of
    // its own that reports both systems Off (systems that are not these hosts).
    let sushy = Sushy::start_with(
        &[
            SushySystem {
                name: h1.clone(),
                uuid: "6b1c0b8e-0000-4000-8000-00000000b001".into(),
                on: false,
            },
            SushySystem {
                name: h2.clone(),
                uuid: "6b1c0b8e-0000-4000-8000-00000000b002".into(),
                on: false,
            },
        ],
        "admin",
        "s3cret",
        1,
    );
    b.apply::<k8s_openapi::api::core::v1::Secret>(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bmc"},
        "stringData": {"username": "admin", "password": "s3cret",
                       "ca.crt": String::from_utf8_lossy(&sushy.pki.ca_pem())}
    }))
    .await;
    let mut broken = working_pool(&lab, &shared);
    broken["spec"]["libvirt"]["uriTemplate"] =
        json!("qemu+unix:///system?socket=/tmp/ferry-e2e-nowhere/{name}/libvirt-sock");
    broken["spec"]["libvirt"]["connectTimeoutSeconds"] = json!(2);
    broken["spec"]["fencing"] = json!({
        "driver": "Redfish", "addressTemplate": sushy.base(),
        "systemPathTemplate": "/redfish/v1/Systems/{name}", "credentialsSecret": "bmc",
        "requestTimeoutSeconds": 3, "confirmTimeoutSeconds": 5
    });
    b.apply::<HostPool>(broken).await;
    b.apply::<HAPolicy>(ha_policy(8, json!({}))).await;
    b.apply::<VirtualMachine>(vm_manifest("vm-b", "lab", &lab, "Always"))
        .await;
    wait_for(
        "team B's policy judging both hosts unreachable",
        Duration::from_secs(90),
        || {
            let b = &b;
            async move {
                let hosts = lab_hosts(b).await;
                (hosts.len() == 2 && hosts.iter().all(|h| h.verdict != HostVerdict::Healthy))
                    .then_some(())
            }
        },
    )
    .await;

    // Team A places a new VM and it runs, while team B's pool shows both hosts unreachable.
    a.apply::<VirtualMachine>(vm_manifest("vm-2", "lab", &lab, "Always"))
        .await;
    wait_running(&a, "vm-2").await;
    // Well past every grace of both policies.
    tokio::time::sleep(Duration::from_secs(15)).await;
    for h in lab_hosts(&a).await {
        assert_eq!(h.verdict, HostVerdict::Healthy, "team A: {h:?}");
        assert!(h.incident.is_none() && h.fence_attempts.is_none(), "{h:?}");
    }
    assert!(
        policy_status(&a, "ha")
            .await
            .is_some_and(|s| s.incidents.is_empty()),
        "team A has no incident"
    );
    for h in lab_hosts(&b).await {
        assert!(
            h.fence_attempts.is_none() && h.fenced_at.is_none(),
            "team B fenced: {h:?}"
        );
    }
    let vm = a.vms().get("vm-1").await.expect("vm-1");
    assert_eq!(host_of(&vm).as_deref(), Some(h1.as_str()));
    assert!(
        !vm.annotations().contains_key(FAILOVER_ANNOTATION),
        "{vm:?}"
    );
    assert!(
        vm.status
            .as_ref()
            .and_then(|s| s.last_recovery.as_ref())
            .is_none()
    );
    assert_eq!(
        boots(&lab::console_log(&console(&lab, &a.namespace, "vm-1"))),
        1,
        "vm-1 never restarted"
    );
    assert!(sim.power_on(), "team A's BMC never powered h1 off");
    assert!(
        !sushy.log().contains("ComputerSystem.Reset"),
        "team B's BMC was never asked to power off: {}",
        sushy.log()
    );
    let pool = a.pools().get("lab").await.expect("team A's pool");
    for h in pool.status.expect("pool status").hosts {
        assert_eq!(h.ha_verdict, Some(HostVerdict::Healthy), "{h:?}");
    }
    let vmb = b.vms().get("vm-b").await.expect("vm-b");
    assert!(host_of(&vmb).is_none(), "team B's VM has no host: {vmb:?}");

    // Team B's pool and policy are deleted: nothing of them is left.
    Api::<HAPolicy>::namespaced(b.client.clone(), &b.namespace)
        .delete("ha", &DeleteParams::default())
        .await
        .expect("delete team B's policy");
    b.pools()
        .delete("lab", &DeleteParams::default())
        .await
        .expect("delete team B's pool");
    wait_for(
        "only team A's two hosts judged",
        Duration::from_secs(30),
        || {
            let body = ctl.http_get("/metrics").map(|(_, b)| b);
            async move { (metric_sum(&body?, "ferry_ha_hosts_judged") == 2.0).then_some(()) }
        },
    )
    .await;
    a.vms()
        .delete("vm-2", &DeleteParams::default())
        .await
        .expect("delete vm-2");
    a.apply::<VirtualMachine>(vm_manifest("vm-3", "lab", &lab, "Always"))
        .await;
    wait_running(&a, "vm-3").await;
    for h in lab_hosts(&a).await {
        assert_eq!(h.verdict, HostVerdict::Healthy, "team A: {h:?}");
    }
    assert_eq!(
        running(&lab, "h1")
            .iter()
            .filter(|d| d.ends_with("_vm-1"))
            .count(),
        1
    );
    drop(ctl);
}
