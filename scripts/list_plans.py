"""Time every list shape on the embedded database, the store's pipeline against the alternatives.

One owner holds 1,000 todos and 49 owners hold 10 each (1,490 in all). For a
small and the large owner, every sort, each filter and with or without a
cursor, it runs one page (``limit`` 21) three ways and prints the database's
CPU milliseconds per query (from /proc, so the noise of a shared machine
matters less than with wall time) and the index the pipeline's ``$match`` uses:

- ``pipeline``: what the app runs (``app.stores.todos.list_pipeline``);
- ``find+hint``: a ``find`` naming the (owner, sort field, _id) index, as
  the app did before;
- ``find``: the same ``find`` without a hint.

    python -m scripts.list_plans [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import MongoClient

from app.embedded_db import EmbeddedDatabase
from app.migrations.schema import INDEXES
from app.stores.todos import SORT_FIELDS, due_key, list_pipeline
from scripts.devserver import process_tree_cpu_seconds

SORTS = ["-created_at", "created_at", "-updated_at", "updated_at", "due_at", "-due_at"]
FILTERS: list[dict[str, Any]] = [
    {},
    {"completed": "false"},
    {"tag": "home"},
    {"q": "milk"},
    {"due_before": datetime(2026, 6, 1, tzinfo=UTC)},
]
FILTER_NAMES = ["completed", "tag", "q", "due_before", "due_after"]
LIMIT = 21


def seed(collection: Any) -> tuple[ObjectId, ObjectId]:
    """1,490 todos; return (a small owner, the large owner)."""
    random.seed(7)
    owners = [ObjectId() for _ in range(50)]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    todos: list[dict[str, Any]] = []
    for index, owner in enumerate(owners):
        for number in range(1000 if index == 0 else 10):
            created = start + timedelta(seconds=len(todos))
            due = None if number % 2 else start + timedelta(days=random.randint(1, 300))
            todos.append(
                {
                    "_id": ObjectId(),
                    "owner": owner,
                    "title": random.choice(["buy milk", "call bob", "write report"]),
                    "notes": "",
                    "completed": number % 3 == 0,
                    "completed_at": None,
                    "due_at": due,
                    "due_key": due_key(due),
                    "priority": "normal",
                    "tags": random.sample(["home", "work", "later"], random.randint(0, 2)),
                    "created_at": created,
                    "updated_at": created,
                    "version": 1,
                }
            )
    collection.insert_many(todos)
    return owners[1], owners[0]


def as_find(pipeline: list[dict[str, Any]]) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """The pipeline's filter and sort as one ``find`` (the app's former query shape)."""
    first, *rest = pipeline
    query = dict(first["$match"])
    later = [stage["$match"] for stage in rest if "$match" in stage]
    if later:
        query["$and"] = later[0]["$and"]
    sort = next(stage["$sort"] for stage in rest if "$sort" in stage)
    return query, list(sort.items())


def cpu_ms(db_pid: int, repeats: int, run: Callable[[], object]) -> float:
    """Median database CPU milliseconds of one ``run``, over ``repeats`` batches.

    A batch runs until the database used 50 ms of CPU (the clock ticks every
    10 ms), or 200 times.
    """
    samples = []
    for _ in range(repeats):
        before = process_tree_cpu_seconds(db_pid)
        count, used = 0, 0.0
        while used < 0.05 and count < 200:
            run()
            count += 1
            used = process_tree_cpu_seconds(db_pid) - before
        samples.append(used * 1000 / count)
    return statistics.median(samples)


def timings(
    db_pid: int, repeats: int, collection: Any, pipeline: list[dict[str, Any]]
) -> list[float]:
    """Database CPU ms of the pipeline, the hinted ``find`` and the plain ``find``."""
    query, order = as_find(pipeline)
    hint = f"owner_{order[0][0]}_asc"
    return [
        cpu_ms(db_pid, repeats, lambda: list(collection.aggregate(pipeline))),
        cpu_ms(
            db_pid,
            repeats,
            lambda: list(collection.find(query).sort(order).hint(hint).limit(LIMIT)),
        ),
        cpu_ms(db_pid, repeats, lambda: list(collection.find(query).sort(order).limit(LIMIT))),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    server = EmbeddedDatabase(":memory:")
    server.start()
    assert server.process is not None
    try:
        client: MongoClient[dict[str, Any]] = MongoClient(server.uri, tz_aware=True)
        database = client["plans"]
        todos = database["todos"]
        todos.create_indexes(INDEXES["todos"])
        small, large = seed(todos)
        print(
            f"{'owner':5} {'sort':12} {'filter':22} {'cursor':6} "
            f"{'pipeline':>8} {'find+hint':>9} {'find':>7}  index (pipeline)"
        )
        for owner_name, owner in (("small", small), ("large", large)):
            newest = todos.find_one({"owner": owner}, sort=[("created_at", -1)])
            assert newest is not None
            for sort in SORTS:
                field = SORT_FIELDS[sort.lstrip("-")]
                for filters in FILTERS:
                    full = dict.fromkeys(FILTER_NAMES) | filters
                    for after in (None, (newest[field], newest["_id"])):
                        pipeline = list_pipeline(owner, full, sort, after, LIMIT)
                        costs = timings(server.process.pid, args.repeats, todos, pipeline)
                        plan = database.command(
                            "aggregate", "todos", pipeline=pipeline, explain=True
                        )
                        winning = plan["queryPlanner"]["winningPlan"]
                        index = winning.get("inputStage", {}).get("indexName", winning["stage"])
                        label = ",".join(filters) or "-"
                        print(
                            f"{owner_name:5} {sort:12} {label:22} {'yes' if after else 'no':6} "
                            f"{costs[0]:8.2f} {costs[1]:9.2f} {costs[2]:7.2f}  {index}",
                            flush=True,
                        )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
