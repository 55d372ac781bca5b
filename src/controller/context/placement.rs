//! Placements chosen but not yet visible in the VM cache, and the VMs admission control keeps
//! from being placed.

use super::ha::PolicyPool;
use super::lock;
use crate::plan::placement::Placed;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Placement in flight.
#[derive(Default)]
pub struct Placement {
    /// Placements chosen but not yet seen in the VM cache, by VM UID; held under this lock while
    /// a host is chosen, so VMs placed at the same time see each other.
    placing: Mutex<HashMap<String, Placed>>,
    /// VMs (by UID) that admission control in `Enforce` mode keeps from being placed, with why,
    /// per (HAPolicy, HostPool) that blocks them: one policy's verdict never clears or outlives
    /// another's, and a policy or pool that is gone blocks nothing.
    admission_blocked: Mutex<HashMap<PolicyPool, HashMap<String, String>>>,
}

impl Placement {
    /// The placements in flight, locked while a host is chosen.
    pub fn in_flight(&self) -> MutexGuard<'_, HashMap<String, Placed>> {
        lock(&self.placing)
    }

    /// Drop the placement in flight of VM `uid` (not recorded, or the VM is gone).
    pub fn forget(&self, uid: &str) {
        lock(&self.placing).remove(uid);
    }

    /// Why admission control keeps VM `uid` from being placed, if any policy does (the first
    /// by policy and pool).
    pub fn admission_block(&self, uid: &str) -> Option<String> {
        let blocked = lock(&self.admission_blocked);
        let mut owners: Vec<&PolicyPool> = blocked.keys().collect();
        owners.sort();
        owners
            .into_iter()
            .find_map(|o| blocked.get(o).and_then(|b| b.get(uid)).cloned())
    }

    /// The VMs (by UID, with why) that `owner`'s admission control (an HAPolicy's, for one of
    /// its pools) keeps from being placed now, replacing what it said before (the HA
    /// controller, on every tick).
    pub fn set_admission_blocks(&self, owner: PolicyPool, blocks: HashMap<String, String>) {
        let mut m = lock(&self.admission_blocked);
        if blocks.is_empty() {
            m.remove(&owner);
        } else {
            m.insert(owner, blocks);
        }
    }

    /// Keep only the admission blocks of the owners `keep` accepts (the others are gone).
    pub fn retain_admission_blocks(&self, keep: impl Fn(&PolicyPool) -> bool) {
        lock(&self.admission_blocked).retain(|o, _| keep(o));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(policy: &str) -> PolicyPool {
        PolicyPool::new("ns", "lab", policy)
    }

    #[test]
    fn one_policy_never_clears_another_policys_block() {
        let p = Placement::default();
        let block = |why: &str| HashMap::from([("vm".to_string(), why.to_string())]);
        p.set_admission_blocks(owner("a"), block("a says no"));
        // Policy b covers the VM too and has room: it does not lift a's block.
        p.set_admission_blocks(owner("b"), HashMap::new());
        assert_eq!(p.admission_block("vm").as_deref(), Some("a says no"));
        p.set_admission_blocks(owner("b"), block("b says no"));
        assert_eq!(p.admission_block("vm").as_deref(), Some("a says no"));
        // Policy a is deleted: only b's block is left.
        p.retain_admission_blocks(|o| o.policy != "a");
        assert_eq!(p.admission_block("vm").as_deref(), Some("b says no"));
        p.set_admission_blocks(owner("b"), HashMap::new());
        assert_eq!(p.admission_block("vm"), None);
    }
}
