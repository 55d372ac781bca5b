"""The kustomize bases (config/), the samples, and the Argo CD manifests (deploy/argocd/):
they render with kubectl's kustomize, the CRDs they carry are crds/, the controller Deployment
matches the chart's, and the samples are valid ferry objects that cover the documented cases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT, cr_problems, docs, helm_template, run, tool


def kustomize(path: str) -> list[dict[str, Any]]:
    return docs(run(tool("kubectl"), "kustomize", str(ROOT / path)).stdout)


def crd_files() -> dict[str, Any]:
    return {yaml.safe_load(f.read_text())["metadata"]["name"]: yaml.safe_load(f.read_text())
            for f in (ROOT / "crds").glob("*.yaml")}


def test_config_default_renders_everything_in_ferry_system() -> None:
    out = kustomize("config/default")
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in out)
    assert kinds == sorted([
        "Namespace/ferry-system", "ServiceAccount/ferry", "ClusterRole/ferry-controller",
        "ClusterRole/ferry-view", "ClusterRole/ferry-edit", "ClusterRole/ferry-console",
        "ClusterRole/ferry-platform-admin",
        "ClusterRoleBinding/ferry-controller",
        "Role/ferry-leader-election", "RoleBinding/ferry-leader-election", "Deployment/ferry",
        "Service/ferry-metrics", "PodDisruptionBudget/ferry",
        *(f"CustomResourceDefinition/{n}" for n in crd_files()),
    ])
    for d in out:
        if d["kind"] in ("ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "PodDisruptionBudget"):
            assert d["metadata"]["namespace"] == "ferry-system", d["metadata"]
    crds = {d["metadata"]["name"]: d for d in out if d["kind"] == "CustomResourceDefinition"}
    for name, want in crd_files().items():
        got = dict(crds[name])
        got["metadata"] = {k: v for k, v in got["metadata"].items() if k != "labels"}
        assert got == want, name


def container_settings(dep: dict[str, Any]) -> dict[str, Any]:
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    keep = ("args", "ports", "livenessProbe", "readinessProbe", "resources", "securityContext", "volumeMounts")
    return {"pod.securityContext": pod["securityContext"], "replicas": dep["spec"]["replicas"],
            "volumes": pod["volumes"], "env": c["env"], **{k: c[k] for k in keep}}


def test_kustomize_deployment_matches_the_chart() -> None:
    chart = next(d for d in helm_template() if d["kind"] == "Deployment")
    kust = next(d for d in kustomize("config/default") if d["kind"] == "Deployment")
    assert container_settings(kust) == container_settings(chart)
    assert kust["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/ferry-dev/ferry:0.1.0"


SAMPLES = sorted((ROOT / "config" / "samples").glob("*.yaml"))


@pytest.mark.parametrize("path", [p for p in SAMPLES if p.name != "kustomization.yaml"], ids=lambda p: p.name)
def test_sample_is_valid(path: Path) -> None:
    for obj in docs(path.read_text()):
        if obj["apiVersion"].startswith("ferry.dev/"):
            assert cr_problems(obj) == [], path.name
        assert obj["metadata"]["namespace"] == "vms"


def test_samples_cover_the_documented_cases() -> None:
    objs = kustomize("config/samples")
    assert len(objs) == 7 and all(o["metadata"]["namespace"] == "vms" for o in objs)
    pools = {o["metadata"]["name"]: o for o in objs if o["kind"] == "HostPool"}
    vms = [o for o in objs if o["kind"] == "VirtualMachine"]
    assert {o["kind"] for o in objs} == {"HostPool", "HAPolicy", "VirtualMachine"}
    secret = yaml.safe_load((ROOT / "config/samples/libvirt-tls-secret.example.yaml").read_text())
    assert set(secret["stringData"]) == {"clientcert.pem", "clientkey.pem", "cacert.pem"}
    (pool,) = pools.values()
    assert pool["spec"]["libvirt"]["uriTemplate"].startswith("qemu+tls://")
    assert pool["spec"]["libvirt"]["credentialsSecret"] == secret["metadata"]["name"]
    for vm in vms:
        assert vm["spec"]["hostPool"] in pools
    disks = [d for vm in vms for d in vm["spec"].get("disks", [])]
    nics = [n for vm in vms for n in vm["spec"].get("networks", [])]
    assert any("image" in d for d in disks) and any("volume" in d for d in disks)
    assert any("bridge" in n for n in nics) and any("network" in n for n in nics)
    strategies = {vm["spec"].get("runStrategy", "Always") for vm in vms}
    assert {"Always", "RerunOnFailure", "Halted", "Manual"} <= strategies
    manual = [vm for vm in vms if vm["spec"].get("runStrategy") == "Manual"]
    assert all("ferry.dev/power" not in vm["metadata"].get("annotations", {}) for vm in manual), \
        "power belongs outside Git for Manual VMs"


def test_argocd_crds_are_protected_from_prune_and_delete() -> None:
    out = kustomize("deploy/argocd/crds")
    assert {d["metadata"]["name"] for d in out} == set(crd_files())
    for d in out:
        assert d["metadata"]["annotations"]["argocd.argoproj.io/sync-options"] == "Prune=false,Delete=false"


def test_argocd_applications_point_at_this_repository(tmp_path: Path) -> None:
    apps = docs((ROOT / "deploy/argocd/applications.yaml").read_text())
    assert [a["metadata"]["name"] for a in apps] == ["ferry-crds", "ferry", "vms"]
    for a in apps:
        assert a["apiVersion"] == "argoproj.io/v1alpha1" and a["kind"] == "Application"
        assert (ROOT / a["spec"]["source"]["path"]).is_dir(), a["spec"]["source"]["path"]
        assert "ServerSideApply=true" in a["spec"]["syncPolicy"]["syncOptions"]
    chart = apps[1]["spec"]["source"]
    assert chart["helm"]["skipCrds"] is True
    # The valuesObject must pass the chart's schema.
    values = tmp_path / "argocd-values.yaml"
    values.write_text(yaml.safe_dump(chart["helm"]["valuesObject"]))
    assert any(d["kind"] == "ServiceMonitor" for d in helm_template(str(values)))
