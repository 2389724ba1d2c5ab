"""Starting the server as a user does: ``make run`` and its variables, and failures to start.

A start-up failure is one line naming the cause and the fix, with an exit
status of its own and no traceback; each is provoked with the real command.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.embedded_db import EmbeddedDatabase, free_port, held_by_another_process
from app.serving import EXIT_ADDRESS_IN_USE, EXIT_CONFIG_REFUSED, EXIT_DATA_FOLDER_IN_USE
from config import BaseConfig
from scripts.devserver import HYPERCORN, ROOT, ServerProcess, call, stop_group, wait_ready
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
        stop_group(server)


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


def start_and_fail(env: dict[str, str]) -> tuple[int, str, str]:
    """The container's command with ``env``; (status, the one line on stderr, all output)."""
    result = subprocess.run(
        [HYPERCORN, "--config", "file:hypercorn_conf.py", "asgi:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "Running on" not in output, output
    failures = [line for line in result.stderr.splitlines() if "CRITICAL" in line]
    assert len(failures) == 1, output
    return result.returncode, failures[0], output


def development(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Development settings on an embedded database in ``tmp_path`` (no instance folder used)."""
    env = {k: v for k, v in os.environ.items() if k not in (*SERVING_VARIABLES, "MONGO_URI")}
    return {
        **env,
        "APP_ENV": "development",
        "JWT_SECRET_KEY": "a-development-secret-for-this-test-0123456789",
        "EMBEDDED_DB_PATH": str(tmp_path / "data"),
        "BIND": f"127.0.0.1:{free_port()}",
        **extra,
    }


def test_a_busy_port_is_one_line_and_its_own_status(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as other_program:
        other_program.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other_program.bind(("127.0.0.1", port))
        other_program.listen()
        status, line, _ = start_and_fail(development(tmp_path, BIND=f"127.0.0.1:{port}"))
    assert status == EXIT_ADDRESS_IN_USE
    assert f"127.0.0.1:{port} is already in use" in line
    assert "make run PORT=" in line and "BIND=" in line  # the fix
    # The embedded database the master had started is stopped, not orphaned.
    assert not held_by_another_process(tmp_path / "data")


def test_a_data_folder_in_use_is_one_line_and_its_own_status(tmp_path: Path) -> None:
    other_server = EmbeddedDatabase(str(tmp_path / "data"))
    other_server.start()
    try:
        status, line, _ = start_and_fail(development(tmp_path))
    finally:
        other_server.stop()
    assert status == EXIT_DATA_FOLDER_IN_USE
    assert f"another server is using the data folder {tmp_path / 'data'}" in line
    assert "EMBEDDED_DB_PATH" in line  # the fix


def test_a_refused_setting_is_one_line_and_its_own_status() -> None:
    env = {k: v for k, v in os.environ.items() if k not in (*SERVING_VARIABLES, "MONGO_URI")}
    env.update(APP_ENV="production", JWT_SECRET_KEY="x" * 8)
    status, line, output = start_and_fail(env)
    assert status == EXIT_CONFIG_REFUSED
    assert json.loads(line)["message"].startswith("refusing to start: MONGO_URI is required")
    assert "Set it in the environment or in instance/config.py" in line  # the fix
    assert output.strip() == line
