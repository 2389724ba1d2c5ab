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
Every login attempt also counts per address, since each costs a password
hash. A signed-in user's re-authentication counts per session only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from quart import current_app, request

from . import metrics
from .errors import ApiError
from .stores import rate_limits

logger = logging.getLogger("app.security")


def client_address() -> str:
    """The TCP peer, or the address a trusted proxy chain reports for it.

    Repeated ``X-Forwarded-For`` lines form one list (RFC 9110 section 5.3),
    so a line the client sent ahead of the proxy's cannot choose the key.
    """
    trusted_proxies: int = current_app.config["TRUSTED_PROXY_COUNT"]
    if trusted_proxies > 0:
        forwarded = [
            part.strip()
            for line in request.headers.getlist("X-Forwarded-For")
            for part in line.split(",")
            if part.strip()
        ]
        if len(forwarded) >= trusted_proxies:
            return forwarded[-trusted_proxies]
    return request.remote_addr or "unknown"


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


async def take_login_attempt(username: str) -> Reservation:
    """Admit one password check for ``username``, or raise 429.

    The attempt is counted (per address, any outcome) and reserved as a
    failure under each failed-login key; ``give_back`` the reservation on
    success.
    """
    config = current_app.config
    address = client_address()
    username_key = username.lower()
    subject = f"login username_key={username_key!r}"
    await _take(
        {f"login-attempts:addr:{address}": config["LOGIN_ATTEMPTS_PER_ADDRESS"]},
        _seconds("LOGIN_ATTEMPT_WINDOW_SECONDS"),
        subject=subject,
    )
    return await _take(
        {
            f"login-failures:user-addr:{username_key}:{address}": config[
                "LOGIN_FAILURES_PER_USERNAME_AND_ADDRESS"
            ],
            f"login-failures:user:{username_key}": config["LOGIN_FAILURES_PER_USERNAME"],
            f"login-failures:addr:{address}": config["LOGIN_FAILURES_PER_ADDRESS"],
        },
        _seconds("LOGIN_FAILURE_WINDOW_SECONDS"),
        subject=subject,
    )


async def take_reauthentication(session_id: str) -> Reservation:
    """Admit one password re-check by a signed-in session, or raise 429 for that session."""
    limit = current_app.config["REAUTH_FAILURES_PER_SESSION"]
    return await _take(
        {f"reauth-failures:session:{session_id}": limit},
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


def log_failed_login(username: str) -> None:
    """One line operators can feed to their blocking tools (never the password)."""
    logger.warning("failed login: username_key=%r address=%s", username.lower(), client_address())
