"""What one more open change stream costs the database, under one write load.

Every hypercorn worker holds one change stream (app/live/hub.py), so a
deployment holds instances x workers of them, each reading every change the
pipeline lets through. This measures the price: it starts the embedded
database, writes todos at a fixed rate the way a create does (the quota
counter and the todo in one bulk write), and opens 0, 1, 10 and 50 change
streams, each on its own client as each worker has its own, with the app's
pipeline and options. For each count it reports the database process's CPU
(user + system, from /proc) per second of the window, with the writes going
on and with none, and checks that every stream saw every write.

    .venv/bin/python -m scripts.bench_change_streams [--writes-per-second 50] [--seconds 20]

The streams and the writer run in this process, on the same two cores as the
database: the figures are the database's own CPU, but a loaded machine makes
them noisier. docs/scaling.md has the figures and what they imply.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from bson import ObjectId
from pymongo import AsyncMongoClient, UpdateOne, monitoring

from app.embedded_db import EmbeddedDatabase
from app.migrations.schema import COLLECTION_OPTIONS
from app.stores.changes import MAX_AWAIT_MS, PIPELINE
from scripts.devserver import process_tree_cpu_seconds

T = TypeVar("T")
DATABASE = "bench_change_streams"
OWNERS = 20


class GetMores(monitoring.CommandListener):
    """Counts a client's getMore round trips and the changes they bring."""

    def __init__(self) -> None:
        self.round_trips = 0
        self.changes = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name == "getMore":
            self.round_trips += 1
            self.changes += len(event.reply.get("cursor", {}).get("nextBatch", ()))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@dataclass
class Reader:
    """One change stream, as a worker's hub reads it: counts the todos it saw created."""

    uri: str
    created: int = 0
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    get_mores: GetMores = field(default_factory=GetMores)

    async def run(self) -> None:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            self.uri, event_listeners=[self.get_mores]
        )
        try:
            stream = await client[DATABASE].watch(
                PIPELINE,
                full_document="whenAvailable",
                full_document_before_change="whenAvailable",
                max_await_time_ms=MAX_AWAIT_MS,
            )
            self.opened.set()
            async with stream:
                async for change in stream:
                    if change["operationType"] == "insert":
                        self.created += 1
        finally:
            await client.close()


async def write_at_rate(
    collection: Any, per_second: float, seconds: float, owners: list[ObjectId]
) -> int:
    """Create todos at ``per_second`` for ``seconds``; return how many were written."""
    written = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        owner = owners[written % len(owners)]
        todo = {"title": "bench", "completed": False, "version": 1, "created_at": datetime.now(UTC)}
        await collection.bulk_write(
            [
                UpdateOne(
                    {"_id": f"count:{owner}", "owner": owner, "count": {"$lt": 10**9}},
                    {"$inc": {"count": 1}},
                    upsert=True,
                ),
                UpdateOne({"_id": ObjectId(), "owner": owner}, {"$setOnInsert": todo}, upsert=True),
            ],
            ordered=True,
        )
        written += 1
        await asyncio.sleep(max(0.0, written / per_second - elapsed))
    return written


async def cpu_per_second(pid: int, work: Awaitable[T]) -> tuple[float, T]:
    """The process tree's CPU (seconds per second) while ``work`` runs, and its result."""
    before, started = process_tree_cpu_seconds(pid), time.monotonic()
    result = await work
    return (process_tree_cpu_seconds(pid) - before) / (time.monotonic() - started), result


async def measure(counts: list[int], per_second: float, seconds: float) -> list[dict[str, Any]]:
    server = EmbeddedDatabase(":memory:")
    uri = server.start()
    assert server.process is not None
    results = []
    writer: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        database = writer[DATABASE]
        await database.command("create", "todos", **COLLECTION_OPTIONS["todos"])
        owners = [ObjectId() for _ in range(OWNERS)]
        for count in counts:
            readers = [Reader(uri) for _ in range(count)]
            tasks = [asyncio.create_task(reader.run()) for reader in readers]
            await asyncio.gather(*(reader.opened.wait() for reader in readers))
            await asyncio.sleep(2)
            idle, _ = await cpu_per_second(server.process.pid, asyncio.sleep(seconds / 2))
            before = [(r.get_mores.round_trips, r.get_mores.changes) for r in readers]
            loaded, written = await cpu_per_second(
                server.process.pid, write_at_rate(database["todos"], per_second, seconds, owners)
            )
            after = [(r.get_mores.round_trips, r.get_mores.changes) for r in readers]
            round_trips = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
            changes = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
            await asyncio.sleep(2)  # the last events on their way
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            results.append(
                {
                    "streams": count,
                    "writes": written,
                    "cpu_idle": idle,
                    "cpu_loaded": loaded,
                    "complete": sum(reader.created == written for reader in readers),
                    "round_trips": round_trips / seconds,
                    "changes": changes / seconds,
                }
            )
            print(table(results[-1:], header=not results[:-1]), flush=True)
    finally:
        await writer.close()
        server.stop()
    return results


def table(results: list[dict[str, Any]], header: bool = True) -> str:
    lines = (
        [
            "| streams | database CPU, writes going on | getMores/s (all streams) "
            "| changes read/s (all streams) | database CPU, no writes "
            "| streams that saw every write |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        if header
        else []
    )
    for r in results:
        lines.append(
            f"| {r['streams']} | {r['cpu_loaded'] * 100:.1f} % of a core "
            f"| {r['round_trips']:.0f} | {r['changes']:.0f} "
            f"| {r['cpu_idle'] * 100:.1f} % | {r['complete']} of {r['streams']} |"
        )
    return "\n".join(lines)


def marginal(results: list[dict[str, Any]], key: str) -> float:
    """Least-squares slope of CPU (share of a core) over the number of streams."""
    xs = [r["streams"] for r in results]
    ys = [r[key] for r in results]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return float(sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes-per-second", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=20, help="the write window per count")
    parser.add_argument("--streams", default="0,1,10,50", help="comma-separated counts")
    options = parser.parse_args(argv)
    counts = [int(count) for count in options.streams.split(",")]
    print(
        f"{options.writes_per_second:g} creates per second for {options.seconds:g} s "
        f"per count; the pipeline of app/stores/changes.py",
        flush=True,
    )
    results = asyncio.run(measure(counts, options.writes_per_second, options.seconds))
    if len(results) > 1:
        print(
            f"each more stream: {marginal(results, 'cpu_loaded') * 100:.2f} % of a core with "
            f"the writes going on, {marginal(results, 'cpu_idle') * 100:.2f} % with none",
            flush=True,
        )


if __name__ == "__main__":
    main()
