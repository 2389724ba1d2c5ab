"""The ``live`` scenario of ``make bench``: many open event streams while a writer creates todos.

Starts the embedded database and the server as the container runs it (two
uvloop workers, production settings), registers users, then measures in order:

1. idle server CPU with no stream open, and the workers' memory;
2. the same with every stream open and idle (memory per stream is the
   workers' RSS growth divided by the streams);
3. a writer creating todos at a fixed rate for random users: the latency
   from each write's acknowledgement (the 201 read by the writer) to the
   event's arrival on every stream of its owner, and the server's CPU per
   delivered event (the CPU of handling the writes included).

The streams are read by one asyncio loop in this process; the writer runs in
threads. Everything shares the machine, so the figures include the
client's own cost. ``scripts/bench.py`` runs it once per driver.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.devserver import call, post_retrying, process_tree_cpu_seconds, running_server


@dataclass(frozen=True)
class LiveOptions:
    streams: int = 1000
    users: int = 100
    writes_per_second: float = 50
    write_seconds: float = 20  # the write phase
    idle_seconds: float = 16  # each idle CPU window: longer than a heartbeat period
    heartbeat_seconds: int = 15  # EVENTS_HEARTBEAT_SECONDS (large: no heartbeats)


@dataclass
class Arrivals:
    """When each created todo's event reached each stream (monotonic seconds)."""

    by_todo: dict[str, list[float]] = field(default_factory=dict)
    delivered: int = 0
    opened: int = 0


async def read_stream(port: int, token: str, arrivals: Arrivals, ready: asyncio.Event) -> None:
    """One EventSource-like reader: HTTP/1.1, chunked body, SSE frames."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            "GET /api/v1/todos/events HTTP/1.1\r\nHost: bench\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace"))
    arrivals.opened += 1
    ready.set()
    pending = b""
    try:
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                return
            pending += (await reader.readexactly(size + 2))[:-2]
            while b"\n\n" in pending:
                frame, pending = pending.split(b"\n\n", 1)
                if b"event: created\n" in frame:
                    now = time.monotonic()
                    data = frame.rsplit(b"data: ", 1)[1]
                    arrivals.by_todo.setdefault(json.loads(data)["id"], []).append(now)
                    arrivals.delivered += 1
    finally:
        writer.close()


def worker_memory_kib(server_pid: int) -> int:
    """Resident memory of the server's worker processes (its children), KiB."""
    total = 0
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def idle_cpu_ms_per_second(server_pid: int, seconds: float) -> float:
    before = process_tree_cpu_seconds(server_pid)
    time.sleep(seconds)
    return (process_tree_cpu_seconds(server_pid) - before) * 1000 / seconds


def register_users(port: int, count: int) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for _ in range(count):
        credentials = {"username": f"b{uuid.uuid4().hex[:12]}", "password": "bench password"}
        status, _ = post_retrying(port, "/api/v1/auth/register", credentials)
        assert status in (201, 409), status  # 409: an attempt answered 503 had registered it
        status, body = post_retrying(port, "/api/v1/auth/login", credentials)
        assert status == 200, body
        tokens[credentials["username"]] = body["access_token"]
    return tokens


def write_at_rate(
    port: int, tokens: list[str], rate: float, seconds: float, acks: dict[str, float]
) -> int:
    """Create todos at ``rate`` per second from 4 threads; record each 201's time."""
    errors = 0
    threads = 4
    interval = threads / rate
    began = time.monotonic()

    def writer(offset: int) -> None:
        nonlocal errors
        chooser = random.Random(offset)
        due = began + offset * interval / threads
        while due < began + seconds:
            time.sleep(max(0.0, due - time.monotonic()))
            status, body = call(
                port, "POST", "/api/v1/todos", {"title": "x"}, chooser.choice(tokens)
            )
            if status == 201:
                acks[body["id"]] = time.monotonic()
            else:
                errors += 1
            due += interval

    pool = [threading.Thread(target=writer, args=(index,)) for index in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return errors


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(driver: str, options: LiveOptions) -> dict[str, Any]:
    """The live figures of this API on ``driver``."""
    return asyncio.run(_measure(driver, options))


async def _measure(driver: str, options: LiveOptions) -> dict[str, Any]:
    env = {
        "APP_ENV": "production",
        "MONGO_DRIVER": driver,
        "LOG_LEVEL": "WARNING",
        "MONGO_DB": "bench_live",
        "REGISTRATIONS_PER_ADDRESS": "1000000",
        "LOGIN_ATTEMPTS_PER_ADDRESS": "1000000",
        "LOGIN_FAILURES_PER_ADDRESS": "1000000",
        "EVENTS_HEARTBEAT_SECONDS": str(options.heartbeat_seconds),
    }
    with running_server(env, workers=2) as (port, server):
        tokens = register_users(port, options.users)
        # A few streams of a user nobody writes for start each worker's change
        # stream first, so it is not counted as memory of the measured streams.
        arrivals = Arrivals()
        warmers = []
        (warm_token,) = register_users(port, 1).values()
        for _ in range(8):
            ready = asyncio.Event()
            warmers.append(asyncio.create_task(read_stream(port, warm_token, arrivals, ready)))
            await ready.wait()
        await asyncio.sleep(2)
        idle_without = idle_cpu_ms_per_second(server.pid, options.idle_seconds)
        memory_before = worker_memory_kib(server.pid)

        per_user = options.streams // options.users
        readers = []
        for token in tokens.values():
            for _ in range(per_user):
                ready = asyncio.Event()
                readers.append(asyncio.create_task(read_stream(port, token, arrivals, ready)))
                await ready.wait()
        await asyncio.sleep(2)
        memory_after = worker_memory_kib(server.pid)
        idle_with = await asyncio.to_thread(
            idle_cpu_ms_per_second, server.pid, options.idle_seconds
        )

        acks: dict[str, float] = {}
        cpu_before = process_tree_cpu_seconds(server.pid)
        delivered_before = arrivals.delivered
        errors = await asyncio.to_thread(
            write_at_rate,
            port,
            list(tokens.values()),
            options.writes_per_second,
            options.write_seconds,
            acks,
        )
        await asyncio.sleep(2)
        cpu_used = process_tree_cpu_seconds(server.pid) - cpu_before
        delivered = arrivals.delivered - delivered_before
        latencies = [
            (arrived - acked) * 1000
            for todo_id, acked in acks.items()
            for arrived in arrivals.by_todo.get(todo_id, [])
        ]
        expected = len(acks) * per_user
        for task in [*warmers, *readers]:
            task.cancel()
        await asyncio.gather(*warmers, *readers, return_exceptions=True)
    return {
        "driver": driver,
        "streams": options.users * per_user,
        "users": options.users,
        "workers": 2,
        "writes_per_second": options.writes_per_second,
        "writes": len(acks),
        "write_errors": errors,
        "events_expected": expected,
        "events_delivered": delivered,
        "latency_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "latency_p90_ms": round(percentile(latencies, 0.90), 1) if latencies else None,
        "latency_p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
        "latency_max_ms": round(max(latencies), 1) if latencies else None,
        "server_cpu_ms_per_delivered_event": round(cpu_used * 1000 / max(delivered, 1), 3),
        "memory_kib_per_stream": round((memory_after - memory_before) / len(readers), 1),
        "idle_cpu_ms_per_s_without_streams": round(idle_without, 1),
        "idle_cpu_ms_per_s_with_streams": round(idle_with, 1),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| driver | events delivered | p50 ms | p90 ms | p99 ms | max ms "
        "| server CPU ms / event | KiB / open stream | idle CPU ms/s: no streams / all open |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['driver']} | {r['events_delivered']:,} of {r['events_expected']:,} "
            f"| {r['latency_p50_ms']} | {r['latency_p90_ms']} | {r['latency_p99_ms']} "
            f"| {r['latency_max_ms']} | {r['server_cpu_ms_per_delivered_event']} "
            f"| {r['memory_kib_per_stream']} | {r['idle_cpu_ms_per_s_without_streams']} / "
            f"{r['idle_cpu_ms_per_s_with_streams']} |"
        )
    return "\n".join(lines)
