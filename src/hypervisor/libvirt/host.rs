//! Facts about the host itself: versions, size, whether KVM is usable.

use quick_xml::events::Event;
use quick_xml::reader::Reader;
use virt::connect::Connect;

use super::errors::CallResult;
use crate::plan::domain::HostInfo;

fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

pub(super) fn host_info(conn: &Connect) -> CallResult<HostInfo> {
    let node = conn.node_info()?;
    Ok(HostInfo {
        hostname: conn.hostname()?,
        libvirt_version: version_string(conn.lib_version()?),
        hypervisor_version: version_string(conn.hyp_version()?),
        cpus: node.cpus,
        memory_kib: node.memory,
        kvm: capabilities_offer_kvm(&conn.capabilities()?),
    })
}

/// Whether KVM can run x86_64 guests on the host, from its capabilities XML: libvirt must offer
/// `<domain type='kvm'>` for an x86_64 guest (it does whenever `/dev/kvm` opens) *and* the host
/// CPU must list hardware virtualisation (`vmx` or `svm`). The second check matters: a `/dev/kvm`
/// without VT-x/AMD-V behind it (such as the `kvm_pvm` module on cloud VMs) is offered by libvirt
/// but cannot boot a stock kernel, and only TCG works there.
fn capabilities_offer_kvm(xml: &str) -> bool {
    let mut reader = Reader::from_str(xml);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut x86_64 = false;
    let (mut kvm_domain, mut hw_virt) = (false, false);
    loop {
        let event = match reader.read_event() {
            Ok(e) => e,
            Err(_) => return false,
        };
        let (e, empty) = match event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                if path.pop().as_deref() == Some(b"arch".as_slice()) {
                    x86_64 = false;
                }
                continue;
            }
            Event::Eof => return kvm_domain && hw_virt,
            _ => continue,
        };
        let local = e.local_name().as_ref().to_vec();
        let under = |names: &[&[u8]]| {
            path.len() == names.len() && path.iter().zip(names).all(|(p, n)| p == n)
        };
        match local.as_slice() {
            b"arch" if under(&[b"capabilities", b"guest"]) => {
                x86_64 = attribute(&e, b"name").as_deref() == Some("x86_64");
            }
            b"domain"
                if x86_64
                    && under(&[b"capabilities", b"guest", b"arch"])
                    && attribute(&e, b"type").as_deref() == Some("kvm") =>
            {
                kvm_domain = true;
            }
            b"feature"
                if under(&[b"capabilities", b"host", b"cpu"])
                    && matches!(attribute(&e, b"name").as_deref(), Some("vmx" | "svm")) =>
            {
                hw_virt = true;
            }
            _ => {}
        }
        if !empty {
            path.push(local);
        }
    }
}

fn attribute(e: &quick_xml::events::BytesStart, key: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == key)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_format_as_major_minor_micro() {
        assert_eq!(version_string(9_000_000), "9.0.0");
        assert_eq!(version_string(7_002_022), "7.2.22");
    }

    #[test]
    fn kvm_needs_a_kvm_domain_and_hardware_virtualisation() {
        let caps = |host_features: &str, domains: &str, arch: &str| {
            format!(
                "<capabilities><host><cpu><arch>x86_64</arch><model>Broadwell</model>\
                 <feature name='vme'/>{host_features}</cpu></host>\
                 <guest><os_type>hvm</os_type><arch name='i686'><domain type='kvm'/></arch></guest>\
                 <guest><os_type>hvm</os_type><arch name='{arch}'><wordsize>64</wordsize>\
                 <domain type='qemu'/>{domains}</arch>\
                 <features><feature name='vmx'/></features></guest></capabilities>"
            )
        };
        let kvm = "<domain type='kvm'/>";
        let vmx = "<feature name='vmx'/>";
        let svm = "<feature name='svm'/>";
        assert!(capabilities_offer_kvm(&caps(vmx, kvm, "x86_64")));
        assert!(capabilities_offer_kvm(&caps(svm, kvm, "x86_64")));
        // /dev/kvm without VT-x/AMD-V (kvm_pvm), as on the lab machines: TCG only.
        assert!(!capabilities_offer_kvm(&caps("", kvm, "x86_64")));
        assert!(!capabilities_offer_kvm(&caps(vmx, "", "x86_64")));
        assert!(!capabilities_offer_kvm(&caps(vmx, kvm, "aarch64")));
        assert!(!capabilities_offer_kvm("<capabilities><guest>"));
        assert!(!capabilities_offer_kvm("not xml <"));
    }
}
