"""Resource types and object storage with the API server's semantics.

Everything here is synchronous: a request's whole read-modify-write runs without yielding to
the event loop, so writes are atomic, resourceVersions are strictly increasing and every watcher
receives events in commit order (they are queued in the same step that commits them).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import random
import re
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from . import errors, validation
from .errors import ApiError
from .patches import ListTypes, json_equal, json_patch, merge_patch, strategic_merge_patch
from .schema import VersionSchema
from .selection import Requirement, fields_match, labels_match
from .ssa import Managers

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"
ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def now_iso() -> str:
    """RFC 3339 time with second precision, as in ``metav1.Time``."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """RFC 3339 time with microseconds, as in ``metav1.MicroTime``."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _key_error(key: str) -> str | None:
    """Why ``key`` is not a valid label/annotation key (``[prefix/]name``), or None."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        return "prefix part must be a lowercase RFC 1123 subdomain"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                "with an alphanumeric character, at most 63 characters")
    return None


def _metadata_causes(meta: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Label and annotation checks of ``ValidateObjectMeta``."""
    causes = []
    for kind in ("labels", "annotations"):
        value = meta.get(kind)
        if value is None:
            continue
        if not isinstance(value, dict):
            causes.append(("FieldValueTypeInvalid", f"metadata.{kind}", "Invalid value: must be a map"))
            continue
        for k, v in value.items():
            why = _key_error(k)
            if why:
                causes.append(("FieldValueInvalid", f"metadata.{kind}", f'Invalid value: "{k}": {why}'))
            if not isinstance(v, str):
                causes.append(("FieldValueTypeInvalid", f"metadata.{kind}.{k}", "Invalid value: must be a string"))
            elif kind == "labels" and (len(v) > 63 or not _LABEL_VALUE.match(v)):
                causes.append(("FieldValueInvalid", f"metadata.labels", f'Invalid value: "{v}": a valid label must be '
                               "an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
                               "start and end with an alphanumeric character, at most 63 characters"))
    if isinstance(meta.get("annotations"), dict):
        size = sum(len(k) + len(v) for k, v in meta["annotations"].items() if isinstance(v, str))
        if size > 256 * 1024:
            causes.append(("FieldValueTooLong", "metadata.annotations",
                           "Too long: must have at most 262144 bytes"))
    fin = meta.get("finalizers")
    if fin is not None and (not isinstance(fin, list) or not all(isinstance(f, str) for f in fin)):
        causes.append(("FieldValueTypeInvalid", "metadata.finalizers", "Invalid value: must be a list of strings"))
    return causes


# Lists with merge semantics in built-in kinds (strategic merge patch and server-side apply).
BUILTIN_LIST_TYPES: dict[tuple[str, ...], tuple[str, list[str]]] = {
    ("metadata", "finalizers"): ("set", []),
    ("metadata", "ownerReferences"): ("map", ["uid"]),
    ("status", "conditions"): ("map", ["type"]),
    ("status", "addresses"): ("map", ["type"]),
    ("status", "images"): ("atomic", []),
    ("spec", "containers"): ("map", ["name"]),
    ("spec", "initContainers"): ("map", ["name"]),
    ("spec", "volumes"): ("map", ["name"]),
    ("spec", "containers", "env"): ("map", ["name"]),
    ("spec", "containers", "ports"): ("map", ["containerPort", "protocol"]),
    ("spec", "finalizers"): ("set", []),
}


def builtin_list_types(path: tuple[str, ...]) -> tuple[str, list[str]]:
    """``ListTypes`` of the built-in kinds."""
    return BUILTIN_LIST_TYPES.get(path, ("atomic", []))


# --------------------------------------------------------------------------------------------
# events.k8s.io/v1 <-> core/v1 Event (one storage, two views, like the real server)
# --------------------------------------------------------------------------------------------

_EVENT_FIELDS = [  # (core/v1 name, events.k8s.io/v1 name)
    ("involvedObject", "regarding"), ("message", "note"), ("reportingComponent", "reportingController"),
    ("reportingInstance", "reportingInstance"), ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"), ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"), ("eventTime", "eventTime"), ("series", "series"), ("action", "action"),
    ("reason", "reason"), ("related", "related"), ("type", "type"),
]


def event_to_v1(core: dict[str, Any]) -> dict[str, Any]:
    """core/v1 Event -> events.k8s.io/v1 Event."""
    out = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": core.get("metadata", {})}
    for c, e in _EVENT_FIELDS:
        if core.get(c) not in (None, {}, ""):
            out[e] = core[c]
    return out


def event_from_v1(ev: dict[str, Any]) -> dict[str, Any]:
    """events.k8s.io/v1 Event -> core/v1 Event."""
    out = {"apiVersion": "v1", "kind": "Event", "metadata": ev.get("metadata", {})}
    for c, e in _EVENT_FIELDS:
        if ev.get(e) is not None:
            out[c] = ev[e]
    return out


# --------------------------------------------------------------------------------------------
# Resource types
# --------------------------------------------------------------------------------------------


@dataclass
class ResourceType:
    """One served ``group/version/plural``."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    storage: str  # storage key; several versions (or views) may share it
    has_status: bool = False
    tracks_generation: bool = False
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    schema: VersionSchema | None = None
    crd_name: str | None = None
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    field_selectors: set[str] = field(default_factory=set)
    storage_api_version: str = ""
    to_view: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    from_view: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    subresources: list[str] = field(default_factory=list)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def is_custom(self) -> bool:
        return self.crd_name is not None

    def list_types(self) -> ListTypes:
        return self.schema.list_type if self.schema else builtin_list_types

    def view(self, stored: dict[str, Any]) -> dict[str, Any]:
        """The stored object as this version presents it."""
        obj = copy.deepcopy(stored)
        if self.to_view:
            obj = self.to_view(obj)
        obj["apiVersion"] = self.api_version
        obj["kind"] = self.kind
        return obj

    def to_storage(self, obj: dict[str, Any]) -> dict[str, Any]:
        """An incoming object in storage form."""
        if self.from_view:
            obj = self.from_view(obj)
        obj["apiVersion"] = self.storage_api_version or self.api_version
        obj["kind"] = self.kind
        return obj


@dataclass
class Stored:
    """An object as stored, plus its field ownership."""

    obj: dict[str, Any]
    managers: Managers


@dataclass
class WatchEvent:
    """One committed change, in storage form."""

    rv: int
    storage: str
    type: str  # ADDED, MODIFIED, DELETED
    old: dict[str, Any] | None
    new: dict[str, Any]


class Watcher:
    """An open watch: filter plus the queue the store feeds in commit order."""

    MAX_QUEUE = 50_000

    def __init__(self, rt: ResourceType, namespace: str | None, labels: list[Requirement],
                 fields: list[tuple[str, str, str]]) -> None:
        self.rt = rt
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False

    def matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj.get("metadata", {}).get("namespace") != self.namespace:
            return False
        return labels_match(self.labels, obj) and fields_match(self.fields, obj)

    def translate(self, ev: WatchEvent) -> tuple[str, dict[str, Any]] | None:
        """The event this watcher sees: selector transitions become ADDED / DELETED."""
        was, now = self.matches(ev.old), self.matches(ev.new)
        if ev.type == "DELETED":
            return ("DELETED", ev.new) if (was or now) else None
        if ev.type == "ADDED":
            return ("ADDED", ev.new) if now else None
        if was and now:
            return ("MODIFIED", ev.new)
        if now:
            return ("ADDED", ev.new)
        if was:
            return ("DELETED", ev.new)
        return None

    def push(self, item: Any) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= self.MAX_QUEUE:
            self.closed = True  # a consumer this slow gets disconnected, like on the real server
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(item)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


@dataclass
class WriteOptions:
    """Query parameters shared by writes."""

    field_manager: str = "unknown"
    dry_run: bool = False
    field_validation: str = "Warn"  # Ignore | Warn | Strict
    force: bool = False
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class Store:
    """All objects, all resource types, the resourceVersion counter and watch fan-out."""

    def __init__(self, history: int = 10_000) -> None:
        self.rv = 0
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.objects: dict[str, dict[tuple[str, str], Stored]] = {}
        self.history: deque[WatchEvent] = deque()
        self.history_limit = history
        self.compacted_rv = 0
        self.watchers: dict[str, set[Watcher]] = {}
        self._register_builtins()
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(self.type("", "v1", "namespaces"), None, {"metadata": {"name": ns}}, WriteOptions("standin"))

    # ---- types -------------------------------------------------------------------------------

    def _register_builtins(self) -> None:
        def add(group, version, plural, kind, namespaced, *, short=(), status=False, generation=False,
                fields=(), storage=None, to_view=None, from_view=None, storage_api_version="", cats=()):
            rt = ResourceType(
                group=group, version=version, plural=plural, singular=kind.lower(), kind=kind,
                namespaced=namespaced, storage=storage or f"{group}/{plural}", has_status=status,
                tracks_generation=generation, short_names=list(short), field_selectors=set(fields),
                to_view=to_view, from_view=from_view, storage_api_version=storage_api_version,
                subresources=["status"] if status else [], categories=list(cats),
            )
            self.types[(group, version, plural)] = rt
            self.objects.setdefault(rt.storage, {})

        add("", "v1", "namespaces", "Namespace", False, short=["ns"], status=True, fields=["status.phase"])
        add("", "v1", "nodes", "Node", False, short=["no"], status=True, fields=["spec.unschedulable"])
        add("", "v1", "secrets", "Secret", True, fields=["type"])
        add("", "v1", "configmaps", "ConfigMap", True, short=["cm"])
        core_event_fields = ["involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                             "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                             "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"]
        add("", "v1", "events", "Event", True, short=["ev"], fields=core_event_fields, storage="events")
        add("events.k8s.io", "v1", "events", "Event", True, short=["ev"], fields=core_event_fields,
            storage="events", to_view=event_to_v1, from_view=event_from_v1, storage_api_version="v1")
        add("", "v1", "pods", "Pod", True, short=["po"], status=True, generation=True,
            fields=["spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
                    "status.phase", "status.podIP", "status.nominatedNodeName"], cats=["all"])
        add("coordination.k8s.io", "v1", "leases", "Lease", True)
        add("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
            short=["crd", "crds"], status=True, generation=True, cats=["api-extensions"])

    def type(self, group: str, version: str, plural: str) -> ResourceType:
        """The served type, or 404 like the real server for an unknown resource."""
        rt = self.types.get((group, version, plural))
        if rt is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {"group": group, "kind": plural})
        return rt

    def groups(self) -> dict[str, list[str]]:
        """group -> versions (in registration order)."""
        out: dict[str, list[str]] = {}
        for (g, v, _p) in self.types:
            out.setdefault(g, [])
            if v not in out[g]:
                out[g].append(v)
        return out

    # ---- helpers -----------------------------------------------------------------------------

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _emit(self, storage: str, typ: str, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        ev = WatchEvent(int(new["metadata"]["resourceVersion"]), storage, typ,
                        copy.deepcopy(old) if old else None, copy.deepcopy(new))
        self.history.append(ev)
        while len(self.history) > self.history_limit:
            self.compacted_rv = self.history.popleft().rv
        for w in list(self.watchers.get(storage, ())):
            seen = w.translate(ev)
            if seen:
                w.push((seen[0], seen[1], ev.rv))

    def compact(self) -> int:
        """Forget all history (test hook): resuming any watch from an older RV gets 410 Gone."""
        self.history.clear()
        self.compacted_rv = self.rv
        return self.rv

    def close_watches(self) -> int:
        """Close every open watch (test hook, like an API server restart); returns how many."""
        n = 0
        for ws in self.watchers.values():
            for w in list(ws):
                w.close()
                n += 1
        return n

    def _objects(self, rt: ResourceType) -> dict[tuple[str, str], Stored]:
        return self.objects.setdefault(rt.storage, {})

    @staticmethod
    def _key(rt: ResourceType, namespace: str | None, name: str) -> tuple[str, str]:
        return (namespace or "", name) if rt.namespaced else ("", name)

    def _get_stored(self, rt: ResourceType, namespace: str | None, name: str) -> Stored:
        st = self._objects(rt).get(self._key(rt, namespace, name))
        if st is None:
            raise errors.not_found(rt.group, rt.plural, name)
        return st

    def _invalid(self, rt: ResourceType, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
        return errors.invalid(rt.kind, rt.group, name, causes)

    # ---- reads -------------------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        return rt.view(self._get_stored(rt, namespace, name).obj)

    def list(self, rt: ResourceType, namespace: str | None, labels: list[Requirement],
             fields: list[tuple[str, str, str]]) -> dict[str, Any]:
        items = []
        for (ns, _name), st in sorted(self._objects(rt).items()):
            if rt.namespaced and namespace is not None and ns != namespace:
                continue
            if labels_match(labels, st.obj) and fields_match(fields, st.obj):
                items.append(rt.view(st.obj))
        return {"kind": rt.list_kind, "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    # ---- watch -------------------------------------------------------------------------------

    def start_watch(self, rt: ResourceType, namespace: str | None, labels: list[Requirement],
                    fields: list[tuple[str, str, str]], rv: str | None, send_initial: bool
                    ) -> tuple[list[tuple[str, Any, int]], Watcher | None]:
        """Initial events plus a registered watcher, computed atomically (no gap, no duplicate).

        Returns ``([("ERROR", status, 0)], None)`` when ``rv`` is older than the kept history.
        """
        w = Watcher(rt, None if not rt.namespaced else namespace, labels, fields)
        initial: list[tuple[str, Any, int]] = []
        if send_initial or not rv or rv == "0":
            for st in sorted(self._objects(rt).values(), key=lambda s: int(s.obj["metadata"]["resourceVersion"])):
                if w.matches(st.obj):
                    initial.append(("ADDED", st.obj, int(st.obj["metadata"]["resourceVersion"])))
            if send_initial:
                initial.append(("INITIAL_END", None, self.rv))
        else:
            try:
                since = int(rv)
            except ValueError:
                raise errors.bad_request(f'invalid resource version "{rv}"') from None
            if since < self.compacted_rv:
                st = errors.gone(f"too old resource version: {since} ({self.compacted_rv + 1})").status()
                return [("ERROR", st, 0)], None
            for ev in self.history:
                if ev.rv > since and ev.storage == rt.storage:
                    seen = w.translate(ev)
                    if seen:
                        initial.append((seen[0], seen[1], ev.rv))
        self.watchers.setdefault(rt.storage, set()).add(w)
        return initial, w

    def stop_watch(self, w: Watcher) -> None:
        self.watchers.get(w.rt.storage, set()).discard(w)
        w.closed = True

    # ---- shared write pipeline ---------------------------------------------------------------

    def _check_name(self, rt: ResourceType, name: str) -> list[tuple[str, str, str]]:
        pattern = DNS1123_LABEL if rt.plural == "namespaces" else DNS1123_SUBDOMAIN
        limit = 63 if rt.plural == "namespaces" else 253
        if len(name) > limit or not pattern.match(name):
            what = "RFC 1123 label" if rt.plural == "namespaces" else "RFC 1123 subdomain"
            return [("FieldValueInvalid", "metadata.name",
                     f'Invalid value: "{name}": a lowercase {what} must consist of lower case alphanumeric '
                     f"characters, '-' or '.', and must start and end with an alphanumeric character")]
        return []

    def _prepare(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None,
                 opts: WriteOptions) -> dict[str, Any]:
        """Type hooks, pruning and validation of a candidate object (storage form)."""
        name = obj["metadata"].get("name", "")
        meta = obj["metadata"]
        causes = _metadata_causes(meta)
        if causes:
            raise self._invalid(rt, name, causes)
        for k in ("labels", "annotations", "finalizers", "ownerReferences"):
            if meta.get(k) in ({}, [], None):
                meta.pop(k, None)
        if rt.plural == "secrets" and isinstance(obj.get("stringData"), dict):
            data = obj.setdefault("data", {}) or {}
            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(str(v).encode()).decode()
            obj["data"] = data
        if rt.plural == "secrets":
            obj.setdefault("type", "Opaque")
            causes = validation.secret_causes(obj, old)
            if causes:
                raise self._invalid(rt, name, causes)
        if rt.plural == "configmaps":
            causes = validation.config_map_causes(obj, old)
            if causes:
                raise self._invalid(rt, name, causes)
        if rt.plural == "customresourcedefinitions":
            self._validate_crd(obj, old)
            if not meta.get("deletionTimestamp"):
                self._crd_status(obj)
        if rt.schema is not None:
            pruned = rt.schema.prune(obj)
            if pruned and opts.field_validation == "Strict":
                raise errors.bad_request("strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in pruned))
            if pruned and opts.field_validation == "Warn":
                opts.warnings.extend(f'unknown field "{p}"' for p in pruned)
            causes = rt.schema.validate(obj, old)
            if causes:
                raise self._invalid(rt, name, causes)
        validation.check_storable(obj)
        return obj

    def _changed_outside(self, rt: ResourceType, a: dict[str, Any], b: dict[str, Any]) -> bool:
        skip = {"metadata", "apiVersion", "kind"} | ({"status"} if rt.has_status else set())
        ka = {k: v for k, v in a.items() if k not in skip}
        kb = {k: v for k, v in b.items() if k not in skip}
        return not json_equal(ka, kb)

    def _commit_update(self, rt: ResourceType, st: Stored, new: dict[str, Any], managers: Managers,
                       opts: WriteOptions) -> dict[str, Any]:
        """Finish an update of an existing object: generation, no-op detection, RV, finalization."""
        old = st.obj
        meta = new["metadata"]
        om = old["metadata"]
        if rt.tracks_generation:
            meta["generation"] = om.get("generation", 1) + (1 if self._changed_outside(rt, old, new) else 0)
        meta["managedFields"] = managers.managed_fields()
        meta["resourceVersion"] = om["resourceVersion"]
        finalize = bool(om.get("deletionTimestamp")) and not meta.get("finalizers") and rt.plural != "namespaces"
        if json_equal(new, old) and not finalize:
            return rt.view(old)  # a no-op write does not bump resourceVersion or notify watchers
        if opts.dry_run:
            return rt.view(new)
        meta["resourceVersion"] = str(self._next_rv())
        key = self._key(rt, om.get("namespace"), om["name"])
        if finalize:
            del self._objects(rt)[key]
            self._emit(rt.storage, "DELETED", old, new)
            self._after_removal(rt, new)
            return rt.view(new)
        st.obj, st.managers = new, managers
        self._emit(rt.storage, "MODIFIED", old, new)
        self._after_update(rt, old, new)
        return rt.view(new)

    def _merge_meta(self, rt: ResourceType, old: dict[str, Any], new: dict[str, Any], name: str,
                    namespace: str | None, subresource: str) -> dict[str, Any]:
        """Server-owned metadata comes from ``old``; optimistic concurrency on resourceVersion."""
        if not isinstance(new, dict):
            raise errors.bad_request("the body must be a JSON object")
        meta = new.get("metadata")
        if meta is None:
            meta = new["metadata"] = {}
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if meta.get("name") not in (None, name):
            raise errors.bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})")
        if rt.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise errors.bad_request("the namespace of the provided object does not match the namespace sent on the request")
        rv = meta.get("resourceVersion")
        if rv not in (None, "") and rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rt.group, rt.plural, name)
        om = old["metadata"]
        if subresource == "status":
            status = new.get("status")
            new = copy.deepcopy(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
            return new
        for k in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                  "deletionGracePeriodSeconds", "generation", "resourceVersion", "selfLink"):
            if k in om:
                meta[k] = om[k]
            else:
                meta.pop(k, None)
        meta.pop("managedFields", None)
        if rt.has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        if om.get("deletionTimestamp"):
            added = [f for f in meta.get("finalizers") or [] if f not in (om.get("finalizers") or [])]
            if added:
                raise self._invalid(rt, name, [("FieldValueForbidden", "metadata.finalizers",
                                                f"Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added}")])
        return new

    # ---- create ------------------------------------------------------------------------------

    def create(self, rt: ResourceType, namespace: str | None, body: Any, opts: WriteOptions,
               managers: Managers | None = None) -> dict[str, Any]:
        """POST: 201 with the stored object, 409 AlreadyExists, 404 for a missing namespace."""
        if not isinstance(body, dict):
            raise errors.bad_request("the body must be a JSON object")
        self._check_kind(rt, body)
        obj = rt.to_storage(copy.deepcopy(body))
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = obj["metadata"] = {}
        if rt.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = namespace
            nst = self.objects["/namespaces"].get(("", namespace or ""))
            if nst is None:
                raise errors.not_found("", "namespaces", namespace or "")
            if nst.obj["metadata"].get("deletionTimestamp"):
                raise ApiError(403, "Forbidden", f'{errors.qualified(rt.group, rt.plural)} "{meta.get("name") or meta.get("generateName", "")}" is forbidden: unable to create new content in namespace {namespace} because it is being terminated')
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if meta.get("generateName"):
                for _ in range(20):
                    candidate = meta["generateName"] + "".join(random.choice(GENERATE_CHARS) for _ in range(5))
                    if self._key(rt, namespace, candidate) not in self._objects(rt):
                        meta["name"] = candidate
                        break
            else:
                raise self._invalid(rt, "", [("FieldValueRequired", "metadata.name",
                                             "Required value: name or generateName is required")])
        name = meta["name"]
        if not isinstance(name, str):
            raise errors.bad_request("metadata.name must be a string")
        causes = self._check_name(rt, name)
        if causes:
            raise self._invalid(rt, name, causes)
        key = self._key(rt, namespace, name)
        if key in self._objects(rt):
            raise errors.already_exists(rt.group, rt.plural, name)
        for k in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                  "generation", "managedFields", "selfLink"):
            meta.pop(k, None)
        if rt.has_status and rt.is_custom:
            obj.pop("status", None)  # the status of a new custom resource is written through /status
        if rt.plural == "namespaces":
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        if rt.plural == "pods":
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        if rt.plural == "customresourcedefinitions":
            meta["finalizers"] = sorted(set(meta.get("finalizers") or []) | {"customresourcecleanup.apiextensions.k8s.io"})
        obj = self._prepare(rt, obj, None, opts)
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        if rt.tracks_generation:
            meta["generation"] = 1
        managers = managers or Managers()
        if managers.entries == {}:
            managers.update(None, obj, opts.field_manager, "", rt.has_status, rt.list_types(), meta["creationTimestamp"],
                            rt.api_version)
        meta["managedFields"] = managers.managed_fields()
        if opts.dry_run:
            meta["resourceVersion"] = str(self.rv)
            return rt.view(obj)
        meta["resourceVersion"] = str(self._next_rv())
        self._objects(rt)[key] = Stored(obj, managers)
        self._emit(rt.storage, "ADDED", None, obj)
        if rt.plural == "customresourcedefinitions":
            self._register_crd(obj)
        return rt.view(obj)

    def _check_kind(self, rt: ResourceType, body: dict[str, Any]) -> None:
        kind = body.get("kind")
        if kind not in (None, "", rt.kind):
            raise errors.bad_request(f"the kind in the body ({kind}) does not match the expected kind ({rt.kind})")
        api_version = body.get("apiVersion")
        if api_version not in (None, "", rt.api_version):
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version ({rt.api_version})")

    # ---- update / patch / apply --------------------------------------------------------------

    def replace(self, rt: ResourceType, namespace: str | None, name: str, body: Any, opts: WriteOptions,
                subresource: str = "") -> dict[str, Any]:
        """PUT (main resource or ``/status``): 409 on a stale ``metadata.resourceVersion``."""
        st = self._get_stored(rt, namespace, name)
        if not isinstance(body, dict):
            raise errors.bad_request("the body must be a JSON object")
        self._check_kind(rt, body)
        new = rt.to_storage(copy.deepcopy(body))
        return self._update(rt, st, new, name, namespace, subresource, opts)

    def _update(self, rt: ResourceType, st: Stored, new: dict[str, Any], name: str, namespace: str | None,
                subresource: str, opts: WriteOptions) -> dict[str, Any]:
        new = self._merge_meta(rt, st.obj, new, name, namespace, subresource)
        new = self._prepare(rt, new, st.obj, opts)
        managers = st.managers.copy()
        managers.update(st.obj, new, opts.field_manager, subresource, rt.has_status, rt.list_types(), now_iso(),
                        rt.api_version)
        return self._commit_update(rt, st, new, managers, opts)

    def patch(self, rt: ResourceType, namespace: str | None, name: str, content_type: str, body: Any,
              opts: WriteOptions, subresource: str = "") -> dict[str, Any]:
        """PATCH with merge, strategic merge (built-in kinds only), JSON patch or apply."""
        ct = content_type.split(";")[0].strip().lower()
        if ct == "application/apply-patch+yaml":
            return self.apply(rt, namespace, name, body, opts, subresource)
        accepted = ["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]
        if not rt.is_custom:
            accepted.append("application/strategic-merge-patch+json")
        if ct not in accepted:
            raise errors.unsupported_media_type(ct, accepted)
        st = self._get_stored(rt, namespace, name)
        current = rt.view(st.obj)
        current["metadata"].pop("managedFields", None)
        if ct == "application/merge-patch+json":
            if not isinstance(body, dict):
                raise errors.bad_request("merge patch must be a JSON object")
            new = merge_patch(current, body)
        elif ct == "application/strategic-merge-patch+json":
            if not isinstance(body, dict):
                raise errors.bad_request("strategic merge patch must be a JSON object")
            new = strategic_merge_patch(current, body, rt.list_types())
        else:
            new = json_patch(current, body)
        if not isinstance(new, dict):
            raise errors.bad_request("the patched object is not a JSON object")
        self._check_kind(rt, new)
        return self._update(rt, st, rt.to_storage(new), name, namespace, subresource, opts)

    def apply(self, rt: ResourceType, namespace: str | None, name: str, body: Any, opts: WriteOptions,
              subresource: str = "") -> dict[str, Any]:
        """Server-side apply (see :mod:`standin.ssa`); creates the object when it does not exist."""
        if not isinstance(body, dict):
            raise errors.bad_request("apply patch must be an object")
        if not body.get("apiVersion") or not body.get("kind"):
            raise errors.bad_request("apiVersion and kind must be set in an apply patch")
        self._check_kind(rt, body)
        applied = rt.to_storage(copy.deepcopy(body))
        meta = applied.setdefault("metadata", {}) if isinstance(applied.get("metadata"), dict) else {}
        applied["metadata"] = meta
        if meta.get("name") not in (None, name):
            raise errors.bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})")
        if rt.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise errors.bad_request("the namespace of the provided object does not match the namespace sent on the request")
        if rt.schema is not None:
            pruned = rt.schema.prune(applied)
            if pruned and opts.field_validation == "Strict":
                raise errors.bad_request("strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in pruned))
        key = self._key(rt, namespace, name)
        st = self._objects(rt).get(key)
        lt = rt.list_types()
        now = now_iso()
        if st is None:
            if subresource:
                raise errors.not_found(rt.group, rt.plural, name)
            if meta.get("resourceVersion"):
                raise errors.conflict(rt.group, rt.plural, name)
            managers = Managers()
            skeleton = {"apiVersion": applied["apiVersion"], "kind": rt.kind, "metadata": {"name": name}}
            obj = managers.apply(skeleton, applied, opts.field_manager, "", opts.force, rt.has_status, lt, now,
                                 rt.api_version, rt.kind)
            obj["metadata"]["name"] = name
            return self.create(rt, namespace, rt.view(obj), opts, managers)
        rv = meta.get("resourceVersion")
        if rv and rv != st.obj["metadata"]["resourceVersion"]:
            raise errors.conflict(rt.group, rt.plural, name)
        if rt.has_status:
            if subresource == "status":
                applied = {k: v for k, v in applied.items() if k in ("apiVersion", "kind", "metadata", "status")}
                applied["metadata"] = {k: v for k, v in meta.items() if k in ("name", "namespace")}
            else:
                applied.pop("status", None)
        current = copy.deepcopy(st.obj)
        current["metadata"].pop("managedFields", None)
        managers = st.managers.copy()
        merged = managers.apply(current, applied, opts.field_manager, subresource, opts.force, rt.has_status, lt,
                                now, rt.api_version, rt.kind)
        merged = self._merge_meta(rt, st.obj, merged, name, namespace, subresource)
        merged = self._prepare(rt, merged, st.obj, opts)
        return self._commit_update(rt, st, merged, managers, opts)

    # ---- delete ------------------------------------------------------------------------------

    def delete(self, rt: ResourceType, namespace: str | None, name: str, options: dict[str, Any] | None,
               opts: WriteOptions) -> tuple[dict[str, Any], bool]:
        """DELETE: returns (object, removed). Finalizers keep the object with a deletionTimestamp."""
        st = self._get_stored(rt, namespace, name)
        if rt.plural == "namespaces" and name in ("default", "kube-system", "kube-public"):
            raise ApiError(403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may not be deleted')
        pre = (options or {}).get("preconditions") or {}
        om = st.obj["metadata"]
        if pre.get("uid") and pre["uid"] != om["uid"]:
            raise errors.conflict(rt.group, rt.plural, name,
                                  f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {om['uid']}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != om["resourceVersion"]:
            raise errors.conflict(rt.group, rt.plural, name,
                                  f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                                  f"ResourceVersion in object meta: {om['resourceVersion']}")
        keeps = bool(om.get("finalizers")) or rt.plural == "namespaces"
        if keeps:
            if om.get("deletionTimestamp"):
                return rt.view(st.obj), False
            new = copy.deepcopy(st.obj)
            new["metadata"]["deletionTimestamp"] = now_iso()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            if rt.tracks_generation:
                new["metadata"]["generation"] = om.get("generation", 1) + 1
            if rt.plural == "namespaces":
                new.setdefault("status", {})["phase"] = "Terminating"
            if opts.dry_run:
                return rt.view(new), False
            old = st.obj
            new["metadata"]["resourceVersion"] = str(self._next_rv())
            st.obj = new
            self._emit(rt.storage, "MODIFIED", old, new)
            if rt.plural == "namespaces":
                self._terminate_namespace(name)
            if rt.plural == "customresourcedefinitions":
                self._terminate_crd(new)
            st = self._objects(rt).get(self._key(rt, namespace, name))
            return (rt.view(st.obj), False) if st else (rt.view(new), True)
        if opts.dry_run:
            return rt.view(st.obj), True
        final = copy.deepcopy(st.obj)
        final["metadata"]["resourceVersion"] = str(self._next_rv())
        del self._objects(rt)[self._key(rt, namespace, name)]
        self._emit(rt.storage, "DELETED", st.obj, final)
        self._after_removal(rt, final)
        return rt.view(final), True

    def _after_update(self, rt: ResourceType, old: dict[str, Any], new: dict[str, Any]) -> None:
        if rt.plural == "customresourcedefinitions" and not new["metadata"].get("deletionTimestamp"):
            self._register_crd(new)

    def _after_removal(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        """Garbage collection of dependents, namespace and CRD finalization."""
        meta = obj["metadata"]
        uid = meta.get("uid")
        if rt.plural == "customresourcedefinitions":
            self._unregister_crd(obj)
        if rt.plural == "namespaces":
            return
        dependents = []
        for storage, objs in self.objects.items():
            for (ns, n), st in objs.items():
                refs = st.obj["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs) and (not rt.namespaced or ns == meta.get("namespace")):
                    dependents.append((storage, ns, n))
        for storage, ns, n in dependents:
            drt = next((t for t in self.types.values() if t.storage == storage), None)
            if drt is None:
                continue
            st = self.objects[storage].get((ns, n))
            if st is None:
                continue
            refs = [r for r in st.obj["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
            if refs:  # other owners remain: only drop the dangling reference
                body = drt.view(st.obj)
                body["metadata"]["ownerReferences"] = refs
                self._update(drt, st, drt.to_storage(body), n, ns or None, "", WriteOptions("garbage-collector"))
            else:
                self.delete(drt, ns or None, n, None, WriteOptions("garbage-collector"))
        ns = meta.get("namespace")
        if ns:
            self._reap_namespace(ns)
        crd = self._crd_of(rt)
        if crd is not None:
            self._reap_crd(crd)

    # ---- namespaces --------------------------------------------------------------------------

    def _terminate_namespace(self, name: str) -> None:
        for rt in list(self.types.values()):
            if not rt.namespaced or (rt.to_view is not None):
                continue
            for (ns, n) in list(self._objects(rt)):
                if ns == name and (ns, n) in self._objects(rt):
                    self.delete(rt, ns, n, None, WriteOptions("namespace-controller"))
        self._reap_namespace(name)

    def _reap_namespace(self, name: str) -> None:
        st = self.objects["/namespaces"].get(("", name))
        if st is None or not st.obj["metadata"].get("deletionTimestamp"):
            return
        for storage, objs in self.objects.items():
            if any(ns == name for (ns, _n) in objs):
                return
        final = copy.deepcopy(st.obj)
        final["metadata"]["resourceVersion"] = str(self._next_rv())
        final["spec"] = {}
        del self.objects["/namespaces"][("", name)]
        self._emit("/namespaces", "DELETED", st.obj, final)

    # ---- CRDs --------------------------------------------------------------------------------

    def _validate_crd(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        spec = obj.get("spec") or {}
        names = spec.get("names") or {}
        name = obj["metadata"].get("name", "")
        causes = []
        if not spec.get("group"):
            causes.append(("FieldValueRequired", "spec.group", "Required value"))
        if not names.get("plural"):
            causes.append(("FieldValueRequired", "spec.names.plural", "Required value"))
        if not names.get("kind"):
            causes.append(("FieldValueRequired", "spec.names.kind", "Required value"))
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            causes.append(("FieldValueNotSupported", "spec.scope",
                           f'Unsupported value: "{spec.get("scope")}": supported values: "Cluster", "Namespaced"'))
        versions = spec.get("versions") or []
        if not versions:
            causes.append(("FieldValueRequired", "spec.versions", "Required value: must have exactly one version marked as storage version"))
        elif sum(1 for v in versions if v.get("storage")) != 1:
            causes.append(("FieldValueInvalid", "spec.versions",
                           "Invalid value: must have exactly one version marked as storage version"))
        for i, v in enumerate(versions):
            if not ((v.get("schema") or {}).get("openAPIV3Schema")):
                causes.append(("FieldValueRequired", f"spec.versions[{i}].schema.openAPIV3Schema",
                               "Required value: schemas are required"))
        if names.get("plural") and spec.get("group") and name != f"{names['plural']}.{spec['group']}":
            causes.append(("FieldValueInvalid", "metadata.name",
                           f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group'))
        if old is not None:
            for f in ("group",):
                if spec.get(f) != (old.get("spec") or {}).get(f):
                    causes.append(("FieldValueInvalid", f"spec.{f}", "Invalid value: field is immutable"))
        if causes:
            raise errors.invalid("CustomResourceDefinition", "apiextensions.k8s.io", name, causes)
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", names["kind"] + "List")
        spec.setdefault("conversion", {"strategy": "None"})

    @staticmethod
    def _crd_status(obj: dict[str, Any]) -> None:
        spec = obj["spec"]
        status = obj.setdefault("status", {})
        t = now_iso()
        old = {c.get("type"): c for c in status.get("conditions") or []}

        def cond(typ, reason, message):
            prev = old.get(typ)
            return {"type": typ, "status": "True", "reason": reason, "message": message,
                    "lastTransitionTime": prev["lastTransitionTime"] if prev and prev.get("status") == "True" else t}

        status["acceptedNames"] = {k: v for k, v in spec["names"].items()}
        status["conditions"] = [cond("NamesAccepted", "NoConflicts", "no conflicts found"),
                                cond("Established", "InitialNamesAccepted", "the initial names have been accepted")]
        storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
        stored = list(status.get("storedVersions") or [])
        if storage not in stored:
            stored.append(storage)
        status["storedVersions"] = stored

    def _register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        names = spec["names"]
        group = spec["group"]
        storage_version = next(v["name"] for v in spec["versions"] if v.get("storage"))
        storage = f"{group}/{names['plural']}"
        for key in [k for k, t in self.types.items() if t.crd_name == crd["metadata"]["name"]]:
            del self.types[key]
        for v in spec["versions"]:
            if not v.get("served", True):
                continue
            sel = {s["jsonPath"].lstrip(".") for s in v.get("selectableFields") or [] if s.get("jsonPath")}
            self.types[(group, v["name"], names["plural"])] = ResourceType(
                group=group, version=v["name"], plural=names["plural"], singular=names["singular"],
                kind=names["kind"], namespaced=spec["scope"] == "Namespaced", storage=storage,
                has_status="status" in (v.get("subresources") or {}),
                tracks_generation=True, short_names=list(names.get("shortNames") or []),
                categories=list(names.get("categories") or []),
                schema=VersionSchema((v.get("schema") or {}).get("openAPIV3Schema")),
                crd_name=crd["metadata"]["name"], printer_columns=list(v.get("additionalPrinterColumns") or []),
                field_selectors=sel, storage_api_version=f"{group}/{storage_version}",
                subresources=["status"] if "status" in (v.get("subresources") or {}) else [],
            )
        self.objects.setdefault(storage, {})

    def _crd_of(self, rt: ResourceType) -> str | None:
        return rt.crd_name

    def _terminate_crd(self, crd: dict[str, Any]) -> None:
        rts = [t for t in self.types.values() if t.crd_name == crd["metadata"]["name"]]
        if rts:
            rt = rts[0]
            for (ns, n) in list(self._objects(rt)):
                if (ns, n) in self._objects(rt):
                    self.delete(rt, ns or None, n, None, WriteOptions("customresourcecleanup"))
        self._reap_crd(crd["metadata"]["name"])

    def _reap_crd(self, crd_name: str) -> None:
        crt = self.types[("apiextensions.k8s.io", "v1", "customresourcedefinitions")]
        st = self._objects(crt).get(("", crd_name))
        if st is None or not st.obj["metadata"].get("deletionTimestamp"):
            return
        spec = st.obj["spec"]
        if self.objects.get(f"{spec['group']}/{spec['names']['plural']}"):
            return
        body = crt.view(st.obj)
        body["metadata"]["finalizers"] = [f for f in body["metadata"].get("finalizers") or []
                                          if f != "customresourcecleanup.apiextensions.k8s.io"]
        body["metadata"].pop("resourceVersion", None)
        self._update(crt, st, crt.to_storage(body), crd_name, None, "", WriteOptions("apiextensions-apiserver"))

    def _unregister_crd(self, crd: dict[str, Any]) -> None:
        name = crd["metadata"]["name"]
        for key in [k for k, t in self.types.items() if t.crd_name == name]:
            rt = self.types.pop(key)
            for w in list(self.watchers.get(rt.storage, ())):
                w.close()
        spec = crd["spec"]
        storage = f"{spec['group']}/{spec['names']['plural']}"
        if not self.objects.get(storage):
            self.objects.pop(storage, None)
