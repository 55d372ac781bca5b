//! `import-ova`: an OVF descriptor read into the VirtualMachine that runs the appliance, with
//! what was not carried over said plainly.
//!
//! Carried over: the virtual system's name, its vCPUs and memory, its disks (each an `http` disk
//! taking its file out of the OVA, `archiveMember`, in the format the descriptor names) on the bus
//! nearest to their controller's, and its network adapters, each mapped to a network or bridge
//! of the pool by the caller. Everything else in the virtual hardware (CD/DVD and floppy drives,
//! USB, sound, serial ports, video settings, blank disks), vApp properties, EFI firmware and
//! MAC addresses is listed as not carried over. Guest drivers are not changed: a guest that
//! lacks drivers for the buses ferry gives it (virtio unless the descriptor says IDE, SATA or
//! SCSI, or `--disk-bus` says otherwise) does not boot.

use ferry::api::VirtualMachine;
use ferry::api::virtual_machine::{
    CpuSpec, Disk, DiskBus, HttpImage, Nic, NicModel, SourceFormat, VirtualMachineSpec,
};
use ferry::plan::xml_tree::{self, Element as Node};
use std::collections::BTreeMap;

/// The document's root element as a tree.
fn parse_tree(xml: &str) -> Result<Node, String> {
    xml_tree::parse(xml).map_err(|e| format!("the OVF descriptor is not well-formed XML: {e}"))
}

/// Where an OVF network is connected in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A libvirt network defined on every host.
    Network(String),
    /// A Linux bridge on every host.
    Bridge(String),
}

/// Parse `OVFNAME=NETWORK` or `OVFNAME=bridge:BRIDGE`.
pub fn network_mapping(arg: &str) -> Result<(String, Target), String> {
    let (ovf, to) = arg.rsplit_once('=').ok_or_else(|| {
        format!("--network {arg:?}: write OVFNAME=NETWORK or OVFNAME=bridge:BRIDGE")
    })?;
    if ovf.is_empty() || to.is_empty() {
        return Err(format!(
            "--network {arg:?}: write OVFNAME=NETWORK or OVFNAME=bridge:BRIDGE"
        ));
    }
    let target = match to.strip_prefix("bridge:") {
        Some(b) => Target::Bridge(b.to_string()),
        None => Target::Network(to.to_string()),
    };
    Ok((ovf.to_string(), target))
}

/// What the VirtualMachine is made for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The VM's name; default: the virtual system's, made a DNS label.
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub host_pool: String,
    /// Where the OVA is served, and its SHA-256.
    pub url: String,
    pub sha256: String,
    /// OVF network name to the pool's network or bridge.
    pub networks: BTreeMap<String, Target>,
    /// Every disk on this bus, whatever the descriptor says.
    pub disk_bus: Option<DiskBus>,
}

/// The VirtualMachine and what of the appliance it does not carry over.
#[derive(Debug)]
pub struct Mapped {
    pub vm: VirtualMachine,
    pub not_carried: Vec<String>,
    pub notes: Vec<String>,
}

/// CIM resource types (DMTF CIM_ResourceAllocationSettingData) the mapping reads.
mod rt {
    pub const PROCESSOR: u32 = 3;
    pub const MEMORY: u32 = 4;
    pub const IDE: u32 = 5;
    pub const SCSI: u32 = 6;
    pub const ETHERNET: u32 = 10;
    pub const FLOPPY: u32 = 14;
    pub const CD: u32 = 15;
    pub const DVD: u32 = 16;
    pub const DISK: u32 = 17;
    pub const OTHER_STORAGE: u32 = 20;
    pub const SERIAL: u32 = 21;
    pub const PARALLEL: u32 = 22;
    pub const USB: u32 = 23;
    pub const GRAPHICS: u32 = 24;
    pub const SOUND: u32 = 35;
}

/// What a resource type is, for the list of what was not carried over.
fn kind_of(t: u32, subtype: &str) -> String {
    match t {
        rt::FLOPPY => "floppy drive".into(),
        rt::CD | rt::DVD => "CD/DVD drive".into(),
        rt::SERIAL => "serial port".into(),
        rt::PARALLEL => "parallel port".into(),
        rt::USB => "USB controller".into(),
        rt::GRAPHICS => "video card (ferry gives every VM its own VNC display)".into(),
        rt::SOUND => "sound card".into(),
        _ if subtype.to_ascii_lowercase().contains("sound") => "sound card".into(),
        _ if !subtype.is_empty() => format!("device of type {t} ({subtype})"),
        _ => format!("device of type {t}"),
    }
}

/// Bytes in one `unit` (`byte * 2^20`, `MegaBytes`, `MB`, `KiloBytes`, `GigaBytes`, …).
fn unit_bytes(unit: &str) -> Option<u64> {
    let u: String = unit.chars().filter(|c| !c.is_whitespace()).collect();
    let u = u.to_ascii_lowercase();
    if let Some(rest) = u.strip_prefix("byte*") {
        let (base, exp) = rest.split_once('^')?;
        let (base, exp): (u64, u32) = (base.parse().ok()?, exp.parse().ok()?);
        return base.checked_pow(exp);
    }
    Some(match u.as_str() {
        "byte" | "bytes" | "b" => 1,
        "kilobytes" | "kb" | "kib" => 1 << 10,
        "megabytes" | "mb" | "mib" => 1 << 20,
        "gigabytes" | "gb" | "gib" => 1 << 30,
        "terabytes" | "tb" | "tib" => 1 << 40,
        _ => return None,
    })
}

/// `bytes` as a Kubernetes quantity: `Gi` or `Mi` when whole, else `Ki`.
fn quantity(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{}Gi", bytes >> 30)
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{}Mi", bytes >> 20)
    } else {
        format!("{}Ki", bytes.div_ceil(1 << 10))
    }
}

/// `name` as a DNS label (lower case, `-` for anything else, at most 63 characters).
pub fn dns_label(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out.trim_matches('-').chars().take(63).collect();
    out.trim_end_matches('-').to_string()
}

/// The format of a disk file from the descriptor's `format` URI, else from its name.
fn disk_format(format_uri: &str, href: &str) -> Option<SourceFormat> {
    let uri = format_uri.to_ascii_lowercase();
    let by_uri = if uri.contains("vmdk") {
        Some(SourceFormat::Vmdk)
    } else if uri.contains("qcow") {
        Some(SourceFormat::Qcow2)
    } else if uri.contains("vhdx") {
        Some(SourceFormat::Vhdx)
    } else if uri.contains("vhd") {
        Some(SourceFormat::Vpc)
    } else if uri.contains("vdi") {
        Some(SourceFormat::Vdi)
    } else if uri.contains("raw") {
        Some(SourceFormat::Raw)
    } else {
        None
    };
    by_uri.or_else(|| {
        let ext = href.rsplit_once('.')?.1.to_ascii_lowercase();
        Some(match ext.as_str() {
            "vmdk" => SourceFormat::Vmdk,
            "qcow2" => SourceFormat::Qcow2,
            "vhdx" => SourceFormat::Vhdx,
            "vhd" => SourceFormat::Vpc,
            "vdi" => SourceFormat::Vdi,
            "img" | "raw" => SourceFormat::Raw,
            _ => return None,
        })
    })
}

/// A `rasd` item of the virtual hardware.
struct Item<'a> {
    node: &'a Node,
    kind: u32,
}

impl Item<'_> {
    fn text(&self, name: &str) -> String {
        self.node.text_of(name).unwrap_or_default()
    }
    fn label(&self) -> String {
        let l = self.text("ElementName");
        if l.is_empty() {
            self.text("Caption")
        } else {
            l
        }
    }
}

/// The VirtualMachine for the appliance described by `ovf` (the descriptor's text), served as
/// an OVA at `opts.url`.
pub fn map(ovf: &str, opts: &Options) -> Result<Mapped, String> {
    let root = parse_tree(ovf)?;
    if root.name != "Envelope" {
        return Err(format!(
            "the descriptor's root element is <{}>, not an OVF <Envelope>",
            root.name
        ));
    }
    if root.child("VirtualSystemCollection").is_some() {
        return Err(
            "the OVA describes a collection of virtual systems (a vApp): import-ova makes one VirtualMachine from an OVA with one virtual system"
                .into(),
        );
    }
    let system = match root
        .children("VirtualSystem")
        .collect::<Vec<_>>()
        .as_slice()
    {
        [one] => *one,
        [] => return Err("the OVF descriptor has no VirtualSystem".into()),
        many => {
            return Err(format!(
                "the OVF descriptor has {} virtual systems: import-ova makes one VirtualMachine from an OVA with one",
                many.len()
            ));
        }
    };
    let mut not_carried = Vec::new();
    let mut notes = Vec::new();

    // Files and disks.
    let files: BTreeMap<&str, &Node> = root
        .child("References")
        .into_iter()
        .flat_map(|r| r.children("File"))
        .filter_map(|f| Some((f.attr("id")?, f)))
        .collect();
    let disks: BTreeMap<&str, &Node> = root
        .child("DiskSection")
        .into_iter()
        .flat_map(|d| d.children("Disk"))
        .filter_map(|d| Some((d.attr("diskId")?, d)))
        .collect();

    let hardware = system
        .child("VirtualHardwareSection")
        .ok_or("the virtual system has no VirtualHardwareSection")?;
    let items: Vec<Item> = hardware
        .children
        .iter()
        .filter(|n| matches!(n.name.as_str(), "Item" | "StorageItem" | "EthernetPortItem"))
        .map(|node| Item {
            node,
            kind: node
                .text_of("ResourceType")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
        })
        .collect();
    let controllers: BTreeMap<String, &Item> = items
        .iter()
        .filter(|i| matches!(i.kind, rt::IDE | rt::SCSI | rt::OTHER_STORAGE))
        .map(|i| (i.text("InstanceID"), i))
        .collect();

    let mut cores = None;
    let mut memory = None;
    let mut vm_disks = Vec::new();
    let mut nics = Vec::new();
    let mut networks_used = Vec::new();
    for item in &items {
        match item.kind {
            rt::PROCESSOR => {
                let n: i32 = item
                    .text("VirtualQuantity")
                    .parse()
                    .map_err(|_| "the processor item has no VirtualQuantity".to_string())?;
                cores = Some(n);
            }
            rt::MEMORY => {
                let n: u64 = item
                    .text("VirtualQuantity")
                    .parse()
                    .map_err(|_| "the memory item has no VirtualQuantity".to_string())?;
                let unit = item.text("AllocationUnits");
                let unit = if unit.is_empty() {
                    "byte * 2^20".to_string()
                } else {
                    unit
                };
                let per = unit_bytes(&unit)
                    .ok_or_else(|| format!("the memory item's unit {unit:?} is unknown"))?;
                memory = Some(
                    n.checked_mul(per)
                        .ok_or("the memory item's size is too large")?,
                );
            }
            rt::IDE | rt::SCSI | rt::OTHER_STORAGE => {}
            rt::DISK => {
                let host = item.text("HostResource");
                let id = host
                    .strip_prefix("ovf:/disk/")
                    .or_else(|| host.strip_prefix("/disk/"))
                    .ok_or_else(|| {
                        format!(
                            "disk {:?} names {host:?}, not a disk of the DiskSection",
                            item.label()
                        )
                    })?;
                let disk = disks.get(id).ok_or_else(|| {
                    format!(
                        "disk {:?} names disk {id:?}, which the DiskSection lacks",
                        item.label()
                    )
                })?;
                let Some(file_ref) = disk.attr("fileRef") else {
                    not_carried.push(format!(
                        "disk {:?}: a blank disk (no file in the OVA); add a volume: disk for it",
                        item.label()
                    ));
                    continue;
                };
                let file = files.get(file_ref).ok_or_else(|| {
                    format!("disk {id:?} names file {file_ref:?}, which References lacks")
                })?;
                let href = file.attr("href").unwrap_or_default();
                if href.is_empty() || href.contains("://") {
                    return Err(format!(
                        "disk {id:?}'s file {href:?} is not in the OVA: only disks inside the archive are imported"
                    ));
                }
                if file.attr("compression").is_some_and(|c| c != "identity") {
                    return Err(format!(
                        "disk file {href:?} is compressed ({}): import-ova imports uncompressed OVAs; repack it without compression",
                        file.attr("compression").unwrap_or_default()
                    ));
                }
                if file.attr("chunkSize").is_some() {
                    return Err(format!(
                        "disk file {href:?} is split into chunks: import-ova imports OVAs whose disks are whole files"
                    ));
                }
                let format = disk_format(disk.attr("format").unwrap_or_default(), href)
                    .ok_or_else(|| {
                        format!(
                            "disk file {href:?}: its format {:?} is not one ferry imports (vmdk, vhdx, vdi, vpc, qcow2, raw)",
                            disk.attr("format").unwrap_or_default()
                        )
                    })?;
                let parent = controllers.get(&item.text("Parent"));
                let bus = opts.disk_bus.unwrap_or(match parent.map(|c| c.kind) {
                    Some(rt::IDE) => DiskBus::Sata,
                    Some(rt::SCSI) => DiskBus::Scsi,
                    Some(rt::OTHER_STORAGE) => {
                        let sub = parent
                            .map(|c| c.text("ResourceSubType"))
                            .unwrap_or_default();
                        if sub.to_ascii_lowercase().contains("virtio") {
                            DiskBus::Virtio
                        } else {
                            DiskBus::Sata
                        }
                    }
                    _ => DiskBus::Virtio,
                });
                if let Some(c) = parent
                    && opts.disk_bus.is_none()
                    && matches!(c.kind, rt::IDE | rt::SCSI)
                {
                    let sub = c.text("ResourceSubType");
                    notes.push(format!(
                        "disk {:?} was on {} controller{}: it is attached as {}",
                        item.label(),
                        if c.kind == rt::IDE {
                            "an IDE"
                        } else {
                            "a SCSI"
                        },
                        if sub.is_empty() {
                            String::new()
                        } else {
                            format!(" ({sub})")
                        },
                        match bus {
                            DiskBus::Sata => "SATA",
                            DiskBus::Scsi => "virtio-scsi",
                            DiskBus::Virtio => "virtio",
                        }
                    ));
                }
                vm_disks.push(Disk {
                    name: format!("disk{}", vm_disks.len()),
                    image: None,
                    volume: None,
                    format: None,
                    http: Some(HttpImage {
                        url: opts.url.clone(),
                        sha256: opts.sha256.clone(),
                        format: Some(format),
                        archive_member: Some(href.to_string()),
                    }),
                    clone: None,
                    size: None,
                    bus: (bus != DiskBus::Virtio).then_some(bus),
                });
            }
            rt::ETHERNET => {
                let network = item.text("Connection");
                let label = item.label();
                let name = format!("eth{}", nics.len());
                let target = opts.networks.get(&network).ok_or_else(|| {
                    format!(
                        "network adapter {label:?} is connected to OVF network {network:?}, which no --network maps: add --network {network:?}=NETWORK (a libvirt network of the pool's hosts) or --network {network:?}=bridge:BRIDGE"
                    )
                })?;
                networks_used.push(network.clone());
                let sub = item.text("ResourceSubType");
                let lower = sub.to_ascii_lowercase();
                let model = if lower.starts_with("e1000") {
                    Some(NicModel::E1000)
                } else if lower.contains("virtio") || lower.is_empty() {
                    None
                } else {
                    notes.push(format!(
                        "network adapter {label:?} was a {sub} adapter: it is a virtio adapter now (the guest needs virtio-net drivers; set model: e1000 otherwise)"
                    ));
                    None
                };
                if !item.text("Address").is_empty() {
                    notes.push(format!(
                        "network adapter {label:?}: its MAC address {} is not carried over (ferry picks one; set mac to keep it, if the original VM no longer runs)",
                        item.text("Address")
                    ));
                }
                let (network, bridge) = match target {
                    Target::Network(n) => (Some(n.clone()), None),
                    Target::Bridge(b) => (None, Some(b.clone())),
                };
                nics.push(Nic {
                    name,
                    network,
                    bridge,
                    model,
                    mac: None,
                });
            }
            other => not_carried.push(format!(
                "{} {:?}",
                kind_of(other, &item.text("ResourceSubType")),
                item.label()
            )),
        }
    }
    for ovf_net in opts.networks.keys() {
        if !networks_used.contains(ovf_net) {
            let known: Vec<String> = root
                .child("NetworkSection")
                .into_iter()
                .flat_map(|n| n.children("Network"))
                .filter_map(|n| n.attr("name").map(|s| format!("{s:?}")))
                .collect();
            return Err(format!(
                "--network maps {ovf_net:?}, to which no network adapter of the appliance is connected (its networks: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    let cores = cores.ok_or("the virtual hardware has no processor item")?;
    let memory = memory.ok_or("the virtual hardware has no memory item")?;
    if vm_disks.is_empty() {
        return Err("the appliance has no disk with a file in the OVA: nothing to boot".into());
    }
    if vm_disks.len() > 1 {
        notes.push(format!(
            "{} disks: the first (disk0, {:?}) boots",
            vm_disks.len(),
            vm_disks[0]
                .http
                .as_ref()
                .and_then(|h| h.archive_member.clone())
                .unwrap_or_default()
        ));
    }

    // Firmware, vApp properties, other sections.
    let config = |key: &str| {
        hardware
            .children("Config")
            .chain(hardware.children("ExtraConfig"))
            .find(|c| c.attr("key") == Some(key))
            .and_then(|c| c.attr("value"))
            .map(str::to_string)
    };
    if config("firmware").is_some_and(|f| f.eq_ignore_ascii_case("efi")) {
        not_carried.push(
            "EFI firmware: ferry boots the VM with BIOS; an appliance installed for EFI may not boot"
                .into(),
        );
    }
    for section in &system.children {
        match section.name.as_str() {
            "ProductSection" if section.child("Property").is_some() => not_carried.push(
                "vApp properties (ProductSection): pass such settings with cloudInit instead"
                    .into(),
            ),
            "EulaSection" => notes.push(
                "the appliance comes with a license agreement (EulaSection): read it in the OVF descriptor"
                    .into(),
            ),
            _ => {}
        }
    }

    let name = match &opts.name {
        Some(n) => n.clone(),
        None => {
            let from = system
                .text_of("Name")
                .or_else(|| system.attr("id").map(str::to_string))
                .unwrap_or_default();
            let label = dns_label(&from);
            if label.is_empty() {
                return Err(format!(
                    "the virtual system's name {from:?} makes no Kubernetes name: give --name"
                ));
            }
            label
        }
    };
    let spec = VirtualMachineSpec {
        run_strategy: None,
        host_pool: opts.host_pool.clone(),
        class_name: None,
        cpu: Some(CpuSpec { cores, model: None }),
        memory: Some(quantity(memory)),
        disks: vm_disks,
        networks: nics,
        boot: None,
        placement: None,
        termination_grace_period_seconds: None,
        eviction_strategy: None,
        migration: None,
        cloud_init: None,
        consoles: None,
        adopt: None,
    };
    let mut vm = VirtualMachine::new(&name, spec);
    vm.metadata.namespace = opts.namespace.clone();
    Ok(Mapped {
        vm,
        not_carried,
        notes,
    })
}

/// The manifest as YAML, after a comment that says where it comes from and what was not
/// carried over.
pub fn render(m: &Mapped, source: &str) -> Result<String, String> {
    let mut out =
        format!("# VirtualMachine for the appliance {source}, made by kubectl ferry import-ova.\n");
    out.push_str("# Guest drivers are not changed (virt-v2v is not used): the guest needs drivers for\n# the disk and network buses below.\n");
    if !m.not_carried.is_empty() {
        out.push_str("# Not carried over:\n");
        for n in &m.not_carried {
            out.push_str(&format!("#   - {n}\n"));
        }
    }
    if !m.notes.is_empty() {
        out.push_str("# Changed:\n");
        for n in &m.notes {
            out.push_str(&format!("#   - {n}\n"));
        }
    }
    let yaml =
        serde_yaml::to_string(&m.vm).map_err(|e| format!("cannot encode the manifest: {e}"))?;
    out.push_str(&yaml);
    Ok(out)
}

#[cfg(test)]
mod tests;
