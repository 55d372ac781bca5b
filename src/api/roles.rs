//! Roles for people: what the built-in `view`, `edit` and `admin` ClusterRoles gain through
//! aggregation, and the platform-admin role for the objects that decide what runs on a host.
//!
//! Application teams (namespace `edit` or `admin`) own VirtualMachines and
//! VirtualMachineMigrations; HostPools, HAPolicies and VirtualMachineClasses name hosts,
//! transports, host directories and BMCs, so only platform admins change them. The chart
//! (`charts/ferry/templates/aggregate-roles.yaml`) and the kustomize base
//! (`config/rbac/aggregate_roles.yaml`) say exactly this: `tests/deploy.rs` compares them with
//! [`USER_ROLES`].

/// A ClusterRole for people.
#[derive(Clone, Copy, Debug)]
pub struct UserRole {
    /// Name suffix: `ferry-<suffix>` in kustomize, `<release full name>-<suffix>` in the chart.
    pub suffix: &'static str,
    /// Built-in ClusterRoles it is aggregated into (`view`, `edit`, `admin`); empty: bound by a
    /// cluster admin with a (Cluster)RoleBinding.
    pub aggregate_to: &'static [&'static str],
    /// API group of its resources: `ferry.dev`, or `subresources.ferry.dev` for the consoles
    /// (ferry's aggregated API).
    pub group: &'static str,
    /// Resources of that group it covers.
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// Verbs that read.
pub const READ: &[&str] = &["get", "list", "watch"];
/// Verbs that change.
pub const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
/// Every verb, for the platform-admin role.
pub const READ_WRITE: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// Kinds application teams create and change.
pub const TENANT_RESOURCES: &[&str] = &["virtualmachines", "virtualmachinemigrations"];
/// Kinds only platform admins change: they say how hosts are reached, which host directories
/// VMs may use, how hosts are fenced and what a VM's size means.
pub const PLATFORM_RESOURCES: &[&str] = &["hostpools", "hapolicies", "virtualmachineclasses"];

/// A VM's serial console and VNC display, subresources of `subresources.ferry.dev` (ferry's
/// aggregated API; the console proxy asks the same with a SubjectAccessReview), verb `get`:
/// whoever edits a VM may open its consoles, `view` may not.
pub const CONSOLE_RESOURCES: &[&str] = &["virtualmachines/console", "virtualmachines/vnc"];

/// Every role for people, and nothing else.
pub const USER_ROLES: &[UserRole] = &[
    UserRole {
        suffix: "view",
        group: "ferry.dev",
        aggregate_to: &["view", "edit", "admin"],
        resources: &[
            "virtualmachines",
            "virtualmachinemigrations",
            "hostpools",
            "hapolicies",
            "virtualmachineclasses",
        ],
        verbs: READ,
    },
    UserRole {
        suffix: "edit",
        group: "ferry.dev",
        aggregate_to: &["edit", "admin"],
        resources: TENANT_RESOURCES,
        verbs: WRITE,
    },
    UserRole {
        suffix: "console",
        group: crate::access::SUBRESOURCE_GROUP,
        aggregate_to: &["edit", "admin"],
        resources: CONSOLE_RESOURCES,
        verbs: &["get"],
    },
    UserRole {
        suffix: "platform-admin",
        group: "ferry.dev",
        aggregate_to: &[],
        resources: PLATFORM_RESOURCES,
        verbs: READ_WRITE,
    },
];

/// `(aggregated into, resource, verb)` for every aggregated grant, sorted: what a namespace
/// role holder gets.
pub fn aggregated() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut out: Vec<_> = USER_ROLES
        .iter()
        .flat_map(|r| {
            r.aggregate_to.iter().flat_map(move |a| {
                r.resources
                    .iter()
                    .flat_map(move |res| r.verbs.iter().map(move |v| (*a, *res, *v)))
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_roles_only_read_platform_objects() {
        for (role, resource, verb) in aggregated() {
            if PLATFORM_RESOURCES.contains(&resource) {
                assert!(
                    READ.contains(&verb),
                    "built-in {role} may {verb} {resource}"
                );
            }
        }
    }

    #[test]
    fn editors_change_vms_and_migrations_and_everyone_reads_everything() {
        let a = aggregated();
        for role in ["edit", "admin"] {
            for res in TENANT_RESOURCES {
                for verb in WRITE.iter().chain(READ) {
                    assert!(a.contains(&(role, res, verb)), "{role} lacks {verb} {res}");
                }
            }
        }
        for role in ["view", "edit", "admin"] {
            for res in TENANT_RESOURCES.iter().chain(PLATFORM_RESOURCES) {
                for verb in READ {
                    assert!(a.contains(&(role, res, verb)), "{role} lacks {verb} {res}");
                }
            }
        }
        assert!(!a.iter().any(|(r, _, v)| *r == "view" && WRITE.contains(v)));
    }

    #[test]
    fn editors_open_consoles_and_viewers_do_not() {
        let a = aggregated();
        for res in CONSOLE_RESOURCES {
            assert!(a.contains(&("edit", res, "get")));
            assert!(a.contains(&("admin", res, "get")));
            assert!(!a.iter().any(|(r, x, _)| *r == "view" && x == res));
        }
    }

    #[test]
    fn platform_admins_change_the_platform_objects() {
        let admin = USER_ROLES
            .iter()
            .find(|r| r.suffix == "platform-admin")
            .expect("platform-admin role");
        assert!(admin.aggregate_to.is_empty());
        for v in WRITE {
            assert!(admin.verbs.contains(v));
        }
        assert_eq!(admin.resources, PLATFORM_RESOURCES);
    }
}
