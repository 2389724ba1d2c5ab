"""Fuzz the running API with schemathesis, driven by its own OpenAPI document.

Starts the real server (hypercorn, two workers, a fresh embedded database),
registers a user, and runs schemathesis over every operation with the checks
for server errors, for status code, content type and response schema
conformance, and for problem bodies in the API's own words (our own check, in
scripts/fuzz_checks.py). Logout and refresh revoke or rotate the token the
other operations use, so they run in a second pass with their own session.
The live event stream (``stream_todo_events``) is left out: a successful response
never ends, so every example would wait out the request timeout. Its
answers are checked by tests/test_events.py against the real server instead
(401/422/429/503 problem bodies, the stream's headers and every event's
payload), and its ticket route is fuzzed here like any other.
Exits non-zero on any finding.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from scripts.devserver import ROOT, call, serving

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "errors_in_the_apis_words",  # ours, from scripts/fuzz_checks.py
    ]
)
RUN_TIMEOUT_SECONDS = 600
SESSION_OPERATIONS = "^(log_out|refresh_tokens)$"
ENDLESS_OPERATIONS = "^stream_todo_events$"  # the live stream: see the module docstring
#: ``GET /`` takes no input, and its links lead schemathesis's stateful phase
#: (which infers links from response schemas) into the endless stream anyway.
LINK_ONLY_OPERATIONS = "^get_index$"
# Generous limits: the fuzzer registers and fails logins by the hundred.
LIMITS = {
    "REGISTRATIONS_PER_ADDRESS": "1000000",
    "LOGIN_FAILURES_PER_USERNAME": "1000000",
    "LOGIN_FAILURES_PER_USERNAME_AND_ADDRESS": "1000000",
    "LOGIN_ATTEMPTS_PER_ADDRESS": "1000000",
    "REAUTH_FAILURES_PER_SESSION": "1000000",
    "SESSIONS_PER_USER": "1000000",
    "LOGIN_FAILURES_PER_ADDRESS": "1000000",
}


def session_tokens(port: int, username: str) -> dict[str, str]:
    credentials = {"username": username, "password": "fuzzing password"}
    status, _ = call(port, "POST", "/api/v1/auth/register", credentials)
    assert status == 201, status
    status, tokens = call(port, "POST", "/api/v1/auth/login", credentials)
    assert status == 200, status
    return dict(tokens)


def schemathesis(port: int, token: str, examples: int, seed: int, selection: list[str]) -> int:
    command = [
        SCHEMATHESIS,
        "run",
        f"http://127.0.0.1:{port}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(examples),
        "--seed",
        str(seed),
        "--header",
        f"Authorization: Bearer {token}",
        "--request-timeout",
        "10",
        "--no-color",
        "--generation-database",
        "none",
        *selection,
    ]
    # Bounded: a hung run fails CI instead of eating its time.
    return subprocess.call(
        command,
        cwd=ROOT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "scripts.fuzz_checks"},
        timeout=RUN_TIMEOUT_SECONDS,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=50, help="test cases per operation")
    parser.add_argument("--seed", type=int, default=20261123)
    args = parser.parse_args()
    with serving(LIMITS) as port:
        main_pass = schemathesis(
            port,
            session_tokens(port, "fuzzer")["access_token"],
            args.examples,
            args.seed,
            [
                "--exclude-operation-id-regex",
                f"{SESSION_OPERATIONS}|{ENDLESS_OPERATIONS}|{LINK_ONLY_OPERATIONS}",
            ],
        )
        # Refresh takes a refresh token, logout an access token; each its own session.
        session_passes = [
            schemathesis(
                port,
                session_tokens(port, username)[kind],
                args.examples,
                args.seed,
                ["--include-operation-id", operation],
            )
            for username, kind, operation in [
                ("fuzzer2", "refresh_token", "refresh_tokens"),
                ("fuzzer3", "access_token", "log_out"),
            ]
        ]
    failed = [code for code in (main_pass, *session_passes) if code != 0]
    print("fuzzing:", "FAILED" if failed else "no findings")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
