//! `HAPolicy`: what happens to VMs when their host fails.
//!
//! The type is part of the API from the start so that later controllers extend it; in this
//! release no controller acts on it yet.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
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
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}
