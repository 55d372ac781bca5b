//! `VirtualMachine`: what should run, where it may run, and how it is doing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::schema;

mod status;
pub use status::{
    DiskStatus, InterfaceStatus, Recovery, ResourcesStatus, VirtualMachineStatus,
    VmMigrationStatus, VmPhase,
};

/// A virtual machine that ferry runs as a libvirt domain on one of the hosts of a HostPool.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "VirtualMachine",
    namespaced,
    status = "VirtualMachineStatus",
    shortname = "fvm",
    category = "ferry",
    doc = "A virtual machine that ferry runs as a libvirt domain on a host of a HostPool.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Host", type_ = "string", json_path = ".status.host"),
    printcolumn(
        name = "IP",
        type_ = "string",
        json_path = ".status.interfaces[0].ipAddress"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Strategy",
        type_ = "string",
        json_path = ".spec.runStrategy",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.className) ? (!has(self.cpu) && !has(self.memory)) : (has(self.cpu) && has(self.memory))").message("set className, or cpu and memory, not both"))]
#[x_kube(validation = kube::core::Rule::new("has(self.adopt) == has(oldSelf.adopt)").message("adopt is set when the VirtualMachine is created, and kept"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.adopt) || (!has(self.className) && !has(self.cloudInit) && self.disks.all(d, has(d.volume)))").message("an adopted VM describes its domain as it runs: cpu and memory (no className), volume disks only, no cloudInit"))]
pub struct VirtualMachineSpec {
    /// When the VM should run. `Always` (default): keep it running, start it again whatever stopped it.
    /// `RerunOnFailure`: run it, start it again after a crash, but leave it stopped when the guest shuts
    /// itself down. `Manual`: ferry never starts or stops it on its own; the `ferry.dev/power` annotation
    /// (`on` / `off`, set by `kubectl ferry start|stop`) decides. `Halted`: keep it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,

    /// Name of the HostPool (same namespace) whose hosts may run this VM. Cannot be changed.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("hostPool cannot be changed; create a new VirtualMachine instead"))]
    #[schemars(length(min = 1, max = 253))]
    pub host_pool: String,

    /// Name of a VirtualMachineClass that gives vCPUs, CPU model and memory. Set either this or
    /// `cpu` and `memory`. Changing it (or the class) takes effect at the next restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,

    /// Virtual CPUs (unless `className` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuSpec>,

    /// Guest memory as a quantity, from 16Mi to 4Ti (for example `512Mi`, `4Gi`), unless
    /// `className` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::vm_memory")]
    pub memory: Option<String>,

    /// Disks, attached in list order (the first one boots unless `boot.kernel` is set). Names are unique.
    #[serde(default)]
    #[schemars(schema_with = "schema::named_list::<Disk, 16>")]
    pub disks: Vec<Disk>,

    /// Network interfaces, in list order. Names are unique.
    #[serde(default)]
    #[schemars(schema_with = "schema::named_list::<Nic, 8>")]
    pub networks: Vec<Nic>,

    /// Direct kernel boot: boot a kernel and initrd that exist on the host instead of the first disk's
    /// boot loader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootSpec>,

    /// Where the VM may be placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementSpec>,

    /// Seconds to wait for the guest to shut down after an ACPI power-button press before the domain is
    /// forced off (stop, restart, delete). Default 60; 0 forces off at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub termination_grace_period_seconds: Option<i32>,

    /// What happens to the VM when its host is evacuated (maintenance, a cordoned Node, an HA
    /// evacuation): `LiveMigrate` (default) moves it while it runs; `None` keeps it where it is,
    /// and the evacuation reports it as blocking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_strategy: Option<EvictionStrategy>,

    /// Per-VM overrides of the pool's live-migration settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<VmMigrationSpec>,

    /// cloud-init NoCloud data: ferry builds a seed image (ISO 9660, label `cidata`) from it, stores
    /// it as a volume next to the VM's disks and attaches it as a read-only CD-ROM. cloud-init
    /// reads it at boot, so a change sets `RestartRequired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInitSpec>,

    /// The VM's consoles: a serial console and a VNC display, both on unless turned off here.
    /// Users reach them through ferry (`kubectl ferry console`, `kubectl ferry vnc`, the
    /// dashboard) where RBAC grants `virtualmachines/console` or `virtualmachines/vnc`; neither
    /// listens on the host's network. A change takes effect at the next restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consoles: Option<ConsolesSpec>,

    /// Take over a libvirt domain that runs (or is defined) on a host of the pool without ferry,
    /// instead of defining a new one: the domain keeps running, keeps its name and UUID, and
    /// nothing the guest notices changes; ferry records its ownership in the domain's metadata
    /// and manages it from then on. Honoured only for a domain the HostPool names in
    /// `spec.adoption.domains`, that no VM owns, that ferry can express, and that the rest of
    /// this spec describes as it is (`kubectl ferry adopt` writes such a spec); otherwise
    /// `Ready=False`, reason `AdoptionBlocked`, says why, and nothing on the host changes. Set
    /// at creation; cannot be changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("adopt cannot be changed"))]
    pub adopt: Option<AdoptSpec>,
}

/// The domain a VirtualMachine takes over.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AdoptSpec {
    /// Node name of the host the domain is on.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// The domain's name there (it keeps it).
    #[schemars(length(min = 1, max = 255))]
    pub domain: String,
    /// The domain's UUID (it keeps it), lower-case hyphenated.
    #[schemars(regex(
        pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
    ))]
    pub uuid: String,
}

/// Which consoles a VM has. Each is on unless set to `false`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConsolesSpec {
    /// A serial console on the first serial port (`ttyS0` in a Linux guest), also logged to the
    /// pool's console directory. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<bool>,
    /// A VNC display (with a VGA video device) that listens nowhere on the host: only ferry's
    /// console proxy reaches it, through libvirt. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc: Option<bool>,
}

impl ConsolesSpec {
    /// Whether the VM has a serial console (default yes).
    pub fn serial_of(spec: Option<&ConsolesSpec>) -> bool {
        spec.and_then(|c| c.serial).unwrap_or(true)
    }

    /// Whether the VM has a VNC display (default yes).
    pub fn vnc_of(spec: Option<&ConsolesSpec>) -> bool {
        spec.and_then(|c| c.vnc).unwrap_or(true)
    }
}

/// What an evacuation does with a VM.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum EvictionStrategy {
    /// Live-migrate it to another host.
    #[default]
    LiveMigrate,
    /// Leave it; evacuations report it as blocking.
    None,
}

/// Per-VM overrides of the pool's migration policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VmMigrationSpec {
    /// Longest guest pause allowed at switch-over, in milliseconds, 10 to 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 10000))]
    pub max_downtime_ms: Option<i64>,
    /// Let QEMU slow the guest down so that the migration converges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_auto_converge: Option<bool>,
    /// Allow switching to post-copy (see the HostPool field for the risk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_post_copy: Option<bool>,
}

/// cloud-init NoCloud data. Each of user data, network data and meta data comes inline or from a
/// Secret (never both). User data, meta data and network data together must fit in 1 MiB.
#[derive(KubeSchema, Serialize, Deserialize, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.userData) && has(self.userDataSecretRef))").message("set userData or userDataSecretRef, not both"))]
#[x_kube(validation = kube::core::Rule::new("!(has(self.networkData) && has(self.networkDataSecretRef))").message("set networkData or networkDataSecretRef, not both"))]
#[x_kube(validation = kube::core::Rule::new("!(has(self.metaData) && has(self.metaDataSecretRef))").message("set metaData or metaDataSecretRef, not both"))]
pub struct CloudInitSpec {
    /// user-data as it is given to cloud-init (`#cloud-config` YAML, a script, or MIME multi-part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub user_data: Option<String>,
    /// user-data from a Secret of the VM's namespace (key `userdata` unless `key` says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_secret_ref: Option<SecretKeyRef>,
    /// network-config (version 1 or 2 YAML). Omitted: cloud-init configures the first NIC by DHCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub network_data: Option<String>,
    /// network-config from a Secret (key `networkdata` unless `key` says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_secret_ref: Option<SecretKeyRef>,
    /// meta-data: a YAML mapping. ferry adds `instance-id` (the VM's UID) unless it is set here,
    /// and the keys of `hostname` and `sshAuthorizedKeys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub meta_data: Option<String>,
    /// meta-data from a Secret (key `metadata` unless `key` says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_data_secret_ref: Option<SecretKeyRef>,
    /// The guest's host name (meta-data `local-hostname`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub hostname: Option<String>,
    /// SSH public keys for the image's default user (meta-data `public-keys`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 16384)))]
    pub ssh_authorized_keys: Vec<String>,
}

/// Only says which fields are set: user data may hold secrets.
impl std::fmt::Debug for CloudInitSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudInitSpec")
            .field("user_data", &self.user_data.as_ref().map(|_| "<set>"))
            .field("user_data_secret_ref", &self.user_data_secret_ref)
            .field("network_data", &self.network_data.as_ref().map(|_| "<set>"))
            .field("network_data_secret_ref", &self.network_data_secret_ref)
            .field("meta_data", &self.meta_data.as_ref().map(|_| "<set>"))
            .field("meta_data_secret_ref", &self.meta_data_secret_ref)
            .field("hostname", &self.hostname)
            .field("ssh_authorized_keys", &self.ssh_authorized_keys.len())
            .finish()
    }
}

/// A key of a Secret in the VM's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data. Defaults: `userdata`, `networkdata`, `metadata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// When the VM should run.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum RunStrategy {
    /// Keep the VM running; start it again whatever stopped it.
    #[default]
    Always,
    /// Start it again after a crash; leave it stopped when the guest shuts itself down.
    RerunOnFailure,
    /// Never start or stop it on ferry's own initiative; the `ferry.dev/power` annotation decides.
    Manual,
    /// Keep it stopped.
    Halted,
}

/// Virtual CPUs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CpuSpec {
    /// Number of virtual CPUs, 1 to 256.
    #[schemars(range(min = 1, max = 256))]
    pub cores: i32,
    /// CPU model: `host-model` (default), `host-passthrough`, or a named libvirt model such as
    /// `Skylake-Server`. Use a model every host of the pool supports if the VM must live-migrate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    pub model: Option<String>,
}

/// A disk of the VM.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("[has(self.image), has(self.volume), has(self.http), has(self.clone)].filter(x, x).size() == 1").message("a disk needs exactly one of image, volume, http or clone"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.format) || has(self.volume)").message("format applies to volume disks only (an image's format is in its HostPool's storage.images, an import's in http.format)"))]
pub struct Disk {
    /// Name of the disk, unique within the VM (a DNS label).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Golden image: the name of a volume in the HostPool's storage pool. ferry creates a qcow2
    /// overlay on top of it for this VM (the image itself is never written to) and removes the
    /// overlay when the VM is deleted. Cannot be changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("image cannot be changed; add a new disk instead"))]
    #[schemars(length(min = 1, max = 255))]
    pub image: Option<String>,
    /// An existing volume in the HostPool's storage pool, attached read-write as it is and never
    /// deleted by ferry. It may not be a golden image of the pool, a volume ferry made (an
    /// overlay, a copy, an imported image, a cloud-init seed) or a volume another VM of the
    /// storage pool attaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub volume: Option<String>,
    /// Format of a `volume:` disk: `raw` (default) or `qcow2`. ferry never guesses a format from
    /// a file's contents; a qcow2 volume whose header names a backing file or an external data
    /// file is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// Golden image downloaded from an HTTP(S) URL into the pool, verified by its SHA-256, kept
    /// once per pool and checksum for every VM that names it (removed when the last one is
    /// deleted). The VM gets a qcow2 overlay on it, as with `image`. Cannot be changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("http cannot be changed; add a new disk instead"))]
    pub http: Option<HttpImage>,
    /// A full copy of another VM's disk (same namespace, same HostPool), made once when this VM is
    /// first provisioned and independent of the source afterwards (a standalone qcow2: neither the
    /// source VM nor its golden image is needed later). The copy waits while the source VM runs,
    /// so that it is consistent: stop the source first. Removed when this VM is deleted. Cannot be
    /// changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("clone cannot be changed; add a new disk instead"))]
    pub clone: Option<DiskClone>,
    /// Virtual size of the overlay created from `image` (at least the image's size). Default: the
    /// image's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::disk_size")]
    pub size: Option<String>,
    /// Bus the guest sees: `virtio` (default), `sata` or `scsi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
}

/// A golden image to download.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.archiveMember) || has(self.format)").message("archiveMember needs format: say which format the member is in (an OVA's disks are usually vmdk)"))]
pub struct HttpImage {
    /// `http://` or `https://` URL of the image.
    #[schemars(length(min = 8, max = 2048), regex(pattern = r"^https?://"))]
    pub url: String,
    /// SHA-256 of the file, 64 hex digits. Required: an image that does not match is discarded.
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: String,
    /// Format of the file: `qcow2` (default) or `raw`, kept as downloaded; or `vmdk`
    /// (VMware), `vhdx` (Hyper-V), `vdi` (VirtualBox) or `vpc` (VHD), converted to qcow2 on the
    /// host once. Only self-contained images are accepted: one whose header names another file
    /// (a backing file, a parent, an extent, an external data file) is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<SourceFormat>,
    /// The file at `url` is a tar archive (an OVA) and the disk is this member of it, by its
    /// path in the archive (`disk1.vmdk`): the whole archive is downloaded and its SHA-256
    /// checked against `sha256`, and only this member is stored. A relative path without `..`
    /// segments; the archive must hold exactly one member of that name. `kubectl ferry
    /// import-ova` writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)') && !self.matches('//') && !self.endsWith('/')").message("archiveMember must be a relative path without .. segments, // or a trailing /"))]
    #[schemars(length(min = 1, max = 255))]
    pub archive_member: Option<String>,
}

impl HttpImage {
    /// The identity of the stored image: the checksum of the file, or for a member of an
    /// archive the SHA-256 of the archive's checksum and the member's path (64 hex digits
    /// either way, so that the image's volume names keep their form).
    pub fn image_id(&self) -> String {
        image_id(&self.sha256, self.archive_member.as_deref())
    }
}

/// The identity of an image downloaded with checksum `sha256`, or of member `member` of that
/// archive: see [`HttpImage::image_id`].
pub fn image_id(sha256: &str, member: Option<&str>) -> String {
    let sum = sha256.to_ascii_lowercase();
    match member {
        None => sum,
        Some(m) => {
            // The archive walk reads `./disk.vmdk` as `disk.vmdk`: one member, one image.
            let m = m.trim_start_matches("./");
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(b"ferry archive member\0");
            ctx.update(sum.as_bytes());
            ctx.update(b"\0");
            ctx.update(m.as_bytes());
            ctx.finish()
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        }
    }
}

/// Format of the file to import: `qcow2` (default) or `raw`, stored as downloaded; `vmdk`,
/// `vhdx`, `vdi` or `vpc` (VHD), converted to qcow2 on the host once. An image whose header
/// names another file (backing file, parent, extent, external data file) is refused.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// The bytes as they are.
    Raw,
    /// QEMU copy-on-write v2 or v3.
    Qcow2,
    /// VMware virtual disk: a single-file sparse or stream-optimized image.
    Vmdk,
    /// Hyper-V virtual hard disk v2: a dynamic or fixed, not a differencing, image.
    Vhdx,
    /// VirtualBox disk image: a dynamic or fixed, not a differencing or undo, image.
    Vdi,
    /// Virtual PC / Hyper-V VHD: a dynamic, not a differencing, image (a fixed VHD is raw data
    /// with a footer: import it as `raw`).
    Vpc,
}

impl SourceFormat {
    /// The name libvirt and QEMU use.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Raw => "raw",
            SourceFormat::Qcow2 => "qcow2",
            SourceFormat::Vmdk => "vmdk",
            SourceFormat::Vhdx => "vhdx",
            SourceFormat::Vdi => "vdi",
            SourceFormat::Vpc => "vpc",
        }
    }

    /// The format the image is stored and opened in: as downloaded for raw and qcow2, qcow2
    /// after conversion for the others.
    pub fn stored(self) -> ImageFormat {
        match self {
            SourceFormat::Raw => ImageFormat::Raw,
            _ => ImageFormat::Qcow2,
        }
    }

    /// Whether the file is converted (to qcow2) rather than stored as downloaded.
    pub fn is_converted(self) -> bool {
        !matches!(self, SourceFormat::Raw | SourceFormat::Qcow2)
    }
}

impl std::fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Format of an image or volume as QEMU opens it. Only formats that cannot name other files
/// without ferry seeing it: `raw`, and `qcow2` (whose header ferry checks).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// The bytes as they are.
    Raw,
    /// QEMU copy-on-write v2 or v3.
    Qcow2,
}

impl ImageFormat {
    /// The name libvirt and QEMU use.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Another VM's disk to copy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DiskClone {
    /// Name of the source VirtualMachine, in this VM's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub virtual_machine: String,
    /// Name of the source VM's disk (one with `image`, `http` or `clone`: a disk ferry made).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub disk: String,
}

/// Where a disk's data comes from, resolved from a [`Disk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskSource<'a> {
    /// A per-VM overlay on this golden image.
    Image(&'a str),
    /// An existing volume.
    Volume(&'a str),
    /// A per-VM overlay on an image imported from a URL.
    Http(&'a HttpImage),
    /// A per-VM full copy of another VM's disk.
    Clone(&'a DiskClone),
}

impl Disk {
    /// The source of this disk, or `None` when the spec names none or several.
    pub fn source(&self) -> Option<DiskSource<'_>> {
        match (&self.image, &self.volume, &self.http, &self.clone) {
            (Some(i), None, None, None) => Some(DiskSource::Image(i)),
            (None, Some(v), None, None) => Some(DiskSource::Volume(v)),
            (None, None, Some(h), None) => Some(DiskSource::Http(h)),
            (None, None, None, Some(c)) => Some(DiskSource::Clone(c)),
            _ => None,
        }
    }

    /// Whether ferry makes a per-VM volume for this disk (an overlay for image and http disks,
    /// a copy for clone disks), removed with the VM.
    pub fn has_overlay(&self) -> bool {
        self.image.is_some() || self.http.is_some() || self.clone.is_some()
    }
}

/// Disk bus.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    /// Paravirtual block device (`vdX`).
    #[default]
    Virtio,
    /// SATA (`sdX`), for guests without virtio drivers.
    Sata,
    /// virtio-scsi (`sdX`).
    Scsi,
}

/// A network interface of the VM.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.network) != has(self.bridge)").message("a network interface needs exactly one of network or bridge"))]
pub struct Nic {
    /// Name of the interface, unique within the VM (a DNS label).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// A libvirt virtual network defined on every host of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub network: Option<String>,
    /// A Linux bridge that exists on every host of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 15))]
    pub bridge: Option<String>,
    /// Device model: `virtio` (default), `e1000` or `rtl8139`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<NicModel>,
    /// Fixed MAC address: unicast, not all zeros, and used by no other VM of the HostPool (a VM
    /// that asks for a MAC another one already uses is refused with `DuplicateMAC`). When unset,
    /// ferry chooses one when it first defines the VM, records it in status and keeps it for the
    /// VM's whole life. Cannot be changed once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("mac cannot be changed once set"))]
    #[x_kube(validation = kube::core::Rule::new("!self.matches('^(00:){5}00$')").message("mac must not be the all-zero address 00:00:00:00:00:00"))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^.[02468aceACE]')").message("mac must be a unicast address (an even first octet), like 52:54:00:12:34:56"))]
    #[schemars(
        length(min = 17, max = 17),
        regex(pattern = r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
    )]
    pub mac: Option<String>,
}

/// Where a NIC connects, resolved from a [`Nic`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkSource<'a> {
    /// A libvirt network.
    Network(&'a str),
    /// A host bridge.
    Bridge(&'a str),
}

impl Nic {
    /// Where this interface connects, or `None` when the spec names neither or both.
    pub fn source(&self) -> Option<NetworkSource<'_>> {
        match (&self.network, &self.bridge) {
            (Some(n), None) => Some(NetworkSource::Network(n)),
            (None, Some(b)) => Some(NetworkSource::Bridge(b)),
            _ => None,
        }
    }
}

/// NIC device model.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    /// Paravirtual NIC.
    #[default]
    Virtio,
    /// Intel e1000 emulation.
    E1000,
    /// Realtek 8139 emulation.
    Rtl8139,
}

/// Direct kernel boot.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BootSpec {
    /// Absolute path of the kernel on every host of the pool, inside one of the HostPool's
    /// `boot.directories`.
    #[schemars(length(min = 2, max = 4096), regex(pattern = r"^/"))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^(/[^/]+)+$') && !self.matches('/[.][.]?(/|$)')").message("kernel must be an absolute path written without //, a trailing /, . or .. segments"))]
    pub kernel: String,
    /// Absolute path of the initrd on every host of the pool, inside one of the HostPool's
    /// `boot.directories`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 4096), regex(pattern = r"^/"))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^(/[^/]+)+$') && !self.matches('/[.][.]?(/|$)')").message("initrd must be an absolute path written without //, a trailing /, . or .. segments"))]
    pub initrd: Option<String>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub cmdline: Option<String>,
}

/// Placement constraints. They apply when the VM is placed; a VM never moves because of them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Only hosts whose Node carries all these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Run on a host that already runs VirtualMachines (of the same namespace) matching these
    /// terms. A required term whose selector matches no other VM of the pool is ignored, so the
    /// first VM of a group can be placed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub affinity: Vec<VmAffinityTerm>,
    /// Run on a host that runs no VirtualMachine (of the same namespace) matching these terms;
    /// the VM itself never counts. Required terms bind both ways, as pod anti-affinity does: a
    /// VM they match is not placed, restarted or migrated onto this VM's host either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub anti_affinity: Vec<VmAffinityTerm>,
}

/// One affinity or anti-affinity rule between VMs, per host.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.required) && self.required && has(self.weight))").message("weight applies to preferred terms only (required is false or unset)"))]
pub struct VmAffinityTerm {
    /// Which VirtualMachines (by their labels) the rule is about.
    pub label_selector: LabelSelector,
    /// `true`: a hard rule, hosts that break it are never chosen. Unset or `false`: a preference
    /// of `weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// How much a preferred term counts against other preferences and the pool's strategy,
    /// 1 to 100. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub weight: Option<i32>,
}

/// Annotation that sets the power state of a `Manual` VM: `on` or `off`.
pub const POWER_ANNOTATION: &str = "ferry.dev/power";
/// Annotation whose new value asks for one restart of the VM (any unique token, e.g. a timestamp).
pub const RESTART_ANNOTATION: &str = "ferry.dev/restart";

/// Annotation that pauses a running VM (`true`): ferry pauses the domain's vCPUs and keeps it
/// paused; removing the annotation (or any other value) lets it run again. Like the power
/// annotation, it is not meant for Git, so GitOps tools leave it alone.
pub const PAUSE_ANNOTATION: &str = "ferry.dev/paused";
/// Annotation that lets deletion finish without cleaning up a host that does not answer.
pub const ABANDON_ANNOTATION: &str = "ferry.dev/abandon-host-resources";
/// Annotation (`true`) that makes deleting the VM release its domain instead of removing it: the
/// domain and its disks stay on the host, running (or not) and defined, without ferry's metadata.
/// Honoured only for a domain the VM's HostPool names in `spec.adoption.domains`.
pub const RELEASE_ANNOTATION: &str = "ferry.dev/release";

impl VirtualMachine {
    /// The effective run strategy (default `Always`).
    pub fn run_strategy(&self) -> RunStrategy {
        self.spec.run_strategy.unwrap_or_default()
    }

    /// Name and UUID of the domain ferry took over for this VM, from its status.
    pub fn adopted(&self) -> Option<(&str, &str)> {
        let st = self.status.as_ref()?;
        Some((st.adopted_domain.as_deref()?, st.domain_uuid.as_deref()?))
    }

    /// Grace period for guest shutdown (default 60 s).
    pub fn grace_seconds(&self) -> u64 {
        self.spec
            .termination_grace_period_seconds
            .map(|s| s.max(0) as u64)
            .unwrap_or(60)
    }
}
