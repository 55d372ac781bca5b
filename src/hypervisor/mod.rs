//! The hypervisor layer: ferry's own view of a libvirt host, behind the [`Hypervisor`] trait.
//!
//! `libvirt` implements it over the `virt` crate (one thread per connection); `domain_xml`
//! turns a domain definition (`plan::domain`) into domain XML and reads ferry's metadata back,
//! without any I/O; `connections` keeps one open connection per host and opens every connection
//! ferry makes, through a [`Connector`].

mod change_counts;
pub mod connections;
pub mod console;
pub mod domain_xml;
pub mod fake;
mod gated;
pub mod libvirt;
pub mod migration;
mod xml;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use connections::{Connector, HostConnections, LibvirtConnector};
pub use console::{ConsoleKind, ConsoleStream};
pub use libvirt::LibvirtHost;
pub use migration::{JobProgress, MigrationRequest, StorageMode};

use crate::plan::domain::{DescribedDomain, DomainDefinition, FerryMetadata};
use crate::plan::load::DomainCounters;
// What the trait's calls return; they live in `plan::domain`. Re-exported while controllers
// import them from here.
pub use crate::plan::domain::{
    DomainInfo, DomainState, GuestInfo, GuestInterface, HostInfo, ShutOffReason, VolumeInfo,
};

/// Result of a hypervisor call.
pub type HvResult<T> = std::result::Result<T, HypervisorError>;

/// What went wrong talking to a host.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HypervisorError {
    /// The host could not be reached or the connection broke (daemon down, network, keepalive).
    /// The connection must be dropped and reopened.
    #[error("connection to {uri} lost: {message}")]
    ConnectionLost { uri: String, message: String },
    /// Connecting took longer than the configured timeout.
    #[error("connecting to {uri} timed out after {seconds}s")]
    ConnectTimeout { uri: String, seconds: u64 },
    /// The connection cannot be made with these credentials: the host refused ferry's (TLS client
    /// certificate, SSH key), ferry refused the host's (certificate or host key not trusted), or a
    /// credentials file is missing. `message` says which and what to fix; retrying does not help
    /// until the credentials change.
    #[error("connecting to {uri}: {message}")]
    Rejected { uri: String, message: String },
    /// The definition cannot be handed to the host as it is (a value the host's format cannot
    /// carry, a device name it does not accept): nothing was sent, and retrying does not help
    /// until the definition changes.
    #[error("{message}")]
    InvalidDefinition { message: String },
    /// This replica may not act on hosts now (its leader lease lapsed or went to another
    /// replica, see [`crate::gate`]): nothing was sent to the host.
    #[error("{operation} on {uri} withheld: {reason}")]
    Withheld {
        operation: &'static str,
        uri: String,
        reason: String,
    },
    /// The host answered but refused or failed the operation.
    #[error("{operation} failed: {message}")]
    OperationFailed {
        operation: &'static str,
        /// libvirt error code (`virErrorNumber`), 0 when not from libvirt.
        code: i32,
        message: String,
    },
}

/// libvirt error codes (`virErrorNumber`) ferry looks at; the full list is libvirt's
/// `virterror.h`.
pub mod error_code {
    /// `VIR_ERR_OPERATION_INVALID`: not possible in the object's current state.
    pub const OPERATION_INVALID: i32 = 55;
    /// `VIR_ERR_NO_DOMAIN`.
    pub const NO_DOMAIN: i32 = 42;
    /// `VIR_ERR_NO_STORAGE_POOL`.
    pub const NO_STORAGE_POOL: i32 = 49;
    /// `VIR_ERR_NO_STORAGE_VOL`.
    pub const NO_STORAGE_VOL: i32 = 50;
    /// `VIR_ERR_STORAGE_VOL_EXIST`: creating a volume whose name is taken.
    pub const STORAGE_VOL_EXIST: i32 = 90;
    /// `VIR_ERR_ARGUMENT_UNSUPPORTED`: e.g. a file descriptor asked for over a connection that
    /// cannot pass one.
    pub const ARGUMENT_UNSUPPORTED: i32 = 74;
    /// `VIR_ERR_RESOURCE_BUSY`: the lock manager holds a disk lease for another domain.
    pub const RESOURCE_BUSY: i32 = 87;
}

impl HypervisorError {
    /// Whether the connection is gone and must be reopened.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            HypervisorError::ConnectionLost { .. } | HypervisorError::ConnectTimeout { .. }
        )
    }

    /// Whether the host refused because a disk is locked by a domain running elsewhere: QEMU's
    /// own image locking ("Failed to get \"write\" lock"), or a lease of libvirt's lock manager
    /// (e.g. virtlockd on shared storage).
    pub fn is_disk_locked(&self) -> bool {
        matches!(
            self,
            HypervisorError::OperationFailed { code, message, .. }
                if *code == error_code::RESOURCE_BUSY
                    || message.contains("Lockspace resource")
                    || message.contains("Failed to acquire lock")
                    || message.contains("Failed to get \"write\" lock")
        )
    }

    /// Whether this replica withheld the call (see [`HypervisorError::Withheld`]).
    pub fn is_withheld(&self) -> bool {
        matches!(self, HypervisorError::Withheld { .. })
    }

    /// Whether the host answered that the domain, pool or volume does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            HypervisorError::OperationFailed { code, .. }
                if matches!(*code, error_code::NO_DOMAIN | error_code::NO_STORAGE_POOL | error_code::NO_STORAGE_VOL)
        )
    }
}

/// How to open and use a connection to one host.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Give up connecting after this long (libvirt itself waits 40–70 s for an unreachable host).
    pub connect_timeout: Duration,
    /// Give up on a single call after this long; the connection then counts as lost.
    pub call_timeout: Duration,
    /// Seconds between libvirt keepalive probes; 0 or less leaves keepalive off.
    pub keepalive_interval: i32,
    /// Unanswered keepalive probes before libvirt closes the connection: a dead host is noticed
    /// after `keepalive_interval × (keepalive_count + 1)` seconds.
    pub keepalive_count: u32,
    /// At most this many calls run at once for the host (a host starts several domains side by
    /// side); the others wait their turn. libvirtd serves only a few calls at once per client
    /// connection (`max_client_requests`, 5 by default), so calls beyond that many run on a
    /// further connection to the same host, opened the first time they do and closed with the
    /// first. Calls that last long
    /// (migrations, copies, uploads) take connections of their own.
    pub parallel_calls: usize,
    /// Told the duration and outcome of every call (for metrics). A [`HostConnections`] registry
    /// fills in its own observer when this is `None`.
    pub observer: Option<Arc<dyn CallObserver>>,
}

impl Default for ConnectOptions {
    /// 10 s to connect, 60 s per call, keepalive every 5 s with 3 misses allowed (the HostPool
    /// defaults), 8 calls at once.
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(60),
            keepalive_interval: 5,
            keepalive_count: 3,
            parallel_calls: 8,
            observer: None,
        }
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_count", &self.keepalive_count)
            .field("parallel_calls", &self.parallel_calls)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// Receives the latency of each hypervisor call, so the controller can export metrics without
/// this module depending on them.
pub trait CallObserver: Send + Sync {
    /// `op` is the operation (`"connect"`, `"define_domain"`, ...), `seconds` its duration as the
    /// caller saw it (queueing included), `ok` whether it succeeded.
    fn observe(&self, op: &'static str, seconds: f64, ok: bool);

    /// The host or the network ended the connection to `uri` (keepalive timeout, daemon gone, a
    /// call that failed or timed out); `reason` says which. Called once per connection, from
    /// whatever thread noticed (libvirt's event thread for the close callback): keep it short.
    fn connection_lost(&self, _uri: &str, _reason: &str) {}

    /// The domain with this UUID on the host at `uri` stopped, crashed, paused, resumed or was
    /// undefined (a libvirt lifecycle event). Called from libvirt's event thread: keep it short.
    fn domain_changed(&self, _uri: &str, _uuid: &str) {}

    /// Something about the domains of the host at `uri` changed: any lifecycle event (a domain
    /// defined, started, stopped, paused, resumed or undefined, by ferry or anyone else), so
    /// that what was read of the host's domains may be stale. Called from libvirt's event
    /// thread: keep it short.
    fn host_changed(&self, _uri: &str) {}
}

/// Any `Fn(op, seconds, ok)` closure is an observer.
impl<F> CallObserver for F
where
    F: Fn(&'static str, f64, bool) + Send + Sync,
{
    fn observe(&self, op: &'static str, seconds: f64, ok: bool) {
        self(op, seconds, ok)
    }
}

/// Chunks of a volume's content for [`Hypervisor::upload_volume`], produced on the connection's
/// thread (it may block waiting for the next chunk). An `Err` aborts the upload with that message.
pub type UploadSource = Box<dyn Iterator<Item = Result<Vec<u8>, String>> + Send>;

/// ferry's view of one libvirt host. Every call is bounded in time by the implementation and
/// reports a lost connection as [`HypervisorError::ConnectionLost`].
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// The URI this handle is connected to.
    fn uri(&self) -> &str;
    /// Whether the connection still looks usable: false once it was closed, a call found it
    /// lost, or libvirt reported it closed (keepalive, daemon gone). A `true` is no promise.
    fn is_connected(&self) -> bool {
        true
    }
    /// Why the connection was lost, when the host or the network ended it (not when ferry closed
    /// it): the registry then backs off before reconnecting instead of retrying at once.
    fn lost(&self) -> Option<HypervisorError> {
        None
    }
    /// Host facts; doubles as a liveness probe.
    async fn host_info(&self) -> HvResult<HostInfo>;
    /// The cheapest round trip to the host's daemon, touching no domain: a liveness probe that
    /// does not wait behind an operation on a domain (libvirt locks a domain while it destroys
    /// it, and a domain listing waits for that lock).
    async fn ping(&self) -> HvResult<()> {
        self.host_info().await.map(|_| ())
    }
    /// Every domain on the host, ferry's and others'.
    async fn list_domains(&self) -> HvResult<Vec<DomainInfo>>;
    /// The domain with this UUID, if the host has it.
    async fn lookup_domain(&self, uuid: &str) -> HvResult<Option<DomainInfo>>;
    /// The state of the domain with this UUID, if the host has it: what
    /// [`Hypervisor::lookup_domain`] reports as its state (which this default asks for); libvirt
    /// answers it with fewer calls to the host.
    async fn domain_state(&self, uuid: &str) -> HvResult<Option<DomainState>> {
        Ok(self.lookup_domain(uuid).await?.map(|d| d.state))
    }
    /// The domain called `name`, whoever made it, as its XML describes it (running instance and
    /// persistent definition), with its state; `None` when the host has no domain of that name.
    /// Reads only.
    async fn describe_domain(
        &self,
        _name: &str,
    ) -> HvResult<Option<(DescribedDomain, DomainState)>> {
        Err(unsupported("describe_domain"))
    }
    /// Write ferry's metadata into the domain (its running instance and its persistent
    /// definition), or remove it (`None`). Nothing else of the domain changes and the guest sees
    /// nothing. Safe to repeat.
    async fn set_metadata(&self, _uuid: &str, _meta: Option<&FerryMetadata>) -> HvResult<()> {
        Err(unsupported("set_metadata"))
    }
    /// Define (or redefine) a persistent domain from its definition. A running domain keeps
    /// running; the new definition applies at its next start. A definition the host's format
    /// cannot carry fails with [`HypervisorError::InvalidDefinition`] before anything is sent.
    async fn define_domain(&self, def: &DomainDefinition) -> HvResult<()>;
    /// Start a defined domain. Succeeds when it already runs.
    async fn start_domain(&self, uuid: &str) -> HvResult<()>;
    /// Ask the guest to shut down (ACPI power button). Succeeds when the domain is already off;
    /// the guest may ignore the request, so poll the state and destroy after a grace period.
    async fn shutdown_domain(&self, uuid: &str) -> HvResult<()>;
    /// Force a domain off. Succeeds when it is already off.
    async fn destroy_domain(&self, uuid: &str) -> HvResult<()>;
    /// Pause a running domain's vCPUs; it keeps its memory and devices. Succeeds when it is
    /// paused already.
    async fn pause_domain(&self, uuid: &str) -> HvResult<()>;
    /// Let a paused domain run again. Succeeds when it runs already.
    async fn resume_domain(&self, uuid: &str) -> HvResult<()>;
    /// Remove a domain's persistent definition, with its managed-save image and snapshot and
    /// checkpoint metadata. Succeeds when it is already gone (or only transient). A running domain
    /// keeps running as a transient one: destroy it first to remove it completely.
    async fn undefine_domain(&self, uuid: &str) -> HvResult<()>;
    /// Make sure the storage pool exists and is active; define a `dir` pool at `path` when it is
    /// missing and a path is given. Returns the pool's directory.
    async fn ensure_pool(&self, pool: &str, path: Option<&str>) -> HvResult<String>;
    /// A volume of a pool, if it exists (the pool is refreshed first).
    async fn lookup_volume(&self, pool: &str, name: &str) -> HvResult<Option<VolumeInfo>>;
    /// Create a qcow2 volume `name` in `pool` backed by `backing` (never written to), opened as
    /// `backing_format` (the caller's declaration, never what the host guessed: `backing.format`
    /// is not used), with the given virtual size (at least the backing volume's). Fails with code
    /// [`error_code::STORAGE_VOL_EXIST`] when the name is taken.
    async fn create_overlay(
        &self,
        pool: &str,
        name: &str,
        backing: &VolumeInfo,
        backing_format: &str,
        capacity: u64,
    ) -> HvResult<VolumeInfo>;
    /// The first `len` bytes of a volume (fewer when it is shorter), read through libvirt
    /// (`virStorageVolDownload`), so it works on remote hosts: enough to check an image's header
    /// before QEMU opens it.
    async fn read_volume_head(&self, pool: &str, name: &str, len: usize) -> HvResult<Vec<u8>>;
    /// `len` bytes of a volume from byte `offset` (fewer when it ends first), read through
    /// libvirt (`virStorageVolDownload`) as [`Hypervisor::read_volume_head`] does. Hosts that
    /// cannot read at an offset read only from 0.
    async fn read_volume(
        &self,
        pool: &str,
        name: &str,
        offset: u64,
        len: usize,
    ) -> HvResult<Vec<u8>> {
        if offset == 0 {
            self.read_volume_head(pool, name, len).await
        } else {
            Err(unsupported("read_volume"))
        }
    }
    /// Create volume `name` in `pool` as a standalone qcow2 copy of `source` (same pool): what the
    /// guest sees in `source`, backing chain included, copied by libvirt
    /// (`virStorageVolCreateXMLFrom`). A failed copy leaves nothing. It runs as long as the copy
    /// does, on the connection's own thread: use a connection of its own (with a long call
    /// timeout) for large volumes. Fails with code [`error_code::STORAGE_VOL_EXIST`] when the
    /// name is taken.
    async fn clone_volume(
        &self,
        pool: &str,
        name: &str,
        source: &VolumeInfo,
    ) -> HvResult<VolumeInfo>;
    /// Create volume `name` in `pool` (`capacity` bytes, raw) and fill it from `source` through a
    /// libvirt stream (`virStorageVolUpload`), so it works on remote hosts. The pool is refreshed
    /// afterwards, so a qcow2 image uploaded this way is reported as qcow2. If the source fails
    /// or libvirt does, the volume is deleted: nothing half-written stays. Fails with code
    /// [`error_code::STORAGE_VOL_EXIST`] when the name is taken. The upload runs on the
    /// connection's own thread: use a connection of its own (with a long call timeout) for large
    /// uploads.
    async fn upload_volume(
        &self,
        pool: &str,
        name: &str,
        capacity: u64,
        source: UploadSource,
    ) -> HvResult<VolumeInfo>;
    /// What the QEMU guest agent of a running domain reports, or `None` when the domain has no
    /// agent answering (not installed, not started yet, or no channel). Hosts that cannot ask
    /// an agent report `None`.
    async fn guest_info(&self, uuid: &str) -> HvResult<Option<GuestInfo>> {
        let _ = uuid;
        Ok(None)
    }
    /// The cumulative CPU time and resident memory of every running domain (for measured
    /// load). Hosts that cannot tell say so with an error.
    async fn domain_counters(&self) -> HvResult<Vec<DomainCounters>> {
        Err(unsupported("domain_counters"))
    }
    /// Delete a volume. Succeeds when it is already gone.
    async fn delete_volume(&self, pool: &str, name: &str) -> HvResult<()>;
    /// Live-migrate a running domain to another host (peer to peer), keeping it defined there
    /// and undefining it here once it runs there. Returns when the migration ended; an error
    /// means the domain stayed here (libvirt rolls back), but callers should check both hosts.
    /// Blocks this handle for the whole migration: use a connection of its own.
    async fn migrate(&self, _uuid: &str, _req: &MigrationRequest) -> HvResult<()> {
        Err(unsupported("migrate"))
    }
    /// Statistics of the domain's running job, `None` when it has none.
    async fn job_progress(&self, _uuid: &str) -> HvResult<Option<JobProgress>> {
        Err(unsupported("job_progress"))
    }
    /// Statistics of the domain's last completed job (on a migration's destination: downtime).
    async fn completed_job(&self, _uuid: &str) -> HvResult<Option<JobProgress>> {
        Err(unsupported("completed_job"))
    }
    /// Abort the domain's running job (a migration rolls back; the domain keeps running here).
    async fn abort_job(&self, _uuid: &str) -> HvResult<()> {
        Err(unsupported("abort_job"))
    }
    /// Set the longest pause the running migration may cause at switch-over, in milliseconds.
    async fn set_migration_max_downtime(&self, _uuid: &str, _ms: u64) -> HvResult<()> {
        Err(unsupported("set_migration_max_downtime"))
    }
    /// Switch the running migration (started with post-copy allowed) to post-copy.
    async fn start_post_copy(&self, _uuid: &str) -> HvResult<()> {
        Err(unsupported("start_post_copy"))
    }
    /// Open a console of a running domain. The serial console takes over from any other session
    /// and occupies this connection's thread until the stream ends: open it on a connection of
    /// its own ([`HostConnections::dedicated`]) and close that connection afterwards. The VNC
    /// display needs a connection that can pass file descriptors (a local unix socket); others
    /// fail with [`error_code::ARGUMENT_UNSUPPORTED`].
    async fn open_console(&self, _uuid: &str, _kind: ConsoleKind) -> HvResult<ConsoleStream> {
        Err(unsupported("open_console"))
    }
    /// Close the connection; later calls fail with `ConnectionLost`.
    async fn close(&self);
}

pub(crate) fn unsupported(operation: &'static str) -> HypervisorError {
    HypervisorError::OperationFailed {
        operation,
        code: 3,
        message: "not supported by this hypervisor handle".into(),
    }
}

impl std::fmt::Debug for dyn Hypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hypervisor")
            .field("uri", &self.uri())
            .field("connected", &self.is_connected())
            .finish()
    }
}
