"""Benchmark this API beside two synchronous peers and a bare Quart floor, with wrk.

On one embedded database (SecantusDB) it starts:

- this API with the container's hypercorn command and production settings
  (2 uvloop workers; once per driver asked for),
- the comparison server of ``bench/peers/flask_pymongo`` (Flask + PyMongo +
  flask-jwt-extended on gunicorn, its own database on the same server) twice:
  with sync workers, as a plain deployment runs it, and with gthread workers
  of 16 threads each, as a tuned one does; its pinned requirements go into
  ``bench/peers/flask_pymongo/.venv`` on first use,
- a bare Quart app on the same hypercorn command (``scripts/bare_quart.py``),
  the floor for ``healthz``.

With ``--hop`` every server reaches the database through a relay that holds
back each wire message (1 ms by default; ``scripts/bench_relay.py``): the
database a network hop away, where waiting on it costs a sync worker its
whole request.

Both kinds of server are seeded the same way through their HTTP APIs (50
users, the first with 1,000 todos, the others with 20). Each scenario then
runs against each target in turn, the targets' order rotating, and the whole
round is repeated; medians are reported. CPU milliseconds per request come
from the process trees' CPU time in /proc (server and database separately).

The ``live`` scenario then starts this API alone, once per driver, and holds
1,000 event streams open while todos are written (``scripts/bench_live.py``);
the peers have no live updates to compare with.

Whatever happens (a target that does not start, Ctrl-C, SIGTERM, an error),
every process the bench started is stopped: each runs in a process group of
its own, stopped as a whole when the bench ends.

    python -m scripts.bench            # 5 s per run, 3 repeats
    python -m scripts.bench --quick    # 2 s per run, one pass
    python -m scripts.bench --quick --hop --scenarios healthz,me,todo_get,post,list_100,mixed
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from app.embedded_db import EmbeddedDatabase, free_port
from scripts import bench_live
from scripts.devserver import (
    ROOT,
    ServerProcess,
    post_retrying,
    process_tree_cpu_seconds,
    start_hypercorn,
    stop_group,
    upgrade_schema,
    wait_ready,
)

WRK_SCENARIOS = ["healthz", "me", "todo_get", "post", "list_100", "mixed"]
LIVE = "live"  # open event streams (scripts/bench_live.py): this API only, per driver
SCENARIOS = [*WRK_SCENARIOS, LIVE]
USERS = 50
TODOS_OF_FIRST_USER = 1000
TODOS_OF_OTHERS = 20
PASSWORD = "benchmark password"  # noqa: S105 (a throwaway benchmark account)
PEER_DIR = ROOT / "bench" / "peers" / "flask_pymongo"
PEER_VENV = PEER_DIR / ".venv"
PEER_SYNC = "flask sync"
PEER_THREADS = "flask gthread"
PEERS = (PEER_SYNC, PEER_THREADS)
FLOOR = "bare quart"
#: What --targets takes, and the targets each name starts.
TARGET_KINDS = ("api", "flask-sync", "flask-gthread", "floor")
#: The load generator: $WRK when set, else wrk from PATH.
WRK = os.environ.get("WRK") or shutil.which("wrk") or ""

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
    rps_vs_sync: float | None = None
    cpu_vs_sync: float | None = None
    rps_vs_gthread: float | None = None
    cpu_vs_gthread: float | None = None
    cpu_vs_floor: float | None = None


class StartFailed(Exception):
    """A target did not start; the message says which, and where its output is."""


class Processes:
    """Every process the bench starts, stopped together whatever ends the run.

    The bench's own exit paths (``finally``, ``atexit``) call ``stop_all``;
    SIGTERM and SIGHUP are turned into an exit so that those paths run, as
    Ctrl-C's KeyboardInterrupt already does.
    """

    def __init__(self) -> None:
        self.groups: list[ServerProcess] = []
        self.databases: list[EmbeddedDatabase] = []

    def add(self, process: ServerProcess) -> ServerProcess:
        self.groups.append(process)
        return process

    def start_database(self) -> EmbeddedDatabase:
        database = EmbeddedDatabase(":memory:")
        self.databases.append(database)
        database.start()
        return database

    def stop_all(self) -> None:
        for process in reversed(self.groups):
            stop_group(process)
        self.groups.clear()
        for database in reversed(self.databases):
            database.stop()
        self.databases.clear()


@contextmanager
def stopped_at_exit() -> Iterator[Processes]:
    """A ``Processes`` stopped on leaving, on SIGTERM/SIGHUP, and at interpreter exit."""
    processes = Processes()

    def exit_on(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, exit_on) for sig in (signal.SIGTERM, signal.SIGHUP)}
    atexit.register(processes.stop_all)
    try:
        yield processes
    finally:
        processes.stop_all()
        atexit.unregister(processes.stop_all)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _seed_user(port: int, index: int, stop: threading.Event) -> tuple[str, list[str]]:
    credentials = {"username": f"bench{index}", "password": PASSWORD}
    status, body = post_retrying(port, "/api/v1/auth/register", credentials)
    assert status in (201, 409), body  # 409: an attempt answered 503 had registered it
    status, body = post_retrying(port, "/api/v1/auth/login", credentials)
    assert status == 200, body
    token: str = body["access_token"]
    ids = []
    for number in range(TODOS_OF_FIRST_USER if index == 0 else TODOS_OF_OTHERS):
        if stop.is_set():
            raise RuntimeError("seeding stopped")
        todo = {"title": f"todo {number}", "tags": ["seed"]}
        status, body = post_retrying(port, "/api/v1/todos", todo, token)
        assert status == 201, body
        ids.append(body["id"])
    return token, ids[:200]


def seed(port: int) -> dict[str, Any]:
    """Users with tokens through the API; the first has 1,000 todos, the others 20.

    Four threads seed at once; when anything stops the run (Ctrl-C included),
    they stop at their next request instead of seeding on.
    """
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=4)
    try:
        users = list(pool.map(lambda index: _seed_user(port, index, stop), range(USERS)))
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
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


def _ratio(value: float, reference: float) -> float | None:
    """``value / reference``, or None when the reference run answered nothing."""
    return value / reference if reference else None


def summarise(samples: dict[tuple[str, str], list[dict[str, Any]]]) -> list[Result]:
    """Medians per (target, scenario), with ratios to each peer and to the floor."""

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
        sync = results.get((PEER_SYNC, result.scenario))
        if sync is not None and result.target not in PEERS:
            result.rps_vs_sync = _ratio(result.requests_per_second, sync.requests_per_second)
            result.cpu_vs_sync = _ratio(result.cpu_ms_per_request, sync.cpu_ms_per_request)
        threaded = results.get((PEER_THREADS, result.scenario))
        if threaded is not None and result.target not in PEERS:
            result.rps_vs_gthread = _ratio(result.requests_per_second, threaded.requests_per_second)
            result.cpu_vs_gthread = _ratio(result.cpu_ms_per_request, threaded.cpu_ms_per_request)
        floor = results.get((FLOOR, result.scenario))
        if floor is not None and result.target != FLOOR:
            result.cpu_vs_floor = _ratio(result.cpu_ms_per_request, floor.cpu_ms_per_request)
    return sorted(results.values(), key=lambda r: (WRK_SCENARIOS.index(r.scenario), r.target))


def markdown(results: list[Result]) -> str:
    def ratio(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}x"

    lines = [
        "| scenario | target | req/s | p50 ms | p99 ms | errors | server CPU ms/req "
        "| DB CPU ms/req | req/s vs sync | CPU vs sync | req/s vs gthread | CPU vs gthread "
        "| CPU vs floor |",
        "| --- | --- |" + " ---: |" * 11,
    ]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.target} | {r.requests_per_second:,.0f} | {r.p50_ms:.1f} | "
            f"{r.p99_ms:.1f} | {r.errors} | {r.cpu_ms_per_request:.2f} | "
            f"{r.db_cpu_ms_per_request:.2f} | {ratio(r.rps_vs_sync)} | {ratio(r.cpu_vs_sync)} | "
            f"{ratio(r.rps_vs_gthread)} | {ratio(r.cpu_vs_gthread)} | {ratio(r.cpu_vs_floor)} |"
        )
    return "\n".join(lines)


def peer_environment() -> Path:
    """The peer's own virtual environment, made from its pinned requirements when they change."""
    requirements = PEER_DIR / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = PEER_VENV / ".requirements-sha256"
    if not stamp.exists() or stamp.read_text() != digest:
        print(f"installing the peer's requirements into {PEER_VENV.relative_to(ROOT)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
        pip = [str(PEER_VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(requirements)], check=True)
        stamp.write_text(digest)
    return PEER_VENV / "bin" / "gunicorn"


def start_peer(
    processes: Processes, gunicorn: Path, env: dict[str, str], log: Path, worker_args: list[str]
) -> tuple[int, ServerProcess]:
    port = free_port()
    command = [
        str(gunicorn),
        "--chdir",
        str(PEER_DIR),
        "--bind",
        f"127.0.0.1:{port}",
        "--backlog",
        "2048",
        "--log-level",
        "warning",
        *worker_args,
        "app:create_app()",
    ]
    return port, processes.add(ServerProcess(command, env, log, own_group=True))


def start_targets(
    processes: Processes,
    args: argparse.Namespace,
    database_uri: str,
    log: Path,
) -> list[Target]:
    """The targets asked for, all on ``database_uri``; returns once every one is ready.

    The floor and the peers start first and this API last, so that a refused
    setting of this API (``--setting``) fails a run that already has servers
    to stop.
    """
    kinds = args.targets.split(",")
    secret = secrets.token_hex(32)
    production = {
        "APP_ENV": "production",
        "MONGO_URI": database_uri,
        "JWT_SECRET_KEY": secret,
        # Seeding registers and logs in 50 users from one address, and the
        # post scenario creates tens of thousands of todos for one user.
        "REGISTRATIONS_PER_ADDRESS": "1000000",
        "LOGIN_ATTEMPTS_PER_ADDRESS": "1000000",
        "TODOS_PER_USER": "10000000",
        # wrk's connections all act for a few users: measure throughput, not fairness.
        "USER_CONCURRENT_REQUESTS": "1000000",
        "WEB_CONCURRENCY": str(args.workers),
    }
    upgrade_schema(production)  # the release step: production refuses an older schema
    targets = []
    if "floor" in kinds:
        port = free_port()
        floor = processes.add(
            start_hypercorn(
                port,
                production,
                args.workers,
                log,
                "scripts.bare_quart:create_app()",
                own_process_group=True,
            )
        )
        targets.append(Target(FLOOR, port, floor, ["healthz"]))
    peer_kinds = [kind for kind in ("flask-sync", "flask-gthread") if kind in kinds]
    if peer_kinds:
        gunicorn = peer_environment()
        peer_env = {
            **os.environ,
            "MONGO_URI": database_uri + "&journal=true",
            "MONGO_DB": "peer",
            "JWT_SECRET_KEY": secret,
            "TODOS_PER_USER": "10000000",
        }
        workers = ["--workers", str(args.workers)]
        for kind in peer_kinds:
            name, worker_class = (
                (PEER_SYNC, ["--worker-class", "sync"])
                if kind == "flask-sync"
                else (
                    PEER_THREADS,
                    ["--worker-class", "gthread", "--threads", str(args.peer_threads)],
                )
            )
            port, peer = start_peer(processes, gunicorn, peer_env, log, workers + worker_class)
            targets.append(Target(name, port, peer, WRK_SCENARIOS))
    if "api" in kinds:
        settings = dict(setting.split("=", 1) for setting in args.setting)
        for driver in args.drivers.split(","):
            port = free_port()
            env = {**production, **settings, "MONGO_DRIVER": driver}
            server = processes.add(
                start_hypercorn(port, env, args.workers, log, own_process_group=True)
            )
            targets.append(Target(f"api {driver}", port, server, WRK_SCENARIOS))
    for target in targets:
        path = "/healthz" if target.name == FLOOR else "/readyz"
        try:
            wait_ready(target.port, target.process, seconds=120, path=path)
        except RuntimeError:
            raise StartFailed(f"{target.name} did not start; its output is in {log}") from None
    return targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per run, one pass")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--peer-threads", type=int, default=16, help="per gthread worker")
    parser.add_argument("--drivers", default="motor,pymongo")
    parser.add_argument("--targets", default=",".join(TARGET_KINDS), help=",".join(TARGET_KINDS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--hop",
        type=float,
        nargs="?",
        const=1.0,
        default=0.0,
        metavar="MS",
        help="reach the database through a relay delaying each wire message (1 ms)",
    )
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
    unknown_targets = set(args.targets.split(",")) - set(TARGET_KINDS)
    if unknown or unknown_targets:
        sys.exit(f"unknown scenarios or targets: {', '.join(sorted(unknown | unknown_targets))}")
    args.out.mkdir(parents=True, exist_ok=True)
    report: list[str] = []
    suffix = "-hop" if args.hop else ""

    def save(part: str) -> None:  # after each part, so a later failure loses nothing
        report.append(part)
        (args.out / f"results{suffix}.md").write_text("\n\n".join(report) + "\n")

    try:
        if set(scenarios) & set(WRK_SCENARIOS):
            save(bench_http(args, [s for s in scenarios if s != LIVE]))
        if LIVE in scenarios:
            save(bench_live_updates(args))
    except StartFailed as failure:
        print(f"bench: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
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


def start_relay(
    processes: Processes, database: EmbeddedDatabase, delay_ms: float, log: Path
) -> str:
    """The relay in front of ``database``; the URI to reach the database through it."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "scripts.bench_relay",
        "--port",
        str(port),
        "--upstream",
        f"127.0.0.1:{database.port}",
        "--delay-ms",
        str(delay_ms),
    ]
    relay = processes.add(ServerProcess(command, dict(os.environ), log, own_group=True))
    deadline = time.monotonic() + 30
    while f"relay on 127.0.0.1:{port}" not in relay.output():
        if relay.poll() is not None or time.monotonic() > deadline:
            raise StartFailed(f"the relay did not start; its output is in {log}")
        time.sleep(0.1)
    return database.uri.replace(f":{database.port}/", f":{port}/")


def bench_http(args: argparse.Namespace, scenarios: list[str]) -> str:
    """The wrk scenarios against every target; writes results.json, returns its table."""
    if not WRK:
        sys.exit("wrk is not installed: `make bench` installs Debian's wrk package")
    log = args.out / "server.log"
    log.write_text("")
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with stopped_at_exit() as processes, tempfile.TemporaryDirectory() as scratch:
        database = processes.start_database()
        assert database.process is not None
        db_pid = database.process.pid
        uri = start_relay(processes, database, args.hop, log) if args.hop else database.uri
        targets = start_targets(processes, args, uri, log)
        started = time.monotonic()
        # Targets of one kind share a database: seed it once per kind.
        seeded: dict[bool, dict[str, Any]] = {}
        for target in targets:
            if target.name == FLOOR:
                continue
            is_peer = target.name in PEERS
            if is_peer not in seeded:
                seeded[is_peer] = seed(target.port)
            target.data = seeded[is_peer]
        print(f"seeded {len(seeded)} databases in {time.monotonic() - started:.0f} s", flush=True)
        for target in targets:
            target.scripts = {
                s: lua_script(s, target.data, Path(scratch) / f"{target.port}-{s}.lua")
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

    results = summarise(samples)
    table = markdown(results)
    hop = f", the database {args.hop:g} ms away (each wire message)" if args.hop else ""
    heading = (
        f"wrk -t2 -c{args.connections} -d{args.seconds}s, {len(targets)} targets of "
        f"{args.workers} workers (gthread: {args.peer_threads} threads each){hop}, median of "
        f"{args.repeats}, {os.cpu_count()} cores shared by wrk, servers and SecantusDB"
    )
    suffix = "-hop" if args.hop else ""
    (args.out / f"results{suffix}.json").write_text(
        json.dumps([asdict(r) for r in results], indent=2)
    )
    print()
    print(heading)
    print(table)
    return heading + "\n\n" + table


if __name__ == "__main__":
    sys.exit(main())
