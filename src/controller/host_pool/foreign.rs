//! Domains on a host that have no ferry metadata, read when the host is read (see `reading`):
//! described for adoption (see `candidates`), and the volumes they use kept so that no `volume:`
//! disk of a VirtualMachine names one (see [`crate::plan::volume_access`]). After a change on the
//! host only the foreign domains that are new or whose state changed are read again; all of them
//! at the periodic full reading.

use crate::api::HostPool;
use crate::hypervisor::{DomainInfo, Hypervisor};
use crate::plan::volume_access::{ForeignUse, foreign_volumes};

pub(super) use crate::controller::context::host_reads::Foreign;

/// Read every domain of `domains` without ferry metadata, running or only defined. One that is
/// gone since the listing is skipped; one that cannot be read makes the reading incomplete.
/// With `before` (the previous listing and what was read then), a domain listed then with the
/// same UUID and state and read then is not read again.
pub(super) async fn read(
    node: &str,
    hv: &dyn Hypervisor,
    domains: &[DomainInfo],
    before: Option<(&[DomainInfo], &Foreign)>,
) -> Foreign {
    let mut out = Foreign {
        complete: true,
        ..Foreign::default()
    };
    for d in domains
        .iter()
        .filter(|d| d.live.is_none() && d.config.is_none())
    {
        let unchanged = before.and_then(|(listed, read)| {
            listed
                .iter()
                .any(|l| l.name == d.name && l.uuid == d.uuid && l.state == d.state)
                .then(|| read.described.get(&d.name))
                .flatten()
        });
        if let Some(found) = unchanged {
            out.described.insert(d.name.clone(), found.clone());
            continue;
        }
        match hv.describe_domain(&d.name).await {
            Ok(Some(found)) => {
                out.described.insert(d.name.clone(), found);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(host = node, domain = %d.name, error = %e, "foreign domain not read");
                out.complete = false;
            }
        }
    }
    out
}

/// What the foreign domains attach or build on in `pool`'s storage. `None` when the reading is
/// incomplete: the previous one stands until a probe reads them all.
pub(super) fn uses(pool: &HostPool, node: &str, foreign: &Foreign) -> Option<Vec<ForeignUse>> {
    if !foreign.complete {
        return None;
    }
    let dir = pool.spec.storage.path.as_deref();
    let mut out = Vec::new();
    for (name, (described, _)) in &foreign.described {
        let mut volumes = foreign_volumes(&described.current, dir);
        if let Some(p) = &described.persistent {
            volumes.extend(foreign_volumes(p, dir));
        }
        volumes.sort_unstable();
        volumes.dedup();
        out.extend(volumes.into_iter().map(|volume| ForeignUse {
            volume,
            domain: name.clone(),
            host: node.to_string(),
        }));
    }
    Some(out)
}
