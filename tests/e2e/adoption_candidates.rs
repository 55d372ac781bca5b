//! Domains made with plain virsh, outside ferry, that a HostPool names in `spec.adoption.domains`:
//! described in the host's status as ferry would adopt them, and left exactly as they were.

use crate::support::cluster::{self, Cluster, wait_for};
use crate::support::hosts::{boots, domain_on, highest_tick};
use crate::support::lab;
use crate::support::objects::{BOOT, LABEL, pool_manifest};
use ferry::api::HostPool;
use ferry::api::host_pool::AdoptionCandidate;
use serde_json::json;
use std::time::Duration;

/// A running domain with a flat disk in the pool is adoptable; a shut-off one with an overlay
/// disk and a host directory passed through is not, and says why; a domain the pool does not
/// name is not listed. The running guest keeps running through it all: one boot, ticks going on,
/// and no ferry metadata in its XML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn named_foreign_domains_are_described_and_left_alone() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(1).expect("a lab host");
    let mut c = Cluster::new("ferry-e2e-adopt").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let _ctl = c.controller("e2e-adopt");

    // Outside ferry: a flat copy of the golden image, booted with plain virsh.
    let flat = lab.pool_dir.join("legacy.qcow2");
    std::fs::copy(lab.golden_path(), &flat).expect("copy the golden image");
    let log = lab.console_dir.join("legacy.log");
    let define = |name: &str, xml: String| {
        let file = lab.dir.join(format!("{name}.xml"));
        std::fs::write(&file, xml).expect("write XML");
        lab.virsh_ok("h1", &["define", &file.to_string_lossy()])
            .expect("virsh define");
    };
    define(
        "legacy",
        lab.tiny_domain_xml_with("legacy", &flat, &log, "ferry.tick_ms=50", ""),
    );
    lab.virsh_ok("h1", &["start", "legacy"])
        .expect("virsh start");
    lab::wait_for_console(&log, "FERRY-BOOT 1", BOOT).expect("legacy booted");
    // The pool's storage as a libvirt pool, as ferry defines it on a host it placed VMs on; the
    // overlay is made behind its back.
    let dir = lab.pool_dir.to_string_lossy().to_string();
    lab.virsh_ok(
        "h1",
        &["pool-define-as", "ferry", "dir", "--target", dir.as_str()],
    )
    .expect("pool-define-as");
    lab.virsh_ok("h1", &["pool-start", "ferry"])
        .expect("pool-start");
    let overlay = lab.create_overlay("legacy-odd").expect("overlay");
    let shared = lab.dir.join("shared");
    std::fs::create_dir_all(&shared).expect("mkdir");
    define(
        "legacy-odd",
        lab.tiny_domain_xml_with(
            "legacy-odd",
            &overlay,
            &lab.console_dir.join("legacy-odd.log"),
            "",
            &format!(
                "    <filesystem type='mount'><source dir='{}'/><target dir='shared'/></filesystem>\n",
                shared.display()
            ),
        ),
    );
    define(
        "unnamed",
        lab.tiny_domain_xml("unnamed", &overlay, &lab.console_dir.join("unnamed.log")),
    );
    let ticks_before = highest_tick(&lab::console_log(&log));

    let mut pool = pool_manifest("lab", &lab);
    pool["spec"]["adoption"] = json!({"domains": ["legacy*"]});
    c.apply::<HostPool>(pool).await;
    let pools = c.pools();
    let listed: Vec<AdoptionCandidate> = wait_for(
        "both named domains described in the host's status",
        Duration::from_secs(120),
        || {
            let pools = pools.clone();
            async move {
                let st = pools.get("lab").await.ok()?.status?;
                let h = st.hosts.into_iter().find(|h| h.name.ends_with("-h1"))?;
                (h.adoption_candidates.len() == 2).then_some(h.adoption_candidates)
            }
        },
    )
    .await;

    let legacy = &listed[0];
    assert_eq!(
        (
            legacy.name.as_str(),
            legacy.state.as_str(),
            legacy.adoptable
        ),
        ("legacy", "Running", true),
        "{legacy:?}"
    );
    assert_eq!((legacy.cpus, legacy.memory.as_str()), (1, "128Mi"));
    assert_eq!(legacy.volumes, ["legacy.qcow2"]);
    let odd = &listed[1];
    assert_eq!(
        (odd.name.as_str(), odd.state.as_str(), odd.adoptable),
        ("legacy-odd", "ShutOff", false)
    );
    let golden = lab.golden_path().to_string_lossy().to_string();
    for needle in [
        format!("has the backing file {golden}"),
        "filesystem mount: host hardware or files passed through".to_string(),
    ] {
        assert!(
            odd.blockers.iter().any(|b| b.contains(&needle)),
            "{:?} should mention {needle:?}",
            odd.blockers
        );
    }

    // Described, not touched.
    let text = lab::console_log(&log);
    assert_eq!(boots(&text), 1, "legacy booted once");
    assert!(highest_tick(&text) > ticks_before, "legacy kept running");
    assert_eq!(domain_on(&lab, "h1", "legacy"), (true, true));
    for name in ["legacy", "legacy-odd"] {
        let xml = lab.virsh_ok("h1", &["dumpxml", name]).expect("dumpxml");
        assert!(
            !xml.contains("ferry.dev/xmlns"),
            "{name} got ferry metadata"
        );
    }
    let odd_state = lab
        .virsh_ok("h1", &["domstate", "legacy-odd"])
        .expect("domstate");
    assert_eq!(odd_state.trim(), "shut off");
}
