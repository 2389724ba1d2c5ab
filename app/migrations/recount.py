"""Migration 0001: recount every owner's todos into the quota counter.

Todos stored before counting began were never counted, so the quota was
enforced against too low a number. The recount runs while the API serves
(and writes) beside it, and is exact all the same: it holds a batch of
counters (``stores.todos``: creates and deletes of those owners wait), lets
the writes that started before the hold finish (a create's todo lands in the
same command as its count; a delete is marked in flight until its todo is
gone, at most one request budget), then counts each owner's todos, sets the
count and releases the counter. A hold is a lease: if the upgrade dies, the
writes go on when it runs out. Owners are held in small batches, for a
fraction of a second each, so a write that waits still gets its answer well
within its request's budget.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from quart import current_app

from ..clock import utcnow
from ..stores import todos

logger = logging.getLogger(__name__)

BATCH = 50
#: How long a hold lasts if the upgrade dies holding it.
HOLD_SECONDS = 30
#: A create whose count went in before the hold is still inserting its todo
#: in the same command: a moment is plenty.
CREATE_SETTLE_SECONDS = 0.1
#: Beyond a request's budget, what the database may still take to finish its last write.
MARGIN_SECONDS = 1.0


class HoldLost(Exception):
    """A counter's hold ran out before its recount was done."""


async def recount_todo_counters() -> None:
    await todos.name_counter_owners()  # counters of earlier versions, so that each names its owner
    owners = await todos.counted_owners()
    budget = timedelta(milliseconds=current_app.config["REQUEST_DEADLINE_MS"])
    for start in range(0, len(owners), BATCH):
        batch = owners[start : start + BATCH]
        held_at = utcnow()
        until = held_at + timedelta(seconds=HOLD_SECONDS)
        held = await todos.hold_counters(batch, until)
        try:
            await asyncio.sleep(CREATE_SETTLE_SECONDS)
            await todos.wait_for_deletes(held, held_at + budget + timedelta(seconds=MARGIN_SECONDS))
            for owner in held:
                if not await todos.recount_held(owner, until):
                    raise HoldLost(f"the hold on owner {owner}'s counter ran out; run it again")
        finally:
            await todos.release_counters(held, until)
    logger.info("recounted the todos of %d owners", len(owners))
