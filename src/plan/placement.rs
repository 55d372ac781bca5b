//! Choosing a host for a VM. A pure function of the candidates; the single place that decides.

use std::collections::BTreeMap;

/// A host of the pool as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// Pick the host for a new VM, or explain per reason why none fits
/// (for example "no host fits: 2 unreachable, 1 cordoned").
pub fn choose_host(
    candidates: &[Candidate],
    node_selector: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut fitting: Vec<&Candidate> = Vec::new();
    for c in candidates {
        let reason = if !node_selector
            .iter()
            .all(|(k, v)| c.labels.get(k) == Some(v))
        {
            Some("not matching nodeSelector")
        } else if c.cordoned {
            Some("cordoned")
        } else if !c.node_ready {
            Some("Node not Ready")
        } else if !c.reachable {
            Some("libvirt unreachable")
        } else {
            None
        };
        match reason {
            Some(r) => *reasons.entry(r).or_default() += 1,
            None => fitting.push(c),
        }
    }
    // Deterministic tie-break: lowest name. Capacity-aware scoring extends this.
    fitting.sort_by(|a, b| a.name.cmp(&b.name));
    match fitting.first() {
        Some(c) => Ok(c.name.clone()),
        None if candidates.is_empty() => Err("the HostPool has no hosts".into()),
        None => Err(format!(
            "no host fits: {}",
            reasons
                .iter()
                .map(|(r, n)| format!("{n} {r}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, reachable: bool, ready: bool, cordoned: bool) -> Candidate {
        Candidate {
            name: name.into(),
            reachable,
            node_ready: ready,
            cordoned,
            labels: BTreeMap::from([("zone".to_string(), name.to_string())]),
        }
    }

    #[test]
    fn picks_a_fitting_host_deterministically() {
        let hosts = [c("b", true, true, false), c("a", true, true, false)];
        assert_eq!(choose_host(&hosts, &BTreeMap::new()), Ok("a".into()));
        let sel = BTreeMap::from([("zone".to_string(), "b".to_string())]);
        assert_eq!(choose_host(&hosts, &sel), Ok("b".into()));
    }

    #[test]
    fn explains_why_nothing_fits() {
        let hosts = [
            c("a", false, true, false),
            c("b", false, true, false),
            c("c", true, true, true),
            c("d", true, false, false),
        ];
        assert_eq!(
            choose_host(&hosts, &BTreeMap::new()),
            Err("no host fits: 1 Node not Ready, 1 cordoned, 2 libvirt unreachable".into())
        );
        assert_eq!(
            choose_host(&[], &BTreeMap::new()),
            Err("the HostPool has no hosts".into())
        );
    }
}
