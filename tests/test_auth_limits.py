"""Rate limits: failed logins per username and address, registrations per address."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import PASSWORD, Api, bearer
from tests.test_auth import problem

AUTH = "/api/v1/auth"


async def fail_login(api: Api, username: str, **headers: str) -> Any:
    return await api.client.post(
        f"{AUTH}/login",
        json={"username": username, "password": "wrong password"},
        headers=headers,
    )


def retry_after(response: Any) -> int:
    value = response.headers["Retry-After"]
    assert value.isdigit()
    return int(value)


async def test_ten_failures_lock_the_username_even_for_the_right_password(
    api: Api, db: Any
) -> None:
    await api.register("alice")
    for _ in range(10):
        await problem(await fail_login(api, "alice"), 401, "invalid_credentials")
    right = await api.client.post(f"{AUTH}/login", json={"username": "ALICE", "password": PASSWORD})
    await problem(right, 429, "rate_limited")
    assert 1 <= retry_after(right) <= 900
    counter = await db["rate_limits"].find_one({"_id": "login-failures:user:alice"})
    assert counter["count"] == 10  # the 429 was not counted


async def test_unknown_usernames_are_limited_the_same_way(api: Api) -> None:
    for attempt in range(10):
        username = "ghost" if attempt % 2 else "GHOST"  # counted without regard to case
        await problem(await fail_login(api, username), 401, "invalid_credentials")
    await problem(await fail_login(api, "ghost"), 429, "rate_limited")
    await problem(await fail_login(api, "someone-else"), 401, "invalid_credentials")


@pytest.mark.settings(LOGIN_FAILURES_PER_USERNAME=3)
async def test_a_success_does_not_reset_the_window(api: Api) -> None:
    await api.register("alice")
    for _ in range(2):
        await fail_login(api, "alice")
    await api.login("alice")
    await fail_login(api, "alice")
    await problem(await fail_login(api, "alice"), 429, "rate_limited")


@pytest.mark.settings(REAUTH_FAILURES_PER_SESSION=2)
async def test_wrong_current_passwords_count_against_the_session_only(api: Api) -> None:
    headers = bearer((await api.user_tokens("alice"))["access_token"])
    wrong = {"current_password": "not the one", "new_password": "brand new pw"}
    await problem(
        await api.client.post(f"{AUTH}/password", json=wrong, headers=headers),
        401,
        "invalid_credentials",
    )
    await problem(
        await api.client.delete(f"{AUTH}/me", json={"password": "nope nope"}, headers=headers),
        401,
        "invalid_credentials",
    )
    right = {"current_password": PASSWORD, "new_password": "brand new pw"}
    await problem(
        await api.client.post(f"{AUTH}/password", json=right, headers=headers), 429, "rate_limited"
    )
    # The login limits are untouched, and another session of the same user is not blocked.
    other = bearer((await api.login("alice"))["access_token"])
    response = await api.client.post(f"{AUTH}/password", json=right, headers=other)
    assert response.status_code == 204


@pytest.mark.settings(LOGIN_FAILURES_PER_ADDRESS=3)
async def test_failures_per_address(api: Api) -> None:
    for name in ["a1", "a2", "a3"]:
        await problem(await fail_login(api, name), 401, "invalid_credentials")
    await problem(await fail_login(api, "a4"), 429, "rate_limited")


async def register(
    api: Api, username: str, options: dict[str, Any] | None = None, **headers: str
) -> Any:
    return await api.client.post(
        f"{AUTH}/register",
        json={"username": username, "password": PASSWORD},
        headers=headers,
        **(options or {}),
    )


async def test_the_21st_registration_per_address_is_429(api: Api) -> None:
    for i in range(19):
        assert (await register(api, f"user{i}")).status_code == 201
    assert (await register(api, "user0")).status_code == 409  # the 20th counts too
    invalid = await api.client.post(f"{AUTH}/register", json={"username": "x"})
    assert invalid.status_code == 422  # and 422s do not
    response = await register(api, "user-last")
    await problem(response, 429, "rate_limited")
    assert 1 <= retry_after(response) <= 3600


@pytest.mark.settings(REGISTRATIONS_PER_ADDRESS=1)
async def test_forwarded_for_is_ignored_without_trusted_proxies(api: Api) -> None:
    assert (await register(api, "one", **{"X-Forwarded-For": "203.0.113.1"})).status_code == 201
    spoofed = await register(api, "two", **{"X-Forwarded-For": "203.0.113.2"})
    assert spoofed.status_code == 429


@pytest.mark.settings(
    REGISTRATIONS_PER_ADDRESS=1, TRUSTED_PROXY_COUNT=1, TRUSTED_PROXIES="192.0.2.0/24, ::1"
)
async def test_forwarded_for_is_honoured_behind_a_trusted_proxy(api: Api) -> None:
    proxy = {"scope_base": {"client": ("192.0.2.10", 40000)}}
    one = await register(api, "one", proxy, **{"X-Forwarded-For": "203.0.113.1"})
    assert one.status_code == 201
    other = await register(api, "two", proxy, **{"X-Forwarded-For": "6.6.6.6, 203.0.113.2"})
    assert other.status_code == 201
    same = await register(api, "three", proxy, **{"X-Forwarded-For": "203.0.113.1"})
    assert same.status_code == 429


@pytest.mark.settings(
    REGISTRATIONS_PER_ADDRESS=1, TRUSTED_PROXY_COUNT=1, TRUSTED_PROXIES="192.0.2.0/24"
)
async def test_forwarded_for_from_an_untrusted_peer_is_ignored(api: Api) -> None:
    """Rule 12 (1.2): with a proxy count set, only the configured proxies may name the client."""
    stranger = {"scope_base": {"client": ("198.51.100.7", 40000)}}
    one = await register(api, "one", stranger, **{"X-Forwarded-For": "203.0.113.1"})
    assert one.status_code == 201
    spoofed = await register(api, "two", stranger, **{"X-Forwarded-For": "203.0.113.2"})
    await problem(spoofed, 429, "rate_limited")
