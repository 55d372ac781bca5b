//! Golden images imported over HTTP: checksum, failures, sharing and removal, and what an
//! import may reach.

use crate::support::cluster::{self, Cluster};
use crate::support::hosts::{console, domains, volumes};
use crate::support::http_server::PythonServer;
use crate::support::lab;
use crate::support::objects::{
    BOOT, LABEL, apply_placed, condition, pool_manifest, ready_reason, vm_manifest, wait_vm,
};
use ferry::api::{VirtualMachine, VmPhase};
use kube::Api;
use kube::api::DeleteParams;
use serde_json::json;
use std::time::Duration;

/// A static HTTP server on loopback (Python's http.server) for the files in a temporary
/// directory; killed on drop (before the directory is removed).
struct HttpServer {
    http: PythonServer,
    dir: tempfile::TempDir,
}

impl HttpServer {
    fn start() -> HttpServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let http = PythonServer::serving(dir.path());
        HttpServer { http, dir }
    }

    fn url(&self, file: &str) -> String {
        self.http.url(file)
    }
}

fn image_volumes(lab: &lab::Lab) -> Vec<String> {
    let mut v: Vec<String> = volumes(lab)
        .into_iter()
        .filter(|v| v.starts_with("ferry-image-"))
        .collect();
    v.sort();
    v
}

fn http_vm(
    name: &str,
    lab: &lab::Lab,
    url: &str,
    sha256: &str,
    strategy: &str,
) -> serde_json::Value {
    let mut m = vm_manifest(name, "lab", lab, strategy);
    m["spec"]["disks"] = json!([{"name": "root", "http": {"url": url, "sha256": sha256}}]);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn image_imported_over_http_boots_and_is_shared() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(1).expect("lab host");
    let mut c = Cluster::new("ferry-e2e-import").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let ctl = c.controller("e2e-import");
    let ns = c.namespace.clone();
    // The test's server listens on loopback, which imports reach only where a pool allows it.
    let mut pool = pool_manifest("lab", &lab);
    pool["spec"]["imports"] = json!({"allowedNetworks": ["127.0.0.1/32"]});
    c.apply::<ferry::api::HostPool>(pool).await;

    let server = HttpServer::start();
    let image =
        std::fs::read(std::path::Path::new(&lab.pool_dir).join(&lab.golden)).expect("golden");
    std::fs::write(server.dir.path().join("tiny.qcow2"), &image).expect("serve image");
    let sha = ferry::cloud_init::sha256_hex(&image);
    let url = server.url("tiny.qcow2");

    // Wrong checksum: a clear condition, nothing kept.
    let wrong = "0".repeat(64);
    c.apply::<VirtualMachine>(http_vm("wrongsum", &lab, &url, &wrong, "Always"))
        .await;
    let vm = wait_vm(
        &c,
        "wrongsum",
        "ChecksumMismatch",
        Duration::from_secs(120),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "ChecksumMismatch"),
    )
    .await;
    let msg = condition(&vm, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(msg.contains(&sha) && msg.contains("discarded"), "{msg}");
    assert!(
        image_volumes(&lab).is_empty(),
        "no volume left: {:?}",
        image_volumes(&lab)
    );
    // Unreachable URL: a clear condition too.
    c.apply::<VirtualMachine>(http_vm(
        "nowhere",
        &lab,
        "http://127.0.0.1:1/tiny.qcow2",
        &sha,
        "Always",
    ))
    .await;
    let vm = wait_vm(
        &c,
        "nowhere",
        "ImportFailed",
        Duration::from_secs(120),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "ImportFailed"),
    )
    .await;
    let msg = condition(&vm, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(msg.contains("127.0.0.1:1"), "{msg}");
    assert!(domains(&lab).is_empty(), "no domain: {:?}", domains(&lab));
    assert!(
        image_volumes(&lab).is_empty(),
        "no volume left: {:?}",
        image_volumes(&lab)
    );
    for name in ["wrongsum", "nowhere"] {
        c.vms()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
        c.wait_vm_gone(name, Duration::from_secs(60)).await;
    }

    // The right checksum: imported once, booted from an overlay on it.
    c.apply::<VirtualMachine>(http_vm("fromurl", &lab, &url, &sha, "Always"))
        .await;
    wait_vm(&c, "fromurl", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let log = console(&lab, &ns, "fromurl");
    lab::wait_for_console(&log, "FERRY-DISK FERRY-GOLDEN tiny v1", BOOT)
        .expect("the guest boots from the imported image");
    let imported = image_volumes(&lab);
    assert_eq!(
        imported,
        [
            format!("ferry-image-{sha}.img"),
            format!("ferry-image-{sha}.verified")
        ]
    );
    let stored =
        std::fs::read(std::path::Path::new(&lab.pool_dir).join(&imported[0])).expect("image");
    assert!(stored == image, "the stored image is the served file");

    // A second VM naming the same checksum shares it (defined, not booted, to spare the CPU).
    apply_placed(&c, http_vm("shared", &lab, &url, &sha, "Halted")).await;
    wait_vm(&c, "shared", "Stopped", Duration::from_secs(90), |vm| {
        vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Stopped)
    })
    .await;
    assert_eq!(image_volumes(&lab).len(), 2, "still one image");

    // Deleting one keeps the image for the other; deleting the last removes it.
    c.vms()
        .delete("fromurl", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_vm_gone("fromurl", Duration::from_secs(90)).await;
    assert_eq!(image_volumes(&lab).len(), 2, "kept while a VM uses it");
    c.vms()
        .delete("shared", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_vm_gone("shared", Duration::from_secs(90)).await;
    assert!(
        image_volumes(&lab).is_empty(),
        "removed after the last VM: {:?}",
        image_volumes(&lab)
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.client.clone(), &ns);
    let removed = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .any(|e| e.reason.as_deref() == Some("ImageRemoved"));
    assert!(removed, "an ImageRemoved Event");
    drop(server);
    drop(ctl);
}

/// A server on loopback that answers every request with a redirect to `target`; killed on drop.
fn redirector(target: &str) -> PythonServer {
    let script = [
        "import http.server, sys",
        "class H(http.server.BaseHTTPRequestHandler):",
        "    def do_GET(self):",
        "        self.send_response(302)",
        "        self.send_header('Location', sys.argv[2])",
        "        self.end_headers()",
        "    def log_message(self, *a):",
        "        pass",
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()",
    ]
    .join("\n");
    PythonServer::start(
        "redirecting server",
        std::path::Path::new("/"),
        &["-c", &script],
        &[target],
    )
}

/// Image imports reach only what the pool allows: loopback and link-local (a cloud's metadata
/// service) are refused by default, a redirect from an allowed address to a refused one is
/// refused, and a download larger than the pool's `imports.maxSize` is cut off; each waits with
/// `ImportRefused` naming why, and nothing is left in the storage pool. (On the main before
/// imports were checked, every one of these was fetched.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn imports_reach_only_what_the_pool_allows() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(1).expect("lab host");
    let mut c = Cluster::new("ferry-e2e-importpolicy").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let _ctl = c.controller("e2e-importpolicy");
    // "lab" allows nothing extra; "small" allows the test's servers on 127.0.0.1 and 1 MiB.
    c.apply::<ferry::api::HostPool>(pool_manifest("lab", &lab))
        .await;
    let mut small = pool_manifest("small", &lab);
    small["spec"]["imports"] = json!({"allowedNetworks": ["127.0.0.1/32"], "maxSize": "1Mi"});
    c.apply::<ferry::api::HostPool>(small).await;

    let server = HttpServer::start();
    let big = vec![0u8; 2 << 20];
    std::fs::write(server.dir.path().join("big.img"), &big).expect("serve a 2 MiB file");
    let big_sha = ferry::cloud_init::sha256_hex(&big);
    // 127.0.0.2 is loopback too, outside what "small" allows.
    let redirect = redirector(&format!("http://127.0.0.2:{}/big.img", server.http.port));

    let vm = |name: &str, pool: &str, url: &str, format: &str| {
        let mut m = http_vm(name, &lab, url, &big_sha, "Always");
        m["spec"]["hostPool"] = json!(pool);
        m["spec"]["disks"][0]["http"]["format"] = json!(format);
        m
    };
    let cases = [
        (
            vm("loopback", "lab", &server.url("big.img"), "raw"),
            "127.0.0.1 is a loopback address",
        ),
        (
            vm(
                "metadata",
                "lab",
                "http://169.254.169.254/latest/meta-data/",
                "raw",
            ),
            "169.254.169.254 is a link-local address",
        ),
        (
            vm(
                "redirected",
                "small",
                &format!("http://127.0.0.1:{}/x", redirect.port),
                "raw",
            ),
            "redirected to",
        ),
        (
            vm("toobig", "small", &server.url("big.img"), "raw"),
            "larger than 1048576 bytes",
        ),
    ];
    for (m, _) in &cases {
        c.apply::<VirtualMachine>(m.clone()).await;
    }
    for (m, why) in &cases {
        let name = m["metadata"]["name"].as_str().unwrap_or_default();
        let vm = wait_vm(&c, name, "ImportRefused", Duration::from_secs(120), |vm| {
            ready_reason(vm).is_some_and(|(_, r)| r == "ImportRefused")
        })
        .await;
        let msg = condition(&vm, "Ready")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(msg.contains(why), "{name}: {msg}");
    }
    assert!(
        image_volumes(&lab).is_empty(),
        "nothing left: {:?}",
        image_volumes(&lab)
    );
    assert!(domains(&lab).is_empty(), "no domain: {:?}", domains(&lab));
}

/// `qemu-img convert` of the lab's golden image into `format` (with `-o opts`) at `dest`.
fn converted(lab: &lab::Lab, format: &str, opts: &str, dest: &std::path::Path) -> Vec<u8> {
    let golden = std::path::Path::new(&lab.pool_dir).join(&lab.golden);
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-O", format, "-o", opts])
        .arg(&golden)
        .arg(dest)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dest).expect("converted image")
}

fn http_vm_as(
    name: &str,
    lab: &lab::Lab,
    url: &str,
    sha256: &str,
    format: &str,
) -> serde_json::Value {
    let mut m = http_vm(name, lab, url, sha256, "Always");
    m["spec"]["disks"][0]["http"]["format"] = json!(format);
    m
}

/// An OVA in `dir` (`tiny.ova`) as VMware exports one: an OVF descriptor (one vCPU, 128 MiB,
/// `vmdk` as its disk on a SCSI controller, a VMXNET3 adapter on "VM Network", a CD-ROM), the
/// disk, and a manifest of both, in a ustar archive.
fn build_ova(vmdk: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    let work = tempfile::tempdir().expect("tempdir");
    let disk = std::fs::read(vmdk).expect("vmdk");
    let ovf = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:href="tiny-disk1.vmdk" ovf:id="file1" ovf:size="{}"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:capacity="64" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection><Info>networks</Info><Network ovf:name="VM Network"/></NetworkSection>
  <VirtualSystem ovf:id="tiny">
    <Info>the tiny guest</Info><Name>tiny</Name>
    <VirtualHardwareSection><Info>hardware</Info>
      <Item><rasd:ElementName>1 virtual CPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>128MB of memory</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>128</rasd:VirtualQuantity></Item>
      <Item><rasd:ElementName>SCSI controller 0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>lsilogic</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>Hard disk 1</rasd:ElementName><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Connection>VM Network</rasd:Connection><rasd:ElementName>Network adapter 1</rasd:ElementName><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item ovf:required="false"><rasd:ElementName>CD-ROM 1</rasd:ElementName><rasd:InstanceID>6</rasd:InstanceID><rasd:ResourceType>15</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#,
        disk.len()
    );
    let mf = format!(
        "SHA256(tiny.ovf)= {}\nSHA256(tiny-disk1.vmdk)= {}\n",
        ferry::cloud_init::sha256_hex(ovf.as_bytes()),
        ferry::cloud_init::sha256_hex(&disk)
    );
    std::fs::write(work.path().join("tiny.ovf"), &ovf).expect("ovf");
    std::fs::write(work.path().join("tiny-disk1.vmdk"), &disk).expect("disk");
    std::fs::write(work.path().join("tiny.mf"), &mf).expect("mf");
    let ova = dir.join("tiny.ova");
    let out = std::process::Command::new("tar")
        .arg("--format=ustar")
        .arg("-cf")
        .arg(&ova)
        .args(["tiny.ovf", "tiny-disk1.vmdk", "tiny.mf"])
        .current_dir(work.path())
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ova
}

/// Images from other hypervisors: the tiny guest's disk as a VMDK (stream-optimized, as VMware
/// exports it), in an OVA (turned into a VirtualMachine by `kubectl ferry import-ova`, its disk
/// taken out of the archive by the controller) and as a VHDX is downloaded, converted to qcow2
/// on the host, and boots (the plain VMDK is converted, not booted: the OVA boots the same
/// disk); the conversion is reported in status. An OVA member that is missing is refused with
/// `ArchiveMemberRefused`. A VMDK that names a host file (the lab's canary) is refused with
/// `ImportRefused` and nothing is converted or kept; a format the CRD does not know is rejected
/// by the API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn foreign_images_are_converted_and_boot() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(1).expect("lab host");
    let mut c = Cluster::new("ferry-e2e-foreign").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let ctl = c.controller("e2e-foreign");
    let ns = c.namespace.clone();
    let mut pool = pool_manifest("lab", &lab);
    pool["spec"]["imports"] = json!({"allowedNetworks": ["127.0.0.1/32"]});
    c.apply::<ferry::api::HostPool>(pool).await;
    let server = HttpServer::start();

    // A format the CRD does not know: the API server says which ones it does.
    let api: Api<VirtualMachine> = Api::namespaced(c.client.clone(), &ns);
    let bogus = http_vm_as("bogus", &lab, &server.url("x"), &"0".repeat(64), "ova");
    let err = api
        .patch(
            "bogus",
            &kube::api::PatchParams::apply("ferry-e2e"),
            &kube::api::Patch::Apply(&bogus),
        )
        .await
        .expect_err("an unknown format is rejected");
    let err = err.to_string();
    assert!(err.contains("vmdk") && err.contains("ova"), "{err}");

    // A VMDK whose embedded descriptor names a host file: refused, nothing converted.
    let canary = std::path::Path::new(&lab.dir).join("canary.secret");
    std::fs::write(&canary, "FERRY-CANARY-not-for-tenants\n".repeat(64)).expect("canary");
    let base = server.dir.path().join("base.vmdk");
    converted(&lab, "vmdk", "subformat=monolithicSparse", &base);
    let mut evil = std::fs::read(&base).expect("vmdk");
    let descriptor = format!(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\nRW 2048 SPARSE \"{}\"\n",
        canary.display()
    );
    evil[512..512 + 20 * 512].fill(0);
    evil[512..512 + descriptor.len()].copy_from_slice(descriptor.as_bytes());
    std::fs::write(server.dir.path().join("evil.vmdk"), &evil).expect("serve");
    let evil_sha = ferry::cloud_init::sha256_hex(&evil);
    c.apply::<VirtualMachine>(http_vm_as(
        "evil",
        &lab,
        &server.url("evil.vmdk"),
        &evil_sha,
        "vmdk",
    ))
    .await;
    let vm = wait_vm(
        &c,
        "evil",
        "ImportRefused",
        Duration::from_secs(120),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "ImportRefused"),
    )
    .await;
    let msg = condition(&vm, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(msg.contains("names the extent"), "{msg}");
    assert!(
        image_volumes(&lab).is_empty(),
        "nothing converted or kept: {:?}",
        image_volumes(&lab)
    );
    assert!(domains(&lab).is_empty(), "no domain: {:?}", domains(&lab));
    c.vms()
        .delete("evil", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_vm_gone("evil", Duration::from_secs(60)).await;

    // The tiny guest's disk as VMDK (stream-optimized, as VMware exports it): converted (the
    // VM is defined, not booted: the same disk boots from the OVA below).
    let vmdk = converted(
        &lab,
        "vmdk",
        "subformat=streamOptimized",
        &server.dir.path().join("tiny.vmdk"),
    );
    let sha = ferry::cloud_init::sha256_hex(&vmdk);
    let mut m = http_vm_as("fromvmdk", &lab, &server.url("tiny.vmdk"), &sha, "vmdk");
    m["spec"]["runStrategy"] = json!("Halted");
    c.apply::<VirtualMachine>(m).await;
    wait_vm(&c, "fromvmdk", "Stopped", BOOT, |vm| {
        vm.status.as_ref().and_then(|s| s.phase) == Some(VmPhase::Stopped)
    })
    .await;
    assert_eq!(
        image_volumes(&lab),
        [
            format!("ferry-image-{sha}.vmdk.qcow2"),
            format!("ferry-image-{sha}.vmdk.verified")
        ],
        "the converted image and its marker, no download left"
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.client.clone(), &ns);
    let started = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .any(|e| e.reason.as_deref() == Some("ImportStarted"));
    assert!(started, "an ImportStarted Event");
    c.vms()
        .delete("fromvmdk", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_vm_gone("fromvmdk", Duration::from_secs(90)).await;
    assert!(
        image_volumes(&lab).is_empty(),
        "removed with the last VM: {:?}",
        image_volumes(&lab)
    );

    // The same VMDK in an OVA with an OVF descriptor and a manifest: `kubectl ferry import-ova`
    // prints the VirtualMachine, whose disk the controller takes out of the OVA; it boots.
    let ova = build_ova(&server.dir.path().join("tiny.vmdk"), server.dir.path());
    let ova_path = ova.to_string_lossy().to_string();
    let ova_url = server.url("tiny.ova");
    let (ok, out) = c.plugin(&[
        "import-ova",
        &ova_path,
        "--url",
        &ova_url,
        "--host-pool",
        "lab",
        "--name",
        "fromova",
    ]);
    assert!(!ok, "an unmapped network is an error");
    assert!(
        out.contains("OVF network \"VM Network\", which no --network maps"),
        "{out}"
    );
    let (ok, out) = c.plugin(&[
        "import-ova",
        &ova_path,
        "--url",
        &ova_url,
        "--host-pool",
        "lab",
        "--name",
        "fromova",
        "--network",
        "VM Network=bridge:gbr0",
        "--disk-bus",
        "virtio",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("manifest tiny.mf checked (2 files)"), "{out}");
    assert!(out.contains("CD/DVD drive \"CD-ROM 1\""), "{out}");
    let yaml = out.split("manifest tiny.mf").next().unwrap_or_default();
    let yaml = &yaml[..yaml.rfind('\n').unwrap_or(0)];
    let mut m: serde_json::Value = serde_yaml::from_str(yaml).expect("the plugin prints YAML");
    let ova_sha = ferry::cloud_init::sha256_hex(&std::fs::read(&ova).expect("ova"));
    assert_eq!(
        m["spec"]["disks"],
        json!([{"name": "disk0", "http": {"url": ova_url, "sha256": ova_sha, "format": "vmdk",
                                          "archiveMember": "tiny-disk1.vmdk"}}])
    );
    assert_eq!(
        m["spec"]["networks"],
        json!([{"name": "eth0", "bridge": "gbr0"}])
    );
    assert_eq!(m["metadata"]["namespace"], json!(ns));
    // The tiny guest boots its kernel directly (an appliance boots from its disk).
    m["spec"]["boot"] = vm_manifest("x", "lab", &lab, "Always")["spec"]["boot"].clone();
    m["spec"]["terminationGracePeriodSeconds"] = json!(20);
    c.apply::<VirtualMachine>(m).await;
    wait_vm(&c, "fromova", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let log = console(&lab, &ns, "fromova");
    lab::wait_for_console(&log, "FERRY-DISK FERRY-GOLDEN tiny v1", BOOT)
        .expect("the guest boots from the disk taken out of the OVA");
    let id = ferry::api::virtual_machine::image_id(&ova_sha, Some("tiny-disk1.vmdk"));
    assert_eq!(
        image_volumes(&lab),
        [
            format!("ferry-image-{id}.vmdk.qcow2"),
            format!("ferry-image-{id}.vmdk.verified")
        ],
        "the member's converted image and its marker, no download left"
    );
    // A member the OVA does not hold: a clear condition, nothing kept.
    let mut m = http_vm_as("nomember", &lab, &ova_url, &ova_sha, "vmdk");
    m["spec"]["disks"][0]["http"]["archiveMember"] = json!("tiny-disk2.vmdk");
    c.apply::<VirtualMachine>(m).await;
    let vm = wait_vm(
        &c,
        "nomember",
        "ArchiveMemberRefused",
        Duration::from_secs(120),
        |vm| ready_reason(vm).is_some_and(|(_, r)| r == "ArchiveMemberRefused"),
    )
    .await;
    let msg = condition(&vm, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        msg.contains("has no member \"tiny-disk2.vmdk\"") && msg.contains("\"tiny-disk1.vmdk\""),
        "{msg}"
    );
    assert_eq!(image_volumes(&lab).len(), 2, "only the first VM's image");
    for name in ["nomember", "fromova"] {
        c.vms()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
        c.wait_vm_gone(name, Duration::from_secs(90)).await;
    }
    assert!(
        image_volumes(&lab).is_empty(),
        "removed with the last VM: {:?}",
        image_volumes(&lab)
    );

    // The same disk as a Hyper-V VHDX: its blocks read out by ferry, converted, and it boots.
    let vhdx = converted(
        &lab,
        "vhdx",
        "subformat=dynamic",
        &server.dir.path().join("tiny.vhdx"),
    );
    let sha = ferry::cloud_init::sha256_hex(&vhdx);
    c.apply::<VirtualMachine>(http_vm_as(
        "fromvhdx",
        &lab,
        &server.url("tiny.vhdx"),
        &sha,
        "vhdx",
    ))
    .await;
    wait_vm(&c, "fromvhdx", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let log = console(&lab, &ns, "fromvhdx");
    lab::wait_for_console(&log, "FERRY-DISK FERRY-GOLDEN tiny v1", BOOT)
        .expect("the guest boots from the image converted from VHDX");
    assert_eq!(
        image_volumes(&lab),
        [
            format!("ferry-image-{sha}.vhdx.qcow2"),
            format!("ferry-image-{sha}.vhdx.verified")
        ],
        "the converted image and its marker, no download or scratch volume left"
    );
    c.vms()
        .delete("fromvhdx", &DeleteParams::default())
        .await
        .expect("delete");
    c.wait_vm_gone("fromvhdx", Duration::from_secs(90)).await;
    assert!(image_volumes(&lab).is_empty(), "{:?}", image_volumes(&lab));
    drop(server);
    drop(ctl);
}
