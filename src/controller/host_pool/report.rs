//! What the HostPool's status and Events say about its hosts: transitions, orphan domains, and
//! the Ready and Degraded conditions.

use super::*;
use crate::api::condition::{ConditionStatus, set_condition};
use crate::api::{HostPool, HostState, HostStatus};
use crate::controller::Context;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use std::sync::Arc;

/// A pool ferry refuses (see [`crate::plan::pool_check`]): no host is probed or listed, `Ready`
/// is False with the first problem's reason and every problem in the message, and a Warning
/// Event says so when the reason changes.
pub(super) async fn refused(
    ctx: &Context,
    pool: &HostPool,
    selected: usize,
    st: &mut HostPoolStatus,
    problems: &[crate::plan::uri_policy::Problem],
    now: Timestamp,
) {
    let (reason, message) = crate::plan::uri_policy::summary(problems);
    let was = crate::api::condition::find(&st.conditions, "Ready").map(|c| c.reason.clone());
    if was.as_deref() != Some(reason) {
        ctx.event(pool, EventType::Warning, reason, "Check", message.clone())
            .await;
    }
    st.selected_hosts = i32::try_from(selected).unwrap_or(i32::MAX);
    st.ready_hosts = 0;
    st.hosts.clear();
    set_condition(
        &mut st.conditions,
        "Ready",
        ConditionStatus::False,
        reason,
        format!("ferry does not use this pool until it is fixed: {message}"),
        pool.metadata.generation,
        now,
    );
}

/// Events for what changed since the last report: hosts whose state changed, new orphan domains.
pub(super) async fn transitions(
    ctx: &Context,
    pool: &HostPool,
    nodes: &[Arc<Node>],
    previous: &HostPoolStatus,
    hosts: &[HostStatus],
) {
    for h in hosts {
        let before = previous.hosts.iter().find(|p| p.name == h.name);
        let known_orphans = before.map(|b| b.orphans.as_slice()).unwrap_or_default();
        if h.orphans.iter().any(|o| !known_orphans.contains(o)) {
            let note = format!(
                "Host {}: ferry domains whose VirtualMachine no longer exists (left in place): {}",
                h.name,
                h.orphans.join(", ")
            );
            ctx.event(pool, EventType::Warning, "OrphanDomains", "Probe", note)
                .await;
        }
        // A host in Standby, or being powered on, is expected not to answer: power
        // management's Events say what happens to it.
        let kept_off = h.power().kept_off() && h.state != HostState::Ready;
        if before.map(|b| b.state) != Some(h.state) && !kept_off {
            let (type_, reason) = match h.state {
                HostState::Ready => (EventType::Normal, "HostReady"),
                HostState::Cordoned => (EventType::Normal, "HostCordoned"),
                HostState::Unreachable => (EventType::Warning, "HostUnreachable"),
                HostState::Misconfigured => (EventType::Warning, "HostMisconfigured"),
            };
            let note = match &h.message {
                Some(m) => format!("Host {}: {m}", h.name),
                None => format!("Host {} is {:?}", h.name, h.state),
            };
            let node = nodes.iter().find(|n| n.name_any() == h.name);
            host_event(ctx, pool, node.map(|n| n.as_ref()), type_, reason, note).await;
        }
    }
}

/// The host counts and the `Ready` and `Degraded` conditions.
pub(super) fn conditions(
    pool: &HostPool,
    st: &mut HostPoolStatus,
    hosts: &[HostStatus],
    now: Timestamp,
) {
    st.selected_hosts = hosts.len() as i32;
    st.ready_hosts = hosts.iter().filter(|h| h.state == HostState::Ready).count() as i32;
    let troubled: Vec<String> = hosts
        .iter()
        .filter(|h| h.state != HostState::Ready)
        .map(|h| match h.power() {
            p if p.kept_off() => format!("{} {p}", h.name),
            _ => format!("{} {:?}", h.name, h.state),
        })
        .collect();
    let (status, reason, message) = if hosts.is_empty() {
        (
            ConditionStatus::False,
            "NoHostsSelected",
            "spec.nodeSelector matches no Node: label the hypervisor Nodes or fix the selector"
                .to_string(),
        )
    } else if st.ready_hosts == 0 {
        (
            ConditionStatus::False,
            "NoHostReady",
            format!("no host can take VMs: {}", troubled.join(", ")),
        )
    } else if troubled.is_empty() {
        (
            ConditionStatus::True,
            "AllHostsReady",
            format!("{} host(s) ready", st.ready_hosts),
        )
    } else {
        (
            ConditionStatus::True,
            "SomeHostsNotReady",
            format!(
                "{} of {} host(s) ready; {}",
                st.ready_hosts,
                hosts.len(),
                troubled.join(", ")
            ),
        )
    };
    set_condition(
        &mut st.conditions,
        "Ready",
        status,
        reason,
        message,
        pool.metadata.generation,
        now,
    );
    let (status, reason, message) = degraded(hosts);
    set_condition(
        &mut st.conditions,
        "Degraded",
        status,
        reason,
        message,
        pool.metadata.generation,
        now,
    );
}

/// Plan and act on the pool's evacuations, and report them in the `Evacuating` condition (with
/// an Event when an evacuation ends).
pub(super) async fn evacuation(
    ctx: &Context,
    pool: &HostPool,
    nodes: &[Arc<Node>],
    st: &mut HostPoolStatus,
    now: Timestamp,
) {
    let evac = crate::controller::evacuation::reconcile(pool, nodes, ctx).await;
    let was = crate::api::condition::find(&st.conditions, "Evacuating").map(|c| c.reason.clone());
    if was.as_deref() == Some("Evacuating") && matches!(evac.reason, "Evacuated" | "Blocked") {
        let (type_, reason) = if evac.reason == "Evacuated" {
            (EventType::Normal, "Evacuated")
        } else {
            (EventType::Warning, "EvacuationBlocked")
        };
        ctx.event(pool, type_, reason, "Evacuate", evac.message.clone())
            .await;
    }
    set_condition(
        &mut st.conditions,
        "Evacuating",
        evac.status,
        evac.reason,
        evac.message,
        pool.metadata.generation,
        now,
    );
}

/// Publish an Event about `pool` with the host's Node as the related object: the recorder merges
/// repeats of one reason about one object into a series, and without the Node the transitions of
/// different hosts in one probe would be merged into the first host's Event.
pub(super) async fn host_event(
    ctx: &Context,
    pool: &HostPool,
    node: Option<&Node>,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = kube::runtime::events::Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Probe".into(),
        secondary: node.map(|n| n.object_ref(&())),
    };
    if let Err(e) = ctx.recorder.publish(&ev, &pool.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not record Event");
    }
}

/// `Degraded`: True while a selected host can neither take nor keep VMs (unreachable or
/// misconfigured), naming them; a cordoned host is a choice, not a fault, and so is one in
/// Standby or being powered on.
pub(super) fn degraded(hosts: &[HostStatus]) -> (ConditionStatus, &'static str, String) {
    let bad: Vec<String> = hosts
        .iter()
        .filter(|h| matches!(h.state, HostState::Unreachable | HostState::Misconfigured))
        .filter(|h| !h.power().kept_off())
        .map(|h| format!("{} {:?}", h.name, h.state))
        .collect();
    if bad.is_empty() {
        (
            ConditionStatus::False,
            "AllHostsHealthy",
            "every selected host answers".to_string(),
        )
    } else {
        (
            ConditionStatus::True,
            "HostsUnhealthy",
            format!(
                "{} of {} host(s): {}",
                bad.len(),
                hosts.len(),
                bad.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, state: HostState) -> HostStatus {
        HostStatus::new(name, state)
    }

    #[test]
    fn degraded_names_the_hosts_that_fail_not_the_cordoned_ones() {
        let healthy = [host("a", HostState::Ready), host("b", HostState::Cordoned)];
        assert_eq!(degraded(&healthy).0, ConditionStatus::False);
        let hosts = [
            host("a", HostState::Ready),
            host("b", HostState::Unreachable),
            host("c", HostState::Misconfigured),
            host("d", HostState::Cordoned),
        ];
        let (status, reason, message) = degraded(&hosts);
        assert_eq!((status, reason), (ConditionStatus::True, "HostsUnhealthy"));
        assert_eq!(message, "2 of 4 host(s): b Unreachable, c Misconfigured");
    }
}
