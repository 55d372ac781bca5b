//! A VM sized by a VirtualMachineClass whose class is deleted: placed and running, it keeps the
//! size its domain has and stays managed (a Warning Event says why); not placed yet, it waits
//! with `ClassNotFound`.

use super::support::{World, host_uri, node, pool, vm, with_image};
use ferry::api::{VirtualMachine, VirtualMachineClass, VmPhase};
use ferry::controller::virtual_machine::reconcile;
use ferry::hypervisor::fake::{FakeConnector, Op};
use ferry::plan::domain::DomainState;
use serde_json::json;
use std::sync::Arc;

fn small() -> VirtualMachineClass {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachineClass",
        "metadata": {"name": "small", "generation": 1},
        "spec": {"cpu": {"cores": 2}, "memory": "192Mi"}
    }))
    .expect("class")
}

/// VM `web` sized by class `small` (no cpu or memory of its own).
fn sized_by_class() -> VirtualMachine {
    let mut v = vm("Always");
    v.spec.cpu = None;
    v.spec.memory = None;
    v.spec.class_name = Some("small".into());
    v
}

async fn once(world: &mut World, vm: &VirtualMachine) -> VirtualMachine {
    let _ = reconcile(Arc::new(vm.clone()), world.ctx.clone()).await;
    world.refresh(vm)
}

fn ready(vm: &VirtualMachine) -> (String, String) {
    vm.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_running_vm_keeps_its_size_when_its_class_is_deleted() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host(&host_uri(1));
    with_image(&h1);
    let obj = sized_by_class();
    let mut world = World::new(
        fakes,
        vec![pool(1)],
        vec![node(1, true)],
        vec![obj.clone()],
        vec![],
        vec![],
    );
    world.server.hold(&small());
    let mut now = obj;
    for _ in 0..6 {
        now = once(&mut world, &now).await;
        if now.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Running) {
            break;
        }
    }
    let st = now.status.clone().expect("status");
    assert_eq!(st.phase, Some(VmPhase::Running), "{st:?}");
    let res = st.resources.expect("resources");
    assert_eq!((res.cpus, res.memory.as_str()), (2, "192Mi"));

    world.server.forget(&small());
    h1.take_calls();
    for _ in 0..2 {
        now = once(&mut world, &now).await;
    }
    let st = now.status.clone().expect("status");
    assert_eq!(st.phase, Some(VmPhase::Running), "still managed: {st:?}");
    assert_eq!(ready(&now).0, "True", "{st:?}");
    let res = st.resources.expect("resources");
    assert_eq!((res.cpus, res.memory.as_str()), (2, "192Mi"));
    assert!(
        world
            .server
            .event_reasons()
            .iter()
            .any(|r| r == "ClassNotFound"),
        "a Warning Event says the class is gone: {:?}",
        world.server.event_reasons()
    );
    let changed: Vec<Op> = h1
        .take_calls()
        .into_iter()
        .map(|c| c.op)
        .filter(|op| {
            matches!(
                op,
                Op::DefineDomain | Op::StartDomain | Op::DestroyDomain | Op::ShutdownDomain
            )
        })
        .collect();
    assert!(
        changed.is_empty(),
        "nothing redefined or restarted: {changed:?}"
    );
    assert!(
        h1.domains().iter().all(|d| d.state == DomainState::Running),
        "the domain keeps running"
    );

    // A VM not placed yet waits for the class.
    let mut fresh = sized_by_class();
    fresh.metadata.name = Some("db".into());
    fresh.metadata.uid = Some("0b6f1b7e-9999-2222-3333-444455556666".into());
    world.server.hold(&fresh);
    let fresh = once(&mut world, &fresh).await;
    assert_eq!(ready(&fresh), ("False".into(), "ClassNotFound".into()));
    assert_eq!(
        fresh.status.as_ref().and_then(|s| s.phase),
        Some(VmPhase::Pending)
    );
}
