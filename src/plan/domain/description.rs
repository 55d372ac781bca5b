//! A domain ferry did not define, as its XML describes it: what adoption reads to decide whether
//! ferry can express it and what a VirtualMachine for it looks like.

/// One disk (`<disk>`) of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescribedDisk {
    /// `<target dev>` (`vda`, `sdb`).
    pub target: String,
    /// `<disk device>`: `disk`, `cdrom`, `floppy`, `lun`.
    pub device: String,
    /// `<disk type>`: `file`, `block`, `network`, `volume`, `dir`.
    pub kind: String,
    /// `<source file>` (or `dev`, `name`, `volume`); `None` for an empty drive.
    pub source: Option<String>,
    /// `<driver type>` (`qcow2`, `raw`, ...).
    pub format: Option<String>,
    /// `<target bus>` (`virtio`, `sata`, `scsi`, `ide`, `usb`).
    pub bus: String,
    /// `<readonly/>`.
    pub read_only: bool,
    /// `<shareable/>`.
    pub shareable: bool,
    /// The first backing file, when the domain's XML says (a running domain's always does:
    /// `Known(None)` is "no backing file").
    pub backing: Backing,
}

/// What a domain's XML says about a disk's backing chain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backing {
    /// The XML does not say (a definition that is not running).
    #[default]
    Unknown,
    /// It says: no backing file (`None`), or this one.
    Known(Option<String>),
}

/// One network interface (`<interface>`) of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescribedNic {
    /// `<interface type>`: `bridge`, `network`, `direct`, `user`, `hostdev`, ...
    pub kind: String,
    /// `<source bridge>` or `<source network>` (or `dev` for others).
    pub source: Option<String>,
    /// `<mac address>`, lower case.
    pub mac: Option<String>,
    /// `<model type>`.
    pub model: Option<String>,
}

/// A domain's definition in the terms adoption reasons about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DomainDescription {
    /// `<name>`.
    pub name: String,
    /// `<uuid>`, lower case.
    pub uuid: String,
    /// `<domain type>` (`kvm`, `qemu`).
    pub virt_type: String,
    /// `<os><type arch>`.
    pub arch: String,
    /// `<os><type machine>` (`pc-i440fx-7.2`, `pc-q35-7.2`).
    pub machine: String,
    /// `<os><loader>` (UEFI firmware and the like).
    pub loader: Option<String>,
    /// `<os><boot dev>` in order.
    pub boot_devices: Vec<String>,
    /// `<os><kernel>`, `<initrd>`, `<cmdline>`.
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    /// `<vcpu>` (the maximum) and its `current` attribute when it differs.
    pub vcpus: u32,
    pub vcpus_current: Option<u32>,
    /// `<cpu mode>` (`host-model`, `host-passthrough`, `custom`, `maximum`) and `<model>`.
    pub cpu_mode: Option<String>,
    pub cpu_model: Option<String>,
    /// `<cpu><topology>` is given.
    pub cpu_topology: bool,
    /// `<memory>` and `<currentMemory>`, in KiB.
    pub memory_kib: u64,
    pub current_memory_kib: u64,
    /// `<clock offset>`.
    pub clock_offset: Option<String>,
    pub disks: Vec<DescribedDisk>,
    pub nics: Vec<DescribedNic>,
    /// `<graphics type>` of each graphics device (`vnc`, `spice`).
    pub graphics: Vec<String>,
    /// `<serial type>` / `<console type>` of each serial device.
    pub serials: Vec<String>,
    /// Devices that pass host hardware or host files through to the guest (`hostdev`,
    /// `filesystem`, `redirdev`, `smartcard`, `shmem`, `tpm`, `vsock`, ...), by element name and
    /// type.
    pub passthrough: Vec<String>,
    /// Other devices ferry's definitions do not have (`sound`, `video`, `input`, ...), by
    /// element name and type.
    pub other_devices: Vec<String>,
    /// `<numatune>`, `<memoryBacking>` and the like: placement or memory settings, by element.
    pub tuning: Vec<String>,
}

/// What a host says about a domain: its running instance and its persistent definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedDomain {
    /// The running instance's XML (the persistent definition's when the domain does not run).
    pub current: DomainDescription,
    /// The persistent definition's XML; `None` for a transient domain.
    pub persistent: Option<DomainDescription>,
}
