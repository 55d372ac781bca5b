//! The VM's size (from its spec or its VirtualMachineClass) and its cloud-init seed, as the
//! problems they can have are shown to the user.

use super::*;
use crate::api::VirtualMachineClass;
use crate::api::{VirtualMachine, VirtualMachineStatus, VmPhase};
use crate::controller::cloud_init;
use crate::controller::context::Caches;
use crate::error::Result;
use crate::plan::validate::{ValidSpec, validate};
use crate::plan::{class, mac};
use kube::api::Api;
use std::time::Duration;

/// The VM's validated spec, its cloud-init seed (`None` without cloud-init) and, for a placed VM
/// whose class is gone, the warning to publish; records the resolved size in `st`. A MAC address
/// another VM of the pool has blocks the VM.
pub(super) async fn resolve(
    vm: &VirtualMachine,
    client: &kube::Client,
    caches: &Caches,
    st: &mut VirtualMachineStatus,
) -> Result<(ValidSpec, Option<Seed>, Option<String>), Blocked> {
    let (resources, class_gone) = resolve_resources(vm, client, caches).await?;
    st.resources = Some(resources.status());
    let valid = validate(&vm.spec, &resources).map_err(|m| {
        Blocked::new(
            VmPhase::Failed,
            "InvalidSpec",
            format!("fix the spec: {m}"),
            // A change of the VM's class wakes it (the controller watches classes).
            Retry::OnChange,
        )
    })?;
    mac::check_vm(vm, || caches.vms.state()).map_err(|m| {
        let phase = st.phase.filter(|_| st.host.is_some());
        Blocked::new(
            phase.unwrap_or(VmPhase::Pending),
            "DuplicateMAC",
            m,
            Retry::After(RECHECK),
        )
    })?;
    let seed = cloud_init::resolve(vm, client)
        .await
        .map_err(seed_blocked(vm))?;
    Ok((valid, seed, class_gone))
}

/// The VM's size from its spec or its VirtualMachineClass: from the class cache once it holds
/// its first list, from the API server before that. A change or deletion of the class wakes the
/// VMs that name it, so it shows as `RestartRequired` or `ClassNotFound` at once. A VM placed on a
/// host whose class is deleted keeps the size it was defined with (the warning says so), so that
/// it stays managed; one not placed yet waits with `ClassNotFound`.
pub(super) async fn resolve_resources(
    vm: &VirtualMachine,
    client: &kube::Client,
    caches: &Caches,
) -> Result<(class::Resources, Option<String>), Blocked> {
    let phase = if vm.status.as_ref().and_then(|s| s.host.as_ref()).is_some() {
        VmPhase::Failed
    } else {
        VmPhase::Pending
    };
    let found = match &vm.spec.class_name {
        Some(name) => match caches.class(name) {
            Some(cached) => cached,
            None => Api::<VirtualMachineClass>::all(client.clone())
                .get_opt(name)
                .await
                .map_err(|e| {
                    Blocked::new(
                        phase,
                        "ClassUnavailable",
                        format!("reading VirtualMachineClass {name} failed: {e}"),
                        Retry::Backoff,
                    )
                })?
                .map(std::sync::Arc::new),
        },
        None => None,
    };
    let status = vm.status.as_ref();
    let placed = status.is_some_and(|s| s.host.is_some());
    let resolved = class::resolve(&vm.spec, found.as_ref().map(|c| &c.spec));
    if let (Err(e @ class::ClassError::NotFound(_)), true) = (&resolved, placed)
        && let Some(kept) =
            class::recorded_for_missing_class(&vm.spec, status.and_then(|s| s.resources.as_ref()))
    {
        let warning = format!(
            "{e}; the VM keeps the size its domain was defined with ({} vCPUs, {} memory) until the class exists again or the spec gives a size",
            kept.cpu.cores, kept.memory
        );
        return Ok((kept, Some(warning)));
    }
    resolved.map(|r| (r, None)).map_err(|e| match e {
        class::ClassError::NotFound(_) => Blocked::new(
            phase,
            "ClassNotFound",
            e.to_string(),
            Retry::After(Duration::from_secs(30)),
        ),
        class::ClassError::Invalid(m) => Blocked::new(
            VmPhase::Failed,
            "InvalidSpec",
            format!("fix the spec: {m}"),
            Retry::OnChange,
        ),
    })
}

/// How a cloud-init problem shows: a missing Secret may appear, invalid data waits for a change
/// (of the spec, or of a Secret, looked at again every minute).
pub(super) fn seed_blocked(
    vm: &VirtualMachine,
) -> impl Fn(cloud_init::SeedProblem) -> Blocked + '_ {
    move |p| {
        let phase = if vm.status.as_ref().and_then(|s| s.host.as_ref()).is_some() {
            VmPhase::Failed
        } else {
            VmPhase::Pending
        };
        match p {
            cloud_init::SeedProblem::SecretMissing(m) => Blocked::new(
                phase,
                "CloudInitSecretNotFound",
                m,
                Retry::After(Duration::from_secs(30)),
            ),
            cloud_init::SeedProblem::Invalid(m) => Blocked::new(
                phase,
                "CloudInitInvalid",
                format!("fix spec.cloudInit: {m}"),
                if cloud_init::uses_secrets(vm) {
                    Retry::After(Duration::from_secs(60))
                } else {
                    Retry::OnChange
                },
            ),
            cloud_init::SeedProblem::Api(m) => {
                Blocked::new(phase, "CloudInitUnavailable", m, Retry::Backoff)
            }
        }
    }
}
