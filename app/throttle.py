"""The rate limits of the contract (rules 10 to 13).

Counters live in MongoDB (``stores.rate_limits``), so every worker and
process shares them. Every limit is *taken before* the work it guards: the
counters are bumped first and the attempt goes ahead only if none is over its
limit, so N concurrent attempts can never get past a limit of M < N. A login
attempt is counted as a failure up front and given back when the password
turns out right.

Failed logins count per (username, client address), so a stranger's failures
never lock the owner out elsewhere; a looser per-username limit stops
guessing from many addresses, one per address stops spraying across names.
A login with a known device's token (contract rule 10b) counts against that
device alone, so even an attacker holding every other limit cannot lock the
owner out of a device they have used before. Every login attempt also counts
per address, since each costs a password hash; so does a signed-in user's
re-authentication, whose failures count per session and per user.

Log lines name a username by a short keyed hash (people type passwords into
the username field): the same name always gives the same tag, so operators
can still follow one name's failures, but the log does not say which name.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache

from bson import ObjectId
from quart import current_app, request

from config import trusted_networks

from . import metrics
from .errors import ApiError
from .stores import rate_limits

logger = logging.getLogger("app.security")

#: Hex digits of a username's tag in log lines: enough to tell names apart.
USERNAME_TAG_DIGITS = 12


@cache
def _networks(setting: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return trusted_networks(setting)


def _from_trusted_proxy(peer: str) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in _networks(current_app.config["TRUSTED_PROXIES"]))


def client_address() -> str:
    """The TCP peer, or the address a trusted proxy chain reports for it.

    ``X-Forwarded-For`` counts only when the TCP peer is one of
    ``TRUSTED_PROXIES`` (contract rule 12): anyone else could write it.
    Repeated lines form one list (RFC 9110 section 5.3), so a line the
    client sent ahead of the proxy's cannot choose the key.
    """
    peer = request.remote_addr or "unknown"
    trusted_proxies: int = current_app.config["TRUSTED_PROXY_COUNT"]
    if trusted_proxies > 0 and _from_trusted_proxy(peer):
        forwarded = [
            part.strip()
            for line in request.headers.getlist("X-Forwarded-For")
            for part in line.split(",")
            if part.strip()
        ]
        if len(forwarded) >= trusted_proxies:
            return forwarded[-trusted_proxies]
    return peer


def username_tag(username: str) -> str:
    """A short keyed hash of the lower-cased name, for log lines (never the name itself)."""
    key = hashlib.sha256(b"log-tag:" + current_app.config["JWT_SECRET_KEY"].encode()).digest()
    digest = hmac.new(key, username.lower().encode(), hashlib.sha256).hexdigest()
    return digest[:USERNAME_TAG_DIGITS]


@dataclass(frozen=True)
class Reservation:
    """Counted failures that are given back if the attempt succeeds."""

    keys: tuple[str, ...]

    async def give_back(self) -> None:
        await asyncio.gather(*(rate_limits.give_back(key) for key in self.keys))


async def _take(limits: Mapping[str, int], window: timedelta, *, subject: str) -> Reservation:
    """Count one event under every key; 429 (counting nothing) if any is over its limit."""
    keys = tuple(limits)
    windows = await asyncio.gather(*(rate_limits.hit(key, window) for key in keys))
    exceeded = [w for key, w in zip(keys, windows, strict=True) if w.count > limits[key]]
    if not exceeded:
        return Reservation(keys)
    await Reservation(keys).give_back()
    for key, counted in zip(keys, windows, strict=True):
        if counted.count > limits[key]:
            metrics.count_refusal(rule_of(key))
    retry_after = max(w.retry_after() for w in exceeded)
    logger.warning(
        "rate limited: %s address=%s retry_after=%ds", subject, client_address(), retry_after
    )
    raise ApiError(
        429,
        "rate_limited",
        "Too many attempts; wait before trying again.",
        headers={"Retry-After": str(retry_after)},
    )


def rule_of(key: str) -> str:
    """A counter key's rule, without the address, username or session it counts."""
    return ":".join(key.split(":", 2)[:2])


def _seconds(setting: str) -> timedelta:
    return timedelta(seconds=current_app.config[setting])


async def count_password_attempt(subject: str) -> None:
    """Count one password check for the caller's address (any outcome); 429 past the limit.

    Logins and re-authentications alike: each costs a hash.
    """
    limit = current_app.config["LOGIN_ATTEMPTS_PER_ADDRESS"]
    await _take(
        {f"login-attempts:addr:{client_address()}": limit},
        _seconds("LOGIN_ATTEMPT_WINDOW_SECONDS"),
        subject=subject,
    )


def login_subject(username: str) -> str:
    return f"login username={username_tag(username)}"


async def take_login_failure(username: str) -> Reservation:
    """Reserve a failed login for ``username`` under rule 10's keys, or raise 429.

    ``give_back`` the reservation when the password turns out right.
    """
    config = current_app.config
    address = client_address()
    username_key = username.lower()
    return await _take(
        {
            f"login-failures:user-addr:{username_key}:{address}": config[
                "LOGIN_FAILURES_PER_USERNAME_AND_ADDRESS"
            ],
            f"login-failures:user:{username_key}": config["LOGIN_FAILURES_PER_USERNAME"],
            f"login-failures:addr:{address}": config["LOGIN_FAILURES_PER_ADDRESS"],
        },
        _seconds("LOGIN_FAILURE_WINDOW_SECONDS"),
        subject=login_subject(username),
    )


async def take_device_login_failure(username: str, device_id: str) -> Reservation:
    """Reserve a failed login against a known device alone (rule 10b), or raise 429."""
    return await _take(
        {f"login-failures:device:{device_id}": current_app.config["LOGIN_FAILURES_PER_DEVICE"]},
        _seconds("LOGIN_FAILURE_WINDOW_SECONDS"),
        subject=f"{login_subject(username)} device",
    )


async def take_reauthentication(session_id: str, user_id: ObjectId) -> Reservation:
    """Admit one password re-check by a signed-in session, or raise 429.

    It counts toward the address's attempts, and its failure is reserved
    per session and per user, so that neither many sessions nor many
    addresses multiply the hashes one client can force (rule 10a).
    """
    config = current_app.config
    await count_password_attempt("re-authentication")
    return await _take(
        {
            f"reauth-failures:session:{session_id}": config["REAUTH_FAILURES_PER_SESSION"],
            f"reauth-failures:user:{user_id}": config["REAUTH_FAILURES_PER_USER"],
        },
        _seconds("LOGIN_FAILURE_WINDOW_SECONDS"),
        subject="re-authentication",
    )


async def count_registration() -> None:
    """Count a (valid) registration for the caller's address; 429 past the limit."""
    await _take(
        {f"register:addr:{client_address()}": current_app.config["REGISTRATIONS_PER_ADDRESS"]},
        _seconds("REGISTRATION_WINDOW_SECONDS"),
        subject="registration",
    )


async def count_idempotency_key(user_id: ObjectId) -> Reservation:
    """Count one new Idempotency-Key of ``user_id`` per key lifetime; 429 past the limit."""
    config = current_app.config
    return await _take(
        {f"idempotency-keys:user:{user_id}": config["IDEMPOTENCY_KEYS_PER_USER"]},
        _seconds("IDEMPOTENCY_KEY_TTL_SECONDS"),
        subject="idempotency keys",
    )


def log_failed_login(username: str) -> None:
    """One line operators can feed to their blocking tools (never the password or the name)."""
    logger.warning("failed login: username=%s address=%s", username_tag(username), client_address())


@dataclass
class UserShares:
    """Each user's share of one process's concurrent requests (contract rule 10c).

    Counted in the process, not the database: it is about this process's
    event loop and connections, and costs a dictionary update per request.
    A request holds its share until its view ends, also when it outlived
    its answer (the request deadline), since its work goes on until then.
    """

    limit: int
    in_flight: dict[ObjectId, int] = field(default_factory=dict)

    @contextmanager
    def hold(self, user_id: ObjectId) -> Iterator[None]:
        count = self.in_flight.get(user_id, 0)
        if count >= self.limit:
            raise ApiError(
                429,
                "rate_limited",
                "Too many of your requests are in progress; wait for them to finish.",
                headers={"Retry-After": "1"},
            )
        self.in_flight[user_id] = count + 1
        try:
            yield
        finally:
            left = self.in_flight[user_id] - 1
            if left:
                self.in_flight[user_id] = left
            else:
                del self.in_flight[user_id]


def user_shares() -> UserShares:
    shares: UserShares = current_app.extensions["user_shares"]
    return shares
