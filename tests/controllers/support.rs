//! What the controller tests share: a [`Context`] over in-memory hosts ([`FakeConnector`]) and a
//! mocked API server (kube-rs's tower-test pattern) that answers as a server would for the
//! objects a test gives it, and records every request.

use crate::fake_pool::filled;
use ferry::api::{HAPolicy, HostPool, VirtualMachine, VirtualMachineMigration};
use ferry::controller::Context;
use ferry::fence::fake::FakeBmcs;
use ferry::hypervisor::fake::{FakeConnector, FakeHost};
use ferry::metrics::Metrics;
use ferry::plan::definition::{self, ResolvedDisk};
use ferry::plan::domain::{DomainDefinition, VirtType};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One request the controller made.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub body: Value,
}

/// The mocked API server: the objects it holds (by their path) and the requests it saw.
#[derive(Clone, Default)]
pub struct Server {
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    /// Forget `obj`: GETs of it answer 404 from now on.
    pub fn forget<K: kube::Resource<DynamicType = ()>>(&self, obj: &K) {
        self.objects.lock().expect("lock").remove(&path_of(obj));
    }

    /// Hold `obj` (a ferry resource) so that GETs and PATCHes find it.
    pub fn hold<K: serde::Serialize + kube::Resource<DynamicType = ()>>(&self, obj: &K) {
        let path = path_of(obj);
        let v = serde_json::to_value(obj).expect("json");
        self.objects.lock().expect("lock").insert(path, v);
    }

    /// The object at `obj`'s path as the server holds it now.
    pub fn get<K>(&self, obj: &K) -> K
    where
        K: serde::Serialize + serde::de::DeserializeOwned + kube::Resource<DynamicType = ()>,
    {
        let v = self.objects.lock().expect("lock")[&path_of(obj)].clone();
        serde_json::from_value(v).expect("stored object")
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// The reasons of the Events published so far, in order.
    pub fn event_reasons(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "POST" && s.path.ends_with("/events"))
            .map(|s| s.body["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn answer(&self, method: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        let mut objects = self.objects.lock().expect("lock");
        let (base, status) = match path.strip_suffix("/status") {
            Some(b) => (b.to_string(), true),
            None => (path.to_string(), false),
        };
        match method {
            "POST" => (StatusCode::CREATED, body.clone()),
            "DELETE" => (
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            ),
            "GET" | "PATCH" => match objects.get_mut(&base) {
                None => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
                Some(obj) => {
                    if method == "PATCH" {
                        if status {
                            obj["status"] = body["status"].clone();
                        } else {
                            merge(obj, body);
                        }
                    }
                    (StatusCode::OK, obj.clone())
                }
            },
            _ => (StatusCode::METHOD_NOT_ALLOWED, Value::Null),
        }
    }
}

/// A JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn path_of<K: kube::Resource<DynamicType = ()>>(obj: &K) -> String {
    let plural = K::plural(&());
    let group = K::group(&());
    let version = K::version(&());
    let name = obj.meta().name.as_deref().unwrap_or_default();
    match obj.meta().namespace.as_deref() {
        Some(ns) => format!("/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}"),
        None => format!("/apis/{group}/{version}/{plural}/{name}"),
    }
}

/// A context over `fakes`, with caches that hold `pools`, `nodes`, `vms` and `migrations`, and
/// the server that answers its client.
pub struct World {
    pub ctx: Arc<Context>,
    pub server: Server,
    vm_writer: reflector::store::Writer<VirtualMachine>,
}

impl World {
    pub fn new(
        fakes: FakeConnector,
        pools: Vec<HostPool>,
        nodes: Vec<Node>,
        vms: Vec<VirtualMachine>,
        migrations: Vec<VirtualMachineMigration>,
        policies: Vec<HAPolicy>,
    ) -> World {
        Self::with_bmcs(fakes, pools, nodes, vms, migrations, policies, None)
    }

    /// [`World::new`] whose hosts' BMCs are `bmcs` (when given) rather than the pools' fencing
    /// settings.
    pub fn with_bmcs(
        fakes: FakeConnector,
        pools: Vec<HostPool>,
        nodes: Vec<Node>,
        vms: Vec<VirtualMachine>,
        migrations: Vec<VirtualMachineMigration>,
        policies: Vec<HAPolicy>,
        bmcs: Option<FakeBmcs>,
    ) -> World {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        let server = Server::default();
        for v in &vms {
            server.hold(v);
        }
        for m in &migrations {
            server.hold(m);
        }
        for p in &pools {
            server.hold(p);
        }
        for p in &policies {
            server.hold(p);
        }
        let answering = server.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().to_string();
                let path = req.uri().path().to_string();
                let bytes = req.into_body().collect().await.expect("body").to_bytes();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                answering.seen.lock().expect("lock").push(Seen {
                    method: method.clone(),
                    path: path.clone(),
                    body: body.clone(),
                });
                let (code, reply) = answering.answer(&method, &path, &body);
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                        .expect("response"),
                );
            }
        });
        let (pool_store, pool_writer) = filled(&pools);
        let (node_store, node_writer) = filled(&nodes);
        let (vm_store, vm_writer) = filled(&vms);
        let (migration_store, migration_writer) = filled(&migrations);
        let (policy_store, policy_writer) = filled(&policies);
        // Lists complete and no more updates: the caches count as ready.
        drop((pool_writer, node_writer, migration_writer, policy_writer));
        let recorder = Recorder::new(client.clone(), Reporter::from("ferry-test"));
        let ctx = Context::with_connections(
            client,
            recorder,
            Arc::new(Metrics::default()),
            pool_store,
            node_store,
            vm_store,
            fakes.registry(),
        )
        .with_migrations(migration_store)
        .with_policies(policy_store);
        let ctx = match bmcs {
            Some(b) => ctx.with_bmcs(b),
            None => ctx,
        };
        World {
            ctx: Arc::new(ctx),
            server,
            vm_writer,
        }
    }

    /// The VM as the server holds it now, also put into the VM cache (as a watch would).
    pub fn refresh(&mut self, vm: &VirtualMachine) -> VirtualMachine {
        let now = self.server.get(vm);
        self.vm_writer
            .apply_watcher_event(&Event::Apply(now.clone()));
        now
    }
}

/// Give host `h` the pool's storage pool `images` holding golden image `tiny.qcow2`.
pub fn with_image(h: &FakeHost) {
    h.add_pool("images", "/var/lib/ferry/images");
    h.add_volume("images", "tiny.qcow2", 1 << 30, "qcow2")
        .expect("image");
}

/// The URI of lab host `name` (address 10.0.0.N) in [`pool`].
pub fn host_uri(n: u8) -> String {
    format!("qemu+tcp://10.0.0.{n}/system")
}

/// HostPool `pool` in namespace `apps`, selecting Nodes labelled `pool=lab`, with storage pool
/// `images`, and hosts `h1`.. `hN` Ready in its status.
pub fn pool(hosts: u8) -> HostPool {
    let mut p: HostPool = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool",
        "metadata": {"name": "lab", "namespace": "apps", "uid": "pool-uid", "generation": 1},
        "spec": {
            "nodeSelector": {"matchLabels": {"pool": "lab"}},
            "libvirt": {"uriTemplate": "qemu+tcp://{address}/system"},
            "storage": {"pool": "images", "path": "/var/lib/ferry/images",
                        "images": [{"name": "tiny.qcow2"}]}
        }
    }))
    .expect("pool");
    let hosts: Vec<Value> = (1..=hosts)
        .map(|i| {
            json!({"name": format!("h{i}"), "state": "Ready",
                   "allocatable": {"cpus": 8, "memory": "16Gi"}})
        })
        .collect();
    p.status = Some(serde_json::from_value(json!({"hosts": hosts})).expect("status"));
    p
}

/// Node `hN`, Ready (or not), address 10.0.0.N, in pool `lab`.
pub fn node(n: u8, ready: bool) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("h{n}"), "labels": {"pool": "lab"}},
        "status": {
            "addresses": [{"type": "InternalIP", "address": format!("10.0.0.{n}")}],
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        }
    }))
    .expect("node")
}

/// VM `web` in `apps`, in pool `lab`, 1 vCPU and 256 MiB, one disk on golden image `tiny.qcow2`,
/// with ferry's finalizer already set.
pub fn vm(strategy: &str) -> VirtualMachine {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "web", "namespace": "apps",
                     "uid": "0b6f1b7e-1111-2222-3333-444455556666", "generation": 1,
                     "finalizers": [ferry::api::FINALIZER]},
        "spec": {"hostPool": "lab", "runStrategy": strategy, "cpu": {"cores": 1},
                 "memory": "256Mi", "disks": [{"name": "root", "image": "tiny.qcow2"}]}
    }))
    .expect("vm")
}

/// The domain definition of `vm` (1 vCPU, 256 MiB, its disk at a fixed path), as the VM
/// controller would have defined it on a host.
pub fn definition(vm: &VirtualMachine) -> DomainDefinition {
    let res = ferry::plan::class::resolve(&vm.spec, None).expect("size");
    let valid = ferry::plan::validate::validate(&vm.spec, &res).expect("valid");
    let disks = [ResolvedDisk {
        name: "root".into(),
        path: "/var/lib/ferry/images/web-root.qcow2".into(),
        format: "qcow2".into(),
    }];
    definition::build(
        vm,
        &valid,
        &disks,
        &definition::macs(vm),
        VirtType::Qemu,
        "/var/log/libvirt/qemu",
    )
}
