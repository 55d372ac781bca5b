//! The VirtualMachine controller's drive steps against a fake host: place → disks → define →
//! power, and what each failure on the way shows.

use super::support::{World, host_uri, node, pool, vm};
use ferry::api::{VirtualMachine, VmPhase};
use ferry::controller::virtual_machine::reconcile;
use ferry::hypervisor::fake::{FakeConnector, FakeHost, Fault, Op, Times};
use std::sync::Arc;

const UID: &str = "0b6f1b7e-1111-2222-3333-444455556666";

struct Case {
    name: &'static str,
    strategy: &'static str,
    /// What the host is like before the VM arrives.
    host: fn(&FakeHost),
    phase: VmPhase,
    ready: &'static str,
    /// Whether a domain is defined, and whether it runs.
    defined: bool,
    running: bool,
    /// Events the VM gets (in this order, others may come between).
    events: &'static [&'static str],
}

/// Storage pool `images` with golden image `tiny.qcow2`.
fn with_image(h: &FakeHost) {
    h.add_pool("images", "/var/lib/ferry/images");
    h.add_volume("images", "tiny.qcow2", 1 << 30, "qcow2")
        .expect("image");
}

/// A world of one host, h1, in pool `lab`, and `vm`.
fn one_host(fakes: FakeConnector, vm: VirtualMachine) -> (World, VirtualMachine) {
    let world = World::new(
        fakes,
        vec![pool(1)],
        vec![node(1, true)],
        vec![vm.clone()],
        vec![],
        vec![],
    );
    (world, vm)
}

/// `vm` after `times` reconciles, each seeing what the one before wrote (as a watch would).
async fn reconciled(world: &mut World, mut vm: VirtualMachine, times: usize) -> VirtualMachine {
    for _ in 0..times {
        let _ = reconcile(Arc::new(vm.clone()), world.ctx.clone()).await;
        vm = world.refresh(&vm);
    }
    vm
}

fn failed(code: i32, message: &str) -> Fault {
    Fault::Failed {
        code,
        message: message.to_string(),
    }
}

#[tokio::test]
async fn drive_steps() {
    let cases = [
        Case {
            name: "an Always VM is placed, its disk created, its domain defined and started",
            strategy: "Always",
            host: with_image,
            phase: VmPhase::Running,
            ready: "Running",
            defined: true,
            running: true,
            events: &["Scheduled", "DiskCreated", "Defined", "Started"],
        },
        Case {
            name: "a Halted VM is defined and left off",
            strategy: "Halted",
            host: with_image,
            phase: VmPhase::Stopped,
            ready: "Stopped",
            defined: true,
            running: false,
            events: &["Scheduled", "DiskCreated", "Defined"],
        },
        Case {
            name: "a disk locked by a copy elsewhere keeps the domain off",
            strategy: "Always",
            host: |h| {
                with_image(h);
                h.inject(Op::StartDomain, Fault::DiskLocked, Times::Always);
            },
            phase: VmPhase::Pending,
            ready: "DiskLocked",
            defined: true,
            running: false,
            events: &["Defined", "DiskLocked"],
        },
        Case {
            name: "a missing golden image creates nothing",
            strategy: "Always",
            host: |h| h.add_pool("images", "/var/lib/ferry/images"),
            phase: VmPhase::Pending,
            ready: "ImageNotFound",
            defined: false,
            running: false,
            events: &["Scheduled", "ImageNotFound"],
        },
        Case {
            name: "a storage pool the host cannot use is named",
            strategy: "Always",
            host: |h| {
                with_image(h);
                h.inject(
                    Op::EnsurePool,
                    failed(38, "permission denied"),
                    Times::Always,
                );
            },
            phase: VmPhase::Pending,
            ready: "StoragePoolUnavailable",
            defined: false,
            running: false,
            events: &["StoragePoolUnavailable"],
        },
        Case {
            name: "a definition libvirt refuses fails the VM",
            strategy: "Always",
            host: |h| {
                with_image(h);
                h.inject(Op::DefineDomain, failed(27, "XML error"), Times::Always);
            },
            phase: VmPhase::Failed,
            ready: "DefineFailed",
            defined: false,
            running: false,
            events: &["DiskCreated", "DefineFailed"],
        },
        Case {
            name: "an unreachable host is retried, and nothing is created",
            strategy: "Always",
            host: |h| {
                with_image(h);
                h.set_reachable(false);
            },
            phase: VmPhase::Unknown,
            ready: "HostUnreachable",
            defined: false,
            running: false,
            events: &["Scheduled", "HostUnreachable"],
        },
    ];
    for case in cases {
        let fakes = FakeConnector::new();
        let h1 = fakes.add_host(&host_uri(1));
        (case.host)(&h1);
        let (mut world, obj) = one_host(fakes, vm(case.strategy));
        let current = reconciled(&mut world, obj, 3).await;
        let st = current.status.clone().unwrap_or_default();
        let ready = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.reason.clone(), c.message.clone()));
        assert_eq!(st.phase, Some(case.phase), "{}: {ready:?}", case.name);
        assert_eq!(
            ready.as_ref().map(|r| r.0.as_str()),
            Some(case.ready),
            "{}: {ready:?}",
            case.name
        );
        assert_eq!(st.host.as_deref(), Some("h1"), "{}", case.name);
        let dom = h1.domain(UID);
        assert_eq!(dom.is_some(), case.defined, "{}: {dom:?}", case.name);
        assert_eq!(
            dom.as_ref().is_some_and(|d| d.state.is_active()),
            case.running,
            "{}: {dom:?}",
            case.name
        );
        let events = world.server.event_reasons();
        let mut at = 0;
        for want in case.events {
            match events[at..].iter().position(|e| e == want) {
                Some(i) => at += i + 1,
                None => panic!("{}: no {want} Event in order in {events:?}", case.name),
            }
        }
        // Nothing the VM owns is left half made: an overlay exists only with a definition, or
        // when the failure came after the disks (the definition step).
        let overlays = h1
            .volumes("images")
            .into_iter()
            .filter(|v| v.name != "tiny.qcow2")
            .count();
        if !case.defined && !case.events.contains(&"DiskCreated") {
            assert_eq!(overlays, 0, "{}: no overlay without a disk step", case.name);
        }
    }
}

#[tokio::test]
async fn a_guest_asked_to_stop_is_forced_off_after_its_grace() {
    // Halted after running: the guest is asked to shut down; one that ignores it is forced off
    // once the grace period (here 1 s) has passed.
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host(&host_uri(1));
    with_image(&h1);
    let mut obj = vm("Always");
    obj.spec.termination_grace_period_seconds = Some(1);
    let (mut world, obj) = one_host(fakes, obj);
    let mut current = reconciled(&mut world, obj, 2).await;
    assert!(h1.domain(UID).is_some_and(|d| d.state.is_active()));
    h1.ignore_shutdown(UID, true);
    let mut halted = world.server.get(&current);
    halted.spec.run_strategy = Some(ferry::api::RunStrategy::Halted);
    world.server.hold(&halted);
    let halted = world.refresh(&halted);
    current = reconciled(&mut world, halted, 1).await;
    assert_eq!(h1.count(Op::ShutdownDomain), 1);
    assert!(
        h1.domain(UID).is_some_and(|d| d.state.is_active()),
        "still running, in its grace"
    );
    assert_eq!(
        current.status.as_ref().and_then(|s| s.phase),
        Some(VmPhase::Stopping)
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    current = reconciled(&mut world, current, 1).await;
    assert_eq!(h1.count(Op::DestroyDomain), 1, "forced off after the grace");
    assert!(h1.domain(UID).is_some_and(|d| !d.state.is_active()));
    assert_eq!(
        current.status.as_ref().and_then(|s| s.phase),
        Some(VmPhase::Stopped)
    );
    assert!(
        world
            .server
            .event_reasons()
            .contains(&"ForcedOff".to_string())
    );
}
