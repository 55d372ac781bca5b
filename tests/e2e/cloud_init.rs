//! cloud-init seeds: Secret and inline data, the size limit, a VirtualMachineClass, the guest
//! agent's report, and restart-required changes.

use crate::support::cluster::{self, Cluster, wait_for};
use crate::support::hosts::{console, domains, volumes};
use crate::support::lab;
use crate::support::objects::{
    BOOT, LABEL, condition, pool_manifest, put_secret, ready_reason, vm_manifest, wait_vm,
};
use ferry::api::{VirtualMachine, VmPhase};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

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
    // The seed's 1 MiB limit counts user, network and meta data together, wherever they come
    // from: inline user data (under the CRD's 256 KiB) and network data from a Secret (under a
    // Secret's 1 MiB), each accepted by the API server, exceed it together.
    const INLINE: usize = 200 * 1024;
    const FROM_SECRET: usize = 900 * 1024;
    put_secret(
        &c,
        "huge",
        "Opaque",
        &[("networkdata", vec![b'#'; FROM_SECRET])],
    )
    .await;
    let mut huge = vm_manifest("huge", "lab", &lab, "Always");
    huge["spec"]["cloudInit"] = json!({
        "userData": "#".repeat(INLINE),
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
    assert!(
        msg.contains("more than a seed holds (1048576 bytes)"),
        "{msg}"
    );
    let counted: usize = msg
        .split_once("cloud-init data is ")
        .and_then(|(_, m)| m.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the message says how many bytes: {msg}"));
    assert!(
        counted >= INLINE + FROM_SECRET,
        "both sources are counted: {msg}"
    );
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
        "Opaque",
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
    put_secret(
        &c,
        "web-userdata",
        "Opaque",
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
