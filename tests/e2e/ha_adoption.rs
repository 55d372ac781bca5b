//! Look before you start: a VM whose status names a dead host, but which runs on another host
//! (a migration that finished while nobody recorded it), is adopted where it runs after the dead
//! host is fenced, never started a second time elsewhere.

use crate::support::cluster::wait_for;
use crate::support::ha::{attach_ipmi, ha_setup_on, ipmi_fencing, ipmi_power_off};
use crate::support::hosts::{boots, console, domain_on, running};
use crate::support::objects::{BOOT, host_of, ready_reason, wait_vm};
use kube::Api;
use std::time::Duration;

/// Three lab hosts, a VM on h1 (A), h1's BMC an IPMI emulator. With the controller down, the VM
/// is live-migrated to h2 (B) behind ferry's back, so status still says h1; then h1 loses power
/// and its kubelet goes silent. h2 is cordoned, so a restart elsewhere would go to h3 (C). A new
/// controller fences h1 (the BMC reports Off) and hands the VM over for a restart: it must find
/// the VM running on h2 and adopt it there (status.host h2, an `Adopted` Event), leave h3 without
/// a domain, and never reboot the guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn a_vm_running_elsewhere_is_adopted_not_started_again() {
    let (mut c, lab, nodes, mut ctl) = ha_setup_on(
        3,
        "ferry-e2e-adopt",
        Some(ipmi_fencing()),
        &[("vm", None)],
        8,
    )
    .await;
    let ns = c.namespace.clone();
    let (h1, h2) = (nodes[0].clone(), nodes[1].clone());
    let sim = attach_ipmi(&c, &lab, &h1, &h2, "s3cret").await;
    let domain = format!("{ns}_vm");
    let log = console(&lab, &ns, "vm");
    assert_eq!(boots(&std::fs::read_to_string(&log).unwrap_or_default()), 1);

    // Behind ferry's back: the controller is gone while the VM moves to h2.
    ctl.kill();
    c.cordon(&h2, true).await;
    let dest = format!("qemu+tcp://{}/system", lab.host("h2").ip);
    lab.virsh_ok(
        "h1",
        &[
            "migrate",
            "--live",
            "--p2p",
            "--persistent",
            "--undefinesource",
            "--unsafe",
            &domain,
            &dest,
        ],
    )
    .expect("migrate the VM to h2 with virsh");
    assert_eq!(domain_on(&lab, "h2", &domain), (true, true), "runs on h2");
    assert!(!domain_on(&lab, "h1", &domain).0, "gone from h1");

    // h1 loses power; its kubelet goes silent. A new controller takes over.
    ipmi_power_off(&sim);
    c.node_not_ready(&h1).await;
    let ctl = c.controller("ferry-e2e-adopt-2");

    let vm = wait_vm(&c, "vm", "adopted on h2", BOOT, |vm| {
        host_of(vm).as_deref() == Some(h2.as_str())
            && ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let r = vm
        .status
        .as_ref()
        .and_then(|s| s.last_recovery.clone())
        .expect("lastRecovery");
    assert_eq!(r.from_host, h1);
    assert_eq!(r.to_host.as_deref(), Some(h2.as_str()));
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), &ns);
    let adopted = wait_for("an Adopted Event", Duration::from_secs(30), || {
        let events = events.clone();
        async move {
            events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("Adopted"))
                .and_then(|e| e.note)
        }
    })
    .await;
    assert!(adopted.contains(&h2), "{adopted}");

    // Never started again: nothing on h3, one copy on h2, the guest booted once.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!domain_on(&lab, "h3", &domain).0, "no domain on h3");
    assert_eq!(running(&lab, "h2"), vec![domain.clone()]);
    assert!(running(&lab, "h3").is_empty());
    assert_eq!(
        boots(&std::fs::read_to_string(&log).unwrap_or_default()),
        1,
        "the guest was not rebooted"
    );
    let vm = c.vms().get("vm").await.expect("vm");
    assert_eq!(host_of(&vm).as_deref(), Some(h2.as_str()));
    drop(ctl);
}
