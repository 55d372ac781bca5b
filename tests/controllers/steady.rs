//! When the VirtualMachine controller looks at a VM again: soon while something is under way,
//! after the slow, jittered safety resync once the VM is steady (events, watches and
//! reconnections wake it earlier), and every few seconds while its guest agent has not reported
//! an address yet.

use super::support::{World, host_uri, node, pool, vm, with_image};
use ferry::api::{VirtualMachine, VmPhase};
use ferry::controller::virtual_machine::reconcile;
use ferry::hypervisor::fake::{FakeConnector, FakeHost, Op};
use ferry::plan::domain::{GuestInfo, GuestInterface};
use kube::runtime::controller::Action;
use std::sync::Arc;
use std::time::Duration;

const UID: &str = "0b6f1b7e-1111-2222-3333-444455556666";

/// The delay of a requeue (kube-runtime's `Action` shows it only in its `Debug` form).
fn after(action: &Action) -> Option<Duration> {
    let text = format!("{action:?}");
    let inner = text.split("Some(").nth(1)?.split(')').next()?;
    let (number, unit) = inner.split_at(inner.find(|c: char| c.is_alphabetic() || c == 'µ')?);
    let n: f64 = number.parse().ok()?;
    Some(Duration::from_secs_f64(match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    }))
}

/// One reconcile of `vm` (as the world's caches show it): the requeue, and the VM after it.
async fn once(world: &mut World, vm: &VirtualMachine) -> (Option<Duration>, VirtualMachine) {
    let action = reconcile(Arc::new(vm.clone()), world.ctx.clone())
        .await
        .expect("reconcile");
    (after(&action), world.refresh(vm))
}

/// Reconciles until the VM's phase is `phase` (at most 6 times); the last requeue and the VM.
async fn until_phase(
    world: &mut World,
    mut vm: VirtualMachine,
    phase: VmPhase,
) -> (Option<Duration>, VirtualMachine) {
    for _ in 0..6 {
        let (requeue, now) = once(world, &vm).await;
        vm = now;
        if self::phase(&vm) == Some(phase) {
            return (requeue, vm);
        }
    }
    panic!("never {phase:?}: {:?}", vm.status);
}

/// One host with the golden image.
fn one_host() -> (FakeConnector, FakeHost) {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host(&host_uri(1));
    with_image(&h1);
    (fakes, h1)
}

fn phase(vm: &VirtualMachine) -> Option<VmPhase> {
    vm.status.as_ref().and_then(|s| s.phase)
}

/// The first interface's address in the VM's status.
fn address(vm: &VirtualMachine) -> Option<String> {
    vm.status.as_ref()?.interfaces.first()?.ip_address.clone()
}

fn world(fakes: FakeConnector, vm: &VirtualMachine) -> World {
    World::new(
        fakes,
        vec![pool(1)],
        vec![node(1, true)],
        vec![vm.clone()],
        vec![],
        vec![],
    )
}

/// Inside the default safety resync's window (300 s ± 15 %), far above the old 30 s.
fn safety(d: Option<Duration>) -> bool {
    d.is_some_and(|d| d >= Duration::from_secs(255) && d <= Duration::from_secs(345))
}

#[tokio::test]
async fn a_steady_vm_waits_for_the_safety_resync_and_a_transition_does_not() {
    let (fakes, h1) = one_host();
    let obj = vm("Always");
    let mut world = world(fakes, &obj);
    let (requeue, running) = until_phase(&mut world, obj, VmPhase::Running).await;
    assert!(safety(requeue), "running, no network: {requeue:?}");
    // Looked at again with nothing changed: still steady, and the waits differ (jitter).
    let mut waits = Vec::new();
    for _ in 0..5 {
        let (requeue, _) = once(&mut world, &running).await;
        assert!(safety(requeue), "{requeue:?}");
        waits.push(requeue);
    }
    waits.dedup();
    assert!(waits.len() > 1, "jittered: {waits:?}");

    // Stopping a guest that takes its time: looked at every 2 s until it is off.
    h1.ignore_shutdown(UID, true);
    let mut halted = world.server.get(&running);
    halted.spec.run_strategy = Some(ferry::api::RunStrategy::Halted);
    world.server.hold(&halted);
    let halted = world.refresh(&halted);
    let (requeue, stopping) = once(&mut world, &halted).await;
    assert_eq!(phase(&stopping), Some(VmPhase::Stopping));
    assert!(
        requeue.is_some_and(|d| d <= Duration::from_secs(2)),
        "{requeue:?}"
    );
    assert_eq!(h1.count(Op::ShutdownDomain), 1);
    // Off: a stopped VM is steady too.
    h1.ignore_shutdown(UID, false);
    h1.set_state(
        UID,
        ferry::plan::domain::DomainState::ShutOff(ferry::plan::domain::ShutOffReason::Shutdown),
    );
    let (requeue, stopped) = once(&mut world, &stopping).await;
    assert_eq!(phase(&stopped), Some(VmPhase::Stopped));
    assert!(safety(requeue), "stopped: {requeue:?}");
}

#[tokio::test]
async fn the_guest_agent_is_asked_again_only_while_an_address_is_missing() {
    let (fakes, h1) = one_host();
    let mut obj = vm("Always");
    obj.spec.networks = serde_json::from_value(serde_json::json!([
        {"name": "eth0", "network": "default"}
    ]))
    .expect("networks");
    let mut world = world(fakes, &obj);
    let (requeue, running) = until_phase(&mut world, obj, VmPhase::Running).await;
    assert_eq!(
        requeue,
        Some(Duration::from_secs(10)),
        "no address yet: the agent is asked again soon"
    );
    let mac = running.status.as_ref().expect("status").interfaces[0]
        .mac
        .clone();
    // The agent answers, without an address yet (DHCP under way): still asked.
    h1.set_guest_info(
        UID,
        Some(GuestInfo {
            os: Some("tiny".into()),
            interfaces: vec![GuestInterface {
                name: "eth0".into(),
                mac: mac.clone(),
                addresses: vec![],
            }],
        }),
    );
    let (requeue, running) = once(&mut world, &running).await;
    assert_eq!(requeue, Some(Duration::from_secs(10)));
    // The address is known: steady.
    h1.set_guest_info(
        UID,
        Some(GuestInfo {
            os: Some("tiny".into()),
            interfaces: vec![GuestInterface {
                name: "eth0".into(),
                mac,
                addresses: vec!["10.0.0.50".into()],
            }],
        }),
    );
    let (requeue, running) = once(&mut world, &running).await;
    assert_eq!(address(&running).as_deref(), Some("10.0.0.50"));
    assert!(safety(requeue), "{requeue:?}");
    // Its next look (a safety resync) does not ask the agent, and the address stays.
    let asked = h1.count(Op::GuestInfo);
    let (requeue, running) = once(&mut world, &running).await;
    assert_eq!(h1.count(Op::GuestInfo), asked, "the agent was asked again");
    assert_eq!(address(&running).as_deref(), Some("10.0.0.50"));
    assert!(safety(requeue), "{requeue:?}");
}

/// On a safety resync a steady VM asks its host nothing while the HostPool's last reading of the
/// host stands (no domain event or change since); an event ends that, and the host is asked.
#[tokio::test]
async fn a_steady_vm_asks_its_host_nothing_while_the_pools_reading_stands() {
    let (fakes, h1) = one_host();
    let obj = vm("Always");
    let mut world = world(fakes, &obj);
    let (_, running) = until_phase(&mut world, obj, VmPhase::Running).await;
    // The first look after the start asks the guest agent (not asked at the start itself: the
    // guest has not booted then).
    let agent = h1.count(Op::GuestInfo);
    let (_, running) = once(&mut world, &running).await;
    assert_eq!(h1.count(Op::GuestInfo), agent + 1, "the agent was asked");
    // The pool's probe reads the host.
    ferry::controller::host_pool::reconcile(Arc::new(pool(1)), world.ctx.clone())
        .await
        .expect("pool reconcile");
    let before = h1.calls().len();
    let (requeue, again) = once(&mut world, &running).await;
    assert!(safety(requeue), "{requeue:?}");
    assert_eq!(phase(&again), Some(VmPhase::Running));
    let asked: Vec<String> = h1.calls()[before..]
        .iter()
        .map(|c| format!("{:?}", c.op))
        .collect();
    assert!(asked.is_empty(), "a steady VM asked its host: {asked:?}");

    // Destroyed behind ferry's back: the event ends the reading's standing; the VM looks and
    // starts its domain again (Always).
    h1.set_state(
        UID,
        ferry::plan::domain::DomainState::ShutOff(ferry::plan::domain::ShutOffReason::Destroyed),
    );
    let (lookups, starts) = (h1.count(Op::LookupDomain), h1.count(Op::StartDomain));
    let (_, restarted) = once(&mut world, &again).await;
    assert!(h1.count(Op::LookupDomain) > lookups, "the host was asked");
    assert_eq!(h1.count(Op::StartDomain), starts + 1, "started again");
    assert_eq!(phase(&restarted), Some(VmPhase::Running));
}
