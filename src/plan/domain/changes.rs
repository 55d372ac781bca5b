//! What a restart would change in a running domain, as a typed list, and the one place that
//! list becomes the text users read in the `RestartRequired` condition.

use std::collections::BTreeMap;
use std::fmt;

use super::definition::SEED_DISK;
use super::observed::FerryMetadata;
use super::shape::{SERIAL_CONSOLE, Shape};

/// What happens to a named device, or to kernel boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// It is new in the desired definition.
    Added,
    /// It is in both, but not the same.
    Changed,
    /// It is gone from the desired definition.
    Removed,
}

impl Edit {
    fn as_str(self) -> &'static str {
        match self {
            Edit::Added => "added",
            Edit::Changed => "changed",
            Edit::Removed => "removed",
        }
    }
}

/// One difference between the definition a domain runs with and the desired one: it applies
/// only when the guest restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The number of virtual CPUs.
    Vcpus { from: u32, to: u32 },
    /// The CPU model (`host-model`, `host-passthrough` or a model name).
    CpuModel { from: String, to: String },
    /// Guest memory, in KiB.
    Memory { from_kib: u64, to_kib: u64 },
    /// A disk of the spec, by name.
    Disk { name: String, edit: Edit },
    /// The same disks in another order.
    DiskOrder,
    /// A network interface, by name.
    Nic { name: String, edit: Edit },
    /// The same network interfaces in another order.
    NicOrder,
    /// The cloud-init seed (new user or network data, or cloud-init turned on or off).
    CloudInitSeed(Edit),
    /// Direct kernel boot.
    KernelBoot(Edit),
    /// A console, by its [`Shape::consoles`] name (`serial`, `vnc`).
    Console { name: String, edit: Edit },
    /// The definitions differ in something the shape does not show (the console log path, the
    /// domain type).
    Unseen,
}

impl Change {
    /// Whether a VirtualMachineClass can be what set the changed value (vCPUs, memory, CPU
    /// model).
    pub fn is_sizing(&self) -> bool {
        matches!(
            self,
            Change::Vcpus { .. } | Change::CpuModel { .. } | Change::Memory { .. }
        )
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Vcpus { from, to } => write!(f, "vCPUs {from} → {to}"),
            Change::CpuModel { from, to } => write!(f, "CPU model {from} → {to}"),
            Change::Memory { from_kib, to_kib } => {
                write!(
                    f,
                    "memory {} → {}",
                    human_kib(*from_kib),
                    human_kib(*to_kib)
                )
            }
            Change::Disk { name, edit } => write!(f, "disk {name} {}", edit.as_str()),
            Change::DiskOrder => f.write_str("disk order changed"),
            Change::Nic { name, edit } => write!(f, "network {name} {}", edit.as_str()),
            Change::NicOrder => f.write_str("network order changed"),
            Change::CloudInitSeed(Edit::Changed) => {
                f.write_str("cloud-init data changed (cloud-init reads it at boot)")
            }
            Change::CloudInitSeed(edit) => write!(f, "cloud-init seed {}", edit.as_str()),
            Change::KernelBoot(edit) => write!(f, "kernel boot {}", edit.as_str()),
            Change::Console { name, edit } => {
                let what = match name.as_str() {
                    SERIAL_CONSOLE => "serial console",
                    "vnc" => "VNC display",
                    other => other,
                };
                write!(f, "{what} {}", edit.as_str())
            }
            Change::Unseen => f.write_str("domain definition changed"),
        }
    }
}

/// The `RestartRequired` message parts for `changes`, in order: each change as text, with
/// `(VirtualMachineClass NAME)` after vCPUs, memory and CPU model when the VM takes its size
/// from class `class`.
pub fn describe_changes(changes: &[Change], class: Option<&str>) -> Vec<String> {
    changes
        .iter()
        .map(|c| match class {
            Some(name) if c.is_sizing() => format!("{c} (VirtualMachineClass {name})"),
            _ => c.to_string(),
        })
        .collect()
}

/// What restarting a domain that runs `live` would change, to run the definition with hash
/// `desired_hash` and shape `desired`: empty when the hashes are equal, [`Change::Unseen`] alone
/// when they differ in nothing the shapes show.
pub fn pending_restart(live: &FerryMetadata, desired_hash: &str, desired: &Shape) -> Vec<Change> {
    if live.definition_hash == desired_hash {
        return Vec::new();
    }
    let changes = restart_changes(&live.shape, desired);
    if changes.is_empty() {
        vec![Change::Unseen]
    } else {
        changes
    }
}

/// The differences between the shape a domain runs with and the desired one, e.g. vCPUs 2 → 4,
/// disk `data` added. Empty when the shapes are equal. Two definitions can differ in something
/// the shape does not show: [`pending_restart`] covers that.
pub fn restart_changes(running: &Shape, desired: &Shape) -> Vec<Change> {
    let mut out = Vec::new();
    if running.vcpus != desired.vcpus {
        out.push(Change::Vcpus {
            from: running.vcpus,
            to: desired.vcpus,
        });
    }
    if running.cpu != desired.cpu {
        out.push(Change::CpuModel {
            from: running.cpu.clone(),
            to: desired.cpu.clone(),
        });
    }
    if running.memory_kib != desired.memory_kib {
        out.push(Change::Memory {
            from_kib: running.memory_kib,
            to_kib: desired.memory_kib,
        });
    }
    let disk = |name: &str, edit| {
        if name == SEED_DISK {
            Change::CloudInitSeed(edit)
        } else {
            Change::Disk {
                name: name.to_string(),
                edit,
            }
        }
    };
    list_changes(
        &running.disks,
        &desired.disks,
        disk,
        Change::DiskOrder,
        &mut out,
    );
    let nic = |name: &str, edit| Change::Nic {
        name: name.to_string(),
        edit,
    };
    list_changes(
        &running.nics,
        &desired.nics,
        nic,
        Change::NicOrder,
        &mut out,
    );
    if running.boot != desired.boot {
        out.push(Change::KernelBoot(
            match (running.boot.is_empty(), desired.boot.is_empty()) {
                (true, false) => Edit::Added,
                (false, true) => Edit::Removed,
                _ => Edit::Changed,
            },
        ));
    }
    for name in &desired.consoles {
        if !running.consoles.contains(name) {
            out.push(Change::Console {
                name: name.clone(),
                edit: Edit::Added,
            });
        }
    }
    for name in &running.consoles {
        if !desired.consoles.contains(name) {
            out.push(Change::Console {
                name: name.clone(),
                edit: Edit::Removed,
            });
        }
    }
    out
}

/// Entries are `name=...`; compares by name, then order.
fn list_changes(
    running: &[String],
    desired: &[String],
    change: impl Fn(&str, Edit) -> Change,
    reordered: Change,
    out: &mut Vec<Change>,
) {
    let key = |s: &str| s.split_once('=').map_or(s, |(k, _)| k).to_string();
    let r: BTreeMap<String, &String> = running.iter().map(|s| (key(s), s)).collect();
    let d: BTreeMap<String, &String> = desired.iter().map(|s| (key(s), s)).collect();
    let mut changed = false;
    for (name, entry) in &d {
        match r.get(name) {
            None => out.push(change(name, Edit::Added)),
            Some(old) if old != entry => out.push(change(name, Edit::Changed)),
            Some(_) => continue,
        }
        changed = true;
    }
    for name in r.keys().filter(|n| !d.contains_key(*n)) {
        out.push(change(name, Edit::Removed));
        changed = true;
    }
    if !changed && running != desired {
        out.push(reordered);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::domain::Owner;

    #[test]
    fn human_kib_picks_the_largest_exact_unit() {
        assert_eq!(human_kib(512 * 1024), "512 MiB");
        assert_eq!(human_kib(1024 * 1024), "1 GiB");
        assert_eq!(human_kib(1536 * 1024), "1536 MiB");
        assert_eq!(human_kib(2 * 1024 * 1024 * 1024), "2 TiB");
        assert_eq!(human_kib(1000), "1000 KiB");
        assert_eq!(human_kib(0), "0 KiB");
    }

    fn shape(vcpus: u32, disks: &[&str]) -> Shape {
        Shape {
            vcpus,
            cpu: "host-model".into(),
            memory_kib: 512 * 1024,
            disks: disks.iter().map(|d| d.to_string()).collect(),
            ..Shape::default()
        }
    }

    fn live(hash: &str, shape: Shape) -> FerryMetadata {
        FerryMetadata {
            owner: Owner {
                namespace: "ns".into(),
                name: "vm".into(),
                uid: "u".into(),
            },
            definition_hash: hash.into(),
            shape,
        }
    }

    /// Name, running shape, desired shape, class, expected text.
    type Case = (
        &'static str,
        Shape,
        Shape,
        Option<&'static str>,
        Vec<&'static str>,
    );

    #[test]
    fn each_change_reads_as_users_see_it() {
        let seed = |p: &str| format!("{SEED_DISK}={p} (scsi, raw, read-only)");
        let root = "root=/p/root.qcow2 (virtio, qcow2)";
        let cases: Vec<Case> = vec![
            (
                "equal shapes: nothing",
                shape(2, &[root]),
                shape(2, &[root]),
                None,
                vec![],
            ),
            (
                "vCPUs from a class carry the class",
                shape(2, &[root]),
                shape(4, &[root]),
                Some("small"),
                vec!["vCPUs 2 → 4 (VirtualMachineClass small)"],
            ),
            (
                "vCPUs without a class",
                shape(2, &[root]),
                shape(4, &[root]),
                None,
                vec!["vCPUs 2 → 4"],
            ),
            (
                "new cloud-init data",
                shape(2, &[root, &seed("/a.iso")]),
                shape(2, &[root, &seed("/b.iso")]),
                Some("small"),
                vec!["cloud-init data changed (cloud-init reads it at boot)"],
            ),
            (
                "cloud-init turned on",
                shape(2, &[root]),
                shape(2, &[root, &seed("/a.iso")]),
                None,
                vec!["cloud-init seed added"],
            ),
            (
                "cloud-init turned off",
                shape(2, &[root, &seed("/a.iso")]),
                shape(2, &[root]),
                None,
                vec!["cloud-init seed removed"],
            ),
            (
                "a VNC display for a VM that had none",
                Shape {
                    consoles: vec!["serial".into()],
                    ..shape(2, &[root])
                },
                Shape {
                    consoles: vec!["serial".into(), "vnc".into()],
                    ..shape(2, &[root])
                },
                None,
                vec!["VNC display added"],
            ),
            (
                "serial console turned off",
                Shape {
                    consoles: vec!["serial".into(), "vnc".into()],
                    ..shape(2, &[root])
                },
                Shape {
                    consoles: vec!["vnc".into()],
                    ..shape(2, &[root])
                },
                None,
                vec!["serial console removed"],
            ),
            (
                "a disk is not sizing: no class note",
                shape(2, &[root]),
                shape(2, &[]),
                Some("small"),
                vec!["disk root removed"],
            ),
        ];
        for (name, running, desired, class, want) in cases {
            let got = describe_changes(&restart_changes(&running, &desired), class);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_restart_is_pending_only_when_the_hash_differs() {
        let s = shape(2, &[]);
        assert!(pending_restart(&live("h", s.clone()), "h", &shape(4, &[])).is_empty());
        assert_eq!(
            pending_restart(&live("h", s.clone()), "other", &s),
            [Change::Unseen]
        );
        assert_eq!(
            describe_changes(&[Change::Unseen], Some("small")),
            ["domain definition changed"]
        );
        assert_eq!(
            pending_restart(&live("h", s), "other", &shape(4, &[])),
            [Change::Vcpus { from: 2, to: 4 }]
        );
    }
}
