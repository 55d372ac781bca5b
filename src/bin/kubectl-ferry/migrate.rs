//! `migrate` and `cancel`: the VirtualMachineMigration to create, and which one to delete.

use ferry::api::{MigrationPhase, VirtualMachineMigration};
use kube::ResourceExt;

pub use ferry::plan::migration_request::migration;

/// The reason of a migration asked for without `--reason`.
pub const MANUAL: &str = "manual (kubectl ferry migrate)";

/// Whether a migration has ended (its record stays until deleted).
fn ended(m: &VirtualMachineMigration) -> bool {
    matches!(
        m.status.as_ref().and_then(|s| s.phase),
        Some(MigrationPhase::Succeeded | MigrationPhase::Failed | MigrationPhase::Cancelled)
    )
}

/// The migration `cancel VM` deletes: the VM's one unfinished migration (ferry runs at most one
/// per VM). `migrations` are those of the VM's namespace.
pub fn to_cancel<'a>(
    vm: &str,
    migrations: &'a [VirtualMachineMigration],
) -> Result<&'a VirtualMachineMigration, String> {
    let of_vm: Vec<&VirtualMachineMigration> = migrations
        .iter()
        .filter(|m| m.spec.vm_name == vm && m.metadata.deletion_timestamp.is_none())
        .collect();
    let open: Vec<&VirtualMachineMigration> = of_vm.iter().copied().filter(|m| !ended(m)).collect();
    match open.as_slice() {
        [one] => Ok(one),
        [] => {
            let last = of_vm
                .iter()
                .max_by_key(|m| m.metadata.creation_timestamp.clone().map(|t| t.0))
                .map(|m| {
                    let p = m.status.as_ref().and_then(|s| s.phase);
                    format!(
                        " (the last one, {}, is {})",
                        m.name_any(),
                        p.map_or("without a phase".to_string(), |p| format!("{p:?}"))
                    )
                })
                .unwrap_or_default();
            Err(format!("{vm} has no unfinished migration to cancel{last}"))
        }
        many => Err(format!(
            "{vm} has {} unfinished migrations ({}): delete the one to cancel with kubectl delete fvmim NAME",
            many.len(),
            many.iter()
                .map(|m| m.name_any())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{running, stopped, vm};
    use serde_json::json;

    #[test]
    fn migrations_name_the_vm_and_target() {
        let v = vm(None, json!({}), running());
        let m = migration(&v, Some("hv-2"), MANUAL).expect("a migration");
        let obj = serde_json::to_value(&m).expect("json");
        assert_eq!(obj["metadata"]["generateName"], "web-1-");
        assert_eq!(obj["metadata"]["namespace"], "vms");
        assert_eq!(obj["metadata"]["labels"]["ferry.dev/vm"], "web-1");
        assert_eq!(obj["spec"]["vmName"], "web-1");
        assert_eq!(obj["spec"]["targetHost"], "hv-2");
        assert_eq!(obj["apiVersion"], "ferry.dev/v1alpha1");
        assert!(obj["metadata"].get("name").is_none());
        let any = migration(&v, None, "maintenance").expect("a migration");
        assert_eq!(any.spec.target_host, None);
        assert_eq!(any.spec.reason.as_deref(), Some("maintenance"));

        assert!(migration(&v, Some("hv-1"), MANUAL).is_err(), "same host");
        let s = vm(None, json!({}), stopped());
        assert!(migration(&s, None, MANUAL).is_err(), "not running");
        let unplaced = vm(None, json!({}), json!({"phase": "Pending"}));
        assert!(migration(&unplaced, None, MANUAL).is_err(), "no host");
    }

    fn record(name: &str, vm: &str, phase: Option<&str>, created: &str) -> VirtualMachineMigration {
        let mut status = json!({});
        if let Some(p) = phase {
            status["phase"] = json!(p);
        }
        serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachineMigration",
            "metadata": {"name": name, "namespace": "vms", "creationTimestamp": created},
            "spec": {"vmName": vm},
            "status": status,
        }))
        .expect("valid migration")
    }

    #[test]
    fn cancel_finds_the_vms_unfinished_migration() {
        let all = vec![
            record(
                "web-1-a",
                "web-1",
                Some("Succeeded"),
                "2026-01-10T08:00:00Z",
            ),
            record("web-1-b", "web-1", Some("Running"), "2026-01-10T09:00:00Z"),
            record("db-1-a", "db-1", Some("Pending"), "2026-01-10T09:00:00Z"),
        ];
        assert_eq!(
            to_cancel("web-1", &all).map(|m| m.name_any()),
            Ok("web-1-b".into())
        );
        assert_eq!(
            to_cancel("db-1", &all).map(|m| m.name_any()),
            Ok("db-1-a".into())
        );
        // Not started yet counts as unfinished.
        let fresh = vec![record("web-1-c", "web-1", None, "2026-01-10T09:00:00Z")];
        assert_eq!(
            to_cancel("web-1", &fresh).map(|m| m.name_any()),
            Ok("web-1-c".into())
        );
    }

    #[test]
    fn cancel_says_why_there_is_nothing_to_cancel() {
        let all = vec![
            record("web-1-a", "web-1", Some("Failed"), "2026-01-10T08:00:00Z"),
            record(
                "web-1-b",
                "web-1",
                Some("Succeeded"),
                "2026-01-10T09:00:00Z",
            ),
        ];
        let err = to_cancel("web-1", &all).expect_err("nothing to cancel");
        assert!(err.contains("no unfinished migration"), "{err}");
        assert!(err.contains("web-1-b, is Succeeded"), "{err}");
        assert!(to_cancel("other", &all).is_err());
        let two = vec![
            record("web-1-a", "web-1", Some("Running"), "2026-01-10T08:00:00Z"),
            record("web-1-b", "web-1", Some("Pending"), "2026-01-10T09:00:00Z"),
        ];
        let err = to_cancel("web-1", &two).expect_err("two");
        assert!(err.contains("web-1-a, web-1-b"), "{err}");
    }
}
