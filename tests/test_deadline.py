"""One database budget per request (REQUEST_DEADLINE_MS), on the driver under test.

Every view runs inside ``mongo.budget()``. These open it exactly as the app
does and then talk to the database directly, so they show what the driver
does with it: Motor runs each operation in a worker thread, PyMongo's async
client in the caller's task, and both must see the same deadline.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from pymongo.errors import PyMongoError
from quart import Quart

from app.extensions import mongo
from scripts.devserver import call, serving
from tests.conftest import DRIVER

pytestmark = pytest.mark.settings(REQUEST_DEADLINE_MS=1000, MONGO_OPERATION_TIMEOUT_MS=30000)


async def test_every_operation_of_a_request_draws_on_one_budget(app: Quart) -> None:
    async with app.app_context():
        with mongo.budget():
            # Each wait is shorter than the budget; together they overspend it.
            await mongo.db.command("ping")
            await asyncio.sleep(0.6)
            await mongo.db.command("ping")
            await asyncio.sleep(0.6)
            with pytest.raises(PyMongoError) as raised:
                await mongo.db.command("ping")
            assert raised.value.timeout, repr(raised.value)
            assert mongo.time_left() == 0
        # Outside a request only the client's per-operation bound applies.
        assert (await mongo.db.command("ping"))["ok"] == 1


async def test_each_budget_is_fresh(app: Quart) -> None:
    async with app.app_context():
        for _ in range(2):
            with mongo.budget():
                assert 0 < mongo.time_left() <= 1.0
                await asyncio.sleep(0.6)
                assert (await mongo.db.command("ping"))["ok"] == 1


async def test_a_spent_budget_is_a_503_with_retry_after(app: Quart) -> None:
    """Run the budget out: the next operation fails, and the app answers 503."""
    async with app.test_request_context("/api/v1/todos", method="POST"):
        with mongo.budget():
            await asyncio.sleep(1.05)
            try:
                await mongo.db["todos"].insert_one({"late": True})
            except PyMongoError as error:
                response = await app.handle_user_exception(error)
            else:
                pytest.fail("an operation after the deadline succeeded")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert (await response.get_json())["code"] == "service_unavailable"
        assert await mongo.db["todos"].count_documents({"late": True}) == 0


@pytest.mark.slow
def test_a_slow_upload_does_not_spend_the_budget() -> None:
    """The budget opens when the view starts, once the body is in."""
    credentials = {"username": "slowpoke", "password": "long enough pw"}
    settings = {
        "REQUEST_DEADLINE_MS": "500",
        "MONGO_DRIVER": DRIVER,
    }
    with serving(settings, workers=1) as port:
        assert call(port, "POST", "/api/v1/auth/register", credentials)[0] == 201
        access = call(port, "POST", "/api/v1/auth/login", credentials)[1]["access_token"]
        body = json.dumps({"title": "sent slowly"}).encode()
        head = (
            f"POST /api/v1/todos HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Authorization: Bearer {access}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(head + body[:5])
            time.sleep(1.0)  # twice the budget
            connection.sendall(body[5:])
            reply = b""
            while chunk := connection.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 201"), reply[:300]
