use super::*;
use crate::plan::domain::{DescribedDisk, DescribedNic, ShutOffReason};

const DIR: &str = "/srv/pool";

fn boot_dirs() -> Vec<String> {
    vec!["/srv/boot".to_string()]
}

/// The lab's kind of domain: direct kernel boot, one qcow2 disk in the pool, one bridged NIC.
fn legacy() -> DomainDescription {
    DomainDescription {
        name: "legacy".into(),
        uuid: "70295d7a-b851-46e1-bfa3-4e82b34cff8b".into(),
        virt_type: "qemu".into(),
        arch: "x86_64".into(),
        machine: "pc-i440fx-7.2".into(),
        boot_devices: vec!["hd".into()],
        kernel: Some("/srv/boot/vmlinuz".into()),
        initrd: Some("/srv/boot/initrd.img".into()),
        cmdline: Some("console=ttyS0".into()),
        vcpus: 1,
        memory_kib: 131072,
        current_memory_kib: 131072,
        clock_offset: Some("utc".into()),
        disks: vec![DescribedDisk {
            target: "vda".into(),
            device: "disk".into(),
            kind: "file".into(),
            source: Some("/srv/pool/legacy.qcow2".into()),
            format: Some("qcow2".into()),
            bus: "virtio".into(),
            backing: Backing::Known(None),
            ..DescribedDisk::default()
        }],
        nics: vec![DescribedNic {
            kind: "bridge".into(),
            source: Some("gbr0".into()),
            mac: Some("52:54:00:aa:bb:01".into()),
            model: Some("virtio".into()),
        }],
        serials: vec!["serial pty".into(), "console pty".into()],
        ..DomainDescription::default()
    }
}

fn described(d: DomainDescription) -> DescribedDomain {
    DescribedDomain {
        persistent: Some(d.clone()),
        current: d,
    }
}

const RUNNING: DomainState = DomainState::Running;

fn pool<'a>(boot_dirs: &'a [String], golden_images: &'a [String]) -> PoolView<'a> {
    PoolView {
        storage_dir: Some(DIR),
        golden_images,
        boot_dirs,
    }
}

fn assess_one(d: DomainDescription) -> Assessment {
    let dirs = boot_dirs();
    assess(&described(d), RUNNING, &pool(&dirs, &[]))
}

#[test]
fn a_plain_domain_is_adoptable_as_it_runs() {
    let a = assess_one(legacy());
    assert!(a.blockers.is_empty(), "{:?}", a.blockers);
    let h = a.hardware.expect("hardware");
    assert_eq!(h.vcpus, 1);
    assert_eq!(h.memory_kib, 131072);
    assert_eq!(
        h.disks,
        [AdoptedDisk {
            name: "vda".into(),
            volume: "legacy.qcow2".into(),
            path: "/srv/pool/legacy.qcow2".into(),
            format: ImageFormat::Qcow2,
            bus: Bus::Virtio,
        }]
    );
    assert_eq!(h.nics[0].name, "net0");
    assert_eq!(h.nics[0].source, NicSource::Bridge("gbr0".into()));
    assert_eq!(
        h.boot.as_ref().map(|b| b.kernel.as_str()),
        Some("/srv/boot/vmlinuz")
    );
}

/// Each row: what is changed in the lab's domain, and a word the blocker (or note) must contain.
#[test]
fn what_ferry_cannot_express_blocks_and_says_what() {
    type Edit = fn(&mut DomainDescription);
    let blockers: Vec<(&str, Edit, &str)> = vec![
        (
            "PCI passthrough",
            |d| d.passthrough.push("hostdev pci".into()),
            "hostdev pci",
        ),
        (
            "disk outside the pool",
            |d| d.disks[0].source = Some("/var/lib/libvirt/images/x.qcow2".into()),
            "outside the HostPool's storage pool",
        ),
        (
            "disk in a subdirectory of the pool",
            |d| d.disks[0].source = Some("/srv/pool/sub/x.qcow2".into()),
            "outside",
        ),
        (
            "pool directory as a prefix only",
            |d| d.disks[0].source = Some("/srv/pool2/x.qcow2".into()),
            "outside",
        ),
        (
            "backing file",
            |d| d.disks[0].backing = Backing::Known(Some("/srv/pool/base.qcow2".into())),
            "backing file /srv/pool/base.qcow2",
        ),
        (
            "backing chain unknown",
            |d| d.disks[0].backing = Backing::Unknown,
            "cannot be read",
        ),
        (
            "block device",
            |d| d.disks[0].kind = "block".into(),
            "block disk",
        ),
        (
            "vmdk disk",
            |d| d.disks[0].format = Some("vmdk".into()),
            "format vmdk",
        ),
        ("ide bus", |d| d.disks[0].bus = "ide".into(), "bus ide"),
        (
            "read-only disk",
            |d| d.disks[0].read_only = true,
            "read-only",
        ),
        (
            "CD-ROM with a medium",
            |d| d.disks[0].device = "cdrom".into(),
            "cdrom with a medium",
        ),
        (
            "macvtap NIC",
            |d| d.nics[0].kind = "direct".into(),
            "direct interface",
        ),
        (
            "e1000e NIC",
            |d| d.nics[0].model = Some("e1000e".into()),
            "model e1000e",
        ),
        ("q35", |d| d.machine = "pc-q35-7.2".into(), "q35"),
        (
            "UEFI",
            |d| d.loader = Some("/usr/share/OVMF/OVMF_CODE.fd".into()),
            "UEFI",
        ),
        (
            "kernel outside boot.directories",
            |d| d.kernel = Some("/etc/vmlinuz".into()),
            "kernel /etc/vmlinuz is outside",
        ),
        (
            "network boot",
            |d| {
                d.kernel = None;
                d.boot_devices = vec!["network".into()]
            },
            "boots from network",
        ),
        (
            "vCPU hot-plug",
            |d| {
                d.vcpus = 4;
                d.vcpus_current = Some(2)
            },
            "hot-plug",
        ),
        (
            "local clock",
            |d| d.clock_offset = Some("localtime".into()),
            "clock offset localtime",
        ),
        ("too little memory", |d| d.memory_kib = 8 * 1024, "memory"),
        ("aarch64", |d| d.arch = "aarch64".into(), "architecture"),
        (
            "a volume named like a VM's own disk",
            |d| d.disks[0].source = Some("/srv/pool/ns_vm_root_1a2b3c4d.qcow2".into()),
            "a VM's own disk",
        ),
        (
            "a golden image",
            |d| d.disks[0].source = Some("/srv/pool/debian.qcow2".into()),
            "golden image",
        ),
        (
            "multicast MAC",
            |d| d.nics[0].mac = Some("01:00:5e:00:00:01".into()),
            "not a unicast address",
        ),
        (
            "a disk path that is not normalized",
            |d| d.disks[0].source = Some("/srv/pool/../etc/shadow".into()),
            "outside",
        ),
    ];
    let dirs = boot_dirs();
    let golden = vec!["debian.qcow2".to_string()];
    for (name, edit, needle) in blockers {
        let mut d = legacy();
        edit(&mut d);
        let a = assess(&described(d), RUNNING, &pool(&dirs, &golden));
        assert!(a.hardware.is_none(), "{name}: no hardware when blocked");
        assert!(
            a.blockers.iter().any(|b| b.contains(needle)),
            "{name}: {:?} should mention {needle:?}",
            a.blockers
        );
    }
    let notes: Vec<(&str, Edit, &str)> = vec![
        (
            "VNC graphics",
            |d| d.graphics.push("vnc".into()),
            "vnc graphics",
        ),
        (
            "SPICE graphics",
            |d| d.graphics.push("spice".into()),
            "VNC display instead",
        ),
        (
            "empty CD-ROM",
            |d| {
                d.disks.push(DescribedDisk {
                    target: "hdc".into(),
                    device: "cdrom".into(),
                    ..DescribedDisk::default()
                })
            },
            "empty cdrom drive hdc",
        ),
        (
            "sound card",
            |d| d.other_devices.push("sound ich6".into()),
            "sound ich6",
        ),
        (
            "no CPU element",
            |d| {
                d.cpu_mode = None;
                d.cpu_model = None
            },
            "host-model",
        ),
        ("balloon", |d| d.current_memory_kib = 65536, "balloon"),
    ];
    for (name, edit, needle) in notes {
        let mut d = legacy();
        edit(&mut d);
        let a = assess_one(d);
        assert!(a.hardware.is_some(), "{name}: adoptable, {:?}", a.blockers);
        assert!(
            a.notes.iter().any(|n| n.contains(needle)),
            "{name}: {:?} should mention {needle:?}",
            a.notes
        );
    }
}

#[test]
fn transient_or_diverging_definitions_block() {
    let dirs = boot_dirs();
    let pool = pool(&dirs, &[]);
    let transient = DescribedDomain {
        current: legacy(),
        persistent: None,
    };
    assert!(assess(&transient, RUNNING, &pool).blockers[0].contains("transient"));
    let mut later = legacy();
    later.vcpus = 2;
    // The persistent definition's XML never says whether a disk has a backing file.
    later.disks[0].backing = Backing::Unknown;
    let diverging = DescribedDomain {
        current: legacy(),
        persistent: Some(later),
    };
    assert!(
        assess(&diverging, RUNNING, &pool).blockers[0].contains("persistent definition differs")
    );
    let mut same = legacy();
    same.disks[0].backing = Backing::Unknown;
    let agreeing = DescribedDomain {
        current: legacy(),
        persistent: Some(same),
    };
    assert!(assess(&agreeing, RUNNING, &pool).blockers.is_empty());
}

#[test]
fn only_running_or_shut_off_domains_are_adopted() {
    let dirs = boot_dirs();
    let cases = [
        (DomainState::Running, true),
        (DomainState::ShutOff(ShutOffReason::Shutdown), true),
        (DomainState::Paused, false),
        (DomainState::Crashed, false),
        (DomainState::ShuttingDown, false),
        (DomainState::PmSuspended, false),
    ];
    for (state, adoptable) in cases {
        let a = assess(&described(legacy()), state, &pool(&dirs, &[]));
        assert_eq!(
            a.hardware.is_some(),
            adoptable,
            "{state:?}: {:?}",
            a.blockers
        );
    }
}

#[test]
fn the_spec_describes_the_domain_and_starts_nothing_new() {
    let dirs = boot_dirs();
    let mut d = legacy();
    d.cpu_mode = Some("custom".into());
    d.cpu_model = Some("Skylake-Server".into());
    d.nics[0].model = Some("e1000".into());
    let hw = assess(&described(d), RUNNING, &pool(&dirs, &[]))
        .hardware
        .expect("adoptable");
    let spec = spec_for(&hw, RUNNING, "rack1");
    assert_eq!(spec.run_strategy, Some(RunStrategy::Always));
    assert_eq!(spec.host_pool, "rack1");
    let cpu = spec.cpu.as_ref().expect("cpu");
    assert_eq!(
        (cpu.cores, cpu.model.as_deref()),
        (1, Some("Skylake-Server"))
    );
    assert_eq!(spec.memory.as_deref(), Some("128Mi"));
    assert_eq!(spec.disks[0].name, "vda");
    assert_eq!(spec.disks[0].volume.as_deref(), Some("legacy.qcow2"));
    assert_eq!(spec.disks[0].format, Some(ImageFormat::Qcow2));
    assert_eq!(spec.disks[0].bus, None, "virtio is the default");
    assert_eq!(spec.networks[0].bridge.as_deref(), Some("gbr0"));
    assert_eq!(spec.networks[0].model, Some(NicModel::E1000));
    assert_eq!(spec.networks[0].mac.as_deref(), Some("52:54:00:aa:bb:01"));
    assert_eq!(
        spec.boot.as_ref().map(|b| b.kernel.as_str()),
        Some("/srv/boot/vmlinuz")
    );
    assert_eq!(
        spec.consoles,
        Some(ConsolesSpec {
            serial: None,
            vnc: Some(false)
        }),
        "a serial console and no display, as the domain has"
    );
    let off = spec_for(&hw, DomainState::ShutOff(ShutOffReason::Shutdown), "rack1");
    assert_eq!(
        off.run_strategy,
        Some(RunStrategy::Halted),
        "describing a shut-off domain starts nothing"
    );
    // The spec passes ferry's own validation as it is.
    let res = crate::plan::class::resolve(&spec, None).expect("cpu and memory");
    crate::plan::validate::validate(&spec, &res).expect("a valid spec");
}

#[test]
fn domain_names_become_vm_names() {
    let cases = [
        ("legacy", "legacy"),
        ("Legacy_Web.1", "legacy-web-1"),
        ("__", "adopted"),
        ("-x-", "x"),
    ];
    for (domain, want) in cases {
        assert_eq!(vm_name(domain), want, "{domain}");
    }
    assert_eq!(vm_name(&"a".repeat(100)).len(), 63);
}

#[test]
fn the_allow_list_names_domains_and_prefixes() {
    let p = vec!["legacy".to_string(), "web-*".to_string()];
    let cases = [
        ("exact name", "legacy", true),
        ("a longer name is not the exact one", "legacy2", false),
        ("prefix", "web-1", true),
        ("the prefix itself", "web-", true),
        ("another name", "db", false),
    ];
    for (name, domain, want) in cases {
        assert_eq!(allowed(&p, domain), want, "{name}");
    }
    assert!(!allowed(&[], "legacy"), "nothing by default");
}

#[test]
fn a_candidate_says_what_ferry_makes_of_the_domain() {
    let dirs = boot_dirs();
    let c = candidate(&described(legacy()), RUNNING, &pool(&dirs, &[]), "lab");
    assert_eq!(
        (c.name.as_str(), c.state.as_str(), c.adoptable),
        ("legacy", "Running", true)
    );
    assert_eq!((c.cpus, c.memory.as_str()), (1, "128Mi"));
    assert_eq!(c.volumes, ["legacy.qcow2"]);
    assert!(c.blockers.is_empty());
    let spec: VirtualMachineSpec =
        serde_json::from_value(c.spec.clone().expect("a spec")).expect("a VM spec");
    assert_eq!(spec.host_pool, "lab");
    assert_eq!(spec.disks[0].volume.as_deref(), Some("legacy.qcow2"));

    let mut bad = legacy();
    bad.passthrough.push("hostdev usb".into());
    let c = candidate(
        &described(bad),
        DomainState::ShutOff(ShutOffReason::Shutdown),
        &pool(&dirs, &[]),
        "lab",
    );
    assert_eq!((c.state.as_str(), c.adoptable), ("ShutOff", false));
    assert!(c.volumes.is_empty());
    assert_eq!(c.spec, None);
    assert_eq!(
        c.blockers,
        ["hostdev usb: host hardware or files passed through to the guest"]
    );
}

#[test]
fn release_needs_the_pool_to_name_the_domain() {
    let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "web", "namespace": "apps"},
        "spec": {"hostPool": "lab", "cpu": {"cores": 1}, "memory": "256Mi"}
    }))
    .expect("vm");
    let pool = |domains: &[&str]| -> HostPool {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool",
            "metadata": {"name": "lab", "namespace": "apps"},
            "spec": {"nodeSelector": {}, "libvirt": {"uriTemplate": "qemu+tcp://{address}/system"},
                     "storage": {"pool": "images"}, "adoption": {"domains": domains}}
        }))
        .expect("pool")
    };
    let cases: [(&str, Option<HostPool>, Option<&str>); 4] = [
        ("named by prefix", Some(pool(&["apps_*"])), None),
        ("named exactly", Some(pool(&["apps_web"])), None),
        (
            "not named",
            Some(pool(&["legacy"])),
            Some("HostPool lab does not name domain apps_web in spec.adoption.domains"),
        ),
        ("pool gone", None, Some("HostPool lab is gone")),
    ];
    for (name, pool, want) in cases {
        let got = release_refusal(&vm, pool.as_ref());
        match want {
            None => assert_eq!(got, None, "{name}"),
            Some(needle) => {
                let got = got.unwrap_or_default();
                assert!(got.contains(needle), "{name}: {got}");
                assert!(
                    got.contains("remove the annotation ferry.dev/release"),
                    "{name}"
                );
            }
        }
    }
}

fn info(meta_uid: Option<&str>) -> DomainInfo {
    let meta = meta_uid.map(|uid| crate::plan::domain::FerryMetadata {
        owner: crate::plan::domain::Owner {
            namespace: "other".into(),
            name: "vm".into(),
            uid: uid.into(),
        },
        definition_hash: String::new(),
        shape: Default::default(),
    });
    DomainInfo {
        name: "legacy".into(),
        uuid: "70295d7a-b851-46e1-bfa3-4e82b34cff8b".into(),
        state: RUNNING,
        persistent: true,
        vcpus: 1,
        memory_kib: 131072,
        live: meta.clone(),
        config: meta,
    }
}

#[test]
fn a_claim_needs_the_pool_an_unowned_domain_and_a_matching_spec() {
    let dirs = boot_dirs();
    let view = pool(&dirs, &[]);
    let d = described(legacy());
    let hw = assess(&d, RUNNING, &view).hardware.expect("adoptable");
    let spec = spec_for(&hw, RUNNING, "rack1");
    let named = vec!["legacy".to_string()];
    let uuid = "70295d7a-b851-46e1-bfa3-4e82b34cff8b";
    let go = |patterns: &[String], info: Option<&DomainInfo>, spec: &VirtualMachineSpec| {
        claim(
            patterns,
            "legacy",
            uuid,
            "vm-uid",
            info,
            Some((&d, RUNNING)),
            &view,
            spec,
        )
    };
    assert_eq!(go(&named, Some(&info(None)), &spec), Ok(hw.clone()));
    assert_eq!(
        go(&named, Some(&info(Some("vm-uid"))), &spec),
        Ok(hw.clone()),
        "ours already: repeating the claim is harmless"
    );
    let reasons = |r: Result<Hardware, Vec<String>>| r.expect_err("blocked").join("\n");
    assert!(reasons(go(&[], Some(&info(None)), &spec)).contains("does not name domain"));
    assert!(
        reasons(go(&named, Some(&info(Some("x"))), &spec)).contains("belongs to VirtualMachine")
    );
    assert!(reasons(go(&named, None, &spec)).contains("no domain with UUID"));
    let mut renamed = info(None);
    renamed.name = "other".into();
    assert!(reasons(go(&named, Some(&renamed), &spec)).contains("is called \"other\""));

    let mut bigger = spec.clone();
    bigger.cpu = Some(CpuSpec {
        cores: 2,
        model: None,
    });
    bigger.memory = Some("131072Ki".into());
    let why = reasons(go(&named, Some(&info(None)), &bigger));
    assert!(why.contains("spec.cpu"), "{why}");
    assert!(
        !why.contains("spec.memory"),
        "128Mi written another way: {why}"
    );
    let mut defaults = spec.clone();
    defaults.consoles = None;
    assert!(
        reasons(go(&named, Some(&info(None)), &defaults)).contains("spec.consoles"),
        "the domain has no display: the spec must say vnc: false"
    );
}
