//! The domain definition of a VM on a given host, from its spec and the volumes resolved there.

use crate::api::VirtualMachine;
use crate::api::virtual_machine::{
    ConsolesSpec, DiskBus, InterfaceStatus, NetworkSource, NicModel,
};
use crate::plan::domain::{
    Bus, CpuModel, DiskDef, DomainDefinition, Graphics, GuestInfo, KernelBoot, NicDef, NicSource,
    Owner, VirtType, derive_mac,
};
use crate::plan::naming;
use crate::plan::validate::ValidSpec;

pub use crate::plan::domain::SEED_DISK;

/// A disk resolved to a volume on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDisk {
    pub name: String,
    pub path: String,
    pub format: String,
}

/// MAC address per NIC: the spec's, else the one recorded in status, else derived from the UID.
pub fn macs(vm: &VirtualMachine) -> Vec<InterfaceStatus> {
    let uid = vm.metadata.uid.as_deref().unwrap_or_default();
    let recorded = vm
        .status
        .as_ref()
        .map(|s| s.interfaces.as_slice())
        .unwrap_or(&[]);
    vm.spec
        .networks
        .iter()
        .map(|n| {
            let previous = recorded.iter().find(|r| r.name == n.name);
            let mac = n
                .mac
                .clone()
                .or_else(|| previous.map(|r| r.mac.clone()))
                .unwrap_or_else(|| derive_mac(uid, &n.name))
                .to_ascii_lowercase();
            InterfaceStatus {
                name: n.name.clone(),
                mac,
                ip_address: previous.and_then(|p| p.ip_address.clone()),
                ip_addresses: previous.map(|p| p.ip_addresses.clone()).unwrap_or_default(),
                guest_name: previous.and_then(|p| p.guest_name.clone()),
            }
        })
        .collect()
}

/// Attach the cloud-init seed at `path` (a raw ISO image) as a read-only CD-ROM after the VM's
/// disks. It sits on the virtio-SCSI bus: every Linux kernel with virtio has a driver for it
/// (cloud kernels leave out AHCI), on `pc` and `q35` machines alike.
pub fn attach_seed(def: &mut DomainDefinition, path: &str) {
    def.disks.push(DiskDef {
        name: SEED_DISK.to_string(),
        path: path.to_string(),
        format: "raw".to_string(),
        bus: Bus::Scsi,
        read_only: true,
    });
}

/// Fill the guest's view into the interfaces: addresses and names by MAC from the guest agent's
/// report, or none when there is no report (no agent, or the VM does not run).
pub fn apply_guest_report(interfaces: &mut [InterfaceStatus], report: Option<&GuestInfo>) {
    for i in interfaces.iter_mut() {
        let seen = report.and_then(|r| r.interfaces.iter().find(|g| g.mac == i.mac));
        i.ip_addresses = seen.map(|g| g.addresses.clone()).unwrap_or_default();
        i.ip_address = i
            .ip_addresses
            .iter()
            .find(|a| a.contains('.'))
            .or(i.ip_addresses.first())
            .cloned();
        i.guest_name = seen.map(|g| g.name.clone());
    }
}

/// Keep the guest's view of each interface (addresses and name, by MAC) from `previous`, the
/// status before this reconcile, when the guest agent is not asked this time.
pub fn keep_guest_view(interfaces: &mut [InterfaceStatus], previous: &[InterfaceStatus]) {
    for i in interfaces.iter_mut() {
        if let Some(p) = previous.iter().find(|p| p.mac == i.mac) {
            i.ip_addresses = p.ip_addresses.clone();
            i.ip_address = p.ip_address.clone();
            i.guest_name = p.guest_name.clone();
        }
    }
}

/// Build the definition. `disks` must hold one resolved volume per spec disk, in spec order.
pub fn build(
    vm: &VirtualMachine,
    valid: &ValidSpec,
    disks: &[ResolvedDisk],
    interfaces: &[InterfaceStatus],
    virt_type: VirtType,
    console_dir: &str,
) -> DomainDefinition {
    let namespace = vm.metadata.namespace.clone().unwrap_or_default();
    let name = vm.metadata.name.clone().unwrap_or_default();
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let domain = naming::vm_domain_name(vm);
    let cpu_model = match valid.cpu_model.as_deref() {
        None | Some("host-model") => CpuModel::HostModel,
        Some("host-passthrough") => CpuModel::HostPassthrough,
        Some(m) => CpuModel::Named(m.to_string()),
    };
    let disk_defs = vm
        .spec
        .disks
        .iter()
        .zip(disks)
        .map(|(d, r)| DiskDef {
            name: d.name.clone(),
            path: r.path.clone(),
            format: r.format.clone(),
            bus: bus(d),
            read_only: false,
        })
        .collect();
    let nics = vm
        .spec
        .networks
        .iter()
        .filter_map(|n| {
            let mac = interfaces.iter().find(|i| i.name == n.name)?.mac.clone();
            let source = match n.source()? {
                NetworkSource::Network(s) => NicSource::Network(s.to_string()),
                NetworkSource::Bridge(s) => NicSource::Bridge(s.to_string()),
            };
            let model = match n.model.unwrap_or_default() {
                NicModel::Virtio => "virtio",
                NicModel::E1000 => "e1000",
                NicModel::Rtl8139 => "rtl8139",
            };
            Some(NicDef {
                name: n.name.clone(),
                mac,
                source,
                model: model.into(),
            })
        })
        .collect();
    let boot = vm.spec.boot.as_ref().map(|b| KernelBoot {
        kernel: b.kernel.clone(),
        initrd: b.initrd.clone(),
        cmdline: b.cmdline.clone(),
    });
    let consoles = vm.spec.consoles.as_ref();
    let serial_console = ConsolesSpec::serial_of(consoles);
    DomainDefinition {
        serial_console,
        console_log: serial_console.then(|| naming::console_log_path(console_dir, &domain)),
        graphics: ConsolesSpec::vnc_of(consoles).then_some(Graphics::Vnc),
        name: domain,
        uuid: naming::vm_domain_uuid(vm),
        virt_type,
        vcpus: valid.vcpus,
        cpu_model,
        memory_kib: valid.memory_bytes.div_ceil(1024),
        disks: disk_defs,
        nics,
        boot,
        owner: Owner {
            namespace,
            name,
            uid,
        },
    }
}

fn bus(d: &crate::api::virtual_machine::Disk) -> Bus {
    match d.bus.unwrap_or_default() {
        DiskBus::Virtio => Bus::Virtio,
        DiskBus::Sata => Bus::Sata,
        DiskBus::Scsi => Bus::Scsi,
    }
}

/// Guest device names (`vda`, `sda`, ...) of the VM's disks, in spec order, as the domain
/// definition names them.
pub fn disk_targets(vm: &VirtualMachine) -> Vec<String> {
    let defs: Vec<DiskDef> = vm
        .spec
        .disks
        .iter()
        .map(|d| DiskDef {
            name: d.name.clone(),
            path: String::new(),
            format: String::new(),
            bus: bus(d),
            read_only: false,
        })
        .collect();
    crate::plan::domain::disk_targets(&defs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::domain::GuestInterface;

    fn iface(name: &str, mac: &str) -> InterfaceStatus {
        InterfaceStatus {
            name: name.into(),
            mac: mac.into(),
            ..InterfaceStatus::default()
        }
    }

    #[test]
    fn guest_report_fills_addresses_by_mac() {
        let mut ifs = vec![
            iface("eth0", "52:54:00:00:00:01"),
            iface("eth1", "52:54:00:00:00:02"),
        ];
        let report = GuestInfo {
            os: Some("Debian".into()),
            interfaces: vec![GuestInterface {
                name: "enp1s0".into(),
                mac: "52:54:00:00:00:01".into(),
                addresses: vec!["10.0.0.5".into(), "fe80::1".into()],
            }],
        };
        apply_guest_report(&mut ifs, Some(&report));
        assert_eq!(ifs[0].ip_address.as_deref(), Some("10.0.0.5"));
        assert_eq!(ifs[0].ip_addresses, ["10.0.0.5", "fe80::1"]);
        assert_eq!(ifs[0].guest_name.as_deref(), Some("enp1s0"));
        assert_eq!(ifs[1].ip_address, None);
        // IPv6 only: that address is the one shown.
        let v6 = GuestInfo {
            os: None,
            interfaces: vec![GuestInterface {
                name: "eth1".into(),
                mac: "52:54:00:00:00:02".into(),
                addresses: vec!["fd00::2".into()],
            }],
        };
        apply_guest_report(&mut ifs, Some(&v6));
        assert_eq!(ifs[1].ip_address.as_deref(), Some("fd00::2"));
        assert_eq!(ifs[0].ip_address, None);
        // No report: nothing stale stays.
        apply_guest_report(&mut ifs, None);
        assert!(
            ifs.iter()
                .all(|i| i.ip_address.is_none() && i.ip_addresses.is_empty())
        );
    }

    #[test]
    fn the_guest_view_is_kept_by_mac_when_the_agent_is_not_asked() {
        let mut before = vec![
            iface("eth0", "52:54:00:00:00:01"),
            iface("eth1", "52:54:00:00:00:02"),
        ];
        before[0].ip_address = Some("10.0.0.5".into());
        before[0].ip_addresses = vec!["10.0.0.5".into()];
        before[0].guest_name = Some("enp1s0".into());
        // The spec's interfaces as the reconcile rebuilt them: eth1 removed, eth2 added.
        let mut now = vec![
            iface("eth0", "52:54:00:00:00:01"),
            iface("eth2", "52:54:00:00:00:03"),
        ];
        keep_guest_view(&mut now, &before);
        assert_eq!(now[0].ip_address.as_deref(), Some("10.0.0.5"));
        assert_eq!(now[0].ip_addresses, ["10.0.0.5"]);
        assert_eq!(now[0].guest_name.as_deref(), Some("enp1s0"));
        assert_eq!(now[1], iface("eth2", "52:54:00:00:00:03"));
    }
}
