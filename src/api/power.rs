//! A HostPool's power management: the `power` section of its spec, the power state of its hosts
//! and what its status says about the last decision.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Putting idle hosts in Standby (evacuated by live migration, then powered off through their
/// BMC) and powering them on again when they are needed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("(has(self.standbyBelowPercent) ? self.standbyBelowPercent : 50) < (has(self.wakeAbovePercent) ? self.wakeAbovePercent : 80)").message("standbyBelowPercent (default 50) must be below wakeAbovePercent (default 80): a host put in Standby would be powered on again at once"))]
pub struct PowerSpec {
    /// Whether ferry puts hosts in Standby. Default true. With `false` no host goes to Standby,
    /// a host being emptied for Standby stays on, and hosts in Standby are powered on again,
    /// one at a time (as when the section is removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Hosts kept on whatever the load, 1 to 1000. Default 2. The failover reserve of an
    /// HAPolicy's admission control covering the pool is kept on in addition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_hosts_on: Option<i32>,
    /// A host goes to Standby only when, without it, the hosts left on would use less than
    /// this share (percent) of their CPUs and of their memory, as measured, 5 to 95. Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 5, max = 95))]
    pub standby_below_percent: Option<i32>,
    /// A host in Standby is powered on when the hosts on use more than this share (percent) of
    /// their CPUs or of their memory, 10 to 100, above `standbyBelowPercent`. Default 80. VMs
    /// waiting for capacity, and fewer hosts on than the minimum plus the failover reserve,
    /// power a host on too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 100))]
    pub wake_above_percent: Option<i32>,
    /// Seconds the load must have stayed low enough before a host goes to Standby, 1 to 86400.
    /// Default 900.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub standby_after_seconds: Option<i32>,
    /// Seconds a host powered on has to show its Node Ready and its libvirt answering, 30 to
    /// 3600. Default 600. A host that does not is put back in Standby (a Warning Event says so)
    /// and another one is powered on if one is needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30, max = 3600))]
    pub wake_timeout_seconds: Option<i32>,
    /// Time windows (UTC) in which more hosts are kept on, e.g. business hours: ferry starts
    /// powering hosts on `wakeTimeoutSeconds` before a window begins, so that they are up when
    /// it does, and puts none in Standby while fewer would be left on. At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub schedule: Vec<PowerWindow>,
}

/// A time window, in UTC, in which at least `minHostsOn` hosts of the pool are kept on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.from != self.to").message("from and to are the same time: give a window of at least a minute (to before from means it ends the next day)"))]
pub struct PowerWindow {
    /// The days of the week the window begins on; every day when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7))]
    pub days: Vec<Weekday>,
    /// When the window begins, `HH:MM` in UTC.
    #[schemars(length(max = 5), regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub from: String,
    /// When it ends, `HH:MM` in UTC; earlier than `from`: on the next day.
    #[schemars(length(max = 5), regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub to: String,
    /// Hosts kept on in the window (the failover reserve comes on top), 1 to 1000.
    #[schemars(range(min = 1, max = 1000))]
    pub min_hosts_on: i32,
}

/// A day of the week.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// Default of `minHostsOn`.
pub const DEFAULT_MIN_HOSTS_ON: i32 = 2;
/// Default of `standbyBelowPercent`.
pub const DEFAULT_STANDBY_BELOW_PERCENT: i32 = 50;
/// Default of `wakeAbovePercent`.
pub const DEFAULT_WAKE_ABOVE_PERCENT: i32 = 80;
/// Default of `standbyAfterSeconds`.
pub const DEFAULT_STANDBY_AFTER_SECONDS: i32 = 900;
/// Default of `wakeTimeoutSeconds`.
pub const DEFAULT_WAKE_TIMEOUT_SECONDS: i32 = 600;

impl PowerSpec {
    /// Whether hosts may go to Standby (default true).
    pub fn enabled(&self) -> bool {
        self.enabled != Some(false)
    }

    /// How long a host powered on has to come up.
    pub fn wake_timeout(&self) -> Duration {
        secs(self.wake_timeout_seconds, DEFAULT_WAKE_TIMEOUT_SECONDS)
    }
}

/// `v` seconds, or `default`.
pub fn secs(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(v.unwrap_or(default)).unwrap_or(0))
}

/// A host's power state as power management keeps it.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default,
)]
pub enum HostPower {
    /// On and taking VMs (also what an absent `power` means).
    #[default]
    On,
    /// Chosen for Standby: its VMs are live-migrated away; it takes no new ones.
    Draining,
    /// Empty and powered off through its BMC, or being powered off. Not a failure: no fencing,
    /// no HA incident.
    Standby,
    /// Powered on through its BMC; waiting for its Node to be Ready and its libvirt to answer.
    Waking,
}

impl HostPower {
    /// Whether the host may take new VMs.
    pub fn takes_vms(self) -> bool {
        self == HostPower::On
    }

    /// Whether the host is off, or being powered off or on, on purpose: its silence is no
    /// failure.
    pub fn kept_off(self) -> bool {
        matches!(self, HostPower::Standby | HostPower::Waking)
    }
}

impl std::fmt::Display for HostPower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What power management decided last.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PowerStatus {
    /// Hosts in Standby (powered off, or being powered off).
    #[serde(default)]
    pub standby_hosts: i32,
    /// Since when the load has been low enough for a host to go to Standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_since: Option<Time>,
    /// The last decision, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
