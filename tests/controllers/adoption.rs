//! Taking over a domain made outside ferry (`spec.adopt`): refused claims change nothing on the
//! host and say why (`AdoptionBlocked`); an accepted one writes ferry's metadata into the running
//! domain (no definition, no start, no stop), records the domain in status, and from then on
//! the VM is managed like any other.

use super::host_pool::foreign;
use super::support::{World, host_uri, node, pool};
use ferry::api::condition::find;
use ferry::api::host_pool::AdoptionSpec;
use ferry::api::virtual_machine::AdoptSpec;
use ferry::api::{FINALIZER, VirtualMachine, VmPhase};
use ferry::controller::virtual_machine::reconcile;
use ferry::hypervisor::fake::{FakeConnector, FakeHost, Op};
use ferry::plan::adoption::{self, PoolView};
use ferry::plan::domain::DomainState;
use std::sync::Arc;

const DOMAIN_UUID: &str = "70295d7a-b851-46e1-bfa3-4e82b34cff8b";
const VM_UID: &str = "0b6f1b7e-1111-2222-3333-444455556666";

/// Host h1 of pool `lab` (which names `names` for adoption) runs domain `legacy`, made outside
/// ferry, on volume `legacy.qcow2` of the pool's storage.
fn setup(names: &[&str], vm: &VirtualMachine) -> (FakeHost, World) {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host(&host_uri(1));
    h1.add_pool("images", "/var/lib/ferry/images");
    h1.add_volume("images", "legacy.qcow2", 1 << 30, "qcow2")
        .expect("volume");
    h1.add_foreign_domain("legacy", DOMAIN_UUID, DomainState::Running);
    h1.describe_as(
        DOMAIN_UUID,
        foreign("legacy", DOMAIN_UUID, "/var/lib/ferry/images/legacy.qcow2"),
    );
    let mut p = pool(1);
    p.spec.adoption = Some(AdoptionSpec {
        domains: names.iter().map(|n| n.to_string()).collect(),
    });
    let world = World::new(
        fakes,
        vec![p],
        vec![node(1, true)],
        vec![vm.clone()],
        vec![],
        vec![],
    );
    (h1, world)
}

/// VM `apps/legacy` whose spec is what `kubectl ferry adopt h1 legacy` writes.
fn claiming_vm() -> VirtualMachine {
    let images = Vec::new();
    let view = PoolView {
        storage_dir: Some("/var/lib/ferry/images"),
        golden_images: &images,
        boot_dirs: &images,
    };
    let described = foreign("legacy", DOMAIN_UUID, "/var/lib/ferry/images/legacy.qcow2");
    let hw = adoption::assess(&described, DomainState::Running, &view)
        .hardware
        .expect("adoptable");
    let mut spec = adoption::spec_for(&hw, DomainState::Running, "lab");
    spec.adopt = Some(AdoptSpec {
        host: "h1".into(),
        domain: "legacy".into(),
        uuid: DOMAIN_UUID.into(),
    });
    let mut vm = VirtualMachine::new("legacy", spec);
    vm.metadata.namespace = Some("apps".into());
    vm.metadata.uid = Some(VM_UID.into());
    vm.metadata.generation = Some(1);
    vm.metadata.finalizers = Some(vec![FINALIZER.into()]);
    vm
}

async fn reconciled(world: &mut World, vm: &VirtualMachine, times: usize) -> VirtualMachine {
    let mut current = vm.clone();
    for _ in 0..times {
        let _ = reconcile(Arc::new(current.clone()), world.ctx.clone()).await;
        current = world.refresh(&current);
    }
    current
}

fn ready(vm: &VirtualMachine) -> (String, String) {
    let st = vm.status.as_ref().expect("status");
    find(&st.conditions, "Ready")
        .map(|c| (c.reason.clone(), c.message.clone()))
        .expect("Ready")
}

/// Nothing on the host changed: the domain runs as it did, without ferry's metadata, and no
/// call but reads reached it.
fn untouched(h1: &FakeHost) {
    let d = h1.domain(DOMAIN_UUID).expect("the domain");
    assert!(d.state.is_active(), "{d:?}");
    assert_eq!((d.live, d.config), (None, None));
    for op in [
        Op::SetMetadata,
        Op::DefineDomain,
        Op::StartDomain,
        Op::DestroyDomain,
        Op::ShutdownDomain,
        Op::UndefineDomain,
    ] {
        assert_eq!(h1.count(op), 0, "{op:?}");
    }
}

#[tokio::test]
async fn a_domain_the_pool_does_not_name_is_not_claimed() {
    let vm = claiming_vm();
    let (h1, mut world) = setup(&["web-*"], &vm);
    let after = reconciled(&mut world, &vm, 2).await;
    let (reason, message) = ready(&after);
    assert_eq!(reason, "AdoptionBlocked");
    assert!(
        message.contains("does not name domain \"legacy\" in spec.adoption.domains"),
        "{message}"
    );
    assert_eq!(after.status.as_ref().and_then(|s| s.host.clone()), None);
    assert_eq!(h1.count(Op::LookupDomain), 0, "the host is not even asked");
    untouched(&h1);
}

#[tokio::test]
async fn a_spec_that_does_not_describe_the_domain_is_refused_with_every_difference() {
    let mut vm = claiming_vm();
    vm.spec.memory = Some("512Mi".into());
    vm.spec.disks[0].volume = Some("other.qcow2".into());
    let (h1, mut world) = setup(&["legacy"], &vm);
    let after = reconciled(&mut world, &vm, 2).await;
    let (reason, message) = ready(&after);
    assert_eq!(reason, "AdoptionBlocked");
    for field in ["spec.memory", "spec.disks"] {
        assert!(message.contains(field), "{field}: {message}");
    }
    untouched(&h1);
    // Deleting the refused VM leaves the domain alone too.
    let mut deleted = after.clone();
    deleted.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    world.server.hold(&deleted);
    let _ = reconcile(Arc::new(deleted), world.ctx.clone()).await;
    untouched(&h1);
}

#[tokio::test]
async fn an_accepted_claim_takes_the_running_domain_over_without_touching_it() {
    let vm = claiming_vm();
    let (h1, mut world) = setup(&["legacy"], &vm);
    let after = reconciled(&mut world, &vm, 3).await;
    let st = after.status.clone().expect("status");
    assert_eq!(st.phase, Some(VmPhase::Running), "{:?}", ready(&after));
    assert_eq!(st.host.as_deref(), Some("h1"));
    assert_eq!(st.domain_uuid.as_deref(), Some(DOMAIN_UUID));
    assert_eq!(st.adopted_domain.as_deref(), Some("legacy"));
    assert_eq!(ready(&after).0, "Running", "{:?}", ready(&after));
    let restart = find(&st.conditions, "RestartRequired").expect("RestartRequired");
    assert_eq!(restart.status, "False", "{}", restart.message);
    let d = h1.domain(DOMAIN_UUID).expect("the domain");
    assert!(d.state.is_active());
    assert_eq!(d.name, "legacy", "it keeps its name");
    for m in [&d.live, &d.config] {
        assert_eq!(
            m.as_ref().map(|m| m.owner.uid.as_str()),
            Some(VM_UID),
            "ferry's metadata names the VM: {d:?}"
        );
    }
    for op in [
        Op::DefineDomain,
        Op::StartDomain,
        Op::DestroyDomain,
        Op::ShutdownDomain,
    ] {
        assert_eq!(h1.count(op), 0, "{op:?}: nothing the guest would notice");
    }
    assert!(
        world
            .server
            .event_reasons()
            .contains(&"TookOver".to_string())
    );
    // Managed from then on: Halted stops it, Always starts it again (as the same domain).
    let mut halted = after.clone();
    halted.spec.run_strategy = Some(ferry::api::virtual_machine::RunStrategy::Halted);
    halted.metadata.generation = Some(2);
    world.server.hold(&halted);
    let halted = reconciled(&mut world, &halted, 2).await;
    assert!(!h1.domain(DOMAIN_UUID).expect("kept").state.is_active());
    assert_eq!(
        halted.status.as_ref().and_then(|s| s.phase),
        Some(VmPhase::Stopped)
    );
    assert_eq!(h1.domains().len(), 1, "no second domain");
}
