"""Tokens and sessions: every 401 code, rotation, reuse detection, logout."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from tests.conftest import Api, bearer
from tests.test_auth import problem

AUTH = "/api/v1/auth"


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def forge(token: str, key: str, algorithm: str = "HS256", **changes: Any) -> str:
    """Re-sign a real token's claims with ``changes`` applied."""
    return jwt.encode({**claims_of(token), **changes}, key, algorithm=algorithm)


def strip(token: str, key: str, *names: str) -> str:
    """Re-sign a real token's claims without ``names``."""
    claims = {name: value for name, value in claims_of(token).items() if name not in names}
    return jwt.encode(claims, key, algorithm="HS256")


@pytest.fixture
def secret(settings: dict[str, Any], app: Any) -> str:
    key: str = app.config["JWT_SECRET_KEY"]
    return key


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer ", "Basic YWxpY2U6cHc=", "token"])
async def test_missing_token(api: Api, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await api.client.get(f"{AUTH}/me", headers=headers)
    await problem(response, 401, "token_missing")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_invalid_tokens(api: Api, secret: str) -> None:
    tokens = await api.user_tokens()
    access = tokens["access_token"]
    header, payload, signature = access.split(".")
    claims = claims_of(access)
    other_payload = (
        base64.urlsafe_b64encode(json.dumps({**claims, "sub": "0" * 24}).encode())
        .rstrip(b"=")
        .decode()
    )
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    candidates = {
        "garbage": "not-a-jwt",
        "tampered payload": f"{header}.{other_payload}.{signature}",
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "alg none": f"{none_header}.{payload}.",
        "wrong key": forge(access, "another-key-that-is-long-enough-0123456789"),
        "HS512 with the right key": forge(access, secret, algorithm="HS512"),
        "expired with a wrong key": forge(
            access, "another-key-that-is-long-enough-0123456789", exp=int(time.time()) - 60
        ),
        "no exp": strip(access, secret, "exp"),
        "no sub": strip(access, secret, "sub"),
        "no type": strip(access, secret, "type"),
        "an unknown type": forge(access, secret, type="id"),
        "a fractional exp": forge(access, secret, exp=time.time() + 600.5),
        "no session id": forge(access, secret, user_claims={}),
    }
    for name, token in candidates.items():
        response = await api.client.get(f"{AUTH}/me", headers=bearer(token))
        body = await problem(response, 401, "token_invalid")
        assert "Signature" not in body["detail"] and "decode" not in body["detail"].lower(), name


async def test_expired_token(api: Api, secret: str) -> None:
    tokens = await api.user_tokens()
    expired = forge(tokens["access_token"], secret, exp=int(time.time()) - 1)
    response = await api.client.get(f"{AUTH}/me", headers=bearer(expired))
    body = await problem(response, 401, "token_expired")
    assert "POST /api/v1/auth/refresh" in body["detail"]  # says what to do next
    expired_refresh = forge(tokens["refresh_token"], secret, exp=int(time.time()) - 1)
    response = await api.client.post(f"{AUTH}/refresh", headers=bearer(expired_refresh))
    body = await problem(response, 401, "token_expired")
    assert "log in again" in body["detail"]


async def test_a_session_past_its_expiry_is_closed_before_the_ttl_sweep(api: Api, db: Any) -> None:
    tokens = await api.user_tokens()
    session_id = claims_of(tokens["access_token"])["user_claims"]["sid"]
    await db["sessions"].update_one(
        {"_id": session_id}, {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}}
    )
    response = await api.client.get(f"{AUTH}/me", headers=bearer(tokens["access_token"]))
    await problem(response, 401, "token_revoked")


async def test_wrong_token_type(api: Api) -> None:
    tokens = await api.user_tokens()
    me = await api.client.get(f"{AUTH}/me", headers=bearer(tokens["refresh_token"]))
    await problem(me, 401, "token_wrong_type")
    refresh = await api.client.post(f"{AUTH}/refresh", headers=bearer(tokens["access_token"]))
    await problem(refresh, 401, "token_wrong_type")


async def test_refresh_rotates_both_tokens(api: Api) -> None:
    tokens = await api.user_tokens()
    response = await api.client.post(f"{AUTH}/refresh", headers=bearer(tokens["refresh_token"]))
    assert response.status_code == 200
    rotated = await response.get_json()
    assert set(rotated) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert rotated["expires_in"] == 900
    for access in [rotated["access_token"], tokens["access_token"]]:  # old access still lives
        assert (await api.client.get(f"{AUTH}/me", headers=bearer(access))).status_code == 200
    again = await api.client.post(f"{AUTH}/refresh", headers=bearer(rotated["refresh_token"]))
    assert again.status_code == 200


async def test_reusing_a_refresh_token_closes_the_session(api: Api, db: Any) -> None:
    tokens = await api.user_tokens()
    other_session = await api.login()
    rotated = await (
        await api.client.post(f"{AUTH}/refresh", headers=bearer(tokens["refresh_token"]))
    ).get_json()
    reuse = await api.client.post(f"{AUTH}/refresh", headers=bearer(tokens["refresh_token"]))
    await problem(reuse, 401, "token_revoked")
    for token, path, method in [
        (rotated["refresh_token"], "/refresh", "POST"),
        (rotated["access_token"], "/me", "GET"),
        (tokens["access_token"], "/me", "GET"),
    ]:
        response = await api.client.open(f"{AUTH}{path}", method=method, headers=bearer(token))
        await problem(response, 401, "token_revoked")
    still = await api.client.get(f"{AUTH}/me", headers=bearer(other_session["access_token"]))
    assert still.status_code == 200
    assert await db["sessions"].count_documents({}) == 1


async def test_concurrent_refreshes_one_wins(api: Api) -> None:
    tokens = await api.user_tokens()
    responses = await asyncio.gather(
        *(
            api.client.post(f"{AUTH}/refresh", headers=bearer(tokens["refresh_token"]))
            for _ in range(2)
        )
    )
    assert sorted(r.status_code for r in responses) == [200, 401]


async def test_logout_revokes_the_session_only(api: Api) -> None:
    first = await api.user_tokens()
    second = await api.login()
    response = await api.client.post(f"{AUTH}/logout", headers=bearer(first["access_token"]))
    assert response.status_code == 204
    assert await response.get_data() == b""
    await problem(
        await api.client.get(f"{AUTH}/me", headers=bearer(first["access_token"])),
        401,
        "token_revoked",
    )
    await problem(
        await api.client.post(f"{AUTH}/refresh", headers=bearer(first["refresh_token"])),
        401,
        "token_revoked",
    )
    await problem(
        await api.client.post(f"{AUTH}/logout", headers=bearer(first["access_token"])),
        401,
        "token_revoked",
    )
    assert (
        await api.client.get(f"{AUTH}/me", headers=bearer(second["access_token"]))
    ).status_code == 200


async def test_logout_needs_an_access_token(api: Api) -> None:
    tokens = await api.user_tokens()
    await problem(await api.client.post(f"{AUTH}/logout"), 401, "token_missing")
    response = await api.client.post(f"{AUTH}/logout", headers=bearer(tokens["refresh_token"]))
    await problem(response, 401, "token_wrong_type")


@pytest.mark.settings(JWT_ACCESS_TOKEN_EXPIRES=60)
async def test_token_lifetimes_are_configurable(api: Api) -> None:
    tokens = await api.user_tokens()
    claims = claims_of(tokens["access_token"])
    assert tokens["expires_in"] == 60
    assert claims["exp"] - claims["iat"] == 60
    refresh_claims = claims_of(tokens["refresh_token"])
    assert refresh_claims["exp"] - refresh_claims["iat"] == 30 * 24 * 3600
