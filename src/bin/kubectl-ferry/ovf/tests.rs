//! Descriptors as VMware (ovftool) and VirtualBox write them, mapped to VirtualMachines.

use super::*;
use pretty_assertions::assert_eq;
use serde_json::json;

/// An OVF descriptor of the kind ovftool exports: two disks on SCSI and IDE, a VMXNET3 and an
/// E1000 adapter, a CD drive, USB, a video card, EFI firmware and vApp properties.
const VMWARE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-1" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>
    <File ovf:href="Web Appliance-disk1.vmdk" ovf:id="file1" ovf:size="68096"/>
    <File ovf:href="Web Appliance-disk2.vmdk" ovf:id="file2" ovf:size="1024"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:capacity="4" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk2" ovf:fileRef="file2" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk3"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
    <Network ovf:name="Storage &amp; Backup"><Description>storage</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="Web Appliance">
    <Info>A virtual machine</Info>
    <Name>Web Appliance</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian10_64Guest"><Info>OS</Info></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System><vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType></System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>2 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>1536MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1536</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:ElementName>IDE 1</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:ElementName>USB controller</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>vmware.usb.ehci</rasd:ResourceSubType>
        <rasd:ResourceType>23</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 2</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk2</rasd:HostResource>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:Parent>4</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:ElementName>Hard disk 3</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk3</rasd:HostResource>
        <rasd:InstanceID>8</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:ElementName>CD/DVD drive 1</rasd:ElementName>
        <rasd:InstanceID>9</rasd:InstanceID>
        <rasd:Parent>4</rasd:Parent>
        <rasd:ResourceSubType>vmware.cdrom.remotepassthrough</rasd:ResourceSubType>
        <rasd:ResourceType>15</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>00:50:56:aa:bb:cc</rasd:Address>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>10</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Connection>Storage &amp; Backup</rasd:Connection>
        <rasd:ElementName>Network adapter 2</rasd:ElementName>
        <rasd:InstanceID>11</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:ElementName>Video card</rasd:ElementName>
        <rasd:InstanceID>12</rasd:InstanceID>
        <rasd:ResourceType>24</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
    <ProductSection>
      <Info>Information about the installed software</Info>
      <Product>Web</Product>
      <Property ovf:key="admin.password" ovf:type="string"/>
    </ProductSection>
  </VirtualSystem>
</Envelope>
"#;

fn opts(networks: &[(&str, Target)]) -> Options {
    Options {
        name: None,
        namespace: Some("vms".into()),
        host_pool: "rack1".into(),
        url: "http://images.example/web.ova".into(),
        sha256: "ab".repeat(32),
        networks: networks
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        disk_bus: None,
    }
}

fn mapped_vmware() -> Mapped {
    map(
        VMWARE,
        &opts(&[
            ("VM Network", Target::Network("default".into())),
            ("Storage & Backup", Target::Bridge("br-storage".into())),
        ]),
    )
    .expect("maps")
}

#[test]
fn a_vmware_appliance_becomes_a_virtual_machine() {
    let m = mapped_vmware();
    let http = |member: &str| {
        json!({"url": "http://images.example/web.ova", "sha256": "ab".repeat(32),
               "format": "vmdk", "archiveMember": member})
    };
    assert_eq!(
        serde_json::to_value(&m.vm).expect("serializes"),
        json!({
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "VirtualMachine",
            "metadata": {"name": "web-appliance", "namespace": "vms"},
            "spec": {
                "hostPool": "rack1",
                "cpu": {"cores": 2},
                "memory": "1536Mi",
                "disks": [
                    {"name": "disk0", "http": http("Web Appliance-disk1.vmdk"), "bus": "scsi"},
                    {"name": "disk1", "http": http("Web Appliance-disk2.vmdk"), "bus": "sata"},
                ],
                "networks": [
                    {"name": "eth0", "network": "default"},
                    {"name": "eth1", "bridge": "br-storage", "model": "e1000"},
                ],
            }
        })
    );
}

#[test]
fn what_is_not_carried_over_is_said() {
    let m = mapped_vmware();
    let all = m.not_carried.join("\n");
    for what in [
        "USB controller \"USB controller\"",
        "CD/DVD drive \"CD/DVD drive 1\"",
        "video card",
        "disk \"Hard disk 3\": a blank disk",
        "EFI firmware",
        "vApp properties",
    ] {
        assert!(all.contains(what), "{what} missing from:\n{all}");
    }
    let notes = m.notes.join("\n");
    for what in [
        "was on a SCSI controller (VirtualSCSI): it is attached as virtio-scsi",
        "was on an IDE controller: it is attached as SATA",
        "was a VmxNet3 adapter: it is a virtio adapter now",
        "MAC address 00:50:56:aa:bb:cc is not carried over",
        "the first (disk0, \"Web Appliance-disk1.vmdk\") boots",
    ] {
        assert!(notes.contains(what), "{what} missing from:\n{notes}");
    }
    let text = render(&m, "web.ova").expect("renders");
    assert!(text.starts_with("# VirtualMachine for the appliance web.ova"));
    assert!(text.contains("virt-v2v is not used"));
    assert!(text.contains("# Not carried over:\n#   - "));
    // The comments stay comments: the rest is the manifest.
    let back: VirtualMachine = serde_yaml::from_str(&text).expect("the YAML parses");
    assert_eq!(back.spec, m.vm.spec);
}

#[test]
fn every_network_must_be_mapped_and_every_mapping_used() {
    let e = map(
        VMWARE,
        &opts(&[("VM Network", Target::Network("default".into()))]),
    )
    .expect_err("one unmapped");
    assert!(
        e.contains("OVF network \"Storage & Backup\", which no --network maps"),
        "{e}"
    );
    let e = map(
        VMWARE,
        &opts(&[
            ("VM Network", Target::Network("default".into())),
            ("Storage & Backup", Target::Network("default".into())),
            ("VM Netwrok", Target::Network("default".into())),
        ]),
    )
    .expect_err("a typo");
    assert!(e.contains("--network maps \"VM Netwrok\""), "{e}");
    assert!(e.contains("\"VM Network\", \"Storage & Backup\""), "{e}");
    assert_eq!(
        network_mapping("VM Network=bridge:br0"),
        Ok(("VM Network".into(), Target::Bridge("br0".into())))
    );
    assert_eq!(
        network_mapping("a=b=default"),
        Ok(("a=b".into(), Target::Network("default".into())))
    );
    assert!(network_mapping("novalue").is_err());
    assert!(network_mapping("x=").is_err());
}

#[test]
fn options_override_the_name_and_the_bus() {
    let mut o = opts(&[
        ("VM Network", Target::Network("default".into())),
        ("Storage & Backup", Target::Network("default".into())),
    ]);
    o.name = Some("web-1".into());
    o.disk_bus = Some(DiskBus::Virtio);
    let m = map(VMWARE, &o).expect("maps");
    assert_eq!(m.vm.metadata.name.as_deref(), Some("web-1"));
    assert!(m.vm.spec.disks.iter().all(|d| d.bus.is_none()), "virtio");
    assert!(!m.notes.iter().any(|n| n.contains("controller")));
}

/// A VirtualBox export: OVF 1.0 with `StorageItem`-less items, memory in MegaBytes, a SATA
/// controller, one NAT adapter.
const VIRTUALBOX: &str = r#"<?xml version="1.0"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References><File ovf:id="file1" ovf:href="tiny-disk001.vmdk"/></References>
  <DiskSection>
    <Disk ovf:capacity="1073741824" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection><Network ovf:name="NAT"/></NetworkSection>
  <VirtualSystem ovf:id="tiny">
    <VirtualHardwareSection>
      <Item><rasd:Caption>1 virtual CPU</rasd:Caption><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2048</rasd:VirtualQuantity></Item>
      <Item><rasd:Caption>sataController0</rasd:Caption><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>AHCI</rasd:ResourceSubType><rasd:ResourceType>20</rasd:ResourceType></Item>
      <Item><rasd:Caption>Ethernet adapter on 'NAT'</rasd:Caption><rasd:Connection>NAT</rasd:Connection><rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceSubType>E1000</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:Caption>disk1</rasd:Caption><rasd:HostResource>/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>5</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Caption>sound</rasd:Caption><rasd:InstanceID>6</rasd:InstanceID><rasd:ResourceSubType>ensoniq1371</rasd:ResourceSubType><rasd:ResourceType>35</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>"#;

#[test]
fn a_virtualbox_appliance_becomes_a_virtual_machine() {
    let m = map(
        VIRTUALBOX,
        &opts(&[("NAT", Target::Network("default".into()))]),
    )
    .expect("maps");
    let spec = &m.vm.spec;
    assert_eq!(m.vm.metadata.name.as_deref(), Some("tiny"));
    assert_eq!(spec.cpu.as_ref().map(|c| c.cores), Some(1));
    assert_eq!(spec.memory.as_deref(), Some("2Gi"));
    assert_eq!(spec.disks.len(), 1);
    assert_eq!(spec.disks[0].bus, Some(DiskBus::Sata));
    assert_eq!(
        spec.disks[0]
            .http
            .as_ref()
            .and_then(|h| h.archive_member.as_deref()),
        Some("tiny-disk001.vmdk")
    );
    assert_eq!(spec.networks[0].model, Some(NicModel::E1000));
    assert_eq!(m.not_carried, ["sound card \"sound\""]);
}

#[test]
fn descriptors_ferry_cannot_map_are_refused_plainly() {
    let net = opts(&[("NAT", Target::Network("default".into()))]);
    for (ovf, why) in [
        ("<Envelope", "not well-formed XML"),
        ("<Other/>", "not an OVF <Envelope>"),
        (
            "<Envelope><VirtualSystemCollection/></Envelope>",
            "collection of virtual systems",
        ),
        ("<Envelope/>", "has no VirtualSystem"),
        (
            &VIRTUALBOX.replace("ovf:href=\"tiny", "ovf:compression=\"gzip\" ovf:href=\"tiny"),
            "is compressed (gzip)",
        ),
        (
            &VIRTUALBOX.replace("tiny-disk001.vmdk", "tiny-disk001.iso").replace(
                "ovf:format=\"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized\"",
                "",
            ),
            "is not one ferry imports",
        ),
        (
            &VIRTUALBOX.replace("<rasd:ResourceType>4</rasd:ResourceType>", "<rasd:ResourceType>99</rasd:ResourceType>"),
            "no memory item",
        ),
        (
            &VIRTUALBOX.replace("<rasd:ResourceType>17</rasd:ResourceType>", "<rasd:ResourceType>99</rasd:ResourceType>"),
            "no disk with a file",
        ),
    ] {
        let e = map(ovf, &net).expect_err(why);
        assert!(e.contains(why), "{why}: {e}");
    }
}

#[test]
fn units_quantities_and_names() {
    assert_eq!(unit_bytes("byte * 2^20"), Some(1 << 20));
    assert_eq!(unit_bytes("byte*2^30"), Some(1 << 30));
    assert_eq!(unit_bytes("MegaBytes"), Some(1 << 20));
    assert_eq!(unit_bytes("furlongs"), None);
    assert_eq!(quantity(2 << 30), "2Gi");
    assert_eq!(quantity(1536 << 20), "1536Mi");
    assert_eq!(quantity(1000), "1Ki");
    assert_eq!(dns_label("Web Appliance (v2.1)"), "web-appliance-v2-1");
    assert_eq!(dns_label("---"), "");
    assert_eq!(dns_label(&"a".repeat(80)).len(), 63);
}
