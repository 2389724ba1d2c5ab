"""First contact: generated clients and a linter against a freshly started server.

Starts the real server (hypercorn, a fresh embedded database), takes its
/openapi.json, and checks what a newcomer's tools make of it:

(a) openapi-python-client generates a package; ``clients/python_session.py``
    passes ``mypy --strict`` against it and runs a whole session through it;
    each function is named after its operation's id, with no doubled word.
(b) openapi-typescript (default options) generates types; ``clients/contact.ts``
    and real bodies from the server compile with ``tsc --noEmit --strict``.
(c) Redocly CLI lints the document with its recommended rules: no error, and no
    warning beyond those docs/clients.md explains (``EXPLAINED_WARNINGS``).

The Node tools are pinned in ``clients/package-lock.json`` and installed with
``npm ci`` into ``clients/node_modules``; nothing else is fetched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from itertools import pairwise
from pathlib import Path
from typing import Any

from scripts.devserver import ROOT, call, serving

CLIENTS = ROOT / "clients"
NODE_BIN = CLIENTS / "node_modules" / ".bin"
VENV_BIN = Path(sys.executable).parent
PACKAGE = "todo_api_client"
#: Redocly's recommended-rule warnings the document keeps, each explained in docs/clients.md.
EXPLAINED_WARNINGS = {
    ("operation-4xx-response", "#/paths/~1/get/responses"),
    ("operation-4xx-response", "#/paths/~1healthz/get/responses"),
    ("operation-4xx-response", "#/paths/~1readyz/get/responses"),
}
#: The Node tools run offline-safe: no telemetry, no update checks.
NODE_ENV = {"REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true", "CI": "true"}


def run(command: list[str | Path], cwd: Path = ROOT, **env: str) -> str:
    """Run a tool; its output (stdout, then stderr), or print it and fail when the tool fails."""
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", **NODE_ENV, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        print(result.stdout, result.stderr, sep="\n")
        raise SystemExit(f"failed ({result.returncode}): {' '.join(map(str, command))}")
    return result.stdout + result.stderr


def function_names(package: Path) -> set[str]:
    """The generated client's API functions: one module per operation, named after its id."""
    return {module.stem for module in (package / "api").glob("*/*.py") if module.stem != "__init__"}


def check_function_names(spec: dict[str, Any], package: Path) -> list[str]:
    """Each operation's function is its operationId, with no doubled word (``get_get_todo``)."""
    ids = {
        operation["operationId"]
        for item in spec["paths"].values()
        for operation in item.values()
        if "operationId" in operation
    }
    names = function_names(package)
    failures = [f"generated function {name} is no operationId" for name in sorted(names - ids)]
    failures += [f"no generated function for {name}" for name in sorted(ids - names)]
    for name in sorted(names):
        words = name.split("_")
        if any(a == b for a, b in pairwise(words)):
            failures.append(f"generated function {name} doubles a word")
    print(f"python client: {len(names)} functions, named after their operationIds")
    return failures


def python_client(spec: Path, scratch: Path, base_url: str) -> list[str]:
    generated = run(
        [
            VENV_BIN / "openapi-python-client",
            "generate",
            "--path",
            spec,
            "--meta",
            "none",
            "--output-path",
            scratch / PACKAGE,
        ]
    )
    # It still generates when parts of the document puzzle it, and says so.
    if "Warning" in generated:
        raise SystemExit(f"openapi-python-client warned about the document:\n{generated}")
    # Not the project's config: a missing or untyped package must be an error, not Any.
    # The generator's fixed client.py passes *args to __exit__, which mypy 2.4 refuses;
    # that is its template, not the document, so only that module is let off.
    (scratch / "mypy.ini").write_text(
        f"[mypy]\nstrict = True\n\n[mypy-{PACKAGE}.client]\nignore_errors = True\n"
    )
    session = CLIENTS / "python_session.py"
    run([VENV_BIN / "mypy", "--config-file", "mypy.ini", session], cwd=scratch)
    print(run([sys.executable, session, base_url], cwd=scratch, PYTHONPATH=str(scratch)))
    return check_function_names(json.loads(spec.read_text()), scratch / PACKAGE)


def typescript_types(spec: Path, scratch: Path, port: int, token: str) -> None:
    run([NODE_BIN / "openapi-typescript", spec, "--output", scratch / "api.d.ts"])
    status, page = call(port, "GET", "/api/v1/todos?limit=2", token=token)
    assert status == 200, status
    status, not_found = call(port, "GET", "/api/v1/todos/" + "0" * 24, token=token)
    assert status == 404, status
    (scratch / "samples.ts").write_text(
        'import type { components } from "./api";\n'
        f'export const page: components["schemas"]["TodoPage"] = {json.dumps(page)};\n'
        f'export const notFound: components["schemas"]["Problem"] = {json.dumps(not_found)};\n'
    )
    shutil.copy(CLIENTS / "contact.ts", scratch / "contact.ts")
    run(
        [
            NODE_BIN / "tsc",
            "--noEmit",
            "--strict",
            "--target",
            "es2022",
            "--module",
            "esnext",
            "--moduleResolution",
            "bundler",
            "contact.ts",
        ],
        cwd=scratch,
    )
    print("typescript types: ok (contact.ts compiles with tsc --strict)")


def redocly_lint(spec: Path) -> list[str]:
    """Lint with the recommended rules; the failures found (errors, unexplained warnings)."""
    result = subprocess.run(
        [NODE_BIN / "redocly", "lint", spec, "--extends", "recommended", "--format", "json"],
        env={**os.environ, **NODE_ENV},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    failures = []
    warnings = set()
    for problem in report["problems"]:
        where = problem["location"][0]["pointer"]
        if problem["severity"] == "error":
            failures.append(f"redocly error {problem['ruleId']} at {where}: {problem['message']}")
        else:
            warnings.add((problem["ruleId"], where))
    failures += [
        f"unexplained redocly warning {rule} at {where}"
        for rule, where in sorted(warnings - EXPLAINED_WARNINGS)
    ]
    print(f"redocly lint: {len(report['problems'])} findings, {len(warnings)} of them warnings")
    return failures


def main() -> int:
    with serving() as port, tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        status, spec_body = call(port, "GET", "/openapi.json")
        assert status == 200, status
        spec = scratch / "openapi.json"
        spec.write_text(json.dumps(spec_body, indent=1))
        run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CLIENTS)
        failures = python_client(spec, scratch, f"http://127.0.0.1:{port}")
        credentials = {"username": "typescript", "password": "correct horse battery"}
        assert call(port, "POST", "/api/v1/auth/register", credentials)[0] == 201
        token = call(port, "POST", "/api/v1/auth/login", credentials)[1]["access_token"]
        call(port, "POST", "/api/v1/todos", {"title": "Read a page"}, token=token)
        typescript_types(spec, scratch, port, token)
        failures += redocly_lint(spec)
    for failure in failures:
        print("FAIL:", failure)
    print("clients check:", "FAILED" if failures else "ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
