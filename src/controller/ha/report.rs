//! What the HAPolicy's status says: incidents with their VMs, and failover capacity.

use super::*;
use crate::api::HAPolicyStatus;
use crate::api::ha_policy::{
    AdmissionControl, FAILOVER_ANNOTATION, Failover, Incident, IncidentVm,
};
use crate::api::{HAPolicy, HostPool, VirtualMachine};
use crate::controller::scheduling::need;
use crate::plan::admission::{self, Protected, Reserve};
use crate::plan::capacity::Amount;
use kube::ResourceExt;
use std::sync::Arc;

/// Update the incident's record in status from the open incident and the VMs' recoveries. A
/// VM's failover annotation counts only when the HA controller released it (`ha`) or the VM
/// controller acted on it (the VM's recovery names the incident): anyone who may edit the VM
/// may write the annotation.
pub(super) fn upsert_incident(
    list: &mut Vec<Incident>,
    key: &HaKey,
    i: &Open,
    vms: &[Arc<VirtualMachine>],
    ha: &crate::controller::context::HaVerdicts,
) {
    let mut vm_entries: Vec<IncidentVm> = vms
        .iter()
        .filter_map(|v| {
            let rec = v
                .status
                .as_ref()
                .and_then(|s| s.last_recovery.as_ref())
                .filter(|r| r.incident == i.id);
            let released = v
                .metadata
                .uid
                .as_deref()
                .is_some_and(|uid| ha.released(uid, &key.host, &i.id));
            let handed = v
                .annotations()
                .get(FAILOVER_ANNOTATION)
                .and_then(|a| serde_json::from_str::<Failover>(a).ok())
                .filter(|f| f.incident == i.id && f.host == key.host.node)
                .filter(|_| released || rec.is_some());
            let waiting = v
                .metadata
                .uid
                .as_deref()
                .and_then(|uid| i.waiting.get(uid))
                .filter(|_| handed.is_none() && rec.is_none());
            if handed.is_none() && rec.is_none() && waiting.is_none() {
                return None;
            }
            Some(IncidentVm {
                name: v.name_any(),
                // When this VM was handed over (a later wave's VMs after the earlier ones ran);
                // an annotation from before releases had times says only when the host was off.
                released: handed.map(|f| f.released.unwrap_or(f.proven)),
                host: rec.and_then(|r| r.to_host.clone()),
                running: rec.and_then(|r| r.running.clone()),
                waiting: waiting.cloned(),
            })
        })
        .collect();
    vm_entries.sort_by(|a, b| a.name.cmp(&b.name));
    let entry = Incident {
        name: i.id.clone(),
        host: key.host.node.clone(),
        pool: Some(key.host.pool.clone()),
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
pub(super) fn admission_for(
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

/// What one tick found, for the policy's status.
#[derive(Default)]
pub(super) struct Tally {
    /// Every judged host.
    pub(super) hosts: Vec<HostHealth>,
    /// Pools whose storm guard holds, with why.
    pub(super) storms: Vec<String>,
    /// Hosts waiting for a human to confirm them off.
    pub(super) awaiting: Vec<String>,
    /// Hosts whose fence failed.
    pub(super) fence_failed: Vec<String>,
    /// Failover capacity per pool: (sufficient, message).
    pub(super) capacity: Vec<(bool, String)>,
    /// VMs the policy covers.
    pub(super) protected: usize,
    /// Pools the policy names that do not exist.
    pub(super) missing_pools: Vec<String>,
}

impl Tally {
    /// Write the hosts, the count of protected VMs and the conditions into `st`.
    pub(super) fn report(&mut self, policy: &HAPolicy, st: &mut HAPolicyStatus, now: Timestamp) {
        let gen_ = policy.metadata.generation;
        st.hosts = std::mem::take(&mut self.hosts);
        st.protected_vms = Some(self.protected as i32);
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
            st,
            "StormGuard",
            !self.storms.is_empty(),
            "TooManyHostsFailing",
            "Clear",
            if self.storms.is_empty() {
                "no pool has too many failing hosts".into()
            } else {
                format!(
                    "nothing is fenced: {}; check the controller's network before acting",
                    self.storms.join("; ")
                )
            },
        );
        cond(
            st,
            "AwaitingConfirmation",
            !self.awaiting.is_empty(),
            "NoFencing",
            "NothingToConfirm",
            if self.awaiting.is_empty() {
                "no host waits for a human confirmation".into()
            } else {
                self.awaiting.join("; ")
            },
        );
        cond(
            st,
            "FenceFailed",
            !self.fence_failed.is_empty(),
            "FenceFailed",
            "NoFailedFence",
            if self.fence_failed.is_empty() {
                "no failed fence".into()
            } else {
                format!(
                    "VMs are not restarted until a fence is confirmed (retried with backoff): {}",
                    self.fence_failed.join("; ")
                )
            },
        );
        if policy.spec.admission_control.is_some() {
            let ok = self.capacity.iter().all(|(ok, _)| *ok);
            let msg = self
                .capacity
                .iter()
                .map(|(_, m)| m.clone())
                .collect::<Vec<_>>()
                .join("; ");
            cond(
                st,
                "FailoverCapacity",
                ok,
                "Sufficient",
                "Insufficient",
                msg,
            );
        }
        let ready_msg = if self.missing_pools.is_empty() {
            format!("watching {} host pool(s)", policy.spec.host_pools.len())
        } else {
            format!("HostPool(s) not found: {}", self.missing_pools.join(", "))
        };
        cond(
            st,
            "Ready",
            self.missing_pools.is_empty(),
            "Watching",
            "HostPoolNotFound",
            ready_msg,
        );
    }
}

/// `Ready` False: the policy's `vmSelector` does not parse.
pub(super) fn invalid_selector(
    policy: &HAPolicy,
    st: &mut HAPolicyStatus,
    e: &impl std::fmt::Display,
    now: Timestamp,
) {
    set_condition(
        &mut st.conditions,
        "Ready",
        ConditionStatus::False,
        "InvalidSelector",
        format!("spec.vmSelector is not a valid label selector: {e}"),
        policy.metadata.generation,
        now,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::context::{HaVerdicts, PoolHost};

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("time")
    }

    /// A VM on `h1` handed over in incident `i-1` at `released` (seconds after the start).
    fn handed(name: &str, released: Option<i64>) -> Arc<VirtualMachine> {
        let failover = Failover {
            incident: "i-1".into(),
            host: "h1".into(),
            evidence: "Fenced".into(),
            detected: ts(at(0)),
            proven: ts(at(2)),
            released: released.map(|s| ts(at(s))),
        };
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
                "metadata": {"name": name, "namespace": "team", "uid": format!("uid-{name}"),
                             "annotations": {FAILOVER_ANNOTATION:
                                 serde_json::to_string(&failover).expect("failover")}},
                "spec": {"hostPool": "lab", "cpu": {"cores": 1}, "memory": "1Gi"},
                "status": {"host": "h1"},
            }))
            .expect("valid VM"),
        )
    }

    #[test]
    fn each_vm_of_an_incident_says_when_it_was_handed_over() {
        let host = PoolHost::new("team", "lab", "h1");
        let key = HaKey::new("ha", host.clone());
        let ha = HaVerdicts::default();
        let vms = [
            handed("first", Some(2)),
            handed("second", Some(9)),
            handed("old", None),
            handed("not-released", Some(3)),
        ];
        for name in ["first", "second", "old"] {
            ha.release(&format!("uid-{name}"), host.clone(), "i-1");
        }
        let open = Open {
            id: "i-1".into(),
            detected: at(0),
            proven: Some((at(2), Evidence::Fenced)),
            host_back: None,
            waiting: Default::default(),
        };
        let mut list = Vec::new();
        upsert_incident(&mut list, &key, &open, &vms, &ha);
        let i = &list[0];
        assert_eq!(i.proven_off, Some(ts(at(2))));
        assert_eq!(i.evidence.as_deref(), Some("Fenced"));
        let released: Vec<(&str, Option<Time>)> = i
            .vms
            .iter()
            .map(|v| (v.name.as_str(), v.released.clone()))
            .collect();
        assert_eq!(
            released,
            [
                ("first", Some(ts(at(2)))),
                ("old", Some(ts(at(2)))),
                ("second", Some(ts(at(9)))),
            ],
            "the release's own time; a VM only annotated (not released) is not listed"
        );
    }
}
