//! The console proxy on a real host, authorised by a real API server: a user with only `view`
//! gets 403 and no console; a user with `edit` types into the tiny guest's serial console and
//! reads its answer, and receives a VNC framebuffer update the size of the guest's display;
//! every session is an Event on the VM. Then the same through the API server (ferry's
//! aggregated API, registered against the controller) with `kubectl ferry console|vnc` and
//! nothing but a kubeconfig: a view user's token is refused, a client-certificate user with
//! `edit` reads the guest's answer and a VNC viewer gets the RFB greeting.
//!
//! Needs TokenReview and SubjectAccessReview, which the API stand-in does not have: skipped
//! there (`e2e/run.sh consoles` starts a real API server when KUBECONFIG is unset).

use crate::support::cluster::{self, Cluster, wait_for};
use crate::support::consoles::{self, Rfb};
use crate::support::hosts::console;
use crate::support::lab;
use crate::support::objects::{BOOT, LABEL, pool_manifest, ready_reason, vm_manifest, wait_vm};
use ferry::api::VirtualMachine;
use futures::SinkExt;
use kube::Api;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn consoles_are_authorised_by_rbac_and_reach_the_guest() {
    assert!(cluster::enabled(), "set FERRY_E2E=1 and KUBECONFIG");
    if std::env::var_os("FERRY_STANDIN").is_some() {
        eprintln!(
            "SKIPPED: the API stand-in has no TokenReview or SubjectAccessReview (e2e/run.sh runs it against a real API server where one is installed)"
        );
        return;
    }
    let lab = lab::Lab::up(1).expect("lab host");
    let mut c = Cluster::new("ferry-e2e-console").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let certs = tempfile::tempdir().expect("tempdir");
    let api = consoles::AggregatedApi::prepare(&c, certs.path());
    let api_addr = api.addr.to_string();
    let ctl = c.controller_with_env(
        "e2e-console",
        &[
            ("FERRY_AGGREGATED_API_ADDR", api_addr.as_str()),
            ("FERRY_AGGREGATED_API_CERT", &api.cert.to_string_lossy()),
            ("FERRY_AGGREGATED_API_KEY", &api.key.to_string_lossy()),
        ],
    );
    let port = ctl.http_port;
    let ns = c.namespace.clone();
    consoles::apply_user_roles(&c);
    let viewer = consoles::user(&c, "alice", "view");
    let editor = consoles::user(&c, "bob", "edit");

    c.apply::<ferry::api::HostPool>(pool_manifest("lab", &lab))
        .await;
    c.apply::<VirtualMachine>(vm_manifest("con", "lab", &lab, "Always"))
        .await;
    wait_vm(&c, "con", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let log = console(&lab, &ns, "con");
    tokio::task::spawn_blocking(move || {
        lab::wait_for_console(&log, "FERRY-READY", Duration::from_secs(120))
    })
    .await
    .expect("task")
    .expect("guest boots");
    consoles::wait_can(
        &c,
        &editor,
        "get",
        "virtualmachines.subresources.ferry.dev/console",
        true,
    )
    .await;
    consoles::wait_can(&c, &viewer, "get", "virtualmachines.ferry.dev", true).await;
    consoles::wait_can(
        &c,
        &viewer,
        "get",
        "virtualmachines.subresources.ferry.dev/console",
        false,
    )
    .await;

    let path = |kind: &str| format!("/api/v1/namespaces/{ns}/virtualmachines/con/{kind}");
    // No token, a bad token, a viewer, an unknown VM.
    assert_eq!(consoles::get(port, &path("console"), None).await.0, 401);
    assert_eq!(
        consoles::get(port, &path("console"), Some("nonsense"))
            .await
            .0,
        401
    );
    for kind in ["console", "vnc"] {
        let (status, body) = consoles::get(port, &path(kind), Some(&viewer)).await;
        assert_eq!(status, 403, "{kind}: {body}");
        assert!(body.contains(&format!("virtualmachines/{kind}")), "{body}");
        assert!(consoles::connect(port, &path(kind), &viewer).await.is_err());
    }
    let (status, _) = consoles::get(
        port,
        &format!("/api/v1/namespaces/{ns}/virtualmachines/nope/console"),
        Some(&editor),
    )
    .await;
    assert_eq!(status, 404);

    // The editor types into the serial console and reads the guest's answer.
    let mut ws = consoles::connect(port, &path("console"), &editor)
        .await
        .expect("serial console");
    ws.send(Message::Binary(b"hello from bob\r".to_vec().into()))
        .await
        .expect("type");
    consoles::read_until(
        &mut ws,
        "FERRY-ECHO hello from bob",
        Duration::from_secs(30),
    )
    .await;
    // Round trips through the proxy: a line typed, the guest's answer read (a figure to print,
    // not a bound: the machine is shared).
    let mut trips = Vec::new();
    for i in 0..20 {
        let started = std::time::Instant::now();
        ws.send(Message::Binary(format!("rt{i}\r").into_bytes().into()))
            .await
            .expect("type");
        consoles::read_until(
            &mut ws,
            &format!("FERRY-ECHO rt{i}"),
            Duration::from_secs(30),
        )
        .await;
        trips.push(started.elapsed());
    }
    trips.sort();
    eprintln!(
        "serial console line round trip through the proxy: median {:?}, max {:?} (20 lines)",
        trips[trips.len() / 2],
        trips[trips.len() - 1]
    );
    ws.close(None).await.expect("close");
    // The same with virsh console on the host's own socket, for comparison.
    let uri = lab.hosts[0].unix_uri.clone();
    let domain = format!("{ns}_con");
    let mut direct =
        tokio::task::spawn_blocking(move || consoles::virsh_console_round_trips(&uri, &domain, 20))
            .await
            .expect("virsh task");
    direct.sort();
    eprintln!(
        "serial console line round trip with virsh console: median {:?}, max {:?} (20 lines)",
        direct[direct.len() / 2],
        direct[direct.len() - 1]
    );
    let mut ws = consoles::connect(port, &path("console"), &editor)
        .await
        .expect("serial console again");
    ws.close(None).await.expect("close");

    // VNC: a full framebuffer update covering the guest's display.
    let ws = consoles::connect(port, &path("vnc"), &editor)
        .await
        .expect("VNC");
    let fb = Rfb::new(ws).first_update().await;
    // The guest's display as libvirt sees it: the size of a screenshot (PNG or PPM).
    let screen = certs.path().join("screen");
    lab.virsh_ok(
        &lab.hosts[0].name,
        &[
            "screenshot",
            &format!("{ns}_con"),
            &screen.to_string_lossy(),
        ],
    )
    .expect("virsh screenshot");
    let image = std::fs::read(&screen).expect("read the screenshot");
    let size = image_size(&image);
    eprintln!("VNC: {fb:?}; screenshot {size:?}");
    assert_eq!(
        Some((u32::from(fb.width), u32::from(fb.height))),
        size,
        "the framebuffer is the size of the guest's display"
    );
    let area: u64 = fb.rects.iter().map(|r| r.2 as u64 * r.3 as u64).sum();
    assert_eq!(area, fb.width as u64 * fb.height as u64, "{fb:?}");
    assert!(
        fb.rects
            .iter()
            .all(|r| r.0 + r.2 <= fb.width && r.1 + r.3 <= fb.height),
        "{fb:?}"
    );

    // Through the Kubernetes API server (ferry's aggregated API), with nothing but a kubeconfig:
    // a user with a client certificate and edit types into the console with `kubectl ferry
    // console`; the viewer's kubeconfig is refused by the API server's RBAC.
    api.register(&c).await;
    let carol = consoles::cert_user(&c, certs.path(), "carol", "edit").await;
    let viewer_kubeconfig = consoles::token_kubeconfig(&c, certs.path(), "alice", &viewer);
    let refused = consoles::plugin_console(
        &viewer_kubeconfig,
        &ns,
        "con",
        "",
        "",
        Duration::from_secs(30),
    )
    .await;
    assert!(!refused.0, "the viewer got a console: {refused:?}");
    assert!(
        refused.2.contains("403") || refused.2.contains("orbidden"),
        "{refused:?}"
    );
    // A second replica, a standby, behind the same Service: the API server picks either at
    // random for each request, the standby answers 503, and kube's client (the plugin's) asks
    // again on a 503, so every console opens (1 in 256 that eight would without asking again).
    let standby_addr = api.standby_addr.to_string();
    let standby = c.controller_with_env(
        "e2e-console-standby",
        &[
            ("FERRY_AGGREGATED_API_ADDR", standby_addr.as_str()),
            ("FERRY_AGGREGATED_API_CERT", &api.cert.to_string_lossy()),
            ("FERRY_AGGREGATED_API_KEY", &api.key.to_string_lossy()),
        ],
    );
    for i in 0..8 {
        let answer = consoles::plugin_console(
            &carol,
            &ns,
            "con",
            &format!("hello {i} from carol\r"),
            &format!("FERRY-ECHO hello {i} from carol"),
            Duration::from_secs(60),
        )
        .await;
        assert!(
            answer.0,
            "kubectl ferry console through the API server: {answer:?}"
        );
    }
    let vnc = consoles::plugin_vnc_greeting(&carol, &ns, "con", Duration::from_secs(60)).await;
    assert!(vnc.starts_with("RFB 003."), "{vnc:?}");

    // Each session is an Event on the VM: who opened which console, and for how long.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), &ns);
    let who = format!("system:serviceaccount:{ns}:bob");
    wait_for("console Events", Duration::from_secs(30), || {
        let events = events.clone();
        let who = who.clone();
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            let notes: Vec<String> = list
                .items
                .iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("con"))
                .filter(|e| {
                    e.reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with("Console"))
                })
                .filter_map(|e| e.note.clone())
                .collect();
            let has = |s: &str| notes.iter().any(|n| n.contains(&who) && n.contains(s));
            let carol = |s: &str| {
                notes
                    .iter()
                    .any(|n| n.starts_with("carol") && n.contains(s))
            };
            (has("opened the serial console")
                && has("serial console session ended after")
                && has("opened the VNC display")
                && carol("opened the serial console"))
            .then_some(())
        }
    })
    .await;
    drop(standby);
    drop(ctl);
    drop(api);
}

/// Width and height of a PNG (its IHDR) or binary PPM (`P6 W H 255`) image.
pub(crate) fn image_size(image: &[u8]) -> Option<(u32, u32)> {
    if image.starts_with(b"\x89PNG\r\n\x1a\n") && image.len() >= 24 {
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        return Some((be(&image[16..20]), be(&image[20..24])));
    }
    let head = String::from_utf8_lossy(&image[..image.len().min(32)]).into_owned();
    let mut words = head.split_ascii_whitespace();
    (words.next() == Some("P6")).then_some(())?;
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}
