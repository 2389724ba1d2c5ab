"""One database budget per request (REQUEST_DEADLINE_MS), on the driver under test.

These open a request exactly as the app does (its before_request hooks) and
then talk to the database directly, so they show what the driver does with
the budget: Motor runs each operation in a worker thread, PyMongo's async
client in the request's task, and both must see the same deadline.
"""

from __future__ import annotations

import asyncio

import pytest
from pymongo.errors import PyMongoError
from quart import Quart

from app.extensions import mongo

pytestmark = pytest.mark.settings(REQUEST_DEADLINE_MS=1000, MONGO_OPERATION_TIMEOUT_MS=30000)


async def test_every_operation_of_a_request_draws_on_one_budget(app: Quart) -> None:
    async with app.test_request_context("/api/v1/todos"):
        await app.preprocess_request()  # opens the request's budget
        # Each wait is shorter than the budget; together they overspend it.
        await mongo.db.command("ping")
        await asyncio.sleep(0.6)
        await mongo.db.command("ping")
        await asyncio.sleep(0.6)
        with pytest.raises(PyMongoError) as raised:
            await mongo.db.command("ping")
        assert raised.value.timeout, repr(raised.value)
        assert mongo.time_left() == 0
    async with app.app_context():
        # Outside a request only the client's per-operation bound applies.
        assert (await mongo.db.command("ping"))["ok"] == 1


async def test_each_request_gets_a_fresh_budget(app: Quart) -> None:
    for _ in range(2):
        async with app.test_request_context("/api/v1/todos"):
            await app.preprocess_request()
            assert 0 < mongo.time_left() <= 1.0
            await asyncio.sleep(0.6)
            assert (await mongo.db.command("ping"))["ok"] == 1


async def test_a_spent_budget_is_a_503_with_retry_after(app: Quart) -> None:
    """Run the budget out inside a real request: its next operation is a 503."""
    async with app.test_request_context("/api/v1/todos"):
        await app.preprocess_request()
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
    async with app.app_context():
        assert await mongo.db["todos"].count_documents({"late": True}) == 0
