//! `HostPool`: which Nodes are hypervisors, how to reach their libvirt, and where disks live.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::balancing::{BalancingSpec, BalancingStatus};
use super::power::{HostPower, PowerSpec, PowerStatus};
use super::schema;
use super::virtual_machine::ImageFormat;

/// A set of hypervisor hosts (labelled Nodes) that run VirtualMachines through libvirt.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "HostPool",
    namespaced,
    status = "HostPoolStatus",
    shortname = "hp",
    category = "ferry",
    doc = "A set of hypervisor hosts (labelled Nodes) that run VirtualMachines through libvirt.",
    printcolumn(name = "Hosts", type_ = "integer", json_path = ".status.readyHosts"),
    printcolumn(
        name = "Selected",
        type_ = "integer",
        json_path = ".status.selectedHosts"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Standby",
        type_ = "integer",
        json_path = ".status.power.standbyHosts"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.boot) || !has(self.storage.path) || self.boot.directories.all(d, !(d == self.storage.path || d.startsWith(self.storage.path + '/') || self.storage.path.startsWith(d + '/')))").message("boot.directories may not overlap storage.path: a VM could boot another VM's disk"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.boot) || self.boot.directories.all(d, !(d == (has(self.console) ? self.console.logDirectory : '/var/log/libvirt/qemu') || d.startsWith((has(self.console) ? self.console.logDirectory : '/var/log/libvirt/qemu') + '/') || (has(self.console) ? self.console.logDirectory : '/var/log/libvirt/qemu').startsWith(d + '/')))").message("boot.directories may not overlap console.logDirectory (default /var/log/libvirt/qemu): a VM could boot another VM's console log"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.storage.path) || !has(self.console) || !(self.storage.path == self.console.logDirectory || self.storage.path.startsWith(self.console.logDirectory + '/') || self.console.logDirectory.startsWith(self.storage.path + '/'))").message("storage.path and console.logDirectory may not overlap: console logs would show up as volumes"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.migration) || !has(self.migration.peerUriTemplate) || !self.migration.peerUriTemplate.matches('[?&;](no_verify=1|known_hosts_verify=ignore)') || (has(self.libvirt.insecureSkipHostVerification) && self.libvirt.insecureSkipHostVerification)").message("no_verify=1 and known_hosts_verify=ignore in migration.peerUriTemplate turn off checking the host's identity: set libvirt.insecureSkipHostVerification: true to allow them"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.power) || has(self.fencing) || (has(self.power.enabled) && !self.power.enabled)").message("power needs spec.fencing: hosts are powered off and on through the BMCs it configures"))]
pub struct HostPoolSpec {
    /// Nodes that belong to the pool. An empty selector selects no Node.
    pub node_selector: LabelSelector,
    /// How to reach each host's libvirt daemon.
    pub libvirt: LibvirtSpec,
    /// Where VM disks live.
    pub storage: StorageSpec,
    /// Where each VM's serial console is logged on the hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleSpec>,
    /// What image imports (`http:` disks) of the pool's VMs may fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imports: Option<ImportSpec>,
    /// Where the kernels and initrds that VMs of the pool may boot directly live on the hosts.
    /// Unset: no VM of the pool may use `spec.boot` (direct kernel boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootFilesSpec>,
    /// How much of each host VMs may use: overcommit ratios and reservations for the host itself.
    /// Unset: no overcommit, nothing reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacitySpec>,
    /// How a new VM's host is chosen among those that fit: `Spread` (default) puts it on the
    /// least allocated host, `Pack` on the most allocated one that still fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_strategy: Option<PlacementStrategy>,
    /// Live-migration limits and settings for the pool's VMs, and whether cordoned hosts are
    /// evacuated. Unset: the defaults listed on each field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationPolicySpec>,
    /// How to power a failed host off through its BMC before its VMs restart elsewhere. Unset:
    /// no fencing; a failed host's VMs restart only after a human confirms the host is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing: Option<FencingSpec>,
    /// Domains on the pool's hosts that ferry did not make and should describe for adoption.
    /// Unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adoption: Option<AdoptionSpec>,
    /// Keep the hosts' measured load even by live-migrating VMs (`automation: Manual`,
    /// `Partial` or `Full`). Unset: no balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancing: Option<BalancingSpec>,
    /// Put idle hosts in Standby (live-migrate their VMs away, power them off through their
    /// BMC) and power them on again when VMs wait for capacity or the load rises. Needs
    /// `fencing`. Unset: every host stays on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerSpec>,
}

/// Domains made outside ferry that the pool looks at for adoption.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdoptionSpec {
    /// Names of libvirt domains, or prefixes ending in `*`. Each host's status lists the
    /// domains it has that match, that carry no ferry metadata, with what ferry makes of them
    /// (`adoptionCandidates`): their size and disks, what ferry cannot express about them
    /// (`blockers`), and what the guest would see differently after its first restart under
    /// ferry (`notes`). Reading them changes nothing on the host. At most 64 entries.
    #[schemars(length(max = 64), inner(length(min = 1, max = 255)))]
    pub domains: Vec<String>,
}

/// Live-migration policy of a pool. The defaults are KubeVirt's (5 migrations per pool, 2 out
/// per host, unlimited bandwidth, 150 s progress timeout, 150 s per GiB, no auto-converge, no
/// post-copy) with 2 in per host and a 300 ms downtime target.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPolicySpec {
    /// Migrations running at once in the pool, 1 to 100. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_parallel: Option<i32>,
    /// Migrations leaving one host at once, 1 to 32. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub max_outbound_per_host: Option<i32>,
    /// Migrations arriving at one host at once, 1 to 32. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub max_inbound_per_host: Option<i32>,
    /// Bandwidth limit per migration in MiB/s, 1 to 100000. Default unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub bandwidth_mi_bps: Option<i64>,
    /// Longest guest pause allowed at switch-over, in milliseconds, 10 to 10000. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 10000))]
    pub max_downtime_ms: Option<i64>,
    /// Seconds a migration may take per GiB of guest memory (plus copied disks) before it is
    /// aborted, 10 to 3600. Default 150.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 3600))]
    pub completion_timeout_per_gi_b_seconds: Option<i32>,
    /// Seconds without progress (the data left to send reaching no new low) before a migration is
    /// aborted, or switched to post-copy when allowed, 10 to 3600. Default 150.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 3600))]
    pub progress_timeout_seconds: Option<i32>,
    /// Let QEMU slow the guest's vCPUs down when it dirties memory faster than it is sent.
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_auto_converge: Option<bool>,
    /// Switch a migration that does not converge to post-copy instead of aborting it. Default
    /// false. Risk: in post-copy the VM runs on the target while part of its memory is still on
    /// the source; if either host or the link between them fails before it completes, the VM is
    /// lost and restarts from its disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_post_copy: Option<bool>,
    /// Evacuate a host by live migration as soon as its Node is cordoned (`kubectl cordon`).
    /// Default false: only the `ferry.dev/maintenance` Node annotation evacuates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evacuate_cordoned_hosts: Option<bool>,
    /// libvirt URI the *source host* uses to reach the destination's libvirtd (peer-to-peer
    /// migration), with the same placeholders as `libvirt.uriTemplate`, filled for the
    /// destination. Default: `libvirt.uriTemplate`; the hosts use their own libvirt client
    /// credentials (for TLS, `/etc/pki/libvirt` on each host), not the controller's Secret.
    /// Allowed: `qemu+tls`, `qemu+ssh`, `qemu+libssh`, `qemu+libssh2` and `qemu+tcp`, without
    /// `socket`, `pkipath`, `keyfile` or `known_hosts` (the host's own configuration applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^qemu([+](tls|ssh|libssh|libssh2|tcp))?://')").message("peerUriTemplate must be a libvirt URI the source host can use: qemu+tls://, qemu+ssh://, qemu+libssh://, qemu+libssh2:// or qemu+tcp://"))]
    #[x_kube(validation = kube::core::Rule::new("!self.matches('[?&;]command=')").message("command= names a program to run and is never allowed"))]
    pub peer_uri_template: Option<String>,
}

/// Fencing through each host's BMC.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.driver != 'Redfish' || has(self.systemPathTemplate)").message("Redfish fencing needs systemPathTemplate (for example /redfish/v1/Systems/{name}); ferry never guesses the system"))]
pub struct FencingSpec {
    /// `Redfish` (ComputerSystem.Reset ForceOff) or `IPMI` (IPMI v2.0 over LAN, chassis power
    /// off).
    pub driver: FenceDriver,
    /// BMC address per host, with the placeholders of `libvirt.uriTemplate` (`{name}`,
    /// `{address}`, `{label:KEY}`, `{annotation:KEY}`): `https://{annotation:ferry.dev/bmc}` for
    /// Redfish, `ipmi://{annotation:ferry.dev/bmc}` (port 623 unless given) for IPMI.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('https://') || self.startsWith('http://') || self.startsWith('ipmi://')").message("addressTemplate must start with https:// or http:// (Redfish) or ipmi:// (IPMI)"))]
    pub address_template: String,
    /// Redfish only: the ComputerSystem's path, with the same placeholders, for example
    /// `/redfish/v1/Systems/{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/"))]
    pub system_path_template: Option<String>,
    /// Secret (HostPool's namespace) with `username` and `password`, and for Redfish over
    /// HTTPS optionally `ca.crt`: the CA that signed the BMCs' certificates.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub credentials_secret: String,
    /// Seconds each BMC request may take. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 120))]
    pub request_timeout_seconds: Option<i32>,
    /// Seconds to wait for the BMC to report power Off after the power-off request; a fence not
    /// confirmed in time has failed. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600))]
    pub confirm_timeout_seconds: Option<i32>,
}

/// BMC protocols.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceDriver {
    /// DMTF Redfish over HTTPS.
    Redfish,
    /// IPMI v2.0 over LAN (RMCP+, cipher suite 3).
    #[serde(rename = "IPMI")]
    Ipmi,
}

/// How much of each host VMs may use. Allocatable = (capacity − reserved) × overcommit, rounded
/// down; VMs, and the running domains ferry does not manage, count against it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CapacitySpec {
    /// vCPUs per physical CPU, a decimal from 1 to 64 such as `"4"` or `"1.5"`. Default `"1"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 5),
        regex(pattern = r"^(64|[1-5][0-9]|6[0-3]|[1-9])(\.[0-9]{1,2})?$")
    )]
    pub cpu_overcommit: Option<String>,
    /// Guest memory per byte of host memory, a decimal from 1 to 4 such as `"1.5"`. Default `"1"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4), regex(pattern = r"^[1-4](\.[0-9]{1,2})?$"))]
    pub memory_overcommit: Option<String>,
    /// Physical CPUs kept for the host itself (system daemons, QEMU overhead), 0 to 1024.
    /// Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1024))]
    pub reserved_cpus: Option<i32>,
    /// Host memory kept for the host itself, a quantity from 0 to 64Ti such as `2Gi`. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::reserved_memory")]
    pub reserved_memory: Option<String>,
    /// Most VMs restarted on one host at once after another host failed (HA restarts handed to
    /// it whose domain does not run yet), 1 to 1000. Default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrent_restarts_per_host: Option<i32>,
}

/// How a host is chosen among those that fit.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum PlacementStrategy {
    /// The least allocated host: VMs spread evenly.
    #[default]
    Spread,
    /// The most allocated host that still fits: hosts fill up one after the other.
    Pack,
}

/// How to reach each host's libvirt daemon.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!self.uriTemplate.matches('[?&;](no_verify=1|known_hosts_verify=ignore)') || (has(self.insecureSkipHostVerification) && self.insecureSkipHostVerification)").message("no_verify=1 and known_hosts_verify=ignore turn off checking the host's identity: set insecureSkipHostVerification: true to allow them"))]
pub struct LibvirtSpec {
    /// libvirt URI with placeholders filled per host: `{address}` (the Node's address chosen by
    /// `addressType`), `{name}` (the Node's name), `{label:KEY}` and `{annotation:KEY}` (a label
    /// or annotation of the Node; a Node without it is Misconfigured). For example
    /// `qemu+tls://{address}/system`, `qemu+ssh://root@{annotation:example.com/bmc-host}/system`,
    /// or `qemu+tcp://{address}/system` in labs.
    ///
    /// Whatever the template says is checked before it is used (a pool that fails shows
    /// `Ready=False` saying what to fix): the transport is `qemu+tls`, `qemu+ssh`,
    /// `qemu+libssh`, `qemu+libssh2`, `qemu+tcp` or `qemu+unix` (`test` only where the
    /// controller runs with `--allow-test-driver`; never `qemu+ext`), the path `/system`, and
    /// the only parameters are `socket` (inside a directory the controller allows with
    /// `--libvirt-socket-dir`, default `/run/libvirt`), `pkipath`, `keyfile`, `known_hosts`
    /// (inside `--libvirt-credentials-dir`, default `/etc/ferry/pki` and `/etc/pki/libvirt`),
    /// `sshauth`, `known_hosts_verify`, `no_verify`, `no_tty`, `mode` and `proxy`. Values
    /// filled in from the Node must be host names or IP addresses.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^(qemu([+](tls|ssh|libssh|libssh2|tcp|unix))?|test)://')").message("uriTemplate must be a libvirt URI with an allowed transport: qemu+tls://, qemu+ssh://, qemu+libssh://, qemu+libssh2://, qemu+tcp:// or qemu+unix:// (test:// only where the controller allows it)"))]
    #[x_kube(validation = kube::core::Rule::new("!self.matches('^[a-z0-9]*[+]ext:')").message("the ext transport runs a local program with the controller's credentials and is never allowed"))]
    #[x_kube(validation = kube::core::Rule::new("!self.matches('[?&;]command=')").message("command= names a program for the controller to run and is never allowed"))]
    pub uri_template: String,
    /// Let `uriTemplate` (and `migration.peerUriTemplate`) turn off checking the host's
    /// identity: `no_verify=1` (TLS: any certificate; `ssh`, `libssh2`: any new host key)
    /// and `known_hosts_verify=ignore` (`libssh`). Default false:
    /// such a template is refused. For labs only: without the check anyone on the path to a
    /// host can pose as it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_host_verification: Option<bool>,
    /// Which Node address fills `{address}`: `InternalIP` (default), `ExternalIP` or `Hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_type: Option<AddressType>,
    /// Seconds to wait for a connection to a host before giving up (libvirt itself has no limit).
    /// Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub connect_timeout_seconds: Option<i32>,
    /// Seconds between libvirt keepalive probes on each connection. Default 5. A host that stops
    /// answering is shown `Unreachable` about `keepaliveIntervalSeconds × (keepaliveCount + 1)`
    /// seconds after its last answer, and no new VM is placed on it until it answers again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub keepalive_interval_seconds: Option<i32>,
    /// Unanswered keepalive probes before a connection counts as lost. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub keepalive_count: Option<i32>,
    /// Name of a Secret in the HostPool's namespace holding the client credentials for
    /// `uriTemplate`; ferry writes them to private files (0600) and adds their paths to the URI.
    /// For `qemu+tls`: the keys `clientcert.pem`, `clientkey.pem` and `cacert.pem` (libvirt's own
    /// file names), passed as the connection's `pkipath`. For SSH: a Secret of type
    /// `kubernetes.io/ssh-auth` with `ssh-privatekey` (passed as `keyfile`) and, optionally,
    /// `known_hosts` (OpenSSH format, passed as `known_hosts`). Use `qemu+libssh://` (or
    /// `qemu+libssh2://`) with SSH keys: libvirt's built-in SSH clients check the host key against
    /// that `known_hosts` and ferry restricts them to key authentication (`sshauth=privkey`);
    /// without `known_hosts` an unknown host is refused unless the template says
    /// `known_hosts_verify=auto`. `qemu+ssh://` runs the `ssh` program, which takes the key but
    /// reads its own known_hosts files, so a Secret with `known_hosts` is refused for it. A
    /// missing Secret or key, or credentials the host refuses (or a host certificate or key the
    /// credentials do not trust), show the host as `Misconfigured` with a message saying which.
    /// Unset: libvirt's defaults on the controller (`/etc/pki/libvirt`, `~/.pki/libvirt`, the
    /// `ssh` configuration) or parameters in the template apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub credentials_secret: Option<String>,
}

/// Node address kinds.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum AddressType {
    /// The Node's `InternalIP`.
    #[default]
    InternalIP,
    /// The Node's `ExternalIP`.
    ExternalIP,
    /// The Node's `Hostname` address.
    Hostname,
}

/// Storage settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Name of the libvirt storage pool on every host that holds golden images and VM disks.
    #[schemars(length(min = 1, max = 255))]
    pub pool: String,
    /// Directory of the pool. When set and a host lacks the pool, ferry defines a `dir` pool there
    /// with this path; when unset the pool must already exist on every host.
    /// It must be absolute and normalized, may not be, contain or lie inside a system directory
    /// (`/etc`, `/usr`, `/var/lib/kubelet`, ...), and may not overlap `console.logDirectory` or
    /// `boot.directories`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::host_directory")]
    pub path: Option<String>,
    /// Whether every host sees the same pool contents (NFS, a cluster file system). Default true.
    /// With `false`, a VM whose host failed is not restarted elsewhere: its disks stayed on that
    /// host, and ferry never replaces them with new ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    /// Golden images: volumes of the pool a platform admin put there for VMs to start from. A
    /// VM's `image:` disk must name one of them. ferry gives each such VM a qcow2 overlay with
    /// the image as its read-only backing file and never attaches the image itself (a `volume:`
    /// disk naming it is refused). Each image's format is taken from here, never guessed from
    /// the file; a qcow2 image whose header names a backing file or an external data file is
    /// refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::named_list::<GoldenImage, 256>")]
    pub images: Vec<GoldenImage>,
}

/// A golden image of a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GoldenImage {
    /// Volume name in the storage pool.
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^/]+$"))]
    pub name: String,
    /// `qcow2` (default) or `raw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
}

/// Size of an imported image when the pool sets none.
pub const DEFAULT_IMPORT_MAX_SIZE: &str = "64Gi";

/// What image imports (`http:` disks) of the pool's VMs may fetch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImportSpec {
    /// Networks (CIDRs such as `192.0.2.0/24` or `2001:db8::/32`) an import may reach even though
    /// ferry refuses them by default: loopback, link-local, unspecified and multicast
    /// addresses, the controller's `--cluster-cidr` networks and the addresses of the cluster's
    /// Nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::cidrs")]
    pub allowed_networks: Vec<String>,
    /// Largest image an import may download (default 64Gi): a longer download is cut off and
    /// discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::import_size")]
    pub max_size: Option<String>,
}

/// Serial console settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleSpec {
    /// Directory on the hosts for console logs (`<namespace>_<name>.console.log`). Default
    /// `/var/log/libvirt/qemu`. Put it on shared storage to keep one log across migrations.
    /// The same rules as `storage.path` apply.
    #[schemars(schema_with = "schema::host_directory")]
    pub log_directory: String,
}

/// Console log directory on the hosts when `console` is unset.
pub const DEFAULT_CONSOLE_DIR: &str = "/var/log/libvirt/qemu";

/// Direct kernel boot files.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BootFilesSpec {
    /// Directories on the hosts holding kernels and initrds: a VirtualMachine's
    /// `boot.kernel` and `boot.initrd` must be files inside one of them (a VM that names
    /// another file is refused with `BootFileNotAllowed`). At most 16, each absolute and
    /// normalized, clear of system directories, and overlapping neither `storage.path` nor
    /// `console.logDirectory`. The guest can read whatever these files hold: keep only boot
    /// files there.
    #[schemars(schema_with = "schema::host_directories")]
    pub directories: Vec<String>,
}

/// Observed state of a HostPool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HostPoolStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of Nodes the selector matches.
    #[serde(default)]
    pub selected_hosts: i32,
    /// Number of those whose libvirt answers.
    #[serde(default)]
    pub ready_hosts: i32,
    /// One entry per selected Node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::status_named_list::<HostStatus>")]
    pub hosts: Vec<HostStatus>,
    /// Conditions: Ready (some host can take VMs), Degraded (some host cannot; the message names
    /// them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
    /// What balancing decided last (with `spec.balancing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancing: Option<BalancingStatus>,
    /// What power management decided last (with `spec.power`, or while hosts are still in
    /// Standby).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerStatus>,
}

/// State of one host of the pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    /// Node name.
    pub name: String,
    /// libvirt URI rendered from the template (without credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Ready, Unreachable, Cordoned or Misconfigured.
    pub state: HostState,
    /// What is wrong, when the state is not Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// libvirt daemon version, as reported by the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt_version: Option<String>,
    /// Hypervisor (QEMU) version, as reported by the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor_version: Option<String>,
    /// Last time the host's libvirt answered (kept while the state holds, so a steady pool causes
    /// no writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<Time>,
    /// The host's CPUs and memory as libvirt reports them (the last known values while the host
    /// does not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Resources>,
    /// What VMs may use: (capacity − the pool's reservations) × its overcommit ratios.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocatable: Option<Resources>,
    /// vCPUs and memory of ferry's domains on the host, running or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<Resources>,
    /// Number of ferry's domains on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_count: Option<i32>,
    /// Number of domains on the host that ferry does not manage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_domains: Option<i32>,
    /// vCPUs and memory of the running foreign domains; placement counts them as used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_allocated: Option<Resources>,
    /// Names of ferry's domains whose VirtualMachine no longer exists. ferry never deletes them:
    /// look, then remove them with virsh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphans: Vec<String>,
    /// The HA verdict (Healthy, Degraded, Evacuating, Suspect, Failed, Fencing, Fenced,
    /// Recovering, Recovered) when an HAPolicy covers the pool; the policy's status has details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_verdict: Option<crate::api::ha_policy::HostVerdict>,
    /// Domains on the host that `spec.adoption.domains` names and ferry did not make, by name
    /// (at most 32 per host and 64 per pool), with what ferry makes of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adoption_candidates: Vec<AdoptionCandidate>,
    /// What the host's running domains use, measured (libvirt's CPU time and resident memory
    /// over a rolling window of about two minutes). Coarse: rewritten at most every 5 minutes,
    /// and only when it moved by 5 % of the host's capacity or more. Absent until measured, and
    /// while the host does not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<MeasuredLoad>,
    /// Power management's state of the host: `On` (also when absent), `Draining` (its VMs move
    /// away before it goes to Standby), `Standby` (powered off through its BMC, or being
    /// powered off) or `Waking` (powered on, waiting for its Node and libvirt). A host in
    /// Standby or Waking takes no VMs and is never taken for a failed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::host_power")]
    pub power: Option<HostPower>,
    /// When the host entered its power state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_since: Option<Time>,
    /// What power management is doing with the host, or why it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_message: Option<String>,
    /// When the host last failed to come up after a power-on (it is powered on again only
    /// after other hosts in Standby, or 30 minutes later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_failed: Option<Time>,
}

/// A domain made outside ferry, as ferry would adopt it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AdoptionCandidate {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
    /// Running, ShutOff, Paused or Other.
    pub state: String,
    /// Whether ferry can express the domain as it runs (`blockers` is empty).
    pub adoptable: bool,
    /// vCPUs.
    pub cpus: i32,
    /// Memory as a quantity (`512Mi`).
    pub memory: String,
    /// The disks as volumes of the pool's storage, in the domain's order (when adoptable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// What ferry cannot express about the domain; it is adoptable once the list is empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blockers: Vec<String>,
    /// What the guest would see differently after its first restart under ferry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The VirtualMachine spec that describes the domain as it runs (when adoptable): what
    /// `kubectl ferry adopt` writes, with `adopt` naming this domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::free_object")]
    pub spec: Option<serde_json::Value>,
}

/// Measured use of a host's CPUs and memory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MeasuredLoad {
    /// CPU in millicores (1000 is one CPU busy), in steps of 100.
    pub cpu_millicores: i64,
    /// Resident memory as a quantity (`1536Mi`), in steps of 64Mi.
    pub memory: String,
    /// When it was measured.
    pub measured_at: Time,
}

/// An amount of CPUs and memory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPUs (physical for capacity, virtual otherwise).
    pub cpus: i64,
    /// Memory as a quantity (`7936Mi`).
    pub memory: String,
}

/// Host states.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    /// libvirt answers and the Node accepts VMs.
    Ready,
    /// The Node is cordoned: running VMs stay, no new ones are placed.
    Cordoned,
    /// libvirt does not answer.
    Unreachable,
    /// The host's connection settings cannot work (bad URI, no address, credentials missing or
    /// rejected); the message says why.
    Misconfigured,
}

impl HostStatus {
    /// A host entry with only its name and state known.
    pub fn new(name: impl Into<String>, state: HostState) -> Self {
        HostStatus {
            name: name.into(),
            uri: None,
            state,
            message: None,
            libvirt_version: None,
            hypervisor_version: None,
            last_contact: None,
            capacity: None,
            allocatable: None,
            allocated: None,
            vm_count: None,
            foreign_domains: None,
            foreign_allocated: None,
            orphans: Vec::new(),
            ha_verdict: None,
            adoption_candidates: Vec::new(),
            load: None,
            power: None,
            power_since: None,
            power_message: None,
            wake_failed: None,
        }
    }

    /// Power management's state of the host (`On` when unset).
    pub fn power(&self) -> HostPower {
        self.power.unwrap_or_default()
    }
}

impl HostPool {
    /// Connect timeout (default 10 s).
    pub fn connect_timeout(&self) -> std::time::Duration {
        secs(self.spec.libvirt.connect_timeout_seconds, 10)
    }
    /// Keepalive interval and count (defaults 5 s, 3).
    pub fn keepalive(&self) -> (i32, u32) {
        (
            self.spec
                .libvirt
                .keepalive_interval_seconds
                .unwrap_or(5)
                .max(1),
            self.spec.libvirt.keepalive_count.unwrap_or(3).max(1) as u32,
        )
    }
    /// Console log directory on the hosts.
    pub fn console_dir(&self) -> &str {
        self.spec
            .console
            .as_ref()
            .map(|c| c.log_directory.as_str())
            .unwrap_or(DEFAULT_CONSOLE_DIR)
    }
}

impl HostPool {
    /// Whether every host sees the same storage (default true).
    pub fn shared_storage(&self) -> bool {
        self.spec.storage.is_shared()
    }

    /// Whether cordoned hosts are evacuated (default false).
    pub fn evacuates_cordoned(&self) -> bool {
        self.spec
            .migration
            .as_ref()
            .and_then(|m| m.evacuate_cordoned_hosts)
            .unwrap_or(false)
    }

    /// Most HA restarts under way on one host (`capacity.maxConcurrentRestartsPerHost`,
    /// default 8).
    pub fn max_concurrent_restarts_per_host(&self) -> usize {
        self.spec
            .capacity
            .as_ref()
            .and_then(|c| c.max_concurrent_restarts_per_host)
            .unwrap_or(8)
            .max(1) as usize
    }

    /// The placement strategy (default `Spread`).
    pub fn placement_strategy(&self) -> PlacementStrategy {
        self.spec.placement_strategy.unwrap_or_default()
    }
}

fn secs(v: Option<i32>, default: u64) -> std::time::Duration {
    std::time::Duration::from_secs(v.map(|s| s.max(1) as u64).unwrap_or(default))
}

impl FencingSpec {
    /// How long each BMC request may take (`requestTimeoutSeconds`, default 5 s).
    pub fn request_timeout(&self) -> std::time::Duration {
        secs(self.request_timeout_seconds, 5)
    }

    /// How long the BMC has to report power Off after a power-off request
    /// (`confirmTimeoutSeconds`, default 30 s).
    pub fn confirm_timeout(&self) -> std::time::Duration {
        secs(self.confirm_timeout_seconds, 30)
    }
}

impl StorageSpec {
    /// Whether every host sees the same pool contents (default true).
    pub fn is_shared(&self) -> bool {
        self.shared != Some(false)
    }

    /// The format of golden image `name`, when the pool declares it.
    pub fn golden_image(&self, name: &str) -> Option<ImageFormat> {
        self.images
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.format.unwrap_or(ImageFormat::Qcow2))
    }
}
