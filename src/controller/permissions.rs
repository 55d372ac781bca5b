//! The Kubernetes API permissions the controller needs, kept next to the code that makes the calls.
//!
//! The Helm chart (`charts/ferry/templates/rbac.yaml`) and the kustomize base (`config/rbac/`)
//! must grant exactly these: `tests/deploy.rs` renders both and compares their rules with this
//! table, and `scripts/check-deploy.sh` runs the real `ferry controller` against the API stand-in
//! and checks every request it made against the table. Change a call, change the table.

/// Where a permission is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PermissionScope {
    /// Cluster-scoped resources (a ClusterRole).
    Cluster,
    /// The namespaces the controller watches: all of them (a ClusterRole), or the one given by
    /// `--namespace` / `FERRY_NAMESPACE` (a Role there).
    Watched,
    /// The namespace of the leader-election Lease (`--lease-namespace`, a Role there).
    Lease,
}

/// One resource and the verbs the controller uses on it.
#[derive(Clone, Copy, Debug)]
pub struct Permission {
    /// API group; `""` is the core group.
    pub group: &'static str,
    /// Resource (plural), with `/status` for the status subresource.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub scope: PermissionScope,
    /// The call sites that need it.
    pub why: &'static str,
}

use PermissionScope::{Cluster, Lease, Watched};

/// Every permission the controller needs, and nothing else.
pub const REQUIRED_PERMISSIONS: &[Permission] = &[
    Permission {
        group: "ferry.dev",
        resource: "virtualmachineclasses",
        verbs: &["get", "list", "watch"],
        scope: Cluster,
        why: "run::run: VirtualMachineClass reflector (virtual_machine::resolve_resources reads spec.className from it, or gets it before the first list); a changed or deleted class wakes the VMs that name it",
    },
    Permission {
        group: "",
        resource: "nodes",
        verbs: &["list", "watch"],
        scope: Cluster,
        why: "run::run: Node reflector (hosts, readiness, cordons, addresses)",
    },
    Permission {
        group: "",
        resource: "secrets",
        verbs: &["get"],
        scope: Watched,
        why: "credentials::apply: HostPool spec.libvirt.credentialsSecret, libvirt TLS client files (pkipath) or SSH key (keyfile, known_hosts); cloud_init::resolve: VirtualMachine spec.cloudInit *SecretRef",
    },
    Permission {
        group: "ferry.dev",
        resource: "virtualmachines",
        verbs: &["get", "list", "watch", "patch"],
        scope: Watched,
        why: "run::run: VirtualMachine Controller watch; virtual_machine::reconcile: finalizer() JSON patches; virtual_machine::place: the fresh read before a restart elsewhere",
    },
    Permission {
        group: "ferry.dev",
        resource: "virtualmachines/status",
        verbs: &["patch"],
        scope: Watched,
        why: "status::apply_status: server-side apply of status",
    },
    Permission {
        group: "ferry.dev",
        resource: "hostpools",
        verbs: &["list", "watch"],
        scope: Watched,
        why: "run::run: HostPool reflector and HostPool Controller watch",
    },
    Permission {
        group: "ferry.dev",
        resource: "hostpools/status",
        verbs: &["patch"],
        scope: Watched,
        why: "status::apply_status: server-side apply of status",
    },
    Permission {
        group: "ferry.dev",
        resource: "virtualmachinemigrations",
        verbs: &["list", "watch", "patch", "create", "delete"],
        scope: Watched,
        why: "run::run: migration Controller watch; migration::reconcile: finalizer() JSON patches; evacuation and ha::evacuate: create (and withdraw) evacuation migrations",
    },
    Permission {
        group: "ferry.dev",
        resource: "virtualmachinemigrations/status",
        verbs: &["patch"],
        scope: Watched,
        why: "status::apply_status: server-side apply of status",
    },
    Permission {
        group: "ferry.dev",
        resource: "hapolicies",
        verbs: &["list", "watch"],
        scope: Watched,
        why: "run::run: HAPolicy Controller watch",
    },
    Permission {
        group: "ferry.dev",
        resource: "hapolicies/status",
        verbs: &["patch"],
        scope: Watched,
        why: "status::apply_status: server-side apply of HAPolicy status (verdicts, incidents)",
    },
    Permission {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        scope: Watched,
        why: "Context::event: kube-runtime Recorder (create, then patch to count repeats)",
    },
    Permission {
        group: "",
        resource: "events",
        verbs: &["list", "watch"],
        scope: Watched,
        why: "run::run: reflector of the Events about ferry's objects (involvedObject.apiVersion), read by the dashboard's VM pages",
    },
    Permission {
        group: "authentication.k8s.io",
        resource: "tokenreviews",
        verbs: &["create"],
        scope: Cluster,
        why: "access::Access::authenticate: the bearer token of a console or dashboard user",
    },
    Permission {
        group: "authorization.k8s.io",
        resource: "subjectaccessreviews",
        verbs: &["create"],
        scope: Cluster,
        why: "access::Access::allowed: may that user open a console (virtualmachines/console, /vnc) or act on a VM",
    },
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "patch"],
        scope: Lease,
        why: "leader::acquire: kube-lease-manager (get, create when missing, apply/strategic patches)",
    },
];

/// The table flattened to `(scope, group, resource, verb)`, sorted.
pub fn flattened() -> Vec<(PermissionScope, &'static str, &'static str, &'static str)> {
    let mut out: Vec<_> = REQUIRED_PERMISSIONS
        .iter()
        .flat_map(|p| p.verbs.iter().map(|v| (p.scope, p.group, p.resource, *v)))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_resource_appears_once_with_known_verbs() {
        let known = [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ];
        let mut seen = std::collections::HashSet::new();
        for p in REQUIRED_PERMISSIONS {
            assert!(
                seen.insert((p.group, p.resource)),
                "{}/{} listed twice",
                p.group,
                p.resource
            );
            assert!(!p.verbs.is_empty() && !p.why.is_empty());
            for v in p.verbs {
                assert!(known.contains(v), "unknown verb {v}");
            }
        }
        assert_eq!(flattened().len(), 32);
    }
}
