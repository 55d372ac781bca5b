//! Golden images imported from HTTP(S) URLs into a host's storage pool, verified by SHA-256.
//!
//! An image is stored once per storage and checksum under a name derived from the checksum
//! ([`naming::imported_image_name`]), shared by every VM that names that checksum. The download
//! is streamed straight into a libvirt volume (`virStorageVolUpload` on a connection of its
//! own), hashing on the way. Only after a complete, verified upload is a small marker volume
//! written next to it: an image volume without its marker is the remainder of an interrupted
//! import (controller restart) and is deleted before the import starts again.
//!
//! What an import may do is bounded ([`crate::plan::import_policy`]): where it connects (checked
//! for the URL, every address a name resolves to, and every redirect), how much it downloads (the
//! pool's `imports.maxSize`), what the image's header may name ([`crate::plan::image_header`]:
//! no backing file, no external data file), and how many run at once (the controller's
//! `--max-concurrent-imports`; the others wait their turn).
//!
//! An import is known by the storage it writes into and the checksum ([`ImportKey`]): the hosts
//! of a shared storage share one import, so no import ever removes another one's volume. Only the
//! import that created a volume removes it, and it does so before it reports the failure. A
//! failure belongs to its source (the HostPool whose policy applied, and the URL): it is
//! reported to the VMs that name that image from that source, never to a VM whose URL or pool
//! differs (which starts an import of its own), until its retry is due (2 s after
//! the failure, doubling with each failure of that image up to 5 min, reset by a success; at
//! least 5 min for a failure that needs a person: [`retry_after`]), however often the VMs
//! waiting for it are reconciled; then the next look starts the import again.
//!
//! A file in a foreign format (VMDK, VHDX, VDI, VHD) is downloaded the same way into a download volume,
//! then converted into the image volume, a standalone qcow2, **through libvirt's storage API**:
//! `virStorageVolCreateXMLFrom` with a qcow2 target makes libvirt run `qemu-img convert` on the
//! host. ferry has no way to run a command on a host (libvirtd is its only agent there, and
//! adding one would widen what a compromised controller can do), and libvirt already owns the
//! pool, its permissions and its locking; the conversion is also where the data is, so nothing
//! crosses the network twice. `qemu-img convert` follows whatever the file names (extents,
//! parents), so the download's head is checked first ([`crate::plan::source_image`]), libvirt's
//! own reading of the stored file must agree with the declared format (libvirt passes the format
//! it probed to `qemu-img`), and the converted image's header is checked again as qcow2. The
//! download volume is removed after the conversion; the marker is written only after a complete
//! one.
//!
//! libvirt does not know VHDX (no version has it among its volume formats), so it cannot hand one
//! to `qemu-img`. ferry reads the disk out of a VHDX itself, through the same storage API: it
//! parses the block allocation table ([`crate::plan::source_image::VhdxLayout`]), reads the
//! present blocks from the download volume (`virStorageVolDownload` at their offsets) and writes
//! the disk, zeros where no block is present, into a raw scratch volume (`virStorageVolUpload`),
//! which libvirt then converts to qcow2 as above (after its probe says raw: a disk whose first
//! bytes look like an image that names files is refused). Nothing of QEMU's VHDX driver runs.
//!
//! Imports run in the background; reconciles read their progress from [`Imports`].

mod fetch;
mod run;

use crate::api::virtual_machine::{SourceFormat, image_id};
use crate::hypervisor::{ConnectOptions, HostConnections, Hypervisor, HypervisorError, VolumeInfo};
use crate::plan::import_policy::Policy;
use crate::plan::naming;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use ipnet::IpNet;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Imports at once when the controller is not told otherwise.
pub const DEFAULT_MAX_IMPORTS: usize = 4;

/// Why an import failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The download's SHA-256 is not the one the spec gives.
    Checksum,
    /// The pool's import policy refused it: an address it may not reach, an image larger than
    /// the cap, an image whose header names another file.
    Refused,
    /// The download is a tar archive (an OVA) without the member the spec names, or one ferry
    /// refuses: two members of that name, a member named by an absolute or `..` path, a damaged
    /// or cut short archive.
    Archive,
    /// The network, the server or the host failed.
    Other,
}

/// First wait before a failed import starts again.
const RETRY_FIRST: Duration = Duration::from_secs(2);
/// Longest wait before a failed import starts again, and the least for a failure that needs a
/// person.
const RETRY_LONGEST: Duration = Duration::from_secs(300);

/// How long a failure is reported before the import is tried again, given the image's backoff
/// `delay`: a server that was down may be back soon; a wrong checksum, a refused address or an
/// oversized image need a person.
pub fn retry_after(kind: FailureKind, delay: Duration) -> Duration {
    match kind {
        FailureKind::Other => delay,
        FailureKind::Checksum | FailureKind::Refused | FailureKind::Archive => {
            delay.max(RETRY_LONGEST)
        }
    }
}

/// The backoff of one image's failed imports: 2 s doubling to 5 min.
fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(RETRY_FIRST)
        .with_factor(2.0)
        .with_max_delay(RETRY_LONGEST)
        .without_max_times()
        .build()
}

/// Where an import of one image into one storage stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportState {
    /// Waiting for one of the `--max-concurrent-imports` slots.
    Queued,
    /// Bytes received so far and the total when the server said it.
    Running { bytes: u64, total: Option<u64> },
    /// Downloaded and verified; being converted to qcow2 on the host.
    Converting,
    /// The image is in the pool, verified.
    Done,
    /// It failed, and nothing it made is left. Reported until `until`, then tried again.
    Failed {
        message: String,
        kind: FailureKind,
        until: Instant,
    },
}

/// One image in one storage: the directory of the storage pool, qualified with the host's URI
/// unless every host of the pool sees the same storage; the checksum of the download; the
/// foreign format the image is converted from (`None` for raw and qcow2, stored as downloaded);
/// and the member of the downloaded tar archive (an OVA) that is the image, if it is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImportKey {
    pub storage: String,
    pub sha256: String,
    pub converted_from: Option<SourceFormat>,
    pub member: Option<String>,
}

impl ImportKey {
    /// The import of `sha256`, declared `format`, into the storage pool whose directory on the
    /// host at `uri` is `dir`; `shared` when every host of the pool sees that directory's
    /// contents.
    pub fn new(uri: &str, dir: &str, shared: bool, sha256: &str, format: SourceFormat) -> Self {
        ImportKey {
            storage: if shared {
                format!("shared:{dir}")
            } else {
                format!("{uri} {dir}")
            },
            sha256: sha256.to_ascii_lowercase(),
            converted_from: format.is_converted().then_some(format),
            member: None,
        }
    }

    /// The same import, of member `member` of the archive rather than the whole download.
    pub fn in_archive(mut self, member: Option<&str>) -> Self {
        self.member = member.map(str::to_string);
        self
    }

    fn format(&self) -> SourceFormat {
        self.converted_from.unwrap_or(SourceFormat::Qcow2)
    }

    /// What the image's volumes are named by: the checksum, or for an archive's member the
    /// digest of the checksum and the member ([`image_id`]).
    fn id(&self) -> String {
        image_id(&self.sha256, self.member.as_deref())
    }

    /// The image's volume.
    pub fn image_name(&self) -> String {
        naming::imported_image_name(&self.id(), self.format())
    }

    /// The volume that marks the image complete.
    pub fn marker_name(&self) -> String {
        naming::imported_marker_name(&self.id(), self.format())
    }

    /// The volume the disk inside a VHDX is written into (raw) before its conversion.
    pub fn scratch_name(&self) -> Option<String> {
        (self.converted_from == Some(SourceFormat::Vhdx))
            .then(|| naming::imported_scratch_name(&self.id(), SourceFormat::Vhdx))
    }

    /// The volume a file to convert is downloaded into, if the image is converted.
    pub fn download_name(&self) -> Option<String> {
        self.converted_from
            .map(|f| naming::imported_download_name(&self.id(), f))
    }
}

/// What to import, from where, into what.
#[derive(Clone)]
pub struct Request {
    /// The host whose storage pool receives the image.
    pub uri: String,
    pub pool: String,
    pub url: String,
    /// The format the spec declares (its header is checked for it).
    pub format: SourceFormat,
    pub policy: Policy,
    pub opts: ConnectOptions,
}

/// Where an import comes from: the HostPool (`namespace/name`) whose policy applies, and the URL.
pub type Source = String;

/// The source of an import of `url` for a VM of HostPool `pool` in `namespace`.
pub fn source(namespace: &str, pool: &str, url: &str) -> Source {
    format!("{namespace}/{pool} {url}")
}

struct Inner {
    /// Imports queued, running, or done and not yet reported.
    table: Mutex<HashMap<ImportKey, (ImportState, Source)>>,
    /// Failed imports, per image and source, until their retry is due.
    failures: Mutex<HashMap<(ImportKey, Source), ImportState>>,
    /// Images whose imports failed since their last success: the waits before the next tries.
    retries: Mutex<HashMap<ImportKey, ExponentialBackoff>>,
    slots: Arc<tokio::sync::Semaphore>,
    limit: usize,
    cluster: Vec<IpNet>,
}

/// The imports of this process: their states, the slots they take turns on, and the cluster's
/// networks no import reaches unless its pool allows it.
#[derive(Clone)]
pub struct Imports {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Imports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imports")
            .field("limit", &self.inner.limit)
            .field("cluster", &self.inner.cluster)
            .finish_non_exhaustive()
    }
}

impl Default for Imports {
    fn default() -> Self {
        Imports::new(DEFAULT_MAX_IMPORTS, Vec::new())
    }
}

impl Imports {
    /// At most `limit` imports at once (at least one); `cluster` are the cluster's networks.
    pub fn new(limit: usize, cluster: Vec<IpNet>) -> Self {
        let limit = limit.max(1);
        Imports {
            inner: Arc::new(Inner {
                table: Mutex::default(),
                failures: Mutex::default(),
                retries: Mutex::default(),
                slots: Arc::new(tokio::sync::Semaphore::new(limit)),
                limit,
                cluster,
            }),
        }
    }

    /// Imports at once, at most.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// The cluster's networks (`--cluster-cidr`).
    pub fn cluster_networks(&self) -> &[IpNet] {
        &self.inner.cluster
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<ImportKey, (ImportState, Source)>> {
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<(ImportKey, Source), ImportState>> {
        self.inner
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, key: &ImportKey, source: &str, state: ImportState) {
        self.table()
            .insert(key.clone(), (state, source.to_string()));
    }

    /// The outcome of an import that ended at `now`: `Done`, or the failure with the time its
    /// retry is due (the image's backoff, reset by a success).
    fn finished(
        &self,
        key: &ImportKey,
        source: &str,
        outcome: Result<(), run::Failure>,
        now: Instant,
    ) {
        let mut retries = self.inner.retries.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(()) => {
                retries.remove(key);
                self.set(key, source, ImportState::Done);
            }
            Err(f) => {
                let delay = retries
                    .entry(key.clone())
                    .or_insert_with(backoff)
                    .next()
                    .unwrap_or(RETRY_LONGEST);
                let failed = ImportState::Failed {
                    until: now + retry_after(f.kind, delay),
                    message: f.message,
                    kind: f.kind,
                };
                // The failure is recorded before the import stops counting as running.
                self.failures()
                    .insert((key.clone(), source.to_string()), failed);
                self.table().remove(key);
            }
        }
    }

    /// The state of the import of `key` as a VM whose import comes from `source` sees it, as of
    /// `now`: an import queued or running (from any source: the checksum decides what is
    /// stored); `Done`, reported once and then forgotten (the next look finds the image in the
    /// pool, or starts again); a failure from this source until its retry is due.
    pub fn state(&self, key: &ImportKey, source: &str, now: Instant) -> Option<ImportState> {
        {
            let mut t = self.table();
            match t.get(key) {
                Some((ImportState::Done, _)) => return t.remove(key).map(|(s, _)| s),
                Some((s, _)) => return Some(s.clone()),
                None => {}
            }
        }
        let mut f = self.failures();
        let at = (key.clone(), source.to_string());
        match f.get(&at) {
            Some(ImportState::Failed { until, .. }) if *until <= now => {
                f.remove(&at);
                None
            }
            other => other.cloned(),
        }
    }

    /// Whether this process is importing `key` now (queued or running).
    pub fn running(&self, key: &ImportKey) -> bool {
        matches!(
            self.table().get(key),
            Some((
                ImportState::Queued | ImportState::Running { .. } | ImportState::Converting,
                _
            ))
        )
    }

    /// The verified image if the pool has it. An image without its marker (or a download
    /// waiting for its conversion) is either being imported by this process (left alone) or the
    /// remainder of an import cut short, by a controller restart say (removed); `None` is
    /// returned for both.
    pub async fn lookup(
        &self,
        hv: &dyn Hypervisor,
        pool: &str,
        key: &ImportKey,
    ) -> Result<Option<VolumeInfo>, HypervisorError> {
        let name = key.image_name();
        let image = hv.lookup_volume(pool, &name).await?;
        if let Some(vol) = image.as_ref()
            && hv.lookup_volume(pool, &key.marker_name()).await?.is_some()
        {
            return Ok(Some(vol.clone()));
        }
        // Asked after the volumes were seen: an import marks itself running before it creates
        // them and stays so until its marker is written.
        if self.running(key) || matches!(self.table().get(key), Some((ImportState::Done, _))) {
            return Ok(None);
        }
        for left in [key.download_name(), key.scratch_name()]
            .into_iter()
            .flatten()
        {
            if hv.lookup_volume(pool, &left).await?.is_some() {
                tracing::warn!(volume = %left, "removing what an unfinished conversion left");
                hv.delete_volume(pool, &left).await?;
            }
        }
        if image.is_some() {
            tracing::warn!(volume = %name, "removing an image whose import did not finish");
            hv.delete_volume(pool, &name).await?;
        }
        Ok(None)
    }

    /// Start importing `req.url` from `source` as `key` unless an import of it is under way
    /// (or failed from this source and is still being reported). The upload runs on a
    /// connection of its own from `hosts`.
    pub fn start(&self, hosts: &HostConnections, key: ImportKey, source: &str, req: Request) {
        {
            let mut t = self.table();
            if t.get(&key)
                .is_some_and(|(s, _)| !matches!(s, ImportState::Done))
            {
                return;
            }
            let mut f = self.failures();
            let at = (key.clone(), source.to_string());
            if matches!(f.get(&at), Some(ImportState::Failed { until, .. }) if *until > Instant::now())
            {
                return;
            }
            f.remove(&at);
            t.insert(key.clone(), (ImportState::Queued, source.to_string()));
        }
        let source = source.to_string();
        let (hosts, imports) = (hosts.clone(), self.clone());
        tokio::spawn(async move {
            let Ok(_slot) = imports.inner.slots.clone().acquire_owned().await else {
                return;
            };
            let progress = |s: ImportState| imports.set(&key, &source, s);
            let outcome = run::run(&hosts, &key, &req, &progress).await;
            imports.finished(&key, &source, outcome, Instant::now());
        });
    }
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

    fn fail(kind: FailureKind) -> Result<(), run::Failure> {
        Err(run::Failure {
            kind,
            message: "no".into(),
        })
    }

    #[test]
    fn states_are_reported_until_their_time() {
        let imports = Imports::default();
        let key = ImportKey::new("test:///x", "/pool", true, "AB", SourceFormat::Qcow2);
        let (src, other) = (
            source("team", "lab", "http://a/x"),
            source("team", "lab", "http://b/x"),
        );
        let now = Instant::now();
        imports.set(&key, &src, ImportState::Done);
        assert_eq!(imports.state(&key, &other, now), Some(ImportState::Done));
        assert_eq!(
            imports.state(&key, &src, now),
            None,
            "done is reported once"
        );
        imports.set(
            &key,
            &src,
            ImportState::Running {
                bytes: 1,
                total: None,
            },
        );
        assert!(
            imports.state(&key, &other, now).is_some(),
            "a running import is everyone's"
        );
        assert!(imports.running(&key));
        imports.finished(&key, &src, fail(FailureKind::Checksum), now);
        assert!(!imports.running(&key));
        let failed = imports.state(&key, &src, now).expect("failed");
        assert!(matches!(failed, ImportState::Failed { .. }));
        assert_eq!(
            imports.state(&key, &src, now + Duration::from_secs(10)),
            Some(failed),
            "a failure stays while it is reported"
        );
        assert_eq!(
            imports.state(&key, &other, now),
            None,
            "another URL's VM starts its own import"
        );
        let pool_b = source("team", "other", "http://a/x");
        assert_eq!(
            imports.state(&key, &pool_b, now),
            None,
            "so does another pool's"
        );
        assert_eq!(
            imports.state(&key, &src, now + Duration::from_secs(300)),
            None
        );
    }

    #[test]
    fn a_failed_import_starts_again_only_when_its_retry_is_due() {
        let imports = Imports::default();
        let key = ImportKey::new("test:///x", "/pool", true, "cd", SourceFormat::Raw);
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let src = source("team", "lab", "http://a/x");
        let due = |imports: &Imports, now| match imports.state(&key, &src, now) {
            Some(ImportState::Failed { until, .. }) => Some(until),
            _ => None,
        };
        // The network failed: 2 s, then 4 s for the second failure of the same image.
        imports.finished(&key, &src, fail(FailureKind::Other), at(10));
        assert_eq!(due(&imports, at(11)), Some(at(12)));
        assert_eq!(imports.state(&key, &src, at(12)), None, "due: start again");
        imports.finished(&key, &src, fail(FailureKind::Other), at(20));
        assert_eq!(due(&imports, at(23)), Some(at(24)));
        // A wrong checksum needs a person: 5 min at least.
        imports.finished(&key, &src, fail(FailureKind::Checksum), at(30));
        assert_eq!(due(&imports, at(31)), Some(at(330)));
        // A success starts the sequence over.
        imports.finished(&key, &src, Ok(()), at(400));
        assert_eq!(imports.state(&key, &src, at(400)), Some(ImportState::Done));
        imports.finished(&key, &src, fail(FailureKind::Other), at(500));
        assert_eq!(due(&imports, at(501)), Some(at(502)));
    }

    #[test]
    fn hosts_of_shared_storage_share_an_import() {
        use SourceFormat::*;
        let a = ImportKey::new("qemu+tls://a/system", "/srv/pool", true, "ab", Qcow2);
        let b = ImportKey::new("qemu+tls://b/system", "/srv/pool", true, "AB", Raw);
        assert_eq!(a, b, "raw and qcow2 store the same bytes");
        let a = ImportKey::new("qemu+tls://a/system", "/srv/pool", false, "ab", Qcow2);
        let b = ImportKey::new("qemu+tls://b/system", "/srv/pool", false, "ab", Qcow2);
        assert_ne!(a, b);
        let vmdk = ImportKey::new("qemu+tls://a/system", "/srv/pool", true, "ab", Vmdk);
        let raw = ImportKey::new("qemu+tls://a/system", "/srv/pool", true, "ab", Raw);
        assert_ne!(vmdk, raw, "a converted image is another image");
        assert_ne!(vmdk.image_name(), raw.image_name());
        assert_ne!(vmdk.marker_name(), raw.marker_name());
        assert_eq!(raw.download_name(), None);
        assert!(
            vmdk.download_name()
                .is_some_and(|d| d.ends_with(".vmdk.download"))
        );
    }
}
