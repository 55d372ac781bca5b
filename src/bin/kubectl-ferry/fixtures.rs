//! Objects for the plugin's unit tests.

use ferry::api::{HostPool, VirtualMachine};
use serde_json::{Value, json};

pub fn vm(strategy: Option<&str>, annotations: Value, status: Value) -> VirtualMachine {
    let mut spec = json!({"hostPool": "rack1", "cpu": {"cores": 1}, "memory": "1Gi"});
    if let Some(s) = strategy {
        spec["runStrategy"] = json!(s);
    }
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "web-1", "namespace": "vms", "generation": 2,
                     "annotations": annotations},
        "spec": spec,
        "status": status,
    }))
    .expect("valid VM")
}

pub fn running() -> Value {
    json!({"phase": "Running", "host": "hv-1", "observedGeneration": 2,
           "interfaces": [{"name": "eth0", "mac": "52:54:00:00:00:01", "ipAddress": "10.0.0.5"}],
           "conditions": [{"type": "Ready", "status": "True", "reason": "Running",
                           "message": "running on host hv-1", "observedGeneration": 2,
                           "lastTransitionTime": "2026-01-10T08:00:00Z"}]})
}

pub fn stopped() -> Value {
    json!({"phase": "Stopped", "host": "hv-1", "observedGeneration": 2})
}

pub fn pool(status: Value) -> HostPool {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool",
        "metadata": {"name": "rack1", "namespace": "vms"},
        "spec": {"nodeSelector": {"matchLabels": {"ferry.dev/hypervisor": "true"}},
                 "libvirt": {"uriTemplate": "qemu+ssh://root@{address}/system"},
                 "storage": {"pool": "ferry"},
                 "console": {"logDirectory": "/srv/console/"}},
        "status": status,
    }))
    .expect("valid HostPool")
}
