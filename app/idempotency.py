"""Idempotency-Key rules (draft-ietf-httpapi-idempotency-key-header).

A key, scoped to the user, stands for one resource. The first request with
it claims it and fixes the resource's id, derived from the user, the key and
the moment of the claim; every later attempt creates under that same id. The
unique ``_id`` of the resource therefore makes the create itself
exactly-once, whatever became of earlier attempts (deadline spent after the
write, connection dropped, worker killed), with no transaction.

The claim carries a lease: the claiming request's remaining database budget.
Within it the first attempt may still be running, so a repeat is told 409
(retry shortly); after it no operation of that attempt can still start, and a
repeat carries on in its place. A key is remembered for
``IDEMPOTENCY_KEY_TTL_SECONDS``, then it is new again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from bson import ObjectId
from pydantic import BaseModel
from quart import current_app

from . import throttle
from .clock import utcnow
from .errors import ApiError
from .extensions import mongo
from .stores import idempotency_keys as store
from .stores.idempotency_keys import Record

HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class Claim:
    """A key's record as one request sees it."""

    record: Record
    mine: bool  # this request holds the key: it creates the resource

    @property
    def resource_id(self) -> ObjectId:
        resource: ObjectId = self.record["resource_id"]
        return resource

    @property
    def completed(self) -> bool:
        return bool(self.record["completed"])


def fingerprint(body: BaseModel) -> str:
    """What makes two requests with one key "the same": their validated body.

    Compared after validation and normalisation, so key order, whitespace,
    tag case or a time zone offset do not make a retry a different request.
    """
    canonical = orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def resource_id(owner: ObjectId, key: str, claimed_at: datetime) -> ObjectId:
    """The id of the resource a claim stands for.

    Like any ObjectId it starts with the creation second; the other 8 bytes
    hash the user, the key and the claim's millisecond, so a key claimed again
    after it was forgotten names a new resource.
    """
    millis = int(claimed_at.timestamp() * 1000)
    digest = hashlib.sha256(owner.binary + millis.to_bytes(8, "big") + key.encode()).digest()
    return ObjectId(int(claimed_at.timestamp()).to_bytes(4, "big") + digest[:8])


def _lease_until(now: datetime) -> datetime:
    return now + timedelta(seconds=mongo.time_left())


def _reused() -> ApiError:
    return ApiError(
        422,
        "idempotency_key_reused",
        "This Idempotency-Key was used with a different request body.",
        errors=[{"loc": ["header", HEADER], "msg": "already used with a different body"}],
    )


def _in_progress() -> ApiError:
    return ApiError(
        409,
        "idempotency_key_in_progress",
        "A request with this Idempotency-Key is still being processed; retry shortly.",
        headers={"Retry-After": "1"},
    )


async def begin(owner: ObjectId, key: str, body_fingerprint: str) -> Claim:
    """Claim ``key`` for a new resource, or return the claim already made with it.

    422 when the key was used with another body. A forgotten (expired) claim
    is replaced even before the TTL sweep removes it. New keys count per
    user (``IDEMPOTENCY_KEYS_PER_USER`` per key lifetime; 429 beyond), so one
    user cannot fill the collection; a repeat of a key costs nothing.
    """
    lifetime = timedelta(seconds=current_app.config["IDEMPOTENCY_KEY_TTL_SECONDS"])
    claim = await _claim(owner, key, body_fingerprint, lifetime)
    if claim.mine:
        try:
            await throttle.count_idempotency_key(owner)
        except ApiError:
            await store.release(claim.record)  # over the limit: the key stays unknown
            raise
    return claim


async def _claim(owner: ObjectId, key: str, body_fingerprint: str, lifetime: timedelta) -> Claim:
    while True:
        now = utcnow()
        record: Record = {
            "_id": store.record_id(owner, key),
            "fingerprint": body_fingerprint,
            "resource_id": resource_id(owner, key, now),
            "claimed_at": now,
            "lease_until": _lease_until(now),
            "completed": False,
            "expires_at": now + lifetime,
        }
        existing = await store.claim(record)
        if existing is None:
            return Claim(record, mine=True)
        if existing["expires_at"] <= now:
            if await store.replace_expired(existing, record):
                return Claim(record, mine=True)
            continue  # another request renewed it first: read again
        if existing["fingerprint"] != body_fingerprint:
            raise _reused()
        return Claim(existing, mine=False)


async def take_over(claim: Claim) -> Claim:
    """Hold a claim whose attempt ran out of time; 409 while it may still run."""
    now = utcnow()
    if not await store.take_over(claim.record, now, _lease_until(now)):
        raise _in_progress()
    return Claim(claim.record, mine=True)


async def complete(claim: Claim) -> None:
    """Remember that the resource exists, so that its later deletion is not undone."""
    await store.complete(claim.record)


async def release(claim: Claim) -> None:
    """Forget a claim whose attempt was refused: the key is free for the next one."""
    await store.release(claim.record)
