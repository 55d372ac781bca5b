//! Deleting a VM: its domain and disks are removed from the host (or reported left behind).

use super::*;
use crate::api::condition::{ConditionStatus, set_condition};
use crate::api::virtual_machine::{ABANDON_ANNOTATION, HttpImage, SourceFormat};
use crate::api::{MigrationPhase, VirtualMachine, VmPhase};
use crate::controller::cloud_init;
use crate::controller::hosts::selects;
use crate::controller::{Context, status::apply_status};
use crate::error::{Error, Result};
use crate::hypervisor::{DomainInfo, Hypervisor};
use crate::plan::naming;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use std::time::{Duration, Instant};

pub(super) async fn cleanup(
    vm: &VirtualMachine,
    api: &Api<VirtualMachine>,
    ctx: &Context,
) -> Result<Requeue> {
    ctx.placement
        .forget(vm.metadata.uid.as_deref().unwrap_or_default());
    let Some(host) = vm.status.as_ref().and_then(|s| s.host.clone()) else {
        // Never placed: nothing was created anywhere.
        return Ok(Requeue::await_change());
    };
    let ns = vm.namespace().unwrap_or_default();
    if super::release::requested(vm) {
        let pool = ctx
            .caches
            .pools
            .get(&ObjectRef::new(&vm.spec.host_pool).within(&ns));
        if let Some(why) = crate::plan::adoption::release_refusal(vm, pool.as_deref()) {
            return refuse_release(vm, api, ctx, why).await;
        }
    }
    let migrations = ctx.caches.migrations_of(&ns, &vm.name_any());
    if let Some(m) = migrations.iter().find(|m| m.holds_vm()) {
        // The migration controller aborts it because the VM is being deleted.
        return Err(Error::Missing(format!(
            "deletion waits for migration {} to end",
            m.name_any()
        )));
    }
    // A move that succeeded but is not recorded in status yet: the domain is on the target
    // (not when the target failed after it and the VM was placed anew: HA proved it off).
    let recovery = vm.status.as_ref().and_then(|s| s.last_recovery.as_ref());
    let moved_to = migrations.iter().rev().find_map(|m| {
        let s = m.status.as_ref()?;
        (s.phase == Some(MigrationPhase::Succeeded)
            && s.source.as_deref() == Some(host.as_str())
            && !crate::plan::migration::overtaken_by_recovery(s, recovery))
        .then(|| s.target.clone())
        .flatten()
    });
    if let Some(target) = moved_to {
        clean_host(vm, api, ctx, &target).await?;
    }
    clean_host(vm, api, ctx, &host).await
}

/// Remove the VM's domain and disks from `host`.
pub(super) async fn clean_host(
    vm: &VirtualMachine,
    api: &Api<VirtualMachine>,
    ctx: &Context,
    host: &str,
) -> Result<Requeue> {
    let host = host.to_string();
    let ns = vm.namespace().unwrap_or_default();
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let uuid = naming::vm_domain_uuid(vm);
    let domain = naming::vm_domain_name(vm);
    let pool = ctx
        .caches
        .pools
        .get(&ObjectRef::new(&vm.spec.host_pool).within(&ns));
    let mut volumes = owned_volumes(vm, pool.as_ref().map(|p| p.spec.storage.pool.as_str()));
    if let (Some(p), Ok(Some(seed))) = (&pool, cloud_init::resolve(vm, &ctx.client).await) {
        let v = (
            p.spec.storage.pool.clone(),
            cloud_init::volume_name(vm, &seed),
        );
        if !volumes.contains(&v) {
            volumes.push(v);
        }
    }
    let node = ctx.caches.node(&host);
    let abandon = vm
        .annotations()
        .get(ABANDON_ANNOTATION)
        .is_some_and(|v| v == "true");
    let gone_reason = match (&pool, &node) {
        (None, _) => Some(format!("HostPool {} is gone", vm.spec.host_pool)),
        (_, None) => Some(format!("Node {host} is gone")),
        (Some(p), Some(n)) if !selects(p, n) => Some(format!(
            "Node {host} has left HostPool {}",
            vm.spec.host_pool
        )),
        _ if abandon => Some(format!("annotation {ABANDON_ANNOTATION}=true")),
        _ => None,
    };
    let connected = match (&pool, &node) {
        (Some(p), Some(n)) => match ctx.hosts.uri(p, n) {
            Ok(uri) => ctx.hosts.connect(&uri, p).await.map_err(|e| e.to_string()),
            Err(m) => Err(m),
        },
        _ => Err("no HostPool or Node to reach it through".to_string()),
    };
    let hv = match connected {
        Ok(hv) => hv,
        Err(why) => {
            if let Some(gone) = gone_reason {
                let left: Vec<String> = volumes.iter().map(|(p, v)| format!("{p}/{v}")).collect();
                ctx.event(
                    vm,
                    EventType::Warning,
                    "LeftBehind",
                    "Delete",
                    format!(
                        "Deleted without cleaning host {host} ({gone}; {why}): domain {domain} (UUID {uuid}) and volumes [{}] may remain there; remove them if the host returns",
                        left.join(", ")
                    ),
                )
                .await;
                return Ok(Requeue::await_change());
            }
            let mut st = vm.status.clone().unwrap_or_default();
            st.phase = Some(VmPhase::Terminating);
            set_condition(
                &mut st.conditions,
                "Ready",
                ConditionStatus::False,
                "HostUnreachable",
                format!(
                    "deletion waits for host {host} ({why}); to finish without cleaning it, annotate {ABANDON_ANNOTATION}=true"
                ),
                vm.metadata.generation,
                Timestamp::now(),
            );
            apply_status(api, vm, vm.status.as_ref(), &st).await?;
            return Err(Error::Missing(format!(
                "host {host} unreachable during deletion: {why}"
            )));
        }
    };
    if super::release::requested(vm) {
        super::release::release(vm, ctx, hv.as_ref(), &host, &uuid, &domain).await?;
        ctx.vm_runtime.stopped(&uid);
        ctx.vm_runtime.forget_provisioned(&uid);
        ctx.backoff.reset(&key(vm));
        return Ok(Requeue::await_change());
    }
    if vm.adopted().is_some() && !owned_by(hv.as_ref(), &uuid, &uid).await? {
        // An adopted domain that no longer carries this VM's metadata (released, or claimed by
        // another VM since) is not this VM's to remove.
        tracing::warn!(vm = %vm.name_any(), %domain, "the adopted domain no longer carries this VM's metadata; left as it is");
    } else {
        stop_for_delete(vm, hv.as_ref(), &uuid).await?;
        hv.undefine_domain(&uuid).await?;
    }
    for (pool, volume) in &volumes {
        hv.delete_volume(pool, volume).await?;
    }
    if let Some(p) = &pool {
        collect_images(vm, ctx, hv.as_ref(), &p.spec.storage.pool, &host).await?;
    }
    ctx.vm_runtime.stopped(&uid);
    ctx.vm_runtime.forget_provisioned(&uid);
    ctx.backoff.reset(&key(vm));
    ctx.event(
        vm,
        EventType::Normal,
        "Deleted",
        "Delete",
        format!(
            "Removed domain {domain} and {} disk(s) from host {host}",
            volumes.len()
        ),
    )
    .await;
    Ok(Requeue::await_change())
}

/// Deletion waits: the VM asks to be released, and its HostPool does not allow it.
async fn refuse_release(
    vm: &VirtualMachine,
    api: &Api<VirtualMachine>,
    ctx: &Context,
    why: String,
) -> Result<Requeue> {
    let mut st = vm.status.clone().unwrap_or_default();
    let reason = super::release::NOT_ALLOWED;
    let known = crate::api::condition::find(&st.conditions, "Ready")
        .is_some_and(|c| c.reason == reason && c.message == why);
    if !known {
        ctx.event(vm, EventType::Warning, reason, "Delete", why.clone())
            .await;
    }
    st.phase = Some(VmPhase::Terminating);
    set_condition(
        &mut st.conditions,
        "Ready",
        ConditionStatus::False,
        reason,
        why.clone(),
        vm.metadata.generation,
        Timestamp::now(),
    );
    apply_status(api, vm, vm.status.as_ref(), &st).await?;
    Err(Error::Missing(why))
}

/// Remove the imported images this VM used that no other VM names any more (overlays on them
/// are gone by now: this VM's were deleted first, other VMs still name theirs).
pub(super) async fn collect_images(
    vm: &VirtualMachine,
    ctx: &Context,
    hv: &dyn Hypervisor,
    pool: &str,
    host: &str,
) -> Result<()> {
    let others = ctx.caches.vms.state();
    let stored = |h: &HttpImage| {
        naming::imported_image_name(&h.image_id(), h.format.unwrap_or(SourceFormat::Qcow2))
    };
    for h in vm.spec.disks.iter().filter_map(|d| d.http.as_ref()) {
        let image = stored(h);
        let used = others.iter().any(|o| {
            o.metadata.uid != vm.metadata.uid
                && o.spec
                    .disks
                    .iter()
                    .any(|d| d.http.as_ref().is_some_and(|x| stored(x) == image))
        });
        if used {
            continue;
        }
        if hv.lookup_volume(pool, &image).await?.is_none() {
            continue;
        }
        let format = h.format.unwrap_or(SourceFormat::Qcow2);
        hv.delete_volume(pool, &naming::imported_marker_name(&h.image_id(), format))
            .await?;
        hv.delete_volume(pool, &image).await?;
        ctx.event(
            vm,
            EventType::Normal,
            "ImageRemoved",
            "Delete",
            format!(
                "Removed image {image} ({}) from pool {pool} on host {host}: no VirtualMachine uses it any more",
                h.url
            ),
        )
        .await;
    }
    Ok(())
}

/// Volumes ferry created for the VM: those recorded in status, plus the overlays its image disks
/// would have in the pool (in case it was interrupted between creating one and recording it).
pub(super) fn owned_volumes(vm: &VirtualMachine, pool: Option<&str>) -> Vec<(String, String)> {
    let ns = vm.namespace().unwrap_or_default();
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let mut out: std::collections::BTreeSet<(String, String)> = vm
        .status
        .as_ref()
        .map(|s| {
            s.disks
                .iter()
                .map(|d| (d.pool.clone(), d.volume.clone()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(pool) = pool {
        for d in vm.spec.disks.iter().filter(|d| d.has_overlay()) {
            let name = naming::overlay_volume_name(&ns, &vm.name_any(), &d.name, &uid);
            out.insert((pool.to_string(), name));
        }
    }
    out.into_iter().collect()
}

/// Whether the domain `uuid` on the host carries the metadata of the VM with UID `uid` (a host
/// without the domain: yes, there is nothing of anyone else's to spare).
async fn owned_by(hv: &dyn Hypervisor, uuid: &str, uid: &str) -> Result<bool> {
    Ok(match hv.lookup_domain(uuid).await? {
        None => true,
        Some(d) => [d.live.as_ref(), d.config.as_ref()]
            .into_iter()
            .flatten()
            .next()
            .is_some_and(|m| m.owner.uid == uid),
    })
}

/// Shut the guest down gracefully for deletion, forcing it off after the grace period.
pub(super) async fn stop_for_delete(
    vm: &VirtualMachine,
    hv: &dyn Hypervisor,
    uid: &str,
) -> Result<()> {
    let active = |d: &Option<DomainInfo>| d.as_ref().is_some_and(|d| d.state.is_active());
    if !active(&hv.lookup_domain(uid).await?) {
        return Ok(());
    }
    let grace = Duration::from_secs(vm.grace_seconds());
    if !grace.is_zero() {
        // A guest that ignores ACPI is forced off below.
        if hv.shutdown_domain(uid).await.is_ok() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if !active(&hv.lookup_domain(uid).await?) {
                    return Ok(());
                }
            }
        }
    }
    hv.destroy_domain(uid).await?;
    Ok(())
}
