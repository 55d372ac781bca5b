//! End-to-end: the real `ferry controller` process against the cluster `KUBECONFIG` names and a
//! real libvirt lab host running real QEMU guests. Runs unchanged against a real cluster; in CI
//! `e2e/run.sh` points it at the in-repo API stand-in (see e2e/README.md for what that cannot
//! prove). Every wait is bounded; labs, processes and cluster objects are removed on drop.

#[path = "support/bmc.rs"]
mod bmc;
#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/lab.rs"]
mod lab;
#[path = "support/migration.rs"]
mod migration;

use cluster::{Cluster, wait_for};
use ferry::api::{VirtualMachine, VmPhase};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use migration::{LAB_HOST, TICK, is_terminal, start_migration, wait_migration};
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
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let vm = api.get(name).await.ok();
        if let Some(vm) = vm.as_ref().filter(|vm| f(vm)) {
            return vm.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for VM {name}: {what}; its status: {}",
            vm.and_then(|v| v.status)
                .and_then(|s| serde_json::to_string(&s).ok())
                .unwrap_or_else(|| "none".into())
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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

    // A clone of web's disk waits while web runs (its disk changes under a copy).
    let mut copy = vm_manifest("web-copy", "lab", &lab, "Always");
    copy["spec"]["disks"] =
        json!([{"name": "root", "clone": {"virtualMachine": "web", "disk": "root"}}]);
    c.apply::<VirtualMachine>(copy).await;
    let waiting = wait_vm(
        &c,
        "web-copy",
        "CloneSourceRunning",
        Duration::from_secs(60),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "CloneSourceRunning"),
    )
    .await;
    assert_eq!(
        waiting.status.as_ref().and_then(|s| s.phase),
        Some(VmPhase::Pending)
    );
    assert!(
        condition(&waiting, "Ready").is_some_and(|c| c.message.contains("stop it")),
        "{:?}",
        condition(&waiting, "Ready")
    );

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

    // web stopped: the clone gets a standalone copy of its disk and boots from web's data (the
    // boot counter on the disk goes on from web's first boot).
    let copied = wait_vm(&c, "web-copy", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let copy_volume = copied.status.as_ref().expect("status").disks[0]
        .volume
        .clone();
    assert_ne!(copy_volume, overlay);
    assert!(
        volumes(&lab).contains(&copy_volume),
        "copy {copy_volume} exists"
    );
    let copy_log = console(&lab, &ns, "web-copy");
    lab::wait_for_console(&copy_log, "FERRY-BOOT 2", BOOT).expect("the clone boots web's disk");
    c.vms()
        .delete("web-copy", &DeleteParams::default())
        .await
        .expect("delete the clone");
    c.wait_vm_gone("web-copy", Duration::from_secs(90)).await;
    assert!(
        !volumes(&lab).contains(&copy_volume),
        "the copy is removed with its VM"
    );
    assert!(volumes(&lab).contains(&overlay), "the source's disk stays");

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
    // Depending on whether the pool has already seen the host go (the lost connection wakes it
    // at once), the VM is not placed (NoHostAvailable: "1 libvirt unreachable") or is placed and
    // cannot be started (HostUnreachable).
    wait_vm(
        &c,
        "survivor",
        "HostUnreachable or NoHostAvailable naming the unreachable host",
        Duration::from_secs(60),
        |vm| {
            let why = condition(vm, "Ready")
                .map(|c| c.message.as_str())
                .unwrap_or_default();
            ready_reason(vm).is_some_and(|(_, r)| {
                r == "HostUnreachable" || (r == "NoHostAvailable" && why.contains("unreachable"))
            })
        },
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
    let before = pools.get("lab").await.expect("pool");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = pools.get("lab").await.expect("pool");
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "a steady HostPool is not rewritten; status before: {:?}\nafter: {:?}",
        before.status,
        after.status
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

/// How many times an Event about a HostPool with `reason` whose note contains `needle` was
/// recorded in the test namespace (a repeated Event is one object with a `series` count).
async fn pool_event_count(c: &Cluster, reason: &str, needle: &str) -> i32 {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(c.client.clone(), &c.namespace);
    events
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("HostPool")
                && e.note.as_deref().is_some_and(|n| n.contains(needle))
        })
        .map(|e| e.series.as_ref().map_or(1, |s| s.count.max(1)))
        .sum()
}

/// Highest `FERRY-TICK n` of a console log.
fn last_tick(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("FERRY-TICK "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// The controller (in the lab's client namespace, reaching hosts over TCP like a real one) and
/// three hosts; a VM runs on h1 and on h2. h2 is cut off the network: within the keepalive bound
/// (1 s × (2 + 1) = 3 s, plus at most 3 s for the reconcile and status write and the 250 ms
/// polling here) the pool shows it `Unreachable` with a Warning Event, a VM pinned to it waits
/// instead of being placed there, the other hosts stay `Ready`, and the guest on h1 keeps running
/// (ticks go on, one boot). Healed, h2 is `Ready` again, the waiting VM is placed there, and
/// h2's guest ran on through the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn partitioned_host_is_unreachable_then_ready() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(3).expect("three lab hosts");
    let mut c = Cluster::new("ferry-e2e-part").await;
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
    let ctl = c.controller_in_netns("e2e-part", &lab.client_netns);
    let (interval, count) = (1u64, 2u64);
    let bound = Duration::from_secs(interval * (count + 1));
    let margin = Duration::from_secs(3);
    let mut pool = pool_manifest("lab", &lab);
    pool["spec"]["libvirt"] = json!({
        "uriTemplate": "qemu+tcp://{address}/system", "connectTimeoutSeconds": 3,
        "keepaliveIntervalSeconds": interval, "keepaliveCount": count
    });
    c.apply::<ferry::api::HostPool>(pool).await;
    let pools = c.pools();
    let states = || {
        let pools = pools.clone();
        async move {
            let s = pools.get("lab").await.ok()?.status?;
            Some(
                s.hosts
                    .iter()
                    .map(|h| (h.name.clone(), h.state))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
        }
    };
    use ferry::api::HostState::{Ready, Unreachable};
    wait_for(
        "3 hosts Ready over TCP",
        Duration::from_secs(90),
        || async {
            let s = states().await?;
            (s.len() == 3 && s.values().all(|st| *st == Ready)).then_some(())
        },
    )
    .await;

    // One VM on h1, one on h2.
    for (vm, h) in [("on-h1", "h1"), ("on-h2", "h2")] {
        let mut m = vm_manifest(vm, "lab", &lab, "Always");
        m["spec"]["placement"] = json!({"nodeSelector": {LAB_HOST: h}});
        c.apply::<VirtualMachine>(m).await;
    }
    for vm in ["on-h1", "on-h2"] {
        wait_vm(&c, vm, "Ready", BOOT, |vm| {
            ready_reason(vm) == Some(("True".into(), "Running".into()))
        })
        .await;
        lab::wait_for_console(&console(&lab, &ns, vm), "FERRY-TICK 5", BOOT).expect("ticking");
    }
    let log1 = console(&lab, &ns, "on-h1");
    let log2 = console(&lab, &ns, "on-h2");

    // Cut h2 off.
    let ticks_before = last_tick(&lab::console_log(&log1));
    let t = std::time::Instant::now();
    lab.partition("h2").expect("partition h2");
    let others_disturbed = std::sync::Mutex::new(Vec::new());
    wait_for(
        "h2 Unreachable after the partition",
        Duration::from_secs(60),
        || {
            let seen = states();
            let others = &others_disturbed;
            async move {
                let s = seen.await?;
                for h in ["h1", "h3"] {
                    if s.get(&node(h)) != Some(&Ready)
                        && let Ok(mut o) = others.lock()
                    {
                        o.push(format!("{h}: {:?}", s.get(&node(h))));
                    }
                }
                (s.get(&node("h2")) == Some(&Unreachable)).then_some(())
            }
        },
    )
    .await;
    let detected = t.elapsed();
    eprintln!(
        "partition of h2 detected after {:.2}s (keepalive bound {:?})",
        detected.as_secs_f64(),
        bound
    );
    assert!(
        detected <= bound + margin,
        "Unreachable after {detected:?}, keepalive bound {bound:?} + {margin:?}"
    );
    let st = pools
        .get("lab")
        .await
        .expect("pool")
        .status
        .expect("status");
    let h2 = st.hosts.iter().find(|h| h.name == node("h2")).expect("h2");
    let msg = h2.message.clone().unwrap_or_default();
    assert!(msg.contains("keepalive"), "h2 message: {msg}");
    assert!(
        st.conditions.iter().any(|c| c.type_ == "Degraded"
            && c.status == "True"
            && c.message.contains(&node("h2"))),
        "{:?}",
        st.conditions
    );
    let unreachable_events = pool_event_count(&c, "HostUnreachable", &node("h2")).await;
    assert_eq!(unreachable_events, 1, "one HostUnreachable Event for h2");

    // A VM that may only run on h2 is not placed there while it is unreachable.
    let mut m = vm_manifest("wants-h2", "lab", &lab, "Halted");
    m["spec"]["placement"] = json!({"nodeSelector": {LAB_HOST: "h2"}});
    c.apply::<VirtualMachine>(m).await;
    let vm = wait_vm(
        &c,
        "wants-h2",
        "NoHostAvailable",
        Duration::from_secs(60),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "NoHostAvailable"),
    )
    .await;
    let why = condition(&vm, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(why.contains("unreachable"), "{why}");
    assert_eq!(host_of(&vm), None);

    // Heal: Ready again, the waiting VM goes to h2.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = std::time::Instant::now();
    lab.heal("h2").expect("heal h2");
    wait_for(
        "h2 Ready after healing",
        Duration::from_secs(90),
        || async {
            let s = states().await?;
            (s.len() == 3 && s.values().all(|st| *st == Ready)).then_some(())
        },
    )
    .await;
    eprintln!("h2 Ready {:.2}s after healing", t.elapsed().as_secs_f64());
    let vm = wait_vm(
        &c,
        "wants-h2",
        "placed on h2 after healing",
        Duration::from_secs(60),
        |vm| host_of(vm).is_some(),
    )
    .await;
    assert_eq!(host_of(&vm), Some(node("h2")));
    wait_for(
        "HostReady Event for h2 again",
        Duration::from_secs(30),
        || async { (pool_event_count(&c, "HostReady", &node("h2")).await >= 2).then_some(()) },
    )
    .await;
    let others = others_disturbed
        .lock()
        .map(|o| o.clone())
        .unwrap_or_default();
    assert!(others.is_empty(), "h1 and h3 stayed Ready: {others:?}");

    // The guests ran on: h1's never noticed, h2's was only cut off from the controller.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let text1 = lab::console_log(&log1);
    assert!(
        last_tick(&text1) > ticks_before + 5,
        "h1's guest kept ticking: {ticks_before} → {}",
        last_tick(&text1)
    );
    for (text, vm) in [(text1, "on-h1"), (lab::console_log(&log2), "on-h2")] {
        assert_eq!(
            text.matches("FERRY-BOOT ").count(),
            1,
            "{vm} booted once: {}",
            text.lines()
                .filter(|l| l.contains("BOOT"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    wait_vm(
        &c,
        "on-h2",
        "Running again",
        Duration::from_secs(60),
        |vm| ready_reason(vm) == Some(("True".into(), "Running".into())),
    )
    .await;

    for n in ["on-h1", "on-h2", "wants-h2"] {
        let _ = c.vms().delete(n, &DeleteParams::default()).await;
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
    drop(ctl);
}

/// Sum of the samples of `/metrics` whose name and labels start with `series`.
fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Create (or replace) Secret `name` with the files of `dir` (or the given pairs) as data.
async fn put_secret(c: &Cluster, name: &str, type_: &str, data: &[(&str, Vec<u8>)]) {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let api: Api<Secret> = Api::namespaced(c.client.clone(), &c.namespace);
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        type_: Some(type_.into()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.clone())))
                .collect(),
        ),
        ..Default::default()
    };
    let _ = api.delete(name, &DeleteParams::default()).await;
    api.create(&PostParams::default(), &secret)
        .await
        .expect("create Secret");
}

fn pki_files(dir: &std::path::Path) -> Vec<(&'static str, Vec<u8>)> {
    ["cacert.pem", "clientcert.pem", "clientkey.pem"]
        .into_iter()
        .map(|f| (f, std::fs::read(dir.join(f)).expect("lab PKI file")))
        .collect()
}

/// The state and message of the pool's only host, once it has one.
async fn only_host(c: &Cluster, pool: &str) -> Option<(ferry::api::HostState, String)> {
    let s = c.pools().get(pool).await.ok()?.status?;
    let h = s.hosts.first()?;
    Some((h.state, h.message.clone().unwrap_or_default()))
}

/// A lab host whose libvirtd takes TLS only with client certificates of the lab CA; the
/// controller in the lab's client namespace. Credentials come from Secrets: the lab client
/// certificate makes the host Ready (files written 0600); a client certificate from another CA,
/// a CA that does not sign the host's certificate, and a missing Secret each leave the host
/// Misconfigured with a message that says which, without a retry storm (counted on /metrics over
/// 30 s); a URI template that renders no valid URI and a selector that matches nothing are
/// reported too. Fixing a Secret (or creating the missing one) makes the host Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn tls_credentials_from_secrets() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let started = std::time::Instant::now();
    let lab = lab::Lab::up_tls(1).expect("a lab host with TLS");
    let pki = lab.pki_dir.clone().expect("the lab's PKI");
    let mut c = Cluster::new("ferry-e2e-tls").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let ctl = c.controller_in_netns("e2e-tls", &lab.client_netns);

    put_secret(&c, "tls-good", "Opaque", &pki_files(&pki.join("client"))).await;
    put_secret(&c, "tls-rogue", "Opaque", &pki_files(&pki.join("rogue"))).await;
    put_secret(
        &c,
        "tls-wrong-ca",
        "Opaque",
        &pki_files(&pki.join("wrong-ca")),
    )
    .await;
    let tls_pool = |name: &str, template: &str, secret: &str| {
        let mut p = pool_manifest(name, &lab);
        p["spec"]["libvirt"] = json!({
            "uriTemplate": template, "connectTimeoutSeconds": 5,
            "keepaliveIntervalSeconds": 2, "keepaliveCount": 3,
            "credentialsSecret": secret
        });
        p
    };
    let tls = "qemu+tls://{address}/system";
    for (pool, secret) in [
        ("good", "tls-good"),
        ("rogue", "tls-rogue"),
        ("wrong-ca", "tls-wrong-ca"),
        ("no-secret", "absent"),
    ] {
        c.apply::<ferry::api::HostPool>(tls_pool(pool, tls, secret))
            .await;
    }
    c.apply::<ferry::api::HostPool>(tls_pool(
        "bad-template",
        "qemu+tls://{address}/system?x={nodename}",
        "tls-good",
    ))
    .await;
    let mut nomatch = tls_pool("no-match", tls, "tls-good");
    nomatch["spec"]["nodeSelector"] = json!({"matchLabels": {"ferry.dev/e2e-none": "x"}});
    c.apply::<ferry::api::HostPool>(nomatch).await;

    use ferry::api::HostState::{Misconfigured, Ready};
    let expect = |pool: &'static str, state, needle: &'static str| {
        let c = &c;
        async move {
            wait_for(
                &format!("pool {pool}: host {state:?} with {needle:?}"),
                Duration::from_secs(60),
                || async {
                    only_host(c, pool)
                        .await
                        .filter(|(s, m)| *s == state && m.contains(needle))
                },
            )
            .await
        }
    };
    expect("good", Ready, "").await;
    let (_, m) = expect(
        "rogue",
        Misconfigured,
        "rejected ferry's TLS client certificate",
    )
    .await;
    eprintln!("rogue client certificate: {m}");
    assert!(m.contains("tls-rogue"), "names the Secret: {m}");
    let (_, m) = expect(
        "wrong-ca",
        Misconfigured,
        "host's TLS certificate was rejected",
    )
    .await;
    eprintln!("wrong CA: {m}");
    let (_, m) = expect("no-secret", Misconfigured, "does not exist").await;
    assert!(m.contains("absent"), "{m}");
    let (_, m) = expect("bad-template", Misconfigured, "unknown placeholder").await;
    eprintln!("bad template: {m}");
    let pools = c.pools();
    wait_for("no-match: NoHostsSelected", Duration::from_secs(60), || {
        let pools = pools.clone();
        async move {
            let s = pools.get("no-match").await.ok()?.status?;
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "NoHostsSelected")
                .then_some(())
        }
    })
    .await;
    let files: Vec<_> = std::fs::read_dir(ctl.pki_dir())
        .expect("credentials directory")
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().contains("tls-good"))
        .flat_map(|d| {
            std::fs::read_dir(d.path())
                .expect("Secret directory")
                .flatten()
        })
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        let mode = f.metadata().expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?}", f.path());
    }

    // No retry storm: the failing pools are probed on their 15 s period, connection attempts to
    // refused hosts back off.
    let (_, before) = ctl.http_get("/metrics").expect("metrics");
    let window = Duration::from_secs(30);
    tokio::time::sleep(window).await;
    let (_, after) = ctl.http_get("/metrics").expect("metrics");
    let delta = |series: &str| metric(&after, series) - metric(&before, series);
    let reconciles = delta("ferry_reconciles_total{controller=\"hostpool\"}");
    let connects = delta("ferry_libvirt_call_duration_seconds_count{operation=\"connect\"");
    eprintln!(
        "in {window:?}: {reconciles} HostPool reconciles (6 pools), {connects} connection attempts"
    );
    assert!(
        reconciles <= 6.0 * 3.0,
        "at most 3 reconciles per pool in 30 s: {reconciles}"
    );
    assert!(
        connects <= 2.0 * 3.0,
        "at most 3 attempts per refused pool in 30 s: {connects}"
    );

    // Fixed credentials are picked up at the next probe.
    put_secret(&c, "tls-rogue", "Opaque", &pki_files(&pki.join("client"))).await;
    put_secret(&c, "absent", "Opaque", &pki_files(&pki.join("client"))).await;
    for pool in ["rogue", "no-secret"] {
        wait_for(
            &format!("pool {pool} Ready with fixed credentials"),
            Duration::from_secs(60),
            || async { only_host(&c, pool).await.filter(|(s, _)| *s == Ready) },
        )
        .await;
    }
    eprintln!(
        "tls_credentials_from_secrets took {:.0}s",
        started.elapsed().as_secs_f64()
    );
    drop(ctl);
}

/// A lab host with an sshd whose sessions reach its libvirtd; the controller in the lab's client
/// namespace. SSH keys come from `kubernetes.io/ssh-auth` Secrets: with `qemu+libssh` the key and
/// `known_hosts` make the host Ready (files written 0600); a key the host refuses and a
/// known_hosts with the wrong host key leave it Misconfigured saying which; `known_hosts` with
/// `qemu+ssh` (whose ssh program ignores it) is refused; `qemu+ssh` with the key alone works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn ssh_keys_from_secrets() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let started = std::time::Instant::now();
    let lab = lab::Lab::up_ssh(1).expect("a lab host with sshd");
    let keys = lab.ssh_dir.clone().expect("the lab's SSH keys");
    let mut c = Cluster::new("ferry-e2e-ssh").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let ctl = c.controller_in_netns("e2e-ssh", &lab.client_netns);
    let file = |f: &str| std::fs::read(keys.join(f)).expect("lab SSH file");
    let ssh_auth = "kubernetes.io/ssh-auth";
    put_secret(
        &c,
        "ssh-good",
        ssh_auth,
        &[
            ("ssh-privatekey", file("client")),
            ("known_hosts", file("known_hosts")),
        ],
    )
    .await;
    put_secret(
        &c,
        "ssh-other-key",
        ssh_auth,
        &[
            ("ssh-privatekey", file("other")),
            ("known_hosts", file("known_hosts")),
        ],
    )
    .await;
    put_secret(
        &c,
        "ssh-wrong-host",
        ssh_auth,
        &[
            ("ssh-privatekey", file("client")),
            ("known_hosts", file("known_hosts.wrong")),
        ],
    )
    .await;
    put_secret(
        &c,
        "ssh-key-only",
        ssh_auth,
        &[("ssh-privatekey", file("client"))],
    )
    .await;
    let libssh = "qemu+libssh://root@{address}/system";
    for (pool, template, secret) in [
        ("good", libssh, "ssh-good"),
        ("other-key", libssh, "ssh-other-key"),
        ("wrong-host", libssh, "ssh-wrong-host"),
        (
            "ssh-known-hosts",
            "qemu+ssh://root@{address}/system",
            "ssh-good",
        ),
        // The ssh program with the key alone; it records the host key under the controller's
        // $HOME (a test directory here).
        (
            "ssh-program",
            "qemu+ssh://root@{address}/system?no_verify=1",
            "ssh-key-only",
        ),
    ] {
        let mut p = pool_manifest(pool, &lab);
        p["spec"]["libvirt"] = json!({
            "uriTemplate": template, "connectTimeoutSeconds": 10,
            "credentialsSecret": secret
        });
        c.apply::<ferry::api::HostPool>(p).await;
    }
    use ferry::api::HostState::{Misconfigured, Ready};
    for (pool, state, needle) in [
        ("good", Ready, ""),
        ("ssh-program", Ready, ""),
        ("other-key", Misconfigured, "refused the SSH key"),
        ("wrong-host", Misconfigured, "SSH host key"),
        ("ssh-known-hosts", Misconfigured, "qemu+libssh://"),
    ] {
        let (_, m) = wait_for(
            &format!("pool {pool}: host {state:?} with {needle:?}"),
            Duration::from_secs(90),
            || async {
                only_host(&c, pool)
                    .await
                    .filter(|(s, m)| *s == state && m.contains(needle))
            },
        )
        .await;
        eprintln!("{pool}: {state:?} {m}");
    }
    let dir = std::fs::read_dir(ctl.pki_dir())
        .expect("credentials directory")
        .flatten()
        .find(|d| d.file_name().to_string_lossy().contains("ssh-good"))
        .expect("ssh-good's directory")
        .path();
    for f in ["ssh-privatekey", "known_hosts"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(f))
            .expect(f)
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    eprintln!(
        "ssh_keys_from_secrets took {:.0}s",
        started.elapsed().as_secs_f64()
    );
    drop(ctl);
}
// ---- Live migration ----

/// `n` lab hosts as Nodes of one pool whose hosts migrate to each other over TCP, `policy`
/// as the pool's migration policy, and a controller.
async fn migration_lab(
    prefix: &str,
    n: usize,
    policy: serde_json::Value,
) -> (lab::Lab, Cluster, cluster::ControllerProcess) {
    // The lab hosts have 2 CPUs; the tiny guests are mostly idle.
    let pool = |lab: &lab::Lab| {
        let mut p = pool_manifest("lab", lab);
        p["spec"]["capacity"] = json!({"cpuOvercommit": "4"});
        p
    };
    migration::migration_lab(prefix, n, LABEL, pool, policy).await
}

fn ticking_vm(name: &str, lab: &lab::Lab) -> serde_json::Value {
    let mut vm = vm_manifest(name, "lab", lab, "Always");
    vm["spec"]["boot"]["cmdline"] = json!(format!("{} {TICK}", lab.cmdline));
    vm
}

/// How many times the guest booted, by its console.
fn boots(text: &str) -> usize {
    text.lines().filter(|l| l.contains("FERRY-BOOT ")).count()
}

/// The lab host name (`h1`) of a Node name (`<ns>-h1`).
fn lab_host(node: &str) -> String {
    node.rsplit('-').next().unwrap_or_default().to_string()
}

/// Whether `host` has the domain, and whether it runs there.
fn domain_on(lab: &lab::Lab, host: &str, domain: &str) -> (bool, bool) {
    let out = lab.virsh(host, &["domstate", domain]);
    (out.success(), out.stdout.trim() == "running")
}

/// Wait until the console shows ticks past `after`.
async fn ticks_past(path: &std::path::Path, after: u64) -> u64 {
    wait_for(
        &format!("console ticks past {after}"),
        Duration::from_secs(60),
        || async move { Some(last_tick(&lab::console_log(path))).filter(|t| *t > after + 5) },
    )
    .await
}

/// A running guest moves to the other host and back (the second time to a named target): it
/// keeps counting, never reboots, the source keeps no definition, status shows where it runs,
/// the migration's timings and the VM's Migrating condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn live_migration_moves_a_running_guest() {
    use ferry::api::MigrationPhase::*;
    assert!(cluster::enabled(), "set FERRY_E2E=1 and KUBECONFIG");
    let (lab, c, _ctl) = migration_lab("ferry-e2e-mig", 2, json!({})).await;
    let ns = c.namespace.clone();
    let domain = format!("{ns}_mover");
    c.apply::<VirtualMachine>(ticking_vm("mover", &lab)).await;
    let vm = wait_vm(&c, "mover", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let src = host_of(&vm).expect("host");
    let path = console(&lab, &ns, "mover");
    let before = ticks_past(&path, 0).await;

    for (round, target) in [(1, None), (2, Some(src.clone()))] {
        let name = format!("mover-{round}");
        let from = host_of(&c.vms().get("mover").await.expect("vm")).expect("host");
        start_migration(&c, &name, "mover", target.as_deref()).await;
        let st = wait_migration(&c, &name, "Succeeded", Duration::from_secs(240), |s| {
            is_terminal(s)
        })
        .await;
        assert_eq!(st.phase, Some(Succeeded), "{st:?}");
        let to = st.target.clone().expect("target");
        eprintln!(
            "round {round}: {from} -> {to}, downtime {:?} ms, {:?} bytes, {}",
            st.downtime_ms,
            st.data_transferred_bytes,
            st.message.clone().unwrap_or_default()
        );
        assert_eq!(st.source.as_deref(), Some(from.as_str()));
        assert_ne!(to, from);
        if let Some(t) = &target {
            assert_eq!(&to, t, "the named target");
        }
        assert!(st.start_time.is_some() && st.end_time.is_some(), "{st:?}");
        assert!(st.downtime_ms.is_some_and(|d| d >= 0), "{st:?}");
        assert!(st.data_transferred_bytes.is_some_and(|b| b > 0), "{st:?}");
        let vm = wait_vm(
            &c,
            "mover",
            "on its new host",
            Duration::from_secs(60),
            |vm| {
                host_of(vm).as_deref() == Some(to.as_str())
                    && vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Running)
                    && vm
                        .status
                        .as_ref()
                        .and_then(|s| s.migration.as_ref())
                        .is_some_and(|m| m.name == name && m.phase == Some(Succeeded))
            },
        )
        .await;
        let migrating = condition(&vm, "Migrating").expect("Migrating condition");
        assert_eq!(
            (migrating.status.as_str(), migrating.reason.as_str()),
            ("False", "Migrated")
        );
        assert_eq!(ready_reason(&vm), Some(("True".into(), "Running".into())));
        assert_eq!(
            domain_on(&lab, &lab_host(&to), &domain),
            (true, true),
            "running on the target"
        );
        assert!(
            !domain_on(&lab, &lab_host(&from), &domain).0,
            "nothing left on the source"
        );
        let now = ticks_past(&path, before).await;
        let text = lab::console_log(&path);
        assert_eq!(boots(&text), 1, "never rebooted:\n{text}");
        assert!(now > before);
    }
}

/// Slow (bandwidth-limited) migrations that are cancelled, lose their destination's libvirtd,
/// or lose the destination to a partition: each ends Cancelled or Failed with a reason, the
/// guest keeps running on its source without a reboot, and nothing is left on the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn interrupted_migrations_leave_the_vm_on_its_source() {
    use ferry::api::MigrationPhase::*;
    assert!(cluster::enabled(), "set FERRY_E2E=1 and KUBECONFIG");
    let (lab, c, _ctl) = migration_lab("ferry-e2e-migfail", 2, json!({"bandwidthMiBps": 1})).await;
    let ns = c.namespace.clone();
    let domain = format!("{ns}_stay");
    c.apply::<VirtualMachine>(ticking_vm("stay", &lab)).await;
    let vm = wait_vm(&c, "stay", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let src = host_of(&vm).expect("host");
    let src_lab = lab_host(&src);
    let dst_lab = if src_lab == "h1" { "h2" } else { "h1" }.to_string();
    let path = console(&lab, &ns, "stay");
    let mut tick = ticks_past(&path, 0).await;

    let running = |s: &ferry::api::VirtualMachineMigrationStatus| {
        s.phase == Some(Running) && s.data_transferred_bytes.is_some_and(|b| b > 0)
    };
    for (name, how) in [("cancel", "cancel"), ("kill", "kill"), ("cut", "partition")] {
        start_migration(&c, name, "stay", None).await;
        wait_migration(&c, name, "transferring", Duration::from_secs(120), running).await;
        let t = std::time::Instant::now();
        match how {
            "cancel" => {
                c.migrations()
                    .delete(name, &DeleteParams::default())
                    .await
                    .expect("delete migration");
                let api = c.migrations();
                wait_for("cancelled migration gone", Duration::from_secs(60), || {
                    let api = api.clone();
                    async move { api.get_opt(name).await.ok()?.is_none().then_some(()) }
                })
                .await;
            }
            "kill" => {
                lab.kill_libvirtd(&dst_lab)
                    .expect("kill the destination's libvirtd");
                let st =
                    wait_migration(&c, name, "ended", Duration::from_secs(120), is_terminal).await;
                assert_eq!(st.phase, Some(Failed), "{st:?}");
                assert!(
                    st.message
                        .as_deref()
                        .is_some_and(|m| m.contains(&src_lab) || m.contains(&src)),
                    "{st:?}"
                );
                lab.start_libvirtd(&dst_lab)
                    .expect("restart the destination's libvirtd");
            }
            _ => {
                lab.partition(&dst_lab).expect("partition the destination");
                let st =
                    wait_migration(&c, name, "ended", Duration::from_secs(180), is_terminal).await;
                assert_eq!(st.phase, Some(Failed), "{st:?}");
                lab.heal(&dst_lab).expect("heal");
            }
        }
        eprintln!(
            "{how}: ended {:.1}s after the interruption",
            t.elapsed().as_secs_f64()
        );
        let vm = wait_vm(
            &c,
            "stay",
            "Running on its source",
            Duration::from_secs(90),
            |vm| {
                vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Running)
                    && ready_reason(vm) == Some(("True".into(), "Running".into()))
            },
        )
        .await;
        assert_eq!(
            host_of(&vm),
            Some(src.clone()),
            "{how}: still on the source"
        );
        assert_eq!(domain_on(&lab, &src_lab, &domain), (true, true), "{how}");
        wait_for(
            &format!("{how}: no leftover on the destination"),
            Duration::from_secs(90),
            || {
                let out = lab.virsh(&dst_lab, &["list", "--all", "--name"]);
                let gone = out.success() && !out.stdout.contains(&domain);
                async move { gone.then_some(()) }
            },
        )
        .await;
        tick = ticks_past(&path, tick).await;
        assert_eq!(boots(&lab::console_log(&path)), 1, "{how}: never rebooted");
    }
}

/// The controller is killed while a slow migration runs; its successor asks both hosts and
/// converges: the migration gets a final phase, exactly one copy runs, and the VM's status
/// names the host it runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn a_controller_killed_mid_migration_converges() {
    use ferry::api::MigrationPhase::*;
    assert!(cluster::enabled(), "set FERRY_E2E=1 and KUBECONFIG");
    let (lab, c, mut ctl) =
        migration_lab("ferry-e2e-migkill", 2, json!({"bandwidthMiBps": 4})).await;
    let ns = c.namespace.clone();
    let domain = format!("{ns}_phoenix");
    c.apply::<VirtualMachine>(ticking_vm("phoenix", &lab)).await;
    wait_vm(&c, "phoenix", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let path = console(&lab, &ns, "phoenix");
    let tick = ticks_past(&path, 0).await;
    start_migration(&c, "m", "phoenix", None).await;
    wait_migration(&c, "m", "transferring", Duration::from_secs(120), |s| {
        s.phase == Some(Running) && s.data_transferred_bytes.is_some_and(|b| b > 0)
    })
    .await;
    ctl.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _successor = c.controller("ferry-e2e-migkill-2");
    let st = wait_migration(&c, "m", "ended", Duration::from_secs(240), is_terminal).await;
    eprintln!("after the restart: {:?} {:?}", st.phase, st.message);
    assert!(matches!(st.phase, Some(Succeeded | Failed)), "{st:?}");
    let expected = if st.phase == Some(Succeeded) {
        st.target.clone().expect("target")
    } else {
        st.source.clone().expect("source")
    };
    let vm = wait_vm(
        &c,
        "phoenix",
        "its true host",
        Duration::from_secs(90),
        |vm| {
            host_of(vm).as_deref() == Some(expected.as_str())
                && ready_reason(vm) == Some(("True".into(), "Running".into()))
        },
    )
    .await;
    let copies: Vec<String> = lab
        .hosts
        .iter()
        .filter(|h| domain_on(&lab, &h.name, &domain).1)
        .map(|h| h.name.clone())
        .collect();
    assert_eq!(
        copies,
        vec![lab_host(&expected)],
        "exactly one running copy: {vm:?}"
    );
    ticks_past(&path, tick).await;
    assert_eq!(boots(&lab::console_log(&path)), 1, "never rebooted");
}

/// Set or clear the maintenance annotation of a Node.
async fn maintenance(c: &Cluster, node: &str, on: bool) {
    let value = if on { json!("true") } else { json!(null) };
    Api::<k8s_openapi::api::core::v1::Node>::all(c.client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"ferry.dev/maintenance": value}}}),
            ),
        )
        .await
        .expect("annotate Node");
}

/// The most migrations that ran at once, from their start and end times.
fn max_overlap(spans: &[(i64, i64)]) -> usize {
    spans
        .iter()
        .map(|(s, e)| spans.iter().filter(|(s2, e2)| *s2 < *e && *s < *e2).count())
        .max()
        .unwrap_or(0)
}

/// A host put into maintenance is emptied by live migration within the pool's limit of 2 at a
/// time (checked on the migrations' recorded timeline), a VM that may not move is reported by
/// name and keeps running; ending a second evacuation early withdraws its queued migrations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn maintenance_evacuates_a_host_within_the_limits() {
    use ferry::api::MigrationPhase::*;
    assert!(cluster::enabled(), "set FERRY_E2E=1 and KUBECONFIG");
    let (lab, c, _ctl) = migration_lab(
        "ferry-e2e-evac",
        2,
        json!({"maxParallel": 2, "maxOutboundPerHost": 2, "maxInboundPerHost": 2}),
    )
    .await;
    let ns = c.namespace.clone();
    let (h1, h2) = (format!("{ns}-h1"), format!("{ns}-h2"));
    // Everything starts on h1.
    c.cordon(&h2, true).await;
    let names: Vec<String> = (1..=4).map(|i| format!("web-{i}")).collect();
    for n in &names {
        c.apply::<VirtualMachine>(vm_manifest(n, "lab", &lab, "Always"))
            .await;
    }
    let mut pinned = vm_manifest("pinned", "lab", &lab, "Always");
    pinned["spec"]["evictionStrategy"] = json!("None");
    c.apply::<VirtualMachine>(pinned).await;
    for n in names.iter().chain(std::iter::once(&"pinned".to_string())) {
        let vm = wait_vm(&c, n, "Ready", 2 * BOOT, |vm| {
            ready_reason(vm) == Some(("True".into(), "Running".into()))
        })
        .await;
        assert_eq!(host_of(&vm), Some(h1.clone()));
    }
    c.cordon(&h2, false).await;

    let t = std::time::Instant::now();
    maintenance(&c, &h1, true).await;
    let pools = c.pools();
    let evacuating = |reason: &'static str| {
        let pools = pools.clone();
        async move {
            let p = pools.get("lab").await.ok()?;
            let cond = p
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Evacuating" && c.reason == reason)?;
            Some(cond.message)
        }
    };
    let msg = wait_for(
        "h1 emptied but for the VM that may not move",
        Duration::from_secs(400),
        || evacuating("Blocked"),
    )
    .await;
    eprintln!("evacuated in {:.1}s: {msg}", t.elapsed().as_secs_f64());
    assert!(!msg.contains("web-"), "{msg}");
    assert!(msg.contains("pinned (evictionStrategy None)"), "{msg}");
    for n in &names {
        let vm = wait_vm(&c, n, "moved to h2", Duration::from_secs(60), |vm| {
            host_of(vm).as_deref() == Some(h2.as_str())
        })
        .await;
        assert_eq!(ready_reason(&vm), Some(("True".into(), "Running".into())));
    }
    let pinned = c.vms().get("pinned").await.expect("pinned");
    assert_eq!(
        host_of(&pinned),
        Some(h1.clone()),
        "evictionStrategy None stays"
    );
    assert_eq!(
        ready_reason(&pinned),
        Some(("True".into(), "Running".into()))
    );
    // The timeline: never more than 2 at once.
    let list = c
        .migrations()
        .list(&Default::default())
        .await
        .expect("list");
    let mut spans = Vec::new();
    for m in &list.items {
        let s = m.status.clone().expect("status");
        assert_eq!(s.phase, Some(Succeeded), "{}: {s:?}", m.name_any());
        let start = s.start_time.expect("start").0.as_second();
        let end = s.end_time.expect("end").0.as_second();
        eprintln!("{}: {start}..{end}", m.spec.vm_name);
        spans.push((start, end));
    }
    assert_eq!(spans.len(), 4, "one migration per movable VM");
    assert!(max_overlap(&spans) <= 2, "at most 2 at once: {spans:?}");
    assert!(max_overlap(&spans) >= 1);

    // A second evacuation, back to h1, one at a time and slowly; ended while the first runs.
    let mut pool = c.pools().get("lab").await.expect("pool");
    let mut policy = pool.spec.migration.clone().expect("policy");
    policy.max_parallel = Some(1);
    policy.bandwidth_mi_bps = Some(2);
    pool.spec.migration = Some(policy);
    c.pools()
        .patch(
            "lab",
            &PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"migration": pool.spec.migration}})),
        )
        .await
        .expect("patch pool");
    c.migrations()
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .expect("clear migrations");
    maintenance(&c, &h1, false).await;
    maintenance(&c, &h2, true).await;
    let api = c.migrations();
    wait_for(
        "one evacuation migration running",
        Duration::from_secs(120),
        || {
            let api = api.clone();
            async move {
                let l = api.list(&Default::default()).await.ok()?;
                (l.items.len() == 4
                    && l.items
                        .iter()
                        .any(|m| m.status.as_ref().and_then(|s| s.phase) == Some(Running)))
                .then_some(())
            }
        },
    )
    .await;
    maintenance(&c, &h2, false).await;
    wait_for(
        "queued migrations withdrawn, the running one finished",
        Duration::from_secs(240),
        || {
            let api = api.clone();
            async move {
                let l = api.list(&Default::default()).await.ok()?;
                (l.items.len() == 1
                    && l.items
                        .iter()
                        .all(|m| m.status.as_ref().and_then(|s| s.phase) == Some(Succeeded)))
                .then_some(())
            }
        },
    )
    .await;
    // Only the migration already running completed: 3 VMs stay on h2, one moved back to h1.
    let vms = c.vms();
    let names_ref = &names;
    let h2_ref = &h2;
    wait_for(
        "3 VMs on h2, 1 on h1, all Ready",
        Duration::from_secs(90),
        || {
            let vms = vms.clone();
            async move {
                let mut on_h2 = 0;
                for name in names_ref {
                    let vm = vms.get(name).await.ok()?;
                    if ready_reason(&vm) != Some(("True".into(), "Running".into())) {
                        return None;
                    }
                    if host_of(&vm).as_deref() == Some(h2_ref.as_str()) {
                        on_h2 += 1;
                    }
                }
                (on_h2 == 3).then_some(())
            }
        },
    )
    .await;
    wait_for("pool shows no evacuation", Duration::from_secs(60), || {
        evacuating("NoEvacuation")
    })
    .await;
}

/// With storage that is not shared (each host's own pool directory), a live migration copies the
/// VM's disk to the target: the guest's boot counter, kept on its disk, reads 2 after a restart
/// on the target, and the source keeps neither domain nor disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn migration_copies_local_disks() {
    use ferry::api::MigrationPhase::*;
    assert!(cluster::enabled(), "set FERRY_E2E=1 and KUBECONFIG");
    let (lab, c, _ctl) = migration_lab("ferry-e2e-migdisk", 2, json!({})).await;
    let ns = c.namespace.clone();
    // /var/lib/libvirt is private to each lab host: a pool there is local storage.
    let local = "/var/lib/libvirt/images/ferry-local";
    let golden = lab.golden_path();
    for h in &lab.hosts {
        let golden_copy = format!("{local}/{}", lab.golden);
        for cmd in [
            vec!["mkdir", "-p", local],
            vec!["cp", &golden.to_string_lossy(), &golden_copy],
        ] {
            let out = lab.exec_in_host(&h.name, &cmd);
            assert!(out.success(), "{}: {cmd:?}: {}", h.name, out.stderr);
        }
    }
    c.pools()
        .patch(
            "lab",
            &PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"spec": {"storage": {"pool": "ferry-local", "path": local, "shared": false}}}),
            ),
        )
        .await
        .expect("local storage");
    let pools = c.pools();
    wait_for(
        "the controller sees the new storage",
        Duration::from_secs(60),
        || {
            let pools = pools.clone();
            async move {
                let p = pools.get("lab").await.ok()?;
                (p.status?.observed_generation == p.metadata.generation).then_some(())
            }
        },
    )
    .await;
    c.apply::<VirtualMachine>(ticking_vm("disky", &lab)).await;
    let vm = wait_vm(&c, "disky", "Ready with its disk", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
            && vm.status.as_ref().is_some_and(|s| !s.disks.is_empty())
    })
    .await;
    eprintln!("{:?}", vm.status.as_ref().map(|s| &s.disks));
    let from = host_of(&vm).expect("host");
    let volume = vm
        .status
        .as_ref()
        .and_then(|s| s.disks.first())
        .map(|d| d.volume.clone())
        .expect("overlay volume");
    let path = console(&lab, &ns, "disky");
    lab::wait_for_console(&path, "FERRY-BOOT 1", Duration::from_secs(120)).expect("first boot");
    ticks_past(&path, 0).await;
    start_migration(&c, "copy", "disky", None).await;
    let st = wait_migration(&c, "copy", "ended", Duration::from_secs(300), is_terminal).await;
    assert_eq!(st.phase, Some(Succeeded), "{st:?}");
    assert_eq!(st.storage.as_deref(), Some("Copied"));
    let to = st.target.clone().expect("target");
    eprintln!(
        "disk migration: {:?} bytes, downtime {:?} ms, {}",
        st.data_transferred_bytes,
        st.downtime_ms,
        st.message.clone().unwrap_or_default()
    );
    wait_vm(
        &c,
        "disky",
        "on the target",
        Duration::from_secs(60),
        |vm| host_of(vm).as_deref() == Some(to.as_str()),
    )
    .await;
    let has_volume = |host: &str| {
        lab.virsh(host, &["vol-list", "ferry-local"])
            .stdout
            .contains(&volume)
    };
    assert!(has_volume(&lab_host(&to)), "the disk is on the target");
    assert!(
        !has_volume(&lab_host(&from)),
        "the source's copy is removed"
    );
    // Restart on the target: the counter on the copied disk goes on from 1.
    c.vms()
        .patch(
            "disky",
            &PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"ferry.dev/restart": "after-copy"}}}),
            ),
        )
        .await
        .expect("restart");
    lab::wait_for_console(&path, "FERRY-BOOT 2", Duration::from_secs(180))
        .expect("second boot reads the counter from the copied disk");
    let vm = wait_vm(&c, "disky", "Ready again", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    assert_eq!(host_of(&vm), Some(to));
}

/// What [`ha_setup`] returns: the cluster, the lab, the Node names of h1 and h2, the controller.
type HaSetup = (
    Cluster,
    lab::Lab,
    String,
    String,
    cluster::ControllerProcess,
);

/// Two lab hosts, a HostPool whose Node template picks each host's socket, an HAPolicy with short
/// graces, and `names` VMs running on h1 (h2 cordoned while they are placed). Returns the cluster,
/// the lab and the Node names.
async fn ha_setup(
    prefix: &str,
    fencing: Option<serde_json::Value>,
    names: &[(&str, Option<&str>)],
    max_concurrent: u32,
) -> HaSetup {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(2).expect("two lab hosts");
    let mut c = Cluster::new(prefix).await;
    let ns = c.namespace.clone();
    let (h1, h2) = (format!("{ns}-h1"), format!("{ns}-h2"));
    for h in &lab.hosts {
        c.add_node_with_labels(
            &format!("{ns}-{}", h.name),
            &h.ip,
            &[(LABEL, "true"), (LAB_HOST, &h.name)],
        )
        .await;
    }
    c.cordon(&h2, true).await;
    let ctl = c.controller(prefix);
    let template = lab.hosts[0]
        .unix_uri
        .replace("/h1/run/", &format!("/{{label:{LAB_HOST}}}/run/"));
    let mut pool = pool_manifest("lab", &lab);
    pool["spec"]["libvirt"]["uriTemplate"] = json!(template);
    pool["spec"]["capacity"] = json!({"cpuOvercommit": "8"});
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
    c.cordon(&h2, false).await;
    let policies: Api<ferry::api::HAPolicy> = Api::namespaced(c.client.clone(), &ns);
    wait_for("both hosts Healthy", Duration::from_secs(60), || {
        let p = policies.clone();
        async move {
            let s = p.get("ha").await.ok()?.status?;
            (s.hosts.len() == 2
                && s.hosts
                    .iter()
                    .all(|h| h.verdict == ferry::api::ha_policy::HostVerdict::Healthy))
            .then_some(())
        }
    })
    .await;
    (c, lab, h1, h2, ctl)
}

/// The HAPolicy `ha` of the HA tests: the lab pool, short graces, `extra` merged into its spec.
fn ha_policy(max_concurrent: u32, extra: serde_json::Value) -> serde_json::Value {
    let mut policy = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HAPolicy",
        "metadata": {"name": "ha"},
        "spec": {"hostPools": ["lab"], "notReadyGraceSeconds": 5,
                 "libvirtUnreachableGraceSeconds": 3, "maxConcurrentRestarts": max_concurrent,
                 "priorityClasses": [{"name": "high", "value": 100}]}
    });
    if let (Some(spec), Some(extra)) = (policy["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    policy
}

/// Domains running on a lab host.
fn running(lab: &lab::Lab, host: &str) -> Vec<String> {
    lab.virsh(host, &["list", "--name"])
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// [`ha_setup`] with IPMI fencing through [`attach_ipmi`]'s BMC (whose Secret holds `password`).
async fn ha_setup_with_ipmi(
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
fn ipmi_power_off(sim: &bmc::IpmiSim) {
    ipmi_power(sim, "off");
}

/// `ipmitool chassis power <action>` against the BMC.
fn ipmi_power(sim: &bmc::IpmiSim, action: &str) {
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
fn ipmi_fencing() -> serde_json::Value {
    json!({"driver": "IPMI", "addressTemplate": "ipmi://{annotation:ferry.dev/e2e-bmc}",
           "credentialsSecret": "bmc", "requestTimeoutSeconds": 3, "confirmTimeoutSeconds": 10})
}

/// An IPMI BMC (ipmi_sim, user admin, password s3cret) for h1 whose power-off kills the lab
/// host, the Secret `bmc` with `password`, and each Node's BMC annotation (h2's points at a port
/// where nothing answers).
async fn attach_ipmi(
    c: &Cluster,
    lab: &lab::Lab,
    h1: &str,
    h2: &str,
    password: &str,
) -> bmc::IpmiSim {
    let sim = bmc::IpmiSim::start("admin", "s3cret", &lab.power_off_command("h1"), false);
    put_bmc_password(c, password).await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.client.clone());
    let addr = sim.address().trim_start_matches("ipmi://").to_string();
    for (n, a) in [(h1, addr.clone()), (h2, "127.0.0.1:9".to_string())] {
        nodes
            .patch(
                n,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"ferry.dev/e2e-bmc": a}}})),
            )
            .await
            .expect("annotate Node");
    }
    sim
}

/// Creates or replaces the Secret `bmc` (username admin).
async fn put_bmc_password(c: &Cluster, password: &str) {
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

/// Waits for `vm-high` and then `vm-low` (see [`ha_setup`]) to run on `h2` after a fence of
/// `h1`, checks each `lastRecovery`, and returns when `vm-high` ran and when `vm-low` was handed
/// over (with one restart at a time, the first is not after the second).
async fn wait_restarted_by_priority(
    c: &Cluster,
    h1: &str,
    h2: &str,
) -> (k8s_openapi::jiff::Timestamp, k8s_openapi::jiff::Timestamp) {
    let mut times = Vec::new();
    for name in ["vm-high", "vm-low"] {
        let vm = wait_vm(c, name, "Running on h2 after failover", BOOT, |vm| {
            host_of(vm).as_deref() == Some(h2)
                && ready_reason(vm) == Some(("True".into(), "Running".into()))
        })
        .await;
        let r = vm
            .status
            .and_then(|s| s.last_recovery)
            .expect("lastRecovery");
        assert_eq!(r.from_host, h1);
        assert_eq!(r.evidence, "Fenced");
        assert_eq!(r.to_host.as_deref(), Some(h2));
        times.push((
            r.replaced.expect("replaced").0,
            r.running.expect("running").0,
        ));
    }
    (times[0].1, times[1].0)
}

/// Host power loss with a real IPMI BMC (ipmi_sim): the BMC's power-off kills the lab host's
/// QEMU guests and libvirtd; ferry sees libvirt gone and the BMC reporting Off, fences (confirmed
/// Off), and the VMs restart on the survivor, higher priority first, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn ha_power_loss_fences_and_restarts_elsewhere_once() {
    // The BMC's power-off hook needs the lab, so it is attached once the lab is up.
    let ((mut c, lab, h1, h2, ctl), sim) = ha_setup_with_ipmi(
        "ferry-e2e-ha-fence",
        &[("vm-low", None), ("vm-high", Some("high"))],
        1,
        "s3cret",
    )
    .await;
    let ns = c.namespace.clone();

    // Power loss: the BMC cuts power (its hook kills h1's guests and libvirtd), kubelet goes
    // silent.
    let lost = std::time::Instant::now();
    ipmi_power_off(&sim);
    assert!(!sim.power_on());
    c.node_not_ready(&h1).await;

    let order = wait_restarted_by_priority(&c, &h1, &h2).await;
    eprintln!(
        "power loss -> both VMs Running on h2 (status seen) after {:.1}s",
        lost.elapsed().as_secs_f64()
    );
    // Exactly once: both domains run on h2, none anywhere else (h1's libvirtd is dead, its QEMU
    // processes were killed; no process of the lab still holds those disks but h2's).
    let on_h2 = running(&lab, "h2");
    assert_eq!(on_h2.len(), 2, "{on_h2:?}");
    let policies: Api<ferry::api::HAPolicy> = Api::namespaced(c.client.clone(), &ns);
    let st = policies
        .get("ha")
        .await
        .expect("policy")
        .status
        .expect("status");
    let h = st.hosts.iter().find(|h| h.name == h1).expect("h1 entry");
    assert_eq!(
        h.verdict,
        ferry::api::ha_policy::HostVerdict::Fenced,
        "{h:?}"
    );
    assert!(h.fenced_at.is_some(), "{h:?}");
    let inc = st
        .incidents
        .iter()
        .find(|i| i.host == h1)
        .expect("incident");
    assert_eq!(inc.evidence.as_deref(), Some("Fenced"));
    assert_eq!(inc.vms.len(), 2, "{inc:?}");
    // Nothing restarts twice: wait a while and check again.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(running(&lab, "h2").len(), 2);
    for name in ["vm-high", "vm-low"] {
        let vm = c.vms().get(name).await.expect("vm");
        assert_eq!(host_of(&vm).as_deref(), Some(h2.as_str()));
    }
    // One restart at a time (maxConcurrentRestarts 1), higher priority first: vm-low was
    // handed over only after vm-high ran.
    assert!(order.0 <= order.1, "priority order: {order:?}");
    drop(ctl);
}

/// No fencing configured: a host whose libvirt and kubelet both went silent is not assumed
/// off. Its VM is not restarted; the HAPolicy asks for a confirmation naming the annotation, and
/// once a human sets it the VM restarts elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn ha_without_fencing_waits_for_confirmation() {
    let (mut c, lab, h1, h2, ctl) =
        ha_setup("ferry-e2e-ha-confirm", None, &[("vm-1", None)], 8).await;
    let ns = c.namespace.clone();
    lab.power_off("h1").expect("power off h1");
    c.node_not_ready(&h1).await;
    let policies: Api<ferry::api::HAPolicy> = Api::namespaced(c.client.clone(), &ns);
    let msg = wait_for("AwaitingConfirmation", Duration::from_secs(60), || {
        let p = policies.clone();
        async move {
            let s = p.get("ha").await.ok()?.status?;
            s.conditions
                .iter()
                .find(|c| c.type_ == "AwaitingConfirmation" && c.status == "True")
                .map(|c| c.message.clone())
        }
    })
    .await;
    assert!(msg.contains("kubectl annotate node"), "{msg}");
    assert!(msg.contains("ferry.dev/host-off-confirmed="), "{msg}");
    // Not restarted while nobody confirmed.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let vm = c.vms().get("vm-1").await.expect("vm");
    assert_eq!(
        host_of(&vm).as_deref(),
        Some(h1.as_str()),
        "no restart without proof"
    );
    assert!(running(&lab, "h2").is_empty());
    let st = policies
        .get("ha")
        .await
        .expect("policy")
        .status
        .expect("status");
    let incident = st
        .hosts
        .iter()
        .find(|h| h.name == h1)
        .and_then(|h| h.incident.clone())
        .expect("incident id");
    assert!(msg.contains(&incident), "{msg}");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.client.clone());
    nodes
        .patch(
            &h1,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"ferry.dev/host-off-confirmed": incident}}}),
            ),
        )
        .await
        .expect("confirm");
    let vm = wait_vm(&c, "vm-1", "Running on h2 after confirmation", BOOT, |vm| {
        host_of(vm).as_deref() == Some(h2.as_str())
            && ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let r = vm
        .status
        .and_then(|s| s.last_recovery)
        .expect("lastRecovery");
    assert_eq!(r.evidence, "Confirmed");
    assert_eq!(running(&lab, "h2").len(), 1);
    drop(ctl);
}

/// The HAPolicy's status entry of a host.
async fn ha_host(c: &Cluster, host: &str) -> Option<ferry::api::ha_policy::HostHealth> {
    let policies: Api<ferry::api::HAPolicy> = Api::namespaced(c.client.clone(), &c.namespace);
    let st = policies.get("ha").await.ok()?.status?;
    st.hosts.into_iter().find(|h| h.name == host)
}

/// Wait until the HAPolicy `ha` gives `host` the verdict `want`.
async fn wait_verdict(
    c: &Cluster,
    host: &str,
    want: ferry::api::ha_policy::HostVerdict,
    timeout: Duration,
) {
    wait_for(&format!("{host} {want}"), timeout, || async move {
        (ha_host(c, host).await?.verdict == want).then_some(())
    })
    .await;
}

/// An HAPolicy condition.
async fn ha_condition(
    c: &Cluster,
    type_: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let policies: Api<ferry::api::HAPolicy> = Api::namespaced(c.client.clone(), &c.namespace);
    let st = policies.get("ha").await.ok()?.status?;
    st.conditions.into_iter().find(|x| x.type_ == type_)
}

/// A fence that fails (the BMC rejects the password) restarts nothing: `FenceFailed` says why
/// and the fence is retried with backoff. Once the Secret is fixed the fence is confirmed and the
/// VMs restart on h2 one at a time, higher priority first; the controller is killed as soon as
/// the first is handed over, and its successor finishes from the HAPolicy and VM status, each VM
/// started exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn ha_failed_fence_waits_and_a_killed_controller_resumes_the_recovery() {
    let names = ["vm-low", "vm-high"];
    let ((mut c, lab, h1, h2, mut ctl), sim) = ha_setup_with_ipmi(
        "ferry-e2e-ha-fencefail",
        &[(names[0], None), (names[1], Some("high"))],
        1,
        "wrong-password",
    )
    .await;
    let ns = c.namespace.clone();

    // Power loss the BMC does not cause: h1's guests and libvirtd die, kubelet goes silent.
    lab.power_off("h1").expect("power off h1");
    c.node_not_ready(&h1).await;
    let h = wait_for("a failed fence, retried", Duration::from_secs(150), || {
        let c = &c;
        let h1 = h1.clone();
        async move {
            let h = ha_host(c, &h1).await?;
            (h.fence_attempts.unwrap_or(0) >= 2 && h.last_fence_error.is_some()).then_some(h)
        }
    })
    .await;
    assert!(h.fenced_at.is_none(), "{h:?}");
    let cond = ha_condition(&c, "FenceFailed")
        .await
        .expect("FenceFailed condition");
    assert_eq!(cond.status, "True", "{cond:?}");
    assert!(cond.message.contains(&h1), "{cond:?}");
    // Nothing restarted: the VMs are still h1's, nothing runs on h2, the BMC never powered off.
    for name in names {
        let vm = c.vms().get(name).await.expect("vm");
        assert_eq!(host_of(&vm).as_deref(), Some(h1.as_str()));
        assert!(vm.status.and_then(|s| s.last_recovery).is_none());
    }
    assert!(running(&lab, "h2").is_empty(), "restarted without a fence");
    assert!(sim.power_on());

    // The right password: the fence is confirmed; kill the controller at the first handover.
    put_bmc_password(&c, "s3cret").await;
    wait_for(
        "the first failover handed over",
        Duration::from_secs(120),
        || {
            let api = c.vms();
            async move {
                let list = api.list(&kube::api::ListParams::default()).await.ok()?;
                list.items
                    .iter()
                    .any(|vm| vm.annotations().contains_key("ferry.dev/failover"))
                    .then_some(())
            }
        },
    )
    .await;
    ctl.kill();
    assert!(!sim.power_on(), "fenced through the BMC");
    let _successor = c.controller("ferry-e2e-ha-fencefail-2");
    let order = wait_restarted_by_priority(&c, &h1, &h2).await;
    // One at a time, higher priority first.
    assert!(order.0 <= order.1, "priority order: {order:?}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut on_h2 = running(&lab, "h2");
    on_h2.sort();
    let mut want: Vec<String> = names.iter().map(|n| format!("{ns}_{n}")).collect();
    want.sort();
    assert_eq!(on_h2, want, "each VM runs once, on h2");
    for name in names {
        // One boot on h1, one on h2 (the console log is on shared storage): never two starts.
        let log = console(&lab, &ns, name);
        lab::wait_for_console(&log, "FERRY-BOOT 2", BOOT).expect("booted on h2");
        let text = lab::console_log(&log);
        assert_eq!(boots(&text), 2, "{name}: {text}");
    }
    let h = ha_host(&c, &h1).await.expect("h1");
    assert!(h.fenced_at.is_some(), "{h:?}");
}

/// Storm guard: when every host of the pool looks failed at once (libvirt silent, kubelet
/// silent: the controller cut off from them is likelier than both hosts dying), nothing is
/// fenced and `StormGuard` says so; when the hosts answer again they are Healthy and nothing
/// moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn ha_storm_guard_fences_nothing_when_most_hosts_look_failed() {
    let ((mut c, lab, h1, h2, ctl), sim) =
        ha_setup_with_ipmi("ferry-e2e-ha-storm", &[("vm-1", None)], 8, "s3cret").await;
    let ns = c.namespace.clone();

    // Both hosts vanish from the controller's view: their libvirt stops answering (the guests
    // keep running) and their kubelets go silent.
    lab.stop_libvirtd("h1").expect("stop libvirtd on h1");
    lab.stop_libvirtd("h2").expect("stop libvirtd on h2");
    c.node_not_ready(&h1).await;
    c.node_not_ready(&h2).await;
    let cond = wait_for("StormGuard", Duration::from_secs(120), || {
        let c = &c;
        async move {
            ha_condition(c, "StormGuard")
                .await
                .filter(|x| x.status == "True")
        }
    })
    .await;
    assert!(cond.message.contains("nothing is fenced"), "{cond:?}");
    // Well past every grace: still nothing fenced, nothing restarted.
    tokio::time::sleep(Duration::from_secs(20)).await;
    for h in [&h1, &h2] {
        let e = ha_host(&c, h).await.expect("host entry");
        assert!(e.fence_attempts.is_none() && e.fenced_at.is_none(), "{e:?}");
    }
    assert!(sim.power_on(), "the BMC was never asked to power off");
    let vm = c.vms().get("vm-1").await.expect("vm");
    assert_eq!(host_of(&vm).as_deref(), Some(h1.as_str()));
    assert!(vm.status.and_then(|s| s.last_recovery).is_none());

    // The hosts answer again: the guest kept running on h1 all along.
    lab.start_libvirtd("h1").expect("start libvirtd on h1");
    lab.start_libvirtd("h2").expect("start libvirtd on h2");
    c.node_ready(&h1).await;
    c.node_ready(&h2).await;
    wait_for("both hosts Healthy again", Duration::from_secs(120), || {
        let c = &c;
        let (h1, h2) = (h1.clone(), h2.clone());
        async move {
            let a = ha_host(c, &h1).await?;
            let b = ha_host(c, &h2).await?;
            (a.verdict == ferry::api::ha_policy::HostVerdict::Healthy
                && b.verdict == ferry::api::ha_policy::HostVerdict::Healthy)
                .then_some(())
        }
    })
    .await;
    assert_eq!(running(&lab, "h1"), vec![format!("{ns}_vm-1")]);
    assert!(running(&lab, "h2").is_empty());
    let log = console(&lab, &ns, "vm-1");
    assert_eq!(
        boots(&lab::console_log(&log)),
        1,
        "the guest never rebooted"
    );
    drop(ctl);
}

/// A Node that goes NotReady while its libvirt still answers is not a dead host: its VMs are
/// live-migrated away (the HAPolicy's default `LiveMigrate`), none reboots, nothing is fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn ha_not_ready_host_with_libvirt_up_is_evacuated_live() {
    let names = ["vm-a", "vm-b"];
    let (mut c, lab, h1, h2, ctl) = ha_setup(
        "ferry-e2e-ha-evac",
        None,
        &[(names[0], None), (names[1], None)],
        8,
    )
    .await;
    let ns = c.namespace.clone();
    let logs: Vec<_> = names.iter().map(|n| console(&lab, &ns, n)).collect();

    // kubelet goes silent; libvirt on h1 keeps answering.
    let silent = std::time::Instant::now();
    c.node_not_ready(&h1).await;
    for name in names {
        wait_vm(&c, name, "live-migrated to h2", BOOT, |vm| {
            host_of(vm).as_deref() == Some(h2.as_str())
                && ready_reason(vm) == Some(("True".into(), "Running".into()))
        })
        .await;
    }
    eprintln!(
        "NotReady (grace 5 s) -> both VMs Running on h2 (status seen): {:.1}s",
        silent.elapsed().as_secs_f64()
    );
    // Zero reboots: one boot each, and the guests kept counting.
    for log in &logs {
        let text = lab::console_log(log);
        assert_eq!(boots(&text), 1, "{log:?} rebooted");
        assert!(!text.contains("FERRY-BOOT 2"), "{log:?}");
    }
    let mut on_h2 = running(&lab, "h2");
    on_h2.sort();
    let mut want: Vec<String> = names.iter().map(|n| format!("{ns}_{n}")).collect();
    want.sort();
    assert_eq!(on_h2, want);
    assert!(running(&lab, "h1").is_empty(), "h1 keeps no copy");
    // Each move is an evacuation migration that succeeded; the host was never fenced.
    let migrations: Api<ferry::api::VirtualMachineMigration> =
        Api::namespaced(c.client.clone(), &ns);
    let list = migrations
        .list(&kube::api::ListParams::default())
        .await
        .expect("migrations");
    for name in names {
        assert!(
            list.items.iter().any(|m| m.spec.vm_name == name
                && m.status.as_ref().and_then(|s| s.phase)
                    == Some(ferry::api::MigrationPhase::Succeeded)),
            "a succeeded migration of {name}: {:?}",
            list.items
                .iter()
                .map(|m| (&m.spec.vm_name, m.status.as_ref().and_then(|s| s.phase)))
                .collect::<Vec<_>>()
        );
    }
    let h = ha_host(&c, &h1).await.expect("h1 entry");
    assert_eq!(
        h.verdict,
        ferry::api::ha_policy::HostVerdict::Evacuating,
        "{h:?}"
    );
    assert!(h.fenced_at.is_none() && h.fence_attempts.is_none(), "{h:?}");
    for name in names {
        let vm = c.vms().get(name).await.expect("vm");
        assert!(
            vm.status.and_then(|s| s.last_recovery).is_none(),
            "{name} was moved live, not restarted"
        );
    }
    drop(ctl);
}

/// `notReadyAction: LiveMigrateThenRestart`, then the host's return. h1's kubelet goes silent
/// while its libvirt answers: `vm-move` is live-migrated to h2 (one boot); `vm-stay`
/// (`evictionStrategy: None`) cannot move, so after the evacuation deadline h1 is fenced through
/// its IPMI BMC (confirmed Off) and `vm-stay` restarts on h2 (its second boot). Then h1 is
/// powered on again: its libvirt still has `vm-stay`'s old domain, which ferry undefines before
/// anything else happens there (`StaleDomainRemoved`, verdict Recovered, then Healthy once the
/// Node is Ready), and every VM still runs exactly once. Last, `notReadyAction: Restart` on h2:
/// its domains are shut off through libvirt and both VMs restart on h1, without a fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn ha_not_ready_actions_and_a_host_that_returns() {
    let ((mut c, lab, h1, h2, ctl), sim) = ha_setup_with_ipmi(
        "ferry-e2e-ha-mtr",
        &[("vm-move", None), ("vm-stay", None)],
        8,
        "s3cret",
    )
    .await;
    let ns = c.namespace.clone();
    c.apply::<ferry::api::HAPolicy>(ha_policy(
        8,
        json!({"notReadyAction": "LiveMigrateThenRestart", "evacuationDeadlineSeconds": 10}),
    ))
    .await;
    c.vms()
        .patch(
            "vm-stay",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"evictionStrategy": "None"}})),
        )
        .await
        .expect("evictionStrategy None");
    let policies: Api<ferry::api::HAPolicy> = Api::namespaced(c.client.clone(), &ns);
    wait_for(
        "the controllers saw both changes",
        Duration::from_secs(60),
        || {
            let (p, vms) = (policies.clone(), c.vms());
            async move {
                let p = p.get("ha").await.ok()?;
                let vm = vms.get("vm-stay").await.ok()?;
                (p.status?.observed_generation == p.metadata.generation
                    && vm.status?.observed_generation == vm.metadata.generation)
                    .then_some(())
            }
        },
    )
    .await;

    let silent = std::time::Instant::now();
    c.node_not_ready(&h1).await;
    wait_vm(&c, "vm-move", "live-migrated to h2", BOOT, |vm| {
        host_of(vm).as_deref() == Some(h2.as_str())
            && ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let vm = wait_vm(
        &c,
        "vm-stay",
        "restarted on h2 after the fence",
        BOOT,
        |vm| {
            host_of(vm).as_deref() == Some(h2.as_str())
                && ready_reason(vm) == Some(("True".into(), "Running".into()))
        },
    )
    .await;
    eprintln!(
        "NotReady (grace 5 s, deadline 10 s) -> vm-stay Running on h2 after {:.1}s",
        silent.elapsed().as_secs_f64()
    );
    let r = vm
        .status
        .and_then(|s| s.last_recovery)
        .expect("vm-stay lastRecovery");
    assert_eq!(
        (r.from_host.as_str(), r.evidence.as_str()),
        (h1.as_str(), "Fenced")
    );
    assert!(!sim.power_on(), "the BMC cut h1's power");
    let moved = c.vms().get("vm-move").await.expect("vm-move");
    assert!(
        moved.status.and_then(|s| s.last_recovery).is_none(),
        "vm-move was moved live, not restarted"
    );
    lab::wait_for_console(&console(&lab, &ns, "vm-stay"), "FERRY-BOOT 2", BOOT)
        .expect("vm-stay boots again on h2");
    assert_eq!(
        boots(&lab::console_log(&console(&lab, &ns, "vm-move"))),
        1,
        "vm-move never rebooted"
    );
    let mut on_h2 = running(&lab, "h2");
    on_h2.sort();
    assert_eq!(on_h2, [format!("{ns}_vm-move"), format!("{ns}_vm-stay")]);
    let h = ha_host(&c, &h1).await.expect("h1 entry");
    assert_eq!(
        h.verdict,
        ferry::api::ha_policy::HostVerdict::Fenced,
        "{h:?}"
    );

    // h1 comes back: power on, libvirtd starts with vm-stay's old domain still defined.
    ipmi_power(&sim, "on");
    lab.start_libvirtd("h1").expect("start libvirtd on h1");
    wait_verdict(
        &c,
        &h1,
        ferry::api::ha_policy::HostVerdict::Recovered,
        Duration::from_secs(90),
    )
    .await;
    let left = lab.virsh("h1", &["list", "--all", "--name"]).stdout;
    assert!(
        !left.contains("vm-stay") && !left.contains("vm-move"),
        "h1 keeps no domain of a VM that runs elsewhere: {left}"
    );
    assert!(
        pool_event_count(&c, "StaleDomainRemoved", "vm-stay").await >= 1,
        "the stale domain's removal is an Event"
    );
    c.node_ready(&h1).await;
    wait_verdict(
        &c,
        &h1,
        ferry::api::ha_policy::HostVerdict::Healthy,
        Duration::from_secs(60),
    )
    .await;
    // Exactly once, still: nothing started on h1, no further boot.
    assert!(running(&lab, "h1").is_empty());
    assert_eq!(running(&lab, "h2").len(), 2);
    let text = lab::console_log(&console(&lab, &ns, "vm-stay"));
    assert_eq!(boots(&text), 2, "vm-stay booted twice in all");

    // notReadyAction Restart: h2's kubelet goes silent while its libvirt answers. ferry shuts
    // its domains off through libvirt, and once libvirt confirms them shut off, restarts both
    // VMs on h1. h2 has no working BMC: nothing is fenced.
    c.apply::<ferry::api::HAPolicy>(ha_policy(8, json!({"notReadyAction": "Restart"})))
        .await;
    wait_for("the policy change seen", Duration::from_secs(60), || {
        let p = policies.clone();
        async move {
            let p = p.get("ha").await.ok()?;
            (p.status?.observed_generation == p.metadata.generation).then_some(())
        }
    })
    .await;
    c.node_not_ready(&h2).await;
    for name in ["vm-move", "vm-stay"] {
        let vm = wait_vm(&c, name, "restarted on h1", BOOT, |vm| {
            host_of(vm).as_deref() == Some(h1.as_str())
                && ready_reason(vm) == Some(("True".into(), "Running".into()))
        })
        .await;
        let r = vm
            .status
            .and_then(|s| s.last_recovery)
            .expect("lastRecovery");
        assert_eq!(
            (r.from_host.as_str(), r.evidence.as_str()),
            (h2.as_str(), "ShutOff"),
            "{name}"
        );
    }
    for (name, boot) in [("vm-move", "FERRY-BOOT 2"), ("vm-stay", "FERRY-BOOT 3")] {
        lab::wait_for_console(&console(&lab, &ns, name), boot, BOOT)
            .unwrap_or_else(|e| panic!("{name} boots again on h1: {e}"));
    }
    assert!(running(&lab, "h2").is_empty(), "h2 keeps no running copy");
    assert_eq!(running(&lab, "h1").len(), 2);
    let h = ha_host(&c, &h2).await.expect("h2 entry");
    assert!(h.fenced_at.is_none() && h.fence_attempts.is_none(), "{h:?}");
    // The shut-off copies on h2 are undefined (disks kept), so nothing can start them there.
    wait_for(
        "h2's old domains undefined",
        Duration::from_secs(60),
        || {
            let left = lab.virsh("h2", &["list", "--all", "--name"]).stdout;
            let clean = !left.contains("vm-move") && !left.contains("vm-stay");
            async move { clean.then_some(()) }
        },
    )
    .await;
    drop(ctl);
}

/// Kills the QEMU process of the lab domain `domain` (a crash, as libvirt sees it).
fn kill_qemu(domain: &str) {
    let out = lab::run_cmd(
        "pkill",
        &["-KILL", "-f", &format!("guest={domain},")],
        Duration::from_secs(10),
    );
    assert!(out.success(), "no QEMU process of {domain} to kill");
}

/// VM monitoring: a covered VM whose QEMU process dies is started again, once here
/// (`maxRestarts: 1`); the second crash leaves it stopped with `RestartLimitReached`, and a
/// restart request starts it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn a_crashed_guest_restarts_within_the_monitoring_limits() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(1).expect("lab host");
    let mut c = Cluster::new("ferry-e2e-crash").await;
    let ns = c.namespace.clone();
    c.add_node(&format!("{ns}-h1"), &lab.hosts[0].ip, LABEL)
        .await;
    let ctl = c.controller("e2e-crash");
    c.apply::<ferry::api::HostPool>(pool_manifest("lab", &lab))
        .await;
    c.apply::<ferry::api::HAPolicy>(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HAPolicy",
        "metadata": {"name": "ha"},
        "spec": {"hostPools": ["lab"], "vmMonitoring": {"maxRestarts": 1, "windowSeconds": 3600}}
    }))
    .await;
    c.apply::<VirtualMachine>(vm_manifest("crashy", "lab", &lab, "Always"))
        .await;
    let log = console(&lab, &ns, "crashy");
    let domain = format!("{ns}_crashy");
    let running = |vm: &VirtualMachine| ready_reason(vm) == Some(("True".into(), "Running".into()));
    wait_vm(&c, "crashy", "Running", BOOT, running).await;
    lab::wait_for_console(&log, "FERRY-READY", BOOT).expect("first boot");

    // First crash: started again, counted.
    kill_qemu(&domain);
    lab::wait_for_console(&log, "FERRY-BOOT 2", BOOT).expect("restarted after the crash");
    let vm = wait_vm(
        &c,
        "crashy",
        "Running again, one restart counted",
        BOOT,
        |vm| {
            running(vm)
                && vm
                    .status
                    .as_ref()
                    .is_some_and(|s| s.unplanned_restarts.len() == 1)
        },
    )
    .await;
    assert_eq!(
        vm.status.as_ref().and_then(|s| s.phase),
        Some(VmPhase::Running)
    );
    lab::wait_for_console(&log, "FERRY-READY", BOOT).expect("second boot ready");

    // Second crash within the window: over the limit, left stopped with the reason.
    kill_qemu(&domain);
    let vm = wait_vm(&c, "crashy", "held by the restart limit", BOOT, |vm| {
        ready_reason(vm) == Some(("False".into(), "RestartLimitReached".into()))
    })
    .await;
    let message = condition(&vm, "Ready").map(|c| c.message.clone());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("HAPolicy ha") && m.contains("ferry.dev/restart")),
        "{message:?}"
    );
    assert_eq!(
        vm.status.as_ref().and_then(|s| s.phase),
        Some(VmPhase::Stopped)
    );
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(
        !lab::console_log(&log).contains("FERRY-BOOT 3"),
        "a held VM is not started by the next resync"
    );
    let state = lab.virsh_ok("h1", &["domstate", "--reason", &domain]);
    assert!(
        state.as_deref().is_ok_and(|s| s.contains("shut off")),
        "{state:?}"
    );

    // A person restarts it.
    c.vms()
        .patch(
            "crashy",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"ferry.dev/restart": "after-crash"}}}),
            ),
        )
        .await
        .expect("restart request");
    wait_vm(
        &c,
        "crashy",
        "Running after the restart request",
        BOOT,
        running,
    )
    .await;
    lab::wait_for_console(&log, "FERRY-BOOT 3", BOOT).expect("started on request");
    drop(ctl);
}

/// Recovery-time benchmark (not a test: run by e2e/bench-ha.sh, which sets FERRY_HA_BENCH to
/// runs like `1x3,5x2` = 3 runs with 1 VM, 2 runs with 5 VMs). Each run: fresh lab and cluster,
/// VMs running on h1, the BMC powers h1 off (its hook kills h1's guests and libvirtd) and kubelet
/// goes silent; measured from the power-off: detection and fence confirmation (from the
/// HAPolicy status, 1 s resolution), each domain running on h2 (virsh polled every 100 ms) and
/// each guest's second boot on its console. With `FERRY_HA_BENCH_HANG=1` the host dies without
/// the BMC knowing (it still reports On): detection then waits for the Node NotReady grace and
/// ferry powers the host off through the BMC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run e2e/bench-ha.sh"]
async fn ha_recovery_bench() {
    let Ok(spec) = std::env::var("FERRY_HA_BENCH") else {
        eprintln!("FERRY_HA_BENCH not set: nothing to measure");
        return;
    };
    let hang = std::env::var("FERRY_HA_BENCH_HANG").is_ok_and(|v| v == "1");
    let mut rows = Vec::new();
    for part in spec.split(',') {
        let (n, runs) = part.split_once('x').expect("NxRUNS");
        let (n, runs): (usize, usize) = (n.parse().expect("N"), runs.parse().expect("RUNS"));
        for run in 0..runs {
            let names: Vec<String> = (1..=n).map(|i| format!("vm-{i}")).collect();
            let refs: Vec<(&str, Option<&str>)> =
                names.iter().map(|n| (n.as_str(), None)).collect();
            let ((mut c, lab, h1, _h2, ctl), sim) =
                ha_setup_with_ipmi(&format!("ferry-bench-ha{n}-{run}"), &refs, 8, "s3cret").await;
            let ns = c.namespace.clone();
            // Let the controller see the annotation and warm h2 (its first define builds caches).
            tokio::time::sleep(Duration::from_secs(3)).await;
            let t0 = k8s_openapi::jiff::Timestamp::now();
            let start = std::time::Instant::now();
            if hang {
                lab.power_off("h1")
                    .expect("h1 dies; its BMC still reports On");
            } else {
                ipmi_power_off(&sim);
            }
            c.node_not_ready(&h1).await;
            // Each domain running on h2 (virsh), and each guest's second boot on its console
            // (the boot counter on its disk went to 2: it booted again on h2).
            let logs: Vec<_> = names.iter().map(|v| console(&lab, &ns, v)).collect();
            let mut each = Vec::new();
            let mut markers: Vec<Option<f64>> = vec![None; n];
            let deadline = start + Duration::from_secs(300);
            while (each.len() < n || markers.iter().any(Option::is_none))
                && std::time::Instant::now() < deadline
            {
                let now_running = running(&lab, "h2").len();
                while each.len() < now_running {
                    each.push(start.elapsed().as_secs_f64());
                }
                for (m, log) in markers.iter_mut().zip(&logs) {
                    if m.is_none() && lab::console_log(log).contains("FERRY-BOOT 2") {
                        *m = Some(start.elapsed().as_secs_f64());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(each.len(), n, "all domains running on h2");
            let last_marker = markers
                .iter()
                .map(|m| m.expect("every guest booted again on h2"))
                .fold(0.0, f64::max);
            let policies: Api<ferry::api::HAPolicy> = Api::namespaced(c.client.clone(), &ns);
            let st = policies
                .get("ha")
                .await
                .expect("policy")
                .status
                .expect("status");
            let inc = st
                .incidents
                .iter()
                .find(|i| i.host == h1)
                .expect("incident");
            let secs = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| {
                (t.0.as_millisecond() - t0.as_millisecond()) as f64 / 1000.0
            };
            let detected = secs(&inc.detected);
            let fenced = inc.proven_off.as_ref().map(secs).unwrap_or(f64::NAN);
            let row = format!(
                "mode={} vms={n} run={run} detected={detected:.0}s fenced={fenced:.0}s first_domain={:.2}s last_domain={:.2}s last_console_boot={last_marker:.2}s",
                if hang { "hang" } else { "bmc-power-off" },
                each[0],
                each[n - 1]
            );
            eprintln!("HA-BENCH {row}");
            rows.push(row);
            drop(ctl);
            drop(sim);
            drop(c);
            drop(lab);
        }
    }
    eprintln!("HA-BENCH summary:\n{}", rows.join("\n"));
}

/// Create or replace a Secret in the test namespace with one key.
async fn put_data_secret(c: &Cluster, name: &str, data: &[(&str, &[u8])]) {
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
    put_data_secret(
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
    put_data_secret(
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
    let reported = |vm: &VirtualMachine| {
        vm.status.as_ref().is_some_and(|s| {
            s.guest_os.is_some()
                && s.interfaces.first().and_then(|i| i.ip_address.as_deref()) == Some("10.99.0.5")
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let vm = loop {
        let vm = c.vms().get("seeded").await.expect("vm");
        if reported(&vm) {
            break vm;
        }
        if std::time::Instant::now() > deadline {
            // Say what libvirt and the agent answer, not only that status lacks the report.
            let dom = format!("{ns}_seeded");
            let addrs = lab.virsh("h1", &["domifaddr", &dom, "--source", "agent"]);
            let ping = lab.virsh(
                "h1",
                &["qemu-agent-command", &dom, r#"{"execute":"guest-ping"}"#],
            );
            let console = lab::console_log(&log);
            let tail: String = console
                .lines()
                .rev()
                .filter(|l| !l.contains("FERRY-TICK"))
                .take(15)
                .collect::<Vec<_>>()
                .join(" | ");
            panic!(
                "no guest agent report in status after 300s: status {:?}; virsh domifaddr --source agent: {addrs:?}; guest-ping: {ping:?}; console (newest first, ticks left out): {tail}",
                vm.status
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let st = vm.status.clone().expect("status");
    assert_eq!(st.guest_os.as_deref(), Some("ferry tiny guest (busybox)"));
    assert_eq!(st.interfaces[0].guest_name.as_deref(), Some("eth0"));
    let res = st.resources.clone().expect("resolved resources in status");
    assert_eq!(res.class_name, Some(format!("{ns}-tiny")));
    assert_eq!((res.cpus, res.memory.as_str()), (1, "128Mi"));

    // New data in the Secret: a new seed, RestartRequired, and the running guest keeps its seed.
    put_data_secret(
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

// ---- A real Debian guest: cloud-init, the QEMU guest agent, a clean power-off ----------------

const DEBIAN_BUILD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/lab/debian/build.sh");
const DEBIAN_IP: &str = "10.99.0.5";
const DEBIAN_MAC: &str = "52:54:00:fe:99:05";
/// Under TCG on a busy 2-core machine the first boot takes 1–3 minutes; leave room.
const DEBIAN_BOOT: Duration = Duration::from_secs(900);

/// The directory holding the Debian golden image, kernel and initrd: `FERRY_DEBIAN_IMAGE_DIR`
/// (e2e/debian.sh builds it first), else `e2e/lab/debian/build.sh` builds or finds it now.
fn debian_image_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_DEBIAN_IMAGE_DIR") {
        return dir.into();
    }
    let out = lab::run_cmd(DEBIAN_BUILD, &[], Duration::from_secs(3600))
        .into_result("e2e/lab/debian/build.sh")
        .expect("the Debian golden image");
    out.trim().into()
}

/// Hard-link (same filesystem) or copy `from` to `to`, read-only.
fn place_read_only(from: &std::path::Path, to: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    }
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o444)).expect("chmod 0444");
}

/// Wait (async, polling every 250 ms) for a console line that satisfies `f`; returns the line
/// and when it was first seen. On timeout the panic shows the console's last lines.
async fn console_line_since(
    path: &std::path::Path,
    offset: usize,
    what: &str,
    timeout: Duration,
    f: impl Fn(&str) -> bool,
) -> (String, std::time::Instant) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let text = lab::console_log(path);
        let from = text.get(offset..).unwrap_or_default();
        if let Some(line) = from.lines().find(|l| f(l)) {
            return (
                line.trim_end_matches('\r').to_string(),
                std::time::Instant::now(),
            );
        }
        if std::time::Instant::now() > deadline {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "no console line {what} in {} after {timeout:?}; last lines:\n{}",
                path.display(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The guest's own "Up N seconds" from cloud-init's final message.
fn cloud_init_uptime(line: &str) -> Option<f64> {
    let up = line.split(" Up ").nth(1)?;
    up.split_whitespace().next()?.parse().ok()
}

/// `ssh` from inside the lab host's network namespace (where the guest bridge is), with the
/// test's key and the guest's host key as the only known one. Bounded.
fn ssh_guest(lab: &lab::Lab, dir: &std::path::Path, user: &str, cmd: &str) -> lab::CmdOutput {
    let key = dir.join("id_ed25519");
    let known = dir.join("known_hosts");
    let key = key.to_string_lossy();
    let known = format!("UserKnownHostsFile={}", known.to_string_lossy());
    let target = format!("{user}@{DEBIAN_IP}");
    lab::run_cmd(
        "ip",
        &[
            "netns",
            "exec",
            &lab.hosts[0].netns,
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            &key,
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &known,
            "-o",
            "ConnectTimeout=10",
            &target,
            cmd,
        ],
        Duration::from_secs(60),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow (a real Debian guest under TCG): run e2e/debian.sh"]
async fn debian_guest_runs_cloud_init() {
    if std::env::var_os("FERRY_E2E_DEBIAN").is_none() {
        eprintln!(
            "skipping: set FERRY_E2E_DEBIAN=1 (e2e/debian.sh does) to boot the Debian cloud-init guest"
        );
        return;
    }
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/debian.sh does both)"
    );
    let image = debian_image_dir();
    let lab = lab::Lab::up(1).expect("lab host");

    // The golden image into the lab's pool; kernel and initrd next to the tiny guest's.
    let golden = "debian-12.qcow2";
    place_read_only(&image.join("debian.qcow2"), &lab.pool_dir.join(golden));
    let boot = lab.shared_dir.join("boot");
    let (kernel, initrd) = (boot.join("debian-vmlinuz"), boot.join("debian-initrd.img"));
    place_read_only(&image.join("vmlinuz"), &kernel);
    place_read_only(&image.join("initrd.img"), &initrd);
    let cmdline = std::fs::read_to_string(image.join("cmdline")).expect("cmdline");

    // A key pair of this run, and a token the guest must echo back (nothing here is constant).
    let keys = tempfile::tempdir().expect("temp dir");
    lab::run_cmd(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "ferry-e2e",
            "-f",
            &keys.path().join("id_ed25519").to_string_lossy(),
        ],
        Duration::from_secs(30),
    )
    .into_result("ssh-keygen")
    .expect("ssh key");
    let pubkey = std::fs::read_to_string(keys.path().join("id_ed25519.pub"))
        .expect("public key")
        .trim()
        .to_string();
    let token = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );

    let mut c = Cluster::new("ferry-e2e-debian").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let ctl = c.controller("e2e-debian");
    let ns = c.namespace.clone();
    c.apply::<ferry::api::HostPool>(pool_manifest("lab", &lab))
        .await;

    let user_data = format!(
        "#cloud-config\n\
         write_files:\n  \
           - path: /var/lib/ferry-e2e/written\n    \
             content: \"written-{token}\\n\"\n\
         runcmd:\n  \
           - [sh, -c, 'echo \"runcmd $(cat /var/lib/ferry-e2e/written) $(hostname)\" > /var/lib/ferry-e2e/runcmd']\n  \
           - [sh, -c, 'echo \"FERRY-E2E-RUNCMD $(cat /var/lib/ferry-e2e/runcmd)\" > /dev/ttyS0']\n"
    );
    let network_data = format!(
        "version: 1\nconfig:\n  - type: physical\n    name: eth0\n    mac_address: \"{DEBIAN_MAC}\"\n    \
         subnets:\n      - type: static\n        address: {DEBIAN_IP}/24\n"
    );
    let vm_name = "deb";
    let hostname = "deb-e2e";
    let manifest = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": vm_name},
        "spec": {
            "hostPool": "lab", "runStrategy": "Always",
            "cpu": {"cores": 1}, "memory": "512Mi",
            "terminationGracePeriodSeconds": 180,
            "disks": [{"name": "root", "image": golden}],
            "networks": [{"name": "eth0", "bridge": "gbr0", "mac": DEBIAN_MAC}],
            "boot": {
                "kernel": kernel.to_string_lossy(),
                "initrd": initrd.to_string_lossy(),
                "cmdline": cmdline.trim()
            },
            "cloudInit": {
                "hostname": hostname,
                "sshAuthorizedKeys": [pubkey],
                "userData": user_data,
                "networkData": network_data
            }
        }
    });
    let created = std::time::Instant::now();
    c.apply::<VirtualMachine>(manifest).await;
    wait_vm(&c, vm_name, "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let running = created.elapsed();
    let log = console(&lab, &ns, vm_name);

    // cloud-init's own final message: it read the NoCloud seed (not the `None` fallback).
    let (finished, finished_at) = console_line_since(
        &log,
        0,
        "\"Cloud-init v. ... finished at\"",
        DEBIAN_BOOT,
        |l| l.contains("Cloud-init v. ") && l.contains(" finished at "),
    )
    .await;
    assert!(
        finished.contains("DataSourceNoCloud"),
        "cloud-init used the seed CD-ROM: {finished}"
    );
    let guest_up = cloud_init_uptime(&finished);
    let text = lab::console_log(&log);
    let marker = format!("FERRY-E2E-RUNCMD runcmd written-{token} {hostname}");
    assert!(
        text.contains(&marker),
        "the runcmd marker ({marker}) on the console"
    );
    assert!(
        !text.contains("Kernel panic") && !text.contains("emergency mode"),
        "a clean boot"
    );

    // SSH in with the generated key, checking the host key cloud-init printed on the console.
    let host_key = text
        .lines()
        .skip_while(|l| !l.contains("-----BEGIN SSH HOST KEY KEYS-----"))
        .find(|l| l.trim_start().starts_with("ssh-ed25519 "))
        .map(|l| l.trim().to_string())
        .expect("cloud-init printed the guest's SSH host key");
    std::fs::write(
        keys.path().join("known_hosts"),
        format!("{DEBIAN_IP} {host_key}\n"),
    )
    .expect("known_hosts");
    lab.exec_in_host("h1", &["ip", "addr", "add", "10.99.0.1/24", "dev", "gbr0"])
        .into_result("address on gbr0")
        .expect("the lab host reaches the guest bridge");
    let check =
        "hostname; cat /var/lib/ferry-e2e/runcmd; cat ~/.ssh/authorized_keys; cloud-init status";
    let mut ssh = ssh_guest(&lab, keys.path(), "debian", check);
    let ssh_deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !ssh.success() && std::time::Instant::now() < ssh_deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        ssh = ssh_guest(&lab, keys.path(), "debian", check);
    }
    let ssh_at = created.elapsed();
    let out = ssh
        .into_result("ssh debian@guest")
        .expect("SSH with the key");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines.first().copied(), Some(hostname), "hostname: {out}");
    assert!(
        lines.contains(&format!("runcmd written-{token} {hostname}").as_str()),
        "write_files + runcmd ran as root: {out}"
    );
    assert!(lines.contains(&pubkey.as_str()), "the key installed: {out}");
    assert!(lines.contains(&"status: done"), "cloud-init done: {out}");
    // The key gives root no shell: cloud-init's disable_root sends it to the default user.
    let root = ssh_guest(&lab, keys.path(), "root", "echo root-shell");
    assert!(
        !root.success()
            && !root.stdout.contains("root-shell")
            && root.stdout.contains("Please login as the user \"debian\""),
        "root gets no shell with the key: {root:?}"
    );

    // The guest agent's report in status: the IP column's source, and the guest OS.
    let vm = wait_vm(
        &c,
        vm_name,
        "guest agent IP and OS",
        Duration::from_secs(300),
        |vm| {
            vm.status.as_ref().is_some_and(|s| {
                s.guest_os.is_some()
                    && s.interfaces.first().and_then(|i| i.ip_address.as_deref()) == Some(DEBIAN_IP)
            })
        },
    )
    .await;
    let agent_at = created.elapsed();
    let st = vm.status.clone().expect("status");
    let os = st.guest_os.clone().unwrap_or_default();
    assert!(os.contains("Debian GNU/Linux 12"), "guest OS: {os}");
    assert_eq!(st.interfaces[0].guest_name.as_deref(), Some("eth0"));
    assert_eq!(st.interfaces[0].mac, DEBIAN_MAC);

    // Graceful stop: the guest shuts itself down (systemd), libvirt says why it is off.
    let before_stop = lab::console_len(&log);
    let stop = std::time::Instant::now();
    c.vms()
        .patch(
            vm_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runStrategy": "Halted"}})),
        )
        .await
        .expect("stop");
    wait_vm(&c, vm_name, "Stopped", Duration::from_secs(240), |vm| {
        vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Stopped)
    })
    .await;
    let stopped = stop.elapsed();
    let dom = format!("{ns}_{vm_name}");
    let state = lab
        .virsh_ok("h1", &["domstate", "--reason", &dom])
        .expect("domstate");
    assert!(
        state.contains("shut off (shutdown)"),
        "the guest powered itself off, not destroyed: {state}"
    );
    assert!(
        stopped < Duration::from_secs(180),
        "within the grace period: {stopped:?}"
    );
    let shutdown = lab::console_log(&log)
        .get(before_stop..)
        .unwrap_or_default()
        .to_string();
    for needle in [
        "systemd-shutdown[1]: All filesystems unmounted.",
        "reboot: Power down",
    ] {
        assert!(
            shutdown.contains(needle),
            "clean power-off ({needle}) on the console:\n{shutdown}"
        );
    }

    eprintln!("DEBIAN-CLOUD-INIT {finished}");
    let power_off: Vec<&str> = shutdown
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.contains("systemd-shutdown") || l.contains("reboot: "))
        .collect();
    eprintln!("DEBIAN-POWER-OFF\n{}", power_off.join("\n"));
    eprintln!(
        "DEBIAN-BENCH running {:.1}s cloud-init-finished {:.1}s guest-up {} ssh {:.1}s agent-ip {:.1}s stop {:.1}s",
        running.as_secs_f64(),
        (finished_at - created).as_secs_f64(),
        guest_up.map_or("?".into(), |u| format!("{u:.1}s")),
        ssh_at.as_secs_f64(),
        agent_at.as_secs_f64(),
        stopped.as_secs_f64()
    );

    c.vms()
        .delete(vm_name, &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_vm_gone(vm_name, Duration::from_secs(90)).await;
    assert!(domains(&lab).is_empty(), "domain undefined");
    drop(ctl);
}
