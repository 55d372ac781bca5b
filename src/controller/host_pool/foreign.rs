//! The volumes libvirt domains ferry does not manage use on a host, read at each probe so that
//! no `volume:` disk of a VirtualMachine names one (see [`crate::plan::volume_access`]).

use crate::api::HostPool;
use crate::hypervisor::{DomainInfo, Hypervisor};
use crate::plan::volume_access::{ForeignUse, foreign_volumes};

/// What the host's domains without ferry metadata attach or build on in the pool's storage,
/// running or only defined. `None` when one of them could not be read: the previous reading
/// stands until a probe reads them all.
pub(super) async fn read(
    pool: &HostPool,
    node: &str,
    hv: &dyn Hypervisor,
    domains: &[DomainInfo],
) -> Option<Vec<ForeignUse>> {
    let dir = pool.spec.storage.path.as_deref();
    let mut out = Vec::new();
    for d in domains
        .iter()
        .filter(|d| d.live.is_none() && d.config.is_none())
    {
        let described = match hv.describe_domain(&d.name).await {
            Ok(Some((described, _))) => described,
            // Gone since the listing: it uses nothing any more.
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(host = node, domain = %d.name, error = %e, "foreign domain not read");
                return None;
            }
        };
        let mut volumes = foreign_volumes(&described.current, dir);
        if let Some(p) = &described.persistent {
            volumes.extend(foreign_volumes(p, dir));
        }
        volumes.sort_unstable();
        volumes.dedup();
        out.extend(volumes.into_iter().map(|volume| ForeignUse {
            volume,
            domain: d.name.clone(),
            host: node.to_string(),
        }));
    }
    Some(out)
}
