//! What the probe last read of each host (facts, domains, foreign domains, adoption
//! candidates), and whether that reading still stands.
//!
//! A host is read afresh only when something may have changed it since: a domain lifecycle event
//! heard on its connection or a call of ferry's that changed its domains (both counted by
//! [`HostConnections::changes`](crate::hypervisor::HostConnections::changes)), a new connection,
//! a change of the pool's spec, or when the last reading is a safety-resync period old (what
//! events cannot tell, such as a foreign domain's disk attached while it runs). In between, a
//! probe asks the host nothing: the connection's keepalive and libvirt's close callback say when
//! it goes away (and wake the pool at once).

use super::{PoolHost, lock};
use crate::api::host_pool::AdoptionCandidate;
use crate::hypervisor::{DomainInfo, DomainState, HostConnections, HostInfo};
use crate::plan::domain::DescribedDomain;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a host's domain counters are sampled for its measured load when the pool neither
/// balances nor manages power (a pool with `spec.balancing` or `spec.power` samples at every
/// probe): twice within the load window, so the CPU figure is kept.
pub const LOAD_SAMPLE_INTERVAL: Duration = Duration::from_secs(60);

/// What a host's reading is judged against: the connection it is read through now (its URI,
/// the changes counted on it, how often it was opened), the pool's generation, and how old a
/// reading may get.
pub(crate) struct HostNow<'a> {
    pub uri: &'a str,
    pub changes: u64,
    pub opened: u64,
    pub generation: Option<i64>,
    pub full_every: Duration,
}

impl<'a> HostNow<'a> {
    /// The host behind `uri` as `connections` count it now.
    pub(crate) fn of(
        connections: &HostConnections,
        uri: &'a str,
        generation: Option<i64>,
        full_every: Duration,
    ) -> Self {
        HostNow {
            uri,
            changes: connections.changes(uri),
            opened: connections.opened(uri),
            generation,
            full_every,
        }
    }
}

/// The host's foreign domains (no ferry metadata) as read at one probe.
#[derive(Default, Clone)]
pub(crate) struct Foreign {
    /// By name: each domain's description and state.
    pub described: BTreeMap<String, (DescribedDomain, DomainState)>,
    /// Every foreign domain was read (none failed).
    pub complete: bool,
}

/// One reading of a host.
#[derive(Clone)]
pub(crate) struct Reading {
    /// The URI the host was read through.
    pub uri: String,
    /// The host's change count before it was read.
    pub changes: u64,
    /// Connections opened to the host before it was read.
    pub opened: u64,
    /// The pool's generation when the host was read.
    pub generation: Option<i64>,
    /// When the facts and every foreign domain were read (a reading after a change keeps the
    /// foreign domains whose state did not change, and the facts while the connection stays).
    pub full_at: Instant,
    pub info: HostInfo,
    pub domains: Vec<DomainInfo>,
    pub foreign: Foreign,
    pub candidates: Vec<AdoptionCandidate>,
}

#[derive(Default)]
struct Memory {
    reading: Option<Arc<Reading>>,
    /// When the host's domain counters were last sampled.
    load_at: Option<Instant>,
}

/// The last reading of every host the HostPool probe read, per pool (kept in the [`super::Context`] so that a HostPool controller's readings outlive one reconcile).
#[derive(Default)]
pub struct HostReads {
    hosts: Mutex<HashMap<PoolHost, Memory>>,
}

impl std::fmt::Debug for HostReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostReads")
            .field("hosts", &lock(&self.hosts).len())
            .finish()
    }
}

impl HostReads {
    /// The last reading of `host`.
    pub(crate) fn last(&self, host: &PoolHost) -> Option<Arc<Reading>> {
        lock(&self.hosts).get(host).and_then(|m| m.reading.clone())
    }

    /// Domain `uuid` as `host`'s last reading shows it, while that reading stands ([`needed`]
    /// finds nothing to read again: no domain event, no change made by ferry, no new connection
    /// or pool spec since, and younger than `full_every`) and shows the domain. `None`: ask the
    /// host (a domain the reading does not show is always looked up: it may have just arrived).
    pub(crate) fn standing_domain(
        &self,
        host: &PoolHost,
        now: &HostNow,
        uuid: &str,
    ) -> Option<DomainInfo> {
        let last = self.last(host)?;
        if needed(Some(&last), now).is_some() {
            return None;
        }
        last.domains
            .iter()
            .find(|d| d.uuid.eq_ignore_ascii_case(uuid))
            .cloned()
    }

    /// Keep `reading` as `host`'s last.
    pub(crate) fn keep(&self, host: &PoolHost, reading: Arc<Reading>) {
        lock(&self.hosts).entry(host.clone()).or_default().reading = Some(reading);
    }

    /// Whether `host`'s domain counters are due for a sample (at most every `every`).
    pub(crate) fn load_due(&self, host: &PoolHost, every: Duration) -> bool {
        lock(&self.hosts)
            .get(host)
            .and_then(|m| m.load_at)
            .is_none_or(|at| at.elapsed() >= every)
    }

    /// `host`'s domain counters were sampled now.
    pub(crate) fn load_sampled(&self, host: &PoolHost) {
        lock(&self.hosts).entry(host.clone()).or_default().load_at = Some(Instant::now());
    }

    /// Keep only the hosts `keep` accepts.
    pub(crate) fn retain(&self, keep: impl Fn(&PoolHost) -> bool) {
        lock(&self.hosts).retain(|h, _| keep(h));
    }
}

/// What a new reading of a host needs, given the last one: nothing (`None`: it stands), only
/// what changed (`Some(false)`), or everything (`Some(true)`).
pub(crate) fn needed(last: Option<&Reading>, now: &HostNow) -> Option<bool> {
    let Some(last) = last else {
        return Some(true);
    };
    if last.uri != now.uri
        || last.opened != now.opened
        || last.generation != now.generation
        || last.full_at.elapsed() >= now.full_every
    {
        return Some(true);
    }
    // A foreign domain that could not be read is tried again at the next probe.
    (last.changes != now.changes || !last.foreign.complete).then_some(false)
}

/// UUIDs of the domains that differ between two readings of a host (appeared, gone, or read
/// differently): between readings with no counted change, each is a domain event that was lost.
pub(crate) fn changed_domains(before: &[DomainInfo], after: &[DomainInfo]) -> Vec<String> {
    let mut changed: Vec<String> = after
        .iter()
        .filter(|d| !before.contains(d))
        .map(|d| d.uuid.clone())
        .collect();
    changed.extend(
        before
            .iter()
            .filter(|b| !after.iter().any(|a| a.uuid == b.uuid))
            .map(|b| b.uuid.clone()),
    );
    changed.sort();
    changed.dedup();
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(changes: u64, opened: u64, age: Duration) -> Reading {
        Reading {
            uri: "qemu+tls://h1/system".into(),
            changes,
            opened,
            generation: Some(1),
            full_at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            info: HostInfo::default(),
            domains: Vec::new(),
            foreign: Foreign {
                complete: true,
                ..Foreign::default()
            },
            candidates: Vec::new(),
        }
    }

    /// The host as a reading is judged against (see [`HostNow`]).
    fn host_now(uri: &str, changes: u64, opened: u64, generation: i64, every: u64) -> HostNow<'_> {
        HostNow {
            uri,
            changes,
            opened,
            generation: Some(generation),
            full_every: Duration::from_secs(every),
        }
    }

    #[test]
    fn a_reading_stands_until_the_host_changes_or_it_is_a_period_old() {
        let uri = "qemu+tls://h1/system";
        let r = reading(7, 1, Duration::from_secs(10));
        let needs = |r: Option<&Reading>, changes, opened, generation| {
            needed(r, &host_now(uri, changes, opened, generation, 300))
        };
        assert_eq!(needs(None, 7, 1, 1), Some(true));
        assert_eq!(needs(Some(&r), 7, 1, 1), None);
        // A lifecycle event or a change made by ferry: what changed is read.
        assert_eq!(needs(Some(&r), 8, 1, 1), Some(false));
        // A new connection, another URI, a new spec, or a period gone by: everything.
        assert_eq!(needs(Some(&r), 8, 2, 1), Some(true));
        assert_eq!(
            needed(Some(&r), &host_now("qemu+tls://h2/system", 7, 1, 1, 300)),
            Some(true)
        );
        assert_eq!(needs(Some(&r), 7, 1, 2), Some(true));
        let old = reading(7, 1, Duration::from_secs(301));
        assert_eq!(needs(Some(&old), 7, 1, 1), Some(true));
        // A foreign domain could not be read: tried again.
        let mut incomplete = reading(7, 1, Duration::from_secs(10));
        incomplete.foreign.complete = false;
        assert_eq!(needs(Some(&incomplete), 7, 1, 1), Some(false));
    }

    #[test]
    fn a_standing_reading_answers_for_the_domains_it_shows() {
        let reads = HostReads::default();
        let host = PoolHost::new("ns", "p", "h1");
        let uri = "qemu+tls://h1/system";
        let uuid = "0b6f6a55-8f65-4d44-9d4e-0c1f1b2f9a01";
        let mut r = reading(7, 1, Duration::from_secs(10));
        r.domains.push(domain(uuid, DomainState::Running));
        r.domains[0].name = "ns_web".into();
        let standing = |changes, opened, uuid: &str| {
            reads.standing_domain(&host, &host_now(uri, changes, opened, 1, 300), uuid)
        };
        assert!(standing(7, 1, uuid).is_none(), "nothing read yet");
        reads.keep(&host, Arc::new(r));
        assert_eq!(
            standing(7, 1, uuid).map(|d| d.state),
            Some(DomainState::Running)
        );
        assert_eq!(
            standing(7, 1, &uuid.to_ascii_uppercase()).map(|d| d.name),
            Some("ns_web".to_string())
        );
        // A domain the reading does not show is asked for.
        assert!(standing(7, 1, "0b6f6a55-8f65-4d44-9d4e-0c1f1b2f9a02").is_none());
        // An event, a change of ferry's or a new connection since: asked for.
        assert!(standing(8, 1, uuid).is_none());
        assert!(standing(7, 2, uuid).is_none());
        // Another pool spec, another URI, or another host: asked for.
        assert!(
            reads
                .standing_domain(&host, &host_now(uri, 7, 1, 2, 300), uuid)
                .is_none()
        );
        assert!(
            reads
                .standing_domain(&host, &host_now("qemu+tls://h2/system", 7, 1, 1, 300), uuid)
                .is_none()
        );
        assert!(
            reads
                .standing_domain(
                    &PoolHost::new("ns", "p", "h2"),
                    &host_now(uri, 7, 1, 1, 300),
                    uuid
                )
                .is_none()
        );
        // A reading a period old: asked for.
        assert!(
            reads
                .standing_domain(&host, &host_now(uri, 7, 1, 1, 5), uuid)
                .is_none()
        );
    }

    fn domain(uuid: &str, state: DomainState) -> DomainInfo {
        DomainInfo {
            name: format!("ns_{uuid}"),
            uuid: uuid.into(),
            state,
            persistent: true,
            vcpus: 1,
            memory_kib: 131_072,
            live: None,
            config: None,
        }
    }

    #[test]
    fn domains_that_differ_between_readings_are_named_once() {
        let before = [
            domain("a", DomainState::Running),
            domain("b", DomainState::Running),
            domain("c", DomainState::Running),
        ];
        let after = [
            domain("a", DomainState::Running),
            domain(
                "b",
                DomainState::ShutOff(crate::hypervisor::ShutOffReason::Crashed),
            ),
            domain("d", DomainState::Running),
        ];
        assert_eq!(changed_domains(&before, &after), ["b", "c", "d"]);
        assert!(changed_domains(&before, &before).is_empty());
    }

    #[test]
    fn load_is_sampled_at_most_every_interval() {
        let reads = HostReads::default();
        let host = PoolHost {
            namespace: "ns".into(),
            pool: "p".into(),
            node: "h1".into(),
        };
        assert!(reads.load_due(&host, LOAD_SAMPLE_INTERVAL));
        reads.load_sampled(&host);
        assert!(!reads.load_due(&host, LOAD_SAMPLE_INTERVAL));
        assert!(reads.load_due(&host, Duration::ZERO));
        reads.retain(|_| false);
        assert!(reads.load_due(&host, LOAD_SAMPLE_INTERVAL));
    }
}
