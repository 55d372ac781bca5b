//! Releasing a VM on deletion (annotation `ferry.dev/release: "true"`): its domain and disks stay
//! on the host as they are, running or not, without ferry's metadata, and ferry forgets the VM.
//! Only for a domain the VM's HostPool names in `spec.adoption.domains`: which domains leave
//! ferry's management (or join it) is a platform admin's decision, so a namespace editor cannot
//! leave unmanaged domains on the hosts on their own.

use crate::api::VirtualMachine;
use crate::api::virtual_machine::RELEASE_ANNOTATION;
use crate::controller::Context;
use crate::error::Result;
use crate::hypervisor::Hypervisor;
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

/// Release the VM's domain (UUID `uid`, name `domain`) on `host`: ferry's metadata is removed
/// (when it names this VM), nothing else is touched. A host without the domain has nothing to release.
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
    let vm_uid = vm.metadata.uid.as_deref().unwrap_or_default();
    if [d.live.as_ref(), d.config.as_ref()]
        .into_iter()
        .flatten()
        .any(|m| m.owner.uid == vm_uid)
    {
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
