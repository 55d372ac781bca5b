"""What the Helm chart renders: the controller Deployment the binary expects (flags, Lease
identity and namespace, probes), restricted pod security, the optional parts behind their
toggles, deterministic output (no perpetual drift under Argo CD), and a dashboard that only uses
metrics the controller exports. scripts/check-deploy.sh also runs helm lint --strict, the
bad-values files and kubernetes-validate on the same renders.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from conftest import CHART, ROOT, exported_metrics, helm_template, metrics_table

ALL_ON = str(CHART / "ci" / "all-on-values.yaml")


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_default_render_has_the_expected_objects() -> None:
    docs = helm_template()
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    assert kinds == sorted([
        "ClusterRole/ferry-controller", "ClusterRole/ferry-edit", "ClusterRole/ferry-view",
        "ClusterRole/ferry-console", "ClusterRole/ferry-platform-admin",
        "ClusterRoleBinding/ferry-controller", "Deployment/ferry", "PodDisruptionBudget/ferry",
        "Role/ferry-leader-election", "RoleBinding/ferry-leader-election", "Service/ferry-metrics",
        "ServiceAccount/ferry",
    ])
    for d in docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == "ferry-system", d["metadata"]


def test_deployment_runs_the_controller_with_leader_election() -> None:
    dep = one(helm_template(), "Deployment")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"] == ["controller", "--http-addr", "0.0.0.0:8080", "--log-format", "json"]
    env = env_of(c)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["FERRY_LEASE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["FERRY_LEADER_ELECTION"] == "true"
    assert "FERRY_NAMESPACE" not in env
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
    assert pod["serviceAccountName"] == "ferry"
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_pod_security_is_restricted() -> None:
    for docs in (helm_template(), helm_template(ALL_ON)):
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["runAsNonRoot"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "hostNetwork" not in pod and "hostPID" not in pod
        # The only writable place is the emptyDir at /tmp ($HOME for libvirt's client).
        assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]


def test_service_and_pdb_select_the_controller_pods() -> None:
    docs = helm_template()
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    svc = one(docs, "Service")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"] == [{"name": "http-metrics", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 1
    assert by_kind(helm_template(sets=("replicaCount=1",)), "PodDisruptionBudget") == []


def test_image_tag_may_be_a_number() -> None:
    for value, tag in (("2", "2"), ("1.5", "1.5"), ("v2", "v2")):
        (c,) = one(helm_template(sets=(f"image.tag={value}",)), "Deployment")["spec"]["template"]["spec"]["containers"]
        assert c["image"] == f"ghcr.io/ferry-dev/ferry:{tag}"
    (c,) = one(helm_template(), "Deployment")["spec"]["template"]["spec"]["containers"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert c["image"] == f"ghcr.io/ferry-dev/ferry:{chart['appVersion']}"


def test_all_toggles_on() -> None:
    docs = helm_template(ALL_ON)
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"].startswith("ghcr.io/ferry-dev/ferry@sha256:")
    assert env_of(c)["FERRY_NAMESPACE"] == "vms"
    assert c["args"][-2:] == ["--lease-duration", "20"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]
    assert {"name": "pki-rack1", "mountPath": "/etc/ferry/pki/rack1", "readOnly": True} in c["volumeMounts"]
    roles = {(d["kind"], d["metadata"].get("namespace")) for d in docs if d["kind"] in ("Role", "RoleBinding")}
    # kube-system: the aggregated API reads the API server's front-proxy settings.
    assert roles == {("Role", "vms"), ("RoleBinding", "vms"), ("Role", "ferry-system"), ("RoleBinding", "ferry-system"),
                     ("RoleBinding", "kube-system")}

    (svc,) = [d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "ferry-metrics"]
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"

    np = one(docs, "NetworkPolicy")
    assert np["spec"]["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert np["spec"]["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert np["spec"]["ingress"][1]["ports"] == [{"port": "aggregated-api", "protocol": "TCP"}]

    api = one(docs, "APIService")
    assert api["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "ferry-system/ferry-aggregated-api"
    (api_svc,) = [d for d in by_kind(docs, "Service") if d["metadata"]["name"] == api["spec"]["service"]["name"]]
    assert api_svc["spec"]["ports"][0]["targetPort"] == "aggregated-api"
    assert {"name": "aggregated-api", "secret": {"secretName": "ferry-aggregated-api-tls"}} in dep["spec"]["template"]["spec"]["volumes"]
    assert len(np["spec"]["egress"]) == 3

    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["ferry.json"]) == json.loads((CHART / "dashboards" / "ferry.json").read_text())

    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2


def test_rendering_is_deterministic_and_has_no_cluster_lookups() -> None:
    assert helm_template(ALL_ON) == helm_template(ALL_ON)
    for t in (CHART / "templates").iterdir():
        text = t.read_text()
        for fn in ("randAlpha", "randAlphaNum", "randNumeric", "uuidv4", "now", "lookup", "genCA",
                   "genSelfSignedCert", "randBytes"):
            assert not re.search(r"\b" + fn + r"\b", text), f"{t.name} uses {fn}: output would change on every render"


def test_no_schema_defaults_in_the_crds() -> None:
    """The API server would write schema defaults into stored objects, which GitOps tools then see
    as drift (tests/crds.rs checks the generator; this checks the shipped files)."""
    import yaml
    for f in (CHART / "crds").glob("*.yaml"):
        def walk(node: Any, path: str) -> None:
            if isinstance(node, dict):
                props = node.get("properties")
                if isinstance(props, dict):
                    for k, v in props.items():
                        assert not (isinstance(v, dict) and "default" in v), f"{f.name}: default at {path}.{k}"
                for k, v in node.items():
                    walk(v, f"{path}.{k}")
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, f"{path}[{i}]")
        walk(yaml.safe_load(f.read_text()), "")


def family_of(series: str) -> str:
    """The metric a series belongs to (a histogram's _bucket, _count and _sum are its own)."""
    table = metrics_table()
    for suffix in ("", "_bucket", "_count", "_sum"):
        if series.endswith(suffix) and series[: len(series) - len(suffix)] in table:
            return series[: len(series) - len(suffix)]
    raise AssertionError(f"{series} is not in docs/observability.md")


def test_dashboard_uses_only_exported_metrics() -> None:
    dash = json.loads((CHART / "dashboards" / "ferry.json").read_text())
    series, families = exported_metrics()
    families = {f for f, kind in families.items() if kind != "info"}
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    used: set[str] = set()
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}"
        for t in p["targets"]:
            names = set(re.findall(r"\bferry_[a-z_]+", t["expr"]))
            assert names and names <= series, f"{p['title']}: {names - series} not exported"
            used |= names
            for group in re.findall(r"by \(([^)]*)\)", t["expr"]):
                labels = {label.strip() for label in group.split(",")}
                known = {"le"}.union(*(metrics_table()[family_of(n)][1] for n in names))
                assert labels <= known, (p["title"], labels - known)
    for family in families:
        assert any(u.startswith(family) for u in used), f"{family} is not on the dashboard"


def test_view_role_reads_every_ferry_resource() -> None:
    plurals = {yaml.safe_load(p.read_text())["spec"]["names"]["plural"]
               for p in (ROOT / "crds").glob("*.yaml")}
    kustomize_roles = [d for d in yaml.safe_load_all((ROOT / "config/rbac/aggregate_roles.yaml").read_text()) if d]
    for source, roles in (("chart", helm_template()), ("config/rbac", kustomize_roles)):
        view = next(d for d in roles if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "ferry-view")
        (rule,) = view["rules"]
        assert set(rule["resources"]) == plurals, source
        assert rule["verbs"] == ["get", "list", "watch"], source
        assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
