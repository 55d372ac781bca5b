"""Shared helpers for the deployment checks (scripts/check-deploy.sh runs this directory).

Tools come from $PATH, then /opt/ferry-tools/bin (scripts/setup.sh installs helm and kubectl
there). A missing tool skips the tests that need it, unless CI is set: then it fails them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ferry"
TOOLS = Path(os.environ.get("FERRY_TOOLS", "/opt/ferry-tools")) / "bin"


def tool(name: str) -> str:
    """Path of a command-line tool, or skip (fail under CI) when it is missing."""
    found = shutil.which(name) or (str(TOOLS / name) if (TOOLS / name).exists() else None)
    if found is None:
        message = f"{name} not found on PATH or in {TOOLS}: run scripts/setup.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; with ok=True its failure fails the test with its output."""
    p = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if ok and p.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def docs(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a stream."""
    return [d for d in yaml.safe_load_all(text) if d]


def helm_template(*values: str, namespace: str = "ferry-system", crds: bool = False,
                  sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Render the chart (release `ferry`) with the given values files."""
    args = [tool("helm"), "template", "ferry", str(CHART), "--namespace", namespace]
    if crds:
        args.append("--include-crds")
    for v in values:
        args += ["--values", v]
    for s in sets:
        args += ["--set", s]
    return docs(run(*args).stdout)


def crd_schemas() -> dict[str, dict[str, Any]]:
    """openAPIV3Schema of every ferry CRD (from crds/), by kind."""
    out = {}
    for f in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(f.read_text())
        version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
        out[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return out


def metrics_table() -> dict[str, tuple[str, set[str]]]:
    """Each metric ferry exports with its type and labels, from the table in
    docs/observability.md (src/metrics tests that the table and the registry agree)."""
    text = (ROOT / "docs" / "observability.md").read_text()
    rows = re.findall(r"^\| `(ferry_[a-z_]+)` \| (counter|gauge|histogram|info)\b[^|]*\|([^|]*)\|", text, re.M)
    assert rows, "no metrics table in docs/observability.md"
    return {name: (kind, set(re.findall(r"`([a-z_]+)`", labels))) for name, kind, labels in rows}


def exported_metrics() -> tuple[set[str], dict[str, str]]:
    """The series ferry exports (what queries can name), and each metric's type."""
    series: set[str] = set()
    table = metrics_table()
    for name, (kind, _) in table.items():
        # prometheus-client: histograms expose _bucket/_count/_sum; the table names counters
        # (with _total), gauges and info metrics as their samples are named.
        series |= {name + s for s in ("_bucket", "_count", "_sum")} if kind == "histogram" else {name}
    return series, {name: kind for name, (kind, _) in table.items()}


def cr_problems(obj: dict[str, Any]) -> list[str]:
    """What the API server would say about a ferry custom resource, short of CEL: schema errors,
    duplicate list-map keys (the stand-in's validation, e2e/standin/standin/schema.py) and unknown
    fields it would prune (kubectl's default fieldValidation=Strict rejects those)."""
    import copy
    import sys
    if str(ROOT / "e2e" / "standin") not in sys.path:
        sys.path.insert(0, str(ROOT / "e2e" / "standin"))
    from standin.schema import VersionSchema

    schema = VersionSchema(crd_schemas()[obj["kind"]])
    problems = [f"{field}: {msg}" for _, field, msg in schema.validate(obj, None)]
    problems += [f"unknown field {p}" for p in schema.prune(copy.deepcopy(obj))]
    if obj.get("apiVersion") != "ferry.dev/v1alpha1":
        problems.append(f"apiVersion {obj.get('apiVersion')}")
    return problems


class Procs:
    """Child processes, terminated (and reaped) at the end, failures included."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out = open(log, "ab")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})})
        self.children.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 15) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self) -> None:
        for p in reversed(self.children):
            self.stop(p, 5)


def wait_for(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = check()
        if v:
            return v
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def logs(tmp: Path) -> str:
    """The tail of every log file of a test's processes."""
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(tmp.glob("*.log")))


def real_api_server_available() -> bool:
    """Whether a real control plane can be started here (e2e/apiserver.sh), unless FERRY_API=standin."""
    if os.environ.get("FERRY_API") == "standin":
        return False
    return subprocess.run([str(ROOT / "e2e/apiserver.sh"), "find"], capture_output=True).returncode == 0


@pytest.fixture
def api_server() -> Iterator[dict[str, Any]]:
    """A fresh API server for one test: a real one (etcd, kube-apiserver and the controller
    manager on loopback, e2e/apiserver.sh) where this machine has a control plane, else the
    in-repo stand-in (e2e/standin); and `k`, kubectl against it as its administrator. `real`
    says which; `url` is its address and `ca` (real only) its CA certificate. Everything started
    is stopped and removed at the end, failures included."""
    kubectl = tool("kubectl")
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="ferry-deploy-") as d:
        tmp = Path(d)
        apiserver = tmp / "apiserver"
        real = real_api_server_available()
        try:
            if real:
                p = subprocess.run([str(ROOT / "e2e/apiserver.sh"), "start", str(apiserver), str(os.getpid())],
                                   capture_output=True, text=True, timeout=300)
                if p.returncode != 0:
                    pytest.fail(f"the real API server did not start:\n{p.stderr}")
                kubeconfig = Path(p.stdout.strip())
                config = yaml.safe_load(kubeconfig.read_text())
                cluster = config["clusters"][0]["cluster"]
                url = cluster["server"]
                ca = tmp / "ca.crt"
                import base64
                ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
            else:
                server = procs.start([sys.executable, str(ROOT / "e2e/standin/kube_standin.py"), "--port", "0",
                                      "--kubeconfig-out", str(tmp / "kubeconfig"), "--ready-file", str(tmp / "ready")],
                                     tmp / "standin.log")
                wait_for("the API stand-in", lambda: (tmp / "ready").exists() or server.poll() is not None, 20)
                url = (tmp / "ready").read_text().strip()
                kubeconfig, ca = tmp / "kubeconfig", None
            env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

            def k(*args: str, ok: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
                p = subprocess.run([kubectl, *args], capture_output=True, text=True, timeout=60, env=env, input=stdin)
                if ok and p.returncode != 0:
                    pytest.fail(f"kubectl {' '.join(args)}: {p.stderr}\n{logs(tmp)}")
                return p

            yield {"k": k, "tmp": tmp, "procs": procs, "url": url, "kubeconfig": kubeconfig, "real": real, "ca": ca}
        finally:
            procs.close()
            if real:
                subprocess.run([str(ROOT / "e2e/apiserver.sh"), "stop", str(apiserver)], timeout=120)
