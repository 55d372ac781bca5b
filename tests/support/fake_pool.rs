//! A HostPool of in-memory hosts (`ferry::hypervisor::fake`) and the VirtualMachine controller's
//! caches filled by hand, for tests that run VM reconciles against an API server (a mock or a
//! real one) without libvirt: each test decides what each controller's cache shows.
#![allow(dead_code)]

use ferry::api::ha_policy::{FAILOVER_ANNOTATION, Failover};
use ferry::api::{FINALIZER, HostPool, HostState, VirtualMachine};
use ferry::controller::Context;
use ferry::hypervisor::fake::{FakeConnector, FakeHost};
use ferry::metrics::Metrics;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use serde_json::json;
use std::sync::Arc;

/// The pool's name, its storage pool, and the golden image the VMs boot from.
pub const POOL: &str = "lab";
pub const STORAGE: &str = "ferry";
pub const IMAGE: &str = "tiny.qcow2";
/// The Node label the pool selects.
pub const LABEL: &str = "ferry.dev/fake-hypervisor";

/// In-memory hosts `names` sharing one storage (a golden image in storage pool [`STORAGE`]),
/// each at `qemu+tcp://<name>/system`.
pub fn hosts(names: &[&str]) -> (FakeConnector, Vec<FakeHost>) {
    let fakes = FakeConnector::new();
    let mut hosts: Vec<FakeHost> = Vec::new();
    for n in names {
        let uri = format!("qemu+tcp://{n}/system");
        let h = match hosts.first() {
            Some(first) => fakes.add_host_sharing_storage(&uri, first),
            None => {
                let h = fakes.add_host(&uri);
                h.add_pool(STORAGE, "/fake/pool");
                h.add_volume(STORAGE, IMAGE, 1 << 30, "qcow2")
                    .expect("golden image");
                h
            }
        };
        hosts.push(h);
    }
    (fakes, hosts)
}

/// The HostPool [`POOL`] in `ns` as a cache would hold it, with each host in the given state.
pub fn pool(ns: &str, states: &[(&str, HostState)]) -> HostPool {
    let hosts: Vec<serde_json::Value> = states
        .iter()
        .map(|(name, state)| {
            json!({"name": name, "state": state,
                   "capacity": {"cpus": 8, "memory": "16Gi"},
                   "allocatable": {"cpus": 8, "memory": "16Gi"},
                   "allocated": {"cpus": 0, "memory": "0"}})
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool",
        "metadata": {"name": POOL, "namespace": ns, "uid": "7d1c0d2e-0000-4000-8000-000000000001",
                     "generation": 1, "resourceVersion": "1"},
        "spec": {
            "nodeSelector": {"matchLabels": {LABEL: "true"}},
            "libvirt": {"uriTemplate": "qemu+tcp://{name}/system"},
            "storage": {"pool": STORAGE, "path": "/fake/pool", "images": [{"name": IMAGE}]}
        },
        "status": {"selectedHosts": hosts.len(), "readyHosts": 0, "hosts": hosts}
    }))
    .expect("HostPool")
}

/// A Node the pool selects.
pub fn node(name: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {LABEL: "true"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}
    }))
    .expect("Node")
}

/// The manifest of a tiny VM of [`POOL`] (created by a test on a real API server).
pub fn vm_manifest(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name, "finalizers": [FINALIZER]},
        "spec": {"hostPool": POOL, "runStrategy": "Always", "cpu": {"cores": 1},
                 "memory": "128Mi", "disks": [{"name": "root", "image": IMAGE}]}
    })
}

/// The `ferry.dev/failover` annotation the HA controller sets once `host` is proven off.
pub fn failover(host: &str, incident: &str) -> String {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    serde_json::to_string(&Failover {
        incident: incident.into(),
        host: host.into(),
        evidence: "Fenced".into(),
        detected: now.clone(),
        proven: now.clone(),
        released: Some(now),
    })
    .expect("failover JSON")
}

/// A VM that ran on `host` (status) and that the HA controller hands over after `host` was
/// fenced, as a cache holds it.
pub fn vm_failing_over(ns: &str, name: &str, uid: &str, host: &str) -> VirtualMachine {
    let mut v = vm_manifest(name);
    v["metadata"]["namespace"] = json!(ns);
    v["metadata"]["uid"] = json!(uid);
    v["metadata"]["generation"] = json!(1);
    v["metadata"]["resourceVersion"] = json!("41");
    v["metadata"]["annotations"] =
        json!({FAILOVER_ANNOTATION: failover(host, &format!("{host}-1"))});
    v["status"] = json!({"phase": "Unknown", "host": host, "domainUuid": uid,
                         "observedGeneration": 1});
    serde_json::from_value(v).expect("VM")
}

/// A store holding exactly `objs`, complete (as after the watch's first list).
pub fn filled<K>(objs: &[K]) -> (reflector::Store<K>, Writer<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (store, mut writer) = reflector::store::<K>();
    writer.apply_watcher_event(&Event::Init);
    for o in objs {
        writer.apply_watcher_event(&Event::InitApply(o.clone()));
    }
    writer.apply_watcher_event(&Event::InitDone);
    (store, writer)
}

/// A controller's context over `client`, whose caches hold `pool`, `nodes` and `vms`, and whose
/// hosts are `fakes` (its own connections, as a separate controller process has).
pub fn context(
    client: Client,
    fakes: &FakeConnector,
    pool: HostPool,
    nodes: &[Node],
    vms: &[VirtualMachine],
) -> (Arc<Context>, Writer<VirtualMachine>) {
    let recorder = Recorder::new(client.clone(), Reporter::from("ferry-test"));
    let (pools, _) = filled(&[pool]);
    let (nodes, _) = filled(nodes);
    let (vms, vm_writer) = filled(vms);
    let ctx = Context::with_connections(
        client,
        recorder,
        Arc::new(Metrics::default()),
        pools,
        nodes,
        vms,
        fakes.registry(),
    );
    (Arc::new(ctx), vm_writer)
}

/// Mark `host` of the pool in `ns` proven off (fenced) in `ctx`'s HA verdicts, as the HA
/// controller does for an HAPolicy `ha` once the host's BMC confirmed it off.
pub fn fenced(ctx: &Context, ns: &str, host: &str) {
    use ferry::controller::context::{HaKey, PoolHost};
    ctx.ha.set(
        HaKey::new("ha", PoolHost::new(ns, POOL, host)),
        ferry::api::ha_policy::HostVerdict::Fenced,
    );
}

/// Record in `ctx` that the HA controller released VM `uid` of `ns` from `host` (incident
/// `<host>-1`, as [`failover`] writes it), as it does once the host is proven off.
pub fn released(ctx: &Context, ns: &str, host: &str, uid: &str) {
    use ferry::controller::context::PoolHost;
    ctx.ha
        .release(uid, PoolHost::new(ns, POOL, host), &format!("{host}-1"));
}

/// Give `host` a running domain of VM `ns/name` (UID `uid`) on the pool's storage, as a host
/// that runs the VM has it.
pub fn run_domain_on(host: &FakeHost, ns: &str, name: &str, uid: &str) {
    use ferry::plan::domain::{DomainDefinition, DomainState};
    let def = DomainDefinition {
        name: format!("{ns}_{name}"),
        ..ferry::hypervisor::fake::sample_definition(
            ns,
            name,
            uid,
            &format!("/fake/pool/{ns}_{name}_root.qcow2"),
        )
    };
    host.add_domain(&def, DomainState::Running)
        .expect("a running domain");
}
