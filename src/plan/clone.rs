//! Whether a clone disk's copy can be made now, and from which volume.
//!
//! A copy is made only from a source that is consistent on disk: a VM whose domain does not run.
//! The caller gathers the facts (the source VM from the cache, its domain's state from libvirt
//! when it is on the same host) and does the copy.

use crate::api::{DiskClone, VirtualMachine, VmPhase};

/// What to do about a clone disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneDecision {
    /// Copy this volume of the storage pool.
    Copy { volume: String },
    /// Not now: the condition reason and what to do about it.
    Wait {
        reason: &'static str,
        message: String,
    },
}

/// The source VM named, or none.
pub const SOURCE_NOT_FOUND: &str = "CloneSourceNotFound";
/// The source's volume is in another HostPool or storage pool.
pub const SOURCE_ELSEWHERE: &str = "CloneSourceElsewhere";
/// The source VM runs (or may): its disk changes under the copy.
pub const SOURCE_RUNNING: &str = "CloneSourceRunning";

/// Decide for `clone` of the VM in HostPool `host_pool` using storage pool `storage_pool`.
/// `source` is the VM `clone.virtual_machine` of the same namespace if it exists, and
/// `domain_active` what libvirt says of its domain (`None` when not asked: another host).
pub fn decide(
    clone: &DiskClone,
    host_pool: &str,
    storage_pool: &str,
    source: Option<&VirtualMachine>,
    domain_active: Option<bool>,
) -> CloneDecision {
    let vm = &clone.virtual_machine;
    let disk = &clone.disk;
    let wait = |reason, message: String| CloneDecision::Wait { reason, message };
    let Some(source) = source else {
        return wait(
            SOURCE_NOT_FOUND,
            format!(
                "VirtualMachine {vm:?} to clone disk {disk:?} from does not exist in this namespace"
            ),
        );
    };
    if source.spec.host_pool != host_pool {
        return wait(
            SOURCE_ELSEWHERE,
            format!(
                "VirtualMachine {vm:?} is in HostPool {:?}, this VM in {host_pool:?}: a clone is copied within one pool's storage",
                source.spec.host_pool
            ),
        );
    }
    let Some(spec_disk) = source.spec.disks.iter().find(|d| &d.name == disk) else {
        return wait(
            SOURCE_NOT_FOUND,
            format!("VirtualMachine {vm:?} has no disk {disk:?}"),
        );
    };
    let recorded = source
        .status
        .as_ref()
        .and_then(|s| s.disks.iter().rev().find(|d| &d.name == disk));
    let volume = match (recorded, &spec_disk.volume) {
        (Some(r), _) if r.pool != storage_pool => {
            return wait(
                SOURCE_ELSEWHERE,
                format!(
                    "disk {disk:?} of VirtualMachine {vm:?} is in storage pool {:?}, this VM's pool is {storage_pool:?}",
                    r.pool
                ),
            );
        }
        (Some(r), _) => r.volume.clone(),
        (None, Some(v)) => v.clone(),
        (None, None) => {
            return wait(
                SOURCE_NOT_FOUND,
                format!(
                    "disk {disk:?} of VirtualMachine {vm:?} has no volume yet (it is made when that VM is first started)"
                ),
            );
        }
    };
    let phase = source.status.as_ref().and_then(|s| s.phase);
    let stopped = matches!(
        phase,
        None | Some(VmPhase::Pending | VmPhase::Provisioning | VmPhase::Stopped | VmPhase::Failed)
    );
    if domain_active == Some(true) || !stopped {
        return wait(
            SOURCE_RUNNING,
            format!(
                "VirtualMachine {vm:?} is {}: stop it (runStrategy: Halted) to clone its disk {disk:?} consistently",
                phase.map_or("running".to_string(), |p| format!("{p:?}"))
            ),
        );
    }
    CloneDecision::Copy { volume }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::VirtualMachineStatus;
    use crate::api::virtual_machine::DiskStatus;
    use serde_json::json;

    fn source(pool: &str, phase: Option<VmPhase>, disks: &[(&str, &str, &str)]) -> VirtualMachine {
        let mut vm: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "src", "namespace": "ns"},
            "spec": {"hostPool": pool, "cpu": {"cores": 1}, "memory": "128Mi",
                     "disks": [{"name": "root", "image": "golden.qcow2"},
                               {"name": "data", "volume": "data.raw"}]}
        }))
        .expect("vm");
        vm.status = Some(VirtualMachineStatus {
            phase,
            disks: disks
                .iter()
                .map(|(n, p, v)| DiskStatus {
                    name: n.to_string(),
                    pool: p.to_string(),
                    volume: v.to_string(),
                })
                .collect(),
            ..Default::default()
        });
        vm
    }

    fn clone(disk: &str) -> DiskClone {
        DiskClone {
            virtual_machine: "src".into(),
            disk: disk.into(),
        }
    }

    /// Name, disk, source, libvirt's answer, expected decision (`Err`: the reason to wait).
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<&'a VirtualMachine>,
        Option<bool>,
        Result<CloneDecision, &'a str>,
    );

    #[test]
    fn table() {
        let root = [("root", "ferry", "ns_src_root.qcow2")];
        let stopped = source("lab", Some(VmPhase::Stopped), &root);
        let running = source("lab", Some(VmPhase::Running), &root);
        let migrating = source("lab", Some(VmPhase::Migrating), &root);
        let unknown = source("lab", Some(VmPhase::Unknown), &root);
        let other_pool = source("other", Some(VmPhase::Stopped), &root);
        let other_storage = source("lab", Some(VmPhase::Stopped), &[("root", "else", "x")]);
        let never_started = source("lab", None, &[]);
        let copy = |v: &str| CloneDecision::Copy { volume: v.into() };
        let cases: Vec<Case> = vec![
            (
                "stopped source",
                "root",
                Some(&stopped),
                Some(false),
                Ok(copy("ns_src_root.qcow2")),
            ),
            (
                "stopped, other host (libvirt not asked)",
                "root",
                Some(&stopped),
                None,
                Ok(copy("ns_src_root.qcow2")),
            ),
            (
                "status says stopped, libvirt says running",
                "root",
                Some(&stopped),
                Some(true),
                Err(SOURCE_RUNNING),
            ),
            (
                "running",
                "root",
                Some(&running),
                Some(true),
                Err(SOURCE_RUNNING),
            ),
            (
                "running per status, other host",
                "root",
                Some(&running),
                None,
                Err(SOURCE_RUNNING),
            ),
            (
                "migrating",
                "root",
                Some(&migrating),
                None,
                Err(SOURCE_RUNNING),
            ),
            (
                "unknown (host unreachable)",
                "root",
                Some(&unknown),
                None,
                Err(SOURCE_RUNNING),
            ),
            ("no such VM", "root", None, None, Err(SOURCE_NOT_FOUND)),
            (
                "no such disk",
                "swap",
                Some(&stopped),
                Some(false),
                Err(SOURCE_NOT_FOUND),
            ),
            (
                "image disk never provisioned",
                "root",
                Some(&never_started),
                None,
                Err(SOURCE_NOT_FOUND),
            ),
            (
                "volume disk: that volume",
                "data",
                Some(&never_started),
                None,
                Ok(copy("data.raw")),
            ),
            (
                "other HostPool",
                "root",
                Some(&other_pool),
                Some(false),
                Err(SOURCE_ELSEWHERE),
            ),
            (
                "other storage pool",
                "root",
                Some(&other_storage),
                Some(false),
                Err(SOURCE_ELSEWHERE),
            ),
        ];
        for (name, disk, src, active, want) in cases {
            let got = decide(&clone(disk), "lab", "ferry", src, active);
            match (&got, &want) {
                (CloneDecision::Copy { .. }, Ok(w)) => assert_eq!(&got, w, "{name}"),
                (CloneDecision::Wait { reason, message }, Err(w)) => {
                    assert_eq!(reason, w, "{name}: {message}");
                    assert!(
                        message.contains("src"),
                        "{name}: names the source: {message}"
                    );
                }
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }
}
