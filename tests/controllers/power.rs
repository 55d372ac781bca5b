//! Power management, run by the HostPool controller, against fake hosts and fake BMCs: a mostly
//! idle pool empties one host by live migration and powers it off (Draining → Standby); a VM
//! waiting for capacity powers it on again (Waking → On); a host in Standby is never taken for a
//! failed one (no fence, no HA incident) and its VMs wait for it rather than being reported
//! unreachable.

use super::support::{World, host_uri, node, pool};
use ferry::api::HAPolicy;
use ferry::api::power::HostPower;
use ferry::api::{HostPool, VirtualMachine};
use ferry::controller::host_pool::reconcile;
use ferry::fence::Power;
use ferry::fence::fake::FakeBmcs;
use ferry::hypervisor::fake::{FakeConnector, FakeHost, sample_definition};
use ferry::plan::domain::{DomainState, ShutOffReason};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn uid(name: &str) -> String {
    format!(
        "00000000-0000-4000-8000-00000000000{}",
        name.as_bytes()[0] - b'a' + 1
    )
}

/// VM `name` in `phase` on `host`.
fn vm_on(name: &str, host: &str, phase: &str) -> VirtualMachine {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "apps", "uid": uid(name), "generation": 1,
                     "finalizers": [ferry::api::FINALIZER]},
        "spec": {"hostPool": "lab", "cpu": {"cores": 1}, "memory": "128Mi",
                 "disks": [{"name": "root", "image": "tiny.qcow2"}]},
        "status": {"phase": phase, "host": host, "domainUUID": uid(name)}
    }))
    .expect("vm")
}

/// Three hosts, fenced through (fake) IPMI BMCs, with power management: two hosts kept on, a
/// Standby after one second of low load.
fn power_pool() -> HostPool {
    let mut p = pool(3);
    p.spec.fencing = Some(
        serde_json::from_value(
            json!({"driver": "IPMI", "addressTemplate": "ipmi://{address}",
                                      "credentialsSecret": "bmc"}),
        )
        .expect("fencing"),
    );
    p.spec.power = Some(
        serde_json::from_value(json!({"minHostsOn": 2, "standbyAfterSeconds": 1})).expect("power"),
    );
    p
}

/// Three fake hosts and their BMCs; a power change through a BMC powers the fake host off or on.
fn hosts() -> (FakeConnector, Vec<FakeHost>, FakeBmcs) {
    let fakes = FakeConnector::new();
    let hosts: Vec<FakeHost> = (1..=3).map(|i| fakes.add_host(&host_uri(i))).collect();
    for h in &hosts {
        h.set_counters("none", 0, 0);
    }
    let bmcs = FakeBmcs::new();
    let by_name = hosts.clone();
    bmcs.on_change(move |name, on| {
        let i = name
            .trim_start_matches('h')
            .parse::<usize>()
            .unwrap_or(1)
            .saturating_sub(1);
        if on {
            by_name[i].power_on();
        } else {
            by_name[i].power_off();
        }
    });
    (fakes, hosts, bmcs)
}

/// [`hosts`], with h3 in Standby: powered off through its BMC, and so in `p`'s status.
fn h3_in_standby(p: &mut HostPool) -> (FakeConnector, FakeBmcs) {
    let (fakes, hosts, bmcs) = hosts();
    hosts[2].power_off();
    bmcs.set_power("h3", Power::Off);
    let st = p.status.as_mut().expect("status");
    st.hosts[2] = serde_json::from_value(json!({
        "name": "h3", "state": "Unreachable", "power": "Standby",
        "powerSince": "2026-01-01T00:00:00Z",
        "powerMessage": "powered off: the BMC reports Off",
        "allocatable": {"cpus": 8, "memory": "16Gi"}
    }))
    .expect("host");
    (fakes, bmcs)
}

/// Run `name` on fake host `h`.
fn run_on(h: &FakeHost, name: &str) {
    let def = sample_definition(
        "apps",
        name,
        &uid(name),
        &format!("/var/lib/ferry/images/{name}.qcow2"),
    );
    h.add_domain(&def, DomainState::Running).expect("domain");
    h.set_counters(&uid(name), 0, 100 << 20);
}

async fn pass(w: &World, p: &HostPool) {
    reconcile(Arc::new(w.server.get(p)), w.ctx.clone())
        .await
        .expect("reconcile");
}

fn host_power(w: &World, p: &HostPool, host: &str) -> (HostPower, Option<String>) {
    let st = w.server.get(p).status.expect("status");
    let h = st
        .hosts
        .into_iter()
        .find(|h| h.name == host)
        .expect("host in status");
    (h.power(), h.power_message)
}

#[tokio::test]
async fn an_idle_host_is_emptied_and_powered_off_then_a_waiting_vm_powers_it_on() {
    let p = power_pool();
    let (fakes, hosts, bmcs) = hosts();
    // a and b are busy (half a CPU each) on h1 and h2; c is idle on h3.
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        run_on(&hosts[i], n);
    }
    let vms = vec![
        vm_on("a", "h1", "Running"),
        vm_on("b", "h2", "Running"),
        vm_on("c", "h3", "Running"),
    ];
    let nodes = (1..=3).map(|i| node(i, true)).collect();
    let mut w = World::with_bmcs(
        fakes,
        vec![p.clone()],
        nodes,
        vms,
        vec![],
        vec![],
        Some(bmcs.clone()),
    );
    let start = Instant::now();
    let busy = |hosts: &[FakeHost]| {
        let ns = (start.elapsed().as_nanos() / 2) as u64;
        hosts[0].set_counters(&uid("a"), ns, 100 << 20);
        hosts[1].set_counters(&uid("b"), ns, 100 << 20);
    };
    // First sample: no CPU figure yet, nothing decided.
    pass(&w, &p).await;
    let st = w.server.get(&p).status.expect("status");
    let msg = st.power.and_then(|s| s.message).unwrap_or_default();
    assert!(msg.contains("waiting for a second load sample"), "{msg}");
    // Measured and low: since when is recorded.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    busy(&hosts);
    pass(&w, &p).await;
    let st = w.server.get(&p).status.expect("status");
    let power = st.power.expect("power status");
    assert!(power.low_since.is_some(), "{power:?}");
    assert!(
        power
            .message
            .as_deref()
            .is_some_and(|m| m.contains("host h3 to go to Standby; waiting")),
        "{power:?}"
    );
    // Low for longer than standbyAfter: the idle host is emptied.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    busy(&hosts);
    pass(&w, &p).await;
    assert_eq!(host_power(&w, &p, "h3").0, HostPower::Draining);
    let evacuations: Vec<serde_json::Value> = w
        .server
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/virtualmachinemigrations"))
        .map(|s| s.body)
        .collect();
    assert_eq!(evacuations.len(), 1, "{evacuations:?}");
    assert_eq!(evacuations[0]["spec"]["vmName"], "c");
    assert_eq!(
        evacuations[0]["metadata"]["annotations"]["ferry.dev/evacuates"],
        "h3"
    );
    // No new VM goes to a host being emptied.
    let fresh = w.server.get(&p);
    let candidates = ferry::controller::scheduling::candidates(&fresh, &w.ctx.caches, &w.ctx.ha);
    assert!(
        candidates.iter().any(|c| c.name == "h3" && c.cordoned),
        "{candidates:?}"
    );
    // The migration ran: c runs on h1, its domain on h3 is shut off.
    hosts[2].set_state(&uid("c"), DomainState::ShutOff(ShutOffReason::Migrated));
    run_on(&hosts[0], "c");
    let moved = vm_on("c", "h1", "Running");
    w.server.hold(&moved);
    w.refresh(&moved);
    // Empty: Standby; then powered off through the BMC once libvirt lists no running domain.
    pass(&w, &p).await;
    assert_eq!(host_power(&w, &p, "h3").0, HostPower::Standby);
    assert!(bmcs.changes().is_empty(), "not in the same pass");
    for _ in 0..10 {
        pass(&w, &p).await;
        if host_power(&w, &p, "h3").1.as_deref() == Some("powered off: the BMC reports Off") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(bmcs.changes(), [("h3".to_string(), "power_off")]);
    assert_eq!(bmcs.power("h3"), Power::Off);
    let st = w.server.get(&p).status.expect("status");
    assert_eq!(st.power.as_ref().map(|p| p.standby_hosts), Some(1));
    let (power, msg) = host_power(&w, &p, "h3");
    assert_eq!(
        (power, msg.as_deref()),
        (HostPower::Standby, Some("powered off: the BMC reports Off"))
    );
    let degraded = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("Degraded");
    assert_eq!(degraded.status, "False", "{degraded:?}");
    let reasons = w.server.event_reasons();
    for want in ["Draining", "Standby", "PoweringOff", "PoweredOff"] {
        assert!(reasons.iter().any(|r| r == want), "{want}: {reasons:?}");
    }
    assert!(
        !reasons.iter().any(|r| r == "HostUnreachable"),
        "{reasons:?}"
    );

    // A VM waits for capacity: h3 is chosen, powered on, and On once it answers.
    let mut waiting: VirtualMachine = vm_on("d", "h1", "Pending");
    waiting.status = Some(
        serde_json::from_value(json!({"phase": "Pending", "conditions": [
            {"type": "Ready", "status": "False", "reason": "NoHostAvailable",
             "message": "waiting for a host in HostPool lab: 2 host(s) lack memory",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}]}))
        .expect("status"),
    );
    w.server.hold(&waiting);
    w.refresh(&waiting);
    let woken = Instant::now();
    let mut on = false;
    for _ in 0..60 {
        busy(&hosts);
        pass(&w, &p).await;
        if host_power(&w, &p, "h3").0 == HostPower::On {
            on = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(on, "h3 is not on: {:?}", host_power(&w, &p, "h3"));
    assert_eq!(bmcs.changes().last(), Some(&("h3".to_string(), "power_on")));
    let reasons = w.server.event_reasons();
    for want in ["Waking", "PoweringOn", "PoweredOn"] {
        assert!(reasons.iter().any(|r| r == want), "{want}: {reasons:?}");
    }
    let fresh = w.server.get(&p);
    let candidates = ferry::controller::scheduling::candidates(&fresh, &w.ctx.caches, &w.ctx.ha);
    assert!(
        candidates
            .iter()
            .any(|c| c.name == "h3" && !c.cordoned && c.reachable),
        "{candidates:?}"
    );
    eprintln!("woken in {:?}", woken.elapsed());
}

#[tokio::test]
async fn a_host_in_standby_is_not_failed_and_its_vms_wait_for_it() {
    let mut p = power_pool();
    // h3 was put in Standby: powered off through its BMC.
    let (fakes, bmcs) = h3_in_standby(&mut p);
    // A stopped VM stays assigned to h3; HA grace periods are zero.
    let mut parked = vm_on("a", "h3", "Stopped");
    parked.spec.run_strategy = Some(ferry::api::RunStrategy::Halted);
    let policy: HAPolicy = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HAPolicy",
        "metadata": {"name": "ha", "namespace": "apps", "uid": "policy-uid", "generation": 1},
        "spec": {"hostPools": ["lab"], "notReadyGraceSeconds": 0,
                 "libvirtUnreachableGraceSeconds": 0, "notReadyAction": "Restart"}
    }))
    .expect("policy");
    let mut w = World::with_bmcs(
        fakes,
        vec![p.clone()],
        vec![node(1, true), node(2, true), node(3, false)],
        vec![parked.clone()],
        vec![],
        vec![policy.clone()],
        Some(bmcs.clone()),
    );
    let hc = Arc::new(ferry::controller::ha::HaContext::new(w.ctx.clone()));
    for _ in 0..15 {
        let _ = ferry::controller::ha::reconcile(Arc::new(w.server.get(&policy)), hc.clone()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bmcs.changes().is_empty(), "{:?}", bmcs.changes());
    let st = w.server.get(&policy).status.expect("policy status");
    let h3 = st.hosts.iter().find(|h| h.name == "h3").expect("h3 judged");
    assert_eq!(
        h3.verdict,
        ferry::api::ha_policy::HostVerdict::Standby,
        "{h3:?}"
    );
    assert!(st.incidents.is_empty(), "{:?}", st.incidents);
    let reasons = w.server.event_reasons();
    assert!(
        !reasons
            .iter()
            .any(|r| matches!(r.as_str(), "HostFailed" | "HostFencing" | "Failover")),
        "{reasons:?}"
    );
    // The VM controller tries nothing on h3: the VM says its host is in Standby.
    let _ = ferry::controller::virtual_machine::reconcile(Arc::new(parked.clone()), w.ctx.clone())
        .await;
    let vm = w.server.get(&parked);
    let ready = vm
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned())
        .expect("Ready");
    assert_eq!(ready.reason, "HostStandby", "{ready:?}");
    assert_eq!(
        vm.status.and_then(|s| s.phase),
        Some(ferry::api::VmPhase::Stopped)
    );
    // Asked to run, it waits for h3, which is powered on for it.
    let mut wanted = w.server.get(&parked);
    wanted.spec.run_strategy = Some(ferry::api::RunStrategy::Always);
    w.server.hold(&wanted);
    let _ = ferry::controller::virtual_machine::reconcile(Arc::new(wanted.clone()), w.ctx.clone())
        .await;
    let vm = w.server.get(&wanted);
    let st = vm.status.expect("status");
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.reason.as_str(), st.phase),
        ("HostStandby", Some(ferry::api::VmPhase::Pending)),
        "{ready:?}"
    );
    assert!(ready.message.contains("waiting for it to be powered on"));
    // Power management powers h3 on for it.
    w.refresh(&wanted);
    pass(&w, &p).await;
    let (power, msg) = host_power(&w, &p, "h3");
    assert_eq!(power, HostPower::Waking, "{msg:?}");
    let st = w.server.get(&p).status.expect("status");
    let said = st.power.and_then(|s| s.message).unwrap_or_default();
    assert!(
        said.contains("powering host h3 on: 1 VM(s) placed on it wait for it"),
        "{said}"
    );
}

/// A window of `spec.power.schedule` that is on raises the hosts kept on: a host in Standby is
/// powered on for it (no VM waits, the load is low), and the message says why.
#[tokio::test]
async fn a_schedule_window_powers_a_standby_host_on() {
    let mut p = power_pool();
    // Every day from 00:00 to 23:59 UTC, and from ten minutes ahead of it (the wake lead):
    // always on. Three hosts kept on in it, against two outside.
    p.spec.power = Some(
        serde_json::from_value(json!({"minHostsOn": 2, "standbyAfterSeconds": 1,
            "schedule": [{"from": "00:00", "to": "23:59", "minHostsOn": 3}]}))
        .expect("power"),
    );
    let (fakes, bmcs) = h3_in_standby(&mut p);
    let w = World::with_bmcs(
        fakes,
        vec![p.clone()],
        vec![node(1, true), node(2, true), node(3, false)],
        vec![],
        vec![],
        vec![],
        Some(bmcs.clone()),
    );
    let mut woken = false;
    for _ in 0..20 {
        pass(&w, &p).await;
        if bmcs.changes().contains(&("h3".to_string(), "power_on")) {
            woken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(woken, "h3 powered on: {:?}", host_power(&w, &p, "h3"));
    // The Event of the wake says why.
    let waking: Vec<String> = w
        .server
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/events"))
        .filter(|s| s.body["reason"] == "Waking")
        .map(|s| s.body.to_string())
        .collect();
    assert!(
        waking.iter().any(|e| e.contains("spec.power.schedule")),
        "{waking:?}"
    );
}
