//! Power management, run by the HostPool controller (so only by the replica that may act) after
//! its hosts are probed, for a pool with `spec.power` or with hosts still out of `On`.
//!
//! Each host's power state lives in the pool's status (`hosts[].power`), so a restarted
//! controller, or a new leader, carries on where the last one stopped. One step per reconcile:
//!
//! - **Draining** (chosen by [`crate::plan::power::decide`]): the host takes no new VMs (see
//!   [`crate::controller::scheduling::candidates`]) and the pool's evacuation live-migrates its
//!   running VMs away within the pool's migration limits. Once no VM of the pool runs there, no
//!   migration is bound for it and its libvirt lists no running domain, it is recorded
//!   `Standby`. A VM that may not move, or a drain not done within 30 minutes, keeps it `On`.
//! - **Standby**: the next reconcile (the status says Standby by then, so the HA controller no
//!   longer judges the host) checks once more that libvirt lists no running domain and powers
//!   the host off through its BMC (the fencing client). A host in Standby whose libvirt answers
//!   with running domains is taken back `On`: nothing of it is started elsewhere.
//! - **Waking** (chosen when VMs wait for capacity or for the host, the load rises, or fewer
//!   hosts are on than kept): the next reconcile powers it on through its BMC (and again while
//!   the BMC does not report On); once its Node is Ready and its libvirt answers it is `On`.
//!   Not up within `wakeTimeoutSeconds`: back to `Standby`.
//!
//! Every step is an Event on the pool with its reason and numbers.

use crate::api::condition;
use crate::api::ha_policy::HAPolicy;
use crate::api::power::{HostPower, PowerSpec, PowerStatus};
use crate::api::virtual_machine::EvictionStrategy;
use crate::api::{HostPool, HostPoolStatus, HostState, HostStatus, VirtualMachine, VmPhase};
use crate::controller::Context;
use crate::controller::context::PoolHost;
use crate::controller::hosts::{cordoned, in_maintenance, node_ready};
use crate::controller::scheduling::takes_vms;
use crate::fence::{self, Power as BmcPower};
use crate::plan::balance::Usage;
use crate::plan::capacity::{self, Amount};
use crate::plan::power::{self, Action, Host, Inputs, Power};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// Reason of the Ready condition of a VM placed on a host in Standby (or being powered on).
pub const HOST_STANDBY: &str = "HostStandby";

/// A drain not done in this time is given up: the host stays on.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A host whose power-on failed is woken after the other Standby hosts for this long.
pub const WAKE_FAILED_FOR: Duration = Duration::from_secs(30 * 60);

/// How soon the pool is looked at again while a host is in transition (each look probes every
/// host of the pool).
pub const STEP: Duration = Duration::from_secs(5);

/// What a host in Standby says once its BMC reported it Off.
const POWERED_OFF: &str = "powered off: the BMC reports Off";
const POWERING_OFF: &str = "empty: powering it off through its BMC";
const POWER_OFF_SENT: &str = "power-off sent through its BMC: waiting for the BMC to report Off";
const POWERING_ON: &str =
    "powered on through its BMC: waiting for its Node to be Ready and its libvirt to answer";

/// Run power management for `pool` (whose Nodes are `nodes`) on `st`, the status about to be
/// written, its hosts just probed. Returns how soon to look again, when sooner than the probe
/// interval may matter.
pub async fn reconcile(
    pool: &HostPool,
    ctx: &Context,
    nodes: &[Arc<Node>],
    st: &mut HostPoolStatus,
    now: Timestamp,
) -> Option<Duration> {
    let managed = st.hosts.iter().any(|h| h.power() != HostPower::On);
    let Some(spec) = pool
        .spec
        .power
        .clone()
        .or_else(|| managed.then(PowerSpec::default))
    else {
        st.power = None;
        return None;
    };
    let enabled = pool.spec.power.as_ref().is_some_and(PowerSpec::enabled);
    let ns = pool.namespace().unwrap_or_default();
    let pool_vms = ctx.caches.vms_in_pool(&ns, &pool.name_any());
    let mut soon = false;
    for i in 0..st.hosts.len() {
        let name = st.hosts[i].name.clone();
        let node = nodes.iter().find(|n| n.name_any() == name).cloned();
        let Some(node) = node else { continue };
        let h = &mut st.hosts[i];
        match h.power() {
            HostPower::On => {}
            HostPower::Draining => {
                soon = true;
                drain_step(pool, ctx, &node, h, &pool_vms, now).await;
            }
            HostPower::Standby => {
                soon |= standby_step(pool, ctx, &node, h, now).await;
            }
            HostPower::Waking => {
                soon = true;
                wake_step(pool, ctx, &node, h, &spec, now).await;
            }
        }
    }
    let before = st.power.clone().unwrap_or_default();
    let mut out = PowerStatus {
        low_since: before.low_since.clone(),
        message: before.message.clone(),
        ..PowerStatus::default()
    };
    let settings = power::Settings::of(&spec, failover_hosts(pool, ctx, st.hosts.len()), now);
    // Unmeasured load holds a Standby back, never a power-on: VMs waiting or a host gone need
    // no load figure.
    let (hosts, unmeasured) = facts(pool, ctx, nodes, st, &pool_vms, now);
    let pending = pool_vms.iter().filter(|v| waits_for_capacity(v)).count();
    let mut d = power::decide(
        &Inputs {
            hosts: &hosts,
            pending_for_capacity: pending,
            low_since: before.low_since.as_ref().map(|t| t.0),
            enabled,
            now,
        },
        &settings,
    );
    if let (Some(wait), Action::Standby { .. } | Action::Hold { .. }) = (&unmeasured, &d.action) {
        d = power::Decision {
            action: Action::Hold {
                low_since: before.low_since.as_ref().map(|t| t.0),
            },
            message: wait.clone(),
        };
    }
    out.message = Some(d.message.clone());
    match d.action {
        Action::Hold { low_since } => {
            // Kept as first recorded (whole seconds), so a steady pool writes nothing.
            out.low_since = match (low_since, &before.low_since) {
                (Some(_), Some(b)) => Some(b.clone()),
                (Some(t), None) => Some(crate::controller::status::whole_seconds(t)),
                (None, _) => None,
            };
            if let Some(since) = &out.low_since {
                let due = since.0.as_millisecond().saturating_add(
                    i64::try_from(settings.standby_after.as_millis()).unwrap_or(i64::MAX),
                );
                let left = due.saturating_sub(now.as_millisecond()).max(1000);
                if !soon {
                    return finish(st, out, Some(Duration::from_millis(left as u64)));
                }
            }
        }
        Action::Standby { host } => {
            soon = true;
            let vms = hosts.iter().find(|h| h.name == host).map_or(0, |h| h.vms);
            if let Some(h) = st.hosts.iter_mut().find(|h| h.name == host) {
                enter(
                    h,
                    HostPower::Draining,
                    now,
                    Some(format!(
                        "emptied for Standby: {vms} VM(s) are live-migrated away"
                    )),
                );
            }
            let note = format!(
                "{}; its {vms} VM(s) are live-migrated away, then it is powered off",
                d.message
            );
            event(ctx, pool, nodes, &host, EventType::Normal, "Draining", note).await;
        }
        Action::Wake { host } => {
            soon = true;
            out.low_since = None;
            if let Some(h) = st.hosts.iter_mut().find(|h| h.name == host) {
                enter(
                    h,
                    HostPower::Waking,
                    now,
                    Some("chosen to be powered on".into()),
                );
            }
            event(
                ctx,
                pool,
                nodes,
                &host,
                EventType::Normal,
                "Waking",
                d.message.clone(),
            )
            .await;
        }
        Action::Cancel { host } => {
            out.low_since = None;
            if let Some(h) = st.hosts.iter_mut().find(|h| h.name == host) {
                enter(h, HostPower::On, now, None);
            }
            event(
                ctx,
                pool,
                nodes,
                &host,
                EventType::Normal,
                "StandbyCancelled",
                d.message.clone(),
            )
            .await;
        }
    }
    finish(st, out, soon.then_some(STEP))
}

fn finish(
    st: &mut HostPoolStatus,
    mut out: PowerStatus,
    next: Option<Duration>,
) -> Option<Duration> {
    out.standby_hosts = i32::try_from(
        st.hosts
            .iter()
            .filter(|h| h.power() == HostPower::Standby)
            .count(),
    )
    .unwrap_or(i32::MAX);
    st.power = Some(out);
    next
}

/// Put `h` in power state `p` from `now`.
fn enter(h: &mut HostStatus, p: HostPower, now: Timestamp, message: Option<String>) {
    h.power = (p != HostPower::On).then_some(p);
    h.power_since = (p != HostPower::On).then(|| crate::controller::status::whole_seconds(now));
    h.power_message = message;
}

fn elapsed(since: Option<&Time>, now: Timestamp) -> Duration {
    let ms = since.map_or(0, |t| {
        now.as_millisecond().saturating_sub(t.0.as_millisecond())
    });
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// An Event about `pool` with host `host`'s Node as the related object.
async fn event(
    ctx: &Context,
    pool: &HostPool,
    nodes: &[Arc<Node>],
    host: &str,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let node = nodes.iter().find(|n| n.name_any() == host);
    let ev = kube::runtime::events::Event {
        type_,
        reason: reason.into(),
        note: Some(format!("Host {host}: {note}")),
        action: "Power".into(),
        secondary: node.map(|n| n.object_ref(&())),
    };
    if let Err(e) = ctx.recorder.publish(&ev, &pool.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not record Event");
    }
}

/// Whether the host's libvirt answered at this probe.
fn answers(h: &HostStatus) -> bool {
    matches!(h.state, HostState::Ready | HostState::Cordoned)
}

/// Running domains on the host as its libvirt lists them now, or why it cannot tell.
async fn running_domains(pool: &HostPool, ctx: &Context, node: &Node) -> Result<usize, String> {
    let uri = ctx.hosts.uri(pool, node)?;
    let hv = ctx
        .hosts
        .connect(&uri, pool)
        .await
        .map_err(|e| format!("libvirt: {e}"))?;
    let domains = tokio::time::timeout(Duration::from_secs(20), hv.list_domains())
        .await
        .map_err(|_| "libvirt did not list the domains within 20 s".to_string())?
        .map_err(|e| format!("listing the domains: {e}"))?;
    Ok(domains.iter().filter(|d| d.state.is_active()).count())
}

/// A phase in which the VM's domain may run on its host.
fn may_run(phase: Option<VmPhase>) -> bool {
    matches!(
        phase,
        Some(
            VmPhase::Provisioning
                | VmPhase::Starting
                | VmPhase::Running
                | VmPhase::Stopping
                | VmPhase::Unknown
                | VmPhase::Migrating
        )
    )
}

fn on_host<'a>(
    vms: &'a [Arc<VirtualMachine>],
    host: &'a str,
) -> impl Iterator<Item = &'a Arc<VirtualMachine>> {
    vms.iter()
        .filter(move |v| v.status.as_ref().and_then(|s| s.host.as_deref()) == Some(host))
}

/// A VM that may not be live-migrated away.
fn pinned(v: &VirtualMachine) -> bool {
    v.spec.eviction_strategy.unwrap_or_default() != EvictionStrategy::LiveMigrate
}

/// One step of a host being emptied for Standby.
async fn drain_step(
    pool: &HostPool,
    ctx: &Context,
    node: &Node,
    h: &mut HostStatus,
    vms: &[Arc<VirtualMachine>],
    now: Timestamp,
) {
    let nodes = [Arc::new(node.clone())];
    let name = h.name.clone();
    let stay = if let Some(v) =
        on_host(vms, &name).find(|v| may_run(v.status.as_ref().and_then(|s| s.phase)) && pinned(v))
    {
        Some(format!(
            "VM {} may not move (evictionStrategy None)",
            v.name_any()
        ))
    } else if elapsed(h.power_since.as_ref(), now) >= DRAIN_TIMEOUT {
        Some(format!(
            "not empty after {} minutes: {}",
            DRAIN_TIMEOUT.as_secs() / 60,
            h.power_message.clone().unwrap_or_default()
        ))
    } else {
        None
    };
    if let Some(why) = stay {
        enter(h, HostPower::On, now, None);
        event(
            ctx,
            pool,
            &nodes,
            &name,
            EventType::Warning,
            "StandbyCancelled",
            format!("stays on: {why}"),
        )
        .await;
        return;
    }
    let left: Vec<String> = on_host(vms, &name)
        .filter(|v| may_run(v.status.as_ref().and_then(|s| s.phase)))
        .map(|v| v.name_any())
        .collect();
    let ns = pool.namespace();
    let inbound = ctx
        .caches
        .migrations
        .state()
        .iter()
        .filter(|m| {
            m.namespace() == ns && !m.is_terminal() && m.metadata.deletion_timestamp.is_none()
        })
        .filter(|m| m.status.as_ref().and_then(|s| s.target.as_deref()) == Some(name.as_str()))
        .count();
    if !left.is_empty() || inbound > 0 {
        h.power_message = Some(if left.is_empty() {
            format!("emptied for Standby: waiting for {inbound} migration(s) bound for it")
        } else {
            format!(
                "emptied for Standby: {} VM(s) left: {}",
                left.len(),
                left.join(", ")
            )
        });
        return;
    }
    match running_domains(pool, ctx, node).await {
        Ok(0) => {
            let took = elapsed(h.power_since.as_ref(), now);
            enter(h, HostPower::Standby, now, Some(POWERING_OFF.into()));
            event(
                ctx,
                pool,
                &nodes,
                &name,
                EventType::Normal,
                "Standby",
                format!(
                    "emptied in {} s: no VM runs on it any more and libvirt lists no running domain; in Standby, powering it off through its BMC",
                    took.as_secs()
                ),
            )
            .await;
        }
        Ok(n) => {
            h.power_message = Some(format!(
                "emptied for Standby: libvirt still lists {n} running domain(s)"
            ))
        }
        Err(e) => {
            h.power_message = Some(format!(
                "emptied for Standby: its domains cannot be checked ({e})"
            ))
        }
    }
}

/// One step of a host in Standby: power it off once more checked empty, or see it off. Returns
/// whether to look again soon.
async fn standby_step(
    pool: &HostPool,
    ctx: &Context,
    node: &Node,
    h: &mut HostStatus,
    now: Timestamp,
) -> bool {
    let nodes = [Arc::new(node.clone())];
    let name = h.name.clone();
    if !answers(h) && h.power_message.as_deref() == Some(POWERED_OFF) {
        return false;
    }
    let bmc = match crate::controller::bmc::client(ctx, pool, node).await {
        Ok(b) => b,
        Err(e) => {
            h.power_message = Some(format!("its BMC cannot be used: {e}"));
            return false;
        }
    };
    if answers(h) {
        // Never power off a host that runs domains: only one checked empty now goes off.
        match running_domains(pool, ctx, node).await {
            Ok(0) => {}
            Ok(n) => {
                enter(h, HostPower::On, now, None);
                event(
                    ctx,
                    pool,
                    &nodes,
                    &name,
                    EventType::Warning,
                    "StandbyAborted",
                    format!(
                        "its libvirt answers with {n} running domain(s) although it is in Standby: it is On again, not powered off, and nothing of it is started elsewhere"
                    ),
                )
                .await;
                return false;
            }
            Err(e) => {
                h.power_message = Some(format!(
                    "in Standby, not powered off: its domains cannot be checked ({e})"
                ));
                return true;
            }
        }
        return match bmc.power_state().await {
            Ok(BmcPower::Off) => {
                h.power_message = Some(
                    "in Standby, but libvirt answers while the BMC reports Off (is the BMC this host's?): nothing is done".into(),
                );
                false
            }
            Ok(_) => match bmc.power_off().await {
                Ok(()) if h.power_message.as_deref() == Some(POWER_OFF_SENT) => true,
                Ok(()) => {
                    h.power_message = Some(POWER_OFF_SENT.into());
                    event(
                        ctx,
                        pool,
                        &nodes,
                        &name,
                        EventType::Normal,
                        "PoweringOff",
                        format!(
                            "libvirt lists no running domain: powering it off through its BMC ({}), {} s after it was chosen for Standby",
                            bmc.describe(),
                            elapsed(h.power_since.as_ref(), now).as_secs()
                        ),
                    )
                    .await;
                    true
                }
                // A BMC that fails is asked again at the next probe, not sooner.
                Err(e) => {
                    h.power_message = Some(format!("the power-off failed: {e}"));
                    false
                }
            },
            Err(e) => {
                h.power_message = Some(format!("its BMC does not tell the power state: {e}"));
                false
            }
        };
    }
    match bmc.power_state().await {
        Ok(BmcPower::Off) => {
            h.power_message = Some(POWERED_OFF.into());
            event(
                ctx,
                pool,
                &nodes,
                &name,
                EventType::Normal,
                "PoweredOff",
                format!(
                    "the BMC reports Off, {} s after the host went to Standby",
                    elapsed(h.power_since.as_ref(), now).as_secs()
                ),
            )
            .await;
            false
        }
        Ok(p) => {
            h.power_message = Some(format!(
                "the BMC reports {p:?} while libvirt does not answer: waiting for power Off (a host whose domains cannot be checked is not powered off)"
            ));
            true
        }
        Err(e) => {
            h.power_message = Some(format!("its BMC does not tell the power state: {e}"));
            false
        }
    }
}

/// One step of a host being powered on.
async fn wake_step(
    pool: &HostPool,
    ctx: &Context,
    node: &Node,
    h: &mut HostStatus,
    spec: &PowerSpec,
    now: Timestamp,
) {
    let nodes = [Arc::new(node.clone())];
    let name = h.name.clone();
    let took = elapsed(h.power_since.as_ref(), now);
    if answers(h) && node_ready(node) {
        enter(h, HostPower::On, now, None);
        event(
            ctx,
            pool,
            &nodes,
            &name,
            EventType::Normal,
            "PoweredOn",
            format!(
                "on: its Node is Ready and its libvirt answers, {} s after it was chosen to be powered on",
                took.as_secs()
            ),
        )
        .await;
        return;
    }
    if took >= spec.wake_timeout() {
        enter(
            h,
            HostPower::Standby,
            now,
            Some(format!(
                "did not come up within {} s of the power-on (Node Ready: {}, libvirt answers: {})",
                spec.wake_timeout().as_secs(),
                node_ready(node),
                answers(h)
            )),
        );
        h.wake_failed = Some(crate::controller::status::whole_seconds(now));
        let note = h.power_message.clone().unwrap_or_default();
        event(
            ctx,
            pool,
            &nodes,
            &name,
            EventType::Warning,
            "WakeFailed",
            format!("back in Standby: {note}"),
        )
        .await;
        return;
    }
    let bmc = match crate::controller::bmc::client(ctx, pool, node).await {
        Ok(b) => b,
        Err(e) => {
            h.power_message = Some(format!("its BMC cannot be used: {e}"));
            return;
        }
    };
    match fence::power_on(bmc.as_ref()).await {
        Ok(true) => {
            h.power_message = Some(POWERING_ON.into());
            event(
                ctx,
                pool,
                &nodes,
                &name,
                EventType::Normal,
                "PoweringOn",
                format!("powering it on through its BMC ({})", bmc.describe()),
            )
            .await;
        }
        Ok(false) => {
            h.power_message = Some(format!(
                "the BMC reports On: waiting for its Node to be Ready ({}) and its libvirt to answer ({}), {} s so far",
                node_ready(node),
                answers(h),
                took.as_secs()
            ));
        }
        Err(e) => {
            h.power_message = Some(format!("the power-on failed: {e}"));
        }
    }
}

/// A VM with no host that waits because no host has room.
fn waits_for_capacity(v: &VirtualMachine) -> bool {
    let Some(s) = v.status.as_ref() else {
        return false;
    };
    s.host.is_none()
        && matches!(s.phase, None | Some(VmPhase::Pending))
        && condition::find(&s.conditions, "Ready").is_some_and(|c| c.reason == "NoHostAvailable")
}

/// A VM placed on a host in Standby that waits for it.
fn waits_for_host(v: &VirtualMachine) -> bool {
    v.status.as_ref().is_some_and(|s| {
        s.phase == Some(VmPhase::Pending)
            && condition::find(&s.conditions, "Ready").is_some_and(|c| c.reason == HOST_STANDBY)
    })
}

/// Hosts whose failure the pool must survive: the largest failover reserve the admission
/// control of the HAPolicies covering it asks for.
fn failover_hosts(pool: &HostPool, ctx: &Context, hosts: usize) -> usize {
    let ns = pool.namespace();
    let name = pool.name_any();
    ctx.caches
        .policies
        .state()
        .iter()
        .filter(|p| p.namespace() == ns && p.spec.host_pools.contains(&name))
        .filter_map(|p: &Arc<HAPolicy>| p.spec.admission_control.clone())
        .map(
            |a| match (a.host_failures_to_tolerate, a.reserved_percent) {
                (Some(n), _) => usize::try_from(n).unwrap_or(0),
                (None, Some(pct)) => (hosts * usize::try_from(pct).unwrap_or(0)).div_ceil(100),
                (None, None) => 0,
            },
        )
        .max()
        .unwrap_or(0)
}

/// The pool's hosts as the decision sees them, and what to wait for before a Standby: a host
/// taking VMs whose load is not measured yet (counted as none meanwhile).
fn facts(
    pool: &HostPool,
    ctx: &Context,
    nodes: &[Arc<Node>],
    st: &HostPoolStatus,
    vms: &[Arc<VirtualMachine>],
    now: Timestamp,
) -> (Vec<Host>, Option<String>) {
    let mut wait = None;
    let reserve = capacity::Policy::of(pool);
    let mut out = Vec::new();
    for h in &st.hosts {
        let Some(node) = nodes.iter().find(|n| n.name_any() == h.name) else {
            continue;
        };
        let key = PoolHost::of(pool, &h.name);
        let power = match h.power() {
            HostPower::On => Power::On,
            HostPower::Draining => Power::Draining,
            HostPower::Standby => Power::Standby,
            HostPower::Waking => Power::Waking,
        };
        let usable = power == Power::On
            && h.state == HostState::Ready
            && node_ready(node)
            && !cordoned(node)
            && !in_maintenance(node)
            && ctx
                .ha
                .of(&key)
                .into_iter()
                .all(|(_, v)| takes_vms(v) || v == crate::api::ha_policy::HostVerdict::Standby);
        let cap = h.capacity.as_ref().map(Amount::from).unwrap_or_default();
        let measured = ctx.load.host(&key);
        if usable && wait.is_none() {
            wait = match &measured {
                None => Some(format!(
                    "waiting for the load of host {} to be measured",
                    h.name
                )),
                Some(u) if !u.unmeasured.is_empty() => Some(format!(
                    "waiting for a second load sample of {} domain(s) on host {}",
                    u.unmeasured.len(),
                    h.name
                )),
                Some(_) => None,
            };
        }
        let mine: Vec<&Arc<VirtualMachine>> = on_host(vms, &h.name).collect();
        let foreign_running = h.foreign_allocated.as_ref().is_some_and(|f| f.cpus > 0);
        out.push(Host {
            name: h.name.clone(),
            power,
            has_bmc: pool.spec.fencing.is_some(),
            usable,
            capacity: Usage {
                cpu_millis: cap
                    .cpus
                    .saturating_sub(reserve.reserved_cpus)
                    .saturating_mul(1000),
                memory: cap.memory.saturating_sub(reserve.reserved_memory),
            },
            used: measured.map(|u| u.total).unwrap_or_default(),
            vms: mine
                .iter()
                .filter(|v| may_run(v.status.as_ref().and_then(|s| s.phase)))
                .count(),
            pinned: mine
                .iter()
                .filter(|v| may_run(v.status.as_ref().and_then(|s| s.phase)) && pinned(v))
                .count()
                + usize::from(foreign_running),
            waiting: mine.iter().filter(|v| waits_for_host(v)).count(),
            wake_failed: h
                .wake_failed
                .as_ref()
                .is_some_and(|t| elapsed(Some(t), now) < WAKE_FAILED_FOR),
        });
    }
    (out, wait)
}
