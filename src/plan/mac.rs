//! MAC addresses are unique within a HostPool: two VMs of one pool (one namespace, one
//! `spec.hostPool`) never run with the same MAC, whether it was set in the spec, recorded in
//! status or derived from the VM's UID.
//!
//! When two VMs want one MAC, the one that holds it keeps it: first a VM whose status records it
//! (its domain was defined with it), then the older VM, then the name. The other one is refused.

use crate::api::VirtualMachine;
use crate::plan::definition;
use k8s_openapi::jiff::Timestamp;

/// Where a NIC's MAC comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `spec.networks[].mac`.
    Spec,
    /// Chosen by ferry (derived from the UID, then recorded in status).
    Chosen,
}

/// One NIC's MAC as ferry would define it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicMac {
    /// Index in `spec.networks`.
    pub index: usize,
    pub nic: String,
    /// Lower case.
    pub mac: String,
    pub origin: Origin,
    /// The VM's status records this MAC for this NIC: its domain was defined with it.
    pub recorded: bool,
}

/// A VM's claim on MACs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    /// `namespace/name`.
    pub name: String,
    pub uid: String,
    pub created: Option<Timestamp>,
    pub nics: Vec<NicMac>,
}

impl Claimant {
    /// The MACs `vm` would be defined with (spec, else status, else derived).
    pub fn of(vm: &VirtualMachine) -> Claimant {
        let recorded = vm
            .status
            .as_ref()
            .map(|s| s.interfaces.as_slice())
            .unwrap_or(&[]);
        let nics = vm
            .spec
            .networks
            .iter()
            .zip(definition::macs(vm))
            .enumerate()
            .map(|(index, (n, i))| NicMac {
                index,
                nic: n.name.clone(),
                recorded: recorded
                    .iter()
                    .any(|r| r.name == n.name && r.mac.eq_ignore_ascii_case(&i.mac)),
                origin: if n.mac.is_some() {
                    Origin::Spec
                } else {
                    Origin::Chosen
                },
                mac: i.mac,
            })
            .collect();
        Claimant {
            name: format!(
                "{}/{}",
                vm.metadata.namespace.as_deref().unwrap_or_default(),
                vm.metadata.name.as_deref().unwrap_or_default()
            ),
            uid: vm.metadata.uid.clone().unwrap_or_default(),
            created: vm.metadata.creation_timestamp.as_ref().map(|t| t.0),
            nics,
        }
    }

    /// Order of precedence on `nic`'s MAC: lower holds it.
    fn rank(&self, nic: &NicMac) -> (bool, bool, Timestamp, &str) {
        (
            !nic.recorded,
            self.created.is_none(),
            self.created.unwrap_or_default(),
            &self.name,
        )
    }
}

/// Whether `vm`'s status already records every MAC it would use: it holds them (it passed
/// [`check_vm`] when it recorded them), so it need not be checked against the other VMs.
fn holds_its_macs(vm: &VirtualMachine) -> bool {
    Claimant::of(vm).nics.iter().all(|n| n.recorded)
}

/// Check `vm` against the other VMs of its HostPool among those `vms` lists (see [`check`]). A
/// VM that holds its MACs passes without listing them, so a steady pool costs nothing here (the
/// list of every VM is not made).
pub fn check_vm(
    vm: &VirtualMachine,
    vms: impl FnOnce() -> Vec<std::sync::Arc<VirtualMachine>>,
) -> Result<(), String> {
    if holds_its_macs(vm) {
        return Ok(());
    }
    let me = Claimant::of(vm);
    let pool = vm.spec.host_pool.as_str();
    let rivals: Vec<Claimant> = vms()
        .iter()
        .filter(|v| {
            v.metadata.namespace == vm.metadata.namespace
                && v.spec.host_pool == pool
                && v.metadata.uid != vm.metadata.uid
                && me.nics.iter().any(|n| may_use(v, &n.mac))
        })
        .map(|v| Claimant::of(v))
        .collect();
    check(&me, &rivals, pool)
}

/// Whether `vm` may use `mac` (lower case) on some NIC: a cheap first filter before
/// [`Claimant::of`] (a NIC with neither a spec nor a recorded MAC counts as maybe).
fn may_use(vm: &VirtualMachine, mac: &str) -> bool {
    let recorded = vm
        .status
        .as_ref()
        .map(|s| s.interfaces.as_slice())
        .unwrap_or(&[]);
    vm.spec.networks.iter().any(|n| {
        let r = recorded.iter().find(|r| r.name == n.name);
        match (&n.mac, r) {
            (Some(m), _) => m.eq_ignore_ascii_case(mac),
            (None, Some(r)) => r.mac.eq_ignore_ascii_case(mac),
            (None, None) => true,
        }
    })
}

/// Why `me` may not use its MACs in `pool` next to `others` (the VMs of the same pool; `me`
/// itself among them is ignored), or `Ok` when every MAC is its own.
pub fn check(me: &Claimant, others: &[Claimant], pool: &str) -> Result<(), String> {
    let mut problems = Vec::new();
    for (i, nic) in me.nics.iter().enumerate() {
        let field = format!("spec.networks[{}] ({})", nic.index, nic.nic);
        if let Some(first) = me.nics[..i].iter().find(|n| n.mac == nic.mac) {
            problems.push(format!(
                "{field} has the MAC {} of spec.networks[{}] ({}): {}",
                nic.mac,
                first.index,
                first.nic,
                fix(nic)
            ));
            continue;
        }
        let holder = others
            .iter()
            .filter(|o| o.uid != me.uid)
            .flat_map(|o| o.nics.iter().map(move |n| (o, n)))
            .filter(|(_, n)| n.mac == nic.mac)
            .min_by(|(a, an), (b, bn)| a.rank(an).cmp(&b.rank(bn)));
        if let Some((o, n)) = holder
            && o.rank(n) < me.rank(nic)
        {
            problems.push(format!(
                "{field} has the MAC {} that VirtualMachine {} ({}) already uses in HostPool {pool}: {}",
                nic.mac,
                o.name,
                n.nic,
                fix(nic)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// What the owner of `nic` can do about a clash.
fn fix(nic: &NicMac) -> String {
    match nic.origin {
        Origin::Spec => format!(
            "choose another address (spec.networks[{}].mac cannot be changed once set, so recreate the VirtualMachine with it)",
            nic.index
        ),
        Origin::Chosen => format!(
            "set spec.networks[{}].mac to an address no other VM of the pool uses",
            nic.index
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A VM `name` created at second `created` with NICs `(name, spec mac)` and the MACs its
    /// status records `(nic, mac)`.
    fn vm(
        name: &str,
        created: i64,
        nics: &[(&str, Option<&str>)],
        recorded: &[(&str, &str)],
    ) -> Claimant {
        Claimant::of(&vm_in("team", "p", name, created, nics, recorded))
    }

    fn vm_in(
        ns: &str,
        pool: &str,
        name: &str,
        created: i64,
        nics: &[(&str, Option<&str>)],
        recorded: &[(&str, &str)],
    ) -> VirtualMachine {
        serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                         "creationTimestamp": Timestamp::from_second(created).expect("time")},
            "spec": {
                "hostPool": pool, "cpu": {"cores": 1}, "memory": "128Mi",
                "networks": nics.iter().map(|(n, m)| match m {
                    Some(m) => json!({"name": n, "bridge": "br0", "mac": m}),
                    None => json!({"name": n, "bridge": "br0"}),
                }).collect::<Vec<_>>()
            },
            "status": {"interfaces": recorded.iter()
                .map(|(n, m)| json!({"name": n, "mac": m})).collect::<Vec<_>>()}
        }))
        .expect("VM")
    }

    const A: &str = "52:54:00:00:00:0a";
    const B: &str = "52:54:00:00:00:0b";

    struct Case {
        name: &'static str,
        me: Claimant,
        others: Vec<Claimant>,
        /// `None`: accepted; `Some(needle)`: refused with a message containing it.
        refused: Option<&'static str>,
    }

    #[test]
    fn mac_clashes() {
        let derived = vm("d", 10, &[("eth0", None)], &[]).nics[0].mac.clone();
        let derived = derived.as_str();
        let cases = [
            Case {
                name: "distinct MACs are fine",
                me: vm("me", 20, &[("eth0", Some(A))], &[]),
                others: vec![vm("x", 10, &[("eth0", Some(B))], &[])],
                refused: None,
            },
            Case {
                name: "an older VM already asks for the MAC",
                me: vm("me", 20, &[("eth0", Some(A))], &[]),
                others: vec![vm("x", 10, &[("eth0", Some(A))], &[])],
                refused: Some("VirtualMachine team/x (eth0) already uses in HostPool p"),
            },
            Case {
                name: "the older VM keeps it: the newer one is refused, not this one",
                me: vm("me", 10, &[("eth0", Some(A))], &[]),
                others: vec![vm("x", 20, &[("eth0", Some(A))], &[])],
                refused: None,
            },
            Case {
                name: "a MAC in use (recorded in status) wins over an older VM's request",
                me: vm("me", 10, &[("eth0", Some(A))], &[]),
                others: vec![vm("x", 20, &[("eth0", Some(A))], &[("eth0", A)])],
                refused: Some("team/x"),
            },
            Case {
                name: "same age: the name decides, so exactly one of the two is refused",
                me: vm("b", 10, &[("eth0", Some(A))], &[]),
                others: vec![vm("a", 10, &[("eth0", Some(A))], &[])],
                refused: Some("team/a"),
            },
            Case {
                name: "asking for another VM's derived MAC",
                me: vm("me", 20, &[("eth0", Some(derived))], &[]),
                others: vec![vm("d", 10, &[("eth0", None)], &[("eth0", derived)])],
                refused: Some("cannot be changed once set"),
            },
            Case {
                name: "a derived MAC another VM already asked for: set one",
                me: vm("d", 10, &[("eth0", None)], &[]),
                others: vec![vm("x", 5, &[("eth0", Some(derived))], &[("eth0", derived)])],
                refused: Some("set spec.networks[0].mac to an address"),
            },
            Case {
                name: "MACs compare without case",
                me: vm("me", 20, &[("eth0", Some("52:54:00:00:00:AA"))], &[]),
                others: vec![vm("x", 10, &[("eth0", Some("52:54:00:00:00:aa"))], &[])],
                refused: Some("team/x"),
            },
            Case {
                name: "two NICs of one VM with one MAC",
                me: vm("me", 20, &[("eth0", Some(A)), ("eth1", Some(A))], &[]),
                others: vec![],
                refused: Some(
                    "spec.networks[1] (eth1) has the MAC 52:54:00:00:00:0a of spec.networks[0] (eth0)",
                ),
            },
            Case {
                name: "the VM itself in the list does not clash with itself",
                me: vm("me", 20, &[("eth0", Some(A))], &[("eth0", A)]),
                others: vec![vm("me", 20, &[("eth0", Some(A))], &[("eth0", A)])],
                refused: None,
            },
            Case {
                name: "every clash is named",
                me: vm("me", 20, &[("eth0", Some(A)), ("eth1", Some(B))], &[]),
                others: vec![
                    vm("x", 10, &[("eth0", Some(A))], &[]),
                    vm("y", 10, &[("eth0", Some(B))], &[]),
                ],
                refused: Some(
                    "team/x (eth0) already uses in HostPool p: choose another address (spec.networks[0].mac cannot be changed once set, so recreate the VirtualMachine with it); spec.networks[1] (eth1) has the MAC 52:54:00:00:00:0b that VirtualMachine team/y",
                ),
            },
        ];
        for c in cases {
            let got = check(&c.me, &c.others, "p");
            match (c.refused, got) {
                (None, Ok(())) => {}
                (Some(needle), Err(m)) => {
                    assert!(m.contains(needle), "{}: {m:?} lacks {needle:?}", c.name)
                }
                (want, got) => panic!("{}: want refused={want:?}, got {got:?}", c.name),
            }
        }
    }

    #[test]
    fn only_vms_of_the_same_pool_count_and_settled_vms_are_not_checked_again() {
        use std::sync::Arc;
        let older =
            |ns: &str, pool: &str| Arc::new(vm_in(ns, pool, "x", 10, &[("eth0", Some(A))], &[]));
        let me = vm_in("team", "p", "me", 20, &[("eth0", Some(A))], &[]);
        assert!(check_vm(&me, || vec![older("team", "p")]).is_err());
        assert_eq!(check_vm(&me, || vec![older("team", "other")]), Ok(()));
        assert_eq!(check_vm(&me, || vec![older("elsewhere", "p")]), Ok(()));
        // A VM that never ran yet (no recorded MAC) is compared by its derived MAC.
        let fresh = vm_in("team", "p", "fresh", 10, &[("eth0", None)], &[]);
        let its_mac = Claimant::of(&fresh).nics[0].mac.clone();
        let copycat = vm_in("team", "p", "copycat", 20, &[("eth0", Some(&its_mac))], &[]);
        assert!(check_vm(&copycat, || vec![Arc::new(fresh)]).is_err());
        // Recorded MACs were checked when they were recorded.
        let settled = vm_in("team", "p", "me", 20, &[("eth0", Some(A))], &[("eth0", A)]);
        assert_eq!(check_vm(&settled, || vec![older("team", "p")]), Ok(()));
        assert!(holds_its_macs(&settled) && !holds_its_macs(&me) && !holds_its_macs(&copycat));
        // The VM itself, as the cache holds it, is no rival.
        assert_eq!(check_vm(&me, || vec![Arc::new(me.clone())]), Ok(()));
    }
}
