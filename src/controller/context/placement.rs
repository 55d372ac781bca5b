//! Placements chosen but not yet visible in the VM cache, and the VMs admission control keeps
//! from being placed.

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
    /// VMs (by UID) that admission control in `Enforce` mode keeps from being placed, with why.
    admission_blocked: Mutex<HashMap<String, String>>,
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

    /// Why admission control keeps VM `uid` from being placed, if it does.
    pub fn admission_block(&self, uid: &str) -> Option<String> {
        lock(&self.admission_blocked).get(uid).cloned()
    }

    /// Set (or with `None` clear) the admission block of VM `uid` (the HA controller).
    pub fn set_admission_block(&self, uid: &str, why: Option<String>) {
        let mut m = lock(&self.admission_blocked);
        match why {
            Some(w) => m.insert(uid.to_string(), w),
            None => m.remove(uid),
        };
    }
}
