"""CRD ``openAPIV3Schema`` handling: validation (via ``jsonschema``), pruning of unknown fields,
list-map/set uniqueness, and the ``self == oldSelf`` transition rule.

Only CEL rules written exactly ``self == oldSelf`` are evaluated (on updates, where the old value
exists at the correlated place); every other ``x-kubernetes-validations`` rule is ignored.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from .patches import json_equal

Cause = tuple[str, str, str]  # (reason, field, message)

_COPY = {
    "type", "required", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern",
    "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties", "multipleOf",
}
_GO_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object",
             list: "array", type(None): "null"}


def to_json_schema(s: dict[str, Any]) -> dict[str, Any]:
    """Translate a structural OpenAPI v3 schema into JSON Schema (draft 2020-12).

    ``nullable: true`` adds ``null`` to ``type`` (and ``enum``); ``x-kubernetes-int-or-string``
    becomes ``anyOf: [integer, string]``; OpenAPI's boolean ``exclusiveMinimum/Maximum`` become the
    numeric form; ``format``, ``default``, ``description`` and CEL rules are dropped.
    """
    if not isinstance(s, dict):
        return {}
    out: dict[str, Any] = {k: v for k, v in s.items() if k in _COPY}
    if s.get("exclusiveMinimum") is True and "minimum" in s:
        out["exclusiveMinimum"] = out.pop("minimum")
    if s.get("exclusiveMaximum") is True and "maximum" in s:
        out["exclusiveMaximum"] = out.pop("maximum")
    if s.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in s:
        out["properties"] = {k: to_json_schema(v) for k, v in s["properties"].items()}
    if isinstance(s.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        out["items"] = to_json_schema(s["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(s.get(key), list) and key not in out:
            out[key] = [to_json_schema(x) for x in s[key]]
    if isinstance(s.get("not"), dict):
        out["not"] = to_json_schema(s["not"])
    if s.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = list(out["enum"]) + [None]
        if "anyOf" in out:
            out["anyOf"] = list(out["anyOf"]) + [{"type": "null"}]
    return out


def field_path(parts: Any) -> str:
    """``["spec", "disks", 0, "name"]`` -> ``spec.disks[0].name``."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def _show(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (str, bool)) or v is None else (
        str(v) if isinstance(v, (int, float)) else _GO_TYPES.get(type(v), "object"))


class VersionSchema:
    """The schema of one CRD version, compiled for validation, pruning and list semantics."""

    def __init__(self, openapi: dict[str, Any] | None) -> None:
        self.raw = openapi or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        root = to_json_schema(self.raw)
        props = dict(root.get("properties", {}))
        for k in ("apiVersion", "kind", "metadata"):
            props.pop(k, None)
        root["properties"] = props
        if "required" in root:
            root["required"] = [r for r in root["required"] if r not in ("apiVersion", "kind", "metadata")]
        self.validator = jsonschema.Draft202012Validator(root)

    # ---- navigation ------------------------------------------------------------------------

    def at(self, path: tuple[str, ...]) -> dict[str, Any] | None:
        """Schema node for a field path (list items are implicit), or None when unknown."""
        cur: Any = self.raw
        for name in path:
            while isinstance(cur, dict) and cur.get("type") == "array":
                cur = cur.get("items")
            if not isinstance(cur, dict):
                return None
            if name in cur.get("properties", {}):
                cur = cur["properties"][name]
            elif isinstance(cur.get("additionalProperties"), dict):
                cur = cur["additionalProperties"]
            else:
                return None
        return cur

    def list_type(self, path: tuple[str, ...]) -> tuple[str, list[str]]:
        """``("map", keys)``, ``("set", [])`` or ``("atomic", [])`` for the list at ``path``."""
        node = self.at(path)
        if isinstance(node, dict):
            lt = node.get("x-kubernetes-list-type")
            if lt == "map":
                return ("map", list(node.get("x-kubernetes-list-map-keys") or []))
            if lt == "set":
                return ("set", [])
        if path[:2] == ("metadata", "finalizers"):
            return ("set", [])
        if path[:2] == ("metadata", "ownerReferences"):
            return ("map", ["uid"])
        return ("atomic", [])

    # ---- pruning -----------------------------------------------------------------------------

    def prune(self, obj: dict[str, Any]) -> list[str]:
        """Drop fields the schema does not declare (in place); returns their paths.

        Like the real server, ``apiVersion``, ``kind`` and ``metadata`` at the root are kept, fields
        under ``x-kubernetes-preserve-unknown-fields`` are kept, and ``null`` values of fields that
        are not ``nullable`` are dropped (without being reported).
        """
        pruned: list[str] = []
        for key in list(obj):
            if key in ("apiVersion", "kind", "metadata"):
                continue
            props = self.raw.get("properties", {})
            if key in props:
                if obj[key] is None and not props[key].get("nullable"):
                    del obj[key]
                else:
                    obj[key] = self._prune(obj[key], props[key], [key], pruned)
            elif not self.raw.get("x-kubernetes-preserve-unknown-fields"):
                del obj[key]
                pruned.append(key)
        return pruned

    def _prune(self, value: Any, schema: dict[str, Any], path: list[Any], pruned: list[str]) -> Any:
        if isinstance(value, dict):
            if schema.get("x-kubernetes-embedded-resource"):
                keep = {"apiVersion", "kind", "metadata"}
            else:
                keep = set()
            props = schema.get("properties")
            addl = schema.get("additionalProperties")
            preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
            for key in list(value):
                if props is not None and key in props:
                    sub = props[key]
                elif isinstance(addl, dict):
                    sub = addl
                elif key in keep or preserve or addl is True:
                    continue
                else:
                    del value[key]
                    pruned.append(field_path(path + [key]))
                    continue
                if value[key] is None and not sub.get("nullable"):
                    del value[key]
                else:
                    value[key] = self._prune(value[key], sub, path + [key], pruned)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                value[i] = self._prune(item, schema["items"], path + [i], pruned)
        return value

    # ---- validation --------------------------------------------------------------------------

    def validate(self, obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
        """Schema, list-map and transition-rule checks; returns causes ``(reason, field, msg)``."""
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        causes: list[Cause] = []
        for err in sorted(self.validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))):
            causes.extend(self._cause(err))
        for key, sub in self.raw.get("properties", {}).items():
            if key in body:
                self._lists(body[key], sub, [key], causes)
                if old is not None and key in old and key not in ("metadata",):
                    self._transitions(body[key], old[key], sub, [key], causes)
        return causes

    @staticmethod
    def _cause(err: jsonschema.ValidationError) -> list[Cause]:
        field = field_path(err.absolute_path)
        v, inst = err.validator, err.instance
        if v == "required":
            missing = [r for r in err.validator_value if isinstance(inst, dict) and r not in inst]
            return [("FieldValueRequired", field_path(list(err.absolute_path) + [m]), "Required value")
                    for m in missing]
        shown = _show(inst)
        if v == "type":
            want = err.validator_value
            want = ",".join(w for w in want if w != "null") if isinstance(want, list) else want
            return [("FieldValueTypeInvalid", field,
                     f'Invalid value: "{_GO_TYPES.get(type(inst), "object")}": {field} in body must be of type {want}: "{_GO_TYPES.get(type(inst), "object")}"')]
        if v == "enum":
            allowed = ", ".join(json.dumps(x) for x in err.validator_value if x is not None)
            return [("FieldValueNotSupported", field, f"Unsupported value: {shown}: supported values: {allowed}")]
        if v == "minimum":
            return [("FieldValueInvalid", field, f"Invalid value: {shown}: {field} in body should be greater than or equal to {err.validator_value}")]
        if v == "maximum":
            return [("FieldValueInvalid", field, f"Invalid value: {shown}: {field} in body should be less than or equal to {err.validator_value}")]
        if v == "exclusiveMinimum":
            return [("FieldValueInvalid", field, f"Invalid value: {shown}: {field} in body should be greater than {err.validator_value}")]
        if v == "exclusiveMaximum":
            return [("FieldValueInvalid", field, f"Invalid value: {shown}: {field} in body should be less than {err.validator_value}")]
        if v == "minLength":
            return [("FieldValueInvalid", field, f"Invalid value: {shown}: {field} in body should be at least {err.validator_value} chars long")]
        if v == "maxLength":
            return [("FieldValueTooLong", field, f"Too long: may not be more than {err.validator_value} bytes")]
        if v == "pattern":
            return [("FieldValueInvalid", field, f"Invalid value: {shown}: {field} in body should match '{err.validator_value}'")]
        if v == "maxItems":
            return [("FieldValueTooMany", field, f"Too many: {len(inst)}: must have at most {err.validator_value} items")]
        if v == "minItems":
            return [("FieldValueInvalid", field, f"Invalid value: {len(inst)}: {field} in body should have at least {err.validator_value} items")]
        if v == "anyOf":
            return [("FieldValueInvalid", field, f"Invalid value: {shown}: {field} in body must be of type integer,string")]
        return [("FieldValueInvalid", field, f"Invalid value: {shown}: {err.message}")]

    def _lists(self, value: Any, schema: dict[str, Any], path: list[Any], causes: list[Cause]) -> None:
        if isinstance(value, list):
            lt = schema.get("x-kubernetes-list-type")
            seen: list[Any] = []
            for i, item in enumerate(value):
                if lt == "map" and isinstance(item, dict):
                    key = {k: item.get(k) for k in schema.get("x-kubernetes-list-map-keys") or []}
                    if any(json_equal(key, s) for s in seen):
                        causes.append(("FieldValueDuplicate", field_path(path + [i]),
                                       f"Duplicate value: {json.dumps(key, separators=(',', ':'))}"))
                    seen.append(key)
                elif lt == "set":
                    if any(json_equal(item, s) for s in seen):
                        causes.append(("FieldValueDuplicate", field_path(path + [i]), f"Duplicate value: {_show(item)}"))
                    seen.append(item)
                if isinstance(schema.get("items"), dict):
                    self._lists(item, schema["items"], path + [i], causes)
        elif isinstance(value, dict):
            props = schema.get("properties") or {}
            addl = schema.get("additionalProperties")
            for k, v in value.items():
                sub = props.get(k) or (addl if isinstance(addl, dict) else None)
                if sub:
                    self._lists(v, sub, path + [k], causes)

    def _transitions(self, new: Any, old: Any, schema: dict[str, Any], path: list[Any], causes: list[Cause]) -> None:
        for rule in schema.get("x-kubernetes-validations") or []:
            if re.sub(r"\s+", "", str(rule.get("rule", ""))) == "self==oldSelf" and not json_equal(new, old):
                msg = rule.get("message") or "failed rule: self == oldSelf"
                shown = _GO_TYPES.get(type(new), "object")
                causes.append(("FieldValueInvalid", field_path(path), f'Invalid value: "{shown}": {msg}'))
        if isinstance(new, dict) and isinstance(old, dict):
            props = schema.get("properties") or {}
            addl = schema.get("additionalProperties")
            for k, v in new.items():
                sub = props.get(k) or (addl if isinstance(addl, dict) else None)
                if sub and k in old:
                    self._transitions(v, old[k], sub, path + [k], causes)
        elif isinstance(new, list) and isinstance(old, list) and isinstance(schema.get("items"), dict):
            if schema.get("x-kubernetes-list-type") == "map":
                keys = schema.get("x-kubernetes-list-map-keys") or []
                for i, item in enumerate(new):
                    if not isinstance(item, dict):
                        continue
                    match = next((o for o in old if isinstance(o, dict)
                                  and all(json_equal(o.get(k), item.get(k)) for k in keys)), None)
                    if match is not None:
                        self._transitions(item, match, schema["items"], path + [i], causes)
