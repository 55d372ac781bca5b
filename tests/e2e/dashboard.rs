//! The web dashboard in a real browser (Debian's headless Chromium through chromedriver), on two
//! real lab hosts and a real API server: a person logs in with a token, sees the lab's pool, host
//! (versions, state, HA verdict) and VM, stops and starts the VM from its page and watches the
//! phase change live, types into its serial console in the page's terminal (xterm.js) and
//! reads the guest's answer, sees its VNC display in noVNC at the guest's display size, and
//! live-migrates it to the other host, watching the migration succeed on the migrations page; the API server's audit log shows the changes made as that person.
//! A user with only `view` sees no action buttons and gets 403 on an action POST; a standby
//! replica answers 503. Screenshots go to the test's output directory (printed).
//!
//! Needs TokenReview and SubjectAccessReview, which the API stand-in does not have: skipped
//! there (`e2e/run.sh dashboard` starts a real API server when KUBECONFIG is unset).

use crate::support::browser::Browser;
use crate::support::cluster;
use crate::support::consoles;
use crate::support::dashboard;
use crate::support::migration;
use crate::support::objects::{BOOT, LABEL, pool_manifest, ready_reason, vm_manifest, wait_vm};
use ferry::api::VirtualMachine;
use ferry::api::VmPhase;
use serde_json::json;
use std::time::Duration;

/// How long the page may take to show a change (live update after the controller's work).
const SHOWN: Duration = Duration::from_secs(120);
/// How long a page may take to show what is already there.
const PAGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster, root and chromium: run e2e/run.sh dashboard"]
async fn dashboard_shows_the_lab_and_acts_as_the_user() {
    assert!(cluster::enabled(), "set FERRY_E2E=1 and KUBECONFIG");
    if !dashboard::supported() {
        eprintln!(
            "SKIPPED: the API stand-in has no TokenReview or SubjectAccessReview (e2e/run.sh runs it against a real API server where one is installed)"
        );
        return;
    }
    // Two lab hosts with live migration between them (as the migration tests set them up).
    let (lab, c, ctl) = migration::migration_lab(
        "ferry-e2e-dash",
        2,
        LABEL,
        |lab| pool_manifest("lab", lab),
        json!({}),
    )
    .await;
    let node = format!("{}-h1", c.namespace);
    let node2 = format!("{}-h2", c.namespace);
    let base = format!("http://127.0.0.1:{}", ctl.http_port);
    let ns = c.namespace.clone();
    consoles::apply_user_roles(&c);
    let viewer = consoles::user(&c, "alice", "view");
    let editor = consoles::user(&c, "bob", "edit");

    let mut vm = vm_manifest("web", "lab", &lab, "Manual");
    vm["metadata"]["annotations"] = json!({"ferry.dev/power": "on"});
    c.apply::<VirtualMachine>(vm).await;
    let placed = wait_vm(&c, "web", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    // The VM's host, and the other one (the migration's target).
    let (node, node2) = match placed.status.as_ref().and_then(|s| s.host.clone()) {
        Some(h) if h == node2 => (node2, node),
        _ => (node, node2),
    };
    consoles::wait_can(&c, &editor, "patch", "virtualmachines.ferry.dev", true).await;
    consoles::wait_can(&c, &viewer, "list", "virtualmachines.ferry.dev", true).await;
    consoles::wait_can(&c, &viewer, "patch", "virtualmachines.ferry.dev", false).await;

    let out = dashboard::output_dir(&ns);
    eprintln!("dashboard screenshots: {}", out.display());
    let b = Browser::start(&out).await.expect("headless Chromium");

    // Without a session the dashboard sends to the login page; a wrong token is refused.
    b.goto(&format!("{base}/dashboard/")).await.expect("open");
    b.wait_text("h1", "ferry", PAGE).await.expect("login page");
    assert!(b.url().await.expect("url").ends_with("/dashboard/login"));
    b.type_into("#token", "not-a-token").await.expect("type");
    b.click("#login").await.expect("submit");
    b.wait_text("#login-error", "did not accept", PAGE)
        .await
        .expect("a wrong token is refused");

    // The editor logs in and finds the pool, its host and the VM.
    let user = format!("system:serviceaccount:{ns}:bob");
    let shown = dashboard::log_in(&b, &base, &editor)
        .await
        .expect("logged in");
    assert_eq!(shown, user);
    b.wait_text(".pool-row[data-name='lab']", "lab", PAGE)
        .await
        .expect("the pool");
    b.screenshot("pools.png").await.expect("screenshot");
    b.click(".pool-row[data-name='lab'] a")
        .await
        .expect("open the pool");
    let host = format!(".host-row[data-name='{node}']");
    let row = b
        .wait_text(&host, "libvirt 9", PAGE)
        .await
        .expect("the host");
    assert!(row.contains("QEMU 7"), "{row}");
    assert!(row.contains("Ready"), "{row}");
    b.wait_text(&format!("{host} .verdict"), "", PAGE)
        .await
        .expect("HA verdict cell");
    b.screenshot("hosts.png").await.expect("screenshot");
    b.click(&format!("{host} a"))
        .await
        .expect("VMs on the host");
    b.wait_text(".vm-row[data-name='web'] .phase", "Running", PAGE)
        .await
        .expect("the VM on its host");

    // Stop and start the VM from its page; the phase changes on the page without a reload.
    b.click(".vm-row[data-name='web'] a")
        .await
        .expect("open the VM");
    b.wait_text("#vm-phase", "Running", PAGE)
        .await
        .expect("VM page");
    b.wait_text("#vm-host", &node, PAGE).await.expect("VM host");
    b.wait_text("#conditions", "Ready", PAGE)
        .await
        .expect("conditions");
    b.screenshot("vm-running.png").await.expect("screenshot");
    b.click("#action-stop").await.expect("stop");
    b.wait_text("#notice", "ferry.dev/power=off", PAGE)
        .await
        .expect("stop accepted");
    wait_vm(&c, "web", "Stopped", SHOWN, |vm| {
        vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Stopped)
    })
    .await;
    let seen = std::time::Instant::now();
    b.wait_text("#vm-phase", "Stopped", PAGE)
        .await
        .expect("the page shows the VM stopped without a reload");
    eprintln!(
        "dashboard: the page showed Stopped {:?} after the test's watch saw it",
        seen.elapsed()
    );
    b.wait_text("#events", "Started on host", SHOWN)
        .await
        .expect("the VM's Events");
    // They come from the controller's Events cache: its watch works with the chart's RBAC.
    let log = ctl.log_text();
    assert!(
        !log.contains("event cache watch"),
        "the Events watch failed: {}",
        log.lines()
            .filter(|l| l.contains("event cache watch"))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
    b.screenshot("vm-stopped.png").await.expect("screenshot");
    b.click("#action-start").await.expect("start");
    wait_vm(&c, "web", "Running", SHOWN, |vm| {
        vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Running)
    })
    .await;
    b.wait_text("#vm-phase", "Running", PAGE)
        .await
        .expect("the page shows the VM running again");

    // The serial console in the page's terminal (xterm.js): a typed line, the guest's answer.
    b.click("#action-console")
        .await
        .expect("open the serial console");
    b.wait_text("#console-state", "connected", PAGE)
        .await
        .expect("console connected");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut answered = false;
    for i in 0.. {
        let line = format!("hello {i} from the browser");
        b.keys(".xterm-helper-textarea", &format!("{line}\u{e007}"))
            .await
            .expect("type into the terminal");
        if b.wait_text(
            "#terminal .xterm-rows",
            &format!("FERRY-ECHO {line}"),
            Duration::from_secs(5),
        )
        .await
        .is_ok()
        {
            answered = true;
            break;
        }
        if std::time::Instant::now() > deadline {
            break;
        }
    }
    assert!(answered, "the guest answered in the browser's terminal");
    b.screenshot("console.png").await.expect("screenshot");

    // The VNC display in noVNC: its canvas is the size of the guest's display.
    b.click("#action-vnc").await.expect("open the VNC console");
    b.wait_text("#vnc-state", "connected", PAGE)
        .await
        .expect("VNC connected");
    let canvas = b
        .run_async(
            "const done = arguments[arguments.length - 1];
             const c = document.querySelector('#vnc canvas');
             done(c ? [c.width, c.height] : null);",
            json!([]),
        )
        .await
        .expect("canvas size");
    let screen = out.join("virsh-screenshot");
    lab.virsh_ok(
        &lab.hosts[usize::from(node.ends_with("-h2"))].name,
        &[
            "screenshot",
            &format!("{ns}_web"),
            &screen.to_string_lossy(),
        ],
    )
    .expect("virsh screenshot");
    let size = crate::consoles::image_size(&std::fs::read(&screen).expect("read the screenshot"));
    eprintln!("dashboard: noVNC canvas {canvas}, guest display {size:?}");
    assert_eq!(
        size.map(|(w, h)| json!([w, h])),
        Some(canvas),
        "noVNC's canvas is the size of the guest's display"
    );
    b.screenshot("vnc.png").await.expect("screenshot");

    // A live migration from the page, watched on the migrations page.
    b.type_into("#migrate-target", &node2)
        .await
        .expect("target host");
    b.click("#action-migrate").await.expect("migrate");
    b.wait_text("#notice", "created VirtualMachineMigration", PAGE)
        .await
        .expect("migration created");
    b.goto(&format!("{base}/dashboard/#/migrations"))
        .await
        .expect("migrations page");
    b.wait_text("#recent-migrations .migration-row", "Succeeded", SHOWN)
        .await
        .expect("the migration succeeds on the page");
    let row = b
        .text("#recent-migrations .migration-row")
        .await
        .unwrap_or_default();
    assert!(row.contains(&node2) && row.contains("100%"), "{row}");
    b.screenshot("migrations.png").await.expect("screenshot");
    b.goto(&format!("{base}/dashboard/#/vm/{ns}/web"))
        .await
        .expect("VM page");
    b.wait_text("#vm-host", &node2, PAGE)
        .await
        .expect("the VM on its new host");

    // The API server saw both changes made by the editor (the dashboard used their token).
    let audit = c
        .kubeconfig
        .parent()
        .map(|d| d.join("logs/audit.log"))
        .filter(|p| p.exists());
    match audit {
        Some(path) => {
            let log = std::fs::read_to_string(&path).expect("audit log");
            let by_editor = log
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|e| {
                    e["verb"] == "patch"
                        && e["objectRef"]["resource"] == "virtualmachines"
                        && e["objectRef"]["name"] == "web"
                        && e["objectRef"]["namespace"] == ns.as_str()
                        && e["user"]["username"] == user.as_str()
                })
                .count();
            assert!(
                by_editor >= 2,
                "the audit log shows {by_editor} patches of web by {user}"
            );
        }
        None => eprintln!("no audit log beside KUBECONFIG: the user of the patches is not checked"),
    }

    // Logging out ends the session.
    b.click("#logout").await.expect("log out");
    b.wait_text("h1", "ferry", PAGE)
        .await
        .expect("back to login");
    b.goto(&format!("{base}/dashboard/")).await.expect("open");
    b.wait_text("#login", "Log in", PAGE)
        .await
        .expect("the session ended");

    // A viewer sees the VM but no buttons, and an action POST is refused.
    let shown = dashboard::log_in(&b, &base, &viewer)
        .await
        .expect("logged in");
    assert!(shown.ends_with(":alice"), "{shown}");
    b.goto(&format!("{base}/dashboard/#/vm/{ns}/web"))
        .await
        .expect("open");
    b.wait_text("#vm-phase", "Running", PAGE)
        .await
        .expect("the viewer sees the VM");
    b.wait_text("#no-actions", "not change", PAGE)
        .await
        .expect("no buttons");
    assert!(b.find("#action-stop").await.is_none());
    assert!(b.find("#action-migrate").await.is_none());
    assert!(b.find("#action-console").await.is_none());
    assert!(b.find("#action-vnc").await.is_none());
    b.screenshot("vm-viewer.png").await.expect("screenshot");
    let statuses = b
        .run_async(
            "const [ns, done] = arguments;
             (async () => {
               const o = await (await fetch('/dashboard/api/overview')).json();
               const post = (headers) => fetch(`/dashboard/api/vms/${ns}/web/stop`,
                 {method: 'POST', headers, body: '{}'}).then(r => r.status);
               done([await post({'x-ferry-csrf': o.csrf}), await post({})]);
             })().catch(e => done(String(e)));",
            json!([ns]),
        )
        .await
        .expect("POSTs from the page");
    assert_eq!(
        statuses,
        json!([403, 403]),
        "viewer's stop: RBAC, then CSRF"
    );
    let stored = c.vms().get("web").await.expect("VM");
    assert_eq!(
        stored
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("ferry.dev/power"))
            .map(String::as_str),
        Some("on"),
        "the viewer changed nothing"
    );
    b.quit().await;

    // A standby replica serves no dashboard.
    let standby = c.controller("e2e-dashboard-standby");
    cluster::wait_for(
        "the standby's HTTP endpoint",
        Duration::from_secs(60),
        || {
            let answer = standby.http_get("/dashboard/login");
            async move { answer.filter(|(code, _)| *code == 503) }
        },
    )
    .await;
    drop(standby);
    drop(ctl);
}
