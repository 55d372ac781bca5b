//! The HA controller: judge every host of the pools an HAPolicy covers once a second
//! (`plan::host_health`), and act on the verdict: live-migrate VMs away from a NotReady host
//! (VirtualMachineMigration objects), fence a failed host through its BMC, hand its VMs to the
//! VirtualMachine controller for a restart elsewhere once the host is proven off (the
//! `ferry.dev/failover` annotation; placement stays with that controller), undefine stale domains
//! when the host comes back, and report verdicts, incidents and conditions.
//!
//! State that must survive a controller restart (verdict, incident, fence confirmation) is in the
//! HAPolicy's status and read back when the controller starts; liveness timers restart from zero,
//! which only delays a verdict.

mod act;
mod bmc;
mod failover;
mod judge;
mod memory;
mod probe;
mod report;

use super::context::{HA_VERDICT_TTL, HaKey};
use super::hosts::pool_nodes;
use super::{Context, lock, status::apply_status};
use crate::api::condition::{ConditionStatus, set_condition};
use crate::api::ha_policy::{CONFIRM_ANNOTATION, HostHealth};
use crate::api::{HAPolicy, HAPolicyStatus, HostPool, VirtualMachine};
use crate::error::{Error, Result};
use crate::hypervisor::HostConnections;
use crate::plan::host_health::{self, Evidence, Inputs};
use act::act;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::SelectorExt;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use memory::{Memory, Open, record, restore, stale_domains};
use probe::{node_signal, start_probe};
use report::{Tally, admission_for, upsert_incident};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONTROLLER: &str = "hapolicy";

/// How often hosts are judged.
pub const TICK: Duration = Duration::from_secs(1);

/// A liveness probe (connect + list domains) that takes longer than this counts as a miss.
const PROBE_DEADLINE: Duration = Duration::from_secs(2);

/// Longest wait between probe connection attempts to a host that did not answer: a host that
/// comes back is seen within this.
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(4);

/// How long a probe's domain listing may take once the host answered.
const LIST_DEADLINE: Duration = Duration::from_secs(20);

/// While a host's domains keep changing (a failover starting dozens of them there), its
/// domains are listed again at most this often: a listing reads every domain, and each read
/// competes with the starts for the host's libvirt.
const LIST_CHURN_INTERVAL: Duration = Duration::from_secs(5);

/// How long a tick waits for a BMC reading before going on without it (the reading goes on in
/// the background, for the next tick).
const BMC_READ_WAIT: Duration = Duration::from_secs(1);

/// The longest the action on one host may take in a tick (stopping its domains, handing its
/// VMs over, creating evacuation migrations); what is left is done next tick. A fence runs on
/// its own, outside the tick.
const ACT_DEADLINE: Duration = Duration::from_secs(10);

/// The longest one host may take in a tick, judging and acting together; the hosts of a tick
/// are judged at once, so this bounds the tick.
const HOST_STEP_DEADLINE: Duration = Duration::from_secs(15);

// A tick never takes longer than a verdict counts: placement never sees a verdict expire
// between two ticks because one host was slow.
const _: () = assert!(HOST_STEP_DEADLINE.as_secs() * 2 <= HA_VERDICT_TTL.as_secs());
const _: () =
    assert!(ACT_DEADLINE.as_secs() + BMC_READ_WAIT.as_secs() < HOST_STEP_DEADLINE.as_secs());

/// Poll interval while waiting for a BMC to report Off.
const FENCE_POLL: Duration = Duration::from_millis(250);

/// Incidents kept in status.
const MAX_INCIDENTS: usize = 20;

/// The HA controller's context: the shared one plus what it remembers per host.
pub struct HaContext {
    pub ctx: Arc<Context>,
    /// What it remembers per host.
    hosts: Mutex<HashMap<HaKey, Memory>>,
    /// Liveness probes run on connections of their own: on the shared connection a probe would
    /// queue behind a slow call (a destroy waiting for QEMU to exit, a large define) and a busy
    /// host would be taken for a dead one.
    probes: HostConnections,
    /// Signalled when a probe finds a host's libvirt newly silent, so that the policies judge
    /// the host at once rather than at their next tick.
    pub fell_silent: Arc<tokio::sync::Notify>,
}

impl HaContext {
    /// Hosts whose probe connection the host or the network ended, by URI (see
    /// [`HostConnections::lost_connections`]).
    pub fn lost_probes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.probes.lost_connections()
    }

    /// A context over the shared one.
    pub fn new(ctx: Arc<Context>) -> Self {
        let probes = ctx
            .hosts
            .connections
            .sibling()
            .with_backoff(Duration::from_secs(1), PROBE_BACKOFF_MAX);
        HaContext {
            ctx,
            hosts: Mutex::default(),
            probes,
            fell_silent: Arc::default(),
        }
    }
}

/// The HAPolicies that cover any of `pools` (same namespace, the pool named in `hostPools`).
pub fn policies_covering(
    policies: &[Arc<HAPolicy>],
    pools: &[ObjectRef<HostPool>],
) -> Vec<ObjectRef<HAPolicy>> {
    policies
        .iter()
        .filter(|p| {
            let ns = p.namespace();
            pools
                .iter()
                .any(|pool| pool.namespace == ns && p.spec.host_pools.contains(&pool.name))
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// How often what is remembered for deleted policies, pools and Nodes is dropped.
pub const SWEEP: Duration = Duration::from_secs(2);

impl HaContext {
    /// Drop what is remembered for (policy, pool, host)s that are gone: HA memory, verdicts,
    /// storm guards and admission blocks of a deleted policy or pool, of a pool the policy no
    /// longer names, of a Node the pool no longer selects, and memory made for an earlier
    /// object of the same name. Nothing is dropped before the caches hold their first list.
    pub fn forget_gone(&self) {
        let Some(live) = self.ctx.forget_gone() else {
            return;
        };
        let caches = &self.ctx.caches;
        let uid_of_policy = |k: &HaKey| {
            caches
                .policies
                .get(&ObjectRef::new(&k.policy).within(&k.host.namespace))
                .and_then(|p| p.metadata.uid.clone())
        };
        let uid_of_pool = |k: &HaKey| {
            caches
                .pools
                .get(&ObjectRef::new(&k.host.pool).within(&k.host.namespace))
                .and_then(|p| p.metadata.uid.clone())
        };
        let mut hosts = lock(&self.hosts);
        hosts.retain(|k, m| {
            live.contains(k)
                && m.owners.policy == uid_of_policy(k)
                && m.owners.pool == uid_of_pool(k)
        });
        self.ctx.metrics.set_ha_hosts_judged(hosts.len());
    }
}

/// Drop what is remembered for gone objects every [`SWEEP`], for as long as it runs (a policy
/// that is deleted is never reconciled again, so this does not wait for a reconcile).
pub async fn sweep(hc: Arc<HaContext>) {
    loop {
        hc.forget_gone();
        tokio::time::sleep(SWEEP).await;
    }
}

/// A status time in whole seconds (see [`crate::controller::status::whole_seconds`]).
fn ts(t: Timestamp) -> Time {
    crate::controller::status::whole_seconds(t)
}

fn evidence_name(e: Evidence) -> &'static str {
    match e {
        Evidence::Fenced => "Fenced",
        Evidence::ShutOff => "ShutOff",
        Evidence::Confirmed => "Confirmed",
    }
}

/// Reconcile one HAPolicy: one tick of every covered host.
#[tracing::instrument(name = "reconcile", skip_all, fields(
    object.kind = "HAPolicy",
    object.namespace = %policy.namespace().unwrap_or_default(),
    object.name = %policy.name_any(),
))]
pub async fn reconcile(policy: Arc<HAPolicy>, hc: Arc<HaContext>) -> Result<Requeue> {
    let ctx = hc.ctx.clone();
    if !ctx.gate().is_open() {
        // This replica may not act now (its leader lease lapsed): no fence, no host action, no
        // write. Liveness timers keep what they measured.
        return Ok(Requeue::requeue(super::GATE_WAIT));
    }
    if !ctx.caches.all_ready() {
        // Judged on a partial list, every host would look new (its memory not restored), every
        // VM missing, and the status written from that would lose the incidents under way.
        return Ok(Requeue::requeue(Duration::from_millis(500)));
    }
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = policy.namespace().unwrap_or_default();
    let now = Timestamp::now();
    let previous = policy.status.clone().unwrap_or_default();
    let mut st = previous.clone();
    st.observed_generation = policy.metadata.generation;
    let selector = match policy.vm_selector() {
        Ok(s) => s,
        Err(e) => {
            report::invalid_selector(&policy, &mut st, &e, now);
            write(&ctx, &policy, &st).await?;
            return Ok(Requeue::await_change());
        }
    };
    let all_vms = ctx.caches.vms.state();
    let mut tally = Tally::default();
    let mut pools = Vec::new();
    for pool_name in &policy.spec.host_pools {
        match ctx.caches.pools.get(&ObjectRef::new(pool_name).within(&ns)) {
            None => tally.missing_pools.push(pool_name.clone()),
            Some(pool) => pools.push(pool),
        }
    }
    // Every pool at once (each judges its hosts at once).
    let ticks = pools.iter().map(|pool| {
        judge::pool(
            &hc,
            &policy,
            pool,
            selector.as_ref(),
            &previous,
            &all_vms,
            now,
        )
    });
    for out in futures::future::join_all(ticks).await {
        tally.protected += out.protected;
        tally.storms.extend(out.storm);
        tally.capacity.extend(out.capacity);
        for h in out.hosts {
            tally.awaiting.extend(h.awaiting);
            tally.fence_failed.extend(h.fence_failed);
            if let Some(i) = &h.incident {
                upsert_incident(&mut st.incidents, &h.key, i, &all_vms, &ctx.ha);
            }
            tally.hosts.push(h.health);
        }
    }
    tally.report(&policy, &mut st, now);
    write(&ctx, &policy, &st).await?;
    Ok(Requeue::requeue(TICK))
}

/// Write the policy's status (when it changed).
async fn write(ctx: &Context, policy: &HAPolicy, st: &HAPolicyStatus) -> Result<()> {
    let ns = policy.namespace().unwrap_or_default();
    let api: Api<HAPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    apply_status(&api, policy, policy.status.as_ref(), st).await?;
    Ok(())
}

/// Failed reconciles back off.
pub fn error_policy(policy: Arc<HAPolicy>, err: &Error, hc: Arc<HaContext>) -> Requeue {
    hc.ctx.metrics.failure(CONTROLLER, err.category());
    tracing::warn!(policy = %policy.name_any(), error = %err, "HA reconcile failed");
    let key = policy
        .meta()
        .uid
        .clone()
        .unwrap_or_else(|| policy.name_any());
    Requeue::requeue(hc.ctx.backoff.next(&key).min(Duration::from_secs(5)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_times_compare_equal_to_what_the_server_stores() {
        let now = Timestamp::from_millisecond(1_700_000_000_123).expect("t");
        let written = ts(now);
        let read_back: Time =
            serde_json::from_value(serde_json::to_value(&written).expect("serialize"))
                .expect("deserialize");
        assert_eq!(read_back, written);
        assert_eq!(written.0.as_second(), 1_700_000_000);
    }

    #[test]
    fn a_lost_host_wakes_the_policies_covering_its_pools_only() {
        let policy = |ns: &str, name: &str, pools: &[&str]| {
            let p: HAPolicy = serde_json::from_value(serde_json::json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "HAPolicy",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"hostPools": pools}
            }))
            .expect("policy");
            Arc::new(p)
        };
        let policies = [
            policy("infra", "a", &["lab", "edge"]),
            policy("infra", "b", &["other"]),
            policy("apps", "c", &["lab"]),
        ];
        let lab = ObjectRef::<HostPool>::new("lab").within("infra");
        let woken: Vec<String> = policies_covering(&policies, &[lab])
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(woken, ["a"]);
        assert!(policies_covering(&policies, &[]).is_empty());
    }
}
