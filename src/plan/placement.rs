//! Choosing a host for a VM: a pure function of the hosts, the VMs already placed and the VM's
//! requirements; the single place that decides.
//!
//! Rules, in order, per host (the first that fails is the reason counted for that host):
//! the VM's `nodeSelector`; the Node is not cordoned; the Node is Ready; the host's libvirt
//! answers; its capacity is known; required anti-affinity, both ways (no VM on the host matching
//! one of the VM's terms, and none whose own terms match the VM, as Kubernetes does for pods);
//! required affinity (a VM matching each term on the host, when such a VM exists anywhere in the
//! pool); memory and vCPUs fit in what is allocatable after what is already there (ferry's VMs
//! placed on the host, started or not, and running foreign domains). Among the hosts that fit,
//! the highest score wins; ties go to the less loaded host by measurement, then to the lowest
//! name. The score is the pool strategy's (`Spread`: 0–1000, higher for less allocated, and
//! with a measured load the mean of that and 1000 less the measured share; `Pack`: higher for
//! more allocated), plus 10 × the weight of every preferred term the host satisfies.

use super::capacity::Amount;
use crate::api::host_pool::PlacementStrategy;
use crate::api::virtual_machine::VmAffinityTerm;
use kube::core::{Selector, SelectorExt};
use std::collections::{BTreeMap, HashMap};

/// A host of the pool as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Candidate {
    /// Node name.
    pub name: String,
    /// The host's libvirt answers.
    pub reachable: bool,
    /// The Node is Ready.
    pub node_ready: bool,
    /// The Node is cordoned (`spec.unschedulable`).
    pub cordoned: bool,
    /// The Node's labels.
    pub labels: BTreeMap<String, String>,
    /// What VMs may use of the host; `None` until the host was probed.
    pub allocatable: Option<Amount>,
    /// What running domains ferry does not manage use.
    pub foreign: Amount,
    /// Measured use of the host's CPUs and memory, in thousandths of its capacity (the mean of
    /// the two), when placement weighs measured load (a pool balancing `Partial` or `Full`).
    pub measured: Option<u64>,
}

/// A VM that already has a host (placed, whether or not its domain exists or runs yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The VM's UID.
    pub uid: String,
    /// Node name of its host.
    pub host: String,
    /// The VM's labels.
    pub labels: BTreeMap<String, String>,
    /// Its vCPUs and memory.
    pub need: Amount,
    /// The selectors of its required anti-affinity terms: no VM they match may join it on its
    /// host.
    pub excludes: Vec<Selector>,
}

/// An affinity or anti-affinity term, ready to match.
#[derive(Debug, Clone)]
pub struct Term {
    /// Which VMs it is about.
    pub selector: Selector,
    /// A hard rule rather than a preference.
    pub required: bool,
    /// Weight of a preference (1–100).
    pub weight: u64,
}

/// Turn the API's terms into [`Term`]s, or say which selector is invalid.
pub fn terms(spec: &[VmAffinityTerm], what: &str) -> Result<Vec<Term>, String> {
    spec.iter()
        .enumerate()
        .map(|(i, t)| {
            let selector = Selector::try_from(t.label_selector.clone()).map_err(|e| {
                format!("spec.placement.{what}[{i}].labelSelector is not a valid selector: {e}")
            })?;
            Ok(Term {
                selector,
                required: t.required.unwrap_or(false),
                weight: t.weight.unwrap_or(1).clamp(1, 100) as u64,
            })
        })
        .collect()
}

/// The selectors of the required terms among `anti_affinity` (what [`Placed::excludes`] holds).
pub fn excludes(anti_affinity: &[Term]) -> Vec<Selector> {
    anti_affinity
        .iter()
        .filter(|t| t.required)
        .map(|t| t.selector.clone())
        .collect()
}

/// What the VM to place asks for.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The VM's UID (the VM never counts against itself).
    pub uid: &'a str,
    /// The VM's labels (what the anti-affinity of VMs already placed is matched against).
    pub labels: &'a BTreeMap<String, String>,
    /// Its vCPUs and memory.
    pub need: Amount,
    /// Labels its host's Node must carry.
    pub node_selector: &'a BTreeMap<String, String>,
    /// Affinity terms.
    pub affinity: &'a [Term],
    /// Anti-affinity terms.
    pub anti_affinity: &'a [Term],
}

/// Pick the host for a new VM, or explain per reason why none fits (for example
/// "no host fits: 3 lack memory, 1 libvirt unreachable"). `placed` holds the VMs of the pool that
/// already have a host.
pub fn choose_host(
    candidates: &[Candidate],
    placed: &[Placed],
    req: &Request<'_>,
    strategy: PlacementStrategy,
) -> Result<String, String> {
    if candidates.is_empty() {
        return Err("the HostPool has no hosts".into());
    }
    // Group the other VMs by host once, and decide once per required affinity term whether any
    // VM of the pool matches it: each host is then judged from its own VMs only, so a decision
    // costs O(hosts + VMs), not O(hosts × VMs).
    let mut by_host: HashMap<&str, Vec<&Placed>> = HashMap::new();
    for p in placed.iter().filter(|p| p.uid != req.uid) {
        by_host.entry(p.host.as_str()).or_default().push(p);
    }
    let affinity_in_pool = required_in_pool(req.affinity, by_host.values().flatten().copied());
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut best: Option<(u64, u64, &str)> = None;
    for c in candidates {
        let on_host = by_host
            .get(c.name.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        match judge(c, on_host, &affinity_in_pool, req, strategy) {
            Err(r) => *reasons.entry(r).or_default() += 1,
            Ok(score) => {
                let load = c.measured.unwrap_or(0);
                let better = match best {
                    None => true,
                    Some((s, l, name)) => {
                        score > s
                            || (score == s && (load < l || (load == l && c.name.as_str() < name)))
                    }
                };
                if better {
                    best = Some((score, load, c.name.as_str()));
                }
            }
        }
    }
    if let Some((_, _, name)) = best {
        return Ok(name.to_string());
    }
    Err(format!("no host fits: {}", tally(reasons)))
}

/// Counted reasons in a phrase, the most frequent first (ties by name): "3 lack memory, 1
/// cordoned".
pub fn tally(counts: BTreeMap<&str, usize>) -> String {
    let mut counted: Vec<(&str, usize)> = counts.into_iter().collect();
    counted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counted
        .iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// For each of `affinity`'s terms: whether it is required and matches one of `others` (the
/// pool's VMs other than the one to place). A required term no VM of the pool matches does not
/// bind: the first VM of a group may go anywhere.
pub fn required_in_pool<'p>(
    affinity: &[Term],
    others: impl Iterator<Item = &'p Placed> + Clone,
) -> Vec<bool> {
    affinity
        .iter()
        .map(|t| t.required && others.clone().any(|p| t.selector.matches(&p.labels)))
        .collect()
}

/// Whether host `c` may take the VM by the hard rules (the module's list, in order), and if so
/// what would then be allocated there; otherwise the first rule it breaks. `on_host` holds the
/// other VMs placed on it; `affinity_in_pool` is [`required_in_pool`] of `req.affinity`.
pub fn fits(
    c: &Candidate,
    on_host: &[&Placed],
    affinity_in_pool: &[bool],
    req: &Request<'_>,
) -> Result<Fit, &'static str> {
    if !req
        .node_selector
        .iter()
        .all(|(k, v)| c.labels.get(k) == Some(v))
    {
        return Err("not matching nodeSelector");
    }
    if c.cordoned {
        return Err("cordoned");
    }
    if !c.node_ready {
        return Err("Node not Ready");
    }
    if !c.reachable {
        return Err("libvirt unreachable");
    }
    let Some(allocatable) = c.allocatable else {
        return Err("capacity not known yet");
    };
    let any_here = |t: &Term| on_host.iter().any(|p| t.selector.matches(&p.labels));
    if req.anti_affinity.iter().any(|t| t.required && any_here(t)) {
        return Err("run a VM the anti-affinity excludes");
    }
    let excluded_by = |p: &&Placed| p.excludes.iter().any(|s| s.matches(req.labels));
    if on_host.iter().any(excluded_by) {
        return Err("run a VM whose anti-affinity excludes this one");
    }
    let required_affinity_missed = req
        .affinity
        .iter()
        .zip(affinity_in_pool)
        .any(|(t, in_pool)| *in_pool && !any_here(t));
    if required_affinity_missed {
        return Err("lack a VM the affinity requires");
    }
    let used = on_host
        .iter()
        .fold(c.foreign, |sum, p| sum.plus(p.need))
        .plus(req.need);
    if used.memory > allocatable.memory {
        return Err("lack memory");
    }
    if used.cpus > allocatable.cpus {
        return Err("lack CPU");
    }
    Ok(Fit { used, allocatable })
}

/// What a host that fits would hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// Allocated on the host with the VM: the VMs there, foreign domains and the VM.
    pub used: Amount,
    /// What VMs may use of the host.
    pub allocatable: Amount,
}

/// The host's score, or the first rule it breaks (see [`fits`]).
fn judge(
    c: &Candidate,
    on_host: &[&Placed],
    affinity_in_pool: &[bool],
    req: &Request<'_>,
    strategy: PlacementStrategy,
) -> Result<u64, &'static str> {
    let Fit { used, allocatable } = fits(c, on_host, affinity_in_pool, req)?;
    let any_here = |t: &Term| on_host.iter().any(|p| t.selector.matches(&p.labels));
    let share = |u: u64, a: u64| -> u64 {
        if a == 0 {
            1000
        } else {
            ((u as u128 * 1000) / a as u128).min(1000) as u64
        }
    };
    let used_share =
        (share(used.cpus, allocatable.cpus) + share(used.memory, allocatable.memory)) / 2;
    let mut score = match (strategy, c.measured) {
        (PlacementStrategy::Spread, None) => 1000 - used_share,
        (PlacementStrategy::Spread, Some(m)) => 1000 - (used_share + m.min(1000)) / 2,
        (PlacementStrategy::Pack, _) => used_share,
    };
    for t in req.affinity.iter().filter(|t| !t.required) {
        if any_here(t) {
            score += 10 * t.weight;
        }
    }
    for t in req.anti_affinity.iter().filter(|t| !t.required) {
        if !any_here(t) {
            score += 10 * t.weight;
        }
    }
    Ok(score)
}

#[cfg(test)]
mod tests;
