//! Which volumes a VM's disks may use, in which format, and whether they can follow the VM to
//! another host.
//!
//! A storage pool holds volumes of several kinds, and a namespace editor names volumes in
//! `spec.disks`. What ferry allows:
//! - `image:` names a golden image the HostPool declares (`spec.storage.images`); the VM gets an
//!   overlay with the image as its read-only backing file, in the format the pool declares.
//! - `volume:` names a plain volume: never a golden image (of any HostPool on that storage, nor
//!   one a VM there overlays), never a volume ferry made (overlays, copies, seeds, imported
//!   images: known by their names and by what VMs' status records), and never a volume another
//!   VM on that storage attaches (the older VM keeps it), nor one a libvirt domain ferry does not
//!   manage attaches or builds on (a foreign domain on a host of a pool on that storage, as the
//!   HostPool probe last read it). It is attached in the format the spec gives (`raw` by
//!   default).
//! - Formats are never guessed from a file: overlays and copies are qcow2 because ferry made them
//!   so, seeds raw, images and volumes as declared.

use crate::api::host_pool::StorageSpec;
use crate::api::virtual_machine::{Disk, ImageFormat, SourceFormat, VirtualMachineSpec};
use crate::api::{DiskSource, VirtualMachine};
use crate::plan::domain::{Backing, DomainDescription};
use crate::plan::naming;
use k8s_openapi::jiff::Timestamp;

/// Reason of a VM whose disks name volumes they may not use.
pub const DISK_NOT_ALLOWED: &str = "DiskNotAllowed";

/// Whether two HostPools' storage settings may name the same volumes (the same libvirt pool, or
/// the same directory).
pub fn shares_storage(a: &StorageSpec, b: &StorageSpec) -> bool {
    a.pool == b.pool || (a.path.is_some() && a.path == b.path)
}

/// A volume a libvirt domain ferry does not manage attaches, or builds on (a backing file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignUse {
    pub volume: String,
    /// The domain's name.
    pub domain: String,
    /// The Node name of its host.
    pub host: String,
}

/// The volumes of the storage pool in directory `dir` that domain `d` attaches or whose disks
/// build on (first backing files), sorted and once each. A `volume` disk counts by its volume
/// name. Without a known `dir`, every file disk counts by its file name: a namespace editor
/// may then be refused a volume that only shares a name, never given one a domain uses.
pub fn foreign_volumes(d: &DomainDescription, dir: Option<&str>) -> Vec<String> {
    let in_pool = |path: &str| -> Option<String> {
        match dir {
            Some(dir) => crate::plan::adoption::file_in(path, dir).map(str::to_string),
            None => path
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty())
                .map(str::to_string),
        }
    };
    let mut out: Vec<String> = Vec::new();
    for disk in &d.disks {
        let source = match (disk.kind.as_str(), disk.source.as_deref()) {
            ("volume", Some(v)) => Some(v.to_string()),
            ("file", Some(p)) => in_pool(p),
            _ => None,
        };
        let backing = match &disk.backing {
            Backing::Known(Some(p)) => in_pool(p),
            _ => None,
        };
        out.extend(source.into_iter().chain(backing));
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Another VM on the same storage, as far as its claims on volumes go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Neighbour {
    /// `namespace/name`.
    pub name: String,
    pub created: Option<Timestamp>,
    /// The volumes its `volume:` disks name.
    pub volumes: Vec<String>,
    /// The golden images its `image:` disks name.
    pub images: Vec<String>,
    /// The volumes its status records as made for it.
    pub recorded: Vec<String>,
}

impl Neighbour {
    /// `vm`'s claims.
    pub fn of(vm: &VirtualMachine) -> Neighbour {
        let pick =
            |f: fn(&Disk) -> Option<&String>| vm.spec.disks.iter().filter_map(f).cloned().collect();
        Neighbour {
            name: qualified_name(vm),
            created: vm.metadata.creation_timestamp.as_ref().map(|t| t.0),
            volumes: pick(|d| d.volume.as_ref()),
            images: pick(|d| d.image.as_ref()),
            recorded: vm
                .status
                .as_ref()
                .map(|s| s.disks.iter().map(|d| d.volume.clone()).collect())
                .unwrap_or_default(),
        }
    }
}

/// `namespace/name` of `vm`.
fn qualified_name(vm: &VirtualMachine) -> String {
    format!(
        "{}/{}",
        vm.metadata.namespace.as_deref().unwrap_or_default(),
        vm.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The VM being checked.
pub struct Claimant<'a> {
    /// `namespace/name`.
    pub name: String,
    pub created: Option<Timestamp>,
    pub spec: &'a VirtualMachineSpec,
    /// The disks whose volumes its status records as made for it (overlays that exist and are
    /// never made again).
    pub made: Vec<String>,
}

impl<'a> Claimant<'a> {
    pub fn of(vm: &'a VirtualMachine) -> Self {
        Claimant {
            name: qualified_name(vm),
            created: vm.metadata.creation_timestamp.as_ref().map(|t| t.0),
            spec: &vm.spec,
            made: vm
                .status
                .as_ref()
                .map(|s| s.disks.iter().map(|d| d.name.clone()).collect())
                .unwrap_or_default(),
        }
    }

    /// Whether this VM's claim on a volume comes before `other`'s: the older VM, then the name.
    fn before(&self, other: &Neighbour) -> bool {
        let key =
            |c: &Option<Timestamp>, n: &str| (c.is_none(), c.unwrap_or_default(), n.to_string());
        key(&self.created, &self.name) < key(&other.created, &other.name)
    }
}

/// Whether `vm`'s disks only use what they may, on HostPool `pool_name`'s `storage`. An
/// `image:` disk whose overlay the VM's status records as made is not checked against the
/// pool's declared images: that overlay exists and is never made again.
/// `other_golden` are the golden images other HostPools on the same storage declare;
/// `neighbours` the other VMs on the same storage and `foreign` the volumes domains ferry does not
/// manage use there (both only looked at for `volume:` disks). The error lists every problem and
/// what to change.
pub fn check(
    vm: &Claimant,
    pool_name: &str,
    storage: &StorageSpec,
    other_golden: &[String],
    neighbours: &[Neighbour],
    foreign: &[ForeignUse],
) -> Result<(), String> {
    let mut problems = Vec::new();
    for (i, d) in vm.spec.disks.iter().enumerate() {
        match d.source() {
            // An overlay made before the pool declared its images (ferry never makes it again,
            // nor opens the image itself) keeps working; a new one needs a declared image.
            Some(DiskSource::Image(image))
                if storage.golden_image(image).is_none() && !vm.made.contains(&d.name) =>
            {
                let declared: Vec<&str> = storage.images.iter().map(|i| i.name.as_str()).collect();
                problems.push(format!(
                    "spec.disks[{i}].image {image:?} is not a golden image of HostPool {pool_name} (it declares {}): name one of those, or ask a platform admin to add it to spec.storage.images",
                    if declared.is_empty() { "none".to_string() } else { declared.join(", ") }
                ));
            }
            Some(DiskSource::Volume(v)) => {
                let why = volume_problem(vm, v, storage, other_golden, neighbours).or_else(|| {
                    // Neither the domain nor its host is named: a namespace editor learns no more
                    // about other workloads than that the volume is taken.
                    foreign.iter().any(|f| f.volume == *v).then(|| {
                        "used by a libvirt domain ferry does not manage (on a host of a pool on this storage; a platform admin can tell which)".to_string()
                    })
                });
                if let Some(why) = why {
                    problems.push(format!(
                        "spec.disks[{i}].volume {v:?} is {why}; a volume: disk may only name a plain volume no other VM uses"
                    ));
                }
            }
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn volume_problem(
    vm: &Claimant,
    v: &str,
    storage: &StorageSpec,
    other_golden: &[String],
    neighbours: &[Neighbour],
) -> Option<String> {
    if storage.golden_image(v).is_some() || other_golden.iter().any(|g| g == v) {
        return Some(
            "a golden image (only ever the read-only backing file of overlays: use image: instead)"
                .into(),
        );
    }
    if let Some(kind) = naming::made_by_ferry(v) {
        return Some(format!("{kind}, a volume ferry made"));
    }
    if let Some(n) = neighbours
        .iter()
        .find(|n| n.recorded.iter().any(|r| r == v))
    {
        return Some(format!("a volume ferry made for VirtualMachine {}", n.name));
    }
    if let Some(n) = neighbours.iter().find(|n| n.images.iter().any(|r| r == v)) {
        return Some(format!(
            "the golden image VirtualMachine {} starts from (only ever a read-only backing file)",
            n.name
        ));
    }
    neighbours
        .iter()
        .find(|n| n.volumes.iter().any(|r| r == v) && !vm.before(n))
        .map(|n| {
            format!(
                "attached by VirtualMachine {}, which claimed it first",
                n.name
            )
        })
}

/// The format QEMU opens disk `d` in: qcow2 for the overlays and copies ferry makes, the
/// spec's format (raw by default) for a `volume:` disk.
pub fn attached_format(d: &Disk) -> ImageFormat {
    match d.source() {
        Some(DiskSource::Volume(_)) => d.format.unwrap_or(ImageFormat::Raw),
        _ => ImageFormat::Qcow2,
    }
}

/// The format of the image disk `d`'s overlay is backed by: the pool's declaration for a golden
/// image, the spec's (qcow2 by default) for an imported one; `None` for other disks and for
/// images the pool does not declare.
pub fn backing_format(d: &Disk, storage: &StorageSpec) -> Option<ImageFormat> {
    match d.source()? {
        DiskSource::Image(image) => storage.golden_image(image),
        DiskSource::Http(h) => Some(h.format.unwrap_or(SourceFormat::Qcow2).stored()),
        DiskSource::Volume(_) | DiskSource::Clone(_) => None,
    }
}

/// Why the VM's disks cannot follow it to another host after its host failed, if they cannot:
/// on storage the hosts do not share, every disk stayed on the failed host, and ferry never
/// puts new ones in their place.
pub fn failover_blocked(
    spec: &VirtualMachineSpec,
    storage: &StorageSpec,
    pool_name: &str,
    host: &str,
) -> Option<String> {
    if storage.is_shared() {
        return None;
    }
    let disks: Vec<String> = spec
        .disks
        .iter()
        .map(|d| match d.source() {
            Some(DiskSource::Volume(v)) => format!("{} (volume {v})", d.name),
            _ => d.name.clone(),
        })
        .collect();
    Some(format!(
        "the VM is not restarted on another host: HostPool {pool_name}'s storage is not shared (spec.storage.shared: false), so its disks {} are on host {host} only, and ferry never starts a VM on new, empty disks in their place; bring host {host} back (the VM starts there again), or delete and recreate the VM",
        disks.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn storage(extra: serde_json::Value) -> StorageSpec {
        let mut s = json!({"pool": "ferry", "path": "/srv/pool",
                           "images": [{"name": "tiny.qcow2"}, {"name": "base.raw", "format": "raw"}]});
        if let (Some(o), Some(e)) = (s.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        serde_json::from_value(s).expect("storage")
    }

    fn vm(name: &str, created: i64, disks: serde_json::Value) -> VirtualMachine {
        serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "team",
                         "creationTimestamp": Timestamp::from_second(created).expect("ts").to_string()},
            "spec": {"hostPool": "p", "cpu": {"cores": 1}, "memory": "128Mi", "disks": disks}
        }))
        .expect("VM")
    }

    fn neighbour(
        name: &str,
        created: i64,
        volumes: &[&str],
        images: &[&str],
        recorded: &[&str],
    ) -> Neighbour {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Neighbour {
            name: format!("other/{name}"),
            created: Some(Timestamp::from_second(created).expect("ts")),
            volumes: s(volumes),
            images: s(images),
            recorded: s(recorded),
        }
    }

    #[test]
    fn what_disks_may_name() {
        let overlay = naming::overlay_volume_name("other", "db", "root", "abcdef01-2345");
        let seed = naming::seed_volume_name("other", "db", "abcdef01", "0123456789abcdef");
        let image = naming::imported_image_name(&"0".repeat(64), SourceFormat::Raw);
        let others = vec![
            neighbour(
                "db",
                100,
                &["db-data"],
                &["tiny.qcow2"],
                &["legacy-disk.qcow2"],
            ),
            neighbour("young", 300, &["shared-data"], &["centos.qcow2"], &[]),
        ];
        let golden_elsewhere = vec!["debian.qcow2".to_string()];
        let cases: Vec<(&str, serde_json::Value, Option<&str>)> = vec![
            (
                "a declared golden image as image:",
                json!([{"name": "r", "image": "tiny.qcow2"}]),
                None,
            ),
            (
                "an undeclared image",
                json!([{"name": "r", "image": "other.qcow2"}]),
                Some("not a golden image of HostPool p (it declares tiny.qcow2, base.raw)"),
            ),
            (
                "another VM's overlay as image:",
                json!([{"name": "r", "image": overlay}]),
                Some("not a golden image"),
            ),
            (
                "a plain volume",
                json!([{"name": "d", "volume": "my-data"}]),
                None,
            ),
            (
                "a golden image as volume:",
                json!([{"name": "d", "volume": "tiny.qcow2"}]),
                Some("a golden image"),
            ),
            (
                "another pool's golden image as volume:",
                json!([{"name": "d", "volume": "debian.qcow2"}]),
                Some("a golden image"),
            ),
            (
                "an image another VM overlays, undeclared here",
                json!([{"name": "d", "volume": "centos.qcow2"}]),
                Some("the golden image VirtualMachine other/young starts from"),
            ),
            (
                "another VM's overlay",
                json!([{"name": "d", "volume": overlay}]),
                Some("a VM's own disk, a volume ferry made"),
            ),
            (
                "a seed",
                json!([{"name": "d", "volume": seed}]),
                Some("a cloud-init seed"),
            ),
            (
                "an imported image",
                json!([{"name": "d", "volume": image}]),
                Some("an imported image"),
            ),
            (
                "a volume recorded in another VM's status",
                json!([{"name": "d", "volume": "legacy-disk.qcow2"}]),
                Some("made for VirtualMachine other/db"),
            ),
            (
                "an older VM's volume",
                json!([{"name": "d", "volume": "db-data"}]),
                Some("attached by VirtualMachine other/db, which claimed it first"),
            ),
            (
                "a younger VM's volume: this one claimed it first",
                json!([{"name": "d", "volume": "shared-data"}]),
                None,
            ),
            (
                "an overlay made before the image was declared keeps working",
                json!([{"name": "made", "image": "older.qcow2"}]),
                None,
            ),
            (
                "every problem is listed",
                json!([{"name": "a", "image": "nope"}, {"name": "b", "volume": "tiny.qcow2"}]),
                Some("spec.disks[1].volume"),
            ),
            (
                "a volume a domain ferry does not manage uses",
                json!([{"name": "d", "volume": "legacy-root.qcow2"}]),
                Some("used by a libvirt domain ferry does not manage"),
            ),
        ];
        let foreign = [ForeignUse {
            volume: "legacy-root.qcow2".into(),
            domain: "legacy".into(),
            host: "hv-2".into(),
        }];
        let st = storage(json!({}));
        for (name, disks, want) in cases {
            let mut v = vm("me", 200, disks);
            // Status records the overlay of disk "made" (made before the pool declared images).
            v.status = Some(
                serde_json::from_value(json!({"disks": [
                    {"name": "made", "pool": "ferry", "volume": "team_me_made_0123abcd.qcow2"}
                ]}))
                .expect("status"),
            );
            let got = check(
                &Claimant::of(&v),
                "p",
                &st,
                &golden_elsewhere,
                &others,
                &foreign,
            );
            match want {
                None => assert_eq!(got, Ok(()), "{name}"),
                Some(w) => {
                    let e = got.expect_err(name);
                    assert!(e.contains(w), "{name}: {e}");
                }
            }
        }
    }

    #[test]
    fn what_a_foreign_domain_uses() {
        use crate::plan::domain::DescribedDisk;
        let disk = |kind: &str, source: Option<&str>, backing: Backing| DescribedDisk {
            kind: kind.into(),
            source: source.map(str::to_string),
            backing,
            ..DescribedDisk::default()
        };
        let d = DomainDescription {
            disks: vec![
                disk(
                    "file",
                    Some("/srv/pool/overlay.qcow2"),
                    Backing::Known(Some("/srv/pool/base.qcow2".into())),
                ),
                disk("file", Some("/srv/pool/sub/deeper.img"), Backing::Unknown),
                disk(
                    "file",
                    Some("/var/lib/elsewhere/data.img"),
                    Backing::Unknown,
                ),
                disk("volume", Some("vol-a"), Backing::Unknown),
                disk("block", Some("/dev/sdb"), Backing::Unknown),
                disk("file", None, Backing::Unknown),
                disk("file", Some("/srv/pool/overlay.qcow2"), Backing::Unknown),
            ],
            ..DomainDescription::default()
        };
        assert_eq!(
            foreign_volumes(&d, Some("/srv/pool")),
            vec!["base.qcow2", "overlay.qcow2", "vol-a"]
        );
        // The pool's directory unknown: every file disk counts by its name.
        assert_eq!(
            foreign_volumes(&d, None),
            vec![
                "base.qcow2",
                "data.img",
                "deeper.img",
                "overlay.qcow2",
                "vol-a"
            ]
        );
    }

    #[test]
    fn formats_come_from_the_spec_and_the_pool() {
        let st = storage(json!({}));
        let d = |v: serde_json::Value| -> Disk { serde_json::from_value(v).expect("disk") };
        let sum = "a".repeat(64);
        let cases = [
            (
                d(json!({"name": "r", "image": "tiny.qcow2"})),
                ImageFormat::Qcow2,
                Some(ImageFormat::Qcow2),
            ),
            (
                d(json!({"name": "r", "image": "base.raw"})),
                ImageFormat::Qcow2,
                Some(ImageFormat::Raw),
            ),
            (
                d(json!({"name": "r", "image": "undeclared"})),
                ImageFormat::Qcow2,
                None,
            ),
            (
                d(json!({"name": "r", "http": {"url": "http://x/y", "sha256": sum}})),
                ImageFormat::Qcow2,
                Some(ImageFormat::Qcow2),
            ),
            (
                d(
                    json!({"name": "r", "http": {"url": "http://x/y", "sha256": sum, "format": "raw"}}),
                ),
                ImageFormat::Qcow2,
                Some(ImageFormat::Raw),
            ),
            (
                d(json!({"name": "d", "volume": "v"})),
                ImageFormat::Raw,
                None,
            ),
            (
                d(json!({"name": "d", "volume": "v", "format": "qcow2"})),
                ImageFormat::Qcow2,
                None,
            ),
            (
                d(json!({"name": "c", "clone": {"virtualMachine": "a", "disk": "root"}})),
                ImageFormat::Qcow2,
                None,
            ),
        ];
        for (disk, attached, backing) in cases {
            assert_eq!(attached_format(&disk), attached, "{disk:?}");
            assert_eq!(backing_format(&disk, &st), backing, "{disk:?}");
        }
    }

    #[test]
    fn disks_follow_the_vm_only_on_shared_storage() {
        let v = vm(
            "me",
            1,
            json!([{"name": "root", "image": "tiny.qcow2"}, {"name": "data", "volume": "d1"}]),
        );
        assert_eq!(
            failover_blocked(&v.spec, &storage(json!({})), "p", "h1"),
            None
        );
        assert_eq!(
            failover_blocked(&v.spec, &storage(json!({"shared": true})), "p", "h1"),
            None
        );
        let m = failover_blocked(&v.spec, &storage(json!({"shared": false})), "p", "h1")
            .expect("blocked");
        assert!(
            m.contains("root, data (volume d1) are on host h1 only"),
            "{m}"
        );
        assert!(m.contains("spec.storage.shared: false"), "{m}");
    }

    #[test]
    fn pools_share_storage_by_pool_name_or_directory() {
        let a = storage(json!({}));
        let b = storage(json!({"pool": "other"}));
        let c = storage(json!({"pool": "other", "path": "/srv/elsewhere"}));
        assert!(shares_storage(&a, &b), "same path");
        assert!(!shares_storage(&a, &c));
        assert!(
            shares_storage(&a, &storage(json!({"path": null}))),
            "same pool name"
        );
    }
}
