//! `console`: where a VM's serial console is logged, and attaching to it with `virsh`.

use ferry::api::{HostPool, VirtualMachine};
use ferry::plan::{naming, uri, uri_policy};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

/// Where a VM's console is.
#[derive(Debug, PartialEq)]
pub struct ConsoleTarget {
    pub host: String,
    pub domain: String,
    pub log_path: String,
    /// libvirt URI of the host, when known.
    pub uri: Option<String>,
    /// Why the pool's URI is not used, when it would run a program here.
    pub refused: Option<String>,
}

/// Where `console` looks: the log file in the pool's console directory, and the host's URI from
/// the pool's template and the Node (or, without the Node, from the pool's status, which has no
/// credentials or query parameters).
pub fn console_target(
    vm: &VirtualMachine,
    pool: &HostPool,
    node: Option<&Node>,
) -> Result<ConsoleTarget, String> {
    let name = vm.name_any();
    let host = vm
        .status
        .as_ref()
        .and_then(|s| s.host.clone())
        .ok_or_else(|| format!("{name} is not placed on a host yet: it has no console"))?;
    let domain = naming::vm_domain_name(vm);
    let log_path = naming::console_log_path(pool.console_dir(), &domain);
    let uri = match node {
        Some(n) => uri::render(
            &pool.spec.libvirt.uri_template,
            n,
            pool.spec.libvirt.address_type.unwrap_or_default(),
        )
        .ok(),
        None => None,
    }
    .or_else(|| {
        pool.status
            .as_ref()
            .and_then(|s| s.hosts.iter().find(|h| h.name == host))
            .and_then(|h| h.uri.clone())
    });
    // virsh would run it on this machine, with this user's rights.
    let refused = uri.as_deref().and_then(uri_policy::runs_a_program);
    Ok(ConsoleTarget {
        host,
        domain,
        log_path,
        uri: uri.filter(|_| refused.is_none()),
        refused,
    })
}

/// Print where the console is and, unless `no_attach`, attach to it with `virsh console`.
pub async fn attach(
    client: kube::Client,
    vm: &VirtualMachine,
    pool: &HostPool,
    uri: Option<String>,
    no_attach: bool,
) -> Result<(), String> {
    let name = vm.name_any();
    let host = vm.status.as_ref().and_then(|s| s.host.clone());
    // Users may not be allowed to read Nodes; the pool's status has the URI too.
    let node = match host {
        Some(h) => kube::Api::<Node>::all(client).get(&h).await.ok(),
        None => None,
    };
    let target = console_target(vm, pool, node.as_ref())?;
    let uri = uri.or(target.uri.clone());
    println!("{name} is on host {}", target.host);
    println!("console log (on {}): {}", target.host, target.log_path);
    if let Some(why) = &target.refused {
        println!(
            "not using HostPool {}'s libvirt URI: {why}",
            pool.name_any()
        );
    }
    let Some(uri) = uri else {
        println!(
            "no libvirt URI known for {}: pass --uri to attach",
            target.host
        );
        return Ok(());
    };
    let command = format!("virsh -c {uri} console {}", target.domain);
    if no_attach {
        println!("attach: {command}");
        return Ok(());
    }
    println!("attaching: {command}   (leave with Ctrl+])");
    match std::process::Command::new("virsh")
        .args(["-c", &uri, "console", &target.domain])
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!(
            "virsh exited with {s}: is {uri} reachable from here with your libvirt credentials?"
        )),
        Err(e) => Err(format!(
            "cannot run virsh ({e}): install libvirt-clients, or read the log on the host"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{pool, running, vm};
    use serde_json::json;

    #[test]
    fn console_uses_the_pool_log_directory_and_the_host_uri() {
        let v = vm(None, json!({}), running());
        let p = pool(
            json!({"hosts": [{"name": "hv-1", "state": "Ready", "uri": "qemu+ssh://10.0.0.11/system"}]}),
        );
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "hv-1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.11"}]}
        }))
        .expect("node");
        let t = console_target(&v, &p, Some(&node)).expect("target");
        assert_eq!(
            t,
            ConsoleTarget {
                host: "hv-1".into(),
                domain: "vms_web-1".into(),
                log_path: "/srv/console/vms_web-1.console.log".into(),
                uri: Some("qemu+ssh://root@10.0.0.11/system".into()),
                refused: None,
            }
        );
        // Without the Node (no permission), the pool's status has the URI.
        let t = console_target(&v, &p, None).expect("target");
        assert_eq!(t.uri.as_deref(), Some("qemu+ssh://10.0.0.11/system"));
        // A pool whose URI would make virsh run a program here is not followed.
        let mut evil = p.clone();
        evil.spec.libvirt.uri_template = "qemu+ext:///system?command=/tmp/x".into();
        let t = console_target(&v, &evil, Some(&node)).expect("target");
        assert_eq!(t.uri, None);
        assert!(
            t.refused
                .is_some_and(|r| r.contains("runs a local program"))
        );
        let unplaced = vm(None, json!({}), json!({"phase": "Pending"}));
        assert!(console_target(&unplaced, &p, None).is_err());
    }
}
