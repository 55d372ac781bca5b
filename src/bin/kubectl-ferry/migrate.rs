//! `migrate` and `cancel`: the VirtualMachineMigration to create, and which one to delete.

use ferry::api::{
    MigrationPhase, VirtualMachine, VirtualMachineMigration, VirtualMachineMigrationSpec, VmPhase,
};
use kube::ResourceExt;
use kube::api::ObjectMeta;
use std::collections::BTreeMap;

/// Label ferry and the plugin put on a migration: the name of the VM it moves.
pub const VM_LABEL: &str = "ferry.dev/vm";

fn phase(vm: &VirtualMachine) -> Option<VmPhase> {
    vm.status.as_ref().and_then(|s| s.phase)
}

/// The VirtualMachineMigration `migrate` creates.
pub fn migration(
    vm: &VirtualMachine,
    to: Option<&str>,
    reason: Option<&str>,
) -> Result<VirtualMachineMigration, String> {
    let name = vm.name_any();
    let host = vm
        .status
        .as_ref()
        .and_then(|s| s.host.as_deref())
        .ok_or_else(|| format!("{name} is not placed on a host yet: nothing to migrate"))?;
    if to == Some(host) {
        return Err(format!("{name} already runs on {host}"));
    }
    match phase(vm) {
        Some(VmPhase::Running) => {}
        other => {
            let shown = other.map_or("without a phase".to_string(), |p| p.to_string());
            return Err(format!(
                "{name} is {shown}: only a running VM can be live-migrated"
            ));
        }
    }
    let mut m = VirtualMachineMigration::new(
        "",
        VirtualMachineMigrationSpec {
            vm_name: name.clone(),
            target_host: to.map(str::to_string),
            reason: Some(
                reason
                    .unwrap_or("manual (kubectl ferry migrate)")
                    .to_string(),
            ),
        },
    );
    m.metadata = ObjectMeta {
        generate_name: Some(format!("{name}-")),
        namespace: vm.namespace(),
        labels: Some(BTreeMap::from([(VM_LABEL.to_string(), name)])),
        ..ObjectMeta::default()
    };
    Ok(m)
}

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
        let m = migration(&v, Some("hv-2"), None).expect("a migration");
        let obj = serde_json::to_value(&m).expect("json");
        assert_eq!(obj["metadata"]["generateName"], "web-1-");
        assert_eq!(obj["metadata"]["namespace"], "vms");
        assert_eq!(obj["metadata"]["labels"]["ferry.dev/vm"], "web-1");
        assert_eq!(obj["spec"]["vmName"], "web-1");
        assert_eq!(obj["spec"]["targetHost"], "hv-2");
        assert_eq!(obj["apiVersion"], "ferry.dev/v1alpha1");
        assert!(obj["metadata"].get("name").is_none());
        let any = migration(&v, None, Some("maintenance")).expect("a migration");
        assert_eq!(any.spec.target_host, None);
        assert_eq!(any.spec.reason.as_deref(), Some("maintenance"));

        assert!(migration(&v, Some("hv-1"), None).is_err(), "same host");
        let s = vm(None, json!({}), stopped());
        assert!(migration(&s, None, None).is_err(), "not running");
        let unplaced = vm(None, json!({}), json!({"phase": "Pending"}));
        assert!(migration(&unplaced, None, None).is_err(), "no host");
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
