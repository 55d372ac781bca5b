//! Checks of a VirtualMachine spec that the CRD schema cannot express (or that an API server
//! without the CRD's CEL rules would let through), turned into numbers the planner uses.

use crate::api::VirtualMachineSpec;
use crate::plan::capacity::Amount;
use crate::plan::class::Resources;
use crate::plan::quantity::{human_bytes, parse_bytes};
use std::collections::BTreeSet;

/// Smallest and largest guest memory ferry accepts.
pub const MEMORY_RANGE: (u64, u64) = (16 << 20, 4 << 40);

/// A spec that passed validation, with its quantities resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSpec {
    pub vcpus: u32,
    /// CPU model from the spec or the class (`None`: host-model).
    pub cpu_model: Option<String>,
    pub memory_bytes: u64,
    /// Requested overlay size per disk name (only disks that set `size`).
    pub disk_sizes: Vec<(String, u64)>,
}

impl ValidSpec {
    /// What the VM asks of a host.
    pub fn need(&self) -> Amount {
        Amount {
            cpus: u64::from(self.vcpus),
            memory: self.memory_bytes,
        }
    }
}

/// Validate `spec` with its resolved size `res`, returning every problem found in one message a
/// person can act on.
pub fn validate(spec: &VirtualMachineSpec, res: &Resources) -> Result<ValidSpec, String> {
    let mut problems = Vec::new();
    let origin = match &res.class_name {
        Some(c) => format!("VirtualMachineClass {c} spec"),
        None => "spec".to_string(),
    };
    if !(1..=256).contains(&res.cpu.cores) {
        problems.push(format!(
            "{origin}.cpu.cores is {}; use 1 to 256",
            res.cpu.cores
        ));
    }
    let memory_bytes = match parse_bytes(&res.memory) {
        Ok(b) if (MEMORY_RANGE.0..=MEMORY_RANGE.1).contains(&b) => b,
        Ok(b) => {
            problems.push(format!(
                "{origin}.memory {} ({}) is outside {} to {}",
                res.memory,
                human_bytes(b),
                human_bytes(MEMORY_RANGE.0),
                human_bytes(MEMORY_RANGE.1)
            ));
            0
        }
        Err(e) => {
            problems.push(format!("{origin}.memory: {e}"));
            0
        }
    };
    let mut names = BTreeSet::new();
    let mut disk_sizes = Vec::new();
    for (i, d) in spec.disks.iter().enumerate() {
        if !names.insert(d.name.as_str()) {
            problems.push(format!("spec.disks[{i}].name {:?} is used twice", d.name));
        }
        if d.source().is_none() {
            problems.push(format!(
                "spec.disks[{i}] ({}) needs exactly one of image, volume or http",
                d.name
            ));
        }
        if let Some(size) = &d.size {
            match parse_bytes(size) {
                Ok(b) if b >= 1 << 20 => disk_sizes.push((d.name.clone(), b)),
                Ok(_) => problems.push(format!("spec.disks[{i}].size {size} is below 1Mi")),
                Err(e) => problems.push(format!("spec.disks[{i}].size: {e}")),
            }
            if d.volume.is_some() {
                problems.push(format!(
                    "spec.disks[{i}].size only applies to image disks; existing volumes keep their size"
                ));
            }
        }
    }
    if spec.disks.is_empty() && spec.boot.is_none() {
        problems.push("the VM has nothing to boot: add a disk or spec.boot.kernel".into());
    }
    let mut nic_names = BTreeSet::new();
    for (i, n) in spec.networks.iter().enumerate() {
        if !nic_names.insert(n.name.as_str()) {
            problems.push(format!(
                "spec.networks[{i}].name {:?} is used twice",
                n.name
            ));
        }
        if n.source().is_none() {
            problems.push(format!(
                "spec.networks[{i}] ({}) needs exactly one of network or bridge",
                n.name
            ));
        }
        if let Some(mac) = &n.mac {
            if !valid_mac(mac) {
                problems.push(format!(
                    "spec.networks[{i}].mac {mac:?} is not a unicast MAC address like 52:54:00:12:34:56"
                ));
            } else if mac.split(':').all(|p| p == "00") {
                problems.push(format!(
                    "spec.networks[{i}].mac is the all-zero MAC, which no NIC may have: use a unicast address like 52:54:00:12:34:56, or leave mac unset and ferry chooses one"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(ValidSpec {
            vcpus: res.cpu.cores as u32,
            cpu_model: res.cpu.model.clone(),
            memory_bytes,
            disk_sizes,
        })
    } else {
        Err(problems.join("; "))
    }
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::virtual_machine::{CpuSpec, Disk, Nic};

    fn check(s: &VirtualMachineSpec) -> Result<ValidSpec, String> {
        let res = crate::plan::class::resolve(s, None).expect("resolved");
        validate(s, &res)
    }

    fn spec() -> VirtualMachineSpec {
        VirtualMachineSpec {
            run_strategy: None,
            host_pool: "p".into(),
            class_name: None,
            cpu: Some(CpuSpec {
                cores: 2,
                model: None,
            }),
            memory: Some("512Mi".into()),
            disks: vec![Disk {
                name: "root".into(),
                image: Some("tiny.qcow2".into()),
                volume: None,
                format: None,
                http: None,
                clone: None,
                size: Some("1Gi".into()),
                bus: None,
            }],
            networks: vec![],
            boot: None,
            placement: None,
            termination_grace_period_seconds: None,
            eviction_strategy: None,
            migration: None,
            cloud_init: None,
            consoles: None,
            adopt: None,
        }
    }

    #[test]
    fn accepts_a_good_spec() {
        let v = check(&spec()).expect("valid");
        assert_eq!(v.vcpus, 2);
        assert_eq!(v.memory_bytes, 512 << 20);
        assert_eq!(v.disk_sizes, vec![("root".into(), 1 << 30)]);
    }

    #[test]
    fn reports_every_problem() {
        let mut s = spec();
        s.memory = Some("1Ei".into());
        if let Some(c) = s.cpu.as_mut() {
            c.cores = 0;
        }
        s.disks.push(s.disks[0].clone());
        s.disks[1].volume = Some("v".into());
        s.networks.push(Nic {
            name: "n".into(),
            network: None,
            bridge: None,
            model: None,
            mac: Some("01:00:00:00:00:00".into()),
        });
        let e = check(&s).unwrap_err();
        for needle in [
            "cpu.cores is 0",
            "outside 16 MiB to 4 TiB",
            "used twice",
            "exactly one of image, volume or http",
            "exactly one of network or bridge",
            "not a unicast MAC",
        ] {
            assert!(e.contains(needle), "missing {needle:?} in {e}");
        }
    }

    #[test]
    fn macs_must_be_unicast_and_not_all_zero() {
        let with_mac = |mac: &str| {
            let mut s = spec();
            s.networks.push(Nic {
                name: "n".into(),
                network: Some("default".into()),
                bridge: None,
                model: None,
                mac: Some(mac.into()),
            });
            check(&s).map(|_| ())
        };
        assert_eq!(with_mac("52:54:00:12:34:56"), Ok(()));
        assert_eq!(with_mac("52:54:00:AB:cd:EF"), Ok(()));
        for (mac, needle) in [
            ("00:00:00:00:00:00", "all-zero MAC"),
            ("ff:ff:ff:ff:ff:ff", "not a unicast MAC"),
            ("01:00:5e:00:00:01", "not a unicast MAC"),
            ("52:54:00:12:34", "not a unicast MAC"),
            ("52-54-00-12-34-56", "not a unicast MAC"),
        ] {
            let e = with_mac(mac).unwrap_err();
            assert!(e.contains(needle), "{mac}: {e}");
        }
    }

    #[test]
    fn impossible_memory_is_explained() {
        let mut s = spec();
        s.memory = Some("lots".into());
        assert!(check(&s).unwrap_err().contains("spec.memory"));
        s.memory = Some("8Ki".into());
        assert!(check(&s).unwrap_err().contains("outside"));
    }
}
