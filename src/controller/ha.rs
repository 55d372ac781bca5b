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

use super::context::HaKey;
use super::hosts::{host_uri, pool_nodes};
use super::scheduling::{self, need};
use super::{Context, lock, status::apply_status};
use crate::api::condition::{ConditionStatus, set_condition};
use crate::api::ha_policy::{
    AdmissionControl, CONFIRM_ANNOTATION, FAILOVER_ANNOTATION, Failover, HostHealth, HostVerdict,
    Incident, IncidentVm,
};
use crate::api::host_pool::FenceDriver;
use crate::api::{HAPolicy, HostPool, VirtualMachine};
use crate::error::{Error, Result};
use crate::fence::{self, Credentials, Fencer};
use crate::hypervisor::{DomainInfo, HostConnections, Hypervisor};
use crate::plan::admission::{self, Protected, Reserve};
use crate::plan::capacity::Amount;
use crate::plan::host_health::{self, Decision, Evidence, FenceRecord, HostAction, Inputs, Signal};
use crate::plan::placement::{self, Placed};
use crate::plan::recovery::{self, Stranded};
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::SelectorExt;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
/// Poll interval while waiting for a BMC to report Off.
const FENCE_POLL: Duration = Duration::from_millis(250);
/// Incidents kept in status.
const MAX_INCIDENTS: usize = 20;

/// The HA controller's context: the shared one plus what it remembers per host.
pub struct HaContext {
    pub ctx: Arc<Context>,
    hosts: Mutex<HashMap<String, Memory>>,
    /// Liveness probes run on connections of their own: on the shared connection a probe would
    /// queue behind a slow call (a destroy waiting for QEMU to exit, a large define) and a busy
    /// host would be taken for a dead one.
    probes: HostConnections,
}

impl HaContext {
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
        }
    }
}

/// What the controller remembers about one host between ticks.
#[derive(Debug, Clone)]
struct Memory {
    libvirt: Signal,
    /// Domains from the last successful probe.
    domains: Vec<DomainInfo>,
    /// `domains` comes from a probe made since libvirt last came up.
    probed: bool,
    probe_started: Option<Instant>,
    /// The running probe's liveness check answered (it is now listing domains, which may wait
    /// behind an operation on a domain).
    probe_answered: bool,
    verdict: HostVerdict,
    since: Timestamp,
    message: String,
    fence: FenceRecord,
    incident: Option<Open>,
}

/// The open incident of a host.
#[derive(Debug, Clone)]
struct Open {
    id: String,
    detected: Timestamp,
    proven: Option<(Timestamp, Evidence)>,
    host_back: Option<Timestamp>,
}

fn ts(t: Timestamp) -> Time {
    Time(t)
}

fn evidence_name(e: Evidence) -> &'static str {
    match e {
        Evidence::Fenced => "Fenced",
        Evidence::ShutOff => "ShutOff",
        Evidence::Confirmed => "Confirmed",
    }
}

/// Whether a verdict belongs to an open incident.
fn in_incident(v: HostVerdict) -> bool {
    use HostVerdict as V;
    matches!(v, V::Failed | V::Fencing | V::Fenced | V::Recovering)
}

/// Reconcile one HAPolicy: one tick of every covered host.
#[tracing::instrument(name = "reconcile", skip_all, fields(
    object.kind = "HAPolicy",
    object.namespace = %policy.namespace().unwrap_or_default(),
    object.name = %policy.name_any(),
))]
pub async fn reconcile(policy: Arc<HAPolicy>, hc: Arc<HaContext>) -> Result<Requeue> {
    let ctx = hc.ctx.clone();
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = policy.namespace().unwrap_or_default();
    let now = Timestamp::now();
    let timings = host_health::Timings::of(&policy);
    let previous = policy.status.clone().unwrap_or_default();
    let mut st = previous.clone();
    st.observed_generation = policy.metadata.generation;
    let gen_ = policy.metadata.generation;
    let selector = match policy.vm_selector() {
        Ok(s) => s,
        Err(e) => {
            set_condition(
                &mut st.conditions,
                "Ready",
                ConditionStatus::False,
                "InvalidSelector",
                format!("spec.vmSelector is not a valid label selector: {e}"),
                gen_,
                now,
            );
            apply_status(
                &api(&ctx, &ns),
                policy.as_ref(),
                policy.status.as_ref(),
                &st,
            )
            .await?;
            return Ok(Requeue::await_change());
        }
    };
    let all_vms = ctx.caches.vms.state();
    let mut hosts_out: Vec<HostHealth> = Vec::new();
    let mut storms: Vec<String> = Vec::new();
    let mut awaiting: Vec<String> = Vec::new();
    let mut fence_failed: Vec<String> = Vec::new();
    let mut capacity: Vec<(bool, String)> = Vec::new();
    let mut protected = 0usize;
    let mut missing_pools = Vec::new();

    for pool_name in &policy.spec.host_pools {
        let Some(pool) = ctx.caches.pools.get(&ObjectRef::new(pool_name).within(&ns)) else {
            missing_pools.push(pool_name.clone());
            continue;
        };
        let nodes = pool_nodes(&ctx.caches.nodes, &pool);
        let pool_vms: Vec<Arc<VirtualMachine>> = all_vms
            .iter()
            .filter(|v| {
                v.namespace().as_deref() == Some(ns.as_str()) && &v.spec.host_pool == pool_name
            })
            .cloned()
            .collect();
        let covered: Vec<Arc<VirtualMachine>> = pool_vms
            .iter()
            .filter(|v| selector.as_ref().is_none_or(|s| s.matches(v.labels())))
            .cloned()
            .collect();
        protected += covered.len();

        // Liveness probes run in the background, one at a time per host.
        for n in &nodes {
            start_probe(&hc, &pool, n, now);
        }
        // Initialise memory from status (a restarted controller resumes incidents).
        for n in &nodes {
            let name = n.name_any();
            let mut hosts = lock(&hc.hosts);
            hosts
                .entry(name.clone())
                .or_insert_with(|| restore(&previous, &name, now));
        }
        let failing = nodes
            .iter()
            .filter(|n| {
                let hosts = lock(&hc.hosts);
                hosts.get(&n.name_any()).is_some_and(|m| {
                    (!m.libvirt.up && elapsed(m.libvirt.since, now) >= timings.libvirt_grace)
                        || matches!(
                            m.verdict,
                            HostVerdict::Failed | HostVerdict::Fencing | HostVerdict::Fenced
                        )
                })
            })
            .count();
        let storm = host_health::storm(nodes.len(), failing, policy.max_failed_hosts_percent());
        if storm {
            storms.push(format!(
                "{failing} of {} host(s) of HostPool {pool_name} look failed (more than {}%)",
                nodes.len(),
                policy.max_failed_hosts_percent()
            ));
        }

        for n in &nodes {
            let name = n.name_any();
            let Some(mem) = lock(&hc.hosts).get(&name).cloned() else {
                continue;
            };
            let on_host: Vec<&Arc<VirtualMachine>> = covered
                .iter()
                .filter(|v| {
                    v.status.as_ref().and_then(|s| s.host.as_deref()) == Some(name.as_str())
                })
                .collect();
            let bmc = if !mem.libvirt.up && pool.spec.fencing.is_some() && !mem.fence.in_flight {
                match fencer(&ctx, &pool, n).await {
                    Ok(f) => f.power_state().await.ok(),
                    Err(_) => None,
                }
            } else {
                None
            };
            let incident_id = mem.incident.as_ref().map(|i| i.id.clone());
            let human = incident_id
                .as_ref()
                .is_some_and(|id| n.annotations().get(CONFIRM_ANNOTATION) == Some(id));
            let stale = stale_domains(&mem, &name, &all_vms);
            let inputs = Inputs {
                node: node_signal(n, now),
                libvirt: mem.libvirt,
                bmc,
                fencing_configured: pool.spec.fencing.is_some(),
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
                now,
            };
            let d = host_health::decide(&inputs, &timings);
            let mem = record(&hc, &ctx, &pool, &name, &mem, &d, now).await;
            ctx.ha.set(HaKey::host(&name), d.verdict);
            act(
                &hc, &ctx, &policy, &pool, n, &nodes, &mem, &d, &on_host, &pool_vms, &stale,
            )
            .await;
            if d.action == HostAction::AskConfirmation
                && let Some(id) = &incident_id
            {
                awaiting.push(format!(
                    "host {name}: {}; to restart its VMs elsewhere, make sure it is off and run: kubectl annotate node {name} {CONFIRM_ANNOTATION}={id}",
                    d.message
                ));
            }
            if let Some(err) = &mem.fence.last_error
                && mem.fence.confirmed_at.is_none()
                && in_incident(d.verdict)
            {
                fence_failed.push(format!(
                    "host {name}: {} attempt(s), last: {err}",
                    mem.fence.attempts
                ));
            }
            let fresh = lock(&hc.hosts).get(&name).cloned().unwrap_or(mem);
            hosts_out.push(HostHealth {
                name: name.clone(),
                pool: pool_name.clone(),
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
                upsert_incident(&mut st.incidents, &name, i, &all_vms);
            }
        }
        if let Some(ac) = &policy.spec.admission_control {
            let (ok, msg, beyond) = admission_for(&policy, &pool, ac, &covered);
            let enforce = ac.mode == Some(crate::api::ha_policy::AdmissionMode::Enforce);
            // Enforce keeps VMs beyond the capacity that have no host yet from being placed;
            // placed VMs are only reported.
            for v in &covered {
                let Some(uid) = v.metadata.uid.as_deref() else {
                    continue;
                };
                let unplaced = v.status.as_ref().and_then(|s| s.host.as_ref()).is_none();
                let block = (enforce && unplaced && beyond.contains(&v.name_any())).then(|| {
                    format!(
                        "admission control (HAPolicy {}, mode Enforce): no failover capacity left for this VM; {msg}",
                        policy.name_any()
                    )
                });
                ctx.placement.set_admission_block(uid, block);
            }
            capacity.push((ok, msg));
        }
    }

    st.hosts = hosts_out;
    st.protected_vms = Some(protected as i32);
    if st.incidents.len() > MAX_INCIDENTS {
        let extra = st.incidents.len() - MAX_INCIDENTS;
        st.incidents.drain(..extra);
    }
    let cond = |st: &mut crate::api::HAPolicyStatus,
                t: &str,
                on: bool,
                reason_on: &str,
                reason_off: &str,
                msg: String| {
        set_condition(
            &mut st.conditions,
            t,
            on.into(),
            if on { reason_on } else { reason_off },
            msg,
            gen_,
            now,
        );
    };
    cond(
        &mut st,
        "StormGuard",
        !storms.is_empty(),
        "TooManyHostsFailing",
        "Clear",
        if storms.is_empty() {
            "no pool has too many failing hosts".into()
        } else {
            format!(
                "nothing is fenced: {}; check the controller's network before acting",
                storms.join("; ")
            )
        },
    );
    cond(
        &mut st,
        "AwaitingConfirmation",
        !awaiting.is_empty(),
        "NoFencing",
        "NothingToConfirm",
        if awaiting.is_empty() {
            "no host waits for a human confirmation".into()
        } else {
            awaiting.join("; ")
        },
    );
    cond(
        &mut st,
        "FenceFailed",
        !fence_failed.is_empty(),
        "FenceFailed",
        "NoFailedFence",
        if fence_failed.is_empty() {
            "no failed fence".into()
        } else {
            format!(
                "VMs are not restarted until a fence is confirmed (retried with backoff): {}",
                fence_failed.join("; ")
            )
        },
    );
    if policy.spec.admission_control.is_some() {
        let ok = capacity.iter().all(|(ok, _)| *ok);
        let msg = capacity
            .iter()
            .map(|(_, m)| m.clone())
            .collect::<Vec<_>>()
            .join("; ");
        cond(
            &mut st,
            "FailoverCapacity",
            ok,
            "Sufficient",
            "Insufficient",
            msg,
        );
    }
    let ready_msg = if missing_pools.is_empty() {
        format!("watching {} host pool(s)", policy.spec.host_pools.len())
    } else {
        format!("HostPool(s) not found: {}", missing_pools.join(", "))
    };
    cond(
        &mut st,
        "Ready",
        missing_pools.is_empty(),
        "Watching",
        "HostPoolNotFound",
        ready_msg,
    );
    apply_status(
        &api(&ctx, &ns),
        policy.as_ref(),
        policy.status.as_ref(),
        &st,
    )
    .await?;
    Ok(Requeue::requeue(TICK))
}

fn api(ctx: &Context, ns: &str) -> Api<HAPolicy> {
    Api::namespaced(ctx.client.clone(), ns)
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::from_millis((now.as_millisecond() - since.as_millisecond()).max(0) as u64)
}

/// Memory for a host not seen since the controller started: what the status recorded.
fn restore(status: &crate::api::HAPolicyStatus, host: &str, now: Timestamp) -> Memory {
    let h = status.hosts.iter().find(|h| h.name == host);
    let verdict = h.map(|h| h.verdict).unwrap_or_default();
    let incident = h.and_then(|h| h.incident.clone()).map(|id| {
        let rec = status.incidents.iter().find(|i| i.name == id);
        Open {
            detected: rec.map(|r| r.detected.0).unwrap_or(now),
            proven: rec.and_then(|r| {
                r.proven_off.as_ref().map(|p| {
                    let e = match r.evidence.as_deref() {
                        Some("Confirmed") => Evidence::Confirmed,
                        Some("ShutOff") => Evidence::ShutOff,
                        _ => Evidence::Fenced,
                    };
                    (p.0, e)
                })
            }),
            host_back: rec.and_then(|r| r.host_back.as_ref().map(|t| t.0)),
            id,
        }
    });
    Memory {
        // Until the first probe: a host in an incident counts as unreachable (so a fenced host is
        // not taken for recovered), any other as reachable (so no grace is shortened).
        libvirt: Signal {
            up: !in_incident(verdict),
            since: now,
        },
        domains: Vec::new(),
        probed: false,
        probe_started: None,
        probe_answered: false,
        verdict,
        since: h.map(|h| h.since.0).unwrap_or(now),
        message: h.and_then(|h| h.message.clone()).unwrap_or_default(),
        fence: FenceRecord {
            attempts: h.and_then(|h| h.fence_attempts).unwrap_or(0).max(0) as u32,
            last_attempt: h.and_then(|h| h.last_fence_attempt.as_ref().map(|t| t.0)),
            last_error: h.and_then(|h| h.last_fence_error.clone()),
            confirmed_at: h.and_then(|h| h.fenced_at.as_ref().map(|t| t.0)),
            in_flight: false,
        },
        incident,
    }
}

/// The Node's Ready condition as a signal (`None` when it has none).
fn node_signal(n: &Node, now: Timestamp) -> Option<Signal> {
    let c = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))?;
    Some(Signal {
        up: c.status == "True",
        since: c.last_transition_time.as_ref().map(|t| t.0).unwrap_or(now),
    })
}

/// Start a liveness probe of the host unless one runs; a probe running longer than the deadline
/// marks libvirt down from when it started.
fn start_probe(hc: &Arc<HaContext>, pool: &HostPool, node: &Node, now: Timestamp) {
    let name = node.name_any();
    {
        let mut hosts = lock(&hc.hosts);
        let Some(m) = hosts.get_mut(&name) else {
            drop(hosts);
            // First sight: memory is created by the caller right after; probe next tick.
            return;
        };
        if let Some(started) = m.probe_started {
            if started.elapsed() > PROBE_DEADLINE && m.libvirt.up && !m.probe_answered {
                m.probed = false;
                m.libvirt = Signal {
                    up: false,
                    since: Timestamp::from_millisecond(
                        now.as_millisecond() - started.elapsed().as_millis() as i64,
                    )
                    .unwrap_or(now),
                };
            }
            return;
        }
        m.probe_started = Some(Instant::now());
        m.probe_answered = false;
    }
    let uri = match host_uri(pool, node) {
        Ok(u) => u,
        Err(_) => {
            if let Some(m) = lock(&hc.hosts).get_mut(&name) {
                m.probe_started = None;
            }
            return;
        }
    };
    let hc = hc.clone();
    let pool = pool.clone();
    tokio::spawn(async move {
        // Liveness: a round trip that touches no domain, within the deadline.
        let alive = tokio::time::timeout(PROBE_DEADLINE, async {
            let hv = hc.ctx.hosts.connect_in(&hc.probes, &uri, &pool).await?;
            match hv.ping().await {
                Ok(()) => Ok(hv),
                Err(e) => {
                    if e.is_connection_lost() {
                        hc.probes.invalidate(hv.uri()).await;
                    }
                    Err(e)
                }
            }
        })
        .await;
        let hv = match alive {
            Ok(Ok(hv)) => Some(hv),
            Ok(Err(_)) => None,
            Err(_) => {
                // Timed out: drop the probe connection (whatever URI the credentials made of it).
                if let Ok(full) = hc.ctx.hosts.credentialed_uri(&uri, &pool).await {
                    hc.probes.invalidate(&full).await;
                }
                None
            }
        };
        // The domains: the listing may wait behind an operation on a domain (a destroy holds
        // the domain's lock until QEMU exits), which is no sign of a dead host.
        let ok = match hv {
            Some(hv) => {
                if let Some(m) = lock(&hc.hosts).get_mut(&name) {
                    m.probe_answered = true;
                }
                match tokio::time::timeout(LIST_DEADLINE, hv.list_domains()).await {
                    Ok(Ok(domains)) => Some(Some(domains)),
                    _ => Some(None),
                }
            }
            None => None,
        };
        let now = Timestamp::now();
        let mut hosts = lock(&hc.hosts);
        if let Some(m) = hosts.get_mut(&name) {
            let started = m.probe_started.take();
            m.probe_answered = false;
            match ok {
                Some(listed) => {
                    // Without a fresh listing nothing is concluded from the domains.
                    m.probed = listed.is_some();
                    if let Some(domains) = listed {
                        m.domains = domains;
                    }
                    if !m.libvirt.up {
                        m.libvirt = Signal {
                            up: true,
                            since: now,
                        };
                    }
                }
                None if m.libvirt.up => {
                    let began = started
                        .map(|s| now.as_millisecond() - s.elapsed().as_millis() as i64)
                        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
                        .unwrap_or(now);
                    m.libvirt = Signal {
                        up: false,
                        since: began,
                    };
                    m.probed = false;
                }
                None => {}
            }
        }
    });
}

/// Domains on the host of VMs that are placed elsewhere now.
fn stale_domains(mem: &Memory, host: &str, vms: &[Arc<VirtualMachine>]) -> Vec<DomainInfo> {
    if !mem.libvirt.up || !mem.probed {
        return Vec::new();
    }
    mem.domains
        .iter()
        .filter(|d| d.config.is_some() || d.live.is_some())
        .filter(|d| {
            vms.iter().any(|v| {
                v.metadata.uid.as_deref() == Some(d.uuid.as_str())
                    && v.status
                        .as_ref()
                        .and_then(|s| s.host.as_deref())
                        .is_some_and(|h| h != host)
            })
        })
        .cloned()
        .collect()
}

/// Remember the decision, open or close the incident, publish an Event on a verdict change.
async fn record(
    hc: &HaContext,
    ctx: &Context,
    pool: &HostPool,
    host: &str,
    before: &Memory,
    d: &Decision,
    now: Timestamp,
) -> Memory {
    let changed = before.verdict != d.verdict;
    let mem = {
        let mut hosts = lock(&hc.hosts);
        let Some(m) = hosts.get_mut(host) else {
            return before.clone();
        };
        if changed {
            m.verdict = d.verdict;
            m.since = now;
        }
        m.message = d.message.clone();
        if in_incident(d.verdict) && m.incident.is_none() {
            m.incident = Some(Open {
                id: format!("{host}-{}", now.as_second()),
                detected: now,
                proven: None,
                host_back: None,
            });
        }
        if let (HostAction::Restart(e), Some(i)) = (d.action, m.incident.as_mut())
            && i.proven.is_none()
        {
            i.proven = Some((m.fence.confirmed_at.unwrap_or(now), e));
        }
        if d.verdict == HostVerdict::Recovering
            && let Some(i) = m.incident.as_mut()
            && i.host_back.is_none()
        {
            i.host_back = Some(now);
        }
        if d.verdict == HostVerdict::Healthy {
            // The incident (if any) is over; a Recovered host keeps it until then.
            m.incident = None;
            m.fence = FenceRecord::default();
        } else if d.verdict == HostVerdict::Recovered {
            // Its VMs run elsewhere and it is back: a later failure needs a fence of its own.
            m.fence = FenceRecord::default();
        }
        m.clone()
    };
    if changed {
        let type_ = match d.verdict {
            HostVerdict::Healthy | HostVerdict::Recovered => EventType::Normal,
            _ => EventType::Warning,
        };
        ctx.event(
            pool,
            type_,
            &format!("Host{}", d.verdict),
            "HA",
            format!(
                "Host {host}: {} → {}: {}",
                before.verdict, d.verdict, d.message
            ),
        )
        .await;
    }
    mem
}

/// Carry out the decision's action.
#[allow(clippy::too_many_arguments)]
async fn act(
    hc: &Arc<HaContext>,
    ctx: &Arc<Context>,
    policy: &HAPolicy,
    pool: &HostPool,
    node: &Node,
    nodes: &[Arc<Node>],
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
            let f = match fencer(ctx, pool, node).await {
                Ok(f) => f,
                Err(e) => {
                    fence_done(hc, &host, Err(e));
                    return;
                }
            };
            if let Some(m) = lock(&hc.hosts).get_mut(&host) {
                m.fence.in_flight = true;
            }
            let confirm = pool
                .spec
                .fencing
                .as_ref()
                .and_then(|f| f.confirm_timeout_seconds)
                .unwrap_or(30)
                .max(1) as u64;
            let hc = hc.clone();
            let pool_ref = pool.clone();
            tokio::spawn(async move {
                let r = fence::fence(f.as_ref(), Duration::from_secs(confirm), FENCE_POLL).await;
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
                fence_done(&hc, &host, r.map(|_| ()).map_err(|e| e.to_string()));
                hc.ctx.event(&pool_ref, type_, reason, "Fence", note).await;
            });
        }
        HostAction::Restart(_) => {
            restart(ctx, policy, pool, &host, mem, on_host, pool_vms).await;
        }
        HostAction::StopDomains => {
            if let Some(hv) = connected(ctx, pool, node).await {
                for d in mem.domains.iter().filter(|d| d.state.is_active()) {
                    if on_host
                        .iter()
                        .any(|v| v.metadata.uid.as_deref() == Some(d.uuid.as_str()))
                        && let Err(e) = hv.destroy_domain(&d.uuid).await
                    {
                        tracing::warn!(host, domain = %d.name, error = %e, "could not stop the domain");
                    }
                }
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
            super::evacuation::evacuate_for_ha(pool, nodes, ctx, &host, Arc::new(policy.clone()))
                .await;
        }
    }
}

async fn connected(ctx: &Context, pool: &HostPool, node: &Node) -> Option<Arc<dyn Hypervisor>> {
    let uri = host_uri(pool, node).ok()?;
    tokio::time::timeout(PROBE_DEADLINE, ctx.hosts.connect(&uri, pool))
        .await
        .ok()?
        .ok()
}

/// Record a fence result in the host's memory.
fn fence_done(hc: &HaContext, host: &str, r: std::result::Result<(), String>) {
    let now = Timestamp::now();
    if let Some(m) = lock(&hc.hosts).get_mut(host) {
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

/// The host's BMC client, from the pool's fencing settings, the Node and the credentials Secret.
async fn fencer(
    ctx: &Context,
    pool: &HostPool,
    node: &Node,
) -> std::result::Result<Box<dyn Fencer>, String> {
    let f = pool
        .spec
        .fencing
        .as_ref()
        .ok_or_else(|| "no fencing configured".to_string())?;
    let address_type = pool.spec.libvirt.address_type.unwrap_or_default();
    let address = crate::plan::uri::render(&f.address_template, node, address_type)?;
    let ns = pool.namespace().unwrap_or_default();
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&f.credentials_secret)
        .await
        .map_err(|e| format!("reading Secret {}: {e}", f.credentials_secret))?
        .ok_or_else(|| format!("Secret {ns}/{} does not exist", f.credentials_secret))?;
    let key = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
    };
    let text = |k: &str| {
        key(k)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| format!("Secret {ns}/{} lacks key {k:?}", f.credentials_secret))
    };
    let creds = Credentials {
        username: text("username")?,
        password: text("password")?,
        ca_pem: key("ca.crt"),
    };
    let timeout = Duration::from_secs(f.request_timeout_seconds.unwrap_or(5).max(1) as u64);
    match f.driver {
        FenceDriver::Redfish => {
            let tmpl = f
                .system_path_template
                .as_deref()
                .ok_or_else(|| "Redfish fencing needs systemPathTemplate".to_string())?;
            let path = crate::plan::uri::render(&format!("x://{tmpl}"), node, address_type)?;
            let path = path.trim_start_matches("x://").to_string();
            Ok(Box::new(
                fence::redfish::Redfish::new(&address, &path, creds, timeout)
                    .map_err(|e| e.to_string())?,
            ))
        }
        FenceDriver::Ipmi => Ok(Box::new(
            fence::ipmi::Ipmi::new(&address, creds, timeout).map_err(|e| e.to_string())?,
        )),
    }
}

/// Hand the host's VMs to the VirtualMachine controller, in priority order and within capacity.
#[allow(clippy::too_many_arguments)]
async fn restart(
    ctx: &Context,
    policy: &HAPolicy,
    pool: &HostPool,
    host: &str,
    mem: &Memory,
    on_host: &[&Arc<VirtualMachine>],
    pool_vms: &[Arc<VirtualMachine>],
) {
    let Some(incident) = &mem.incident else {
        return;
    };
    let Some((proven, evidence)) = incident.proven else {
        return;
    };
    let handed = |v: &VirtualMachine| {
        v.annotations()
            .get(FAILOVER_ANNOTATION)
            .and_then(|a| serde_json::from_str::<Failover>(a).ok())
            .is_some_and(|f| f.incident == incident.id)
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
        return;
    }
    let in_flight = pool_vms
        .iter()
        .filter(|v| handed(v))
        .filter(|v| {
            v.status
                .as_ref()
                .and_then(|s| s.last_recovery.as_ref())
                .is_none_or(|r| r.incident != incident.id || r.running.is_none())
        })
        .count();
    let mut candidates = scheduling::candidates(pool, ctx);
    for c in &mut candidates {
        if c.name == host {
            c.reachable = false;
        }
    }
    let placed: Vec<Placed> = pool_vms
        .iter()
        .filter_map(|v| {
            Some(Placed {
                uid: v.metadata.uid.clone()?,
                host: v.status.as_ref()?.host.clone()?,
                labels: v.labels().clone(),
                need: need(v),
            })
        })
        .collect();
    let plan = recovery::plan(
        &stranded,
        in_flight,
        policy.max_concurrent_restarts(),
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
    };
    let Ok(value) = serde_json::to_string(&failover) else {
        return;
    };
    for (uid, _) in &plan.release {
        let Some(vm) = on_host
            .iter()
            .find(|v| v.metadata.uid.as_deref() == Some(uid.as_str()))
        else {
            continue;
        };
        let ns = vm.namespace().unwrap_or_default();
        let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({"metadata": {"annotations": {FAILOVER_ANNOTATION: value}}});
        match api
            .patch(&vm.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                ctx.event(
                    vm.as_ref(),
                    EventType::Warning,
                    "Failover",
                    "Failover",
                    format!(
                        "Host {host} failed and is proven off ({}); restarting the VM elsewhere (incident {})",
                        failover.evidence, incident.id
                    ),
                )
                .await
            }
            Err(e) => tracing::warn!(vm = %vm.name_any(), error = %e, "could not hand the VM over for failover"),
        }
    }
}

/// Update the incident's record in status from the open incident and the VMs' recoveries.
fn upsert_incident(list: &mut Vec<Incident>, host: &str, i: &Open, vms: &[Arc<VirtualMachine>]) {
    let mut vm_entries: Vec<IncidentVm> = vms
        .iter()
        .filter_map(|v| {
            let handed = v
                .annotations()
                .get(FAILOVER_ANNOTATION)
                .and_then(|a| serde_json::from_str::<Failover>(a).ok())
                .filter(|f| f.incident == i.id);
            let rec = v
                .status
                .as_ref()
                .and_then(|s| s.last_recovery.as_ref())
                .filter(|r| r.incident == i.id);
            if handed.is_none() && rec.is_none() {
                return None;
            }
            Some(IncidentVm {
                name: v.name_any(),
                released: handed.map(|f| f.proven),
                host: rec.and_then(|r| r.to_host.clone()),
                running: rec.and_then(|r| r.running.clone()),
                waiting: None,
            })
        })
        .collect();
    vm_entries.sort_by(|a, b| a.name.cmp(&b.name));
    let entry = Incident {
        name: i.id.clone(),
        host: host.to_string(),
        detected: ts(i.detected),
        proven_off: i.proven.map(|(t, _)| ts(t)),
        evidence: i.proven.map(|(_, e)| evidence_name(e).to_string()),
        host_back: i.host_back.map(ts),
        vms: vm_entries,
    };
    match list.iter_mut().find(|x| x.name == entry.name) {
        Some(x) => *x = entry,
        None => list.push(entry),
    }
}

/// Admission control for one pool: (sufficient, message with the numbers, VMs beyond).
fn admission_for(
    policy: &HAPolicy,
    pool: &HostPool,
    ac: &AdmissionControl,
    covered: &[Arc<VirtualMachine>],
) -> (bool, String, Vec<String>) {
    let hosts: Vec<Amount> = pool
        .status
        .as_ref()
        .map(|s| {
            s.hosts
                .iter()
                .filter_map(|h| h.allocatable.as_ref())
                .map(Amount::from)
                .collect()
        })
        .unwrap_or_default();
    let reserve = match (ac.host_failures_to_tolerate, ac.reserved_percent) {
        (Some(n), _) => Reserve::HostFailures(n.max(0) as u32),
        (None, Some(p)) => Reserve::Percent(p.max(0) as u32),
        (None, None) => Reserve::HostFailures(1),
    };
    let vms: Vec<Protected> = covered
        .iter()
        .map(|v| Protected {
            name: v.name_any(),
            priority: policy.priority(v.labels()),
            need: need(v),
        })
        .collect();
    let v = admission::evaluate(&hosts, &vms, reserve);
    (
        v.ok(),
        format!("HostPool {}: {}", pool.name_any(), v.message),
        v.beyond,
    )
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
    fn restored_memory_resumes_an_incident() {
        let t = |s| Time(Timestamp::from_second(s).expect("t"));
        let status = crate::api::HAPolicyStatus {
            hosts: vec![HostHealth {
                name: "h1".into(),
                pool: "p".into(),
                verdict: HostVerdict::Fenced,
                since: t(100),
                message: None,
                incident: Some("h1-90".into()),
                fence_attempts: Some(2),
                last_fence_error: None,
                last_fence_attempt: Some(t(99)),
                fenced_at: Some(t(99)),
            }],
            incidents: vec![Incident {
                name: "h1-90".into(),
                host: "h1".into(),
                detected: t(90),
                proven_off: Some(t(99)),
                evidence: Some("Fenced".into()),
                host_back: None,
                vms: vec![],
            }],
            ..Default::default()
        };
        let now = Timestamp::from_second(200).expect("now");
        let m = restore(&status, "h1", now);
        assert_eq!(m.verdict, HostVerdict::Fenced);
        assert_eq!(m.fence.attempts, 2);
        assert_eq!(m.fence.confirmed_at, Some(t(99).0));
        let i = m.incident.expect("incident");
        assert_eq!(i.id, "h1-90");
        assert_eq!(i.detected, t(90).0);
        assert_eq!(i.proven, Some((t(99).0, Evidence::Fenced)));
        // A host never seen starts healthy.
        assert_eq!(restore(&status, "h2", now).verdict, HostVerdict::Healthy);
    }
}
