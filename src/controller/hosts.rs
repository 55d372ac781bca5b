//! Nodes and HostPools as every controller sees them: which Nodes a pool selects, how a host is
//! reached, and what its Node says about it. Shared by the controllers, so that none imports
//! another.

use crate::api::{HostPool, VirtualMachine};
use crate::plan::{pool_check, uri, uri_policy};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::{ObjectRef, Store};
use std::sync::Arc;

/// Node annotation that puts a host into maintenance (`"true"`): its VMs are moved away and it
/// takes no new ones.
pub const MAINTENANCE_ANNOTATION: &str = "ferry.dev/maintenance";

/// Whether `pool` selects `node`. An empty or invalid selector selects nothing.
pub fn selects(pool: &HostPool, node: &Node) -> bool {
    let sel = &pool.spec.node_selector;
    let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty());
    if empty {
        return false;
    }
    match Selector::try_from(sel.clone()) {
        Ok(s) => s.matches(node.labels()),
        Err(_) => false,
    }
}

/// The Nodes `pool` selects, by name.
pub fn pool_nodes(nodes: &Store<Node>, pool: &HostPool) -> Vec<Arc<Node>> {
    let mut out: Vec<Arc<Node>> = nodes
        .state()
        .into_iter()
        .filter(|n| selects(pool, n))
        .collect();
    out.sort_by_key(|n| n.name_any());
    out
}

/// The libvirt URI of `node` in `pool`, if `limits` allow it (see [`uri_policy`]); the error
/// says what to fix.
pub fn host_uri(
    pool: &HostPool,
    node: &Node,
    limits: &uri_policy::Limits,
) -> Result<String, String> {
    let uri = uri::render(
        &pool.spec.libvirt.uri_template,
        node,
        pool.spec.libvirt.address_type.unwrap_or_default(),
    )?;
    allowed(&uri, uri_policy::Role::Controller, pool, limits)?;
    Ok(uri)
}

/// `Ok` when `uri` may be used for `role` in `pool` under `limits`, else what to fix.
pub fn allowed(
    uri: &str,
    role: uri_policy::Role,
    pool: &HostPool,
    limits: &uri_policy::Limits,
) -> Result<(), String> {
    uri_policy::check(uri, role, limits, pool_check::terms(&pool.spec)).map_err(|p| {
        format!(
            "ferry does not use the URI {}: {}",
            redact(uri),
            uri_policy::summary(&p).1
        )
    })
}

/// Whether the Node's `Ready` condition is `True`.
pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the Node is cordoned.
pub fn cordoned(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// Whether the Node carries the maintenance annotation.
pub fn in_maintenance(n: &Node) -> bool {
    n.annotations()
        .get(MAINTENANCE_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// The HostPools whose status lists a host reached at `uri` (compared without credentials and
/// query): the pools to probe again when that connection is lost.
pub fn pools_reaching(pools: &[Arc<HostPool>], uri: &str) -> Vec<ObjectRef<HostPool>> {
    let shown = redact(uri);
    pools
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.hosts.iter().any(|h| h.uri.as_deref() == Some(&shown)))
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// The VirtualMachines placed on a host reached at `uri` (compared as in [`pools_reaching`]):
/// those whose `status.host` is a host of their pool that the pool's status shows at `uri`. The
/// VMs to look at again when the host's connection is re-established (its domain events of the
/// time between were not heard).
pub fn vms_on_host(
    pools: &[Arc<HostPool>],
    vms: &[Arc<VirtualMachine>],
    uri: &str,
) -> Vec<ObjectRef<VirtualMachine>> {
    let shown = redact(uri);
    // (namespace, pool, host) of every host shown at `uri`.
    let at: Vec<(String, String, &str)> = pools
        .iter()
        .flat_map(|p| {
            let (ns, name) = (p.namespace().unwrap_or_default(), p.name_any());
            p.status
                .iter()
                .flat_map(|s| s.hosts.iter())
                .filter(|h| h.uri.as_deref() == Some(&shown))
                .map(move |h| (ns.clone(), name.clone(), h.name.as_str()))
        })
        .collect();
    if at.is_empty() {
        return Vec::new();
    }
    vms.iter()
        .filter(|vm| {
            let Some(host) = vm.status.as_ref().and_then(|s| s.host.as_deref()) else {
                return false;
            };
            let ns = vm.namespace().unwrap_or_default();
            at.iter()
                .any(|(n, p, h)| *n == ns && *p == vm.spec.host_pool && *h == host)
        })
        .map(|vm| ObjectRef::from_obj(vm.as_ref()))
        .collect()
}

/// Drop user info and query parameters (they may name key files) from a URI shown in status.
pub fn redact(uri: &str) -> String {
    let no_query = uri.split('?').next().unwrap_or(uri);
    match no_query.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => no_query.to_string(),
        },
        None => no_query.to_string(),
    }
}

/// What adoption needs to know of `pool` (see [`crate::plan::adoption::PoolFacts`]), with the
/// directory of its storage on the host `hv` (the libvirt pool's, when the HostPool names no
/// path: only looked up, and started when it is stopped; nothing is defined).
pub async fn adoption_facts(
    pool: &HostPool,
    hv: &dyn crate::hypervisor::Hypervisor,
) -> crate::plan::adoption::PoolFacts {
    let storage = &pool.spec.storage;
    let storage_dir = match &storage.path {
        Some(p) => Some(p.clone()),
        None => hv.ensure_pool(&storage.pool, None).await.ok(),
    };
    crate::plan::adoption::PoolFacts::of(pool, storage_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HostState, HostStatus};

    /// HostPool `name` in `ns` whose status shows `hosts` (Node name, libvirt URI).
    fn pool(ns: &str, name: &str, hosts: &[(&str, &str)]) -> Arc<HostPool> {
        let mut p = HostPool::new(
            name,
            serde_json::from_value(serde_json::json!({
                "nodeSelector": {"matchLabels": {"a": "b"}},
                "libvirt": {"uriTemplate": "qemu+tls://{address}/system"},
                "storage": {"pool": "p"}
            }))
            .expect("spec"),
        );
        p.metadata.namespace = Some(ns.into());
        let mut st = crate::api::HostPoolStatus::default();
        for (host, uri) in hosts {
            let mut h = HostStatus::new(host.to_string(), HostState::Ready);
            h.uri = Some(uri.to_string());
            st.hosts.push(h);
        }
        p.status = Some(st);
        Arc::new(p)
    }

    #[test]
    fn a_lost_connection_wakes_the_pools_that_show_its_host() {
        let (u1, u2) = ("qemu+tls://10.0.0.1/system", "qemu+tls://10.0.0.2/system");
        let pools = [
            pool("ns", "a", &[("h0", u1), ("h1", u2)]),
            pool("ns", "b", &[("h0", u2)]),
            pool("ns", "c", &[]),
        ];
        let names = |uri: &str| -> Vec<String> {
            pools_reaching(&pools, uri)
                .into_iter()
                .map(|r| r.name)
                .collect()
        };
        // Credentials in the query do not matter.
        assert_eq!(names("qemu+tls://10.0.0.1/system?pkipath=/x"), vec!["a"]);
        assert_eq!(names("qemu+tls://10.0.0.2/system"), vec!["a", "b"]);
        assert!(names("qemu+tls://10.0.0.9/system").is_empty());
    }

    #[test]
    fn a_reconnection_wakes_the_vms_placed_on_that_host() {
        let vm = |ns: &str, name: &str, pool: &str, host: Option<&str>| {
            let mut v: VirtualMachine = serde_json::from_value(serde_json::json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"hostPool": pool, "cpu": {"cores": 1}, "memory": "256Mi",
                         "disks": [{"name": "root", "image": "tiny.qcow2"}]}
            }))
            .expect("vm");
            v.status = Some(crate::api::VirtualMachineStatus {
                host: host.map(String::from),
                ..Default::default()
            });
            Arc::new(v)
        };
        let (u1, u2) = ("qemu+tls://10.0.0.1/system", "qemu+tls://10.0.0.2/system");
        let pools = [
            pool("a", "lab", &[("h1", u1), ("h2", u2)]),
            // The same machine seen from another namespace's pool, under another Node name.
            pool("b", "lab", &[("n1", u1)]),
        ];
        let vms = [
            vm("a", "on-h1", "lab", Some("h1")),
            vm("a", "on-h2", "lab", Some("h2")),
            vm("a", "not-placed", "lab", None),
            vm("a", "other-pool", "other", Some("h1")),
            vm("b", "on-n1", "lab", Some("n1")),
            vm("b", "h1-elsewhere", "lab", Some("h1")),
        ];
        let woken = |uri: &str| -> Vec<String> {
            vms_on_host(&pools, &vms, uri)
                .into_iter()
                .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
                .collect()
        };
        assert_eq!(
            woken("qemu+tls://10.0.0.1/system?pkipath=/x"),
            vec!["a/on-h1", "b/on-n1"]
        );
        assert_eq!(woken(u2), vec!["a/on-h2"]);
        assert!(woken("qemu+tls://10.0.0.9/system").is_empty());
    }

    #[test]
    fn uris_shown_without_secrets() {
        assert_eq!(
            redact("qemu+ssh://root@h1/system?keyfile=/k"),
            "qemu+ssh://h1/system"
        );
        assert_eq!(
            redact("qemu+tls://10.0.0.1/system"),
            "qemu+tls://10.0.0.1/system"
        );
    }
}
