//! HA when a Node goes NotReady while its libvirt answers: live evacuation, the
//! `LiveMigrateThenRestart` and `Restart` actions, and a fenced host that returns.

use crate::support::cluster::wait_for;
use crate::support::ha::{
    ha_host, ha_policy, ha_setup, ha_setup_with_ipmi, ipmi_power, wait_recovered, wait_verdict,
};
use crate::support::hosts::{boots, console, running};
use crate::support::lab;
use crate::support::objects::{BOOT, host_of, pool_event_count, ready_reason, wait_vm};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

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
        wait_recovered(&c, name, &h2, &h1, "ShutOff").await;
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
