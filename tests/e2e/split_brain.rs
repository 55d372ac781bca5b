//! Never twice: the VirtualMachine controller's placement after a failover is a fencing token.
//! Two controllers (two contexts, each with its own caches and host connections, as two
//! processes without leader election have) reconcile one VM against the real API server while
//! sharing the same hosts (in memory, `ferry::hypervisor::fake`); their caches disagree about
//! which host is free, so each would choose another one.

use crate::support::cluster::{self, Cluster};
use crate::support::fake_pool;
use ferry::api::ha_policy::FAILOVER_ANNOTATION;
use ferry::api::{HostState, VirtualMachine};
use ferry::controller::virtual_machine::reconcile;
use ferry::hypervisor::fake::{FakeHost, Op};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use std::sync::Arc;

/// VM `name` as the API server holds it once it ran on `host` and the HA controller handed it
/// over for a restart elsewhere (the `ferry.dev/failover` annotation).
async fn handed_over(c: &Cluster, name: &str, host: &str) -> VirtualMachine {
    let vms = c.vms();
    let vm: VirtualMachine = c.apply(fake_pool::vm_manifest(name)).await;
    let uid = vm.metadata.uid.clone().expect("uid");
    vms.patch_status(
        name,
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(
            json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
            "status": {"phase": "Running", "host": host, "domainUuid": uid}}),
        ),
    )
    .await
    .expect("status: runs on the host");
    vms.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            FAILOVER_ANNOTATION: fake_pool::failover(host, &format!("{host}-1"))}}})),
    )
    .await
    .expect("hand the VM over")
}

/// Reasons of the Events about VM `name`.
async fn event_reasons(c: &Cluster, name: &str) -> Vec<String> {
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(c.client.clone(), &c.namespace);
    events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

/// Hosts that have the VM's domain defined.
fn defined_on(hosts: &[FakeHost], uid: &str) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| h.domain(uid).is_some())
        .map(|h| h.uri().to_string())
        .collect()
}

/// A VM ran on h1; h1 was fenced and the VM handed over for a restart elsewhere. Controller A's
/// cache sees h2 free, controller B's sees h3 free. Both reconcile at once: exactly one placement
/// is recorded, exactly one host gets a domain, and it is the one status names. Then B
/// reconciles again from its stale cache (the VM as it was before A placed it): nothing happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: run e2e/run.sh"]
async fn two_controllers_placing_one_vm_after_a_failover_start_it_once() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let c = Cluster::new("ferry-e2e-split").await;
    let ns = c.namespace.clone();
    let vms = c.vms();
    let handed = handed_over(&c, "web", "h1").await;
    let uid = handed.metadata.uid.clone().expect("uid");

    let (fakes, hosts) = fake_pool::hosts(&["h1", "h2", "h3"]);
    hosts[0].power_off();
    let nodes = ["h1", "h2", "h3"].map(fake_pool::node);
    let view = |free: &str| {
        fake_pool::pool(
            &ns,
            &["h1", "h2", "h3"].map(|h| {
                let state = if h == free {
                    HostState::Ready
                } else {
                    HostState::Unreachable
                };
                (h, state)
            }),
        )
    };
    let (a, _aw) = fake_pool::context(
        c.client.clone(),
        &fakes,
        view("h2"),
        &nodes,
        std::slice::from_ref(&handed),
    );
    let (b, _bw) = fake_pool::context(
        c.client.clone(),
        &fakes,
        view("h3"),
        &nodes,
        std::slice::from_ref(&handed),
    );

    for ctx in [&a, &b] {
        fake_pool::fenced(ctx, &ns, "h1");
        fake_pool::released(ctx, &ns, "h1", &uid);
    }
    let (ra, rb) = tokio::join!(
        reconcile(Arc::new(handed.clone()), a.clone()),
        reconcile(Arc::new(handed.clone()), b.clone())
    );
    ra.expect("A's reconcile");
    rb.expect("B's reconcile");
    let defined = defined_on(&hosts, &uid);
    assert_eq!(
        defined.len(),
        1,
        "the VM's domain is defined on {defined:?}"
    );
    let now = vms.get("web").await.expect("vm");
    let host = now.status.as_ref().and_then(|s| s.host.clone());
    assert!(
        host.as_deref()
            .is_some_and(|h| defined[0] == format!("qemu+tcp://{h}/system")),
        "status names {host:?}, the domain is on {defined:?}"
    );
    let winner = hosts
        .iter()
        .find(|h| h.domain(&uid).is_some())
        .expect("the winner");
    assert!(
        winner.domain(&uid).is_some_and(|d| d.state.is_active()),
        "it runs there"
    );

    // The loser reconciles again from its stale cache: still a restart to place, as it sees it.
    for h in &hosts {
        h.take_calls();
    }
    reconcile(Arc::new(handed.clone()), b.clone())
        .await
        .expect("B again");
    reconcile(Arc::new(handed.clone()), a.clone())
        .await
        .expect("A again");
    assert_eq!(defined_on(&hosts, &uid), defined, "nothing new defined");
    let changed: Vec<_> = hosts
        .iter()
        .flat_map(|h| h.calls())
        .filter(|c| {
            matches!(
                c.op,
                Op::DefineDomain | Op::StartDomain | Op::CreateOverlay | Op::DestroyDomain
            )
        })
        .collect();
    assert!(changed.is_empty(), "stale reconciles acted: {changed:?}");
    let after = vms.get("web").await.expect("vm");
    assert_eq!(
        after.status.and_then(|s| s.host),
        host,
        "the placement was not overwritten"
    );
}

/// The `ferry.dev/failover` annotation is no proof (a namespace editor can write it): written by
/// hand it is ignored; and even when the HA controller released the VM, a host that still runs
/// it keeps it there, and nothing is created elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: run e2e/run.sh"]
async fn a_forged_failover_keeps_the_vm_where_it_runs() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let c = Cluster::new("ferry-e2e-forged").await;
    let ns = c.namespace.clone();
    let handed = handed_over(&c, "web", "h1").await;
    let uid = handed.metadata.uid.clone().expect("uid");
    let (fakes, hosts) = fake_pool::hosts(&["h1", "h2"]);
    fake_pool::run_domain_on(&hosts[0], &ns, "web", &uid);
    let pool = fake_pool::pool(&ns, &[("h1", HostState::Ready), ("h2", HostState::Ready)]);
    let nodes = ["h1", "h2"].map(fake_pool::node);
    let (ctx, _w) = fake_pool::context(
        c.client.clone(),
        &fakes,
        pool,
        &nodes,
        std::slice::from_ref(&handed),
    );
    // Written by hand: nothing happens.
    reconcile(Arc::new(handed.clone()), ctx.clone())
        .await
        .expect("reconcile");
    assert!(hosts[1].domains().is_empty(), "nothing on h2");
    let st = c
        .vms()
        .get("web")
        .await
        .expect("vm")
        .status
        .expect("status");
    assert_eq!(st.host.as_deref(), Some("h1"));
    assert!(
        st.last_recovery.is_none(),
        "a forged request is not answered"
    );
    // Released by the HA controller (its host wrongly judged off): the VM is found on h1.
    fake_pool::released(&ctx, &ns, "h1", &uid);
    let handed = c.vms().get("web").await.expect("vm");
    reconcile(Arc::new(handed.clone()), ctx)
        .await
        .expect("reconcile");
    assert!(hosts[1].domains().is_empty(), "nothing on h2");
    assert_eq!(hosts[1].count(Op::StartDomain), 0);
    assert!(hosts[0].domain(&uid).is_some_and(|d| d.state.is_active()));
    let vm = c.vms().get("web").await.expect("vm");
    let st = vm.status.expect("status");
    assert_eq!(st.host.as_deref(), Some("h1"));
    assert_eq!(
        st.last_recovery.and_then(|r| r.to_host).as_deref(),
        Some("h1"),
        "the request is answered: kept on h1"
    );
    assert!(
        event_reasons(&c, "web")
            .await
            .contains(&"Adopted".to_string())
    );
}

/// A host of the pool that cannot be asked and is not proven off keeps a failed host's VM from
/// restarting elsewhere, and the condition names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: run e2e/run.sh"]
async fn an_unreachable_host_not_proven_off_blocks_the_restart() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let c = Cluster::new("ferry-e2e-unknown").await;
    let ns = c.namespace.clone();
    let handed = handed_over(&c, "web", "h1").await;
    let (fakes, hosts) = fake_pool::hosts(&["h1", "h2", "h3"]);
    hosts[0].power_off();
    hosts[2].set_reachable(false);
    let pool = fake_pool::pool(
        &ns,
        &[
            ("h1", HostState::Unreachable),
            ("h2", HostState::Ready),
            ("h3", HostState::Unreachable),
        ],
    );
    let nodes = ["h1", "h2", "h3"].map(fake_pool::node);
    let (ctx, _w) = fake_pool::context(
        c.client.clone(),
        &fakes,
        pool,
        &nodes,
        std::slice::from_ref(&handed),
    );
    fake_pool::fenced(&ctx, &ns, "h1");
    fake_pool::released(
        &ctx,
        &ns,
        "h1",
        handed.metadata.uid.as_deref().expect("uid"),
    );
    reconcile(Arc::new(handed.clone()), ctx.clone())
        .await
        .expect("reconcile");
    assert!(hosts[1].domains().is_empty(), "nothing started on h2");
    let vm = c.vms().get("web").await.expect("vm");
    let st = vm.status.clone().expect("status");
    assert_eq!(st.host.as_deref(), Some("h1"), "not placed anew");
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.reason, "OtherHostUnreachable");
    assert!(
        ready.message.contains("host h3") && !ready.message.contains("host h2 ("),
        "{}",
        ready.message
    );

    // Once h3 answers (and does not run the VM), the VM restarts on h2 or h3.
    hosts[2].set_reachable(true);
    // The connection registry retries a host that failed after a second.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    reconcile(Arc::new(vm), ctx).await.expect("reconcile");
    let vm = c.vms().get("web").await.expect("vm");
    let placed = vm.status.and_then(|s| s.host).expect("a host");
    assert_ne!(placed, "h1");
}
