//! HA scenarios' common ground, for the e2e HA tests and the HA recovery benchmark: two lab
//! hosts whose VMs run on h1, an HAPolicy with short graces, an IPMI BMC emulator for h1, and
//! readers of the HAPolicy's status.

use super::bmc;
use super::cluster::{self, Cluster, wait_for};
use super::hosts::console;
use super::lab;
use super::migration::LAB_HOST;
use super::objects::{BOOT, LABEL, host_of, pool_manifest, ready_reason, vm_manifest, wait_vm};
use ferry::api::VirtualMachine;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

/// What [`ha_setup`] returns: the cluster, the lab, the Node names of h1 and h2, the controller.
pub type HaSetup = (
    Cluster,
    lab::Lab,
    String,
    String,
    cluster::ControllerProcess,
);

/// Two lab hosts, a HostPool whose Node template picks each host's socket, an HAPolicy with short
/// graces, and `names` VMs running on h1 (h2 cordoned while they are placed). Returns the cluster,
/// the lab and the Node names.
pub async fn ha_setup(
    prefix: &str,
    fencing: Option<serde_json::Value>,
    names: &[(&str, Option<&str>)],
    max_concurrent: u32,
) -> HaSetup {
    let (c, lab, nodes, ctl) = ha_setup_on(2, prefix, fencing, names, max_concurrent).await;
    let [h1, h2] = <[String; 2]>::try_from(nodes).expect("two Nodes");
    (c, lab, h1, h2, ctl)
}

/// [`ha_setup`] with `hosts` lab hosts: returns their Node names (`<ns>-h1`, ...), the VMs on
/// the first.
pub async fn ha_setup_on(
    hosts: usize,
    prefix: &str,
    fencing: Option<serde_json::Value>,
    names: &[(&str, Option<&str>)],
    max_concurrent: u32,
) -> (Cluster, lab::Lab, Vec<String>, cluster::ControllerProcess) {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(hosts).expect("lab hosts");
    let mut c = Cluster::new(prefix).await;
    let ns = c.namespace.clone();
    let nodes: Vec<String> = lab
        .hosts
        .iter()
        .map(|h| format!("{ns}-{}", h.name))
        .collect();
    for h in &lab.hosts {
        c.add_node_with_labels(
            &format!("{ns}-{}", h.name),
            &h.ip,
            &[(LABEL, "true"), (LAB_HOST, &h.name)],
        )
        .await;
    }
    let h1 = nodes[0].clone();
    for other in &nodes[1..] {
        c.cordon(other, true).await;
    }
    let ctl = c.controller(prefix);
    let template = lab.hosts[0]
        .unix_uri
        .replace("/h1/run/", &format!("/{{label:{LAB_HOST}}}/run/"));
    let mut pool = pool_manifest("lab", &lab);
    pool["spec"]["libvirt"]["uriTemplate"] = json!(template);
    // The lab hosts have two CPUs: room for 16 one-vCPU guests, or for all of them when there
    // are more (the density benchmarks).
    let overcommit = names.len().div_ceil(2).max(8);
    pool["spec"]["capacity"] = json!({"cpuOvercommit": overcommit.to_string()});
    // Evacuations migrate between the lab hosts over TCP.
    pool["spec"]["migration"] = json!({"peerUriTemplate": "qemu+tcp://{address}/system"});
    if let Some(f) = fencing {
        pool["spec"]["fencing"] = f;
    }
    c.apply::<ferry::api::HostPool>(pool).await;
    c.apply::<ferry::api::HAPolicy>(ha_policy(max_concurrent, json!({})))
        .await;
    for (name, class) in names {
        let mut m = vm_manifest(name, "lab", &lab, "Always");
        if let Some(class) = class {
            m["metadata"]["labels"] = json!({"ferry.dev/ha-priority": class});
        }
        c.apply::<VirtualMachine>(m).await;
    }
    for (name, _) in names {
        let vm = wait_vm(&c, name, "Running on h1", BOOT, |vm| {
            ready_reason(vm) == Some(("True".into(), "Running".into()))
        })
        .await;
        assert_eq!(host_of(&vm).as_deref(), Some(h1.as_str()));
    }
    // Booted for real (boot counter on disk), not only started.
    for (name, _) in names {
        lab::wait_for_console(&console(&lab, &ns, name), "FERRY-READY", BOOT)
            .expect("guest ready on h1");
    }
    for other in &nodes[1..] {
        c.cordon(other, false).await;
    }
    let policies: Api<ferry::api::HAPolicy> = Api::namespaced(c.client.clone(), &ns);
    wait_for("every host Healthy", Duration::from_secs(60), || {
        let p = policies.clone();
        async move {
            let s = p.get("ha").await.ok()?.status?;
            (s.hosts.len() == hosts
                && s.hosts
                    .iter()
                    .all(|h| h.verdict == ferry::api::ha_policy::HostVerdict::Healthy))
            .then_some(())
        }
    })
    .await;
    (c, lab, nodes, ctl)
}

/// The HAPolicy `ha` of the HA tests: the lab pool, short graces, `extra` merged into its spec.
pub fn ha_policy(max_concurrent: u32, extra: serde_json::Value) -> serde_json::Value {
    let mut policy = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HAPolicy",
        "metadata": {"name": "ha"},
        "spec": {"hostPools": ["lab"], "notReadyGraceSeconds": 5,
                 "libvirtUnreachableGraceSeconds": 3, "maxConcurrentRestarts": max_concurrent,
                 "priorityClasses": [{"name": "high", "value": 100},
                                      {"name": "mid", "value": 50}]}
    });
    if let (Some(spec), Some(extra)) = (policy["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    policy
}

/// [`ha_setup`] with IPMI fencing through [`attach_ipmi`]'s BMC (whose Secret holds `password`).
pub async fn ha_setup_with_ipmi(
    prefix: &str,
    names: &[(&str, Option<&str>)],
    max_concurrent: u32,
    password: &str,
) -> (HaSetup, bmc::IpmiSim) {
    assert!(
        bmc::missing().is_empty(),
        "BMC emulators missing: {:?}",
        bmc::missing()
    );
    let (c, lab, h1, h2, ctl) = ha_setup(prefix, Some(ipmi_fencing()), names, max_concurrent).await;
    let sim = attach_ipmi(&c, &lab, &h1, &h2, password).await;
    ((c, lab, h1, h2, ctl), sim)
}

/// Power the BMC's host off as an operator would, with ipmitool over LAN.
pub fn ipmi_power_off(sim: &bmc::IpmiSim) {
    ipmi_power(sim, "off");
}

/// `ipmitool chassis power <action>` against the BMC.
pub fn ipmi_power(sim: &bmc::IpmiSim, action: &str) {
    let port = sim.port.to_string();
    let out = lab::run_cmd(
        "ipmitool",
        &[
            "-I",
            "lanplus",
            "-C",
            "3",
            "-H",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "admin",
            "-P",
            "s3cret",
            "-N",
            "1",
            "-R",
            "2",
            "chassis",
            "power",
            action,
        ],
        Duration::from_secs(30),
    );
    assert!(out.success(), "ipmitool chassis power {action}: {out:?}");
}

/// IPMI fencing as the HA tests use it (timeouts short for the lab).
pub fn ipmi_fencing() -> serde_json::Value {
    json!({"driver": "IPMI", "addressTemplate": "ipmi://{annotation:ferry.dev/e2e-bmc}",
           "credentialsSecret": "bmc", "requestTimeoutSeconds": 3, "confirmTimeoutSeconds": 10})
}

/// An IPMI BMC (ipmi_sim, user admin, password s3cret) for h1 whose power-off kills the lab
/// host, the Secret `bmc` with `password`, and each Node's BMC annotation (h2's points at a port
/// where nothing answers).
pub async fn attach_ipmi(
    c: &Cluster,
    lab: &lab::Lab,
    h1: &str,
    h2: &str,
    password: &str,
) -> bmc::IpmiSim {
    let sim = bmc::IpmiSim::start("admin", "s3cret", &lab.power_off_command("h1"), false);
    put_bmc_password(c, password).await;
    let addr = sim.address().trim_start_matches("ipmi://").to_string();
    set_node_bmc(c, h1, &addr).await;
    set_node_bmc(c, h2, "127.0.0.1:9").await;
    sim
}

/// Point Node `node`'s BMC annotation (read by [`fencing`]'s address template) at `addr`
/// (`host:port`).
pub async fn set_node_bmc(c: &Cluster, node: &str, addr: &str) {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.client.clone());
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"ferry.dev/e2e-bmc": addr}}})),
        )
        .await
        .expect("annotate Node");
}

/// Creates or replaces the Secret `bmc` (username admin).
pub async fn put_bmc_password(c: &Cluster, password: &str) {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(c.client.clone(), &c.namespace);
    secrets
        .patch(
            "bmc",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "bmc"},
                "stringData": {"username": "admin", "password": password}})),
        )
        .await
        .expect("apply Secret bmc");
}

/// The status of the HAPolicy `ha`.
pub async fn ha_status(c: &Cluster) -> Option<ferry::api::HAPolicyStatus> {
    let policies: Api<ferry::api::HAPolicy> = Api::namespaced(c.client.clone(), &c.namespace);
    policies.get("ha").await.ok()?.status
}

/// The HAPolicy's status entry of a host.
pub async fn ha_host(c: &Cluster, host: &str) -> Option<ferry::api::ha_policy::HostHealth> {
    let st = ha_status(c).await?;
    st.hosts.into_iter().find(|h| h.name == host)
}

/// Wait until VM `name` runs on `to` after a failover of `from` proven by `evidence`; returns
/// its `lastRecovery`.
pub async fn wait_recovered(
    c: &Cluster,
    name: &str,
    from: &str,
    to: &str,
    evidence: &str,
) -> ferry::api::virtual_machine::Recovery {
    let vm = wait_vm(
        c,
        name,
        &format!("Running on {to} after failover"),
        BOOT,
        |vm| {
            host_of(vm).as_deref() == Some(to)
                && ready_reason(vm) == Some(("True".into(), "Running".into()))
        },
    )
    .await;
    let r = vm
        .status
        .and_then(|s| s.last_recovery)
        .expect("lastRecovery");
    assert_eq!(
        (
            r.from_host.as_str(),
            r.evidence.as_str(),
            r.to_host.as_deref()
        ),
        (from, evidence, Some(to)),
        "{name}"
    );
    r
}

/// Wait until the HAPolicy `ha` gives `host` the verdict `want`; returns the host's entry.
pub async fn wait_verdict(
    c: &Cluster,
    host: &str,
    want: ferry::api::ha_policy::HostVerdict,
    timeout: Duration,
) -> ferry::api::ha_policy::HostHealth {
    wait_for(&format!("{host} {want}"), timeout, || async move {
        ha_host(c, host).await.filter(|h| h.verdict == want)
    })
    .await
}

/// An HAPolicy condition.
pub async fn ha_condition(
    c: &Cluster,
    type_: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let st = ha_status(c).await?;
    st.conditions.into_iter().find(|x| x.type_ == type_)
}
