//! What the VM controller remembers about running VMs between reconciles, and what the HostPool
//! controller last reported.

use super::lock;
use crate::api::HostPoolStatus;
use crate::plan::definition::ResolvedDisk;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Per-VM memory of the VM controller.
#[derive(Default)]
pub struct VmRuntime {
    /// When ferry asked a VM's guest to shut down, by VM UID.
    stopping: Mutex<HashMap<String, Instant>>,
    /// Disks resolved for each VM (by UID), with the generation and host they were resolved for.
    provisioned: Mutex<HashMap<String, Provisioned>>,
    /// When each running VM's guest agent was last asked, by VM UID.
    agent_asked: Mutex<HashMap<String, Instant>>,
}

/// Disks resolved for one VM.
struct Provisioned {
    generation: Option<i64>,
    host: String,
    disks: Vec<ResolvedDisk>,
}

impl VmRuntime {
    /// Record that the guest of VM `uid` was asked to shut down now.
    pub fn stop_requested(&self, uid: &str) {
        lock(&self.stopping).insert(uid.to_string(), Instant::now());
    }

    /// How long ago the guest of VM `uid` was asked to shut down, if it was.
    pub fn stopping_for(&self, uid: &str) -> Option<Duration> {
        lock(&self.stopping).get(uid).map(Instant::elapsed)
    }

    /// Forget a shutdown request and when the guest agent was asked (the domain stopped,
    /// started or was forced off).
    pub fn stopped(&self, uid: &str) {
        lock(&self.stopping).remove(uid);
        lock(&self.agent_asked).remove(uid);
    }

    /// Whether the guest agent of VM `uid` was not asked in this process within `every`.
    pub fn agent_due(&self, uid: &str, every: Duration) -> bool {
        lock(&self.agent_asked)
            .get(uid)
            .is_none_or(|at| at.elapsed() >= every)
    }

    /// The guest agent of VM `uid` was asked now.
    pub fn agent_asked(&self, uid: &str) {
        lock(&self.agent_asked).insert(uid.to_string(), Instant::now());
    }

    /// The disks resolved for VM `uid` at `generation` on `host`, if still known.
    pub fn provisioned(
        &self,
        uid: &str,
        generation: Option<i64>,
        host: &str,
    ) -> Option<Vec<ResolvedDisk>> {
        lock(&self.provisioned)
            .get(uid)
            .filter(|p| p.generation == generation && p.host == host)
            .map(|p| p.disks.clone())
    }

    /// Remember the disks resolved for VM `uid`.
    pub fn remember_provisioned(
        &self,
        uid: &str,
        generation: Option<i64>,
        host: &str,
        disks: &[ResolvedDisk],
    ) {
        lock(&self.provisioned).insert(
            uid.to_string(),
            Provisioned {
                generation,
                host: host.to_string(),
                disks: disks.to_vec(),
            },
        );
    }

    /// Forget what was resolved for VM `uid` (after a failure, or when it is deleted).
    pub fn forget_provisioned(&self, uid: &str) {
        lock(&self.provisioned).remove(uid);
    }
}

/// The HostPool statuses this process wrote last, by pool UID: the cache may not show a write
/// yet when a wake-up follows it at once.
#[derive(Default)]
pub struct PoolReports {
    last: Mutex<HashMap<String, HostPoolStatus>>,
}

impl PoolReports {
    /// The status last written for pool `uid`.
    pub fn last(&self, uid: &str) -> Option<HostPoolStatus> {
        lock(&self.last).get(uid).cloned()
    }

    /// Remember the status written for pool `uid`.
    pub fn wrote(&self, uid: &str, st: HostPoolStatus) {
        lock(&self.last).insert(uid.to_string(), st);
    }

    /// Keep only the statuses of the pools (by UID) `keep` accepts (the others are gone).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.last).retain(|uid, _| keep(uid));
    }
}
