//! Look before you start: before a VM is started on a host other than the one its status names
//! (a failover, or a definition gone from its host), its domain is looked up on every other host
//! of the pool. What those lookups saw decides whether the VM may be started anew, must be
//! adopted where it already runs, or must wait until every host has answered or is proven off.
//!
//! A migration that succeeded while its source died can leave the status naming the dead source
//! while the VM runs on the target: starting it anywhere else would run it twice.

/// What one host of the pool showed of the VM's domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The domain runs (or is paused) there.
    Running,
    /// Defined there, not running.
    Stopped,
    /// Not there.
    Absent,
    /// The host could not be asked.
    Unreachable {
        /// The host is proven off (fenced, or confirmed off by a person): nothing runs there.
        proven_off: bool,
        /// Why it could not be asked, for the condition.
        why: String,
    },
}

/// What to do with the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No other host runs it and every host answered or is proven off: start it anew.
    Free,
    /// It runs on this host: take it over there, start nothing.
    Adopt(String),
    /// It runs on more than one host already: start nothing, a person must look.
    RunningTwice(Vec<String>),
    /// These hosts could not be asked and are not proven off (with why): start nothing yet.
    Wait(Vec<(String, String)>),
}

/// Decide from what each host (by name) showed.
pub fn decide(seen: &[(String, Seen)]) -> Verdict {
    let running: Vec<String> = seen
        .iter()
        .filter(|(_, s)| *s == Seen::Running)
        .map(|(h, _)| h.clone())
        .collect();
    match running.as_slice() {
        [one] => return Verdict::Adopt(one.clone()),
        [_, _, ..] => return Verdict::RunningTwice(running),
        [] => {}
    }
    let unknown: Vec<(String, String)> = seen
        .iter()
        .filter_map(|(h, s)| match s {
            Seen::Unreachable {
                proven_off: false,
                why,
            } => Some((h.clone(), why.clone())),
            _ => None,
        })
        .collect();
    if unknown.is_empty() {
        Verdict::Free
    } else {
        Verdict::Wait(unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable(proven_off: bool) -> Seen {
        Seen::Unreachable {
            proven_off,
            why: "connection refused".into(),
        }
    }

    /// A named case: what the hosts showed, and the verdict.
    type Case = (&'static str, Vec<(String, Seen)>, Verdict);

    #[test]
    fn decisions() {
        let h = |n: &str, s: Seen| (n.to_string(), s);
        let cases: Vec<Case> = vec![
            ("no other host: free", vec![], Verdict::Free),
            (
                "absent or only defined elsewhere: free",
                vec![h("b", Seen::Absent), h("c", Seen::Stopped)],
                Verdict::Free,
            ),
            (
                "running on another host: adopted there",
                vec![h("b", Seen::Running), h("c", Seen::Absent)],
                Verdict::Adopt("b".into()),
            ),
            (
                "running elsewhere wins over an unreachable host: it is known where it runs",
                vec![h("b", Seen::Running), h("c", unreachable(false))],
                Verdict::Adopt("b".into()),
            ),
            (
                "running on two hosts: nothing is started, a person must look",
                vec![h("b", Seen::Running), h("c", Seen::Running)],
                Verdict::RunningTwice(vec!["b".into(), "c".into()]),
            ),
            (
                "an unreachable host not proven off: wait, naming it",
                vec![h("b", Seen::Absent), h("c", unreachable(false))],
                Verdict::Wait(vec![("c".into(), "connection refused".into())]),
            ),
            (
                "an unreachable host proven off: free",
                vec![h("b", Seen::Absent), h("c", unreachable(true))],
                Verdict::Free,
            ),
        ];
        for (name, seen, want) in cases {
            assert_eq!(decide(&seen), want, "{name}");
        }
    }
}
