"""Server-side apply: field sets, the apply merge, field ownership and conflicts.

What is modelled (a simplification of structured-merge-diff, enough for controllers):

* A *field set* is a set of paths. A path element is a field name (``str``), a list-map item
  ``("k", '{"name":"a"}')`` or a set item ``("v", '"x"')``. Leaves are scalars, atomic lists and
  empty maps; list-map items are also members (like the ``.`` entries of ``fieldsV1``).
* Every manager entry is keyed ``(manager, operation, subresource)`` with operation ``Apply`` or
  ``Update`` and subresource ``""`` or ``"status"``; entries are rendered as ``managedFields``.
* **Apply** merges the applied configuration into the live object (maps recursively, list maps by
  key, sets by union, atomic lists replaced). Without ``force`` a field whose value would change and
  that another manager owns is a 409 Conflict naming the fields and their managers; with ``force``
  ownership moves to the applier. Fields the same manager applied before but no longer applies are
  removed from the object unless another manager still owns them (or something inside them).
* **Update** (PUT, merge/JSON/strategic patch) gives the writer ownership of the fields whose value
  it changed, taken away from everybody else; fields that disappeared leave every set.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Iterable

from .errors import ApiError
from .patches import ListTypes, json_equal

Path = tuple
ManagerKey = tuple[str, str, str]  # (manager, operation, subresource)

#: metadata fields that take part in field management; the rest is server-owned.
MANAGED_METADATA = {"labels", "annotations", "finalizers", "ownerReferences"}


def _key_json(item: dict[str, Any], keys: list[str]) -> str:
    return json.dumps({k: item.get(k) for k in keys}, sort_keys=True, separators=(",", ":"))


def schema_path(path: Path) -> tuple[str, ...]:
    """The path with list elements dropped, as :data:`ListTypes` expects."""
    return tuple(p for p in path if isinstance(p, str))


def fieldset(obj: Any, list_types: ListTypes, path: Path = ()) -> set[Path]:
    """All managed paths present in ``obj``."""
    out: set[Path] = set()
    if isinstance(obj, dict):
        if not obj and path:
            out.add(path)
        for key, value in obj.items():
            out |= _field_paths(value, list_types, path + (key,))
    return out


def _field_paths(value: Any, list_types: ListTypes, sub: Path) -> set[Path]:
    if isinstance(value, dict):
        return fieldset(value, list_types, sub) if value else {sub}
    if isinstance(value, list):
        kind, keys = list_types(schema_path(sub))
        if kind == "map" and keys and all(isinstance(i, dict) for i in value):
            out: set[Path] = set()
            for item in value:
                ip = sub + (("k", _key_json(item, keys)),)
                out.add(ip)
                out |= fieldset(item, list_types, ip)
            return out
        if kind == "set":
            return {sub + (("v", json.dumps(v, sort_keys=True)),) for v in value}
        return {sub}
    return {sub}


def managed_only(paths: Iterable[Path], subresource: str, has_status: bool) -> set[Path]:
    """Keep the paths a write through ``subresource`` can own."""
    out = set()
    for p in paths:
        if p[0] in ("apiVersion", "kind"):
            continue
        if p[0] == "metadata" and (len(p) < 2 or p[1] not in MANAGED_METADATA):
            continue
        if has_status and (subresource == "status") != (p[0] == "status"):
            continue
        out.add(p)
    return out


_MISSING = object()


class ListIndex:
    """List-map items by key, for many :func:`get_at` calls on objects that do not change
    meanwhile: a lookup is then a dict access instead of a scan of the list (an apply of a
    500-item list-map made 10,000 scans of 500 items)."""

    def __init__(self) -> None:
        self._lists: dict[tuple[int, tuple[str, ...]], tuple[list[Any], dict[str, Any]]] = {}

    def find(self, items: list[Any], key_json: str) -> Any:
        keys = tuple(sorted(json.loads(key_json)))
        entry = self._lists.get((id(items), keys))
        if entry is None:
            by_key: dict[str, Any] = {}
            for i in items:
                if isinstance(i, dict):
                    by_key.setdefault(_key_json(i, list(keys)), i)
            entry = (items, by_key)  # holding the list keeps its id from being reused
            self._lists[(id(items), keys)] = entry
        return entry[1].get(key_json, _MISSING)


def get_at(obj: Any, path: Path, list_types: ListTypes, index: ListIndex | None = None) -> Any:
    """Value at ``path`` or ``_MISSING``. ``index`` speeds up list-map lookups while ``obj`` does
    not change."""
    cur = obj
    for el in path:
        if isinstance(el, str):
            if not isinstance(cur, dict) or el not in cur:
                return _MISSING
            cur = cur[el]
        elif el[0] == "k":
            if not isinstance(cur, list):
                return _MISSING
            if index is not None:
                found = index.find(cur, el[1])
                if found is not _MISSING:
                    cur = found
                    continue
            want = json.loads(el[1])
            cur = next(
                (i for i in cur if isinstance(i, dict) and all(json_equal(i.get(k), v) for k, v in want.items())),
                _MISSING,
            )
            if cur is _MISSING:
                return _MISSING
        else:  # set item
            if not isinstance(cur, list):
                return _MISSING
            want = json.loads(el[1])
            cur = next((i for i in cur if json_equal(i, want)), _MISSING)
            if cur is _MISSING:
                return _MISSING
    return cur


def remove_at(obj: Any, path: Path, list_types: ListTypes) -> None:
    """Remove ``path`` from ``obj`` (in place), then drop maps and lists it left empty."""
    parent = get_at(obj, path[:-1], list_types)
    el = path[-1]
    if isinstance(el, str):
        if isinstance(parent, dict):
            parent.pop(el, None)
    elif isinstance(parent, list):
        want = json.loads(el[1])
        for i, item in enumerate(parent):
            match = (
                isinstance(item, dict) and all(json_equal(item.get(k), v) for k, v in want.items())
                if el[0] == "k"
                else json_equal(item, want)
            )
            if match:
                parent.pop(i)
                break
    if len(path) > 1 and parent in ({}, []):
        remove_at(obj, path[:-1], list_types)


def apply_merge(current: Any, applied: Any, list_types: ListTypes, path: Path = ()) -> Any:
    """Merge the applied configuration into ``current`` (a new value is returned)."""
    if isinstance(applied, dict):
        result = copy.deepcopy(current) if isinstance(current, dict) else {}
        for key, value in applied.items():
            if value is None:
                result.pop(key, None)
            else:
                result[key] = apply_merge(result.get(key), value, list_types, path + (key,))
        return result
    if isinstance(applied, list):
        kind, keys = list_types(schema_path(path))
        cur = current if isinstance(current, list) else []
        if kind == "map" and keys:
            out = copy.deepcopy(cur)
            positions: dict[str, int] = {}
            for i, have in enumerate(out):
                if isinstance(have, dict):
                    positions.setdefault(_key_json(have, keys), i)
            for item in applied:
                if not isinstance(item, dict):
                    raise ApiError(422, "Invalid", f".{'.'.join(schema_path(path))}: list-map items must be objects")
                kj = _key_json(item, keys)
                idx = positions.get(kj)
                if idx is None:
                    positions[kj] = len(out)
                    out.append(apply_merge({}, item, list_types, path))
                else:
                    out[idx] = apply_merge(out[idx], item, list_types, path)
            return out
        if kind == "set":
            out = copy.deepcopy(cur)
            for v in applied:
                if not any(json_equal(v, h) for h in out):
                    out.append(copy.deepcopy(v))
            return out
        return copy.deepcopy(applied)
    return copy.deepcopy(applied)


def render_path(path: Path) -> str:
    """A path as the real server prints it in conflict messages (``.spec.x[name="a"].y``)."""
    out = ""
    for el in path:
        if isinstance(el, str):
            out += "." + el
        elif el[0] == "k":
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(el[1]).items()) + "]"
        else:
            out += f"[={el[1]}]"
    return out


class Managers:
    """Per-object field ownership, keyed ``(manager, operation, subresource)``."""

    def __init__(self) -> None:
        self.entries: dict[ManagerKey, dict[str, Any]] = {}

    def copy(self) -> "Managers":
        """A deep copy (writes build a new state and commit it only on success)."""
        m = Managers()
        m.entries = {k: {"fields": set(v["fields"]), "time": v["time"], "apiVersion": v["apiVersion"]}
                     for k, v in self.entries.items()}
        return m

    def owners(self, path: Path, exclude: ManagerKey | None = None) -> list[ManagerKey]:
        """Managers (other than ``exclude``) whose set contains ``path``."""
        return [k for k, v in self.entries.items() if k != exclude and path in v["fields"]]

    def _owned_by_others(self, path: Path, me: ManagerKey) -> bool:
        n = len(path)
        for k, v in self.entries.items():
            if k == me:
                continue
            for q in v["fields"]:
                if q[:n] == path:
                    return True
        return False

    def _set(self, key: ManagerKey, fields: set[Path], now: str, api_version: str) -> None:
        if fields:
            self.entries[key] = {"fields": fields, "time": now, "apiVersion": api_version}
        else:
            self.entries.pop(key, None)

    def apply(
        self,
        current: dict[str, Any],
        applied: dict[str, Any],
        manager: str,
        subresource: str,
        force: bool,
        has_status: bool,
        list_types: ListTypes,
        now: str,
        api_version: str,
        kind: str,
    ) -> dict[str, Any]:
        """Server-side apply ``applied`` onto ``current``; returns the new object.

        Raises a 409 Conflict (``FieldManagerConflict`` causes) when, without ``force``, a field
        owned by another manager would change value.
        """
        me: ManagerKey = (manager, "Apply", subresource)
        new_set = managed_only(fieldset(applied, list_types), subresource, has_status)
        conflicts = []
        index = ListIndex()
        for p in sorted(new_set, key=render_path):
            if not isinstance(p[-1], str) and p[-1][0] == "k":
                continue  # list-map item nodes never conflict by themselves
            have = get_at(current, p, list_types, index)
            want = get_at(applied, p, list_types, index)
            if have is _MISSING or json_equal(have, want):
                continue
            for owner in self.owners(p, me):
                if force:
                    self.entries[owner]["fields"].discard(p)
                else:
                    conflicts.append((owner, p))
        if conflicts:
            causes = [
                {"type": "FieldManagerConflict", "message": f'conflict with "{o[0]}"'
                 + (f' with subresource "{o[2]}"' if o[2] else "") + f": {render_path(p)}", "field": render_path(p)}
                for o, p in conflicts
            ]
            lines = "\n".join(f"- {c['message']}" for c in causes)
            raise ApiError(
                409,
                "Conflict",
                f"Apply failed with {len(conflicts)} conflict{'s' if len(conflicts) > 1 else ''}: {lines}",
                {"causes": causes},
            )
        merged = apply_merge(current, applied, list_types)
        old_set = self.entries.get(me, {}).get("fields", set())
        # Shortest first: a list-map item nobody else owns goes as a whole, before its key fields
        # are gone (they identify it). Key fields of items that stay are never removed.
        for p in sorted(old_set - new_set, key=len):
            if self._owned_by_others(p, me) or get_at(merged, p, list_types) is _MISSING:
                continue
            if len(p) >= 2 and isinstance(p[-1], str) and not isinstance(p[-2], str) and p[-2][0] == "k" \
                    and p[-1] in json.loads(p[-2][1]):
                continue
            remove_at(merged, p, list_types)
        if me in self.entries and self.entries[me]["fields"] == new_set:
            now = self.entries[me]["time"]  # an unchanged apply leaves managedFields as they were
        self._set(me, new_set, now, api_version)
        self._forget_missing(merged, list_types)
        return merged

    def update(
        self,
        old: dict[str, Any] | None,
        new: dict[str, Any],
        manager: str,
        subresource: str,
        has_status: bool,
        list_types: ListTypes,
        now: str,
        api_version: str,
    ) -> None:
        """Record a non-apply write: ``manager`` owns what it changed, others lose it."""
        me: ManagerKey = (manager, "Update", subresource)
        new_fields = managed_only(fieldset(new, list_types), subresource, has_status)
        index = ListIndex()
        changed = {
            p for p in new_fields
            if old is None or not json_equal(get_at(old, p, list_types, index), get_at(new, p, list_types, index))
        }
        if changed:
            for k, v in self.entries.items():
                if k != me:
                    v["fields"] -= changed
            mine = self.entries.get(me, {}).get("fields", set()) | changed
            self._set(me, mine, now, api_version)
        self._forget_missing(new, list_types)

    def _forget_missing(self, obj: dict[str, Any], list_types: ListTypes) -> None:
        present = fieldset(obj, list_types)
        for k in list(self.entries):
            self.entries[k]["fields"] &= present
            if not self.entries[k]["fields"]:
                del self.entries[k]

    def managed_fields(self) -> list[dict[str, Any]]:
        """The entries as ``metadata.managedFields`` (``FieldsV1``)."""
        out = []
        for (manager, op, sub), v in sorted(self.entries.items()):
            tree: dict[str, Any] = {}
            for p in v["fields"]:
                node = tree
                for el in p:
                    name = "f:" + el if isinstance(el, str) else f"{el[0]}:{el[1]}"
                    node = node.setdefault(name, {})
                if not isinstance(p[-1], str) and p[-1][0] == "k":
                    node.setdefault(".", {})
            entry = {
                "manager": manager,
                "operation": op,
                "apiVersion": v["apiVersion"],
                "time": v["time"],
                "fieldsType": "FieldsV1",
                "fieldsV1": tree,
            }
            if sub:
                entry["subresource"] = sub
            out.append(entry)
        return out
