"""``make bench`` leaves nothing running, however it ends.

Each run gets a mark in its environment, which every process it starts
inherits (the database, the servers, their workers); afterwards no process
on the machine may carry the mark. The peers are left out (their first start
installs a virtual environment); the floor and this API are enough to have
servers running when the run ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from scripts.devserver import ROOT
from tests.conftest import DRIVER

pytestmark = pytest.mark.slow

MARK = "TODO_API_BENCH_RUN"


def bench(out: Path, mark: str, *args: str) -> subprocess.Popen[str]:
    """A quick run of the floor and this API (one worker each), marked with ``mark``."""
    command = [
        *(sys.executable, "-m", "scripts.bench", "--quick", "--out", str(out)),
        *("--targets", "floor,api", "--drivers", DRIVER, "--workers", "1"),
        *("--scenarios", "healthz", *args),
    ]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        # Neither run gets as far as measuring: no wrk is needed (`true` stands in).
        env={**os.environ, MARK: mark, "WRK": shutil.which("true") or "/bin/true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def marked_processes(mark: str) -> list[str]:
    """Command lines of the live processes whose environment carries ``mark``."""
    found = []
    needle = f"{MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = next(
                line for line in (entry / "status").read_text().splitlines() if line[:6] == "State:"
            )
            if "Z" not in state.split()[1]:  # a zombie has ended; its parent reaps it
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def test_a_target_that_does_not_start_stops_everything_started(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    # The floor starts first; this API then refuses a zero token lifetime and exits.
    run = bench(tmp_path, mark, "--setting", "JWT_ACCESS_TOKEN_EXPIRES=0")
    _, errors = run.communicate(timeout=180)
    assert run.returncode == 1, errors
    assert f"bench: api {DRIVER} did not start" in errors
    assert "Traceback" not in errors
    log = (tmp_path / "server.log").read_text()
    assert "refusing to start: JWT_ACCESS_TOKEN_EXPIRES" in log  # the failing target
    assert "Running on" in log  # the floor had started
    assert marked_processes(mark) == []


def test_ctrl_c_stops_everything_started(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    run = bench(tmp_path, mark)
    log = tmp_path / "server.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # both servers up: the run is seeding or measuring
        if log.exists() and log.read_text().count("Running on") >= 2:
            break
        assert run.poll() is None, run.communicate()
        time.sleep(0.2)
    assert len(marked_processes(mark)) >= 5  # bench, database, two masters, two workers
    run.send_signal(signal.SIGINT)
    _, errors = run.communicate(timeout=120)
    assert run.returncode == 130, errors
    assert "bench: interrupted" in errors
    assert marked_processes(mark) == []
