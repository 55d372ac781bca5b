//! A real Debian guest: cloud-init, the QEMU guest agent, a clean power-off (opt-in:
//! e2e/debian.sh).

use crate::support::cluster::{self, Cluster};
use crate::support::hosts::{console, domains};
use crate::support::lab;
use crate::support::objects::{BOOT, LABEL, pool_manifest, ready_reason, wait_vm};
use ferry::api::{VirtualMachine, VmPhase};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

const DEBIAN_BUILD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/lab/debian/build.sh");

const DEBIAN_IP: &str = "10.99.0.5";

const DEBIAN_MAC: &str = "52:54:00:fe:99:05";

/// Under TCG on a busy 2-core machine the first boot takes 1–3 minutes; leave room.
const DEBIAN_BOOT: Duration = Duration::from_secs(900);

/// The directory holding the Debian golden image, kernel and initrd: `FERRY_DEBIAN_IMAGE_DIR`
/// (e2e/debian.sh builds it first), else `e2e/lab/debian/build.sh` builds or finds it now.
fn debian_image_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_DEBIAN_IMAGE_DIR") {
        return dir.into();
    }
    let out = lab::run_cmd(DEBIAN_BUILD, &[], Duration::from_secs(3600))
        .into_result("e2e/lab/debian/build.sh")
        .expect("the Debian golden image");
    out.trim().into()
}

/// Hard-link (same filesystem) or copy `from` to `to`, read-only.
fn place_read_only(from: &std::path::Path, to: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    }
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o444)).expect("chmod 0444");
}

/// Wait (async, polling every 250 ms) for a console line that satisfies `f`; returns the line
/// and when it was first seen. On timeout the panic shows the console's last lines.
async fn console_line_since(
    path: &std::path::Path,
    offset: usize,
    what: &str,
    timeout: Duration,
    f: impl Fn(&str) -> bool,
) -> (String, std::time::Instant) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let text = lab::console_log(path);
        let from = text.get(offset..).unwrap_or_default();
        if let Some(line) = from.lines().find(|l| f(l)) {
            return (
                line.trim_end_matches('\r').to_string(),
                std::time::Instant::now(),
            );
        }
        if std::time::Instant::now() > deadline {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "no console line {what} in {} after {timeout:?}; last lines:\n{}",
                path.display(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The guest's own "Up N seconds" from cloud-init's final message.
fn cloud_init_uptime(line: &str) -> Option<f64> {
    let up = line.split(" Up ").nth(1)?;
    up.split_whitespace().next()?.parse().ok()
}

/// `ssh` from inside the lab host's network namespace (where the guest bridge is), with the
/// test's key and the guest's host key as the only known one. Bounded.
fn ssh_guest(lab: &lab::Lab, dir: &std::path::Path, user: &str, cmd: &str) -> lab::CmdOutput {
    let key = dir.join("id_ed25519");
    let known = dir.join("known_hosts");
    let key = key.to_string_lossy();
    let known = format!("UserKnownHostsFile={}", known.to_string_lossy());
    let target = format!("{user}@{DEBIAN_IP}");
    lab::run_cmd(
        "ip",
        &[
            "netns",
            "exec",
            &lab.hosts[0].netns,
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            &key,
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &known,
            "-o",
            "ConnectTimeout=10",
            &target,
            cmd,
        ],
        Duration::from_secs(60),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow (a real Debian guest under TCG): run e2e/debian.sh"]
async fn debian_guest_runs_cloud_init() {
    if std::env::var_os("FERRY_E2E_DEBIAN").is_none() {
        eprintln!(
            "skipping: set FERRY_E2E_DEBIAN=1 (e2e/debian.sh does) to boot the Debian cloud-init guest"
        );
        return;
    }
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/debian.sh does both)"
    );
    let image = debian_image_dir();
    let lab = lab::Lab::up(1).expect("lab host");

    // The golden image into the lab's pool; kernel and initrd next to the tiny guest's.
    let golden = "debian-12.qcow2";
    place_read_only(&image.join("debian.qcow2"), &lab.pool_dir.join(golden));
    let boot = lab.shared_dir.join("boot");
    let (kernel, initrd) = (boot.join("debian-vmlinuz"), boot.join("debian-initrd.img"));
    place_read_only(&image.join("vmlinuz"), &kernel);
    place_read_only(&image.join("initrd.img"), &initrd);
    let cmdline = std::fs::read_to_string(image.join("cmdline")).expect("cmdline");

    // A key pair of this run, and a token the guest must echo back (nothing here is constant).
    let keys = tempfile::tempdir().expect("temp dir");
    lab::run_cmd(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "ferry-e2e",
            "-f",
            &keys.path().join("id_ed25519").to_string_lossy(),
        ],
        Duration::from_secs(30),
    )
    .into_result("ssh-keygen")
    .expect("ssh key");
    let pubkey = std::fs::read_to_string(keys.path().join("id_ed25519.pub"))
        .expect("public key")
        .trim()
        .to_string();
    let token = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );

    let mut c = Cluster::new("ferry-e2e-debian").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let ctl = c.controller("e2e-debian");
    let ns = c.namespace.clone();
    let mut pool = pool_manifest("lab", &lab);
    pool["spec"]["storage"]["images"]
        .as_array_mut()
        .expect("images")
        .push(json!({"name": golden}));
    c.apply::<ferry::api::HostPool>(pool).await;

    let user_data = format!(
        "#cloud-config\n\
         write_files:\n  \
           - path: /var/lib/ferry-e2e/written\n    \
             content: \"written-{token}\\n\"\n\
         runcmd:\n  \
           - [sh, -c, 'echo \"runcmd $(cat /var/lib/ferry-e2e/written) $(hostname)\" > /var/lib/ferry-e2e/runcmd']\n  \
           - [sh, -c, 'echo \"FERRY-E2E-RUNCMD $(cat /var/lib/ferry-e2e/runcmd)\" > /dev/ttyS0']\n"
    );
    let network_data = format!(
        "version: 1\nconfig:\n  - type: physical\n    name: eth0\n    mac_address: \"{DEBIAN_MAC}\"\n    \
         subnets:\n      - type: static\n        address: {DEBIAN_IP}/24\n"
    );
    let vm_name = "deb";
    let hostname = "deb-e2e";
    let manifest = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": vm_name},
        "spec": {
            "hostPool": "lab", "runStrategy": "Always",
            "cpu": {"cores": 1}, "memory": "512Mi",
            "terminationGracePeriodSeconds": 180,
            "disks": [{"name": "root", "image": golden}],
            "networks": [{"name": "eth0", "bridge": "gbr0", "mac": DEBIAN_MAC}],
            "boot": {
                "kernel": kernel.to_string_lossy(),
                "initrd": initrd.to_string_lossy(),
                "cmdline": cmdline.trim()
            },
            "cloudInit": {
                "hostname": hostname,
                "sshAuthorizedKeys": [pubkey],
                "userData": user_data,
                "networkData": network_data
            }
        }
    });
    let created = std::time::Instant::now();
    c.apply::<VirtualMachine>(manifest).await;
    wait_vm(&c, vm_name, "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let running = created.elapsed();
    let log = console(&lab, &ns, vm_name);

    // cloud-init's own final message: it read the NoCloud seed (not the `None` fallback).
    let (finished, finished_at) = console_line_since(
        &log,
        0,
        "\"Cloud-init v. ... finished at\"",
        DEBIAN_BOOT,
        |l| l.contains("Cloud-init v. ") && l.contains(" finished at "),
    )
    .await;
    assert!(
        finished.contains("DataSourceNoCloud"),
        "cloud-init used the seed CD-ROM: {finished}"
    );
    let guest_up = cloud_init_uptime(&finished);
    let text = lab::console_log(&log);
    let marker = format!("FERRY-E2E-RUNCMD runcmd written-{token} {hostname}");
    assert!(
        text.contains(&marker),
        "the runcmd marker ({marker}) on the console"
    );
    assert!(
        !text.contains("Kernel panic") && !text.contains("emergency mode"),
        "a clean boot"
    );

    // SSH in with the generated key, checking the host key cloud-init printed on the console.
    let host_key = text
        .lines()
        .skip_while(|l| !l.contains("-----BEGIN SSH HOST KEY KEYS-----"))
        .find(|l| l.trim_start().starts_with("ssh-ed25519 "))
        .map(|l| l.trim().to_string())
        .expect("cloud-init printed the guest's SSH host key");
    std::fs::write(
        keys.path().join("known_hosts"),
        format!("{DEBIAN_IP} {host_key}\n"),
    )
    .expect("known_hosts");
    lab.exec_in_host("h1", &["ip", "addr", "add", "10.99.0.1/24", "dev", "gbr0"])
        .into_result("address on gbr0")
        .expect("the lab host reaches the guest bridge");
    let check =
        "hostname; cat /var/lib/ferry-e2e/runcmd; cat ~/.ssh/authorized_keys; cloud-init status";
    let mut ssh = ssh_guest(&lab, keys.path(), "debian", check);
    let ssh_deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !ssh.success() && std::time::Instant::now() < ssh_deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        ssh = ssh_guest(&lab, keys.path(), "debian", check);
    }
    let ssh_at = created.elapsed();
    let out = ssh
        .into_result("ssh debian@guest")
        .expect("SSH with the key");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines.first().copied(), Some(hostname), "hostname: {out}");
    assert!(
        lines.contains(&format!("runcmd written-{token} {hostname}").as_str()),
        "write_files + runcmd ran as root: {out}"
    );
    assert!(lines.contains(&pubkey.as_str()), "the key installed: {out}");
    assert!(lines.contains(&"status: done"), "cloud-init done: {out}");
    // The key gives root no shell: cloud-init's disable_root sends it to the default user.
    let root = ssh_guest(&lab, keys.path(), "root", "echo root-shell");
    assert!(
        !root.success()
            && !root.stdout.contains("root-shell")
            && root.stdout.contains("Please login as the user \"debian\""),
        "root gets no shell with the key: {root:?}"
    );

    // The guest agent's report in status: the IP column's source, and the guest OS.
    let vm = wait_vm(
        &c,
        vm_name,
        "guest agent IP and OS",
        Duration::from_secs(300),
        |vm| {
            vm.status.as_ref().is_some_and(|s| {
                s.guest_os.is_some()
                    && s.interfaces.first().and_then(|i| i.ip_address.as_deref()) == Some(DEBIAN_IP)
            })
        },
    )
    .await;
    let agent_at = created.elapsed();
    let st = vm.status.clone().expect("status");
    let os = st.guest_os.clone().unwrap_or_default();
    assert!(os.contains("Debian GNU/Linux 12"), "guest OS: {os}");
    assert_eq!(st.interfaces[0].guest_name.as_deref(), Some("eth0"));
    assert_eq!(st.interfaces[0].mac, DEBIAN_MAC);

    // Graceful stop: the guest shuts itself down (systemd), libvirt says why it is off.
    let before_stop = lab::console_len(&log);
    let stop = std::time::Instant::now();
    c.vms()
        .patch(
            vm_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runStrategy": "Halted"}})),
        )
        .await
        .expect("stop");
    wait_vm(&c, vm_name, "Stopped", Duration::from_secs(240), |vm| {
        vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Stopped)
    })
    .await;
    let stopped = stop.elapsed();
    let dom = format!("{ns}_{vm_name}");
    let state = lab
        .virsh_ok("h1", &["domstate", "--reason", &dom])
        .expect("domstate");
    assert!(
        state.contains("shut off (shutdown)"),
        "the guest powered itself off, not destroyed: {state}"
    );
    assert!(
        stopped < Duration::from_secs(180),
        "within the grace period: {stopped:?}"
    );
    let shutdown = lab::console_log(&log)
        .get(before_stop..)
        .unwrap_or_default()
        .to_string();
    for needle in [
        "systemd-shutdown[1]: All filesystems unmounted.",
        "reboot: Power down",
    ] {
        assert!(
            shutdown.contains(needle),
            "clean power-off ({needle}) on the console:\n{shutdown}"
        );
    }

    eprintln!("DEBIAN-CLOUD-INIT {finished}");
    let power_off: Vec<&str> = shutdown
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.contains("systemd-shutdown") || l.contains("reboot: "))
        .collect();
    eprintln!("DEBIAN-POWER-OFF\n{}", power_off.join("\n"));
    eprintln!(
        "DEBIAN-BENCH running {:.1}s cloud-init-finished {:.1}s guest-up {} ssh {:.1}s agent-ip {:.1}s stop {:.1}s",
        running.as_secs_f64(),
        (finished_at - created).as_secs_f64(),
        guest_up.map_or("?".into(), |u| format!("{u:.1}s")),
        ssh_at.as_secs_f64(),
        agent_at.as_secs_f64(),
        stopped.as_secs_f64()
    );

    c.vms()
        .delete(vm_name, &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_vm_gone(vm_name, Duration::from_secs(90)).await;
    assert!(domains(&lab).is_empty(), "domain undefined");
    drop(ctl);
}
