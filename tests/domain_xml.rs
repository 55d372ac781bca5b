//! Golden, hostile-input, hash and metadata tests for `ferry::hypervisor::domain_xml`.

use std::path::PathBuf;

use ferry::hypervisor::domain_xml::{METADATA_NS, XmlError, parse_metadata, to_xml};
use ferry::plan::domain::*;
use pretty_assertions::assert_eq;
use quick_xml::events::Event;
use quick_xml::reader::Reader;

fn owner() -> Owner {
    Owner {
        namespace: "default".into(),
        name: "vm1".into(),
        uid: "0b6a3f4e-2f57-4d3c-9d59-4a0f3c1e7a10".into(),
    }
}

fn minimal() -> DomainDefinition {
    DomainDefinition {
        name: "default_vm1".into(),
        uuid: "0b6a3f4e-2f57-4d3c-9d59-4a0f3c1e7a10".into(),
        virt_type: VirtType::Qemu,
        vcpus: 1,
        cpu_model: CpuModel::HostModel,
        memory_kib: 64 * 1024,
        disks: vec![],
        nics: vec![],
        boot: None,
        serial_console: true,
        console_log: None,
        graphics: None,
        owner: owner(),
    }
}

fn disk(name: &str, bus: Bus) -> DiskDef {
    DiskDef {
        name: name.into(),
        path: format!("/var/lib/ferry/pool/default_vm1-{name}.qcow2"),
        format: "qcow2".into(),
        bus,
        read_only: false,
    }
}

fn multi_disk() -> DomainDefinition {
    let mut iso = disk("tools", Bus::Sata);
    iso.path = "/var/lib/ferry/pool/tools.raw".into();
    iso.format = "raw".into();
    iso.read_only = true;
    DomainDefinition {
        virt_type: VirtType::Kvm,
        vcpus: 4,
        cpu_model: CpuModel::HostPassthrough,
        memory_kib: 4 * 1024 * 1024,
        disks: vec![
            disk("root", Bus::Virtio),
            iso,
            disk("data", Bus::Scsi),
            disk("scratch", Bus::Virtio),
            disk("logs", Bus::Scsi),
        ],
        ..minimal()
    }
}

fn kernel_boot() -> DomainDefinition {
    DomainDefinition {
        vcpus: 2,
        cpu_model: CpuModel::Named("Skylake-Server".into()),
        memory_kib: 512 * 1024,
        disks: vec![disk("root", Bus::Virtio)],
        boot: Some(KernelBoot {
            kernel: "/srv/ferry/vmlinuz".into(),
            initrd: Some("/srv/ferry/initrd.img".into()),
            cmdline: Some("console=ttyS0 root=/dev/vda rw quiet".into()),
        }),
        console_log: Some("/srv/ferry/console/default_vm1.console.log".into()),
        ..minimal()
    }
}

fn nics() -> DomainDefinition {
    DomainDefinition {
        nics: vec![
            NicDef {
                name: "eth0".into(),
                mac: derive_mac(&owner().uid, "eth0"),
                source: NicSource::Bridge("br0".into()),
                model: "virtio".into(),
            },
            NicDef {
                name: "mgmt".into(),
                mac: "52:54:00:12:34:56".into(),
                source: NicSource::Network("default".into()),
                model: "e1000".into(),
            },
        ],
        disks: vec![disk("root", Bus::Virtio)],
        ..minimal()
    }
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `actual` with `tests/golden/<name>`; `FERRY_BLESS=1` rewrites the file.
fn check_golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("FERRY_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with FERRY_BLESS=1 to create it)",
            path.display()
        )
    });
    assert_eq!(
        expected, actual,
        "{name} differs; FERRY_BLESS=1 rewrites it"
    );
}

#[test]
fn golden_minimal() {
    check_golden("minimal.xml", &to_xml(&minimal()).unwrap());
}

#[test]
fn golden_multi_disk() {
    check_golden("multi_disk.xml", &to_xml(&multi_disk()).unwrap());
}

#[test]
fn golden_kernel_boot_console() {
    check_golden("kernel_boot_console.xml", &to_xml(&kernel_boot()).unwrap());
}

/// A VM with a cloud-init seed: a read-only CD-ROM on the virtio-SCSI bus after its disk.
fn with_seed() -> DomainDefinition {
    let mut def = minimal();
    ferry::plan::definition::attach_seed(
        &mut def,
        "/var/lib/ferry/pool/ns_vm_cidata_0b8e1f2a_00112233aabb.iso",
    );
    def
}

#[test]
fn golden_cloud_init_seed() {
    check_golden("cloud_init_seed.xml", &to_xml(&with_seed()).unwrap());
}

#[test]
fn seed_change_is_a_restart_change() {
    let a = with_seed();
    let mut b = with_seed();
    b.disks[0].path = "/var/lib/ferry/pool/ns_vm_cidata_0b8e1f2a_ffffffffffff.iso".into();
    assert_ne!(definition_hash(&a), definition_hash(&b));
    assert_eq!(
        restart_changes(&shape(&a), &shape(&b)),
        [Change::CloudInitSeed(Edit::Changed)]
    );
}

/// Both consoles: a serial console logged to a file and a VNC display that listens nowhere.
fn consoles() -> DomainDefinition {
    DomainDefinition {
        graphics: Some(Graphics::Vnc),
        ..kernel_boot()
    }
}

#[test]
fn golden_consoles() {
    check_golden("consoles.xml", &to_xml(&consoles()).unwrap());
}

/// Both consoles turned off: no serial port, no console, no display, no video.
#[test]
fn golden_no_consoles() {
    let def = DomainDefinition {
        serial_console: false,
        console_log: None,
        graphics: None,
        ..kernel_boot()
    };
    check_golden("no_consoles.xml", &to_xml(&def).unwrap());
}

#[test]
fn a_console_log_needs_the_serial_console() {
    let def = DomainDefinition {
        serial_console: false,
        ..kernel_boot()
    };
    assert!(matches!(
        to_xml(&def),
        Err(XmlError::OutOfRange { field, .. }) if field == "console_log"
    ));
}

/// A domain defined before consoles were optional (its metadata names none) has a serial console
/// and no display: the VNC display is a change for its next restart, and definitions that keep
/// the old devices keep their hash.
#[test]
fn consoles_of_older_domains_are_restart_changes() {
    let dir = golden_dir().join("libvirt");
    let xml = std::fs::read_to_string(dir.join("kernel_boot_console.dumpxml")).expect("fixture");
    let live = parse_metadata(&xml).expect("metadata");
    assert_eq!(live.shape.consoles, ["serial"]);
    let mut old = kernel_boot();
    old.uuid = live.owner.uid.clone();
    assert_eq!(definition_hash(&old), live.definition_hash);
    assert_eq!(
        pending_restart(&live, &definition_hash(&old), &shape(&old)),
        []
    );

    let mut new = consoles();
    new.uuid = live.owner.uid.clone();
    let changes = pending_restart(&live, &definition_hash(&new), &shape(&new));
    assert_eq!(
        changes,
        [Change::Console {
            name: "vnc".into(),
            edit: Edit::Added
        }]
    );
    assert_eq!(describe_changes(&changes, None), ["VNC display added"]);

    new.serial_console = false;
    new.console_log = None;
    let changes = pending_restart(&live, &definition_hash(&new), &shape(&new));
    assert_eq!(
        describe_changes(&changes, None),
        ["VNC display added", "serial console removed"]
    );
}

#[test]
fn golden_nics() {
    check_golden("nics.xml", &to_xml(&nics()).unwrap());
}

// ------------------------------------------------------------------------------------------------
// Hostile input
// ------------------------------------------------------------------------------------------------

/// Quotes, markup, CDATA end, comment dashes, entities, new lines, tabs, CR, non-ASCII.
const NASTY: &str =
    "a'b\"c<d>e&f]]>g\nh--i\r\nj\tk ünï©ødé ✓ 😀 &amp; <!-- x --> <![CDATA[y]]> <x a='1'/>";

/// A definition with [`NASTY`] in every free-form value (device names stay valid: they are
/// checked, see `device_names_are_checked`).
fn hostile(v: &str) -> DomainDefinition {
    let mut d = kernel_boot();
    d.name = format!("vm {v}");
    d.cpu_model = CpuModel::Named(format!("model {v}"));
    d.owner = Owner {
        namespace: format!("ns {v}"),
        name: format!("name {v}"),
        uid: format!("uid {v}"),
    };
    d.disks = vec![
        DiskDef {
            path: format!("/pool/{v}.qcow2"),
            format: format!("fmt {v}"),
            ..disk("root", Bus::Scsi)
        },
        DiskDef {
            path: format!("/pool/{v}.iso"),
            read_only: true,
            ..disk("seed", Bus::Sata)
        },
    ];
    d.nics = vec![
        NicDef {
            name: "eth0".into(),
            mac: format!("mac {v}"),
            source: NicSource::Network(format!("net {v}")),
            model: format!("model {v}"),
        },
        NicDef {
            name: "eth1".into(),
            mac: "52:54:00:00:00:01".into(),
            source: NicSource::Bridge(format!("br {v}")),
            model: "virtio".into(),
        },
    ];
    d.boot = Some(KernelBoot {
        kernel: format!("/k/{v}"),
        initrd: Some(format!("/i/{v}")),
        cmdline: Some(format!("console=ttyS0 {v}")),
    });
    d.console_log = Some(format!("/log/{v}.log"));
    d
}

/// Every element path, attribute and value of a document, read with quick-xml's reader (which
/// checks well-formedness: matching end tags, attribute syntax, references).
fn flatten(xml: &str) -> Vec<(String, String, String)> {
    let mut reader = Reader::from_str(xml);
    let cfg = reader.config_mut();
    cfg.check_comments = true;
    cfg.check_end_names = true;
    let mut path: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut text = String::new();
    let open = |e: &quick_xml::events::BytesStart,
                path: &mut Vec<String>,
                out: &mut Vec<(String, String, String)>| {
        path.push(String::from_utf8(e.name().as_ref().to_vec()).expect("UTF-8 name"));
        let p = path.join("/");
        let mut attrs = e.attributes();
        attrs.with_checks(true);
        for a in attrs {
            let a = a.expect("attribute syntax");
            let key = String::from_utf8(a.key.as_ref().to_vec()).expect("UTF-8 key");
            let value = a.unescape_value().expect("attribute value").into_owned();
            out.push((p.clone(), format!("@{key}"), value));
        }
    };
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => {
                open(&e, &mut path, &mut out);
                text.clear();
            }
            Event::Empty(e) => {
                open(&e, &mut path, &mut out);
                path.pop();
                text.clear();
            }
            Event::Text(t) => text.push_str(&t.xml10_content().expect("text")),
            Event::GeneralRef(r) => match r.resolve_char_ref().expect("char ref") {
                Some(c) => text.push(c),
                None => text.push_str(
                    quick_xml::escape::resolve_predefined_entity(&r.decode().unwrap())
                        .expect("known entity"),
                ),
            },
            Event::End(_) => {
                if !text.trim().is_empty() {
                    out.push((path.join("/"), "text()".into(), std::mem::take(&mut text)));
                }
                text.clear();
                path.pop();
            }
            Event::Eof => break,
            Event::Comment(_) | Event::CData(_) | Event::PI(_) | Event::DocType(_) => {
                panic!("unexpected markup in generated XML")
            }
            _ => {}
        }
    }
    out
}

fn value_at<'a>(flat: &'a [(String, String, String)], path: &str, key: &str) -> Vec<&'a str> {
    flat.iter()
        .filter(|(p, k, _)| p == path && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

#[test]
fn hostile_values_round_trip_without_injection() {
    let benign = flatten(&to_xml(&hostile("plain")).unwrap());
    let xml = to_xml(&hostile(NASTY)).unwrap();
    let nasty = flatten(&xml);

    // Same elements and attributes, in the same order, as for harmless values: nothing injected.
    let structure = |f: &[(String, String, String)]| {
        f.iter()
            .map(|(p, k, _)| (p.clone(), k.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(structure(&benign), structure(&nasty));

    // Every value reads back exactly.
    let v = NASTY;
    let expect = [
        ("domain/name", "text()", format!("vm {v}")),
        ("domain/os/kernel", "text()", format!("/k/{v}")),
        ("domain/os/initrd", "text()", format!("/i/{v}")),
        ("domain/os/cmdline", "text()", format!("console=ttyS0 {v}")),
        ("domain/cpu/model", "text()", format!("model {v}")),
        (
            "domain/devices/disk/source",
            "@file",
            format!("/pool/{v}.qcow2"),
        ),
        ("domain/devices/disk/driver", "@type", format!("fmt {v}")),
        (
            "domain/devices/interface/mac",
            "@address",
            format!("mac {v}"),
        ),
        (
            "domain/devices/interface/source",
            "@network",
            format!("net {v}"),
        ),
        (
            "domain/devices/interface/source",
            "@bridge",
            format!("br {v}"),
        ),
        (
            "domain/devices/interface/model",
            "@type",
            format!("model {v}"),
        ),
        (
            "domain/devices/serial/log",
            "@file",
            format!("/log/{v}.log"),
        ),
        ("domain/metadata/ferry:vm", "@namespace", format!("ns {v}")),
        ("domain/metadata/ferry:vm", "@name", format!("name {v}")),
        ("domain/metadata/ferry:vm", "@uid", format!("uid {v}")),
    ];
    for (path, key, want) in expect {
        let got = value_at(&nasty, path, key);
        assert!(
            got.contains(&want.as_str()),
            "{path} {key}: {got:?} does not contain {want:?}"
        );
    }
    assert_eq!(
        value_at(&nasty, "domain/devices/disk/source", "@file"),
        vec![format!("/pool/{v}.qcow2"), format!("/pool/{v}.iso")]
    );
}

#[test]
fn hostile_metadata_round_trips() {
    let def = hostile(NASTY);
    let meta = parse_metadata(&to_xml(&def).unwrap()).expect("metadata");
    assert_eq!(meta.owner, def.owner);
    assert_eq!(meta.definition_hash, definition_hash(&def));
    assert_eq!(meta.shape, shape(&def));
}

#[test]
fn device_names_are_checked() {
    for bad in ["", "a b", "a'b", "a<b", "ä", "a/b", "a\nb"] {
        let mut d = minimal();
        d.disks = vec![disk(bad, Bus::Virtio)];
        assert!(
            matches!(to_xml(&d), Err(XmlError::InvalidName { .. })),
            "disk name {bad:?}"
        );
        let mut d = nics();
        d.nics[1].name = bad.into();
        assert!(
            matches!(to_xml(&d), Err(XmlError::InvalidName { .. })),
            "nic name {bad:?}"
        );
    }
}

#[test]
fn characters_xml_cannot_carry_are_refused() {
    for bad in ["a\0b", "a\u{1}b", "\u{1b}[31m", "a\u{FFFE}", "\u{FFFF}"] {
        let mut d = kernel_boot();
        d.boot.as_mut().unwrap().cmdline = Some(bad.into());
        match to_xml(&d) {
            Err(XmlError::InvalidCharacter { field, .. }) => assert_eq!(field, "boot.cmdline"),
            other => panic!("{bad:?}: {other:?}"),
        }
        let mut d = minimal();
        d.owner.name = bad.into();
        assert!(matches!(to_xml(&d), Err(XmlError::InvalidCharacter { .. })));
    }
}

#[test]
fn out_of_range_values_are_refused() {
    let mut d = minimal();
    d.vcpus = 0;
    assert!(matches!(to_xml(&d), Err(XmlError::OutOfRange { .. })));
    let mut d = minimal();
    d.memory_kib = 0;
    assert!(matches!(to_xml(&d), Err(XmlError::OutOfRange { .. })));
    let mut d = minimal();
    d.name.clear();
    assert!(matches!(to_xml(&d), Err(XmlError::OutOfRange { .. })));
}

// ------------------------------------------------------------------------------------------------
// Device names, hashes, MACs
// ------------------------------------------------------------------------------------------------

#[test]
fn disk_targets_are_per_bus_in_order() {
    let d = multi_disk();
    assert_eq!(
        disk_targets(&d.disks),
        vec!["vda", "sda", "sdb", "vdb", "sdc"]
    );
    let many: Vec<DiskDef> = (0..30)
        .map(|i| disk(&format!("d{i}"), Bus::Virtio))
        .collect();
    let t = disk_targets(&many);
    assert_eq!(t[0], "vda");
    assert_eq!(t[25], "vdz");
    assert_eq!(t[26], "vdaa");
    assert_eq!(t[29], "vdad");
    assert!(disk_targets(&[]).is_empty());
}

#[test]
fn definition_hash_is_fixed() {
    // These values must never change: a different hash marks every running VM RestartRequired.
    assert_eq!(definition_hash(&minimal()), "2bfdede1699cae9b");
    assert_eq!(definition_hash(&kernel_boot()), "e0dc914142ef54ad");
}

#[test]
fn definition_hash_ignores_owner_and_sees_everything_else() {
    let base = multi_disk();
    let h = definition_hash(&base);
    let mut d = base.clone();
    d.owner = Owner {
        namespace: "other".into(),
        name: "other".into(),
        uid: "other".into(),
    };
    assert_eq!(definition_hash(&d), h, "owner is not part of the hash");

    type Change = Box<dyn Fn(&mut DomainDefinition)>;
    let variants: Vec<Change> = vec![
        Box::new(|d| d.name.push('x')),
        Box::new(|d| d.uuid.push('x')),
        Box::new(|d| d.virt_type = VirtType::Qemu),
        Box::new(|d| d.vcpus += 1),
        Box::new(|d| d.cpu_model = CpuModel::HostModel),
        Box::new(|d| d.memory_kib += 1),
        Box::new(|d| d.disks[0].path.push('x')),
        Box::new(|d| d.disks[0].format = "raw".into()),
        Box::new(|d| d.disks[0].bus = Bus::Sata),
        Box::new(|d| d.disks[0].read_only = true),
        Box::new(|d| d.disks.swap(0, 1)),
        Box::new(|d| {
            d.disks.pop();
        }),
        Box::new(|d| d.nics = nics().nics),
        Box::new(|d| d.boot = kernel_boot().boot),
        Box::new(|d| d.console_log = Some("/x".into())),
        // Moving a byte between two adjacent values must change the hash too.
        Box::new(|d| {
            d.disks[0].name = "roo".into();
            d.disks[0].path = format!("t{}", d.disks[0].path);
        }),
    ];
    for (i, change) in variants.iter().enumerate() {
        let mut d = base.clone();
        change(&mut d);
        assert_ne!(definition_hash(&d), h, "variant {i}");
    }
}

#[test]
fn derive_mac_is_stable_local_unicast() {
    let mac = derive_mac("0b6a3f4e-2f57-4d3c-9d59-4a0f3c1e7a10", "eth0");
    assert_eq!(
        mac,
        derive_mac("0b6a3f4e-2f57-4d3c-9d59-4a0f3c1e7a10", "eth0")
    );
    assert_eq!(mac, "52:e1:70:57:7a:8b");
    let mut seen = std::collections::HashSet::new();
    for i in 0..2000 {
        let mac = derive_mac(&format!("uid-{i}"), "eth0");
        let octets: Vec<u8> = mac
            .split(':')
            .map(|o| u8::from_str_radix(o, 16).unwrap())
            .collect();
        assert_eq!(octets.len(), 6);
        assert_eq!(octets[0] & 0x02, 0x02, "locally administered: {mac}");
        assert_eq!(octets[0] & 0x01, 0, "unicast: {mac}");
        assert!(seen.insert(mac), "collision");
    }
    assert_ne!(derive_mac("u", "eth0"), derive_mac("u", "eth1"));
    assert_ne!(derive_mac("ab", "c"), derive_mac("a", "bc"));
}

// ------------------------------------------------------------------------------------------------
// Shapes and restart reasons
// ------------------------------------------------------------------------------------------------

#[test]
fn restart_changes_names_each_difference() {
    let running = shape(&multi_disk());
    assert!(restart_changes(&running, &running).is_empty());

    let mut d = multi_disk();
    d.vcpus = 8;
    d.memory_kib = 512 * 1024;
    d.cpu_model = CpuModel::HostModel;
    d.disks.retain(|x| x.name != "logs");
    d.disks.push(disk("extra", Bus::Virtio));
    d.disks[0].path = "/elsewhere.qcow2".into();
    d.nics = nics().nics;
    d.boot = kernel_boot().boot;
    let desired = shape(&d);
    assert_eq!(
        describe_changes(&restart_changes(&running, &desired), None),
        vec![
            "vCPUs 4 → 8",
            "CPU model host-passthrough → host-model",
            "memory 4 GiB → 512 MiB",
            "disk extra added",
            "disk root changed",
            "disk logs removed",
            "network eth0 added",
            "network mgmt added",
            "kernel boot added",
        ]
    );

    let mut reordered = multi_disk();
    reordered.disks.swap(0, 3);
    assert_eq!(
        restart_changes(&running, &shape(&reordered)),
        vec![Change::DiskOrder]
    );

    let mut n = nics();
    let before = shape(&n);
    n.nics[0].source = NicSource::Network("other".into());
    n.memory_kib = 1536;
    n.boot = None;
    assert_eq!(
        describe_changes(&restart_changes(&before, &shape(&n)), None),
        vec!["memory 64 MiB → 1536 KiB", "network eth0 changed"]
    );
    assert_eq!(
        restart_changes(&shape(&kernel_boot()), &shape(&minimal())).last(),
        Some(&Change::KernelBoot(Edit::Removed))
    );
}

// ------------------------------------------------------------------------------------------------
// Metadata
// ------------------------------------------------------------------------------------------------

#[test]
fn metadata_round_trips_for_every_golden_definition() {
    for def in [
        minimal(),
        multi_disk(),
        kernel_boot(),
        nics(),
        with_seed(),
        consoles(),
    ] {
        let meta = parse_metadata(&to_xml(&def).unwrap()).expect("metadata");
        assert_eq!(
            meta,
            FerryMetadata {
                owner: def.owner.clone(),
                definition_hash: definition_hash(&def),
                shape: shape(&def),
            }
        );
    }
}

/// XML exactly as `virsh dumpxml` returned it from libvirtd 9.0 for domains defined from
/// [`to_xml`] output (see `tests/golden/libvirt/README.md`).
#[test]
fn metadata_reads_from_libvirt_output() {
    let dir = golden_dir().join("libvirt");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("fixture");

    let meta = parse_metadata(&read("kernel_boot_console.dumpxml")).expect("metadata");
    let mut def = kernel_boot();
    def.uuid = meta.owner.uid.clone();
    assert_eq!(meta.shape, shape(&def));
    assert_eq!(meta.owner.name, "vm1");

    let meta = parse_metadata(&read("hostile.dumpxml")).expect("metadata");
    let def = hostile_for_libvirt(NASTY);
    assert_eq!(meta.owner, def.owner);
    assert_eq!(meta.shape, shape(&def));
    assert_eq!(meta.definition_hash, definition_hash(&def));

    let meta = parse_metadata(&read("hostile.inactive.dumpxml")).expect("metadata");
    assert_eq!(meta.shape, shape(&def));

    // Live XML of a running domain (`id=`, generated devices, `<seclabel>` ...).
    let meta = parse_metadata(&read("running.live.dumpxml")).expect("metadata");
    assert_eq!(meta.shape.vcpus, 1);
    assert_eq!(meta.shape.nics.len(), 2);

    assert_eq!(parse_metadata(&read("foreign.dumpxml")), None);
}

#[test]
fn metadata_matches_namespace_not_prefix() {
    let xml = format!(
        r#"<domain type='kvm'><name>x</name><metadata>
            <other:vm xmlns:other="urn:someone-else" namespace="a" name="b" uid="c" definitionHash="d"/>
            <f:vm xmlns:f="{METADATA_NS}" namespace="ns" name="n" uid="u" definitionHash="h">
              <f:vcpus> 3 </f:vcpus><f:memory unit='KiB'>1024</f:memory>
              <f:future><f:nested>ignored</f:nested></f:future>
              <f:disk>root=/a&amp;b (virtio, qcow2)</f:disk><f:nic>eth0=m@network:n (virtio)</f:nic>
            </f:vm></metadata></domain>"#
    );
    let meta = parse_metadata(&xml).expect("metadata");
    assert_eq!(meta.owner.namespace, "ns");
    assert_eq!(meta.definition_hash, "h");
    assert_eq!(meta.shape.vcpus, 3);
    assert_eq!(meta.shape.memory_kib, 1024);
    assert_eq!(meta.shape.disks, vec!["root=/a&b (virtio, qcow2)"]);
    assert_eq!(meta.shape.nics, vec!["eth0=m@network:n (virtio)"]);

    // Default namespace instead of a prefix.
    let xml = format!(
        r#"<domain><metadata><vm xmlns="{METADATA_NS}" namespace="ns" name="n" uid="u" definitionHash="h"/></metadata></domain>"#
    );
    assert_eq!(parse_metadata(&xml).map(|m| m.owner.uid), Some("u".into()));
}

#[test]
fn metadata_absent_or_broken_is_none() {
    let cases = [
        String::new(),
        "garbage".into(),
        "<domain".into(),
        "<domain><metadata></metadata></domain>".into(),
        "<domain><name>x</name></domain>".into(),
        // Right element, wrong place.
        format!(r#"<domain><vm xmlns="{METADATA_NS}" namespace="a" name="b" uid="c" definitionHash="d"/></domain>"#),
        format!(r#"<vm xmlns="{METADATA_NS}" namespace="a" name="b" uid="c" definitionHash="d"/>"#),
        // Owner or hash missing.
        format!(r#"<domain><metadata><vm xmlns="{METADATA_NS}" name="b" uid="c" definitionHash="d"/></metadata></domain>"#),
        format!(r#"<domain><metadata><vm xmlns="{METADATA_NS}" namespace="a" name="b" uid="c"/></metadata></domain>"#),
        // Unprefixed element in no namespace.
        r#"<domain><metadata><vm namespace="a" name="b" uid="c" definitionHash="d"/></metadata></domain>"#.into(),
        // Broken inside.
        format!(r#"<domain><metadata><vm xmlns="{METADATA_NS}" namespace="a" name="b" uid="c" definitionHash="d"><vcpus>x</vcpus></vm></metadata></domain>"#),
        format!(r#"<domain><metadata><vm xmlns="{METADATA_NS}" namespace="a" name="b" uid="c" definitionHash="d"><disk>&bogus;</disk></vm></metadata></domain>"#),
        format!(r#"<domain><metadata><vm xmlns="{METADATA_NS}" namespace="a&bogus;" name="b" uid="c" definitionHash="d"/></metadata></domain>"#),
        format!(r#"<domain><metadata><vm xmlns="{METADATA_NS}" namespace="a" name="b" uid="c" definitionHash="d"><disk>x"#),
        format!(r#"<domain><metadata><vm xmlns="{METADATA_NS}" namespace="a" name="b" uid="c" definitionHash="d"><disk>x</vm></metadata></domain>"#),
    ];
    for xml in &cases {
        assert_eq!(parse_metadata(xml), None, "{xml}");
    }
    // Every prefix of a real document: never a panic, and never a half-read element: `None`
    // until ferry's element is complete, then all of it.
    let def = hostile(NASTY);
    let xml = to_xml(&def).unwrap();
    let full = parse_metadata(&xml).expect("metadata");
    let complete_at = xml.find("</ferry:vm>").expect("end tag") + "</ferry:vm>".len();
    for (i, _) in xml.char_indices() {
        match parse_metadata(&xml[..i]) {
            None => assert!(i < complete_at, "prefix of {i} bytes not read"),
            Some(m) => {
                assert!(i >= complete_at, "prefix of {i} bytes read as {m:?}");
                assert_eq!(m, full);
            }
        }
    }
}

/// [`hostile`] where libvirt itself restricts values (formats, MACs, models, CPU models have
/// fixed vocabularies) and keeps free text everywhere else.
fn hostile_for_libvirt(v: &str) -> DomainDefinition {
    let mut d = hostile(v);
    // Domain names: no '/' and no control characters (libvirt refuses them).
    d.name = format!("vm {}", v.replace('/', "|").replace(char::is_control, " "));
    d.uuid = "7d3b5e0a-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into();
    d.cpu_model = CpuModel::HostModel;
    d.disks[0].format = "qcow2".into();
    d.nics[0].mac = "52:54:00:00:00:02".into();
    d.nics[0].model = "virtio".into();
    d
}

/// Writes the XML of the test definitions to `$FERRY_FIXTURE_OUT` so they can be defined on a
/// real libvirtd to refresh `tests/golden/libvirt/` (see the README there).
#[test]
#[ignore]
fn write_fixture_inputs() {
    let Some(dir) = std::env::var_os("FERRY_FIXTURE_OUT") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, def) in [
        ("kernel_boot_console", kernel_boot()),
        ("hostile", hostile_for_libvirt(NASTY)),
    ] {
        std::fs::write(dir.join(format!("{name}.xml")), to_xml(&def).unwrap()).unwrap();
    }
}
