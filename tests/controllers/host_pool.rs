//! The HostPool controller's probe: what it reports of each host's domains.

use super::support::{World, host_uri, node, pool};
use ferry::api::host_pool::{AdoptionCandidate, AdoptionSpec};
use ferry::controller::host_pool::reconcile;
use ferry::hypervisor::fake::FakeConnector;
use ferry::plan::domain::{
    Backing, DescribedDisk, DescribedDomain, DomainDescription, DomainState,
};
use std::sync::Arc;

/// A domain made outside ferry, as its XML reads: 1 vCPU, 256 MiB, one flat qcow2 disk `file`.
pub(super) fn foreign(name: &str, uuid: &str, file: &str) -> DescribedDomain {
    let d = DomainDescription {
        name: name.into(),
        uuid: uuid.into(),
        virt_type: "qemu".into(),
        arch: "x86_64".into(),
        machine: "pc-i440fx-7.2".into(),
        vcpus: 1,
        memory_kib: 256 * 1024,
        current_memory_kib: 256 * 1024,
        clock_offset: Some("utc".into()),
        disks: vec![DescribedDisk {
            target: "vda".into(),
            device: "disk".into(),
            kind: "file".into(),
            source: Some(file.into()),
            format: Some("qcow2".into()),
            bus: "virtio".into(),
            backing: Backing::Known(None),
            ..DescribedDisk::default()
        }],
        serials: vec!["serial pty".into()],
        ..DomainDescription::default()
    };
    DescribedDomain {
        persistent: Some(d.clone()),
        current: d,
    }
}

#[tokio::test]
async fn named_foreign_domains_are_described_for_adoption() {
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host(&host_uri(1));
    let uuids = [
        "70295d7a-b851-46e1-bfa3-4e82b34cff8b",
        "a1c2e3f4-0000-4000-8000-000000000002",
        "a1c2e3f4-0000-4000-8000-000000000003",
    ];
    h1.add_foreign_domain("legacy", uuids[0], DomainState::Running);
    h1.describe_as(
        uuids[0],
        foreign("legacy", uuids[0], "/var/lib/ferry/images/legacy.qcow2"),
    );
    h1.add_foreign_domain("web-1", uuids[1], DomainState::Running);
    h1.describe_as(
        uuids[1],
        foreign("web-1", uuids[1], "/srv/elsewhere/web-1.qcow2"),
    );
    // Not named by the pool: not described.
    h1.add_foreign_domain("db", uuids[2], DomainState::Running);

    let mut p = pool(1);
    p.spec.adoption = Some(AdoptionSpec {
        domains: vec!["legacy".into(), "web-*".into()],
    });
    let world = World::new(
        fakes,
        vec![p.clone()],
        vec![node(1, true)],
        vec![],
        vec![],
        vec![],
    );
    reconcile(Arc::new(p.clone()), world.ctx.clone())
        .await
        .expect("reconcile");

    let st = world.server.get(&p).status.expect("status");
    let host = st.hosts.iter().find(|h| h.name == "h1").expect("h1");
    let got: Vec<&AdoptionCandidate> = host.adoption_candidates.iter().collect();
    assert_eq!(
        got.iter()
            .map(|c| (c.name.as_str(), c.adoptable))
            .collect::<Vec<_>>(),
        [("legacy", true), ("web-1", false)]
    );
    assert_eq!(got[0].volumes, ["legacy.qcow2"]);
    assert_eq!((got[0].cpus, got[0].memory.as_str()), (1, "256Mi"));
    assert_eq!(got[0].state, "Running");
    assert!(
        got[1].blockers[0]
            .contains("/srv/elsewhere/web-1.qcow2 is outside the HostPool's storage pool"),
        "{:?}",
        got[1].blockers
    );
    let described: Vec<String> = h1
        .calls()
        .iter()
        .filter(|c| c.op == ferry::hypervisor::fake::Op::DescribeDomain)
        .map(|c| c.target.clone())
        .collect();
    // Every foreign domain is read once per probe (what they use is kept from volume: disks),
    // only the named ones are described in the status.
    assert_eq!(
        described,
        ["legacy", "web-1", "db"],
        "each foreign domain read once"
    );
}

#[tokio::test]
async fn a_host_is_read_again_only_when_it_changed() {
    use ferry::hypervisor::fake::Op;
    let fakes = FakeConnector::new();
    let h1 = fakes.add_host(&host_uri(1));
    let uuids = [
        "70295d7a-b851-46e1-bfa3-4e82b34cff8b",
        "a1c2e3f4-0000-4000-8000-000000000002",
    ];
    h1.add_foreign_domain("legacy", uuids[0], DomainState::Running);
    let p = pool(1);
    let world = World::new(
        fakes,
        vec![p.clone()],
        vec![node(1, true)],
        vec![],
        vec![],
        vec![],
    );
    let probe = || async {
        reconcile(Arc::new(p.clone()), world.ctx.clone())
            .await
            .expect("reconcile");
        let st = world.server.get(&p).status.expect("status");
        st.hosts.into_iter().find(|h| h.name == "h1").expect("h1")
    };
    let ops = |calls: Vec<ferry::hypervisor::fake::Call>| -> Vec<(Op, String)> {
        calls
            .into_iter()
            .filter(|c| c.op != Op::Connect)
            .map(|c| (c.op, c.target))
            .collect()
    };
    let h = probe().await;
    assert_eq!(h.state, ferry::api::HostState::Ready);
    assert_eq!(h.foreign_domains, Some(1));
    let first: Vec<Op> = ops(h1.take_calls()).into_iter().map(|c| c.0).collect();
    assert!(
        [Op::HostInfo, Op::ListDomains, Op::DescribeDomain]
            .iter()
            .all(|op| first.contains(op)),
        "{first:?}"
    );

    // Nothing changed: the host is asked nothing, and reported as before.
    let again = probe().await;
    assert_eq!(ops(h1.take_calls()), []);
    assert_eq!(again, h);

    // A domain appears (a lifecycle event): the domains are listed again and only the new
    // foreign domain is read; the host's facts stand.
    h1.add_foreign_domain("web-1", uuids[1], DomainState::Running);
    let h = probe().await;
    assert_eq!(h.foreign_domains, Some(2));
    let calls = ops(h1.take_calls());
    assert!(!calls.iter().any(|c| c.0 == Op::HostInfo), "{calls:?}");
    assert!(calls.iter().any(|c| c.0 == Op::ListDomains), "{calls:?}");
    let described: Vec<&str> = calls
        .iter()
        .filter(|c| c.0 == Op::DescribeDomain)
        .map(|c| c.1.as_str())
        .collect();
    assert_eq!(described, ["web-1"]);

    // The connection dies (keepalive): reported at the next probe, without a call.
    h1.set_reachable(false);
    let h = probe().await;
    assert_eq!(h.state, ferry::api::HostState::Unreachable);
    assert_eq!(ops(h1.take_calls()), []);

    // Back, on a new connection: everything is read again.
    h1.set_reachable(true);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let mut h = probe().await;
    if h.state != ferry::api::HostState::Ready {
        // The reconnection finished in the background of the first probe.
        h = probe().await;
    }
    assert_eq!(h.state, ferry::api::HostState::Ready);
    let calls = ops(h1.take_calls());
    let described: Vec<&str> = calls
        .iter()
        .filter(|c| c.0 == Op::DescribeDomain)
        .map(|c| c.1.as_str())
        .collect();
    assert!(calls.iter().any(|c| c.0 == Op::HostInfo), "{calls:?}");
    assert_eq!(described, ["legacy", "web-1"]);
}
