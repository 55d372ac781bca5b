//! `HAPolicy`: what happens to VMs when their host fails.
//!
//! The HA controller (`controller::ha`) acts on it: it judges every host of the covered pools
//! (`plan::host_health`), fences failed hosts through their BMC, restarts their VMs elsewhere and
//! records each incident's timeline here.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::schema;

/// What happens to VirtualMachines when their host fails.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "HAPolicy",
    namespaced,
    status = "HAPolicyStatus",
    shortname = "hap",
    category = "ferry",
    doc = "What happens to VirtualMachines when their host fails.",
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.notReadyAction"),
    printcolumn(
        name = "Protected",
        type_ = "integer",
        json_path = ".status.protectedVms"
    ),
    printcolumn(
        name = "Capacity",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"FailoverCapacity\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct HAPolicySpec {
    /// HostPools (same namespace) the policy covers.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub host_pools: Vec<String>,
    /// VMs the policy covers, by label; unset covers every VM of those pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_selector: Option<LabelSelector>,
    /// Seconds a Node may be NotReady before the policy acts. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub not_ready_grace_seconds: Option<i32>,
    /// Seconds a host's libvirt may be unreachable before the host is suspected. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub libvirt_unreachable_grace_seconds: Option<i32>,
    /// What to do with the VMs of a NotReady host whose libvirt still answers:
    /// `LiveMigrate` (default), `LiveMigrateThenRestart`, `Restart` or `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready_action: Option<NotReadyAction>,
    /// Most VMs restarted at once after a host failure. Default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrent_restarts: Option<i32>,
    /// Seconds the VMs of a lower priority wait for the higher-priority VMs restarted before
    /// them to run; past it they restart anyway (a higher-priority VM that fits nowhere holds
    /// nothing back). 0: every priority restarts at once, in priority order. Default 120.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub restart_wave_timeout_seconds: Option<i32>,
    /// With `LiveMigrateThenRestart`: seconds the evacuation may take before the host is fenced
    /// and the VMs still on it are restarted elsewhere. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub evacuation_deadline_seconds: Option<i32>,
    /// Restart priority classes. A VM names its class with the label `ferry.dev/ha-priority`;
    /// higher values restart first, a VM without a known class has priority 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::named_list::<PriorityClass, 32>")]
    pub priority_classes: Vec<PriorityClass>,
    /// Fence retries: the first retry after this many seconds, doubling up to
    /// `fenceRetryMaxSeconds`. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600))]
    pub fence_retry_seconds: Option<i32>,
    /// Longest delay between fence retries. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub fence_retry_max_seconds: Option<i32>,
    /// Storm guard: when more than this share (percent) of a pool's hosts look failed at once
    /// (libvirt silent or Node NotReady past its grace, or an incident under way), nothing is
    /// fenced, no VM is stopped or restarted (failover and VM monitoring alike, unless a human
    /// confirmed the host off), and the condition `StormGuard` says so: a controller cut off
    /// from the hosts must not act on them. Default 50; at most 99, so the guard cannot be
    /// switched off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 99").message("maxFailedHostsPercent is 1 to 99: the storm guard cannot be switched off"))]
    pub max_failed_hosts_percent: Option<i32>,
    /// Admission control: keep enough room to restart the covered VMs after host failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission_control: Option<AdmissionControl>,
    /// VM monitoring: a covered VM whose domain crashed or stopped without ferry asking is
    /// started again at most `maxRestarts` times per `windowSeconds` (default 3 per hour); after
    /// that it stays stopped with `Ready=False`, reason `RestartLimitReached`, until the window
    /// frees a restart or someone restarts it (`ferry.dev/restart`). VMs no HAPolicy covers are
    /// started again without limit, as their run strategy says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_monitoring: Option<VmMonitoring>,
}

/// Limits on restarting crashed VMs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VmMonitoring {
    /// Most restarts of one VM after a crash (or a stop ferry did not ask for) within the
    /// window. Default 3; 0 leaves a crashed VM stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_restarts: Option<i32>,
    /// The window, in seconds. Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 604800))]
    pub window_seconds: Option<i32>,
}

/// A restart priority class.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PriorityClass {
    /// Name used as the value of a VM's `ferry.dev/ha-priority` label.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Higher restarts first, -1000 to 1000.
    #[schemars(range(min = -1000, max = 1000))]
    pub value: i32,
}

/// Failover capacity to keep, as a number of host failures or a share of the pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.hostFailuresToTolerate) != has(self.reservedPercent)").message("set exactly one of hostFailuresToTolerate or reservedPercent"))]
pub struct AdmissionControl {
    /// The covered VMs must fit on the pool's hosts after this many of the largest fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub host_failures_to_tolerate: Option<i32>,
    /// The covered VMs must fit in the pool's allocatable CPUs and memory minus this share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub reserved_percent: Option<i32>,
    /// `Warn` (default): report VMs beyond the capacity in the `FailoverCapacity` condition.
    /// `Enforce`: VMs beyond the capacity are not placed; they stay Pending with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AdmissionMode>,
}

/// What admission control does with VMs beyond the failover capacity.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum AdmissionMode {
    /// Report them.
    #[default]
    Warn,
    /// Keep them Pending.
    Enforce,
}

/// Label on a VirtualMachine naming its restart priority class.
pub const PRIORITY_LABEL: &str = "ferry.dev/ha-priority";
/// Annotation on a Node by which a human confirms the host is off; its value must be the
/// incident ID named in the HAPolicy's `AwaitingConfirmation` condition.
pub const CONFIRM_ANNOTATION: &str = "ferry.dev/host-off-confirmed";
/// Annotation the HA controller puts on a VirtualMachine whose host is proven off: a JSON
/// [`Failover`] record. The VirtualMachine controller then places the VM anew (once per incident).
pub const FAILOVER_ANNOTATION: &str = "ferry.dev/failover";

/// What the HA controller tells the VirtualMachine controller about a failover.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    /// Incident ID.
    pub incident: String,
    /// The host that failed; the VM is moved only while it is still placed there.
    pub host: String,
    /// How the host was proven off: `Fenced`, `ShutOff` or `Confirmed`.
    pub evidence: String,
    /// When the failure was detected.
    pub detected: Time,
    /// When the host was proven off.
    pub proven: Time,
    /// When the HA controller released the VM (a new value with each release, so that the
    /// VirtualMachine controller hears of a release the annotation already described, as after
    /// a controller restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<Time>,
}

/// Action for a NotReady host whose libvirt still answers.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum NotReadyAction {
    /// Live-migrate every VM away.
    #[default]
    LiveMigrate,
    /// Live-migrate what can move, then fence the host and restart the rest elsewhere.
    LiveMigrateThenRestart,
    /// Fence the host and restart its VMs elsewhere.
    Restart,
    /// Do nothing.
    None,
}

/// Observed state of an HAPolicy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HAPolicyStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: FailoverCapacity (with the numbers), StormGuard, AwaitingConfirmation
    /// (names the Node annotation a human must set), FenceFailed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
    /// VMs the policy covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_vms: Option<i32>,
    /// Verdict per host of each covered pool (a Node in two of the pools has an entry for each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::status_pool_host_list::<HostHealth>")]
    pub hosts: Vec<HostHealth>,
    /// Incidents, newest last (at most 20 kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::status_named_list::<Incident>")]
    pub incidents: Vec<Incident>,
}

/// A host's verdict.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostHealth {
    /// Node name.
    pub name: String,
    /// HostPool it belongs to.
    pub pool: String,
    /// The verdict.
    pub verdict: HostVerdict,
    /// Since when.
    pub since: Time,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The open incident on this host, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// Fence attempts in this incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_attempts: Option<i32>,
    /// Why the last fence attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fence_error: Option<String>,
    /// When the last fence attempt ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fence_attempt: Option<Time>,
    /// When the BMC confirmed the host Off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_at: Option<Time>,
}

/// Verdicts (see `plan::host_health`).
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, Hash,
)]
pub enum HostVerdict {
    /// Node Ready, libvirt answers.
    #[default]
    Healthy,
    /// Node Ready but libvirt does not answer: a partition, no failover.
    Degraded,
    /// Node NotReady, libvirt answers: VMs are live-migrated away.
    Evacuating,
    /// Something is off; waiting for the grace periods.
    Suspect,
    /// The host failed; its VMs are not restarted until it is proven off.
    Failed,
    /// Being powered off through its BMC.
    Fencing,
    /// Proven off; its VMs restart elsewhere.
    Fenced,
    /// Back after an incident; stale domains are being removed.
    Recovering,
    /// Back after an incident, clean.
    Recovered,
    /// Put in Standby, or being powered on, by the pool's power management: off on purpose,
    /// not a failure (no fencing, no incident).
    Standby,
}

impl HostVerdict {
    /// The host's VMs are being restarted elsewhere (its domains stopped, or the host fenced):
    /// nothing may be started there until it is back.
    pub fn failing_over(self) -> bool {
        matches!(self, Self::Failed | Self::Fencing | Self::Fenced)
    }

    /// The host is down in an open incident: failing over, or back with stale domains left.
    pub fn in_incident(self) -> bool {
        self.failing_over() || self == Self::Recovering
    }
}

impl std::fmt::Display for HostVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One host failure and what was done about it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    /// Incident ID (`<pool>-<host>-<unix seconds>`).
    pub name: String,
    /// The host.
    pub host: String,
    /// The HostPool whose view of the host failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// When the failure was detected.
    pub detected: Time,
    /// When the host was proven off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proven_off: Option<Time>,
    /// How: `Fenced`, `ShutOff` or `Confirmed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// When the host answered again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_back: Option<Time>,
    /// Each VM moved, with where and when it was restarted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::status_named_list::<IncidentVm>")]
    pub vms: Vec<IncidentVm>,
}

/// A VM of an incident.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IncidentVm {
    /// VM name.
    pub name: String,
    /// When the failover was handed to the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<Time>,
    /// Its new host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// When its domain ran there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Time>,
    /// Why it is not restarted yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

impl HAPolicy {
    /// Most concurrent restarts (default 8).
    pub fn max_concurrent_restarts(&self) -> usize {
        self.spec.max_concurrent_restarts.unwrap_or(8).max(1) as usize
    }

    /// How long a lower priority waits for the higher ones to run (default 120 s; `None`: it
    /// does not wait).
    pub fn restart_wave_timeout(&self) -> Option<std::time::Duration> {
        match self.spec.restart_wave_timeout_seconds.unwrap_or(120) {
            s if s <= 0 => None,
            s => Some(std::time::Duration::from_secs(s as u64)),
        }
    }

    /// Storm guard threshold in percent (default 50, at most 99: an object stored before the
    /// limit with 100 does not switch the guard off).
    pub fn max_failed_hosts_percent(&self) -> u32 {
        self.spec
            .max_failed_hosts_percent
            .unwrap_or(50)
            .clamp(1, 99) as u32
    }

    /// Whether the policy covers a VM of pool `pool` with these labels (an invalid
    /// `vmSelector` covers nothing).
    pub fn covers(&self, pool: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.spec.host_pools.iter().any(|p| p == pool)
            && match self.vm_selector() {
                Ok(None) => true,
                Ok(Some(s)) => kube::core::SelectorExt::matches(&s, labels),
                Err(_) => false,
            }
    }

    /// `spec.vmSelector`, parsed (`Ok(None)` when unset: every VM of the pools).
    pub fn vm_selector(
        &self,
    ) -> Result<Option<kube::core::Selector>, kube::core::ParseExpressionError> {
        self.spec
            .vm_selector
            .clone()
            .map(kube::core::Selector::try_from)
            .transpose()
    }

    /// The restart priority of a VM with these labels.
    pub fn priority(&self, labels: &std::collections::BTreeMap<String, String>) -> i32 {
        labels
            .get(PRIORITY_LABEL)
            .and_then(|c| self.spec.priority_classes.iter().find(|p| &p.name == c))
            .map(|p| p.value)
            .unwrap_or(0)
    }
}
