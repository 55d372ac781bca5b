"""Request bodies in Kubernetes protobuf (``application/vnd.kubernetes.protobuf``).

kubectl's generators (``kubectl create namespace|secret|configmap``) send built-in objects as
protobuf: the 4-byte magic ``k8s\\0`` and a ``runtime.Unknown`` envelope (``typeMeta``, ``raw``)
whose ``raw`` is the object's message. This decodes the kinds the stand-in serves and kubectl
creates that way into the JSON form the rest of the stand-in works on. Field numbers are those
of k8s.io/api and k8s.io/apimachinery ``generated.proto``; unknown fields are skipped, as the
real decoder does. Other kinds answer 415, as the real server does for custom resources.
"""

from __future__ import annotations

import base64
import datetime as dt
import struct
from typing import Any

from . import errors

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

# A schema maps a field number to (JSON name, kind). Kinds: "string", "bytes" (base64 in JSON),
# "int", "bool", "time" (metav1.Time: RFC 3339, seconds), ("message", schema),
# ("repeated", kind), ("map", key kind, value kind).
Schema = dict[int, tuple[str, Any]]

TYPE_META: Schema = {1: ("apiVersion", "string"), 2: ("kind", "string")}
UNKNOWN: Schema = {1: ("typeMeta", ("message", TYPE_META)), 2: ("raw", "raw"),
                   3: ("contentEncoding", "string"), 4: ("contentType", "string")}
OWNER_REFERENCE: Schema = {1: ("kind", "string"), 3: ("name", "string"), 4: ("uid", "string"),
                           5: ("apiVersion", "string"), 6: ("controller", "bool"),
                           7: ("blockOwnerDeletion", "bool")}
OBJECT_META: Schema = {
    1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
    4: ("selfLink", "string"), 5: ("uid", "string"), 6: ("resourceVersion", "string"),
    7: ("generation", "int"), 8: ("creationTimestamp", "time"), 9: ("deletionTimestamp", "time"),
    10: ("deletionGracePeriodSeconds", "int"), 11: ("labels", ("map", "string", "string")),
    12: ("annotations", ("map", "string", "string")),
    13: ("ownerReferences", ("repeated", ("message", OWNER_REFERENCE))),
    14: ("finalizers", ("repeated", "string")),
}
NAMESPACE: Schema = {
    1: ("metadata", ("message", OBJECT_META)),
    2: ("spec", ("message", {1: ("finalizers", ("repeated", "string"))})),
    3: ("status", ("message", {1: ("phase", "string")})),
}
SECRET: Schema = {
    1: ("metadata", ("message", OBJECT_META)), 2: ("data", ("map", "string", "bytes")),
    3: ("type", "string"), 4: ("stringData", ("map", "string", "string")), 5: ("immutable", "bool"),
}
CONFIG_MAP: Schema = {
    1: ("metadata", ("message", OBJECT_META)), 2: ("data", ("map", "string", "string")),
    3: ("binaryData", ("map", "string", "bytes")), 4: ("immutable", "bool"),
}
# (apiVersion, kind) of the objects this module decodes.
KINDS: dict[tuple[str, str], Schema] = {
    ("v1", "Namespace"): NAMESPACE,
    ("v1", "Secret"): SECRET,
    ("v1", "ConfigMap"): CONFIG_MAP,
}
ACCEPTED = ["application/json", "application/yaml"]


class _Malformed(Exception):
    pass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise _Malformed("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of every field of a message, in order."""
    out = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 1:
            if i + 8 > len(buf):
                raise _Malformed("truncated fixed64")
            v, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise _Malformed("truncated length-delimited field")
            v, i = buf[i:i + n], i + n
        elif wire == 5:
            if i + 4 > len(buf):
                raise _Malformed("truncated fixed32")
            v, i = buf[i:i + 4], i + 4
        else:
            raise _Malformed(f"unsupported wire type {wire}")
        out.append((num, wire, v))
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _time(buf: bytes) -> str | None:
    """metav1.Time: empty for the zero time, else a Timestamp (seconds = 1, nanos = 2)."""
    if not buf:
        return None
    seconds = 0
    for num, wire, v in _fields(buf):
        if num == 1 and wire == 0:
            seconds = _signed(v)
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _scalar(kind: Any, wire: int, v: Any) -> Any:
    if kind == "string":
        if wire != 2:
            raise _Malformed("a string field is not length-delimited")
        return v.decode("utf-8")
    if kind == "bytes":
        return base64.b64encode(v).decode()
    if kind == "raw":
        return bytes(v)
    if kind == "int":
        if wire == 0:
            return _signed(v)
        return struct.unpack("<q", v)[0] if wire == 1 else struct.unpack("<i", v)[0]
    if kind == "bool":
        return bool(v)
    if kind == "time":
        return _time(v)
    if isinstance(kind, tuple) and kind[0] == "message":
        return _message(v, kind[1])
    raise _Malformed(f"unsupported kind {kind!r}")


def _message(buf: bytes, schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for num, wire, v in _fields(buf):
        if num not in schema:
            continue  # unknown fields are skipped, as gogo-protobuf does
        name, kind = schema[num]
        if isinstance(kind, tuple) and kind[0] == "repeated":
            out.setdefault(name, []).append(_scalar(kind[1], wire, v))
        elif isinstance(kind, tuple) and kind[0] == "map":
            value_kind = kind[2]
            key, value = "", ("" if value_kind in ("string", "bytes") else None)
            for enum, ewire, ev in _fields(v):
                if enum == 1:
                    key = _scalar(kind[1], ewire, ev)
                elif enum == 2:
                    value = _scalar(value_kind, ewire, ev)
            out.setdefault(name, {})[key] = value
        else:
            value = _scalar(kind, wire, v)
            # Go writes every non-pointer field; JSON leaves zero values out (omitempty).
            if value in ("", 0, False, None) and not isinstance(kind, tuple):
                out.pop(name, None)
            else:
                out[name] = value
    return out


def decode(raw: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf request body; 400 when it is malformed, 415 for a kind this
    stand-in cannot decode (custom resources, kinds it does not serve)."""
    if not raw.startswith(MAGIC):
        raise errors.bad_request("the protobuf body does not start with the Kubernetes magic number")
    try:
        envelope = _message(raw[len(MAGIC):], UNKNOWN)
        meta = envelope.get("typeMeta") or {}
        api_version, kind = meta.get("apiVersion", ""), meta.get("kind", "")
        schema = KINDS.get((api_version, kind))
        if schema is None:
            raise errors.unsupported_media_type(MEDIA_TYPE, ACCEPTED)
        if envelope.get("contentEncoding"):
            raise errors.bad_request(f"unsupported content encoding {envelope['contentEncoding']!r}")
        obj = _message(envelope.get("raw", b""), schema)
    except (_Malformed, UnicodeDecodeError, struct.error, ValueError, OverflowError) as e:
        raise errors.bad_request(f"the protobuf body could not be decoded: {e}") from None
    return {"apiVersion": api_version, "kind": kind, **obj}

