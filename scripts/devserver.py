"""Run the real server for scripts: an embedded database and hypercorn as the container runs it."""

from __future__ import annotations

import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from app.embedded_db import EmbeddedDatabase, free_port

ROOT = Path(__file__).resolve().parent.parent
HYPERCORN = str(Path(sys.executable).parent / "hypercorn")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ServerProcess(subprocess.Popen[bytes]):
    """A hypercorn process whose output goes to a file, never to a pipe.

    A pipe nobody drains fills up after 64 KiB of log lines, and then every
    worker blocks on its next log write; a file never does. With
    ``own_group`` it leads a process group (and session) of its own, so that
    everything it starts can be stopped at once (``stop_group``) and a
    terminal's Ctrl-C reaches only the script, which stops it in order.
    """

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        log_path: Path,
        own_group: bool = False,
        open_files: int | None = None,
    ) -> None:
        self.log_path = log_path

        def limit_open_files() -> None:  # in the child, before hypercorn starts
            if open_files is not None:
                hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, hard))

        with log_path.open("ab") as log:
            super().__init__(
                command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=own_group,
                preexec_fn=limit_open_files if open_files is not None else None,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_hypercorn(
    port: int,
    env: dict[str, str],
    workers: int = 2,
    log: Path | None = None,
    application: str = "asgi:app",
    own_process_group: bool = False,
    open_files: int | None = None,
) -> ServerProcess:
    """The Dockerfile's command on a loopback port, logging to ``log`` (or a temp file).

    ``open_files`` starts it with that soft limit on open files, as many
    systems do by default (1,024).
    """
    if log is None:
        handle, name = tempfile.mkstemp(prefix="hypercorn-", suffix=".log")
        os.close(handle)
        log = Path(name)
    return ServerProcess(
        [
            HYPERCORN,
            "--config",
            "file:hypercorn_conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            application,
        ],
        {**os.environ, **env},
        log,
        own_group=own_process_group,
        open_files=open_files,
    )


def upgrade_schema(env: dict[str, str]) -> None:
    """``python -m app db upgrade`` with ``env``: the release step a production server
    needs first (it refuses an older schema; development and testing upgrade by themselves)."""
    result = subprocess.run(
        [sys.executable, "-m", "app", "db", "upgrade"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"db upgrade failed ({result.returncode}): {result.stderr}")


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One JSON request; returns (status, parsed body or None)."""
    headers = dict(headers or {})
    if body is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers=headers,
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def post_retrying(
    port: int, path: str, body: Any, token: str | None = None, attempts: int = 30
) -> tuple[int, Any]:
    """A POST retried as a careful client would while the server is saturated (429, 503).

    Every attempt carries the same ``Idempotency-Key``, so a retried create
    makes one todo; other routes ignore the header.
    """
    headers = {"Idempotency-Key": secrets.token_hex(16)}
    status, answer = call(port, "POST", path, body, token, headers)
    for _ in range(attempts - 1):
        if status not in (429, 503):
            break
        time.sleep(1)
        status, answer = call(port, "POST", path, body, token, headers)
    return status, answer


def wait_ready(
    port: int,
    server: ServerProcess,
    seconds: float = 30,
    path: str = "/readyz",
    workers: int = 1,
) -> None:
    """Wait until ``path`` answers 200 and ``workers`` workers say they run.

    One worker's 200 says nothing of the others: a connection the kernel hands
    to a worker still starting waits for it.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}:\n{server.output()}")
        try:
            running = server.output().count("Running on")
            if running >= workers and call(port, "GET", path)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def stop(server: ServerProcess) -> str:
    """SIGTERM, wait for exit, return what it printed."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    return server.output()


def stop_group(process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    """SIGTERM to the process group ``process`` leads; SIGKILL whatever outlives ``seconds``.

    Waits until every member has gone, not only the leader: a server's workers
    can outlive their master by their graceful shutdown.
    """
    deadline = time.monotonic() + seconds
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, so the group empties
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextmanager
def serving(env: dict[str, str] | None = None, workers: int = 2) -> Iterator[int]:
    """A testing-config server on a fresh in-memory database; yields its port."""
    with running_server(env, workers) as (port, _):
        yield port


@contextmanager
def running_server(
    env: dict[str, str] | None = None, workers: int = 2
) -> Iterator[tuple[int, ServerProcess]]:
    """Like ``serving``, also yielding the server process (for its pid)."""
    database = EmbeddedDatabase(":memory:")
    database.start()
    port = free_port()
    settings = {
        "APP_ENV": "testing",
        "MONGO_URI": database.uri,
        "JWT_SECRET_KEY": secrets.token_hex(32),
        **(env or {}),
    }
    if settings["APP_ENV"] == "production":
        upgrade_schema(settings)
    server = start_hypercorn(port, settings, workers)
    try:
        wait_ready(port, server)
        yield port, server
    finally:
        stop(server)
        database.stop()


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and all its descendants (Linux /proc)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending += [int(child) for child in children]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total
