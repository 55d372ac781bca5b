//! Host capacity: what a host has, what VMs may use of it, and what its domains already use.

use crate::api::HostPool;
use crate::api::host_pool::Resources;
use crate::plan::domain::DomainInfo;
use crate::plan::quantity::parse_bytes;
use std::collections::HashSet;

/// CPUs and memory, as placement counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Amount {
    /// CPUs (physical for a capacity, virtual otherwise).
    pub cpus: u64,
    /// Bytes.
    pub memory: u64,
}

impl Amount {
    /// Component-wise sum, saturating.
    pub fn plus(self, o: Amount) -> Amount {
        Amount {
            cpus: self.cpus.saturating_add(o.cpus),
            memory: self.memory.saturating_add(o.memory),
        }
    }
}

impl From<&Resources> for Amount {
    /// CPUs and memory as a HostPool's status shows them (memory 0 when it does not parse).
    fn from(r: &Resources) -> Self {
        Amount {
            cpus: r.cpus.max(0) as u64,
            memory: parse_bytes(&r.memory).unwrap_or(0),
        }
    }
}

impl From<Amount> for Resources {
    /// As a HostPool's status shows it.
    fn from(a: Amount) -> Self {
        Resources {
            cpus: i64::try_from(a.cpus).unwrap_or(i64::MAX),
            memory: quantity(a.memory),
        }
    }
}

/// A HostPool's capacity settings with defaults applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// vCPUs per physical CPU (≥ 1).
    pub cpu_overcommit: f64,
    /// Guest memory per byte of host memory (≥ 1).
    pub memory_overcommit: f64,
    /// Physical CPUs kept for the host.
    pub reserved_cpus: u64,
    /// Bytes kept for the host.
    pub reserved_memory: u64,
}

impl Default for Policy {
    /// No overcommit, nothing reserved.
    fn default() -> Self {
        Policy {
            cpu_overcommit: 1.0,
            memory_overcommit: 1.0,
            reserved_cpus: 0,
            reserved_memory: 0,
        }
    }
}

/// Default of every overcommit ratio.
const NO_OVERCOMMIT: f64 = 1.0;

impl Policy {
    /// The pool's capacity settings: ratios (1 unless set), reserved CPUs and bytes. Values the
    /// schema would reject fall back to the defaults.
    pub fn of(pool: &HostPool) -> Self {
        let c = pool.spec.capacity.clone().unwrap_or_default();
        let ratio = |v: &Option<String>, max: f64| {
            v.as_deref()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|r| r.is_finite() && *r >= 1.0 && *r <= max)
                .unwrap_or(NO_OVERCOMMIT)
        };
        Policy {
            cpu_overcommit: ratio(&c.cpu_overcommit, 64.99),
            memory_overcommit: ratio(&c.memory_overcommit, 4.99),
            reserved_cpus: c.reserved_cpus.unwrap_or(0).max(0) as u64,
            reserved_memory: c
                .reserved_memory
                .as_deref()
                .and_then(|q| parse_bytes(q).ok())
                .unwrap_or(0),
        }
    }
}

/// What VMs may use of a host: (capacity − reserved) × overcommit, rounded down.
pub fn allocatable(capacity: Amount, policy: &Policy) -> Amount {
    let scale = |v: u64, reserved: u64, ratio: f64| {
        let scaled = (v.saturating_sub(reserved) as f64 * ratio.max(1.0)).floor();
        if scaled.is_finite() && scaled < u64::MAX as f64 {
            scaled as u64
        } else {
            u64::MAX
        }
    };
    Amount {
        cpus: scale(capacity.cpus, policy.reserved_cpus, policy.cpu_overcommit),
        memory: scale(
            capacity.memory,
            policy.reserved_memory,
            policy.memory_overcommit,
        ),
    }
}

/// What the domains of one host add up to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tally {
    /// vCPUs and memory of ferry's domains, running or not.
    pub ferry: Amount,
    /// Number of ferry's domains.
    pub ferry_domains: usize,
    /// vCPUs and memory of the running domains ferry does not manage.
    pub foreign: Amount,
    /// Number of domains ferry does not manage, running or not.
    pub foreign_domains: usize,
    /// Names of ferry's domains whose owner UID is not among the known VMs, sorted.
    pub orphans: Vec<String>,
}

/// Add up a host's domains. A domain is ferry's when its live or persistent definition carries
/// ferry's metadata; it is an orphan when its owner's UID is not in `vm_uids` (pass `None` when
/// the set of VMs is not known yet: no orphans are reported then).
pub fn tally(domains: &[DomainInfo], vm_uids: Option<&HashSet<String>>) -> Tally {
    let mut t = Tally::default();
    for d in domains {
        let amount = Amount {
            cpus: u64::from(d.vcpus),
            memory: d.memory_kib.saturating_mul(1024),
        };
        match d.live.as_ref().or(d.config.as_ref()) {
            Some(meta) => {
                t.ferry = t.ferry.plus(amount);
                t.ferry_domains += 1;
                if vm_uids.is_some_and(|uids| !uids.contains(&meta.owner.uid)) {
                    t.orphans.push(d.name.clone());
                }
            }
            None => {
                t.foreign_domains += 1;
                if d.state.is_active() {
                    t.foreign = t.foreign.plus(amount);
                }
            }
        }
    }
    t.orphans.sort();
    t
}

/// Bytes as an exact Kubernetes quantity in the largest binary unit that divides them
/// (`128Mi`, `7936Mi`, `1536Ki`, `100`).
pub fn quantity(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["Ki", "Mi", "Gi", "Ti", "Pi"];
    if bytes == 0 {
        return "0".into();
    }
    let mut v = bytes;
    let mut unit = "";
    for u in UNITS {
        if !v.is_multiple_of(1024) {
            break;
        }
        v /= 1024;
        unit = u;
    }
    format!("{v}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::domain::{DomainState, FerryMetadata, Owner, ShutOffReason};

    const GI: u64 = 1 << 30;

    fn dom(name: &str, owner: Option<&str>, running: bool, vcpus: u32, mib: u64) -> DomainInfo {
        let meta = owner.map(|uid| FerryMetadata {
            owner: Owner {
                namespace: "ns".into(),
                name: name.into(),
                uid: uid.into(),
            },
            definition_hash: String::new(),
            shape: Default::default(),
        });
        DomainInfo {
            name: name.into(),
            uuid: format!("uuid-{name}"),
            state: if running {
                DomainState::Running
            } else {
                DomainState::ShutOff(ShutOffReason::Other)
            },
            persistent: true,
            vcpus,
            memory_kib: mib * 1024,
            live: None,
            config: meta,
        }
    }

    #[test]
    fn allocatable_applies_reservations_then_overcommit() {
        let cap = Amount {
            cpus: 8,
            memory: 16 * GI,
        };
        assert_eq!(allocatable(cap, &Policy::default()), cap);
        let p = Policy {
            cpu_overcommit: 4.0,
            memory_overcommit: 1.5,
            reserved_cpus: 2,
            reserved_memory: 4 * GI,
        };
        assert_eq!(
            allocatable(cap, &p),
            Amount {
                cpus: 24,
                memory: 18 * GI
            }
        );
        // Reservations larger than the host leave nothing, not a wrap-around.
        let greedy = Policy {
            reserved_cpus: 100,
            ..Policy::default()
        };
        assert_eq!(allocatable(cap, &greedy).cpus, 0);
        // Fractional results round down.
        let odd = Policy {
            cpu_overcommit: 1.5,
            ..Policy::default()
        };
        let three = Amount { cpus: 3, memory: 0 };
        assert_eq!(allocatable(three, &odd).cpus, 4);
    }

    #[test]
    fn tally_separates_ferry_foreign_and_orphans() {
        let doms = [
            dom("ns_a", Some("uid-a"), true, 2, 512),
            dom("ns_b", Some("uid-b"), false, 1, 256),
            dom("ns_gone", Some("uid-gone"), true, 1, 128),
            dom("legacy", None, true, 4, 1024),
            dom("legacy-off", None, false, 8, 4096),
        ];
        let uids: HashSet<String> = ["uid-a".to_string(), "uid-b".to_string()].into();
        let t = tally(&doms, Some(&uids));
        assert_eq!(
            t.ferry,
            Amount {
                cpus: 4,
                memory: 896 << 20
            }
        );
        assert_eq!(t.ferry_domains, 3);
        assert_eq!(
            t.foreign,
            Amount {
                cpus: 4,
                memory: GI
            }
        );
        assert_eq!(t.foreign_domains, 2);
        assert_eq!(t.orphans, vec!["ns_gone".to_string()]);
        // Without the VM list, nothing is called an orphan.
        assert!(tally(&doms, None).orphans.is_empty());
    }

    #[test]
    fn quantities_are_exact() {
        assert_eq!(quantity(0), "0");
        assert_eq!(quantity(100), "100");
        assert_eq!(quantity(128 << 20), "128Mi");
        assert_eq!(quantity(7936 << 20), "7936Mi");
        assert_eq!(quantity(1536 << 10), "1536Ki");
        assert_eq!(quantity(4 * GI), "4Gi");
    }
}
