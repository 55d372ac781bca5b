"""Validation of built-in kinds and storage limits, as the real API server applies them.

``ValidateSecret``/``ValidateSecretUpdate`` and ``ValidateConfigMap``/``ValidateConfigMapUpdate``
of k8s.io/kubernetes ``pkg/apis/core/validation`` (key syntax, the 1 MiB data limit, the keys
each Secret type requires, immutable fields), and etcd's request size limit, which the API server
reports as a 500 for an object too large to store.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from .errors import ApiError

# core.MaxSecretSize and core.MaxConfigMapSize.
MAX_SECRET_BYTES = 1024 * 1024
MAX_CONFIG_MAP_BYTES = 1024 * 1024
# etcd's default --max-request-bytes: a larger object cannot be stored.
MAX_STORED_BYTES = 1536 * 1024

_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

Cause = tuple[str, str, str]


def _config_key_causes(path: str, key: str) -> list[Cause]:
    """``validation.IsConfigMapKey``."""
    msgs = []
    if len(key) > 253:
        msgs.append("must be no more than 253 characters")
    if not _CONFIG_KEY.match(key):
        msgs.append("a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
                    "(e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is "
                    "'[-._a-zA-Z0-9]+')")
    if key == ".":
        msgs.append("must not be '.'")
    elif key == "..":
        msgs.append("must not be '..'")
    elif key.startswith(".."):
        msgs.append("must not start with '..'")
    return [("FieldValueInvalid", f"{path}[{key}]", f'Invalid value: "{key}": {m}') for m in msgs]


def _decoded(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def secret_causes(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    """What the real server says about a Secret (``data`` already holds ``stringData``)."""
    causes: list[Cause] = []
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        return [("FieldValueTypeInvalid", "data", "Invalid value: must be a map")]
    total = 0
    values: dict[str, bytes] = {}
    for key, value in data.items():
        causes += _config_key_causes("data", key)
        raw = _decoded(value if value is not None else "")
        if raw is None:
            causes.append(("FieldValueInvalid", f"data[{key}]", "Invalid value: illegal base64 data"))
            continue
        values[key] = raw
        total += len(raw)
    if total > MAX_SECRET_BYTES:
        causes.append(("FieldValueTooLong", "data", f"Too long: must have at most {MAX_SECRET_BYTES} bytes"))
    typ = obj.get("type") or "Opaque"
    required = lambda key: ("FieldValueRequired", f"data[{key}]", "Required value")  # noqa: E731
    if typ == "kubernetes.io/service-account-token":
        annotation = "kubernetes.io/service-account.name"
        if not ((obj.get("metadata") or {}).get("annotations") or {}).get(annotation):
            causes.append(("FieldValueRequired", f"metadata.annotations[{annotation}]", "Required value"))
    elif typ in ("kubernetes.io/dockercfg", "kubernetes.io/dockerconfigjson"):
        key = ".dockercfg" if typ == "kubernetes.io/dockercfg" else ".dockerconfigjson"
        if key not in values:
            causes.append(required(key))
        else:
            try:
                json.loads(values[key])
            except ValueError as e:
                causes.append(("FieldValueInvalid", f"data[{key}]",
                               f'Invalid value: "<secret contents redacted>": {e}'))
    elif typ == "kubernetes.io/basic-auth":
        if "username" not in values and "password" not in values:
            causes += [required("username"), required("password")]
    elif typ == "kubernetes.io/ssh-auth":
        if not values.get("ssh-privatekey"):
            causes.append(required("ssh-privatekey"))
    elif typ == "kubernetes.io/tls":
        causes += [required(k) for k in ("tls.crt", "tls.key") if k not in values]
    if old is not None:
        causes += _immutable_causes(obj, old, ("type",), "data")
    return causes


def config_map_causes(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    """What the real server says about a ConfigMap."""
    causes: list[Cause] = []
    data = obj.get("data") or {}
    binary = obj.get("binaryData") or {}
    if not isinstance(data, dict) or not isinstance(binary, dict):
        return [("FieldValueTypeInvalid", "data", "Invalid value: must be a map")]
    total = 0
    for key, value in data.items():
        causes += _config_key_causes("data", key)
        if key in binary:
            causes.append(("FieldValueInvalid", f"data[{key}]",
                           f'Invalid value: "{key}": duplicate of key present in binaryData'))
        total += len((value or "").encode())
    for key, value in binary.items():
        causes += _config_key_causes("binaryData", key)
        raw = _decoded(value if value is not None else "")
        if raw is None:
            causes.append(("FieldValueInvalid", f"binaryData[{key}]", "Invalid value: illegal base64 data"))
            continue
        total += len(raw)
    if total > MAX_CONFIG_MAP_BYTES:
        causes.append(("FieldValueTooLong", "[]", f"Too long: must have at most {MAX_CONFIG_MAP_BYTES} bytes"))
    if old is not None:
        causes += _immutable_causes(obj, old, (), "data", "binaryData")
    return causes


def _immutable_causes(obj: dict[str, Any], old: dict[str, Any], fixed: tuple[str, ...],
                      *content: str) -> list[Cause]:
    """Fields that never change, and the content of an object marked ``immutable``."""
    causes: list[Cause] = []
    for f in fixed:
        if (obj.get(f) or "Opaque") != (old.get(f) or "Opaque"):
            causes.append(("FieldValueInvalid", f, f'Invalid value: "{obj.get(f)}": field is immutable'))
    if old.get("immutable") is True:
        if obj.get("immutable") is not True:
            causes.append(("FieldValueForbidden", "immutable",
                           "Forbidden: field is immutable when `immutable` is set"))
        for f in content:
            if (obj.get(f) or {}) != (old.get(f) or {}):
                causes.append(("FieldValueForbidden", f, "Forbidden: field is immutable when `immutable` is set"))
    return causes


def check_storable(obj: dict[str, Any]) -> None:
    """500 ``etcdserver: request is too large`` for an object etcd would refuse to store."""
    if len(json.dumps(obj, separators=(",", ":"))) > MAX_STORED_BYTES:
        raise ApiError(500, "", "etcdserver: request is too large")
