//! The controller's identity in the e2e suite: on a server that enforces RBAC, the Helm chart's
//! ServiceAccount with the chart's RBAC, so a permission the chart lacks fails a test. The
//! chart is rendered with `helm template` for the test namespace (release namespace and
//! `watchNamespace`, as the controller runs with `--namespace` and `--lease-namespace` there),
//! applied, and a token minted for its ServiceAccount goes into a kubeconfig of its own. A
//! server without RBAC (the in-repo stand-in) has no such identity: the controller then uses
//! the test's own kubeconfig.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/ferry");
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// How long the minted token is valid: longer than any test or benchmark run.
const TOKEN_SECONDS: i64 = 6 * 3600;

/// The chart's ServiceAccount, installed for one namespace; its objects outside it are removed
/// by [`ChartIdentity::remove`] (the others go with the namespace).
pub struct ChartIdentity {
    /// A kubeconfig that authenticates as the ServiceAccount.
    pub kubeconfig: PathBuf,
    /// `system:serviceaccount:<namespace>:<name>`.
    pub user: String,
    /// Objects outside the namespace (cluster-scoped, or in another namespace such as the
    /// aggregated API's RoleBinding in kube-system): removed by [`ChartIdentity::remove`].
    elsewhere: Vec<(ApiResource, Option<String>, String)>,
    _dir: tempfile::TempDir,
}

/// Whether the server authorizes with RBAC (it serves `rbac.authorization.k8s.io`).
pub async fn server_has_rbac(client: &Client) -> bool {
    client
        .list_api_groups()
        .await
        .map(|l| l.groups.iter().any(|g| g.name == RBAC_GROUP))
        .unwrap_or(false)
}

/// `helm`: on `$PATH` or where scripts/setup.sh installs it.
fn helm() -> PathBuf {
    let installed =
        PathBuf::from(std::env::var("FERRY_TOOLS").unwrap_or_else(|_| "/opt/ferry-tools".into()))
            .join("bin/helm");
    if installed.exists() {
        return installed;
    }
    PathBuf::from("helm")
}

/// The chart's ServiceAccount and RBAC objects for a release in `namespace` watching it, or
/// with `all_namespaces` every namespace (the chart's default).
fn render(namespace: &str, all_namespaces: bool) -> Vec<serde_json::Value> {
    let mut cmd = std::process::Command::new(helm());
    // With the aggregated API (the consoles through the API server), whose RBAC is a superset
    // (only the RBAC objects are applied: the certificate values are placeholders).
    cmd.args(["template", namespace, CHART, "--namespace", namespace])
        .args(["--set", "aggregatedAPI.enabled=true"])
        .args(["--set", "aggregatedAPI.tlsSecret=unused"])
        .args(["--set", "aggregatedAPI.caBundle=unused"]);
    if !all_namespaces {
        cmd.args(["--set", &format!("watchNamespace={namespace}")]);
    }
    let out = cmd
        .args(["--show-only", "templates/serviceaccount.yaml"])
        .args(["--show-only", "templates/rbac.yaml"])
        .output()
        .expect("run helm template (scripts/setup.sh installs helm)");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| {
            let v: serde_json::Value =
                serde::Deserialize::deserialize(doc).expect("helm template YAML");
            (!v.is_null()).then_some(v)
        })
        .collect()
}

fn api_resource(obj: &serde_json::Value) -> ApiResource {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = obj["kind"].as_str().unwrap_or_default();
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

impl ChartIdentity {
    /// Install the chart's ServiceAccount and RBAC for `namespace` and mint a token; `None` on a
    /// server without RBAC.
    pub async fn install(
        client: &Client,
        admin_kubeconfig: &Path,
        namespace: &str,
    ) -> Option<ChartIdentity> {
        Self::install_with(client, admin_kubeconfig, namespace, false).await
    }

    /// [`ChartIdentity::install`] for a release that watches every namespace (a ClusterRole for
    /// ferry's objects, as the chart installs by default).
    pub async fn install_cluster_wide(
        client: &Client,
        admin_kubeconfig: &Path,
        namespace: &str,
    ) -> Option<ChartIdentity> {
        Self::install_with(client, admin_kubeconfig, namespace, true).await
    }

    async fn install_with(
        client: &Client,
        admin_kubeconfig: &Path,
        namespace: &str,
        all_namespaces: bool,
    ) -> Option<ChartIdentity> {
        if !server_has_rbac(client).await {
            return None;
        }
        let mut elsewhere = Vec::new();
        let mut service_account = None;
        for obj in render(namespace, all_namespaces) {
            let ar = api_resource(&obj);
            let name = obj["metadata"]["name"]
                .as_str()
                .expect("rendered object name")
                .to_string();
            let object_ns = obj["metadata"]["namespace"].as_str().map(String::from);
            let api: Api<DynamicObject> = match &object_ns {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                None => Api::all_with(client.clone(), &ar),
            };
            api.patch(
                &name,
                &PatchParams::apply("ferry-e2e").force(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap_or_else(|e| panic!("apply the chart's {} {name}: {e}", ar.kind));
            if ar.kind == "ServiceAccount" {
                service_account = Some(name.clone());
            }
            if object_ns.as_deref() != Some(namespace) {
                elsewhere.push((ar, object_ns, name));
            }
        }
        let sa = service_account.expect("the chart renders a ServiceAccount");
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(TOKEN_SECONDS),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
            .create_token_request(&sa, &PostParams::default(), &request)
            .await
            .expect("mint a token for the chart's ServiceAccount")
            .status
            .map(|s| s.token)
            .expect("token in the TokenRequest status");
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        let user = format!("system:serviceaccount:{namespace}:{sa}");
        std::fs::write(
            &kubeconfig,
            token_kubeconfig(admin_kubeconfig, &user, &token, namespace),
        )
        .expect("write the ServiceAccount's kubeconfig");
        Some(ChartIdentity {
            kubeconfig,
            user,
            elsewhere,
            _dir: dir,
        })
    }

    /// Delete the objects outside the namespace (ClusterRole, ClusterRoleBinding, the RoleBinding
    /// in kube-system).
    pub async fn remove(&self, client: &Client) {
        for (ar, ns, name) in &self.elsewhere {
            let api: Api<DynamicObject> = match ns {
                Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
                None => Api::all_with(client.clone(), ar),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                api.delete(name, &DeleteParams::default()),
            )
            .await;
        }
    }
}

/// A kubeconfig for the cluster `admin_kubeconfig`'s current context names, authenticating
/// with `token` (certificate authority paths made absolute).
fn token_kubeconfig(admin_kubeconfig: &Path, user: &str, token: &str, namespace: &str) -> String {
    let text = std::fs::read_to_string(admin_kubeconfig).expect("read kubeconfig");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
    let current = doc["current-context"].as_str().unwrap_or_default();
    let cluster_name = doc["contexts"]
        .as_sequence()
        .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some(current)))
        .and_then(|c| c["context"]["cluster"].as_str())
        .expect("the current context names a cluster");
    let mut cluster = doc["clusters"]
        .as_sequence()
        .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some(cluster_name)))
        .cloned()
        .expect("the current context's cluster");
    if let Some(ca) = cluster["cluster"]["certificate-authority"].as_str()
        && Path::new(ca).is_relative()
    {
        let base = admin_kubeconfig.parent().unwrap_or(Path::new("."));
        cluster["cluster"]["certificate-authority"] =
            base.join(ca).to_string_lossy().into_owned().into();
    }
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [serde_json::to_value(&cluster).expect("cluster entry")],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": cluster_name, "user": user, "namespace": namespace}}],
        "current-context": user
    });
    serde_yaml::to_string(&config).expect("kubeconfig YAML")
}
