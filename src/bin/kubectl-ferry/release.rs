//! `release`: delete a VM but leave its domain and disks on the host, unmanaged.

use ferry::api::virtual_machine::RELEASE_ANNOTATION;
use ferry::api::{HostPool, VirtualMachine};
use ferry::plan::{adoption, naming};
use kube::ResourceExt;
use serde_json::{Value, json};

/// The merge patch that asks for the release and what the deletion then does, or why the VM's
/// HostPool (`None`: gone) does not allow it.
pub fn release_plan(
    vm: &VirtualMachine,
    pool: Option<&HostPool>,
) -> Result<(Value, String), String> {
    if let Some(why) = adoption::release_refusal(vm, pool) {
        return Err(why);
    }
    let domain = naming::vm_domain_name(vm);
    let host = vm
        .status
        .as_ref()
        .and_then(|s| s.host.as_deref())
        .unwrap_or("its host");
    Ok((
        json!({"metadata": {"annotations": {RELEASE_ANNOTATION: "true"}}}),
        format!(
            "virtualmachine/{} deleted with {RELEASE_ANNOTATION}=true: domain {domain} stays on {host} as it is, with its disks, without ferry's metadata",
            vm.name_any()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{pool, running, vm};

    #[test]
    fn release_asks_the_pool_first() {
        let vm = vm(Some("Always"), json!({}), running());
        let mut p = pool(json!({}));
        assert!(
            release_plan(&vm, Some(&p))
                .expect_err("not named")
                .contains("does not name domain")
        );
        p.spec.adoption = Some(ferry::api::host_pool::AdoptionSpec {
            domains: vec!["vms_web-*".into()],
        });
        let (patch, what) = release_plan(&vm, Some(&p)).expect("named");
        assert_eq!(patch["metadata"]["annotations"][RELEASE_ANNOTATION], "true");
        assert!(what.contains("domain vms_web-1 stays on hv-1"), "{what}");
        assert!(release_plan(&vm, None).is_err());
    }
}
