//! Names ferry gives to things it creates on the hosts.
//!
//! Kubernetes names are DNS labels/subdomains (no `_`), so `_` separates the parts unambiguously.

use crate::api::VirtualMachine;
use crate::api::virtual_machine::SourceFormat;

/// libvirt domain name of a VM: `<namespace>_<name>`.
pub fn domain_name(namespace: &str, name: &str) -> String {
    format!("{namespace}_{name}")
}

/// Name of `vm`'s libvirt domain: `<namespace>_<name>`, or the name of the domain it adopted
/// (recorded in its status once ferry took the domain over).
pub fn vm_domain_name(vm: &VirtualMachine) -> String {
    match vm.adopted() {
        Some((name, _)) => name.to_string(),
        None => domain_name(
            vm.metadata.namespace.as_deref().unwrap_or_default(),
            vm.metadata.name.as_deref().unwrap_or_default(),
        ),
    }
}

/// UUID of `vm`'s libvirt domain: the VM's own UID, or the UUID of the domain it adopted
/// (recorded in its status once ferry took the domain over; never read from `spec.adopt`,
/// which a refused claim carries too).
pub fn vm_domain_uuid(vm: &VirtualMachine) -> String {
    match vm.adopted() {
        Some((_, uuid)) => uuid.to_string(),
        None => vm.metadata.uid.clone().unwrap_or_default(),
    }
}

/// Volume name of the overlay ferry creates for a VM's image disk.
///
/// The first 8 characters of the VM's UID make a VM created again under the same name get a fresh
/// disk instead of an abandoned one.
pub fn overlay_volume_name(namespace: &str, name: &str, disk: &str, uid: &str) -> String {
    let short: String = uid.chars().filter(|c| *c != '-').take(8).collect();
    format!("{namespace}_{name}_{disk}_{short}.qcow2")
}

/// Volume name of a VM's cloud-init seed: a new seed (other content, other `digest`) gets a new
/// volume, so the running guest keeps the one it booted with until it restarts.
pub fn seed_volume_name(namespace: &str, name: &str, uid: &str, digest: &str) -> String {
    let short: String = uid.chars().filter(|c| *c != '-').take(8).collect();
    let content: String = digest.chars().take(12).collect();
    format!("{namespace}_{name}_cidata_{short}_{content}.iso")
}

/// Volume name of a golden image imported from a URL: one per pool, checksum and stored form,
/// shared by every VM that names that checksum. A file kept as downloaded (raw or qcow2) is
/// `ferry-image-<sha256>.img`; one converted from a foreign format is
/// `ferry-image-<sha256>.<format>.qcow2`, so the same bytes declared in two ways never share a
/// volume that holds only one of them. For a member of a downloaded archive (an OVA), the
/// `<sha256>` is the image's id instead ([`crate::api::virtual_machine::image_id`]), as for every
/// `imported_*` name.
pub fn imported_image_name(sha256: &str, format: SourceFormat) -> String {
    let sum = sha256.to_ascii_lowercase();
    if format.is_converted() {
        format!("ferry-image-{sum}.{format}.qcow2")
    } else {
        format!("ferry-image-{sum}.img")
    }
}

/// Volume that marks an imported image as complete and verified (written after it).
pub fn imported_marker_name(sha256: &str, format: SourceFormat) -> String {
    let sum = sha256.to_ascii_lowercase();
    if format.is_converted() {
        format!("ferry-image-{sum}.{format}.verified")
    } else {
        format!("ferry-image-{sum}.verified")
    }
}

/// Volume the disk inside a VHDX is written into, raw, before libvirt converts it to qcow2
/// (removed after the conversion).
pub fn imported_scratch_name(sha256: &str, format: SourceFormat) -> String {
    format!("ferry-image-{}.{format}.raw", sha256.to_ascii_lowercase())
}

/// Volume a file in a foreign format is downloaded into before it is converted (removed after
/// the conversion).
pub fn imported_download_name(sha256: &str, format: SourceFormat) -> String {
    format!(
        "ferry-image-{}.{format}.download",
        sha256.to_ascii_lowercase()
    )
}

/// What kind of volume ferry makes under the name `name`, if the name is one ferry gives its own
/// volumes: a VM's overlay or copy, a cloud-init seed, an imported image or its marker. Such a
/// volume belongs to one VM (or, for an image, to ferry), never to a `volume:` disk.
pub fn made_by_ferry(name: &str) -> Option<&'static str> {
    let hex = |s: &str, min: usize, max: usize| {
        (min..=max).contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit())
    };
    let converted = |ext: &str| {
        ext.split_once('.').is_some_and(|(format, kind)| {
            matches!(format, "vmdk" | "vhdx" | "vdi" | "vpc")
                && matches!(kind, "qcow2" | "verified" | "download" | "raw")
        })
    };
    if let Some(rest) = name.strip_prefix("ferry-image-")
        && let Some((sum, ext)) = rest.split_once('.')
        && hex(sum, 64, 64)
        && (matches!(ext, "img" | "verified") || converted(ext))
    {
        return Some("an imported image");
    }
    let parts: Vec<&str> = name.split('_').collect();
    let named = |p: &[&str]| p.iter().all(|s| !s.is_empty());
    match parts.as_slice() {
        [_, _, "cidata", short, last]
            if named(&parts)
                && hex(short, 1, 8)
                && last.strip_suffix(".iso").is_some_and(|d| hex(d, 1, 12)) =>
        {
            Some("a cloud-init seed")
        }
        [_, _, _, last]
            if named(&parts) && last.strip_suffix(".qcow2").is_some_and(|u| hex(u, 1, 8)) =>
        {
            Some("a VM's own disk")
        }
        _ => None,
    }
}

/// Console log file of a VM's domain inside the pool's console directory.
pub fn console_log_path(dir: &str, domain: &str) -> String {
    format!("{}/{domain}.console.log", dir.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_collide_across_namespaces() {
        assert_ne!(domain_name("a-b", "c"), domain_name("a", "b-c"));
        assert_eq!(
            overlay_volume_name("ns", "vm", "root", "1234abcd-ef00-1111-2222-333344445555"),
            "ns_vm_root_1234abcd.qcow2"
        );
        assert_eq!(
            seed_volume_name("ns", "vm", "1234abcd-ef00", "00112233445566778899"),
            "ns_vm_cidata_1234abcd_001122334455.iso"
        );
        assert_eq!(
            console_log_path("/logs/", "ns_vm"),
            "/logs/ns_vm.console.log"
        );
    }

    #[test]
    fn an_adopted_domain_is_named_by_the_status_never_by_the_spec() {
        let mut vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "apps", "uid": "vm-uid"},
            "spec": {"hostPool": "lab", "cpu": {"cores": 1}, "memory": "256Mi",
                     "adopt": {"host": "h1", "domain": "legacy",
                               "uuid": "70295d7a-b851-46e1-bfa3-4e82b34cff8b"}},
            "status": {"host": "h1", "domainUuid": "vm-uid"}
        }))
        .expect("vm");
        // Claimed, not taken over (yet): ferry's own name and UUID.
        assert_eq!(
            (vm_domain_name(&vm), vm_domain_uuid(&vm)),
            ("apps_web".to_string(), "vm-uid".to_string())
        );
        if let Some(st) = vm.status.as_mut() {
            st.adopted_domain = Some("legacy".into());
            st.domain_uuid = Some("70295d7a-b851-46e1-bfa3-4e82b34cff8b".into());
        }
        assert_eq!(
            (vm_domain_name(&vm), vm_domain_uuid(&vm)),
            (
                "legacy".to_string(),
                "70295d7a-b851-46e1-bfa3-4e82b34cff8b".to_string()
            )
        );
    }

    #[test]
    fn ferry_knows_its_own_volumes_by_name() {
        let sum = "ab".repeat(32);
        let cases = [
            (
                overlay_volume_name("ns", "vm", "root", "1234abcd-ef00"),
                Some("a VM's own disk"),
            ),
            (
                seed_volume_name("ns", "vm.x", "1234abcd-ef00", "00112233445566778899"),
                Some("a cloud-init seed"),
            ),
            (
                imported_image_name(&sum, SourceFormat::Qcow2),
                Some("an imported image"),
            ),
            (
                imported_marker_name(&sum, SourceFormat::Raw),
                Some("an imported image"),
            ),
            (
                imported_image_name(&sum, SourceFormat::Vmdk),
                Some("an imported image"),
            ),
            (
                imported_marker_name(&sum, SourceFormat::Vhdx),
                Some("an imported image"),
            ),
            (
                imported_download_name(&sum, SourceFormat::Vpc),
                Some("an imported image"),
            ),
            (
                imported_scratch_name(&sum, SourceFormat::Vhdx),
                Some("an imported image"),
            ),
            (format!("ferry-image-{sum}.ova.qcow2"), None),
            (format!("ferry-image-{sum}.vmdk.img"), None),
            ("tiny.qcow2".to_string(), None),
            ("data_disk.img".to_string(), None),
            ("a_b_c_notahex.qcow2".to_string(), None),
            ("ferry-image-abc.img".to_string(), None),
            ("__x_12.qcow2".to_string(), None),
        ];
        for (name, want) in cases {
            assert_eq!(made_by_ferry(&name), want, "{name}");
        }
    }
}
