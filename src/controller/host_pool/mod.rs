//! The HostPool controller: find the pool's Nodes, probe each host's libvirt, report per-host
//! state and pool conditions.

mod candidates;
mod foreign;
mod probe;
mod report;

use crate::controller::context::host_reads as reading;
pub use reading::{HostReads, LOAD_SAMPLE_INTERVAL};

use super::hosts::pool_nodes;
use super::{Context, status::apply_status};
use super::{balancing, power};
use crate::api::condition::{ConditionStatus, set_condition};
use crate::api::power::HostPower;
use crate::api::{HostPool, HostPoolStatus, HostState};
use crate::error::{Error, Result};
use crate::plan::pool_check;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::Selector;
use kube::runtime::controller::Action as Requeue;
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "hostpool";

/// How often each host is probed. A probe asks a host nothing while its last reading stands
/// (see `reading`): the connection's keepalive and close callback tell when it goes away.
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
    if !ctx.gate().is_open() {
        // This replica may not act now (its leader lease lapsed): no host action, no write.
        return Ok(Requeue::requeue(super::GATE_WAIT));
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
    // A pool whose URIs or directories ferry refuses is never connected to.
    if let Err(problems) = pool_check::check_pool(&pool.spec, ctx.hosts.uri_limits()) {
        report::refused(&ctx, &pool, nodes.len(), &mut st, &problems, now).await;
        apply_status(&api, pool.as_ref(), pool.status.as_ref(), &st).await?;
        ctx.pool_reports.wrote(&uid, st);
        return Ok(Requeue::await_change());
    }
    let hosts = probe::hosts(&pool, &nodes, &ctx, &previous).await;
    report::transitions(&ctx, &pool, &nodes, &previous, &hosts).await;
    st.hosts = hosts;
    // Power management first: the hosts it empties for Standby are evacuated below.
    let power_due = power::reconcile(&pool, &ctx, &nodes, &mut st, now).await;
    let hosts = st.hosts.clone();
    report::conditions(&pool, &mut st, &hosts, now);
    // A host in Standby is expected not to answer; one being powered on is watched closely.
    let unreachable = hosts
        .iter()
        .any(|h| h.state == HostState::Unreachable && h.power() != HostPower::Standby);
    let mut fresh = pool.as_ref().clone();
    fresh.status = Some(st.clone());
    report::evacuation(&ctx, &fresh, &nodes, &mut st, now).await;
    let balance_due = balancing::reconcile(&pool, &ctx, &mut st, now).await;
    apply_status(&api, pool.as_ref(), pool.status.as_ref(), &st).await?;
    ctx.pool_reports.wrote(&uid, st);
    let probe = if unreachable {
        UNREACHABLE_PROBE_INTERVAL
    } else {
        PROBE_INTERVAL
    };
    // A balancing run or a power step due before the next probe is not kept waiting for it.
    let due = match (balance_due, power_due) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(Requeue::requeue(due.map_or(probe, |d| {
        d.max(Duration::from_secs(1)).min(probe)
    })))
}

/// Failed reconciles back off.
pub fn error_policy(pool: Arc<HostPool>, err: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.failure(CONTROLLER, err.category());
    let key = pool.meta().uid.clone().unwrap_or_else(|| pool.name_any());
    Requeue::requeue(ctx.backoff.next(&key))
}
