//! The CRDs in `crds/` are exactly what the types generate, and their schemas enforce the
//! invariants users rely on (ranges, unique names, immutable fields) with CEL rules.

use ferry::api::crds;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube_cel::Validator;
use serde_json::{Value, json};
use std::path::PathBuf;

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds")
}

fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

#[test]
fn crd_files_match_the_types() {
    let bless = std::env::var_os("FERRY_BLESS").is_some();
    let mut stale = Vec::new();
    for crd in crds() {
        let path = crd_dir().join(file_name(&crd));
        let generated = serde_yaml::to_string(&crd).expect("CRD serializes");
        if bless {
            std::fs::write(&path, &generated).expect("write CRD file");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(on_disk) if on_disk == generated => {}
            _ => stale.push(path.display().to_string()),
        }
    }
    assert!(
        stale.is_empty(),
        "CRD files differ from the types: {stale:?}; regenerate with FERRY_BLESS=1 cargo test --test crds"
    );
}

#[test]
fn crds_have_no_schema_defaults_and_the_expected_names() {
    for crd in crds() {
        let text = serde_json::to_string(&crd).expect("serializes");
        assert!(
            !text.contains("\"default\":"),
            "{} has a schema default",
            file_name(&crd)
        );
        let names = &crd.spec.names;
        assert_eq!(
            names.categories.as_deref(),
            Some(&["ferry".to_string()][..])
        );
        assert!(names.short_names.as_ref().is_some_and(|s| !s.is_empty()));
        let v = &crd.spec.versions[0];
        // A class is pure configuration: nothing to observe, so no status.
        if names.kind == "VirtualMachineClass" {
            assert_eq!(crd.spec.scope, "Cluster");
            continue;
        }
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
    }
    let vm = crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "VirtualMachine")
        .expect("VM CRD");
    let cols: Vec<String> = vm.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    for c in ["Phase", "Host", "IP", "Ready", "Age"] {
        assert!(
            cols.contains(&c.to_string()),
            "missing printer column {c}: {cols:?}"
        );
    }
}

fn schema(kind: &str) -> Value {
    let crd = crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .expect("CRD exists");
    let s = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    serde_json::to_value(s).expect("schema serializes")
}

fn vm() -> Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "hostPool": "lab",
            "cpu": {"cores": 2},
            "memory": "512Mi",
            "disks": [{"name": "root", "image": "debian.qcow2", "size": "10Gi"}],
            "networks": [{"name": "eth0", "network": "default"}]
        }
    })
}

fn errors(kind: &str, obj: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(&schema(kind), obj, old) {
        Ok(()) => Vec::new(),
        Err(e) => e.into_vec().into_iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn a_good_vm_passes_every_rule() {
    assert_eq!(errors("VirtualMachine", &vm(), None), Vec::<String>::new());
    assert_eq!(
        errors("VirtualMachine", &vm(), Some(&vm())),
        Vec::<String>::new()
    );
}

#[test]
fn memory_outside_the_range_is_rejected() {
    for bad in ["8Ki", "5Ti", "lots"] {
        let mut v = vm();
        v["spec"]["memory"] = json!(bad);
        let e = errors("VirtualMachine", &v, None);
        assert!(
            e.iter()
                .any(|m| m.contains("memory must be a quantity between")),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn disks_and_nics_need_unique_names_and_one_source() {
    let mut v = vm();
    v["spec"]["disks"] = json!([
        {"name": "root", "image": "a.qcow2"},
        {"name": "root", "volume": "b"}
    ]);
    assert!(
        errors("VirtualMachine", &v, None)
            .iter()
            .any(|m| m.contains("names must be unique"))
    );

    let mut v = vm();
    v["spec"]["disks"] = json!([{"name": "root", "image": "a.qcow2", "volume": "b"}]);
    assert!(
        errors("VirtualMachine", &v, None)
            .iter()
            .any(|m| m.contains("exactly one of image, volume, http or clone"))
    );
    let mut v = vm();
    v["spec"]["disks"] = json!([{"name": "root", "image": "a.qcow2",
                                 "clone": {"virtualMachine": "src", "disk": "root"}}]);
    assert!(
        errors("VirtualMachine", &v, None)
            .iter()
            .any(|m| m.contains("exactly one of image, volume, http or clone"))
    );
    let mut v = vm();
    v["spec"]["disks"] =
        json!([{"name": "root", "clone": {"virtualMachine": "src", "disk": "root"}}]);
    assert_eq!(errors("VirtualMachine", &v, None), Vec::<String>::new());

    let mut v = vm();
    v["spec"]["networks"] = json!([{"name": "eth0"}]);
    assert!(
        errors("VirtualMachine", &v, None)
            .iter()
            .any(|m| m.contains("exactly one of network or bridge"))
    );
}

#[test]
fn an_archive_member_is_a_safe_relative_path_with_a_format() {
    let disk = |member: Option<&str>, format: Option<&str>| {
        let mut http = json!({"url": "http://images.example/web.ova", "sha256": "ab".repeat(32)});
        if let Some(m) = member {
            http["archiveMember"] = json!(m);
        }
        if let Some(f) = format {
            http["format"] = json!(f);
        }
        let mut v = vm();
        v["spec"]["disks"] = json!([{"name": "root", "http": http}]);
        errors("VirtualMachine", &v, None)
    };
    for good in [
        "disk1.vmdk",
        "./disk1.vmdk",
        "dir/Web Appliance-disk1.vmdk",
        "a..b.vmdk",
    ] {
        assert_eq!(
            disk(Some(good), Some("vmdk")),
            Vec::<String>::new(),
            "{good}"
        );
    }
    assert_eq!(
        disk(None, None),
        Vec::<String>::new(),
        "no member, no format"
    );
    let e = disk(Some("disk1.vmdk"), None);
    assert!(
        e.iter().any(|m| m.contains("archiveMember needs format")),
        "{e:?}"
    );
    for bad in [
        "/etc/shadow",
        "../disk.vmdk",
        "a/../../b",
        "x/..",
        "a//b",
        "dir/",
    ] {
        let e = disk(Some(bad), Some("vmdk"));
        assert!(
            e.iter()
                .any(|m| m.contains("archiveMember must be a relative path")),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn cloud_init_takes_each_value_inline_or_from_a_secret() {
    let mut v = vm();
    v["spec"]["cloudInit"] = json!({
        "userDataSecretRef": {"name": "web-userdata"},
        "networkData": "version: 2\n",
        "hostname": "web-1",
        "sshAuthorizedKeys": ["ssh-ed25519 AAAA user@host"]
    });
    assert_eq!(errors("VirtualMachine", &v, None), Vec::<String>::new());
    for (inline, secret) in [
        ("userData", "userDataSecretRef"),
        ("networkData", "networkDataSecretRef"),
        ("metaData", "metaDataSecretRef"),
    ] {
        let mut v = vm();
        v["spec"]["cloudInit"] = json!({inline: "x", secret: {"name": "s"}});
        let e = errors("VirtualMachine", &v, None);
        assert!(
            e.iter()
                .any(|m| m.contains(&format!("set {inline} or {secret}, not both"))),
            "{inline}: {e:?}"
        );
    }
}

#[test]
fn a_vm_takes_its_size_from_a_class_or_its_own_spec() {
    let mut v = vm();
    v["spec"]["className"] = json!("small");
    let e = errors("VirtualMachine", &v, None);
    assert!(
        e.iter()
            .any(|m| m.contains("set className, or cpu and memory, not both")),
        "{e:?}"
    );
    let spec = v["spec"].as_object_mut().expect("spec");
    spec.remove("cpu");
    spec.remove("memory");
    assert_eq!(errors("VirtualMachine", &v, None), Vec::<String>::new());
    let mut v = vm();
    v["spec"].as_object_mut().expect("spec").remove("memory");
    assert!(
        errors("VirtualMachine", &v, None)
            .iter()
            .any(|m| m.contains("set className, or cpu and memory"))
    );
    let class = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachineClass",
        "metadata": {"name": "small"},
        "spec": {"cpu": {"cores": 2, "model": "Skylake-Server"}, "memory": "4Gi"}
    });
    assert_eq!(
        errors("VirtualMachineClass", &class, None),
        Vec::<String>::new()
    );
    let mut bad = class.clone();
    bad["spec"]["memory"] = json!("5Ti");
    assert!(
        errors("VirtualMachineClass", &bad, None)
            .iter()
            .any(|m| m.contains("memory must be a quantity between"))
    );
}

#[test]
fn fields_that_may_not_change_are_protected() {
    let old = vm();
    let mut v = vm();
    v["spec"]["hostPool"] = json!("other");
    assert!(
        errors("VirtualMachine", &v, Some(&old))
            .iter()
            .any(|m| m.contains("hostPool cannot be changed"))
    );

    let mut v = vm();
    v["spec"]["disks"][0]["image"] = json!("other.qcow2");
    assert!(
        errors("VirtualMachine", &v, Some(&old))
            .iter()
            .any(|m| m.contains("image cannot be changed"))
    );

    let mut old_clone = vm();
    old_clone["spec"]["disks"] =
        json!([{"name": "root", "clone": {"virtualMachine": "a", "disk": "root"}}]);
    let mut v = old_clone.clone();
    v["spec"]["disks"][0]["clone"]["virtualMachine"] = json!("b");
    assert!(
        errors("VirtualMachine", &v, Some(&old_clone))
            .iter()
            .any(|m| m.contains("clone cannot be changed"))
    );

    let mut old_mac = vm();
    old_mac["spec"]["networks"][0]["mac"] = json!("52:54:00:00:00:01");
    let mut v = old_mac.clone();
    v["spec"]["networks"][0]["mac"] = json!("52:54:00:00:00:02");
    assert!(
        errors("VirtualMachine", &v, Some(&old_mac))
            .iter()
            .any(|m| m.contains("mac cannot be changed"))
    );

    // Changing what may change (size, CPU) is fine.
    let mut v = vm();
    v["spec"]["cpu"]["cores"] = json!(4);
    assert_eq!(
        errors("VirtualMachine", &v, Some(&old)),
        Vec::<String>::new()
    );
}

#[test]
fn hostpool_uri_template_must_be_a_uri() {
    let pool = json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "HostPool",
        "metadata": {"name": "lab", "namespace": "default"},
        "spec": {
            "nodeSelector": {"matchLabels": {"ferry.dev/hypervisor": "true"}},
            "libvirt": {"uriTemplate": "qemu+tls://{address}/system"},
            "storage": {"pool": "ferry"}
        }
    });
    assert_eq!(errors("HostPool", &pool, None), Vec::<String>::new());
    let mut bad = pool.clone();
    bad["spec"]["libvirt"]["uriTemplate"] = json!("just-a-host");
    assert!(
        errors("HostPool", &bad, None)
            .iter()
            .any(|m| m.contains("must be a libvirt URI"))
    );
}

#[test]
fn placement_terms_and_capacity_rules() {
    let term = |t: Value| {
        let mut v = vm();
        v["spec"]["placement"] = json!({"antiAffinity": [t]});
        errors("VirtualMachine", &v, None)
    };
    let sel = json!({"matchLabels": {"app": "db"}});
    assert_eq!(
        term(json!({"labelSelector": sel, "required": true})),
        Vec::<String>::new()
    );
    assert_eq!(
        term(json!({"labelSelector": sel, "weight": 50})),
        Vec::<String>::new()
    );
    let e = term(json!({"labelSelector": sel, "required": true, "weight": 5}));
    assert!(
        e.iter()
            .any(|m| m.contains("weight applies to preferred terms only")),
        "{e:?}"
    );

    let pool = |reserved: &str| {
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool",
            "metadata": {"name": "lab", "namespace": "default"},
            "spec": {
                "nodeSelector": {"matchLabels": {"a": "b"}},
                "libvirt": {"uriTemplate": "qemu+tls://{address}/system"},
                "storage": {"pool": "ferry"},
                "capacity": {"cpuOvercommit": "4", "memoryOvercommit": "1.5",
                             "reservedCpus": 1, "reservedMemory": reserved},
                "placementStrategy": "Pack"
            }
        })
    };
    assert_eq!(errors("HostPool", &pool("2Gi"), None), Vec::<String>::new());
    let e = errors("HostPool", &pool("lots"), None);
    assert!(
        e.iter()
            .any(|m| m.contains("reservedMemory must be a quantity")),
        "{e:?}"
    );
}

#[test]
fn macs_are_unicast_and_not_all_zero() {
    let with_mac = |mac: &str| {
        let mut v = vm();
        v["spec"]["networks"][0]["mac"] = json!(mac);
        errors("VirtualMachine", &v, None)
    };
    assert_eq!(with_mac("52:54:00:12:34:56"), Vec::<String>::new());
    assert_eq!(with_mac("02:AB:cd:00:00:01"), Vec::<String>::new());
    for (mac, needle) in [
        ("00:00:00:00:00:00", "all-zero"),
        ("ff:ff:ff:ff:ff:ff", "unicast"),
        ("01:00:5e:00:00:01", "unicast"),
        ("0F:00:00:00:00:01", "unicast"),
    ] {
        let e = with_mac(mac);
        assert!(e.iter().any(|m| m.contains(needle)), "{mac}: {e:?}");
    }
}

fn pool(spec_extra: Value) -> Value {
    let mut p = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool",
        "metadata": {"name": "lab", "namespace": "default"},
        "spec": {
            "nodeSelector": {"matchLabels": {"a": "b"}},
            "libvirt": {"uriTemplate": "qemu+tls://{address}/system"},
            "storage": {"pool": "ferry", "path": "/srv/ferry/pool"}
        }
    });
    if let (Some(spec), Some(extra)) = (p["spec"].as_object_mut(), spec_extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    p
}

/// `Ok` or the messages of the rules that failed.
fn pool_errors(spec_extra: Value) -> Vec<String> {
    errors("HostPool", &pool(spec_extra), None)
}

#[test]
fn hostpool_transports_are_allow_listed() {
    let with = |template: &str| pool_errors(json!({"libvirt": {"uriTemplate": template}}));
    for ok in [
        "qemu+tls://{address}/system",
        "qemu://{address}/system",
        "qemu+ssh://root@{annotation:example.com/host}/system",
        "qemu+libssh://{address}/system?sshauth=privkey",
        "qemu+libssh2://{address}/system",
        "qemu+tcp://{address}/system",
        "qemu+unix:///system?socket=/run/libvirt/libvirt-sock",
        "test:///default",
    ] {
        assert_eq!(with(ok), Vec::<String>::new(), "{ok}");
    }
    for (bad, needle) in [
        (
            "qemu+ext:///system?command=/path/to/script",
            "ext transport runs a local program",
        ),
        ("qemu+ext:///system", "ext transport"),
        (
            "qemu+ssh://{address}/system?command=/tmp/x",
            "command= names a program",
        ),
        (
            "qemu+ssh://{address}/system?a=b&command=/tmp/x",
            "command= names a program",
        ),
        ("qemu+http://{address}/system", "allowed transport"),
        ("lxc:///system", "allowed transport"),
        ("just-a-host", "must be a libvirt URI"),
    ] {
        let e = with(bad);
        assert!(e.iter().any(|m| m.contains(needle)), "{bad}: {e:?}");
    }
}

#[test]
fn hostpool_host_verification_stays_on_unless_the_pool_says_so() {
    let e =
        pool_errors(json!({"libvirt": {"uriTemplate": "qemu+tls://{address}/system?no_verify=1"}}));
    assert!(
        e.iter().any(|m| m.contains("insecureSkipHostVerification")),
        "{e:?}"
    );
    let e = pool_errors(
        json!({"libvirt": {"uriTemplate": "qemu+libssh://{address}/system?known_hosts_verify=ignore"}}),
    );
    assert!(
        e.iter().any(|m| m.contains("insecureSkipHostVerification")),
        "{e:?}"
    );
    assert_eq!(
        pool_errors(
            json!({"libvirt": {"uriTemplate": "qemu+tls://{address}/system?no_verify=1",
                                        "insecureSkipHostVerification": true}})
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        pool_errors(json!({"libvirt": {"uriTemplate": "qemu+tls://{address}/system?no_verify=0"}})),
        Vec::<String>::new()
    );
    // The peer template too, judged by the same pool field.
    let peer = |t: &str, skip: bool| {
        pool_errors(json!({
            "libvirt": {"uriTemplate": "qemu+tls://{address}/system", "insecureSkipHostVerification": skip},
            "migration": {"peerUriTemplate": t}
        }))
    };
    assert_eq!(
        peer("qemu+tcp://{address}/system", false),
        Vec::<String>::new()
    );
    assert!(
        peer("qemu+tls://{address}/system?no_verify=1", false)
            .iter()
            .any(|m| m.contains("peerUriTemplate turn off"))
    );
    assert_eq!(
        peer("qemu+tls://{address}/system?no_verify=1", true),
        Vec::<String>::new()
    );
    for (bad, needle) in [
        ("qemu+unix:///system", "the source host can use"),
        ("qemu+ext:///system?command=/x", "the source host can use"),
        (
            "qemu+ssh://{address}/system?command=/x",
            "command= names a program",
        ),
    ] {
        let e = peer(bad, false);
        assert!(e.iter().any(|m| m.contains(needle)), "{bad}: {e:?}");
    }
}

#[test]
fn hostpool_directories_are_normalized_clear_of_the_system_and_apart() {
    let storage = |path: &str| pool_errors(json!({"storage": {"pool": "ferry", "path": path}}));
    for ok in [
        "/srv/ferry/pool",
        "/var/lib/libvirt/images",
        "/tmp/ferry-lab-1/shared/pool",
    ] {
        assert_eq!(storage(ok), Vec::<String>::new(), "{ok}");
    }
    for (bad, needle) in [
        ("/", "absolute path"),
        ("/etc", "system directory"),
        ("/etc/ferry", "system directory"),
        ("/var", "system directory"),
        ("/var/lib/libvirt", "system directory"),
        ("/var/lib/kubelet/pods", "system directory"),
        ("/run/ferry", "system directory"),
        ("/srv/../etc", "absolute path written without"),
        ("/srv//pool", "absolute path written without"),
        ("/srv/pool/", "absolute path written without"),
        ("srv/pool", "absolute path written without"),
    ] {
        let e = storage(bad);
        assert!(e.iter().any(|m| m.contains(needle)), "{bad}: {e:?}");
    }
    let console = pool_errors(json!({"console": {"logDirectory": "/etc/cron.d"}}));
    assert!(
        console.iter().any(|m| m.contains("system directory")),
        "{console:?}"
    );

    let boot = |dirs: Value, extra: Value| {
        let mut spec = json!({"boot": {"directories": dirs}});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        pool_errors(spec)
    };
    assert_eq!(
        boot(json!(["/srv/ferry/boot"]), json!({})),
        Vec::<String>::new()
    );
    for (dirs, extra, needle) in [
        (
            json!(["/srv/ferry/pool/k"]),
            json!({}),
            "may not overlap storage.path",
        ),
        (
            json!(["/srv/ferry"]),
            json!({}),
            "may not overlap storage.path",
        ),
        (
            json!(["/var/log/libvirt"]),
            json!({}),
            "may not overlap console.logDirectory",
        ),
        (
            json!(["/srv/ferry/console"]),
            json!({"console": {"logDirectory": "/srv/ferry/console"}}),
            "may not overlap console.logDirectory",
        ),
        (json!(["/boot"]), json!({}), "system directory"),
        (
            json!(["/srv/k/../../etc"]),
            json!({}),
            "absolute path written without",
        ),
    ] {
        let e = boot(dirs.clone(), extra);
        assert!(e.iter().any(|m| m.contains(needle)), "{dirs}: {e:?}");
    }
    let e = pool_errors(json!({"console": {"logDirectory": "/srv/ferry/pool/logs"}}));
    assert!(
        e.iter()
            .any(|m| m.contains("storage.path and console.logDirectory may not overlap")),
        "{e:?}"
    );
}

#[test]
fn vm_boot_files_are_normalized_absolute_paths() {
    let with_boot = |kernel: &str, initrd: &str| {
        let mut v = vm();
        v["spec"]["boot"] = json!({"kernel": kernel, "initrd": initrd});
        errors("VirtualMachine", &v, None)
    };
    assert_eq!(
        with_boot("/srv/boot/vmlinuz", "/srv/boot/initrd.img"),
        Vec::<String>::new()
    );
    for (kernel, initrd, needle) in [
        (
            "/srv/boot/../../etc/shadow",
            "/srv/boot/i",
            "kernel must be",
        ),
        ("/srv/boot/vmlinuz", "/srv/boot/./i", "initrd must be"),
        ("/srv//boot/vmlinuz", "/srv/boot/i", "kernel must be"),
        ("/srv/boot/", "/srv/boot/i", "kernel must be"),
    ] {
        let e = with_boot(kernel, initrd);
        assert!(
            e.iter().any(|m| m.contains(needle)),
            "{kernel} {initrd}: {e:?}"
        );
    }
}

#[test]
fn the_storm_guard_cannot_be_switched_off() {
    let policy = |percent: i32| {
        json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "HAPolicy",
            "metadata": {"name": "ha", "namespace": "default"},
            "spec": {"hostPools": ["lab"], "maxFailedHostsPercent": percent}
        })
    };
    for ok in [1, 50, 99] {
        assert_eq!(
            errors("HAPolicy", &policy(ok), None),
            Vec::<String>::new(),
            "{ok}"
        );
    }
    for bad in [0, 100] {
        let e = errors("HAPolicy", &policy(bad), None);
        assert!(
            e.iter()
                .any(|m| m.contains("storm guard cannot be switched off")),
            "{bad}: {e:?}"
        );
    }
    let field = &schema("HAPolicy")["properties"]["spec"]["properties"]["maxFailedHostsPercent"];
    assert_eq!(field["maximum"].as_f64(), Some(99.0), "{field}");
}

#[test]
fn hostpool_balancing_settings_are_checked() {
    let with = |b: Value| pool_errors(json!({ "balancing": b }));
    assert_eq!(with(json!({"automation": "Manual"})), Vec::<String>::new());
    assert_eq!(
        with(
            json!({"automation": "Full", "threshold": 5, "intervalSeconds": 30,
                    "vmCooldownSeconds": 60})
        ),
        Vec::<String>::new()
    );
    for (bad, needle) in [
        (
            json!({"automation": "Full", "intervalSeconds": 600, "vmCooldownSeconds": 300}),
            "vmCooldownSeconds must be at least intervalSeconds",
        ),
        (
            json!({"automation": "Full", "vmCooldownSeconds": 120}),
            "vmCooldownSeconds must be at least intervalSeconds (default 300)",
        ),
    ] {
        let e = with(bad.clone());
        assert!(e.iter().any(|m| m.contains(needle)), "{bad}: {e:?}");
    }
    // What the API server checks from the schema itself: the automation is required and one of
    // three, and the numbers stay in range.
    let s = schema("HostPool");
    let b = &s["properties"]["spec"]["properties"]["balancing"];
    assert_eq!(b["required"], json!(["automation"]));
    assert_eq!(
        b["properties"]["automation"]["enum"],
        json!(["Manual", "Partial", "Full"])
    );
    for (field, min, max) in [
        ("threshold", 1, 5),
        ("intervalSeconds", 10, 86400),
        ("vmCooldownSeconds", 10, 86400),
    ] {
        let f = &b["properties"][field];
        assert_eq!(
            (f["minimum"].as_f64(), f["maximum"].as_f64()),
            (Some(min as f64), Some(max as f64)),
            "{field}"
        );
    }
}

#[test]
fn hostpool_power_settings_are_checked() {
    let fencing = json!({"driver": "IPMI", "addressTemplate": "ipmi://{annotation:ferry.dev/bmc}",
                         "credentialsSecret": "bmc"});
    let with = |p: Value| pool_errors(json!({ "power": p, "fencing": fencing.clone() }));
    assert_eq!(with(json!({})), Vec::<String>::new());
    assert_eq!(
        with(
            json!({"minHostsOn": 1, "standbyBelowPercent": 30, "wakeAbovePercent": 40,
                    "standbyAfterSeconds": 10, "wakeTimeoutSeconds": 120})
        ),
        Vec::<String>::new()
    );
    for (bad, needle) in [
        (
            json!({"standbyBelowPercent": 60, "wakeAbovePercent": 60}),
            "standbyBelowPercent (default 50) must be below wakeAbovePercent (default 80)",
        ),
        (
            json!({"wakeAbovePercent": 40}),
            "standbyBelowPercent (default 50) must be below wakeAbovePercent",
        ),
        (
            json!({"schedule": [{"from": "08:00", "to": "08:00", "minHostsOn": 3}]}),
            "from and to are the same time",
        ),
    ] {
        let e = with(bad.clone());
        assert!(e.iter().any(|m| m.contains(needle)), "{bad}: {e:?}");
    }
    assert_eq!(
        with(json!({"schedule": [
            {"days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "from": "07:30", "to": "18:00", "minHostsOn": 4},
            {"from": "22:00", "to": "06:00", "minHostsOn": 3}
        ]})),
        Vec::<String>::new()
    );
    // The rest is the schema's (patterns, enums, ranges; the API server checks them).
    let w =
        &schema("HostPool")["properties"]["spec"]["properties"]["power"]["properties"]["schedule"];
    assert_eq!(w["maxItems"], 16);
    let item = &w["items"]["properties"];
    for t in ["from", "to"] {
        assert_eq!(item[t]["pattern"], "^([01][0-9]|2[0-3]):[0-5][0-9]$", "{t}");
    }
    assert_eq!(
        item["days"]["items"]["enum"],
        json!(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"])
    );
    assert_eq!(item["minHostsOn"]["minimum"].as_f64(), Some(1.0));
    // Hosts are powered off and on through the BMCs fencing configures.
    let e = pool_errors(json!({"power": {}}));
    assert!(
        e.iter().any(|m| m.contains("power needs spec.fencing")),
        "{e:?}"
    );
    assert_eq!(
        pool_errors(json!({"power": {"enabled": false}})),
        Vec::<String>::new()
    );
    let s = schema("HostPool");
    let p = &s["properties"]["spec"]["properties"]["power"];
    for (field, min, max) in [
        ("minHostsOn", 1, 1000),
        ("standbyBelowPercent", 5, 95),
        ("wakeAbovePercent", 10, 100),
        ("standbyAfterSeconds", 1, 86400),
        ("wakeTimeoutSeconds", 30, 3600),
    ] {
        let f = &p["properties"][field];
        assert_eq!(
            (f["minimum"].as_f64(), f["maximum"].as_f64()),
            (Some(min as f64), Some(max as f64)),
            "{field}"
        );
    }
    // The host's power state, in the status.
    let h = &s["properties"]["status"]["properties"]["hosts"]["items"]["properties"]["power"];
    assert_eq!(h["pattern"], json!("^(On|Draining|Standby|Waking)$"));
    // Not an enum: a YAML 1.1 reader (kubectl's) takes a bare `On` in the CRD file for `true`.
    assert!(h.get("enum").is_none(), "{h}");
}
