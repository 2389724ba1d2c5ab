"""Run the real server for scripts: an embedded database and hypercorn as the container runs it."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.embedded_db import EmbeddedDatabase, free_port

ROOT = Path(__file__).resolve().parent.parent
HYPERCORN = str(Path(sys.executable).parent / "hypercorn")


def start_hypercorn(port: int, env: dict[str, str], workers: int = 2) -> subprocess.Popen[bytes]:
    """The Dockerfile's command on a loopback port, output captured."""
    return subprocess.Popen(
        [
            HYPERCORN,
            "--config",
            "file:hypercorn_conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "asgi:app",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def call(
    port: int, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    """One JSON request; returns (status, parsed body or None)."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers=headers,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def wait_ready(port: int, server: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            output = server.stdout.read().decode() if server.stdout else ""
            raise RuntimeError(f"server exited with {server.returncode}:\n{output}")
        try:
            if call(port, "GET", "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def stop(server: subprocess.Popen[bytes]) -> str:
    """SIGTERM, wait for exit, return what it printed."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    output, _ = server.communicate(timeout=30)
    return output.decode()


@contextmanager
def serving(env: dict[str, str] | None = None, workers: int = 2) -> Iterator[int]:
    """A testing-config server on a fresh in-memory database; yields its port."""
    database = EmbeddedDatabase(":memory:")
    database.start()
    port = free_port()
    server = start_hypercorn(
        port,
        {
            "APP_ENV": "testing",
            "MONGO_URI": database.uri,
            "JWT_SECRET_KEY": secrets.token_hex(32),
            **(env or {}),
        },
        workers,
    )
    try:
        wait_ready(port, server)
        yield port
    finally:
        stop(server)
        database.stop()
