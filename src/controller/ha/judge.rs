//! One tick of one pool: probe its hosts, judge each (`plan::host_health`), remember and act on
//! the verdict, and say what the policy's status reports. The hosts are judged at once, each
//! within its own deadline, so one slow BMC or host holds up no other.

use super::*;
use crate::api::{HAPolicyStatus, HostPool};
use crate::controller::context::{PolicyPool, PoolHost};
use crate::plan::host_health::Timings;
use k8s_openapi::api::core::v1::Node;
use kube::core::Selector;
use memory::Owners;

/// One pool as a tick sees it.
pub(super) struct PoolTick<'a> {
    pub(super) policy: &'a HAPolicy,
    pub(super) pool: &'a HostPool,
    pub(super) nodes: Vec<Arc<Node>>,
    /// The pool's VMs in the policy's namespace.
    pub(super) pool_vms: Vec<Arc<VirtualMachine>>,
    /// Those the policy covers.
    pub(super) covered: Vec<Arc<VirtualMachine>>,
    /// Every VM (stale domains and incidents look at VMs of any pool).
    pub(super) all_vms: &'a [Arc<VirtualMachine>],
    pub(super) timings: Timings,
    pub(super) now: Timestamp,
}

/// What one tick of a pool found, for the policy's status.
#[derive(Default)]
pub(super) struct PoolOutcome {
    /// VMs of the pool the policy covers.
    pub(super) protected: usize,
    /// Why the storm guard holds, when it does.
    pub(super) storm: Option<String>,
    /// Failover capacity: (sufficient, message), with admission control.
    pub(super) capacity: Option<(bool, String)>,
    /// Each host.
    pub(super) hosts: Vec<HostOutcome>,
}

/// What one host's judgement says in the policy's status.
pub(super) struct HostOutcome {
    pub(super) key: HaKey,
    pub(super) health: HostHealth,
    /// The host waits for a human to confirm it off: what to do.
    pub(super) awaiting: Option<String>,
    /// The host's fence failed: what happened.
    pub(super) fence_failed: Option<String>,
    /// Its open incident.
    pub(super) incident: Option<Open>,
}

/// One tick of `pool`: restore memory of hosts not seen yet, start probes, apply the storm
/// guard, judge and act on every host at once, then admission control.
pub(super) async fn pool(
    hc: &Arc<HaContext>,
    policy: &HAPolicy,
    pool: &HostPool,
    selector: Option<&Selector>,
    previous: &HAPolicyStatus,
    all_vms: &[Arc<VirtualMachine>],
    now: Timestamp,
) -> PoolOutcome {
    let ns = policy.namespace().unwrap_or_default();
    let pool_vms = hc.ctx.caches.vms_in_pool(&ns, &pool.name_any());
    let covered: Vec<Arc<VirtualMachine>> = pool_vms
        .iter()
        .filter(|v| selector.is_none_or(|s| s.matches(v.labels())))
        .cloned()
        .collect();
    let mut out = PoolOutcome {
        protected: covered.len(),
        ..PoolOutcome::default()
    };
    let t = PoolTick {
        policy,
        pool,
        nodes: pool_nodes(&hc.ctx.caches.nodes, pool),
        pool_vms,
        covered,
        all_vms,
        timings: Timings::of(policy),
        now,
    };
    let key = |n: &Node| HaKey::new(&t.policy.name_any(), PoolHost::of(t.pool, &n.name_any()));
    // Initialise memory from status (a restarted controller resumes incidents); memory made for
    // a policy or pool of the same name that was deleted since starts afresh.
    let owners = Owners::of(t.policy, t.pool);
    for n in &t.nodes {
        let k = key(n);
        let mut hosts = lock(&hc.hosts);
        if hosts.get(&k).is_some_and(|m| m.owners != owners) {
            hosts.remove(&k);
        }
        hosts
            .entry(k.clone())
            .or_insert_with(|| restore(previous, owners.clone(), &k, t.now));
    }
    // Liveness probes run in the background, one at a time per host.
    for n in &t.nodes {
        start_probe(hc, &key(n), t.pool, n, t.now);
    }
    // Hosts power management keeps off count neither as failing nor as hosts of the pool.
    let judged = t
        .nodes
        .iter()
        .filter(|n| !kept_off(t.pool, &n.name_any()))
        .count();
    let failing: Vec<String> = t
        .nodes
        .iter()
        .filter(|n| !kept_off(t.pool, &n.name_any()))
        .filter_map(|n| {
            let hosts = lock(&hc.hosts);
            let m = hosts.get(&key(n))?;
            host_health::looks_failed(
                node_signal(n, t.now),
                m.libvirt,
                m.verdict,
                t.now,
                &t.timings,
            )
            .map(|why| format!("{} ({why})", n.name_any()))
        })
        .collect();
    let storm = host_health::storm(judged, failing.len(), t.policy.max_failed_hosts_percent());
    let guard = PolicyPool::new(&ns, &t.pool.name_any(), &t.policy.name_any());
    let held = hc.ctx.ha.storm(&guard);
    hc.ctx.ha.set_storm(&guard, storm);
    if storm {
        let why = format!(
            "{} of {judged} host(s) of HostPool {} look failed (more than {}%): {}",
            failing.len(),
            t.pool.name_any(),
            t.policy.max_failed_hosts_percent(),
            failing.join(", ")
        );
        if !held {
            tracing::warn!(policy = %t.policy.name_any(), "storm guard holds: {why}");
        }
        out.storm = Some(why);
    } else if held {
        tracing::info!(policy = %t.policy.name_any(), pool = %t.pool.name_any(), "storm guard ends");
    }

    // Every host at once, each within its deadline: one that hangs (a BMC or libvirt that does
    // not answer) is reported from memory and judged again next tick.
    let steps = t.nodes.iter().map(|n| {
        let k = key(n);
        let t = &t;
        async move {
            if tokio::time::timeout(HOST_STEP_DEADLINE, host(hc, t, &k, n, storm))
                .await
                .is_err()
            {
                tracing::warn!(
                    policy = %t.policy.name_any(), pool = %t.pool.name_any(), host = %n.name_any(),
                    "judging and acting on the host took longer than {}s; going on without it this tick",
                    HOST_STEP_DEADLINE.as_secs()
                );
            }
            outcome(hc, t, &k)
        }
    });
    out.hosts = futures::future::join_all(steps)
        .await
        .into_iter()
        .flatten()
        .collect();

    let mut blocks = std::collections::HashMap::new();
    if let Some(ac) = &t.policy.spec.admission_control {
        let (ok, msg, beyond) = admission_for(t.policy, t.pool, ac, &t.covered);
        let enforce = ac.mode == Some(crate::api::ha_policy::AdmissionMode::Enforce);
        // Enforce keeps VMs beyond the capacity that have no host yet from being placed;
        // placed VMs are only reported.
        for v in &t.covered {
            let Some(uid) = v.metadata.uid.as_deref() else {
                continue;
            };
            let unplaced = v.status.as_ref().and_then(|s| s.host.as_ref()).is_none();
            if enforce && unplaced && beyond.contains(&v.name_any()) {
                blocks.insert(uid.to_string(), format!(
                    "admission control (HAPolicy {}, mode Enforce): no failover capacity left for this VM; {msg}",
                    t.policy.name_any()
                ));
            }
        }
        out.capacity = Some((ok, msg));
    }
    hc.ctx.placement.set_admission_blocks(guard, blocks);
    out
}

/// Judge one host, remember the verdict, and act on it (the act within [`ACT_DEADLINE`]).
async fn host(hc: &Arc<HaContext>, t: &PoolTick<'_>, key: &HaKey, n: &Arc<Node>, storm: bool) {
    let ctx = &hc.ctx;
    let name = n.name_any();
    let Some(mem) = lock(&hc.hosts).get(key).cloned() else {
        return;
    };
    let on_host: Vec<&Arc<VirtualMachine>> = t
        .covered
        .iter()
        .filter(|v| v.status.as_ref().and_then(|s| s.host.as_deref()) == Some(name.as_str()))
        .collect();
    let standby = kept_off(t.pool, &name);
    let bmc =
        if !mem.libvirt.up && t.pool.spec.fencing.is_some() && !mem.fence.in_flight && !standby {
            bmc::power_for_tick(hc, key, t.pool, n, mem.libvirt.since).await
        } else {
            None
        };
    let incident_id = mem.incident.as_ref().map(|i| i.id.clone());
    let human = incident_id
        .as_ref()
        .is_some_and(|id| n.annotations().get(CONFIRM_ANNOTATION) == Some(id));
    let stale = stale_domains(&mem, &name, t.all_vms);
    let inputs = Inputs {
        node: node_signal(n, t.now),
        libvirt: mem.libvirt,
        bmc,
        fencing_configured: t.pool.spec.fencing.is_some(),
        human_confirmed: human,
        fence: mem.fence.clone(),
        storm,
        has_vms: !on_host.is_empty(),
        // Proven by looking each domain up after stopping it (never from a listing).
        shut_off_confirmed: !on_host.is_empty()
            && on_host.iter().all(|v| {
                v.metadata
                    .uid
                    .as_deref()
                    .is_some_and(|uid| mem.stopped.contains_key(uid))
            }),
        stale_domains: !stale.is_empty(),
        standby,
        previous: mem.verdict,
        previous_since: mem.since,
        now: t.now,
    };
    let d = host_health::decide(&inputs, &t.timings);
    let mem = record(hc, ctx, t.pool, key, &mem, &d, t.now).await;
    ctx.ha.set(key.clone(), d.verdict);
    let acted = tokio::time::timeout(
        ACT_DEADLINE,
        act(
            hc,
            ctx,
            t.policy,
            t.pool,
            n,
            &t.nodes,
            key,
            &mem,
            &d,
            &on_host,
            &t.pool_vms,
            &stale,
        ),
    )
    .await;
    if acted.is_err() {
        tracing::warn!(host = %name, action = ?d.action, "the action did not finish within {}s; it is tried again next tick", ACT_DEADLINE.as_secs());
    }
}

/// The host's entry in the policy's status, from what is remembered about it.
fn outcome(hc: &HaContext, t: &PoolTick<'_>, key: &HaKey) -> Option<HostOutcome> {
    let m = lock(&hc.hosts).get(key).cloned()?;
    let name = &key.host.node;
    let awaiting = m
        .incident
        .as_ref()
        .filter(|_| m.asks_confirmation)
        .map(|i| {
            format!(
                "host {name}: {}; to restart its VMs elsewhere, make sure it is off and run: kubectl annotate node {name} {CONFIRM_ANNOTATION}={}",
                m.message, i.id
            )
        });
    let fence_failed = m
        .fence
        .last_error
        .as_ref()
        .filter(|_| m.fence.confirmed_at.is_none() && m.verdict.in_incident())
        .map(|err| format!("host {name}: {} attempt(s), last: {err}", m.fence.attempts));
    Some(HostOutcome {
        key: key.clone(),
        health: HostHealth {
            name: name.clone(),
            pool: t.pool.name_any(),
            verdict: m.verdict,
            since: ts(m.since),
            message: Some(m.message.clone()),
            incident: m.incident.as_ref().map(|i| i.id.clone()),
            fence_attempts: (m.fence.attempts > 0).then_some(m.fence.attempts as i32),
            last_fence_error: m.fence.last_error.clone(),
            last_fence_attempt: m.fence.last_attempt.map(ts),
            fenced_at: m.fence.confirmed_at.map(ts),
        },
        awaiting,
        fence_failed,
        incident: m.incident,
    })
}

/// Whether the pool's power management keeps `host` off or is powering it on (its status says
/// `Standby` or `Waking`).
fn kept_off(pool: &HostPool, host: &str) -> bool {
    pool.status
        .as_ref()
        .and_then(|s| s.hosts.iter().find(|h| h.name == host))
        .is_some_and(|h| h.power().kept_off())
}
