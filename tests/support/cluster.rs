//! e2e support: a test namespace on the cluster `KUBECONFIG` names, a Node object standing for a
//! lab host (kept Ready with kubelet-style heartbeats), and `ferry controller` processes, which
//! run as the Helm chart's ServiceAccount where the server enforces RBAC ([`ChartIdentity`]).
//! Everything is removed when the values drop, also when a test fails.
#![allow(dead_code)]

use super::chart_rbac::ChartIdentity;
use super::netns;
use super::proxy::CuttableProxy;
use ferry::api::{HostPool, VirtualMachine, crds};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the e2e suite should run (it needs a cluster and root for the lab).
pub fn enabled() -> bool {
    if std::env::var_os("FERRY_E2E").is_some() {
        return true;
    }
    eprintln!(
        "skipping: set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both) to run the e2e suite"
    );
    false
}

/// Poll `f` every 250 ms until it returns `Some`, or fail after `timeout` saying what was awaited.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A test's footprint on the cluster.
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
    pub kubeconfig: PathBuf,
    /// The controller's identity: the chart's ServiceAccount, on a server with RBAC.
    pub identity: Option<ChartIdentity>,
    nodes: Vec<String>,
    /// Each Node's InternalIP, for the heartbeat.
    node_ips: Vec<(String, String)>,
    /// Nodes whose kubelet went silent, with their InternalIP.
    silent_ips: Vec<(String, String)>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    torn_down: bool,
}

impl Cluster {
    /// Run `kubectl-ferry` in the test namespace; returns (success, stdout + stderr).
    pub fn plugin(&self, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-ferry"))
            .args(["-n", &self.namespace])
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("run kubectl-ferry");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Connect, install the CRDs (server-side apply) and create a fresh namespace.
    pub async fn new(prefix: &str) -> Cluster {
        let kubeconfig =
            PathBuf::from(std::env::var("KUBECONFIG").expect("KUBECONFIG names the cluster"));
        let client = Client::try_default().await.expect("Kubernetes client");
        let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in crds() {
            let name = crd.name_any();
            crd_api
                .patch(
                    &name,
                    &PatchParams::apply("ferry-e2e").force(),
                    &Patch::Apply(&crd),
                )
                .await
                .expect("apply CRD");
            let api = crd_api.clone();
            wait_for(
                &format!("CRD {name} Established"),
                Duration::from_secs(30),
                || {
                    let api = api.clone();
                    let name = name.clone();
                    async move {
                        let c = api.get(&name).await.ok()?;
                        c.status?
                            .conditions?
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                            .then_some(())
                    }
                },
            )
            .await;
        }
        let namespace = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            Timestamp::now().as_millisecond() % 100_000
        );
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": namespace}})).expect("namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        sweep_leftover_nodes(&client).await;
        let identity = ChartIdentity::install(&client, &kubeconfig, &namespace).await;
        match &identity {
            Some(id) => eprintln!("e2e: controllers run as {} (the chart's RBAC)", id.user),
            None => eprintln!(
                "e2e: the API server has no RBAC: controllers use {}",
                kubeconfig.display()
            ),
        }
        Cluster {
            client,
            namespace,
            kubeconfig,
            identity,
            nodes: Vec::new(),
            node_ips: Vec::new(),
            silent_ips: Vec::new(),
            heartbeat: None,
            torn_down: false,
        }
    }

    /// Create a Node object for a lab host, Ready, labelled for the pool, with `InternalIP` set;
    /// keep it Ready with heartbeats (node Lease + Ready condition) as a kubelet would.
    pub async fn add_node(&mut self, name: &str, internal_ip: &str, label: &str) {
        self.add_node_with_labels(name, internal_ip, &[(label, "true")])
            .await;
    }

    /// [`Cluster::add_node`] with any labels.
    pub async fn add_node_with_labels(
        &mut self,
        name: &str,
        internal_ip: &str,
        labels: &[(&str, &str)],
    ) {
        let mut all: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        all.insert("kubernetes.io/hostname".into(), json!(name));
        all.insert(CLUSTER_LABEL.into(), json!(self.namespace));
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": all},
            "spec": {}
        }))
        .expect("node");
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("create Node");
        self.nodes.push(name.to_string());
        self.node_ips
            .push((name.to_string(), internal_ip.to_string()));
        set_node_ready(&self.client, name, internal_ip, true).await;
        self.restart_heartbeat();
    }

    /// Stop a Node's heartbeats and mark it NotReady, as the node lifecycle controller does when
    /// kubelet goes silent.
    pub async fn node_not_ready(&mut self, name: &str) {
        let ip = self
            .node_ips
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ip)| ip.clone())
            .unwrap_or_default();
        self.node_ips.retain(|(n, _)| n != name);
        self.silent_ips.push((name.to_string(), ip.clone()));
        self.restart_heartbeat();
        set_node_ready(&self.client, name, &ip, false).await;
    }

    /// The kubelet of a Node that [`Self::node_not_ready`] silenced comes back: Ready again and
    /// its heartbeat resumes.
    pub async fn node_ready(&mut self, name: &str) {
        let Some(i) = self.silent_ips.iter().position(|(n, _)| n == name) else {
            return;
        };
        let (name, ip) = self.silent_ips.remove(i);
        set_node_ready(&self.client, &name, &ip, true).await;
        self.node_ips.push((name, ip));
        self.restart_heartbeat();
    }

    /// (Re)start the heartbeats of the Nodes in `node_ips`: as a kubelet, each renews its node
    /// Lease every 10 s and reports its Ready condition again every minute, several Nodes at
    /// once, so that hundreds of Nodes (the scale benchmark) stay within the node lifecycle
    /// controller's 40 s grace.
    fn restart_heartbeat(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        let client = self.client.clone();
        let nodes = self.node_ips.clone();
        self.heartbeat = Some(tokio::spawn(async move {
            for round in 0u64.. {
                use futures::StreamExt;
                let status = round % 6 == 0;
                futures::stream::iter(&nodes)
                    .for_each_concurrent(16, |(n, ip)| {
                        let client = client.clone();
                        async move { heartbeat(&client, n, ip, status).await }
                    })
                    .await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }));
    }

    /// Cordon or uncordon a Node (`spec.unschedulable`), as `kubectl cordon` does.
    pub async fn cordon(&self, name: &str, cordoned: bool) {
        Api::<Node>::all(self.client.clone())
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"unschedulable": cordoned}})),
            )
            .await
            .expect("cordon Node");
    }

    pub fn vms(&self) -> Api<VirtualMachine> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Wait until VirtualMachine `name` no longer exists (its finalizer has run).
    pub async fn wait_vm_gone(&self, name: &str, timeout: Duration) {
        let vms = self.vms();
        wait_for(&format!("VM {name} deleted"), timeout, || {
            let vms = vms.clone();
            async move {
                vms.get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                    .then_some(())
            }
        })
        .await;
    }

    pub fn migrations(&self) -> Api<ferry::api::VirtualMachineMigration> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn pools(&self) -> Api<HostPool> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn policies(&self) -> Api<ferry::api::HAPolicy> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Server-side apply a ferry object in the test namespace.
    pub async fn apply<K>(&self, obj: serde_json::Value) -> K
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = obj["metadata"]["name"].as_str().expect("name").to_string();
        api.patch(
            &name,
            &PatchParams::apply("ferry-e2e").force(),
            &Patch::Apply(&obj),
        )
        .await
        .expect("apply")
    }

    /// Start `ferry controller` for this namespace.
    pub fn controller(&self, identity: &str) -> ControllerProcess {
        self.controller_with_env(identity, &[])
    }

    /// Start `ferry controller` for every namespace (its Lease in this one), as a cluster-wide
    /// install runs, for scenarios that span namespaces; on a server with RBAC as the chart's
    /// ServiceAccount installed cluster-wide. Use Node labels of the test's own in the pools'
    /// selectors, so that no other test's pool selects them.
    pub async fn controller_all_namespaces(&mut self, identity: &str) -> ControllerProcess {
        if self.identity.is_some() {
            // The namespaced identity's cluster-scoped objects share the release's names.
            if let Some(id) = self.identity.take() {
                id.remove(&self.client).await;
            }
            self.identity = ChartIdentity::install_cluster_wide(
                &self.client,
                &self.kubeconfig,
                &self.namespace,
            )
            .await;
        }
        ControllerProcess::start(
            self.controller_kubeconfig(),
            None,
            &self.namespace,
            identity,
            None,
            &[],
        )
    }

    /// Set a Node's `status.nodeInfo.systemUUID` (what kubelet reads from the host's firmware),
    /// which a Redfish BMC's system must match.
    pub async fn set_system_uuid(&self, node: &str, uuid: &str) {
        let info = json!({"status": {"nodeInfo": {
            "machineID": "", "systemUUID": uuid, "bootID": "", "kernelVersion": "",
            "osImage": "", "containerRuntimeVersion": "", "kubeletVersion": "",
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"
        }}});
        Api::<Node>::all(self.client.clone())
            .patch_status(node, &PatchParams::default(), &Patch::Merge(&info))
            .await
            .expect("patch Node nodeInfo");
    }

    /// Start `ferry controller` inside network namespace `netns` (a lab's client namespace), so
    /// that it reaches lab hosts over TCP as a real controller reaches its hypervisors, and a
    /// partitioned host is cut off from it. The API server is relayed into the namespace on
    /// loopback; [`ControllerProcess::http_get`] reaches the controller there.
    pub fn controller_in_netns(&self, identity: &str, netns: &str) -> ControllerProcess {
        ControllerProcess::start(
            self.controller_kubeconfig(),
            Some(&self.namespace),
            &self.namespace,
            identity,
            Some(netns),
            &[],
        )
    }

    /// Start `ferry controller` whose only way to the API server is a [`CuttableProxy`] the
    /// test holds: cutting it partitions this replica from the API server (and nothing else).
    pub fn controller_behind_proxy(&self, identity: &str) -> (ControllerProcess, CuttableProxy) {
        let mut proxy: Option<CuttableProxy> = None;
        let ctl = ControllerProcess::start_via(
            self.controller_kubeconfig(),
            Some(&self.namespace),
            &self.namespace,
            identity,
            None,
            Some(&mut |upstream: &str| {
                proxy
                    .get_or_insert_with(|| {
                        CuttableProxy::start(upstream).expect("a proxy to the API server")
                    })
                    .port
            }),
            &[],
        );
        (ctl, proxy.expect("a server in the kubeconfig"))
    }

    /// [`Cluster::controller`] with extra environment variables (e.g. a quieter `RUST_LOG`).
    pub fn controller_with_env(&self, identity: &str, env: &[(&str, &str)]) -> ControllerProcess {
        ControllerProcess::start(
            self.controller_kubeconfig(),
            Some(&self.namespace),
            &self.namespace,
            identity,
            None,
            env,
        )
    }

    /// The kubeconfig controllers get: the chart's ServiceAccount's, or (without RBAC) the test's.
    pub fn controller_kubeconfig(&self) -> &std::path::Path {
        self.identity
            .as_ref()
            .map_or(self.kubeconfig.as_path(), |id| id.kubeconfig.as_path())
    }

    /// Keep Nodes the caller created (Ready, with `internal_ip`) Ready with heartbeats, as
    /// [`Cluster::add_node`] does, and delete them with the cluster.
    pub fn keep_nodes_ready(&mut self, names: &[String], internal_ip: &str) {
        for n in names {
            self.nodes.push(n.clone());
            self.node_ips.push((n.clone(), internal_ip.to_string()));
        }
        self.restart_heartbeat();
    }

    async fn teardown(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        let vms = self.vms();
        if let Ok(list) = vms.list(&Default::default()).await {
            for vm in list {
                // The controller may be gone: drop finalizers so nothing blocks.
                let _ = vms
                    .patch(
                        &vm.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
                let _ = vms.delete(&vm.name_any(), &DeleteParams::default()).await;
            }
        }
        let migrations: Api<ferry::api::VirtualMachineMigration> =
            Api::namespaced(self.client.clone(), &self.namespace);
        if let Ok(list) = migrations.list(&Default::default()).await {
            for m in list {
                let _ = migrations
                    .patch(
                        &m.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
                let _ = migrations
                    .delete(&m.name_any(), &DeleteParams::default())
                    .await;
            }
        }
        let pools = self.pools();
        if let Ok(list) = pools.list(&Default::default()).await {
            for p in list {
                let _ = pools.delete(&p.name_any(), &DeleteParams::default()).await;
            }
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        for n in &self.nodes {
            let _ = nodes.delete(n, &DeleteParams::default()).await;
        }
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.namespace, &DeleteParams::default())
            .await;
        if let Some(id) = &self.identity {
            id.remove(&self.client).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        let mut me = Cluster {
            client: self.client.clone(),
            namespace: self.namespace.clone(),
            kubeconfig: self.kubeconfig.clone(),
            identity: self.identity.take(),
            nodes: std::mem::take(&mut self.nodes),
            node_ips: std::mem::take(&mut self.node_ips),
            silent_ips: std::mem::take(&mut self.silent_ips),
            heartbeat: self.heartbeat.take(),
            torn_down: true,
        };
        // Drop runs inside the test's runtime: clean up on a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    // A client of this runtime: the test's may need a worker of the test's
                    // runtime, which this drop blocks.
                    if let Ok(client) = Client::try_default().await {
                        me.client = client;
                    }
                    if tokio::time::timeout(Duration::from_secs(30), me.teardown())
                        .await
                        .is_err()
                    {
                        eprintln!(
                            "e2e: the teardown of {} did not finish in 30 s",
                            me.namespace
                        );
                    }
                });
            }
        })
        .join();
    }
}

/// Set a Node's Ready condition (as its kubelet would) and its InternalIP.
pub async fn set_node_ready(client: &Client, name: &str, internal_ip: &str, ready: bool) {
    let now = Timestamp::now().to_string();
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}],
        "conditions": [{
            "type": "Ready", "status": if ready { "True" } else { "False" },
            "reason": if ready { "KubeletReady" } else { "KubeletNotReady" },
            "message": "set by the ferry e2e suite", "lastHeartbeatTime": now, "lastTransitionTime": now
        }]
    }});
    Api::<Node>::all(client.clone())
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch Node status");
}

/// Renew Node `name`'s Lease; with `status`, also report its Ready condition again (if Ready).
async fn heartbeat(client: &Client, name: &str, ip: &str, status: bool) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                 "renewTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}
    });
    let _ = leases
        .patch(
            name,
            &PatchParams::apply("ferry-e2e").force(),
            &Patch::Apply(&lease),
        )
        .await;
    if !status {
        return;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    if let Ok(n) = nodes.get(name).await {
        let ready = n
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            set_node_ready(client, name, ip, true).await;
        }
    }
}

/// The label on every Node a [`Cluster`] adds: the test namespace it belongs to.
pub const CLUSTER_LABEL: &str = "e2e.ferry.dev/cluster";

/// Delete the Nodes of earlier tests whose namespace is gone or going (a test whose teardown did
/// not finish): their heartbeats stopped, so they turn NotReady, and a later test's pool that
/// selects the same label would count them as failed hosts.
async fn sweep_leftover_nodes(client: &Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let Ok(list) = nodes
        .list(&kube::api::ListParams::default().labels(CLUSTER_LABEL))
        .await
    else {
        return;
    };
    for n in list {
        let Some(owner) = n.labels().get(CLUSTER_LABEL) else {
            continue;
        };
        let gone = match namespaces.get_opt(owner).await {
            Ok(None) => true,
            Ok(Some(ns)) => ns.metadata.deletion_timestamp.is_some(),
            Err(_) => false,
        };
        if gone {
            eprintln!("e2e: deleting Node {} left by {owner}", n.name_any());
            let _ = nodes.delete(&n.name_any(), &DeleteParams::default()).await;
        }
    }
}

/// Where the lab hosts' libvirt sockets are, for the controllers' `--libvirt-socket-dir` (a test
/// may set `FERRY_LIBVIRT_SOCKET_DIRS` itself through [`Cluster::controller_with_env`]).
pub const LAB_SOCKETS_UNDER: &str = "/tmp";

/// A running `ferry controller`; killed on drop. Its log is kept in a temporary file.
pub struct ControllerProcess {
    child: Option<Child>,
    pub log: PathBuf,
    pub http_port: u16,
    /// The network namespace it runs in (`None`: this process's).
    netns: Option<String>,
    /// Relays of the API server into `netns`.
    _forwarders: Vec<netns::Forwarder>,
    _dir: tempfile::TempDir,
}

/// A copy of `kubeconfig` whose servers are relayed into `ns` on loopback (the TLS server name
/// kept), written to `dir`.
fn kubeconfig_in_netns(
    kubeconfig: &std::path::Path,
    ns: &str,
    dir: &std::path::Path,
) -> (PathBuf, Vec<netns::Forwarder>) {
    let mut forwarders = Vec::new();
    let path = kubeconfig_relayed(kubeconfig, dir, |upstream| {
        let fwd =
            netns::Forwarder::start(ns, upstream).expect("relay the API server into the namespace");
        let port = fwd.port;
        forwarders.push(fwd);
        port
    });
    (path, forwarders)
}

/// A copy of `kubeconfig` (written to `dir`) whose servers are reached on a loopback port that
/// `relay` returns for each server's `host:port`, the TLS server name kept.
fn kubeconfig_relayed(
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
    mut relay: impl FnMut(&str) -> u16,
) -> PathBuf {
    let text = std::fs::read_to_string(kubeconfig).expect("read kubeconfig");
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
    if let Some(clusters) = doc.get_mut("clusters").and_then(|c| c.as_sequence_mut()) {
        for c in clusters {
            let Some(cluster) = c.get_mut("cluster") else {
                continue;
            };
            let server = cluster
                .get("server")
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_string();
            let (scheme, rest) = server.split_once("://").expect("server URL");
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                    (h.to_string(), p.to_string())
                }
                _ => (
                    authority.to_string(),
                    if scheme == "https" { "443" } else { "80" }.to_string(),
                ),
            };
            let local = relay(&format!("{host}:{port}"));
            let map = cluster.as_mapping_mut().expect("cluster mapping");
            map.insert(
                "server".into(),
                format!("{scheme}://127.0.0.1:{local}/{path}").into(),
            );
            if scheme == "https" && !map.contains_key("tls-server-name") {
                let name = host.trim_start_matches('[').trim_end_matches(']');
                map.insert("tls-server-name".into(), name.into());
            }
        }
    }
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&doc).expect("kubeconfig YAML"))
        .expect("write kubeconfig");
    path
}

impl ControllerProcess {
    fn start(
        kubeconfig: &std::path::Path,
        namespace: Option<&str>,
        lease_namespace: &str,
        identity: &str,
        ns: Option<&str>,
        env: &[(&str, &str)],
    ) -> ControllerProcess {
        Self::start_via(
            kubeconfig,
            namespace,
            lease_namespace,
            identity,
            ns,
            None,
            env,
        )
    }

    /// [`ControllerProcess::start`], outside a namespace reaching the API server through the
    /// loopback port `relay` returns for each server's `host:port` (when given).
    #[allow(clippy::too_many_arguments)]
    fn start_via(
        kubeconfig: &std::path::Path,
        namespace: Option<&str>,
        lease_namespace: &str,
        identity: &str,
        ns: Option<&str>,
        relay: Option<&mut dyn FnMut(&str) -> u16>,
        env: &[(&str, &str)],
    ) -> ControllerProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(format!("{identity}.log"));
        let port = free_port();
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let (kubeconfig, forwarders) = match (ns, relay) {
            (Some(ns), _) => {
                let (k, f) = kubeconfig_in_netns(kubeconfig, ns, dir.path());
                (k, f)
            }
            (None, Some(relay)) => (
                kubeconfig_relayed(kubeconfig, dir.path(), relay),
                Vec::new(),
            ),
            (None, None) => (kubeconfig.to_path_buf(), Vec::new()),
        };
        let kubeconfig = kubeconfig.as_path();
        let mut cmd = match ns {
            // `ip netns exec` enters the namespace and execs the program (same PID).
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_ferry")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_ferry")),
        };
        cmd.arg("controller");
        if let Some(ns) = namespace {
            cmd.args(["--namespace", ns]);
        }
        let child = cmd
            .args(["--lease-namespace", lease_namespace])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "--http-addr",
                &format!("127.0.0.1:{port}"),
                "--identity",
                identity,
            ])
            .args(["--lease-duration", "6", "--lease-grace", "2"])
            .env("RUST_LOG", "info,ferry=debug")
            .env("FERRY_PKI_DIR", dir.path().join("pki"))
            // The lab hosts' libvirt sockets are in their lab directories (lab.sh puts each lab
            // in /tmp/ferry-lab-<id>).
            .env("FERRY_LIBVIRT_SOCKET_DIRS", LAB_SOCKETS_UNDER)
            // The ssh program may record host keys under ~/.ssh: keep that in the test's files.
            .env("HOME", dir.path())
            // Changes are noticed by events, watches and reconnections, not by the safety
            // resync: a test that passes only thanks to it would hide a missed event.
            .env("FERRY_SAFETY_RESYNC_SECONDS", "600")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start ferry controller");
        ControllerProcess {
            child: Some(child),
            log,
            http_port: port,
            netns: ns.map(String::from),
            _forwarders: forwarders,
            _dir: dir,
        }
    }

    /// The process ID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Ask the process to stop (SIGTERM) and wait up to 10 s.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Where it writes libvirt credentials from Secrets (`FERRY_PKI_DIR`).
    pub fn pki_dir(&self) -> PathBuf {
        self._dir.path().join("pki")
    }

    /// The controller's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path of the controller's HTTP endpoint; `None` when it does not answer.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.http_port));
        let mut s = match &self.netns {
            Some(ns) => netns::connect(ns, addr, Duration::from_secs(2)),
            None => std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)),
        }
        .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let code = buf.split_whitespace().nth(1)?.parse().ok()?;
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- ferry controller log ({}) ----\n{}",
                self.log.display(),
                tail(&self.log_text(), 120)
            );
        }
        self.kill();
    }
}

/// Sum of the samples in a `/metrics` body whose name and labels start with `series` (a family
/// name such as `ferry_reconciles_total`, or a name with the start of its labels).
pub fn metric_sum(body: &str, series: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
