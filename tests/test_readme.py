"""The README's curl session runs as printed, and answers what its comments say."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from app.embedded_db import free_port
from scripts.devserver import ROOT, start_hypercorn, stop, wait_ready

pytestmark = pytest.mark.slow

README_ADDRESS = "http://127.0.0.1:8000"
BASH = shutil.which("bash") or "/bin/bash"


def session_block() -> str:
    """The first ``sh`` block after the "A session with curl" heading."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### A session with curl") :]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match is not None
    return match.group(1)


def promised_statuses(block: str) -> list[int]:
    """The status each comment line promises: ``# 201 ...``."""
    return [int(status) for status in re.findall(r"^# ([1-5][0-9]{2})\b", block, re.MULTILINE)]


def test_the_curl_session_runs_as_printed(database_uri: str, tmp_path: Path) -> None:
    block = session_block()
    assert README_ADDRESS in block
    port = free_port()
    server = start_hypercorn(
        port,
        {
            "APP_ENV": "testing",
            "MONGO_URI": database_uri,
            "MONGO_DB": f"readme_{uuid.uuid4().hex[:12]}",
            "MONGO_DRIVER": os.environ.get("MONGO_DRIVER", "motor"),
            "JWT_SECRET_KEY": secrets.token_hex(32),
        },
        workers=1,
    )
    try:
        wait_ready(port, server)
        result = subprocess.run(
            [BASH, "-e", "-c", block.replace(README_ADDRESS, f"http://127.0.0.1:{port}")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        stop(server)
    assert result.returncode == 0, result.stderr
    statuses = [int(status) for status in re.findall(r"^ ([1-5][0-9]{2})\b", result.stderr, re.M)]
    assert statuses == promised_statuses(block), (result.stdout, result.stderr)
    assert len(statuses) >= 15
    assert '["Buy milk"]' in result.stdout and '["Call the plumber"]' in result.stdout
    assert list(tmp_path.iterdir()) == []  # it leaves no files behind
