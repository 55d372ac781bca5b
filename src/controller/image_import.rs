//! Golden images imported from HTTP(S) URLs into a host's storage pool, verified by SHA-256.
//!
//! An image is stored once per pool under a name derived from its checksum
//! ([`naming::imported_image_name`]), shared by every VM that names that checksum. The download
//! is streamed straight into a libvirt volume (`virStorageVolUpload` on a connection of its
//! own), hashing on the way; a mismatch, a network error or a libvirt error deletes the volume.
//! Only after a complete, verified upload is a small marker volume written next to it: an image
//! volume without its marker is the remainder of an interrupted import (controller restart) and
//! is deleted before the import starts again.
//!
//! Imports run in the background; reconciles read their progress from a process-wide table.
//! A failed import is retried no sooner than its backoff allows (2 s doubling to 5 min per
//! image), however often the VMs waiting for it are reconciled.

use crate::cloud_init::hex;
use crate::hypervisor::{
    ConnectOptions, HostConnections, Hypervisor, HypervisorError, UploadSource, VolumeInfo,
};
use crate::plan::naming;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How long one import may take in all.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// Chunks of [`CHUNK`] bytes in flight between the download and the libvirt upload.
const QUEUE: usize = 8;
/// Bytes per chunk handed to libvirt.
const CHUNK: usize = 1 << 20;
/// First wait before a failed import starts again.
const RETRY_FIRST: Duration = Duration::from_secs(2);
/// Longest wait before a failed import starts again.
const RETRY_LONGEST: Duration = Duration::from_secs(300);

/// Where an import of one image into one pool stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportState {
    /// Bytes received so far and the total when the server said it.
    Running { bytes: u64, total: Option<u64> },
    /// The image is in the pool, verified.
    Done,
    /// It failed; nothing is left in the pool. `checksum` tells a mismatch from other failures.
    Failed { message: String, checksum: bool },
}

/// One image in one pool on one host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImportKey {
    pub uri: String,
    pub pool: String,
    pub sha256: String,
}

static IMPORTS: LazyLock<Mutex<HashMap<ImportKey, ImportState>>> = LazyLock::new(Mutex::default);

/// Failed imports: when each may start again, and its backoff sequence (until one succeeds).
static RETRIES: LazyLock<Mutex<HashMap<ImportKey, Retry>>> = LazyLock::new(Mutex::default);

struct Retry {
    delays: ExponentialBackoff,
    /// When the reported failure may be retried; `None` until it is first reported.
    due: Option<Instant>,
}

fn retries() -> std::sync::MutexGuard<'static, HashMap<ImportKey, Retry>> {
    RETRIES.lock().unwrap_or_else(|e| e.into_inner())
}

fn table() -> std::sync::MutexGuard<'static, HashMap<ImportKey, ImportState>> {
    IMPORTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn set(key: &ImportKey, state: ImportState) {
    table().insert(key.clone(), state);
}

/// The state of an import this process knows of. `Done` is reported once and then forgotten
/// (the next look finds the image in the pool). `Failed` is reported until its retry is due
/// (2 s after it is first reported, doubling with each failure of that image up to 5 min); then
/// it is forgotten, so that the next look starts the import again. Without the wait, a VM whose
/// status changes with every report would start a failing import again at once, in a loop.
pub fn take_state(key: &ImportKey) -> Option<ImportState> {
    take_state_at(key, Instant::now())
}

fn take_state_at(key: &ImportKey, now: Instant) -> Option<ImportState> {
    let mut t = table();
    match t.get(key) {
        Some(ImportState::Running { .. }) => t.get(key).cloned(),
        Some(ImportState::Done) => {
            retries().remove(key);
            t.remove(key)
        }
        Some(failed @ ImportState::Failed { .. }) => {
            let failed = failed.clone();
            let mut r = retries();
            let retry = r.entry(key.clone()).or_insert_with(|| Retry {
                delays: ExponentialBuilder::new()
                    .with_min_delay(RETRY_FIRST)
                    .with_factor(2.0)
                    .with_max_delay(RETRY_LONGEST)
                    .without_max_times()
                    .build(),
                due: None,
            });
            match retry.due {
                None => {
                    retry.due = Some(now + retry.delays.next().unwrap_or(RETRY_LONGEST));
                    Some(failed)
                }
                Some(due) if now < due => Some(failed),
                Some(_) => {
                    retry.due = None;
                    t.remove(key);
                    None
                }
            }
        }
        None => None,
    }
}

/// Whether this process is importing `key` now.
pub fn running(key: &ImportKey) -> bool {
    matches!(table().get(key), Some(ImportState::Running { .. }))
}

/// The verified image if the pool has it. An image without its marker is either being imported
/// by this process (left alone) or the remainder of an import cut short, by a controller restart
/// say (removed); `None` is returned for both.
pub async fn lookup(
    hv: &dyn Hypervisor,
    pool: &str,
    sha256: &str,
) -> Result<Option<VolumeInfo>, HypervisorError> {
    let name = naming::imported_image_name(sha256);
    let Some(vol) = hv.lookup_volume(pool, &name).await? else {
        return Ok(None);
    };
    if hv
        .lookup_volume(pool, &naming::imported_marker_name(sha256))
        .await?
        .is_some()
    {
        return Ok(Some(vol));
    }
    // Asked after the volume was seen: an import marks itself running before it creates the
    // volume and stays so until its marker is written.
    let key = ImportKey {
        uri: hv.uri().to_string(),
        pool: pool.to_string(),
        sha256: sha256.to_ascii_lowercase(),
    };
    if running(&key) || matches!(table().get(&key), Some(ImportState::Done)) {
        return Ok(None);
    }
    tracing::warn!(volume = %name, "removing an image whose import did not finish");
    hv.delete_volume(pool, &name).await?;
    Ok(None)
}

/// Start importing `url` into `pool` on the host at `uri` unless an import of it runs already.
/// The upload runs on a connection of its own from `hosts`.
pub fn start(hosts: &HostConnections, key: ImportKey, url: String, opts: ConnectOptions) {
    {
        let mut t = table();
        if matches!(t.get(&key), Some(ImportState::Running { .. })) {
            return;
        }
        t.insert(
            key.clone(),
            ImportState::Running {
                bytes: 0,
                total: None,
            },
        );
    }
    let hosts = hosts.clone();
    tokio::spawn(async move {
        let outcome = tokio::time::timeout(IMPORT_TIMEOUT, run(&hosts, &key, &url, opts)).await;
        let state = match outcome {
            Ok(Ok(())) => ImportState::Done,
            Ok(Err(f)) => f,
            Err(_) => ImportState::Failed {
                message: format!("the import took longer than {IMPORT_TIMEOUT:?}"),
                checksum: false,
            },
        };
        set(&key, state);
    });
}

fn failed(message: String) -> ImportState {
    ImportState::Failed {
        message,
        checksum: false,
    }
}

/// A chunk from the download, or its end.
enum Piece {
    Data(Vec<u8>),
    /// Everything arrived and the checksum matched.
    Verified,
    Failed(String),
}

/// Download, verify and upload; on success write the marker.
async fn run(
    hosts: &HostConnections,
    key: &ImportKey,
    url: &str,
    opts: ConnectOptions,
) -> Result<(), ImportState> {
    install_crypto_provider();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| failed(format!("cannot make an HTTP client: {e}")))?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| failed(format!("downloading {url} failed: {}", error_chain(&e))))?;
    if !resp.status().is_success() {
        return Err(failed(format!(
            "downloading {url} failed: the server answered {}",
            resp.status()
        )));
    }
    let total = resp.content_length();
    set(key, ImportState::Running { bytes: 0, total });

    // A connection of its own: the upload occupies it for as long as the download lasts.
    let opts = ConnectOptions {
        call_timeout: IMPORT_TIMEOUT,
        ..opts
    };
    let hv = hosts
        .dedicated(&key.uri, &opts)
        .await
        .map_err(|e| failed(format!("connecting to the host for the upload: {e}")))?;

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(QUEUE);
    let expected = key.sha256.to_ascii_lowercase();
    let progress_key = key.clone();
    let url_owned = url.to_string();
    let download = tokio::spawn(async move {
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut bytes = 0u64;
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::with_capacity(CHUNK);
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    hasher.update(&c);
                    bytes += c.len() as u64;
                    buf.extend_from_slice(&c);
                    if buf.len() >= CHUNK {
                        set(&progress_key, ImportState::Running { bytes, total });
                        let full = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK));
                        if tx.send(Piece::Data(full)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx
                        .send(Piece::Failed(format!(
                            "downloading {url_owned} failed after {bytes} bytes: {}",
                            error_chain(&e)
                        )))
                        .await;
                    return;
                }
            }
        }
        if !buf.is_empty() && tx.send(Piece::Data(buf)).await.is_err() {
            return;
        }
        set(&progress_key, ImportState::Running { bytes, total });
        let got = hex(hasher.finish().as_ref());
        let last = if got == expected {
            Piece::Verified
        } else {
            Piece::Failed(format!(
                "checksum mismatch: {url_owned} has sha256 {got}, the spec says {expected}; the download was discarded"
            ))
        };
        let _ = tx.send(last).await;
    });
    // Runs on the upload connection's thread, which may block waiting for the download.
    let source: UploadSource = Box::new(std::iter::from_fn(move || match rx.blocking_recv() {
        Some(Piece::Data(d)) => Some(Ok(d)),
        Some(Piece::Verified) => None,
        Some(Piece::Failed(m)) => Some(Err(m)),
        None => Some(Err("the download stopped without finishing".into())),
    }));
    let name = naming::imported_image_name(&key.sha256);
    let uploaded = hv
        .upload_volume(&key.pool, &name, total.unwrap_or(0), source)
        .await;
    download.abort();
    let result = match uploaded {
        Ok(_) => {
            let marker = key.sha256.clone().into_bytes();
            hv.upload_volume(
                &key.pool,
                &naming::imported_marker_name(&key.sha256),
                marker.len() as u64,
                Box::new(std::iter::once(Ok(marker))),
            )
            .await
            .map(|_| ())
            .map_err(|e| failed(format!("storing the image's marker failed: {e}")))
        }
        Err(e) => {
            let message = match &e {
                HypervisorError::OperationFailed { message, .. } => message.clone(),
                other => other.to_string(),
            };
            let checksum = message.contains("checksum mismatch");
            Err(ImportState::Failed { message, checksum })
        }
    };
    if result.is_err() {
        // Whatever went wrong, leave nothing behind (upload_volume removed the image already).
        let _ = hv.delete_volume(&key.pool, &name).await;
    }
    hv.close().await;
    result
}

/// reqwest is built without a TLS provider of its own: use ring, as the Kubernetes client does.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An error with its causes ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `123 MiB of 1024 MiB (12 %)`, or `123 MiB` without a total.
pub fn progress(bytes: u64, total: Option<u64>) -> String {
    let mib = |b: u64| b / (1024 * 1024);
    match total {
        Some(t) if t > 0 => format!(
            "{} MiB of {} MiB ({} %)",
            mib(bytes),
            mib(t),
            bytes.saturating_mul(100) / t
        ),
        _ => format!("{} MiB", mib(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_well() {
        assert_eq!(
            progress(128 << 20, Some(1 << 30)),
            "128 MiB of 1024 MiB (12 %)"
        );
        assert_eq!(progress(5 << 20, None), "5 MiB");
    }

    #[test]
    fn finished_states_are_reported_once() {
        let key = ImportKey {
            uri: "test:///x".into(),
            pool: "p".into(),
            sha256: "ab".into(),
        };
        set(&key, ImportState::Done);
        assert_eq!(take_state(&key), Some(ImportState::Done));
        assert_eq!(take_state(&key), None);
        set(
            &key,
            ImportState::Running {
                bytes: 1,
                total: None,
            },
        );
        assert!(take_state(&key).is_some());
        assert!(take_state(&key).is_some());
        table().remove(&key);
    }

    #[test]
    fn a_failed_import_starts_again_only_when_its_retry_is_due() {
        let key = ImportKey {
            uri: "test:///x".into(),
            pool: "p".into(),
            sha256: "cd".into(),
        };
        let failed = ImportState::Failed {
            message: "checksum".into(),
            checksum: true,
        };
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // First failure: reported until 2 s after its first report, then forgotten (start again).
        set(&key, failed.clone());
        assert_eq!(take_state_at(&key, at(10)), Some(failed.clone()));
        assert_eq!(take_state_at(&key, at(11)), Some(failed.clone()));
        assert_eq!(take_state_at(&key, at(12)), None);
        // Second failure of the same image: 4 s.
        set(&key, failed.clone());
        assert_eq!(take_state_at(&key, at(20)), Some(failed.clone()));
        assert_eq!(take_state_at(&key, at(23)), Some(failed.clone()));
        assert_eq!(take_state_at(&key, at(24)), None);
        // A success starts the sequence over.
        set(&key, ImportState::Done);
        assert_eq!(take_state_at(&key, at(30)), Some(ImportState::Done));
        set(&key, failed.clone());
        assert_eq!(take_state_at(&key, at(40)), Some(failed.clone()));
        assert_eq!(take_state_at(&key, at(42)), None);
        retries().remove(&key);
    }
}
