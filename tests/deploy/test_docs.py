"""The README and docs/ stay true: links resolve, every page is reachable from the README, the
supported Kubernetes versions follow from what the CRDs' CEL rules use, and the flags and commands
the binaries have are the ones documented.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import CHART, ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         ROOT / "deploy" / "argocd" / "README.md", ROOT / "e2e" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ +(.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"](docs/{p.name})" not in readme]
    assert missing == [], "add a row to the README's documentation table"


# Functions the CEL rules of CRDs may call, by the first Kubernetes minor whose API server accepts
# them in new rules. An API server compiles new rules against the CEL environment of the previous
# minor release (k8s.io/apiserver/pkg/cel/environment/base.go: DefaultCompatibilityVersion is
# n-1), so a library introduced at 1.28 (Quantity) is accepted from 1.29 on.
CEL_FUNCTIONS = {
    # the CEL standard library and macros, and Kubernetes' URLs, Regex and Lists libraries
    **{f: 25 for f in (
        "has", "all", "exists", "exists_one", "map", "filter", "size", "contains", "startsWith",
        "endsWith", "matches", "int", "uint", "double", "string", "bool", "bytes", "type",
        "duration", "timestamp", "dyn", "isSorted", "sum", "min", "max", "indexOf", "lastIndexOf",
        "find", "findAll", "url", "isURL", "getScheme", "getHost", "getHostname", "getPort",
        "getEscapedPath", "getQuery", "charAt", "lowerAscii", "upperAscii", "replace", "split",
        "substring", "trim", "join")},
    # Quantity and optional types: introduced 1.28
    **{f: 29 for f in (
        "isQuantity", "quantity", "compareTo", "isLessThan", "isGreaterThan", "add", "sub",
        "asInteger", "asApproximateFloat", "isInteger", "sign", "optional", "orValue", "hasValue",
        "value", "or")},
    # ext.Strings v2 and ext.Sets: introduced 1.29
    **{f: 30 for f in ("quote", "reverse", "format", "sets")},
    # IP and CIDR: introduced 1.30
    **{f: 31 for f in (
        "ip", "isIP", "cidr", "isCIDR", "family", "isCanonical", "isLoopback", "containsIP",
        "containsCIDR", "prefixLength", "masked")},
    # semver and image: introduced 1.33
    **{f: 34 for f in ("semver", "isSemver")},
}


def cel_rules() -> list[str]:
    rules = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for v in node.get("x-kubernetes-validations", []):
                rules.append(v["rule"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for crd in sorted((ROOT / "crds").glob("*.yaml")):
        walk(yaml.safe_load(crd.read_text()))
    return rules


def oldest_kubernetes_minor() -> int:
    used = set()
    for rule in cel_rules():
        without_strings = re.sub(r"'[^']*'|\"[^\"]*\"", "''", rule)
        used |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", without_strings))
    unknown = sorted(used - CEL_FUNCTIONS.keys())
    assert unknown == [], f"CEL functions {unknown} are not in CEL_FUNCTIONS: say from which Kubernetes minor they are accepted"
    return max(CEL_FUNCTIONS[f] for f in used)


def test_supported_kubernetes_versions_agree() -> None:
    assert cel_rules(), "the CRDs have CEL rules"
    minor = oldest_kubernetes_minor()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">=1.{minor}.0-0"
    assert f"| Kubernetes | 1.{minor} or newer |" in (ROOT / "docs" / "install.md").read_text()
    assert f"Kubernetes 1.{minor} or newer" in (ROOT / "README.md").read_text()
    check = (ROOT / "scripts" / "check-deploy.sh").read_text()
    floor = re.search(r'K8S_VERSIONS:-"(\S+)', check)
    assert floor and floor.group(1) == f"1.{minor}.0", "check-deploy.sh validates the chart at its floor"


def help_text(binary: str, *args: str) -> str:
    """`--help` of `ferry` (FERRY_BIN, default target/debug/ferry) or a binary beside it."""
    ferry = Path(os.environ.get("FERRY_BIN") or ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "debug" / "ferry")
    path = ferry.parent / binary
    if not path.exists():
        pytest.fail(f"{path} is missing: cargo build --bin {binary}")
    return subprocess.run([path, *args, "--help"], capture_output=True, text=True, timeout=30,
                          check=True).stdout


def test_controller_flags_are_documented() -> None:
    page = (ROOT / "docs" / "controller.md").read_text()
    flags = set(re.findall(r"(--[a-z][a-z-]+)", help_text("ferry", "controller"))) - {"--help"}
    assert flags
    assert sorted(f for f in flags if f"`{f}`" not in page) == []


def test_controller_help_names_every_controller() -> None:
    text = help_text("ferry")
    for kind in ("VirtualMachine", "HostPool", "VirtualMachineMigration", "HAPolicy"):
        assert re.search(rf"\b{kind}\b", text), f"`ferry --help` does not name the {kind} controller"


def test_plugin_commands_are_documented() -> None:
    text = help_text("kubectl-ferry")
    commands = re.findall(r"^  ([a-z][a-z-]*)  ", text.split("Commands:", 1)[1].split("Options:", 1)[0], re.M)
    commands = [c for c in commands if c != "help"]
    assert commands
    page = (ROOT / "docs" / "kubectl-plugin.md").read_text()
    assert [c for c in commands if f"kubectl ferry {c}" not in page] == []
