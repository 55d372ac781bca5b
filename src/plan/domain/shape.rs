//! The parts of a definition a person recognises, and the guest's names for its disks.

use super::definition::{Bus, DiskDef, DomainDefinition, NicSource};

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
    /// The consoles, in this order: `serial` (serial console), `vnc` (VNC display).
    pub consoles: Vec<String>,
}

/// [`Shape::consoles`] entry of the serial console.
pub const SERIAL_CONSOLE: &str = "serial";

/// The human-readable shape of `def` (what [`restart_changes`](super::restart_changes)
/// compares).
pub fn shape(def: &DomainDefinition) -> Shape {
    Shape {
        vcpus: def.vcpus,
        cpu: def.cpu_model.as_str().to_string(),
        memory_kib: def.memory_kib,
        disks: def
            .disks
            .iter()
            .map(|d| {
                format!(
                    "{}={} ({}, {}{})",
                    d.name,
                    d.path,
                    d.bus.as_str(),
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
        consoles: def
            .serial_console
            .then(|| SERIAL_CONSOLE.to_string())
            .into_iter()
            .chain(def.graphics.map(|g| g.as_str().to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_suffixes_count_like_libvirt() {
        let s: Vec<String> = [0, 1, 25, 26, 27, 51, 52, 701, 702]
            .iter()
            .map(|&i| disk_suffix(i))
            .collect();
        assert_eq!(s, ["a", "b", "z", "aa", "ab", "az", "ba", "zz", "aaa"]);
    }
}
