//! Handing a failed host's VMs to the VirtualMachine controller, in priority order and within
//! capacity (`plan::recovery`), through the `ferry.dev/failover` annotation. Each release is
//! recorded in the shared HA state first ([`crate::controller::context::HaVerdicts::release`]):
//! the annotation is on an object a namespace editor may write, so only the release counts.

use super::*;
use crate::api::ha_policy::{FAILOVER_ANNOTATION, Failover};
use crate::api::{HAPolicy, HostPool, VirtualMachine};
use crate::controller::Context;
use crate::controller::context::PoolHost;
use crate::controller::scheduling::{self, need};
use crate::plan::placement::{self, Placed};
use crate::plan::recovery::{self, InFlight, Limits, Stranded};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use std::sync::Arc;

/// Hand the host's VMs to the VirtualMachine controller, in waves by priority and within
/// capacity and the restart limits. Returns the VMs kept back (by UID), with why.
#[allow(clippy::too_many_arguments)]
pub(super) async fn restart(
    ctx: &Context,
    policy: &HAPolicy,
    pool: &HostPool,
    host: &str,
    mem: &Memory,
    on_host: &[&Arc<VirtualMachine>],
    pool_vms: &[Arc<VirtualMachine>],
) -> Vec<(String, String)> {
    let Some(incident) = &mem.incident else {
        return Vec::new();
    };
    let Some((proven, evidence)) = incident.proven else {
        return Vec::new();
    };
    let pool_host = PoolHost::of(pool, host);
    // Released by this process in this incident (an annotation alone proves nothing: anyone who
    // may edit the VM may write it; after a restart the VMs are released again).
    let handed = |v: &VirtualMachine| {
        v.metadata
            .uid
            .as_deref()
            .is_some_and(|uid| ctx.ha.released(uid, &pool_host, &incident.id))
    };
    let stranded: Vec<Stranded> = on_host
        .iter()
        .filter(|v| !handed(v))
        .filter_map(|v| {
            let spec = v.spec.placement.clone().unwrap_or_default();
            Some(Stranded {
                uid: v.metadata.uid.clone()?,
                name: v.name_any(),
                priority: policy.priority(v.labels()),
                need: need(v),
                labels: v.labels().clone(),
                node_selector: spec.node_selector.clone(),
                affinity: placement::terms(&spec.affinity, "affinity").unwrap_or_default(),
                anti_affinity: placement::terms(&spec.anti_affinity, "antiAffinity")
                    .unwrap_or_default(),
            })
        })
        .collect();
    if stranded.is_empty() {
        return Vec::new();
    }
    // Restarts under way: VMs released and not yet placed, and VMs placed anew in this incident
    // (by this process or, before a restart, by another) whose domain does not run yet, with
    // how long ago they were handed over.
    let wave_timeout = policy.restart_wave_timeout();
    let now = k8s_openapi::jiff::Timestamp::now();
    let in_flight: Vec<InFlight> = pool_vms
        .iter()
        .filter_map(|v| {
            let uid = v.metadata.uid.as_deref()?;
            let recovery = v
                .status
                .as_ref()
                .and_then(|s| s.last_recovery.as_ref())
                .filter(|r| r.incident == incident.id);
            // Released by this process: in flight until the VM controller saw it run.
            let since = ctx.ha.starting_since(uid, &pool_host, &incident.id);
            let (host, since) = match recovery {
                Some(r) if r.running.is_some() => return None,
                _ if handed(v) => (recovery.and_then(|r| r.to_host.clone()), since?),
                Some(r) => {
                    let placed = r.replaced.as_ref().map_or(0, |t| t.0.as_second());
                    let secs = (now.as_second() - placed).max(0) as u64;
                    (r.to_host.clone(), std::time::Duration::from_secs(secs))
                }
                None => return None,
            };
            Some(InFlight {
                priority: policy.priority(v.labels()),
                host,
                overdue: wave_timeout.is_none_or(|t| since >= t),
            })
        })
        .collect();
    let mut candidates = scheduling::candidates(pool, &ctx.caches, &ctx.ha);
    for c in &mut candidates {
        if c.name == host {
            c.reachable = false;
        }
    }
    let placed: Vec<Placed> = pool_vms
        .iter()
        .filter_map(|v| {
            let host = v.status.as_ref()?.host.clone()?;
            Some(scheduling::as_placed(v, v.metadata.uid.clone()?, host))
        })
        .collect();
    let limits = Limits {
        total: policy.max_concurrent_restarts(),
        per_host: pool.max_concurrent_restarts_per_host(),
        waves: wave_timeout.is_some(),
    };
    let plan = recovery::plan(
        &stranded,
        &in_flight,
        limits,
        &candidates,
        &placed,
        pool.placement_strategy(),
    );
    let failover = Failover {
        incident: incident.id.clone(),
        host: host.to_string(),
        evidence: evidence_name(evidence).to_string(),
        detected: ts(incident.detected),
        proven: ts(proven),
        released: Some(ts(k8s_openapi::jiff::Timestamp::now())),
    };
    let Ok(value) = serde_json::to_string(&failover) else {
        return Vec::new();
    };
    // On storage the hosts do not share, no VM restarts elsewhere (its disks stayed on the failed
    // host): every one is told at once, and each says so in its own status.
    let (release, waiting): (Vec<&str>, _) = if pool.shared_storage() {
        let release = plan.release.iter().map(|(uid, _)| uid.as_str()).collect();
        (release, plan.waiting.clone())
    } else {
        (
            stranded.iter().map(|s| s.uid.as_str()).collect(),
            Vec::new(),
        )
    };
    // Released side by side: each VM's restart waits for nothing but its own annotation.
    let releases = release.into_iter().filter_map(|uid| {
        let vm = on_host
            .iter()
            .find(|v| v.metadata.uid.as_deref() == Some(uid))?;
        ctx.ha.release(uid, pool_host.clone(), &incident.id);
        Some(hand_over(ctx, pool, &failover, &value, uid, vm))
    });
    futures::future::join_all(releases).await;
    waiting
}

/// Write the `ferry.dev/failover` annotation (`value`, serialised from `failover`) on one
/// released VM, with a `Failover` Event; a failed write takes the release back.
async fn hand_over(
    ctx: &Context,
    pool: &HostPool,
    failover: &Failover,
    value: &str,
    uid: &str,
    vm: &VirtualMachine,
) {
    let api: Api<VirtualMachine> =
        Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
    let patch = serde_json::json!({"metadata": {"annotations": {FAILOVER_ANNOTATION: value}}});
    let written = api
        .patch(
            &vm.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await;
    if let Err(e) = written {
        ctx.ha.unrelease(uid);
        tracing::warn!(vm = %vm.name_any(), error = %e, "could not hand the VM over for failover");
        return;
    }
    let (host, evidence, incident) = (&failover.host, &failover.evidence, &failover.incident);
    tracing::debug!(vm = %vm.name_any(), host, incident, "handed over for a restart elsewhere");
    let note = if pool.shared_storage() {
        format!(
            "Host {host} failed and is proven off ({evidence}); restarting the VM elsewhere (incident {incident})"
        )
    } else {
        format!(
            "Host {host} failed and is proven off ({evidence}), but the VM's disks are on that host only (HostPool {} storage is not shared): not restarted elsewhere (incident {incident})",
            pool.name_any(),
        )
    };
    ctx.event(vm, EventType::Warning, "Failover", "Failover", note)
        .await;
}
