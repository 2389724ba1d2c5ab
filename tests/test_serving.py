"""Starting the server as a user does: ``make run`` and its variables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.embedded_db import free_port
from config import BaseConfig
from scripts.devserver import ROOT, ServerProcess, call, wait_ready
from tests.conftest import DRIVER

pytestmark = pytest.mark.slow

VENV = Path(sys.executable).parent.parent
#: What ``make run`` must not inherit from the shell running the tests.
SERVING_VARIABLES = ("BIND", "WEB_CONCURRENCY", "HOST", "PORT", "WORKERS")


def clean_environment(database_uri: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVING_VARIABLES}
    return {
        **env,
        "APP_ENV": "testing",
        "MONGO_URI": database_uri,
        "MONGO_DB": f"serving_{uuid.uuid4().hex[:12]}",
        "MONGO_DRIVER": DRIVER,
        **extra,
    }


@contextmanager
def make_run(env: dict[str, str], log: Path, *variables: str) -> Iterator[ServerProcess]:
    """``make run`` with this test's virtual environment, in a process group of its own."""
    command = ["make", "-s", "-o", f"{VENV}/bin/.installed", "run", f"VENV={VENV}", *variables]
    server = ServerProcess(command, env, log, own_group=True)
    try:
        yield server
    finally:
        # make does not pass SIGTERM on: stop the whole group, as Ctrl-C would.
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        wait_for_group_to_end(server.pid)


def wait_for_group_to_end(group: int, seconds: float = 30) -> None:
    """Hypercorn outlives make by its graceful shutdown; wait for every member."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(group, signal.SIGKILL)
    raise AssertionError(f"process group {group} outlived SIGTERM by {seconds} s")


def test_make_run_honours_bind_and_defaults_to_two_workers(
    database_uri: str, tmp_path: Path
) -> None:
    port = free_port()
    env = clean_environment(database_uri, BIND=f"127.0.0.1:{port}")
    with make_run(env, tmp_path / "run.log") as server:
        wait_ready(port, server, seconds=60, workers=2)
        assert call(port, "GET", "/healthz") == (200, {"status": "ok"})
    assert server.output().count("Running on") == 2


def test_make_run_takes_host_port_and_workers(database_uri: str, tmp_path: Path) -> None:
    port = free_port()
    env = clean_environment(database_uri)
    variables = ("HOST=127.0.0.1", f"PORT={port}", "WORKERS=3")
    with make_run(env, tmp_path / "run.log", *variables) as server:
        wait_ready(port, server, seconds=60, workers=3)
    assert server.output().count(f"Running on http://127.0.0.1:{port}") == 3


def test_a_plain_pytest_runs_on_the_services_default_driver() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MONGO_DRIVER"}
    printed = subprocess.run(
        [sys.executable, "-c", "from tests.conftest import DRIVER; print(DRIVER)"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed.strip() == BaseConfig.MONGO_DRIVER == "pymongo"
