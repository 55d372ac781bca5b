//! The state of what ferry manages, as gauges computed at each scrape from the controllers'
//! caches: VMs per phase and hosts per state (totals), and one series per VM, per host, per HA
//! verdict and per HAPolicy condition (what alerts name). Nothing here is counted in a reconcile,
//! so nothing can drift.

use crate::api::{HAPolicy, HostPool, HostState, VirtualMachine, VmPhase};
use crate::plan::balance::Usage;
use crate::plan::quantity::parse_bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Every VM phase, in the order of the API. A VM without a phase yet counts as `Pending`.
pub const VM_PHASES: [VmPhase; 10] = [
    VmPhase::Pending,
    VmPhase::Provisioning,
    VmPhase::Starting,
    VmPhase::Running,
    VmPhase::Stopping,
    VmPhase::Stopped,
    VmPhase::Failed,
    VmPhase::Unknown,
    VmPhase::Terminating,
    VmPhase::Migrating,
];

/// Every host state, in the order of the API.
pub const HOST_STATES: [HostState; 4] = [
    HostState::Ready,
    HostState::Cordoned,
    HostState::Unreachable,
    HostState::Misconfigured,
];

fn phase_name(p: VmPhase) -> &'static str {
    // Exhaustive on purpose: a new phase must get a name here and a place in VM_PHASES.
    match p {
        VmPhase::Pending => "Pending",
        VmPhase::Provisioning => "Provisioning",
        VmPhase::Starting => "Starting",
        VmPhase::Running => "Running",
        VmPhase::Stopping => "Stopping",
        VmPhase::Stopped => "Stopped",
        VmPhase::Failed => "Failed",
        VmPhase::Unknown => "Unknown",
        VmPhase::Terminating => "Terminating",
        VmPhase::Migrating => "Migrating",
    }
}

fn state_name(s: HostState) -> &'static str {
    match s {
        HostState::Ready => "Ready",
        HostState::Cordoned => "Cordoned",
        HostState::Unreachable => "Unreachable",
        HostState::Misconfigured => "Misconfigured",
    }
}

// The object's namespace is `object_namespace`: `namespace` is the label Prometheus gives every
// series of a target (the controller's own namespace), which a label of ours would collide with.

/// One VM: where it is and whether it is Ready.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VmRow {
    pub object_namespace: String,
    pub name: String,
    pub phase: &'static str,
    /// Empty while not placed.
    pub host: String,
    /// `True`, `False`, `Unknown`, or empty before the first verdict.
    pub ready: String,
    /// The `Ready` condition's reason.
    pub reason: String,
}

/// One host of one HostPool, in its current state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostRow {
    pub object_namespace: String,
    pub pool: String,
    pub host: String,
    pub state: &'static str,
}

/// One VirtualMachine.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VmLabels {
    pub object_namespace: String,
    pub name: String,
    pub host: String,
}

/// One host of one HostPool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub object_namespace: String,
    pub pool: String,
    pub host: String,
}

/// One host as an HAPolicy judges it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictRow {
    pub object_namespace: String,
    pub policy: String,
    pub pool: String,
    pub host: String,
    pub verdict: String,
}

/// Labels of a host's fence attempts in its open incident.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FenceLabels {
    pub object_namespace: String,
    pub policy: String,
    pub pool: String,
    pub host: String,
}

/// One condition of one HAPolicy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyConditionLabels {
    pub object_namespace: String,
    pub policy: String,
    pub condition: String,
}

/// What the state gauges show at one scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// VMs per phase, every phase present.
    pub vms: Vec<(&'static str, i64)>,
    /// Hosts per state over all pools, every state present.
    pub hosts: Vec<(&'static str, i64)>,
    pub vm_rows: Vec<VmRow>,
    pub host_rows: Vec<HostRow>,
    /// Measured CPU use per host, in millicores (hosts not measured are left out).
    pub host_cpu_used: Vec<(HostLabels, i64)>,
    /// Measured resident memory per host, in bytes.
    pub host_memory_used: Vec<(HostLabels, i64)>,
    /// Measured CPU use per running VM, in millicores (VMs not measured are left out).
    pub vm_cpu_used: Vec<(VmLabels, i64)>,
    /// Measured resident memory per running VM, in bytes.
    pub vm_memory_used: Vec<(VmLabels, i64)>,
    pub verdicts: Vec<VerdictRow>,
    /// Fence attempts per host in its open incident (hosts with none are left out).
    pub fence_attempts: Vec<(FenceLabels, i64)>,
    /// 1 for a condition that is True, else 0.
    pub policy_conditions: Vec<(PolicyConditionLabels, i64)>,
}

/// The API's spelling of an enum value.
fn api_name(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Everything the gauges show, from the cached VMs, HostPools and HAPolicies. A VM without a
/// phase counts as `Pending`; a Node selected by two pools counts in both.
pub fn inventory<'a>(
    vms: impl IntoIterator<Item = &'a VirtualMachine>,
    pools: impl IntoIterator<Item = &'a HostPool>,
    policies: impl IntoIterator<Item = &'a HAPolicy>,
) -> Inventory {
    let mut inv = Inventory::default();
    let mut by_phase = [0i64; VM_PHASES.len()];
    for vm in vms {
        let st = vm.status.as_ref();
        let phase = st.and_then(|s| s.phase).unwrap_or(VmPhase::Pending);
        if let Some(i) = VM_PHASES.iter().position(|p| *p == phase) {
            by_phase[i] += 1;
        }
        let ready = st.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        inv.vm_rows.push(VmRow {
            object_namespace: vm.metadata.namespace.clone().unwrap_or_default(),
            name: vm.metadata.name.clone().unwrap_or_default(),
            phase: phase_name(phase),
            host: st.and_then(|s| s.host.clone()).unwrap_or_default(),
            ready: ready.map(|c| c.status.clone()).unwrap_or_default(),
            reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
        });
    }
    let mut by_state = [0i64; HOST_STATES.len()];
    for pool in pools {
        for host in pool.status.iter().flat_map(|s| &s.hosts) {
            if let Some(i) = HOST_STATES.iter().position(|s| *s == host.state) {
                by_state[i] += 1;
            }
            inv.host_rows.push(HostRow {
                object_namespace: pool.metadata.namespace.clone().unwrap_or_default(),
                pool: pool.metadata.name.clone().unwrap_or_default(),
                host: host.name.clone(),
                state: state_name(host.state),
            });
            if let Some(load) = &host.load {
                let labels = HostLabels {
                    object_namespace: pool.metadata.namespace.clone().unwrap_or_default(),
                    pool: pool.metadata.name.clone().unwrap_or_default(),
                    host: host.name.clone(),
                };
                let memory = parse_bytes(&load.memory).unwrap_or(0);
                inv.host_memory_used
                    .push((labels.clone(), i64::try_from(memory).unwrap_or(i64::MAX)));
                inv.host_cpu_used.push((labels, load.cpu_millicores));
            }
        }
    }
    for policy in policies {
        let namespace = policy.metadata.namespace.clone().unwrap_or_default();
        let name = policy.metadata.name.clone().unwrap_or_default();
        let Some(st) = policy.status.as_ref() else {
            continue;
        };
        for h in &st.hosts {
            inv.verdicts.push(VerdictRow {
                object_namespace: namespace.clone(),
                policy: name.clone(),
                pool: h.pool.clone(),
                host: h.name.clone(),
                verdict: api_name(&h.verdict),
            });
            if let Some(n) = h.fence_attempts.filter(|n| *n > 0) {
                let labels = FenceLabels {
                    object_namespace: namespace.clone(),
                    policy: name.clone(),
                    pool: h.pool.clone(),
                    host: h.name.clone(),
                };
                inv.fence_attempts.push((labels, i64::from(n)));
            }
        }
        for c in &st.conditions {
            let labels = PolicyConditionLabels {
                object_namespace: namespace.clone(),
                policy: name.clone(),
                condition: c.type_.clone(),
            };
            inv.policy_conditions
                .push((labels, i64::from(c.status == "True")));
        }
    }
    inv.vms = VM_PHASES
        .iter()
        .zip(by_phase)
        .map(|(p, n)| (phase_name(*p), n))
        .collect();
    inv.hosts = HOST_STATES
        .iter()
        .zip(by_state)
        .map(|(s, n)| (state_name(*s), n))
        .collect();
    inv
}

impl Inventory {
    /// Add the measured use of `vms` from `load` (by VM UID, which is its domain's UUID).
    pub fn with_vm_load<'a>(
        mut self,
        vms: impl IntoIterator<Item = &'a VirtualMachine>,
        load: &HashMap<String, Usage>,
    ) -> Inventory {
        for vm in vms {
            let Some(u) = vm.metadata.uid.as_ref().and_then(|uid| load.get(uid)) else {
                continue;
            };
            let labels = VmLabels {
                object_namespace: vm.metadata.namespace.clone().unwrap_or_default(),
                name: vm.metadata.name.clone().unwrap_or_default(),
                host: vm
                    .status
                    .as_ref()
                    .and_then(|s| s.host.clone())
                    .unwrap_or_default(),
            };
            let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.vm_memory_used.push((labels.clone(), gauge(u.memory)));
            self.vm_cpu_used.push((labels, gauge(u.cpu_millis)));
        }
        self
    }
}

/// Computes the [`Inventory`] at scrape time (reads the controllers' caches).
pub type InventorySource = Box<dyn Fn() -> Inventory + Send + Sync>;

/// Labels of the VM totals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// Labels of the host totals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// Encodes the state gauges from one [`Inventory`] per scrape; nothing without a source.
pub(super) struct InventoryCollector {
    source: Arc<RwLock<Option<InventorySource>>>,
}

impl InventoryCollector {
    pub(super) fn new(source: Arc<RwLock<Option<InventorySource>>>) -> Self {
        InventoryCollector { source }
    }
}

impl std::fmt::Debug for InventoryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InventoryCollector").finish_non_exhaustive()
    }
}

/// One gauge family with its samples.
fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        metric.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

impl Collector for InventoryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let inv = {
            let source = self.source.read().unwrap_or_else(|p| p.into_inner());
            match source.as_ref() {
                Some(source) => source(),
                None => return Ok(()),
            }
        };
        let e = &mut encoder;
        gauges(
            e,
            "virtual_machines",
            "VirtualMachines per phase, from the controller's cache at scrape time",
            inv.vms
                .into_iter()
                .map(|(phase, n)| (PhaseLabels { phase }, n)),
        )?;
        gauges(
            e,
            "hosts",
            "Hypervisor hosts per state, over all HostPools, from the controller's cache at scrape time",
            inv.hosts
                .into_iter()
                .map(|(state, n)| (StateLabels { state }, n)),
        )?;
        gauges(
            e,
            "virtual_machine_status",
            "One series per VirtualMachine (always 1): phase, host, and the Ready condition's status and reason",
            inv.vm_rows.into_iter().map(|r| (r, 1)),
        )?;
        gauges(
            e,
            "host_status",
            "One series per host of each HostPool (always 1): its state",
            inv.host_rows.into_iter().map(|r| (r, 1)),
        )?;
        gauges(
            e,
            "host_cpu_used_millicores",
            "CPU the host's running domains use, measured over about two minutes (1000 is one CPU), as the HostPool status shows it",
            inv.host_cpu_used,
        )?;
        gauges(
            e,
            "host_memory_used_bytes",
            "Resident memory of the host's running domains, as the HostPool status shows it",
            inv.host_memory_used,
        )?;
        gauges(
            e,
            "virtual_machine_cpu_used_millicores",
            "CPU a running VM's domain uses, measured over about two minutes (1000 is one CPU)",
            inv.vm_cpu_used,
        )?;
        gauges(
            e,
            "virtual_machine_memory_used_bytes",
            "Resident memory of a running VM's QEMU process, at its host's last sample",
            inv.vm_memory_used,
        )?;
        gauges(
            e,
            "host_ha_verdict",
            "One series per host an HAPolicy judges (always 1): its verdict",
            inv.verdicts.into_iter().map(|r| (r, 1)),
        )?;
        gauges(
            e,
            "host_fence_attempts",
            "Fence attempts on a host in its open incident, per HAPolicy",
            inv.fence_attempts,
        )?;
        gauges(
            e,
            "hapolicy_condition",
            "Conditions of each HAPolicy: 1 when True, else 0",
            inv.policy_conditions,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn vm(status: serde_json::Value) -> VirtualMachine {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web-1", "namespace": "vms"},
            "spec": {"hostPool": "rack1", "cpu": {"cores": 1}, "memory": "1Gi"},
            "status": status,
        }))
        .expect("valid VM")
    }

    fn pool(hosts: &[&str]) -> HostPool {
        let hosts: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(i, state)| serde_json::json!({"name": format!("hv-{i}"), "state": state}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool",
            "metadata": {"name": "rack1", "namespace": "vms"},
            "spec": {"nodeSelector": {"matchLabels": {"ferry.dev/hypervisor": "true"}},
                     "libvirt": {"uriTemplate": "qemu+tls://{address}/system"},
                     "storage": {"pool": "ferry"}},
            "status": {"hosts": hosts},
        }))
        .expect("valid HostPool")
    }

    #[test]
    fn inventory_counts_every_phase_and_state_zeros_included() {
        let vms = [
            vm(serde_json::json!({"phase": "Running"})),
            vm(serde_json::json!({"phase": "Running"})),
            vm(serde_json::json!({"phase": "Failed"})),
            vm(serde_json::json!({})),
            vm(serde_json::Value::Null),
        ];
        let pools = [
            pool(&["Ready", "Ready", "Unreachable"]),
            pool(&["Cordoned"]),
            pool(&[]),
        ];
        let inv = inventory(vms.iter(), pools.iter(), []);
        assert_eq!(
            inv.vms,
            vec![
                ("Pending", 2),
                ("Provisioning", 0),
                ("Starting", 0),
                ("Running", 2),
                ("Stopping", 0),
                ("Stopped", 0),
                ("Failed", 1),
                ("Unknown", 0),
                ("Terminating", 0),
                ("Migrating", 0),
            ]
        );
        assert_eq!(
            inv.hosts,
            vec![
                ("Ready", 2),
                ("Cordoned", 1),
                ("Unreachable", 1),
                ("Misconfigured", 0),
            ]
        );
        let empty = inventory([], [], []);
        assert!(empty.vms.iter().chain(&empty.hosts).all(|(_, n)| *n == 0));
        assert_eq!((empty.vms.len(), empty.hosts.len()), (10, 4));
    }

    /// Every value the API's schema allows, as strings.
    fn schema_values(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(c)) = m.get("const") {
                    out.insert(c.clone());
                }
                if let Some(serde_json::Value::Array(e)) = m.get("enum") {
                    out.extend(e.iter().filter_map(|x| x.as_str().map(String::from)));
                }
                m.values().for_each(|x| schema_values(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| schema_values(x, out)),
            _ => {}
        }
    }

    #[test]
    fn label_values_cover_the_api_and_match_its_spelling() {
        let mut phases = std::collections::BTreeSet::new();
        schema_values(schemars::schema_for!(VmPhase).as_value(), &mut phases);
        let ours: std::collections::BTreeSet<String> = VM_PHASES
            .iter()
            .map(|p| phase_name(*p).to_string())
            .collect();
        assert_eq!(ours, phases);
        for p in VM_PHASES {
            assert_eq!(serde_json::json!(phase_name(p)), serde_json::json!(p));
        }
        let mut states = std::collections::BTreeSet::new();
        schema_values(schemars::schema_for!(HostState).as_value(), &mut states);
        let ours: std::collections::BTreeSet<String> = HOST_STATES
            .iter()
            .map(|s| state_name(*s).to_string())
            .collect();
        assert_eq!(ours, states);
        for s in HOST_STATES {
            assert_eq!(serde_json::json!(state_name(s)), serde_json::json!(s));
        }
    }

    #[test]
    fn measured_load_is_one_series_per_measured_host() {
        let mut p = pool(&["Ready", "Ready"]);
        let load: crate::api::host_pool::MeasuredLoad =
            serde_json::from_value(serde_json::json!({"cpuMillicores": 1500, "memory": "1536Mi", "measuredAt": "2026-12-07T01:00:00Z"}))
                .expect("valid load");
        if let Some(st) = p.status.as_mut() {
            st.hosts[0].load = Some(load);
        }
        let m = Metrics::default();
        m.set_inventory_source(Some(Box::new(move || {
            inventory([], std::slice::from_ref(&p).iter(), [])
        })));
        let text = m.encode().expect("encodes");
        let labels = "{object_namespace=\"vms\",pool=\"rack1\",host=\"hv-0\"}";
        assert!(
            text.contains(&format!("ferry_host_cpu_used_millicores{labels} 1500")),
            "{text}"
        );
        assert!(
            text.contains(&format!("ferry_host_memory_used_bytes{labels} 1610612736")),
            "{text}"
        );
        // The host not measured has no series.
        assert!(!text.contains("host=\"hv-1\"}} 0"), "{text}");
        assert_eq!(text.matches("ferry_host_cpu_used_millicores{").count(), 1);
    }

    #[test]
    fn measured_vm_load_is_one_series_per_measured_vm() {
        let mut a = vm(serde_json::json!({"phase": "Running", "host": "hv-0"}));
        a.metadata.uid = Some("uid-a".into());
        let mut b = vm(serde_json::json!({"phase": "Running", "host": "hv-1"}));
        b.metadata.name = Some("web-2".into());
        b.metadata.uid = Some("uid-b".into());
        let load = HashMap::from([(
            "uid-a".to_string(),
            Usage {
                cpu_millis: 250,
                memory: 300 << 20,
            },
        )]);
        let m = Metrics::default();
        m.set_inventory_source(Some(Box::new(move || {
            inventory([&a, &b], [], []).with_vm_load([&a, &b], &load)
        })));
        let text = m.encode().expect("encodes");
        let labels = "{object_namespace=\"vms\",name=\"web-1\",host=\"hv-0\"}";
        assert!(
            text.contains(&format!(
                "ferry_virtual_machine_cpu_used_millicores{labels} 250"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "ferry_virtual_machine_memory_used_bytes{labels} 314572800"
            )),
            "{text}"
        );
        // web-2 is not measured: no series.
        assert!(!text.contains("name=\"web-2\",host"), "{text}");
    }

    #[test]
    fn gauges_are_computed_at_scrape_time() {
        let m = Metrics::default();
        // No source (a standby, or caches not filled yet): no values, rather than false zeros.
        let text = m.encode().expect("encodes");
        assert!(!text.contains("ferry_virtual_machines"), "{text}");
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1));
        let c = count.clone();
        m.set_inventory_source(Some(Box::new(move || {
            let n = c.load(std::sync::atomic::Ordering::Relaxed);
            let vms: Vec<_> = (0..n)
                .map(|_| vm(serde_json::json!({"phase": "Running"})))
                .collect();
            inventory(vms.iter(), [pool(&["Ready"])].iter(), [])
        })));
        let text = m.encode().expect("encodes");
        assert!(
            text.contains("# TYPE ferry_virtual_machines gauge"),
            "{text}"
        );
        assert!(
            text.contains("ferry_virtual_machines{phase=\"Running\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ferry_virtual_machines{phase=\"Failed\"} 0"),
            "{text}"
        );
        assert!(text.contains("ferry_hosts{state=\"Ready\"} 1"), "{text}");
        assert!(
            text.contains("ferry_hosts{state=\"Misconfigured\"} 0"),
            "{text}"
        );
        count.store(3, std::sync::atomic::Ordering::Relaxed);
        let text = m.encode().expect("encodes");
        assert!(
            text.contains("ferry_virtual_machines{phase=\"Running\"} 3"),
            "{text}"
        );
        m.set_inventory_source(None);
        let text = m.encode().expect("encodes");
        assert!(!text.contains("ferry_hosts{"), "{text}");
    }

    #[test]
    fn one_series_per_vm_host_verdict_and_policy_condition() {
        let mut placed = vm(serde_json::json!({
            "phase": "Stopped", "host": "hv-1",
            "conditions": [{"type": "Ready", "status": "False", "reason": "RestartLimitReached",
                            "message": "m", "lastTransitionTime": "2026-01-10T08:00:00Z"}]}));
        placed.metadata.name = Some("db-1".into());
        let fresh = vm(serde_json::Value::Null);
        let policy: HAPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "HAPolicy",
            "metadata": {"name": "ha", "namespace": "vms"},
            "spec": {"hostPools": ["rack1"]},
            "status": {
                "hosts": [
                    {"name": "hv-0", "pool": "rack1", "verdict": "Healthy", "since": "2026-01-10T08:00:00Z"},
                    {"name": "hv-1", "pool": "rack1", "verdict": "Fencing", "since": "2026-01-10T08:00:00Z",
                     "fenceAttempts": 3}],
                "conditions": [
                    {"type": "FenceFailed", "status": "True", "reason": "FenceFailed", "message": "m",
                     "lastTransitionTime": "2026-01-10T08:00:00Z"},
                    {"type": "StormGuard", "status": "False", "reason": "Clear", "message": "m",
                     "lastTransitionTime": "2026-01-10T08:00:00Z"}]}
        }))
        .expect("valid HAPolicy");
        let m = Metrics::default();
        let vms = [placed, fresh];
        let pools = [pool(&["Ready", "Unreachable"])];
        let policies = [policy];
        let inv = inventory(vms.iter(), pools.iter(), policies.iter());
        m.set_inventory_source(Some(Box::new(move || inv.clone())));
        let text = m.encode().expect("encodes");
        for want in [
            r#"ferry_virtual_machine_status{object_namespace="vms",name="db-1",phase="Stopped",host="hv-1",ready="False",reason="RestartLimitReached"} 1"#,
            r#"ferry_virtual_machine_status{object_namespace="vms",name="web-1",phase="Pending",host="",ready="",reason=""} 1"#,
            r#"ferry_host_status{object_namespace="vms",pool="rack1",host="hv-1",state="Unreachable"} 1"#,
            r#"ferry_host_ha_verdict{object_namespace="vms",policy="ha",pool="rack1",host="hv-1",verdict="Fencing"} 1"#,
            r#"ferry_host_fence_attempts{object_namespace="vms",policy="ha",pool="rack1",host="hv-1"} 3"#,
            r#"ferry_hapolicy_condition{object_namespace="vms",policy="ha",condition="FenceFailed"} 1"#,
            r#"ferry_hapolicy_condition{object_namespace="vms",policy="ha",condition="StormGuard"} 0"#,
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        // A host without fence attempts has no fence series.
        assert!(!text.contains(
            r#"ferry_host_fence_attempts{object_namespace="vms",policy="ha",pool="rack1",host="hv-0"}"#
        ));
    }
}
