//! What the HA controller remembers about each host between ticks, restored from the HAPolicy's
//! status after a restart, and how a decision updates it (incidents open and close here).

use super::*;
use crate::api::ha_policy::HostVerdict;
use crate::api::{HostPool, VirtualMachine};
use crate::controller::{Context, lock};
use crate::hypervisor::DomainInfo;
use crate::plan::host_health::{Decision, Evidence, FenceRecord, HostAction, Power, Signal};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use std::sync::Arc;
use std::time::Instant;

/// What the controller remembers about one host of one pool, for one policy, between ticks.
#[derive(Debug, Clone)]
pub(super) struct Memory {
    /// The UIDs of the policy and the pool it was made for: a policy or pool deleted and made
    /// again under the same name starts afresh.
    pub(super) owners: Owners,
    pub(super) libvirt: Signal,
    /// Domains from the last successful probe.
    pub(super) domains: Vec<DomainInfo>,
    /// `domains` comes from a probe made since libvirt last came up.
    pub(super) probed: bool,
    /// When `domains` was listed, with the probe connection's counts then.
    pub(super) listed: Option<Listed>,
    pub(super) probe_started: Option<Instant>,
    /// The running probe's liveness check answered (it is now listing domains, which may wait
    /// behind an operation on a domain).
    pub(super) probe_answered: bool,
    pub(super) verdict: HostVerdict,
    pub(super) since: Timestamp,
    pub(super) message: String,
    pub(super) fence: FenceRecord,
    pub(super) incident: Option<Open>,
    /// VMs (by UID) whose domain a lookup by UUID found shut off after ferry asked libvirt to
    /// stop it in this incident, with when: the only proof that the host's domains are off.
    pub(super) stopped: std::collections::BTreeMap<String, Timestamp>,
    /// The last decision asks a human to confirm the host off.
    pub(super) asks_confirmation: bool,
    /// The BMC's last power reading, with when it was taken.
    pub(super) bmc: Option<(Power, Timestamp)>,
    /// When the BMC read under way started (one at a time).
    pub(super) bmc_read: Option<Instant>,
}

/// When a host's domains were listed, and the domain changes heard and connections opened on
/// its probe connection by then.
#[derive(Debug, Clone, Copy)]
pub(super) struct Listed {
    pub(super) at: Instant,
    pub(super) changes: u64,
    pub(super) opened: u64,
}

/// The UIDs of the HAPolicy and HostPool a [`Memory`] belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Owners {
    pub(super) policy: Option<String>,
    pub(super) pool: Option<String>,
}

impl Owners {
    pub(super) fn of(policy: &crate::api::HAPolicy, pool: &HostPool) -> Self {
        Owners {
            policy: policy.metadata.uid.clone(),
            pool: pool.metadata.uid.clone(),
        }
    }
}

/// The open incident of a host.
#[derive(Debug, Clone)]
pub(super) struct Open {
    pub(super) id: String,
    pub(super) detected: Timestamp,
    pub(super) proven: Option<(Timestamp, Evidence)>,
    pub(super) host_back: Option<Timestamp>,
    /// VMs (by UID) not handed over yet, with why (the last restart plan).
    pub(super) waiting: std::collections::BTreeMap<String, String>,
}

/// Memory for a host of a pool not seen since the controller started: what the status recorded.
pub(super) fn restore(
    status: &crate::api::HAPolicyStatus,
    owners: Owners,
    key: &HaKey,
    now: Timestamp,
) -> Memory {
    let h = status
        .hosts
        .iter()
        .find(|h| h.name == key.host.node && h.pool == key.host.pool);
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
            waiting: Default::default(),
        }
    });
    Memory {
        owners,
        // Until the first probe: a host in an incident counts as unreachable (so a fenced host is
        // not taken for recovered), any other as reachable (so no grace is shortened).
        libvirt: Signal {
            up: !verdict.in_incident(),
            since: now,
        },
        domains: Vec::new(),
        probed: false,
        listed: None,
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
        stopped: Default::default(),
        asks_confirmation: false,
        bmc: None,
        bmc_read: None,
    }
}

/// Domains on the host of VMs that are placed elsewhere now.
pub(super) fn stale_domains(
    mem: &Memory,
    host: &str,
    vms: &[Arc<VirtualMachine>],
) -> Vec<DomainInfo> {
    if !mem.libvirt.up || !mem.probed {
        return Vec::new();
    }
    mem.domains
        .iter()
        .filter(|d| d.config.is_some() || d.live.is_some())
        .filter(|d| {
            vms.iter().any(|v| {
                crate::plan::naming::vm_domain_uuid(v) == d.uuid
                    && v.status
                        .as_ref()
                        .and_then(|s| s.host.as_deref())
                        .is_some_and(|h| h != host)
            })
        })
        .cloned()
        .collect()
}

/// A new incident's ID: `<pool>-<host>-<unix seconds>` (one policy may judge a Node in two of
/// its pools).
pub(super) fn incident_id(pool: &str, host: &str, now: Timestamp) -> String {
    format!("{pool}-{host}-{}", now.as_second())
}

/// Remember the decision, open or close the incident, publish an Event on a verdict change.
pub(super) async fn record(
    hc: &HaContext,
    ctx: &Context,
    pool: &HostPool,
    key: &HaKey,
    before: &Memory,
    d: &Decision,
    now: Timestamp,
) -> Memory {
    let host = key.host.node.as_str();
    let changed = before.verdict != d.verdict;
    let mem = {
        let mut hosts = lock(&hc.hosts);
        let Some(m) = hosts.get_mut(key) else {
            return before.clone();
        };
        if changed {
            m.verdict = d.verdict;
            m.since = now;
        }
        m.message = d.message.clone();
        m.asks_confirmation = d.action == HostAction::AskConfirmation;
        if d.verdict.in_incident() && m.incident.is_none() {
            m.incident = Some(Open {
                id: incident_id(&key.host.pool, host, now),
                detected: now,
                proven: None,
                host_back: None,
                waiting: Default::default(),
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
            m.stopped.clear();
        } else if d.verdict == HostVerdict::Recovered {
            // Its VMs run elsewhere and it is back: a later failure needs a fence of its own.
            m.fence = FenceRecord::default();
        }
        m.clone()
    };
    if changed {
        let type_ = match d.verdict {
            HostVerdict::Healthy | HostVerdict::Recovered | HostVerdict::Standby => {
                EventType::Normal
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ha_policy::{HostHealth, Incident};

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
                pool: None,
                detected: t(90),
                proven_off: Some(t(99)),
                evidence: Some("Fenced".into()),
                host_back: None,
                vms: vec![],
            }],
            ..Default::default()
        };
        let now = Timestamp::from_second(200).expect("now");
        let key = |pool: &str, host: &str| {
            HaKey::new(
                "ha",
                crate::controller::context::PoolHost::new("ns", pool, host),
            )
        };
        let m = restore(&status, Owners::default(), &key("p", "h1"), now);
        assert_eq!(m.verdict, HostVerdict::Fenced);
        assert_eq!(m.fence.attempts, 2);
        assert_eq!(m.fence.confirmed_at, Some(t(99).0));
        let i = m.incident.expect("incident");
        assert_eq!(i.id, "h1-90");
        assert_eq!(i.detected, t(90).0);
        assert_eq!(i.proven, Some((t(99).0, Evidence::Fenced)));
        // A host never seen starts healthy, and so does the same Node in another pool.
        let fresh = |k: &HaKey| restore(&status, Owners::default(), k, now).verdict;
        assert_eq!(fresh(&key("p", "h2")), HostVerdict::Healthy);
        assert_eq!(fresh(&key("other", "h1")), HostVerdict::Healthy);
    }
}
