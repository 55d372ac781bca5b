//! Writing a definition as libvirt domain XML.

use super::{GUEST_AGENT_CHANNEL, METADATA_NS, METADATA_PREFIX};
use crate::hypervisor::xml::{IoResult, W, empty_elem, end, start, text_elem};
use crate::plan::domain::{
    Bus, CpuModel, DomainDefinition, FerryMetadata, Graphics, NicSource, definition_hash,
    disk_targets, shape,
};

pub(super) fn write_domain(w: &mut W, def: &DomainDefinition) -> IoResult {
    start(w, "domain", &[("type", def.virt_type.as_str())])?;
    text_elem(w, "name", &[], &def.name)?;
    text_elem(w, "uuid", &[], &def.uuid)?;
    start(w, "metadata", &[])?;
    write_metadata(w, def)?;
    end(w, "metadata")?;
    let mem = def.memory_kib.to_string();
    text_elem(w, "memory", &[("unit", "KiB")], &mem)?;
    text_elem(w, "currentMemory", &[("unit", "KiB")], &mem)?;
    text_elem(
        w,
        "vcpu",
        &[("placement", "static")],
        &def.vcpus.to_string(),
    )?;

    start(w, "os", &[])?;
    text_elem(w, "type", &[("arch", "x86_64"), ("machine", "pc")], "hvm")?;
    match &def.boot {
        Some(boot) => {
            text_elem(w, "kernel", &[], &boot.kernel)?;
            if let Some(initrd) = &boot.initrd {
                text_elem(w, "initrd", &[], initrd)?;
            }
            if let Some(cmdline) = &boot.cmdline {
                text_elem(w, "cmdline", &[], cmdline)?;
            }
        }
        None => empty_elem(w, "boot", &[("dev", "hd")])?,
    }
    end(w, "os")?;

    start(w, "features", &[])?;
    empty_elem(w, "acpi", &[])?;
    empty_elem(w, "apic", &[])?;
    end(w, "features")?;

    match &def.cpu_model {
        CpuModel::HostModel => empty_elem(w, "cpu", &[("mode", "host-model")])?,
        CpuModel::HostPassthrough => empty_elem(w, "cpu", &[("mode", "host-passthrough")])?,
        CpuModel::Named(model) => {
            start(
                w,
                "cpu",
                &[("mode", "custom"), ("match", "exact"), ("check", "partial")],
            )?;
            text_elem(w, "model", &[("fallback", "forbid")], model)?;
            end(w, "cpu")?;
        }
    }

    start(w, "clock", &[("offset", "utc")])?;
    empty_elem(w, "timer", &[("name", "rtc"), ("tickpolicy", "catchup")])?;
    empty_elem(w, "timer", &[("name", "pit"), ("tickpolicy", "delay")])?;
    empty_elem(w, "timer", &[("name", "hpet"), ("present", "no")])?;
    end(w, "clock")?;
    text_elem(w, "on_poweroff", &[], "destroy")?;
    text_elem(w, "on_reboot", &[], "restart")?;
    text_elem(w, "on_crash", &[], "destroy")?;

    start(w, "devices", &[])?;
    write_devices(w, def)?;
    end(w, "devices")?;
    end(w, "domain")
}

fn write_devices(w: &mut W, def: &DomainDefinition) -> IoResult {
    let targets = disk_targets(&def.disks);
    for (disk, target) in def.disks.iter().zip(&targets) {
        // libvirt refuses read-only SATA *disks*; a read-only SATA or SCSI device is a CD-ROM
        // (the usual way to hand a guest an ISO, such as a cloud-init seed).
        let device = if disk.read_only && matches!(disk.bus, Bus::Sata | Bus::Scsi) {
            "cdrom"
        } else {
            "disk"
        };
        start(w, "disk", &[("type", "file"), ("device", device)])?;
        // cache='none' (O_DIRECT) is what live migration needs; io='native' goes with it.
        empty_elem(
            w,
            "driver",
            &[
                ("name", "qemu"),
                ("type", &disk.format),
                ("cache", "none"),
                ("io", "native"),
            ],
        )?;
        empty_elem(w, "source", &[("file", &disk.path)])?;
        empty_elem(w, "target", &[("dev", target), ("bus", disk.bus.as_str())])?;
        if disk.read_only {
            empty_elem(w, "readonly", &[])?;
        }
        empty_elem(w, "alias", &[("name", &format!("ua-{}", disk.name))])?;
        end(w, "disk")?;
    }
    if def.disks.iter().any(|d| d.bus == Bus::Scsi) {
        empty_elem(
            w,
            "controller",
            &[("type", "scsi"), ("index", "0"), ("model", "virtio-scsi")],
        )?;
    }
    for nic in &def.nics {
        let (kind, key, source) = match &nic.source {
            NicSource::Network(n) => ("network", "network", n),
            NicSource::Bridge(b) => ("bridge", "bridge", b),
        };
        start(w, "interface", &[("type", kind)])?;
        empty_elem(w, "mac", &[("address", &nic.mac)])?;
        empty_elem(w, "source", &[(key, source)])?;
        empty_elem(w, "model", &[("type", &nic.model)])?;
        empty_elem(w, "alias", &[("name", &format!("ua-{}", nic.name))])?;
        end(w, "interface")?;
    }
    if def.serial_console {
        start(w, "serial", &[("type", "pty")])?;
        if let Some(log) = &def.console_log {
            empty_elem(w, "log", &[("file", log), ("append", "on")])?;
        }
        empty_elem(w, "target", &[("port", "0")])?;
        end(w, "serial")?;
        start(w, "console", &[("type", "pty")])?;
        empty_elem(w, "target", &[("type", "serial"), ("port", "0")])?;
        end(w, "console")?;
    }
    start(w, "channel", &[("type", "unix")])?;
    empty_elem(
        w,
        "target",
        &[("type", "virtio"), ("name", GUEST_AGENT_CHANNEL)],
    )?;
    end(w, "channel")?;
    match def.graphics {
        Some(Graphics::Vnc) => {
            // No listener at all: no TCP port, no socket path; only libvirt's
            // virDomainOpenGraphicsFD reaches the display, so no password is needed.
            start(w, "graphics", &[("type", "vnc")])?;
            empty_elem(w, "listen", &[("type", "none")])?;
            end(w, "graphics")?;
            start(w, "video", &[])?;
            empty_elem(
                w,
                "model",
                &[("type", "vga"), ("heads", "1"), ("primary", "yes")],
            )?;
            end(w, "video")?;
        }
        None => {}
    }
    empty_elem(w, "memballoon", &[("model", "virtio")])?;
    start(w, "rng", &[("model", "virtio")])?;
    text_elem(w, "backend", &[("model", "random")], "/dev/urandom")?;
    end(w, "rng")
}

fn write_metadata(w: &mut W, def: &DomainDefinition) -> IoResult {
    let meta = FerryMetadata {
        owner: def.owner.clone(),
        definition_hash: definition_hash(def),
        shape: shape(def),
    };
    write_metadata_element(w, &meta, true)
}

/// ferry's metadata element. With `prefixed`, in ferry's namespace under its usual prefix (inside
/// a domain definition); without, unprefixed and without a namespace declaration: the fragment
/// `virDomainSetMetadata` takes, which puts the element and its children into the namespace it
/// is given.
pub(super) fn write_metadata_element(w: &mut W, meta: &FerryMetadata, prefixed: bool) -> IoResult {
    let shape = &meta.shape;
    let p = |local: &str| {
        if prefixed {
            format!("{METADATA_PREFIX}:{local}")
        } else {
            local.to_string()
        }
    };
    let xmlns = format!("xmlns:{METADATA_PREFIX}");
    let mut attrs: Vec<(&str, &str)> = Vec::new();
    if prefixed {
        attrs.push((&xmlns, METADATA_NS));
    }
    attrs.extend([
        ("namespace", meta.owner.namespace.as_str()),
        ("name", meta.owner.name.as_str()),
        ("uid", meta.owner.uid.as_str()),
        ("definitionHash", meta.definition_hash.as_str()),
    ]);
    start(w, &p("vm"), &attrs)?;
    text_elem(w, &p("vcpus"), &[], &shape.vcpus.to_string())?;
    text_elem(w, &p("cpu"), &[], &shape.cpu)?;
    text_elem(
        w,
        &p("memory"),
        &[("unit", "KiB")],
        &shape.memory_kib.to_string(),
    )?;
    for d in &shape.disks {
        text_elem(w, &p("disk"), &[], d)?;
    }
    for n in &shape.nics {
        text_elem(w, &p("nic"), &[], n)?;
    }
    if !shape.boot.is_empty() {
        text_elem(w, &p("boot"), &[], &shape.boot)?;
    }
    // Always written, empty when there is none: metadata without it is from before consoles
    // were optional (a serial console, no display).
    text_elem(w, &p("consoles"), &[], &shape.consoles.join(" "))?;
    end(w, &p("vm"))
}
