//! `VirtualMachineClass`: a named size and shape (vCPUs, memory, CPU model) that VirtualMachines
//! reference instead of repeating the numbers.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::schema;
use super::virtual_machine::CpuSpec;

/// A named VM size (cluster-scoped). A VM names it in `spec.className`; its status shows the
/// resolved values. Changing a class never restarts a running VM: it shows `RestartRequired`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "VirtualMachineClass",
    shortname = "fvmc",
    category = "ferry",
    doc = "A named VM size (vCPUs, memory, CPU model) that VirtualMachines reference by spec.className.",
    printcolumn(name = "CPUs", type_ = "integer", json_path = ".spec.cpu.cores"),
    printcolumn(name = "Memory", type_ = "string", json_path = ".spec.memory"),
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.cpu.model"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineClassSpec {
    /// Virtual CPUs and CPU model of every VM of this class.
    pub cpu: CpuSpec,
    /// Guest memory as a quantity, from 16Mi to 4Ti.
    #[schemars(schema_with = "schema::vm_memory")]
    pub memory: String,
    /// What the class is for, shown to people choosing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}
