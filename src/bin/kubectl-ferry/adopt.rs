//! `adopt`: the VirtualMachine that takes a HostPool's adoption candidate over, from what the
//! pool's status says of it (`status.hosts[].adoptionCandidates`).

use ferry::api::virtual_machine::AdoptSpec;
use ferry::api::{HostPool, VirtualMachine, VirtualMachineSpec};
use ferry::plan::adoption;
use kube::ResourceExt;

/// The VirtualMachine (named `name`, default from the domain's name, in namespace `ns`) that
/// adopts domain `domain` on host `host`, from the HostPool of `pools` that lists it as an
/// adoption candidate; with the candidate's notes (what the guest would see differently after
/// its first restart under ferry). An error says why there is none.
pub fn manifest(
    pools: &[HostPool],
    host: &str,
    domain: &str,
    name: Option<&str>,
    ns: &str,
) -> Result<(VirtualMachine, Vec<String>), String> {
    let found = pools.iter().find_map(|p| {
        let h = p.status.as_ref()?.hosts.iter().find(|h| h.name == host)?;
        let c = h.adoption_candidates.iter().find(|c| c.name == domain)?;
        Some((p, c))
    });
    let Some((pool, c)) = found else {
        return Err(format!(
            "no HostPool in namespace {ns:?} lists domain {domain:?} on host {host:?} as an adoption candidate: its spec.adoption.domains must name it (see kubectl ferry hosts)"
        ));
    };
    if !c.adoptable {
        return Err(format!(
            "domain {domain:?} on host {host:?} cannot be adopted as it is: {}",
            c.blockers.join("; ")
        ));
    }
    let mut spec: VirtualMachineSpec = c
        .spec
        .clone()
        .ok_or_else(|| {
            format!(
                "HostPool {} does not describe domain {domain:?} yet (an older controller?)",
                pool.name_any()
            )
        })
        .and_then(|v| {
            serde_json::from_value(v).map_err(|e| {
                format!(
                    "HostPool {}'s description of domain {domain:?} is not a VirtualMachine spec: {e}",
                    pool.name_any()
                )
            })
        })?;
    spec.host_pool = pool.name_any();
    spec.adopt = Some(AdoptSpec {
        host: host.to_string(),
        domain: domain.to_string(),
        uuid: c.uuid.clone(),
    });
    let name = name.map_or_else(|| adoption::vm_name(domain), str::to_string);
    let mut vm = VirtualMachine::new(&name, spec);
    vm.metadata.namespace = Some(ns.to_string());
    Ok((vm, c.notes.clone()))
}

/// The manifest as YAML or JSON, YAML with the notes as comments at the top.
pub fn render(
    vm: &VirtualMachine,
    notes: &[String],
    format: crate::output::Output,
) -> Result<String, String> {
    let body = crate::output::object(vm, format)?;
    if format == crate::output::Output::Json || notes.is_empty() {
        return Ok(body);
    }
    let mut out = String::from(
        "# What the guest would see differently after its first restart under ferry:\n",
    );
    for n in notes {
        out.push_str(&format!("# - {n}\n"));
    }
    Ok(out + &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::pool;
    use crate::output::Output;
    use serde_json::json;

    fn with_candidates(candidates: serde_json::Value) -> HostPool {
        pool(json!({"hosts": [{"name": "hv-1", "state": "Ready",
                               "adoptionCandidates": candidates}]}))
    }

    #[test]
    fn the_manifest_adopts_the_candidate_as_the_pool_describes_it() {
        let spec = json!({"hostPool": "whatever", "runStrategy": "Always",
                          "cpu": {"cores": 1}, "memory": "128Mi",
                          "disks": [{"name": "vda", "volume": "legacy.qcow2", "format": "qcow2"}]});
        let p = with_candidates(json!([
            {"name": "legacy", "uuid": "70295d7a-b851-46e1-bfa3-4e82b34cff8b", "state": "Running",
             "adoptable": true, "cpus": 1, "memory": "128Mi", "volumes": ["legacy.qcow2"],
             "notes": ["serial console: also logged"], "spec": spec},
            {"name": "web_1", "uuid": "80295d7a-b851-46e1-bfa3-4e82b34cff8b", "state": "Running",
             "adoptable": false, "cpus": 1, "memory": "128Mi",
             "blockers": ["hostdev usb: host hardware"]}
        ]));
        let (vm, notes) =
            manifest(std::slice::from_ref(&p), "hv-1", "legacy", None, "vms").expect("a VM");
        assert_eq!(vm.name_any(), "legacy");
        assert_eq!(vm.namespace().as_deref(), Some("vms"));
        assert_eq!(vm.spec.host_pool, "rack1", "the pool that lists it");
        let a = vm.spec.adopt.clone().expect("adopt");
        assert_eq!(
            (a.host.as_str(), a.domain.as_str(), a.uuid.as_str()),
            ("hv-1", "legacy", "70295d7a-b851-46e1-bfa3-4e82b34cff8b")
        );
        assert_eq!(vm.spec.disks[0].volume.as_deref(), Some("legacy.qcow2"));
        let yaml = render(&vm, &notes, Output::Yaml).expect("yaml");
        assert!(yaml.starts_with("# What the guest"), "{yaml}");
        assert!(yaml.contains("# - serial console: also logged\n"), "{yaml}");
        let (named, _) = manifest(
            std::slice::from_ref(&p),
            "hv-1",
            "legacy",
            Some("old"),
            "vms",
        )
        .expect("VM");
        assert_eq!(named.name_any(), "old");

        let blocked =
            manifest(std::slice::from_ref(&p), "hv-1", "web_1", None, "vms").expect_err("blocked");
        assert!(blocked.contains("hostdev usb"), "{blocked}");
        let missing = manifest(&[p], "hv-2", "legacy", None, "vms").expect_err("other host");
        assert!(missing.contains("spec.adoption.domains"), "{missing}");
    }
}
