//! HA verdicts, as the HA controller last judged each host, for placement and the VM
//! controller.

use super::lock;
use crate::api::ha_policy::HostVerdict;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a host's HA verdict counts without being renewed (the HA controller renews it
/// every second).
pub const HA_VERDICT_TTL: Duration = Duration::from_secs(30);

/// What the HA controller judges and remembers one verdict for: today a host (its Node name),
/// whichever policy and pool judged it. Every map of HA memory and verdicts is keyed by this
/// type, so judging per (policy, pool, host) instead changes this type and its constructor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HaKey {
    host: String,
}

impl HaKey {
    /// The key of host (Node) `host`.
    pub fn host(host: &str) -> Self {
        HaKey {
            host: host.to_string(),
        }
    }
}

/// Verdicts per [`HaKey`], each with when it was last set.
#[derive(Default)]
pub struct HaVerdicts {
    verdicts: Mutex<HashMap<HaKey, (HostVerdict, Instant)>>,
}

impl HaVerdicts {
    /// The verdict for `key`, when an HAPolicy judges it (a verdict the HA controller has not
    /// renewed for [`HA_VERDICT_TTL`], say because its policy was deleted, no longer counts).
    pub fn get(&self, key: &HaKey) -> Option<HostVerdict> {
        lock(&self.verdicts)
            .get(key)
            .filter(|(_, at)| at.elapsed() < HA_VERDICT_TTL)
            .map(|(v, _)| *v)
    }

    /// The verdict of host `host` (see [`HaVerdicts::get`]).
    pub fn of_host(&self, host: &str) -> Option<HostVerdict> {
        self.get(&HaKey::host(host))
    }

    /// Record a verdict (the HA controller, on every tick).
    pub fn set(&self, key: HaKey, v: HostVerdict) {
        lock(&self.verdicts).insert(key, (v, Instant::now()));
    }
}
