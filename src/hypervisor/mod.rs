//! The hypervisor layer: ferry's own view of a libvirt host, behind the [`Hypervisor`] trait.
//!
//! `libvirt` implements it over the `virt` crate (one thread per connection); `domain_xml`
//! turns a VM spec into domain XML and reads ferry's metadata back, without any I/O.

pub mod connections;
pub mod domain_xml;
pub mod libvirt;

use async_trait::async_trait;

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
    /// The host answered but refused or failed the operation.
    #[error("{operation} failed: {message}")]
    OperationFailed {
        operation: &'static str,
        /// libvirt error code (`virErrorNumber`), 0 when not from libvirt.
        code: i32,
        message: String,
    },
}

impl HypervisorError {
    /// Whether the connection is gone and must be reopened.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            HypervisorError::ConnectionLost { .. } | HypervisorError::ConnectTimeout { .. }
        )
    }
}

/// Facts about a host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostInfo {
    /// Host name as libvirt reports it.
    pub hostname: String,
    /// libvirt daemon version, `major.minor.micro`.
    pub libvirt_version: String,
    /// Hypervisor (QEMU) version, `major.minor.micro`.
    pub hypervisor_version: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Memory in KiB.
    pub memory_kib: u64,
}

/// Run state of a domain, as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    /// Running (or blocked/idle: the guest is alive).
    Running,
    /// Paused by libvirt or a user (migration, I/O error, suspend).
    Paused,
    /// Being shut down.
    ShuttingDown,
    /// Shut off, with the reason.
    ShutOff(ShutOffReason),
    /// The guest crashed and libvirt kept the domain in that state.
    Crashed,
    /// Suspended to disk by the guest (pmsuspended).
    PmSuspended,
    /// Any state libvirt reports that ferry does not know.
    Unknown,
}

impl DomainState {
    /// Whether a QEMU process exists for the domain.
    pub fn is_active(self) -> bool {
        !matches!(self, DomainState::ShutOff(_))
    }
}

/// Why a domain is shut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutOffReason {
    /// The guest shut itself down.
    Shutdown,
    /// Forced off (by ferry or someone else).
    Destroyed,
    /// QEMU crashed or was killed.
    Crashed,
    /// Migrated away.
    Migrated,
    /// Saved to a file.
    Saved,
    /// Failed to start.
    Failed,
    /// Restored from a snapshot, or never started.
    Other,
}

/// A domain on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// Domain name.
    pub name: String,
    /// Domain UUID, lower-case hyphenated.
    pub uuid: String,
    /// Run state.
    pub state: DomainState,
    /// Whether the domain is persistent (defined), not only running.
    pub persistent: bool,
    /// ferry metadata of the running instance (live XML), when the domain runs and was made by ferry.
    pub live: Option<domain_xml::FerryMetadata>,
    /// ferry metadata of the persistent definition (inactive XML), when made by ferry.
    pub config: Option<domain_xml::FerryMetadata>,
}

/// A storage volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Volume name in its pool.
    pub name: String,
    /// Absolute path on the host.
    pub path: String,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// Format (`qcow2`, `raw`, ...), as libvirt reports it.
    pub format: String,
}

/// ferry's view of one libvirt host. Every call is bounded in time by the implementation and
/// reports a lost connection as [`HypervisorError::ConnectionLost`].
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// The URI this handle is connected to.
    fn uri(&self) -> &str;
    /// Host facts; doubles as a liveness probe.
    async fn host_info(&self) -> HvResult<HostInfo>;
    /// Every domain on the host, ferry's and others'.
    async fn list_domains(&self) -> HvResult<Vec<DomainInfo>>;
    /// The domain with this UUID, if the host has it.
    async fn lookup_domain(&self, uuid: &str) -> HvResult<Option<DomainInfo>>;
    /// Define (or redefine) a persistent domain from XML. A running domain keeps running; the new
    /// definition applies at its next start.
    async fn define_domain(&self, xml: &str) -> HvResult<()>;
    /// Start a defined domain.
    async fn start_domain(&self, uuid: &str) -> HvResult<()>;
    /// Ask the guest to shut down (ACPI power button).
    async fn shutdown_domain(&self, uuid: &str) -> HvResult<()>;
    /// Force a domain off. Succeeds when it is already off.
    async fn destroy_domain(&self, uuid: &str) -> HvResult<()>;
    /// Remove a domain's persistent definition (it must be off). Succeeds when it is already gone.
    async fn undefine_domain(&self, uuid: &str) -> HvResult<()>;
    /// Make sure the storage pool exists and is active; define a `dir` pool at `path` when it is
    /// missing and a path is given. Returns the pool's directory.
    async fn ensure_pool(&self, pool: &str, path: Option<&str>) -> HvResult<String>;
    /// A volume of a pool, if it exists (the pool is refreshed first).
    async fn lookup_volume(&self, pool: &str, name: &str) -> HvResult<Option<VolumeInfo>>;
    /// Create a qcow2 volume `name` in `pool` backed by `backing` (never written to), with the given
    /// virtual size (at least the backing volume's).
    async fn create_overlay(
        &self,
        pool: &str,
        name: &str,
        backing: &VolumeInfo,
        capacity: u64,
    ) -> HvResult<VolumeInfo>;
    /// Delete a volume. Succeeds when it is already gone.
    async fn delete_volume(&self, pool: &str, name: &str) -> HvResult<()>;
    /// Close the connection; later calls fail with `ConnectionLost`.
    async fn close(&self);
}
