"""Opaque keyset cursors: signed, and bound to the user, the sort and the filters.

A cursor holds the sort value and id of the last todo of a page. It is signed
with a key derived from the app's secret, so a client can neither forge nor
edit one; the binding makes reuse with another sort, other filters or by
another user a 422 instead of a silently wrong page.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import orjson
from bson import ObjectId
from bson.errors import InvalidId
from itsdangerous import BadSignature, URLSafeSerializer
from quart import current_app

from .errors import ApiError, validation_error

SALT = "todo-list-cursor"


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["JWT_SECRET_KEY"], salt=SALT)


def binding(owner: ObjectId, sort: str, filters: dict[str, Any]) -> str:
    """A short digest of everything a cursor must be used with."""
    canonical = orjson.dumps([str(owner), sort, filters], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:32]


def encode(bound_to: str, last_value: datetime, last_id: ObjectId) -> str:
    return str(_serializer().dumps([bound_to, last_value.isoformat(), str(last_id)]))


def _invalid() -> ApiError:
    return validation_error(
        ["query", "cursor"], "not a cursor issued for this user, sort and filters"
    )


def decode(cursor: str, bound_to: str) -> tuple[datetime, ObjectId]:
    """The (sort value, id) position a cursor names; 422 when it is not valid here."""
    try:
        payload = _serializer().loads(cursor)
        issued_for, last_value, last_id = payload
        if issued_for != bound_to:
            raise _invalid()
        return datetime.fromisoformat(last_value), ObjectId(last_id)
    except (BadSignature, ValueError, TypeError, InvalidId):
        raise _invalid() from None
