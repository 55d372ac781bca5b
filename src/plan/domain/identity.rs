//! Stable identities derived from a definition: its hash, and the MAC addresses ferry picks.

use super::definition::{CpuModel, DomainDefinition, NicSource};

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
    c.field("virtType", def.virt_type.as_str());
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
        c.field("disk.bus", d.bus.as_str());
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
    // Written only when they differ from what definitions without these fields meant (a serial
    // console, no display), so that such definitions keep their hash.
    if !def.serial_console {
        c.field("serialConsole", "off");
    }
    if let Some(g) = def.graphics {
        c.field("graphics", g.as_str());
    }
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
}
