//! Whether this replica may act on hosts and BMCs now: one [`ActionGate`] that every mutating
//! libvirt call (through [`crate::hypervisor::HostConnections`]) and every BMC power-off (the
//! [`crate::fence`] drivers) passes through.
//!
//! With leader election the gate is open only until a deadline: the last lease renewal this
//! replica saw stored on the API server, plus the lease duration, minus a margin. A leader that
//! cannot renew (cut off from the API server, its renewals failing or hanging) stops acting at
//! that deadline even though the leader-election library still believes it leads, before a
//! standby may take the lease over. A renewal that lands extends the deadline again; once the
//! lease is lost to another replica the gate stays closed for good. Reads are never gated.
//!
//! The gate is checked at the moment of each call, against a monotonic clock: nothing has to
//! run for it to close on time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether this replica may act now (see the module documentation). Cheap to clone: clones
/// share one state.
#[derive(Clone)]
pub struct ActionGate {
    inner: Arc<Inner>,
}

struct Inner {
    /// `false` without leader election: always open.
    leased: bool,
    state: Mutex<State>,
    /// Told the action each time one is withheld (for metrics).
    observer: Option<Box<dyn Fn(&'static str) + Send + Sync>>,
}

#[derive(Default)]
struct State {
    /// Acting is allowed until then (monotonic); `None` before the first renewal was seen.
    deadline: Option<Instant>,
    /// The lease went to another replica (or was released): closed for good.
    revoked: Option<String>,
    /// Actions withheld so far, per action.
    withheld: BTreeMap<&'static str, u64>,
}

/// An action the gate refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{action} withheld: {reason}")]
pub struct Withheld {
    /// The action (`"start_domain"`, `"fence power_off"`, ...).
    pub action: &'static str,
    /// Why this replica may not act now.
    pub reason: String,
}

impl std::fmt::Debug for ActionGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionGate")
            .field("leased", &self.inner.leased)
            .field("open", &self.is_open())
            .finish()
    }
}

impl ActionGate {
    /// A gate that is always open: a replica without leader election acts alone.
    pub fn open() -> Self {
        Self::new(false, None)
    }

    /// A gate for a leader: closed until [`ActionGate::renewed_until`] is first called.
    pub fn leased() -> Self {
        Self::new(true, None)
    }

    /// A gate for a leader whose withheld actions are counted by `observer`.
    pub fn leased_observed(observer: impl Fn(&'static str) + Send + Sync + 'static) -> Self {
        Self::new(true, Some(Box::new(observer)))
    }

    fn new(leased: bool, observer: Option<Box<dyn Fn(&'static str) + Send + Sync>>) -> Self {
        ActionGate {
            inner: Arc::new(Inner {
                leased,
                state: Mutex::default(),
                observer,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A renewal was seen: acting is allowed until `deadline` (a later deadline wins over an
    /// earlier one; a revoked gate stays closed).
    pub fn renewed_until(&self, deadline: Instant) {
        let mut s = self.state();
        if s.deadline.is_none_or(|d| d < deadline) {
            s.deadline = Some(deadline);
        }
    }

    /// The lease is gone (taken by another replica, or released): closed for good.
    pub fn revoke(&self, why: impl Into<String>) {
        let mut s = self.state();
        if s.revoked.is_none() {
            s.revoked = Some(why.into());
        }
    }

    /// Whether acting is allowed at this moment.
    pub fn is_open(&self) -> bool {
        self.refusal(Instant::now()).is_none()
    }

    /// How long acting stays allowed from now (`None` when it is not, or when the gate is always
    /// open).
    pub fn remaining(&self) -> Option<Duration> {
        if !self.inner.leased {
            return None;
        }
        let s = self.state();
        if s.revoked.is_some() {
            return None;
        }
        s.deadline
            .and_then(|d| d.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Why acting is not allowed at `now`, or `None` when it is.
    fn refusal(&self, now: Instant) -> Option<String> {
        if !self.inner.leased {
            return None;
        }
        let s = self.state();
        if let Some(why) = &s.revoked {
            return Some(format!(
                "this replica no longer holds the leader lease ({why})"
            ));
        }
        match s.deadline {
            None => Some("this replica has not yet seen its leader lease renewed".into()),
            Some(d) if now >= d => Some(format!(
                "this replica's leader lease was last seen renewed too long ago (its deadline passed {:.1}s ago); host and BMC actions resume once a renewal lands",
                now.duration_since(d).as_secs_f64()
            )),
            Some(_) => None,
        }
    }

    /// Allow `action` now, or refuse it (and count and log the refusal).
    pub fn check(&self, action: &'static str) -> Result<(), Withheld> {
        let Some(reason) = self.refusal(Instant::now()) else {
            return Ok(());
        };
        *self.state().withheld.entry(action).or_default() += 1;
        if let Some(o) = &self.inner.observer {
            o(action);
        }
        tracing::warn!(action, %reason, "host action withheld");
        Err(Withheld { action, reason })
    }

    /// Actions withheld so far, per action.
    pub fn withheld(&self) -> BTreeMap<&'static str, u64> {
        self.state().withheld.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_leader_election_the_gate_is_always_open() {
        let g = ActionGate::open();
        assert!(g.check("start_domain").is_ok());
        g.revoke("ignored");
        assert!(g.is_open());
        assert_eq!(g.remaining(), None);
    }

    #[test]
    fn a_leader_acts_only_until_its_deadline() {
        let g = ActionGate::leased();
        let e = g.check("start_domain").unwrap_err();
        assert!(e.reason.contains("not yet seen"), "{e}");
        g.renewed_until(Instant::now() + Duration::from_secs(60));
        assert!(g.check("start_domain").is_ok());
        assert!(g.remaining().is_some_and(|r| r > Duration::from_secs(50)));
        // An older renewal seen late does not shorten the deadline.
        g.renewed_until(Instant::now());
        assert!(g.is_open());
    }

    #[test]
    fn past_the_deadline_every_action_is_withheld_and_counted() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let g = ActionGate::leased_observed(move |a| s.lock().unwrap().push(a));
        g.renewed_until(Instant::now());
        let e = g.check("destroy_domain").unwrap_err();
        assert_eq!(e.action, "destroy_domain");
        assert!(e.reason.contains("deadline passed"), "{e}");
        assert!(g.check("destroy_domain").is_err());
        assert_eq!(g.withheld().get("destroy_domain"), Some(&2));
        assert_eq!(*seen.lock().unwrap(), vec!["destroy_domain"; 2]);
        // A renewal that lands opens it again.
        g.renewed_until(Instant::now() + Duration::from_secs(5));
        assert!(g.is_open());
    }

    #[test]
    fn a_revoked_gate_stays_closed() {
        let g = ActionGate::leased();
        g.renewed_until(Instant::now() + Duration::from_secs(60));
        g.revoke("held by ferry-b");
        let e = g.check("fence power_off").unwrap_err();
        assert!(e.reason.contains("ferry-b"), "{e}");
        g.renewed_until(Instant::now() + Duration::from_secs(120));
        assert!(!g.is_open());
        assert_eq!(g.remaining(), None);
    }
}
