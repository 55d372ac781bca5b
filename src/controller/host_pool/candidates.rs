//! Domains made outside ferry that a HostPool's `spec.adoption.domains` names: described in the
//! host's status entry from the probe's reading of them. Reading them changes nothing on the
//! host.

use super::foreign::Foreign;
use crate::api::HostPool;
use crate::api::host_pool::AdoptionCandidate;
use crate::hypervisor::Hypervisor;
use crate::plan::adoption;
use kube::ResourceExt;

/// At most this many candidates per host are described.
pub(super) const MAX_PER_HOST: usize = 32;

/// At most this many candidates are listed in a pool's status, and this many blockers and notes
/// each, so that a broad `spec.adoption.domains` on a large pool keeps the status small.
pub(super) const MAX_PER_POOL: usize = 64;
const MAX_LINES: usize = 12;

/// Keep the first [`MAX_PER_POOL`] candidates over all `hosts`, in their order, each with at most
/// [`MAX_LINES`] blockers and notes (the last line then says how many more there are).
pub(super) fn bound(hosts: &mut [crate::api::HostStatus]) {
    let mut left = MAX_PER_POOL;
    for h in hosts {
        h.adoption_candidates.truncate(left);
        left -= h.adoption_candidates.len();
        for c in &mut h.adoption_candidates {
            for lines in [&mut c.blockers, &mut c.notes] {
                if lines.len() > MAX_LINES {
                    let more = lines.len() - (MAX_LINES - 1);
                    lines.truncate(MAX_LINES - 1);
                    lines.push(format!("... and {more} more"));
                }
            }
        }
    }
}

/// The host's domains without ferry metadata that the pool names, sorted by name, each as ferry
/// would adopt it. A domain that could not be read at this probe is left out until the next.
pub(super) async fn describe(
    pool: &HostPool,
    hv: &dyn Hypervisor,
    foreign: &Foreign,
) -> Vec<AdoptionCandidate> {
    let patterns = match &pool.spec.adoption {
        Some(a) if !a.domains.is_empty() => &a.domains,
        _ => return Vec::new(),
    };
    // Sorted by name already.
    let mut names: Vec<&str> = foreign
        .described
        .keys()
        .filter(|name| adoption::allowed(patterns, name))
        .map(String::as_str)
        .collect();
    names.truncate(MAX_PER_HOST);
    if names.is_empty() {
        return Vec::new();
    }
    let facts = crate::controller::hosts::adoption_facts(pool, hv).await;
    let view = facts.view();
    names
        .into_iter()
        .filter_map(|name| foreign.described.get(name))
        .map(|(described, state)| adoption::candidate(described, *state, &view, &pool.name_any()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HostState, HostStatus};

    #[test]
    fn the_status_stays_small() {
        let candidate = |i: usize| AdoptionCandidate {
            name: format!("d{i}"),
            blockers: (0..20).map(|b| format!("blocker {b}")).collect(),
            notes: vec!["one note".into()],
            ..AdoptionCandidate::default()
        };
        let mut hosts: Vec<HostStatus> = (0..3)
            .map(|h| {
                let mut s = HostStatus::new(format!("h{h}"), HostState::Ready);
                s.adoption_candidates = (0..MAX_PER_HOST).map(candidate).collect();
                s
            })
            .collect();
        bound(&mut hosts);
        let counts: Vec<usize> = hosts.iter().map(|h| h.adoption_candidates.len()).collect();
        assert_eq!(counts, [32, 32, 0]);
        let c = &hosts[0].adoption_candidates[0];
        assert_eq!(c.blockers.len(), MAX_LINES);
        assert_eq!(c.blockers[MAX_LINES - 1], "... and 9 more");
        assert_eq!(c.notes, ["one note"]);
    }
}
