//! `HostPool`: which Nodes are hypervisors, how to reach their libvirt, and where disks live.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::schema;

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
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
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
}

/// How to reach each host's libvirt daemon.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LibvirtSpec {
    /// libvirt URI with placeholders filled per host: `{address}` (the Node's address chosen by
    /// `addressType`), `{name}` (the Node's name). For example `qemu+tls://{address}/system`,
    /// `qemu+ssh://root@{address}/system`, or `qemu+tcp://{address}/system` in labs.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = kube::core::Rule::new("self.contains('://')").message("uriTemplate must be a libvirt URI such as qemu+tls://{address}/system"))]
    pub uri_template: String,
    /// Which Node address fills `{address}`: `InternalIP` (default), `ExternalIP` or `Hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_type: Option<AddressType>,
    /// Seconds to wait for a connection to a host before giving up (libvirt itself has no limit).
    /// Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub connect_timeout_seconds: Option<i32>,
    /// Seconds between libvirt keepalive probes on each connection. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub keepalive_interval_seconds: Option<i32>,
    /// Unanswered keepalive probes before a connection counts as lost. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub keepalive_count: Option<i32>,
    /// Name of a Secret in the HostPool's namespace holding the client credentials for
    /// `uriTemplate`. For `qemu+tls`: the keys `clientcert.pem`, `clientkey.pem` and `cacert.pem`
    /// (libvirt's own file names), which ferry hands to libvirt as the connection's `pkipath`.
    /// Unset: libvirt's defaults on the controller (`/etc/pki/libvirt`, `~/.pki/libvirt`) or a
    /// `?pkipath=` in the template apply.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 4096), regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// Whether every host sees the same pool contents (NFS, a cluster file system). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
}

/// Serial console settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleSpec {
    /// Directory on the hosts for console logs (`<namespace>_<name>.console.log`). Default
    /// `/var/log/libvirt/qemu`. Put it on shared storage to keep one log across migrations.
    #[schemars(length(min = 2, max = 4096), regex(pattern = r"^/"))]
    pub log_directory: String,
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
    /// Conditions: Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
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
    /// Last time the host's libvirt answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<Time>,
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
    /// The host's connection settings cannot work (bad URI, no address); the message says why.
    Misconfigured,
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
            .unwrap_or("/var/log/libvirt/qemu")
    }
}

fn secs(v: Option<i32>, default: u64) -> std::time::Duration {
    std::time::Duration::from_secs(v.map(|s| s.max(1) as u64).unwrap_or(default))
}
