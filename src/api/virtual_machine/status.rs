//! What a `VirtualMachine` reports: its phase, host, conditions, recovery, interfaces and disks.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::api::schema;

/// Observed state of a VirtualMachine.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    /// Where the VM is in its life: Pending, Provisioning, Starting, Running, Stopping, Stopped,
    /// Failed, Unknown (its host does not answer) or Terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<VmPhase>,
    /// Node name of the host the VM is placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// UUID of the libvirt domain (the VM's own UID, kept for its whole life; an adopted
    /// domain's own UUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_uuid: Option<String>,
    /// Name of the domain ferry took over for this VM (`spec.adopt`), which it keeps; unset for
    /// a domain ferry defined (named `<namespace>_<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted_domain: Option<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: Ready, Scheduled, RestartRequired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
    /// Network interfaces with the MAC address ferry chose (kept for the VM's life) and, when known,
    /// the guest's IP address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::status_named_list::<InterfaceStatus>")]
    pub interfaces: Vec<InterfaceStatus>,
    /// Volumes ferry created for this VM (removed when it is deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::status_named_list::<DiskStatus>")]
    pub disks: Vec<DiskStatus>,
    /// The guest shut itself down since it was last started; `RerunOnFailure` leaves it off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped_by_guest: bool,
    /// VM monitoring holds the VM stopped (its HAPolicy's restart limit, or the storm guard):
    /// kept while another reason, such as an unreachable host, shows in `Ready`, so that the
    /// hold outlasts it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart_held: bool,
    /// The guest OS as its QEMU guest agent reports it (e.g. `Debian GNU/Linux 12 (bookworm)`);
    /// unset without an agent.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "guestOS")]
    pub guest_os: Option<String>,
    /// vCPUs, CPU model and memory the VM is defined with, from its spec or its class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesStatus>,
    /// The last `ferry.dev/restart` annotation value that was acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart_request: Option<String>,
    /// The VM's current or most recent live migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<VmMigrationStatus>,
    /// The last time the VM was restarted elsewhere because its host failed, with the timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_recovery: Option<Recovery>,
    /// When the VM was started again after its domain crashed or stopped without ferry asking,
    /// within its HAPolicy's VM-monitoring window (oldest first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub unplanned_restarts: Vec<Time>,
}

/// A VM's current or most recent live migration, as its VirtualMachineMigration reports it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VmMigrationStatus {
    /// Name of the VirtualMachineMigration.
    pub name: String,
    /// Its phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<crate::api::migration::MigrationPhase>,
    /// Host the VM left (or leaves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Host the VM moved (or moves) to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// When the transfer started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Time>,
    /// Guest downtime at switch-over, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<i64>,
}

/// A restart elsewhere after a host failure.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    /// Incident ID (see the HAPolicy's status).
    pub incident: String,
    /// The failed host.
    pub from_host: String,
    /// How the failed host was proven off: `Fenced`, `ShutOff` or `Confirmed`.
    pub evidence: String,
    /// When the failure was detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// When the host was proven off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proven_off: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// When the VM was placed anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Its new host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_host: Option<String>,
    /// When its domain ran on the new host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// The resolved size of a VM.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesStatus {
    /// The VirtualMachineClass the values come from; unset when the spec gives them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Virtual CPUs.
    pub cpus: i32,
    /// CPU model (`host-model` when not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    /// Guest memory quantity.
    pub memory: String,
}

/// Life-cycle phase of a VM.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmPhase {
    /// Not placed yet (no host, host pool missing, or nothing fits).
    Pending,
    /// Disks and domain are being created on the host.
    Provisioning,
    /// The domain is being started.
    Starting,
    /// The domain runs.
    Running,
    /// The guest is being shut down.
    Stopping,
    /// The domain is defined but not running, as the run strategy asks.
    Stopped,
    /// The VM cannot run; the Ready condition says why.
    Failed,
    /// The host does not answer, so the VM's state is not known.
    Unknown,
    /// The VM is being live-migrated to another host; it keeps running.
    Migrating,
    /// The VM is being deleted.
    Terminating,
}

impl std::fmt::Display for VmPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A network interface as ferry configured it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStatus {
    /// Interface name from the spec.
    pub name: String,
    /// MAC address in use.
    pub mac: String,
    /// Guest IP address (the first IPv4 one when there is one), as the QEMU guest agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// Every address the guest agent reports on this interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    /// Interface name inside the guest, as the guest agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_name: Option<String>,
}

/// A volume ferry created for the VM.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DiskStatus {
    /// Disk name from the spec.
    pub name: String,
    /// libvirt storage pool holding the volume.
    pub pool: String,
    /// Volume name in that pool.
    pub volume: String,
}
