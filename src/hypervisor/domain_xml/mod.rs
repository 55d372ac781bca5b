//! Pure translation between a resolved domain definition ([`DomainDefinition`], from
//! `plan::domain`) and libvirt domain XML.
//!
//! XML is written with `quick-xml`'s writer (never string formatting), so names, paths and values
//! coming from users are escaped. ferry marks its domains with a `<metadata>` element in its own
//! namespace; [`parse_metadata`] reads it back to recognise them and to see which definition a
//! running domain was started with.
//!
//! Nothing here does I/O: the functions are total over their input and are tested against golden
//! files and against the XML libvirt itself returns.

mod metadata;
mod read;
mod write;

pub use metadata::parse_metadata;
pub use read::describe;

use crate::plan::domain::{CpuModel, DomainDefinition, NicSource};

// Re-exported while controllers import them from here; they live in `plan::domain`.
pub use crate::plan::domain::{FerryMetadata, Owner, Shape, VirtType, definition_hash, shape};

/// XML namespace of ferry's domain metadata.
pub const METADATA_NS: &str = "https://ferry.dev/xmlns/domain/1";

/// Prefix ferry writes for [`METADATA_NS`]. Readers must not rely on it: libvirt may re-serialize
/// the element with another prefix, so [`parse_metadata`] matches the namespace, not the prefix.
const METADATA_PREFIX: &str = "ferry";

/// Name of the QEMU guest agent's virtio-serial channel.
pub const GUEST_AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

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

/// Writes libvirt domain XML for `def`.
///
/// Every user-supplied value goes through quick-xml's escaping; tabs, newlines and carriage
/// returns are written as character references so attribute values and text survive a parse
/// unchanged. Values with characters XML 1.0 cannot represent are refused.
pub fn to_xml(def: &DomainDefinition) -> Result<String, XmlError> {
    validate(def)?;
    let mut out = crate::hypervisor::xml::write_document(|w| write::write_domain(w, def))
        .map_err(XmlError::Write)?;
    out.push('\n');
    Ok(out)
}

/// ferry's metadata as the fragment `virDomainSetMetadata` takes, with [`METADATA_NS`] as its
/// namespace and [`METADATA_KEY`] as its prefix; [`parse_metadata`] reads it back from the
/// domain's XML.
pub fn metadata_fragment(meta: &FerryMetadata) -> Result<String, XmlError> {
    let o = &meta.owner;
    for (field, value) in [
        ("owner.namespace", &o.namespace),
        ("owner.name", &o.name),
        ("owner.uid", &o.uid),
    ] {
        if let Some(c) = value
            .chars()
            .find(|&c| !crate::hypervisor::xml::is_xml_char(c))
        {
            return Err(XmlError::InvalidCharacter {
                field: field.into(),
                code: c as u32,
            });
        }
    }
    crate::hypervisor::xml::write_document(|w| write::write_metadata_element(w, meta, false))
        .map_err(XmlError::Write)
}

/// The prefix [`metadata_fragment`] is stored under.
pub const METADATA_KEY: &str = METADATA_PREFIX;

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
    if def.console_log.is_some() && !def.serial_console {
        return Err(out_of_range(
            "console_log",
            "needs the serial console it logs",
        ));
    }
    for (field, value) in values {
        if let Some(c) = value
            .chars()
            .find(|&c| !crate::hypervisor::xml::is_xml_char(c))
        {
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
