//! The VirtualMachineMigration a person asks for (`kubectl ferry migrate`, the dashboard's
//! Migrate button), as a pure function of the VM read.

use crate::api::{VirtualMachine, VirtualMachineMigration, VirtualMachineMigrationSpec, VmPhase};
use kube::ResourceExt;
use kube::api::ObjectMeta;
use std::collections::BTreeMap;

/// Label ferry and the plugin put on a migration: the name of the VM it moves.
pub const VM_LABEL: &str = "ferry.dev/vm";

fn phase(vm: &VirtualMachine) -> Option<VmPhase> {
    vm.status.as_ref().and_then(|s| s.phase)
}

/// The VirtualMachineMigration that moves `vm` (to host `to`, or where placement picks), with
/// `reason` as its reason.
pub fn migration(
    vm: &VirtualMachine,
    to: Option<&str>,
    reason: &str,
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
            reason: Some(reason.to_string()),
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
