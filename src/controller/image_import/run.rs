//! One import: download under the pool's policy, check the image's header, verify, upload,
//! convert a foreign format, and mark the image complete; or leave nothing of what it made.

use super::fetch::{self, Refusal};
use super::{FailureKind, ImportKey, ImportState, Request};
use crate::api::virtual_machine::{ImageFormat, SourceFormat};
use crate::cloud_init::hex;
use crate::hypervisor::{
    ConnectOptions, HostConnections, Hypervisor, HypervisorError, UploadSource, VolumeInfo,
    error_code,
};
use crate::plan::import_policy::Policy;
use crate::plan::source_image::{VhdxBlock, VhdxLayout};
use crate::plan::tar_member::MemberWalk;
use crate::plan::{image_header, source_image};
use futures::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one import may take in all.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// Chunks of [`CHUNK`] bytes in flight between the download and the libvirt upload.
const QUEUE: usize = 8;
/// Bytes per chunk handed to libvirt.
const CHUNK: usize = 1 << 20;

/// Why an import failed.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) kind: FailureKind,
    pub(super) message: String,
}

fn failure(kind: FailureKind, message: impl Into<String>) -> Failure {
    Failure {
        kind,
        message: message.into(),
    }
}

fn other(message: impl Into<String>) -> Failure {
    failure(FailureKind::Other, message)
}

fn refused(message: impl Into<String>) -> Failure {
    failure(FailureKind::Refused, message)
}

/// What is wrong with the archive at `url`: `why` is a phrase after "the archive".
fn archive_failure(url: &str, why: String) -> Failure {
    failure(FailureKind::Archive, format!("the archive at {url} {why}"))
}

/// A chunk from the download, or its end.
enum Piece {
    Data(Vec<u8>),
    /// Everything arrived and the checksum matched.
    Verified,
    Failed(Failure),
}

/// The image's bytes among the download's: all of them, or one member's of a tar archive (an
/// OVA).
struct Picker(Option<MemberWalk>);

impl Picker {
    /// Append the image's bytes of `chunk` to `out`.
    fn pick(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        match &mut self.0 {
            None => {
                out.extend_from_slice(chunk);
                Ok(())
            }
            Some(w) => w.feed(chunk, out),
        }
    }

    /// Whether the image's bytes have all been picked before the download ended.
    fn complete(&self) -> bool {
        self.0.as_ref().is_some_and(MemberWalk::member_complete)
    }

    /// The download ended: whether the archive held the member, whole.
    fn finish(&self) -> Result<(), String> {
        self.0.as_ref().map_or(Ok(()), |w| w.finish().map(|_| ()))
    }
}

/// The bytes received so far, with their hash; checked against the size cap as they come.
struct Received {
    hasher: ring::digest::Context,
    bytes: u64,
}

impl Received {
    /// Count and hash `chunk`; the policy's refusal once the download is over its size cap.
    fn add(&mut self, chunk: &[u8], policy: &Policy) -> Result<(), String> {
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        policy.check_size(self.bytes)
    }
}

/// Download, check, verify and upload; on success write the marker. Reports progress through
/// `progress`.
pub(super) async fn run(
    hosts: &HostConnections,
    key: &ImportKey,
    req: &Request,
    progress: &(dyn Fn(ImportState) + Sync),
) -> Result<(), Failure> {
    // reqwest is built without a TLS provider of its own: ring, as the Kubernetes client uses.
    crate::telemetry::install_tls_provider();
    let deadline = Instant::now() + IMPORT_TIMEOUT;
    let url = req.url.as_str();
    let policy = Arc::new(req.policy.clone());
    policy.check_url(url).map_err(refused)?;
    let refusal = Refusal::default();
    let client = fetch::client(policy.clone(), refusal.clone()).map_err(other)?;
    let failed_download = |e: &dyn std::error::Error, refusal: &Refusal| match refusal.get() {
        Some(why) => refused(why),
        None => other(format!("downloading {url} failed: {}", error_chain(e))),
    };
    progress(ImportState::Running {
        bytes: 0,
        total: None,
    });
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| failed_download(&e, &refusal))?;
    if !resp.status().is_success() {
        return Err(other(format!(
            "downloading {url} failed: the server answered {}",
            resp.status()
        )));
    }
    let total = resp.content_length();
    if let Some(t) = total {
        policy.check_size(t).map_err(refused)?;
    }
    progress(ImportState::Running { bytes: 0, total });

    // The image's header is checked before anything is created on the host. For a member of an
    // archive, the archive's other members pass by (hashed, not kept) until it comes.
    let mut stream = resp.bytes_stream();
    let mut got = Received {
        hasher: ring::digest::Context::new(&ring::digest::SHA256),
        bytes: 0,
    };
    let member = key.member.as_deref();
    let what = match member {
        Some(m) => format!("member {m:?} of the archive at {url}"),
        None => format!("the image at {url}"),
    };
    let archive = |why: String| archive_failure(url, why);
    let mut picker = Picker(member.map(MemberWalk::new));
    let mut first = Vec::with_capacity(CHUNK);
    let mut ended = false;
    while first.len() < source_image::head_bytes(req.format) && !picker.complete() {
        match stream.next().await {
            Some(Ok(c)) => {
                got.add(&c, &policy).map_err(refused)?;
                picker.pick(&c, &mut first).map_err(archive)?;
                progress(ImportState::Running {
                    bytes: got.bytes,
                    total,
                });
            }
            Some(Err(e)) => return Err(failed_download(&e, &refusal)),
            None => {
                ended = true;
                picker.finish().map_err(archive)?;
                break;
            }
        }
    }
    let declared = |why: String| refused(format!("{what} (declared {}) {why}", req.format));
    source_image::check(req.format, &first, ended || picker.complete()).map_err(declared)?;
    let vhdx = match req.format {
        SourceFormat::Vhdx => {
            Some(source_image::vhdx_layout(&first, ended || picker.complete()).map_err(declared)?)
        }
        _ => None,
    };
    // The disk inside a VHDX is written out in full before its conversion: it counts against the
    // size cap as a download does.
    if let Some(layout) = &vhdx {
        policy.check_size(layout.virtual_size).map_err(|why| {
            refused(format!(
                "the disk inside the VHDX at {url} ({} bytes) is written out in full before its conversion: {why}",
                layout.virtual_size
            ))
        })?;
    }

    // A connection of its own: the upload occupies it for as long as the download lasts. Its
    // calls may take longer than the import's own deadline, which ends a stalled one first.
    let opts = ConnectOptions {
        call_timeout: IMPORT_TIMEOUT + Duration::from_secs(600),
        ..req.opts.clone()
    };
    let hv = hosts
        .dedicated(&req.uri, &opts)
        .await
        .map_err(|e| other(format!("connecting to the host for the upload: {e}")))?;

    // The upload's capacity: the member's size for an archive's member, else the download's.
    let capacity = match &picker.0 {
        Some(w) => w.member_size().unwrap_or(0),
        None => total.unwrap_or(0),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(QUEUE);
    let expected = key.sha256.to_ascii_lowercase();
    let url_owned = url.to_string();
    let size_policy = policy.clone();
    let report = |bytes| progress(ImportState::Running { bytes, total });
    report(got.bytes);
    let download = async move {
        let mut buf = first;
        let send = |tx: &tokio::sync::mpsc::Sender<Piece>, p: Piece| {
            let tx = tx.clone();
            async move { tx.send(p).await.is_ok() }
        };
        if !ended {
            loop {
                if buf.len() >= CHUNK {
                    report(got.bytes);
                    let full = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK));
                    if !send(&tx, Piece::Data(full)).await {
                        return;
                    }
                }
                let next = stream.next().await;
                if Instant::now() > deadline {
                    let f = other(format!("the import took longer than {IMPORT_TIMEOUT:?}"));
                    let _ = send(&tx, Piece::Failed(f)).await;
                    return;
                }
                match next {
                    Some(Ok(c)) => {
                        if let Err(why) = got.add(&c, &size_policy) {
                            let _ = send(&tx, Piece::Failed(refused(why))).await;
                            return;
                        }
                        if let Err(why) = picker.pick(&c, &mut buf) {
                            let _ =
                                send(&tx, Piece::Failed(archive_failure(&url_owned, why))).await;
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        let f = other(format!(
                            "downloading {url_owned} failed after {} bytes: {}",
                            got.bytes,
                            error_chain(&e)
                        ));
                        let _ = send(&tx, Piece::Failed(f)).await;
                        return;
                    }
                    None => break,
                }
            }
        }
        if !buf.is_empty() && !send(&tx, Piece::Data(buf)).await {
            return;
        }
        report(got.bytes);
        let sum = hex(got.hasher.finish().as_ref());
        let last = if sum == expected {
            match picker.finish() {
                Ok(()) => Piece::Verified,
                Err(why) => Piece::Failed(archive_failure(&url_owned, why)),
            }
        } else {
            Piece::Failed(failure(
                FailureKind::Checksum,
                format!(
                    "checksum mismatch: {url_owned} has sha256 {sum}, the spec says {expected}; the download was discarded"
                ),
            ))
        };
        let _ = send(&tx, last).await;
    };
    let (source, cause) = upload_source(rx);
    // A file to convert goes into a download volume first, the others into the image volume.
    let name = key.download_name().unwrap_or_else(|| key.image_name());
    let upload = hv.upload_volume(&req.pool, &name, capacity, source);
    let (uploaded, ()) = futures::join!(upload, download);
    let result = match uploaded {
        Ok(vol) => match req.format.is_converted() {
            false => write_marker(hv.as_ref(), &req.pool, key).await,
            true => {
                progress(ImportState::Converting);
                let converted = match vhdx {
                    Some(layout) => convert_vhdx(hosts, req, hv.as_ref(), key, layout, &vol).await,
                    None => convert(hv.as_ref(), &req.pool, key, req.format.as_str(), &vol).await,
                };
                if let Err(e) = hv.delete_volume(&req.pool, &name).await {
                    tracing::warn!(volume = %name, error = %e, "could not remove a converted download");
                }
                match converted {
                    Ok(()) => write_marker(hv.as_ref(), &req.pool, key).await,
                    Err(f) => Err(f),
                }
            }
        },
        Err(e) => {
            let cause = cause.lock().unwrap_or_else(|p| p.into_inner()).take();
            Err(upload_failed(hv.as_ref(), &req.pool, &name, e, cause).await)
        }
    };
    hv.close().await;
    result
}

/// The upload side of a channel of pieces: runs on the upload connection's thread, which may
/// block waiting for them. The second value receives the producer's own failure, which the
/// upload only sees as a message.
fn upload_source(
    mut rx: tokio::sync::mpsc::Receiver<Piece>,
) -> (UploadSource, Arc<Mutex<Option<Failure>>>) {
    let cause: Arc<Mutex<Option<Failure>>> = Arc::default();
    let cause_slot = cause.clone();
    let source: UploadSource = Box::new(std::iter::from_fn(move || match rx.blocking_recv() {
        Some(Piece::Data(d)) => Some(Ok(d)),
        Some(Piece::Verified) => None,
        Some(Piece::Failed(f)) => {
            let message = f.message.clone();
            *cause_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
            Some(Err(message))
        }
        None => Some(Err("the data stopped without finishing".into())),
    }));
    (source, cause)
}

/// Write the disk inside the verified VHDX download `from` (laid out as `layout`) into a raw
/// scratch volume, reading its blocks through libvirt on a second connection, and have libvirt
/// convert that to the image volume. The scratch volume is removed either way.
async fn convert_vhdx(
    hosts: &HostConnections,
    req: &Request,
    hv: &dyn Hypervisor,
    key: &ImportKey,
    layout: VhdxLayout,
    from: &VolumeInfo,
) -> Result<(), Failure> {
    let pool = req.pool.as_str();
    let opts = ConnectOptions {
        call_timeout: IMPORT_TIMEOUT + Duration::from_secs(600),
        ..req.opts.clone()
    };
    let reader = hosts
        .dedicated(&req.uri, &opts)
        .await
        .map_err(|e| other(format!("connecting to the host to read the VHDX: {e}")))?;
    let bat = reader
        .read_volume(
            pool,
            &from.name,
            layout.bat_offset,
            layout.bat_bytes() as usize,
        )
        .await
        .map_err(|e| {
            other(format!(
                "reading the VHDX's block allocation table failed: {e}"
            ))
        });
    let blocks = bat.and_then(|bat| {
        layout
            .locate(&bat, from.capacity)
            .map_err(|why| refused(format!("the image at {} (declared vhdx) {why}", req.url)))
    });
    let blocks = match blocks {
        Ok(b) => b,
        Err(f) => {
            reader.close().await;
            return Err(f);
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(QUEUE);
    let read = async {
        let mut done = 0u64;
        for block in blocks {
            let len = layout.block_size.min(layout.virtual_size - done);
            let mut at = 0u64;
            while at < len {
                let n = (CHUNK as u64).min(len - at);
                let piece = match block {
                    VhdxBlock::Zero => Ok(vec![0u8; n as usize]),
                    VhdxBlock::At(offset) => reader
                        .read_volume(pool, &from.name, offset + at, n as usize)
                        .await
                        .map_err(|e| other(format!("reading the VHDX failed: {e}")))
                        .and_then(|d| match d.len() as u64 == n {
                            true => Ok(d),
                            false => Err(refused(format!(
                                "the VHDX at {} ends inside its block at byte {offset}",
                                req.url
                            ))),
                        }),
                };
                let piece = match piece {
                    Ok(d) => Piece::Data(d),
                    Err(f) => Piece::Failed(f),
                };
                let failed = matches!(piece, Piece::Failed(_));
                if tx.send(piece).await.is_err() || failed {
                    return;
                }
                at += n;
            }
            done += len;
        }
        let _ = tx.send(Piece::Verified).await;
    };
    let (source, cause) = upload_source(rx);
    let scratch = key
        .scratch_name()
        .unwrap_or_else(|| format!("{}.raw", key.image_name()));
    let upload = hv.upload_volume(pool, &scratch, layout.virtual_size, source);
    let (written, ()) = futures::join!(upload, read);
    reader.close().await;
    match written {
        Ok(vol) => {
            let converted = convert(hv, pool, key, "raw", &vol).await;
            if let Err(e) = hv.delete_volume(pool, &scratch).await {
                tracing::warn!(volume = %scratch, error = %e, "could not remove a scratch volume");
            }
            converted
        }
        Err(e) => {
            let cause = cause.lock().unwrap_or_else(|p| p.into_inner()).take();
            Err(upload_failed(hv, pool, &scratch, e, cause).await)
        }
    }
}

/// Convert `from` into the image volume (qcow2) through libvirt (`virStorageVolCreateXMLFrom`:
/// `qemu-img convert` on the host). libvirt hands `qemu-img` the format it probed for the
/// stored file, so that must be `expected` (the declared and checked format, or raw for the
/// disk read out of a VHDX); the result must pass the qcow2 check. A failed conversion leaves no
/// image.
async fn convert(
    hv: &dyn Hypervisor,
    pool: &str,
    key: &ImportKey,
    expected: &str,
    from: &VolumeInfo,
) -> Result<(), Failure> {
    let format = key.converted_from.map(|f| f.as_str()).unwrap_or(expected);
    if from.format != expected {
        return Err(refused(format!(
            "libvirt on the host reads {} as {}, not {expected} (its first bytes look like such an image): it is not converted",
            if expected == format {
                "the downloaded file".to_string()
            } else {
                format!("the disk inside the {format} file")
            },
            from.format
        )));
    }
    let name = key.image_name();
    let image = match hv.clone_volume(pool, &name, from).await {
        Ok(v) => v,
        Err(e) => {
            return Err(match &e {
                HypervisorError::OperationFailed { code, .. }
                    if *code == error_code::STORAGE_VOL_EXIST =>
                {
                    other(format!(
                        "volume {name} exists already in storage pool {pool:?}: another import of this image is under way, or one was cut short (it is removed at the next look)"
                    ))
                }
                HypervisorError::OperationFailed { message, .. } => other(format!(
                    "converting the {format} image to qcow2 failed: {message}"
                )),
                e => other(format!(
                    "converting the {format} image to qcow2 failed: {e}"
                )),
            });
        }
    };
    let head = hv
        .read_volume_head(pool, &name, image_header::HEAD_BYTES)
        .await
        .map_err(|e| other(format!("reading the converted image's header failed: {e}")));
    let checked = head.and_then(|head| {
        image_header::check(ImageFormat::Qcow2, &head)
            .map_err(|why| refused(format!("the image converted from {format} {why}")))
    });
    if let Err(f) = checked {
        if let Err(e) = hv.delete_volume(pool, &image.name).await {
            tracing::warn!(volume = %image.name, error = %e, "could not remove a refused conversion");
        }
        return Err(f);
    }
    Ok(())
}

/// Write the marker that makes the image complete; when that fails, remove the image (this
/// import made it).
async fn write_marker(hv: &dyn Hypervisor, pool: &str, key: &ImportKey) -> Result<(), Failure> {
    let marker = key.sha256.clone().into_bytes();
    let written = hv
        .upload_volume(
            pool,
            &key.marker_name(),
            marker.len() as u64,
            Box::new(std::iter::once(Ok(marker))),
        )
        .await;
    match written {
        Ok(_) => Ok(()),
        Err(e) => {
            let name = key.image_name();
            if let Err(err) = hv.delete_volume(pool, &name).await {
                tracing::warn!(volume = %name, error = %err, "could not remove an image without its marker");
            }
            Err(other(format!("storing the image's marker failed: {e}")))
        }
    }
}

/// What a failed upload reports, once nothing this import made is left: `upload_volume` removes
/// the volume it created, and this makes sure before the failure is reported. A name already
/// taken is another import's (or a remainder's) volume: left alone.
async fn upload_failed(
    hv: &dyn Hypervisor,
    pool: &str,
    name: &str,
    e: HypervisorError,
    cause: Option<Failure>,
) -> Failure {
    let taken = matches!(&e, HypervisorError::OperationFailed { code, .. } if *code == error_code::STORAGE_VOL_EXIST);
    if taken {
        return other(format!(
            "volume {name} exists already in storage pool {pool:?}: another import of this image is under way, or one was cut short (it is removed at the next look)"
        ));
    }
    if !e.is_connection_lost()
        && let Ok(Some(_)) = hv.lookup_volume(pool, name).await
        && let Err(err) = hv.delete_volume(pool, name).await
    {
        tracing::warn!(volume = %name, error = %err, "could not remove a failed import");
    }
    cause.unwrap_or_else(|| {
        other(match &e {
            HypervisorError::OperationFailed { message, .. } => message.clone(),
            e => e.to_string(),
        })
    })
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
