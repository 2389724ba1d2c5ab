"""One timer for every open stream of a worker: heartbeats and token expiry, to the second.

A timer per stream (``loop.call_later``) costs about half a kilobyte in
uvloop, and an idle stream should cost as little as possible. Streams
instead wait in per-second buckets, and one task wakes at the next second
that has any, while any has.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
from typing import Protocol


class Sleeper(Protocol):
    def wake(self) -> None:
        """Called at the second it asked for (on the loop, without waiting)."""


class Alarms:
    """Per-second buckets of sleepers, and the task that wakes them."""

    def __init__(self) -> None:
        self._buckets: dict[int, list[Sleeper]] = {}
        self._seconds: list[int] = []  # a heap of the buckets' seconds
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # an earlier second was added

    def at(self, second: int, sleeper: Sleeper) -> None:
        """Wake ``sleeper`` once, at loop time ``second`` (or at once if that has passed)."""
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = []
            heapq.heappush(self._seconds, second)
        bucket.append(sleeper)
        if self._task is None or self._task.done():
            # The worker's task, not the request's that happens to start it.
            self._task = asyncio.create_task(self._run(), context=contextvars.Context())
        elif self._seconds[0] == second:
            self._changed.set()  # earlier than what the task sleeps for

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._seconds:
            delay = self._seconds[0] - loop.time()
            if delay > 0:
                self._changed.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._changed.wait()
                except TimeoutError:
                    pass
                continue
            second = heapq.heappop(self._seconds)
            for sleeper in self._buckets.pop(second):
                sleeper.wake()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._buckets.clear()
        self._seconds.clear()
