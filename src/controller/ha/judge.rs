//! One tick of one pool: probe its hosts, judge each (`plan::host_health`), remember and act on
//! the verdict, and count what the policy's status reports.

use super::*;
use crate::api::{HAPolicyStatus, HostPool};
use crate::controller::context::{AdmissionOwner, PoolHost};
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

/// One tick of `pool`: start probes, restore memory of hosts not seen yet, apply the storm guard,
/// judge and act on every host, then admission control.
#[allow(clippy::too_many_arguments)]
pub(super) async fn pool(
    hc: &Arc<HaContext>,
    policy: &HAPolicy,
    pool: &HostPool,
    selector: Option<&Selector>,
    previous: &HAPolicyStatus,
    all_vms: &[Arc<VirtualMachine>],
    now: Timestamp,
    st: &mut HAPolicyStatus,
    tally: &mut Tally,
) {
    let ns = policy.namespace().unwrap_or_default();
    let pool_vms = hc.ctx.caches.vms_in_pool(&ns, &pool.name_any());
    let covered: Vec<Arc<VirtualMachine>> = pool_vms
        .iter()
        .filter(|v| selector.is_none_or(|s| s.matches(v.labels())))
        .cloned()
        .collect();
    tally.protected += covered.len();
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
    let failing = t
        .nodes
        .iter()
        .filter(|n| {
            let hosts = lock(&hc.hosts);
            hosts.get(&key(n)).is_some_and(|m| {
                (!m.libvirt.up && elapsed(m.libvirt.since, t.now) >= t.timings.libvirt_grace)
                    || matches!(
                        m.verdict,
                        HostVerdict::Failed | HostVerdict::Fencing | HostVerdict::Fenced
                    )
            })
        })
        .count();
    let storm = host_health::storm(t.nodes.len(), failing, t.policy.max_failed_hosts_percent());
    hc.ctx
        .ha
        .set_storm(&ns, &t.pool.name_any(), &t.policy.name_any(), storm);
    if storm {
        tally.storms.push(format!(
            "{failing} of {} host(s) of HostPool {} look failed (more than {}%)",
            t.nodes.len(),
            t.pool.name_any(),
            t.policy.max_failed_hosts_percent()
        ));
    }

    for n in &t.nodes {
        host(hc, &t, &key(n), n, storm, st, tally).await;
    }
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
        tally.capacity.push((ok, msg));
    }
    let owner = AdmissionOwner {
        namespace: ns.clone(),
        policy: t.policy.name_any(),
        pool: t.pool.name_any(),
    };
    hc.ctx.placement.set_admission_blocks(owner, blocks);
}

/// Judge one host, remember the verdict, act on it, and count it.
async fn host(
    hc: &Arc<HaContext>,
    t: &PoolTick<'_>,
    key: &HaKey,
    n: &Arc<Node>,
    storm: bool,
    st: &mut HAPolicyStatus,
    tally: &mut Tally,
) {
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
    let bmc = if !mem.libvirt.up && t.pool.spec.fencing.is_some() && !mem.fence.in_flight {
        match bmc::fencer(ctx, t.pool, n).await {
            Ok(f) => f.power_state().await.ok().map(|p| match p {
                crate::fence::Power::On => host_health::Power::On,
                crate::fence::Power::Off => host_health::Power::Off,
                crate::fence::Power::Other => host_health::Power::Other,
            }),
            Err(_) => None,
        }
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
        shut_off_confirmed: mem.libvirt.up
            && mem.probed
            && mem
                .domains
                .iter()
                .filter(|d| {
                    on_host
                        .iter()
                        .any(|v| v.metadata.uid.as_deref() == Some(d.uuid.as_str()))
                })
                .all(|d| !d.state.is_active()),
        stale_domains: !stale.is_empty(),
        previous: mem.verdict,
        previous_since: mem.since,
        now: t.now,
    };
    let d = host_health::decide(&inputs, &t.timings);
    let mem = record(hc, ctx, t.pool, key, &mem, &d, t.now).await;
    ctx.ha.set(key.clone(), d.verdict);
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
    )
    .await;
    if d.action == HostAction::AskConfirmation
        && let Some(id) = &incident_id
    {
        tally.awaiting.push(format!(
            "host {name}: {}; to restart its VMs elsewhere, make sure it is off and run: kubectl annotate node {name} {CONFIRM_ANNOTATION}={id}",
            d.message
        ));
    }
    if let Some(err) = &mem.fence.last_error
        && mem.fence.confirmed_at.is_none()
        && in_incident(d.verdict)
    {
        tally.fence_failed.push(format!(
            "host {name}: {} attempt(s), last: {err}",
            mem.fence.attempts
        ));
    }
    let fresh = lock(&hc.hosts).get(key).cloned().unwrap_or(mem);
    tally.hosts.push(HostHealth {
        name: name.clone(),
        pool: t.pool.name_any(),
        verdict: fresh.verdict,
        since: ts(fresh.since),
        message: Some(fresh.message.clone()),
        incident: fresh.incident.as_ref().map(|i| i.id.clone()),
        fence_attempts: (fresh.fence.attempts > 0).then_some(fresh.fence.attempts as i32),
        last_fence_error: fresh.fence.last_error.clone(),
        last_fence_attempt: fresh.fence.last_attempt.map(ts),
        fenced_at: fresh.fence.confirmed_at.map(ts),
    });
    if let Some(i) = &fresh.incident {
        upsert_incident(&mut st.incidents, key, i, t.all_vms);
    }
}
