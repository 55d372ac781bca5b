//! The exact Kubernetes requests one VirtualMachine reconcile makes, against a mocked API server
//! (kube-rs's tower-test pattern). Hypervisor-side behaviour is tested against real libvirt
//! elsewhere; these cases reach in-memory hosts (`ferry::hypervisor::fake`) at most.

#[path = "support/fake_pool.rs"]
mod fake_pool;

use ferry::api::{FINALIZER, HostPool, VirtualMachine};
use ferry::controller::Context;
use ferry::controller::virtual_machine::reconcile;
use ferry::metrics::Metrics;
use http::{Request, Response};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn vm(finalizer: bool, status: Option<Value>) -> VirtualMachine {
    let mut v = json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": "web", "namespace": "apps", "uid": UID,
            "generation": 3, "resourceVersion": "41"
        },
        "spec": {"hostPool": "missing", "cpu": {"cores": 1}, "memory": "256Mi",
                 "disks": [{"name": "root", "image": "tiny.qcow2"}]}
    });
    if finalizer {
        v["metadata"]["finalizers"] = json!([FINALIZER]);
    }
    if let Some(s) = status {
        v["status"] = s;
    }
    serde_json::from_value(v).expect("valid VM")
}

fn context() -> (Arc<Context>, Handle) {
    let (pools, _pw) = reflector::store::<HostPool>();
    let (nodes, _nw) = reflector::store::<Node>();
    let (vms, _vw) = reflector::store::<VirtualMachine>();
    let (ctx, handle) = mocked(pools, nodes, vms);
    (Arc::new(ctx), handle)
}

/// A context over a mocked API server (its handle), with these caches.
fn mocked(
    pools: Store<HostPool>,
    nodes: Store<Node>,
    vms: Store<VirtualMachine>,
) -> (Context, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let recorder = Recorder::new(client.clone(), Reporter::from("ferry-test"));
    let metrics = Arc::new(Metrics::default());
    let ctx = Context::new(client, recorder, metrics, pools, nodes, vms);
    (ctx, handle)
}

async fn body_json(req: Request<Body>) -> Value {
    let bytes = req.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, v: &Value) {
    let bytes = serde_json::to_vec(v).expect("json");
    send.send_response(
        Response::builder()
            .body(Body::from(bytes))
            .expect("response"),
    );
}

/// Next request, or `None` if the reconcile made no further request within a short wait.
async fn next(
    handle: &mut Handle,
) -> Option<(
    Request<Body>,
    tower_test::mock::SendResponse<Response<Body>>,
)> {
    tokio::time::timeout(Duration::from_millis(300), handle.next_request())
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn a_new_vm_gets_the_finalizer_first() {
    let (ctx, mut handle) = context();
    let obj = vm(false, None);
    let task = tokio::spawn(reconcile(Arc::new(obj.clone()), ctx));
    let (req, send) = next(&mut handle).await.expect("a request");
    assert_eq!(req.method(), http::Method::PATCH);
    assert_eq!(
        req.uri().path(),
        "/apis/ferry.dev/v1alpha1/namespaces/apps/virtualmachines/web"
    );
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(ct, "application/json-patch+json");
    let patch = body_json(req).await;
    assert!(patch.to_string().contains(FINALIZER), "{patch}");
    let mut patched = serde_json::to_value(&obj).expect("json");
    patched["metadata"]["finalizers"] = json!([FINALIZER]);
    respond(send, &patched);
    let action = task.await.expect("join").expect("reconcile ok");
    assert_eq!(action, Action::await_change());
    assert!(next(&mut handle).await.is_none(), "nothing else is written");
}

#[tokio::test]
async fn a_missing_hostpool_is_reported_once_then_nothing_is_written() {
    let (ctx, mut handle) = context();
    let obj = vm(true, None);
    let task = tokio::spawn(reconcile(Arc::new(obj.clone()), ctx.clone()));

    // 1. A Warning Event that says what to fix.
    let (req, send) = next(&mut handle).await.expect("event");
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(
        req.uri().path(),
        "/apis/events.k8s.io/v1/namespaces/apps/events"
    );
    let ev = body_json(req).await;
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], "HostPoolNotFound");
    assert!(
        ev["note"]
            .as_str()
            .unwrap_or_default()
            .contains("create it or fix spec.hostPool"),
        "{ev}"
    );
    respond(send, &ev);

    // 2. Status by server-side apply, with the field manager, forced.
    let (req, send) = next(&mut handle).await.expect("status patch");
    assert_eq!(req.method(), http::Method::PATCH);
    assert_eq!(
        req.uri().path(),
        "/apis/ferry.dev/v1alpha1/namespaces/apps/virtualmachines/web/status"
    );
    let query = req.uri().query().unwrap_or_default().to_string();
    assert!(
        query.contains("fieldManager=ferry") && query.contains("force=true"),
        "{query}"
    );
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(ct, "application/apply-patch+yaml");
    let body = body_json(req).await;
    let status = body["status"].clone();
    assert_eq!(status["phase"], "Pending");
    assert_eq!(status["observedGeneration"], 3);
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    let ready = conditions
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("Ready condition");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "HostPoolNotFound");
    assert_eq!(ready["observedGeneration"], 3);
    let scheduled = conditions
        .iter()
        .find(|c| c["type"] == "Scheduled")
        .expect("Scheduled condition");
    assert_eq!(scheduled["reason"], "HostPoolNotFound");
    let mut stored = serde_json::to_value(&obj).expect("json");
    stored["status"] = status.clone();
    respond(send, &stored);
    let action = task.await.expect("join").expect("reconcile ok");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));

    // 3. The same VM again, with the status it now has: not a single request.
    let again = vm(true, Some(status));
    let action = reconcile(Arc::new(again), ctx).await.expect("reconcile ok");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert!(
        next(&mut handle).await.is_none(),
        "a steady VM causes no API writes"
    );
}

#[tokio::test]
async fn an_invalid_spec_waits_for_a_change() {
    let (ctx, mut handle) = context();
    let mut obj = vm(true, None);
    obj.spec.memory = Some("lots".into());
    let task = tokio::spawn(reconcile(Arc::new(obj.clone()), ctx));
    let (req, send) = next(&mut handle).await.expect("event");
    let ev = body_json(req).await;
    assert_eq!(ev["reason"], "InvalidSpec");
    respond(send, &ev);
    let (req, send) = next(&mut handle).await.expect("status patch");
    let body = body_json(req).await;
    assert_eq!(body["status"]["phase"], "Failed");
    let msg = body["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("spec.memory"), "{msg}");
    let mut stored = serde_json::to_value(&obj).expect("json");
    stored["status"] = body["status"].clone();
    respond(send, &stored);
    let action = task.await.expect("join").expect("reconcile ok");
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn nothing_is_decided_before_the_caches_hold_their_first_list() {
    // As right after a restart: the HostPool cache is still listing (its writer is alive and
    // has not seen the end of the initial list). Judging now would report the pool missing.
    let (pools, mut pool_writer) = reflector::store::<HostPool>();
    let (nodes, mut node_writer) = reflector::store::<Node>();
    let (vms, mut vm_writer) = reflector::store::<VirtualMachine>();
    node_writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
    vm_writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
    let (ctx, mut handle) = mocked(pools, nodes, vms);
    let ctx = Arc::new(ctx);
    let obj = Arc::new(vm(true, None));
    let action = reconcile(obj.clone(), ctx.clone())
        .await
        .expect("reconcile ok");
    assert!(
        next(&mut handle).await.is_none(),
        "no Event, no status write while the HostPool cache is incomplete"
    );
    assert_ne!(action, Action::await_change(), "it looks again soon");
    assert!(!ctx.caches.ready());

    // Once the (empty) list is complete, the missing pool is reported as before.
    pool_writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
    assert!(ctx.caches.ready());
    let task = tokio::spawn(reconcile(obj.clone(), ctx));
    let (req, send) = next(&mut handle).await.expect("event");
    let ev = body_json(req).await;
    assert_eq!(ev["reason"], "HostPoolNotFound");
    respond(send, &ev);
    let (req, send) = next(&mut handle).await.expect("status patch");
    let body = body_json(req).await;
    let mut stored = serde_json::to_value(obj.as_ref()).expect("json");
    stored["status"] = body["status"].clone();
    respond(send, &stored);
    task.await.expect("join").expect("reconcile ok");
}

#[tokio::test]
async fn no_ha_tick_before_the_caches_hold_their_first_list() {
    // Right after a start, the Node cache is still listing. A tick now would find no host of
    // the pool, write a status without them and lose the incidents it would resume.
    let (pools, mut pool_writer) = reflector::store::<HostPool>();
    let (nodes, mut node_writer) = reflector::store::<Node>();
    let (vms, mut vm_writer) = reflector::store::<VirtualMachine>();
    let (policies, mut policy_writer) = reflector::store::<ferry::api::HAPolicy>();
    let (migrations, mut migration_writer) =
        reflector::store::<ferry::api::VirtualMachineMigration>();
    use kube::runtime::watcher::Event::InitDone;
    pool_writer.apply_watcher_event(&InitDone);
    vm_writer.apply_watcher_event(&InitDone);
    policy_writer.apply_watcher_event(&InitDone);
    migration_writer.apply_watcher_event(&InitDone);
    let (ctx, mut handle) = mocked(pools, nodes, vms);
    let ctx = Arc::new(ctx.with_policies(policies).with_migrations(migrations));
    let policy: ferry::api::HAPolicy = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HAPolicy",
        "metadata": {"name": "ha", "namespace": "apps", "uid": "policy-uid", "generation": 1,
                     "resourceVersion": "7"},
        "spec": {"hostPools": ["lab"]}
    }))
    .expect("policy");
    let hc = Arc::new(ferry::controller::ha::HaContext::new(ctx.clone()));
    let first = tokio::spawn(ferry::controller::ha::reconcile(
        Arc::new(policy.clone()),
        hc.clone(),
    ));
    assert!(
        next(&mut handle).await.is_none(),
        "no status write while the Node cache is incomplete"
    );
    let action = tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the tick returns at once")
        .expect("join")
        .expect("reconcile ok");
    assert_ne!(action, Action::await_change(), "it looks again soon");

    // Once the Node list is complete, the tick runs (and reports the missing pool).
    node_writer.apply_watcher_event(&InitDone);
    let task = tokio::spawn(ferry::controller::ha::reconcile(
        Arc::new(policy.clone()),
        hc,
    ));
    let (req, send) = next(&mut handle).await.expect("status patch");
    assert_eq!(req.method(), http::Method::PATCH);
    let body = body_json(req).await;
    assert!(body.to_string().contains("HostPoolNotFound"), "{body}");
    let mut stored = serde_json::to_value(&policy).expect("json");
    stored["status"] = body["status"].clone();
    respond(send, &stored);
    task.await.expect("join").expect("reconcile ok");
}

/// A VM failing over, in the caches of a controller whose pool has h2 ready (h1 fenced), with
/// in-memory hosts behind it.
fn failing_over() -> (
    Arc<Context>,
    Handle,
    Vec<ferry::hypervisor::fake::FakeHost>,
    VirtualMachine,
) {
    use ferry::api::HostState;
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let (fakes, hosts) = fake_pool::hosts(&["h1", "h2"]);
    hosts[0].power_off();
    let vm = fake_pool::vm_failing_over("apps", "web", UID, "h1");
    let pool = fake_pool::pool(
        "apps",
        &[("h1", HostState::Unreachable), ("h2", HostState::Ready)],
    );
    let (ctx, _writer) = fake_pool::context(
        client,
        &fakes,
        pool,
        &[fake_pool::node("h1"), fake_pool::node("h2")],
        std::slice::from_ref(&vm),
    );
    fake_pool::fenced(&ctx, "apps", "h1");
    fake_pool::released(&ctx, "apps", "h1", UID);
    (ctx, handle, hosts, vm)
}

const UID: &str = "0b6f1b7e-1111-2222-3333-444455556666";

fn conflict(send: tower_test::mock::SendResponse<Response<Body>>) {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "Operation cannot be fulfilled on virtualmachines.ferry.dev \"web\": the object has been modified; please apply your changes to the latest version and try again",
        "reason": "Conflict", "code": 409});
    send.send_response(
        Response::builder()
            .status(409)
            .body(Body::from(serde_json::to_vec(&body).expect("json")))
            .expect("response"),
    );
}

/// A restart elsewhere is written with optimistic concurrency before anything happens on the
/// new host: a fresh read of the VM, then the placement applied with the version read as a
/// precondition. When another reconcile placed the VM in between (409 Conflict), this one
/// creates nothing, writes nothing more and looks again soon.
#[tokio::test]
async fn a_failover_placement_is_conditional_and_a_conflict_creates_nothing() {
    let (ctx, mut handle, hosts, vm) = failing_over();
    let task = tokio::spawn(reconcile(Arc::new(vm.clone()), ctx));

    // 1. The VM, read afresh: still the version the cache holds.
    let (req, send) = next(&mut handle).await.expect("fresh read");
    assert_eq!(
        req.method(),
        http::Method::GET,
        "{} {:?}",
        req.uri(),
        req.body()
    );
    assert_eq!(
        req.uri().path(),
        "/apis/ferry.dev/v1alpha1/namespaces/apps/virtualmachines/web"
    );
    respond(send, &serde_json::to_value(&vm).expect("json"));

    // 2. The placement on h2, conditional on that version.
    let (req, send) = next(&mut handle).await.expect("placement");
    assert_eq!(req.method(), http::Method::PATCH);
    assert_eq!(
        req.uri().path(),
        "/apis/ferry.dev/v1alpha1/namespaces/apps/virtualmachines/web/status"
    );
    let body = body_json(req).await;
    assert_eq!(body["metadata"]["resourceVersion"], "41", "{body}");
    assert_eq!(body["status"]["host"], "h2");
    assert_eq!(body["status"]["lastRecovery"]["fromHost"], "h1");
    conflict(send);

    // 3. Nothing else: no Event, no status write, nothing created or started on h2.
    let action = task.await.expect("join").expect("reconcile ok");
    assert_eq!(action, Action::requeue(Duration::from_millis(500)));
    assert!(next(&mut handle).await.is_none(), "nothing else is written");
    let h2_calls: Vec<_> = hosts[1]
        .calls()
        .into_iter()
        .map(|c| c.op)
        .filter(|op| {
            !matches!(
                op,
                ferry::hypervisor::fake::Op::Connect | ferry::hypervisor::fake::Op::LookupDomain
            )
        })
        .collect();
    assert!(h2_calls.is_empty(), "h2 was changed: {h2_calls:?}");
    assert!(hosts[1].domains().is_empty());
}

/// A cache that lags behind (the API server holds a newer version of the VM, say one another
/// process already placed): the fresh read shows it, and nothing is decided, written or asked
/// of any host.
#[tokio::test]
async fn a_failover_decided_on_a_stale_cache_does_nothing() {
    let (ctx, mut handle, hosts, vm) = failing_over();
    hosts[1].take_calls();
    let task = tokio::spawn(reconcile(Arc::new(vm.clone()), ctx));
    let (req, send) = next(&mut handle).await.expect("fresh read");
    assert_eq!(req.method(), http::Method::GET);
    let mut newer = serde_json::to_value(&vm).expect("json");
    newer["metadata"]["resourceVersion"] = json!("57");
    newer["status"]["host"] = json!("h3");
    respond(send, &newer);
    let action = task.await.expect("join").expect("reconcile ok");
    assert_eq!(action, Action::requeue(Duration::from_millis(500)));
    assert!(next(&mut handle).await.is_none(), "nothing is written");
    assert!(
        hosts[1]
            .calls()
            .iter()
            .all(|c| c.op == ferry::hypervisor::fake::Op::Connect),
        "no host was asked anything: {:?}",
        hosts[1].calls()
    );
}
