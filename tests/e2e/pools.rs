//! HostPools over several hosts: placement (spread, anti-affinity, cordon, nodeSelector,
//! foreign and orphan domains) and a partitioned host (Unreachable, then Ready).

use crate::support::cluster::{self, Cluster, wait_for};
use crate::support::hosts::{console, highest_tick};
use crate::support::lab;
use crate::support::migration::LAB_HOST;
use crate::support::objects::{
    BOOT, LABEL, apply_placed, condition, host_of, pool_event_count, pool_manifest, ready_reason,
    vm_manifest, wait_vm,
};
use ferry::api::{VirtualMachine, VmPhase};
use kube::ResourceExt;
use kube::api::DeleteParams;
use serde_json::json;
use std::time::Duration;

fn labelled_vm(name: &str, lab: &lab::Lab, app: &str, anti: bool) -> serde_json::Value {
    let mut m = vm_manifest(name, "lab", lab, "Halted");
    m["metadata"]["labels"] = json!({"app": app});
    if anti {
        m["spec"]["placement"] = json!({"antiAffinity": [
            {"labelSelector": {"matchLabels": {"app": app}}, "required": true}
        ]});
    }
    m
}

/// Three lab hosts: six VMs spread 2/2/2, the pool reports capacity and allocation per host, a
/// VM with a required anti-affinity keeps a VM it matches (with no rule of its own) off its host
/// even where spreading would put them together,
/// a cordoned Node receives nothing new, and a VM that fits nowhere waits with a counted reason
/// and is placed as soon as its host is uncordoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn placement_across_three_hosts() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(3).expect("three lab hosts");
    let mut c = Cluster::new("ferry-e2e-place").await;
    let ns = c.namespace.clone();
    let node = |h: &str| format!("{ns}-{h}");
    for h in &lab.hosts {
        c.add_node_with_labels(
            &node(&h.name),
            &h.ip,
            &[(LABEL, "true"), (LAB_HOST, &h.name)],
        )
        .await;
    }
    let _ctl = c.controller("e2e-place");
    // Each host's socket lives in its own lab directory (`.../h1/run/...`): a Node label picks it.
    let template = lab.hosts[0]
        .unix_uri
        .replace("/h1/run/", &format!("/{{label:{LAB_HOST}}}/run/"));
    assert_ne!(template, lab.hosts[0].unix_uri, "the lab layout changed");
    let mut pool = pool_manifest("lab", &lab);
    pool["spec"]["libvirt"]["uriTemplate"] = json!(template);
    pool["spec"]["capacity"] = json!({"cpuOvercommit": "4"});
    c.apply::<ferry::api::HostPool>(pool).await;
    let pools = c.pools();
    let hosts_with = |pred: fn(&ferry::api::HostStatus) -> bool, n: usize| {
        let pools = pools.clone();
        async move {
            let p = pools.get("lab").await.ok()?;
            let s = p.status?;
            (s.hosts.iter().filter(|h| pred(h)).count() == n).then_some(s)
        }
    };
    let st = wait_for(
        "3 hosts Ready with capacity",
        Duration::from_secs(90),
        || {
            hosts_with(
                |h| h.state == ferry::api::HostState::Ready && h.allocatable.is_some(),
                3,
            )
        },
    )
    .await;
    for h in &st.hosts {
        let cap = h.capacity.clone().expect("capacity");
        let alloc = h.allocatable.clone().expect("allocatable");
        assert!(cap.cpus >= 1, "{h:?}");
        assert_eq!(alloc.cpus, cap.cpus * 4, "cpuOvercommit 4: {h:?}");
        assert_eq!(alloc.memory, cap.memory, "no memory overcommit: {h:?}");
        assert!(h.hypervisor_version.is_some(), "{h:?}");
        assert_eq!(h.vm_count, Some(0));
        assert_eq!(h.foreign_domains, Some(0));
        let uri = h.uri.clone().unwrap_or_default();
        assert!(uri.starts_with("qemu+unix:///system"), "{uri}");
    }
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "False"),
        "{:?}",
        st.conditions
    );
    // Measured load: the empty hosts report none, at once (no domain needs a second sample).
    let st = wait_for("3 hosts measured", Duration::from_secs(60), || {
        hosts_with(|h| h.load.is_some(), 3)
    })
    .await;
    for h in &st.hosts {
        let load = h.load.clone().expect("load");
        assert_eq!(
            (load.cpu_millicores, load.memory.as_str()),
            (0, "0"),
            "{h:?}"
        );
    }

    // Six small VMs at once: spread 2/2/2.
    let started = std::time::Instant::now();
    let names: Vec<String> = (1..=6).map(|i| format!("vm-{i}")).collect();
    for n in &names {
        c.apply::<VirtualMachine>(vm_manifest(n, "lab", &lab, "Always"))
            .await;
    }
    let mut placed = std::collections::BTreeMap::<String, Vec<String>>::new();
    for n in &names {
        let vm = wait_vm(&c, n, "Ready", BOOT, |vm| {
            ready_reason(vm) == Some(("True".into(), "Running".into()))
        })
        .await;
        placed
            .entry(host_of(&vm).expect("host"))
            .or_default()
            .push(n.clone());
    }
    eprintln!(
        "6 VMs Running on 3 hosts after {:.1}s: {placed:?}",
        started.elapsed().as_secs_f64()
    );
    let counts: Vec<usize> = placed.values().map(Vec::len).collect();
    assert_eq!(counts, vec![2, 2, 2], "spread evenly: {placed:?}");
    for h in &lab.hosts {
        let doms = lab.virsh(&h.name, &["list", "--name"]).stdout;
        assert_eq!(
            doms.lines().filter(|l| !l.trim().is_empty()).count(),
            2,
            "2 running domains on {}: {doms}",
            h.name
        );
    }
    let st = wait_for(
        "pool counts 2 VMs per host",
        Duration::from_secs(60),
        || {
            hosts_with(
                |h| {
                    h.vm_count == Some(2)
                        && h.allocated
                            .as_ref()
                            .is_some_and(|a| a.cpus == 2 && a.memory == "256Mi")
                },
                3,
            )
        },
    )
    .await;
    assert!(
        st.hosts.iter().all(|h| h.orphans.is_empty()),
        "{:?}",
        st.hosts
    );
    // A steady pool is not rewritten by its probes (every 15 s).
    let before = pools.get("lab").await.expect("pool");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = pools.get("lab").await.expect("pool");
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "a steady HostPool is not rewritten; status before: {:?}\nafter: {:?}",
        before.status,
        after.status
    );

    // Empty h1 and h2 (4 guests fewer for the TCG budget), cordon h1.
    let (h1, h2, h3) = (node("h1"), node("h2"), node("h3"));
    for n in placed[&h1].iter().chain(&placed[&h2]) {
        c.vms()
            .delete(n, &DeleteParams::default())
            .await
            .expect("delete");
    }
    let vms = c.vms();
    wait_for("4 VMs deleted", Duration::from_secs(120), || {
        let vms = vms.clone();
        async move {
            let l = vms.list(&Default::default()).await.ok()?;
            (l.items.len() == 2).then_some(())
        }
    })
    .await;
    c.cordon(&h1, true).await;
    wait_for("h1 Cordoned and empty", Duration::from_secs(60), || {
        hosts_with(
            |h| h.state == ferry::api::HostState::Cordoned && h.vm_count == Some(0),
            1,
        )
    })
    .await;

    // Anti-affinity: db-a takes the emptiest schedulable host (h2); spreading alone would put db-b
    // there too (1 VM against h3's 2). db-b has no rule of its own: db-a's required anti-affinity
    // binds both ways (as pod anti-affinity does) and sends it to h3.
    let a = apply_placed(&c, labelled_vm("db-a", &lab, "db", true)).await;
    assert_eq!(
        host_of(&a),
        Some(h2.clone()),
        "db-a on the emptiest uncordoned host"
    );
    let b = apply_placed(&c, labelled_vm("db-b", &lab, "db", false)).await;
    assert_eq!(
        host_of(&b),
        Some(h3.clone()),
        "anti-affinity: db-b apart from db-a"
    );

    // The cordoned h1 is the emptiest host but receives nothing new.
    let free = apply_placed(&c, labelled_vm("free", &lab, "web", false)).await;
    assert_eq!(host_of(&free), Some(h2.clone()), "not on the cordoned host");

    // Pinned to h1: waits, saying why, and is placed once h1 is uncordoned.
    let mut pinned = labelled_vm("pinned", &lab, "web", false);
    pinned["spec"]["placement"] = json!({"nodeSelector": {LAB_HOST: "h1"}});
    c.apply::<VirtualMachine>(pinned).await;
    let vm = wait_vm(
        &c,
        "pinned",
        "NoHostAvailable",
        Duration::from_secs(60),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "NoHostAvailable"),
    )
    .await;
    let msg = condition(&vm, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        msg.contains("1 cordoned") && msg.contains("2 not matching nodeSelector"),
        "{msg}"
    );
    assert_eq!(
        vm.status.as_ref().and_then(|s| s.phase),
        Some(VmPhase::Pending)
    );
    let t = std::time::Instant::now();
    c.cordon(&h1, false).await;
    let vm = wait_vm(
        &c,
        "pinned",
        "placed on h1",
        Duration::from_secs(60),
        |vm| host_of(vm).is_some(),
    )
    .await;
    eprintln!(
        "pinned VM placed {:.1}s after uncordon",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(host_of(&vm), Some(h1.clone()));

    // Domains ferry does not own show up as foreign; a ferry domain whose VirtualMachine is gone
    // (here: db-b's definition under another name and owner UID) as an orphan, left in place.
    let db_b_uid = b.metadata.uid.clone().expect("uid");
    let xml = lab
        .virsh_ok("h3", &["dumpxml", "--inactive", &format!("{ns}_db-b")])
        .expect("dumpxml");
    let ghost_xml: String = xml
        .lines()
        .filter(|l| !l.trim_start().starts_with("<uuid>"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            &format!("<name>{ns}_db-b</name>"),
            &format!("<name>{ns}_ghost</name>"),
        )
        .replace(&db_b_uid, "00000000-0000-0000-0000-00000000dead");
    let foreign_xml = "<domain type='qemu'><name>foreign-1</name><memory unit='MiB'>64</memory>\
        <vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>";
    for (file, text) in [
        ("ghost.xml", ghost_xml.as_str()),
        ("foreign.xml", foreign_xml),
    ] {
        let path = lab.dir.join(file);
        std::fs::write(&path, text).expect("write domain XML");
        lab.virsh_ok("h3", &["define", &path.to_string_lossy()])
            .expect("define");
    }
    let ghost = format!("{ns}_ghost");
    let st = wait_for(
        "h3 reports the orphan and the foreign domain",
        Duration::from_secs(60),
        || {
            let pools = pools.clone();
            let ghost = ghost.clone();
            let h3 = h3.clone();
            async move {
                let s = pools.get("lab").await.ok()?.status?;
                let h = s.hosts.iter().find(|h| h.name == h3)?;
                (h.foreign_domains == Some(1) && h.orphans == vec![ghost]).then_some(s)
            }
        },
    )
    .await;
    eprintln!(
        "h3 after the orphan: {:?}",
        st.hosts.iter().find(|h| h.name == h3)
    );

    let remaining: Vec<String> = c
        .vms()
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|v| v.name_any())
        .collect();
    for n in &remaining {
        let _ = c.vms().delete(n, &DeleteParams::default()).await;
    }
    wait_for("all VMs deleted", Duration::from_secs(120), || {
        let vms = vms.clone();
        async move {
            vms.list(&Default::default())
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        }
    })
    .await;
    // The orphan and the foreign domain are never touched by ferry.
    let left = lab
        .virsh(&lab.hosts[2].name, &["list", "--all", "--name"])
        .stdout;
    assert!(
        left.contains(&ghost) && left.contains("foreign-1"),
        "orphan and foreign domain left in place: {left}"
    );
    for d in [ghost.as_str(), "foreign-1"] {
        lab.virsh_ok("h3", &["undefine", d]).expect("undefine");
    }
    for h in &lab.hosts {
        let left = lab.virsh(&h.name, &["list", "--all", "--name"]).stdout;
        assert!(left.trim().is_empty(), "nothing left on {}: {left}", h.name);
    }
}

/// The controller (in the lab's client namespace, reaching hosts over TCP like a real one) and
/// three hosts; a VM runs on h1 and on h2. h2 is cut off the network: within the keepalive bound
/// (1 s × (2 + 1) = 3 s, plus at most 3 s for the reconcile and status write and the 250 ms
/// polling here) the pool shows it `Unreachable` with a Warning Event, a VM pinned to it waits
/// instead of being placed there, the other hosts stay `Ready`, and the guest on h1 keeps running
/// (ticks go on, one boot). Healed, h2 is `Ready` again, the waiting VM is placed there, and
/// h2's guest ran on through the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn partitioned_host_is_unreachable_then_ready() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(3).expect("three lab hosts");
    let mut c = Cluster::new("ferry-e2e-part").await;
    let ns = c.namespace.clone();
    let node = |h: &str| format!("{ns}-{h}");
    for h in &lab.hosts {
        c.add_node_with_labels(
            &node(&h.name),
            &h.ip,
            &[(LABEL, "true"), (LAB_HOST, &h.name)],
        )
        .await;
    }
    let ctl = c.controller_in_netns("e2e-part", &lab.client_netns);
    let (interval, count) = (1u64, 2u64);
    let bound = Duration::from_secs(interval * (count + 1));
    let margin = Duration::from_secs(3);
    let mut pool = pool_manifest("lab", &lab);
    pool["spec"]["libvirt"] = json!({
        "uriTemplate": "qemu+tcp://{address}/system", "connectTimeoutSeconds": 3,
        "keepaliveIntervalSeconds": interval, "keepaliveCount": count
    });
    c.apply::<ferry::api::HostPool>(pool).await;
    let pools = c.pools();
    let states = || {
        let pools = pools.clone();
        async move {
            let s = pools.get("lab").await.ok()?.status?;
            Some(
                s.hosts
                    .iter()
                    .map(|h| (h.name.clone(), h.state))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
        }
    };
    use ferry::api::HostState::{Ready, Unreachable};
    wait_for(
        "3 hosts Ready over TCP",
        Duration::from_secs(90),
        || async {
            let s = states().await?;
            (s.len() == 3 && s.values().all(|st| *st == Ready)).then_some(())
        },
    )
    .await;

    // One VM on h1, one on h2.
    for (vm, h) in [("on-h1", "h1"), ("on-h2", "h2")] {
        let mut m = vm_manifest(vm, "lab", &lab, "Always");
        m["spec"]["placement"] = json!({"nodeSelector": {LAB_HOST: h}});
        c.apply::<VirtualMachine>(m).await;
    }
    for vm in ["on-h1", "on-h2"] {
        wait_vm(&c, vm, "Ready", BOOT, |vm| {
            ready_reason(vm) == Some(("True".into(), "Running".into()))
        })
        .await;
        lab::wait_for_console(&console(&lab, &ns, vm), "FERRY-TICK 5", BOOT).expect("ticking");
    }
    let log1 = console(&lab, &ns, "on-h1");
    let log2 = console(&lab, &ns, "on-h2");

    // Cut h2 off.
    let ticks_before = highest_tick(&lab::console_log(&log1));
    let t = std::time::Instant::now();
    lab.partition("h2").expect("partition h2");
    let others_disturbed = std::sync::Mutex::new(Vec::new());
    wait_for(
        "h2 Unreachable after the partition",
        Duration::from_secs(60),
        || {
            let seen = states();
            let others = &others_disturbed;
            async move {
                let s = seen.await?;
                for h in ["h1", "h3"] {
                    if s.get(&node(h)) != Some(&Ready)
                        && let Ok(mut o) = others.lock()
                    {
                        o.push(format!("{h}: {:?}", s.get(&node(h))));
                    }
                }
                (s.get(&node("h2")) == Some(&Unreachable)).then_some(())
            }
        },
    )
    .await;
    let detected = t.elapsed();
    eprintln!(
        "partition of h2 detected after {:.2}s (keepalive bound {:?})",
        detected.as_secs_f64(),
        bound
    );
    assert!(
        detected <= bound + margin,
        "Unreachable after {detected:?}, keepalive bound {bound:?} + {margin:?}"
    );
    let st = pools
        .get("lab")
        .await
        .expect("pool")
        .status
        .expect("status");
    let h2 = st.hosts.iter().find(|h| h.name == node("h2")).expect("h2");
    let msg = h2.message.clone().unwrap_or_default();
    assert!(msg.contains("keepalive"), "h2 message: {msg}");
    assert!(
        st.conditions.iter().any(|c| c.type_ == "Degraded"
            && c.status == "True"
            && c.message.contains(&node("h2"))),
        "{:?}",
        st.conditions
    );
    let unreachable_events = pool_event_count(&c, "HostUnreachable", &node("h2")).await;
    assert_eq!(unreachable_events, 1, "one HostUnreachable Event for h2");

    // A VM that may only run on h2 is not placed there while it is unreachable.
    let mut m = vm_manifest("wants-h2", "lab", &lab, "Halted");
    m["spec"]["placement"] = json!({"nodeSelector": {LAB_HOST: "h2"}});
    c.apply::<VirtualMachine>(m).await;
    let vm = wait_vm(
        &c,
        "wants-h2",
        "NoHostAvailable",
        Duration::from_secs(60),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "NoHostAvailable"),
    )
    .await;
    let why = condition(&vm, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(why.contains("unreachable"), "{why}");
    assert_eq!(host_of(&vm), None);

    // Heal: Ready again, the waiting VM goes to h2.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = std::time::Instant::now();
    lab.heal("h2").expect("heal h2");
    wait_for(
        "h2 Ready after healing",
        Duration::from_secs(90),
        || async {
            let s = states().await?;
            (s.len() == 3 && s.values().all(|st| *st == Ready)).then_some(())
        },
    )
    .await;
    eprintln!("h2 Ready {:.2}s after healing", t.elapsed().as_secs_f64());
    let vm = wait_vm(
        &c,
        "wants-h2",
        "placed on h2 after healing",
        Duration::from_secs(60),
        |vm| host_of(vm).is_some(),
    )
    .await;
    assert_eq!(host_of(&vm), Some(node("h2")));
    wait_for(
        "HostReady Event for h2 again",
        Duration::from_secs(30),
        || async { (pool_event_count(&c, "HostReady", &node("h2")).await >= 2).then_some(()) },
    )
    .await;
    let others = others_disturbed
        .lock()
        .map(|o| o.clone())
        .unwrap_or_default();
    assert!(others.is_empty(), "h1 and h3 stayed Ready: {others:?}");

    // The guests ran on: h1's never noticed, h2's was only cut off from the controller.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let text1 = lab::console_log(&log1);
    assert!(
        highest_tick(&text1) > ticks_before + 5,
        "h1's guest kept ticking: {ticks_before} → {}",
        highest_tick(&text1)
    );
    for (text, vm) in [(text1, "on-h1"), (lab::console_log(&log2), "on-h2")] {
        assert_eq!(
            text.matches("FERRY-BOOT ").count(),
            1,
            "{vm} booted once: {}",
            text.lines()
                .filter(|l| l.contains("BOOT"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    wait_vm(
        &c,
        "on-h2",
        "Running again",
        Duration::from_secs(60),
        |vm| ready_reason(vm) == Some(("True".into(), "Running".into())),
    )
    .await;

    for n in ["on-h1", "on-h2", "wants-h2"] {
        let _ = c.vms().delete(n, &DeleteParams::default()).await;
    }
    let vms = c.vms();
    wait_for("all VMs deleted", Duration::from_secs(120), || {
        let vms = vms.clone();
        async move {
            vms.list(&Default::default())
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        }
    })
    .await;
    drop(ctl);
}
