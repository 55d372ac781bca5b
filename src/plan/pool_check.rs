//! What the controller checks in a HostPool before it uses it, and in a VirtualMachine against
//! its pool: the libvirt URI templates ([`crate::plan::uri_policy`]) and the host directories
//! ([`crate::plan::host_paths`]). The CRD's CEL rules refuse most of this already; these checks
//! hold for objects the API server took before those rules existed, on servers without them,
//! and for what depends on the controller's own flags.

use crate::api::host_pool::{DEFAULT_CONSOLE_DIR, HostPoolSpec};
use crate::api::virtual_machine::VirtualMachineSpec;
use crate::plan::host_paths::{check_directory, check_file_within, overlap, segments};
use crate::plan::uri_policy::{self, Limits, PoolTerms, Problem, Role};
use crate::plan::{import_policy, naming};

/// The pool's settings that URI checks depend on.
pub fn terms(spec: &HostPoolSpec) -> PoolTerms {
    PoolTerms {
        skip_host_verification: spec.libvirt.insecure_skip_host_verification == Some(true),
        credentials_secret: spec.libvirt.credentials_secret.is_some(),
    }
}

const PATH: &str = "PathNotAllowed";
const IMAGE: &str = "ImageNotAllowed";
const IMPORTS: &str = "ImportSettingsInvalid";

/// Every problem with `spec` as the controller would use it under `limits`.
pub fn check_pool(spec: &HostPoolSpec, limits: &Limits) -> Result<(), Vec<Problem>> {
    let mut out = Vec::new();
    let t = terms(spec);
    let prefixed = |field: &'static str, problems: Vec<Problem>| {
        problems.into_iter().map(move |p| Problem {
            reason: p.reason,
            message: format!("{field}: {}", p.message),
        })
    };
    if let Err(p) = uri_policy::check(&spec.libvirt.uri_template, Role::Controller, limits, t) {
        out.extend(prefixed("spec.libvirt.uriTemplate", p));
    }
    if let Some(peer) = spec
        .migration
        .as_ref()
        .and_then(|m| m.peer_uri_template.as_deref())
        && let Err(p) = uri_policy::check(peer, Role::Peer, limits, t)
    {
        out.extend(prefixed("spec.migration.peerUriTemplate", p));
    }
    let console = spec
        .console
        .as_ref()
        .map_or(DEFAULT_CONSOLE_DIR, |c| c.log_directory.as_str());
    let boot: &[String] = spec.boot.as_ref().map_or(&[], |b| &b.directories);
    let mut dirs: Vec<(String, &str)> = Vec::new();
    if let Some(p) = spec.storage.path.as_deref() {
        dirs.push(("spec.storage.path".into(), p));
    }
    dirs.push(("spec.console.logDirectory".into(), console));
    for (i, d) in boot.iter().enumerate() {
        dirs.push((format!("spec.boot.directories[{i}]"), d));
    }
    let mut well_formed = Vec::new();
    for (field, dir) in &dirs {
        match check_directory(field, dir) {
            Ok(()) => well_formed.push((field.as_str(), *dir)),
            Err(message) => out.push(Problem {
                reason: PATH,
                message,
            }),
        }
    }
    // Disks, console logs and boot files each in their own place: otherwise a VM could boot
    // another VM's disk or console log, or attach a console log as a volume.
    for (i, (fa, a)) in well_formed.iter().enumerate() {
        for (fb, b) in &well_formed[i + 1..] {
            let both_boot = fa.starts_with("spec.boot") && fb.starts_with("spec.boot");
            let (Ok(sa), Ok(sb)) = (segments(a), segments(b)) else {
                continue;
            };
            if !both_boot && overlap(&sa, &sb) {
                out.push(Problem {
                    reason: PATH,
                    message: format!(
                        "{fa} {a} and {fb} {b} overlap: disks, console logs and boot files each need a directory of their own"
                    ),
                });
            }
        }
    }
    // Golden images are the admin's; a name ferry gives its own volumes would make another
    // VM's disk (or an imported image) every VM's backing file.
    for (i, image) in spec.storage.images.iter().enumerate() {
        if let Some(kind) = naming::made_by_ferry(&image.name) {
            out.push(Problem {
                reason: IMAGE,
                message: format!(
                    "spec.storage.images[{i}] {:?} is {kind}, a volume ferry made, not a golden image",
                    image.name
                ),
            });
        }
    }
    if let Err(message) = import_policy::Policy::of("", spec, &[], Vec::new()) {
        out.push(Problem {
            reason: IMPORTS,
            message,
        });
    }
    if out.is_empty() { Ok(()) } else { Err(out) }
}

/// Whether `vm`'s kernel and initrd lie in the directories HostPool `pool_name` allows for boot
/// files; the message says what to change.
pub fn check_boot(
    vm: &VirtualMachineSpec,
    pool_name: &str,
    pool: &HostPoolSpec,
) -> Result<(), String> {
    let Some(b) = &vm.boot else {
        return Ok(());
    };
    let dirs: &[String] = pool.boot.as_ref().map_or(&[], |b| &b.directories);
    let what = format!("HostPool {pool_name} spec.boot.directories");
    let mut problems = Vec::new();
    if let Err(e) = check_file_within("spec.boot.kernel", &b.kernel, dirs, &what) {
        problems.push(e);
    }
    if let Some(initrd) = &b.initrd
        && let Err(e) = check_file_within("spec.boot.initrd", initrd, dirs, &what)
    {
        problems.push(e);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// A pool with its three directories apart, changed by `extra` (a `null` removes a field).
    fn spec(extra: Value) -> HostPoolSpec {
        let mut s = json!({
            "nodeSelector": {"matchLabels": {"a": "b"}},
            "libvirt": {"uriTemplate": "qemu+tls://{address}/system"},
            "storage": {"pool": "ferry", "path": "/srv/ferry/pool"},
            "console": {"logDirectory": "/srv/ferry/console"},
            "boot": {"directories": ["/srv/ferry/boot"]}
        });
        if let (Some(o), Some(e)) = (s.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if v.is_null() {
                    o.remove(k);
                } else {
                    o.insert(k.clone(), v.clone());
                }
            }
        }
        serde_json::from_value(s).expect("spec")
    }

    #[test]
    fn pools() {
        let lab = Limits {
            socket_dirs: vec!["/tmp/ferry-lab-1".into()],
            ..Limits::default()
        };
        let tests = Limits {
            allow_test_driver: true,
            ..Limits::default()
        };
        let default = Limits::default();
        // (name, changes to the pool, the controller's limits, refused with (reason, message))
        type Case<'a> = (&'a str, Value, &'a Limits, Option<(&'a str, &'a str)>);
        let cases: Vec<Case> = vec![
            ("three directories apart", json!({}), &lab, None),
            (
                "no storage path: nothing to compare it with",
                json!({"storage": {"pool": "ferry"}}),
                &lab,
                None,
            ),
            ("no boot directories", json!({"boot": null}), &lab, None),
            (
                "two boot directories may nest",
                json!({"boot": {"directories": ["/srv/ferry/boot", "/srv/ferry/boot/debian"]}}),
                &lab,
                None,
            ),
            (
                "the lab's unix sockets",
                json!({"libvirt": {"uriTemplate": "qemu+unix:///system?socket=/tmp/ferry-lab-1/{label:ferry.dev/e2e-lab-host}/run/libvirt/libvirt-sock"}}),
                &lab,
                None,
            ),
            (
                "the same sockets without the flag that allows them",
                json!({"libvirt": {"uriTemplate": "qemu+unix:///system?socket=/tmp/ferry-lab-1/h1/libvirt-sock"}}),
                &default,
                Some((
                    "PathNotAllowed",
                    "spec.libvirt.uriTemplate: socket=/tmp/ferry-lab-1/h1/libvirt-sock is outside the controller's allowed socket directories (/run/libvirt, /var/run/libvirt)",
                )),
            ),
            (
                "ext",
                json!({"libvirt": {"uriTemplate": "qemu+ext:///system?command=/path/to/script"}}),
                &lab,
                Some((
                    "TransportNotAllowed",
                    "spec.libvirt.uriTemplate: transport ext runs a local program",
                )),
            ),
            (
                "the test driver needs the flag",
                json!({"libvirt": {"uriTemplate": "test:///{annotation:f}"}}),
                &lab,
                Some(("TransportNotAllowed", "--allow-test-driver")),
            ),
            (
                "the test driver with the flag",
                json!({"libvirt": {"uriTemplate": "test:///default"}}),
                &tests,
                None,
            ),
            (
                "no_verify without consent",
                json!({"libvirt": {"uriTemplate": "qemu+tls://{address}/system?no_verify=1"}}),
                &lab,
                Some(("URIParameterNotAllowed", "insecureSkipHostVerification")),
            ),
            (
                "no_verify with consent",
                json!({"libvirt": {"uriTemplate": "qemu+tls://{address}/system?no_verify=1", "insecureSkipHostVerification": true}}),
                &lab,
                None,
            ),
            (
                "pkipath and a credentials Secret",
                json!({"libvirt": {"uriTemplate": "qemu+tls://{address}/system?pkipath=/etc/ferry/pki/a", "credentialsSecret": "tls"}}),
                &lab,
                Some(("URIParameterNotAllowed", "give them in one place")),
            ),
            (
                "a peer template for a local socket",
                json!({"migration": {"peerUriTemplate": "qemu+unix:///system"}}),
                &lab,
                Some((
                    "TransportNotAllowed",
                    "spec.migration.peerUriTemplate: transport \"unix\"",
                )),
            ),
            (
                "storage in /etc",
                json!({"storage": {"pool": "ferry", "path": "/etc"}}),
                &lab,
                Some((
                    "PathNotAllowed",
                    "spec.storage.path /etc is the system directory /etc",
                )),
            ),
            (
                "console logs under /etc",
                json!({"console": {"logDirectory": "/etc/cron.d"}}),
                &lab,
                Some((
                    "PathNotAllowed",
                    "spec.console.logDirectory /etc/cron.d lies inside the system directory /etc",
                )),
            ),
            (
                "boot files from /",
                json!({"boot": {"directories": ["/"]}}),
                &lab,
                Some((
                    "PathNotAllowed",
                    "spec.boot.directories[0]: \"/\" is the whole file system",
                )),
            ),
            (
                "boot files among the disks",
                json!({"boot": {"directories": ["/srv/ferry/pool/kernels"]}}),
                &lab,
                Some((
                    "PathNotAllowed",
                    "spec.storage.path /srv/ferry/pool and spec.boot.directories[0] /srv/ferry/pool/kernels overlap",
                )),
            ),
            (
                "boot files among the default console logs",
                json!({"console": null, "boot": {"directories": ["/var/log/libvirt"]}}),
                &lab,
                Some((
                    "PathNotAllowed",
                    "spec.console.logDirectory /var/log/libvirt/qemu and spec.boot.directories[0] /var/log/libvirt overlap",
                )),
            ),
            (
                "another VM's disk as a golden image",
                json!({"storage": {"pool": "ferry", "images": [{"name": "tiny.qcow2"}, {"name": "team_db_root_0123abcd.qcow2"}]}}),
                &lab,
                Some((
                    "ImageNotAllowed",
                    "spec.storage.images[1] \"team_db_root_0123abcd.qcow2\" is a VM's own disk",
                )),
            ),
            (
                "an allowed network that is none",
                json!({"imports": {"allowedNetworks": ["localhost"]}}),
                &lab,
                Some((
                    "ImportSettingsInvalid",
                    "spec.imports.allowedNetworks: \"localhost\" is not a network",
                )),
            ),
            (
                "import settings that are fine",
                json!({"imports": {"allowedNetworks": ["127.0.0.1/32", "fd00::/8"], "maxSize": "10Gi"}}),
                &lab,
                None,
            ),
            (
                "console logs among the disks",
                json!({"console": {"logDirectory": "/srv/ferry/pool"}}),
                &lab,
                Some((
                    "PathNotAllowed",
                    "spec.storage.path /srv/ferry/pool and spec.console.logDirectory /srv/ferry/pool overlap",
                )),
            ),
        ];
        for (name, extra, limits, want) in cases {
            match (want, check_pool(&spec(extra), limits)) {
                (None, Ok(())) => {}
                (Some((reason, needle)), Err(problems)) => {
                    assert_eq!(problems[0].reason, reason, "{name}: {problems:?}");
                    assert!(
                        problems.iter().any(|p| p.message.contains(needle)),
                        "{name}: {problems:?} lacks {needle:?}"
                    );
                }
                (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }

    fn vm(boot: Value) -> VirtualMachineSpec {
        serde_json::from_value(json!({
            "hostPool": "lab", "cpu": {"cores": 1}, "memory": "128Mi", "boot": boot
        }))
        .expect("VM spec")
    }

    #[test]
    fn boot_files() {
        let pool = spec(json!({}));
        let bare = spec(json!({"boot": null}));
        let cases: Vec<(&str, Value, &HostPoolSpec, Option<&str>)> = vec![
            ("no direct kernel boot", Value::Null, &bare, None),
            (
                "kernel and initrd inside",
                json!({"kernel": "/srv/ferry/boot/vmlinuz", "initrd": "/srv/ferry/boot/initrd.img"}),
                &pool,
                None,
            ),
            (
                "a kernel without initrd",
                json!({"kernel": "/srv/ferry/boot/x/vmlinuz"}),
                &pool,
                None,
            ),
            (
                "the host's password hashes as initrd",
                json!({"kernel": "/srv/ferry/boot/vmlinuz", "initrd": "/etc/shadow"}),
                &pool,
                Some(
                    "spec.boot.initrd /etc/shadow is outside HostPool lab spec.boot.directories (/srv/ferry/boot)",
                ),
            ),
            (
                "another VM's disk as initrd",
                json!({"kernel": "/srv/ferry/boot/vmlinuz", "initrd": "/srv/ferry/pool/team_db_root.qcow2"}),
                &pool,
                Some("spec.boot.initrd /srv/ferry/pool/team_db_root.qcow2 is outside"),
            ),
            (
                "climbing out with ..",
                json!({"kernel": "/srv/ferry/boot/../../../etc/shadow"}),
                &pool,
                Some(
                    "spec.boot.kernel: \"/srv/ferry/boot/../../../etc/shadow\" has a . or .. segment",
                ),
            ),
            (
                "a pool that allows no direct kernel boot",
                json!({"kernel": "/srv/ferry/boot/vmlinuz"}),
                &bare,
                Some("HostPool lab spec.boot.directories is empty"),
            ),
            (
                "both files wrong: both named",
                json!({"kernel": "/boot/vmlinuz", "initrd": "/boot/initrd.img"}),
                &pool,
                Some(
                    "spec.boot.kernel /boot/vmlinuz is outside HostPool lab spec.boot.directories (/srv/ferry/boot): use a file in one of them, or have a platform admin add its directory; spec.boot.initrd /boot/initrd.img",
                ),
            ),
        ];
        for (name, boot, pool, want) in cases {
            let v = if boot.is_null() {
                serde_json::from_value(
                    json!({"hostPool": "lab", "cpu": {"cores": 1}, "memory": "128Mi"}),
                )
                .expect("VM spec")
            } else {
                vm(boot)
            };
            match (want, check_boot(&v, "lab", pool)) {
                (None, Ok(())) => {}
                (Some(needle), Err(e)) => assert!(e.contains(needle), "{name}: {e}"),
                (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }
}
