//! libvirt client credentials from a Secret: the TLS client certificate, key and CA are written
//! to a private directory that libvirt is given as the connection's `pkipath`.

use crate::hypervisor::HypervisorError;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files libvirt expects in a `pkipath` directory.
pub const PKI_FILES: [&str; 3] = ["clientcert.pem", "clientkey.pem", "cacert.pem"];

/// Operation name in errors about credentials (the HostPool shows such hosts as Misconfigured).
pub const OPERATION: &str = "reading libvirt credentials";

fn failed(message: String) -> HypervisorError {
    HypervisorError::OperationFailed {
        operation: OPERATION,
        code: 0,
        message,
    }
}

/// `uri` with `pkipath=dir` added to its query.
pub fn with_pkipath(uri: &str, dir: &Path) -> String {
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}pkipath={}", dir.display())
}

/// Write the PKI files from `data` into `dir` (created with mode 0700, files 0600), or say which
/// key is missing.
pub fn write_pki(dir: &Path, data: &BTreeMap<String, Vec<u8>>, secret: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
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
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for name in PKI_FILES {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(data.get(name).map(Vec::as_slice).unwrap_or_default())
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Read Secret `namespace/name`, write its files under `root` (one directory per Secret version,
/// so a rotated Secret gives a new connection) and return `uri` with the `pkipath`.
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
                "Secret {namespace}/{name} (spec.libvirt.credentialsSecret) does not exist: create it with clientcert.pem, clientkey.pem and cacert.pem"
            ))
        })?;
    let version = secret.metadata.resource_version.clone().unwrap_or_default();
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let dir: PathBuf = root.join(format!("{namespace}_{name}_{version}"));
    write_pki(&dir, &data, &format!("{namespace}/{name}")).map_err(failed)?;
    Ok(with_pkipath(uri, &dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
        let mut data: BTreeMap<String, Vec<u8>> = PKI_FILES
            .iter()
            .map(|k| (k.to_string(), format!("PEM {k}").into_bytes()))
            .collect();
        write_pki(&dir, &data, "ns/s").expect("written");
        for k in PKI_FILES {
            let p = dir.join(k);
            assert_eq!(
                std::fs::read(&p).expect("file"),
                format!("PEM {k}").into_bytes()
            );
            let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{k}");
        }
        data.remove("clientkey.pem");
        let e = write_pki(&dir, &data, "ns/s").unwrap_err();
        assert!(e.contains("lacks clientkey.pem"), "{e}");
    }
}
