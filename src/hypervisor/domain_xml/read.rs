//! Reading any domain's XML (as libvirt returns it) into a [`DomainDescription`]: what adoption
//! needs to know about a domain ferry did not define.

use crate::plan::domain::{Backing, DescribedDisk, DescribedNic, DomainDescription};
use crate::plan::xml_tree::{self, Element as Node};

fn kib(node: Option<&Node>) -> u64 {
    let Some(n) = node else { return 0 };
    let v: u64 = n.text.trim().parse().unwrap_or(0);
    let factor: u64 = match n.attr("unit").unwrap_or("KiB") {
        "b" | "bytes" => return v / 1024,
        "KB" => return v * 1000 / 1024,
        "k" | "KiB" => 1,
        "MB" => return v * 1_000_000 / 1024,
        "M" | "MiB" => 1024,
        "GB" => return v * 1_000_000_000 / 1024,
        "G" | "GiB" => 1024 * 1024,
        "T" | "TiB" => 1024 * 1024 * 1024,
        _ => 1,
    };
    v.saturating_mul(factor)
}

fn disk(n: &Node) -> DescribedDisk {
    let source = n.child("source").and_then(|s| {
        ["file", "dev", "name", "volume", "dir"]
            .iter()
            .find_map(|k| s.attr(k))
            .map(str::to_string)
    });
    let backing = match n.child("backingStore") {
        None => Backing::Unknown,
        Some(b) => Backing::Known(
            b.child("source")
                .and_then(|s| s.attr("file").or(s.attr("dev")).or(s.attr("name")))
                .map(str::to_string),
        ),
    };
    DescribedDisk {
        target: n
            .child("target")
            .and_then(|t| t.attr("dev"))
            .unwrap_or_default()
            .to_string(),
        device: n.attr("device").unwrap_or("disk").to_string(),
        kind: n.attr("type").unwrap_or("file").to_string(),
        source,
        format: n
            .child("driver")
            .and_then(|d| d.attr("type"))
            .map(str::to_string),
        bus: n
            .child("target")
            .and_then(|t| t.attr("bus"))
            .unwrap_or_default()
            .to_string(),
        read_only: n.child("readonly").is_some(),
        shareable: n.child("shareable").is_some(),
        backing,
    }
}

fn nic(n: &Node) -> DescribedNic {
    let kind = n.attr("type").unwrap_or_default().to_string();
    let source = n.child("source").and_then(|s| {
        ["bridge", "network", "dev"]
            .iter()
            .find_map(|k| s.attr(k))
            .map(str::to_string)
    });
    DescribedNic {
        kind,
        source,
        mac: n
            .child("mac")
            .and_then(|m| m.attr("address"))
            .map(|m| m.to_ascii_lowercase()),
        model: n
            .child("model")
            .and_then(|m| m.attr("type"))
            .map(str::to_string),
    }
}

/// Devices whose guest-visible hardware ferry's definitions always have in some form, or that
/// change nothing the guest relies on: not reported.
const KNOWN_DEVICES: &[&str] = &[
    "emulator",
    "channel",
    "memballoon",
    "rng",
    "controller",
    "video",
];

/// Devices that give the guest host hardware or host files.
const PASSTHROUGH_DEVICES: &[&str] = &[
    "hostdev",
    "filesystem",
    "redirdev",
    "smartcard",
    "shmem",
    "tpm",
    "vsock",
    "iommu",
    "memory",
    "crypto",
    "parallel",
];

/// Reads a domain's XML as libvirt returns it (live or inactive), or says why it is not domain
/// XML.
pub fn describe(xml: &str) -> Result<DomainDescription, String> {
    let root = xml_tree::parse(xml).map_err(|e| format!("not well-formed XML: {e}"))?;
    if root.name != "domain" {
        return Err(format!("the root element is <{}>, not <domain>", root.name));
    }
    let os = root.child("os");
    let os_type = os.and_then(|o| o.child("type"));
    let cpu = root.child("cpu");
    let vcpu = root.child("vcpu");
    let vcpus: u32 = vcpu.and_then(|v| v.text.trim().parse().ok()).unwrap_or(0);
    let mut d = DomainDescription {
        name: root.text_of("name").unwrap_or_default(),
        uuid: root
            .text_of("uuid")
            .unwrap_or_default()
            .to_ascii_lowercase(),
        virt_type: root.attr("type").unwrap_or_default().to_string(),
        arch: os_type
            .and_then(|t| t.attr("arch"))
            .unwrap_or_default()
            .to_string(),
        machine: os_type
            .and_then(|t| t.attr("machine"))
            .unwrap_or_default()
            .to_string(),
        loader: os.and_then(|o| o.text_of("loader")).or_else(|| {
            os.and_then(|o| o.attr("firmware"))
                .map(|f| format!("firmware {f}"))
        }),
        boot_devices: os
            .map(|o| {
                o.children("boot")
                    .filter_map(|b| b.attr("dev").map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        kernel: os.and_then(|o| o.text_of("kernel")),
        initrd: os.and_then(|o| o.text_of("initrd")),
        cmdline: os.and_then(|o| o.text_of("cmdline")),
        vcpus,
        vcpus_current: vcpu
            .and_then(|v| v.attr("current"))
            .and_then(|c| c.parse().ok())
            .filter(|c| *c != vcpus),
        cpu_mode: cpu.and_then(|c| c.attr("mode")).map(str::to_string),
        cpu_model: cpu.and_then(|c| c.text_of("model")),
        cpu_topology: cpu.is_some_and(|c| c.child("topology").is_some()),
        memory_kib: kib(root.child("memory")),
        current_memory_kib: kib(root.child("currentMemory")),
        clock_offset: root
            .child("clock")
            .and_then(|c| c.attr("offset"))
            .map(str::to_string),
        ..DomainDescription::default()
    };
    if d.current_memory_kib == 0 {
        d.current_memory_kib = d.memory_kib;
    }
    for t in [
        "numatune",
        "memoryBacking",
        "cputune",
        "iothreads",
        "blkiotune",
        "sysinfo",
    ] {
        if root.child(t).is_some() {
            d.tuning.push(t.to_string());
        }
    }
    if let Some(devices) = root.child("devices") {
        for dev in &devices.children {
            let typed = |n: &Node| match n.attr("type").or(n.attr("model")) {
                Some(t) => format!("{} {t}", n.name),
                None => n.name.clone(),
            };
            match dev.name.as_str() {
                "disk" => d.disks.push(disk(dev)),
                "interface" => d.nics.push(nic(dev)),
                "graphics" => d
                    .graphics
                    .push(dev.attr("type").unwrap_or_default().to_string()),
                "serial" | "console" => d.serials.push(format!(
                    "{} {}",
                    dev.name,
                    dev.attr("type").unwrap_or("pty")
                )),
                // libvirt adds a PS/2 mouse and keyboard to every x86 domain, and a silent audio
                // backend to domains with a display.
                "input" if dev.attr("bus") == Some("ps2") => {}
                "audio" if dev.attr("type") == Some("none") => {}
                n if PASSTHROUGH_DEVICES.contains(&n) => d.passthrough.push(typed(dev)),
                n if KNOWN_DEVICES.contains(&n) => {}
                _ => d.other_devices.push(typed(dev)),
            }
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: &str = r#"<domain type='qemu' id='1'>
  <name>legacy &amp; co</name>
  <uuid>70295D7A-B851-46E1-BFA3-4E82B34CFF8B</uuid>
  <metadata><x:y xmlns:x="urn:x"><x:z>1</x:z></x:y></metadata>
  <memory unit='KiB'>131072</memory>
  <currentMemory unit='KiB'>131072</currentMemory>
  <vcpu placement='static' current='1'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <kernel>/srv/boot/vmlinuz</kernel>
    <initrd>/srv/boot/initrd.img</initrd>
    <cmdline>console=ttyS0 a=&quot;b&quot;</cmdline>
    <boot dev='hd'/>
  </os>
  <cpu mode='custom' match='exact'><model fallback='forbid'>Skylake-Server</model></cpu>
  <clock offset='utc'/>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/srv/pool/legacy.qcow2' index='1'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/srv/pool/overlay.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/srv/pool/base.qcow2'/></backingStore>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'><source dev='/dev/sdb'/><target dev='sda' bus='sata'/></disk>
    <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>
    <interface type='bridge'>
      <mac address='52:54:00:AA:BB:01'/>
      <source bridge='gbr0'/>
      <model type='virtio'/>
    </interface>
    <interface type='direct'><mac address='52:54:00:aa:bb:02'/><source dev='eth0' mode='bridge'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <graphics type='vnc' port='5900' listen='127.0.0.1'/>
    <video><model type='cirrus'/></video>
    <hostdev mode='subsystem' type='pci'/>
  </devices>
</domain>"#;

    #[test]
    fn a_running_domain_reads_as_adoption_sees_it() {
        let d = describe(LIVE).expect("domain XML");
        assert_eq!(d.name, "legacy & co");
        assert_eq!(d.uuid, "70295d7a-b851-46e1-bfa3-4e82b34cff8b");
        assert_eq!(d.virt_type, "qemu");
        assert_eq!(d.machine, "pc-i440fx-7.2");
        assert_eq!((d.vcpus, d.vcpus_current), (2, Some(1)));
        assert_eq!(d.cpu_mode.as_deref(), Some("custom"));
        assert_eq!(d.cpu_model.as_deref(), Some("Skylake-Server"));
        assert_eq!(d.memory_kib, 131072);
        assert_eq!(d.cmdline.as_deref(), Some("console=ttyS0 a=\"b\""));
        assert_eq!(d.boot_devices, ["hd"]);
        assert_eq!(d.disks.len(), 4);
        assert_eq!(d.disks[0].source.as_deref(), Some("/srv/pool/legacy.qcow2"));
        assert_eq!(d.disks[0].backing, Backing::Known(None));
        assert_eq!(
            d.disks[1].backing,
            Backing::Known(Some("/srv/pool/base.qcow2".into()))
        );
        assert_eq!(d.disks[2].kind, "block");
        assert_eq!(
            (d.disks[3].device.as_str(), d.disks[3].source.as_deref()),
            ("cdrom", None)
        );
        assert_eq!(d.disks[3].backing, Backing::Unknown);
        assert_eq!(d.nics[0].mac.as_deref(), Some("52:54:00:aa:bb:01"));
        assert_eq!(d.nics[0].source.as_deref(), Some("gbr0"));
        assert_eq!(d.nics[1].kind, "direct");
        assert_eq!(d.graphics, ["vnc"]);
        assert_eq!(d.passthrough, ["hostdev pci"]);
        assert!(d.other_devices.is_empty(), "{:?}", d.other_devices);
    }

    #[test]
    fn units_and_garbage() {
        let d = describe("<domain><memory unit='MiB'>128</memory><vcpu>1</vcpu></domain>")
            .expect("domain");
        assert_eq!((d.memory_kib, d.current_memory_kib), (131072, 131072));
        assert_eq!(
            describe("<pool/>").err().as_deref(),
            Some("the root element is <pool>, not <domain>")
        );
        assert!(describe("<domain>").is_err());
        assert!(describe("not xml").is_err());
    }

    /// The XML libvirt returned for a running domain ferry defined (libvirtd 9.0, QEMU 7.2):
    /// ferry could adopt it as it runs.
    #[test]
    fn libvirts_own_live_xml_is_adoptable() {
        use crate::plan::adoption::{PoolView, assess};
        use crate::plan::domain::{CpuModel, DescribedDomain, DomainState};
        let live = include_str!("../../../tests/golden/libvirt/running.live.dumpxml");
        let d = describe(live).expect("domain XML");
        assert_eq!(d.name, "st");
        assert_eq!(d.disks[0].backing, Backing::Known(None));
        assert!(d.passthrough.is_empty() && d.other_devices.is_empty());
        let described = DescribedDomain {
            persistent: Some(d.clone()),
            current: d,
        };
        let pool = PoolView {
            storage_dir: Some("/tmp/hvx/pool"),
            golden_images: &[],
            boot_dirs: &[],
        };
        let a = assess(&described, DomainState::Running, &pool);
        assert!(a.blockers.is_empty(), "{:?}", a.blockers);
        let hw = a.hardware.expect("hardware");
        assert_eq!(hw.cpu_model, CpuModel::Named("EPYC".into()));
        assert_eq!(hw.disks[0].volume, "root.qcow2");
        assert!(hw.serial_console && !hw.vnc);
    }

    /// A domain written by ferry's own XML writer reads back as the hardware it was written from.
    #[test]
    fn ferrys_own_definition_reads_back_as_written() {
        use crate::hypervisor::domain_xml::to_xml;
        use crate::plan::adoption::{PoolView, assess};
        use crate::plan::domain::{
            Bus, CpuModel, DescribedDomain, DiskDef, DomainDefinition, DomainState, Graphics,
            KernelBoot, NicDef, NicSource, Owner, VirtType,
        };
        let disk = |name: &str, bus| DiskDef {
            name: name.into(),
            path: format!("/var/lib/ferry/pool/{name}.qcow2"),
            format: "qcow2".into(),
            bus,
            read_only: false,
        };
        let def = DomainDefinition {
            name: "apps_web".into(),
            uuid: "0b6a3f4e-2f57-4d3c-9d59-4a0f3c1e7a10".into(),
            virt_type: VirtType::Qemu,
            vcpus: 2,
            cpu_model: CpuModel::Named("Skylake-Server".into()),
            memory_kib: 512 * 1024,
            disks: vec![disk("root", Bus::Virtio), disk("data", Bus::Sata)],
            nics: vec![
                NicDef {
                    name: "eth0".into(),
                    mac: "52:54:00:00:00:01".into(),
                    source: NicSource::Bridge("br0".into()),
                    model: "virtio".into(),
                },
                NicDef {
                    name: "mgmt".into(),
                    mac: "52:54:00:00:00:02".into(),
                    source: NicSource::Network("default".into()),
                    model: "e1000".into(),
                },
            ],
            boot: Some(KernelBoot {
                kernel: "/srv/boot/vmlinuz".into(),
                initrd: Some("/srv/boot/initrd.img".into()),
                cmdline: Some("console=ttyS0 root=/dev/vda".into()),
            }),
            serial_console: true,
            console_log: Some("/srv/console/apps_web.log".into()),
            graphics: Some(Graphics::Vnc),
            owner: Owner {
                namespace: "apps".into(),
                name: "web".into(),
                uid: "0b6a3f4e-2f57-4d3c-9d59-4a0f3c1e7a10".into(),
            },
        };
        let mut d = describe(&to_xml(&def).expect("xml")).expect("domain XML");
        assert!(d.other_devices.is_empty(), "{:?}", d.other_devices);
        // Only a running domain's XML shows backing chains.
        for disk in &mut d.disks {
            disk.backing = Backing::Known(None);
        }
        let boot_dirs = ["/srv/boot".to_string()];
        let pool = PoolView {
            storage_dir: Some("/var/lib/ferry/pool"),
            golden_images: &[],
            boot_dirs: &boot_dirs,
        };
        let described = DescribedDomain {
            persistent: Some(d.clone()),
            current: d,
        };
        let a = assess(&described, DomainState::Running, &pool);
        assert!(a.blockers.is_empty(), "{:?}", a.blockers);
        let hw = a.hardware.expect("hardware");
        assert_eq!(
            (hw.vcpus, &hw.cpu_model, hw.memory_kib),
            (def.vcpus, &def.cpu_model, def.memory_kib)
        );
        let disks: Vec<_> = hw
            .disks
            .iter()
            .map(|d| (d.path.as_str(), d.bus, d.format.as_str()))
            .collect();
        let want: Vec<_> = def
            .disks
            .iter()
            .map(|d| (d.path.as_str(), d.bus, d.format.as_str()))
            .collect();
        assert_eq!(disks, want);
        let nics: Vec<_> = hw
            .nics
            .iter()
            .map(|n| (&n.mac, &n.source, &n.model))
            .collect();
        let want: Vec<_> = def
            .nics
            .iter()
            .map(|n| (&n.mac, &n.source, &n.model))
            .collect();
        assert_eq!(nics, want);
        assert_eq!(hw.boot, def.boot);
        assert!(hw.serial_console && hw.vnc);
    }
}
