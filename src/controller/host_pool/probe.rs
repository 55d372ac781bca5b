//! Probing one host: connect (without waiting long for a host last seen unreachable), read its
//! facts and domains when they may have changed since the last reading (see `reading`), and
//! turn them into its status entry.

use super::*;
use super::{candidates, foreign, reading};
use crate::api::host_pool::MeasuredLoad;
use crate::api::{HostPool, HostState, HostStatus};
use crate::controller::context::PoolHost;
use crate::controller::hosts::{cordoned, redact};
use crate::controller::status::whole_seconds;
use crate::controller::{Context, credentials};
use crate::hypervisor::HypervisorError;
use crate::plan::balance::Usage;
use crate::plan::capacity::{self, Amount};
use crate::plan::load;
use crate::plan::quantity::parse_bytes;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Probe every Node of the pool at once; a host that does not answer keeps its last known
/// capacity and contact time.
pub(super) async fn hosts(
    pool: &Arc<HostPool>,
    nodes: &[Arc<Node>],
    ctx: &Arc<Context>,
    previous: &HostPoolStatus,
) -> Vec<HostStatus> {
    let vm_uids = known_vm_uids(ctx).await;
    let probes = nodes.iter().map(|n| {
        let before = previous.hosts.iter().find(|h| h.name == n.name_any());
        probe(pool, n, ctx, vm_uids.as_ref(), before)
    });
    let mut hosts: Vec<HostStatus> = futures::future::join_all(probes).await;
    candidates::bound(&mut hosts);
    // Nodes that left the pool leave no load window behind.
    let (namespace, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
    let names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    let keep = |h: &PoolHost| h.namespace != namespace || h.pool != name || names.contains(&h.node);
    ctx.load.retain(keep);
    ctx.host_reads.retain(keep);
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
        // Power management's state is its own: carried over, changed only by it.
        if let Some(b) = before {
            h.power = b.power;
            h.power_since = b.power_since.clone();
            h.power_message = b.power_message.clone();
            h.wake_failed = b.wake_failed.clone();
        }
    }
    hosts
}

/// The UIDs of all VirtualMachines, once the VM reflector has listed them (`None` before: then
/// no domain is called an orphan).
pub(super) async fn known_vm_uids(ctx: &Context) -> Option<HashSet<String>> {
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
pub(super) fn keep_last_known(h: &mut HostStatus, before: &HostStatus) {
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
    h.adoption_candidates = before.adoption_candidates.clone();
}

/// How long a probe waits for a new connection to a host it last saw `Unreachable`. The attempt
/// goes on in the background (the registry keeps its outcome for the next probe), so a host that
/// stays away does not hold up the pool's status for a connect timeout on every probe.
pub(super) const RECONNECT_WAIT: Duration = Duration::from_secs(1);

/// Connect to `uri` for `pool`. When the host was `Unreachable` (`before`), wait at most
/// [`RECONNECT_WAIT`]; `Ok(None)` means the attempt is still under way.
pub(super) async fn connect_for_probe(
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
pub(super) async fn probe(
    pool: &Arc<HostPool>,
    node: &Node,
    ctx: &Arc<Context>,
    vm_uids: Option<&HashSet<String>>,
    before: Option<&HostStatus>,
) -> HostStatus {
    let name = node.name_any();
    let mut h = HostStatus::new(name.clone(), HostState::Misconfigured);
    let uri = match ctx.hosts.uri(pool, node) {
        Ok(u) => u,
        Err(m) => {
            h.message = Some(m);
            return h;
        }
    };
    h.uri = Some(redact(&uri));
    let host = PoolHost::of(pool, &name);
    h.ha_verdict = ctx.ha.worst(&host);
    // A lost connection needs no invalidation here: the registry replaces it, after its backoff.
    let answer = match connect_for_probe(pool, &uri, ctx, before).await {
        Ok(Some(hv)) => match reading(pool, &name, &host, hv.as_ref(), ctx).await {
            Ok(r) => {
                h.adoption_candidates = r.candidates.clone();
                // Balancing and power management decide from the load: sampled at every
                // probe. Otherwise often enough for the window to keep a CPU figure.
                let due = pool.spec.balancing.is_some()
                    || pool.spec.power.is_some()
                    || ctx
                        .host_reads
                        .load_due(&host, reading::LOAD_SAMPLE_INTERVAL);
                h.load = if due {
                    ctx.host_reads.load_sampled(&host);
                    measure(hv.as_ref(), ctx, &host, &r.info, before).await
                } else {
                    before.and_then(|b| b.load.clone())
                };
                Ok((r.info.clone(), r.domains.clone()))
            }
            Err(e) => Err(e),
        },
        // Still unreachable, still trying in the background: say what was last known.
        Ok(None) => {
            ctx.load.forget(&host);
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
            ctx.load.forget(&host);
        }
    }
    h
}

/// Sample the host's domain counters into its load window and say what to report: the
/// previous report while the load stays near it (see [`load::report`]). `None` when the host
/// cannot tell (the call failed: the window starts again); the previous report while every
/// domain was seen in one sample only.
async fn measure(
    hv: &dyn crate::hypervisor::Hypervisor,
    ctx: &Context,
    host: &PoolHost,
    info: &crate::hypervisor::HostInfo,
    before: Option<&HostStatus>,
) -> Option<MeasuredLoad> {
    let domains = match hv.domain_counters().await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(host = %host.node, error = %e, "no load sample");
            ctx.load.forget(host);
            return None;
        }
    };
    let now = whole_seconds(Timestamp::now()).0;
    let used = ctx.load.record(host, load::Sample { at: now, domains });
    // Only domains seen once (the first sample, as after a restart): nothing new to say yet.
    if !used.unmeasured.is_empty() && used.unmeasured.len() == used.domains.len() {
        return before.and_then(|b| b.load.clone());
    }
    let capacity = Usage {
        cpu_millis: u64::from(info.cpus).saturating_mul(1000),
        memory: info.memory_kib.saturating_mul(1024),
    };
    let previous = before.and_then(|b| b.load.as_ref()).and_then(|l| {
        Some(load::Report {
            usage: Usage {
                cpu_millis: u64::try_from(l.cpu_millicores).ok()?,
                memory: parse_bytes(&l.memory).ok()?,
            },
            at: l.measured_at.0,
        })
    });
    let r = load::report(previous, used.total, capacity, now);
    if previous == Some(r) {
        return before.and_then(|b| b.load.clone());
    }
    Some(MeasuredLoad {
        cpu_millicores: i64::try_from(r.usage.cpu_millis).unwrap_or(i64::MAX),
        memory: capacity::quantity(r.usage.memory),
        measured_at: Time(r.at),
    })
}

/// The host's facts, domains and foreign domains: the last reading while it stands (no call),
/// else read afresh (see `reading`). The volumes foreign domains use are recorded at every
/// fresh reading.
async fn reading(
    pool: &HostPool,
    node: &str,
    host: &PoolHost,
    hv: &dyn crate::hypervisor::Hypervisor,
    ctx: &Context,
) -> crate::hypervisor::HvResult<Arc<reading::Reading>> {
    let connections = &ctx.hosts.connections;
    // Counted before reading: a change during the reading makes the next probe read again.
    let now = reading::HostNow::of(
        connections,
        hv.uri(),
        pool.metadata.generation,
        ctx.safety_resync.period(),
    );
    let last = ctx.host_reads.last(host);
    let needed = reading::needed(last.as_deref(), &now);
    let full = match (needed, &last) {
        (None, Some(last)) => return Ok(last.clone()),
        (needed, _) => needed.unwrap_or(true),
    };
    let previous = last.as_deref().filter(|_| !full);
    let info = match previous {
        Some(p) => p.info.clone(),
        None => hv.host_info().await?,
    };
    let domains = hv.list_domains().await?;
    // A reading due to its age, on the same connection, with no change counted since the last:
    // a domain that differs was changed without its event being heard; its VM is told now,
    // not at its next safety resync.
    if let Some(last) = last
        .as_deref()
        .filter(|l| full && l.uri == now.uri && l.opened == now.opened && l.changes == now.changes)
    {
        for uuid in reading::changed_domains(&last.domains, &domains) {
            tracing::info!(
                host = node,
                uuid,
                "a domain changed without an event: looking at it"
            );
            connections.announce_domain_change(&uuid);
        }
    }
    let found = foreign::read(
        node,
        hv,
        &domains,
        previous.map(|p| (p.domains.as_slice(), &p.foreign)),
    )
    .await;
    let candidates = candidates::describe(pool, hv, &found).await;
    if let Some(uses) = foreign::uses(pool, node, &found) {
        ctx.foreign_volumes.record(host, &pool.spec.storage, uses);
    }
    let r = Arc::new(reading::Reading {
        uri: now.uri.to_string(),
        changes: now.changes,
        opened: now.opened,
        generation: now.generation,
        full_at: match previous {
            Some(p) => p.full_at,
            None => std::time::Instant::now(),
        },
        info,
        domains,
        foreign: found,
        candidates,
    });
    ctx.host_reads.keep(host, r.clone());
    Ok(r)
}
