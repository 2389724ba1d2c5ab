"""Every error, from every layer, is problem+json with a code and the request id."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from app import create_app
from app.embedded_db import free_port
from app.errors import NOT_FOUND_DETAIL
from scripts.fuzz_checks import internal_names, internal_names_in
from tests.conftest import Api

PROBLEM = "application/problem+json"


async def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.mimetype == PROBLEM
    body: dict[str, Any] = await response.get_json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].startswith("https://") and body["type"].endswith("/" + code)
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str)
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


async def test_unknown_route_is_404(client: TestClientProtocol) -> None:
    body = await assert_problem(await client.get("/nope"), 404, "not_found")
    # In this API's words, pointing somewhere useful (not the framework's "Nothing matches").
    assert body["detail"] == NOT_FOUND_DETAIL
    assert "/api/v1" in body["detail"] and "/docs" in body["detail"]


async def test_no_trailing_slash_redirects(client: TestClientProtocol) -> None:
    await assert_problem(await client.get("/healthz/"), 404, "not_found")
    await assert_problem(await client.get("/api/v1//auth/me"), 404, "not_found")


async def test_wrong_method_is_405_with_allow(client: TestClientProtocol) -> None:
    response = await client.delete("/healthz")
    body = await assert_problem(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "HEAD"}
    assert body["detail"] == (
        "This path does not take DELETE; the Allow header lists what it does."
    )


async def test_content_length_over_limit_is_413_before_anything_else(
    client: TestClientProtocol,
) -> None:
    body = b"{" + b" " * 70_000 + b"}"
    # No auth, a wrong content type and an unknown route: 413 still wins.
    response = await client.post("/nope", data=body, headers={"Content-Type": "text/plain"})
    await assert_problem(response, 413, "payload_too_large")


async def test_body_at_the_limit_is_read(client: TestClientProtocol) -> None:
    body = b'{"username": "al", "password": "' + b"x" * (65_536 - 34) + b'"}'
    assert len(body) == 65_536
    response = await client.post(
        "/api/v1/auth/register", data=body, headers={"Content-Type": "application/json"}
    )
    await assert_problem(response, 422, "validation_failed")


async def test_non_json_body_is_415(client: TestClientProtocol) -> None:
    for content_type in ["text/plain", "application/merge-patch+json", None]:
        headers = {"Content-Type": content_type} if content_type else {}
        response = await client.post("/api/v1/auth/login", data=b'{"a": 1}', headers=headers)
        await assert_problem(response, 415, "unsupported_media_type")


async def test_json_with_charset_is_accepted(client: TestClientProtocol) -> None:
    response = await client.post(
        "/api/v1/auth/login",
        data=b'{"username": "x", "password": "y"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    await assert_problem(response, 401, "invalid_credentials")


async def test_malformed_json_and_bad_utf8_are_400(client: TestClientProtocol) -> None:
    for body in [b"{", b'{"a": }', b'{"a": "\xff"}', b"NaN"]:
        response = await client.post(
            "/api/v1/auth/login", data=body, headers={"Content-Type": "application/json"}
        )
        await assert_problem(response, 400, "malformed_json")


async def test_json_that_is_not_an_object_is_422(client: TestClientProtocol) -> None:
    for body in [b"[]", b'"x"', b"42", b"null"]:
        response = await client.post(
            "/api/v1/auth/login", data=body, headers={"Content-Type": "application/json"}
        )
        problem = await assert_problem(response, 422, "validation_failed")
        assert problem["errors"] == [{"loc": ["body"], "msg": "Input should be a JSON object"}]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/auth/register", b""),
        ("POST", "/api/v1/auth/login", b"[1]"),
        ("POST", "/api/v1/todos", b""),
        ("POST", "/api/v1/todos", b'{"title": "x", "due_at": 5, "tags": "a", "priority": 1}'),
        ("POST", "/api/v1/todos", b'{"title": " ", "colour": "red", "notes": null}'),
        ("PATCH", "/api/v1/todos/" + "a" * 24, b"null"),
        ("PATCH", "/api/v1/todos/" + "a" * 24, b"{}"),
        ("POST", "/api/v1/auth/password", b'{"current_password": []}'),
        ("DELETE", "/api/v1/auth/me", b'"password"'),
        ("GET", "/api/v1/todos?limit=x&sort=up&due_before=soon&completed=yes", b""),
        ("DELETE", "/api/v1/todos?completed=false&x=1", b""),
    ],
)
async def test_validation_messages_name_no_internal_class(
    api: Api, method: str, path: str, body: bytes
) -> None:
    """Pydantic says "valid dictionary or instance of TodoCreate"; we never do."""
    headers = {"Content-Type": "application/json", **await api.headers()}
    response = await api.client.open(path, method=method, data=body, headers=headers)
    problem = await assert_problem(response, 422, "validation_failed")
    messages = [error["msg"] for error in problem["errors"]]
    assert messages and all(messages)
    text = json.dumps(problem)
    assert internal_names_in(text) == [], text
    assert "Value error" not in text


async def test_unhandled_exception_is_500_without_internals(settings: dict[str, Any]) -> None:
    app = await create_app(settings)

    async def explode() -> str:
        raise RuntimeError("secret internal detail")

    app.add_url_rule("/explode", "explode", explode)
    async with app.test_app():
        response = await app.test_client().get("/explode")
        body = await assert_problem(response, 500, "internal_error")
        assert "secret" not in str(body) and "Traceback" not in str(body)


async def test_unreachable_database_is_503_and_readyz_says_so(settings: dict[str, Any]) -> None:
    settings["MONGO_URI"] = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    settings["MONGO_SERVER_SELECTION_TIMEOUT_MS"] = 300
    app: Quart = await create_app(settings)
    async with app.test_app():
        client = app.test_client()
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.mimetype == "application/json"
        assert await ready.get_json() == {
            "status": "unavailable",
            "checks": {"mongo": "unavailable"},
        }
        response = await client.post(
            "/api/v1/auth/login", json={"username": "alice", "password": "whatever1"}
        )
        await assert_problem(response, 503, "service_unavailable")
        assert response.headers["Retry-After"] == "1"
        assert (await client.get("/healthz")).status_code == 200


async def test_security_headers_on_errors(client: TestClientProtocol) -> None:
    response = await client.get("/nope")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_internal_names_cover_the_schema_classes() -> None:
    """The fuzzing check and the test above look for these: make sure they are real."""
    assert {"TodoCreate", "TodoPatch", "Credentials", "LoginBody", "ListQuery"} <= internal_names()
    assert internal_names_in("instance of TodoCreate") == ["TodoCreate"]
    assert internal_names_in("No such todo.") == []
