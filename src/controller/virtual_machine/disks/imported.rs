//! A VM's `http:` disk waiting for its image: the imported image when the pool has it;
//! otherwise the import is started under the HostPool's policy, or its progress or failure is
//! reported.

use super::*;
use crate::api::virtual_machine::{HttpImage, SourceFormat};
use crate::controller::image_import;
use crate::plan::import_policy;

/// The golden image a disk downloads from a URL, if it is in the pool; otherwise the import is
/// started (or its progress or failure reported) and the VM waits. `dir` is the storage pool's
/// directory on the host.
pub(super) async fn imported_image(
    vm: &VirtualMachine,
    ctx: &Context,
    placed: &Placed,
    dir: &str,
    i: usize,
    h: &HttpImage,
) -> Result<VolumeInfo, Blocked> {
    let (hv, host) = (placed.hv.as_ref(), placed.name.as_str());
    let storage = &placed.pool.spec.storage;
    let pool = storage.pool.as_str();
    let lost = |e: HypervisorError| host_blocked(host, e, "looking up images", None);
    let format = h.format.unwrap_or(SourceFormat::Qcow2);
    let key = image_import::ImportKey::new(hv.uri(), dir, storage.is_shared(), &h.sha256, format)
        .in_archive(h.archive_member.as_deref());
    if let Some(v) = ctx.imports.lookup(hv, pool, &key).await.map_err(lost)? {
        return Ok(v);
    }
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
    let now = std::time::Instant::now();
    let source = image_import::source(
        &placed.pool.namespace().unwrap_or_default(),
        &placed.pool.name_any(),
        &h.url,
    );
    match ctx.imports.state(&key, &source, now) {
        Some(image_import::ImportState::Queued) => Err(importing(format!(
            "waiting for a slot (at most {} imports run at once)",
            ctx.imports.limit()
        ))),
        Some(image_import::ImportState::Running { bytes, total }) => Err(importing(format!(
            "{}downloading, {}",
            if format.is_converted() { "1/2 " } else { "" },
            image_import::progress(bytes, total)
        ))),
        Some(image_import::ImportState::Converting) => Err(importing(format!(
            "2/2 converting from {format} to qcow2 on the host"
        ))),
        Some(image_import::ImportState::Failed {
            message,
            kind,
            until,
        }) => {
            let (reason, fix) = match kind {
                image_import::FailureKind::Checksum => {
                    ("ChecksumMismatch", "fix the URL or checksum")
                }
                image_import::FailureKind::Refused => (
                    import_policy::IMPORT_REFUSED,
                    "use another URL, or have a platform admin change the HostPool's spec.imports",
                ),
                image_import::FailureKind::Archive => (
                    "ArchiveMemberRefused",
                    "fix http.archiveMember, the URL or the archive",
                ),
                image_import::FailureKind::Other => ("ImportFailed", "fix the URL or the server"),
            };
            Err(Blocked::new(
                VmPhase::Pending,
                reason,
                format!(
                    "importing spec.disks[{i}].http into pool {pool:?} on host {host} failed, nothing was kept: {message}; {fix} (ferry tries again in {}s)",
                    until.saturating_duration_since(now).as_secs()
                ),
                Retry::After(until.saturating_duration_since(now) + Duration::from_secs(1)),
            ))
        }
        // Finished between the look at the pool and now: look again shortly.
        Some(image_import::ImportState::Done) => Err(importing("finished, verifying".into())),
        // Never started here, or finished and since removed from the pool: start.
        None => {
            let policy = import_policy::Policy::of(
                &placed.pool.name_any(),
                &placed.pool.spec,
                ctx.imports.cluster_networks(),
                node_addresses(ctx),
            )
            .map_err(|m| {
                Blocked::new(
                    VmPhase::Pending,
                    import_policy::IMPORT_REFUSED,
                    format!("HostPool {}: {m}", placed.pool.name_any()),
                    Retry::After(RECHECK),
                )
            })?;
            let req = image_import::Request {
                uri: hv.uri().to_string(),
                pool: pool.to_string(),
                url: h.url.clone(),
                format,
                policy,
                opts: crate::hypervisor::ConnectOptions::default(),
            };
            ctx.imports.start(&ctx.hosts.connections, key, &source, req);
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

/// The addresses of the cluster's Nodes, which imports do not reach unless a pool allows them.
fn node_addresses(ctx: &Context) -> Vec<(std::net::IpAddr, String)> {
    ctx.caches
        .nodes
        .state()
        .iter()
        .flat_map(|n| {
            let name = n.name_any();
            n.status
                .iter()
                .flat_map(|s| s.addresses.iter().flatten())
                .filter_map(move |a| Some((a.address.parse().ok()?, name.clone())))
                .collect::<Vec<_>>()
        })
        .collect()
}
