//! What ships beside the binary agrees with the code:
//! - the CRD copies in `charts/ferry/crds/` and `config/crd/` are byte-identical to `crds/`;
//! - the Helm chart (rendered with the real `helm`) and `config/rbac/` grant the controller's
//!   ServiceAccount exactly `ferry::controller::permissions::REQUIRED_PERMISSIONS`: nothing
//!   missing, nothing extra, no wildcards;
//! - the roles for people they render (view, edit, platform-admin) are exactly
//!   `ferry::api::roles::USER_ROLES`: namespace editors never change HostPools or HAPolicies;
//! - the samples in `config/samples/` pass the CRDs' CEL rules (kube-cel).
//!
//! `helm` is looked up on `$PATH`, then in `/opt/ferry-tools/bin` (scripts/setup.sh). Without it
//! the chart test prints why and passes, unless `CI` is set: then it fails.
//! `FERRY_BLESS=1 cargo test --test deploy` rewrites the CRD copies from `crds/`.

use ferry::api::crds;
use ferry::api::roles::USER_ROLES;
use ferry::controller::permissions::{PermissionScope, flattened};
use kube_cel::Validator;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ferry.dev.yaml"))
        .collect()
}

#[test]
fn crd_copies_match_crds_dir() {
    let source = root().join("crds");
    let bless = std::env::var_os("FERRY_BLESS").is_some();
    let expected = yaml_files(&source);
    assert_eq!(expected.len(), crds().len(), "crds/ has one file per CRD");
    let mut stale = Vec::new();
    for copy in ["charts/ferry/crds", "config/crd"] {
        let dir = root().join(copy);
        for name in &expected {
            let want = std::fs::read_to_string(source.join(name)).expect("read crds/");
            let path = dir.join(name);
            if bless {
                std::fs::write(&path, &want).expect("write CRD copy");
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
                stale.push(path.display().to_string());
            }
        }
        let extra: Vec<String> = yaml_files(&dir).difference(&expected).cloned().collect();
        assert!(extra.is_empty(), "{copy} has CRDs crds/ lacks: {extra:?}");
    }
    assert!(
        stale.is_empty(),
        "CRD copies differ from crds/: {stale:?}; refresh with FERRY_BLESS=1 cargo test --test deploy"
    );
}

/// All YAML documents of a stream, as JSON values.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| {
            let v: serde_yaml::Value =
                serde::Deserialize::deserialize(d).expect("valid YAML document");
            let j = serde_json::to_value(v).expect("YAML is JSON-compatible");
            (!j.is_null()).then_some(j)
        })
        .collect()
}

fn helm() -> Option<PathBuf> {
    let tools = std::env::var("FERRY_TOOLS").unwrap_or_else(|_| "/opt/ferry-tools".into());
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([Path::new(&tools).join("bin")]);
    for dir in candidates {
        let p = dir.join("helm");
        if p.is_file() {
            return Some(p);
        }
    }
    let why = "helm not found on PATH or in /opt/ferry-tools/bin: run scripts/setup.sh";
    if std::env::var_os("CI").is_some() {
        panic!("{why} (CI is set, so this is a failure)");
    }
    eprintln!("skipping the chart RBAC comparison: {why}");
    None
}

fn render(helm: &Path, sets: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "ferry"])
        .arg(root().join("charts/ferry"))
        .args(["--namespace", "ferry-system"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("run helm");
    assert!(
        out.status.success(),
        "helm template {sets:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    documents(&String::from_utf8_lossy(&out.stdout))
}

type Grant = (PermissionScope, String, String, String);

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The built-in Role in kube-system that reads `extension-apiserver-authentication`.
const AUTH_READER: &str = "extension-apiserver-authentication-reader";

/// Every (scope, group, resource, verb) the manifests grant to ServiceAccount `sa`.
/// Cluster-wide grants are `Cluster` for nodes and `Watched` (all namespaces) for everything
/// else; a Role in `lease_ns` grants leases as `Lease`; a Role in `watch_ns` grants `Watched`.
/// Anything else (wildcards, other namespaces, non-resource URLs) fails the test.
fn granted(
    docs: &[Value],
    sa: &str,
    sa_ns: &str,
    lease_ns: &str,
    watch_ns: Option<&str>,
) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    let bound_to_sa = |b: &Value| {
        b["subjects"].as_array().is_some_and(|subs| {
            subs.iter().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == sa_ns
            })
        })
    };
    for binding in docs.iter().filter(|d| {
        (d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding") && bound_to_sa(d)
    }) {
        let binding_ns = binding["metadata"]["namespace"].as_str();
        let role_ref = &binding["roleRef"];
        // The aggregated API reads the API server's front-proxy settings through the built-in
        // Role every extension API server is bound to (checked by
        // chart_binds_the_aggregated_api_to_the_front_proxy_settings).
        if role_ref["kind"] == "Role"
            && role_ref["name"] == AUTH_READER
            && binding_ns == Some("kube-system")
        {
            continue;
        }
        let role = docs
            .iter()
            .find(|d| {
                d["kind"] == role_ref["kind"]
                    && d["metadata"]["name"] == role_ref["name"]
                    && (role_ref["kind"] == "ClusterRole"
                        || d["metadata"]["namespace"].as_str() == binding_ns)
            })
            .unwrap_or_else(|| panic!("binding {binding} refers to a role that is not rendered"));
        for rule in role["rules"].as_array().into_iter().flatten() {
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "non-resource rule: {rule}"
            );
            let names = strs(&rule["resourceNames"]);
            for group in strs(&rule["apiGroups"]) {
                for resource in strs(&rule["resources"]) {
                    for verb in strs(&rule["verbs"]) {
                        assert!(
                            group != "*" && resource != "*" && verb != "*",
                            "wildcard in {rule}"
                        );
                        let scope = match (binding["kind"].as_str(), binding_ns) {
                            // Kinds that are cluster-scoped in the API.
                            (Some("ClusterRoleBinding"), _)
                                if matches!(
                                    resource.as_str(),
                                    "nodes"
                                        | "virtualmachineclasses"
                                        | "tokenreviews"
                                        | "subjectaccessreviews"
                                ) =>
                            {
                                PermissionScope::Cluster
                            }
                            (Some("ClusterRoleBinding"), _) => PermissionScope::Watched,
                            (Some("RoleBinding"), Some(ns))
                                if resource == "leases" && ns == lease_ns =>
                            {
                                PermissionScope::Lease
                            }
                            (Some("RoleBinding"), Some(ns)) if Some(ns) == watch_ns => {
                                PermissionScope::Watched
                            }
                            _ => panic!("unexpected grant of {resource} through {binding}"),
                        };
                        if !names.is_empty() {
                            assert!(
                                resource == "leases" && names == ["ferry-controller"],
                                "resourceNames only for the controller's Lease: {rule}"
                            );
                        }
                        out.insert((scope, group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    out
}

fn required(leader_election: bool) -> BTreeSet<Grant> {
    flattened()
        .into_iter()
        .filter(|(s, ..)| leader_election || *s != PermissionScope::Lease)
        .map(|(s, g, r, v)| (s, g.to_string(), r.to_string(), v.to_string()))
        .collect()
}

fn assert_same(what: &str, got: &BTreeSet<Grant>, want: &BTreeSet<Grant>) {
    let missing: Vec<_> = want.difference(got).collect();
    let extra: Vec<_> = got.difference(want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what} differs from REQUIRED_PERMISSIONS (src/controller/permissions.rs):\n  missing: {missing:?}\n  extra: {extra:?}"
    );
}

#[test]
fn chart_grants_exactly_the_required_permissions() {
    let Some(helm) = helm() else { return };
    let cases: [(&[&str], Option<&str>, bool); 3] = [
        (&[], None, true),
        (&["watchNamespace=vms"], Some("vms"), true),
        (
            &["replicaCount=1", "leaderElection.enabled=false"],
            None,
            false,
        ),
    ];
    for (sets, watch_ns, leader_election) in cases {
        let docs = render(&helm, sets);
        let got = granted(&docs, "ferry", "ferry-system", "ferry-system", watch_ns);
        assert_same(
            &format!("helm template {sets:?}"),
            &got,
            &required(leader_election),
        );
        // The Lease the Role names is the one the controller is told to use.
        let deployment = docs
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("a Deployment");
        let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
        let lease = env
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == "FERRY_LEASE_NAME");
        assert_eq!(
            lease.map(|e| e["value"].clone()),
            leader_election.then(|| Value::from("ferry-controller")),
            "{sets:?}"
        );
    }
}

/// With the aggregated API on (`aggregatedAPI.enabled`), the chart registers it, serves it on
/// the port the Service targets with the certificate of the Secret it is given, and binds the
/// controller to the API server's front-proxy settings; with it off, none of that.
#[test]
fn chart_binds_the_aggregated_api_to_the_front_proxy_settings() {
    let Some(helm) = helm() else { return };
    for (sets, on) in [
        (
            &[
                "aggregatedAPI.enabled=true",
                "aggregatedAPI.tlsSecret=api-tls",
                "aggregatedAPI.caBundle=Q0E=",
            ][..],
            true,
        ),
        (&[][..], false),
    ] {
        let docs = render(&helm, sets);
        let kind = |k: &str| docs.iter().filter(|d| d["kind"] == k).collect::<Vec<_>>();
        let reader = kind("RoleBinding").into_iter().find(|b| {
            b["roleRef"]["name"] == AUTH_READER && b["metadata"]["namespace"] == "kube-system"
        });
        assert_eq!(reader.is_some(), on, "{sets:?}");
        let apiservice = kind("APIService");
        assert_eq!(apiservice.len(), usize::from(on), "{sets:?}");
        let args = kind("Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            args.iter().any(|a| a == "--aggregated-api-addr"),
            on,
            "{sets:?}"
        );
        if !on {
            continue;
        }
        let reader = reader.expect("reader binding");
        assert_eq!(reader["subjects"][0]["name"], "ferry");
        assert_eq!(reader["subjects"][0]["namespace"], "ferry-system");
        let api = apiservice[0];
        assert_eq!(api["metadata"]["name"], "v1alpha1.subresources.ferry.dev");
        let service = &api["spec"]["service"];
        let svc = kind("Service")
            .into_iter()
            .find(|s| s["metadata"]["name"] == service["name"])
            .expect("the APIService's Service");
        assert_eq!(svc["spec"]["ports"][0]["port"], service["port"]);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "aggregated-api");
        assert_eq!(api["spec"]["caBundle"], "Q0E=");
        let volumes = &kind("Deployment")[0]["spec"]["template"]["spec"]["volumes"];
        assert!(
            volumes
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v["secret"]["secretName"] == "api-tls"),
            "{volumes}"
        );
    }
}

#[test]
fn kustomize_rbac_grants_exactly_the_required_permissions() {
    let dir = root().join("config/rbac");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("config/rbac") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|n| n != "kustomization.yaml")
            && path.extension().is_some_and(|e| e == "yaml")
        {
            docs.extend(documents(
                &std::fs::read_to_string(&path).expect("read rbac"),
            ));
        }
    }
    let got = granted(&docs, "ferry", "ferry-system", "ferry-system", None);
    assert_same("config/rbac", &got, &required(true));
}

/// `(role name, aggregated into, group, resource, verb)` of every ClusterRole in `docs` that no
/// binding in `docs` uses (the roles for people), sorted.
fn user_roles(docs: &[Value]) -> BTreeSet<(String, Vec<String>, String, String, String)> {
    let bound: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
        .filter(|b| b["roleRef"]["kind"] == "ClusterRole")
        .filter_map(|b| b["roleRef"]["name"].as_str())
        .collect();
    let mut out = BTreeSet::new();
    for role in docs.iter().filter(|d| d["kind"] == "ClusterRole") {
        let name = role["metadata"]["name"].as_str().unwrap_or_default();
        if bound.contains(name) {
            continue;
        }
        let mut aggregated: Vec<String> = role["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| v.as_str() == Some("true"))
            .filter_map(|(k, _)| k.strip_prefix("rbac.authorization.k8s.io/aggregate-to-"))
            .map(str::to_string)
            .collect();
        aggregated.sort();
        for rule in role["rules"].as_array().into_iter().flatten() {
            for group in strs(&rule["apiGroups"]) {
                for resource in strs(&rule["resources"]) {
                    for verb in strs(&rule["verbs"]) {
                        out.insert((
                            name.to_string(),
                            aggregated.clone(),
                            group.clone(),
                            resource.clone(),
                            verb,
                        ));
                    }
                }
            }
        }
    }
    out
}

/// [`USER_ROLES`] in the shape of [`user_roles`], with role names `<prefix>-<suffix>`.
fn wanted_user_roles(
    prefix: &str,
    aggregated_too: bool,
) -> BTreeSet<(String, Vec<String>, String, String, String)> {
    let mut out = BTreeSet::new();
    for role in USER_ROLES {
        if !role.aggregate_to.is_empty() && !aggregated_too {
            continue;
        }
        let mut aggregated: Vec<String> = role.aggregate_to.iter().map(|a| a.to_string()).collect();
        aggregated.sort();
        for resource in role.resources {
            for verb in role.verbs {
                out.insert((
                    format!("{prefix}-{}", role.suffix),
                    aggregated.clone(),
                    role.group.to_string(),
                    resource.to_string(),
                    verb.to_string(),
                ));
            }
        }
    }
    out
}

#[test]
fn roles_for_people_match_the_table() {
    let kustomize = documents(
        &std::fs::read_to_string(root().join("config/rbac/aggregate_roles.yaml"))
            .expect("read aggregate_roles.yaml"),
    );
    assert_eq!(user_roles(&kustomize), wanted_user_roles("ferry", true));
    let Some(helm) = helm() else { return };
    assert_eq!(
        user_roles(&render(&helm, &[])),
        wanted_user_roles("ferry", true)
    );
    assert_eq!(
        user_roles(&render(&helm, &["rbac.aggregateToDefaultRoles=false"])),
        wanted_user_roles("ferry", false)
    );
    assert!(user_roles(&render(&helm, &["rbac.create=false"])).is_empty());
}

#[test]
fn samples_pass_the_cel_rules() {
    let schemas: Vec<(String, Value)> = crds()
        .into_iter()
        .map(|c| {
            let schema = c.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .map(|s| serde_json::to_value(s).expect("schema serializes"))
                .expect("schema");
            (c.spec.names.kind, schema)
        })
        .collect();
    let dir = root().join("config/samples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("config/samples") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        for doc in documents(&std::fs::read_to_string(&path).expect("read sample")) {
            let Some((_, schema)) = schemas.iter().find(|(k, _)| doc["kind"] == k.as_str()) else {
                continue;
            };
            let errors = match Validator::new().validate(schema, &doc, None) {
                Ok(()) => Vec::new(),
                Err(e) => e.into_vec().into_iter().map(|e| e.to_string()).collect(),
            };
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            checked += 1;
        }
    }
    assert!(
        checked >= 7,
        "only {checked} ferry objects in config/samples"
    );
}
