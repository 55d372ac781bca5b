"""The real `ferry controller` binary against an API server, behind a logging proxy: every
request the controller makes (watches, finalizers, status, Events, the leader Lease, a leader
hand-over) must be allowed by the RBAC the Helm chart renders with its default values.
tests/deploy.rs checks that those rules equal REQUIRED_PERMISSIONS, so together they prove the
table covers what the code calls.

On a real API server (where this machine has one) the chart's ServiceAccount and RBAC are
installed and the controller authenticates with a token minted for that ServiceAccount: the
server itself authorizes every request, and none may be refused (403). The in-repo stand-in has
no authorization (e2e/standin/README.md): there, and on the real server as well, the check is
also made here, by evaluating the rendered Roles and bindings for each logged request. No libvirt
host answers (the HostPool points at a closed port), so only the Kubernetes side of the
controller is exercised.

The binary: $FERRY_BIN, else $CARGO_TARGET_DIR/debug/ferry, else target/debug/ferry.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import CHART, ROOT, helm_template, logs, tool, wait_for

LEASE_NS = "ferry-system"
SA = ("ferry", "ferry-system")
# Non-resource URLs every authenticated client may read (system:discovery, system:public-info-viewer).
PUBLIC = ("/api", "/apis", "/version", "/openapi", "/healthz", "/livez", "/readyz")


def ferry_binary() -> Path:
    candidates = [os.environ.get("FERRY_BIN"),
                  os.path.join(os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")), "debug", "ferry")]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    message = "no ferry binary: cargo build --bin ferry, or set FERRY_BIN"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def parse(entry: dict[str, Any]) -> dict[str, Any] | None:
    """A logged request as authorization attributes, or None for a public non-resource URL."""
    path = entry["path"].rstrip("/")
    if path in PUBLIC or any(path.startswith(p + "/") for p in ("/openapi", "/version")) \
            or path in ("/api/v1", ) or (path.startswith("/apis/") and path.count("/") <= 3):
        return None
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    namespace = None
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource += "/" + rest[2]
    watch = entry["query"].get("watch") in ("1", "true")
    verb = {
        "GET": "get" if name else ("watch" if watch else "list"),
        "POST": "create", "PUT": "update", "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }[entry["method"]]
    return {"group": group, "resource": resource, "verb": verb, "namespace": namespace, "name": name}


def allowed(docs: list[dict[str, Any]], req: dict[str, Any]) -> bool:
    """Kubernetes RBAC for the controller's ServiceAccount, over the rendered manifests."""
    for b in docs:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and (s.get("name"), s.get("namespace")) == SA
                   for s in b.get("subjects", [])):
            continue
        binding_ns = b["metadata"].get("namespace")
        if b["kind"] == "RoleBinding" and req["namespace"] != binding_ns:
            continue
        ref = b["roleRef"]
        role = next(d for d in docs if d["kind"] == ref["kind"] and d["metadata"]["name"] == ref["name"]
                    and (ref["kind"] == "ClusterRole" or d["metadata"].get("namespace") == binding_ns))
        for rule in role.get("rules", []):
            if req["group"] not in rule.get("apiGroups", []) or req["resource"] not in rule.get("resources", []) \
                    or req["verb"] not in rule.get("verbs", []):
                continue
            names = rule.get("resourceNames")
            if names and (req["name"] not in names or req["verb"] in ("create", "list", "watch")):
                continue
            return True
    return False


@pytest.fixture
def cluster(api_server: dict[str, Any]) -> dict[str, Any]:
    """The API server plus a logging proxy for the controller (see audit_proxy.py)."""
    binary = ferry_binary()
    tmp, procs, upstream = api_server["tmp"], api_server["procs"], api_server["url"]
    ca = [str(api_server["ca"])] if api_server["ca"] else []
    procs.start([sys.executable, str(Path(__file__).with_name("audit_proxy.py")), upstream,
                 str(tmp / "requests.jsonl"), str(tmp / "proxy-ready"), *ca], tmp / "proxy.log")
    wait_for("the audit proxy", lambda: (tmp / "proxy-ready").exists(), 20)
    return {**api_server, "binary": binary, "proxy": (tmp / "proxy-ready").read_text().strip()}


def controller_kubeconfig(cluster: dict[str, Any]) -> Path:
    """A kubeconfig that reaches the server through the proxy: on a real server as the chart's
    ServiceAccount (its RBAC applied, a token minted), on the stand-in with its dummy token."""
    k, tmp, proxy = cluster["k"], cluster["tmp"], cluster["proxy"]
    path = tmp / "controller-kubeconfig"
    if not cluster["real"]:
        path.write_text(Path(cluster["kubeconfig"]).read_text().replace(cluster["url"], proxy))
        return path
    rendered = run_helm_template_rbac()
    k("apply", "-f", "-", stdin=rendered)
    token = k("create", "token", SA[0], "-n", SA[1], "--duration=1h").stdout.strip()
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "proxy", "cluster": {"server": proxy}}],
        "users": [{"name": "ferry", "user": {"token": token}}],
        "contexts": [{"name": "ferry", "context": {"cluster": "proxy", "user": "ferry"}}],
        "current-context": "ferry",
    }))
    return path


def run_helm_template_rbac() -> str:
    """The chart's ServiceAccount and RBAC (release `ferry` in ferry-system, default values)."""
    import subprocess
    p = subprocess.run([tool("helm"), "template", "ferry", str(CHART), "--namespace", SA[1],
                        "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_every_controller_request_is_allowed_by_the_chart(cluster: dict[str, Any]) -> None:
    k, tmp, procs, binary = cluster["k"], cluster["tmp"], cluster["procs"], cluster["binary"]
    k("apply", "--server-side", "-f", str(ROOT / "crds"))
    for crd in ("virtualmachines", "hostpools", "virtualmachinemigrations", "hapolicies"):
        k("wait", "--for=condition=Established", f"crd/{crd}.ferry.dev", "--timeout=20s")
    for ns in ("ferry-system", "vms"):
        k("create", "namespace", ns)
    (tmp / "objects.yaml").write_text("""
apiVersion: v1
kind: Node
metadata: {name: hv-1, labels: {ferry.dev/hypervisor: "true"}}
status:
  addresses: [{type: InternalIP, address: 127.0.0.1}]
  conditions: [{type: Ready, status: "True", reason: KubeletReady, message: ready,
                lastHeartbeatTime: "2026-01-01T00:00:00Z", lastTransitionTime: "2026-01-01T00:00:00Z"}]
---
apiVersion: ferry.dev/v1alpha1
kind: HostPool
metadata: {name: rack1, namespace: vms}
spec:
  nodeSelector: {matchLabels: {ferry.dev/hypervisor: "true"}}
  libvirt: {uriTemplate: "qemu+tcp://{address}:1/system", connectTimeoutSeconds: 2}
  storage: {pool: ferry}
---
apiVersion: ferry.dev/v1alpha1
kind: VirtualMachine
metadata: {name: web-1, namespace: vms}
spec:
  hostPool: rack1
  cpu: {cores: 1}
  memory: 256Mi
  disks: [{name: root, image: tiny.qcow2}]
---
apiVersion: ferry.dev/v1alpha1
kind: VirtualMachine
metadata: {name: lab-1, namespace: vms}
spec:
  hostPool: rack1
  runStrategy: Manual
  cpu: {cores: 1}
  memory: 256Mi
  disks: [{name: root, image: tiny.qcow2}]
""")
    k("create", "-f", str(tmp / "objects.yaml"))

    env = {"KUBECONFIG": str(controller_kubeconfig(cluster)), "FERRY_LEASE_NAMESPACE": LEASE_NS,
           "FERRY_LEASE_DURATION": "4", "FERRY_LEASE_GRACE": "1", "RUST_LOG": "info"}
    args = [str(binary), "controller", "--http-addr", "127.0.0.1:0", "--log-format", "json"]
    a = procs.start(args, tmp / "ferry-a.log", {**env, "POD_NAME": "ferry-a"})
    holder = lambda: k("get", "lease", "-n", LEASE_NS, "ferry-controller", "-o",  # noqa: E731
                       "jsonpath={.spec.holderIdentity}", ok=False).stdout.strip()
    wait_for("ferry-a to lead", lambda: holder() == "ferry-a", 30)
    b = procs.start(args, tmp / "ferry-b.log", {**env, "POD_NAME": "ferry-b"})

    def phase(name: str) -> str:
        return k("get", "fvm", "-n", "vms", name, "-o", "jsonpath={.status.phase}", ok=False).stdout.strip()

    def pool_ready() -> str:
        return k("get", "hp", "-n", "vms", "rack1", "-o",
                 "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}", ok=False).stdout.strip()

    wait_for("VM status", lambda: phase("web-1") and phase("lab-1"), 40)
    wait_for("HostPool status", pool_ready, 40)
    k("annotate", "fvm", "-n", "vms", "lab-1", "ferry.dev/restart=t1")
    k("delete", "fvm", "-n", "vms", "web-1", "--wait=false")
    wait_for("web-1 deleted (finalizer removed)",
             lambda: "NotFound" in k("get", "fvm", "-n", "vms", "web-1", ok=False).stderr, 40)

    # Hand-over: the leader stops cleanly, the standby takes the Lease and reconciles.
    procs.stop(a)
    assert a.returncode == 0, logs(tmp)
    wait_for("ferry-b to lead", lambda: holder() == "ferry-b", 30)
    k("annotate", "fvm", "-n", "vms", "lab-1", "ferry.dev/restart=t2", "--overwrite")
    time.sleep(3)
    procs.stop(b)
    assert b.returncode == 0, logs(tmp)

    entries = [json.loads(line) for line in (tmp / "requests.jsonl").read_text().splitlines() if line]
    # On a real server, the server's own verdict: nothing the controller asked for was refused.
    refused = sorted({f"{e['method']} {e['path']}" for e in entries if e.get("status") == 403})
    assert refused == [], "requests the API server refused (403):\n" + "\n".join(refused)
    reqs = [r for r in (parse(e) for e in entries) if r is not None]
    assert len(reqs) > 20, f"too few controller requests: {entries}"
    docs = helm_template()
    denied = sorted({json.dumps(r, sort_keys=True) for r in reqs if not allowed(docs, r)})
    assert denied == [], "requests the chart's RBAC would forbid:\n" + "\n".join(denied)

    seen = {(r["group"], r["resource"], r["verb"]) for r in reqs}
    for must in [("ferry.dev", "virtualmachines", "watch"), ("ferry.dev", "virtualmachines", "patch"),
                 ("ferry.dev", "virtualmachines/status", "patch"), ("ferry.dev", "hostpools/status", "patch"),
                 ("", "nodes", "watch"), ("events.k8s.io", "events", "create"),
                 ("coordination.k8s.io", "leases", "get"), ("coordination.k8s.io", "leases", "patch")]:
        assert must in seen, f"the scenario did not exercise {must}: {sorted(seen)}"
    granted = set()
    for d in docs:
        if d["kind"] in ("ClusterRole", "Role") and d["metadata"]["name"].endswith(("-controller", "-leader-election")):
            for rule in d["rules"]:
                granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    print("granted but not exercised here:", sorted(granted - seen))
