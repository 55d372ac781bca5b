//! Pure translation between a resolved VM definition and libvirt domain XML.
//!
//! XML is written with `quick-xml`'s writer (never string formatting), so names, paths and values
//! coming from users are escaped. ferry marks its domains with a `<metadata>` element in its own
//! namespace; [`parse_metadata`] reads it back to recognise them and to see which definition a
//! running domain was started with.
//!
//! Nothing here does I/O: the functions are total over their input and are tested against golden
//! files and against the XML libvirt itself returns.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Cursor;

use quick_xml::Writer;
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::name::{Namespace, QName, ResolveResult};
use quick_xml::reader::NsReader;

/// XML namespace of ferry's domain metadata.
pub const METADATA_NS: &str = "https://ferry.dev/xmlns/domain/1";

/// Prefix ferry writes for [`METADATA_NS`]. Readers must not rely on it: libvirt may re-serialize
/// the element with another prefix, so [`parse_metadata`] matches the namespace, not the prefix.
const METADATA_PREFIX: &str = "ferry";

/// Name of the QEMU guest agent's virtio-serial channel.
pub const GUEST_AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

/// Domain type: hardware virtualisation, or QEMU's software emulation (TCG).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum VirtType {
    /// `<domain type='kvm'>`: hardware virtualisation.
    Kvm,
    /// `<domain type='qemu'>`: software emulation (TCG), for hosts without usable KVM.
    Qemu,
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

/// Disk bus, mirrored from the API so this module needs nothing from Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Bus {
    /// virtio-blk (`vdX`).
    Virtio,
    /// SATA on an AHCI controller (`sdX`).
    Sata,
    /// virtio-scsi (`sdX`, sharing the `sd` names with SATA).
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

/// Everything needed to write a domain's XML, resolved for one host.
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
    /// File the serial console is logged to (appended).
    pub console_log: Option<String>,
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

/// What ferry writes into (and reads back from) a domain's `<metadata>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FerryMetadata {
    /// The VirtualMachine the domain belongs to.
    pub owner: Owner,
    /// Hash of the definition (all of it but the owner): equal hashes mean equal domains.
    pub definition_hash: String,
    /// Human-readable shape of the definition, to say what a restart would change.
    pub shape: Shape,
}

/// The parts of a definition a person recognises: used to explain `RestartRequired`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shape {
    /// Number of virtual CPUs.
    pub vcpus: u32,
    /// CPU model: `host-model`, `host-passthrough` or the model name.
    pub cpu: String,
    /// Guest memory in KiB.
    pub memory_kib: u64,
    /// `name=path (bus, format[, read-only])` per disk, in order.
    pub disks: Vec<String>,
    /// `name=mac@network:NAME (model)` or `name=mac@bridge:NAME (model)` per NIC, in order.
    pub nics: Vec<String>,
    /// Kernel boot summary, empty when booting from disk.
    pub boot: String,
}

/// Why a definition cannot be written as XML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// A value holds a character XML 1.0 cannot carry at all (NUL and most control characters).
    #[error("{field} contains a character that XML cannot carry (U+{code:04X})")]
    InvalidCharacter {
        /// Which value, e.g. `disks[1].path`.
        field: String,
        /// The offending code point.
        code: u32,
    },
    /// A device name cannot be used in a libvirt user alias (`ua-` + `[A-Za-z0-9_-]`).
    #[error("{field} {value:?} is not a valid device name (letters, digits, '-' and '_' only)")]
    InvalidName {
        /// Which value.
        field: String,
        /// The value.
        value: String,
    },
    /// A value is out of range (zero vCPUs or memory, empty name).
    #[error("{field}: {reason}")]
    OutOfRange {
        /// Which value.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The XML writer failed (cannot happen when writing to memory, kept for completeness).
    #[error("writing domain XML failed: {0}")]
    Write(String),
}

// ------------------------------------------------------------------------------------------------
// Writing
// ------------------------------------------------------------------------------------------------

/// Writes libvirt domain XML for `def`.
///
/// Every user-supplied value goes through quick-xml's escaping; tabs, newlines and carriage
/// returns are written as character references so attribute values and text survive a parse
/// unchanged. Values with characters XML 1.0 cannot represent are refused.
pub fn to_xml(def: &DomainDefinition) -> Result<String, XmlError> {
    validate(def)?;
    let mut w = Writer::new_with_indent(Cursor::new(Vec::new()), b' ', 2);
    write_domain(&mut w, def).map_err(|e| XmlError::Write(e.to_string()))?;
    let mut out = String::from_utf8(w.into_inner().into_inner())
        .map_err(|e| XmlError::Write(e.to_string()))?;
    out.push('\n');
    Ok(out)
}

pub(crate) type W = Writer<Cursor<Vec<u8>>>;
pub(crate) type IoResult = std::io::Result<()>;

/// Runs `body` on a fresh indented writer and returns the document (for the small storage XML
/// documents the libvirt module writes).
pub(crate) fn write_document(body: impl FnOnce(&mut W) -> IoResult) -> Result<String, XmlError> {
    let mut w = Writer::new_with_indent(Cursor::new(Vec::new()), b' ', 2);
    body(&mut w).map_err(|e| XmlError::Write(e.to_string()))?;
    String::from_utf8(w.into_inner().into_inner()).map_err(|e| XmlError::Write(e.to_string()))
}

fn validate(def: &DomainDefinition) -> Result<(), XmlError> {
    let mut values: Vec<(String, &str)> = vec![
        ("name".into(), &def.name),
        ("uuid".into(), &def.uuid),
        ("owner.namespace".into(), &def.owner.namespace),
        ("owner.name".into(), &def.owner.name),
        ("owner.uid".into(), &def.owner.uid),
    ];
    if let CpuModel::Named(m) = &def.cpu_model {
        values.push(("cpu_model".into(), m));
    }
    for (i, d) in def.disks.iter().enumerate() {
        values.push((format!("disks[{i}].name"), &d.name));
        values.push((format!("disks[{i}].path"), &d.path));
        values.push((format!("disks[{i}].format"), &d.format));
    }
    for (i, n) in def.nics.iter().enumerate() {
        values.push((format!("nics[{i}].name"), &n.name));
        values.push((format!("nics[{i}].mac"), &n.mac));
        values.push((format!("nics[{i}].model"), &n.model));
        let (NicSource::Network(s) | NicSource::Bridge(s)) = &n.source;
        values.push((format!("nics[{i}].source"), s));
    }
    if let Some(b) = &def.boot {
        values.push(("boot.kernel".into(), &b.kernel));
        if let Some(v) = &b.initrd {
            values.push(("boot.initrd".into(), v));
        }
        if let Some(v) = &b.cmdline {
            values.push(("boot.cmdline".into(), v));
        }
    }
    if let Some(v) = &def.console_log {
        values.push(("console_log".into(), v));
    }
    for (field, value) in values {
        if let Some(c) = value.chars().find(|&c| !is_xml_char(c)) {
            return Err(XmlError::InvalidCharacter {
                field,
                code: c as u32,
            });
        }
    }
    if def.name.is_empty() {
        return Err(out_of_range("name", "must not be empty"));
    }
    if def.vcpus == 0 {
        return Err(out_of_range("vcpus", "must be at least 1"));
    }
    if def.memory_kib == 0 {
        return Err(out_of_range("memory_kib", "must be at least 1"));
    }
    for (i, d) in def.disks.iter().enumerate() {
        check_device_name(&format!("disks[{i}].name"), &d.name)?;
    }
    for (i, n) in def.nics.iter().enumerate() {
        check_device_name(&format!("nics[{i}].name"), &n.name)?;
    }
    Ok(())
}

fn out_of_range(field: &str, reason: &str) -> XmlError {
    XmlError::OutOfRange {
        field: field.into(),
        reason: reason.into(),
    }
}

/// libvirt accepts user aliases `ua-[A-Za-z0-9_-]+`.
fn check_device_name(field: &str, name: &str) -> Result<(), XmlError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(XmlError::InvalidName {
            field: field.into(),
            value: name.into(),
        })
    }
}

/// `Char` production of XML 1.0 (Rust strings cannot hold surrogates).
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// quick-xml's escaping plus character references for the white space a parser would otherwise
/// normalise (attribute values turn TAB/LF/CR into spaces, text turns CR LF into LF).
fn escape_value(value: &str) -> Cow<'_, str> {
    let escaped = quick_xml::escape::escape(value);
    if !escaped.contains(['\t', '\n', '\r']) {
        return escaped;
    }
    let mut out = String::with_capacity(escaped.len() + 8);
    for c in escaped.chars() {
        match c {
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn attr<'a>(key: &'a str, value: &'a str) -> Attribute<'a> {
    Attribute {
        key: QName(key.as_bytes()),
        value: match escape_value(value) {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        },
    }
}

fn text(value: &str) -> BytesText<'_> {
    BytesText::from_escaped(escape_value(value))
}

/// `<name a="v" ...>text</name>`.
pub(crate) fn text_elem(w: &mut W, name: &str, attrs: &[(&str, &str)], value: &str) -> IoResult {
    let mut e = w.create_element(name);
    for (k, v) in attrs {
        e = e.with_attribute(attr(k, v));
    }
    e.write_text_content(text(value))?;
    Ok(())
}

/// `<name a="v" .../>`.
pub(crate) fn empty_elem(w: &mut W, name: &str, attrs: &[(&str, &str)]) -> IoResult {
    let mut e = w.create_element(name);
    for (k, v) in attrs {
        e = e.with_attribute(attr(k, v));
    }
    e.write_empty()?;
    Ok(())
}

pub(crate) fn start(w: &mut W, name: &str, attrs: &[(&str, &str)]) -> IoResult {
    let mut e = BytesStart::new(name);
    for (k, v) in attrs {
        e.push_attribute(attr(k, v));
    }
    w.write_event(Event::Start(e))
}

pub(crate) fn end(w: &mut W, name: &str) -> IoResult {
    w.write_event(Event::End(BytesEnd::new(name)))
}

fn write_domain(w: &mut W, def: &DomainDefinition) -> IoResult {
    let virt_type = match def.virt_type {
        VirtType::Kvm => "kvm",
        VirtType::Qemu => "qemu",
    };
    start(w, "domain", &[("type", virt_type)])?;
    text_elem(w, "name", &[], &def.name)?;
    text_elem(w, "uuid", &[], &def.uuid)?;
    start(w, "metadata", &[])?;
    write_metadata(w, def)?;
    end(w, "metadata")?;
    let mem = def.memory_kib.to_string();
    text_elem(w, "memory", &[("unit", "KiB")], &mem)?;
    text_elem(w, "currentMemory", &[("unit", "KiB")], &mem)?;
    text_elem(
        w,
        "vcpu",
        &[("placement", "static")],
        &def.vcpus.to_string(),
    )?;

    start(w, "os", &[])?;
    text_elem(w, "type", &[("arch", "x86_64"), ("machine", "pc")], "hvm")?;
    match &def.boot {
        Some(boot) => {
            text_elem(w, "kernel", &[], &boot.kernel)?;
            if let Some(initrd) = &boot.initrd {
                text_elem(w, "initrd", &[], initrd)?;
            }
            if let Some(cmdline) = &boot.cmdline {
                text_elem(w, "cmdline", &[], cmdline)?;
            }
        }
        None => empty_elem(w, "boot", &[("dev", "hd")])?,
    }
    end(w, "os")?;

    start(w, "features", &[])?;
    empty_elem(w, "acpi", &[])?;
    empty_elem(w, "apic", &[])?;
    end(w, "features")?;

    match &def.cpu_model {
        CpuModel::HostModel => empty_elem(w, "cpu", &[("mode", "host-model")])?,
        CpuModel::HostPassthrough => empty_elem(w, "cpu", &[("mode", "host-passthrough")])?,
        CpuModel::Named(model) => {
            start(
                w,
                "cpu",
                &[("mode", "custom"), ("match", "exact"), ("check", "partial")],
            )?;
            text_elem(w, "model", &[("fallback", "forbid")], model)?;
            end(w, "cpu")?;
        }
    }

    start(w, "clock", &[("offset", "utc")])?;
    empty_elem(w, "timer", &[("name", "rtc"), ("tickpolicy", "catchup")])?;
    empty_elem(w, "timer", &[("name", "pit"), ("tickpolicy", "delay")])?;
    empty_elem(w, "timer", &[("name", "hpet"), ("present", "no")])?;
    end(w, "clock")?;
    text_elem(w, "on_poweroff", &[], "destroy")?;
    text_elem(w, "on_reboot", &[], "restart")?;
    text_elem(w, "on_crash", &[], "destroy")?;

    start(w, "devices", &[])?;
    write_devices(w, def)?;
    end(w, "devices")?;
    end(w, "domain")
}

fn write_devices(w: &mut W, def: &DomainDefinition) -> IoResult {
    let targets = disk_targets(&def.disks);
    for (disk, target) in def.disks.iter().zip(&targets) {
        // libvirt refuses read-only SATA *disks*; a read-only SATA or SCSI device is a CD-ROM
        // (the usual way to hand a guest an ISO, such as a cloud-init seed).
        let device = if disk.read_only && matches!(disk.bus, Bus::Sata | Bus::Scsi) {
            "cdrom"
        } else {
            "disk"
        };
        start(w, "disk", &[("type", "file"), ("device", device)])?;
        // cache='none' (O_DIRECT) is what live migration needs; io='native' goes with it.
        empty_elem(
            w,
            "driver",
            &[
                ("name", "qemu"),
                ("type", &disk.format),
                ("cache", "none"),
                ("io", "native"),
            ],
        )?;
        empty_elem(w, "source", &[("file", &disk.path)])?;
        empty_elem(w, "target", &[("dev", target), ("bus", bus_name(disk.bus))])?;
        if disk.read_only {
            empty_elem(w, "readonly", &[])?;
        }
        empty_elem(w, "alias", &[("name", &format!("ua-{}", disk.name))])?;
        end(w, "disk")?;
    }
    if def.disks.iter().any(|d| d.bus == Bus::Scsi) {
        empty_elem(
            w,
            "controller",
            &[("type", "scsi"), ("index", "0"), ("model", "virtio-scsi")],
        )?;
    }
    for nic in &def.nics {
        let (kind, key, source) = match &nic.source {
            NicSource::Network(n) => ("network", "network", n),
            NicSource::Bridge(b) => ("bridge", "bridge", b),
        };
        start(w, "interface", &[("type", kind)])?;
        empty_elem(w, "mac", &[("address", &nic.mac)])?;
        empty_elem(w, "source", &[(key, source)])?;
        empty_elem(w, "model", &[("type", &nic.model)])?;
        empty_elem(w, "alias", &[("name", &format!("ua-{}", nic.name))])?;
        end(w, "interface")?;
    }
    start(w, "serial", &[("type", "pty")])?;
    if let Some(log) = &def.console_log {
        empty_elem(w, "log", &[("file", log), ("append", "on")])?;
    }
    empty_elem(w, "target", &[("port", "0")])?;
    end(w, "serial")?;
    start(w, "console", &[("type", "pty")])?;
    empty_elem(w, "target", &[("type", "serial"), ("port", "0")])?;
    end(w, "console")?;
    start(w, "channel", &[("type", "unix")])?;
    empty_elem(
        w,
        "target",
        &[("type", "virtio"), ("name", GUEST_AGENT_CHANNEL)],
    )?;
    end(w, "channel")?;
    empty_elem(w, "memballoon", &[("model", "virtio")])?;
    start(w, "rng", &[("model", "virtio")])?;
    text_elem(w, "backend", &[("model", "random")], "/dev/urandom")?;
    end(w, "rng")
}

fn write_metadata(w: &mut W, def: &DomainDefinition) -> IoResult {
    let shape = shape(def);
    let hash = definition_hash(def);
    let p = |local: &str| format!("{METADATA_PREFIX}:{local}");
    start(
        w,
        &p("vm"),
        &[
            (&format!("xmlns:{METADATA_PREFIX}"), METADATA_NS),
            ("namespace", &def.owner.namespace),
            ("name", &def.owner.name),
            ("uid", &def.owner.uid),
            ("definitionHash", &hash),
        ],
    )?;
    text_elem(w, &p("vcpus"), &[], &shape.vcpus.to_string())?;
    text_elem(w, &p("cpu"), &[], &shape.cpu)?;
    text_elem(
        w,
        &p("memory"),
        &[("unit", "KiB")],
        &shape.memory_kib.to_string(),
    )?;
    for d in &shape.disks {
        text_elem(w, &p("disk"), &[], d)?;
    }
    for n in &shape.nics {
        text_elem(w, &p("nic"), &[], n)?;
    }
    if !shape.boot.is_empty() {
        text_elem(w, &p("boot"), &[], &shape.boot)?;
    }
    end(w, &p("vm"))
}

fn bus_name(bus: Bus) -> &'static str {
    match bus {
        Bus::Virtio => "virtio",
        Bus::Sata => "sata",
        Bus::Scsi => "scsi",
    }
}

/// Guest device names (`<target dev>`) for `disks`, in order: `vda, vdb, ...` for virtio and
/// `sda, sdb, ...` shared by SATA and SCSI (both use the `sd` names, so they must not collide).
/// After `z` come `aa, ab, ...`, as libvirt counts.
pub fn disk_targets(disks: &[DiskDef]) -> Vec<String> {
    let (mut vd, mut sd) = (0usize, 0usize);
    disks
        .iter()
        .map(|d| {
            let (prefix, counter) = match d.bus {
                Bus::Virtio => ("vd", &mut vd),
                Bus::Sata | Bus::Scsi => ("sd", &mut sd),
            };
            let name = format!("{prefix}{}", disk_suffix(*counter));
            *counter += 1;
            name
        })
        .collect()
}

/// 0 → `a`, 25 → `z`, 26 → `aa` (libvirt's `virIndexToDiskName`).
fn disk_suffix(mut index: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'a' + (index % 26) as u8);
        if index < 26 {
            break;
        }
        index = index / 26 - 1;
    }
    letters.iter().rev().map(|&b| b as char).collect()
}

// ------------------------------------------------------------------------------------------------
// Hashes, MACs and shapes
// ------------------------------------------------------------------------------------------------

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bit: tiny, fixed forever, independent of the Rust version.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// A length-prefixed, tagged serialization: no two different definitions encode the same.
#[derive(Default)]
struct Canonical(Vec<u8>);

impl Canonical {
    fn field(&mut self, key: &str, value: &str) {
        self.0.extend_from_slice(key.as_bytes());
        self.0.push(0);
        self.0
            .extend_from_slice(&(value.len() as u64).to_le_bytes());
        self.0.extend_from_slice(value.as_bytes());
    }
    fn opt(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(v) => self.field(key, v),
            None => self.field(&format!("{key}?"), ""),
        }
    }
}

/// Stable hash of everything in `def` except its owner: 16 lower-case hex digits.
///
/// It is FNV-1a 64 over an explicit canonical encoding written here field by field (not over
/// `Debug` or serde output), so it stays the same across Rust and dependency versions. Equal
/// hashes mean the domain XML ferry writes is equal; a different hash on a running domain means a
/// restart is needed to apply the definition.
pub fn definition_hash(def: &DomainDefinition) -> String {
    let mut c = Canonical::default();
    c.field("v", "1");
    c.field("name", &def.name);
    c.field("uuid", &def.uuid);
    c.field(
        "virtType",
        match def.virt_type {
            VirtType::Kvm => "kvm",
            VirtType::Qemu => "qemu",
        },
    );
    c.field("vcpus", &def.vcpus.to_string());
    match &def.cpu_model {
        CpuModel::HostModel => c.field("cpu", "host-model"),
        CpuModel::HostPassthrough => c.field("cpu", "host-passthrough"),
        CpuModel::Named(m) => c.field("cpu.named", m),
    }
    c.field("memoryKiB", &def.memory_kib.to_string());
    c.field("disks", &def.disks.len().to_string());
    for d in &def.disks {
        c.field("disk.name", &d.name);
        c.field("disk.path", &d.path);
        c.field("disk.format", &d.format);
        c.field("disk.bus", bus_name(d.bus));
        c.field("disk.readOnly", if d.read_only { "1" } else { "0" });
    }
    c.field("nics", &def.nics.len().to_string());
    for n in &def.nics {
        c.field("nic.name", &n.name);
        c.field("nic.mac", &n.mac);
        match &n.source {
            NicSource::Network(s) => c.field("nic.network", s),
            NicSource::Bridge(s) => c.field("nic.bridge", s),
        }
        c.field("nic.model", &n.model);
    }
    match &def.boot {
        Some(b) => {
            c.field("boot.kernel", &b.kernel);
            c.opt("boot.initrd", b.initrd.as_deref());
            c.opt("boot.cmdline", b.cmdline.as_deref());
        }
        None => c.field("boot?", ""),
    }
    c.opt("consoleLog", def.console_log.as_deref());
    format!("{:016x}", fnv1a64(&c.0))
}

/// A MAC address for NIC `nic` of the VM with UID `uid`, the same on every call: first octet
/// `0x52` (locally administered, unicast, as QEMU's `52:54:00` range), then 40 bits of a stable
/// hash. Record it in status the first time; this only makes the first choice reproducible.
pub fn derive_mac(uid: &str, nic: &str) -> String {
    let mut c = Canonical::default();
    c.field("mac", "1");
    c.field("uid", uid);
    c.field("nic", nic);
    let b = fnv1a64(&c.0).to_be_bytes();
    format!(
        "52:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4]
    )
}

/// The human-readable shape of `def` (what [`restart_changes`] compares).
pub fn shape(def: &DomainDefinition) -> Shape {
    Shape {
        vcpus: def.vcpus,
        cpu: match &def.cpu_model {
            CpuModel::HostModel => "host-model".into(),
            CpuModel::HostPassthrough => "host-passthrough".into(),
            CpuModel::Named(m) => m.clone(),
        },
        memory_kib: def.memory_kib,
        disks: def
            .disks
            .iter()
            .map(|d| {
                format!(
                    "{}={} ({}, {}{})",
                    d.name,
                    d.path,
                    bus_name(d.bus),
                    d.format,
                    if d.read_only { ", read-only" } else { "" }
                )
            })
            .collect(),
        nics: def
            .nics
            .iter()
            .map(|n| {
                let source = match &n.source {
                    NicSource::Network(s) => format!("network:{s}"),
                    NicSource::Bridge(s) => format!("bridge:{s}"),
                };
                format!("{}={}@{} ({})", n.name, n.mac, source, n.model)
            })
            .collect(),
        boot: match &def.boot {
            None => String::new(),
            Some(b) => {
                let mut s = format!("kernel {}", b.kernel);
                if let Some(i) = &b.initrd {
                    s.push_str(&format!(", initrd {i}"));
                }
                if let Some(c) = &b.cmdline {
                    s.push_str(&format!(", cmdline {c:?}"));
                }
                s
            }
        },
    }
}

/// Human-readable differences between the shape a domain runs with and the desired one, e.g.
/// `"vCPUs 2 → 4"`, `"memory 512 MiB → 1 GiB"`, `"disk data added"`, `"network eth0 changed"`.
///
/// Empty when the shapes are equal. Two definitions can differ in something the shape does not
/// show (the console log path, the domain type): the caller should then fall back to a generic
/// "definition changed" when the hashes differ and this list is empty.
pub fn restart_changes(running: &Shape, desired: &Shape) -> Vec<String> {
    let mut out = Vec::new();
    if running.vcpus != desired.vcpus {
        out.push(format!("vCPUs {} → {}", running.vcpus, desired.vcpus));
    }
    if running.cpu != desired.cpu {
        out.push(format!("CPU model {} → {}", running.cpu, desired.cpu));
    }
    if running.memory_kib != desired.memory_kib {
        out.push(format!(
            "memory {} → {}",
            human_kib(running.memory_kib),
            human_kib(desired.memory_kib)
        ));
    }
    list_changes("disk", &running.disks, &desired.disks, &mut out);
    list_changes("network", &running.nics, &desired.nics, &mut out);
    if running.boot != desired.boot {
        out.push(match (running.boot.is_empty(), desired.boot.is_empty()) {
            (true, false) => "kernel boot added".to_string(),
            (false, true) => "kernel boot removed".to_string(),
            _ => "kernel boot changed".to_string(),
        });
    }
    out
}

/// Entries are `name=...`; compares by name, then order.
fn list_changes(what: &str, running: &[String], desired: &[String], out: &mut Vec<String>) {
    let key = |s: &str| s.split_once('=').map_or(s, |(k, _)| k).to_string();
    let r: BTreeMap<String, &String> = running.iter().map(|s| (key(s), s)).collect();
    let d: BTreeMap<String, &String> = desired.iter().map(|s| (key(s), s)).collect();
    let mut changed = false;
    for (name, entry) in &d {
        match r.get(name) {
            None => out.push(format!("{what} {name} added")),
            Some(old) if old != entry => out.push(format!("{what} {name} changed")),
            Some(_) => continue,
        }
        changed = true;
    }
    for name in r.keys().filter(|n| !d.contains_key(*n)) {
        out.push(format!("{what} {name} removed"));
        changed = true;
    }
    if !changed && running != desired {
        out.push(format!("{what} order changed"));
    }
}

/// `1048576` → `1 GiB`, `524288` → `512 MiB`, `1536` → `1536 KiB`.
fn human_kib(kib: u64) -> String {
    const MIB: u64 = 1024;
    const GIB: u64 = 1024 * 1024;
    const TIB: u64 = 1024 * 1024 * 1024;
    match kib {
        0 => "0 KiB".into(),
        k if k % TIB == 0 => format!("{} TiB", k / TIB),
        k if k % GIB == 0 => format!("{} GiB", k / GIB),
        k if k % MIB == 0 => format!("{} MiB", k / MIB),
        k => format!("{k} KiB"),
    }
}

// ------------------------------------------------------------------------------------------------
// Reading
// ------------------------------------------------------------------------------------------------

/// Reads ferry's metadata element (`/domain/metadata/{METADATA_NS}vm`) from domain XML as libvirt
/// returns it. Matches by namespace, not prefix. `None` for domains ferry did not make, for
/// metadata without the owner or hash, and for anything that is not well-formed XML.
pub fn parse_metadata(xml: &str) -> Option<FerryMetadata> {
    let mut reader = NsReader::from_str(xml);
    let ns = Namespace(METADATA_NS.as_bytes());
    // Local names of the open elements outside ferry's element.
    let mut path: Vec<Vec<u8>> = Vec::new();
    loop {
        let (res, event) = reader.read_resolved_event().ok()?;
        let is_ours = |e: &BytesStart, path: &[Vec<u8>]| {
            res == ResolveResult::Bound(ns)
                && e.local_name().as_ref() == b"vm"
                && path.len() == 2
                && path[0] == b"domain"
                && path[1] == b"metadata"
        };
        match event {
            Event::Start(e) if is_ours(&e, &path) => {
                let mut meta = metadata_attributes(&reader, &e)?;
                read_shape(&mut reader, ns, &mut meta.shape)?;
                return Some(meta);
            }
            Event::Empty(e) if is_ours(&e, &path) => return metadata_attributes(&reader, &e),
            Event::Start(e) => {
                // Only unprefixed/unnamespaced `domain` and `metadata` lead to ours.
                let local = if res == ResolveResult::Unbound {
                    e.local_name().as_ref().to_vec()
                } else {
                    Vec::new()
                };
                path.push(local);
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

fn metadata_attributes(reader: &NsReader<&[u8]>, e: &BytesStart) -> Option<FerryMetadata> {
    let (mut namespace, mut name, mut uid, mut hash) = (None, None, None, None);
    for a in e.attributes() {
        let a = a.ok()?;
        let value = a
            .decode_and_unescape_value(reader.decoder())
            .ok()?
            .into_owned();
        match a.key.as_ref() {
            b"namespace" => namespace = Some(value),
            b"name" => name = Some(value),
            b"uid" => uid = Some(value),
            b"definitionHash" => hash = Some(value),
            _ => {}
        }
    }
    Some(FerryMetadata {
        owner: Owner {
            namespace: namespace?,
            name: name?,
            uid: uid?,
        },
        definition_hash: hash?,
        shape: Shape::default(),
    })
}

/// Reads the children of ferry's element up to its end tag. Unknown children are skipped, so a
/// newer ferry's metadata still reads.
fn read_shape(reader: &mut NsReader<&[u8]>, ns: Namespace, shape: &mut Shape) -> Option<()> {
    loop {
        let (res, event) = reader.read_resolved_event().ok()?;
        let local = match &event {
            Event::Start(e) | Event::Empty(e) if res == ResolveResult::Bound(ns) => {
                e.local_name().as_ref().to_vec()
            }
            Event::Start(_) => {
                skip_element(reader)?;
                continue;
            }
            Event::End(_) => return Some(()),
            Event::Eof => return None,
            _ => continue,
        };
        let value = match event {
            Event::Start(_) => read_text(reader)?,
            _ => String::new(),
        };
        match local.as_slice() {
            b"vcpus" => shape.vcpus = value.trim().parse().ok()?,
            b"cpu" => shape.cpu = value,
            b"memory" => shape.memory_kib = value.trim().parse().ok()?,
            b"disk" => shape.disks.push(value),
            b"nic" => shape.nics.push(value),
            b"boot" => shape.boot = value,
            _ => {}
        }
    }
}

/// Text content of the current element up to its end tag, with references resolved.
fn read_text(reader: &mut NsReader<&[u8]>) -> Option<String> {
    let mut out = String::new();
    loop {
        match reader.read_event().ok()? {
            Event::Text(t) => out.push_str(&t.xml10_content().ok()?),
            Event::CData(t) => out.push_str(&t.decode().ok()?),
            Event::GeneralRef(r) => match r.resolve_char_ref().ok()? {
                Some(c) => out.push(c),
                None => {
                    let name = r.decode().ok()?;
                    out.push_str(quick_xml::escape::resolve_predefined_entity(&name)?);
                }
            },
            Event::End(_) => return Some(out),
            Event::Start(_) => skip_element(reader)?,
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// Skips to the end of the element whose start tag was just read.
fn skip_element(reader: &mut NsReader<&[u8]>) -> Option<()> {
    let mut depth = 1usize;
    while depth > 0 {
        match reader.read_event().ok()? {
            Event::Start(_) => depth += 1,
            Event::End(_) => depth -= 1,
            Event::Eof => return None,
            _ => {}
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn disk_suffixes_count_like_libvirt() {
        let s: Vec<String> = [0, 1, 25, 26, 27, 51, 52, 701, 702]
            .iter()
            .map(|&i| disk_suffix(i))
            .collect();
        assert_eq!(s, ["a", "b", "z", "aa", "ab", "az", "ba", "zz", "aaa"]);
    }

    #[test]
    fn human_kib_picks_the_largest_exact_unit() {
        assert_eq!(human_kib(512 * 1024), "512 MiB");
        assert_eq!(human_kib(1024 * 1024), "1 GiB");
        assert_eq!(human_kib(1536 * 1024), "1536 MiB");
        assert_eq!(human_kib(2 * 1024 * 1024 * 1024), "2 TiB");
        assert_eq!(human_kib(1000), "1000 KiB");
        assert_eq!(human_kib(0), "0 KiB");
    }
}
