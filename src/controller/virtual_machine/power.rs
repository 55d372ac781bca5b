//! Run state: what the lifecycle planner decides for the domain, the holds that can stop a start
//! (a host failing over, VM monitoring's restart limit), carrying the decision out, and the Ready
//! condition that results.

use super::*;
use crate::api::condition::{ConditionStatus, find, set_condition};
use crate::api::virtual_machine::{PAUSE_ANNOTATION, POWER_ANNOTATION, RESTART_ANNOTATION};
use crate::api::{RunStrategy, VirtualMachine, VirtualMachineStatus, VmPhase};
use crate::controller::Context;
use crate::controller::context::{HaKey, PolicyPool, PoolHost};
use crate::error::Result;
use crate::hypervisor::{DomainInfo, DomainState, Hypervisor, HypervisorError, ShutOffReason};
use crate::plan::definition::{self};
use crate::plan::lifecycle::{self, Action, Power};
use crate::plan::monitoring;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use std::time::Duration;

/// Drive the domain to the state the run strategy asks for and report the phase and the Ready
/// condition; returns when to look again.
pub(super) async fn run_state(
    vm: &VirtualMachine,
    ctx: &Context,
    placed: &Placed,
    dom: &DomainInfo,
    st: &mut VirtualMachineStatus,
    prior_phase: Option<VmPhase>,
    now: Timestamp,
) -> Result<Duration, Blocked> {
    let generation = vm.metadata.generation;
    let hv = placed.hv.as_ref();
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let host_error = placed.blocked(prior_phase);
    st.stopped_by_guest = lifecycle::stopped_by_guest(st.stopped_by_guest, st.phase, dom.state);
    if !dom.state.is_active() {
        ctx.vm_runtime.stopped(&uid);
    }
    let restart_token = vm.annotations().get(RESTART_ANNOTATION).cloned();
    let restart_pending = restart_token.is_some() && restart_token != st.last_restart_request;
    let inputs = lifecycle::Inputs {
        strategy: vm.run_strategy(),
        power: vm
            .annotations()
            .get(POWER_ANNOTATION)
            .and_then(|v| Power::parse(v)),
        restart_pending,
        state: dom.state,
        stopped_by_guest: st.stopped_by_guest,
        stopping_for: ctx.vm_runtime.stopping_for(&uid),
        grace: Duration::from_secs(vm.grace_seconds()),
        pause_requested: pause_requested(vm),
        paused_on_request: find(&st.conditions, "Ready")
            .is_some_and(|c| c.reason == PAUSED_ON_REQUEST),
    };
    let mut decision = lifecycle::decide(&inputs);
    let held = match hold_for_failover(vm, ctx, &placed.name, &mut decision) {
        Some(h) => Some(h),
        None => {
            let held =
                monitor_unplanned_stop(vm, ctx, st, prior_phase, &inputs, &mut decision, now).await;
            st.restart_held = held.is_some();
            held
        }
    };
    act(vm, ctx, hv, &placed.name, dom, decision.action).await?;
    if decision.restart_handled {
        st.last_restart_request = restart_token;
    }
    if decision.action == Action::Start {
        st.stopped_by_guest = false;
    }
    let state = match decision.action {
        Action::None => dom.state,
        // libvirt returns from a start once the guest's vCPUs run (or finds it running already:
        // started meanwhile by someone else, whose start sends an event that has it looked at
        // again). Asking would only queue behind the host's other starts in a failover.
        Action::Start => DomainState::Running,
        _ => hv
            .domain_state(&crate::plan::naming::vm_domain_uuid(vm))
            .await
            .map_err(|e| host_error(e, "looking up the domain"))?
            .unwrap_or(dom.state),
    };
    if state.is_active() != dom.state.is_active() {
        super::define::restate_up_to_date(st, state.is_active(), generation, now);
    }
    let phase = lifecycle::phase(Some(state), decision.action);
    // What the guest agent says (addresses, OS); nothing when it does not run or has no agent.
    // A VM that keeps running is asked while an address is polled for, and every
    // GUEST_REFRESH; in between what it said last stands (a safety resync asks nothing).
    if state == DomainState::Running {
        let before = vm.status.as_ref().map(|s| s.interfaces.as_slice());
        definition::keep_guest_view(&mut st.interfaces, before.unwrap_or_default());
    }
    // Not right after starting the domain: its guest has not booted, so there is no agent to
    // answer yet, and the call would only queue behind (and slow) the host's other starts (a
    // failover starts dozens at once); the address poll asks once the VM runs.
    let ask_agent = state == DomainState::Running
        && decision.action != Action::Start
        && (decision.action != Action::None
            || prior_phase != Some(VmPhase::Running)
            || address_poll(st, state, now).is_some()
            || ctx.vm_runtime.agent_due(&uid, GUEST_REFRESH));
    if ask_agent {
        let report = hv
            .guest_info(&crate::plan::naming::vm_domain_uuid(vm))
            .await
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, "guest agent not asked");
                None
            });
        ctx.vm_runtime.agent_asked(&uid);
        definition::apply_guest_report(&mut st.interfaces, report.as_ref());
        st.guest_os = report.and_then(|r| r.os);
    } else if state != DomainState::Running {
        definition::apply_guest_report(&mut st.interfaces, None);
        st.guest_os = None;
    }
    if phase == VmPhase::Running && st.phase != Some(VmPhase::Running) {
        ctx.backoff.reset(&key(vm));
    }
    st.phase = Some(phase);
    if phase == VmPhase::Running
        && let Some(r) = st.last_recovery.as_mut()
        && r.running.is_none()
        && r.to_host.as_deref() == Some(placed.name.as_str())
    {
        r.running = Some(Time(now));
        ctx.ha.ran(&uid, &r.incident);
    }
    let (ready, reason, message) = match &held {
        Some(h) if !state.is_active() => (ConditionStatus::False, h.reason, h.message.clone()),
        _ if phase == VmPhase::Running
            && state == DomainState::Paused
            && (decision.action == Action::Pause
                || (pause_requested(vm) && inputs.paused_on_request)) =>
        {
            (
                ConditionStatus::False,
                PAUSED_ON_REQUEST,
                format!(
                    "paused on request on host {} (annotation {PAUSE_ANNOTATION}=true; `kubectl ferry unpause {}` lets it run)",
                    placed.name,
                    vm.name_any()
                ),
            )
        }
        _ => readiness(vm, phase, state, &placed.name, st.stopped_by_guest),
    };
    set_condition(
        &mut st.conditions,
        "Ready",
        ready,
        reason,
        message,
        generation,
        now,
    );
    let steady = || {
        let after = match address_poll(st, state, now) {
            Some(poll) => poll,
            None => ctx.safety_resync.next(&uid),
        };
        // Secrets are not watched: new cloud-init data in one is found by looking.
        if crate::controller::cloud_init::uses_secrets(vm) {
            after.min(SECRET_RECHECK)
        } else {
            after
        }
    };
    if let Some(after) = held.and_then(|h| h.retry_after) {
        return Ok(after.min(steady()));
    }
    Ok(match phase {
        VmPhase::Starting | VmPhase::Stopping => match decision.action {
            Action::WaitForShutdown(d) => d.min(TRANSITION),
            _ => TRANSITION,
        },
        // libvirt cannot tell the domain's state: not steady.
        VmPhase::Unknown => RECHECK.min(steady()),
        // Steady: a domain event, a watch or a reconnection to the host wakes the VM earlier.
        _ => steady(),
    })
}

/// When to ask the guest agent again: while the domain runs, an interface has no address yet,
/// and the VM started running less than [`ADDRESS_WINDOW`] ago (by its Ready condition). `None`
/// once every address is known (a later change shows at the next event or safety resync).
pub(super) fn address_poll(
    st: &VirtualMachineStatus,
    state: DomainState,
    now: Timestamp,
) -> Option<Duration> {
    if state != DomainState::Running || st.interfaces.iter().all(|i| i.ip_address.is_some()) {
        return None;
    }
    let since = find(&st.conditions, "Ready")
        .filter(|c| c.status == "True")?
        .last_transition_time
        .0;
    let running_for = Duration::try_from(now.duration_since(since)).unwrap_or_default();
    if running_for < ADDRESS_FAST_WINDOW {
        Some(ADDRESS_POLL_FAST)
    } else {
        (running_for < ADDRESS_WINDOW).then_some(ADDRESS_POLL)
    }
}

/// Ready reason of a VM paused through the `ferry.dev/paused` annotation.
pub(super) const PAUSED_ON_REQUEST: &str = "PausedOnRequest";

/// Whether the `ferry.dev/paused` annotation asks for the VM to be paused.
fn pause_requested(vm: &VirtualMachine) -> bool {
    vm.annotations()
        .get(PAUSE_ANNOTATION)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Ready reason of a VM that VM monitoring leaves stopped.
pub(super) const RESTART_LIMIT_REACHED: &str = "RestartLimitReached";

/// Ready reason of a crashed VM that VM monitoring does not start while the storm guard holds.
pub(super) const STORM_GUARD_HOLDS: &str = "StormGuardHolds";

/// Ready reason of a VM whose host the HA controller is failing over.
pub(super) const HOST_FAILING_OVER: &str = "HostFailingOver";

/// A VM left stopped: the Ready reason and message, and when to look again (for VM monitoring,
/// when the window frees a restart; `None` with a limit of 0).
pub(super) struct Held {
    reason: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

/// A VM that an HAPolicy covers gets no start on a host the HA controller is failing over (its
/// domains being stopped, or the host fenced): the VM is about to restart elsewhere, and a start
/// here would fight that.
pub(super) fn hold_for_failover(
    vm: &VirtualMachine,
    ctx: &Context,
    host: &str,
    decision: &mut lifecycle::Decision,
) -> Option<Held> {
    if decision.action != Action::Start {
        return None;
    }
    // The verdicts of the policies covering this VM on this pool's view of the host.
    let at = PoolHost::new(
        &vm.namespace().unwrap_or_default(),
        &vm.spec.host_pool,
        host,
    );
    let verdict = ctx
        .caches
        .covering_policies(vm)
        .iter()
        .filter_map(|p| ctx.ha.get(&HaKey::new(&p.name_any(), at.clone())))
        .find(|v| v.failing_over())?;
    decision.action = Action::None;
    decision.restart_handled = false;
    Some(Held {
        reason: HOST_FAILING_OVER,
        message: format!(
            "host {host} is {verdict} for HA: the VM restarts on another host once this one is proven off"
        ),
        retry_after: Some(Duration::from_secs(2)),
    })
}

/// VM monitoring. When the decision is to start a domain that stopped without ferry asking
/// (crashed, killed, or shut down under `Always`) and an HAPolicy covers the VM, the restart is
/// counted against the policy's limits; over the limit the start is cancelled and the VM is
/// [`Held`]. Records each counted restart in `st` and as an Event.
pub(super) async fn monitor_unplanned_stop(
    vm: &VirtualMachine,
    ctx: &Context,
    st: &mut VirtualMachineStatus,
    prior_phase: Option<VmPhase>,
    inputs: &lifecycle::Inputs,
    decision: &mut lifecycle::Decision,
    now: Timestamp,
) -> Option<Held> {
    let Some(covering) = ctx.caches.covering_policy(vm) else {
        st.unplanned_restarts.clear();
        return None;
    };
    let (policy, limits) = (covering.name_any(), monitoring::Limits::of(&covering));
    // The start after a failover is planned, not a crash restart.
    if st
        .last_recovery
        .as_ref()
        .is_some_and(|r| r.to_host.is_some() && r.running.is_none())
    {
        return None;
    }
    let window = limits.window;
    let history: Vec<Timestamp> = st.unplanned_restarts.iter().map(|t| t.0).collect();
    st.unplanned_restarts = monitoring::in_window(&history, now, window)
        .into_iter()
        .map(Time)
        .collect();
    // Held before: recorded in the status (the Ready reason may since show something else, such
    // as an unreachable host, and the phase be Unknown), or, as written before that record
    // existed, the Ready reason.
    let was_held = st.restart_held
        || find(&st.conditions, "Ready")
            .is_some_and(|c| c.reason == RESTART_LIMIT_REACHED || c.reason == STORM_GUARD_HOLDS);
    let unplanned = decision.action == Action::Start
        && monitoring::unplanned_stop(
            inputs.state.is_active(),
            // Unknown: its host did not answer for a while, and the domain stopped meanwhile
            // (crashed, or the host restarted): as unplanned as a stop seen while it ran.
            matches!(prior_phase, Some(VmPhase::Running | VmPhase::Unknown)),
            was_held,
            inputs.restart_pending,
        );
    if !unplanned {
        return None;
    }
    let what = match inputs.state {
        DomainState::ShutOff(ShutOffReason::Crashed) | DomainState::Crashed => "crashed",
        DomainState::ShutOff(ShutOffReason::Shutdown) => "was shut down from inside the guest",
        _ => "stopped without ferry asking",
    };
    // The storm guard of a policy covering the VM holds for its pool: no VM is restarted while
    // too many of the pool's hosts look failed (the controller's view is then likelier wrong
    // than the hosts).
    let ns = vm.namespace().unwrap_or_default();
    if let Some(guard) = ctx.caches.covering_policies(vm).into_iter().find(|p| {
        ctx.ha
            .storm(&PolicyPool::new(&ns, &vm.spec.host_pool, &p.name_any()))
    }) {
        decision.action = Action::None;
        let message = format!(
            "the domain {what}; the storm guard of HAPolicy {} holds for HostPool {} (too many of its hosts look failed at once), so it is started again once that ends",
            guard.name_any(),
            vm.spec.host_pool
        );
        if find(&st.conditions, "Ready").is_none_or(|c| c.reason != STORM_GUARD_HOLDS) {
            ctx.event(
                vm,
                EventType::Warning,
                STORM_GUARD_HOLDS,
                "Start",
                message.clone(),
            )
            .await;
        }
        return Some(Held {
            reason: STORM_GUARD_HOLDS,
            message,
            retry_after: Some(Duration::from_secs(2)),
        });
    }
    match monitoring::decide(&history, now, limits) {
        monitoring::Verdict::Restart { count } => {
            st.unplanned_restarts.push(Time(now));
            ctx.event(
                vm,
                EventType::Warning,
                "RestartedAfterCrash",
                "Start",
                format!(
                    "The domain {what}; starting it again (restart {count} of {} allowed per {}s by HAPolicy {policy})",
                    limits.max_restarts,
                    window.as_secs()
                ),
            )
            .await;
            None
        }
        monitoring::Verdict::Hold { count, until } => {
            decision.action = Action::None;
            let when = match until {
                Some(t) => format!("it is started again automatically after {t}"),
                None => "it is not started again automatically (maxRestarts 0)".to_string(),
            };
            let message = format!(
                "the domain {what} and was restarted {count} times in the last {}s, the limit of HAPolicy {policy}; {when}, or restart it now with the annotation ferry.dev/restart=<token>",
                window.as_secs()
            );
            if !was_held {
                ctx.event(
                    vm,
                    EventType::Warning,
                    RESTART_LIMIT_REACHED,
                    "Start",
                    message.clone(),
                )
                .await;
            }
            Some(Held {
                reason: RESTART_LIMIT_REACHED,
                message,
                retry_after: until.map(|t| {
                    Duration::try_from(t.duration_since(now)).unwrap_or_default()
                        + Duration::from_secs(1)
                }),
            })
        }
    }
}

/// Carry out one lifecycle step.
pub(super) async fn act(
    vm: &VirtualMachine,
    ctx: &Context,
    hv: &dyn Hypervisor,
    host: &str,
    dom: &DomainInfo,
    action: Action,
) -> Result<(), Blocked> {
    let uid = &dom.uuid;
    let fail = |e: HypervisorError, what: &'static str, reason: &'static str| {
        if e.is_connection_lost() {
            host_blocked(host, e, what, Some(VmPhase::Running))
        } else {
            Blocked::new(
                VmPhase::Failed,
                reason,
                format!("{what} on host {host} failed: {e}"),
                Retry::Backoff,
            )
        }
    };
    match action {
        Action::None | Action::WaitForShutdown(_) => {}
        Action::Start => {
            hv.start_domain(uid).await.map_err(|e| {
                if e.is_disk_locked() {
                    // The split-brain guard: another copy may still run somewhere.
                    Blocked::new(
                        VmPhase::Pending,
                        "DiskLocked",
                        format!(
                            "host {host} refused to start the domain because a disk is locked by a copy running elsewhere (QEMU's image locking or libvirt's lock manager): ferry never runs a VM twice and starts it once that copy is gone ({e})"
                        ),
                        Retry::Backoff,
                    )
                } else {
                    fail(e, "starting the domain", "StartFailed")
                }
            })?;
            ctx.vm_runtime.stopped(uid);
            ctx.event(
                vm,
                EventType::Normal,
                "Started",
                "Start",
                format!("Started on host {host}"),
            )
            .await;
        }
        Action::Shutdown => {
            hv.shutdown_domain(uid)
                .await
                .map_err(|e| fail(e, "shutting down the guest", "StopFailed"))?;
            ctx.vm_runtime.stop_requested(uid);
            ctx.event(
                vm,
                EventType::Normal,
                "ShuttingDown",
                "Stop",
                format!(
                    "Asked the guest to shut down; forced off after {}s",
                    vm.grace_seconds()
                ),
            )
            .await;
        }
        Action::Pause => {
            hv.pause_domain(uid)
                .await
                .map_err(|e| fail(e, "pausing the domain", "PauseFailed"))?;
            ctx.event(
                vm,
                EventType::Normal,
                "Paused",
                "Pause",
                format!("Paused on host {host} (annotation {PAUSE_ANNOTATION})"),
            )
            .await;
        }
        Action::Resume => {
            hv.resume_domain(uid)
                .await
                .map_err(|e| fail(e, "resuming the domain", "ResumeFailed"))?;
            ctx.event(
                vm,
                EventType::Normal,
                "Resumed",
                "Pause",
                format!("Resumed on host {host}"),
            )
            .await;
        }
        Action::Destroy => {
            hv.destroy_domain(uid)
                .await
                .map_err(|e| fail(e, "forcing the domain off", "StopFailed"))?;
            ctx.vm_runtime.stopped(uid);
            ctx.event(
                vm,
                EventType::Normal,
                "ForcedOff",
                "Stop",
                format!("Forced the domain off on host {host}"),
            )
            .await;
        }
    }
    Ok(())
}

/// The Ready condition for a phase.
pub(super) fn readiness(
    vm: &VirtualMachine,
    phase: VmPhase,
    state: DomainState,
    host: &str,
    stopped_by_guest: bool,
) -> (ConditionStatus, &'static str, String) {
    use ConditionStatus::{False, True};
    match phase {
        VmPhase::Running if state == DomainState::Paused => (
            False,
            "Paused",
            format!("the domain is paused on host {host}"),
        ),
        VmPhase::Running => (True, "Running", format!("running on host {host}")),
        VmPhase::Starting => (False, "Starting", format!("starting on host {host}")),
        VmPhase::Stopping => (
            False,
            "Stopping",
            format!("the guest is shutting down on host {host}"),
        ),
        VmPhase::Stopped => {
            let why = match vm.run_strategy() {
                RunStrategy::Halted => "stopped as requested (runStrategy Halted)".to_string(),
                RunStrategy::Manual => "stopped (runStrategy Manual; set annotation ferry.dev/power=on to start)".to_string(),
                RunStrategy::RerunOnFailure if stopped_by_guest => {
                    "the guest shut itself down (runStrategy RerunOnFailure leaves it off; annotate ferry.dev/restart to start it)".to_string()
                }
                _ => "stopped".to_string(),
            };
            (False, "Stopped", why)
        }
        VmPhase::Provisioning => (
            False,
            "Provisioning",
            format!("creating disks and domain on host {host}"),
        ),
        other => (False, "NotRunning", format!("{other} on host {host}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::virtual_machine::InterfaceStatus;

    fn status(
        addresses: &[Option<&str>],
        ready: ConditionStatus,
        since: Timestamp,
    ) -> VirtualMachineStatus {
        let mut st = VirtualMachineStatus {
            interfaces: addresses
                .iter()
                .enumerate()
                .map(|(i, a)| InterfaceStatus {
                    name: format!("eth{i}"),
                    mac: format!("52:54:00:00:00:0{i}"),
                    ip_address: a.map(String::from),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        set_condition(
            &mut st.conditions,
            "Ready",
            ready,
            "Running",
            "",
            Some(1),
            since,
        );
        st
    }

    #[test]
    fn the_agent_is_polled_only_while_an_address_is_missing_soon_after_the_start() {
        let started: Timestamp = "2026-12-07T06:00:00Z".parse().expect("time");
        let at = |secs: i64| started + k8s_openapi::jiff::SignedDuration::from_secs(secs);
        let running = DomainState::Running;
        let missing = status(&[Some("10.0.0.5"), None], ConditionStatus::True, started);
        assert_eq!(
            address_poll(&missing, running, at(5)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            address_poll(&missing, running, at(121)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            address_poll(&missing, running, at(1799)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            address_poll(&missing, running, at(1801)),
            None,
            "a guest without an agent is not asked for ever"
        );
        assert_eq!(address_poll(&missing, DomainState::Paused, at(5)), None);
        let known = status(&[Some("10.0.0.5")], ConditionStatus::True, started);
        assert_eq!(address_poll(&known, running, at(5)), None);
        let no_network = status(&[], ConditionStatus::True, started);
        assert_eq!(address_poll(&no_network, running, at(5)), None);
        let not_ready = status(&[None], ConditionStatus::False, started);
        assert_eq!(address_poll(&not_ready, running, at(5)), None);
    }
}
