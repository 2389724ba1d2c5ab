"""Hear hypercorn's shutdown as soon as it starts, not when it is over.

With workers, hypercorn's master turns SIGTERM into a multiprocessing event
that each worker polls; the worker then stops accepting, waits up to the
graceful timeout for open responses, and only then runs ``after_serving``.
An event stream never finishes by itself, so waiting for ``after_serving``
would cost every shutdown the whole graceful timeout and end each stream
with a cut instead of a ``shutdown`` event. Hypercorn offers the app no hook
for this, so the worker reads the event it was started with (the
``shutdown_event`` argument of its process target) and polls it the same
way hypercorn does. Without it (``-w 0``, tests) streams end in
``after_serving``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from typing import Any

POLL_SECONDS = 0.2


def _hypercorn_shutdown_event() -> Any:
    """The worker's shutdown event, or None when not running as a hypercorn worker."""
    process = multiprocessing.current_process()
    arguments = getattr(process, "_kwargs", None) or {}
    event = arguments.get("shutdown_event")
    return event if callable(getattr(event, "is_set", None)) else None


async def wait_for_shutdown() -> None:
    """Return once hypercorn begins shutting this worker down; never without hypercorn."""
    event = _hypercorn_shutdown_event()
    if event is None:
        await asyncio.Event().wait()
        return
    # A multiprocessing event cannot wake a coroutine: polling is all it offers.
    while not event.is_set():  # noqa: ASYNC110
        await asyncio.sleep(POLL_SECONDS)
