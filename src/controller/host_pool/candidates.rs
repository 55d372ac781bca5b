//! Domains made outside ferry that a HostPool's `spec.adoption.domains` names: read from the
//! host and described in the host's status entry. Reading them changes nothing on the host.

use crate::api::HostPool;
use crate::api::host_pool::AdoptionCandidate;
use crate::hypervisor::{DomainInfo, Hypervisor};
use crate::plan::adoption::{self, PoolView};

/// At most this many candidates per host are described.
pub(super) const MAX_PER_HOST: usize = 32;

/// The host's domains without ferry metadata that the pool names, sorted by name, each as ferry
/// would adopt it. A domain that cannot be read right now is left out until the next probe.
pub(super) async fn describe(
    pool: &HostPool,
    hv: &dyn Hypervisor,
    domains: &[DomainInfo],
) -> Vec<AdoptionCandidate> {
    let patterns = match &pool.spec.adoption {
        Some(a) if !a.domains.is_empty() => &a.domains,
        _ => return Vec::new(),
    };
    let mut names: Vec<&str> = domains
        .iter()
        .filter(|d| d.live.is_none() && d.config.is_none())
        .filter(|d| adoption::allowed(patterns, &d.name))
        .map(|d| d.name.as_str())
        .collect();
    names.sort_unstable();
    names.truncate(MAX_PER_HOST);
    if names.is_empty() {
        return Vec::new();
    }
    let storage = &pool.spec.storage;
    let storage_dir = match &storage.path {
        Some(p) => Some(p.clone()),
        // Only looks the pool up (and starts it when it is stopped): no path, nothing defined.
        None => hv.ensure_pool(&storage.pool, None).await.ok(),
    };
    let golden_images: Vec<String> = storage.images.iter().map(|i| i.name.clone()).collect();
    let boot_dirs = pool
        .spec
        .boot
        .as_ref()
        .map(|b| b.directories.clone())
        .unwrap_or_default();
    let view = PoolView {
        storage_dir: storage_dir.as_deref(),
        golden_images: &golden_images,
        boot_dirs: &boot_dirs,
    };
    let mut out = Vec::new();
    for name in names {
        match hv.describe_domain(name).await {
            Ok(Some((described, state))) => {
                out.push(adoption::candidate(&described, state, &view));
            }
            // Gone since the listing.
            Ok(None) => {}
            Err(e) => tracing::warn!(domain = name, error = %e, "reading an adoption candidate"),
        }
    }
    out
}
