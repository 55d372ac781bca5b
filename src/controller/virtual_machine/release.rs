//! Releasing a VM on deletion (annotation `ferry.dev/release: "true"`): its domain and disks stay
//! on the host as they are, running or not, without ferry's metadata, and ferry forgets the VM.
//! Only for a domain the VM's HostPool names in `spec.adoption.domains`: which domains leave
//! ferry's management (or join it) is a platform admin's decision, so a namespace editor cannot
//! leave unmanaged domains on the hosts on their own.

use crate::api::HostPool;
use crate::api::VirtualMachine;
use crate::api::virtual_machine::RELEASE_ANNOTATION;
use crate::controller::Context;
use crate::error::Result;
use crate::hypervisor::Hypervisor;
use crate::plan::{adoption, naming};
use kube::ResourceExt;
use kube::runtime::events::EventType;

/// Reason of a VM whose release its HostPool does not allow.
pub(super) const NOT_ALLOWED: &str = "ReleaseNotAllowed";

/// Whether deleting `vm` should release its domain.
pub(super) fn requested(vm: &VirtualMachine) -> bool {
    vm.annotations()
        .get(RELEASE_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// Why `vm`'s domain may not be released, with what to do; `None` when it may.
pub(super) fn refusal(vm: &VirtualMachine, pool: Option<&HostPool>) -> Option<String> {
    let domain = naming::domain_name(&vm.namespace().unwrap_or_default(), &vm.name_any());
    let undo = format!(
        "remove the annotation {RELEASE_ANNOTATION} to delete the VM with its domain and disks"
    );
    let Some(pool) = pool else {
        return Some(format!(
            "HostPool {} is gone, so nothing allows releasing domain {domain}; {undo}",
            vm.spec.host_pool
        ));
    };
    let patterns = pool
        .spec
        .adoption
        .as_ref()
        .map(|a| a.domains.as_slice())
        .unwrap_or_default();
    (!adoption::allowed(patterns, &domain)).then(|| {
        format!(
            "HostPool {} does not name domain {domain} in spec.adoption.domains: a platform admin decides which domains may leave ferry's management; {undo}",
            pool.name_any()
        )
    })
}

/// Release the VM's domain (UUID `uid`, name `domain`) on `host`: ferry's metadata is removed,
/// nothing else is touched. A host without the domain has nothing to release.
pub(super) async fn release(
    vm: &VirtualMachine,
    ctx: &Context,
    hv: &dyn Hypervisor,
    host: &str,
    uid: &str,
    domain: &str,
) -> Result<()> {
    let Some(d) = hv.lookup_domain(uid).await? else {
        return Ok(());
    };
    if d.live.is_some() || d.config.is_some() {
        hv.set_metadata(uid, None).await?;
    }
    let state = if d.state.is_active() {
        "running"
    } else {
        "shut off"
    };
    ctx.event(
        vm,
        EventType::Normal,
        "Released",
        "Delete",
        format!(
            "Domain {domain} (UUID {uid}) stays on host {host}, {state} and defined, with its disks; ferry no longer manages it"
        ),
    )
    .await;
    Ok(())
}
