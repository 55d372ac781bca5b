//! Carrying out a host's decision: fence, stop its domains, clean stale ones, evacuate, or hand
//! its VMs over for a restart elsewhere.

use super::*;
use crate::api::host_pool::FencingSpec;
use crate::api::{HAPolicy, HostPool, VirtualMachine};
use crate::controller::{Context, lock};
use crate::fence;
use crate::hypervisor::{DomainInfo, Hypervisor};
use crate::plan::host_health::{Decision, HostAction};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use std::sync::Arc;

/// Carry out the decision's action.
#[allow(clippy::too_many_arguments)]
pub(super) async fn act(
    hc: &Arc<HaContext>,
    ctx: &Arc<Context>,
    policy: &HAPolicy,
    pool: &HostPool,
    node: &Node,
    nodes: &[Arc<Node>],
    key: &HaKey,
    mem: &Memory,
    d: &Decision,
    on_host: &[&Arc<VirtualMachine>],
    pool_vms: &[Arc<VirtualMachine>],
    stale: &[DomainInfo],
) {
    let host = node.name_any();
    match d.action {
        HostAction::None | HostAction::AskConfirmation => {}
        HostAction::Fence => {
            let f = match crate::controller::bmc::client(ctx, pool, node).await {
                Ok(f) => f,
                Err(e) => {
                    fence_done(hc, key, Err(e));
                    return;
                }
            };
            if let Some(m) = lock(&hc.hosts).get_mut(key) {
                m.fence.in_flight = true;
            }
            // The pool has fencing settings: the fencer was made from them.
            let confirm = pool
                .spec
                .fencing
                .as_ref()
                .map(FencingSpec::confirm_timeout)
                .unwrap_or_default();
            let hc = hc.clone();
            let pool_ref = pool.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let r = fence::fence(f.as_ref(), confirm, FENCE_POLL).await;
                let note = match &r {
                    Ok(done) => format!(
                        "Host {host} fenced: {} reports power Off ({} ms)",
                        f.describe(),
                        done.elapsed.as_millis()
                    ),
                    Err(e) => format!("Fencing host {host} failed: {e}"),
                };
                let type_ = if r.is_ok() {
                    EventType::Normal
                } else {
                    EventType::Warning
                };
                let reason = if r.is_ok() { "Fenced" } else { "FenceFailed" };
                fence_done(&hc, &key, r.map(|_| ()).map_err(|e| e.to_string()));
                hc.ctx.event(&pool_ref, type_, reason, "Fence", note).await;
            });
        }
        HostAction::Restart(_) => {
            let waiting = failover::restart(ctx, policy, pool, &host, mem, on_host, pool_vms).await;
            if let Some(i) = lock(&hc.hosts)
                .get_mut(key)
                .and_then(|m| m.incident.as_mut())
            {
                i.waiting = waiting.into_iter().collect();
            }
        }
        HostAction::StopDomains => {
            if let Some(hv) = connected(ctx, pool, node).await {
                stop_and_look(hc, key, hv.as_ref(), &host, on_host).await;
            }
        }
        HostAction::CleanStaleDomains => {
            if let Some(hv) = connected(ctx, pool, node).await {
                for d in stale {
                    if d.state.is_active()
                        && let Err(e) = hv.destroy_domain(&d.uuid).await
                    {
                        tracing::warn!(host, domain = %d.name, error = %e, "could not stop a stale domain");
                        continue;
                    }
                    match hv.undefine_domain(&d.uuid).await {
                        Ok(()) => {
                            ctx.event(
                                pool,
                                EventType::Normal,
                                "StaleDomainRemoved",
                                "Recover",
                                format!("Host {host}: undefined domain {} (its VM runs elsewhere now); disks kept", d.name),
                            )
                            .await
                        }
                        Err(e) => {
                            tracing::warn!(host, domain = %d.name, error = %e, "could not undefine a stale domain")
                        }
                    }
                }
            }
        }
        HostAction::Evacuate => {
            crate::controller::evacuation::evacuate_for_ha(
                pool,
                nodes,
                ctx,
                &host,
                Arc::new(policy.clone()),
            )
            .await;
        }
    }
}

/// Stop the domain of every VM on the host, then look each up by UUID: a domain found shut off
/// is recorded as proven off. One the host does not know, or that still runs, proves nothing
/// (a listing taken earlier, or an empty one, never counts).
async fn stop_and_look(
    hc: &HaContext,
    key: &HaKey,
    hv: &dyn Hypervisor,
    host: &str,
    on_host: &[&Arc<VirtualMachine>],
) {
    for vm in on_host {
        let Some(uid) = vm.metadata.uid.as_deref() else {
            continue;
        };
        let uuid = crate::plan::naming::vm_domain_uuid(vm);
        if let Err(e) = hv.destroy_domain(&uuid).await {
            tracing::warn!(host, vm = %vm.name_any(), error = %e, "could not stop the domain");
            continue;
        }
        match hv.lookup_domain(&uuid).await {
            Ok(Some(d)) if !d.state.is_active() => {
                if let Some(m) = lock(&hc.hosts).get_mut(key) {
                    m.stopped.insert(uid.to_string(), Timestamp::now());
                }
            }
            Ok(Some(d)) => {
                tracing::warn!(host, vm = %vm.name_any(), state = ?d.state, "the domain still runs after it was stopped")
            }
            Ok(None) => {
                tracing::warn!(host, vm = %vm.name_any(), "the host does not know the VM's domain: that proves nothing about where it runs")
            }
            Err(e) => {
                tracing::warn!(host, vm = %vm.name_any(), error = %e, "could not look the domain up after stopping it")
            }
        }
    }
}

pub(super) async fn connected(
    ctx: &Context,
    pool: &HostPool,
    node: &Node,
) -> Option<Arc<dyn Hypervisor>> {
    let uri = ctx.hosts.uri(pool, node).ok()?;
    tokio::time::timeout(PROBE_DEADLINE, ctx.hosts.connect(&uri, pool))
        .await
        .ok()?
        .ok()
}

/// Record a fence result in the host's memory.
pub(super) fn fence_done(hc: &HaContext, key: &HaKey, r: std::result::Result<(), String>) {
    let now = Timestamp::now();
    hc.ctx.metrics.fence_finished(r.is_ok());
    if let Some(m) = lock(&hc.hosts).get_mut(key) {
        m.fence.in_flight = false;
        m.fence.attempts += 1;
        m.fence.last_attempt = Some(now);
        match r {
            Ok(()) => {
                m.fence.last_error = None;
                m.fence.confirmed_at = Some(now);
            }
            Err(e) => m.fence.last_error = Some(e),
        }
    }
}
