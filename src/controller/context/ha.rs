//! HA verdicts and storm guards, as the HA controller last judged them, for placement, the VM
//! controller, evacuation and the HostPool status.
//!
//! Every piece of HA state belongs to one HostPool's view of one host ([`PoolHost`]) and, for
//! verdicts, to the HAPolicy that judged it ([`HaKey`]): a pool whose URI template, credentials
//! or BMC cannot reach a host must not change what another pool (or another namespace) believes
//! about that host. Readers say which pool they mean; nothing is looked up by Node name alone.

use super::lock;
use crate::api::HostPool;
use crate::api::ha_policy::HostVerdict;
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a host's HA verdict counts without being renewed (the HA controller renews it
/// every second). A tick of the HA controller never takes longer than this.
pub const HA_VERDICT_TTL: Duration = Duration::from_secs(30);

/// A host as one HostPool sees it: through that pool's libvirt URI, credentials and BMC.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolHost {
    /// The pool's namespace.
    pub namespace: String,
    /// The pool's name.
    pub pool: String,
    /// The host's Node.
    pub node: String,
}

impl PoolHost {
    /// Node `node` as HostPool `pool` in `namespace` sees it.
    pub fn new(namespace: &str, pool: &str, node: &str) -> Self {
        PoolHost {
            namespace: namespace.to_string(),
            pool: pool.to_string(),
            node: node.to_string(),
        }
    }

    /// Node `node` as `pool` sees it.
    pub fn of(pool: &HostPool, node: &str) -> Self {
        Self::new(
            &pool.namespace().unwrap_or_default(),
            &pool.name_any(),
            node,
        )
    }
}

/// What the HA controller judges and remembers one verdict for: a host of a pool, under one
/// HAPolicy (in the pool's namespace). Every map of HA memory and verdicts is keyed by this.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HaKey {
    /// The HAPolicy's name (in the pool's namespace).
    pub policy: String,
    /// The host as the pool sees it.
    pub host: PoolHost,
}

impl HaKey {
    /// The key of `host` judged by HAPolicy `policy`.
    pub fn new(policy: &str, host: PoolHost) -> Self {
        HaKey {
            policy: policy.to_string(),
            host,
        }
    }
}

impl HaKey {
    /// The pool and policy of this key: whose storm guard and admission blocks apply to it.
    pub fn policy_pool(&self) -> PolicyPool {
        PolicyPool::new(&self.host.namespace, &self.host.pool, &self.policy)
    }
}

/// A HostPool as one HAPolicy (in the pool's namespace) guards it: what a storm guard and a
/// set of admission blocks belong to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyPool {
    /// The policy's (and the pool's) namespace.
    pub namespace: String,
    /// The HAPolicy.
    pub policy: String,
    /// The HostPool.
    pub pool: String,
}

impl PolicyPool {
    /// HostPool `pool` in `namespace` as HAPolicy `policy` guards it.
    pub fn new(namespace: &str, pool: &str, policy: &str) -> Self {
        PolicyPool {
            namespace: namespace.to_string(),
            policy: policy.to_string(),
            pool: pool.to_string(),
        }
    }
}

/// The verdict of each policy judging one pool host, with when it was set.
type ByPolicy = BTreeMap<String, (HostVerdict, Instant)>;

/// The (policy, pool, host) triples and (policy, pool) pairs that exist now (every policy's
/// pools that exist, and the Nodes each selects): HA state of anything else is dropped.
#[derive(Debug, Default)]
pub struct LiveHa {
    hosts: HashSet<HaKey>,
    guards: HashSet<PolicyPool>,
}

impl LiveHa {
    /// The policy covers the pool.
    pub fn guard(&mut self, guard: PolicyPool) {
        self.guards.insert(guard);
    }

    /// ... and the pool selects this host.
    pub fn host(&mut self, key: HaKey) {
        self.guard(key.policy_pool());
        self.hosts.insert(key);
    }

    /// Whether `key` exists.
    pub fn contains(&self, key: &HaKey) -> bool {
        self.hosts.contains(key)
    }

    /// Whether the policy covers the pool.
    pub fn guards(&self, guard: &PolicyPool) -> bool {
        self.guards.contains(guard)
    }
}

/// Verdicts per [`HaKey`] and storm guards per (policy, pool), each with when it was last set;
/// and the VMs the HA controller released for a restart elsewhere.
#[derive(Default)]
pub struct HaVerdicts {
    /// Per pool host, the verdict of each policy that judges it.
    verdicts: Mutex<HashMap<PoolHost, ByPolicy>>,
    /// Pools whose storm guard holds, per policy, with when that was last seen.
    storms: Mutex<HashMap<PolicyPool, Instant>>,
    /// Per VM UID, the failover the HA controller of this process released it for.
    released: Mutex<HashMap<String, Release>>,
    /// Wakes the HA controller when a released VM's domain runs on its new host (the next
    /// restart wave may start).
    pub restart_ran: std::sync::Arc<tokio::sync::Notify>,
}

/// A VM the HA controller released for a restart elsewhere: its host, as its pool sees it, is
/// proven off in this incident.
///
/// The `ferry.dev/failover` annotation that tells the VirtualMachine controller so is on the
/// VirtualMachine, which a namespace editor may write: the controller acts on the annotation
/// only when it matches the release recorded here, so a forged one starts nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub host: PoolHost,
    pub incident: String,
    /// When it was released.
    pub at: Instant,
    /// Whether the VM controller saw its domain run on the new host (its status may not say
    /// so yet).
    pub ran: bool,
}

fn fresh(at: &Instant) -> bool {
    at.elapsed() < HA_VERDICT_TTL
}

/// How much a verdict restricts the host, for showing one verdict where several policies judge
/// the same pool host: the one that restricts most wins.
fn severity(v: HostVerdict) -> u8 {
    use HostVerdict as V;
    match v {
        V::Healthy => 0,
        V::Recovered => 1,
        V::Standby => 1,
        V::Suspect => 2,
        V::Degraded => 3,
        V::Evacuating => 4,
        V::Recovering => 5,
        V::Failed => 6,
        V::Fencing => 7,
        V::Fenced => 8,
    }
}

impl HaVerdicts {
    /// The verdict for `key`, when its HAPolicy judges it (a verdict the HA controller has not
    /// renewed for [`HA_VERDICT_TTL`] no longer counts).
    pub fn get(&self, key: &HaKey) -> Option<HostVerdict> {
        lock(&self.verdicts)
            .get(&key.host)
            .and_then(|by_policy| by_policy.get(&key.policy))
            .filter(|(_, at)| fresh(at))
            .map(|(v, _)| *v)
    }

    /// Every current verdict on the pool host, by policy name.
    pub fn of(&self, host: &PoolHost) -> Vec<(String, HostVerdict)> {
        lock(&self.verdicts)
            .get(host)
            .map(|by_policy| {
                by_policy
                    .iter()
                    .filter(|(_, (_, at))| fresh(at))
                    .map(|(p, (v, _))| (p.clone(), *v))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The most restrictive current verdict on the pool host (several policies may judge it).
    pub fn worst(&self, host: &PoolHost) -> Option<HostVerdict> {
        self.of(host)
            .into_iter()
            .map(|(_, v)| v)
            .max_by_key(|v| severity(*v))
    }

    /// Record a verdict (the HA controller, on every tick).
    pub fn set(&self, key: HaKey, v: HostVerdict) {
        lock(&self.verdicts)
            .entry(key.host)
            .or_default()
            .insert(key.policy, (v, Instant::now()));
    }

    /// Record whether the policy's storm guard holds for the pool (the HA controller, on every
    /// tick).
    pub fn set_storm(&self, guard: &PolicyPool, holds: bool) {
        let mut storms = lock(&self.storms);
        if holds {
            storms.insert(guard.clone(), Instant::now());
        } else {
            storms.remove(guard);
        }
    }

    /// Whether the policy's storm guard holds for the pool now.
    pub fn storm(&self, guard: &PolicyPool) -> bool {
        lock(&self.storms).get(guard).is_some_and(fresh)
    }

    /// Record that VM `uid` is released for a restart elsewhere in `incident` of `host` (the HA
    /// controller, just before it writes the annotation); replaces an earlier release.
    pub fn release(&self, uid: &str, host: PoolHost, incident: &str) {
        lock(&self.released).insert(
            uid.to_string(),
            Release {
                host,
                incident: incident.to_string(),
                at: Instant::now(),
                ran: false,
            },
        );
    }

    /// How long ago VM `uid` was released in `incident` of `host`, unless the VM controller
    /// already saw its domain run.
    pub fn starting_since(&self, uid: &str, host: &PoolHost, incident: &str) -> Option<Duration> {
        lock(&self.released)
            .get(uid)
            .filter(|r| &r.host == host && r.incident == incident && !r.ran)
            .map(|r| r.at.elapsed())
    }

    /// The VM controller saw VM `uid`'s domain run on its new host after the failover of
    /// `incident`: the HA controller may start the next wave.
    pub fn ran(&self, uid: &str, incident: &str) {
        if let Some(r) = lock(&self.released)
            .get_mut(uid)
            .filter(|r| r.incident == incident)
        {
            r.ran = true;
            self.restart_ran.notify_one();
        }
    }

    /// Forget VM `uid`'s release (the annotation could not be written).
    pub fn unrelease(&self, uid: &str) {
        lock(&self.released).remove(uid);
    }

    /// Whether VM `uid` is released for a restart elsewhere in `incident` of `host`.
    pub fn released(&self, uid: &str, host: &PoolHost, incident: &str) -> bool {
        lock(&self.released)
            .get(uid)
            .is_some_and(|r| &r.host == host && r.incident == incident)
    }

    /// Keep only the releases of VMs for which `keep` holds (the VMs that exist).
    pub fn retain_releases(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.released).retain(|uid, _| keep(uid));
    }

    /// Keep only the verdicts and storm guards of the (policy, pool, host) triples and
    /// (policy, pool) pairs in `live`: the rest belong to a policy, pool or Node that is gone.
    pub fn retain(&self, live: &LiveHa) {
        lock(&self.verdicts).retain(|host, by_policy| {
            by_policy.retain(|policy, _| live.contains(&HaKey::new(policy, host.clone())));
            !by_policy.is_empty()
        });
        lock(&self.storms).retain(|k, _| live.guards.contains(k));
        lock(&self.released).retain(|_, r| live.hosts.iter().any(|k| k.host == r.host));
    }

    /// How many (policy, pool, host) verdicts are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.verdicts).values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HostVerdict as V;

    #[test]
    fn a_verdict_belongs_to_its_policy_and_pool() {
        let ha = HaVerdicts::default();
        let broken = PoolHost::new("team-b", "lab", "h1");
        let healthy = PoolHost::new("team-a", "lab", "h1");
        ha.set(HaKey::new("ha", broken.clone()), V::Degraded);
        // Another pool's (here: another namespace's) view of the same Node is not this one's.
        assert_eq!(ha.get(&HaKey::new("ha", healthy.clone())), None);
        assert!(ha.of(&healthy).is_empty());
        ha.set(HaKey::new("ha", healthy.clone()), V::Healthy);
        assert_eq!(ha.worst(&healthy), Some(V::Healthy));
        assert_eq!(ha.worst(&broken), Some(V::Degraded));
        // Two policies judging one pool host: each keeps its own, the worst one shows.
        ha.set(HaKey::new("other", healthy.clone()), V::Evacuating);
        assert_eq!(
            ha.of(&healthy),
            vec![("ha".into(), V::Healthy), ("other".into(), V::Evacuating)]
        );
        assert_eq!(ha.worst(&healthy), Some(V::Evacuating));
        assert_eq!(ha.len(), 3);
    }

    #[test]
    fn a_released_vm_starts_until_the_vm_controller_saw_it_run() {
        let ha = HaVerdicts::default();
        let h1 = PoolHost::new("team", "lab", "h1");
        ha.release("vm-1", h1.clone(), "i-1");
        assert!(ha.starting_since("vm-1", &h1, "i-1").is_some());
        assert!(ha.starting_since("vm-1", &h1, "i-2").is_none());
        // A run in another incident is not this one's.
        ha.ran("vm-1", "i-0");
        assert!(ha.starting_since("vm-1", &h1, "i-1").is_some());
        ha.ran("vm-1", "i-1");
        assert!(ha.starting_since("vm-1", &h1, "i-1").is_none());
        // Still released (the annotation stays valid), and the HA controller was woken.
        assert!(ha.released("vm-1", &h1, "i-1"));
        let woken = ha.restart_ran.notified();
        futures::pin_mut!(woken);
        assert!(woken.as_mut().enable());
    }

    #[test]
    fn a_release_is_for_one_vm_host_and_incident() {
        let ha = HaVerdicts::default();
        let h1 = PoolHost::new("team", "lab", "h1");
        let other_pool = PoolHost::new("team", "other", "h1");
        ha.release("vm-1", h1.clone(), "i-1");
        assert!(ha.released("vm-1", &h1, "i-1"));
        assert!(!ha.released("vm-2", &h1, "i-1"), "another VM");
        assert!(!ha.released("vm-1", &h1, "i-0"), "another incident");
        assert!(
            !ha.released("vm-1", &other_pool, "i-1"),
            "another pool's host"
        );
        // A later incident replaces the earlier one: an old annotation counts no more.
        ha.release("vm-1", h1.clone(), "i-2");
        assert!(!ha.released("vm-1", &h1, "i-1"));
        assert!(ha.released("vm-1", &h1, "i-2"));
        ha.unrelease("vm-1");
        assert!(!ha.released("vm-1", &h1, "i-2"));
        // Dropped with the VM, and with the pool host.
        ha.release("vm-1", h1.clone(), "i-3");
        ha.release("gone", h1.clone(), "i-3");
        ha.retain_releases(|uid| uid != "gone");
        assert!(!ha.released("gone", &h1, "i-3"));
        let mut live = LiveHa::default();
        live.host(HaKey::new("ha", other_pool.clone()));
        ha.retain(&live);
        assert!(!ha.released("vm-1", &h1, "i-3"));
    }

    #[test]
    fn state_of_a_gone_owner_is_dropped() {
        let ha = HaVerdicts::default();
        let b = PoolHost::new("team-b", "lab", "h1");
        let a = PoolHost::new("team-a", "lab", "h1");
        ha.set(HaKey::new("ha", b.clone()), V::Fenced);
        ha.set(HaKey::new("ha", a.clone()), V::Healthy);
        let (guard_a, guard_b) = (
            PolicyPool::new("team-a", "lab", "ha"),
            PolicyPool::new("team-b", "lab", "ha"),
        );
        ha.set_storm(&guard_b, true);
        ha.set_storm(&guard_a, true);
        assert!(ha.storm(&guard_b));
        // team-b's pool is deleted.
        let mut live = LiveHa::default();
        live.host(HaKey::new("ha", a.clone()));
        ha.retain(&live);
        assert_eq!(ha.get(&HaKey::new("ha", b)), None);
        assert_eq!(ha.get(&HaKey::new("ha", a)), Some(V::Healthy));
        assert!(!ha.storm(&guard_b));
        assert!(ha.storm(&guard_a));
        ha.set_storm(&guard_a, false);
        assert!(!ha.storm(&guard_a));
        assert_eq!(ha.len(), 1);
    }
}
