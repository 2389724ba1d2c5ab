"""Benchmark this API beside its synchronous peer and a bare Quart floor, with wrk.

On one embedded database (SecantusDB) it starts:

- this API with the container's hypercorn command and production settings
  (2 uvloop workers; once per driver asked for),
- the Flask + PyMongo + gunicorn peer from ``../shared/bench-peers/flask_pymongo``
  (2 sync workers, its own database on the same server),
- a bare Quart app on the same hypercorn command (``scripts/bare_quart.py``),
  the floor for ``healthz``.

Both APIs are seeded the same way through their HTTP APIs (50 users, the
first with 1,000 todos, the others with 20). Each scenario then runs against
each target in turn, the targets' order rotating, and the whole round is
repeated; medians are reported. CPU milliseconds per request come from the
process trees' CPU time in /proc (server and database separately).

The ``live`` scenario then starts this API alone, once per driver, and holds
1,000 event streams open while todos are written (``scripts/bench_live.py``);
the peer has no live updates to compare with.

    python -m scripts.bench            # 5 s per run, 3 repeats (about 10 minutes)
    python -m scripts.bench --quick    # 2 s per run, one pass (about 3 minutes)
    python -m scripts.bench --scenarios live
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.embedded_db import EmbeddedDatabase, free_port
from scripts import bench_live
from scripts.devserver import (
    ROOT,
    ServerProcess,
    call,
    process_tree_cpu_seconds,
    start_hypercorn,
    stop,
    wait_ready,
)

WRK_SCENARIOS = ["healthz", "me", "todo_get", "post", "list_100", "mixed"]
LIVE = "live"  # open event streams (scripts/bench_live.py): this API only, per driver
SCENARIOS = [*WRK_SCENARIOS, LIVE]
USERS = 50
TODOS_OF_FIRST_USER = 1000
TODOS_OF_OTHERS = 20
PASSWORD = "benchmark password"  # noqa: S105 (a throwaway benchmark account)
PEER_DIR = ROOT.parent / "shared" / "bench-peers" / "flask_pymongo"
PEER = "flask+pymongo"
FLOOR = "bare quart"
WRK = shutil.which("wrk") or ""

# One Lua script drives every scenario; the data comes in a generated prelude.
LUA = r"""
local scenario = SCENARIO
math.randomseed(os.time())
local function auth(i)
  return {["Authorization"] = "Bearer " .. TOKENS[i], ["Content-Type"] = "application/json"}
end
local function any_todo(i) local ids = TODO_IDS[i]; return ids[math.random(#ids)] end
local function get(i) return wrk.format("GET", "/api/v1/todos/" .. any_todo(i), auth(i)) end
local function me(i) return wrk.format("GET", "/api/v1/auth/me", auth(i)) end
local function create(i, title)
  local body = '{"title": "' .. title .. '", "tags": ["bench"]}'
  return wrk.format("POST", "/api/v1/todos", auth(i), body)
end

request = function()
  if scenario == "healthz" then return wrk.format("GET", "/healthz") end
  if scenario == "me" then return me(1) end
  if scenario == "todo_get" then return get(1) end
  if scenario == "post" then return create(2, "bench") end
  if scenario == "list_100" then return wrk.format("GET", "/api/v1/todos?limit=100", auth(1)) end
  -- mixed, over every user: 30 % get, 20 % list, 20 % me, 15 % create, 15 % patch
  local user = math.random(#TOKENS)
  local roll = math.random(100)
  if roll <= 30 then return get(user) end
  if roll <= 50 then return wrk.format("GET", "/api/v1/todos?limit=20", auth(user)) end
  if roll <= 70 then return me(user) end
  if roll <= 85 then return create(user, "mixed") end
  local path = "/api/v1/todos/" .. any_todo(user)
  return wrk.format("PATCH", path, auth(user), '{"notes": "patched"}')
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
class Target:
    """One server under test and the scenarios it answers."""

    name: str
    port: int
    process: ServerProcess
    scenarios: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    scripts: dict[str, Path] = field(default_factory=dict)


@dataclass
class Result:
    target: str
    scenario: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_request: float
    db_cpu_ms_per_request: float
    rps_vs_peer: float | None = None
    cpu_vs_peer: float | None = None
    cpu_vs_floor: float | None = None


def _seed_user(port: int, index: int) -> tuple[str, list[str]]:
    credentials = {"username": f"bench{index}", "password": PASSWORD}
    status, body = call(port, "POST", "/api/v1/auth/register", credentials)
    assert status == 201, body
    status, body = call(port, "POST", "/api/v1/auth/login", credentials)
    assert status == 200, body
    token: str = body["access_token"]
    ids = []
    for number in range(TODOS_OF_FIRST_USER if index == 0 else TODOS_OF_OTHERS):
        todo = {"title": f"todo {number}", "tags": ["seed"]}
        status, body = call(port, "POST", "/api/v1/todos", todo, token)
        assert status == 201, body
        ids.append(body["id"])
    return token, ids[:200]


def seed(port: int) -> dict[str, Any]:
    """Users with tokens through the API; the first has 1,000 todos, the others 20."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        users = list(pool.map(lambda index: _seed_user(port, index), range(USERS)))
    return {"tokens": [token for token, _ in users], "todo_ids": [ids for _, ids in users]}


def lua_script(scenario: str, data: dict[str, Any], path: Path) -> Path:
    def table(values: list[Any]) -> str:
        return (
            "{" + ", ".join(json.dumps(v) if isinstance(v, str) else table(v) for v in values) + "}"
        )

    prelude = (
        f"SCENARIO = {json.dumps(scenario)}\n"
        f"TOKENS = {table(data.get('tokens', []))}\n"
        f"TODO_IDS = {table(data.get('todo_ids', []))}\n"
    )
    path.write_text(prelude + LUA)
    return path


def run_wrk(target: Target, scenario: str, seconds: int, connections: int, db_pid: int) -> Any:
    """One wrk run; its figures plus server and database CPU per request."""
    server_before = process_tree_cpu_seconds(target.process.pid)
    db_before = process_tree_cpu_seconds(db_pid)
    output = subprocess.run(
        [
            WRK,
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(target.scripts[scenario]),
            f"http://127.0.0.1:{target.port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    server_used = process_tree_cpu_seconds(target.process.pid) - server_before
    db_used = process_tree_cpu_seconds(db_pid) - db_before
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    figures: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    requests = max(1, figures["requests"])
    figures["cpu_ms_per_request"] = 1000 * server_used / requests
    figures["db_cpu_ms_per_request"] = 1000 * db_used / requests
    return figures


def summarise(samples: dict[tuple[str, str], list[dict[str, Any]]]) -> list[Result]:
    """Medians per (target, scenario), with ratios to the peer and to the floor."""

    def median(runs: list[dict[str, Any]], key: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(key(run) for run in runs)

    results = {
        key: Result(
            target=key[0],
            scenario=key[1],
            requests_per_second=median(runs, lambda f: f["requests"] / f["seconds"]),
            p50_ms=median(runs, lambda f: f["p50_ms"]),
            p99_ms=median(runs, lambda f: f["p99_ms"]),
            errors=sum(f["socket_errors"] + f["non_2xx"] for f in runs),
            cpu_ms_per_request=median(runs, lambda f: f["cpu_ms_per_request"]),
            db_cpu_ms_per_request=median(runs, lambda f: f["db_cpu_ms_per_request"]),
        )
        for key, runs in samples.items()
    }
    for result in results.values():
        peer = results.get((PEER, result.scenario))
        if peer is not None and result.target != PEER:
            result.rps_vs_peer = result.requests_per_second / peer.requests_per_second
            result.cpu_vs_peer = result.cpu_ms_per_request / peer.cpu_ms_per_request
        floor = results.get((FLOOR, result.scenario))
        if floor is not None and result.target != FLOOR:
            result.cpu_vs_floor = result.cpu_ms_per_request / floor.cpu_ms_per_request
    return sorted(results.values(), key=lambda r: (WRK_SCENARIOS.index(r.scenario), r.target))


def markdown(results: list[Result]) -> str:
    def ratio(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}x"

    lines = [
        "| scenario | target | req/s | p50 ms | p99 ms | errors | server CPU ms/req "
        "| DB CPU ms/req | req/s vs peer | CPU vs peer | CPU vs floor |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.target} | {r.requests_per_second:,.0f} | {r.p50_ms:.1f} | "
            f"{r.p99_ms:.1f} | {r.errors} | {r.cpu_ms_per_request:.2f} | "
            f"{r.db_cpu_ms_per_request:.2f} | {ratio(r.rps_vs_peer)} | {ratio(r.cpu_vs_peer)} | "
            f"{ratio(r.cpu_vs_floor)} |"
        )
    return "\n".join(lines)


def start_targets(
    drivers: list[str],
    database: EmbeddedDatabase,
    log: Path,
    workers: int,
    extra_settings: list[str],
) -> list[Target]:
    """This API per driver, the peer and the floor, all on ``database``; wait until ready."""
    secret = secrets.token_hex(32)
    production = {
        "APP_ENV": "production",
        "MONGO_URI": database.uri,
        "JWT_SECRET_KEY": secret,
        # Seeding registers and logs in 50 users from one address, and the
        # post scenario creates tens of thousands of todos for one user.
        "REGISTRATIONS_PER_ADDRESS": "1000000",
        "LOGIN_ATTEMPTS_PER_ADDRESS": "1000000",
        "TODOS_PER_USER": "10000000",
        **dict(setting.split("=", 1) for setting in extra_settings),
        "WEB_CONCURRENCY": str(workers),
    }
    targets = []
    for driver in drivers:
        port = free_port()
        server = start_hypercorn(port, {**production, "MONGO_DRIVER": driver}, workers, log)
        targets.append(Target(f"api {driver}", port, server, WRK_SCENARIOS))
    port = free_port()
    peer = ServerProcess(
        [str(PEER_DIR / "run.sh"), str(port)],
        {
            **os.environ,
            "MONGO_URI": database.uri + "&journal=true",
            "MONGO_DB": "peer",
            "JWT_SECRET_KEY": secret,
            "WORKERS": str(workers),
        },
        log,
    )
    targets.append(Target(PEER, port, peer, WRK_SCENARIOS))
    port = free_port()
    floor = start_hypercorn(port, production, workers, log, "scripts.bare_quart:create_app()")
    targets.append(Target(FLOOR, port, floor, ["healthz"]))
    for target in targets:
        # The peer's first start installs its own virtual environment.
        path = "/healthz" if target.name == FLOOR else "/readyz"
        wait_ready(target.port, target.process, seconds=300, path=path)
    return targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per run, one pass")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--drivers", default="motor,pymongo")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--setting", action="append", default=[], help="NAME=value for this API (repeatable)"
    )
    parser.add_argument(
        "--live-heartbeat",
        type=int,
        default=15,
        help="EVENTS_HEARTBEAT_SECONDS in the live scenario (3600: idle CPU without heartbeats)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats = 2, 1
    scenarios = args.scenarios.split(",")
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        sys.exit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = []
    if set(scenarios) & set(WRK_SCENARIOS):
        report.append(bench_http(args, [s for s in scenarios if s != LIVE]))
    if LIVE in scenarios:
        report.append(bench_live_updates(args))
    (args.out / "results.md").write_text("\n\n".join(report) + "\n")
    return 0


def bench_live_updates(args: argparse.Namespace) -> str:
    """The live scenario per driver; writes live.json, returns its table."""
    options = bench_live.LiveOptions(
        write_seconds=5 if args.quick else 20,
        idle_seconds=4 if args.quick else 16,
        heartbeat_seconds=args.live_heartbeat,
    )
    results = []
    for driver in args.drivers.split(","):
        print(f"live: {options.streams} streams, driver {driver}", flush=True)
        results.append(bench_live.measure(driver, options))
    (args.out / "live.json").write_text(json.dumps(results, indent=2))
    heading = (
        f"live: {options.streams} open event streams of {options.users} users over 2 workers, "
        f"{options.writes_per_second:.0f} todos created per second for "
        f"{options.write_seconds:.0f} s, heartbeats every {options.heartbeat_seconds} s, "
        f"{os.cpu_count()} cores shared with the client"
    )
    table = bench_live.markdown(results)
    print()
    print(heading)
    print(table)
    return heading + "\n\n" + table


def bench_http(args: argparse.Namespace, scenarios: list[str]) -> str:
    """The wrk scenarios against every target; writes results.json, returns its table."""
    if not WRK:
        sys.exit("wrk is not installed: `make bench` installs Debian's wrk package")
    log = args.out / "server.log"
    log.write_text("")

    database = EmbeddedDatabase(":memory:")
    database.start()
    assert database.process is not None
    db_pid = database.process.pid
    targets: list[Target] = []
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        targets = start_targets(args.drivers.split(","), database, log, args.workers, args.setting)
        started = time.monotonic()
        # Every API target of this project shares one database: seed it once.
        api_data = seed(targets[0].port)
        peer_data = seed(next(t for t in targets if t.name == PEER).port)
        print(f"seeded both databases in {time.monotonic() - started:.0f} s", flush=True)
        scratch = Path(tempfile.mkdtemp(prefix="bench-"))
        for target in targets:
            target.data = peer_data if target.name == PEER else api_data
            target.scripts = {
                s: lua_script(s, target.data, scratch / f"{target.port}-{s}.lua")
                for s in target.scenarios
            }
            run_wrk(target, target.scenarios[-1], 1, args.connections, db_pid)  # warm up
        for repeat in range(args.repeats):
            for scenario in scenarios:
                shift = (repeat + WRK_SCENARIOS.index(scenario)) % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    if scenario not in target.scenarios:
                        continue
                    figures = run_wrk(target, scenario, args.seconds, args.connections, db_pid)
                    samples.setdefault((target.name, scenario), []).append(figures)
                    print(
                        f"[{repeat + 1}/{args.repeats}] {scenario:9} {target.name:14} "
                        f"{figures['requests'] / figures['seconds']:7.0f} req/s  "
                        f"cpu {figures['cpu_ms_per_request']:.2f} ms/req  "
                        f"db {figures['db_cpu_ms_per_request']:.2f} ms/req  "
                        f"errors {figures['socket_errors'] + figures['non_2xx']}",
                        flush=True,
                    )
        shutil.rmtree(scratch)
    finally:
        for target in targets:
            stop(target.process)
        database.stop()

    results = summarise(samples)
    table = markdown(results)
    heading = (
        f"wrk -t2 -c{args.connections} -d{args.seconds}s, {len(targets) - 1} servers of "
        f"{args.workers} workers and a floor, median of {args.repeats}, "
        f"{os.cpu_count()} cores shared by wrk, servers and SecantusDB"
    )
    (args.out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    print()
    print(heading)
    print(table)
    return heading + "\n\n" + table


if __name__ == "__main__":
    sys.exit(main())
