//! A domain's definition, resolved for one host: what ferry asks a hypervisor to define.

/// Domain type: hardware virtualisation, or QEMU's software emulation (TCG).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum VirtType {
    /// `<domain type='kvm'>`: hardware virtualisation.
    Kvm,
    /// `<domain type='qemu'>`: software emulation (TCG), for hosts without usable KVM.
    Qemu,
}

impl VirtType {
    /// libvirt's name for it (`kvm`, `qemu`).
    pub fn as_str(self) -> &'static str {
        match self {
            VirtType::Kvm => "kvm",
            VirtType::Qemu => "qemu",
        }
    }
}

/// CPU model mode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum CpuModel {
    /// `host-model` (migratable between similar hosts).
    HostModel,
    /// `host-passthrough` (KVM only: libvirt refuses it for TCG domains).
    HostPassthrough,
    /// A named libvirt model (`custom` mode, `fallback='forbid'`).
    Named(String),
}

impl CpuModel {
    /// `host-model`, `host-passthrough` or the model's name.
    pub fn as_str(&self) -> &str {
        match self {
            CpuModel::HostModel => "host-model",
            CpuModel::HostPassthrough => "host-passthrough",
            CpuModel::Named(m) => m,
        }
    }
}

/// Disk bus, mirrored from the API so domain definitions need nothing from Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Bus {
    /// virtio-blk (`vdX`).
    Virtio,
    /// SATA on an AHCI controller (`sdX`).
    Sata,
    /// virtio-scsi (`sdX`, sharing the `sd` names with SATA).
    Scsi,
}

impl Bus {
    /// libvirt's name for it (`virtio`, `sata`, `scsi`).
    pub fn as_str(self) -> &'static str {
        match self {
            Bus::Virtio => "virtio",
            Bus::Sata => "sata",
            Bus::Scsi => "scsi",
        }
    }
}

/// Name of the cloud-init seed CD-ROM in a definition. Not a DNS label (`_`), so no spec disk
/// can have it.
pub const SEED_DISK: &str = "cloudinit_seed";

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
    /// Read-only device. On the SATA or SCSI bus this makes the device a CD-ROM (libvirt refuses
    /// read-only SATA disks).
    pub read_only: bool,
}

/// Where a NIC connects.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum NicSource {
    /// A libvirt virtual network (`<interface type='network'>`).
    Network(String),
    /// A host bridge (`<interface type='bridge'>`).
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
    /// Absolute path of the kernel on the host.
    pub kernel: String,
    /// Absolute path of the initrd on the host.
    pub initrd: Option<String>,
    /// Kernel command line.
    pub cmdline: Option<String>,
}

/// A graphical display of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Graphics {
    /// A VNC server that listens nowhere (`<listen type='none'/>`): no TCP port and no socket
    /// path on the host; only libvirt reaches it (`virDomainOpenGraphicsFD`), so no password is
    /// needed. Comes with a VGA video device.
    Vnc,
}

impl Graphics {
    /// libvirt's name for it (`vnc`).
    pub fn as_str(self) -> &'static str {
        match self {
            Graphics::Vnc => "vnc",
        }
    }
}

/// Everything needed to define a domain, resolved for one host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DomainDefinition {
    /// Domain name (`<namespace>_<name>`).
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
    /// KVM or TCG.
    pub virt_type: VirtType,
    /// Number of virtual CPUs (at least 1).
    pub vcpus: u32,
    /// CPU model.
    pub cpu_model: CpuModel,
    /// Guest memory in KiB (at least 1).
    pub memory_kib: u64,
    /// Disks, in the order the guest sees them (target names are derived per bus in this order).
    pub disks: Vec<DiskDef>,
    /// Network interfaces, in order.
    pub nics: Vec<NicDef>,
    /// Direct kernel boot; `None` boots the first disk.
    pub boot: Option<KernelBoot>,
    /// Whether the guest has a serial console (first serial port, also the domain's console):
    /// libvirt's console stream reaches it.
    pub serial_console: bool,
    /// File the serial console is logged to (appended); only with `serial_console`.
    pub console_log: Option<String>,
    /// The graphical display, if any.
    pub graphics: Option<Graphics>,
    /// Which VirtualMachine this domain belongs to.
    pub owner: Owner,
}

/// The VirtualMachine a domain belongs to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    /// Namespace of the VirtualMachine.
    pub namespace: String,
    /// Name of the VirtualMachine.
    pub name: String,
    /// UID of the VirtualMachine.
    pub uid: String,
}
