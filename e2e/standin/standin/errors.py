"""Kubernetes ``Status`` objects and the exception that carries them out of a handler."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as a ``Status`` object, as the real API server does.

    ``reason`` is one of the ``metav1.StatusReason`` strings (NotFound, AlreadyExists, Conflict,
    Invalid, BadRequest, MethodNotAllowed, UnsupportedMediaType, Forbidden, Expired, Gone...).
    """

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        """The ``Status`` object for this error."""
        return status_object(self.code, self.reason, self.message, self.details)


def status_object(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A ``v1 Status`` object; ``status`` is ``Success`` for 2xx codes, ``Failure`` otherwise."""
    out: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if 200 <= code < 300 else "Failure",
        "code": code,
    }
    if message:
        out["message"] = message
    if reason:
        out["reason"] = reason
    if details:
        out["details"] = details
    return out


def qualified(group: str, plural: str) -> str:
    """``plural.group`` as the API server names a resource in messages (``configmaps`` for core)."""
    return f"{plural}.{group}" if group else plural


def not_found(group: str, plural: str, name: str) -> ApiError:
    """404 NotFound for one object."""
    return ApiError(
        404,
        "NotFound",
        f'{qualified(group, plural)} "{name}" not found',
        {"name": name, "group": group, "kind": plural},
    )


def already_exists(group: str, plural: str, name: str) -> ApiError:
    """409 AlreadyExists on create."""
    return ApiError(
        409,
        "AlreadyExists",
        f'{qualified(group, plural)} "{name}" already exists',
        {"name": name, "group": group, "kind": plural},
    )


def conflict(group: str, plural: str, name: str, why: str | None = None) -> ApiError:
    """409 Conflict: stale resourceVersion or a failed precondition."""
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(group, plural)} "{name}": {why}',
        {"name": name, "group": group, "kind": plural},
    )


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid with field causes ``(reason, field, message)``.

    The message has the real server's shape: ``Kind.group "name" is invalid: field: message``
    (several causes are joined in ``[...]``).
    """
    qual = f"{kind}.{group}" if group else kind
    texts = [f"{field}: {msg}" if field else msg for _, field, msg in causes]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{qual} "{name}" is invalid: {joined}',
        {
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [
                {"reason": reason, "message": msg, "field": field} for reason, field, msg in causes
            ],
        },
    )


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, "BadRequest", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> ApiError:
    """405 MethodNotAllowed."""
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    """415 UnsupportedMediaType, e.g. a strategic merge patch on a custom resource."""
    return ApiError(
        415,
        "UnsupportedMediaType",
        f'the body of the request was in an unknown format - accepted media types include: {", ".join(accepted)}',
    )


def gone(message: str) -> ApiError:
    """410 Gone/Expired: a resourceVersion older than the kept history."""
    return ApiError(410, "Expired", message)
