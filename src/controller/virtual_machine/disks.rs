//! The VM's disks on its host: overlays on golden images (local or imported from a URL), copies
//! of another VM's volume, existing volumes; what status records of them.

use super::*;
use crate::api::virtual_machine::{DiskStatus, ImageFormat};
use crate::api::{DiskClone, DiskSource, HostPool, VirtualMachine, VirtualMachineStatus, VmPhase};
use crate::controller::Context;
use crate::controller::cloud_init;
use crate::error::Result;
use crate::hypervisor::{Hypervisor, HypervisorError, VolumeInfo};
use crate::plan::definition::{self, ResolvedDisk};
use crate::plan::validate::ValidSpec;
use crate::plan::{clone, image_header, naming, volume_access};
use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use std::time::Duration;

mod imported;

use imported::imported_image;

/// Whether `vm`'s disks only name volumes they may use on `pool` (see [`volume_access::check`]).
/// Other VMs and pools are only looked at when a disk names a plain volume.
pub(super) fn check_access(
    vm: &VirtualMachine,
    pool: &HostPool,
    caches: &crate::controller::context::Caches,
    foreign_volumes: &crate::controller::context::ForeignVolumes,
) -> Result<(), String> {
    let storage = &pool.spec.storage;
    let (mut other_golden, mut neighbours, mut foreign) = (Vec::new(), Vec::new(), Vec::new());
    if vm.spec.disks.iter().any(|d| d.volume.is_some()) {
        foreign = foreign_volumes.on(storage);
        // The domain the VM takes over (or took) uses its volumes: whether it may is the claim's
        // question (the pool names the domain, its disks are the spec's).
        if let Some(a) = &vm.spec.adopt {
            foreign.retain(|f| !(f.domain == a.domain && f.host == a.host));
        }
        for f in foreign.iter().filter(|f| {
            vm.spec
                .disks
                .iter()
                .any(|d| d.volume.as_ref() == Some(&f.volume))
        }) {
            // The VM's message does not name them (see volume_access::check): the log does.
            tracing::debug!(vm = %vm.name_any(), volume = %f.volume, domain = %f.domain, host = %f.host,
                "a volume: disk names a volume a foreign domain uses");
        }
        let pools = caches.pools.state();
        let sharing = |p: &HostPool| volume_access::shares_storage(&p.spec.storage, storage);
        other_golden = pools
            .iter()
            .filter(|p| sharing(p))
            .flat_map(|p| p.spec.storage.images.iter().map(|i| i.name.clone()))
            .collect();
        neighbours = caches
            .vms
            .state()
            .iter()
            .filter(|o| o.metadata.uid != vm.metadata.uid)
            .filter(|o| caches.pool_of(o).is_some_and(|p| sharing(&p)))
            .map(|o| volume_access::Neighbour::of(o))
            .collect();
    }
    volume_access::check(
        &volume_access::Claimant::of(vm),
        &pool.name_any(),
        storage,
        &other_golden,
        &neighbours,
        &foreign,
    )
}

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
            let dir = hv.ensure_pool(&storage.pool, storage.path.as_deref())
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
            let mut disks = provision_disks(vm, valid, placed, &dir, st, ctx).await?;
            disks.extend(seed_disk);
            ctx.vm_runtime
                .remember_provisioned(&uid, vm.metadata.generation, &placed.name, &disks);
            disks
        }
    };
    // Recorded only once every disk exists (a volume rolled back while provisioning is never
    // taken for one that was made and lost), and also when the disks came from the cache: this
    // reconcile may have started from an object older than the status write that recorded them.
    record_disks(vm, st, &storage.pool, seed_volume.as_deref());
    Ok(disks)
}

/// Make sure every disk has its volume on the host, creating overlays for image disks.
/// Every golden image and volume is checked before anything is created (its header too, for the
/// format it is opened in), and overlays created in this call are removed again if a later one
/// fails: a failure leaves the host as it was. A disk status records as made for this VM is
/// never made again: when it is missing here, that is an error naming it. Status is not
/// written here: [`ensure`] records the disks once all of them exist.
async fn provision_disks(
    vm: &VirtualMachine,
    valid: &ValidSpec,
    placed: &Placed,
    dir: &str,
    st: &VirtualMachineStatus,
    ctx: &Context,
) -> Result<Vec<ResolvedDisk>, Blocked> {
    let hv = placed.hv.as_ref();
    let storage = &placed.pool.spec.storage;
    let pool = storage.pool.as_str();
    let host = placed.name.as_str();
    let ns = vm.namespace().unwrap_or_default();
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let phase = st.phase;
    let lost = |e: HypervisorError| host_blocked(host, e, "looking up volumes", phase);
    enum Plan {
        Ready(VolumeInfo, ImageFormat),
        Create {
            golden: VolumeInfo,
            backing_format: ImageFormat,
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
                Some(vol) => {
                    let format = volume_access::attached_format(d);
                    check_header(hv, pool, &vol.name, format, phase, host)
                        .await?
                        .map_err(|why| {
                            refused_image(format!(
                                "volume {v:?} (spec.disks[{i}].volume, format {format}) {why}; fix spec.disks[{i}].format or use another volume"
                            ))
                        })?;
                    Plan::Ready(vol, format)
                }
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
                    Some(vol) => Plan::Ready(vol, ImageFormat::Qcow2),
                    None => {
                        not_made_before(st, d, &name, pool, host)?;
                        let backing_format =
                            volume_access::backing_format(d, storage).ok_or_else(|| {
                                Blocked::new(
                                    VmPhase::Pending,
                                    volume_access::DISK_NOT_ALLOWED,
                                    format!(
                                        "spec.disks[{i}]: HostPool {} does not declare the image",
                                        placed.pool.name_any()
                                    ),
                                    Retry::After(RECHECK),
                                )
                            })?;
                        let golden = match source {
                            DiskSource::Http(h) => imported_image(vm, ctx, placed, dir, i, h).await?,
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
                        check_header(hv, pool, image, backing_format, phase, host)
                            .await?
                            .map_err(|why| {
                                refused_image(match source {
                                    DiskSource::Http(_) => format!(
                                        "the image spec.disks[{i}].http imported as {image} ({backing_format}) {why}"
                                    ),
                                    _ => format!(
                                        "golden image {image:?} (declared {backing_format} in HostPool {}) {why}; a platform admin must replace it or fix its format in spec.storage.images",
                                        placed.pool.name_any()
                                    ),
                                })
                            })?;
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
                            backing_format,
                            name,
                            capacity,
                        }
                    }
                }
            }
            Some(DiskSource::Clone(c)) => {
                let name = naming::overlay_volume_name(&ns, &vm.name_any(), &d.name, &uid);
                match hv.lookup_volume(pool, &name).await.map_err(lost)? {
                    Some(vol) => Plan::Ready(vol, ImageFormat::Qcow2),
                    None => {
                        not_made_before(st, d, &name, pool, host)?;
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
        let (vol, format) = match plan {
            Plan::Ready(v, format) => (v, format),
            Plan::Create { .. } | Plan::Copy { .. } => {
                let (made, name, from) = match plan {
                    Plan::Create {
                        golden,
                        backing_format,
                        name,
                        capacity,
                    } => (
                        hv.create_overlay(pool, &name, &golden, backing_format.as_str(), capacity)
                            .await,
                        name,
                        format!("image {:?}", golden.name),
                    ),
                    Plan::Copy { from, name } => (
                        copy_volume(&ctx.hosts.connections, hv, pool, &name, &from).await,
                        name,
                        format!("a copy of volume {:?}", from.name),
                    ),
                    Plan::Ready(..) => unreachable!("matched above"),
                };
                match made {
                    Ok(v) => {
                        created.push(name.clone());
                        (v, ImageFormat::Qcow2)
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
            path: vol.path,
            format: format.as_str().to_string(),
        });
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

/// Reason of a VM whose image or volume ferry will not open as declared.
pub(super) const IMAGE_REFUSED: &str = "ImageRefused";

/// Reason of a VM whose disk was made before and is not on its host now.
pub(super) const DISK_MISSING: &str = "DiskMissing";

fn refused_image(message: String) -> Blocked {
    Blocked::new(
        VmPhase::Pending,
        IMAGE_REFUSED,
        message,
        Retry::After(RECHECK),
    )
}

/// Whether volume `name` of `pool` may be opened as `format`: the outer error when the host
/// cannot be asked, the inner one saying what is wrong with the file.
async fn check_header(
    hv: &dyn Hypervisor,
    pool: &str,
    name: &str,
    format: ImageFormat,
    phase: Option<VmPhase>,
    host: &str,
) -> Result<Result<(), String>, Blocked> {
    if format == ImageFormat::Raw {
        return Ok(Ok(()));
    }
    let head = hv
        .read_volume_head(pool, name, image_header::HEAD_BYTES)
        .await
        .map_err(|e| host_blocked(host, e, "reading an image's header", phase))?;
    Ok(image_header::check(format, &head).map(|_| ()))
}

/// Disk `d`'s volume `name` is missing: fine when it was never made, an error when status says
/// it was (made on another host, or removed behind ferry's back). ferry never makes a VM's disk
/// twice: a new, empty one in its place would lose what the guest wrote.
fn not_made_before(
    st: &VirtualMachineStatus,
    d: &crate::api::virtual_machine::Disk,
    name: &str,
    pool: &str,
    host: &str,
) -> Result<(), Blocked> {
    match st
        .disks
        .iter()
        .find(|s| s.name == d.name && s.volume == name)
    {
        None => Ok(()),
        Some(rec) => Err(Blocked::new(
            VmPhase::Failed,
            DISK_MISSING,
            format!(
                "disk {} (volume {} in storage pool {:?}) was made for this VM before (status.disks) but is not in storage pool {pool:?} on host {host}: ferry never puts a new, empty disk in its place. Make that volume visible to host {host} (a pool's storage is shared unless it says spec.storage.shared: false), or bring back the host that has it; to start over with a fresh disk, delete and recreate the VM",
                d.name, rec.volume, rec.pool
            ),
            Retry::After(Duration::from_secs(60)),
        )),
    }
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
            let uid = crate::plan::naming::vm_domain_uuid(s);
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
