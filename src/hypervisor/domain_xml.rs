//! Pure translation between a resolved VM definition and libvirt domain XML.
//!
//! XML is written with `quick-xml`'s writer (never string formatting), so names, paths and values
//! coming from users are escaped. ferry marks its domains with a `<metadata>` element in its own
//! namespace; [`parse_metadata`] reads it back to recognise them and to see which definition a
//! running domain was started with.

/// XML namespace of ferry's domain metadata.
pub const METADATA_NS: &str = "https://ferry.dev/xmlns/domain/1";

/// Domain type: hardware virtualisation, or QEMU's software emulation (TCG).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum VirtType {
    Kvm,
    Qemu,
}

/// CPU model mode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum CpuModel {
    /// `host-model` (migratable between similar hosts).
    HostModel,
    /// `host-passthrough`.
    HostPassthrough,
    /// A named libvirt model (`custom` mode).
    Named(String),
}

/// Disk bus, mirrored from the API so this module needs nothing from Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Bus {
    Virtio,
    Sata,
    Scsi,
}

/// One disk, resolved to a path on the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DiskDef {
    /// Name from the spec (becomes the device alias `ua-<name>`).
    pub name: String,
    /// Absolute path of the volume on the host.
    pub path: String,
    /// Image format (`qcow2`, `raw`).
    pub format: String,
    /// Bus.
    pub bus: Bus,
    /// Read-only device.
    pub read_only: bool,
}

/// Where a NIC connects.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum NicSource {
    Network(String),
    Bridge(String),
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NicDef {
    /// Name from the spec (becomes the device alias `ua-<name>`).
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// Where it connects.
    pub source: NicSource,
    /// Device model (`virtio`, `e1000`, `rtl8139`).
    pub model: String,
}

/// Direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KernelBoot {
    pub kernel: String,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
}

/// Everything needed to write a domain's XML, resolved for one host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DomainDefinition {
    /// Domain name (`<namespace>_<name>`).
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
    pub virt_type: VirtType,
    pub vcpus: u32,
    pub cpu_model: CpuModel,
    pub memory_kib: u64,
    pub disks: Vec<DiskDef>,
    pub nics: Vec<NicDef>,
    pub boot: Option<KernelBoot>,
    /// File the serial console is logged to (appended).
    pub console_log: Option<String>,
    /// Which VirtualMachine this domain belongs to.
    pub owner: Owner,
}

/// The VirtualMachine a domain belongs to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What ferry writes into (and reads back from) a domain's `<metadata>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FerryMetadata {
    pub owner: Owner,
    /// Hash of the definition (all of it but the metadata): equal hashes mean equal domains.
    pub definition_hash: String,
    /// Human-readable shape of the definition, to say what a restart would change.
    pub shape: Shape,
}

/// The parts of a definition a person recognises: used to explain `RestartRequired`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shape {
    pub vcpus: u32,
    pub memory_kib: u64,
    /// `name=path` per disk, in order.
    pub disks: Vec<String>,
    /// `name=mac@source` per NIC, in order.
    pub nics: Vec<String>,
    /// Kernel boot summary, empty when booting from disk.
    pub boot: String,
}
