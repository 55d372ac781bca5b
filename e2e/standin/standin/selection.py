"""Label selectors, field selectors and the small JSONPath subset used by printer columns."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import bad_request

# --------------------------------------------------------------------------------------------
# Label selectors
# --------------------------------------------------------------------------------------------

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"


@dataclass(frozen=True)
class Requirement:
    """One label requirement: ``op`` is one of ``exists``, ``!``, ``=``, ``!=``, ``in``, ``notin``,
    ``gt``, ``lt``."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        """Kubernetes semantics: ``!=`` and ``notin`` also match objects without the key."""
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op in ("gt", "lt"):
            try:
                have, want = int(value or ""), int(self.values[0])
            except ValueError:
                return False
            return have > want if self.op == "gt" else have < want
        return False


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse ``labelSelector`` (equality- and set-based). Raises 400 BadRequest on bad syntax."""
    if not text or not text.strip():
        return []
    reqs = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            raise bad_request(f'unable to parse requirement: found \'\', expected: identifier in "{text}"')
        m = re.fullmatch(rf"({_KEY})\s+(in|notin)\s+\(([^)]*)\)", part)
        if m:
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip() or m.group(3).strip())
            for v in values:
                if not re.fullmatch(_VALUE, v):
                    raise bad_request(f"unable to parse requirement: invalid label value: {v!r}")
            reqs.append(Requirement(m.group(1), m.group(2), values))
            continue
        m = re.fullmatch(rf"({_KEY})\s*(==|=|!=|>|<)\s*({_VALUE})", part)
        if m:
            op = {"==": "=", ">": "gt", "<": "lt"}.get(m.group(2), m.group(2))
            reqs.append(Requirement(m.group(1), op, (m.group(3),)))
            continue
        m = re.fullmatch(rf"!\s*({_KEY})", part)
        if m:
            reqs.append(Requirement(m.group(1), "!"))
            continue
        if re.fullmatch(_KEY, part):
            reqs.append(Requirement(part, "exists"))
            continue
        raise bad_request(f'unable to parse requirement: invalid label selector "{text}" at "{part}"')
    return reqs


def labels_match(reqs: list[Requirement], obj: dict[str, Any]) -> bool:
    """Whether ``obj``'s labels satisfy every requirement."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


# --------------------------------------------------------------------------------------------
# Field selectors
# --------------------------------------------------------------------------------------------

FieldGetter = Callable[[dict[str, Any]], Any]


def _dotted(path: str) -> FieldGetter:
    keys = path.split(".")

    def get(obj: dict[str, Any]) -> Any:
        cur: Any = obj
        for k in keys:
            if not isinstance(cur, dict):
                return None
            cur = cur.get(k)
        return cur

    return get


def parse_field_selector(
    text: str | None, supported: set[str]
) -> list[tuple[str, str, str]]:
    """Parse ``fieldSelector`` into ``(field, op, value)`` with op ``=`` or ``!=``.

    Only ``metadata.name``, ``metadata.namespace`` and the resource's extra ``supported`` fields
    are accepted, like the real server (``field label not supported: x`` otherwise).
    """
    if not text or not text.strip():
        return []
    out = []
    for raw in text.split(","):
        part = raw.strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)\s*(==|=|!=)\s*(.*)", part)
        if not m:
            raise bad_request(f"invalid field selector: {part!r}")
        field, op, value = m.group(1), m.group(2), m.group(3)
        if field not in supported and field not in ("metadata.name", "metadata.namespace"):
            raise bad_request(f'"{field}" is not a known field selector: only "metadata.name", "metadata.namespace"'
                              + "".join(f', "{f}"' for f in sorted(supported)))
        out.append((field, "!=" if op == "!=" else "=", value))
    return out


def fields_match(reqs: list[tuple[str, str, str]], obj: dict[str, Any]) -> bool:
    """Whether ``obj`` satisfies every field requirement (values compared as strings)."""
    for field, op, value in reqs:
        got = _dotted(field)(obj)
        if isinstance(got, bool):
            got = "true" if got else "false"
        got = "" if got is None else str(got)
        if (got == value) != (op == "="):
            return False
    return True


# --------------------------------------------------------------------------------------------
# JSONPath subset (printer columns, selectableFields)
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_\-$]+)
      | \[\s*(?P<index>-?\d+)\s*\]
      | \[\s*\*\s*\]|\.\*
      | \[\s*'(?P<qfield>[^']*)'\s*\]
      | \[\s*\?\(\s*@(?P<fpath>(?:\.[A-Za-z0-9_\-]+)+)\s*(?P<fop>==|!=)\s*(?P<fval>"[^"]*"|'[^']*'|[^)\s]+)\s*\)\s*\]
    """,
    re.VERBOSE,
)


def jsonpath(obj: Any, path: str) -> list[Any]:
    """Evaluate a JSONPath such as ``.status.conditions[?(@.type=="Ready")].status``.

    Supports ``.field``, ``['field']``, ``[n]``, ``[*]`` / ``.*`` and ``[?(@.a.b==value)]`` /
    ``!=`` filters; ``{...}`` wrapping is stripped. Returns every match, in order.
    """
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    current = [obj]
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if not m:
            raise ValueError(f"unsupported JSONPath {path!r} at {pos}")
        pos = m.end()
        nxt: list[Any] = []
        for cur in current:
            if m.group("field") is not None or m.group("qfield") is not None:
                key = m.group("field") if m.group("field") is not None else m.group("qfield")
                if isinstance(cur, dict) and key in cur:
                    nxt.append(cur[key])
            elif m.group("index") is not None:
                i = int(m.group("index"))
                if isinstance(cur, list) and -len(cur) <= i < len(cur):
                    nxt.append(cur[i])
            elif m.group("fpath") is not None:
                items = cur if isinstance(cur, list) else []
                want_raw = m.group("fval")
                if want_raw[0] in "\"'":
                    want: Any = want_raw[1:-1]
                else:
                    try:
                        want = json.loads(want_raw)
                    except ValueError:
                        want = want_raw
                getter = _dotted(m.group("fpath")[1:])
                for item in items:
                    got = getter(item) if isinstance(item, dict) else None
                    if (got == want) == (m.group("fop") == "=="):
                        nxt.append(item)
            else:  # wildcard
                if isinstance(cur, list):
                    nxt.extend(cur)
                elif isinstance(cur, dict):
                    nxt.extend(cur.values())
        current = nxt
    return current
