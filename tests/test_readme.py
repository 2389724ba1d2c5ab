"""The README is a front door that tells the truth.

Its curl session runs as printed, in a terminal, and every command prints what
the comment lines under it say; it links every page under docs/, and every
relative link of the README and the docs leads somewhere.
"""

from __future__ import annotations

import os
import pty
import re
import secrets
import select
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.embedded_db import free_port
from scripts.devserver import ROOT, start_hypercorn, stop, wait_ready
from tests.conftest import DRIVER

README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_ADDRESS = "http://127.0.0.1:8000"
BASH = shutil.which("bash") or "/bin/bash"
MAX_README_LINES = 250

#: What differs from run to run, and how the comparison writes it.
VARYING = [
    (re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+"), "<token>"),
    (re.compile(r'("(?:created_at|updated_at|completed_at)":)"[^"]+"'), r'\1"<time>"'),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<request id>"),
    (re.compile(r"\b[0-9a-f]{24}\b"), "<id>"),
]
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
STEP_MARK = "@@ step done @@"
LINK = re.compile(r"\]\(([^)\s]+)\)")
PAGES = [README, *sorted(DOCS.glob("*.md"))]


@dataclass
class Step:
    """Consecutive command lines and the output the comment lines under them show."""

    commands: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)


def session_block() -> str:
    """The first ``sh`` block after the "A session with curl" heading."""
    readme = README.read_text()
    section = readme[readme.index("## A session with curl") :]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match is not None
    return match.group(1)


def steps_of(block: str) -> list[Step]:
    """Split the session into steps.

    A comment line directly under a command (or under another output line) is
    output: ``# `` and then exactly what the terminal shows. A comment after a
    blank line explains what follows and is not compared.
    """
    steps: list[Step] = []
    previous = "blank"
    for line in block.splitlines():
        if not line.strip():
            previous = "blank"
        elif line.startswith("#"):
            if previous in ("command", "output"):
                steps[-1].output.append(line.removeprefix("# "))
                previous = "output"
            else:
                previous = "explanation"
        else:
            if previous != "command":
                steps.append(Step())
            steps[-1].commands.append(line)
            previous = "command"
    return steps


def normalised(text: str) -> str:
    for pattern, replacement in VARYING:
        text = pattern.sub(replacement, text)
    return text


def run_in_terminal(script: str, cwd: Path, seconds: float) -> tuple[int, str]:
    """Run ``script`` in bash on a pseudo-terminal, as a reader would; (status, screen text)."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [BASH, "-e", "-c", script],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        start_new_session=True,
    )
    os.close(secondary)
    chunks = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([primary], [], [], deadline - time.monotonic())
            if not readable:
                continue
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: the last process holding the terminal has gone
                break
            if not data:
                break
            chunks.append(data)
        status = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(primary)
    screen = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return status, ANSI_ESCAPE.sub("", screen)


def test_the_session_has_steps_with_output() -> None:
    steps = steps_of(session_block())
    assert len(steps) >= 15
    shown = [line for step in steps for line in step.output]
    assert sum(bool(re.search(r"\b[1-5][0-9]{2}\b", line)) for line in shown) >= 15
    # Explanations are not mistaken for output.
    assert not any(line.startswith(("Log in", "Filter", "If-Match")) for line in shown)


@pytest.mark.slow
def test_the_curl_session_prints_what_its_comments_say(database_uri: str, tmp_path: Path) -> None:
    block = session_block()
    assert README_ADDRESS in block
    steps = steps_of(block)
    port = free_port()
    script = "\n".join(
        "\n".join(step.commands) + f"\nprintf '\\n{STEP_MARK}\\n'" for step in steps
    ).replace(README_ADDRESS, f"http://127.0.0.1:{port}")
    server = start_hypercorn(
        port,
        {
            "APP_ENV": "testing",
            "MONGO_URI": database_uri,
            "MONGO_DB": f"readme_{uuid.uuid4().hex[:12]}",
            "MONGO_DRIVER": DRIVER,
            "JWT_SECRET_KEY": secrets.token_hex(32),
        },
        workers=1,
    )
    try:
        wait_ready(port, server)
        status, screen = run_in_terminal(script, tmp_path, seconds=120)
    finally:
        stop(server)
    assert status == 0, screen
    printed = screen.split(f"\n{STEP_MARK}\n")
    assert len(printed) == len(steps) + 1 and printed[-1] == "", screen
    for step, text in zip(steps, printed, strict=False):
        shown = [normalised(line) for line in text.split("\n") if line]
        expected = [normalised(line) for line in step.output]
        assert shown == expected, (step.commands, text)
    assert list(tmp_path.iterdir()) == []  # it leaves no files behind


def test_the_readme_is_a_front_door_linking_every_docs_page() -> None:
    readme = README.read_text()
    assert len(readme.splitlines()) <= MAX_README_LINES
    linked = {target.split("#")[0] for target in LINK.findall(readme)}
    pages = {f"docs/{page.name}" for page in DOCS.glob("*.md")}
    assert pages, "no docs pages"
    assert pages <= linked, sorted(pages - linked)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {_anchor(heading) for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        assert destination.exists(), (page.name, target)
        if anchor and destination.suffix == ".md":
            assert anchor in _anchors(destination), (page.name, target)


HISTORY = re.compile(
    r"\bthe issue\b|\bissue #?\d|before this (work|change)|specified with|"
    r"Decisions where|issue's targets",
    re.IGNORECASE,
)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_the_docs_describe_the_software_not_its_history(page: Path) -> None:
    found = HISTORY.findall(page.read_text())
    assert not found, found
