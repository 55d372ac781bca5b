//! The HostPool controller: find the pool's Nodes, probe each host's libvirt, report per-host
//! state and pool conditions.

use super::hosts::{cordoned, host_uri, pool_nodes, redact};
use super::{Context, credentials, status::apply_status};
use crate::api::condition::{ConditionStatus, set_condition};
use crate::api::{HostPool, HostState, HostStatus};
use crate::error::{Error, Result};
use crate::hypervisor::HypervisorError;
use crate::plan::capacity::{self, Amount};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::Selector;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "hostpool";
/// How often each host is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(15);
/// How often a pool with an unreachable host is probed, so the host is seen back soon after it
/// answers again (connection attempts still follow the registry's backoff).
pub const UNREACHABLE_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Reconcile one HostPool, in a `reconcile` span naming it (see the VirtualMachine controller).
#[tracing::instrument(name = "reconcile", skip_all, fields(
    object.kind = "HostPool",
    object.namespace = %pool.namespace().unwrap_or_default(),
    object.name = %pool.name_any(),
))]
pub async fn reconcile(pool: Arc<HostPool>, ctx: Arc<Context>) -> Result<Requeue> {
    if !ctx.caches.ready() {
        // A partial Node list would drop hosts from the status (and add them back a moment later).
        return Ok(Requeue::requeue(Duration::from_millis(500)));
    }
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = pool.namespace().unwrap_or_default();
    let api: Api<HostPool> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Timestamp::now();
    // The status this process wrote last, if any: the cache may not show it yet when a wake-up
    // (a lost connection) follows a write at once, and host transitions (and their Events) must
    // be judged against what was reported, not reported twice.
    let uid = pool.metadata.uid.clone().unwrap_or_default();
    let previous = ctx
        .pool_reports
        .last(&uid)
        .or_else(|| pool.status.clone())
        .unwrap_or_default();
    let mut st = previous.clone();
    st.observed_generation = pool.metadata.generation;

    if let Err(e) = Selector::try_from(pool.spec.node_selector.clone()) {
        set_condition(
            &mut st.conditions,
            "Ready",
            ConditionStatus::False,
            "InvalidSelector",
            format!("spec.nodeSelector is not a valid label selector: {e}"),
            pool.metadata.generation,
            now,
        );
        apply_status(&api, pool.as_ref(), pool.status.as_ref(), &st).await?;
        return Ok(Requeue::await_change());
    }

    let nodes = pool_nodes(&ctx.caches.nodes, &pool);
    let vm_uids = known_vm_uids(&ctx).await;
    let probes = nodes.iter().map(|n| {
        let before = previous.hosts.iter().find(|h| h.name == n.name_any());
        probe(&pool, n, &ctx, vm_uids.as_ref(), before)
    });
    let mut hosts: Vec<HostStatus> = futures::future::join_all(probes).await;
    for h in &mut hosts {
        let before = previous.hosts.iter().find(|p| p.name == h.name);
        // Keep the previous contact time while the state holds, so a steady pool causes no writes.
        if let Some(b) = before.filter(|b| b.state == h.state) {
            h.last_contact = b.last_contact.clone();
        } else if h.state == HostState::Unreachable {
            h.last_contact = before.and_then(|b| b.last_contact.clone());
        }
        if h.capacity.is_none()
            && let Some(b) = before
        {
            keep_last_known(h, b);
        }
        let known_orphans = before.map(|b| b.orphans.as_slice()).unwrap_or_default();
        if h.orphans.iter().any(|o| !known_orphans.contains(o)) {
            let note = format!(
                "Host {}: ferry domains whose VirtualMachine no longer exists (left in place): {}",
                h.name,
                h.orphans.join(", ")
            );
            ctx.event(
                pool.as_ref(),
                EventType::Warning,
                "OrphanDomains",
                "Probe",
                note,
            )
            .await;
        }
        if before.map(|b| b.state) != Some(h.state) {
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
            host_event(
                &ctx,
                pool.as_ref(),
                node.map(|n| n.as_ref()),
                type_,
                reason,
                note,
            )
            .await;
        }
    }
    st.selected_hosts = hosts.len() as i32;
    st.ready_hosts = hosts.iter().filter(|h| h.state == HostState::Ready).count() as i32;
    let troubled: Vec<String> = hosts
        .iter()
        .filter(|h| h.state != HostState::Ready)
        .map(|h| format!("{} {:?}", h.name, h.state))
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
    let (status, reason, message) = degraded(&hosts);
    set_condition(
        &mut st.conditions,
        "Degraded",
        status,
        reason,
        message,
        pool.metadata.generation,
        now,
    );
    let unreachable = hosts.iter().any(|h| h.state == HostState::Unreachable);
    st.hosts = hosts;
    let evac = super::evacuation::reconcile(&pool, &nodes, &ctx).await;
    let was = crate::api::condition::find(&st.conditions, "Evacuating").map(|c| c.reason.clone());
    if was.as_deref() == Some("Evacuating") && matches!(evac.reason, "Evacuated" | "Blocked") {
        let (type_, reason) = if evac.reason == "Evacuated" {
            (EventType::Normal, "Evacuated")
        } else {
            (EventType::Warning, "EvacuationBlocked")
        };
        ctx.event(
            pool.as_ref(),
            type_,
            reason,
            "Evacuate",
            evac.message.clone(),
        )
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
    apply_status(&api, pool.as_ref(), pool.status.as_ref(), &st).await?;
    ctx.pool_reports.wrote(&uid, st);
    Ok(Requeue::requeue(if unreachable {
        UNREACHABLE_PROBE_INTERVAL
    } else {
        PROBE_INTERVAL
    }))
}

/// Publish an Event about `pool` with the host's Node as the related object: the recorder merges
/// repeats of one reason about one object into a series, and without the Node the transitions of
/// different hosts in one probe would be merged into the first host's Event.
async fn host_event(
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
/// misconfigured), naming them; a cordoned host is a choice, not a fault.
fn degraded(hosts: &[HostStatus]) -> (ConditionStatus, &'static str, String) {
    let bad: Vec<String> = hosts
        .iter()
        .filter(|h| matches!(h.state, HostState::Unreachable | HostState::Misconfigured))
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

/// The UIDs of all VirtualMachines, once the VM reflector has listed them (`None` before: then
/// no domain is called an orphan).
async fn known_vm_uids(ctx: &Context) -> Option<HashSet<String>> {
    tokio::time::timeout(Duration::from_secs(5), ctx.caches.vms.wait_until_ready())
        .await
        .ok()?
        .ok()?;
    Some(
        ctx.caches
            .vms
            .state()
            .iter()
            .filter_map(|vm| vm.metadata.uid.clone())
            .collect(),
    )
}

/// While a host does not answer, show its last known capacity and usage.
fn keep_last_known(h: &mut HostStatus, before: &HostStatus) {
    h.hypervisor_version = h
        .hypervisor_version
        .take()
        .or(before.hypervisor_version.clone());
    h.libvirt_version = h.libvirt_version.take().or(before.libvirt_version.clone());
    h.capacity = before.capacity.clone();
    h.allocatable = before.allocatable.clone();
    h.allocated = before.allocated.clone();
    h.vm_count = before.vm_count;
    h.foreign_domains = before.foreign_domains;
    h.foreign_allocated = before.foreign_allocated.clone();
    h.orphans = before.orphans.clone();
}

/// How long a probe waits for a new connection to a host it last saw `Unreachable`. The attempt
/// goes on in the background (the registry keeps its outcome for the next probe), so a host that
/// stays away does not hold up the pool's status for a connect timeout on every probe.
const RECONNECT_WAIT: Duration = Duration::from_secs(1);

/// Connect to `uri` for `pool`. When the host was `Unreachable` (`before`), wait at most
/// [`RECONNECT_WAIT`]; `Ok(None)` means the attempt is still under way.
async fn connect_for_probe(
    pool: &Arc<HostPool>,
    uri: &str,
    ctx: &Arc<Context>,
    before: Option<&HostStatus>,
) -> crate::hypervisor::HvResult<Option<Arc<dyn crate::hypervisor::Hypervisor>>> {
    let attempt = {
        let (ctx, pool, uri) = (ctx.clone(), pool.clone(), uri.to_string());
        tokio::spawn(async move { ctx.hosts.connect(&uri, &pool).await })
    };
    let waited = match before.filter(|b| b.state == HostState::Unreachable) {
        Some(_) => tokio::time::timeout(RECONNECT_WAIT, attempt).await,
        None => Ok(attempt.await),
    };
    match waited {
        Ok(Ok(result)) => result.map(Some),
        Ok(Err(e)) => Err(HypervisorError::ConnectionLost {
            uri: redact(uri),
            message: format!("the connection attempt failed: {e}"),
        }),
        Err(_) => Ok(None),
    }
}

/// Probe one host: its facts, then its domains.
async fn probe(
    pool: &Arc<HostPool>,
    node: &Node,
    ctx: &Arc<Context>,
    vm_uids: Option<&HashSet<String>>,
    before: Option<&HostStatus>,
) -> HostStatus {
    let name = node.name_any();
    let mut h = HostStatus::new(name.clone(), HostState::Misconfigured);
    let uri = match host_uri(pool, node) {
        Ok(u) => u,
        Err(m) => {
            h.message = Some(m);
            return h;
        }
    };
    h.uri = Some(redact(&uri));
    h.ha_verdict = ctx.ha.of_host(&name);
    // A lost connection needs no invalidation here: the registry replaces it, after its backoff.
    let answer = match connect_for_probe(pool, &uri, ctx, before).await {
        Ok(Some(hv)) => read_host(hv.as_ref()).await,
        // Still unreachable, still trying in the background: say what was last known.
        Ok(None) => {
            h.state = HostState::Unreachable;
            h.message = before.and_then(|b| b.message.clone());
            return h;
        }
        Err(e) => Err(e),
    };
    match answer {
        Ok((info, domains)) => {
            let t = capacity::tally(&domains, vm_uids);
            let cap = Amount {
                cpus: u64::from(info.cpus),
                memory: info.memory_kib.saturating_mul(1024),
            };
            h.capacity = Some(cap.into());
            h.allocatable = Some(capacity::allocatable(cap, &capacity::Policy::of(pool)).into());
            h.allocated = Some(t.ferry.into());
            h.vm_count = Some(i32::try_from(t.ferry_domains).unwrap_or(i32::MAX));
            h.foreign_domains = Some(i32::try_from(t.foreign_domains).unwrap_or(i32::MAX));
            h.foreign_allocated = Some(t.foreign.into());
            h.orphans = t.orphans;
            h.hypervisor_version = Some(info.hypervisor_version.clone());
            h.libvirt_version = Some(info.libvirt_version.clone());
            h.last_contact = Some(Time(Timestamp::now()));
            h.state = if cordoned(node) {
                HostState::Cordoned
            } else {
                HostState::Ready
            };
            ctx.hosts.remember_info(&uri, info);
        }
        Err(e) => {
            let credentials = matches!(&e, HypervisorError::Rejected { .. })
                || matches!(&e, HypervisorError::OperationFailed { operation, .. } if *operation == credentials::OPERATION);
            h.state = if credentials {
                HostState::Misconfigured
            } else {
                HostState::Unreachable
            };
            h.message = Some(e.to_string());
        }
    }
    h
}

/// Host facts and domains, in one go.
async fn read_host(
    hv: &dyn crate::hypervisor::Hypervisor,
) -> crate::hypervisor::HvResult<(
    crate::hypervisor::HostInfo,
    Vec<crate::hypervisor::DomainInfo>,
)> {
    let info = hv.host_info().await?;
    let domains = hv.list_domains().await?;
    Ok((info, domains))
}

/// Failed reconciles back off.
pub fn error_policy(pool: Arc<HostPool>, err: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.failure(CONTROLLER, err.category());
    let key = pool.meta().uid.clone().unwrap_or_else(|| pool.name_any());
    Requeue::requeue(ctx.backoff.next(&key))
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
