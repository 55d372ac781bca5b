//! libvirt credentials from Secrets: TLS client certificates and SSH keys, and the clear
//! `Misconfigured` messages when they are wrong.

use crate::support::cluster::{self, Cluster, metric_sum, wait_for};
use crate::support::lab;
use crate::support::objects::{LABEL, pool_manifest, put_secret};
use serde_json::json;
use std::time::Duration;

fn pki_files(dir: &std::path::Path) -> Vec<(&'static str, Vec<u8>)> {
    ["cacert.pem", "clientcert.pem", "clientkey.pem"]
        .into_iter()
        .map(|f| (f, std::fs::read(dir.join(f)).expect("lab PKI file")))
        .collect()
}

/// The state and message of the pool's only host, once it has one.
async fn only_host(c: &Cluster, pool: &str) -> Option<(ferry::api::HostState, String)> {
    let s = c.pools().get(pool).await.ok()?.status?;
    let h = s.hosts.first()?;
    Some((h.state, h.message.clone().unwrap_or_default()))
}

/// A lab host whose libvirtd takes TLS only with client certificates of the lab CA; the
/// controller in the lab's client namespace. Credentials come from Secrets: the lab client
/// certificate makes the host Ready (files written 0600); a client certificate from another CA,
/// a CA that does not sign the host's certificate, and a missing Secret each leave the host
/// Misconfigured with a message that says which, without a retry storm (counted on /metrics over
/// 30 s); a URI template that renders no valid URI and a selector that matches nothing are
/// reported too. Fixing a Secret (or creating the missing one) makes the host Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn tls_credentials_from_secrets() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let started = std::time::Instant::now();
    let lab = lab::Lab::up_tls(1).expect("a lab host with TLS");
    let pki = lab.pki_dir.clone().expect("the lab's PKI");
    let mut c = Cluster::new("ferry-e2e-tls").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let ctl = c.controller_in_netns("e2e-tls", &lab.client_netns);

    put_secret(&c, "tls-good", "Opaque", &pki_files(&pki.join("client"))).await;
    put_secret(&c, "tls-rogue", "Opaque", &pki_files(&pki.join("rogue"))).await;
    put_secret(
        &c,
        "tls-wrong-ca",
        "Opaque",
        &pki_files(&pki.join("wrong-ca")),
    )
    .await;
    let tls_pool = |name: &str, template: &str, secret: &str| {
        let mut p = pool_manifest(name, &lab);
        p["spec"]["libvirt"] = json!({
            "uriTemplate": template, "connectTimeoutSeconds": 5,
            "keepaliveIntervalSeconds": 2, "keepaliveCount": 3,
            "credentialsSecret": secret
        });
        p
    };
    let tls = "qemu+tls://{address}/system";
    for (pool, secret) in [
        ("good", "tls-good"),
        ("rogue", "tls-rogue"),
        ("wrong-ca", "tls-wrong-ca"),
        ("no-secret", "absent"),
    ] {
        c.apply::<ferry::api::HostPool>(tls_pool(pool, tls, secret))
            .await;
    }
    c.apply::<ferry::api::HostPool>(tls_pool(
        "bad-template",
        "qemu+tls://{nodename}/system",
        "tls-good",
    ))
    .await;
    let mut nomatch = tls_pool("no-match", tls, "tls-good");
    nomatch["spec"]["nodeSelector"] = json!({"matchLabels": {"ferry.dev/e2e-none": "x"}});
    c.apply::<ferry::api::HostPool>(nomatch).await;

    use ferry::api::HostState::{Misconfigured, Ready};
    let expect = |pool: &'static str, state, needle: &'static str| {
        let c = &c;
        async move {
            wait_for(
                &format!("pool {pool}: host {state:?} with {needle:?}"),
                Duration::from_secs(60),
                || async {
                    only_host(c, pool)
                        .await
                        .filter(|(s, m)| *s == state && m.contains(needle))
                },
            )
            .await
        }
    };
    expect("good", Ready, "").await;
    let (_, m) = expect(
        "rogue",
        Misconfigured,
        "rejected ferry's TLS client certificate",
    )
    .await;
    eprintln!("rogue client certificate: {m}");
    assert!(m.contains("tls-rogue"), "names the Secret: {m}");
    let (_, m) = expect(
        "wrong-ca",
        Misconfigured,
        "host's TLS certificate was rejected",
    )
    .await;
    eprintln!("wrong CA: {m}");
    let (_, m) = expect("no-secret", Misconfigured, "does not exist").await;
    assert!(m.contains("absent"), "{m}");
    let (_, m) = expect("bad-template", Misconfigured, "unknown placeholder").await;
    eprintln!("bad template: {m}");
    let pools = c.pools();
    wait_for("no-match: NoHostsSelected", Duration::from_secs(60), || {
        let pools = pools.clone();
        async move {
            let s = pools.get("no-match").await.ok()?.status?;
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "NoHostsSelected")
                .then_some(())
        }
    })
    .await;
    let files: Vec<_> = std::fs::read_dir(ctl.pki_dir())
        .expect("credentials directory")
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().contains("tls-good"))
        .flat_map(|d| {
            std::fs::read_dir(d.path())
                .expect("Secret directory")
                .flatten()
        })
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        let mode = f.metadata().expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?}", f.path());
    }

    // No retry storm: the failing pools are probed on their 15 s period, connection attempts to
    // refused hosts back off.
    let (_, before) = ctl.http_get("/metrics").expect("metrics");
    let window = Duration::from_secs(30);
    tokio::time::sleep(window).await;
    let (_, after) = ctl.http_get("/metrics").expect("metrics");
    let delta = |series: &str| metric_sum(&after, series) - metric_sum(&before, series);
    let reconciles = delta("ferry_reconciles_total{controller=\"hostpool\"}");
    let connects = delta("ferry_libvirt_call_duration_seconds_count{operation=\"connect\"");
    eprintln!(
        "in {window:?}: {reconciles} HostPool reconciles (6 pools), {connects} connection attempts"
    );
    assert!(
        reconciles <= 6.0 * 3.0,
        "at most 3 reconciles per pool in 30 s: {reconciles}"
    );
    assert!(
        connects <= 2.0 * 3.0,
        "at most 3 attempts per refused pool in 30 s: {connects}"
    );

    // Fixed credentials are picked up at the next probe.
    put_secret(&c, "tls-rogue", "Opaque", &pki_files(&pki.join("client"))).await;
    put_secret(&c, "absent", "Opaque", &pki_files(&pki.join("client"))).await;
    for pool in ["rogue", "no-secret"] {
        wait_for(
            &format!("pool {pool} Ready with fixed credentials"),
            Duration::from_secs(60),
            || async { only_host(&c, pool).await.filter(|(s, _)| *s == Ready) },
        )
        .await;
    }
    eprintln!(
        "tls_credentials_from_secrets took {:.0}s",
        started.elapsed().as_secs_f64()
    );
    drop(ctl);
}

/// A lab host with an sshd whose sessions reach its libvirtd; the controller in the lab's client
/// namespace. SSH keys come from `kubernetes.io/ssh-auth` Secrets: with `qemu+libssh` the key and
/// `known_hosts` make the host Ready (files written 0600); a key the host refuses and a
/// known_hosts with the wrong host key leave it Misconfigured saying which; `known_hosts` with
/// `qemu+ssh` (whose ssh program ignores it) is refused; `qemu+ssh` with the key alone works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn ssh_keys_from_secrets() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let started = std::time::Instant::now();
    let lab = lab::Lab::up_ssh(1).expect("a lab host with sshd");
    let keys = lab.ssh_dir.clone().expect("the lab's SSH keys");
    let mut c = Cluster::new("ferry-e2e-ssh").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let ctl = c.controller_in_netns("e2e-ssh", &lab.client_netns);
    let file = |f: &str| std::fs::read(keys.join(f)).expect("lab SSH file");
    let ssh_auth = "kubernetes.io/ssh-auth";
    put_secret(
        &c,
        "ssh-good",
        ssh_auth,
        &[
            ("ssh-privatekey", file("client")),
            ("known_hosts", file("known_hosts")),
        ],
    )
    .await;
    put_secret(
        &c,
        "ssh-other-key",
        ssh_auth,
        &[
            ("ssh-privatekey", file("other")),
            ("known_hosts", file("known_hosts")),
        ],
    )
    .await;
    put_secret(
        &c,
        "ssh-wrong-host",
        ssh_auth,
        &[
            ("ssh-privatekey", file("client")),
            ("known_hosts", file("known_hosts.wrong")),
        ],
    )
    .await;
    put_secret(
        &c,
        "ssh-key-only",
        ssh_auth,
        &[("ssh-privatekey", file("client"))],
    )
    .await;
    let libssh = "qemu+libssh://root@{address}/system";
    for (pool, template, secret) in [
        ("good", libssh, "ssh-good"),
        ("other-key", libssh, "ssh-other-key"),
        ("wrong-host", libssh, "ssh-wrong-host"),
        (
            "ssh-known-hosts",
            "qemu+ssh://root@{address}/system",
            "ssh-good",
        ),
        // The ssh program with the key alone; it records the host key under the controller's
        // $HOME (a test directory here).
        (
            "ssh-program",
            "qemu+ssh://root@{address}/system?no_verify=1",
            "ssh-key-only",
        ),
    ] {
        let mut p = pool_manifest(pool, &lab);
        p["spec"]["libvirt"] = json!({
            "uriTemplate": template, "connectTimeoutSeconds": 10,
            "credentialsSecret": secret,
            // no_verify=1: the ssh program accepts the new host key (labs only).
            "insecureSkipHostVerification": template.contains("no_verify=1")
        });
        c.apply::<ferry::api::HostPool>(p).await;
    }
    use ferry::api::HostState::{Misconfigured, Ready};
    for (pool, state, needle) in [
        ("good", Ready, ""),
        ("ssh-program", Ready, ""),
        ("other-key", Misconfigured, "refused the SSH key"),
        ("wrong-host", Misconfigured, "SSH host key"),
        ("ssh-known-hosts", Misconfigured, "qemu+libssh://"),
    ] {
        let (_, m) = wait_for(
            &format!("pool {pool}: host {state:?} with {needle:?}"),
            Duration::from_secs(90),
            || async {
                only_host(&c, pool)
                    .await
                    .filter(|(s, m)| *s == state && m.contains(needle))
            },
        )
        .await;
        eprintln!("{pool}: {state:?} {m}");
    }
    let dir = std::fs::read_dir(ctl.pki_dir())
        .expect("credentials directory")
        .flatten()
        .find(|d| d.file_name().to_string_lossy().contains("ssh-good"))
        .expect("ssh-good's directory")
        .path();
    for f in ["ssh-privatekey", "known_hosts"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(f))
            .expect(f)
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    eprintln!(
        "ssh_keys_from_secrets took {:.0}s",
        started.elapsed().as_secs_f64()
    );
    drop(ctl);
}
