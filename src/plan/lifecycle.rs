//! What to do with a VM's domain next, from its run strategy and what libvirt reports.

use crate::api::{RunStrategy, VmPhase};
use crate::plan::domain::{DomainState, ShutOffReason};
use std::time::Duration;

/// Power request of a `Manual` VM (the `ferry.dev/power` annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    On,
    Off,
}

impl Power {
    /// Parse the annotation value (`on` / `off`, case-insensitive).
    pub fn parse(v: &str) -> Option<Power> {
        match v.trim().to_ascii_lowercase().as_str() {
            "on" | "running" | "start" => Some(Power::On),
            "off" | "stopped" | "stop" => Some(Power::Off),
            _ => None,
        }
    }
}

/// Everything the decision depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    pub strategy: RunStrategy,
    /// The `ferry.dev/power` annotation, if set and valid.
    pub power: Option<Power>,
    /// A `ferry.dev/restart` request not acted on yet.
    pub restart_pending: bool,
    /// State of the (defined) domain.
    pub state: DomainState,
    /// The guest shut itself down since it was last started (RerunOnFailure leaves it off).
    pub stopped_by_guest: bool,
    /// How long ago ferry asked the guest to shut down, if it did.
    pub stopping_for: Option<Duration>,
    /// How long the guest may take to shut down before it is forced off.
    pub grace: Duration,
    /// The `ferry.dev/paused` annotation asks for the running domain to be paused.
    pub pause_requested: bool,
    /// ferry paused the domain on request (the Ready reason said so): without the request any
    /// more, it resumes it. A domain paused for another reason (an I/O error, by hand) is left
    /// as it is.
    pub paused_on_request: bool,
}

/// One step towards the desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do.
    None,
    /// Start the domain.
    Start,
    /// Ask the guest to shut down (ACPI).
    Shutdown,
    /// The guest was asked to shut down: check again after this long.
    WaitForShutdown(Duration),
    /// Force the domain off.
    Destroy,
    /// Pause the running domain (on request).
    Pause,
    /// Let the domain ferry paused run again.
    Resume,
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// Whether the VM should run, by its strategy.
    pub want_running: bool,
    /// The pending restart request is done (or cannot apply) and should be recorded as handled.
    pub restart_handled: bool,
}

/// Decide the next step.
pub fn decide(i: &Inputs) -> Decision {
    let active = i.state.is_active();
    let want_running = match i.strategy {
        RunStrategy::Always => true,
        RunStrategy::Halted => false,
        RunStrategy::Manual => match i.power {
            Some(Power::On) => true,
            Some(Power::Off) => false,
            // No power request: keep the current state; a restart request implies "running".
            None => active || i.restart_pending,
        },
        RunStrategy::RerunOnFailure => !i.stopped_by_guest || i.restart_pending,
    };
    let stop = || {
        if i.grace.is_zero() {
            return Action::Destroy;
        }
        match i.stopping_for {
            None => Action::Shutdown,
            Some(t) if t >= i.grace => Action::Destroy,
            Some(t) => Action::WaitForShutdown(i.grace - t),
        }
    };
    let (action, restart_handled) = if i.restart_pending {
        match (want_running, active) {
            (false, _) => (if active { stop() } else { Action::None }, true),
            (true, true) => (stop(), false),
            (true, false) => (Action::Start, true),
        }
    } else if want_running && !active {
        (Action::Start, false)
    } else if !want_running && active {
        (stop(), false)
    } else if want_running && i.pause_requested && i.state == DomainState::Running {
        (Action::Pause, false)
    } else if want_running
        && !i.pause_requested
        && i.paused_on_request
        && i.state == DomainState::Paused
    {
        (Action::Resume, false)
    } else {
        (Action::None, false)
    };
    Decision {
        action,
        want_running,
        restart_handled,
    }
}

/// Whether the guest shut itself down: the domain is off with reason "shutdown" although ferry did
/// not ask (the VM was running, not stopping), or it was already known to have done so.
pub fn stopped_by_guest(previous: bool, prev_phase: Option<VmPhase>, state: DomainState) -> bool {
    match state {
        DomainState::ShutOff(ShutOffReason::Shutdown) => {
            previous || prev_phase == Some(VmPhase::Running)
        }
        DomainState::ShutOff(_) | DomainState::Crashed => previous,
        _ => false,
    }
}

/// Phase shown for an observed domain state and the step just decided.
pub fn phase(state: Option<DomainState>, action: Action) -> VmPhase {
    match (state, action) {
        (None, _) => VmPhase::Provisioning,
        (Some(DomainState::Unknown), _) => VmPhase::Unknown,
        (Some(DomainState::ShuttingDown), _) => VmPhase::Stopping,
        (Some(s), Action::Shutdown | Action::WaitForShutdown(_) | Action::Destroy)
            if s.is_active() =>
        {
            VmPhase::Stopping
        }
        (Some(s), _) if s.is_active() => VmPhase::Running,
        (Some(_), Action::Start) => VmPhase::Starting,
        (Some(_), _) => VmPhase::Stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::{Destroy, Shutdown, Start, WaitForShutdown};
    use DomainState::*;
    use RunStrategy::*;

    const OFF: DomainState = ShutOff(ShutOffReason::Other);
    const GUEST_OFF: DomainState = ShutOff(ShutOffReason::Shutdown);
    const CRASHED: DomainState = ShutOff(ShutOffReason::Crashed);
    const G: Duration = Duration::from_secs(60);

    fn inputs(strategy: RunStrategy, state: DomainState) -> Inputs {
        Inputs {
            strategy,
            power: None,
            restart_pending: false,
            state,
            stopped_by_guest: false,
            stopping_for: None,
            grace: G,
            pause_requested: false,
            paused_on_request: false,
        }
    }

    #[test]
    fn run_strategies() {
        // (strategy, state, power, stopped_by_guest, expected action, want_running)
        let table = [
            (Always, OFF, None, false, Start, true),
            (Always, Running, None, false, Action::None, true),
            (Always, GUEST_OFF, None, true, Start, true),
            (Always, CRASHED, None, false, Start, true),
            (RerunOnFailure, OFF, None, false, Start, true),
            (RerunOnFailure, CRASHED, None, false, Start, true),
            (RerunOnFailure, GUEST_OFF, None, true, Action::None, false),
            (Halted, Running, None, false, Shutdown, false),
            (Halted, OFF, None, false, Action::None, false),
            (Halted, Paused, None, false, Shutdown, false),
            (Manual, OFF, None, false, Action::None, false),
            (Manual, Running, None, false, Action::None, true),
            (Manual, OFF, Some(Power::On), false, Start, true),
            (Manual, Running, Some(Power::Off), false, Shutdown, false),
            (Manual, CRASHED, Some(Power::On), false, Start, true),
        ];
        for (strategy, state, power, by_guest, action, want) in table {
            let mut i = inputs(strategy, state);
            i.power = power;
            i.stopped_by_guest = by_guest;
            let d = decide(&i);
            assert_eq!(
                d.action, action,
                "{strategy:?} {state:?} {power:?} {by_guest}"
            );
            assert_eq!(d.want_running, want, "{strategy:?} {state:?} {power:?}");
            assert!(!d.restart_handled);
        }
    }

    #[test]
    fn pause_on_request_and_resume_only_what_ferry_paused() {
        // (strategy, state, pause requested, paused on request, restart pending, expected)
        let table = [
            (Always, Running, true, false, false, Action::Pause),
            (Always, Paused, true, true, false, Action::None),
            (Always, Paused, false, true, false, Action::Resume),
            // Paused by something else (an I/O error, by hand): left alone.
            (Always, Paused, false, false, false, Action::None),
            // Not running: nothing to pause, the strategy decides.
            (Always, OFF, true, false, false, Start),
            (Manual, OFF, true, false, false, Action::None),
            // Stopping or restarting wins over pausing.
            (Halted, Running, true, false, false, Shutdown),
            (Always, Running, true, false, true, Shutdown),
        ];
        for (strategy, state, requested, on_request, restart, action) in table {
            let mut i = inputs(strategy, state);
            i.pause_requested = requested;
            i.paused_on_request = on_request;
            i.restart_pending = restart;
            assert_eq!(
                decide(&i).action,
                action,
                "{strategy:?} {state:?} requested={requested} on_request={on_request} restart={restart}"
            );
        }
    }

    #[test]
    fn graceful_stop_then_force() {
        let mut i = inputs(Halted, Running);
        assert_eq!(decide(&i).action, Shutdown);
        i.stopping_for = Some(Duration::from_secs(20));
        assert_eq!(decide(&i).action, WaitForShutdown(Duration::from_secs(40)));
        i.stopping_for = Some(G);
        assert_eq!(decide(&i).action, Destroy);
        i.grace = Duration::ZERO;
        i.stopping_for = None;
        assert_eq!(decide(&i).action, Destroy);
    }

    #[test]
    fn restart_request() {
        let mut i = inputs(Always, Running);
        i.restart_pending = true;
        let d = decide(&i);
        assert_eq!((d.action, d.restart_handled), (Shutdown, false));
        i.state = GUEST_OFF;
        let d = decide(&i);
        assert_eq!((d.action, d.restart_handled), (Start, true));
        // A halted VM has nothing to restart: the request is recorded, nothing starts.
        let mut h = inputs(Halted, OFF);
        h.restart_pending = true;
        let d = decide(&h);
        assert_eq!((d.action, d.restart_handled), (Action::None, true));
        // Manual without a power request: a restart brings it back up, it does not leave it off.
        let mut m = inputs(Manual, GUEST_OFF);
        m.restart_pending = true;
        assert_eq!(decide(&m).action, Start);
        // RerunOnFailure after a guest shutdown: a restart request starts it again.
        let mut r = inputs(RerunOnFailure, GUEST_OFF);
        r.stopped_by_guest = true;
        r.restart_pending = true;
        assert_eq!(decide(&r).action, Start);
    }

    #[test]
    fn guest_initiated_shutdown_is_told_apart() {
        assert!(stopped_by_guest(false, Some(VmPhase::Running), GUEST_OFF));
        assert!(!stopped_by_guest(false, Some(VmPhase::Stopping), GUEST_OFF));
        assert!(stopped_by_guest(true, Some(VmPhase::Stopped), GUEST_OFF));
        assert!(!stopped_by_guest(false, Some(VmPhase::Running), CRASHED));
        assert!(!stopped_by_guest(true, Some(VmPhase::Stopped), Running));
    }

    #[test]
    fn phases() {
        assert_eq!(phase(None, Start), VmPhase::Provisioning);
        assert_eq!(phase(Some(OFF), Start), VmPhase::Starting);
        assert_eq!(phase(Some(OFF), Action::None), VmPhase::Stopped);
        assert_eq!(phase(Some(Running), Action::None), VmPhase::Running);
        assert_eq!(phase(Some(Running), Shutdown), VmPhase::Stopping);
        assert_eq!(phase(Some(ShuttingDown), Action::None), VmPhase::Stopping);
        assert_eq!(
            phase(Some(DomainState::Unknown), Action::None),
            VmPhase::Unknown
        );
    }

    #[test]
    fn power_annotation() {
        assert_eq!(Power::parse("On"), Some(Power::On));
        assert_eq!(Power::parse(" off "), Some(Power::Off));
        assert_eq!(Power::parse("maybe"), None);
    }
}
