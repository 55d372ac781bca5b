//! The `ferry.dev/v1alpha1` API: custom resource types only, no behaviour beyond small accessors.

// kube-derive's repeated `printcolumn(type_ = ...)` arguments trip this lint.
#![allow(clippy::duplicated_attributes)]

pub mod balancing;
pub mod condition;
pub mod ha_policy;
pub mod host_pool;
pub mod migration;
pub mod power;
pub mod roles;
pub mod schema;
pub mod virtual_machine;
pub mod virtual_machine_class;

pub use condition::{ConditionStatus, set_condition};
pub use ha_policy::{HAPolicy, HAPolicySpec, HAPolicyStatus};
pub use host_pool::{HostPool, HostPoolSpec, HostPoolStatus, HostState, HostStatus};
pub use migration::{
    MigrationPhase, VirtualMachineMigration, VirtualMachineMigrationSpec,
    VirtualMachineMigrationStatus,
};
pub use virtual_machine::{
    DiskBus, DiskClone, DiskSource, NetworkSource, NicModel, RunStrategy, VirtualMachine,
    VirtualMachineSpec, VirtualMachineStatus, VmPhase,
};
pub use virtual_machine_class::{VirtualMachineClass, VirtualMachineClassSpec};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

/// API group of every ferry resource.
pub const GROUP: &str = "ferry.dev";

/// Finalizer ferry puts on the resources whose removal needs work on the hosts.
pub const FINALIZER: &str = "ferry.dev/cleanup";

/// All CRDs, in a stable order.
///
/// Schema `default`s are removed: the API server would write them into stored objects, which
/// GitOps tools then see as drift. ferry applies its defaults in the controller instead.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        HostPool::crd(),
        VirtualMachine::crd(),
        VirtualMachineMigration::crd(),
        HAPolicy::crd(),
        VirtualMachineClass::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                strip_defaults(schema);
            }
        }
    }
    crds
}

fn strip_defaults(schema: &mut JSONSchemaProps) {
    schema.default = None;
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.items.iter_mut().filter_map(|i| match i {
            JSONSchemaPropsOrArray::Schema(s) => Some(s.as_mut()),
            JSONSchemaPropsOrArray::Schemas(_) => None,
        }))
        .chain(
            schema
                .additional_properties
                .iter_mut()
                .filter_map(|a| match a {
                    JSONSchemaPropsOrBool::Schema(s) => Some(s.as_mut()),
                    JSONSchemaPropsOrBool::Bool(_) => None,
                }),
        );
    for child in children {
        strip_defaults(child);
    }
    for list in [&mut schema.any_of, &mut schema.all_of, &mut schema.one_of]
        .into_iter()
        .flatten()
    {
        list.iter_mut().for_each(strip_defaults);
    }
}

/// All CRDs as one multi-document YAML stream (what `ferry crds` prints and `crds/` holds).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
