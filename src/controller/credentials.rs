//! libvirt client credentials from a Secret, written to a private directory (0700, files 0600)
//! that the connection URI points libvirt at:
//!
//! - TLS (`qemu+tls`): keys `clientcert.pem`, `clientkey.pem` and `cacert.pem` (libvirt's own
//!   file names), passed as `pkipath=<dir>`.
//! - SSH (a Secret of type `kubernetes.io/ssh-auth`, or any Secret with `ssh-privatekey`): the key
//!   is passed as `keyfile=<dir>/ssh-privatekey`; an optional `known_hosts` key as
//!   `known_hosts=<dir>/known_hosts`. libvirt honours `known_hosts` only with its built-in SSH
//!   clients (`qemu+libssh://`, `qemu+libssh2://`); `qemu+ssh://` runs the `ssh` program, which
//!   takes `keyfile` (as `-i`) but reads its own known_hosts files, so a Secret with `known_hosts`
//!   and a `qemu+ssh` URI is refused rather than silently not checking the host key. With the
//!   built-in clients ferry also sets `sshauth=privkey` (unless the URI names methods), so no
//!   agent or password prompt is tried.

use crate::hypervisor::HypervisorError;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files libvirt expects in a `pkipath` directory.
pub const PKI_FILES: [&str; 3] = ["clientcert.pem", "clientkey.pem", "cacert.pem"];
/// Key of the SSH private key in a `kubernetes.io/ssh-auth` Secret.
pub const SSH_KEY: &str = "ssh-privatekey";
/// Optional key with OpenSSH known_hosts lines for the hosts.
pub const KNOWN_HOSTS: &str = "known_hosts";
/// The Secret type that holds an SSH key.
pub const SSH_AUTH_TYPE: &str = "kubernetes.io/ssh-auth";

/// Operation name in errors about credentials (the HostPool shows such hosts as Misconfigured).
pub const OPERATION: &str = "reading libvirt credentials";

fn failed(message: String) -> HypervisorError {
    HypervisorError::OperationFailed {
        operation: OPERATION,
        code: 0,
        message,
    }
}

/// Files to write from a Secret, and the URI query parameters that point libvirt at them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub files: Vec<(&'static str, Vec<u8>)>,
    pub params: Vec<(&'static str, Value)>,
}

/// The value of a URI parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// The credentials directory.
    Dir,
    /// A file in the credentials directory.
    File(&'static str),
    /// A fixed value.
    Literal(&'static str),
}

impl Plan {
    /// `uri` with this plan's parameters, for files written to `dir`.
    pub fn uri(&self, uri: &str, dir: &Path) -> String {
        let params: Vec<(&str, String)> = self
            .params
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::Dir => dir.display().to_string(),
                    Value::File(f) => dir.join(f).display().to_string(),
                    Value::Literal(l) => l.to_string(),
                };
                (*k, v)
            })
            .collect();
        with_params(uri, &params)
    }
}

/// The transport of a libvirt URI (`qemu+tls://` → `tls`); `None` without `+`.
fn transport(uri: &str) -> Option<&str> {
    let scheme = uri.split_once("://")?.0;
    scheme.split_once('+').map(|(_, t)| t)
}

/// Whether the URI's query already sets `key`.
fn has_param(uri: &str, key: &str) -> bool {
    uri.split_once('?').is_some_and(|(_, q)| {
        q.split('&')
            .any(|kv| kv.split_once('=').map_or(kv, |(k, _)| k) == key)
    })
}

/// Decide what to write for Secret `secret` (of type `type_`) and how to point `uri` at it, or
/// say what is wrong with the pair.
pub fn plan(
    uri: &str,
    secret: &str,
    type_: Option<&str>,
    data: &BTreeMap<String, Vec<u8>>,
) -> Result<Plan, String> {
    let transport = transport(uri).unwrap_or("");
    let ssh = type_ == Some(SSH_AUTH_TYPE) || data.contains_key(SSH_KEY);
    if ssh {
        if !matches!(transport, "ssh" | "libssh" | "libssh2") {
            return Err(format!(
                "Secret {secret} holds an SSH key but the URI uses transport {transport:?}: use qemu+libssh://, qemu+libssh2:// or qemu+ssh:// in uriTemplate, or a Secret with clientcert.pem, clientkey.pem and cacert.pem for qemu+tls"
            ));
        }
        let key = data
            .get(SSH_KEY)
            .ok_or_else(|| format!("Secret {secret} lacks {SSH_KEY}"))?;
        let mut files = vec![(SSH_KEY, key.clone())];
        let mut params = vec![("keyfile", Value::File(SSH_KEY))];
        if let Some(known) = data.get(KNOWN_HOSTS) {
            if transport == "ssh" {
                return Err(format!(
                    "Secret {secret} has {KNOWN_HOSTS}, which libvirt's qemu+ssh transport ignores (it runs the ssh program with its own known_hosts files): use qemu+libssh:// or qemu+libssh2:// in uriTemplate, or drop {KNOWN_HOSTS} from the Secret"
                ));
            }
            files.push((KNOWN_HOSTS, known.clone()));
            params.push(("known_hosts", Value::File(KNOWN_HOSTS)));
        }
        if transport != "ssh" && !has_param(uri, "sshauth") {
            params.push(("sshauth", Value::Literal("privkey")));
        }
        return Ok(Plan { files, params });
    }
    if transport != "tls" && !transport.is_empty() {
        return Err(format!(
            "Secret {secret} holds no {SSH_KEY}, so TLS files are expected, but the URI uses transport {transport:?}: use qemu+tls:// in uriTemplate, or put an SSH key in the Secret (type {SSH_AUTH_TYPE}, key {SSH_KEY})"
        ));
    }
    let missing: Vec<&str> = PKI_FILES
        .iter()
        .copied()
        .filter(|k| !data.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "Secret {secret} lacks {}: it needs clientcert.pem, clientkey.pem and cacert.pem",
            missing.join(", ")
        ));
    }
    Ok(Plan {
        files: PKI_FILES
            .iter()
            .map(|k| (*k, data.get(*k).cloned().unwrap_or_default()))
            .collect(),
        params: vec![("pkipath", Value::Dir)],
    })
}

/// `uri` with `key=value` pairs added to its query.
pub fn with_params(uri: &str, params: &[(&str, String)]) -> String {
    let mut out = uri.to_string();
    for (k, v) in params {
        let sep = if out.contains('?') { '&' } else { '?' };
        out = format!("{out}{sep}{k}={v}");
    }
    out
}

/// `uri` with `pkipath=dir` added to its query.
pub fn with_pkipath(uri: &str, dir: &Path) -> String {
    with_params(uri, &[("pkipath", dir.display().to_string())])
}

/// Write `files` into `dir` (created with mode 0700, files 0600, each replaced atomically). A file
/// that already holds the same bytes is left alone, so connecting again rewrites nothing, and
/// two writers at once never share a temporary file.
pub fn write_files(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::sync::atomic::{AtomicU64, Ordering};
    static WRITES: AtomicU64 = AtomicU64::new(0);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for (name, bytes) in files {
        let path = dir.join(name);
        if std::fs::read(&path).is_ok_and(|old| old == *bytes) {
            continue;
        }
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Write the PKI files from `data` into `dir`, or say which key is missing.
pub fn write_pki(dir: &Path, data: &BTreeMap<String, Vec<u8>>, secret: &str) -> Result<(), String> {
    let p = plan("qemu+tls://h/system", secret, None, data)?;
    write_files(dir, &p.files)
}

/// Read Secret `namespace/name`, write its files under `root` (one directory per Secret version,
/// so a rotated Secret gives a new connection) and return `uri` pointing libvirt at them.
pub async fn apply(
    client: &Client,
    root: &Path,
    namespace: &str,
    name: &str,
    uri: &str,
) -> Result<String, HypervisorError> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| failed(format!("cannot read Secret {namespace}/{name}: {e}")))?
        .ok_or_else(|| {
            failed(format!(
                "Secret {namespace}/{name} (spec.libvirt.credentialsSecret) does not exist: create it with clientcert.pem, clientkey.pem and cacert.pem for qemu+tls, or {SSH_KEY} (type {SSH_AUTH_TYPE}) for SSH"
            ))
        })?;
    let version = secret.metadata.resource_version.clone().unwrap_or_default();
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let p = plan(
        uri,
        &format!("{namespace}/{name}"),
        secret.type_.as_deref(),
        &data,
    )
    .map_err(failed)?;
    let dir: PathBuf = root.join(format!("{namespace}_{name}_{version}"));
    write_files(&dir, &p.files).map_err(failed)?;
    Ok(p.uri(uri, &dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn data(keys: &[&str]) -> BTreeMap<String, Vec<u8>> {
        keys.iter()
            .map(|k| (k.to_string(), format!("DATA {k}").into_bytes()))
            .collect()
    }

    #[test]
    fn pkipath_joins_the_query() {
        let d = Path::new("/run/ferry/pki/ns_s_1");
        assert_eq!(
            with_pkipath("qemu+tls://10.0.0.1/system", d),
            "qemu+tls://10.0.0.1/system?pkipath=/run/ferry/pki/ns_s_1"
        );
        assert_eq!(
            with_pkipath("qemu+tls://h/system?no_verify=0", d),
            "qemu+tls://h/system?no_verify=0&pkipath=/run/ferry/pki/ns_s_1"
        );
    }

    #[test]
    fn writes_private_files_or_names_what_is_missing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("pki");
        let mut data = data(&PKI_FILES);
        write_pki(&dir, &data, "ns/s").expect("written");
        for k in PKI_FILES {
            let p = dir.join(k);
            assert_eq!(
                std::fs::read(&p).expect("file"),
                format!("DATA {k}").into_bytes()
            );
            let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{k}");
        }
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        data.remove("clientkey.pem");
        let e = write_pki(&dir, &data, "ns/s").unwrap_err();
        assert!(e.contains("lacks clientkey.pem"), "{e}");
    }

    #[test]
    fn ssh_keys_become_keyfile_and_known_hosts() {
        let ssh = Some(SSH_AUTH_TYPE);
        let key_only = data(&[SSH_KEY]);
        let with_known = data(&[SSH_KEY, KNOWN_HOSTS]);
        let params = |uri: &str, t: Option<&str>, d: &BTreeMap<String, Vec<u8>>| {
            plan(uri, "ns/s", t, d).map(|p| p.params)
        };
        // Built-in SSH clients: key, known_hosts, key authentication only.
        assert_eq!(
            params("qemu+libssh://root@h/system", ssh, &with_known),
            Ok(vec![
                ("keyfile", Value::File(SSH_KEY)),
                ("known_hosts", Value::File(KNOWN_HOSTS)),
                ("sshauth", Value::Literal("privkey"))
            ])
        );
        assert_eq!(
            params(
                "qemu+libssh2://root@h/system?sshauth=agent,privkey",
                ssh,
                &key_only
            ),
            Ok(vec![("keyfile", Value::File(SSH_KEY))])
        );
        // The ssh program takes the key; it would ignore known_hosts, so that is refused.
        assert_eq!(
            params("qemu+ssh://root@h/system", ssh, &key_only),
            Ok(vec![("keyfile", Value::File(SSH_KEY))])
        );
        let e = params("qemu+ssh://root@h/system", ssh, &with_known).unwrap_err();
        assert!(e.contains("qemu+libssh://"), "{e}");
        // A key found by name also counts (an Opaque Secret).
        assert!(params("qemu+libssh://h/system", None, &key_only).is_ok());
        // Transport and Secret kind must match.
        let e = params("qemu+tls://h/system", ssh, &key_only).unwrap_err();
        assert!(e.contains("holds an SSH key"), "{e}");
        let e = params("qemu+ssh://h/system", Some("Opaque"), &data(&PKI_FILES)).unwrap_err();
        assert!(e.contains("qemu+tls://"), "{e}");
        let e = params("qemu+libssh://h/system", ssh, &data(&[KNOWN_HOSTS])).unwrap_err();
        assert!(e.contains("lacks ssh-privatekey"), "{e}");
    }

    #[test]
    fn ssh_files_are_written_private_and_named_in_the_uri() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ns_s_7");
        let p = plan(
            "qemu+libssh://root@h/system",
            "ns/s",
            Some(SSH_AUTH_TYPE),
            &data(&[SSH_KEY, KNOWN_HOSTS]),
        )
        .expect("plan");
        write_files(&dir, &p.files).expect("written");
        for f in [SSH_KEY, KNOWN_HOSTS] {
            let mode = std::fs::metadata(dir.join(f))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let d = dir.display();
        assert_eq!(
            p.uri("qemu+libssh://root@h/system", &dir),
            format!(
                "qemu+libssh://root@h/system?keyfile={d}/ssh-privatekey&known_hosts={d}/known_hosts&sshauth=privkey"
            )
        );
        let tls = plan("qemu+tls://h/system", "ns/s", None, &data(&PKI_FILES)).expect("plan");
        assert_eq!(
            tls.uri("qemu+tls://h/system", &dir),
            format!("qemu+tls://h/system?pkipath={d}")
        );
    }

    #[test]
    fn writing_the_same_files_again_changes_nothing_and_leaves_no_temporary_file() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ns_s_7");
        let files = [
            ("cacert.pem", b"ca".to_vec()),
            ("clientkey.pem", b"key".to_vec()),
        ];
        write_files(&dir, &files).expect("written");
        let inode = std::fs::metadata(dir.join("clientkey.pem"))
            .expect("meta")
            .ino();
        write_files(&dir, &files).expect("written again");
        assert_eq!(
            std::fs::metadata(dir.join("clientkey.pem"))
                .expect("meta")
                .ino(),
            inode,
            "not replaced"
        );
        write_files(&dir, &[("clientkey.pem", b"new".to_vec())]).expect("rotated");
        assert_eq!(
            std::fs::read(dir.join("clientkey.pem")).expect("read"),
            b"new"
        );
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
