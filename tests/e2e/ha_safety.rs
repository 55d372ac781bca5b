//! HA safety: every piece of HA state belongs to one pool (and policy), so two namespaces' pools
//! on the same hosts never interfere; proofs that a host is off are fresh and about that host;
//! the storm guard holds for every action that stops or restarts VMs; one slow BMC holds up
//! nothing else.

use crate::support::bmc::{self, Sushy, SushySystem};
use crate::support::cluster::{self, Cluster, metric_sum, wait_for};
use crate::support::ha::{
    attach_ipmi, ha_condition, ha_host, ha_policy, ipmi_fencing, wait_verdict,
};
use crate::support::hosts::{boots, console, kill_qemu, running};
use crate::support::lab;
use crate::support::migration::LAB_HOST;
use crate::support::objects::{
    BOOT, LABEL, host_of, pool_manifest, ready_reason, vm_manifest, wait_vm,
};
use ferry::api::ha_policy::{FAILOVER_ANNOTATION, HostHealth, HostVerdict};
use ferry::api::{HAPolicy, HostPool, VirtualMachine};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
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
    put_redfish_secret(&b, &sushy).await;
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
                (hosts.len() == 2 && hosts.iter().all(|h| h.verdict == HostVerdict::Degraded))
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
    assert_never_failed_over(&a, "vm-1", &h1).await;
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

/// The HAPolicy `ha` of `c` with `extra` merged into its spec (fast fence retries for tests).
async fn apply_policy(c: &Cluster, extra: serde_json::Value) {
    c.apply::<HAPolicy>(ha_policy(8, extra)).await;
}

/// Wait until the storm guard of `c`'s HAPolicy `ha` holds; returns its condition.
async fn wait_storm_guard(c: &Cluster) -> Condition {
    wait_for("StormGuard", Duration::from_secs(60), || async move {
        ha_condition(c, "StormGuard")
            .await
            .filter(|x| x.status == "True")
    })
    .await
}

/// VM `name` of `c` is still placed on `host`: never handed over for a failover, never
/// recovered elsewhere.
async fn assert_never_failed_over(c: &Cluster, name: &str, host: &str) {
    let vm = c.vms().get(name).await.expect("the VM");
    assert_eq!(host_of(&vm).as_deref(), Some(host));
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
}

/// Redfish fencing through `sushy`, one system per lab host (`/redfish/v1/Systems/h1`, ...).
fn redfish_fencing(sushy: &Sushy) -> serde_json::Value {
    json!({"driver": "Redfish", "addressTemplate": sushy.base(),
           "systemPathTemplate": format!("/redfish/v1/Systems/{{label:{LAB_HOST}}}"),
           "credentialsSecret": "bmc", "requestTimeoutSeconds": 3, "confirmTimeoutSeconds": 40})
}

/// The Secret `bmc` for `sushy` (its CA included).
async fn put_redfish_secret(c: &Cluster, sushy: &Sushy) {
    c.apply::<k8s_openapi::api::core::v1::Secret>(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bmc"},
        "stringData": {"username": "admin", "password": "s3cret",
                       "ca.crt": String::from_utf8_lossy(&sushy.pki.ca_pem())}
    }))
    .await;
}

/// The power state `sushy` reports for `system` (read with ferry's own Redfish client).
async fn redfish_power(sushy: &Sushy, system: &str) -> Option<ferry::fence::Power> {
    use ferry::fence::Fencer;
    let creds = ferry::fence::Credentials {
        username: "admin".into(),
        password: "s3cret".into(),
        ca_pem: Some(sushy.pki.ca_pem()),
    };
    let f = ferry::fence::redfish::Redfish::new(
        &sushy.base(),
        &format!("/redfish/v1/Systems/{system}"),
        creds,
        Duration::from_secs(3),
        ferry::gate::ActionGate::open(),
    )
    .ok()?;
    f.power_state().await.ok()
}

/// How many power-off requests `sushy` received.
fn resets(sushy: &Sushy) -> usize {
    sushy.log().matches("ComputerSystem.Reset").count()
}

/// A BMC's "Off" counts only for the Node's own system, and only while the Node or libvirt also
/// says the host is gone. h1's libvirtd stops (its guest keeps running) and its Node goes
/// NotReady, but the Redfish system the pool names for h1 is another machine (its UUID is not
/// the Node's `systemUUID`): it is neither read as h1's nor powered off, the fence fails and
/// says why, and nothing is restarted. Once the Node names that system's UUID, the fence powers
/// it off; the BMC takes its time to report Off, and by then h1's libvirt answers again and its
/// Node is Ready: the late "Off" is not counted, h1 is Healthy and its VM was never restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn ha_a_bmc_off_counts_only_for_the_nodes_own_system_and_a_host_that_is_gone() {
    assert!(
        bmc::missing().is_empty(),
        "BMC emulators missing: {:?}",
        bmc::missing()
    );
    const H1_SYSTEM: &str = "1b7e0c39-5d2a-4d3e-9c1f-2a0b00000001";
    const H2_SYSTEM: &str = "1b7e0c39-5d2a-4d3e-9c1f-2a0b00000002";
    const ANOTHER_MACHINE: &str = "1b7e0c39-5d2a-4d3e-9c1f-2a0b0000aaaa";
    // Power changes apply 20 s after the request: long enough for h1 to come back first.
    let sushy = Sushy::start_with(
        &[
            SushySystem {
                name: "h1".into(),
                uuid: H1_SYSTEM.into(),
                on: true,
            },
            SushySystem {
                name: "h2".into(),
                uuid: H2_SYSTEM.into(),
                on: true,
            },
        ],
        "admin",
        "s3cret",
        20,
    );
    let (mut c, lab, h1, h2, ctl) = crate::support::ha::ha_setup(
        "ferry-e2e-ha-bmc-identity",
        Some(redfish_fencing(&sushy)),
        &[("vm-1", None)],
        8,
    )
    .await;
    put_redfish_secret(&c, &sushy).await;
    apply_policy(
        &c,
        json!({"fenceRetrySeconds": 1, "fenceRetryMaxSeconds": 2}),
    )
    .await;
    c.set_system_uuid(&h1, ANOTHER_MACHINE).await;
    c.set_system_uuid(&h2, H2_SYSTEM).await;
    let log = console(&lab, &c.namespace, "vm-1");

    // h1's libvirt stops answering (its guest runs on) and its kubelet goes silent.
    lab.stop_libvirtd("h1").expect("stop libvirtd on h1");
    c.node_not_ready(&h1).await;
    let h = wait_for(
        "a fence of h1 refused: the BMC's system is not h1",
        Duration::from_secs(90),
        || {
            let (c, h1) = (&c, h1.clone());
            async move {
                let h = ha_host(c, &h1).await?;
                h.last_fence_error
                    .as_deref()
                    .is_some_and(|e| e.contains("not for this host"))
                    .then_some(h)
            }
        },
    )
    .await;
    assert!(h.fenced_at.is_none(), "{h:?}");
    assert!(
        h.last_fence_error
            .as_deref()
            .is_some_and(|e| e.contains(H1_SYSTEM)),
        "{h:?}"
    );
    assert_eq!(
        resets(&sushy),
        0,
        "nothing was powered off: {}",
        sushy.log()
    );
    assert_eq!(
        redfish_power(&sushy, "h1").await,
        Some(ferry::fence::Power::On)
    );
    let vm = c.vms().get("vm-1").await.expect("vm-1");
    assert_eq!(host_of(&vm).as_deref(), Some(h1.as_str()));
    assert!(
        !vm.annotations().contains_key(FAILOVER_ANNOTATION),
        "{vm:?}"
    );
    assert!(running(&lab, "h2").is_empty(), "nothing started on h2");

    // The Node now names the system's UUID: the next fence powers it off.
    c.set_system_uuid(&h1, H1_SYSTEM).await;
    wait_for(
        "a power-off sent to h1's BMC",
        Duration::from_secs(60),
        || {
            let n = resets(&sushy);
            async move { (n > 0).then_some(()) }
        },
    )
    .await;
    // Before the BMC reports Off, h1 is back: libvirt answers and its Node is Ready.
    lab.start_libvirtd("h1").expect("start libvirtd on h1");
    c.node_ready(&h1).await;
    wait_for("h1's BMC reporting Off", Duration::from_secs(60), || {
        let sushy = &sushy;
        async move {
            (redfish_power(sushy, "h1").await == Some(ferry::fence::Power::Off)).then_some(())
        }
    })
    .await;
    // The late "Off" does not count: h1 is Healthy, its VM was never restarted.
    let h = wait_verdict(&c, &h1, HostVerdict::Healthy, Duration::from_secs(60)).await;
    assert!(h.fenced_at.is_none(), "{h:?}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_never_failed_over(&c, "vm-1", &h1).await;
    assert!(running(&lab, "h2").is_empty(), "nothing started on h2");
    assert_eq!(running(&lab, "h1"), vec![format!("{}_vm-1", c.namespace)]);
    assert_eq!(
        boots(&lab::console_log(&log)),
        1,
        "the guest never rebooted"
    );
    assert_eq!(
        ha_host(&c, &h1).await.map(|h| h.verdict),
        Some(HostVerdict::Healthy)
    );
    drop(ctl);
}

/// The storm guard holds every action that stops or restarts VMs, not only fencing, and
/// `maxFailedHostsPercent` cannot switch it off. With `notReadyAction: Restart`, both Nodes go
/// NotReady at once while libvirt answers (the API server cut off from the kubelets looks like
/// this): no domain is stopped and nothing restarts, and when the Nodes are back nothing moved.
/// Then with one of two hosts silent (above `maxFailedHostsPercent: 49`) a crashed guest waits
/// with `StormGuardHolds` and is started once the host answers again. A policy asking for 100 %
/// is refused by the API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn ha_storm_guard_holds_every_stop_and_restart() {
    let (mut c, lab, h1, h2, ctl) =
        crate::support::ha::ha_setup("ferry-e2e-ha-storm-all", None, &[("vm-1", None)], 8).await;
    let ns = c.namespace.clone();
    let log = console(&lab, &ns, "vm-1");
    let domain = format!("{ns}_vm-1");

    // The guard cannot be switched off.
    let err = Api::<HAPolicy>::namespaced(c.client.clone(), &ns)
        .patch(
            "ha",
            &kube::api::PatchParams::apply("ferry-e2e").force(),
            &kube::api::Patch::Apply(&ha_policy(8, json!({"maxFailedHostsPercent": 100}))),
        )
        .await
        .expect_err("maxFailedHostsPercent 100 is refused");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err:?}"
    );

    // notReadyAction Restart, and every Node NotReady at once while libvirt answers (h1, whose
    // VM would be stopped, last).
    apply_policy(&c, json!({"notReadyAction": "Restart"})).await;
    c.node_not_ready(&h2).await;
    c.node_not_ready(&h1).await;
    let cond = wait_storm_guard(&c).await;
    assert!(cond.message.contains("HostPool lab"), "{cond:?}");
    // Well past the grace: the domain was never stopped.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(
        running(&lab, "h1"),
        vec![domain.clone()],
        "vm-1 still runs on h1"
    );
    let vm = c.vms().get("vm-1").await.expect("vm-1");
    assert!(
        !vm.annotations().contains_key(FAILOVER_ANNOTATION),
        "{vm:?}"
    );
    let h = ha_host(&c, &h1).await.expect("h1");
    assert!(
        h.message
            .as_deref()
            .is_some_and(|m| m.contains("storm guard")),
        "{h:?}"
    );
    c.node_ready(&h1).await;
    c.node_ready(&h2).await;
    wait_for("both hosts Healthy", Duration::from_secs(60), || {
        let c = &c;
        async move {
            let hosts = lab_hosts(c).await;
            hosts
                .iter()
                .all(|h| h.verdict == HostVerdict::Healthy)
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        boots(&lab::console_log(&log)),
        1,
        "the guest never rebooted"
    );

    // One of two hosts silent is a storm above 49 %: a crashed guest is not started again
    // until h2 answers.
    apply_policy(&c, json!({"maxFailedHostsPercent": 49})).await;
    lab.stop_libvirtd("h2").expect("stop libvirtd on h2");
    wait_storm_guard(&c).await;
    kill_qemu(&domain);
    let vm = wait_vm(&c, "vm-1", "held by the storm guard", BOOT, |vm| {
        ready_reason(vm).is_some_and(|(_, r)| r == "StormGuardHolds")
    })
    .await;
    assert_eq!(host_of(&vm).as_deref(), Some(h1.as_str()));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        running(&lab, "h1").is_empty(),
        "not started during the storm"
    );
    assert_eq!(boots(&lab::console_log(&log)), 1);
    lab.start_libvirtd("h2").expect("start libvirtd on h2");
    wait_running(&c, "vm-1").await;
    lab::wait_for_console(&log, "FERRY-BOOT 2", BOOT).expect("started again after the storm");
    assert_eq!(running(&lab, "h1"), vec![domain]);
    drop(ctl);
}

/// One BMC that hangs holds up no other host, and a tick never takes as long as a verdict
/// counts. Three lab hosts: h1's libvirt stops answering (its Node stays Ready) and its BMC is
/// a socket that takes requests and never answers (the pool allows 20 s per BMC request); h2's
/// VM then loses its host to a power loss through h2's own BMC. h2 is fenced within seconds,
/// while h1's BMC is still being asked. The VM is not started elsewhere while h1, neither
/// answering nor proven off, might run it (look before you start); once h1's libvirt answers
/// again, it is (on h1 or h3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn ha_a_hung_bmc_holds_up_no_other_host() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    assert!(
        bmc::missing().is_empty(),
        "BMC emulators missing: {:?}",
        bmc::missing()
    );
    let lab = lab::Lab::up(3).expect("three lab hosts");
    let mut c = Cluster::new("ferry-e2e-ha-hung-bmc").await;
    let nodes = add_nodes(&mut c, &lab).await;
    let (h1, h2, h3) = (nodes[0].clone(), nodes[1].clone(), nodes[2].clone());
    let ns = c.namespace.clone();
    // A BMC that takes requests and never answers.
    let hung = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    let hung_port = hung.local_addr().expect("address").port();
    let sim = bmc::IpmiSim::start("admin", "s3cret", &lab.power_off_command("h2"), false);
    crate::support::ha::put_bmc_password(&c, "s3cret").await;
    for (n, a) in [
        (&h1, format!("127.0.0.1:{hung_port}")),
        (&h2, sim.address().trim_start_matches("ipmi://").to_string()),
        (&h3, "127.0.0.1:9".to_string()),
    ] {
        crate::support::ha::set_node_bmc(&c, n, &a).await;
    }
    c.cordon(&h1, true).await;
    c.cordon(&h3, true).await;
    let ctl = c.controller("ferry-e2e-ha-hung-bmc");
    let mut pool = working_pool(&lab, &ns);
    let mut fencing = ipmi_fencing();
    fencing["requestTimeoutSeconds"] = json!(20);
    fencing["confirmTimeoutSeconds"] = json!(30);
    pool["spec"]["fencing"] = fencing;
    c.apply::<HostPool>(pool).await;
    // Two of three hosts failing is not a storm here.
    apply_policy(&c, json!({"maxFailedHostsPercent": 99})).await;
    c.apply::<VirtualMachine>(vm_manifest("vm-1", "lab", &lab, "Always"))
        .await;
    let vm = wait_running(&c, "vm-1").await;
    assert_eq!(host_of(&vm).as_deref(), Some(h2.as_str()));
    lab::wait_for_console(&console(&lab, &ns, "vm-1"), "FERRY-READY", BOOT).expect("vm-1 booted");
    c.cordon(&h1, false).await;
    c.cordon(&h3, false).await;

    // h1's libvirt stops answering, its Node stays Ready: Degraded, and its hung BMC is asked.
    lab.stop_libvirtd("h1").expect("stop libvirtd on h1");
    wait_verdict(&c, &h1, HostVerdict::Degraded, Duration::from_secs(60)).await;
    // Power loss of h2 through its BMC.
    let lost = std::time::Instant::now();
    crate::support::ha::ipmi_power_off(&sim);
    c.node_not_ready(&h2).await;
    wait_verdict(&c, &h2, HostVerdict::Fenced, BOOT).await;
    let took = lost.elapsed();
    eprintln!("power loss of h2 -> h2 fenced: {:.1}s", took.as_secs_f64());
    // h1 can't be asked whether it runs the VM and is not proven off: the restart waits.
    let waiting = wait_vm(&c, "vm-1", "held by h1", BOOT, |vm| {
        ready_reason(vm) == Some(("False".into(), "OtherHostUnreachable".into()))
    })
    .await;
    assert_ne!(host_of(&waiting).as_deref(), Some(h3.as_str()));
    assert!(running(&lab, "h3").is_empty(), "nothing started on h3 yet");
    lab.start_libvirtd("h1").expect("start libvirtd on h1");
    // Placed anew on a survivor: h1 (answering again) or h3, never the fenced h2.
    let vm = wait_vm(&c, "vm-1", "Running on h1 or h3", BOOT, |vm| {
        host_of(vm).is_some_and(|h| h == h1 || h == h3)
            && ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let on = if host_of(&vm).as_deref() == Some(h1.as_str()) {
        "h1"
    } else {
        "h3"
    };
    assert_eq!(running(&lab, on), vec![format!("{ns}_vm-1")]);
    assert_eq!(
        vm.status
            .and_then(|s| s.last_recovery)
            .map(|r| r.evidence)
            .as_deref(),
        Some("Fenced")
    );
    // h1's BMC was asked (its socket holds ferry's request) and never answered.
    hung.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    let mut request = [0u8; 512];
    assert!(
        hung.recv_from(&mut request).is_ok(),
        "ferry asked h1's BMC for its power state"
    );
    // One BMC request to h1's hangs for 20 s: a tick that waited for it would take that long.
    assert!(
        took < Duration::from_secs(30),
        "h2's fencing must not wait for h1's hung BMC: {took:?}"
    );
    let body = ctl.http_get("/metrics").map(|(_, b)| b).unwrap_or_default();
    assert!(
        body.contains(
            "ferry_reconcile_duration_seconds_bucket{le=\"16.384\",controller=\"hapolicy\"}"
        ),
        "{body}"
    );
    let ticks = |le: &str| {
        metric_sum(
            &body,
            &format!(
                "ferry_reconcile_duration_seconds_bucket{{le=\"{le}\",controller=\"hapolicy\"}}"
            ),
        )
    };
    assert_eq!(
        ticks("+Inf") - ticks("16.384"),
        0.0,
        "no HA tick took longer than 16 s:\n{body}"
    );
    drop(hung);
    drop(ctl);
}
