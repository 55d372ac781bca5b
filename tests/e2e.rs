//! End-to-end: the real `ferry controller` process against the cluster `KUBECONFIG` names and a
//! real libvirt lab host running real QEMU guests. Runs unchanged against a real cluster; in CI
//! `e2e/run.sh` points it at the in-repo API stand-in (see e2e/README.md for what that cannot
//! prove). Every wait is bounded; labs, processes and cluster objects are removed on drop.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/lab.rs"]
mod lab;

use cluster::{Cluster, wait_for};
use ferry::api::{VirtualMachine, VmPhase};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::time::Duration;

const LABEL: &str = "ferry.dev/e2e-hypervisor";
const BOOT: Duration = Duration::from_secs(180);

fn condition<'a>(
    vm: &'a VirtualMachine,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    vm.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn ready_reason(vm: &VirtualMachine) -> Option<(String, String)> {
    condition(vm, "Ready").map(|c| (c.status.clone(), c.reason.clone()))
}

/// Wait until `f` holds for the VM; on timeout the assertion names what was awaited.
async fn wait_vm(
    c: &Cluster,
    name: &str,
    what: &str,
    timeout: Duration,
    f: impl Fn(&VirtualMachine) -> bool,
) -> VirtualMachine {
    let api = c.vms();
    wait_for(&format!("VM {name}: {what}"), timeout, || {
        let api = api.clone();
        let name = name.to_string();
        let f = &f;
        async move { api.get(&name).await.ok().filter(|vm| f(vm)) }
    })
    .await
}

fn pool_manifest(name: &str, lab: &lab::Lab) -> serde_json::Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchLabels": {LABEL: "true"}},
            "libvirt": {"uriTemplate": lab.hosts[0].unix_uri, "connectTimeoutSeconds": 5,
                        "keepaliveIntervalSeconds": 2, "keepaliveCount": 3},
            "storage": {"pool": "ferry", "path": lab.pool_dir},
            "console": {"logDirectory": lab.console_dir}
        }
    })
}

fn vm_manifest(name: &str, pool: &str, lab: &lab::Lab, strategy: &str) -> serde_json::Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "hostPool": pool, "runStrategy": strategy,
            "cpu": {"cores": 1}, "memory": "128Mi",
            "terminationGracePeriodSeconds": 20,
            "disks": [{"name": "root", "image": lab.golden}],
            "boot": {"kernel": lab.kernel, "initrd": lab.initrd, "cmdline": lab.cmdline}
        }
    })
}

/// Run `kubectl-ferry` in the test namespace; returns (success, stdout + stderr).
fn plugin(c: &Cluster, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-ferry"))
        .args(["-n", &c.namespace])
        .args(args)
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("run kubectl-ferry");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Apply a VM and wait until it has a host.
async fn apply_placed(c: &Cluster, manifest: serde_json::Value) -> VirtualMachine {
    let name = manifest["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    c.apply::<VirtualMachine>(manifest).await;
    wait_vm(c, &name, "placed", Duration::from_secs(60), |vm| {
        vm.status.as_ref().and_then(|s| s.host.as_ref()).is_some()
    })
    .await
}

fn console(lab: &lab::Lab, ns: &str, vm: &str) -> std::path::PathBuf {
    std::path::Path::new(&lab.console_dir).join(format!("{ns}_{vm}.console.log"))
}

/// Names of the domains defined on the lab host.
fn domains(lab: &lab::Lab) -> Vec<String> {
    lab.virsh(&lab.hosts[0].name, &["list", "--all", "--name"])
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn volumes(lab: &lab::Lab) -> Vec<String> {
    std::fs::read_dir(&lab.pool_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn vm_lifecycle_on_a_real_host() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(1).expect("lab host");
    let mut c = Cluster::new("ferry-e2e-life").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let ctl = c.controller("e2e-a");
    let ns = c.namespace.clone();

    c.apply::<ferry::api::HostPool>(pool_manifest("lab", &lab))
        .await;
    let pools = c.pools();
    wait_for(
        "HostPool Ready with one host",
        Duration::from_secs(60),
        || {
            let pools = pools.clone();
            async move {
                let p = pools.get("lab").await.ok()?;
                let s = p.status?;
                (s.ready_hosts == 1
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True"))
                .then_some(())
            }
        },
    )
    .await;

    // Create: the guest boots from its own overlay on the golden image.
    let golden_before =
        std::fs::read(std::path::Path::new(&lab.pool_dir).join(&lab.golden)).expect("golden image");
    c.apply::<VirtualMachine>(vm_manifest("web", "lab", &lab, "Always"))
        .await;
    let vm = wait_vm(&c, "web", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let st = vm.status.clone().expect("status");
    assert_eq!(st.phase, Some(VmPhase::Running));
    assert_eq!(st.host.as_deref(), Some(node.as_str()));
    assert_eq!(st.domain_uuid.as_deref(), vm.metadata.uid.as_deref());
    assert_eq!(st.observed_generation, vm.metadata.generation);
    assert!(condition(&vm, "Scheduled").is_some_and(|c| c.status == "True"));
    assert_eq!(st.disks.len(), 1, "the overlay is recorded: {:?}", st.disks);
    let overlay = st.disks[0].volume.clone();
    assert!(volumes(&lab).contains(&overlay), "overlay {overlay} exists");
    let log = console(&lab, &ns, "web");
    lab::wait_for_console(&log, "FERRY-BOOT 1", BOOT).expect("guest booted once");
    lab::wait_for_console(&log, "FERRY-READY", BOOT).expect("guest ready");
    assert_eq!(domains(&lab), vec![format!("{ns}_web")]);

    // Steady state: no status writes while nothing changes.
    let rv = c.vms().get("web").await.expect("vm").resource_version();
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(
        c.vms().get("web").await.expect("vm").resource_version(),
        rv,
        "a steady VM is not rewritten"
    );

    // Stop on purpose: healthy, Stopped, guest shut down.
    c.vms()
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runStrategy": "Halted"}})),
        )
        .await
        .expect("halt");
    let vm = wait_vm(&c, "web", "Stopped", Duration::from_secs(90), |vm| {
        vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Stopped)
    })
    .await;
    assert_eq!(ready_reason(&vm), Some(("False".into(), "Stopped".into())));
    assert!(condition(&vm, "Ready").is_some_and(|c| c.message.contains("runStrategy Halted")));
    let state = lab
        .virsh(&lab.hosts[0].name, &["domstate", &format!("{ns}_web")])
        .stdout;
    assert!(state.contains("shut off"), "domain state: {state}");

    // Start again: same disk, second boot.
    c.vms()
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runStrategy": "Always"}})),
        )
        .await
        .expect("start");
    wait_vm(&c, "web", "Ready again", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    lab::wait_for_console(&log, "FERRY-BOOT 2", BOOT).expect("second boot from the same disk");

    // A change that needs a restart is reported, not applied behind the user's back.
    c.vms()
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"memory": "192Mi"}})),
        )
        .await
        .expect("resize");
    let vm = wait_vm(
        &c,
        "web",
        "RestartRequired",
        Duration::from_secs(60),
        |vm| condition(vm, "RestartRequired").is_some_and(|c| c.status == "True"),
    )
    .await;
    let msg = condition(&vm, "RestartRequired")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(msg.contains("memory"), "{msg}");
    assert!(
        !lab::console_log(&log).contains("FERRY-BOOT 3"),
        "no reboot behind the user's back"
    );

    // Restart on request (kubectl ferry restart) applies it.
    let (ok, out) = plugin(&c, &["restart", "web"]);
    assert!(ok, "kubectl ferry restart: {out}");
    let token = c
        .vms()
        .get("web")
        .await
        .expect("vm")
        .annotations()
        .get("ferry.dev/restart")
        .cloned();
    assert!(token.is_some(), "the plugin set the restart annotation");
    wait_vm(&c, "web", "restarted with the new size", BOOT, |vm| {
        condition(vm, "RestartRequired").is_some_and(|c| c.status == "False")
            && ready_reason(vm) == Some(("True".into(), "Running".into()))
            && vm
                .status
                .as_ref()
                .and_then(|s| s.last_restart_request.clone())
                == token
    })
    .await;
    lab::wait_for_console(&log, "FERRY-BOOT 3", BOOT).expect("third boot after the restart");

    // The kubectl plugin reads what users look for.
    let (ok, out) = plugin(&c, &["status", "web"]);
    assert!(
        ok && out.contains(&node) && out.contains("Running"),
        "kubectl ferry status: {out}"
    );
    let (ok, out) = plugin(&c, &["hosts"]);
    assert!(
        ok && out.contains(&node) && out.contains("Ready"),
        "kubectl ferry hosts: {out}"
    );
    let (ok, out) = plugin(&c, &["console", "web", "--no-attach"]);
    assert!(
        ok && out.contains(&format!("{ns}_web.console.log")),
        "kubectl ferry console: {out}"
    );
    // stop on a runStrategy Always VM would fight GitOps: refused with an explanation.
    let (ok, out) = plugin(&c, &["stop", "web"]);
    assert!(
        !ok && out.contains("Manual"),
        "kubectl ferry stop without --force-spec: {out}"
    );

    // Metrics are served.
    let (code, body) = ctl.http_get("/metrics").expect("metrics endpoint answers");
    assert_eq!(code, 200);
    assert!(body.contains("ferry_reconciles_total"), "{body}");
    assert!(
        body.contains("ferry_libvirt_call_duration_seconds"),
        "{body}"
    );

    // Delete: domain and overlay gone, golden image untouched.
    c.vms()
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_vm_gone("web", Duration::from_secs(90)).await;
    assert!(
        domains(&lab).is_empty(),
        "domain undefined: {:?}",
        domains(&lab)
    );
    assert!(!volumes(&lab).contains(&overlay), "overlay removed");
    let golden_after =
        std::fs::read(std::path::Path::new(&lab.pool_dir).join(&lab.golden)).expect("golden image");
    assert!(
        golden_before == golden_after,
        "the golden image is never written"
    );
    drop(ctl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn bad_input_and_failures_end_in_clear_conditions() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(1).expect("lab host");
    let mut c = Cluster::new("ferry-e2e-bad").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let mut first = c.controller("e2e-first");
    let ns = c.namespace.clone();

    // A VM naming a HostPool that does not exist.
    c.apply::<VirtualMachine>(vm_manifest("orphan", "nope", &lab, "Always"))
        .await;
    let vm = wait_vm(
        &c,
        "orphan",
        "HostPoolNotFound",
        Duration::from_secs(60),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "HostPoolNotFound"),
    )
    .await;
    assert!(condition(&vm, "Ready").is_some_and(|c| c.message.contains("spec.hostPool")));
    assert_eq!(
        vm.status.as_ref().and_then(|s| s.phase),
        Some(VmPhase::Pending)
    );

    c.apply::<ferry::api::HostPool>(pool_manifest("lab", &lab))
        .await;

    // A missing golden image: a clear condition, nothing created on the host.
    let mut m = vm_manifest("noimage", "lab", &lab, "Always");
    m["spec"]["disks"] = json!([{"name": "root", "image": "does-not-exist.qcow2"}]);
    c.apply::<VirtualMachine>(m).await;
    let vm = wait_vm(
        &c,
        "noimage",
        "ImageNotFound",
        Duration::from_secs(60),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "ImageNotFound"),
    )
    .await;
    assert!(condition(&vm, "Ready").is_some_and(|c| c.message.contains("does-not-exist.qcow2")));
    assert!(
        !domains(&lab).contains(&format!("{ns}_noimage")),
        "no domain for a VM without its image"
    );
    assert!(
        !volumes(&lab).iter().any(|v| v.contains("noimage")),
        "no half-created disk"
    );

    // An impossible memory size: rejected by the API server's CEL rule, or (on a server that does
    // not evaluate CEL) reported by the controller. Never a crash loop.
    let mut m = vm_manifest("huge", "lab", &lab, "Always");
    m["spec"]["memory"] = json!("64Ti");
    let api: Api<VirtualMachine> = c.vms();
    let obj: VirtualMachine = serde_json::from_value(m).expect("vm");
    match api.create(&PostParams::default(), &obj).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422);
            assert!(e.message.contains("memory"), "{}", e.message);
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => {
            let vm = wait_vm(&c, "huge", "InvalidSpec", Duration::from_secs(60), |vm| {
                ready_reason(vm).is_some_and(|(_, r)| r == "InvalidSpec")
            })
            .await;
            assert!(condition(&vm, "Ready").is_some_and(|c| c.message.contains("spec.memory")));
        }
    }

    // libvirtd dies while a VM is being started: reported, then converged with one domain.
    lab.stop_libvirtd(&lab.hosts[0].name)
        .expect("stop libvirtd");
    c.apply::<VirtualMachine>(vm_manifest("survivor", "lab", &lab, "Always"))
        .await;
    wait_vm(
        &c,
        "survivor",
        "HostUnreachable",
        Duration::from_secs(60),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "HostUnreachable"),
    )
    .await;
    lab.start_libvirtd(&lab.hosts[0].name)
        .expect("start libvirtd");
    wait_vm(
        &c,
        "survivor",
        "Ready after libvirtd returned",
        BOOT,
        |vm| ready_reason(vm) == Some(("True".into(), "Running".into())),
    )
    .await;
    let defined: Vec<String> = domains(&lab)
        .into_iter()
        .filter(|d| d.ends_with("_survivor"))
        .collect();
    assert_eq!(
        defined,
        vec![format!("{ns}_survivor")],
        "exactly one domain"
    );

    // Leader election: a second replica stands by, then takes over when the first dies.
    let second = c.controller("e2e-second");
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.kill();
    c.vms()
        .patch(
            "survivor",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runStrategy": "Halted"}})),
        )
        .await
        .expect("halt");
    wait_vm(
        &c,
        "survivor",
        "stopped by the new leader",
        Duration::from_secs(90),
        |vm| vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Stopped),
    )
    .await;
    assert!(
        second.log_text().contains("acquired leadership"),
        "the standby took over"
    );

    // The host goes away for good (libvirtd down, Node deleted): deletion still completes and an
    // Event says what was left behind where.
    lab.stop_libvirtd(&lab.hosts[0].name)
        .expect("stop libvirtd");
    Api::<k8s_openapi::api::core::v1::Node>::all(c.client.clone())
        .delete(&node, &DeleteParams::default())
        .await
        .expect("delete Node");
    c.vms()
        .delete("survivor", &DeleteParams::default())
        .await
        .expect("delete");
    // Deletion completes although the host is gone.
    c.wait_vm_gone("survivor", Duration::from_secs(90)).await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), &ns);
    let left = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("LeftBehind"))
        .and_then(|e| e.note)
        .unwrap_or_default();
    assert!(
        left.contains(&format!("{ns}_survivor")) && left.contains(&node),
        "LeftBehind Event: {left:?}"
    );
    lab.start_libvirtd(&lab.hosts[0].name)
        .expect("start libvirtd");
    let domain = format!("{ns}_survivor");
    assert!(
        domains(&lab).contains(&domain),
        "the domain was left behind, as the Event says"
    );
    lab.virsh(&lab.hosts[0].name, &["undefine", &domain]);

    for name in ["noimage", "orphan", "huge"] {
        let _ = c.vms().delete(name, &DeleteParams::default()).await;
    }
    let vms = c.vms();
    wait_for("all VMs deleted", Duration::from_secs(120), || {
        let vms = vms.clone();
        async move {
            vms.list(&Default::default())
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        }
    })
    .await;
    assert!(
        domains(&lab).is_empty(),
        "nothing left on the host: {:?}",
        domains(&lab)
    );
    let _ = ResourceExt::name_any(&obj);
}

const LAB_HOST: &str = "ferry.dev/e2e-lab-host";

/// Host of a VM, once placed.
fn host_of(vm: &VirtualMachine) -> Option<String> {
    vm.status.as_ref()?.host.clone()
}

fn labelled_vm(name: &str, lab: &lab::Lab, app: &str, anti: bool) -> serde_json::Value {
    let mut m = vm_manifest(name, "lab", lab, "Halted");
    m["metadata"]["labels"] = json!({"app": app});
    if anti {
        m["spec"]["placement"] = json!({"antiAffinity": [
            {"labelSelector": {"matchLabels": {"app": app}}, "required": true}
        ]});
    }
    m
}

/// Three lab hosts: six VMs spread 2/2/2, the pool reports capacity and allocation per host, a
/// required anti-affinity pair lands on two hosts even where spreading would put them together,
/// a cordoned Node receives nothing new, and a VM that fits nowhere waits with a counted reason
/// and is placed as soon as its host is uncordoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn placement_across_three_hosts() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(3).expect("three lab hosts");
    let mut c = Cluster::new("ferry-e2e-place").await;
    let ns = c.namespace.clone();
    let node = |h: &str| format!("{ns}-{h}");
    for h in &lab.hosts {
        c.add_node_with_labels(
            &node(&h.name),
            &h.ip,
            &[(LABEL, "true"), (LAB_HOST, &h.name)],
        )
        .await;
    }
    let _ctl = c.controller("e2e-place");
    // Each host's socket lives in its own lab directory (`.../h1/run/...`): a Node label picks it.
    let template = lab.hosts[0]
        .unix_uri
        .replace("/h1/run/", &format!("/{{label:{LAB_HOST}}}/run/"));
    assert_ne!(template, lab.hosts[0].unix_uri, "the lab layout changed");
    let mut pool = pool_manifest("lab", &lab);
    pool["spec"]["libvirt"]["uriTemplate"] = json!(template);
    pool["spec"]["capacity"] = json!({"cpuOvercommit": "4"});
    c.apply::<ferry::api::HostPool>(pool).await;
    let pools = c.pools();
    let hosts_with = |pred: fn(&ferry::api::HostStatus) -> bool, n: usize| {
        let pools = pools.clone();
        async move {
            let p = pools.get("lab").await.ok()?;
            let s = p.status?;
            (s.hosts.iter().filter(|h| pred(h)).count() == n).then_some(s)
        }
    };
    let st = wait_for(
        "3 hosts Ready with capacity",
        Duration::from_secs(90),
        || {
            hosts_with(
                |h| h.state == ferry::api::HostState::Ready && h.allocatable.is_some(),
                3,
            )
        },
    )
    .await;
    for h in &st.hosts {
        let cap = h.capacity.clone().expect("capacity");
        let alloc = h.allocatable.clone().expect("allocatable");
        assert!(cap.cpus >= 1, "{h:?}");
        assert_eq!(alloc.cpus, cap.cpus * 4, "cpuOvercommit 4: {h:?}");
        assert_eq!(alloc.memory, cap.memory, "no memory overcommit: {h:?}");
        assert!(h.hypervisor_version.is_some(), "{h:?}");
        assert_eq!(h.vm_count, Some(0));
        assert_eq!(h.foreign_domains, Some(0));
        let uri = h.uri.clone().unwrap_or_default();
        assert!(uri.starts_with("qemu+unix:///system"), "{uri}");
    }
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "False"),
        "{:?}",
        st.conditions
    );

    // Six small VMs at once: spread 2/2/2.
    let started = std::time::Instant::now();
    let names: Vec<String> = (1..=6).map(|i| format!("vm-{i}")).collect();
    for n in &names {
        c.apply::<VirtualMachine>(vm_manifest(n, "lab", &lab, "Always"))
            .await;
    }
    let mut placed = std::collections::BTreeMap::<String, Vec<String>>::new();
    for n in &names {
        let vm = wait_vm(&c, n, "Ready", BOOT, |vm| {
            ready_reason(vm) == Some(("True".into(), "Running".into()))
        })
        .await;
        placed
            .entry(host_of(&vm).expect("host"))
            .or_default()
            .push(n.clone());
    }
    eprintln!(
        "6 VMs Running on 3 hosts after {:.1}s: {placed:?}",
        started.elapsed().as_secs_f64()
    );
    let counts: Vec<usize> = placed.values().map(Vec::len).collect();
    assert_eq!(counts, vec![2, 2, 2], "spread evenly: {placed:?}");
    for h in &lab.hosts {
        let doms = lab.virsh(&h.name, &["list", "--name"]).stdout;
        assert_eq!(
            doms.lines().filter(|l| !l.trim().is_empty()).count(),
            2,
            "2 running domains on {}: {doms}",
            h.name
        );
    }
    let st = wait_for(
        "pool counts 2 VMs per host",
        Duration::from_secs(60),
        || {
            hosts_with(
                |h| {
                    h.vm_count == Some(2)
                        && h.allocated
                            .as_ref()
                            .is_some_and(|a| a.cpus == 2 && a.memory == "256Mi")
                },
                3,
            )
        },
    )
    .await;
    assert!(
        st.hosts.iter().all(|h| h.orphans.is_empty()),
        "{:?}",
        st.hosts
    );
    // A steady pool is not rewritten by its probes (every 15 s).
    let rv = pools.get("lab").await.expect("pool").resource_version();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        pools.get("lab").await.expect("pool").resource_version(),
        rv,
        "a steady HostPool is not rewritten"
    );

    // Empty h1 and h2 (4 guests fewer for the TCG budget), cordon h1.
    let (h1, h2, h3) = (node("h1"), node("h2"), node("h3"));
    for n in placed[&h1].iter().chain(&placed[&h2]) {
        c.vms()
            .delete(n, &DeleteParams::default())
            .await
            .expect("delete");
    }
    let vms = c.vms();
    wait_for("4 VMs deleted", Duration::from_secs(120), || {
        let vms = vms.clone();
        async move {
            let l = vms.list(&Default::default()).await.ok()?;
            (l.items.len() == 2).then_some(())
        }
    })
    .await;
    c.cordon(&h1, true).await;
    wait_for("h1 Cordoned and empty", Duration::from_secs(60), || {
        hosts_with(
            |h| h.state == ferry::api::HostState::Cordoned && h.vm_count == Some(0),
            1,
        )
    })
    .await;

    // Anti-affinity: db-a takes the emptiest schedulable host (h2); spreading alone would put db-b
    // there too (1 VM against h3's 2), the required anti-affinity sends it to h3.
    let a = apply_placed(&c, labelled_vm("db-a", &lab, "db", true)).await;
    assert_eq!(
        host_of(&a),
        Some(h2.clone()),
        "db-a on the emptiest uncordoned host"
    );
    let b = apply_placed(&c, labelled_vm("db-b", &lab, "db", true)).await;
    assert_eq!(
        host_of(&b),
        Some(h3.clone()),
        "anti-affinity: db-b apart from db-a"
    );

    // The cordoned h1 is the emptiest host but receives nothing new.
    let free = apply_placed(&c, labelled_vm("free", &lab, "web", false)).await;
    assert_eq!(host_of(&free), Some(h2.clone()), "not on the cordoned host");

    // Pinned to h1: waits, saying why, and is placed once h1 is uncordoned.
    let mut pinned = labelled_vm("pinned", &lab, "web", false);
    pinned["spec"]["placement"] = json!({"nodeSelector": {LAB_HOST: "h1"}});
    c.apply::<VirtualMachine>(pinned).await;
    let vm = wait_vm(
        &c,
        "pinned",
        "NoHostAvailable",
        Duration::from_secs(60),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "NoHostAvailable"),
    )
    .await;
    let msg = condition(&vm, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        msg.contains("1 cordoned") && msg.contains("2 not matching nodeSelector"),
        "{msg}"
    );
    assert_eq!(
        vm.status.as_ref().and_then(|s| s.phase),
        Some(VmPhase::Pending)
    );
    let t = std::time::Instant::now();
    c.cordon(&h1, false).await;
    let vm = wait_vm(
        &c,
        "pinned",
        "placed on h1",
        Duration::from_secs(60),
        |vm| host_of(vm).is_some(),
    )
    .await;
    eprintln!(
        "pinned VM placed {:.1}s after uncordon",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(host_of(&vm), Some(h1.clone()));

    // Domains ferry does not own show up as foreign; a ferry domain whose VirtualMachine is gone
    // (here: db-b's definition under another name and owner UID) as an orphan, left in place.
    let db_b_uid = b.metadata.uid.clone().expect("uid");
    let xml = lab
        .virsh_ok("h3", &["dumpxml", "--inactive", &format!("{ns}_db-b")])
        .expect("dumpxml");
    let ghost_xml: String = xml
        .lines()
        .filter(|l| !l.trim_start().starts_with("<uuid>"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            &format!("<name>{ns}_db-b</name>"),
            &format!("<name>{ns}_ghost</name>"),
        )
        .replace(&db_b_uid, "00000000-0000-0000-0000-00000000dead");
    let foreign_xml = "<domain type='qemu'><name>foreign-1</name><memory unit='MiB'>64</memory>\
        <vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>";
    for (file, text) in [
        ("ghost.xml", ghost_xml.as_str()),
        ("foreign.xml", foreign_xml),
    ] {
        let path = lab.dir.join(file);
        std::fs::write(&path, text).expect("write domain XML");
        lab.virsh_ok("h3", &["define", &path.to_string_lossy()])
            .expect("define");
    }
    let ghost = format!("{ns}_ghost");
    let st = wait_for(
        "h3 reports the orphan and the foreign domain",
        Duration::from_secs(60),
        || {
            let pools = pools.clone();
            let ghost = ghost.clone();
            let h3 = h3.clone();
            async move {
                let s = pools.get("lab").await.ok()?.status?;
                let h = s.hosts.iter().find(|h| h.name == h3)?;
                (h.foreign_domains == Some(1) && h.orphans == vec![ghost]).then_some(s)
            }
        },
    )
    .await;
    eprintln!(
        "h3 after the orphan: {:?}",
        st.hosts.iter().find(|h| h.name == h3)
    );

    let remaining: Vec<String> = c
        .vms()
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|v| v.name_any())
        .collect();
    for n in &remaining {
        let _ = c.vms().delete(n, &DeleteParams::default()).await;
    }
    wait_for("all VMs deleted", Duration::from_secs(120), || {
        let vms = vms.clone();
        async move {
            vms.list(&Default::default())
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        }
    })
    .await;
    // The orphan and the foreign domain are never touched by ferry.
    let left = lab
        .virsh(&lab.hosts[2].name, &["list", "--all", "--name"])
        .stdout;
    assert!(
        left.contains(&ghost) && left.contains("foreign-1"),
        "orphan and foreign domain left in place: {left}"
    );
    for d in [ghost.as_str(), "foreign-1"] {
        lab.virsh_ok("h3", &["undefine", d]).expect("undefine");
    }
    for h in &lab.hosts {
        let left = lab.virsh(&h.name, &["list", "--all", "--name"]).stdout;
        assert!(left.trim().is_empty(), "nothing left on {}: {left}", h.name);
    }
}

/// Create or replace a Secret in the test namespace with one key.
async fn put_secret(c: &Cluster, name: &str, data: &[(&str, &[u8])]) {
    use k8s_openapi::ByteString;
    let api: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(c.client.clone(), &c.namespace);
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    api.patch(
        name,
        &PatchParams::apply("ferry-e2e").force(),
        &Patch::Apply(&secret),
    )
    .await
    .expect("apply Secret");
}

fn seed_volumes(lab: &lab::Lab) -> Vec<String> {
    let mut v: Vec<String> = volumes(lab)
        .into_iter()
        .filter(|v| v.contains("_cidata_"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn cloud_init_seed_and_class_reach_the_guest() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(1).expect("lab host");
    let mut c = Cluster::new("ferry-e2e-seed").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let ctl = c.controller("e2e-seed");
    let ns = c.namespace.clone();
    c.apply::<ferry::api::HostPool>(pool_manifest("lab", &lab))
        .await;

    // Bad input first: nothing may be created for either VM.
    let mut missing = vm_manifest("nosecret", "lab", &lab, "Always");
    missing["spec"]["cloudInit"] = json!({"userDataSecretRef": {"name": "absent"}});
    c.apply::<VirtualMachine>(missing).await;
    let vm = wait_vm(
        &c,
        "nosecret",
        "CloudInitSecretNotFound",
        Duration::from_secs(60),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "CloudInitSecretNotFound"),
    )
    .await;
    let msg = condition(&vm, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        msg.contains("\"absent\"") && msg.contains("does not exist"),
        "{msg}"
    );
    put_secret(
        &c,
        "huge",
        &[
            ("userdata", &vec![b'#'; 700 * 1024]),
            ("networkdata", &vec![b'#'; 400 * 1024]),
        ],
    )
    .await;
    let mut huge = vm_manifest("huge", "lab", &lab, "Always");
    huge["spec"]["cloudInit"] = json!({
        "userDataSecretRef": {"name": "huge"},
        "networkDataSecretRef": {"name": "huge"}
    });
    c.apply::<VirtualMachine>(huge).await;
    let vm = wait_vm(
        &c,
        "huge",
        "CloudInitInvalid",
        Duration::from_secs(60),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "CloudInitInvalid"),
    )
    .await;
    let msg = condition(&vm, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(msg.contains("more than a seed holds"), "{msg}");
    assert!(!msg.contains("###"), "the data is never quoted: {msg}");
    assert!(domains(&lab).is_empty(), "no domain: {:?}", domains(&lab));
    assert!(
        seed_volumes(&lab).is_empty(),
        "no seed: {:?}",
        seed_volumes(&lab)
    );
    for name in ["nosecret", "huge"] {
        c.vms()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
        c.wait_vm_gone(name, Duration::from_secs(60)).await;
    }

    // A VM whose user-data comes from a Secret, with the hostname and SSH key shortcuts.
    put_secret(
        &c,
        "web-userdata",
        &[(
            "userdata",
            b"#cloud-config\nruncmd:\n  - echo ferry-e2e-first\n",
        )],
    )
    .await;
    // Its size comes from a VirtualMachineClass.
    let class = |memory: &str| {
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachineClass",
            "metadata": {"name": format!("{ns}-tiny")},
            "spec": {"cpu": {"cores": 1}, "memory": memory, "description": "e2e"}
        })
    };
    let classes: Api<ferry::api::VirtualMachineClass> = Api::all(c.client.clone());
    classes
        .patch(
            &format!("{ns}-tiny"),
            &PatchParams::apply("ferry-e2e").force(),
            &Patch::Apply(class("128Mi")),
        )
        .await
        .expect("apply class");
    let mut m = vm_manifest("seeded", "lab", &lab, "Always");
    let spec = m["spec"].as_object_mut().expect("spec");
    spec.remove("cpu");
    spec.remove("memory");
    spec.insert("className".into(), json!(format!("{ns}-tiny")));
    // A NIC on the host's isolated guest bridge, an address, and the tiny guest's agent.
    spec.insert(
        "networks".into(),
        json!([{"name": "eth0", "bridge": "gbr0"}]),
    );
    m["spec"]["boot"]["cmdline"] = json!(format!(
        "{} ferry.agent=1 ferry.ip=10.99.0.5/24",
        lab.cmdline
    ));
    m["spec"]["cloudInit"] = json!({
        "userDataSecretRef": {"name": "web-userdata"},
        "hostname": "seeded-1",
        "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaE2E e2e@ferry"]
    });
    c.apply::<VirtualMachine>(m).await;
    let vm = wait_vm(&c, "seeded", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let log = console(&lab, &ns, "seeded");
    lab::wait_for_console(
        &log,
        "FERRY-SEED-LINE user-data:   - echo ferry-e2e-first",
        BOOT,
    )
    .expect("the guest reads the user-data from the seed CD-ROM");
    let text = lab::console_log(&log);
    assert!(
        text.contains("FERRY-SEED-LINE meta-data: local-hostname: seeded-1"),
        "{text}"
    );
    assert!(
        text.contains("FERRY-SEED-LINE meta-data: - ssh-ed25519 AAAAC3NzaE2E e2e@ferry"),
        "{text}"
    );
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    assert!(
        text.contains(&format!("FERRY-SEED-LINE meta-data: instance-id: {uid}")),
        "{text}"
    );
    let first = seed_volumes(&lab);
    assert_eq!(first.len(), 1, "one seed volume: {first:?}");
    let st = vm.status.clone().expect("status");
    assert!(
        st.disks
            .iter()
            .any(|d| d.name == "cloudinit_seed" && d.volume == first[0]),
        "the seed is recorded: {:?}",
        st
    );
    let status_json = serde_json::to_string(&vm.status).unwrap_or_default();
    assert!(
        !status_json.contains("ferry-e2e-first"),
        "no user data in status"
    );
    // The guest agent's report: the IP printer column's source and the guest OS.
    let vm = wait_vm(
        &c,
        "seeded",
        "guest agent report",
        Duration::from_secs(180),
        |vm| {
            vm.status.as_ref().is_some_and(|s| {
                s.guest_os.is_some()
                    && s.interfaces.first().and_then(|i| i.ip_address.as_deref())
                        == Some("10.99.0.5")
            })
        },
    )
    .await;
    let st = vm.status.clone().expect("status");
    assert_eq!(st.guest_os.as_deref(), Some("ferry tiny guest (busybox)"));
    assert_eq!(st.interfaces[0].guest_name.as_deref(), Some("eth0"));
    let res = st.resources.clone().expect("resolved resources in status");
    assert_eq!(res.class_name, Some(format!("{ns}-tiny")));
    assert_eq!((res.cpus, res.memory.as_str()), (1, "128Mi"));

    // New data in the Secret: a new seed, RestartRequired, and the running guest keeps its seed.
    put_secret(
        &c,
        "web-userdata",
        &[(
            "userdata",
            b"#cloud-config\nruncmd:\n  - echo ferry-e2e-second\n",
        )],
    )
    .await;
    // And a bigger class: also only at the next restart.
    classes
        .patch(
            &format!("{ns}-tiny"),
            &PatchParams::apply("ferry-e2e").force(),
            &Patch::Apply(class("160Mi")),
        )
        .await
        .expect("apply class");
    let vm = wait_vm(
        &c,
        "seeded",
        "RestartRequired for new cloud-init data and class",
        Duration::from_secs(120),
        |vm| {
            condition(vm, "RestartRequired").is_some_and(|c| {
                c.status == "True"
                    && c.message.contains("cloud-init data changed")
                    && c.message
                        .contains("memory 128 MiB → 160 MiB (VirtualMachineClass")
            })
        },
    )
    .await;
    assert_eq!(
        vm.status
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .map(|r| r.memory.as_str()),
        Some("160Mi")
    );
    let both = seed_volumes(&lab);
    assert_eq!(both.len(), 2, "old seed kept while in use: {both:?}");
    assert!(
        vm.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(VmPhase::Running))
    );
    assert!(
        !lab::console_log(&log).contains("FERRY-BOOT 2"),
        "no reboot behind the user's back"
    );

    // Restart: the guest reads the new data; the replaced seed is removed.
    c.vms()
        .patch(
            "seeded",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"ferry.dev/restart": "seed-2"}}})),
        )
        .await
        .expect("restart");
    lab::wait_for_console(&log, "FERRY-AGENT-SHUTDOWN", BOOT)
        .expect("the restart asked the guest agent to shut the guest down");
    lab::wait_for_console(
        &log,
        "FERRY-SEED-LINE user-data:   - echo ferry-e2e-second",
        BOOT,
    )
    .expect("the restarted guest reads the new user-data");
    wait_vm(
        &c,
        "seeded",
        "RestartRequired cleared",
        Duration::from_secs(120),
        |vm| condition(vm, "RestartRequired").is_some_and(|c| c.status == "False"),
    )
    .await;
    wait_for("the replaced seed removed", Duration::from_secs(90), || {
        let v = seed_volumes(&lab);
        let first = first.clone();
        async move { (v.len() == 1 && v[0] != first[0]).then_some(()) }
    })
    .await;

    let info = lab
        .virsh(&lab.hosts[0].name, &["dominfo", &format!("{ns}_seeded")])
        .stdout;
    assert!(
        info.contains("163840 KiB"),
        "the class's new memory after the restart: {info}"
    );

    // Delete: domain, overlay and seed go.
    c.vms()
        .delete("seeded", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_vm_gone("seeded", Duration::from_secs(90)).await;
    assert!(domains(&lab).is_empty(), "domain undefined");
    assert!(
        seed_volumes(&lab).is_empty(),
        "seed removed: {:?}",
        seed_volumes(&lab)
    );
    classes
        .delete(&format!("{ns}-tiny"), &DeleteParams::default())
        .await
        .expect("delete class");
    drop(ctl);
}

/// A static HTTP server on loopback (Python's http.server) for the files in a temporary
/// directory; killed on drop.
struct HttpServer {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl HttpServer {
    fn start() -> HttpServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = std::process::Command::new("/usr/bin/python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start python3 -m http.server");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "HTTP server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        HttpServer { child, dir, port }
    }

    fn url(&self, file: &str) -> String {
        format!("http://127.0.0.1:{}/{file}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn image_volumes(lab: &lab::Lab) -> Vec<String> {
    let mut v: Vec<String> = volumes(lab)
        .into_iter()
        .filter(|v| v.starts_with("ferry-image-"))
        .collect();
    v.sort();
    v
}

fn http_vm(
    name: &str,
    lab: &lab::Lab,
    url: &str,
    sha256: &str,
    strategy: &str,
) -> serde_json::Value {
    let mut m = vm_manifest(name, "lab", lab, strategy);
    m["spec"]["disks"] = json!([{"name": "root", "http": {"url": url, "sha256": sha256}}]);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn image_imported_over_http_boots_and_is_shared() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(1).expect("lab host");
    let mut c = Cluster::new("ferry-e2e-import").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let ctl = c.controller("e2e-import");
    let ns = c.namespace.clone();
    c.apply::<ferry::api::HostPool>(pool_manifest("lab", &lab))
        .await;

    let server = HttpServer::start();
    let image =
        std::fs::read(std::path::Path::new(&lab.pool_dir).join(&lab.golden)).expect("golden");
    std::fs::write(server.dir.path().join("tiny.qcow2"), &image).expect("serve image");
    let sha = ferry::cloud_init::sha256_hex(&image);
    let url = server.url("tiny.qcow2");

    // Wrong checksum: a clear condition, nothing kept.
    let wrong = "0".repeat(64);
    c.apply::<VirtualMachine>(http_vm("wrongsum", &lab, &url, &wrong, "Always"))
        .await;
    let vm = wait_vm(
        &c,
        "wrongsum",
        "ChecksumMismatch",
        Duration::from_secs(120),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "ChecksumMismatch"),
    )
    .await;
    let msg = condition(&vm, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(msg.contains(&sha) && msg.contains("discarded"), "{msg}");
    assert!(
        image_volumes(&lab).is_empty(),
        "no volume left: {:?}",
        image_volumes(&lab)
    );
    // Unreachable URL: a clear condition too.
    c.apply::<VirtualMachine>(http_vm(
        "nowhere",
        &lab,
        "http://127.0.0.1:1/tiny.qcow2",
        &sha,
        "Always",
    ))
    .await;
    let vm = wait_vm(
        &c,
        "nowhere",
        "ImportFailed",
        Duration::from_secs(120),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "ImportFailed"),
    )
    .await;
    let msg = condition(&vm, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(msg.contains("127.0.0.1:1"), "{msg}");
    assert!(domains(&lab).is_empty(), "no domain: {:?}", domains(&lab));
    assert!(
        image_volumes(&lab).is_empty(),
        "no volume left: {:?}",
        image_volumes(&lab)
    );
    for name in ["wrongsum", "nowhere"] {
        c.vms()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
        c.wait_vm_gone(name, Duration::from_secs(60)).await;
    }

    // The right checksum: imported once, booted from an overlay on it.
    c.apply::<VirtualMachine>(http_vm("fromurl", &lab, &url, &sha, "Always"))
        .await;
    wait_vm(&c, "fromurl", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let log = console(&lab, &ns, "fromurl");
    lab::wait_for_console(&log, "FERRY-DISK FERRY-GOLDEN tiny v1", BOOT)
        .expect("the guest boots from the imported image");
    let imported = image_volumes(&lab);
    assert_eq!(
        imported,
        [
            format!("ferry-image-{sha}.img"),
            format!("ferry-image-{sha}.verified")
        ]
    );
    let stored =
        std::fs::read(std::path::Path::new(&lab.pool_dir).join(&imported[0])).expect("image");
    assert!(stored == image, "the stored image is the served file");

    // A second VM naming the same checksum shares it (defined, not booted, to spare the CPU).
    apply_placed(&c, http_vm("shared", &lab, &url, &sha, "Halted")).await;
    wait_vm(&c, "shared", "Stopped", Duration::from_secs(90), |vm| {
        vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Stopped)
    })
    .await;
    assert_eq!(image_volumes(&lab).len(), 2, "still one image");

    // Deleting one keeps the image for the other; deleting the last removes it.
    c.vms()
        .delete("fromurl", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_vm_gone("fromurl", Duration::from_secs(90)).await;
    assert_eq!(image_volumes(&lab).len(), 2, "kept while a VM uses it");
    c.vms()
        .delete("shared", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_vm_gone("shared", Duration::from_secs(90)).await;
    assert!(
        image_volumes(&lab).is_empty(),
        "removed after the last VM: {:?}",
        image_volumes(&lab)
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.client.clone(), &ns);
    let removed = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .any(|e| e.reason.as_deref() == Some("ImageRemoved"));
    assert!(removed, "an ImageRemoved Event");
    drop(server);
    drop(ctl);
}
