//! Whose BMC it is: a BMC's power state counts for a host only when the BMC is that host's.
//!
//! - **Redfish** names its system: the system's `UUID` must be the Node's
//!   `status.nodeInfo.systemUUID` (the firmware UUID kubelet reads from the host). The Redfish
//!   client checks it on every reading, so neither a power-off nor an "Off" goes to or comes
//!   from another machine's system.
//! - **IPMI** names nothing, so the address itself must be named for this Node: the pool's
//!   `addressTemplate` filled from this Node's own name, addresses, labels or annotations, and
//!   no other Node's filled the same way. One BMC address never answers for two hosts, and a
//!   fixed address (the same for every Node) answers for none.

use crate::api::host_pool::AddressType;
use crate::plan::uri;
use k8s_openapi::api::core::v1::Node;

/// The Node's firmware UUID as kubelet reports it (`status.nodeInfo.systemUUID`), if any.
pub fn system_uuid(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .node_info
        .as_ref()
        .map(|i| i.system_uuid.trim())
        .filter(|u| !u.is_empty())
}

/// Placeholders filled from the Node (see [`uri::render`]).
const NODE_PLACEHOLDERS: [&str; 4] = ["{name}", "{address}", "{label:", "{annotation:"];

/// The IPMI address of `node` from `template`, when it is named for that Node alone: filled
/// from the Node, and no other Node of `nodes` fills it the same way. The error says why not.
pub fn ipmi_address<'a>(
    template: &str,
    node: &Node,
    nodes: impl IntoIterator<Item = &'a Node>,
    address_type: AddressType,
) -> Result<String, String> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    if !NODE_PLACEHOLDERS.iter().any(|p| template.contains(p)) {
        return Err(format!(
            "the IPMI addressTemplate {template:?} is the same for every Node, so it names no host's BMC: fill it from the Node (for example ipmi://{{annotation:ferry.dev/bmc}})"
        ));
    }
    let address = uri::render(template, node, address_type)?;
    let mine = same_bmc_key(&address);
    for other in nodes {
        let other_name = other.metadata.name.as_deref().unwrap_or_default();
        if other_name == name {
            continue;
        }
        if uri::render(template, other, address_type).is_ok_and(|a| same_bmc_key(&a) == mine) {
            return Err(format!(
                "the BMC address {address} is filled the same for Node {other_name}: it names neither host's BMC alone, so its power state counts for neither"
            ));
        }
    }
    Ok(address)
}

/// An IPMI address as a comparison key: no scheme or trailing slash, lower case, port 623 when
/// none is given.
fn same_bmc_key(address: &str) -> String {
    let a = address
        .trim()
        .trim_start_matches("ipmi://")
        .trim_end_matches('/')
        .to_ascii_lowercase();
    let has_port = a.rsplit_once(':').is_some_and(|(host, p)| {
        p.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
    });
    if has_port { a } else { format!("{a}:623") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, bmc: Option<&str>, uuid: Option<&str>) -> Node {
        let mut n = json!({
            "metadata": {"name": name, "labels": {"rack-slot": name}},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.7"}]}
        });
        if let Some(b) = bmc {
            n["metadata"]["annotations"] = json!({"ferry.dev/bmc": b});
        }
        if let Some(u) = uuid {
            n["status"]["nodeInfo"] = json!({
                "machineID": "", "systemUUID": u, "bootID": "", "kernelVersion": "",
                "osImage": "", "containerRuntimeVersion": "", "kubeletVersion": "",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"
            });
        }
        serde_json::from_value(n).expect("node")
    }

    #[test]
    fn system_uuid_from_the_node() {
        assert_eq!(
            system_uuid(&node("h1", None, Some(" 4C4C4544-0042 "))),
            Some("4C4C4544-0042")
        );
        assert_eq!(system_uuid(&node("h1", None, Some(""))), None);
        assert_eq!(system_uuid(&node("h1", None, None)), None);
    }

    /// (what, template, node, the other Nodes, Ok(address) or an error containing).
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a Node,
        Vec<&'a Node>,
        Result<&'a str, &'a str>,
    );

    #[test]
    fn an_ipmi_address_counts_only_when_named_for_the_node_alone() {
        let h1 = node("h1", Some("10.1.0.1"), None);
        let h2 = node("h2", Some("10.1.0.2"), None);
        let twin = node("h3", Some("10.1.0.1:623"), None);
        let bare = node("h4", None, None);
        let t = AddressType::InternalIP;
        let ann = "ipmi://{annotation:ferry.dev/bmc}";
        // (what, template, node, the other Nodes, Ok(address) or an error containing)
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("from the Node's annotation, unique", ann, &h1, vec![&h1, &h2, &bare], Ok("ipmi://10.1.0.1")),
            ("another Node names the same BMC (default port)", ann, &h1, vec![&h1, &h2, &twin], Err("Node h3")),
            ("a fixed address names no host's BMC", "ipmi://10.9.9.9", &h1, vec![&h1], Err("same for every Node")),
            ("a fixed address even for a lone Node", "ipmi://127.0.0.1:6230", &h2, vec![&h2], Err("same for every Node")),
            ("from a label", "ipmi://bmc-{label:rack-slot}.example", &h2, vec![&h1, &h2], Ok("ipmi://bmc-h2.example")),
            ("the Node lacks the annotation", ann, &bare, vec![&h1, &bare], Err("annotation")),
            ("from the Node's address, shared by both Nodes", "ipmi://{address}:6230", &h1, vec![&h1, &h2], Err("Node h2")),
        ];
        for (what, template, n, others, want) in cases {
            let got = ipmi_address(template, n, others, t);
            match (want, got) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{what}"),
                (Err(needle), Err(e)) => assert!(e.contains(needle), "{what}: {e}"),
                (w, g) => panic!("{what}: wanted {w:?}, got {g:?}"),
            }
        }
    }
}
