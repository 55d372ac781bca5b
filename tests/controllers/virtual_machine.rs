//! The VirtualMachine controller's drive steps against a fake host: place → disks → define →
//! power, and what each failure on the way shows.

use super::support::{World, host_uri, node, pool, vm, with_image};
use ferry::api::condition::find;
use ferry::api::{VirtualMachine, VirtualMachineStatus, VmPhase};
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

/// The reason and message of the VM's `Ready` condition.
fn ready(st: &VirtualMachineStatus) -> Option<(String, String)> {
    find(&st.conditions, "Ready").map(|c| (c.reason.clone(), c.message.clone()))
}

/// `vm` after `times` reconciles, each seeing what the one before wrote (as a watch would).
async fn reconciled(world: &mut World, mut vm: VirtualMachine, times: usize) -> VirtualMachine {
    for _ in 0..times {
        let _ = reconcile(Arc::new(vm.clone()), world.ctx.clone()).await;
        vm = world.refresh(&vm);
    }
    vm
}

/// The first bytes of a qcow2 v3 image whose header names a backing file.
fn backed_qcow2() -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[8..16].copy_from_slice(&512u64.to_be_bytes());
    h[16..20].copy_from_slice(&11u32.to_be_bytes());
    h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
    h
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
            name: "a golden image whose header names a backing file is never opened",
            strategy: "Always",
            host: |h| {
                with_image(h);
                h.set_volume_head("images", "tiny.qcow2", &backed_qcow2())
                    .expect("head");
            },
            phase: VmPhase::Pending,
            ready: "ImageRefused",
            defined: false,
            running: false,
            events: &["Scheduled", "ImageRefused"],
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
        let ready = ready(&st);
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

/// A disk status records as made for the VM is never made again: missing on the host (storage
/// the host does not see, or removed behind ferry's back), the VM fails with `DiskMissing` and
/// no new, empty overlay takes its place.
#[tokio::test]
async fn a_disk_made_before_is_never_made_again() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host(&host_uri(1));
    with_image(&h1);
    let overlay = ferry::plan::naming::overlay_volume_name("apps", "web", "root", UID);
    let mut obj = vm("Always");
    obj.status = Some(
        serde_json::from_value(serde_json::json!({
            "host": "h1", "phase": "Running",
            "disks": [{"name": "root", "pool": "images", "volume": overlay}]
        }))
        .expect("status"),
    );
    let (mut world, obj) = one_host(fakes, obj);
    let current = reconciled(&mut world, obj, 3).await;
    let st = current.status.clone().unwrap_or_default();
    let ready = ready(&st).unwrap_or_default();
    assert_eq!(ready.0, "DiskMissing", "{ready:?}");
    assert!(ready.1.contains(&overlay), "{}", ready.1);
    assert_eq!(st.phase, Some(VmPhase::Failed));
    let volumes: Vec<String> = h1.volumes("images").into_iter().map(|v| v.name).collect();
    assert_eq!(volumes, ["tiny.qcow2"], "no new overlay");
    assert!(h1.domain(UID).is_none(), "nothing defined");
}

/// A failover onto another host: only when the HA controller released the VM (the annotation
/// alone moves nothing), never on storage the hosts do not share (`FailoverRefused`, the VM
/// stays on its host), and never onto a new, empty disk where the recorded one is not visible
/// (`DiskMissing`).
#[tokio::test]
async fn failovers_never_start_a_vm_on_fresh_disks() {
    use ferry::api::ha_policy::FAILOVER_ANNOTATION;
    use ferry::controller::context::{HaKey, PoolHost};
    let overlay = ferry::plan::naming::overlay_volume_name("apps", "web", "root", UID);
    // (case, storage shared, released by the HA controller, reason, host afterwards)
    let cases = [
        ("forged annotation", true, false, None, "h1"),
        (
            "storage not shared",
            false,
            true,
            Some("FailoverRefused"),
            "h1",
        ),
        (
            "disk not on the new host",
            true,
            true,
            Some("DiskMissing"),
            "h2",
        ),
    ];
    for (name, shared, released, reason, host_after) in cases {
        let fakes = FakeConnector::new();
        let h1 = fakes.add_host(&host_uri(1));
        let h2 = fakes.add_host(&host_uri(2));
        with_image(&h1);
        with_image(&h2);
        h1.set_reachable(false);
        let mut p = pool(2);
        p.spec.storage.shared = Some(shared);
        let mut obj = vm("Always");
        let failover = serde_json::json!({"incident": "i-1", "host": "h1", "evidence": "Fenced",
            "detected": "2026-01-01T00:00:00Z", "proven": "2026-01-01T00:00:10Z"});
        obj.metadata.annotations = Some(
            [(FAILOVER_ANNOTATION.to_string(), failover.to_string())]
                .into_iter()
                .collect(),
        );
        obj.status = Some(
            serde_json::from_value(serde_json::json!({
                "host": "h1", "phase": "Running",
                "disks": [{"name": "root", "pool": "images", "volume": overlay}]
            }))
            .expect("status"),
        );
        let mut world = World::new(
            fakes,
            vec![p],
            vec![node(1, false), node(2, true)],
            vec![obj.clone()],
            vec![],
            vec![],
        );
        // The HA controller's verdict on h1 in this incident.
        world.ctx.ha.set(
            HaKey::new("ha", PoolHost::new("apps", "lab", "h1")),
            ferry::api::ha_policy::HostVerdict::Fenced,
        );
        if released {
            world
                .ctx
                .ha
                .release(UID, PoolHost::new("apps", "lab", "h1"), "i-1");
        }
        let current = reconciled(&mut world, obj, 3).await;
        let st = current.status.clone().unwrap_or_default();
        let ready = ready(&st).unwrap_or_default();
        if let Some(reason) = reason {
            assert_eq!(ready.0, reason, "{name}: {ready:?}");
        }
        assert_eq!(st.host.as_deref(), Some(host_after), "{name}: {ready:?}");
        let volumes: Vec<String> = h2.volumes("images").into_iter().map(|v| v.name).collect();
        assert_eq!(volumes, ["tiny.qcow2"], "{name}: no new overlay on h2");
        assert!(h2.domain(UID).is_none(), "{name}: nothing defined on h2");
        if name == "storage not shared" {
            assert!(
                ready.1.contains("root"),
                "{name}: names the disk: {}",
                ready.1
            );
        }
    }
}
