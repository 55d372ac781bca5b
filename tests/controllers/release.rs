//! Deleting a VM with `ferry.dev/release: "true"`: its domain stays on the host, running, without
//! ferry's metadata, when the HostPool names the domain in `spec.adoption.domains`; otherwise
//! deletion waits and nothing on the host changes.

use super::support::{World, host_uri, node, pool, vm};
use ferry::api::host_pool::AdoptionSpec;
use ferry::api::virtual_machine::RELEASE_ANNOTATION;
use ferry::api::{VirtualMachine, VmPhase};
use ferry::controller::virtual_machine::reconcile;
use ferry::hypervisor::fake::{FakeConnector, FakeHost};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::sync::Arc;

const UID: &str = "0b6f1b7e-1111-2222-3333-444455556666";

/// Whether the server was asked to remove ferry's finalizer from the VM (a JSON patch).
fn finalizer_removed(world: &World) -> bool {
    world.server.seen().iter().any(|s| {
        s.method == "PATCH"
            && s.path.ends_with("/virtualmachines/web")
            && s.body.as_array().is_some_and(|ops| {
                ops.iter()
                    .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0")
            })
    })
}

/// VM `apps/web` running on h1 of a pool that names `domains` for adoption, then deleted with
/// the release annotation; the host, the world, and the VM as the server holds it after one
/// reconcile of the deletion.
async fn release_with(domains: &[&str]) -> (FakeHost, World, VirtualMachine) {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host(&host_uri(1));
    h1.add_pool("images", "/var/lib/ferry/images");
    h1.add_volume("images", "tiny.qcow2", 1 << 30, "qcow2")
        .expect("image");
    let mut p = pool(1);
    p.spec.adoption = Some(AdoptionSpec {
        domains: domains.iter().map(|d| d.to_string()).collect(),
    });
    let mut world = World::new(
        fakes,
        vec![p],
        vec![node(1, true)],
        vec![vm("Always")],
        vec![],
        vec![],
    );
    let mut current = vm("Always");
    for _ in 0..3 {
        let _ = reconcile(Arc::new(current.clone()), world.ctx.clone()).await;
        current = world.refresh(&current);
    }
    assert_eq!(
        current.status.as_ref().and_then(|s| s.phase),
        Some(VmPhase::Running)
    );
    current
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(RELEASE_ANNOTATION.into(), "true".into());
    current.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    world.server.hold(&current);
    let _ = reconcile(Arc::new(current.clone()), world.ctx.clone()).await;
    let after = if finalizer_removed(&world) {
        current
    } else {
        world.server.get(&current)
    };
    (h1, world, after)
}

#[tokio::test]
async fn a_named_domain_is_released_and_keeps_running() {
    let (h1, world, after) = release_with(&["apps_*"]).await;
    let d = h1.domain(UID).expect("the domain stays defined");
    assert!(d.state.is_active(), "and running: {d:?}");
    assert_eq!((d.live, d.config), (None, None), "without ferry's metadata");
    let volumes: Vec<String> = h1.volumes("images").into_iter().map(|v| v.name).collect();
    assert_eq!(
        volumes.len(),
        2,
        "its disk stays beside the image: {volumes:?}"
    );
    assert!(finalizer_removed(&world), "the VM is let go");
    assert!(after.metadata.deletion_timestamp.is_some());
    assert!(
        world
            .server
            .event_reasons()
            .contains(&"Released".to_string())
    );
}

#[tokio::test]
async fn a_domain_the_pool_does_not_name_is_not_released() {
    let (h1, world, after) = release_with(&["legacy"]).await;
    let d = h1.domain(UID).expect("the domain stays");
    assert!(d.state.is_active(), "{d:?}");
    assert_eq!(
        d.config.map(|m| m.owner.uid),
        Some(UID.to_string()),
        "still ferry's"
    );
    assert!(!finalizer_removed(&world), "deletion waits");
    let ready = after
        .status
        .as_ref()
        .and_then(|s| ferry::api::condition::find(&s.conditions, "Ready").cloned())
        .expect("Ready");
    assert_eq!(ready.reason, "ReleaseNotAllowed");
    assert!(
        ready
            .message
            .contains("does not name domain apps_web in spec.adoption.domains"),
        "{}",
        ready.message
    );
    assert!(
        world
            .server
            .event_reasons()
            .contains(&"ReleaseNotAllowed".to_string())
    );
}
