"""``GET /metrics`` in one process: what is counted, by which labels, and who may read it.

The two-worker server (multiprocess mode) is tested in tests/test_metrics_server.py.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from quart import Quart

from app import metrics
from app.logs import AccessLog
from tests.conftest import PASSWORD, Api

TOKEN = "m" * 20 + "etrics-token-0123456789"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def scrape(
    client: Any, **headers: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(await response.get_data(as_text=True))


async def test_requests_are_counted_by_route_template_method_and_status(
    api: Api, client: Any
) -> None:
    headers = await api.headers()
    created = await client.post("/api/v1/todos", json={"title": "a"}, headers=headers)
    todo_id = (await created.get_json())["id"]
    for _ in range(3):
        assert (await client.get(f"/api/v1/todos/{todo_id}", headers=headers)).status_code == 200
    missing = "0123456789abcdef01234567"
    assert (await client.get(f"/api/v1/todos/{missing}", headers=headers)).status_code == 404
    for path in ("/nowhere", "/api/v1/nope/1", "/api/v1/nope/2"):
        assert (await client.get(path)).status_code == 404
    assert (await client.open("/healthz", method="BREW")).status_code == 405

    found = await scrape(client)
    count = "todo_api_http_request_duration_seconds_count"
    route = "/api/v1/todos/<todo_id>"
    assert value(found, count, method="GET", route=route, status="200") == 3
    assert value(found, count, method="GET", route=route, status="404") == 1
    assert value(found, count, method="POST", route="/api/v1/todos", status="201") == 1
    assert value(found, count, method="GET", route="unmatched", status="404") == 3
    assert value(found, count, method="other", route="unmatched", status="405") == 1
    routes = {dict(labels)["route"] for name, labels in found if name == count}
    assert not any(todo_id in route or "nope" in route for route in routes)
    buckets = "todo_api_http_request_duration_seconds_bucket"
    assert value(found, buckets, method="GET", route=route, status="200", le="+Inf") == 3


async def test_database_commands_are_timed_by_command_and_collection(api: Api, client: Any) -> None:
    headers = await api.headers()
    count = "todo_api_database_command_duration_seconds_count"
    before = await scrape(client)
    await client.post("/api/v1/todos", json={"title": "a"}, headers=headers)
    await client.get("/api/v1/todos", headers=headers)
    found = await scrape(client)

    def added(**labels: str) -> float:
        return value(found, count, **labels) - value(before, count, **labels)

    assert added(command="find", collection="sessions") == 2  # one session check each
    assert added(command="aggregate", collection="todos") == 1  # the page
    assert added(command="update", collection="todos") == 1  # the create: one command
    assert value(found, count, command="insert", collection="users") == 1


async def test_database_up_follows_the_last_command(client: Any) -> None:
    assert (await client.get("/readyz")).status_code == 200
    assert value(await scrape(client), "todo_api_database_up") == 1


@pytest.mark.settings(LOGIN_FAILURES_PER_USERNAME_AND_ADDRESS=2)
async def test_login_failures_and_rate_limit_refusals_are_counted(api: Api, client: Any) -> None:
    await api.register()
    wrong = {"username": "alice", "password": "not the password"}
    statuses = [(await client.post("/api/v1/auth/login", json=wrong)).status_code for _ in range(4)]
    assert statuses == [401, 401, 429, 429]
    found = await scrape(client)
    assert value(found, "todo_api_login_failures_total") == 2
    refusals = "todo_api_rate_limit_refusals_total"
    assert value(found, refusals, rule="login-failures:user-addr") == 2
    assert not any("alice" in str(labels) for _, labels in found)  # no usernames in labels


async def test_idempotent_replays_are_counted(api: Api, client: Any) -> None:
    headers = {**await api.headers(), "Idempotency-Key": "k-1"}
    for _ in range(3):
        response = await client.post("/api/v1/todos", json={"title": "once"}, headers=headers)
        assert response.status_code == 201
    found = await scrape(client)
    assert value(found, "todo_api_idempotent_replays_total") == 2


async def test_build_info_names_the_version_and_driver(
    client: Any, settings: dict[str, Any]
) -> None:
    found = await scrape(client)
    [(labels, level)] = [
        (dict(labels), level)
        for (name, labels), level in found.items()
        if name == "todo_api_build_info"
    ]
    assert level == 1
    assert labels["driver"] == settings["MONGO_DRIVER"]
    assert labels["version"] == "1.0.0"
    assert labels["app_env"] == "testing"


async def test_metrics_are_not_in_the_openapi_document(client: Any) -> None:
    document = await (await client.get("/openapi.json")).get_json()
    assert "/metrics" not in document["paths"]


@pytest.mark.settings(METRICS_TOKEN=TOKEN)
async def test_a_metrics_token_is_required_once_set(client: Any) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = await client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert response.mimetype == "application/problem+json"
    await scrape(client, Authorization=f"Bearer {TOKEN}")


@pytest.mark.parametrize(
    ("config", "authorization", "allowed"),
    [
        ({"APP_ENV": "production", "METRICS_TOKEN": None}, "Bearer anything", None),
        ({"APP_ENV": "production", "METRICS_TOKEN": TOKEN}, f"Bearer {TOKEN}", True),
        ({"APP_ENV": "production", "METRICS_TOKEN": TOKEN}, f"bearer  {TOKEN} ", True),
        ({"APP_ENV": "production", "METRICS_TOKEN": TOKEN}, f"Basic {TOKEN}", False),
        ({"APP_ENV": "production", "METRICS_TOKEN": TOKEN}, "", False),
        ({"APP_ENV": "development", "METRICS_TOKEN": None}, "", True),
    ],
)
def test_who_may_read_the_metrics(config: dict[str, Any], authorization: str, allowed: Any) -> None:
    assert metrics.authorised(config, authorization) is allowed


@pytest.fixture
def access_lines(app: Quart) -> Iterator[io.StringIO]:
    """The app's access log lines (JSON), written to a buffer."""
    stream = io.StringIO()
    app.extensions["access_log"] = AccessLog("json", logging.StreamHandler(stream))
    logger = logging.getLogger("app.access")
    level = logger.level
    logger.setLevel(logging.INFO)
    yield stream
    logger.setLevel(level)


def logged(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("traceparent", "expected"),
    [
        (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
        (f"00-{TRACE}-00f067aa0ba902b7-00", TRACE),
        (f"  00-{TRACE}-00f067aa0ba902b7-01 ", TRACE),  # optional whitespace around a value
        (f"01-{TRACE}-00f067aa0ba902b7-01-later-fields", TRACE),  # a later version's extras
        (f"00-{TRACE}-00f067aa0ba902b7-01-extra", None),  # version 00 has exactly four fields
        (f"ff-{TRACE}-00f067aa0ba902b7-01", None),  # version ff is invalid
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TRACE.upper()}-00f067aa0ba902b7-01", None),  # upper-case hex
        (f"00-{TRACE[:-1]}-00f067aa0ba902b7-01", None),  # short trace id
        (f"00_{TRACE}_00f067aa0ba902b7_01", None),
        ("garbage", None),
    ],
)
async def test_a_valid_traceparent_puts_its_trace_id_beside_the_request_id(
    client: Any, access_lines: io.StringIO, traceparent: str, expected: str | None
) -> None:
    response = await client.get(
        "/healthz", headers={"traceparent": traceparent, "X-Request-ID": "req-7"}
    )
    assert response.status_code == 200
    [line] = logged(access_lines)
    assert line["request_id"] == "req-7"
    assert line["trace_id"] == expected
    if expected is None:
        assert "trace_id=" not in line["message"]
    else:
        assert line["message"].endswith(f"request_id=req-7 trace_id={expected}")


async def test_two_traceparent_headers_are_ignored(client: Any, access_lines: io.StringIO) -> None:
    value = f"00-{TRACE}-00f067aa0ba902b7-01"
    await client.get("/healthz", headers=[("traceparent", value), ("traceparent", value)])
    [line] = logged(access_lines)
    assert line["trace_id"] is None


async def test_login_password_never_reaches_a_label(api: Api, client: Any) -> None:
    await api.register()
    await client.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD})
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert PASSWORD not in text


def test_a_crashed_workers_live_gauges_are_forgotten(tmp_path: Any) -> None:
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    for name in (f"gauge_livesum_{dead}.db", f"gauge_livemax_{dead}.db", f"counter_{dead}.db"):
        (tmp_path / name).write_bytes(b"")
    mine = tmp_path / f"gauge_livesum_{os.getpid()}.db"
    mine.write_bytes(b"")
    metrics.forget_dead_workers(str(tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [f"counter_{dead}.db", mine.name]  # counts stay: totals never go backwards
    )


def test_buffered_observations_land_in_the_buckets_observe_would_choose() -> None:
    def histogram(registry: CollectorRegistry) -> Histogram:
        return Histogram("h", "h", ("l",), registry=registry, buckets=metrics.REQUEST_BUCKETS)

    direct, buffered = CollectorRegistry(), CollectorRegistry()
    series = metrics.BufferedSeries(histogram(buffered).labels("x"))
    reference = histogram(direct).labels("x")
    for seconds in (0.0, 0.005, 0.0051, 0.25, 0.2500001, 9.99, 10.0, 10.5, 1e9):
        series.observe(seconds)
        reference.observe(seconds)
    assert generate_latest(buffered) != generate_latest(direct)  # nothing shared yet
    series.flush()
    series.flush()  # an empty flush adds nothing
    without_created = [
        line for line in generate_latest(buffered).decode().splitlines() if "_created" not in line
    ]
    assert without_created == [
        line for line in generate_latest(direct).decode().splitlines() if "_created" not in line
    ]
