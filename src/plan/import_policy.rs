//! Where an image import (`http:` disk) may connect, and how much it may download.
//!
//! The controller fetches the URL a namespace editor wrote, from inside the cluster: without
//! limits, that URL could reach the controller's own loopback, a cloud's metadata service
//! (link-local), the cluster's Pods, Services and Nodes. So an import may connect only to
//! addresses outside these unless the HostPool lists them in `spec.imports.allowedNetworks`:
//! - loopback, unspecified ("this network"), link-local, multicast, broadcast and reserved
//!   addresses, in IPv4 and IPv6 (an IPv4 address written as IPv6 counts as the IPv4 one);
//! - the networks the controller is told are the cluster's (`--cluster-cidr`: Pods, Services);
//! - the addresses of the cluster's Nodes.
//!
//! Every address is checked: the one in the URL, each one a name resolves to (the connection
//! then goes to exactly those, so a second answer from DNS cannot slip past), and the same for
//! every redirect.

use crate::api::host_pool::{DEFAULT_IMPORT_MAX_SIZE, HostPoolSpec};
use crate::plan::quantity;
use ipnet::IpNet;
use std::net::IpAddr;

/// Reason of a VM whose import the policy refuses.
pub const IMPORT_REFUSED: &str = "ImportRefused";

/// What one pool's imports may reach and download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// HostPool name, for messages.
    pub pool: String,
    /// Networks allowed although refused by default (the pool's `allowedNetworks`).
    pub allowed: Vec<IpNet>,
    /// The cluster's networks (`--cluster-cidr`).
    pub cluster: Vec<IpNet>,
    /// The Nodes' addresses, with the Node's name.
    pub nodes: Vec<(IpAddr, String)>,
    /// Most bytes one import may download.
    pub max_bytes: u64,
}

/// Where a URL points: an address, or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Address(IpAddr),
    Name(String),
}

/// Parse networks in CIDR notation (`field` names them in messages).
pub fn parse_networks(field: &str, list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|s| {
            s.trim().parse::<IpNet>().map_err(|_| {
                format!("{field}: {s:?} is not a network in CIDR notation (such as 192.0.2.0/24 or 2001:db8::/32)")
            })
        })
        .collect()
}

impl Policy {
    /// The policy of HostPool `pool` with spec `spec`, given the cluster's networks and Node
    /// addresses; an error when the pool's settings cannot be read.
    pub fn of(
        pool: &str,
        spec: &HostPoolSpec,
        cluster: &[IpNet],
        nodes: Vec<(IpAddr, String)>,
    ) -> Result<Policy, String> {
        let imports = spec.imports.clone().unwrap_or_default();
        let allowed = parse_networks("spec.imports.allowedNetworks", &imports.allowed_networks)?;
        let size = imports
            .max_size
            .as_deref()
            .unwrap_or(DEFAULT_IMPORT_MAX_SIZE);
        let max_bytes =
            quantity::parse_bytes(size).map_err(|e| format!("spec.imports.maxSize: {e}"))?;
        Ok(Policy {
            pool: pool.to_string(),
            allowed,
            cluster: cluster.to_vec(),
            nodes,
            max_bytes,
        })
    }

    /// Whether an import may connect to `ip`; the error says why not and how to allow it.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), String> {
        let ip = canonical(ip);
        if self.allowed.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        let why = if let Some(kind) = special(ip) {
            format!("{kind} address")
        } else if let Some(n) = self.cluster.iter().find(|n| n.contains(&ip)) {
            format!("in the cluster's network {n}")
        } else if let Some((_, node)) = self.nodes.iter().find(|(a, _)| canonical(*a) == ip) {
            format!("the address of Node {node}")
        } else {
            return Ok(());
        };
        Err(format!(
            "{ip} is {why}: imports may not connect there unless HostPool {} lists it in spec.imports.allowedNetworks",
            self.pool
        ))
    }

    /// Check a URL an import fetches (or is redirected to): `http` or `https`, with a host; an
    /// address in it is checked at once, a name when it is resolved.
    pub fn check_url(&self, raw: &str) -> Result<Target, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "{raw}: only http and https URLs are imported, not {}",
                url.scheme()
            ));
        }
        let target = match url.host() {
            None => return Err(format!("{raw} names no host")),
            Some(url::Host::Ipv4(a)) => Target::Address(IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) => Target::Address(IpAddr::V6(a)),
            Some(url::Host::Domain(d)) => match d.parse::<IpAddr>() {
                Ok(a) => Target::Address(a),
                Err(_) => Target::Name(d.to_string()),
            },
        };
        if let Target::Address(a) = target {
            self.check_address(a)?;
        }
        Ok(target)
    }

    /// Whether `bytes` (announced by the server, or received so far) are within the cap.
    pub fn check_size(&self, bytes: u64) -> Result<(), String> {
        if bytes > self.max_bytes {
            Err(format!(
                "the image is larger than {} bytes, the most HostPool {} lets an import download (spec.imports.maxSize, default {DEFAULT_IMPORT_MAX_SIZE})",
                self.max_bytes, self.pool
            ))
        } else {
            Ok(())
        }
    }
}

/// An IPv4 address written as IPv6 (mapped `::ffff:a.b.c.d`, or the old compatible `::a.b.c.d`)
/// as the IPv4 address it is; `::` and `::1` stay the IPv6 unspecified and loopback addresses.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if !v6.is_unspecified() && !v6.is_loopback() => {
            v6.to_ipv4().map_or(ip, IpAddr::V4)
        }
        ip => ip,
    }
}

/// What kind of address no import reaches by default, if `ip` is one.
fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            if a.is_loopback() {
                Some("a loopback")
            } else if o[0] == 0 {
                Some("an unspecified (\"this network\")")
            } else if a.is_link_local() {
                Some("a link-local")
            } else if a.is_broadcast() {
                Some("the broadcast")
            } else if a.is_multicast() {
                Some("a multicast")
            } else if o[0] >= 240 {
                Some("a reserved")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            if a.is_loopback() {
                Some("a loopback")
            } else if a.is_unspecified() {
                Some("an unspecified")
            } else if a.is_unicast_link_local() {
                Some("a link-local")
            } else if a.is_multicast() {
                Some("a multicast")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(imports: serde_json::Value) -> Policy {
        let spec: HostPoolSpec = serde_json::from_value(json!({
            "nodeSelector": {}, "libvirt": {"uriTemplate": "qemu+tls://{address}/system"},
            "storage": {"pool": "p"}, "imports": imports
        }))
        .expect("spec");
        let cluster = parse_networks(
            "--cluster-cidr",
            &["10.96.0.0/12".into(), "fd00:10::/64".into()],
        )
        .expect("cidrs");
        let nodes = vec![("192.0.2.11".parse().expect("ip"), "host-a".to_string())];
        Policy::of("lab", &spec, &cluster, nodes).expect("policy")
    }

    #[test]
    fn addresses() {
        let p = policy(json!({}));
        let lab =
            policy(json!({"allowedNetworks": ["127.0.0.0/8", "10.100.0.0/16", "192.0.2.11/32"]}));
        let cases: Vec<(&str, &Policy, &str, Option<&str>)> = vec![
            ("a public address", &p, "203.0.113.7", None),
            (
                "a private network outside the cluster",
                &p,
                "10.250.0.5",
                None,
            ),
            ("loopback", &p, "127.0.0.1", Some("a loopback address")),
            (
                "loopback, anywhere in 127/8",
                &p,
                "127.1.2.3",
                Some("a loopback address"),
            ),
            ("IPv6 loopback", &p, "::1", Some("a loopback address")),
            (
                "loopback written as IPv4-mapped IPv6",
                &p,
                "::ffff:127.0.0.1",
                Some("127.0.0.1 is a loopback"),
            ),
            (
                "loopback written as IPv4-compatible IPv6",
                &p,
                "::127.0.0.1",
                Some("127.0.0.1 is a loopback"),
            ),
            (
                "0.0.0.0 reaches the controller itself",
                &p,
                "0.0.0.0",
                Some("unspecified"),
            ),
            ("IPv6 unspecified", &p, "::", Some("unspecified")),
            (
                "a cloud metadata service",
                &p,
                "169.254.169.254",
                Some("a link-local address"),
            ),
            (
                "IPv6 link-local",
                &p,
                "fe80::1",
                Some("a link-local address"),
            ),
            ("multicast", &p, "224.0.0.1", Some("a multicast address")),
            ("IPv6 multicast", &p, "ff02::1", Some("a multicast address")),
            (
                "broadcast",
                &p,
                "255.255.255.255",
                Some("the broadcast address"),
            ),
            ("reserved", &p, "240.0.0.1", Some("a reserved address")),
            (
                "a Service address",
                &p,
                "10.96.0.1",
                Some("in the cluster's network 10.96.0.0/12"),
            ),
            (
                "a Pod address in IPv6",
                &p,
                "fd00:10::5",
                Some("in the cluster's network fd00:10::/64"),
            ),
            (
                "a Node",
                &p,
                "192.0.2.11",
                Some("the address of Node host-a"),
            ),
            ("allowed by the pool: loopback", &lab, "127.0.0.1", None),
            (
                "allowed by the pool: mapped loopback",
                &lab,
                "::ffff:127.0.0.1",
                None,
            ),
            ("allowed by the pool: a Node", &lab, "192.0.2.11", None),
            (
                "not everything loopback-like is allowed with it",
                &lab,
                "::1",
                Some("a loopback address"),
            ),
            (
                "the allowance is what it says",
                &lab,
                "10.96.0.1",
                Some("cluster's network"),
            ),
        ];
        for (name, policy, ip, want) in cases {
            let got = policy.check_address(ip.parse().expect("ip"));
            match want {
                None => assert_eq!(got, Ok(()), "{name}"),
                Some(w) => {
                    let e = got.expect_err(name);
                    assert!(e.contains(w), "{name}: {e}");
                    assert!(
                        e.contains("HostPool lab lists it in spec.imports.allowedNetworks"),
                        "{name}: {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn urls() {
        let p = policy(json!({}));
        let cases: Vec<(&str, Result<Target, &str>)> = vec![
            (
                "https://images.example/debian.qcow2",
                Ok(Target::Name("images.example".into())),
            ),
            (
                "http://203.0.113.7:8080/x.img",
                Ok(Target::Address("203.0.113.7".parse().expect("ip"))),
            ),
            ("http://127.0.0.1:8000/x.img", Err("loopback")),
            ("http://[::1]/x", Err("loopback")),
            (
                "http://[::ffff:169.254.169.254]/latest/meta-data",
                Err("link-local"),
            ),
            // What the URL parser makes of numeric host spellings is what the client connects to.
            ("http://2130706433/x", Err("127.0.0.1 is a loopback")),
            ("http://0x7f.1/x", Err("127.0.0.1 is a loopback")),
            ("http://017700000001/x", Err("127.0.0.1 is a loopback")),
            ("http://localhost/x", Ok(Target::Name("localhost".into()))),
            ("file:///etc/shadow", Err("only http and https")),
            ("ftp://images.example/x", Err("only http and https")),
            ("not a url", Err("is not a URL")),
        ];
        for (url, want) in cases {
            match (p.check_url(url), want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{url}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{url}: {g}"),
                (g, w) => panic!("{url}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn sizes_and_settings() {
        let p = policy(json!({}));
        assert_eq!(p.max_bytes, 64 << 30);
        assert!(p.check_size(64 << 30).is_ok());
        let e = p.check_size((64 << 30) + 1).expect_err("over the cap");
        assert!(e.contains("spec.imports.maxSize"), "{e}");
        assert_eq!(policy(json!({"maxSize": "1Gi"})).max_bytes, 1 << 30);
        let spec: HostPoolSpec = serde_json::from_value(json!({
            "nodeSelector": {}, "libvirt": {"uriTemplate": "qemu+tls://{address}/system"},
            "storage": {"pool": "p"}, "imports": {"allowedNetworks": ["10.0.0.0/33"]}
        }))
        .expect("spec");
        let e = Policy::of("p", &spec, &[], vec![]).expect_err("bad CIDR");
        assert!(
            e.contains("spec.imports.allowedNetworks: \"10.0.0.0/33\""),
            "{e}"
        );
    }
}
