"""The aiohttp application: URL routing, content negotiation, discovery, tables, watch streams
and the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import re
import signal
import sys
import time
import traceback
from typing import Any

import yaml
from aiohttp import web

from . import errors, protobuf
from .errors import ApiError, status_object
from .selection import jsonpath, parse_field_selector, parse_label_selector
from .store import ResourceType, Store, WriteOptions

log = logging.getLogger("kube-standin")

KUBE_VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0-standin", "gitCommit": "standin",
                "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0",
                "compiler": "gc", "platform": "linux/amd64"}


# --------------------------------------------------------------------------------------------
# Bodies
# --------------------------------------------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """YAML without implicit timestamps (they must stay strings, as in Kubernetes)."""


_YamlLoader.yaml_implicit_resolvers = {
    k: [r for r in v if r[0] != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


# The API server's limit on a request body (apiserver's MaxRequestBodyBytes).
MAX_REQUEST_BYTES = 3 * 1024 * 1024


def parse_body(raw: bytes, content_type: str) -> Any:
    """JSON, YAML for apply patches, or Kubernetes protobuf (what kubectl's generators send).
    400 BadRequest when it does not parse, 413 over the API server's request size limit."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise ApiError(413, "RequestEntityTooLarge", f"Request entity too large: limit is {MAX_REQUEST_BYTES}")
    if content_type == protobuf.MEDIA_TYPE and raw:
        return protobuf.decode(raw)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        if "yaml" not in content_type:
            raise errors.bad_request("the request body is not valid JSON") from None
    try:
        return yaml.load(raw, Loader=_YamlLoader)  # noqa: S506 - safe loader subclass
    except yaml.YAMLError as e:
        raise errors.bad_request(f"error decoding YAML: {e}") from None


def dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# --------------------------------------------------------------------------------------------
# Output forms: PartialObjectMetadata and Table
# --------------------------------------------------------------------------------------------


def accept_form(accept: str) -> str:
    """``table``, ``metadata`` or ``full`` from the Accept header (first match wins)."""
    for part in accept.split(","):
        if "as=Table" in part:
            return "table"
        if "as=PartialObjectMetadata" in part:
            return "metadata"
        if part.strip().startswith(("application/json", "*/*")):
            return "full"
    return "full"


def partial(obj: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}


def human_age(ts: str | None) -> str | None:
    """k8s ``HumanDuration`` of the time since ``ts``."""
    if not ts:
        return None
    try:
        then = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts
    s = max(0, int((dt.datetime.now(dt.timezone.utc) - then).total_seconds()))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    return f"{d // 365}y{d % 365}d"


def _node_status(o: dict[str, Any]) -> str:
    conds = {c.get("type"): c.get("status") for c in (o.get("status") or {}).get("conditions") or []}
    s = {"True": "Ready", "False": "NotReady"}.get(conds.get("Ready"), "Unknown")
    if (o.get("spec") or {}).get("unschedulable"):
        s += ",SchedulingDisabled"
    return s


def _first(o: Any, path: str) -> Any:
    r = jsonpath(o, path)
    return r[0] if r else None


# Built-in printer columns: (name, type, getter)
BUILTIN_COLUMNS: dict[str, list[tuple[str, str, Any]]] = {
    "namespaces": [("Status", "string", lambda o: _first(o, ".status.phase"))],
    "nodes": [("Status", "string", _node_status)],
    "configmaps": [("Data", "integer", lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {}))],
    "secrets": [("Type", "string", lambda o: o.get("type")), ("Data", "integer", lambda o: len(o.get("data") or {}))],
    "pods": [("Status", "string", lambda o: _first(o, ".status.phase"))],
    "leases": [("Holder", "string", lambda o: _first(o, ".spec.holderIdentity"))],
}


def table(rt: ResourceType, objs: list[dict[str, Any]], rv: str) -> dict[str, Any]:
    """A ``meta.k8s.io/v1 Table`` as ``kubectl get`` asks for (server-side printing)."""
    cols: list[dict[str, Any]] = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                                   "description": "Name must be unique within a namespace."}]
    getters: list[Any] = [lambda o: o["metadata"].get("name")]
    if rt.plural == "events":
        cols = [{"name": n, "type": t, "format": "", "priority": 0, "description": n}
                for n, t in (("Last Seen", "string"), ("Type", "string"), ("Reason", "string"),
                             ("Object", "string"), ("Message", "string"))]
        core = [lambda o: human_age(o.get("lastTimestamp") or o.get("eventTime")
                                    or o.get("deprecatedLastTimestamp")),
                lambda o: o.get("type"), lambda o: o.get("reason"),
                lambda o: (lambda r: f"{(r.get('kind') or '').lower()}/{r.get('name')}")(
                    o.get("involvedObject") or o.get("regarding") or {}),
                lambda o: o.get("message") or o.get("note")]
        getters = core
    elif rt.is_custom and rt.printer_columns:
        for c in rt.printer_columns:
            cols.append({"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
                         "description": c.get("description", ""), "priority": c.get("priority", 0)})
            path, typ = c.get("jsonPath", ""), c.get("type")

            def get(o, path=path, typ=typ):
                try:
                    v = _first(o, path)
                except ValueError:
                    return None
                return human_age(v) if typ == "date" else v
            getters.append(get)
    elif rt.plural == "customresourcedefinitions":
        cols.append({"name": "Created At", "type": "date", "format": "", "priority": 0,
                     "description": "CreationTimestamp"})
        getters.append(lambda o: o["metadata"].get("creationTimestamp"))
    else:
        for name, typ, fn in BUILTIN_COLUMNS.get(rt.plural, []):
            cols.append({"name": name, "type": typ, "format": "", "description": name, "priority": 0})
            getters.append(fn)
        cols.append({"name": "Age", "type": "string", "format": "", "priority": 0,
                     "description": "CreationTimestamp is a timestamp representing the server time when this object was created."})
        getters.append(lambda o: human_age(o["metadata"].get("creationTimestamp")))
    rows = [{"cells": [g(o) for g in getters], "object": partial(o)} for o in objs]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
            "columnDefinitions": cols, "rows": rows}


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


def version_priority(v: str) -> tuple:
    """Kubernetes version ordering: GA > beta > alpha, higher numbers first."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", v)
    if not m:
        return (3, 0, 0, v)
    stage = {"None": 0, "beta": 1, "alpha": 2}[str(m.group(2))]
    return (stage, -int(m.group(1)), -int(m.group(3) or 0), v)


def resource_list(store: Store, group: str, version: str) -> dict[str, Any]:
    rts = [rt for (g, v, _p), rt in store.types.items() if g == group and v == version]
    if not rts:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    resources = []
    for rt in sorted(rts, key=lambda r: r.plural):
        entry = {"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced, "kind": rt.kind,
                 "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]}
        if rt.short_names:
            entry["shortNames"] = rt.short_names
        if rt.categories:
            entry["categories"] = rt.categories
        resources.append(entry)
        for sub in rt.subresources:
            resources.append({"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                              "kind": rt.kind, "verbs": ["get", "patch", "update"]})
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


def group_entry(group: str, versions: list[str]) -> dict[str, Any]:
    ordered = sorted(versions, key=version_priority)
    vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in ordered]
    return {"name": group, "versions": vs, "preferredVersion": vs[0]}


def openapi_v3_root(store: Store) -> dict[str, Any]:
    paths = {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1"}}
    for g, vs in store.groups().items():
        if g:
            for v in vs:
                paths[f"apis/{g}/{v}"] = {"serverRelativeURL": f"/openapi/v3/apis/{g}/{v}"}
    return {"paths": paths}


def openapi_v3_gv(store: Store, group: str, version: str) -> dict[str, Any]:
    """A minimal OpenAPI v3 document: paths with the ``fieldValidation`` parameter, so kubectl
    leaves field validation to the server, and the CRD schemas as components."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    params = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
              {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
              {"name": "dryRun", "in": "query", "schema": {"type": "string"}}]
    for (g, v, _p), rt in store.types.items():
        if g != group or v != version:
            continue
        gvk = {"group": g, "version": v, "kind": rt.kind}
        base = f"/apis/{g}/{v}" if g else "/api/v1"
        coll = f"{base}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{base}/{rt.plural}"
        op = {"x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": {"200": {"description": "OK"}}}
        paths[coll] = {"post": dict(op, **{"x-kubernetes-action": "post"}),
                       "get": dict(op, **{"x-kubernetes-action": "list"})}
        paths[coll + "/{name}"] = {"put": dict(op, **{"x-kubernetes-action": "put"}),
                                   "patch": dict(op, **{"x-kubernetes-action": "patch"}),
                                   "get": dict(op, **{"x-kubernetes-action": "get"}),
                                   "delete": dict(op, **{"x-kubernetes-action": "delete"})}
        name = f"{'.'.join(reversed(g.split('.'))) if g else 'io.k8s.api.core'}.{v}.{rt.kind}"
        schema = dict(rt.schema.raw) if rt.schema else {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        schema["x-kubernetes-group-version-kind"] = [gvk]
        schemas[name] = schema
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": KUBE_VERSION["gitVersion"]},
            "paths": paths, "components": {"schemas": schemas}}


# --------------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------------


class StandIn:
    """HTTP front end over a :class:`Store`."""

    #: Most watch events written in one chunk.
    WATCH_BATCH = 500

    def __init__(self, store: Store, bookmark_interval: float = 10.0, default_watch_timeout: float = 1800.0,
                 request_log: Any = None) -> None:
        self.store = store
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.request_log = request_log
        self.server_address = ""

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        start = time.monotonic()
        try:
            resp = await handler(request)
        except ApiError as e:
            resp = self._json(e.status(), e.code)
        except web.HTTPException:
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as e:  # noqa: BLE001 - every failure must be a Status, never a bare 500 page
            traceback.print_exc()
            resp = self._json(status_object(500, "InternalError", f"stand-in internal error: {e!r}"), 500)
        if self.request_log is not None:
            print(f"{time.strftime('%H:%M:%S')} {request.method} {request.path_qs} {resp.status} "
                  f"{(time.monotonic() - start) * 1000:.1f}ms", file=self.request_log, flush=True)
        return resp

    @staticmethod
    def _json(obj: Any, status: int = 200, warnings: list[str] | None = None) -> web.Response:
        headers = {}
        if warnings:
            headers["Warning"] = ", ".join(f'299 - "{w.replace(chr(34), chr(39))}"' for w in warnings)
        return web.Response(body=dump(obj), status=status, content_type="application/json", headers=headers)

    # ---- routing -----------------------------------------------------------------------------

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if request.method == "GET":
            static = self._static(path)
            if static is not None:
                return static
        if path.startswith("/_standin/"):
            return self._hook(request, path)
        segs = [s for s in path.split("/") if s]
        if len(segs) >= 2 and segs[0] == "api" and segs[1] == "v1":
            group, version, rest = "", "v1", segs[2:]
        elif len(segs) >= 3 and segs[0] == "apis":
            group, version, rest = segs[1], segs[2], segs[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
            namespace, rest = rest[1], rest[2:]
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rt = self.store.type(group, version, plural)
        if rt.namespaced and name is not None and namespace is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rt.namespaced and namespace is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if sub == "finalize" and rt.plural == "namespaces":
            sub = "status"  # the namespace finalizer is not modelled; treat like a status write
        if sub and sub not in rt.subresources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if name is None:
            return await self._collection(request, rt, namespace)
        return await self._item(request, rt, namespace, name, sub)

    def _static(self, path: str) -> web.Response | None:
        s = self.store
        if path == "/version":
            return self._json(KUBE_VERSION)
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok", content_type="text/plain")
        if path == "/api":
            return self._json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": self.server_address}]})
        if path == "/api/v1":
            return self._json(resource_list(s, "", "v1"))
        if path == "/apis":
            groups = [group_entry(g, vs) for g, vs in s.groups().items() if g]
            return self._json({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        m = re.fullmatch(r"/apis/([^/]+)(?:/([^/]+))?", path)
        if m:
            vs = s.groups().get(m.group(1))
            if not vs:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if m.group(2) is None:
                return self._json(dict(group_entry(m.group(1), vs), kind="APIGroup", apiVersion="v1"))
            return self._json(resource_list(s, m.group(1), m.group(2)))
        if path == "/openapi/v3":
            return self._json(openapi_v3_root(s))
        m = re.fullmatch(r"/openapi/v3/(?:api/(v1)|apis/([^/]+)/([^/]+))", path)
        if m:
            g, v = ("", "v1") if m.group(1) else (m.group(2), m.group(3))
            if g not in s.groups() or v not in s.groups()[g]:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return self._json(openapi_v3_gv(s, g, v))
        return None

    def _hook(self, request: web.Request, path: str) -> web.Response:
        """Test hooks: ``POST /_standin/compact`` (forget watch history, so resuming watchers get
        410 Gone) and ``POST /_standin/close-watches`` (drop every open watch)."""
        if request.method != "POST":
            raise errors.method_not_allowed()
        if path == "/_standin/compact":
            return self._json({"compactedResourceVersion": str(self.store.compact())})
        if path == "/_standin/close-watches":
            return self._json({"closed": self.store.close_watches()})
        raise ApiError(404, "NotFound", "unknown stand-in hook")

    # ---- handlers ----------------------------------------------------------------------------

    @staticmethod
    def _opts(request: web.Request) -> WriteOptions:
        q = request.query
        manager = q.get("fieldManager") or (request.headers.get("User-Agent") or "unknown").split("/")[0] or "unknown"
        if len(manager) > 128:
            raise errors.bad_request("fieldManager: Too long: may not be more than 128 bytes")
        dry = q.getall("dryRun", [])
        if any(d != "All" for d in dry):
            raise errors.bad_request(f"dryRun: Unsupported value: {dry}: supported values: \"All\"")
        validation = q.get("fieldValidation") or "Warn"
        if validation not in ("Ignore", "Warn", "Strict"):
            raise errors.bad_request(f'fieldValidation: invalid value "{validation}"')
        force = q.get("force") in ("true", "1")
        return WriteOptions(manager, bool(dry), validation, force)

    def _render(self, request: web.Request, rt: ResourceType, obj: dict[str, Any], status: int = 200,
                opts: WriteOptions | None = None) -> web.Response:
        form = accept_form(request.headers.get("Accept", ""))
        if form == "metadata":
            obj = partial(obj)
        elif form == "table" and request.method == "GET":
            obj = table(rt, [obj], obj["metadata"].get("resourceVersion", ""))
        return self._json(obj, status, opts.warnings if opts else None)

    async def _collection(self, request: web.Request, rt: ResourceType, namespace: str | None) -> web.StreamResponse:
        q = request.query
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(q.get("fieldSelector"), rt.field_selectors)
        if request.method == "GET":
            if q.get("watch") in ("1", "true", "True"):
                return await self._watch(request, rt, namespace, labels, fields)
            rvm = q.get("resourceVersionMatch")
            if rvm and rvm not in ("NotOlderThan", "Exact"):
                raise errors.bad_request(f'resourceVersionMatch: Unsupported value: "{rvm}"')
            if rvm == "Exact" and q.get("resourceVersion") and q.get("resourceVersion") != str(self.store.rv):
                raise errors.gone(f"too old resource version: {q.get('resourceVersion')} ({self.store.rv})")
            lst = self.store.list(rt, namespace, labels, fields)
            form = accept_form(request.headers.get("Accept", ""))
            if form == "table":
                return self._json(table(rt, lst["items"], lst["metadata"]["resourceVersion"]))
            if form == "metadata":
                lst = {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                       "metadata": lst["metadata"], "items": [partial(i) for i in lst["items"]]}
            return self._json(lst)
        if request.method == "POST":
            if rt.namespaced and namespace is None:
                raise errors.method_not_allowed()
            opts = self._opts(request)
            body = parse_body(await request.read(), request.content_type)
            obj = self.store.create(rt, namespace, body, opts)
            return self._render(request, rt, obj, 201, opts)
        if request.method == "DELETE":
            opts = self._opts(request)
            body = parse_body(await request.read(), request.content_type)
            lst = self.store.list(rt, namespace, labels, fields)
            items = []
            for o in lst["items"]:
                m = o["metadata"]
                try:
                    obj, _ = self.store.delete(rt, m.get("namespace"), m["name"], body, opts)
                    items.append(obj)
                except ApiError as e:
                    if e.code != 404:
                        raise
            return self._json({"kind": rt.list_kind, "apiVersion": rt.api_version,
                               "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})
        raise errors.method_not_allowed()

    async def _item(self, request: web.Request, rt: ResourceType, namespace: str | None, name: str,
                    sub: str) -> web.Response:
        m = request.method
        if m == "GET":
            return self._render(request, rt, self.store.get(rt, namespace, name))
        opts = self._opts(request)
        body = parse_body(await request.read(), request.content_type)
        if m == "PUT":
            return self._render(request, rt, self.store.replace(rt, namespace, name, body, opts, sub), 200, opts)
        if m == "PATCH":
            ct = request.headers.get("Content-Type", "")
            if ct.startswith("application/apply-patch") and not request.query.get("fieldManager"):
                raise errors.bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: "
                                         "is required for apply patch")
            if request.query.get("force") and not ct.startswith("application/apply-patch"):
                raise errors.bad_request("force: Forbidden: may not be specified for non-apply patch")
            existed = self.store._objects(rt).get(self.store._key(rt, namespace, name)) is not None
            obj = self.store.patch(rt, namespace, name, ct, body, opts, sub)
            return self._render(request, rt, obj, 200 if existed else 201, opts)
        if m == "DELETE":
            if sub:
                raise errors.method_not_allowed()
            obj, removed = self.store.delete(rt, namespace, name, body, opts)
            if removed and not rt.is_custom:
                return self._json(status_object(200, "", "", {"name": name, "group": rt.group, "kind": rt.plural,
                                                              "uid": obj["metadata"].get("uid")}))
            return self._render(request, rt, obj, 200, opts)
        raise errors.method_not_allowed()

    # ---- watch -------------------------------------------------------------------------------

    async def _watch(self, request: web.Request, rt: ResourceType, namespace: str | None, labels: list,
                     fields: list) -> web.StreamResponse:
        q = request.query
        send_initial = q.get("sendInitialEvents") in ("true", "1")
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        if send_initial and q.get("resourceVersionMatch") != "NotOlderThan":
            raise errors.invalid("ListOptions", "meta.k8s.io", "", [(
                "FieldValueForbidden", "resourceVersionMatch",
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")])
        if send_initial and not bookmarks:
            raise errors.invalid("ListOptions", "meta.k8s.io", "", [(
                "FieldValueRequired", "allowWatchBookmarks", "Required value: sendInitialEvents requires allowWatchBookmarks=true")])
        try:
            timeout = float(q.get("timeoutSeconds") or self.default_watch_timeout)
        except ValueError:
            raise errors.bad_request("timeoutSeconds must be a number") from None
        form = accept_form(request.headers.get("Accept", ""))
        initial, watcher = self.store.start_watch(rt, namespace, labels, fields, q.get("resourceVersion"), send_initial)
        if self.request_log is not None:
            print(f"{time.strftime('%H:%M:%S')} WATCH-START {request.path_qs}", file=self.request_log, flush=True)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        loop = asyncio.get_running_loop()
        get_task: asyncio.Future | None = None

        def encode(typ: str, obj: Any, rv: int) -> bytes:
            if typ == "ERROR":
                return dump({"type": "ERROR", "object": obj}) + b"\n"
            if typ in ("BOOKMARK", "INITIAL_END"):
                meta: dict[str, Any] = {"resourceVersion": str(rv)}
                if typ == "INITIAL_END":
                    meta["annotations"] = {"k8s.io/initial-events-end": "true"}
                if form == "metadata":
                    bm = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
                else:
                    bm = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}
                return dump({"type": "BOOKMARK", "object": bm}) + b"\n"
            # Queued events carry the store's own copy of the object, never changed afterwards:
            # only a view that converts it needs another copy.
            view = rt.view(obj) if rt.to_view else {**obj, "apiVersion": rt.api_version, "kind": rt.kind}
            if form == "metadata":
                view = partial(view)
            elif form == "table":
                view = table(rt, [view], str(rv))
            return dump({"type": typ, "object": view}) + b"\n"

        try:
            await resp.prepare(request)
            for typ, obj, rv in initial:
                if typ == "INITIAL_END" and not bookmarks:
                    continue
                await resp.write(encode(typ, obj, rv))
            if watcher is None:
                return resp
            deadline = loop.time() + timeout
            next_bookmark = loop.time() + self.bookmark_interval
            while True:
                now = loop.time()
                if now >= deadline:
                    break
                if get_task is None:
                    get_task = asyncio.ensure_future(watcher.queue.get())
                done, _ = await asyncio.wait({get_task}, timeout=min(deadline, next_bookmark) - now)
                if not done:
                    if bookmarks and loop.time() >= next_bookmark and watcher.queue.empty():
                        # every event up to the current RV that this watcher matches is already written
                        await resp.write(encode("BOOKMARK", None, self.store.rv))
                        next_bookmark = loop.time() + self.bookmark_interval
                    continue
                item = get_task.result()
                get_task = None
                # Write everything already queued in one chunk: under load this is what keeps a
                # watch from falling minutes behind (one task, one wait and one write per event do).
                chunk = []
                while item is not None:
                    chunk.append(encode(*item))
                    if len(chunk) >= self.WATCH_BATCH or watcher.queue.empty():
                        break
                    item = watcher.queue.get_nowait()
                if chunk:
                    await resp.write(b"".join(chunk))
                if item is None:
                    break
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            if get_task is not None:
                get_task.cancel()
            if watcher is not None:
                self.store.stop_watch(watcher)
        return resp


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def kubeconfig(server: str, namespace: str = "default") -> str:
    """A kubeconfig for the stand-in: plain http, a dummy token, current-context set."""
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kube-standin", "cluster": {"server": server}}],
        "users": [{"name": "kube-standin", "user": {"token": "kube-standin-token"}}],
        "contexts": [{"name": "kube-standin", "context": {"cluster": "kube-standin", "user": "kube-standin",
                                                         "namespace": namespace}}],
        "current-context": "kube-standin",
        "preferences": {},
    }, sort_keys=False)


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGTERM / SIGINT."""
    request_log = None
    if args.log == "-":
        request_log = sys.stderr
    elif args.log:
        request_log = open(args.log, "a", buffering=1)  # noqa: SIM115 - lives as long as the server
    store = Store(history=args.history)
    front = StandIn(store, bookmark_interval=args.bookmark_interval, request_log=request_log)
    runner = web.AppRunner(front.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, shutdown_timeout=1.0)
    await site.start()
    sock = site._server.sockets[0]  # noqa: SLF001 - the only way to learn the port picked for 0
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    front.server_address = f"{shown}:{port}"
    if args.kubeconfig_out:
        _write_atomic(args.kubeconfig_out, kubeconfig(url, args.namespace))
    if args.ready_file:
        _write_atomic(args.ready_file, url + "\n")
    print(f"kube-standin listening on {url}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    store.close_watches()
    await runner.cleanup()
    print("kube-standin stopped", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="kube_standin.py", description=__doc__ or "Kubernetes API stand-in")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback)")
    p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    p.add_argument("--kubeconfig-out", metavar="PATH", help="write a kubeconfig for this server here")
    p.add_argument("--namespace", default="default", help="default namespace in the written kubeconfig")
    p.add_argument("--ready-file", metavar="PATH", help="write the server URL here once listening")
    p.add_argument("--log", nargs="?", const="-", metavar="PATH",
                   help="request log: one line per request, to PATH or stderr when no PATH is given")
    p.add_argument("--history", type=int, default=10_000,
                   help="watch events kept for resuming watches; older resourceVersions get 410 Gone")
    p.add_argument("--bookmark-interval", type=float, default=10.0,
                   help="seconds between BOOKMARK events on watches that allow them (default 10)")
    args = p.parse_args(argv)
    asyncio.run(serve(args))
