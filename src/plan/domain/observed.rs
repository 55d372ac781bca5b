//! What a host reports: its facts, its domains and their state, volumes, guest agents.

use super::definition::Owner;
use super::shape::Shape;

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
    /// Whether KVM can run x86_64 guests: libvirt offers `kvm` domains for x86_64 and the host
    /// CPU has VT-x or AMD-V (`vmx`/`svm`). A `/dev/kvm` without either (the `kvm_pvm` module of
    /// some cloud VMs, as on the lab machines) is not counted: it cannot boot a stock kernel.
    /// Still a heuristic from capabilities, not a boot test.
    pub kvm: bool,
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

/// What ferry writes into (and reads back from) a domain's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FerryMetadata {
    /// The VirtualMachine the domain belongs to.
    pub owner: Owner,
    /// Hash of the definition (all of it but the owner): equal hashes mean equal domains.
    pub definition_hash: String,
    /// Human-readable shape of the definition, to say what a restart would change.
    pub shape: Shape,
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
    /// Virtual CPUs of the domain (the running instance's when it runs).
    pub vcpus: u32,
    /// Maximum guest memory in KiB (the running instance's when it runs).
    pub memory_kib: u64,
    /// ferry metadata of the running instance, when the domain runs and was made by ferry.
    pub live: Option<FerryMetadata>,
    /// ferry metadata of the persistent definition, when made by ferry.
    pub config: Option<FerryMetadata>,
}

/// What a guest agent reports about the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestInfo {
    /// The OS's pretty name (`Debian GNU/Linux 12 (bookworm)`), when reported.
    pub os: Option<String>,
    /// Network interfaces with a MAC address, loopback left out.
    pub interfaces: Vec<GuestInterface>,
}

/// One guest network interface.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestInterface {
    /// Name inside the guest (`eth0`, `enp1s0`).
    pub name: String,
    /// MAC address, lower case.
    pub mac: String,
    /// Addresses, IPv4 first, without prefix length.
    pub addresses: Vec<String>,
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
