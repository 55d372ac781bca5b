//! cloud-init NoCloud seeds: the files cloud-init reads at boot, packed into an ISO 9660 image
//! labelled `cidata` that the VM sees as a read-only CD-ROM.
//!
//! Pure: the controller resolves inline values and Secrets into a [`SeedData`], [`build_seed`]
//! turns it into image bytes and a digest. Nothing here logs the data.

pub mod iso9660;

use serde_yaml::{Mapping, Value};

/// Volume label cloud-init's NoCloud data source looks for.
pub const VOLUME_LABEL: &str = "cidata";

/// Most bytes of user data, meta data and network data together that a seed holds (1 MiB, the
/// size limit of a Kubernetes Secret).
pub const SEED_MAX_BYTES: usize = 1024 * 1024;

/// The resolved content of a seed (values from the spec or from Secrets).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SeedData {
    /// `instance-id` written to meta-data when it does not set one (cloud-init runs its
    /// per-instance modules again when it changes).
    pub instance_id: String,
    /// user-data, verbatim. `None` writes an empty `#cloud-config`.
    pub user_data: Option<Vec<u8>>,
    /// meta-data: a YAML mapping; ferry adds `instance-id`, `local-hostname` and `public-keys`.
    pub meta_data: Option<Vec<u8>>,
    /// network-config (version 1 or 2), verbatim; omitted when `None`.
    pub network_data: Option<Vec<u8>>,
    /// Host name (meta-data `local-hostname`).
    pub hostname: Option<String>,
    /// SSH public keys for the default user (meta-data `public-keys`).
    pub ssh_authorized_keys: Vec<String>,
}

/// Deliberately says nothing about the content, which may come from Secrets.
impl std::fmt::Debug for SeedData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedData")
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

/// A built seed image.
#[derive(Clone, PartialEq, Eq)]
pub struct Seed {
    /// The ISO 9660 image.
    pub image: Vec<u8>,
    /// Hex SHA-256 of the image: equal digests mean equal seeds.
    pub digest: String,
}

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seed")
            .field("bytes", &self.image.len())
            .field("digest", &self.digest)
            .finish()
    }
}

/// Why a seed cannot be built. Messages never quote the data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    /// The files together exceed [`SEED_MAX_BYTES`].
    #[error(
        "cloud-init data is {bytes} bytes, more than a seed holds ({limit} bytes): move large content out of user data (e.g. have it download the files)"
    )]
    TooLarge { bytes: usize, limit: usize },
    /// meta-data is not a YAML mapping.
    #[error("metaData is not a YAML mapping of keys to values: {0}")]
    MetaDataNotMapping(String),
    /// A shortcut and meta-data both set the same key.
    #[error("{shortcut} and the {key:?} key of metaData both set it; keep one")]
    Conflict {
        shortcut: &'static str,
        key: &'static str,
    },
    /// The ISO writer refused the files (cannot happen with the fixed NoCloud names).
    #[error("cannot build the seed image: {0}")]
    Image(#[from] iso9660::IsoError),
}

/// Build the NoCloud seed: `meta-data` and `user-data` always, `network-config` when given.
pub fn build_seed(data: &SeedData) -> Result<Seed, SeedError> {
    let meta = meta_data(data)?;
    let user = data
        .user_data
        .clone()
        .unwrap_or_else(|| b"#cloud-config\n{}\n".to_vec());
    let total = meta.len() + user.len() + data.network_data.as_ref().map_or(0, Vec::len);
    if total > SEED_MAX_BYTES {
        return Err(SeedError::TooLarge {
            bytes: total,
            limit: SEED_MAX_BYTES,
        });
    }
    let mut files = vec![
        iso9660::IsoFile {
            name: "meta-data",
            data: &meta,
        },
        iso9660::IsoFile {
            name: "user-data",
            data: &user,
        },
    ];
    if let Some(net) = &data.network_data {
        files.push(iso9660::IsoFile {
            name: "network-config",
            data: net,
        });
    }
    let image = iso9660::build(VOLUME_LABEL, &files)?;
    let digest = sha256_hex(&image);
    Ok(Seed { image, digest })
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// meta-data: the user's mapping (if any) with `instance-id`, and the shortcuts' keys.
fn meta_data(data: &SeedData) -> Result<Vec<u8>, SeedError> {
    let mut map = match &data.meta_data {
        None => Mapping::new(),
        Some(raw) => match serde_yaml::from_slice::<Value>(raw) {
            Ok(Value::Mapping(m)) => m,
            Ok(Value::Null) => Mapping::new(),
            Ok(_) => {
                return Err(SeedError::MetaDataNotMapping(
                    "it is a scalar or a list".into(),
                ));
            }
            // The parser's message may quote the data: report only where it failed.
            Err(e) => {
                let at = e
                    .location()
                    .map(|l| format!("invalid YAML at line {}", l.line()))
                    .unwrap_or_else(|| "invalid YAML".into());
                return Err(SeedError::MetaDataNotMapping(at));
            }
        },
    };
    let key = |k: &str| Value::String(k.to_string());
    if !map.contains_key(key("instance-id")) {
        map.insert(key("instance-id"), key(&data.instance_id));
    }
    if let Some(h) = &data.hostname {
        if map.contains_key(key("local-hostname")) {
            return Err(SeedError::Conflict {
                shortcut: "cloudInit.hostname",
                key: "local-hostname",
            });
        }
        map.insert(key("local-hostname"), key(h));
    }
    if !data.ssh_authorized_keys.is_empty() {
        if map.contains_key(key("public-keys")) {
            return Err(SeedError::Conflict {
                shortcut: "cloudInit.sshAuthorizedKeys",
                key: "public-keys",
            });
        }
        let keys = data.ssh_authorized_keys.iter().map(|k| key(k)).collect();
        map.insert(key("public-keys"), Value::Sequence(keys));
    }
    serde_yaml::to_string(&Value::Mapping(map))
        .map(String::into_bytes)
        .map_err(|e| SeedError::MetaDataNotMapping(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> SeedData {
        SeedData {
            instance_id: "uid-1".into(),
            ..SeedData::default()
        }
    }

    fn meta(d: &SeedData) -> Value {
        serde_yaml::from_slice(&meta_data(d).expect("meta-data")).expect("yaml")
    }

    #[test]
    fn shortcuts_go_into_meta_data() {
        let d = SeedData {
            hostname: Some("web-1".into()),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA a@b".into()],
            ..data()
        };
        let m = meta(&d);
        assert_eq!(m["instance-id"], "uid-1");
        assert_eq!(m["local-hostname"], "web-1");
        assert_eq!(m["public-keys"][0], "ssh-ed25519 AAAA a@b");
    }

    #[test]
    fn user_meta_data_keeps_its_keys_and_instance_id() {
        let d = SeedData {
            meta_data: Some(b"instance-id: mine\nfoo: [1, 2]\n".to_vec()),
            hostname: Some("h".into()),
            ..data()
        };
        let m = meta(&d);
        assert_eq!(m["instance-id"], "mine");
        assert_eq!(m["foo"][1], 2);
        assert_eq!(m["local-hostname"], "h");
    }

    #[test]
    fn conflicts_and_bad_meta_data_are_refused_without_quoting_it() {
        let d = SeedData {
            meta_data: Some(b"local-hostname: a\n".to_vec()),
            hostname: Some("b".into()),
            ..data()
        };
        assert!(matches!(
            build_seed(&d),
            Err(SeedError::Conflict {
                key: "local-hostname",
                ..
            })
        ));
        let d = SeedData {
            meta_data: Some(b"- s3cr3t\n".to_vec()),
            ..data()
        };
        let e = build_seed(&d).expect_err("list");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let d = SeedData {
            meta_data: Some(b"a: [s3cr3t\n".to_vec()),
            ..data()
        };
        let e = build_seed(&d).expect_err("bad yaml");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }

    #[test]
    fn too_much_data_is_refused() {
        let d = SeedData {
            user_data: Some(vec![b'#'; SEED_MAX_BYTES]),
            ..data()
        };
        match build_seed(&d) {
            Err(SeedError::TooLarge { bytes, limit }) => {
                assert!(bytes > SEED_MAX_BYTES);
                assert_eq!(limit, SEED_MAX_BYTES);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn digest_follows_content() {
        let a = build_seed(&data()).expect("seed");
        let b = build_seed(&data()).expect("seed");
        assert_eq!(a.digest, b.digest);
        let c = build_seed(&SeedData {
            user_data: Some(b"#cloud-config\nhostname: x\n".to_vec()),
            ..data()
        })
        .expect("seed");
        assert_ne!(a.digest, c.digest);
        assert_eq!(a.digest.len(), 64);
    }

    #[test]
    fn sha256_matches_the_standard_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
