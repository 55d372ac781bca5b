//! A VM's life on one real host (create, steady state, stop, clone, start, resize, restart,
//! delete, the kubectl plugin, /metrics), and bad input and failures that end in clear
//! conditions (missing pool or image, impossible size, libvirtd gone, leader hand-over).

use crate::support::cluster::{self, Cluster, wait_for};
use crate::support::hosts::{console, domains, volumes};
use crate::support::lab;
use crate::support::objects::{
    BOOT, LABEL, condition, pool_manifest, ready_reason, vm_manifest, wait_vm,
};
use ferry::api::{VirtualMachine, VmPhase};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::time::Duration;

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
    let (ok, out) = c.plugin(&["restart", "web"]);
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
    let (ok, out) = c.plugin(&["status", "web"]);
    assert!(
        ok && out.contains(&node) && out.contains("Running"),
        "kubectl ferry status: {out}"
    );
    let (ok, out) = c.plugin(&["hosts"]);
    assert!(
        ok && out.contains(&node) && out.contains("Ready"),
        "kubectl ferry hosts: {out}"
    );
    let (ok, out) = c.plugin(&["status", "web", "-o", "json"]);
    let obj: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    assert!(
        ok && obj["kind"] == "VirtualMachine" && obj["status"]["host"] == node.as_str(),
        "kubectl ferry status -o json: {out}"
    );
    let (ok, out) = c.plugin(&["cancel", "web"]);
    assert!(
        !ok && out.contains("no unfinished migration"),
        "kubectl ferry cancel without a migration: {out}"
    );
    let (ok, out) = c.plugin(&["console", "web", "--virsh", "--no-attach"]);
    assert!(
        ok && out.contains(&format!("{ns}_web.console.log")),
        "kubectl ferry console: {out}"
    );
    // stop on a runStrategy Always VM would fight GitOps: refused with an explanation.
    let (ok, out) = c.plugin(&["stop", "web"]);
    assert!(
        !ok && out.contains("Manual"),
        "kubectl ferry stop without --force-spec: {out}"
    );

    // pause / unpause: the domain's vCPUs stop and go on; Ready says why meanwhile.
    let (ok, out) = c.plugin(&["pause", "web"]);
    assert!(
        ok && out.contains("ferry.dev/paused=true"),
        "kubectl ferry pause: {out}"
    );
    wait_vm(
        &c,
        "web",
        "paused on request",
        Duration::from_secs(60),
        |vm| ready_reason(vm) == Some(("False".into(), "PausedOnRequest".into())),
    )
    .await;
    let state = lab
        .virsh(&lab.hosts[0].name, &["domstate", &format!("{ns}_web")])
        .stdout;
    assert_eq!(state.trim(), "paused");
    let (ok, out) = c.plugin(&["unpause", "web"]);
    assert!(ok, "kubectl ferry unpause: {out}");
    wait_vm(&c, "web", "running again", Duration::from_secs(60), |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let state = lab
        .virsh(&lab.hosts[0].name, &["domstate", &format!("{ns}_web")])
        .stdout;
    assert_eq!(state.trim(), "running");

    // Metrics are served, the state gauges too (the leader's caches are complete).
    let (code, body) = ctl.http_get("/metrics").expect("metrics endpoint answers");
    assert!(
        body.contains(&format!(
            "ferry_virtual_machine_status{{object_namespace=\"{ns}\",name=\"web\",phase=\"Running\",host=\"{node}\",ready=\"True\",reason=\"Running\"}} 1"
        )),
        "{body}"
    );
    assert_eq!(code, 200);
    assert!(body.contains("ferry_reconciles_total"), "{body}");
    assert!(
        body.contains("ferry_libvirt_call_duration_seconds"),
        "{body}"
    );
    // Measured load: the running guest's CPU and resident memory, once its host was sampled
    // twice since the guest started (a pool without balancing or power management samples once
    // a minute, at the probe after the minute is up: the probe runs every 15 s).
    let series =
        |name: &str| format!("{name}{{object_namespace=\"{ns}\",name=\"web\",host=\"{node}\"}} ");
    let value = |body: &str, name: &str| -> Option<u64> {
        let line = body.lines().find(|l| l.starts_with(&series(name)))?;
        line.rsplit(' ').next()?.parse().ok()
    };
    let sampled_twice =
        2 * ferry::controller::context::host_reads::LOAD_SAMPLE_INTERVAL + Duration::from_secs(30);
    let body: String = wait_for("the VM's load measured", sampled_twice, || {
        let body = ctl.http_get("/metrics").map(|(_, b)| b);
        async move {
            let body = body?;
            value(&body, "ferry_virtual_machine_cpu_used_millicores").map(|_| body)
        }
    })
    .await;
    let memory = value(&body, "ferry_virtual_machine_memory_used_bytes");
    assert!(memory.is_some_and(|m| m > 16 << 20), "{body}");

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

    // A golden image the pool declares but the host does not have.
    let mut pool = pool_manifest("lab", &lab);
    pool["spec"]["storage"]["images"]
        .as_array_mut()
        .expect("images")
        .push(json!({"name": "does-not-exist.qcow2"}));
    c.apply::<ferry::api::HostPool>(pool).await;

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
