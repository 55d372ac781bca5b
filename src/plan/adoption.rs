//! Adoption: what ferry makes of a libvirt domain it did not define.
//!
//! Everything here is pure. [`assess`] reads a domain's description (its running instance and
//! its persistent definition) and says what the domain is in ferry's terms, what the guest would
//! see differently after its first restart under ferry (`notes`), and what ferry cannot express
//! at all (`blockers`: nothing may be taken over then). [`spec_for`] turns the hardware into the
//! VirtualMachine spec that describes the domain as it runs; [`candidate`] into the entry a
//! HostPool's status lists for a domain its `spec.adoption.domains` names ([`allowed`]).

use crate::api::host_pool::AdoptionCandidate;
use crate::api::virtual_machine::RELEASE_ANNOTATION;
use crate::api::virtual_machine::{
    BootSpec, ConsolesSpec, CpuSpec, Disk, DiskBus, ImageFormat, Nic, NicModel, RunStrategy,
};
use crate::api::{HostPool, VirtualMachine, VirtualMachineSpec};
use crate::plan::capacity::quantity;
use crate::plan::domain::{
    Backing, Bus, CpuModel, DescribedDomain, DomainDescription, DomainState, KernelBoot, NicDef,
    NicSource,
};
use crate::plan::domain::{DomainInfo, FerryMetadata, Owner, Shape};
use crate::plan::{host_paths, naming};

/// What adoption needs to know of the HostPool the domain would join.
#[derive(Debug, Clone, Copy)]
pub struct PoolView<'a> {
    /// Directory of the pool's storage on the host (the HostPool's `storage.path`, or the
    /// libvirt pool's target path), when known.
    pub storage_dir: Option<&'a str>,
    /// The HostPool's golden images (`storage.images[].name`): never a `volume:` disk.
    pub golden_images: &'a [String],
    /// The HostPool's `boot.directories`.
    pub boot_dirs: &'a [String],
}

/// The facts of a HostPool that a [`PoolView`] borrows.
#[derive(Debug, Clone, Default)]
pub struct PoolFacts {
    /// See [`PoolView::storage_dir`].
    pub storage_dir: Option<String>,
    /// See [`PoolView::golden_images`].
    pub golden_images: Vec<String>,
    /// See [`PoolView::boot_dirs`].
    pub boot_dirs: Vec<String>,
}

impl PoolFacts {
    /// The facts of `pool`, whose storage is in `storage_dir` on the host (when known).
    pub fn of(pool: &HostPool, storage_dir: Option<String>) -> PoolFacts {
        PoolFacts {
            storage_dir,
            golden_images: pool
                .spec
                .storage
                .images
                .iter()
                .map(|i| i.name.clone())
                .collect(),
            boot_dirs: pool
                .spec
                .boot
                .as_ref()
                .map(|b| b.directories.clone())
                .unwrap_or_default(),
        }
    }

    /// The view [`assess`] and [`claim`] read.
    pub fn view(&self) -> PoolView<'_> {
        PoolView {
            storage_dir: self.storage_dir.as_deref(),
            golden_images: &self.golden_images,
            boot_dirs: &self.boot_dirs,
        }
    }
}

/// The definition hash ferry writes into a domain's metadata when it takes the domain over: no
/// definition of ferry's has it, so the VM controller's next look at the domain records the
/// hash of the VM's definition in its place (again without redefining it).
pub const TAKEN_OVER_HASH: &str = "taken-over";

/// The metadata that records `owner` owning a domain it took over (see [`TAKEN_OVER_HASH`]).
pub fn ownership(owner: Owner) -> FerryMetadata {
    FerryMetadata {
        owner,
        definition_hash: TAKEN_OVER_HASH.to_string(),
        shape: Shape::default(),
    }
}

/// Whether `patterns` (a HostPool's `spec.adoption.domains`: exact names, or prefixes ending in
/// `*`) name the domain `name`.
pub fn allowed(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

/// Why deleting `vm` may not release its domain (annotation `ferry.dev/release`), with what to
/// do instead; `None` when it may. Only a domain its HostPool (`pool`, `None` when it is gone)
/// names in `spec.adoption.domains` may leave ferry's management: which domains do is a
/// platform admin's decision.
pub fn release_refusal(vm: &VirtualMachine, pool: Option<&HostPool>) -> Option<String> {
    let domain = naming::vm_domain_name(vm);
    let undo = format!(
        "remove the annotation {RELEASE_ANNOTATION} to delete the VM with its domain and disks"
    );
    let Some(pool) = pool else {
        return Some(format!(
            "HostPool {} is gone, so nothing allows releasing domain {domain}; {undo}",
            vm.spec.host_pool
        ));
    };
    let patterns = pool
        .spec
        .adoption
        .as_ref()
        .map(|a| a.domains.as_slice())
        .unwrap_or_default();
    (!allowed(patterns, &domain)).then(|| {
        format!(
            "HostPool {} does not name domain {domain} in spec.adoption.domains: a platform admin decides which domains may leave ferry's management; {undo}",
            pool.metadata.name.as_deref().unwrap_or_default()
        )
    })
}

/// The status entry of HostPool `pool_name` for a domain in state `state`: what [`assess`] makes
/// of it, with the spec that describes it ([`spec_for`]) when it is adoptable.
pub fn candidate(
    d: &DescribedDomain,
    state: DomainState,
    pool: &PoolView,
    pool_name: &str,
) -> AdoptionCandidate {
    let a = assess(d, state, pool);
    let spec = a
        .hardware
        .as_ref()
        .and_then(|h| serde_json::to_value(spec_for(h, state, pool_name)).ok());
    let c = &d.current;
    AdoptionCandidate {
        name: c.name.clone(),
        uuid: c.uuid.clone(),
        state: match state {
            DomainState::Running => "Running",
            DomainState::ShutOff(_) => "ShutOff",
            DomainState::Paused => "Paused",
            _ => "Other",
        }
        .to_string(),
        adoptable: a.hardware.is_some(),
        cpus: i32::try_from(c.vcpus).unwrap_or(i32::MAX),
        memory: quantity(c.memory_kib.saturating_mul(1024)),
        volumes: a
            .hardware
            .iter()
            .flat_map(|h| h.disks.iter().map(|d| d.volume.clone()))
            .collect(),
        blockers: a.blockers,
        notes: a.notes,
        spec,
    }
}

/// A disk of an adopted domain, as a volume of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptedDisk {
    /// Name in the VM's spec (the guest's device name).
    pub name: String,
    /// Volume name (the file's name in the pool's directory).
    pub volume: String,
    /// Absolute path on the host.
    pub path: String,
    /// Format QEMU opens it in.
    pub format: ImageFormat,
    /// Bus.
    pub bus: Bus,
}

/// A domain's hardware in ferry's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardware {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// CPU model of the persistent definition.
    pub cpu_model: CpuModel,
    /// Guest memory (the maximum, not the balloon's current size).
    pub memory_kib: u64,
    /// Disks in the domain's order.
    pub disks: Vec<AdoptedDisk>,
    /// Network interfaces in the domain's order, named `net0`, `net1`, ...
    pub nics: Vec<NicDef>,
    /// Direct kernel boot; `None` boots the first disk.
    pub boot: Option<KernelBoot>,
    /// A serial console on a pty.
    pub serial_console: bool,
    /// A VNC display.
    pub vnc: bool,
}

/// What ferry makes of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assessment {
    /// The hardware, when ferry can express it (`blockers` is then empty).
    pub hardware: Option<Hardware>,
    /// What the guest will see differently after its first restart under ferry.
    pub notes: Vec<String>,
    /// Why ferry cannot adopt the domain as it is.
    pub blockers: Vec<String>,
}

/// The file name of `path` if it is a file directly inside `dir` (both normalized absolute
/// paths, compared as text as [`host_paths`] does: ferry does not resolve paths on the hosts).
pub(crate) fn file_in<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    let p = host_paths::segments(path).ok()?;
    let d = host_paths::segments(dir).ok()?;
    (p.len() == d.len() + 1 && host_paths::inside(&p, &d)).then(|| p[d.len()])
}

/// Whether `mac` is six hex octets with an even first octet, not all zeros (what the CRD
/// accepts for `networks[].mac`).
fn unicast_mac(mac: &str) -> bool {
    let octets: Vec<&str> = mac.split(':').collect();
    octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()))
        && u8::from_str_radix(octets[0], 16).is_ok_and(|b| b % 2 == 0)
        && octets.iter().any(|o| *o != "00")
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The hardware of one description, with notes and blockers.
fn hardware(d: &DomainDescription, pool: &PoolView) -> Assessment {
    let mut notes = Vec::new();
    let mut blockers = Vec::new();
    if d.arch != "x86_64" {
        blockers.push(format!(
            "architecture {}: ferry defines x86_64 domains",
            d.arch
        ));
    }
    if !matches!(d.virt_type.as_str(), "kvm" | "qemu") {
        blockers.push(format!(
            "domain type {}: ferry runs kvm and qemu domains",
            d.virt_type
        ));
    }
    let machine = d.machine.as_str();
    if machine.contains("q35") {
        blockers.push(format!(
            "machine type {machine}: ferry defines i440fx (pc) machines, and the guest would see another chipset"
        ));
    } else if !(machine.is_empty() || machine == "pc" || machine.starts_with("pc-i440fx")) {
        blockers.push(format!(
            "machine type {machine}: ferry defines i440fx (pc) machines"
        ));
    }
    if let Some(l) = &d.loader {
        blockers.push(format!(
            "firmware {l}: ferry boots the default BIOS (UEFI is not supported)"
        ));
    }
    let boot = match &d.kernel {
        Some(kernel) => {
            for (what, path) in [("kernel", Some(kernel)), ("initrd", d.initrd.as_ref())] {
                if let Some(p) = path
                    && let Err(e) = host_paths::check_file_within(
                        what,
                        p,
                        pool.boot_dirs,
                        "the HostPool's spec.boot.directories",
                    )
                {
                    blockers.push(e);
                }
            }
            Some(KernelBoot {
                kernel: kernel.clone(),
                initrd: d.initrd.clone(),
                cmdline: d.cmdline.clone(),
            })
        }
        None => {
            if let Some(dev) = d.boot_devices.iter().find(|b| *b != "hd") {
                blockers.push(format!(
                    "boots from {dev}: ferry boots the first disk or a kernel"
                ));
            }
            None
        }
    };
    let cpu_model = match (d.cpu_mode.as_deref(), d.cpu_model.as_deref()) {
        (Some("host-passthrough"), _) => CpuModel::HostPassthrough,
        (Some("host-model"), _) => CpuModel::HostModel,
        (Some("custom") | None, Some(m)) => CpuModel::Named(m.to_string()),
        (None, None) => {
            notes.push(
                "CPU: QEMU's default model now; host-model after a restart under ferry".into(),
            );
            CpuModel::HostModel
        }
        (Some(mode), _) => {
            blockers.push(format!(
                "CPU mode {mode}: ferry offers host-model, host-passthrough and named models"
            ));
            CpuModel::HostModel
        }
    };
    if let Some(cur) = d.vcpus_current {
        blockers.push(format!(
            "vCPU hot-plug ({cur} of {} vCPUs online): ferry gives a fixed number",
            d.vcpus
        ));
    }
    if d.vcpus == 0 || d.vcpus > 256 {
        blockers.push(format!("{} vCPUs: ferry allows 1 to 256", d.vcpus));
    }
    if d.cpu_topology {
        notes.push(format!(
            "CPU topology: {} single-core sockets after a restart under ferry",
            d.vcpus
        ));
    }
    let (min, max) = crate::plan::validate::MEMORY_RANGE;
    let bytes = d.memory_kib.saturating_mul(1024);
    if bytes < min || bytes > max {
        blockers.push(format!(
            "memory {} KiB: ferry allows 16Mi to 4Ti",
            d.memory_kib
        ));
    }
    if d.current_memory_kib < d.memory_kib {
        notes.push(format!(
            "balloon: the guest has {} KiB of {} KiB now, all of it after a restart under ferry",
            d.current_memory_kib, d.memory_kib
        ));
    }
    if let Some(offset) = d.clock_offset.as_deref().filter(|o| *o != "utc") {
        blockers.push(format!(
            "clock offset {offset}: ferry keeps the guest's clock in UTC"
        ));
    }

    let mut disks = Vec::new();
    for disk in &d.disks {
        let t = disk.target.as_str();
        if disk.source.is_none() && matches!(disk.device.as_str(), "cdrom" | "floppy") {
            notes.push(format!("empty {} drive {t}: left out", disk.device));
            continue;
        }
        if disk.device != "disk" {
            blockers.push(format!(
                "{t}: a {} with a medium (ferry attaches disks only)",
                disk.device
            ));
            continue;
        }
        if disk.kind != "file" {
            blockers.push(format!(
                "disk {t}: a {} disk (ferry attaches files of its storage pool)",
                disk.kind
            ));
            continue;
        }
        let Some(path) = disk.source.as_deref() else {
            blockers.push(format!("disk {t} has no source"));
            continue;
        };
        let volume = match pool.storage_dir {
            None => {
                blockers.push(format!(
                    "disk {t}: the directory of the HostPool's storage pool is not known on this host"
                ));
                continue;
            }
            Some(dir) => match file_in(path, dir) {
                Some(v) => v,
                None => {
                    blockers.push(format!(
                        "disk {t}: {path} is outside the HostPool's storage pool ({dir})"
                    ));
                    continue;
                }
            },
        };
        if let Some(kind) = naming::made_by_ferry(volume) {
            blockers.push(format!(
                "disk {t}: {volume} has the name ferry gives {kind}, which no VM may attach as its volume"
            ));
        }
        if pool.golden_images.iter().any(|i| i == volume) {
            blockers.push(format!(
                "disk {t}: {volume} is a golden image of the HostPool, which VMs only use read-only through an overlay"
            ));
        }
        let format = match disk.format.as_deref().unwrap_or("raw") {
            "raw" => ImageFormat::Raw,
            "qcow2" => ImageFormat::Qcow2,
            other => {
                blockers.push(format!(
                    "disk {t}: format {other} (ferry attaches qcow2 and raw)"
                ));
                ImageFormat::Raw
            }
        };
        let bus = match disk.bus.as_str() {
            "virtio" => Bus::Virtio,
            "sata" => Bus::Sata,
            "scsi" => Bus::Scsi,
            other => {
                blockers.push(format!(
                    "disk {t}: bus {other} (ferry offers virtio, sata and scsi)"
                ));
                Bus::Virtio
            }
        };
        match &disk.backing {
            Backing::Known(None) => {}
            Backing::Known(Some(b)) => blockers.push(format!(
                "disk {t} has the backing file {b}: ferry attaches no disk with a backing file (flatten it first, e.g. virsh blockpull)"
            )),
            Backing::Unknown => blockers.push(format!(
                "disk {t}: whether {path} has a backing file cannot be read on this host"
            )),
        }
        if disk.read_only || disk.shareable {
            blockers.push(format!(
                "disk {t} is read-only or shared: ferry attaches each disk read-write to one domain"
            ));
        }
        if !is_dns_label(t) {
            blockers.push(format!(
                "disk {t}: its device name is not usable as a disk name"
            ));
        }
        disks.push(AdoptedDisk {
            name: t.to_string(),
            volume: volume.to_string(),
            path: path.to_string(),
            format,
            bus,
        });
    }

    let mut nics = Vec::new();
    for (i, n) in d.nics.iter().enumerate() {
        let name = format!("net{i}");
        let source = match (n.kind.as_str(), &n.source) {
            ("bridge", Some(b)) => NicSource::Bridge(b.clone()),
            ("network", Some(net)) => NicSource::Network(net.clone()),
            (kind, _) => {
                blockers.push(format!(
                    "interface {name}: a {kind} interface (ferry connects to bridges and libvirt networks)"
                ));
                continue;
            }
        };
        let Some(mac) = n.mac.clone() else {
            blockers.push(format!("interface {name} has no MAC address"));
            continue;
        };
        if !unicast_mac(&mac) {
            blockers.push(format!(
                "interface {name}: MAC {mac} is not a unicast address ferry can keep"
            ));
        }
        let model = match n.model.as_deref() {
            Some(m @ ("virtio" | "e1000" | "rtl8139")) => m.to_string(),
            // libvirt's default for x86 guests; it fills the model in a running domain's XML.
            None => "rtl8139".to_string(),
            Some(m) => {
                blockers.push(format!(
                    "interface {name}: model {m} (ferry offers virtio, e1000 and rtl8139)"
                ));
                continue;
            }
        };
        nics.push(NicDef {
            name,
            mac,
            source,
            model,
        });
    }
    let vnc = d.graphics.iter().any(|g| g == "vnc");
    for g in &d.graphics {
        let after = if g == "vnc" {
            "a VNC display only ferry's console proxy reaches"
        } else {
            "a VNC display instead"
        };
        notes.push(format!(
            "{g} graphics: kept as it is while the domain runs; {after} after a restart under ferry"
        ));
    }
    let serial_console = d.serials.iter().any(|s| s == "serial pty");
    if serial_console {
        notes.push(
            "serial console: also logged to the HostPool's console directory after a restart under ferry"
                .into(),
        );
    }
    for p in &d.passthrough {
        blockers.push(format!(
            "{p}: host hardware or files passed through to the guest"
        ));
    }
    for o in &d.other_devices {
        notes.push(format!("{o}: left out after a restart under ferry"));
    }
    for t in &d.tuning {
        notes.push(format!("<{t}>: left out after a restart under ferry"));
    }
    let hardware = blockers.is_empty().then_some(Hardware {
        vcpus: d.vcpus,
        cpu_model,
        memory_kib: d.memory_kib,
        disks,
        nics,
        boot,
        serial_console,
        vnc,
    });
    Assessment {
        hardware,
        notes,
        blockers,
    }
}

/// What ferry makes of a domain found on a host of the pool in state `state`: its running
/// instance must be expressible, and its persistent definition must say the same (a transient
/// domain cannot be adopted: ferry's live migration and HA need a definition). The CPU model is
/// the persistent definition's: a running domain's XML shows `host-model` expanded into the
/// host's named model.
pub fn assess(d: &DescribedDomain, state: DomainState, pool: &PoolView) -> Assessment {
    let mut current = d.current.clone();
    if let Some(p) = &d.persistent {
        current.cpu_mode.clone_from(&p.cpu_mode);
        current.cpu_model.clone_from(&p.cpu_model);
    }
    let mut a = hardware(&current, pool);
    match state {
        DomainState::Running | DomainState::ShutOff(_) => {}
        other => a.blockers.push(format!(
            "the domain is {}: adopt it running or shut off",
            state_word(other)
        )),
    }
    match &d.persistent {
        None => a.blockers.push(
            "transient domain: define it persistently first (virsh dumpxml NAME > x.xml; virsh define x.xml)".into(),
        ),
        Some(p) if a.hardware.is_some() => {
            // Backing files are only known for the running instance; the rest must agree.
            let mut p = p.clone();
            for (pd, cd) in p.disks.iter_mut().zip(&d.current.disks) {
                pd.backing = cd.backing.clone();
            }
            if hardware(&p, pool).hardware != a.hardware {
                a.blockers.push(
                    "the persistent definition differs from the running domain: make them the same first (it would apply at the next restart)".into(),
                );
            }
        }
        Some(_) => {}
    }
    if !a.blockers.is_empty() {
        a.hardware = None;
    }
    a
}

fn state_word(s: DomainState) -> &'static str {
    match s {
        DomainState::Running => "running",
        DomainState::Paused => "paused",
        DomainState::ShuttingDown => "shutting down",
        DomainState::ShutOff(_) => "shut off",
        DomainState::Crashed => "crashed",
        DomainState::PmSuspended => "suspended by the guest",
        DomainState::Unknown => "in a state libvirt does not name",
    }
}

/// The VirtualMachine spec that describes `hw` in HostPool `pool`. A running domain gets
/// `runStrategy: Always`, a shut-off one `Halted`, so that the spec starts nothing.
pub fn spec_for(hw: &Hardware, state: DomainState, pool: &str) -> VirtualMachineSpec {
    let consoles = (!hw.serial_console || !hw.vnc).then_some(ConsolesSpec {
        serial: (!hw.serial_console).then_some(false),
        vnc: (!hw.vnc).then_some(false),
    });
    VirtualMachineSpec {
        run_strategy: Some(if state.is_active() {
            RunStrategy::Always
        } else {
            RunStrategy::Halted
        }),
        host_pool: pool.to_string(),
        class_name: None,
        cpu: Some(CpuSpec {
            cores: i32::try_from(hw.vcpus).unwrap_or(i32::MAX),
            model: match &hw.cpu_model {
                CpuModel::HostModel => None,
                m => Some(m.as_str().to_string()),
            },
        }),
        memory: Some(quantity(hw.memory_kib.saturating_mul(1024))),
        disks: hw
            .disks
            .iter()
            .map(|d| Disk {
                name: d.name.clone(),
                image: None,
                volume: Some(d.volume.clone()),
                format: Some(d.format),
                http: None,
                clone: None,
                size: None,
                bus: match d.bus {
                    Bus::Virtio => None,
                    Bus::Sata => Some(DiskBus::Sata),
                    Bus::Scsi => Some(DiskBus::Scsi),
                },
            })
            .collect(),
        networks: hw
            .nics
            .iter()
            .map(|n| {
                let (network, bridge) = match &n.source {
                    NicSource::Network(net) => (Some(net.clone()), None),
                    NicSource::Bridge(b) => (None, Some(b.clone())),
                };
                Nic {
                    name: n.name.clone(),
                    network,
                    bridge,
                    model: match n.model.as_str() {
                        "e1000" => Some(NicModel::E1000),
                        "rtl8139" => Some(NicModel::Rtl8139),
                        _ => None,
                    },
                    mac: Some(n.mac.clone()),
                }
            })
            .collect(),
        boot: hw.boot.as_ref().map(|b| BootSpec {
            kernel: b.kernel.clone(),
            initrd: b.initrd.clone(),
            cmdline: b.cmdline.clone(),
        }),
        placement: None,
        termination_grace_period_seconds: None,
        eviction_strategy: None,
        migration: None,
        cloud_init: None,
        consoles,
        adopt: None,
    }
}

/// What the VM's `spec` says differently from the domain's hardware `hw`, one line per field; empty
/// when the spec describes the domain as it runs (defaults as ferry applies them: virtio, raw,
/// both consoles).
pub fn spec_differences(spec: &VirtualMachineSpec, hw: &Hardware) -> Vec<String> {
    use crate::plan::quantity::parse_bytes;
    let want = spec_for(hw, DomainState::Running, &spec.host_pool);
    let mut out = Vec::new();
    let mut differ = |field: &str, spec_says: String, domain_has: String| {
        if spec_says != domain_has {
            out.push(format!(
                "{field}: the spec says {spec_says}, the domain has {domain_has}"
            ));
        }
    };
    let cpu = |s: &VirtualMachineSpec| s.cpu.as_ref().map(|c| (c.cores, c.model.clone()));
    differ(
        "spec.cpu",
        format!("{:?}", cpu(spec)),
        format!("{:?}", cpu(&want)),
    );
    let memory = |s: &VirtualMachineSpec| s.memory.as_deref().and_then(|m| parse_bytes(m).ok());
    differ(
        "spec.memory",
        format!("{:?}", memory(spec)),
        format!("{:?}", memory(&want)),
    );
    let disks = |s: &VirtualMachineSpec| -> Vec<String> {
        s.disks
            .iter()
            .map(|d| {
                format!(
                    "{} volume {:?} {} {:?}",
                    d.name,
                    d.volume,
                    d.format.unwrap_or(ImageFormat::Raw),
                    d.bus.unwrap_or_default()
                )
            })
            .collect()
    };
    differ(
        "spec.disks",
        format!("{:?}", disks(spec)),
        format!("{:?}", disks(&want)),
    );
    let nics = |s: &VirtualMachineSpec| -> Vec<String> {
        s.networks
            .iter()
            .map(|n| {
                format!(
                    "{:?} {:?}/{:?} {:?}",
                    n.mac.as_deref().map(str::to_ascii_lowercase),
                    n.network,
                    n.bridge,
                    n.model.unwrap_or_default()
                )
            })
            .collect()
    };
    differ(
        "spec.networks",
        format!("{:?}", nics(spec)),
        format!("{:?}", nics(&want)),
    );
    differ(
        "spec.boot",
        format!("{:?}", spec.boot),
        format!("{:?}", want.boot),
    );
    let consoles = |s: &VirtualMachineSpec| {
        (
            ConsolesSpec::serial_of(s.consoles.as_ref()),
            ConsolesSpec::vnc_of(s.consoles.as_ref()),
        )
    };
    differ(
        "spec.consoles (serial, vnc)",
        format!("{:?}", consoles(spec)),
        format!("{:?}", consoles(&want)),
    );
    if spec.cloud_init.is_some() {
        out.push("spec.cloudInit: the domain booted without ferry's seed; leave it out".into());
    }
    out
}

/// Whether a VM (UID `uid`) may take over the domain a host reports (`info`, its metadata) as
/// described (`described`), into HostPool `pool` whose `spec.adoption.domains` is `patterns`;
/// the domain's hardware when it may, else every reason why not. Nothing is taken over while
/// any reason stands.
#[allow(clippy::too_many_arguments)]
pub fn claim(
    patterns: &[String],
    domain: &str,
    uuid: &str,
    uid: &str,
    info: Option<&DomainInfo>,
    described: Option<(&DescribedDomain, DomainState)>,
    pool: &PoolView,
    spec: &VirtualMachineSpec,
) -> Result<Hardware, Vec<String>> {
    if !allowed(patterns, domain) {
        return Err(vec![format!(
            "the HostPool does not name domain {domain:?} in spec.adoption.domains: a platform admin decides which domains VirtualMachines of this namespace may adopt"
        )]);
    }
    let Some(info) = info else {
        return Err(vec![format!("the host has no domain with UUID {uuid}")]);
    };
    if info.name != domain {
        return Err(vec![format!(
            "the domain with UUID {uuid} is called {:?}, not {domain:?}",
            info.name
        )]);
    }
    if let Some(m) = [info.live.as_ref(), info.config.as_ref()]
        .into_iter()
        .flatten()
        .find(|m| m.owner.uid != uid)
    {
        return Err(vec![format!(
            "domain {domain:?} belongs to VirtualMachine {}/{}: ferry adopts only domains nobody owns",
            m.owner.namespace, m.owner.name
        )]);
    }
    let Some((d, state)) = described else {
        return Err(vec![format!("domain {domain:?} is gone from the host")]);
    };
    let a = assess(d, state, pool);
    let Some(hw) = a.hardware else {
        return Err(a.blockers);
    };
    let differences = spec_differences(spec, &hw);
    if differences.is_empty() {
        Ok(hw)
    } else {
        Err(differences)
    }
}

/// A VirtualMachine name from a domain name: lower case, other characters as `-`, at most 63.
pub fn vm_name(domain: &str) -> String {
    let s: String = domain
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let s = s.trim_matches('-');
    if s.is_empty() {
        "adopted".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests;
