//! Admission control: do the covered VMs still fit after the failures the policy tolerates?
//!
//! Capacity is counted per pool in aggregate (CPUs and memory separately, what placement calls
//! allocatable): with `hostFailuresToTolerate` N, the N hosts with the most allocatable memory
//! are assumed lost; with `reservedPercent` P, that share of the total is kept free. VMs are
//! admitted in restart-priority order (then by name); those that do not fit are "beyond capacity".
//! Aggregates ignore fragmentation: a VM larger than any surviving host is caught by placement.

use super::capacity::Amount;

/// How much room to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// Survive this many host failures.
    HostFailures(u32),
    /// Keep this percentage of the pool free.
    Percent(u32),
}

/// A VM the policy covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    pub name: String,
    pub priority: i32,
    pub need: Amount,
}

/// The verdict, with the numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What the covered VMs may use after the reservation.
    pub capacity: Amount,
    /// What all covered VMs need.
    pub demand: Amount,
    /// VMs beyond the capacity, by name, lowest priority last.
    pub beyond: Vec<String>,
    /// A sentence with the numbers.
    pub message: String,
}

impl Verdict {
    /// Every covered VM fits.
    pub fn ok(&self) -> bool {
        self.beyond.is_empty()
    }
}

/// Evaluate admission control for a pool: `hosts` are the allocatable amounts of its hosts.
pub fn evaluate(hosts: &[Amount], vms: &[Protected], reserve: Reserve) -> Verdict {
    let capacity = match reserve {
        Reserve::HostFailures(n) => {
            let mut sorted = hosts.to_vec();
            sorted.sort_by(|a, b| b.memory.cmp(&a.memory).then(b.cpus.cmp(&a.cpus)));
            sorted
                .iter()
                .skip(n as usize)
                .fold(Amount::default(), |s, h| s.plus(*h))
        }
        Reserve::Percent(p) => {
            let total = hosts.iter().fold(Amount::default(), |s, h| s.plus(*h));
            let keep = 100u128.saturating_sub(p.min(100) as u128);
            Amount {
                cpus: (total.cpus as u128 * keep / 100) as u64,
                memory: (total.memory as u128 * keep / 100) as u64,
            }
        }
    };
    let mut order: Vec<&Protected> = vms.iter().collect();
    order.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
    let mut used = Amount::default();
    let mut beyond = Vec::new();
    for vm in order {
        let next = used.plus(vm.need);
        if next.cpus <= capacity.cpus && next.memory <= capacity.memory {
            used = next;
        } else {
            beyond.push(vm.name.clone());
        }
    }
    let demand = vms.iter().fold(Amount::default(), |s, v| s.plus(v.need));
    let what = match reserve {
        Reserve::HostFailures(n) => format!("after {n} host failure(s)"),
        Reserve::Percent(p) => format!("with {p}% reserved"),
    };
    let mib = |b: u64| b >> 20;
    let message = format!(
        "{} VM(s) need {} vCPUs and {} MiB; {what} the pool has {} vCPUs and {} MiB{}",
        vms.len(),
        demand.cpus,
        mib(demand.memory),
        capacity.cpus,
        mib(capacity.memory),
        if beyond.is_empty() {
            String::new()
        } else {
            format!(
                "; beyond capacity: {} ({} VM(s))",
                beyond.join(", "),
                beyond.len()
            )
        }
    );
    Verdict {
        capacity,
        demand,
        beyond,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: u64 = 1 << 30;

    fn a(cpus: u64, gib: u64) -> Amount {
        Amount {
            cpus,
            memory: gib * GI,
        }
    }

    fn vm(name: &str, priority: i32, cpus: u64, gib: u64) -> Protected {
        Protected {
            name: name.into(),
            priority,
            need: a(cpus, gib),
        }
    }

    type Case = (
        &'static str,
        Vec<Protected>,
        Reserve,
        Amount,
        Vec<&'static str>,
    );

    #[test]
    fn table() {
        let three = [a(8, 16), a(8, 32), a(8, 16)];
        let cases: Vec<Case> = vec![
            (
                "one failure: the largest host is lost",
                vec![vm("a", 0, 4, 16), vm("b", 0, 4, 16)],
                Reserve::HostFailures(1),
                a(16, 32),
                vec![],
            ),
            (
                "over by memory: the lowest priority is beyond",
                vec![vm("a", 0, 2, 16), vm("b", 5, 2, 16), vm("c", 0, 2, 8)],
                Reserve::HostFailures(1),
                a(16, 32),
                vec!["c"],
            ),
            (
                "a later small VM still fits after a big one did not",
                vec![vm("big", 9, 1, 40), vm("small", 0, 1, 1)],
                Reserve::HostFailures(1),
                a(16, 32),
                vec!["big"],
            ),
            (
                "two failures",
                vec![vm("a", 0, 9, 1)],
                Reserve::HostFailures(2),
                a(8, 16),
                vec!["a"],
            ),
            (
                "percent reserved",
                vec![vm("a", 0, 12, 30), vm("b", 0, 1, 1)],
                Reserve::Percent(50),
                a(12, 32),
                vec!["b"],
            ),
            (
                "more failures than hosts",
                vec![vm("a", 0, 1, 1)],
                Reserve::HostFailures(5),
                a(0, 0),
                vec!["a"],
            ),
        ];
        for (what, vms, reserve, capacity, beyond) in cases {
            let v = evaluate(&three, &vms, reserve);
            assert_eq!(v.capacity, capacity, "{what}: capacity");
            assert_eq!(v.beyond, beyond, "{what}: beyond");
            assert_eq!(v.ok(), beyond.is_empty(), "{what}");
        }
    }

    #[test]
    fn message_has_the_numbers() {
        let v = evaluate(
            &[a(4, 4), a(4, 4)],
            &[vm("a", 0, 2, 2), vm("b", 0, 4, 4)],
            Reserve::HostFailures(1),
        );
        assert_eq!(
            v.message,
            "2 VM(s) need 6 vCPUs and 6144 MiB; after 1 host failure(s) the pool has 4 vCPUs and 4096 MiB; beyond capacity: b (1 VM(s))"
        );
    }
}
