//! `VirtualMachineMigration`: one live migration of a VM, with its own status.
//!
//! Created by users (`kubectl ferry migrate`, or a manifest) and by evacuations (maintenance, HA).
//! Deleting one that has not finished cancels it: the VM stays where it was.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::schema;

/// A live migration of one VirtualMachine to another host of its pool.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "VirtualMachineMigration",
    namespaced,
    status = "VirtualMachineMigrationStatus",
    shortname = "fvmim",
    category = "ferry",
    doc = "A live migration of one VirtualMachine to another host of its pool.",
    printcolumn(name = "VM", type_ = "string", json_path = ".spec.vmName"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Source", type_ = "string", json_path = ".status.source"),
    printcolumn(name = "Target", type_ = "string", json_path = ".status.target"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("a migration's spec cannot be changed; delete it and create another"))]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineMigrationSpec {
    /// Name of the VirtualMachine (same namespace) to move.
    #[schemars(length(min = 1, max = 253))]
    pub vm_name: String,
    /// Node name of the destination host; when unset, placement chooses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_host: Option<String>,
    /// Why the VM is moved (free text shown in Events, e.g. `maintenance`, `manual`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub reason: Option<String>,
}

/// Observed state of a migration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineMigrationStatus {
    /// Pending, Scheduled, Running, Succeeded, Failed or Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MigrationPhase>,
    /// Host the VM left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Host the VM moves to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// When the transfer started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the migration ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Time>,
    /// Bytes transferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_transferred_bytes: Option<i64>,
    /// Bytes still to transfer while it runs (libvirt's estimate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_remaining_bytes: Option<i64>,
    /// How disks moved: `Shared` (only memory moved) or `Copied` (disks copied to the target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// The migration switched to post-copy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub post_copy: bool,
    /// Guest downtime at switch-over, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<i64>,
    /// Why it waits, failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}

/// Migration phases.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationPhase {
    /// Waiting for a slot or a target.
    Pending,
    /// Target chosen, transfer not started.
    Scheduled,
    /// Memory (and disks) being copied.
    Running,
    /// The VM runs on the target.
    Succeeded,
    /// The VM stayed on the source; `message` says why.
    Failed,
    /// Cancelled by deleting the migration; the VM stayed on the source.
    Cancelled,
}

impl MigrationPhase {
    /// Whether the phase is final.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl VirtualMachineMigration {
    /// The phase its status shows.
    pub fn phase(&self) -> Option<MigrationPhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    /// Whether it has ended.
    pub fn is_terminal(&self) -> bool {
        self.phase().is_some_and(MigrationPhase::is_terminal)
    }

    /// Whether libvirt may be moving the VM for it (`Scheduled` or `Running`): it holds the VM.
    pub fn holds_vm(&self) -> bool {
        matches!(
            self.phase(),
            Some(MigrationPhase::Scheduled | MigrationPhase::Running)
        )
    }
}
