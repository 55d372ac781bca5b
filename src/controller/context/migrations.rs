//! Migration bookkeeping: the slots migrations admitted in this process hold, the migration jobs
//! running in it, and the evacuation migrations created lately.

use super::lock;
use crate::hypervisor::JobProgress;
use crate::plan::migration::Active;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A migration just created is not created again while the cache may not show it yet.
const CREATED_RECENTLY: Duration = Duration::from_secs(30);

/// How long a released slot is remembered: the cache may show its migration holding it until
/// the watch delivers the final status, normally within milliseconds.
const RELEASED_RECENTLY: Duration = Duration::from_secs(60);

/// Migrations admitted and running in this process.
#[derive(Default)]
pub struct MigrationBook {
    /// Migration slots taken by migrations admitted in this process, by migration UID.
    slots: Mutex<HashMap<String, Active>>,
    /// Migrations running in this process, by migration UID.
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    /// Migrations whose slot was released here lately, by migration UID, with when.
    released: Mutex<HashMap<String, Instant>>,
    /// Evacuation migrations created lately, by VM UID (until the cache shows them).
    evacuations_created: Mutex<HashMap<String, Instant>>,
    /// Signalled when a slot is released, so that waiting migrations are looked at again at once
    /// rather than at their next periodic check.
    pub slot_freed: Arc<tokio::sync::Notify>,
}

impl MigrationBook {
    /// The slots, locked while a migration is admitted, so that migrations admitted at the same
    /// time see each other.
    pub fn slots(&self) -> MutexGuard<'_, HashMap<String, Active>> {
        lock(&self.slots)
    }

    /// Record the slot migration `uid` holds.
    pub fn hold_slot(&self, uid: &str, slot: Active) {
        lock(&self.slots).insert(uid.to_string(), slot);
        lock(&self.released).remove(uid);
    }

    /// Free the slot of migration `uid` (if it held one) and wake the migrations waiting for one.
    /// The release is remembered for a while, so that the cache's older copy of the migration
    /// (still `Scheduled` or `Running`) does not count as holding the slot.
    pub fn release_slot(&self, uid: &str) {
        let held = lock(&self.slots).remove(uid).is_some();
        {
            let mut released = lock(&self.released);
            released.retain(|_, at| at.elapsed() < RELEASED_RECENTLY);
            released.insert(uid.to_string(), Instant::now());
        }
        if held {
            self.slot_freed.notify_one();
        }
    }

    /// Whether migration `uid` released its slot here lately (and has not taken one again).
    pub fn released_lately(&self, uid: &str) -> bool {
        lock(&self.released)
            .get(uid)
            .is_some_and(|at| at.elapsed() < RELEASED_RECENTLY)
    }

    /// The job of migration `uid`, when it runs in this process.
    pub fn job(&self, uid: &str) -> Option<Arc<Job>> {
        lock(&self.jobs).get(uid).cloned()
    }

    /// Record a job started (or adopted) for migration `uid`.
    pub fn add_job(&self, uid: &str, job: Arc<Job>) {
        lock(&self.jobs).insert(uid.to_string(), job);
    }

    /// Forget the job of migration `uid`.
    pub fn remove_job(&self, uid: &str) {
        lock(&self.jobs).remove(uid);
    }

    /// Note that an evacuation migration of VM `vm_uid` is being created; `false` when one was
    /// created in the last 30 s (the cache may not show it yet).
    pub fn evacuation_created(&self, vm_uid: &str) -> bool {
        let mut recent = lock(&self.evacuations_created);
        recent.retain(|_, at| at.elapsed() < CREATED_RECENTLY);
        if recent.contains_key(vm_uid) {
            return false;
        }
        recent.insert(vm_uid.to_string(), Instant::now());
        true
    }

    /// The evacuation migration of VM `vm_uid` could not be created after all.
    pub fn evacuation_not_created(&self, vm_uid: &str) {
        lock(&self.evacuations_created).remove(vm_uid);
    }
}

/// A migration running in this process.
#[derive(Default)]
pub struct Job {
    /// Set to abort the migration (deletion, VM deleted).
    cancel: AtomicBool,
    /// Why it was cancelled.
    cancel_reason: Mutex<Option<String>>,
    /// Why ferry aborted an adopted job (its limits), for the final message.
    abort_reason: Mutex<Option<String>>,
    /// Last progress sample from the source.
    progress: Mutex<Option<JobProgress>>,
    /// Switched to post-copy.
    post_copy: AtomicBool,
    /// The outcome, once the libvirt call returned.
    result: Mutex<Option<JobResult>>,
    /// Notified when `result` is set.
    done: tokio::sync::Notify,
}

/// How a migration job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    Succeeded {
        downtime_ms: Option<u64>,
        data_bytes: Option<u64>,
    },
    /// libvirt reported a failure (or ferry aborted it); the message says why.
    Failed(String),
    /// A job adopted after a restart ended; where the VM runs must be read from the hosts.
    Ended,
}

impl Job {
    /// Ask the job to abort, saying why.
    pub fn request_cancel(&self, why: &str) {
        *lock(&self.cancel_reason) = Some(why.to_string());
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Whether it was asked to abort.
    pub fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Why it was asked to abort.
    pub fn cancel_reason(&self) -> Option<String> {
        lock(&self.cancel_reason).clone()
    }

    /// Why ferry aborted it on its own (an adopted job's limits).
    pub fn abort_reason(&self) -> Option<String> {
        lock(&self.abort_reason).clone()
    }

    /// Record why ferry aborted it.
    pub fn aborted_because(&self, why: String) {
        *lock(&self.abort_reason) = Some(why);
    }

    /// The last progress sample.
    pub fn progress(&self) -> Option<JobProgress> {
        lock(&self.progress).clone()
    }

    /// Record a progress sample.
    pub fn sampled(&self, p: JobProgress) {
        *lock(&self.progress) = Some(p);
    }

    /// Whether it switched to post-copy.
    pub fn post_copy(&self) -> bool {
        self.post_copy.load(Ordering::SeqCst)
    }

    /// Record the switch to post-copy.
    pub fn switched_to_post_copy(&self) {
        self.post_copy.store(true, Ordering::SeqCst);
    }

    /// How it ended, once it has.
    pub fn result(&self) -> Option<JobResult> {
        lock(&self.result).clone()
    }

    /// Record how it ended and wake whoever waits for it.
    pub fn finish(&self, r: JobResult) {
        *lock(&self.result) = Some(r);
        self.done.notify_one();
    }

    /// Wait up to `at_most` for it to end.
    pub async fn wait(&self, at_most: Duration) {
        if self.result().is_none() {
            let _ = tokio::time::timeout(at_most, self.done.notified()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_finished_job_wakes_its_follower_at_once() {
        let job = Arc::new(Job::default());
        let j = job.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            j.finish(JobResult::Ended);
        });
        let t = Instant::now();
        job.wait(Duration::from_secs(5)).await;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "woken at once: {:?}",
            t.elapsed()
        );
        assert_eq!(job.result(), Some(JobResult::Ended));
    }

    #[test]
    fn a_released_slot_is_remembered_until_held_again() {
        let book = MigrationBook::default();
        let slot = Active {
            source: "h1".into(),
            target: "h2".into(),
        };
        book.hold_slot("m", slot.clone());
        assert!(!book.released_lately("m"));
        book.release_slot("m");
        assert!(book.released_lately("m"));
        assert!(!book.slots().contains_key("m"));
        book.hold_slot("m", slot);
        assert!(!book.released_lately("m"));
    }

    #[test]
    fn an_evacuation_migration_is_created_once_until_the_cache_shows_it() {
        let book = MigrationBook::default();
        assert!(book.evacuation_created("vm"));
        assert!(!book.evacuation_created("vm"));
        book.evacuation_not_created("vm");
        assert!(book.evacuation_created("vm"));
    }
}
