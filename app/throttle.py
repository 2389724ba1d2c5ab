"""The rate limits of the contract: failed logins and registrations.

Counters live in MongoDB (``stores.rate_limits``), so every worker and
process shares them. Failed logins are counted per username (also for names
that do not exist, so 429 versus 401 reveals nothing) and per client address.
"""

from __future__ import annotations

from datetime import timedelta

from quart import current_app, request

from .errors import ApiError
from .stores import rate_limits
from .stores.rate_limits import Window


def client_address() -> str:
    """The TCP peer, or the address a trusted proxy chain reports for it."""
    trusted_proxies: int = current_app.config["TRUSTED_PROXY_COUNT"]
    if trusted_proxies > 0:
        forwarded: list[str] = [
            part.strip()
            for part in request.headers.get("X-Forwarded-For", "").split(",")
            if part.strip()
        ]
        if len(forwarded) >= trusted_proxies:
            return forwarded[-trusted_proxies]
    return request.remote_addr or "unknown"


def _rate_limited(window: Window) -> ApiError:
    return ApiError(
        429,
        "rate_limited",
        "Too many attempts; wait before trying again.",
        headers={"Retry-After": str(window.retry_after())},
    )


def _login_limits(username: str) -> dict[str, int]:
    config = current_app.config
    return {
        f"login:user:{username.lower()}": config["LOGIN_FAILURES_PER_USERNAME"],
        f"login:addr:{client_address()}": config["LOGIN_FAILURES_PER_ADDRESS"],
    }


async def guard_login(username: str) -> None:
    """Refuse (429) a password check for a username or address over its limit."""
    limits = _login_limits(username)
    windows = await rate_limits.current(list(limits))
    for key, window in windows.items():
        if window.count >= limits[key]:
            raise _rate_limited(window)


async def record_login_failure(username: str) -> None:
    window = timedelta(seconds=current_app.config["LOGIN_FAILURE_WINDOW_SECONDS"])
    for key in _login_limits(username):
        await rate_limits.hit(key, window)


async def count_registration() -> None:
    """Count a (valid) registration for the caller's address; 429 past the limit."""
    config = current_app.config
    window = await rate_limits.hit(
        f"register:addr:{client_address()}",
        timedelta(seconds=config["REGISTRATION_WINDOW_SECONDS"]),
    )
    if window.count > config["REGISTRATIONS_PER_ADDRESS"]:
        raise _rate_limited(window)
