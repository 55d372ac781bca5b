//! The VM's disks on its host: overlays on golden images (local or imported from a URL), copies
//! of another VM's volume, existing volumes; what status records of them.

use super::*;
use crate::api::virtual_machine::{DiskStatus, HttpImage};
use crate::api::{DiskClone, DiskSource, VirtualMachine, VirtualMachineStatus, VmPhase};
use crate::controller::Context;
use crate::controller::cloud_init;
use crate::controller::image_import;
use crate::error::Result;
use crate::hypervisor::{Hypervisor, HypervisorError, VolumeInfo};
use crate::plan::definition::{self, ResolvedDisk};
use crate::plan::validate::ValidSpec;
use crate::plan::{clone, naming};
use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use std::time::Duration;

/// The VM's disks on its host, created where missing; looked up and created once per spec
/// generation and host (later reconciles reuse the result; any failure further on forgets it, so
/// a volume removed behind ferry's back is noticed at the next attempt). Records them in `st`.
pub(super) async fn ensure(
    vm: &VirtualMachine,
    valid: &ValidSpec,
    seed: Option<&Seed>,
    placed: &Placed,
    ctx: &Context,
    st: &mut VirtualMachineStatus,
) -> Result<Vec<ResolvedDisk>, Blocked> {
    let hv = placed.hv.as_ref();
    let pool = &placed.pool;
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let prior_phase = st.phase;
    let host_error = placed.blocked(prior_phase);
    let storage = &pool.spec.storage;
    // Disks are looked up and created once per spec generation and host; later reconciles reuse
    // the result (any failure further on forgets it, so a volume removed behind ferry's back is
    // noticed at the next attempt).
    let seed_volume = seed.as_ref().map(|s| cloud_init::volume_name(vm, s));
    let seed_path_matches = |disks: &[ResolvedDisk]| {
        let cached = disks.iter().find(|d| d.name == definition::SEED_DISK);
        match (&seed_volume, cached) {
            (None, None) => true,
            (Some(v), Some(d)) => d.path.ends_with(&format!("/{v}")),
            _ => false,
        }
    };
    let disks = match ctx
        .vm_runtime
        .provisioned(&uid, vm.metadata.generation, &placed.name)
    {
        Some(disks) if seed_path_matches(&disks) => disks,
        _ => {
            hv.ensure_pool(&storage.pool, storage.path.as_deref())
            .await
            .map_err(|e| match e {
                e if e.is_connection_lost() => host_error(e, "preparing storage"),
                e => Blocked::new(
                    VmPhase::Pending,
                    "StoragePoolUnavailable",
                    format!(
                        "storage pool {:?} is not usable on host {}: {e}; define it there or set spec.storage.path in HostPool {}",
                        storage.pool, placed.name, pool.name_any()
                    ),
                    Retry::Backoff,
                ),
            })?;

            // The seed first: it is complete or absent, and recorded in status at once, so a
            // later failure leaves nothing unowned.
            let seed_disk = match (&seed, &seed_volume) {
                (Some(seed), Some(name)) => {
                    let (vol, created) =
                        cloud_init::ensure_volume(hv, &storage.pool, name, seed)
                            .await
                            .map_err(|e| match e {
                                e if e.is_connection_lost() => {
                                    host_error(e, "uploading the cloud-init seed")
                                }
                                e => Blocked::new(
                                    VmPhase::Pending,
                                    "SeedUploadFailed",
                                    format!(
                                        "storing the cloud-init seed in pool {:?} on host {} failed: {e}",
                                        storage.pool, placed.name
                                    ),
                                    Retry::Backoff,
                                ),
                            })?;
                    cloud_init::record(st, Some((&storage.pool, &vol.name)));
                    if created {
                        ctx.event(
                            vm,
                            EventType::Normal,
                            "SeedCreated",
                            "Provision",
                            format!(
                                "Stored the cloud-init seed as {} in pool {} on host {}",
                                vol.name, storage.pool, placed.name
                            ),
                        )
                        .await;
                    }
                    Some(ResolvedDisk {
                        name: definition::SEED_DISK.to_string(),
                        path: vol.path,
                        format: "raw".to_string(),
                    })
                }
                _ => {
                    cloud_init::record(st, None);
                    None
                }
            };
            let mut disks =
                provision_disks(vm, valid, hv, &storage.pool, &placed.name, st, ctx).await?;
            disks.extend(seed_disk);
            ctx.vm_runtime
                .remember_provisioned(&uid, vm.metadata.generation, &placed.name, &disks);
            disks
        }
    };
    // Record what exists also when the disks came from the cache: this reconcile may have
    // started from an object older than the status write that recorded them.
    record_disks(vm, st, &storage.pool, seed_volume.as_deref());
    Ok(disks)
}

/// Make sure every disk has its volume on the host, creating overlays for image disks.
/// Every golden image and volume is checked before anything is created, and overlays created in
/// this call are removed again if a later one fails: a failure leaves the host as it was.
pub(super) async fn provision_disks(
    vm: &VirtualMachine,
    valid: &ValidSpec,
    hv: &dyn Hypervisor,
    pool: &str,
    host: &str,
    st: &mut VirtualMachineStatus,
    ctx: &Context,
) -> Result<Vec<ResolvedDisk>, Blocked> {
    let ns = vm.namespace().unwrap_or_default();
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let lost = |e: HypervisorError| host_blocked(host, e, "looking up volumes", st.phase);
    enum Plan {
        Ready(VolumeInfo),
        Create {
            golden: VolumeInfo,
            name: String,
            capacity: u64,
        },
        Copy {
            from: VolumeInfo,
            name: String,
        },
    }
    let mut plans = Vec::new();
    for (i, d) in vm.spec.disks.iter().enumerate() {
        let plan = match d.source() {
            Some(DiskSource::Volume(v)) => match hv.lookup_volume(pool, v).await.map_err(lost)? {
                Some(vol) => Plan::Ready(vol),
                None => {
                    return Err(Blocked::new(
                        VmPhase::Pending,
                        "VolumeNotFound",
                        format!(
                            "volume {v:?} (spec.disks[{i}].volume) does not exist in storage pool {pool:?} on host {host}: create it or fix the spec"
                        ),
                        Retry::Backoff,
                    ));
                }
            },
            Some(source @ (DiskSource::Image(_) | DiskSource::Http(_))) => {
                let name = naming::overlay_volume_name(&ns, &vm.name_any(), &d.name, &uid);
                match hv.lookup_volume(pool, &name).await.map_err(lost)? {
                    Some(vol) => Plan::Ready(vol),
                    None => {
                        let golden = match source {
                            DiskSource::Http(h) => imported_image(vm, ctx, hv, pool, host, i, h).await?,
                            DiskSource::Image(image) => hv.lookup_volume(pool, image).await.map_err(lost)?.ok_or_else(|| {
                                Blocked::new(
                                    VmPhase::Pending,
                                    "ImageNotFound",
                                    format!("golden image {image:?} (spec.disks[{i}].image) is not in storage pool {pool:?} on host {host}: upload it (virsh vol-upload) or fix the spec"),
                                    Retry::Backoff,
                                )
                            })?,
                            DiskSource::Volume(_) | DiskSource::Clone(_) => unreachable!("matched above"),
                        };
                        let image = golden.name.as_str();
                        let wanted = valid
                            .disk_sizes
                            .iter()
                            .find(|(n, _)| n == &d.name)
                            .map(|(_, s)| *s);
                        if let Some(w) = wanted
                            && w < golden.capacity
                        {
                            return Err(Blocked::new(
                                VmPhase::Failed,
                                "InvalidSpec",
                                format!(
                                    "fix the spec: spec.disks[{i}].size {} is smaller than image {image:?} ({} bytes)",
                                    d.size.as_deref().unwrap_or_default(),
                                    golden.capacity
                                ),
                                Retry::OnChange,
                            ));
                        }
                        let capacity = wanted.unwrap_or(golden.capacity);
                        Plan::Create {
                            golden,
                            name,
                            capacity,
                        }
                    }
                }
            }
            Some(DiskSource::Clone(c)) => {
                let name = naming::overlay_volume_name(&ns, &vm.name_any(), &d.name, &uid);
                match hv.lookup_volume(pool, &name).await.map_err(lost)? {
                    Some(vol) => Plan::Ready(vol),
                    None => {
                        let from = clone_source(vm, ctx, hv, pool, host, i, c).await?;
                        Plan::Copy { from, name }
                    }
                }
            }
            None => {
                return Err(Blocked::new(
                    VmPhase::Failed,
                    "InvalidSpec",
                    format!(
                        "fix the spec: spec.disks[{i}] needs exactly one of image, volume, http or clone"
                    ),
                    Retry::OnChange,
                ));
            }
        };
        plans.push(plan);
    }
    let mut created: Vec<String> = Vec::new();
    let mut resolved = Vec::new();
    for (d, plan) in vm.spec.disks.iter().zip(plans) {
        let vol = match plan {
            Plan::Ready(v) => v,
            Plan::Create { .. } | Plan::Copy { .. } => {
                let (made, name, from) = match plan {
                    Plan::Create {
                        golden,
                        name,
                        capacity,
                    } => (
                        hv.create_overlay(pool, &name, &golden, capacity).await,
                        name,
                        format!("image {:?}", golden.name),
                    ),
                    Plan::Copy { from, name } => (
                        copy_volume(&ctx.hosts.connections, hv, pool, &name, &from).await,
                        name,
                        format!("a copy of volume {:?}", from.name),
                    ),
                    Plan::Ready(_) => unreachable!("matched above"),
                };
                match made {
                    Ok(v) => {
                        created.push(name.clone());
                        v
                    }
                    Err(e) => {
                        for c in &created {
                            if let Err(err) = hv.delete_volume(pool, c).await {
                                tracing::warn!(volume = %c, error = %err, "could not roll back overlay");
                            }
                        }
                        return Err(if e.is_connection_lost() {
                            host_blocked(host, e, "creating disks", st.phase)
                        } else {
                            Blocked::new(
                                VmPhase::Pending,
                                "DiskCreateFailed",
                                format!(
                                    "creating disk {} from {from} on host {host} failed: {e}",
                                    d.name
                                ),
                                Retry::Backoff,
                            )
                        });
                    }
                }
            }
        };
        resolved.push(ResolvedDisk {
            name: d.name.clone(),
            path: vol.path.clone(),
            format: vol.format.clone(),
        });
        if d.has_overlay()
            && !st
                .disks
                .iter()
                .any(|s| s.name == d.name && s.volume == vol.name)
        {
            st.disks.push(DiskStatus {
                name: d.name.clone(),
                pool: pool.to_string(),
                volume: vol.name.clone(),
            });
        }
    }
    for c in &created {
        ctx.event(
            vm,
            EventType::Normal,
            "DiskCreated",
            "Provision",
            format!("Created disk {c} in pool {pool} on host {host}"),
        )
        .await;
    }
    Ok(resolved)
}

/// The volume a clone disk copies, when the copy can be made now (see [`clone::decide`]).
pub(super) async fn clone_source(
    vm: &VirtualMachine,
    ctx: &Context,
    hv: &dyn Hypervisor,
    pool: &str,
    host: &str,
    i: usize,
    c: &DiskClone,
) -> Result<VolumeInfo, Blocked> {
    let ns = vm.namespace().unwrap_or_default();
    let source = ctx
        .caches
        .vms
        .get(&ObjectRef::new(&c.virtual_machine).within(&ns));
    let lost = |e: HypervisorError| host_blocked(host, e, "looking up the clone's source", None);
    // libvirt can say whether the source runs when it is on this host.
    let active = match source.as_deref() {
        Some(s) if s.status.as_ref().and_then(|st| st.host.as_deref()) == Some(host) => {
            let uid = s.metadata.uid.clone().unwrap_or_default();
            Some(
                hv.lookup_domain(&uid)
                    .await
                    .map_err(lost)?
                    .is_some_and(|d| d.state.is_active()),
            )
        }
        _ => None,
    };
    let wait = |reason: &'static str, message: String| {
        Blocked::new(
            VmPhase::Pending,
            reason,
            format!("spec.disks[{i}].clone: {message}"),
            Retry::After(Duration::from_secs(10)),
        )
    };
    match clone::decide(c, &vm.spec.host_pool, pool, source.as_deref(), active) {
        clone::CloneDecision::Copy { volume } => hv
            .lookup_volume(pool, &volume)
            .await
            .map_err(lost)?
            .ok_or_else(|| {
                wait(
                    clone::SOURCE_NOT_FOUND,
                    format!("volume {volume:?} of VirtualMachine {:?} is not in storage pool {pool:?} on host {host}", c.virtual_machine),
                )
            }),
        clone::CloneDecision::Wait { reason, message } => Err(wait(reason, message)),
    }
}

/// How long copying one disk may take.
pub(super) const COPY_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Copy `from` into a new volume `name`, on a connection of its own: the copy takes as long as
/// the disk is large, and the shared connection must keep answering meanwhile.
pub(super) async fn copy_volume(
    hosts: &crate::hypervisor::HostConnections,
    hv: &dyn Hypervisor,
    pool: &str,
    name: &str,
    from: &VolumeInfo,
) -> std::result::Result<VolumeInfo, HypervisorError> {
    let opts = crate::hypervisor::ConnectOptions {
        call_timeout: COPY_TIMEOUT,
        ..crate::hypervisor::ConnectOptions::default()
    };
    let own = hosts.dedicated(hv.uri(), &opts).await?;
    let copied = own.clone_volume(pool, name, from).await;
    own.close().await;
    copied
}

/// Make status list the VM's overlays and its current seed (entries are only ever added here).
pub(super) fn record_disks(
    vm: &VirtualMachine,
    st: &mut VirtualMachineStatus,
    pool: &str,
    seed_volume: Option<&str>,
) {
    let ns = vm.namespace().unwrap_or_default();
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    for d in vm.spec.disks.iter().filter(|d| d.has_overlay()) {
        let volume = naming::overlay_volume_name(&ns, &vm.name_any(), &d.name, &uid);
        if !st
            .disks
            .iter()
            .any(|s| s.name == d.name && s.volume == volume)
        {
            st.disks.push(DiskStatus {
                name: d.name.clone(),
                pool: pool.to_string(),
                volume,
            });
        }
    }
    cloud_init::record(st, seed_volume.map(|v| (pool, v)));
}

/// The golden image a disk downloads from a URL, if it is in the pool; otherwise the import is
/// started (or its progress or failure reported) and the VM waits.
pub(super) async fn imported_image(
    vm: &VirtualMachine,
    ctx: &Context,
    hv: &dyn Hypervisor,
    pool: &str,
    host: &str,
    i: usize,
    h: &HttpImage,
) -> Result<VolumeInfo, Blocked> {
    let lost = |e: HypervisorError| host_blocked(host, e, "looking up images", None);
    if let Some(v) = image_import::lookup(hv, pool, &h.sha256)
        .await
        .map_err(lost)?
    {
        return Ok(v);
    }
    let key = image_import::ImportKey {
        uri: hv.uri().to_string(),
        pool: pool.to_string(),
        sha256: h.sha256.to_ascii_lowercase(),
    };
    let importing = |progress: String| {
        Blocked::new(
            VmPhase::Provisioning,
            "ImportingImage",
            format!(
                "importing {} (spec.disks[{i}].http) into pool {pool:?} on host {host}: {progress}",
                h.url
            ),
            Retry::After(Duration::from_secs(5)),
        )
    };
    match image_import::take_state(&key) {
        Some(image_import::ImportState::Running { bytes, total }) => {
            Err(importing(image_import::progress(bytes, total)))
        }
        Some(image_import::ImportState::Failed { message, checksum }) => {
            ctx.event(
                vm,
                EventType::Warning,
                if checksum {
                    "ChecksumMismatch"
                } else {
                    "ImportFailed"
                },
                "Import",
                message.clone(),
            )
            .await;
            Err(Blocked::new(
                VmPhase::Pending,
                if checksum {
                    "ChecksumMismatch"
                } else {
                    "ImportFailed"
                },
                format!(
                    "importing spec.disks[{i}].http into pool {pool:?} on host {host} failed, nothing was kept: {message}; fix the URL or checksum (ferry retries with backoff)"
                ),
                Retry::Backoff,
            ))
        }
        // Finished between the look at the pool and now: look again shortly.
        Some(image_import::ImportState::Done) => Err(importing("finished, verifying".into())),
        // Never started here, or finished and since removed from the pool: start.
        None => {
            image_import::start(
                &ctx.hosts.connections,
                key,
                h.url.clone(),
                crate::hypervisor::ConnectOptions::default(),
            );
            ctx.event(
                vm,
                EventType::Normal,
                "ImportStarted",
                "Import",
                format!("Importing {} into pool {pool} on host {host}", h.url),
            )
            .await;
            Err(importing("started".to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_are_recorded_once_and_only_for_image_disks() {
        let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "apps", "uid": "0b6f1b7e-1111-2222-3333-444455556666"},
            "spec": {"hostPool": "p", "cpu": {"cores": 1}, "memory": "256Mi",
                     "disks": [{"name": "root", "image": "tiny.qcow2"}, {"name": "data", "volume": "v1"}]}
        }))
        .expect("valid VM");
        let mut st = VirtualMachineStatus::default();
        record_disks(&vm, &mut st, "images", None);
        record_disks(&vm, &mut st, "images", None);
        assert_eq!(st.disks.len(), 1, "{:?}", st.disks);
        assert_eq!(st.disks[0].name, "root");
        assert_eq!(st.disks[0].pool, "images");
        assert_eq!(
            st.disks[0].volume,
            naming::overlay_volume_name(
                "apps",
                "web",
                "root",
                "0b6f1b7e-1111-2222-3333-444455556666"
            )
        );
    }
}
