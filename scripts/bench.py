"""Benchmark the real server with wrk and print requests/s, latency and CPU per request.

One embedded database holds the seeded data (many users; one with 1,000
todos). A server per configuration (driver x workers) runs the container's
hypercorn command with production settings. Scenarios run interleaved across
configurations and repeated, so a noisy machine affects them alike; the
median of the repeats is reported. CPU milliseconds per request come from the
server process tree's CPU time (/proc), not from wall-clock guesses.

    python -m scripts.bench            # full run: 10 s per scenario, 3 repeats
    python -m scripts.bench --quick    # about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.embedded_db import EmbeddedDatabase, free_port
from scripts.devserver import ROOT, ServerProcess, call, start_hypercorn, stop, wait_ready

SCENARIOS = ["healthz", "me", "get_todo", "list_100", "create", "patch", "mixed_70_30"]
USERS = 20
TODOS_OF_FIRST_USER = 1000
PASSWORD = "benchmark password"  # noqa: S105 (a throwaway benchmark account)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WRK = shutil.which("wrk") or ""

# One Lua script drives every scenario; the data comes in a generated prelude.
LUA = r"""
local scenario = SCENARIO
math.randomseed(os.time())
local function auth(i)
  return {["Authorization"] = "Bearer " .. TOKENS[i], ["Content-Type"] = "application/json"}
end
local function any_todo(i) local ids = TODO_IDS[i]; return ids[math.random(#ids)] end

request = function()
  if scenario == "healthz" then return wrk.format("GET", "/healthz") end
  if scenario == "me" then return wrk.format("GET", "/api/v1/auth/me", auth(1)) end
  if scenario == "get_todo" then
    return wrk.format("GET", "/api/v1/todos/" .. any_todo(1), auth(1))
  end
  if scenario == "list_100" then return wrk.format("GET", "/api/v1/todos?limit=100", auth(1)) end
  if scenario == "create" then
    return wrk.format("POST", "/api/v1/todos", auth(2), '{"title": "bench", "tags": ["bench"]}')
  end
  if scenario == "patch" then
    return wrk.format("PATCH", "/api/v1/todos/" .. any_todo(1), auth(1), '{"notes": "patched"}')
  end
  -- mixed: 70 % reads, 30 % writes, spread over every user
  local user = math.random(#TOKENS)
  local roll = math.random(100)
  if roll <= 35 then return wrk.format("GET", "/api/v1/todos/" .. any_todo(user), auth(user)) end
  if roll <= 70 then return wrk.format("GET", "/api/v1/todos?limit=20", auth(user)) end
  if roll <= 85 then
    local path = "/api/v1/todos/" .. any_todo(user)
    return wrk.format("PATCH", path, auth(user), '{"completed": true}')
  end
  return wrk.format("POST", "/api/v1/todos", auth(user), '{"title": "mixed"}')
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "seconds": %.3f, "p50_ms": %.3f, "p99_ms": %.3f, '
      .. '"socket_errors": %d, "non_2xx": %d}\n',
    summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass
class Result:
    config: str
    scenario: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_request: float


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


def seed(port: int) -> dict[str, Any]:
    """Users with tokens; the first has 1,000 todos, the others 20 each."""
    tokens, todo_ids = [], []
    for index in range(USERS):
        credentials = {"username": f"bench{index}", "password": PASSWORD}
        call(port, "POST", "/api/v1/auth/register", credentials)
        status, body = call(port, "POST", "/api/v1/auth/login", credentials)
        assert status == 200, body
        token = body["access_token"]
        count = TODOS_OF_FIRST_USER if index == 0 else 20
        ids = []
        for number in range(count):
            status, todo = call(
                port, "POST", "/api/v1/todos", {"title": f"todo {number}", "tags": ["seed"]}, token
            )
            assert status == 201, todo
            ids.append(todo["id"])
        tokens.append(token)
        todo_ids.append(ids[:200])
    return {"tokens": tokens, "todo_ids": todo_ids}


def lua_script(scenario: str, data: dict[str, Any], directory: Path) -> Path:
    def table(values: list[Any]) -> str:
        return (
            "{" + ", ".join(json.dumps(v) if isinstance(v, str) else table(v) for v in values) + "}"
        )

    prelude = (
        f"SCENARIO = {json.dumps(scenario)}\n"
        f"TOKENS = {table(data['tokens'])}\n"
        f"TODO_IDS = {table(data['todo_ids'])}\n"
    )
    path = directory / f"{scenario}.lua"
    path.write_text(prelude + LUA)
    return path


def run_wrk(
    port: int, script: Path, seconds: int, connections: int, server_pid: int
) -> dict[str, Any]:
    cpu_before = process_tree_cpu_seconds(server_pid)
    output = subprocess.run(
        [
            WRK,
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu_used = process_tree_cpu_seconds(server_pid) - cpu_before
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    figures: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    figures["cpu_ms_per_request"] = 1000 * cpu_used / max(1, figures["requests"])
    return figures


def markdown(results: list[Result]) -> str:
    lines = [
        "| scenario | config | req/s | p50 ms | p99 ms | errors | server CPU ms/req |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in sorted(results, key=lambda r: (SCENARIOS.index(r.scenario), r.config)):
        lines.append(
            f"| {result.scenario} | {result.config} | {result.requests_per_second:,.0f} | "
            f"{result.p50_ms:.1f} | {result.p99_ms:.1f} | {result.errors} | "
            f"{result.cpu_ms_per_request:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per scenario, one pass")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--drivers", default="motor,pymongo")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats = 2, 1
    if not WRK:
        sys.exit("wrk is not installed: `make bench` installs Debian's wrk package")
    scenarios = args.scenarios.split(",")
    configs = [(d, int(w)) for d in args.drivers.split(",") for w in args.workers.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)

    database = EmbeddedDatabase(":memory:")
    database.start()
    secret = secrets.token_hex(32)
    base_env = {
        "APP_ENV": "production",
        "MONGO_URI": database.uri,
        "JWT_SECRET_KEY": secret,
        "REGISTRATIONS_PER_ADDRESS": "1000000",
        "LOG_LEVEL": "WARNING",
    }
    servers: dict[str, tuple[int, ServerProcess]] = {}
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for driver, workers in configs:
            name = f"{driver}, {workers} worker{'s' if workers > 1 else ''}"
            port = free_port()
            server = start_hypercorn(
                port, {**base_env, "MONGO_DRIVER": driver}, workers, log=args.out / "server.log"
            )
            servers[name] = (port, server)
        for port, server in servers.values():
            wait_ready(port, server)
        first_port = next(iter(servers.values()))[0]
        started = time.monotonic()
        data = seed(first_port)
        print(
            f"seeded {USERS} users and {TODOS_OF_FIRST_USER + 20 * (USERS - 1)} todos "
            f"in {time.monotonic() - started:.1f} s",
            flush=True,
        )
        with tempfile.TemporaryDirectory() as scratch:
            scripts = {s: lua_script(s, data, Path(scratch)) for s in scenarios}
            for repeat in range(args.repeats):
                for scenario in scenarios:
                    for name, (port, server) in servers.items():
                        figures = run_wrk(
                            port, scripts[scenario], args.seconds, args.connections, server.pid
                        )
                        samples.setdefault((name, scenario), []).append(figures)
                        print(
                            f"[{repeat + 1}/{args.repeats}] {scenario:12} {name:22} "
                            f"{figures['requests'] / figures['seconds']:8.0f} req/s "
                            f"p99 {figures['p99_ms']:.1f} ms",
                            flush=True,
                        )
    finally:
        for _, server in servers.values():
            stop(server)
        database.stop()

    results = [
        Result(
            config=name,
            scenario=scenario,
            requests_per_second=statistics.median(f["requests"] / f["seconds"] for f in runs),
            p50_ms=statistics.median(f["p50_ms"] for f in runs),
            p99_ms=statistics.median(f["p99_ms"] for f in runs),
            errors=sum(f["socket_errors"] + f["non_2xx"] for f in runs),
            cpu_ms_per_request=statistics.median(f["cpu_ms_per_request"] for f in runs),
        )
        for (name, scenario), runs in samples.items()
    ]
    table = markdown(results)
    (args.out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    (args.out / "results.md").write_text(table + "\n")
    print()
    print(
        f"{args.connections} connections, {args.seconds} s per run, median of {args.repeats}; "
        f"{os.cpu_count()} cores"
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
