//! ferry objects in a test namespace: manifests of the lab's HostPool and tiny-guest VMs, Secrets,
//! the conditions the scenarios read, bounded waits on a VM's status, and Events about pools.

use super::cluster::Cluster;
use super::lab;
use ferry::api::VirtualMachine;
use kube::Api;
use serde_json::json;
use std::time::Duration;

/// The Node label the e2e HostPools select.
pub const LABEL: &str = "ferry.dev/e2e-hypervisor";

/// How long a tiny guest may take to boot under TCG on a busy machine.
pub const BOOT: Duration = Duration::from_secs(180);

/// A condition of a VM's status.
pub fn condition<'a>(
    vm: &'a VirtualMachine,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    vm.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Whether the VM's `Ready` condition is True.
pub fn is_ready(vm: &VirtualMachine) -> bool {
    condition(vm, "Ready").is_some_and(|c| c.status == "True")
}

/// The VM's `Ready` condition as (status, reason).
pub fn ready_reason(vm: &VirtualMachine) -> Option<(String, String)> {
    condition(vm, "Ready").map(|c| (c.status.clone(), c.reason.clone()))
}

/// Wait until `f` holds for the VM; on timeout the assertion names what was awaited.
pub async fn wait_vm(
    c: &Cluster,
    name: &str,
    what: &str,
    timeout: Duration,
    f: impl Fn(&VirtualMachine) -> bool,
) -> VirtualMachine {
    let api = c.vms();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let vm = api.get(name).await.ok();
        if let Some(vm) = vm.as_ref().filter(|vm| f(vm)) {
            return vm.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for VM {name}: {what}; its status: {}",
            vm.and_then(|v| v.status)
                .and_then(|s| serde_json::to_string(&s).ok())
                .unwrap_or_else(|| "none".into())
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The HostPool `name` of a one-host lab: its unix socket, the shared pool with the tiny guest's
/// golden image, the console directory and the directory of the guest's kernel and initrd.
pub fn pool_manifest(name: &str, lab: &lab::Lab) -> serde_json::Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchLabels": {LABEL: "true"}},
            "libvirt": {"uriTemplate": lab.hosts[0].unix_uri, "connectTimeoutSeconds": 5,
                        "keepaliveIntervalSeconds": 2, "keepaliveCount": 3},
            "storage": {"pool": "ferry", "path": lab.pool_dir,
                        "images": [{"name": lab.golden, "format": "qcow2"}]},
            "console": {"logDirectory": lab.console_dir},
            "boot": {"directories": [boot_dir(lab)]}
        }
    })
}

/// The lab's directory of kernels and initrds (the tiny guest's and the Debian guest's).
pub fn boot_dir(lab: &lab::Lab) -> std::path::PathBuf {
    lab.kernel
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| lab.shared_dir.join("boot"))
}

/// A VirtualMachine of the tiny guest (1 vCPU, 128Mi, an overlay of the golden image).
pub fn vm_manifest(name: &str, pool: &str, lab: &lab::Lab, strategy: &str) -> serde_json::Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "hostPool": pool, "runStrategy": strategy,
            "cpu": {"cores": 1}, "memory": "128Mi",
            "terminationGracePeriodSeconds": 20,
            "disks": [{"name": "root", "image": lab.golden}],
            "boot": {"kernel": lab.kernel, "initrd": lab.initrd, "cmdline": lab.cmdline}
        }
    })
}

/// Apply a VM and wait until it has a host.
pub async fn apply_placed(c: &Cluster, manifest: serde_json::Value) -> VirtualMachine {
    let name = manifest["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    c.apply::<VirtualMachine>(manifest).await;
    wait_vm(c, &name, "placed", Duration::from_secs(60), |vm| {
        vm.status.as_ref().and_then(|s| s.host.as_ref()).is_some()
    })
    .await
}

/// Host of a VM, once placed.
pub fn host_of(vm: &VirtualMachine) -> Option<String> {
    vm.status.as_ref()?.host.clone()
}

/// How many times an Event about a HostPool with `reason` whose note contains `needle` was
/// recorded in the test namespace (a repeated Event is one object with a `series` count).
pub async fn pool_event_count(c: &Cluster, reason: &str, needle: &str) -> i32 {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(c.client.clone(), &c.namespace);
    events
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("HostPool")
                && e.note.as_deref().is_some_and(|n| n.contains(needle))
        })
        .map(|e| e.series.as_ref().map_or(1, |s| s.count.max(1)))
        .sum()
}

/// The Secret `name` of `type_` with `data`, created or updated by server-side apply.
pub async fn put_secret<D: AsRef<[u8]>>(c: &Cluster, name: &str, type_: &str, data: &[(&str, D)]) {
    let data: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                json!(k8s_openapi::ByteString(v.as_ref().to_vec())),
            )
        })
        .collect();
    c.apply::<k8s_openapi::api::core::v1::Secret>(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name}, "type": type_, "data": data
    }))
    .await;
}
