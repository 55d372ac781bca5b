"""Tests of the Kubernetes API stand-in over real HTTP.

Run with the venv's pytest:  /opt/ferry-venv/bin/pytest -q e2e/standin

One stand-in process serves the whole module (a separate one checks SIGTERM); every test works in
its own namespace so tests do not see each other's objects.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Iterator
from urllib.parse import urlencode, urlparse

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "kube_standin.py")
GROUP = "test.ferry.dev"
WIDGETS = f"/apis/{GROUP}/v1"

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"],
                  "categories": ["testcat"]},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "additionalPrinterColumns": [
                {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "required": ["spec"],
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 10},
                            "mode": {"type": "string", "enum": ["A", "B"], "nullable": True},
                            "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 10},
                            "immutable": {"type": "string", "x-kubernetes-validations": [
                                {"rule": "self == oldSelf", "message": "immutable cannot be changed"}]},
                            "items": {
                                "type": "array", "maxItems": 3,
                                "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                                "items": {"type": "object", "required": ["name"], "properties": {
                                    "name": {"type": "string"},
                                    "value": {"type": "string"},
                                    "port": {"x-kubernetes-int-or-string": True},
                                    "fixed": {"type": "string", "x-kubernetes-validations": [
                                        {"rule": "self == oldSelf"}]},
                                }},
                            },
                            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                            "selector": {"type": "object", "additionalProperties": {"type": "string"}},
                            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    },
                    "status": {
                        "type": "object",
                        "properties": {
                            "phase": {"type": "string"},
                            "observedGeneration": {"type": "integer"},
                            "conditions": {
                                "type": "array", "x-kubernetes-list-type": "map",
                                "x-kubernetes-list-map-keys": ["type"],
                                "items": {"type": "object", "required": ["type", "status"], "properties": {
                                    "type": {"type": "string"}, "status": {"type": "string"},
                                    "reason": {"type": "string"}}},
                            },
                        },
                    },
                },
            }},
        }],
    },
}

GADGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"gadgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Cluster",
        "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object", "properties": {
                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            }}}}],
    },
}


# --------------------------------------------------------------------------------------------
# A tiny synchronous client
# --------------------------------------------------------------------------------------------


class Kube:
    """HTTP helper: ``call`` returns ``(status, body)``; ``ok`` asserts a 2xx."""

    def __init__(self, url: str) -> None:
        u = urlparse(url)
        self.host, self.port = u.hostname, u.port

    def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json",
             query: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        if query:
            path += "?" + urlencode(query)
        data = None if body is None else (body if isinstance(body, (str, bytes)) else json.dumps(body))
        hdrs = {"Content-Type": ctype, "Accept": "application/json"}
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode()

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, out = self.call(method, path, body, **kw)
        assert 200 <= status < 300, (status, out)
        return out

    def watch(self, path: str, query: dict[str, Any], timeout: float = 10) -> "WatchStream":
        return WatchStream(self, path, query, timeout)


class WatchStream:
    """A streaming watch; ``next()`` returns one event or raises ``TimeoutError``."""

    def __init__(self, kube: Kube, path: str, query: dict[str, Any], timeout: float) -> None:
        self.conn = http.client.HTTPConnection(kube.host, kube.port, timeout=timeout)
        self.conn.request("GET", path + "?" + urlencode(dict(query, watch="true")))
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.read()

    def next(self) -> dict[str, Any] | None:
        try:
            line = self.resp.readline()
        except socket.timeout as e:
            raise TimeoutError("no watch event in time") from e
        if not line:
            return None
        return json.loads(line)

    def events(self, n: int, skip_bookmarks: bool = True) -> list[dict[str, Any]]:
        out = []
        while len(out) < n:
            ev = self.next()
            assert ev is not None, f"watch ended after {len(out)} of {n} events"
            if skip_bookmarks and ev["type"] == "BOOKMARK":
                continue
            out.append(ev)
        return out

    def close(self) -> None:
        self.conn.close()


def start_standin(tmp: str, *extra: str) -> tuple[subprocess.Popen, str]:
    ready = os.path.join(tmp, "ready")
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "--port", "0", "--ready-file", ready,
         "--kubeconfig-out", os.path.join(tmp, "kubeconfig"), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 15
    while not os.path.exists(ready):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "exited"
        assert time.monotonic() < deadline, "stand-in not ready in 15 s"
        time.sleep(0.05)
    with open(ready) as f:
        return proc, f.read().strip()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Kube, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_standin(tmp, "--bookmark-interval", "0.5", "--history", "2000")
        try:
            kube = Kube(url)
            for crd in (WIDGET_CRD, GADGET_CRD):
                kube.ok("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
            yield kube, tmp
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


@pytest.fixture()
def kube(server: tuple[Kube, str]) -> Kube:
    return server[0]


@pytest.fixture()
def ns(kube: Kube) -> str:
    name = "t-" + uuid.uuid4().hex[:8]
    kube.ok("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def widget(name: str, size: int = 1, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name},
            "spec": dict({"size": size}, **spec)}


def wpath(ns: str, name: str = "", sub: str = "") -> str:
    p = f"{WIDGETS}/namespaces/{ns}/widgets"
    if name:
        p += f"/{name}"
    if sub:
        p += f"/{sub}"
    return p


def cm(name: str, labels: dict[str, str] | None = None, data: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}},
            "data": data or {}}


MERGE = "application/merge-patch+json"
JSONP = "application/json-patch+json"
SMP = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"


# --------------------------------------------------------------------------------------------
# Discovery and basics
# --------------------------------------------------------------------------------------------


def test_discovery(kube: Kube) -> None:
    assert kube.ok("GET", "/version")["major"] == "1"
    assert kube.call("GET", "/healthz")[0] == 200
    assert kube.ok("GET", "/api")["versions"] == ["v1"]
    core = {r["name"]: r for r in kube.ok("GET", "/api/v1")["resources"]}
    for name in ("namespaces", "nodes", "nodes/status", "secrets", "configmaps", "events", "pods"):
        assert name in core
    assert core["namespaces"]["namespaced"] is False and core["configmaps"]["namespaced"] is True
    groups = {g["name"]: g for g in kube.ok("GET", "/apis")["groups"]}
    for g in ("events.k8s.io", "coordination.k8s.io", "apiextensions.k8s.io", GROUP):
        assert g in groups
    assert groups[GROUP]["preferredVersion"]["version"] == "v1"
    rl = {r["name"]: r for r in kube.ok("GET", WIDGETS)["resources"]}
    w = rl["widgets"]
    assert w["kind"] == "Widget" and w["namespaced"] and w["shortNames"] == ["wd"]
    assert w["categories"] == ["testcat"] and "watch" in w["verbs"] and "patch" in w["verbs"]
    assert rl["widgets/status"]["verbs"] == ["get", "patch", "update"]
    assert rl["gadgets"]["namespaced"] is False and "gadgets/status" not in rl
    assert kube.call("GET", "/apis/nope.example/v1")[0] == 404


def test_crd_is_established_and_has_defaults(kube: Kube) -> None:
    crd = kube.ok("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{GROUP}")
    conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conds == {"NamesAccepted": "True", "Established": "True"}
    assert crd["status"]["acceptedNames"]["listKind"] == "WidgetList"
    assert crd["status"]["storedVersions"] == ["v1"]
    assert crd["metadata"]["generation"] == 1


def test_create_get_list_and_errors(kube: Kube, ns: str) -> None:
    created = kube.ok("POST", wpath(ns), widget("a"))
    meta = created["metadata"]
    assert meta["namespace"] == ns and meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0
    assert kube.ok("GET", wpath(ns, "a"))["metadata"]["uid"] == meta["uid"]
    status, body = kube.call("POST", wpath(ns), widget("a"))
    assert status == 409 and body["kind"] == "Status" and body["reason"] == "AlreadyExists"
    assert body["message"] == f'widgets.{GROUP} "a" already exists'
    status, body = kube.call("GET", wpath(ns, "missing"))
    assert status == 404 and body["reason"] == "NotFound" and body["details"]["name"] == "missing"
    assert body["message"] == f'widgets.{GROUP} "missing" not found'
    status, body = kube.call("GET", "/api/v1/namespaces/default/configmaps/nope")
    assert status == 404 and body["message"] == 'configmaps "nope" not found'
    lst = kube.ok("GET", wpath(ns))
    assert lst["kind"] == "WidgetList" and [i["metadata"]["name"] for i in lst["items"]] == ["a"]
    assert int(lst["metadata"]["resourceVersion"]) >= int(meta["resourceVersion"])
    # all-namespaces list, limit ignored but a list resourceVersion returned
    allns = kube.ok("GET", f"{WIDGETS}/widgets", query={"limit": "1"})
    assert any(i["metadata"]["namespace"] == ns for i in allns["items"]) and allns["metadata"]["resourceVersion"]
    # create in a namespace that does not exist
    status, body = kube.call("POST", wpath("no-such-ns"), widget("x"))
    assert status == 404 and body["message"] == 'namespaces "no-such-ns" not found'
    # invalid names
    status, body = kube.call("POST", wpath(ns), widget("Bad_Name"))
    assert status == 422 and body["reason"] == "Invalid" and body["details"]["causes"][0]["field"] == "metadata.name"
    status, body = kube.call("POST", wpath(ns), {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {},
                                                 "spec": {"size": 1}})
    assert status == 422 and "name or generateName is required" in body["message"]
    # label and annotation syntax
    for meta in ({"labels": {"ok": "bad value!"}}, {"labels": {"bad key!": "v"}}, {"annotations": {"-x": "v"}},
                 {"labels": {"a": "x" * 64}}, {"labels": {"a": 1}}):
        body = widget("lbl")
        body["metadata"].update(meta)
        status, out = kube.call("POST", wpath(ns), body)
        assert status == 422 and out["details"]["causes"][0]["field"].startswith("metadata."), (meta, out)
    body = widget("lbl")
    body["metadata"].update({"labels": {"ferry.dev/host": "true", "empty": ""}, "annotations": {"a/b": "any: thing"}})
    kube.ok("POST", wpath(ns), body)
    # kind mismatch
    status, body = kube.call("POST", wpath(ns), dict(widget("k"), kind="Gadget"))
    assert status == 400 and body["reason"] == "BadRequest"


def test_generate_name(kube: Kube, ns: str) -> None:
    body = widget("")
    body["metadata"] = {"generateName": "gen-"}
    a = kube.ok("POST", wpath(ns), body)["metadata"]["name"]
    b = kube.ok("POST", wpath(ns), body)["metadata"]["name"]
    assert a.startswith("gen-") and len(a) == 9 and a != b


def test_resource_versions_are_global_and_increasing(kube: Kube, ns: str) -> None:
    rvs = []
    for i in range(5):
        rvs.append(int(kube.ok("POST", f"/api/v1/namespaces/{ns}/configmaps", cm(f"c{i}"))["metadata"]["resourceVersion"]))
        rvs.append(int(kube.ok("POST", wpath(ns), widget(f"w{i}"))["metadata"]["resourceVersion"]))
    assert rvs == sorted(rvs) and len(set(rvs)) == len(rvs)
    assert isinstance(kube.ok("GET", wpath(ns, "w0"))["metadata"]["resourceVersion"], str)


# --------------------------------------------------------------------------------------------
# Optimistic concurrency, generation, status subresource
# --------------------------------------------------------------------------------------------


def test_stale_resource_version_conflicts(kube: Kube, ns: str) -> None:
    obj = kube.ok("POST", wpath(ns), widget("c"))
    obj["spec"]["size"] = 2
    updated = kube.ok("PUT", wpath(ns, "c"), obj)
    assert updated["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]
    obj["spec"]["size"] = 3  # still carries the old resourceVersion
    status, body = kube.call("PUT", wpath(ns, "c"), obj)
    assert status == 409 and body["reason"] == "Conflict"
    assert body["message"].startswith(f'Operation cannot be fulfilled on widgets.{GROUP} "c": the object has been modified')
    status, _ = kube.call("PATCH", wpath(ns, "c"), {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                                                    "spec": {"size": 4}}, ctype=MERGE)
    assert status == 409
    status, _ = kube.call("PUT", wpath(ns, "c", "status"), dict(obj, status={"phase": "x"}))
    assert status == 409
    # without a resourceVersion a PUT is unconditional
    del obj["metadata"]["resourceVersion"]
    assert kube.ok("PUT", wpath(ns, "c"), obj)["spec"]["size"] == 3
    # PUT of a missing object is 404 (no create on update)
    assert kube.call("PUT", wpath(ns, "nope"), widget("nope"))[0] == 404


def test_generation_rules_with_status_subresource(kube: Kube, ns: str) -> None:
    obj = kube.ok("POST", wpath(ns), dict(widget("g"), status={"phase": "ignored"}))
    assert obj["metadata"]["generation"] == 1 and "status" not in obj, "status is dropped on create"
    obj = kube.ok("PATCH", wpath(ns, "g"), {"metadata": {"labels": {"a": "b"}, "annotations": {"x": "y"}}}, ctype=MERGE)
    assert obj["metadata"]["generation"] == 1, "metadata changes do not bump generation"
    obj = kube.ok("PATCH", wpath(ns, "g", "status"), {"status": {"phase": "Running"}, "spec": {"size": 9},
                                                       "metadata": {"labels": {"c": "d"}}}, ctype=MERGE)
    assert obj["metadata"]["generation"] == 1 and obj["status"]["phase"] == "Running"
    assert obj["spec"]["size"] == 1, "/status ignores spec" and "c" not in obj["metadata"]["labels"]
    obj = kube.ok("PATCH", wpath(ns, "g"), {"spec": {"size": 5}, "status": {"phase": "Hacked"}}, ctype=MERGE)
    assert obj["metadata"]["generation"] == 2 and obj["status"]["phase"] == "Running", "main resource ignores status"
    rv = obj["metadata"]["resourceVersion"]
    again = kube.ok("PATCH", wpath(ns, "g"), {"spec": {"size": 5}}, ctype=MERGE)
    assert again["metadata"]["resourceVersion"] == rv and again["metadata"]["generation"] == 2, "no-op write"
    st = kube.ok("GET", wpath(ns, "g", "status"))
    assert st["status"]["phase"] == "Running"


def test_generation_without_status_subresource(kube: Kube) -> None:
    name = "g-" + uuid.uuid4().hex[:6]
    path = f"{WIDGETS}/gadgets"
    obj = kube.ok("POST", path, {"apiVersion": f"{GROUP}/v1", "kind": "Gadget", "metadata": {"name": name},
                                 "spec": {"a": 1}, "status": {"s": 1}})
    assert obj["status"] == {"s": 1} and obj["metadata"]["generation"] == 1
    obj = kube.ok("PATCH", f"{path}/{name}", {"status": {"s": 2}}, ctype=MERGE)
    assert obj["metadata"]["generation"] == 2, "without a status subresource status is part of the spec"
    assert kube.call("GET", f"{path}/{name}/status")[0] == 404
    # built-in kinds without generation
    c = kube.ok("POST", "/api/v1/namespaces/default/configmaps", cm("gen-" + name))
    assert "generation" not in c["metadata"]


# --------------------------------------------------------------------------------------------
# Finalizers and deletion
# --------------------------------------------------------------------------------------------


def test_finalizer_deletion_flow(kube: Kube, ns: str) -> None:
    body = widget("f")
    body["metadata"]["finalizers"] = ["test.ferry.dev/cleanup"]
    created = kube.ok("POST", wpath(ns), body)
    w = kube.watch(wpath(ns), {"resourceVersion": created["metadata"]["resourceVersion"], "allowWatchBookmarks": "true"})
    deleting = kube.ok("DELETE", wpath(ns, "f"))
    assert deleting["metadata"]["deletionTimestamp"] and deleting["metadata"]["generation"] == 2
    assert kube.ok("GET", wpath(ns, "f"))["metadata"]["deletionTimestamp"]
    again = kube.ok("DELETE", wpath(ns, "f"))
    assert again["metadata"]["resourceVersion"] == deleting["metadata"]["resourceVersion"], "second delete is a no-op"
    status, body = kube.call("PATCH", wpath(ns, "f"), [{"op": "add", "path": "/metadata/finalizers/-", "value": "x/y"}],
                             ctype=JSONP)
    assert status == 422 and "no new finalizers" in body["message"]
    # kube-runtime's finalizer() removal: test + remove
    kube.ok("PATCH", wpath(ns, "f"), [{"op": "test", "path": "/metadata/finalizers/0", "value": "test.ferry.dev/cleanup"},
                                      {"op": "remove", "path": "/metadata/finalizers/0"}], ctype=JSONP)
    assert kube.call("GET", wpath(ns, "f"))[0] == 404
    evs = w.events(2)
    w.close()
    assert [e["type"] for e in evs] == ["MODIFIED", "DELETED"]
    assert evs[0]["object"]["metadata"]["deletionTimestamp"]
    assert int(evs[1]["object"]["metadata"]["resourceVersion"]) > int(evs[0]["object"]["metadata"]["resourceVersion"])


def test_delete_without_finalizers_and_preconditions(kube: Kube, ns: str) -> None:
    c = kube.ok("POST", f"/api/v1/namespaces/{ns}/configmaps", cm("d"))
    status, body = kube.call("DELETE", f"/api/v1/namespaces/{ns}/configmaps/d",
                             {"preconditions": {"uid": "not-the-uid"}})
    assert status == 409
    out = kube.ok("DELETE", f"/api/v1/namespaces/{ns}/configmaps/d",
                  {"preconditions": {"uid": c["metadata"]["uid"]}, "propagationPolicy": "Foreground"})
    assert out["kind"] == "Status" and out["status"] == "Success"
    assert kube.call("DELETE", f"/api/v1/namespaces/{ns}/configmaps/d")[0] == 404


def test_dry_run_and_delete_collection(kube: Kube, ns: str) -> None:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    before = kube.ok("GET", base)["metadata"]["resourceVersion"]
    out = kube.ok("POST", base, cm("dry"), query={"dryRun": "All"})
    assert out["metadata"]["name"] == "dry" and kube.call("GET", f"{base}/dry")[0] == 404
    assert kube.call("POST", base, cm("dry"), query={"dryRun": "Bogus"})[0] == 400
    kube.ok("POST", base, cm("k1", {"del": "yes"}))
    kube.ok("POST", base, cm("k2", {"del": "yes"}))
    kube.ok("POST", base, cm("k3", {"del": "no"}))
    kube.ok("PATCH", f"{base}/k1", {"data": {"x": "y"}}, ctype=MERGE, query={"dryRun": "All"})
    assert "data" not in kube.ok("GET", f"{base}/k1") or not kube.ok("GET", f"{base}/k1")["data"]
    out = kube.ok("DELETE", base, query={"labelSelector": "del=yes"})
    assert sorted(i["metadata"]["name"] for i in out["items"]) == ["k1", "k2"]
    assert names(kube.ok("GET", base)) == ["k3"]
    assert int(kube.ok("GET", base)["metadata"]["resourceVersion"]) > int(before)
    status, body = kube.call("DELETE", "/api/v1/namespaces/default")
    assert status == 403 and body["reason"] == "Forbidden"


def test_owner_references_are_garbage_collected(kube: Kube, ns: str) -> None:
    owner = kube.ok("POST", wpath(ns), widget("owner"))
    dep = cm("dep")
    dep["metadata"]["ownerReferences"] = [{"apiVersion": f"{GROUP}/v1", "kind": "Widget", "name": "owner",
                                           "uid": owner["metadata"]["uid"]}]
    kube.ok("POST", f"/api/v1/namespaces/{ns}/configmaps", dep)
    kube.ok("DELETE", wpath(ns, "owner"))
    deadline = time.monotonic() + 5
    while kube.call("GET", f"/api/v1/namespaces/{ns}/configmaps/dep")[0] != 404:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_namespace_deletion_waits_for_contents(kube: Kube) -> None:
    name = "nsdel-" + uuid.uuid4().hex[:6]
    kube.ok("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    kube.ok("POST", f"/api/v1/namespaces/{name}/configmaps", cm("plain"))
    held = widget("held")
    held["metadata"]["finalizers"] = ["x.dev/hold"]
    kube.ok("POST", wpath(name), held)
    out = kube.ok("DELETE", f"/api/v1/namespaces/{name}")
    assert out["status"]["phase"] == "Terminating"
    assert kube.call("GET", f"/api/v1/namespaces/{name}/configmaps/plain")[0] == 404
    assert kube.ok("GET", wpath(name, "held"))["metadata"]["deletionTimestamp"]
    status, body = kube.call("POST", f"/api/v1/namespaces/{name}/configmaps", cm("late"))
    assert status == 403 and "being terminated" in body["message"]
    kube.ok("PATCH", wpath(name, "held"), {"metadata": {"finalizers": None}}, ctype=MERGE)
    assert kube.call("GET", f"/api/v1/namespaces/{name}")[0] == 404


def test_crd_delete_and_recreate(kube: Kube) -> None:
    crd = json.loads(json.dumps(GADGET_CRD).replace("gadget", "doohickey").replace("Gadget", "Doohickey"))
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    kube.ok("POST", path, crd)
    kube.ok("POST", f"{WIDGETS}/doohickeys", {"apiVersion": f"{GROUP}/v1", "kind": "Doohickey",
                                              "metadata": {"name": "one", "finalizers": ["x/y"]}})
    kube.ok("DELETE", f"{path}/doohickeys.{GROUP}")
    assert kube.ok("GET", f"{path}/doohickeys.{GROUP}")["metadata"]["deletionTimestamp"], "waits for instances"
    kube.ok("PATCH", f"{WIDGETS}/doohickeys/one", {"metadata": {"finalizers": []}}, ctype=MERGE)
    assert kube.call("GET", f"{path}/doohickeys.{GROUP}")[0] == 404
    assert kube.call("GET", f"{WIDGETS}/doohickeys")[0] == 404
    assert "doohickeys" not in {r["name"] for r in kube.ok("GET", WIDGETS)["resources"]}
    bad = json.loads(json.dumps(crd))
    bad["metadata"]["name"] = "wrong.name"
    status, body = kube.call("POST", path, bad)
    assert status == 422 and "spec.names.plural" in body["message"]


# --------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------


def test_json_patch_operations_and_test_failure(kube: Kube, ns: str) -> None:
    kube.ok("POST", wpath(ns), widget("j", tags=["a"]))
    out = kube.ok("PATCH", wpath(ns, "j"), [
        {"op": "test", "path": "/metadata/finalizers", "value": None},  # missing member == null
        {"op": "add", "path": "/metadata/finalizers", "value": ["x.dev/f"]},
        {"op": "add", "path": "/spec/tags/-", "value": "b"},
        {"op": "replace", "path": "/spec/size", "value": 2},
        {"op": "add", "path": "/spec/name", "value": "abc"},
        {"op": "move", "from": "/spec/name", "path": "/spec/mode"},
        {"op": "replace", "path": "/spec/mode", "value": "A"},
        {"op": "copy", "from": "/spec/tags/0", "path": "/spec/tags/-"},
        {"op": "remove", "path": "/spec/tags/2"},
    ], ctype=JSONP)
    assert out["metadata"]["finalizers"] == ["x.dev/f"] and out["spec"]["tags"] == ["a", "b"]
    assert out["spec"]["size"] == 2 and out["spec"]["mode"] == "A" and "name" not in out["spec"]
    rv = out["metadata"]["resourceVersion"]
    for ops in (
        [{"op": "test", "path": "/metadata/finalizers/0", "value": "other"}],
        [{"op": "test", "path": "/metadata/finalizers", "value": None}],
        [{"op": "remove", "path": "/spec/missing"}],
        [{"op": "replace", "path": "/spec/nothing", "value": 1}],
        [{"op": "add", "path": "/no/such/parent", "value": 1}],
        [{"op": "test", "path": "/spec/size", "value": True}],
    ):
        status, body = kube.call("PATCH", wpath(ns, "j"), ops, ctype=JSONP)
        assert status == 422 and body["kind"] == "Status" and body["reason"] == "Invalid", (ops, status, body)
    assert kube.ok("GET", wpath(ns, "j"))["metadata"]["resourceVersion"] == rv
    kube.ok("PATCH", wpath(ns, "j"), [{"op": "test", "path": "/spec/size", "value": 2.0}], ctype=JSONP)


def test_merge_patch_null_deletes(kube: Kube, ns: str) -> None:
    kube.ok("POST", wpath(ns), widget("m", mode="A", selector={"a": "1", "b": "2"}))
    out = kube.ok("PATCH", wpath(ns, "m"), {"spec": {"mode": None, "selector": {"a": None}}}, ctype=MERGE)
    assert "mode" not in out["spec"] and out["spec"]["selector"] == {"b": "2"}


def test_strategic_merge_patch(kube: Kube, ns: str) -> None:
    status, body = kube.call("PATCH", wpath(ns, "x"), {"spec": {}}, ctype=SMP)
    assert status == 415 and body["reason"] == "UnsupportedMediaType", "like the real server for custom resources"
    c = cm("s")
    c["metadata"]["finalizers"] = ["a/b"]
    kube.ok("POST", f"/api/v1/namespaces/{ns}/configmaps", c)
    out = kube.ok("PATCH", f"/api/v1/namespaces/{ns}/configmaps/s",
                  {"metadata": {"finalizers": ["c/d"]}, "data": {"k": "v"}}, ctype=SMP)
    assert out["metadata"]["finalizers"] == ["a/b", "c/d"], "finalizers merge as a set"
    out = kube.ok("PATCH", f"/api/v1/namespaces/{ns}/configmaps/s",
                  {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a/b", "c/d"]}}, ctype=SMP)
    assert "finalizers" not in out["metadata"]


def test_node_ready_flip_and_cordon(kube: Kube) -> None:
    name = "node-" + uuid.uuid4().hex[:6]
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"ferry.dev/host": "true"}},
            "status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady"},
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"}],
                "addresses": [{"type": "InternalIP", "address": "10.250.0.11"}]}}
    created = kube.ok("POST", "/api/v1/nodes", node)
    assert created["status"]["conditions"][0]["status"] == "True", "nodes keep status on create"
    out = kube.ok("PATCH", f"/api/v1/nodes/{name}/status",
                  {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}},
                  ctype=SMP)
    conds = {c["type"]: c["status"] for c in out["status"]["conditions"]}
    assert conds == {"Ready": "False", "MemoryPressure": "False"}, "conditions merge by type"
    out = kube.ok("PATCH", f"/api/v1/nodes/{name}", {"spec": {"unschedulable": True}}, ctype=SMP)
    assert out["spec"]["unschedulable"] is True
    tbl = kube.ok("GET", f"/api/v1/nodes/{name}", headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    assert tbl["rows"][0]["cells"][:2] == [name, "NotReady,SchedulingDisabled"]
    lst = kube.ok("GET", "/api/v1/nodes", query={"fieldSelector": "spec.unschedulable=true"})
    assert name in [n["metadata"]["name"] for n in lst["items"]]


# --------------------------------------------------------------------------------------------
# Server-side apply
# --------------------------------------------------------------------------------------------


def apply(kube: Kube, ns: str, name: str, body: dict[str, Any], manager: str, force: bool = False,
          sub: str = "") -> tuple[int, Any]:
    q = {"fieldManager": manager}
    if force:
        q["force"] = "true"
    return kube.call("PATCH", wpath(ns, name, sub), yaml.safe_dump(body), ctype=APPLY, query=q)


def test_apply_creates_merges_list_maps_and_conflicts(kube: Kube, ns: str) -> None:
    status, obj = apply(kube, ns, "s", widget("s", 1, items=[{"name": "a", "value": "1"}], mode="A"), "alice")
    assert status == 201 and obj["metadata"]["generation"] == 1
    status, obj = apply(kube, ns, "s", {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "s"},
                                        "spec": {"items": [{"name": "b", "value": "2"}]}}, "bob")
    assert status == 200
    assert obj["spec"]["items"] == [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}], "merged by key"
    assert obj["spec"]["size"] == 1 and obj["spec"]["mode"] == "A"
    managers = {(m["manager"], m["operation"]) for m in obj["metadata"]["managedFields"]}
    assert managers == {("alice", "Apply"), ("bob", "Apply")}
    # bob changing alice's field without force: 409 naming the field and the manager
    status, body = apply(kube, ns, "s", {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "s"},
                                         "spec": {"size": 2, "items": [{"name": "b", "value": "2"}]}}, "bob")
    assert status == 409 and body["reason"] == "Conflict" and 'conflict with "alice"' in body["message"]
    assert ".spec.size" in body["message"]
    # same value is shared ownership, not a conflict
    status, _ = apply(kube, ns, "s", {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "s"},
                                      "spec": {"size": 1, "items": [{"name": "b", "value": "2"}]}}, "bob")
    assert status == 200
    # force takes ownership
    status, obj = apply(kube, ns, "s", {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "s"},
                                        "spec": {"size": 3, "items": [{"name": "b", "value": "2"}]}}, "bob", force=True)
    assert status == 200 and obj["spec"]["size"] == 3 and obj["metadata"]["generation"] == 3
    # alice re-applies without size (she lost it) and without mode: mode (hers alone) goes away,
    # size (now bob's) stays; her list item stays.
    status, obj = apply(kube, ns, "s", {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "s"},
                                        "spec": {"items": [{"name": "a", "value": "1"}]}}, "alice")
    assert status == 200, obj
    assert "mode" not in obj["spec"] and obj["spec"]["size"] == 3
    assert [i["name"] for i in obj["spec"]["items"]] == ["a", "b"]
    # bob drops his item: it is removed
    status, obj = apply(kube, ns, "s", {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "s"},
                                        "spec": {"size": 3}}, "bob")
    assert [i["name"] for i in obj["spec"]["items"]] == ["a"]
    # an unchanged apply is a no-op
    rv = obj["metadata"]["resourceVersion"]
    _, again = apply(kube, ns, "s", {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "s"},
                                     "spec": {"size": 3}}, "bob")
    assert again["metadata"]["resourceVersion"] == rv


def test_apply_status_and_update_ownership(kube: Kube, ns: str) -> None:
    kube.ok("POST", wpath(ns), widget("st"))
    status, obj = apply(kube, ns, "st", {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "st"},
                                         "status": {"phase": "Running", "conditions": [
                                             {"type": "Ready", "status": "True"}]}}, "ferry", force=True, sub="status")
    assert status == 200 and obj["status"]["phase"] == "Running" and obj["metadata"]["generation"] == 1
    # another writer adds a condition with a merge patch: conditions merge by key on the next apply
    kube.ok("PATCH", wpath(ns, "st", "status"), {"status": {"conditions": [
        {"type": "Ready", "status": "True"}, {"type": "Other", "status": "False"}]}}, ctype=MERGE)
    status, obj = apply(kube, ns, "st", {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "st"},
                                         "status": {"conditions": [{"type": "Ready", "status": "False"}]}},
                        "ferry", force=True, sub="status")
    conds = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
    assert conds == {"Ready": "False", "Other": "False"}, "Other is owned by the merge-patch writer and stays"
    assert "phase" not in obj["status"], "phase was ferry's alone and was dropped from the apply"
    # the main resource ignores status in an apply
    status, obj = apply(kube, ns, "st", dict(widget("st"), status={"phase": "Nope"}), "ferry", force=True)
    assert "phase" not in obj["status"]
    # status apply on a missing object is 404; fieldManager is required
    assert apply(kube, ns, "missing", widget("missing"), "ferry", sub="status")[0] == 404
    status, body = kube.call("PATCH", wpath(ns, "st"), yaml.safe_dump(widget("st")), ctype=APPLY)
    assert status == 400 and "fieldManager" in body["message"]


def test_apply_with_stale_resource_version(kube: Kube, ns: str) -> None:
    obj = kube.ok("POST", wpath(ns), widget("rv"))
    kube.ok("PATCH", wpath(ns, "rv"), {"spec": {"size": 2}}, ctype=MERGE)
    body = widget("rv", 3)
    body["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"]
    assert apply(kube, ns, "rv", body, "x", force=True)[0] == 409


# --------------------------------------------------------------------------------------------
# Schema validation and pruning
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec,field,fragment", [
    ({"size": 0}, "spec.size", "should be greater than or equal to 1"),
    ({"size": 11}, "spec.size", "should be less than or equal to 10"),
    ({"size": "1"}, "spec.size", "must be of type integer"),
    ({}, "spec.size", "Required value"),
    ({"size": 1, "mode": "C"}, "spec.mode", 'Unsupported value: "C"'),
    ({"size": 1, "name": "ABC"}, "spec.name", "should match '^[a-z]+$'"),
    ({"size": 1, "name": "abcdefghijk"}, "spec.name", "Too long"),
    ({"size": 1, "items": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"}]}, "spec.items", "Too many"),
    ({"size": 1, "items": [{"name": "a"}, {"name": "a"}]}, "spec.items[1]", "Duplicate value"),
    ({"size": 1, "tags": ["x", "x"]}, "spec.tags[1]", "Duplicate value"),
    ({"size": 1, "items": [{"value": "v"}]}, "spec.items[0].name", "Required value"),
    ({"size": 1, "items": [{"name": "a", "port": 1.5}]}, "spec.items[0].port", "integer,string"),
    ({"size": 1, "selector": {"a": 1}}, "spec.selector.a", "must be of type string"),
])
def test_schema_rejections(kube: Kube, ns: str, spec: dict[str, Any], field: str, fragment: str) -> None:
    body = widget("bad")
    body["spec"] = spec
    status, out = kube.call("POST", wpath(ns), body)
    assert status == 422 and out["reason"] == "Invalid", out
    assert out["message"].startswith(f'Widget.{GROUP} "bad" is invalid: ')
    assert any(c["field"] == field and fragment in c["message"] for c in out["details"]["causes"]), out


def test_schema_accepts_nullable_int_or_string_and_preserved_fields(kube: Kube, ns: str) -> None:
    out = kube.ok("POST", wpath(ns), widget("ok", mode=None, items=[{"name": "a", "port": "http"},
                                                                    {"name": "b", "port": 80}],
                                            free={"any": {"thing": [1, 2]}}))
    assert out["spec"]["mode"] is None and out["spec"]["free"] == {"any": {"thing": [1, 2]}}
    assert [i["port"] for i in out["spec"]["items"]] == ["http", 80]


def test_unknown_fields_are_pruned_or_rejected_when_strict(kube: Kube, ns: str) -> None:
    body = widget("p", extra="x")
    body["unknownTop"] = 1
    body["spec"]["items"] = [{"name": "a", "bogus": True}]
    status, out = kube.call("POST", wpath(ns), body, query={"fieldValidation": "Strict"})
    assert status == 400 and 'unknown field "spec.extra"' in out["message"]
    conn = http.client.HTTPConnection(kube.host, kube.port, timeout=10)
    conn.request("POST", wpath(ns), json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = json.loads(resp.read())
    assert resp.status == 201 and "spec.extra" in (resp.getheader("Warning") or "")
    assert "extra" not in out["spec"] and "unknownTop" not in out and out["spec"]["items"] == [{"name": "a"}]


def test_transition_rule_self_equals_old_self(kube: Kube, ns: str) -> None:
    kube.ok("POST", wpath(ns), widget("t", immutable="one", items=[{"name": "a", "fixed": "x"}]))
    status, out = kube.call("PATCH", wpath(ns, "t"), {"spec": {"immutable": "two"}}, ctype=MERGE)
    assert status == 422 and out["details"]["causes"][0]["field"] == "spec.immutable"
    assert "immutable cannot be changed" in out["message"]
    status, out = kube.call("PATCH", wpath(ns, "t"), {"spec": {"items": [{"name": "a", "fixed": "y"}]}}, ctype=MERGE)
    assert status == 422 and out["details"]["causes"][0]["field"] == "spec.items[0].fixed"
    # a new list-map item has no old value: the rule does not apply
    kube.ok("PATCH", wpath(ns, "t"), {"spec": {"items": [{"name": "a", "fixed": "x"}, {"name": "b", "fixed": "z"}]}},
            ctype=MERGE)
    kube.ok("PATCH", wpath(ns, "t"), {"spec": {"size": 4}}, ctype=MERGE)


# --------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------


def names(lst: dict[str, Any]) -> list[str]:
    return sorted(i["metadata"]["name"] for i in lst["items"])


def test_label_and_field_selectors(kube: Kube, ns: str) -> None:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    kube.ok("POST", base, cm("a", {"app": "web", "tier": "front"}))
    kube.ok("POST", base, cm("b", {"app": "db", "tier": "back"}))
    kube.ok("POST", base, cm("c", {"app": "web"}))
    kube.ok("POST", base, cm("d"))
    cases = {
        "app=web": ["a", "c"], "app==web": ["a", "c"], "app!=web": ["b", "d"],
        "app in (web,db)": ["a", "b", "c"], "app notin (web)": ["b", "d"], "tier": ["a", "b"],
        "!tier": ["c", "d"], "app=web,tier": ["a"], "app=web,!tier": ["c"], "tier in (front, back),app!=db": ["a"],
    }
    for sel, want in cases.items():
        assert names(kube.ok("GET", base, query={"labelSelector": sel})) == want, sel
    assert kube.call("GET", base, query={"labelSelector": "app in web"})[0] == 400
    assert names(kube.ok("GET", base, query={"fieldSelector": "metadata.name=b"})) == ["b"]
    assert names(kube.ok("GET", base, query={"fieldSelector": "metadata.name!=b"})) == ["a", "c", "d"]
    allns = kube.ok("GET", "/api/v1/configmaps", query={"fieldSelector": f"metadata.namespace={ns}",
                                                        "labelSelector": "app=web"})
    assert names(allns) == ["a", "c"]
    status, out = kube.call("GET", base, query={"fieldSelector": "data.x=1"})
    assert status == 400 and out["reason"] == "BadRequest"


def test_watch_with_selector_sees_transitions(kube: Kube, ns: str) -> None:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    start = kube.ok("POST", base, cm("x", {"app": "other"}))
    w = kube.watch(base, {"labelSelector": "app=web", "resourceVersion": start["metadata"]["resourceVersion"]})
    kube.ok("PATCH", f"{base}/x", {"metadata": {"labels": {"app": "web"}}}, ctype=MERGE)
    kube.ok("PATCH", f"{base}/x", {"data": {"k": "v"}}, ctype=MERGE)
    kube.ok("PATCH", f"{base}/x", {"metadata": {"labels": {"app": "gone"}}}, ctype=MERGE)
    kube.ok("POST", base, cm("y", {"app": "nope"}))
    kube.ok("POST", base, cm("z", {"app": "web"}))
    evs = w.events(4)
    w.close()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [
        ("ADDED", "x"), ("MODIFIED", "x"), ("DELETED", "x"), ("ADDED", "z")]


# --------------------------------------------------------------------------------------------
# Watch
# --------------------------------------------------------------------------------------------


def test_watch_initial_state_then_changes(kube: Kube, ns: str) -> None:
    kube.ok("POST", wpath(ns), widget("one"))
    w = kube.watch(wpath(ns), {"resourceVersion": "0", "allowWatchBookmarks": "true"})
    kube.ok("POST", wpath(ns), widget("two"))
    evs = w.events(2)
    w.close()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [("ADDED", "one"), ("ADDED", "two")]
    assert evs[0]["object"]["kind"] == "Widget" and evs[0]["object"]["apiVersion"] == f"{GROUP}/v1"


def test_watch_survives_many_concurrent_writes_in_order(kube: Kube, ns: str) -> None:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    start = kube.ok("GET", base)["metadata"]["resourceVersion"]
    w = kube.watch(base, {"resourceVersion": start, "allowWatchBookmarks": "true"}, timeout=20)
    writers, per_writer = 4, 60
    errors: list[Any] = []

    def writer(i: int) -> None:
        k = Kube(f"http://{kube.host}:{kube.port}")
        try:
            k.ok("POST", base, cm(f"w{i}", data={"n": "0"}))
            for n in range(1, per_writer):
                k.ok("PATCH", f"{base}/w{i}", {"data": {"n": str(n)}}, ctype=MERGE)
            k.ok("DELETE", f"{base}/w{i}")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    evs = w.events(writers * (per_writer + 1))
    w.close()
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in evs]
    assert rvs == sorted(rvs) and len(set(rvs)) == len(rvs), "strictly increasing, no duplicates"
    for i in range(writers):
        mine = [e for e in evs if e["object"]["metadata"]["name"] == f"w{i}"]
        assert [e["type"] for e in mine] == ["ADDED"] + ["MODIFIED"] * (per_writer - 1) + ["DELETED"]
        assert [e["object"]["data"]["n"] for e in mine[:-1]] == [str(n) for n in range(per_writer)]


def test_watch_resume_bookmarks_and_410(kube: Kube, ns: str) -> None:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    a = kube.ok("POST", base, cm("r1"))
    kube.ok("POST", base, cm("r2"))
    # resume from a's resourceVersion replays r2 only
    w = kube.watch(base, {"resourceVersion": a["metadata"]["resourceVersion"], "allowWatchBookmarks": "true"})
    ev = w.events(1)[0]
    assert (ev["type"], ev["object"]["metadata"]["name"]) == ("ADDED", "r2")
    # then a bookmark arrives (interval 0.5 s) with a resourceVersion at least r2's
    bm = w.next()
    while bm["type"] != "BOOKMARK":
        bm = w.next()
    assert bm["object"]["kind"] == "ConfigMap" and int(bm["object"]["metadata"]["resourceVersion"]) >= int(
        ev["object"]["metadata"]["resourceVersion"])
    w.close()
    # after compaction an old resourceVersion gets an ERROR event with 410 Gone
    kube.ok("POST", "/_standin/compact")
    w = kube.watch(base, {"resourceVersion": a["metadata"]["resourceVersion"]})
    ev = w.next()
    assert ev["type"] == "ERROR" and ev["object"]["code"] == 410 and ev["object"]["reason"] == "Expired"
    assert w.next() is None, "the stream ends after the error"
    w.close()


def test_watch_timeout_and_send_initial_events(kube: Kube, ns: str) -> None:
    kube.ok("POST", wpath(ns), widget("i1"))
    kube.ok("POST", wpath(ns), widget("i2"))
    w = kube.watch(wpath(ns), {"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan",
                               "allowWatchBookmarks": "true", "timeoutSeconds": "2"})
    evs = [w.next() for _ in range(3)]
    assert [e["type"] for e in evs] == ["ADDED", "ADDED", "BOOKMARK"]
    assert evs[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    t0 = time.monotonic()
    while w.next() is not None:
        pass
    assert time.monotonic() - t0 < 4, "timeoutSeconds ends the stream"
    w.close()
    status, _ = kube.call("GET", wpath(ns), query={"watch": "true", "sendInitialEvents": "true"})
    assert status == 422


def test_close_watches_hook(kube: Kube, ns: str) -> None:
    w = kube.watch(wpath(ns), {"resourceVersion": "0"})
    assert kube.ok("POST", "/_standin/close-watches")["closed"] >= 1
    assert w.next() is None
    w.close()


# --------------------------------------------------------------------------------------------
# Built-in kinds, events, tables
# --------------------------------------------------------------------------------------------


def test_events_share_storage_between_api_groups(kube: Kube, ns: str) -> None:
    ev = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1"},
          "eventTime": "2025-01-01T00:00:00.000000Z", "reportingController": "ferry", "reportingInstance": "ferry-0",
          "action": "Reconcile", "reason": "Started", "type": "Normal", "note": "hello",
          "regarding": {"kind": "VirtualMachine", "name": "vm1", "namespace": ns}}
    kube.ok("POST", f"/apis/events.k8s.io/v1/namespaces/{ns}/events", ev)
    core = kube.ok("GET", f"/api/v1/namespaces/{ns}/events/e1")
    assert core["apiVersion"] == "v1" and core["message"] == "hello" and core["involvedObject"]["name"] == "vm1"
    assert core["reportingComponent"] == "ferry"
    lst = kube.ok("GET", f"/api/v1/namespaces/{ns}/events", query={"fieldSelector": "involvedObject.name=vm1"})
    assert [e["metadata"]["name"] for e in lst["items"]] == ["e1"]
    v1 = kube.ok("PATCH", f"/apis/events.k8s.io/v1/namespaces/{ns}/events/e1",
                 {"series": {"count": 2, "lastObservedTime": "2025-01-01T00:00:01.000000Z"}}, ctype=MERGE)
    assert v1["series"]["count"] == 2 and v1["note"] == "hello"


def test_secrets_leases_and_pods(kube: Kube, ns: str) -> None:
    s = kube.ok("POST", f"/api/v1/namespaces/{ns}/secrets",
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}})
    assert s["data"] == {"k": "dg=="} and s["type"] == "Opaque" and "stringData" not in s
    lease = kube.ok("POST", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
                    {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
                     "spec": {"holderIdentity": "a", "leaseDurationSeconds": 10}})
    assert lease["spec"]["holderIdentity"] == "a"
    out = kube.ok("PATCH", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/l",
                  {"spec": {"holderIdentity": None}}, ctype=SMP)
    assert "holderIdentity" not in out["spec"]
    pod = kube.ok("POST", f"/api/v1/namespaces/{ns}/pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                                             "spec": {"containers": [{"name": "c", "image": "x"}]}})
    assert pod["status"]["phase"] == "Pending"


def test_table_output_uses_printer_columns(kube: Kube, ns: str) -> None:
    kube.ok("POST", wpath(ns), widget("tb", 7))
    kube.ok("PATCH", wpath(ns, "tb", "status"), {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
            ctype=MERGE)
    tbl = kube.ok("GET", wpath(ns), headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"})
    assert tbl["kind"] == "Table"
    assert [c["name"] for c in tbl["columnDefinitions"]] == ["Name", "Size", "Ready", "Age"]
    assert tbl["rows"][0]["cells"][:3] == ["tb", 7, "True"]
    assert tbl["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    meta = kube.ok("GET", wpath(ns, "tb"),
                   headers={"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"})
    assert meta["kind"] == "PartialObjectMetadata" and "spec" not in meta


# --------------------------------------------------------------------------------------------
# The real server's limits and built-in validation
# --------------------------------------------------------------------------------------------

MIB = 1024 * 1024


def b64(n: int, fill: bytes = b"#") -> str:
    import base64
    return base64.b64encode(fill * n).decode()


def secret(name: str, data: dict[str, str] | None = None, type_: str | None = None,
           **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data or {}}
    if type_:
        out["type"] = type_
    out.update(extra)
    return out


def causes(out: Any) -> list[tuple[str, str]]:
    return sorted((c["reason"], c["field"]) for c in out["details"]["causes"])


def test_secret_data_is_at_most_one_mib(kube: Kube, ns: str) -> None:
    # The values count, not the keys: exactly 1 MiB is accepted.
    kube.ok("POST", f"/api/v1/namespaces/{ns}/secrets", secret("exact", {"userdata": b64(MIB)}))
    status, out = kube.call("POST", f"/api/v1/namespaces/{ns}/secrets", secret("over", {"a": b64(MIB + 1)}))
    assert status == 422 and out["reason"] == "Invalid", out
    assert out["message"] == 'Secret "over" is invalid: data: Too long: must have at most 1048576 bytes'
    assert causes(out) == [("FieldValueTooLong", "data")]
    # The sum of several values, stringData included.
    status, out = kube.call("POST", f"/api/v1/namespaces/{ns}/secrets",
                            secret("sum", {"a": b64(600 * 1024)}, stringData={"b": "#" * (600 * 1024)}))
    assert status == 422 and causes(out) == [("FieldValueTooLong", "data")], out
    # An update over the limit is refused too.
    status, out = kube.call("PATCH", f"/api/v1/namespaces/{ns}/secrets/exact", {"data": {"more": b64(1)}},
                            ctype=MERGE)
    assert status == 422, out


def test_secret_keys_types_and_immutability(kube: Kube, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/secrets"
    status, out = kube.call("POST", path, secret("keys", {"a b": b64(1), "..x": b64(1)}))
    assert status == 422 and causes(out) == [("FieldValueInvalid", "data[..x]"),
                                             ("FieldValueInvalid", "data[a b]")], out
    status, out = kube.call("POST", path, secret("ssh", {"known_hosts": b64(1)}, "kubernetes.io/ssh-auth"))
    assert status == 422 and out["message"] == 'Secret "ssh" is invalid: data[ssh-privatekey]: Required value', out
    status, out = kube.call("POST", path, secret("tls", {"tls.crt": b64(1)}, "kubernetes.io/tls"))
    assert status == 422 and causes(out) == [("FieldValueRequired", "data[tls.key]")], out
    status, out = kube.call("POST", path, secret("docker", {".dockerconfigjson": b64(3, b"{x")},
                                                 "kubernetes.io/dockerconfigjson"))
    assert status == 422 and causes(out) == [("FieldValueInvalid", "data[.dockerconfigjson]")], out
    kube.ok("POST", path, secret("typed", {"ssh-privatekey": b64(1)}, "kubernetes.io/ssh-auth"))
    status, out = kube.call("PATCH", f"{path}/typed", {"type": "Opaque"}, ctype=MERGE)
    assert status == 422 and causes(out) == [("FieldValueInvalid", "type")], out
    kube.ok("POST", path, secret("frozen", {"k": b64(1)}, immutable=True))
    status, out = kube.call("PATCH", f"{path}/frozen", {"data": {"k": b64(2)}}, ctype=MERGE)
    assert status == 422 and causes(out) == [("FieldValueForbidden", "data")], out


def test_config_map_data_is_at_most_one_mib(kube: Kube, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/configmaps"
    kube.ok("POST", path, cm("fits", data={"a": "#" * (MIB - 1)}) | {"binaryData": {"b": b64(1)}})
    status, out = kube.call("POST", path, cm("over", data={"a": "#" * MIB}) | {"binaryData": {"b": b64(1)}})
    assert status == 422, out
    assert out["message"] == 'ConfigMap "over" is invalid: []: Too long: must have at most 1048576 bytes'
    status, out = kube.call("POST", path, cm("dup", data={"k": "v"}) | {"binaryData": {"k": b64(1)}})
    assert status == 422 and causes(out) == [("FieldValueInvalid", "data[k]")], out


def test_request_body_and_stored_object_limits(kube: Kube) -> None:
    path = "/apis/test.ferry.dev/v1/gadgets"
    gadget = lambda name, n: {"apiVersion": f"{GROUP}/v1", "kind": "Gadget",  # noqa: E731
                              "metadata": {"name": name}, "spec": {"x": "a" * n}}
    kube.ok("POST", path, gadget("big-1400k", 1400 * 1024))
    # etcd refuses a request over 1.5 MiB; the API server passes that on as a 500.
    status, out = kube.call("POST", path, gadget("big-1600k", 1600 * 1024))
    assert (status, out["message"]) == (500, "etcdserver: request is too large"), out
    # The API server itself reads at most 3 MiB of a request.
    status, out = kube.call("POST", path, gadget("big-4m", 4 * MIB))
    assert status == 413 and out["reason"] == "RequestEntityTooLarge", out
    assert out["message"] == "Request entity too large: limit is 3145728"


def kubectl_binary() -> str:
    import shutil
    for candidate in ("/opt/ferry-tools/bin/kubectl", shutil.which("kubectl")):
        if candidate and os.path.exists(candidate):
            return candidate
    if os.environ.get("CI"):
        pytest.fail("kubectl not found: run scripts/setup.sh")
    pytest.skip("kubectl not found: run scripts/setup.sh")


def test_kubectl_create_generators_send_protobuf(server: tuple[Kube, str]) -> None:
    kube, tmp = server
    kubectl = kubectl_binary()
    env = {**os.environ, "KUBECONFIG": os.path.join(tmp, "kubeconfig")}

    def k(*args: str) -> str:
        p = subprocess.run([kubectl, *args], capture_output=True, text=True, timeout=60, env=env)
        assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p.stdout

    name = "pb-" + uuid.uuid4().hex[:8]
    k("create", "namespace", name)
    got = kube.ok("GET", f"/api/v1/namespaces/{name}")
    assert got["status"]["phase"] == "Active" and "generateName" not in got["metadata"]
    k("-n", name, "create", "secret", "generic", "s", "--from-literal=a=hello", "--from-literal=empty=",
      "--type=ferry.dev/test")
    s = kube.ok("GET", f"/api/v1/namespaces/{name}/secrets/s")
    assert (s["data"], s["type"]) == ({"a": "aGVsbG8=", "empty": ""}, "ferry.dev/test")
    k("-n", name, "create", "configmap", "c", "--from-literal=k=v")
    assert kube.ok("GET", f"/api/v1/namespaces/{name}/configmaps/c")["data"] == {"k": "v"}
    # Validation applies to protobuf bodies as to JSON ones.
    p = subprocess.run([kubectl, "-n", name, "create", "secret", "generic", "big", f"--from-literal=a={'#' * 10}",
                        "--type=kubernetes.io/ssh-auth"], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode != 0 and "data[ssh-privatekey]: Required value" in p.stderr, p.stderr


def test_protobuf_bodies_the_server_cannot_decode(kube: Kube, ns: str) -> None:
    def ld(num: int, payload: bytes) -> bytes:
        return bytes([num << 3 | 2, len(payload)]) + payload

    envelope = lambda api_version, kind: b"k8s\x00" + ld(1, ld(1, api_version) + ld(2, kind))  # noqa: E731
    pb = "application/vnd.kubernetes.protobuf"
    # Custom resources have no protobuf form.
    status, out = kube.call("POST", wpath(ns), envelope(b"test.ferry.dev/v1", b"Widget"), ctype=pb)
    assert status == 415 and out["reason"] == "UnsupportedMediaType", out
    status, out = kube.call("POST", f"/api/v1/namespaces/{ns}/configmaps", b"k8s\x00\x0a\x7f", ctype=pb)
    assert status == 400, out


def test_sigterm_stops_the_server() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_standin(tmp)
        k = Kube(url)
        w = k.watch("/api/v1/namespaces", {"resourceVersion": "0"})
        cfg = yaml.safe_load(open(os.path.join(tmp, "kubeconfig")))
        assert cfg["clusters"][0]["cluster"]["server"] == url and cfg["current-context"] == "kube-standin"
        assert url.startswith("http://127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        w.close()
