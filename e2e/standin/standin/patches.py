"""Patch formats: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and a strategic merge patch
subset.

List semantics come from a ``ListTypes`` callable that maps a schema path (field names only, list
indices dropped, e.g. ``("status", "conditions")``) to ``("map", [keys])``, ``("set", [])`` or
``("atomic", [])``. For custom resources it is read from the CRD schema; for built-in kinds from a
small table in :mod:`standin.store`.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from .errors import ApiError

ListTypes = Callable[[tuple[str, ...]], tuple[str, list[str]]]


def atomic_lists(_path: tuple[str, ...]) -> tuple[str, list[str]]:
    """A ``ListTypes`` where every list is atomic."""
    return ("atomic", [])


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: unlike Python ``==``, ``true`` is not ``1`` (but ``1`` equals ``1.0``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return a == b


def patch_error(message: str) -> ApiError:
    """A patch that cannot be applied: 422, as the real server answers."""
    return ApiError(422, "Invalid", message)


# --------------------------------------------------------------------------------------------
# JSON merge patch
# --------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --------------------------------------------------------------------------------------------
# Strategic merge patch (subset)
# --------------------------------------------------------------------------------------------


def _key_of(item: Any, keys: list[str]) -> tuple | None:
    if not isinstance(item, dict):
        return None
    return tuple(item.get(k) for k in keys)


def strategic_merge_patch(target: Any, patch: Any, list_types: ListTypes, path: tuple[str, ...] = ()) -> Any:
    """Strategic merge patch for built-in kinds.

    Maps merge like a merge patch. Lists declared ``map`` (``patchMergeKey``) merge by key, items
    with ``$patch: delete`` are removed; lists declared ``set`` (``patchStrategy: merge`` on
    primitive lists such as ``metadata.finalizers``) are unioned; other lists are replaced.
    Directives understood: ``$patch: replace|delete`` (maps and list items),
    ``$deleteFromPrimitiveList/<field>``, ``$retainKeys``; ``$setElementOrder/<field>`` is ignored.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    patch = dict(patch)
    directive = patch.pop("$patch", None)
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: v for k, v in copy.deepcopy(patch).items() if not k.startswith("$")}
    retain = patch.pop("$retainKeys", None)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    deletes: dict[str, list[Any]] = {}
    for key in list(patch):
        if key.startswith("$setElementOrder/"):
            patch.pop(key)
        elif key.startswith("$deleteFromPrimitiveList/"):
            deletes[key.split("/", 1)[1]] = patch.pop(key) or []
    for key, value in patch.items():
        sub = path + (key,)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            kind, keys = list_types(sub)
            result[key] = _strategic_list(result.get(key), value, kind, keys, list_types, sub)
        else:
            merged = strategic_merge_patch(result.get(key), value, list_types, sub)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    for key, values in deletes.items():
        if isinstance(result.get(key), list):
            result[key] = [v for v in result[key] if not any(json_equal(v, d) for d in values)]
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _strategic_list(
    current: Any, patch: list[Any], kind: str, keys: list[str], list_types: ListTypes, path: tuple[str, ...]
) -> list[Any]:
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    current = current if isinstance(current, list) else []
    if kind == "set":
        out = copy.deepcopy(current)
        for v in patch:
            if not any(json_equal(v, have) for have in out):
                out.append(copy.deepcopy(v))
        return out
    if kind != "map" or not keys:
        return copy.deepcopy(patch)
    out = copy.deepcopy(current)
    for item in patch:
        k = _key_of(item, keys)
        idx = next((i for i, have in enumerate(out) if _key_of(have, keys) == k), None)
        if isinstance(item, dict) and item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(strategic_merge_patch({}, item, list_types, path))
        else:
            out[idx] = strategic_merge_patch(out[idx], item, list_types, path)
    return out


# --------------------------------------------------------------------------------------------
# JSON patch (RFC 6902)
# --------------------------------------------------------------------------------------------

_MISSING = object()


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise patch_error(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _array_index(container: list[Any], token: str, op: str, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise patch_error(f"{op} operation does not apply: invalid array index {token!r}")
    i = int(token)
    limit = len(container) if allow_end else len(container) - 1
    if i > limit:
        raise patch_error(f"{op} operation does not apply: index {i} out of bounds")
    return i


def _parent(doc: Any, tokens: list[str], op: str) -> Any:
    cur = doc
    for t in tokens[:-1]:
        if isinstance(cur, dict) and t in cur:
            cur = cur[t]
        elif isinstance(cur, list):
            cur = cur[_array_index(cur, t, op, False)]
        else:
            raise patch_error(f"{op} operation does not apply: doc is missing path: \"/{'/'.join(tokens)}\"")
    return cur


def _get(doc: Any, tokens: list[str], op: str) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens, op)
    last = tokens[-1]
    if isinstance(parent, dict):
        return parent.get(last, _MISSING)
    if isinstance(parent, list):
        if last.isdigit() and int(last) < len(parent):
            return parent[int(last)]
        return _MISSING
    raise patch_error(f"{op} operation does not apply: doc is missing path")


def _add(doc: Any, tokens: list[str], value: Any, op: str = "add") -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens, op)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_array_index(parent, last, op, True), value)
    else:
        raise patch_error(f"{op} operation does not apply: doc is missing path")
    return doc


def _remove(doc: Any, tokens: list[str], op: str = "remove") -> Any:
    if not tokens:
        raise patch_error(f"{op} operation does not apply: cannot remove the root")
    parent = _parent(doc, tokens, op)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise patch_error(f"{op} operation does not apply: doc is missing key: /{'/'.join(tokens)}")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_array_index(parent, last, op, False))
    raise patch_error(f"{op} operation does not apply: doc is missing path")


def json_patch(doc: Any, ops: Any) -> Any:
    """Apply an RFC 6902 patch; every failure (including a failed ``test``) is a 422.

    Like the real server (evanphx/json-patch), ``test`` of a missing member against ``null``
    succeeds when the member's parent exists; kube-runtime's finalizer helper relies on this.
    """
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise patch_error(f"invalid JSON patch operation {op!r}")
        name, tokens = op["op"], _pointer(op["path"])
        if name in ("add", "replace", "test") and "value" not in op:
            raise patch_error(f"{name} operation: missing value")
        if name == "add":
            doc = _add(doc, tokens, copy.deepcopy(op["value"]))
        elif name == "remove":
            _remove(doc, tokens)
        elif name == "replace":
            if _get(doc, tokens, "replace") is _MISSING:
                raise patch_error(f"replace operation does not apply: doc is missing key: {op['path']}")
            if tokens:
                _remove(doc, tokens, "replace")
            doc = _add(doc, tokens, copy.deepcopy(op["value"]), "replace")
        elif name in ("move", "copy"):
            src = _pointer(op.get("from"))
            value = _get(doc, src, name)
            if value is _MISSING:
                raise patch_error(f"{name} operation does not apply: doc is missing from path: {op.get('from')}")
            if name == "move":
                _remove(doc, src, "move")
            doc = _add(doc, tokens, copy.deepcopy(value), name)
        elif name == "test":
            have = _get(doc, tokens, "test")
            want = op["value"]
            if have is _MISSING:
                have = None
            if not json_equal(have, want):
                raise patch_error(f"testing value {op['path']} failed: test failed")
        else:
            raise patch_error(f"Unexpected kind: {name}")
    return doc
