//! `status` and `hosts`: what they print as text.

use ferry::api::host_pool::{AdoptionCandidate, HostStatus};
use ferry::api::virtual_machine::{POWER_ANNOTATION, RESTART_ANNOTATION};
use ferry::api::{HostPool, VirtualMachine};
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// `status` output.
pub fn status_report(vm: &VirtualMachine) -> String {
    let mut out = String::new();
    let st = vm.status.clone().unwrap_or_default();
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    let _ = writeln!(
        out,
        "Name:       {}/{}",
        vm.namespace().unwrap_or_default(),
        vm.name_any()
    );
    let _ = writeln!(out, "Phase:      {}", dash(st.phase.map(|p| p.to_string())));
    let _ = writeln!(
        out,
        "Host:       {} (HostPool {})",
        dash(st.host.clone()),
        vm.spec.host_pool
    );
    let mut strategy = format!("{:?}", vm.run_strategy());
    if let Some(p) = vm.annotations().get(POWER_ANNOTATION) {
        let _ = write!(strategy, " ({POWER_ANNOTATION}={p})");
    }
    let _ = writeln!(out, "Strategy:   {strategy}");
    if st.interfaces.is_empty() {
        let _ = writeln!(out, "IP:         -");
    }
    for (i, nic) in st.interfaces.iter().enumerate() {
        let label = if i == 0 { "IP:" } else { "" };
        let _ = writeln!(
            out,
            "{label:<11} {} {} ({})",
            nic.name,
            nic.ip_address.as_deref().unwrap_or("-"),
            nic.mac
        );
    }
    let requested = vm.annotations().get(RESTART_ANNOTATION);
    let last = match (&st.last_restart_request, requested) {
        (Some(done), Some(req)) if done != req => format!("{done} (requested {req}: pending)"),
        (Some(done), _) => done.clone(),
        (None, Some(req)) => format!("requested {req}: pending"),
        (None, None) => "never".to_string(),
    };
    let _ = writeln!(out, "Restarted:  {last}");
    if let (Some(g), Some(o)) = (vm.metadata.generation, st.observed_generation)
        && o < g
    {
        let _ = writeln!(
            out,
            "Note:       status describes generation {o}; the spec is at generation {g}"
        );
    }
    let _ = writeln!(out, "Conditions:");
    if st.conditions.is_empty() {
        let _ = writeln!(out, "  none yet");
    }
    for c in &st.conditions {
        let _ = writeln!(
            out,
            "  {:<16} {:<7} {:<20} {}",
            c.type_, c.status, c.reason, c.message
        );
    }
    out
}

/// `hosts` output: one table per pool, with the VMs placed on each host.
pub fn hosts_report(pools: &[HostPool], vms: &[VirtualMachine]) -> String {
    let mut out = String::new();
    for pool in pools {
        let ns = pool.namespace().unwrap_or_default();
        let name = pool.name_any();
        let st = pool.status.clone().unwrap_or_default();
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
        let _ = writeln!(
            out,
            "HostPool {ns}/{name}: {} of {} host(s) ready{}",
            st.ready_hosts,
            st.selected_hosts,
            ready.map_or(String::new(), |c| format!(
                "; Ready={} ({})",
                c.status, c.reason
            ))
        );
        let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
        for vm in vms
            .iter()
            .filter(|v| v.spec.host_pool == name && v.namespace().unwrap_or_default() == ns)
        {
            let host = vm
                .status
                .as_ref()
                .and_then(|s| s.host.clone())
                .unwrap_or_else(|| "(unplaced)".to_string());
            *per_host.entry(host).or_default() += 1;
        }
        let mut rows: Vec<(String, String, String, usize, String)> = st
            .hosts
            .iter()
            .map(|h: &HostStatus| {
                // A host power management holds is shown by its power state and what is done.
                let (state, message) = match h.power() {
                    ferry::api::power::HostPower::On => {
                        (format!("{:?}", h.state), h.message.clone())
                    }
                    p => (p.to_string(), h.power_message.clone()),
                };
                (
                    h.name.clone(),
                    state,
                    h.libvirt_version.clone().unwrap_or_else(|| "-".into()),
                    per_host.remove(&h.name).unwrap_or(0),
                    message.unwrap_or_default(),
                )
            })
            .collect();
        for (host, count) in per_host {
            let note = if host == "(unplaced)" {
                "waiting for a host".to_string()
            } else {
                "no longer in the pool's status".to_string()
            };
            rows.push((host, "-".into(), "-".into(), count, note));
        }
        let _ = writeln!(
            out,
            "  {:<24} {:<14} {:<10} {:>4}  MESSAGE",
            "HOST", "STATE", "LIBVIRT", "VMS"
        );
        for (host, state, version, count, message) in rows {
            let _ = writeln!(
                out,
                "  {host:<24} {state:<14} {version:<10} {count:>4}  {message}"
            );
        }
        let candidates: Vec<(&str, &AdoptionCandidate)> = st
            .hosts
            .iter()
            .flat_map(|h| h.adoption_candidates.iter().map(|c| (h.name.as_str(), c)))
            .collect();
        if !candidates.is_empty() {
            let _ = writeln!(out, "  Domains named in spec.adoption.domains:");
            for (host, c) in candidates {
                let verdict = if c.adoptable {
                    format!(
                        "adoptable: {} vCPU, {}, volumes {}",
                        c.cpus,
                        c.memory,
                        c.volumes.join(", ")
                    )
                } else {
                    format!("not adoptable: {}", c.blockers.join("; "))
                };
                let _ = writeln!(
                    out,
                    "    {host:<22} {:<24} {:<8} {verdict}",
                    c.name, c.state
                );
            }
        }
    }
    if pools.is_empty() {
        out.push_str("No HostPools found.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{pool, running, vm};
    use serde_json::json;

    #[test]
    fn status_shows_host_ip_phase_conditions_and_restarts() {
        let v = vm(
            Some("Manual"),
            json!({"ferry.dev/power": "on", "ferry.dev/restart": "t2"}),
            {
                let mut s = running();
                s["lastRestartRequest"] = json!("t1");
                s["observedGeneration"] = json!(1);
                s
            },
        );
        let text = status_report(&v);
        for want in [
            "Name:       vms/web-1",
            "Phase:      Running",
            "Host:       hv-1 (HostPool rack1)",
            "Strategy:   Manual (ferry.dev/power=on)",
            "eth0 10.0.0.5 (52:54:00:00:00:01)",
            "Restarted:  t1 (requested t2: pending)",
            "generation 1; the spec is at generation 2",
            "Ready            True    Running              running on host hv-1",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn hosts_counts_vms_per_host() {
        let p = pool(json!({
            "selectedHosts": 2, "readyHosts": 1,
            "hosts": [
                {"name": "hv-1", "state": "Ready", "libvirtVersion": "9.0.0"},
                {"name": "hv-2", "state": "Unreachable", "message": "connection refused"},
                {"name": "hv-3", "state": "Unreachable", "message": "connection refused",
                 "power": "Standby", "powerMessage": "powered off: the BMC reports Off"}
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "SomeHostsNotReady",
                            "message": "1 of 2", "lastTransitionTime": "2026-01-10T08:00:00Z"}]
        }));
        let vms = vec![
            vm(None, json!({}), running()),
            vm(None, json!({}), running()),
            vm(None, json!({}), json!({"phase": "Unknown", "host": "hv-2"})),
            vm(None, json!({}), json!({"phase": "Unknown", "host": "hv-9"})),
            vm(None, json!({}), json!({"phase": "Pending"})),
        ];
        let text = hosts_report(&[p], &vms);
        assert!(
            text.contains(
                "HostPool vms/rack1: 1 of 2 host(s) ready; Ready=True (SomeHostsNotReady)"
            ),
            "{text}"
        );
        let row = |host: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(host))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(row("hv-1")[..4], ["hv-1", "Ready", "9.0.0", "2"]);
        assert_eq!(row("hv-2")[..4], ["hv-2", "Unreachable", "-", "1"]);
        assert_eq!(row("hv-3")[..5], ["hv-3", "Standby", "-", "0", "powered"]);
        assert_eq!(row("hv-9")[..4], ["hv-9", "-", "-", "1"]);
        assert_eq!(row("(unplaced)")[..4], ["(unplaced)", "-", "-", "1"]);
        assert!(!text.contains("adoption"), "{text}");
    }

    #[test]
    fn hosts_lists_adoption_candidates() {
        let p = pool(json!({
            "selectedHosts": 1, "readyHosts": 1,
            "hosts": [{"name": "hv-1", "state": "Ready", "adoptionCandidates": [
                {"name": "legacy", "uuid": "u1", "state": "Running", "adoptable": true,
                 "cpus": 1, "memory": "128Mi", "volumes": ["legacy.qcow2"]},
                {"name": "web-1", "uuid": "u2", "state": "ShutOff", "adoptable": false,
                 "cpus": 2, "memory": "1Gi",
                 "blockers": ["hostdev pci: host hardware", "clock offset localtime"]}
            ]}]
        }));
        let text = hosts_report(&[p], &[]);
        let line = |name: &str| {
            text.lines()
                .find(|l| l.split_whitespace().nth(1) == Some(name))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        assert_eq!(
            line("legacy"),
            "hv-1 legacy Running adoptable: 1 vCPU, 128Mi, volumes legacy.qcow2"
        );
        assert_eq!(
            line("web-1"),
            "hv-1 web-1 ShutOff not adoptable: hostdev pci: host hardware; clock offset localtime"
        );
    }
}
