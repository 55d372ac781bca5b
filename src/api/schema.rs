//! Schema fragments the derive cannot express: list-map markers and quantity rules.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

/// Mark an array schema as `x-kubernetes-list-type: map` keyed by `key`, with at most `max` items.
fn list_map(schema: Schema, key: &str, max: Option<u64>) -> Schema {
    list_map_by(schema, &[key], max)
}

/// [`list_map`] keyed by several fields.
fn list_map_by(mut schema: Schema, keys: &[&str], max: Option<u64>) -> Schema {
    schema.insert("x-kubernetes-list-type".into(), json!("map"));
    schema.insert("x-kubernetes-list-map-keys".into(), json!(keys));
    if let Some(max) = max {
        schema.insert("maxItems".into(), json!(max));
    }
    schema
}

/// `conditions`: a list map keyed by `type`.
pub fn conditions(g: &mut SchemaGenerator) -> Schema {
    list_map(g.subschema_for::<Vec<Condition>>(), "type", Some(32))
}

/// Generic list map keyed by `name`, at most `MAX` entries, with a CEL rule that names must be unique
/// (the list-map marker makes the API server enforce it too; the rule gives a readable message).
pub fn named_list<T: JsonSchema, const MAX: u64>(g: &mut SchemaGenerator) -> Schema {
    let mut s = list_map(g.subschema_for::<Vec<T>>(), "name", Some(MAX));
    s.insert(
        "x-kubernetes-validations".into(),
        json!([{
            "rule": "self.all(a, self.exists_one(b, b.name == a.name))",
            "message": "names must be unique"
        }]),
    );
    s
}

/// A status list map keyed by `name` and `pool` (a Node in two HostPools of one HAPolicy has
/// an entry per pool).
pub fn status_pool_host_list<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    list_map_by(g.subschema_for::<Vec<T>>(), &["name", "pool"], None)
}

/// Plain list map keyed by `name` without a uniqueness rule (status lists written by the controller).
pub fn status_named_list<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    list_map(g.subschema_for::<Vec<T>>(), "name", None)
}

/// A Kubernetes quantity written as a string (`512Mi`, `4Gi`) between `min` and `max`.
pub fn quantity_between(min: &str, max: &str, what: &str) -> Schema {
    let rule = format!(
        "isQuantity(self) && quantity(self).compareTo(quantity('{min}')) >= 0 && quantity(self).compareTo(quantity('{max}')) <= 0"
    );
    let message = format!("{what} must be a quantity between {min} and {max}, such as 2Gi");
    let v: Value = json!({
        "type": "string",
        "maxLength": 32,
        "x-kubernetes-validations": [{ "rule": rule, "message": message }]
    });
    Schema::try_from(v).unwrap_or_default()
}

/// VM memory: 16Mi to 4Ti.
pub fn vm_memory(_: &mut SchemaGenerator) -> Schema {
    quantity_between("16Mi", "4Ti", "memory")
}

/// Optional disk size: 1Mi to 64Ti.
pub fn disk_size(_: &mut SchemaGenerator) -> Schema {
    quantity_between("1Mi", "64Ti", "size")
}

/// Largest image an import may download: 1Mi to 64Ti.
pub fn import_size(_: &mut SchemaGenerator) -> Schema {
    quantity_between("1Mi", "64Ti", "maxSize")
}

/// Networks in CIDR notation (`10.0.0.0/8`, `fd00::/8`), at most 32. The controller parses
/// them too (a server without CEL takes anything that looks like one).
pub fn cidrs(_: &mut SchemaGenerator) -> Schema {
    Schema::try_from(json!({
        "type": "array",
        "maxItems": 32,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "maxLength": 43,
            "pattern": r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"
        }
    }))
    .unwrap_or_default()
}

/// A host's power state (`On`, `Draining`, `Standby`, `Waking`) as a pattern rather than an
/// enum: YAML 1.1 readers (kubectl's among them) take a bare `On` in a CRD file for `true`.
pub fn host_power(_: &mut SchemaGenerator) -> Schema {
    Schema::try_from(json!({
        "type": "string",
        "pattern": "^(On|Draining|Standby|Waking)$"
    }))
    .unwrap_or_default()
}

/// Optional host memory reservation: 0 to 64Ti.
pub fn reserved_memory(_: &mut SchemaGenerator) -> Schema {
    quantity_between("0", "64Ti", "reservedMemory")
}

/// System directories no HostPool directory (`storage.path`, `console.logDirectory`,
/// `boot.directories`) may be, contain or lie inside: the host's own configuration,
/// credentials, kernel interfaces, programs and the state of libvirt, the kubelet and container
/// runtimes (both names of the usual `/usr` and `/var/run` links). `/`, which contains them all,
/// is refused as well.
pub const PROTECTED_DIRECTORIES: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/containerd",
    "/var/lib/docker",
    "/var/lib/etcd",
    "/var/lib/kubelet",
    "/var/lib/libvirt/qemu",
    "/var/run",
];

/// CEL: an absolute path without empty, `.` or `..` segments or a trailing `/`.
pub const NORMALIZED_PATH_RULE: &str =
    "self.matches('^(/[^/]+)+$') && !self.matches('/[.][.]?(/|$)')";

/// Message of [`NORMALIZED_PATH_RULE`].
pub const NORMALIZED_PATH_MESSAGE: &str =
    "must be an absolute path written without //, a trailing /, . or .. segments";

/// A directory on the hosts that a HostPool declares: normalized and clear of the system
/// directories of [`PROTECTED_DIRECTORIES`], up to `max` characters.
fn directory(max: u64) -> Value {
    let protected = PROTECTED_DIRECTORIES
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    json!({
        "type": "string",
        "minLength": 2,
        "maxLength": max,
        "x-kubernetes-validations": [
            {"rule": NORMALIZED_PATH_RULE, "message": format!("the directory {NORMALIZED_PATH_MESSAGE}")},
            {
                "rule": format!("![{protected}].exists(p, self == p || self.startsWith(p + '/') || p.startsWith(self + '/'))"),
                "message": format!("the directory may not be, contain or lie inside a system directory ({})", PROTECTED_DIRECTORIES.join(", "))
            }
        ]
    })
}

/// `storage.path`, `console.logDirectory`.
pub fn host_directory(_: &mut SchemaGenerator) -> Schema {
    Schema::try_from(directory(4096)).unwrap_or_default()
}

/// `boot.directories`: at most 16 distinct directories.
pub fn host_directories(_: &mut SchemaGenerator) -> Schema {
    Schema::try_from(json!({
        "type": "array",
        "maxItems": 16,
        "x-kubernetes-list-type": "set",
        "items": directory(1024)
    }))
    .unwrap_or_default()
}

/// An object whose fields the API server keeps as they are (`x-kubernetes-preserve-unknown-fields`).
pub fn free_object(_: &mut SchemaGenerator) -> Schema {
    Schema::try_from(
        json!({"type": "object", "nullable": true, "x-kubernetes-preserve-unknown-fields": true}),
    )
    .unwrap_or_default()
}
