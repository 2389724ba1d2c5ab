"""The database goes away and comes back: 503 meanwhile, recovery without restart."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app import create_app
from app.embedded_db import EmbeddedDatabase

pytestmark = pytest.mark.slow


async def counter(client: Any, name: str) -> float:
    """One counter's value from ``/metrics``."""
    exposition = await (await client.get("/metrics")).get_data(as_text=True)
    match = re.search(rf"^{name} (\S+)$", exposition, re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


async def database_503s(client: Any) -> float:
    """Requests answered 503 for the database: unreachable, or the budget spent first."""
    return await counter(client, "todo_api_database_unavailable_total") + await counter(
        client, "todo_api_request_deadline_exceeded_total"
    )


@pytest.fixture
def own_database() -> Iterator[EmbeddedDatabase]:
    """A database server of this test's own, free to be stopped and restarted."""
    server = EmbeddedDatabase(":memory:")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_outage_gives_fast_503_then_recovers(
    settings: dict[str, Any], own_database: EmbeddedDatabase
) -> None:
    settings["MONGO_URI"] = own_database.uri
    settings["MONGO_SERVER_SELECTION_TIMEOUT_MS"] = 500
    app = await create_app(settings)
    async with app.test_app():
        client = app.test_client()
        credentials = {"username": "alice", "password": "long enough pw"}
        assert (await client.post("/api/v1/auth/register", json=credentials)).status_code == 201

        own_database.stop()
        started = time.monotonic()
        response = await client.post("/api/v1/auth/login", json=credentials)
        assert response.status_code == 503
        assert (await response.get_json())["code"] == "service_unavailable"
        assert time.monotonic() - started < 3
        assert (await client.get("/readyz")).status_code == 503

        # The login's 503: the driver's own bound, or the request's deadline, came first.
        assert await database_503s(client) == 1
        assert await counter(client, "todo_api_database_up") == 0

        own_database.start()  # same port; an in-memory server comes back empty
        for _ in range(50):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert (await client.get("/readyz")).status_code == 200
        assert await counter(client, "todo_api_database_up") == 1
        response = await client.post("/api/v1/auth/register", json=credentials)
        assert response.status_code == 201


async def test_outage_is_bounded_by_the_request_deadline(
    settings: dict[str, Any], own_database: EmbeddedDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """With server selection and operation bounds far above the request's
    budget, an outage still answers 503 once the budget is spent.

    The driver notices a spent budget only when it next rechecks (every 0.5 s
    while no server answers), so the app stops the view at the deadline
    itself: the log says which of the two ended each request.
    """
    settings["MONGO_URI"] = own_database.uri
    settings["MONGO_SERVER_SELECTION_TIMEOUT_MS"] = 30_000
    settings["MONGO_OPERATION_TIMEOUT_MS"] = 30_000
    settings["REQUEST_DEADLINE_MS"] = 500
    app = await create_app(settings)
    async with app.test_app():
        client = app.test_client()
        credentials = {"username": "alice", "password": "long enough pw"}
        assert (await client.post("/api/v1/auth/register", json=credentials)).status_code == 201
        login = await client.post("/api/v1/auth/login", json=credentials)
        headers = {"Authorization": f"Bearer {(await login.get_json())['access_token']}"}

        logging.getLogger("app.db").addHandler(caplog.handler)
        own_database.stop()
        # A guard, not a measurement: without the budget each request would
        # wait out the 30 s server selection bound.
        async with asyncio.timeout(15):
            for _ in range(3):
                response = await client.post(
                    "/api/v1/todos", json={"title": "during the outage"}, headers=headers
                )
                assert response.status_code == 503
                assert response.headers["Retry-After"] == "1"
                assert (await response.get_json())["code"] == "service_unavailable"
        assert await database_503s(client) == 3
        deadlines = await counter(client, "todo_api_request_deadline_exceeded_total")
        own_database.start()  # so that closing the client need not wait out its bounds
        logging.getLogger("app.db").removeHandler(caplog.handler)
    assert "request deadline spent" in caplog.messages
    assert deadlines == caplog.messages.count("request deadline spent")


async def test_readiness_answers_its_own_503_within_a_short_budget(
    settings: dict[str, Any], own_database: EmbeddedDatabase
) -> None:
    settings["MONGO_URI"] = own_database.uri
    settings["MONGO_SERVER_SELECTION_TIMEOUT_MS"] = 30_000
    settings["REQUEST_DEADLINE_MS"] = 800  # shorter than the probe's own 2 s
    app = await create_app(settings)
    async with app.test_app():
        client = app.test_client()
        assert (await client.get("/readyz")).status_code == 200
        own_database.stop()
        for _ in range(2):
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.mimetype == "application/json"
            assert await response.get_json() == {
                "status": "unavailable",
                "checks": {"mongo": "unavailable"},
            }
        own_database.start()
