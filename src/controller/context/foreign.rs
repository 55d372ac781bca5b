//! The volumes libvirt domains ferry does not manage use, per host of each pool, as the HostPool
//! probe last read them: what a `volume:` disk may not name (see
//! [`crate::plan::volume_access`]).

use super::ha::PoolHost;
use super::lock;
use crate::api::host_pool::StorageSpec;
use crate::plan::volume_access::{ForeignUse, shares_storage};
use std::collections::HashMap;
use std::sync::Mutex;

/// Per host of each pool: the pool's storage and the volumes foreign domains use there.
#[derive(Default)]
pub struct ForeignVolumes {
    hosts: Mutex<HashMap<PoolHost, (StorageSpec, Vec<ForeignUse>)>>,
}

impl ForeignVolumes {
    /// What `host`'s foreign domains use on `storage`, as read just now.
    pub fn record(&self, host: &PoolHost, storage: &StorageSpec, uses: Vec<ForeignUse>) {
        let mut hosts = lock(&self.hosts);
        if uses.is_empty() {
            hosts.remove(host);
        } else {
            hosts.insert(host.clone(), (storage.clone(), uses));
        }
    }

    /// The volumes foreign domains use on storage `storage` shares, on any host of any pool.
    pub fn on(&self, storage: &StorageSpec) -> Vec<ForeignUse> {
        lock(&self.hosts)
            .values()
            .filter(|(s, _)| shares_storage(s, storage))
            .flat_map(|(_, uses)| uses.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(pool: &str) -> StorageSpec {
        serde_json::from_value(serde_json::json!({"pool": pool})).expect("storage")
    }

    fn host(pool: &str, node: &str) -> PoolHost {
        PoolHost {
            namespace: "ns".into(),
            pool: pool.into(),
            node: node.into(),
        }
    }

    #[test]
    fn kept_per_host_and_found_by_storage() {
        let f = ForeignVolumes::default();
        let used = |v: &str, node: &str| ForeignUse {
            volume: v.into(),
            domain: "legacy".into(),
            host: node.into(),
        };
        f.record(
            &host("a", "h1"),
            &storage("ferry"),
            vec![used("x.img", "h1")],
        );
        f.record(
            &host("b", "h2"),
            &storage("other"),
            vec![used("y.img", "h2")],
        );
        assert_eq!(f.on(&storage("ferry")), vec![used("x.img", "h1")]);
        // Read again: the domain is gone.
        f.record(&host("a", "h1"), &storage("ferry"), vec![]);
        assert!(f.on(&storage("ferry")).is_empty());
        assert_eq!(f.on(&storage("other")).len(), 1);
    }
}
