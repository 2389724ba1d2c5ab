"""Health probes, request ids, security headers."""

from __future__ import annotations

import re

from quart.typing import TestClientProtocol


async def test_healthz_is_ok(client: TestClientProtocol) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ok"}
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


async def test_readyz_reports_the_database(client: TestClientProtocol) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert await response.get_json() == {"status": "ok", "checks": {"mongo": "ok"}}


async def test_sane_request_id_is_echoed(client: TestClientProtocol) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-123.x_y"})
    assert response.headers["X-Request-ID"] == "abc-123.x_y"


async def test_insane_request_id_is_replaced(client: TestClientProtocol) -> None:
    for offered in ["has space", "x" * 129, "semi;colon", ""]:
        response = await client.get("/healthz", headers={"X-Request-ID": offered})
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
