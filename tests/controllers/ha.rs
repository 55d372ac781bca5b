//! The HA controller's act step against fake hosts: what each verdict does to the host, its
//! domains and its VMs, tick after tick as the controller runs them.

use super::support::{World, definition, host_uri, node, pool, vm};
use ferry::api::HAPolicy;
use ferry::api::ha_policy::{FAILOVER_ANNOTATION, PRIORITY_LABEL};
use ferry::controller::ha::{HaContext, reconcile};
use ferry::hypervisor::fake::{FakeConnector, FakeHost, Op};
use ferry::plan::domain::{DomainState, ShutOffReason};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const UID: &str = "0b6f1b7e-1111-2222-3333-444455556666";

fn policy(action: &str) -> HAPolicy {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HAPolicy",
        "metadata": {"name": "ha", "namespace": "apps", "uid": "policy-uid", "generation": 1},
        "spec": {"hostPools": ["lab"], "notReadyGraceSeconds": 0,
                 "libvirtUnreachableGraceSeconds": 0, "notReadyAction": action}
    }))
    .expect("policy")
}

/// What a case checks once the controller has had its ticks; `Err` says what is not there yet.
type Check = fn(&World, &FakeHost) -> Result<(), String>;

struct Case {
    name: &'static str,
    action: &'static str,
    /// The VM's host in its status.
    vm_on: &'static str,
    /// Its domain on h1.
    on_h1: Option<DomainState>,
    h1_reachable: bool,
    /// `check` must hold after every tick (something that must never happen), rather than
    /// come true within the ticks.
    throughout: bool,
    check: Check,
}

fn vm_patches(w: &World) -> Vec<serde_json::Value> {
    w.server
        .seen()
        .into_iter()
        .filter(|s| s.method == "PATCH" && s.path.ends_with("/virtualmachines/web"))
        .map(|s| s.body)
        .collect()
}

fn migrations_created(w: &World) -> Vec<serde_json::Value> {
    w.server
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/virtualmachinemigrations"))
        .map(|s| s.body)
        .collect()
}

fn condition(w: &World, type_: &str) -> Option<(String, String)> {
    let p = w.server.get(&policy("None"));
    p.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason))
}

#[tokio::test]
async fn act_on_the_verdict() {
    use DomainState::{Running, ShutOff};
    let cases = [
        Case {
            name: "Restart: the running domains of a NotReady host are stopped through libvirt",
            action: "Restart",
            vm_on: "h1",
            on_h1: Some(Running),
            h1_reachable: true,
            throughout: false,
            check: |_, h1| match h1.domain(UID) {
                Some(d) if !d.state.is_active() => Ok(()),
                d => Err(format!("domain still {d:?}")),
            },
        },
        Case {
            name: "Restart: once libvirt confirms them off, the VMs are handed over to restart elsewhere",
            action: "Restart",
            vm_on: "h1",
            on_h1: Some(ShutOff(ShutOffReason::Destroyed)),
            h1_reachable: true,
            throughout: false,
            check: |w, _| {
                let handed = vm_patches(w).iter().any(|p| {
                    p["metadata"]["annotations"][FAILOVER_ANNOTATION]
                        .as_str()
                        .is_some_and(|a| a.contains("\"host\":\"h1\"") && a.contains("ShutOff"))
                });
                if handed && w.server.event_reasons().contains(&"Failover".to_string()) {
                    Ok(())
                } else {
                    Err(format!("no failover hand-over: {:?}", vm_patches(w)))
                }
            },
        },
        Case {
            name: "Restart: a host that does not know the VM's domain proves nothing (an empty listing is no shut-off)",
            action: "Restart",
            vm_on: "h1",
            on_h1: None,
            h1_reachable: true,
            throughout: true,
            check: |w, _| match vm_patches(w)
                .iter()
                .find(|p| !p["metadata"]["annotations"][FAILOVER_ANNOTATION].is_null())
            {
                None => Ok(()),
                Some(p) => Err(format!("handed over without proof: {p}")),
            },
        },
        Case {
            name: "Restart: a domain of a VM that runs elsewhere now is undefined, its disks kept",
            action: "Restart",
            vm_on: "h2",
            on_h1: Some(ShutOff(ShutOffReason::Destroyed)),
            h1_reachable: true,
            throughout: false,
            check: |w, h1| {
                if h1.domain(UID).is_none()
                    && w.server
                        .event_reasons()
                        .contains(&"StaleDomainRemoved".to_string())
                {
                    Ok(())
                } else {
                    Err(format!("domain still {:?}", h1.domain(UID)))
                }
            },
        },
        Case {
            name: "LiveMigrate: the VMs of a NotReady host whose libvirt answers are evacuated",
            action: "LiveMigrate",
            vm_on: "h1",
            on_h1: Some(Running),
            h1_reachable: true,
            throughout: false,
            check: |w, _| {
                let made = migrations_created(w);
                match made.first() {
                    Some(m)
                        if m["spec"]["vmName"] == "web"
                            && m["metadata"]["annotations"]["ferry.dev/evacuates"] == "h1" =>
                    {
                        Ok(())
                    }
                    _ => Err(format!("no evacuation migration: {made:?}")),
                }
            },
        },
        Case {
            name: "without fencing, a host that is down is left to a human",
            action: "Restart",
            vm_on: "h1",
            on_h1: Some(Running),
            h1_reachable: false,
            throughout: false,
            check: |w, _| match condition(w, "AwaitingConfirmation") {
                Some((s, r)) if s == "True" && r == "NoFencing" => Ok(()),
                c => Err(format!("AwaitingConfirmation is {c:?}")),
            },
        },
    ];
    for case in cases {
        let fakes = FakeConnector::new();
        let h1 = fakes.add_host(&host_uri(1));
        let h2 = fakes.add_host_sharing_storage(&host_uri(2), &h1);
        if let Some(s) = case.on_h1 {
            h1.add_domain(&definition(&vm("Always")), s)
                .expect("domain");
        }
        h1.set_reachable(case.h1_reachable);
        let mut obj = vm("Always");
        obj.spec.eviction_strategy =
            Some(ferry::api::virtual_machine::EvictionStrategy::LiveMigrate);
        obj.status = Some(
            serde_json::from_value(json!({"host": case.vm_on, "phase": "Running"}))
                .expect("status"),
        );
        let p = policy(case.action);
        let world = World::new(
            fakes,
            vec![pool(2)],
            vec![node(1, false), node(2, true)],
            vec![obj],
            vec![],
            vec![p.clone()],
        );
        let hc = Arc::new(HaContext::new(world.ctx.clone()));
        let mut last = Err("no tick yet".to_string());
        for _ in 0..40 {
            let current = world.server.get(&p);
            let _ = reconcile(Arc::new(current), hc.clone()).await;
            last = (case.check)(&world, &h1);
            if case.throughout && last.is_err() {
                break;
            }
            if !case.throughout && last.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Err(e) = last {
            panic!("{}: {e}", case.name);
        }
        // h2 is never touched by what h1's verdict does.
        assert_eq!(h2.count(Op::DestroyDomain), 0, "{}", case.name);
    }
}

/// Restart waves: of two VMs on a host proven off, the one of the higher priority class is
/// handed over; the other stays on the failed host, listed in the incident as waiting for that
/// priority to run first (the VM controller does not run here, so the first never runs).
#[tokio::test]
async fn a_lower_priority_waits_for_the_higher_one_to_run() {
    const DB_UID: &str = "0b6f1b7e-1111-2222-3333-777777777777";
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host(&host_uri(1));
    let _h2 = fakes.add_host_sharing_storage(&host_uri(2), &h1);
    let mut web = vm("Always");
    web.metadata.labels = Some([(PRIORITY_LABEL.to_string(), "high".to_string())].into());
    let mut db = vm("Always");
    db.metadata.name = Some("db".into());
    db.metadata.uid = Some(DB_UID.into());
    for v in [&mut web, &mut db] {
        h1.add_domain(
            &definition(v),
            DomainState::ShutOff(ShutOffReason::Destroyed),
        )
        .expect("domain");
        v.status = Some(
            serde_json::from_value(json!({"host": "h1", "phase": "Running"})).expect("status"),
        );
    }
    let mut p = policy("Restart");
    p.spec.priority_classes =
        serde_json::from_value(json!([{"name": "high", "value": 100}])).expect("classes");
    let world = World::new(
        fakes,
        vec![pool(2)],
        vec![node(1, false), node(2, true)],
        vec![web, db],
        vec![],
        vec![p.clone()],
    );
    let hc = Arc::new(HaContext::new(world.ctx.clone()));
    let handed = |w: &World, name: &str| {
        w.server.seen().iter().any(|s| {
            s.method == "PATCH"
                && s.path.ends_with(&format!("/virtualmachines/{name}"))
                && !s.body["metadata"]["annotations"][FAILOVER_ANNOTATION].is_null()
        })
    };
    let waiting = |w: &World| -> Option<String> {
        let st = w.server.get(&policy("None")).status?;
        let incident = st.incidents.into_iter().find(|i| i.host == "h1")?;
        incident
            .vms
            .into_iter()
            .find(|v| v.name == "db")
            .and_then(|v| v.waiting)
    };
    let mut last = None;
    for _ in 0..40 {
        let current = world.server.get(&p);
        let _ = reconcile(Arc::new(current), hc.clone()).await;
        last = waiting(&world);
        if handed(&world, "web") && last.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(handed(&world, "web"), "the high-priority VM is handed over");
    assert_eq!(
        last.as_deref(),
        Some("waiting for the VMs of priority 100 to run first"),
        "db's place in the incident"
    );
    // A few more ticks: still held back while web does not run.
    for _ in 0..5 {
        let _ = reconcile(Arc::new(world.server.get(&p)), hc.clone()).await;
    }
    assert!(
        !handed(&world, "db"),
        "db is not handed over before web runs"
    );
}
