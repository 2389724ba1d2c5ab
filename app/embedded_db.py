"""The embedded development database: SecantusDB run as a child process.

SecantusDB speaks MongoDB's wire protocol; the app reaches it over a socket
exactly as it reaches MongoDB in production and never imports it. One server
serves every worker: the hypercorn master (see ``hypercorn_conf.py``) or the
test session starts it, and stops it when they end.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

SERVER_PROGRAM = "secantusd-py"
STOP_GRACE_SECONDS = 5.0
START_TIMEOUT_SECONDS = 30.0
#: The file the storage engine (WiredTiger) locks while a server uses the folder.
LOCK_FILE = "WiredTiger.lock"


class DataFolderInUse(RuntimeError):
    """Another server holds the data folder: a second one cannot open it."""

    def __init__(self, storage_path: str) -> None:
        super().__init__(f"another server is using the data folder {storage_path}")
        self.storage_path = storage_path


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def held_by_another_process(folder: Path) -> bool:
    """Whether another process holds the storage engine's lock on ``folder``."""
    try:
        with (folder / LOCK_FILE).open("rb+") as lock:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(lock, fcntl.LOCK_UN)
    except FileNotFoundError:
        return False
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):
            return True
        raise
    return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the server when its parent dies, even by SIGKILL.

    Its files are private to the user (0600 in a 0700 folder): the database
    has no credentials, so the files are all that guards the data.
    """
    os.umask(0o077)
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    os.setpgrp()  # keep the terminal's Ctrl-C away: the parent stops us in order


class EmbeddedDatabase:
    """Start, wait for and stop one SecantusDB server."""

    def __init__(
        self,
        storage_path: str,
        port: int | None = None,
        options: Sequence[str] = (),
        log_path: Path | None = None,
    ) -> None:
        self.storage_path = storage_path
        self.port = port or free_port()
        self.options = list(options)  # extra command-line flags, e.g. ["--standalone"]
        self.log_path = log_path  # where the server's own output goes; None: our stdout/stderr
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        # retryWrites=false: with retryable writes on, SecantusDB slows tenfold.
        return f"mongodb://127.0.0.1:{self.port}/?retryWrites=false&directConnection=true"

    def start(self) -> str:
        """Start the server, wait until it answers, and return its URI."""
        program = shutil.which(SERVER_PROGRAM) or str(Path(sys.executable).parent / SERVER_PROGRAM)
        if self.storage_path != ":memory:":
            Path(self.storage_path).mkdir(parents=True, exist_ok=True)
            os.chmod(self.storage_path, 0o700)
        output = self.log_path.open("ab") if self.log_path else None
        self.process = subprocess.Popen(
            [
                program,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                self.storage_path,
                "--log-level",
                "WARNING",
                *self.options,
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            preexec_fn=_die_with_parent,
        )
        if output is not None:
            output.close()  # the server has its own copy
        self._wait_until_listening()
        return self.uri

    def _wait_until_listening(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if self.storage_path != ":memory:" and held_by_another_process(
                    Path(self.storage_path)
                ):
                    raise DataFolderInUse(self.storage_path)
                where = f"; its output is in {self.log_path}" if self.log_path else ""
                raise RuntimeError(
                    f"{SERVER_PROGRAM} exited with status {self.process.returncode}{where}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{SERVER_PROGRAM} did not listen within {START_TIMEOUT_SECONDS} s")

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL: it was once seen ignoring SIGTERM."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
