//! VM monitoring under an HAPolicy, across an outage of the VM's host (`Ready` then says
//! `HostUnreachable` and the phase is `Unknown`): a VM held after too many unplanned restarts
//! stays held when the host answers again, and a domain that stopped during the outage counts
//! as an unplanned stop: neither is started again uncounted.

use super::support::{World, host_uri, node, pool, vm, with_image};
use ferry::api::virtual_machine::RESTART_ANNOTATION;
use ferry::api::{HAPolicy, VirtualMachine, VmPhase};
use ferry::controller::virtual_machine::reconcile;
use ferry::hypervisor::fake::{FakeConnector, FakeHost, Op};
use ferry::plan::domain::{DomainState, ShutOffReason};
use serde_json::json;
use std::sync::Arc;

const UID: &str = "0b6f1b7e-1111-2222-3333-444455556666";

/// Covers pool `lab`; a crashed VM is not started again (`maxRestarts: 0`).
fn no_restarts() -> HAPolicy {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HAPolicy",
        "metadata": {"name": "ha", "namespace": "apps", "uid": "policy-uid", "generation": 1},
        "spec": {"hostPools": ["lab"], "vmMonitoring": {"maxRestarts": 0}}
    }))
    .expect("policy")
}

async fn once(world: &mut World, vm: &VirtualMachine) -> VirtualMachine {
    // A reconcile that fails (host unreachable) has written its status first.
    let _ = reconcile(Arc::new(vm.clone()), world.ctx.clone()).await;
    world.refresh(vm)
}

/// Host h1 answers again: after the connection registry's first backoff (1 s), a few
/// reconciles of `vm`; the VM after them.
async fn host_back(world: &mut World, h1: &FakeHost, mut vm: VirtualMachine) -> VirtualMachine {
    h1.set_reachable(true);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for _ in 0..3 {
        vm = once(world, &vm).await;
    }
    vm
}

fn ready_reason(vm: &VirtualMachine) -> String {
    vm.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

fn phase(vm: &VirtualMachine) -> Option<VmPhase> {
    vm.status.as_ref().and_then(|s| s.phase)
}

/// VM `web` (`Always`) running on h1, under [`no_restarts`].
async fn running() -> (World, FakeHost, VirtualMachine) {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host(&host_uri(1));
    with_image(&h1);
    let obj = vm("Always");
    let mut world = World::new(
        fakes,
        vec![pool(1)],
        vec![node(1, true)],
        vec![obj.clone()],
        vec![],
        vec![no_restarts()],
    );
    let mut now = obj;
    for _ in 0..6 {
        now = once(&mut world, &now).await;
        if phase(&now) == Some(VmPhase::Running) {
            break;
        }
    }
    assert_eq!(phase(&now), Some(VmPhase::Running), "{:?}", now.status);
    (world, h1, now)
}

#[tokio::test]
async fn a_vm_held_by_its_restart_limit_stays_held_through_a_host_outage() {
    let (mut world, h1, now) = running().await;
    let starts = h1.count(Op::StartDomain);

    // The guest crashes: held, not started.
    h1.set_state(UID, DomainState::ShutOff(ShutOffReason::Crashed));
    let held = once(&mut world, &now).await;
    assert_eq!(ready_reason(&held), "RestartLimitReached");
    assert_eq!(h1.count(Op::StartDomain), starts);

    // The host stops answering for a while: the VM says so.
    h1.set_reachable(false);
    let cut = once(&mut world, &held).await;
    assert_eq!(ready_reason(&cut), "HostUnreachable", "{:?}", cut.status);

    // It answers again, the domain still off: held again, still not started.
    let back = host_back(&mut world, &h1, cut).await;
    assert_eq!(
        ready_reason(&back),
        "RestartLimitReached",
        "{:?}",
        back.status
    );
    assert_eq!(h1.count(Op::StartDomain), starts, "started uncounted");
    assert!(h1.domain(UID).is_some_and(|d| !d.state.is_active()));
    assert!(back.status.as_ref().is_some_and(|s| s.restart_held));

    // Someone restarts it: started, and the hold is over.
    let mut asked = world.server.get(&back);
    asked
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(RESTART_ANNOTATION.to_string(), "1".to_string());
    world.server.hold(&asked);
    let asked = world.refresh(&asked);
    let restarted = once(&mut world, &asked).await;
    assert_eq!(h1.count(Op::StartDomain), starts + 1);
    assert!(restarted.status.as_ref().is_some_and(|s| !s.restart_held));
}

#[tokio::test]
async fn a_guest_that_stops_while_its_host_is_unreachable_counts_as_a_crash() {
    let (mut world, h1, now) = running().await;
    let starts = h1.count(Op::StartDomain);

    // The host stops answering; meanwhile its guest crashes (the event is never heard).
    h1.set_reachable(false);
    let cut = once(&mut world, &now).await;
    assert_eq!(phase(&cut), Some(VmPhase::Unknown), "{:?}", cut.status);
    h1.set_state(UID, DomainState::ShutOff(ShutOffReason::Crashed));
    let back = host_back(&mut world, &h1, cut).await;
    assert_eq!(
        ready_reason(&back),
        "RestartLimitReached",
        "{:?}",
        back.status
    );
    assert_eq!(h1.count(Op::StartDomain), starts, "started uncounted");
}
