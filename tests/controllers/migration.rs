//! The migration controller's settle and recover steps: where the VM runs after a migration this
//! process no longer follows (it restarted while the migration ran), asked of both fake hosts.

use super::support::{World, definition, host_uri, node, pool, vm};
use ferry::api::{MigrationPhase, VirtualMachineMigration};
use ferry::controller::migration::{MIGRATION_FINALIZER, reconcile};
use ferry::hypervisor::fake::{FakeConnector, FakeHost, Op};
use ferry::plan::domain::DomainState;
use ferry::plan::migration::Active;
use serde_json::json;
use std::sync::Arc;

const UID: &str = "0b6f1b7e-1111-2222-3333-444455556666";

/// Migration `m` of VM `web` from h1 to h2, Running (as a controller that restarted finds it).
fn running_migration(deleted: bool) -> VirtualMachineMigration {
    let mut m: VirtualMachineMigration = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachineMigration",
        "metadata": {"name": "m", "namespace": "apps", "uid": "migration-uid", "generation": 1,
                     "finalizers": [MIGRATION_FINALIZER],
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"vmName": "web"},
        "status": {"phase": "Running", "source": "h1", "target": "h2",
                   "startTime": "2026-01-01T00:00:01Z"}
    }))
    .expect("migration");
    if deleted {
        m.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
    }
    m
}

struct Case {
    name: &'static str,
    /// The VM's domain on h1 and h2 (`None`: not defined there).
    source: Option<DomainState>,
    target: Option<DomainState>,
    source_reachable: bool,
    deleted: bool,
    phase: MigrationPhase,
    message: &'static str,
    /// What is left on the target afterwards.
    target_after: Option<DomainState>,
}

#[tokio::test]
async fn settle_and_recover_after_a_restart() {
    use DomainState::{Paused, Running};
    let cases = [
        Case {
            name: "the source still runs the VM: the migration failed",
            source: Some(Running),
            target: None,
            source_reachable: true,
            deleted: false,
            phase: MigrationPhase::Failed,
            message: "the VM keeps running on host h1",
            target_after: None,
        },
        Case {
            name: "only the target runs it: the migration succeeded",
            source: None,
            target: Some(Running),
            source_reachable: true,
            deleted: false,
            phase: MigrationPhase::Succeeded,
            message: "confirmed by both hosts after a controller restart",
            target_after: Some(Running),
        },
        Case {
            name: "a paused incoming copy on the target is removed",
            source: Some(Running),
            target: Some(Paused),
            source_reachable: true,
            deleted: false,
            phase: MigrationPhase::Failed,
            message: "the VM keeps running on host h1",
            target_after: None,
        },
        Case {
            name: "the source does not answer: nothing is concluded",
            source: Some(Running),
            target: None,
            source_reachable: false,
            deleted: false,
            phase: MigrationPhase::Running,
            message: "waiting to see where the VM runs",
            target_after: None,
        },
        Case {
            name: "a deleted migration whose VM stayed is cancelled",
            source: Some(Running),
            target: None,
            source_reachable: true,
            deleted: true,
            phase: MigrationPhase::Cancelled,
            message: "the VM keeps running on host h1",
            target_after: None,
        },
    ];
    for case in cases {
        let fakes = FakeConnector::new();
        let h1 = fakes.add_host(&host_uri(1));
        let h2: FakeHost = fakes.add_host_sharing_storage(&host_uri(2), &h1);
        let mut obj = vm("Always");
        obj.status = Some(
            serde_json::from_value(json!({"host": "h1", "phase": "Running"})).expect("status"),
        );
        let def = definition(&obj);
        for (h, state) in [(&h1, case.source), (&h2, case.target)] {
            if let Some(s) = state {
                h.add_domain(&def, s).expect("domain");
            }
        }
        h1.set_reachable(case.source_reachable);
        let m = running_migration(case.deleted);
        let world = World::new(
            fakes,
            vec![pool(2)],
            vec![node(1, true), node(2, true)],
            vec![obj],
            vec![m.clone()],
            vec![],
        );
        let _ = reconcile(Arc::new(m.clone()), world.ctx.clone()).await;
        let st = world.server.get(&m).status.unwrap_or_default();
        assert_eq!(
            st.phase,
            Some(case.phase),
            "{}: {:?}",
            case.name,
            st.message
        );
        let message = st.message.unwrap_or_default();
        assert!(
            message.contains(case.message),
            "{}: {message:?} lacks {:?}",
            case.name,
            case.message
        );
        assert_eq!(
            h2.domain(UID).map(|d| d.state),
            case.target_after,
            "{}",
            case.name
        );
        // The source's copy is never touched.
        if case.source_reachable {
            assert_eq!(
                h1.domain(UID).map(|d| d.state),
                case.source,
                "{}",
                case.name
            );
            assert_eq!(h1.count(Op::DestroyDomain), 0, "{}", case.name);
        }
    }
}

/// Migration `name` (UID `uid`) of VM `vm`, in `status`.
fn migration(
    name: &str,
    uid: &str,
    vm: &str,
    status: serde_json::Value,
) -> VirtualMachineMigration {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachineMigration",
        "metadata": {"name": name, "namespace": "apps", "uid": uid, "generation": 1,
                     "finalizers": [MIGRATION_FINALIZER],
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"vmName": vm},
        "status": status
    }))
    .expect("migration")
}

/// A migration this process has just finished still shows `Running` in the cache until the watch
/// delivers its end; the slot it released is free for a waiting migration at once (it is woken
/// right after the release), not only at its next periodic look.
#[tokio::test]
async fn a_slot_released_here_is_free_before_the_cache_shows_the_end() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host(&host_uri(1));
    fakes.add_host_sharing_storage(&host_uri(2), &h1);
    let mut lab = pool(2);
    lab.spec.migration = Some(serde_json::from_value(json!({"maxParallel": 1})).expect("policy"));
    let running_on = |name: &str, uid: &str, host: &str| {
        let mut v = vm("Always");
        v.metadata.name = Some(name.into());
        v.metadata.uid = Some(uid.into());
        v.status = Some(
            serde_json::from_value(json!({"host": host, "phase": "Running"})).expect("status"),
        );
        v
    };
    let done = migration(
        "done",
        "done-uid",
        "db",
        json!({"phase": "Running", "source": "h1", "target": "h2"}),
    );
    let waiting = migration(
        "waiting",
        "waiting-uid",
        "web",
        json!({"phase": "Pending", "message": "waiting for a migration slot"}),
    );
    let world = World::new(
        fakes,
        vec![lab],
        vec![node(1, true), node(2, true)],
        vec![
            running_on("web", UID, "h1"),
            running_on("db", "db-uid", "h1"),
        ],
        vec![done.clone(), waiting.clone()],
        vec![],
    );
    let phase = |world: &World| {
        let st = world.server.get(&waiting).status.unwrap_or_default();
        (st.phase, st.message.unwrap_or_default())
    };

    // The one slot is held by `done`, as far as anyone can tell.
    let _ = reconcile(Arc::new(waiting.clone()), world.ctx.clone()).await;
    let (p, message) = phase(&world);
    assert_eq!(p, Some(MigrationPhase::Pending), "{message}");
    assert!(message.contains("migration slot"), "{message}");

    // This process ran `done` and released its slot; the cache still shows it Running.
    let slot = Active {
        source: "h1".into(),
        target: "h2".into(),
    };
    world.ctx.migrations.hold_slot("done-uid", slot);
    world.ctx.migrations.release_slot("done-uid");
    let _ = reconcile(Arc::new(waiting.clone()), world.ctx.clone()).await;
    let st = world.server.get(&waiting).status.unwrap_or_default();
    assert_eq!(
        (st.phase, st.target.as_deref()),
        (Some(MigrationPhase::Scheduled), Some("h2")),
        "{:?}",
        st.message
    );
}
