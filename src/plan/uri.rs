//! libvirt URIs (and BMC addresses) rendered from a HostPool's template and a Node.
//!
//! Every value filled in comes from the Node (its name, addresses, labels and annotations),
//! which a kubelet can write, so each must be a host name or an IP address (optionally with a
//! port) before it is used: it can then add neither a path segment, nor a query parameter, nor
//! a user, and a URI that passed [`crate::plan::uri_policy`] as a template stays within it once
//! filled.

use crate::api::host_pool::AddressType;
use k8s_openapi::api::core::v1::Node;

/// Fill `{address}`, `{name}`, `{label:KEY}` and `{annotation:KEY}` in `template` for `node`,
/// or say why it cannot be done.
pub fn render(template: &str, node: &Node, address_type: AddressType) -> Result<String, String> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    if template.contains("{name}") {
        fill_value(name, "name", name)?;
    }
    let mut out = template.replace("{name}", name);
    out = fill_metadata(&out, "label", name, node.metadata.labels.as_ref())?;
    out = fill_metadata(&out, "annotation", name, node.metadata.annotations.as_ref())?;
    if out.contains("{address}") {
        let wanted = match address_type {
            AddressType::InternalIP => "InternalIP",
            AddressType::ExternalIP => "ExternalIP",
            AddressType::Hostname => "Hostname",
        };
        let address = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == wanted))
            .map(|a| a.address.clone())
            .ok_or_else(|| format!("Node {name} has no {wanted} address to fill {{address}}"))?;
        fill_value(&address, &format!("{wanted} address"), name)?;
        let address = if address.contains(':') && !address.starts_with('[') {
            format!("[{address}]") // IPv6 literal in a URI authority
        } else {
            address
        };
        out = out.replace("{address}", &address);
    }
    check(&out)?;
    Ok(out)
}

/// Replace every `{KIND:KEY}` with the Node's label or annotation `KEY`; a missing key is an
/// error that names it.
fn fill_metadata(
    template: &str,
    kind: &str,
    node: &str,
    values: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<String, String> {
    let open = format!("{{{kind}:");
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find('}') else {
            return Err(format!(
                "{template:?} has an unclosed {open}...}} placeholder"
            ));
        };
        let key = &after[..end];
        let value = values
            .and_then(|v| v.get(key))
            .ok_or_else(|| format!("Node {node} has no {kind} {key:?} to fill {open}{key}}}"))?;
        fill_value(value, &format!("{kind} {key:?}"), node)?;
        out.push_str(&rest[..start]);
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Accept `value` (the Node's `what`) only if it is a host name or an IP address, either
/// optionally with a port.
fn fill_value(value: &str, what: &str, node: &str) -> Result<(), String> {
    if host_or_address(value) {
        Ok(())
    } else {
        Err(format!(
            "Node {node}'s {what} {value:?} is not a host name or IP address, so it cannot fill a placeholder"
        ))
    }
}

/// Whether `value` is a host name (RFC 1123), an IPv4 address or an IPv6 address (bare or in
/// brackets), optionally followed by `:port` (IPv6 only in brackets then).
pub fn host_or_address(value: &str) -> bool {
    if value.parse::<std::net::Ipv6Addr>().is_ok() {
        return true;
    }
    let (host, port) = match value.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, "")) => (v6, None),
            Some((v6, tail)) => match tail.strip_prefix(':') {
                Some(p) => (v6, Some(p)),
                None => return false,
            },
            None => return false,
        },
        None => match value.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        },
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok_and(|n| n > 0));
    let bracketed = value.starts_with('[');
    let host_ok = if bracketed {
        host.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.parse::<std::net::Ipv4Addr>().is_ok() || host_name(host)
    };
    port_ok && host_ok
}

/// An RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Reject URIs libvirt cannot use: no scheme, unknown placeholders, whitespace or control characters.
fn check(uri: &str) -> Result<(), String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!(
            "{uri:?} is not a libvirt URI (expected e.g. qemu+tls://host/system)"
        ));
    };
    let scheme_ok = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.');
    if !scheme_ok {
        return Err(format!("{uri:?} has an invalid scheme {scheme:?}"));
    }
    if let Some(i) = rest.find(['{', '}']) {
        return Err(format!(
            "{uri:?} has an unknown placeholder near {:?} (only {{address}}, {{name}}, {{label:KEY}} and {{annotation:KEY}} exist)",
            &rest[i..]
        ));
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{uri:?} contains whitespace or control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};

    fn node(addrs: &[(&str, &str)]) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                name: Some("h1".into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    addrs
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fills_placeholders() {
        let n = node(&[("InternalIP", "10.0.0.5"), ("Hostname", "h1.lab")]);
        assert_eq!(
            render("qemu+tls://{address}/system", &n, AddressType::InternalIP),
            Ok("qemu+tls://10.0.0.5/system".into())
        );
        assert_eq!(
            render(
                "qemu+ssh://root@{address}/system",
                &n,
                AddressType::Hostname
            ),
            Ok("qemu+ssh://root@h1.lab/system".into())
        );
        assert_eq!(
            render(
                "qemu+unix:///system?socket=/run/{name}/sock",
                &n,
                AddressType::InternalIP
            ),
            Ok("qemu+unix:///system?socket=/run/h1/sock".into())
        );
        let v6 = node(&[("InternalIP", "fd00::5")]);
        assert_eq!(
            render("qemu+tcp://{address}/system", &v6, AddressType::InternalIP),
            Ok("qemu+tcp://[fd00::5]/system".into())
        );
    }

    #[test]
    fn fills_labels_and_annotations() {
        let mut n = node(&[("InternalIP", "10.0.0.5")]);
        n.metadata.labels = Some([("lab.example/dir".to_string(), "h1".to_string())].into());
        n.metadata.annotations = Some(
            [(
                "ferry.dev/libvirt-host".to_string(),
                "hv1.example".to_string(),
            )]
            .into(),
        );
        assert_eq!(
            render(
                "qemu+unix:///system?socket=/lab/{label:lab.example/dir}/sock",
                &n,
                AddressType::InternalIP
            ),
            Ok("qemu+unix:///system?socket=/lab/h1/sock".into())
        );
        assert_eq!(
            render(
                "qemu+ssh://root@{annotation:ferry.dev/libvirt-host}:{label:lab.example/dir}/system",
                &n,
                AddressType::InternalIP
            ),
            Ok("qemu+ssh://root@hv1.example:h1/system".into())
        );
        let e = render(
            "qemu+tls://{label:rack}/system",
            &n,
            AddressType::InternalIP,
        )
        .unwrap_err();
        assert!(e.contains("no label \"rack\""), "{e}");
        let e = render(
            "qemu+tls://{annotation:x/system",
            &n,
            AddressType::InternalIP,
        )
        .unwrap_err();
        assert!(e.contains("unclosed"), "{e}");
        n.metadata.annotations = Some([("a".to_string(), "has space".to_string())].into());
        let e = render(
            "qemu+tls://{annotation:a}/system",
            &n,
            AddressType::InternalIP,
        )
        .unwrap_err();
        assert!(e.contains("not a host name or IP address"), "{e}");
    }

    #[test]
    fn placeholder_values_are_host_names_or_addresses() {
        let cases: &[(&str, bool)] = &[
            ("h1", true),
            ("hv1.example.com", true),
            ("HV-1.Example", true),
            ("10.0.0.5", true),
            ("10.0.0.5:623", true),
            ("bmc.example:8000", true),
            ("fd00::5", true),
            ("[fd00::5]", true),
            ("[fd00::5]:623", true),
            ("", false),
            (".", false),
            ("..", false),
            ("a..b", false),
            ("-a", false),
            ("a-", false),
            ("a_b", false),
            ("../etc", false),
            ("h1/../../etc", false),
            ("h1?command=/bin/sh", false),
            ("h1&socket=/x", false),
            ("user@h1", false),
            ("h1#x", false),
            ("h1%2F", false),
            ("h1 ", false),
            ("h1:0", false),
            ("h1:65536", false),
            ("h1:", false),
            ("h1:22:33", false),
            ("[fd00::5", false),
            ("[h1]", false),
            ("[fd00::5]x", false),
            ("x{name}", false),
        ];
        for (value, ok) in cases {
            assert_eq!(host_or_address(value), *ok, "{value:?}");
        }
        let long = ["a"; 130].join(".");
        assert!(!host_or_address(&long));
        assert!(!host_or_address(&"a".repeat(64)));
    }

    #[test]
    fn node_values_that_are_not_hosts_are_refused() {
        let mut n = node(&[("InternalIP", "10.0.0.5/../../x")]);
        let e = render("qemu+tls://{address}/system", &n, AddressType::InternalIP).unwrap_err();
        assert!(e.contains("InternalIP address"), "{e}");
        n = node(&[("InternalIP", "10.0.0.5")]);
        n.metadata.labels = Some([("dir".to_string(), "../../etc".to_string())].into());
        let e = render(
            "qemu+unix:///system?socket=/run/libvirt/{label:dir}/sock",
            &n,
            AddressType::InternalIP,
        )
        .unwrap_err();
        assert!(e.contains("label \"dir\""), "{e}");
        assert!(e.contains("not a host name or IP address"), "{e}");
        n.metadata.annotations = Some(
            [(
                "ferry.dev/bmc".to_string(),
                "h1/system?command=/bin/sh".to_string(),
            )]
            .into(),
        );
        let e = render(
            "qemu+ssh://root@{annotation:ferry.dev/bmc}/system",
            &n,
            AddressType::InternalIP,
        )
        .unwrap_err();
        assert!(e.contains("annotation \"ferry.dev/bmc\""), "{e}");
        n.metadata.annotations =
            Some([("ferry.dev/bmc".to_string(), "10.0.0.9:623".to_string())].into());
        assert_eq!(
            render(
                "ipmi://{annotation:ferry.dev/bmc}",
                &n,
                AddressType::InternalIP
            ),
            Ok("ipmi://10.0.0.9:623".into())
        );
    }

    #[test]
    fn explains_what_is_wrong() {
        let n = node(&[("Hostname", "h1")]);
        let e = render("qemu+tls://{address}/system", &n, AddressType::InternalIP).unwrap_err();
        assert!(e.contains("no InternalIP"), "{e}");
        let e = render("qemu+tls://{adress}/system", &n, AddressType::InternalIP).unwrap_err();
        assert!(e.contains("unknown placeholder"), "{e}");
        let e = render("not a uri", &n, AddressType::InternalIP).unwrap_err();
        assert!(e.contains("not a libvirt URI"), "{e}");
        let e = render("qemu+tls://h 1/system", &n, AddressType::InternalIP).unwrap_err();
        assert!(e.contains("whitespace"), "{e}");
    }
}
