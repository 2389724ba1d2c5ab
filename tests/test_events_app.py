"""Live updates in-process (the app's own serving hooks, no hypercorn): timing settings.

The real-server behaviour is in test_events.py; here the stream runs under
Quart's test client so settings can be made small.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from quart import Quart

from app.live.alarms import Alarms
from config import ConfigError, load_settings
from tests.conftest import Api


@pytest.mark.settings(RESPONSE_TIMEOUT=1, EVENTS_HEARTBEAT_SECONDS=1)
async def test_heartbeats_keep_the_stream_open_past_the_response_timeout(
    app: Quart, api: Api
) -> None:
    headers = await api.headers()
    received = b""
    async with app.test_client().request("/api/v1/todos/events", headers=headers) as connection:
        await connection.send_complete()
        loop = asyncio.get_running_loop()
        until = loop.time() + 3.5  # three heartbeats, and 3.5 times RESPONSE_TIMEOUT
        while loop.time() < until:
            received += await asyncio.wait_for(connection.receive(), timeout=2)
        assert connection.status_code == 200
        await connection.disconnect()  # the stream never ends by itself
    assert received.startswith(b"retry: 2000\n\n")
    assert received.count(b": heartbeat\n\n") >= 3


@pytest.mark.settings(EVENTS_RETRY_MS=500)
async def test_after_serving_ends_open_streams_with_shutdown(app: Quart, api: Api) -> None:
    headers = await api.headers()
    async with app.test_client().request("/api/v1/todos/events", headers=headers) as connection:
        await connection.send_complete()
        assert await asyncio.wait_for(connection.receive(), timeout=2) == b"retry: 500\n\n"
        hub = app.extensions["live"]
        await hub.stop()
        ending = await asyncio.wait_for(connection.receive(), timeout=2)
        await connection.disconnect()
    assert b"event: shutdown\n" in ending and b"data: {}\n\n" in ending


@pytest.mark.parametrize(
    "setting",
    [
        "EVENTS_HEARTBEAT_SECONDS",
        "EVENTS_RETRY_MS",
        "EVENTS_QUEUE_SIZE",
        "EVENTS_MAX_STREAMS_PER_USER",
        "EVENTS_TICKET_SECONDS",
    ],
)
def test_event_settings_must_be_positive(tmp_path: Path, setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        load_settings(environ={"APP_ENV": "testing", setting: "0"}, instance_path=tmp_path)


async def test_a_dropped_database_resets_streams_and_live_updates_go_on(
    app: Quart, api: Api, db: Any
) -> None:
    """A dropped database invalidates the worker's change stream for good: the hub
    must reopen it (streams get ``reset``), not spin on the dead one."""
    headers = await api.headers()
    async with app.test_client().request("/api/v1/todos/events", headers=headers) as connection:
        await connection.send_complete()
        assert (await asyncio.wait_for(connection.receive(), timeout=5)).startswith(b"retry:")
        await db.client.drop_database(db.name)
        received = b""
        while b"event: reset\n" not in received:
            received += await asyncio.wait_for(connection.receive(), timeout=10)
        await connection.disconnect()
    hub = app.extensions["live"]
    assert hub._task is not None and not hub._task.done()  # still following


async def test_head_answers_the_headers_and_opens_no_stream(app: Quart, api: Api) -> None:
    headers = await api.headers()
    response = await app.test_client().head("/api/v1/todos/events", headers=headers)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-store"
    assert await response.get_data() == b""
    assert app.extensions["live"].subscribers == {}


async def test_a_stream_that_left_is_unsubscribed_and_its_place_freed(app: Quart, api: Api) -> None:
    """The response's task notices the disconnect even while the stream is idle."""
    headers = await api.headers()
    hub = app.extensions["live"]
    async with app.test_client().request("/api/v1/todos/events", headers=headers) as connection:
        await connection.send_complete()
        assert (await asyncio.wait_for(connection.receive(), timeout=5)).startswith(b"retry:")
        assert sum(len(streams) for streams in hub.subscribers.values()) == 1
        await connection.disconnect()
    assert hub.subscribers == {}


async def test_alarms_wake_each_sleeper_at_its_second_even_one_added_earlier() -> None:
    """One task serves every stream's heartbeat and expiry: an alarm added for an
    earlier second than the one it sleeps for must wake it."""
    loop = asyncio.get_running_loop()
    woken: dict[str, float] = {}
    early_done = asyncio.Event()

    class Sleeper:
        def __init__(self, name: str) -> None:
            self.name = name

        def wake(self) -> None:
            woken[self.name] = loop.time()
            if self.name == "early":
                early_done.set()

    alarms = Alarms()
    now = math.floor(loop.time())
    try:
        alarms.at(now + 60, Sleeper("late"))
        await asyncio.sleep(0.05)  # the task now sleeps until the late one's second
        alarms.at(now + 2, Sleeper("early"))
        alarms.at(now - 1, Sleeper("overdue"))
        await asyncio.wait_for(early_done.wait(), timeout=10)
    finally:
        alarms.stop()
    assert set(woken) == {"overdue", "early"}
    assert woken["early"] >= now + 2  # never before its second
    assert woken["overdue"] <= woken["early"]
