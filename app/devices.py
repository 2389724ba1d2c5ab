"""Known devices (contract rule 10b): a token a client keeps across logins.

A successful login hands out a device token bound to the user; a later
login that brings it back is counted against that device alone, so failures
that others cause (rule 10's username and address limits) never lock the
owner out of a device they used before.

The token is opaque to clients and stateless here: a random device id, an
expiry and an HMAC over both and the user's id, with a key derived from the
app's secret. Nothing is stored, so nothing has to be cleaned up: deleting
an account ends its tokens (a name registered again is a new user id), and a
password change leaves them valid, as the contract says. Rotating
``JWT_SECRET_KEY`` ends every device token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from bson import ObjectId
from quart import current_app

VERSION = b"\x01"
DEVICE_ID_BYTES = 16
EXPIRY_BYTES = 8
MAC_BYTES = 16
TOKEN_BYTES = len(VERSION) + DEVICE_ID_BYTES + EXPIRY_BYTES + MAC_BYTES


@dataclass(frozen=True)
class Device:
    """A valid device token's device, for the user it was checked against."""

    id: str  # hex of the random device id: the key of its failure counter
    token: str


def _key() -> bytes:
    return hashlib.sha256(b"device-token:" + current_app.config["JWT_SECRET_KEY"].encode()).digest()


def _mac(body: bytes, user_id: ObjectId) -> bytes:
    return hmac.new(_key(), body + user_id.binary, hashlib.sha256).digest()[:MAC_BYTES]


def _encode(device_id: bytes, user_id: ObjectId) -> str:
    expires = int(time.time()) + int(current_app.config["DEVICE_TOKEN_SECONDS"])
    body = VERSION + device_id + expires.to_bytes(EXPIRY_BYTES, "big")
    return base64.urlsafe_b64encode(body + _mac(body, user_id)).rstrip(b"=").decode()


def issue(user_id: ObjectId, known: Device | None) -> str:
    """The token to hand out: a known device keeps its id with a renewed expiry."""
    device_id = bytes.fromhex(known.id) if known is not None else secrets.token_bytes(16)
    return _encode(device_id, user_id)


def recognise(token: str | None, user_id: ObjectId | None) -> Device | None:
    """The device if ``token`` is a valid, unexpired device token of ``user_id``; else None.

    Unknown, expired, tampered and other users' tokens all give None: the
    login goes on as if none was sent, with no hint why.
    """
    if token is None or user_id is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != TOKEN_BYTES or raw[:1] != VERSION:
        return None
    body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(body, user_id)):
        return None
    expires = int.from_bytes(body[-EXPIRY_BYTES:], "big")
    if expires <= time.time():
        return None
    return Device(body[len(VERSION) : len(VERSION) + DEVICE_ID_BYTES].hex(), token)
