"""Fixtures: one database server per session, a fresh app and database per test.

The server is SecantusDB on a free port (or real MongoDB when TEST_MONGO_URI
is set); every test gets its own database name, so tests never share data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from app import create_app
from app.embedded_db import EmbeddedDatabase
from app.extensions import mongo
from config import BaseConfig

PASSWORD = "correct horse battery"
#: The driver the tests run on: ``MONGO_DRIVER`` (``make test`` sets it for each pass),
#: else the service's own default, so a plain ``pytest`` tests what ``make run`` serves.
DRIVER = os.environ.get("MONGO_DRIVER", BaseConfig.MONGO_DRIVER)
#: Todo documents only: the collection also holds one quota counter per owner.
TODO_DOCS = {"_id": {"$type": "objectId"}}
#: Session documents only: the collection also holds one credential floor per user.
SESSION_DOCS = {"generation": {"$exists": True}}


@pytest.fixture(scope="session")
def database_uri() -> Iterator[str]:
    if os.environ.get("TEST_MONGO_URI"):
        yield os.environ["TEST_MONGO_URI"]
        return
    server = EmbeddedDatabase(":memory:")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def settings(database_uri: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Config for this test's app, with a ``@pytest.mark.settings(NAME=value)`` applied."""
    marker = request.node.get_closest_marker("settings")
    return {
        "APP_ENV": "testing",
        "MONGO_URI": database_uri,
        "MONGO_DB": f"test_{uuid.uuid4().hex[:16]}",
        "MONGO_DRIVER": DRIVER,
        **(marker.kwargs if marker else {}),
    }


@pytest.fixture
async def app(settings: dict[str, Any]) -> AsyncIterator[Quart]:
    quart_app = await create_app(settings)
    async with quart_app.test_app():
        yield quart_app
        async with quart_app.app_context():
            await mongo.db.client.drop_database(settings["MONGO_DB"])


@pytest.fixture
def client(app: Quart) -> TestClientProtocol:
    return app.test_client()


@pytest.fixture
async def db(app: Quart) -> AsyncIterator[Any]:
    """The test's database, for asserting on what was stored."""
    async with app.app_context():
        yield mongo.db


class Api:
    """Small helpers for the calls most tests need."""

    def __init__(self, client: TestClientProtocol) -> None:
        self.client = client

    async def register(self, username: str = "alice", password: str = PASSWORD) -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/auth/register", json={"username": username, "password": password}
        )
        assert response.status_code == 201, await response.get_data(as_text=True)
        body: dict[str, Any] = await response.get_json()
        return body

    async def login(self, username: str = "alice", password: str = PASSWORD) -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/auth/login", json={"username": username, "password": password}
        )
        assert response.status_code == 200, await response.get_data(as_text=True)
        body: dict[str, Any] = await response.get_json()
        return body

    async def user_tokens(self, username: str = "alice") -> dict[str, Any]:
        """Register ``username`` and log in; return the token pair."""
        await self.register(username)
        return await self.login(username)

    async def headers(self, username: str = "alice") -> dict[str, str]:
        """Authorization headers for a fresh user called ``username``."""
        tokens = await self.user_tokens(username)
        return bearer(tokens["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(client: TestClientProtocol) -> Api:
    return Api(client)
