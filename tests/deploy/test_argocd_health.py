"""Argo CD health checks in deploy/argocd/health/: every case of each health_test.yaml, run the
way Argo CD runs them (Lua 5.1 via lupa; `obj` a table decoded from the JSON object; only the
libraries Argo CD opens), and the copy of the scripts in the argocd-cm patch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT, cr_problems

lupa = pytest.importorskip("lupa.lua51", reason="pip install lupa (scripts/setup.sh does)")

HEALTH = ROOT / "deploy" / "argocd" / "health"
CHECKS = sorted(p for p in HEALTH.iterdir() if (p / "health.lua").exists())
# Phases that are not in the CRD yet (the health check already knows them).
FUTURE = {("ferry.dev_VirtualMachine", "migrating"), ("ferry.dev_VirtualMachine", "migrating-not-ready")}


def to_lua(rt: Any, value: Any) -> Any:
    """JSON value -> Lua value as Argo CD builds it: objects and arrays become tables (arrays
    1-based), numbers stay numbers, null becomes nil."""
    if isinstance(value, dict):
        t = rt.table()
        for k, v in value.items():
            if v is not None:
                t[k] = to_lua(rt, v)
        return t
    if isinstance(value, list):
        t = rt.table()
        for i, v in enumerate(value, start=1):
            if v is not None:
                t[i] = to_lua(rt, v)
        return t
    return value


def health(script: str, obj: dict[str, Any]) -> dict[str, Any]:
    rt = lupa.LuaRuntime(unpack_returned_tuples=True)
    g = rt.globals()
    # Argo CD opens base, package, table, string, math and coroutine; nothing else is available.
    for name in ("io", "os", "debug", "dofile", "loadfile"):
        g[name] = None
    assert rt.eval("_VERSION") == "Lua 5.1"
    g.obj = to_lua(rt, obj)
    hs = rt.execute(script)
    assert hs is not None, "the script returned nothing"
    return {k: hs[k] for k in ("status", "message") if hs[k] is not None}


def cases() -> list[Any]:
    out = []
    for check in CHECKS:
        spec = yaml.safe_load((check / "health_test.yaml").read_text())
        for case in spec["tests"]:
            out.append(pytest.param(check, case, id=f"{check.name}:{Path(case['inputPath']).stem}"))
    return out


@pytest.mark.parametrize("check,case", cases())
def test_health_case(check: Path, case: dict[str, Any]) -> None:
    obj = yaml.safe_load((check / case["inputPath"]).read_text())
    got = health((check / "health.lua").read_text(), obj)
    assert got == case["healthStatus"]


@pytest.mark.parametrize("check", CHECKS, ids=lambda p: p.name)
def test_every_testdata_file_is_used_and_matches_the_crd(check: Path) -> None:
    spec = yaml.safe_load((check / "health_test.yaml").read_text())
    used = {Path(c["inputPath"]).name for c in spec["tests"]}
    present = {p.name for p in (check / "testdata").glob("*.yaml")}
    assert used == present
    for name in sorted(present):
        if (check.name, Path(name).stem) in FUTURE:
            continue
        obj = yaml.safe_load((check / "testdata" / name).read_text())
        assert obj["kind"] == check.name.split("_", 1)[1]
        assert cr_problems(obj) == [], name


def test_there_is_a_check_per_kind_that_reports_health() -> None:
    assert [c.name for c in CHECKS] == [
        "ferry.dev_HAPolicy", "ferry.dev_HostPool", "ferry.dev_VirtualMachine",
        "ferry.dev_VirtualMachineMigration"]


def embedded(text: str) -> dict[str, str]:
    """Health scripts embedded as `resource.customizations.health.<key>: |` blocks in YAML."""
    out = {}
    for m in re.finditer(r"^(?P<indent> *)resource\.customizations\.health\.(?P<key>[\w.]+): \|\n", text, re.M):
        body_indent = None
        lines = []
        for line in text[m.end():].splitlines():
            if line.strip() == "":
                lines.append("")
                continue
            indent = len(line) - len(line.lstrip())
            if body_indent is None:
                body_indent = indent
            if indent < body_indent or line.lstrip().startswith("```"):
                break
            lines.append(line[body_indent:])
        out[m.group("key")] = "\n".join(lines).rstrip("\n") + "\n"
    return out


def test_the_patch_holds_every_script_unchanged() -> None:
    path = "deploy/argocd/argocd-cm-patch.yaml"
    found = embedded((ROOT / path).read_text())
    assert found, f"{path} embeds no health check"
    for key, body in found.items():
        assert body == (HEALTH / key / "health.lua").read_text(), f"{path}: {key} differs from health.lua"
    assert sorted(found) == [c.name for c in CHECKS], path


def test_argocd_cm_patch_is_a_configmap_patch() -> None:
    cm = yaml.safe_load((ROOT / "deploy/argocd/argocd-cm-patch.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    assert set(cm["data"]) == {f"resource.customizations.health.{c.name}" for c in CHECKS}
