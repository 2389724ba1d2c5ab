"""``/metrics`` on the real server: two hypercorn workers, one set of numbers.

Each worker writes its values to its own files in PROMETHEUS_MULTIPROC_DIR;
a scrape (answered by either worker) reads them all. These tests send
traffic over real connections, then check that what the scrape says adds
up across the workers, file by file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from bson import ObjectId
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from app.embedded_db import free_port
from scripts.devserver import ROOT, ServerProcess, call, start_hypercorn, stop, wait_ready
from scripts.sse_client import EventStream
from tests.test_metrics import samples, value

pytestmark = pytest.mark.slow

STRONG_SECRET = "3f9a0c7e51b24d68a1e0f5c2b7d94e3a6c1f8b05"
METRICS_TOKEN = "9d1c5e7a3b2f4086e1a7c9d3b5f20e84"
TODO_ROUTE = "/api/v1/todos/<todo_id>"
REQUESTS = "todo_api_http_request_duration_seconds_count"


def scrape(port: int, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def per_worker(directory: Path, name: str, **labels: str) -> dict[int, float]:
    """One sample's value in each worker's own files (the files are named by pid)."""
    values: dict[int, float] = {}
    pids = {int(path.stem.rsplit("_", 1)[1]) for path in directory.glob("histogram_*.db")}
    for pid in pids:
        alone = directory / f"alone-{pid}"
        alone.mkdir()
        for path in directory.glob(f"*_{pid}.db"):
            shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        found = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in registry.collect()
            for sample in family.samples
        }
        values[pid] = value(found, name, **labels)
        shutil.rmtree(alone)
    return values


@pytest.fixture
def server_env(database_uri: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {
        "APP_ENV": "testing",
        "MONGO_URI": database_uri,
        "MONGO_DB": f"test_{uuid.uuid4().hex[:16]}",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        # 16 concurrent clients act for one user: counting, not fairness.
        "USER_CONCURRENT_REQUESTS": "1000",
    }


def test_counts_add_up_across_workers_and_ids_share_one_route(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"")  # a file from an earlier run: emptied
    port = free_port()
    server = start_hypercorn(port, server_env, workers=2)
    try:
        wait_ready(port, server, workers=2)
        assert not (directory / "counter_1.db").exists()
        credentials = {"username": "metered", "password": "long enough pw"}
        assert call(port, "POST", "/api/v1/auth/register", credentials)[0] == 201
        token = call(port, "POST", "/api/v1/auth/login", credentials)[1]["access_token"]
        ids = {str(ObjectId()) for _ in range(1000)}

        def get(todo_id: str) -> int:
            return call(port, "GET", f"/api/v1/todos/{todo_id}", token=token)[0]

        with ThreadPoolExecutor(max_workers=16) as pool:  # new connections: both workers answer
            statuses = list(pool.map(get, sorted(ids)))
        assert statuses == [404] * 1000

        # Each worker adds what it observed to the shared files once a second.
        deadline = time.monotonic() + 10
        while True:
            status, text = scrape(port)
            assert status == 200
            found = samples(text)
            counted = value(found, REQUESTS, method="GET", route=TODO_ROUTE, status="404")
            if counted == 1000 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert counted == 1000
        routes = {dict(labels)["route"] for name, labels in found if name == REQUESTS}
        assert routes - {"/metrics"} == {
            TODO_ROUTE,
            "/api/v1/auth/register",
            "/api/v1/auth/login",
            "/readyz",
        }, routes
        shares = per_worker(directory, REQUESTS, method="GET", route=TODO_ROUTE, status="404")
        assert len(shares) == 2 and all(share > 0 for share in shares.values()), shares
        assert sum(shares.values()) == 1000
        # Database time across workers: a session check for each of the 1,000.
        sessions = value(
            found,
            "todo_api_database_command_duration_seconds_count",
            command="find",
            collection="sessions",
        )
        assert sessions >= 1000
        assert (
            samples(scrape(port)[1]).get(
                (
                    REQUESTS,
                    frozenset({"method": "GET", "route": TODO_ROUTE, "status": "404"}.items()),
                )
            )
            == 1000
        )  # any worker answers the scrape with the same sum
    finally:
        stop(server)
    # Workers that stopped cleanly took their live gauges along; their counts stay.
    assert not list(directory.glob("gauge_live*.db"))
    assert len(list(directory.glob("histogram_*.db"))) == 2


def test_open_streams_and_delivered_events_across_workers(server_env: dict[str, str]) -> None:
    port = free_port()
    server = start_hypercorn(port, server_env, workers=2)
    streams: list[EventStream] = []
    try:
        wait_ready(port, server, workers=2)
        credentials = {"username": "streamer", "password": "long enough pw"}
        assert call(port, "POST", "/api/v1/auth/register", credentials)[0] == 201
        token = call(port, "POST", "/api/v1/auth/login", credentials)[1]["access_token"]
        streams = [EventStream(port, token) for _ in range(6)]
        assert all(stream.status == 200 for stream in streams)
        found = samples(scrape(port)[1])
        assert value(found, "todo_api_event_streams_open") == 6
        assert call(port, "POST", "/api/v1/todos", {"title": "seen"}, token)[0] == 201
        for stream in streams:
            assert stream.next().name == "created"
        found = samples(scrape(port)[1])
        assert value(found, "todo_api_events_delivered_total", phase="live") == 6
        assert value(found, "todo_api_change_stream_lag_seconds") < 60
        for stream in streams:
            stream.close()
        deadline = time.monotonic() + 10
        while value(samples(scrape(port)[1]), "todo_api_event_streams_open") != 0:
            assert time.monotonic() < deadline, "open streams never went back to 0"
            time.sleep(0.1)
    finally:
        for stream in streams:
            stream.close()
        stop(server)


def test_production_refuses_an_older_schema_then_serves_metrics_to_the_token_only(
    database_uri: str,
) -> None:
    env = {
        "APP_ENV": "production",
        "MONGO_URI": database_uri,
        "MONGO_DB": f"test_{uuid.uuid4().hex[:16]}",
        "JWT_SECRET_KEY": STRONG_SECRET,
    }
    refused = start_hypercorn(free_port(), env, workers=2)
    refused.wait(timeout=60)
    output = refused.output()
    assert refused.returncode == 65, output
    [line] = [line for line in output.splitlines() if "refusing to start" in line]
    assert "python -m app db upgrade" in line and "0001-recount-todo-counters" in line
    assert "Traceback" not in output and "Running on" not in output

    upgrade = subprocess.run(
        [sys.executable, "-m", "app", "db", "upgrade"],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    assert "applied 2" in upgrade.stdout

    for token in (None, METRICS_TOKEN):
        port = free_port()
        server: ServerProcess = start_hypercorn(
            port, {**env, **({"METRICS_TOKEN": token} if token else {})}, workers=1
        )
        try:
            wait_ready(port, server)
            if token is None:
                assert scrape(port)[0] == 404  # no token configured: no endpoint
                assert scrape(port, "anything")[0] == 404
            else:
                assert scrape(port)[0] == 401
                assert scrape(port, "wrong")[0] == 401
                status, text = scrape(port, token)
                assert status == 200
                assert "todo_api_build_info" in text
        finally:
            output = stop(server)
        assert "refusing" not in output


def test_an_unusable_metrics_directory_refuses_to_start_in_one_line(
    server_env: dict[str, str],
) -> None:
    env = {**server_env, "PROMETHEUS_MULTIPROC_DIR": "/proc/todo-api-metrics"}
    server = start_hypercorn(free_port(), env, workers=2)
    server.wait(timeout=60)
    output = server.output()
    assert server.returncode == 73, output
    [line] = [line for line in output.splitlines() if "cannot start" in line]
    assert "PROMETHEUS_MULTIPROC_DIR" in line
    assert "Traceback" not in output and "Running on" not in output
