"""CORS, logging and the 500 log line."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from app import create_app
from app.logs import AccessLog, JsonFormatter


async def test_cors_is_off_by_default(client: Any) -> None:
    response = await client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.settings(CORS_ORIGINS="https://app.example, https://admin.example")
async def test_cors_allows_configured_origins(client: Any) -> None:
    allowed = await client.get("/healthz", headers={"Origin": "https://app.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-Request-ID" in allowed.headers["Access-Control-Expose-Headers"]
    preflight = await client.options(
        "/api/v1/todos",
        headers={
            "Origin": "https://admin.example",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization, if-match",
        },
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://admin.example"
    assert "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
    other = await client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_json_log_lines_carry_extra_fields() -> None:
    record = logging.makeLogRecord(
        {"name": "app.access", "levelname": "INFO", "msg": "GET / 200", "request_id": "abc"}
    )
    line = orjson.loads(JsonFormatter().format(record))
    assert line["message"] == "GET / 200"
    assert line["request_id"] == "abc"
    assert line["level"] == "INFO"
    assert line["time"].endswith("+00:00")


@pytest.fixture
def access_level() -> Iterator[logging.Logger]:
    """``app.access`` at INFO for one test (the testing config logs WARNING and up)."""
    logger = logging.getLogger("app.access")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield logger
    logger.setLevel(level)


def test_access_log_json_lines_carry_the_fields(access_level: logging.Logger) -> None:
    stream = io.StringIO()
    AccessLog("json", logging.StreamHandler(stream)).write(
        "GET /healthz 200 0.50ms request_id=abc", {"status": 200, "request_id": "abc"}
    )
    line = orjson.loads(stream.getvalue())
    assert line["message"] == "GET /healthz 200 0.50ms request_id=abc"
    assert (line["level"], line["logger"], line["status"], line["request_id"]) == (
        "INFO",
        "app.access",
        200,
        "abc",
    )
    assert line["time"].endswith("+00:00")


def test_access_log_text_lines_read_like_the_other_log_lines(
    access_level: logging.Logger,
) -> None:
    stream = io.StringIO()
    AccessLog("text", logging.StreamHandler(stream)).write("GET / 404", {"status": 404})
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO app\.access: GET / 404\n",
        stream.getvalue(),
    )
    access_level.setLevel(logging.WARNING)
    AccessLog("text", logging.StreamHandler(stream)).write("GET / 200", {"status": 200})
    assert "GET / 200" not in stream.getvalue()


async def test_500_is_logged_with_traceback_and_request_id(
    settings: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    app = await create_app(settings)

    async def explode() -> str:
        raise RuntimeError("boom")

    app.add_url_rule("/explode", "explode", explode)
    logging.getLogger("app.errors").addHandler(caplog.handler)
    try:
        async with app.test_app():
            response = await app.test_client().get("/explode", headers={"X-Request-ID": "req-42"})
    finally:
        logging.getLogger("app.errors").removeHandler(caplog.handler)
    assert response.status_code == 500
    [record] = [r for r in caplog.records if r.name == "app.errors"]
    assert "req-42" in record.getMessage()
    assert record.exc_info is not None and "boom" in str(record.exc_info[1])
