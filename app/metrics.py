"""Prometheus metrics: what every worker counts, and ``GET /metrics``.

Under hypercorn each worker is its own process, so the numbers of one worker
say little. prometheus-client's multiprocess mode has every worker write its
values to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``; a scrape of
any worker reads them all and answers for the whole server. The library
picks that mode when it is imported, so the directory must be in the
environment before any worker imports it: the hypercorn master prepares it
(``app/serving.py``), and the spawned workers inherit it. Without it (the
test client, a single process) each app counts in its own registry.

Recording must stay cheap: it runs on every request and database command.
The two histograms those feed are buffered: an observation adds to a few
numbers of this process (under a lock, as Motor's listener calls come from
its threads), and a task adds them to the shared values once a second, and
before this worker answers a scrape. A scrape may therefore miss the last
second of another worker; the rare events' counters are written at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hmac
import logging
import os
import platform
import re
import threading
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from pymongo import monitoring
from quart import Quart, current_app

logger = logging.getLogger(__name__)

PREFIX = "todo_api"
#: Seconds. The latency objective (docs/operations.md) sits on a bucket bound.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DATABASE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Methods outside this set share one label: a client chooses the method.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The route label of every request no route matched (404s, 405s): one series, not one per path.
UNMATCHED = "unmatched"
#: Commands whose first value is not the collection's name.
COLLECTION_FIELD = {"getMore": "collection"}
#: Pending command starts kept at most (a command that never ends must not grow the map).
MAX_PENDING_COMMANDS = 10_000
LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db")
#: How often a worker adds its buffered observations to the shared values.
FLUSH_SECONDS = 1.0


class BufferedSeries:
    """One labelled histogram series whose observations wait in this process.

    ``flush`` adds them to the series' shared values in one go: one write per
    bucket that changed and one for the sum, where ``observe`` on the series
    writes two memory-mapped values (under the library's lock) every time.
    """

    __slots__ = ("_bounds", "_counts", "_lock", "_series", "_sum")

    def __init__(self, series: Any) -> None:
        self._series = series
        self._bounds: list[float] = series._upper_bounds
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._counts[bisect_left(self._bounds, seconds)] += 1  # the first bound >= seconds
            self._sum += seconds

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, [0] * len(self._bounds)
            total, self._sum = self._sum, 0.0
        if not any(counts):
            return
        self._series._sum.inc(total)
        for bucket, count in zip(self._series._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


def multiprocess_mode() -> bool:
    """Whether prometheus-client chose its multiprocess values at import."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


@dataclass(eq=False)
class MetricSet:
    """One app's metrics and the cached series of its hottest ones."""

    registry: CollectorRegistry
    requests: Histogram
    database_commands: Histogram
    database_failures: Counter
    database_up: Gauge
    database_unavailable: Counter
    deadline_exceeded: Counter
    event_streams_open: Gauge
    events_delivered: Counter
    event_streams_dropped: Counter
    change_stream_lag: Gauge
    change_stream_interruptions: Counter
    rate_limit_refusals: Counter
    login_failures: Counter
    idempotent_replays: Counter
    build_info: Gauge
    _request_series: dict[tuple[str, str, int], BufferedSeries] = field(default_factory=dict)
    _command_series: dict[tuple[str, str], BufferedSeries] = field(default_factory=dict)
    _flusher: asyncio.Task[None] | None = None
    _adding: threading.Lock = field(default_factory=threading.Lock)
    _database_up: bool | None = None

    def __post_init__(self) -> None:
        self.delivered_live = self.events_delivered.labels("live")
        self.delivered_replay = self.events_delivered.labels("replay")

    @classmethod
    def create(cls) -> MetricSet:
        registry = CollectorRegistry(auto_describe=False)

        def counter(name: str, text: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", text, labels, registry=registry)

        def gauge(name: str, text: str, mode: Any, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(
                f"{PREFIX}_{name}", text, labels, registry=registry, multiprocess_mode=mode
            )

        return cls(
            registry=registry,
            requests=Histogram(
                f"{PREFIX}_http_request_duration_seconds",
                "HTTP requests by method, route template and status: time to the response "
                "head (an event stream's first byte); _count is the number of requests.",
                ("method", "route", "status"),
                registry=registry,
                buckets=REQUEST_BUCKETS,
            ),
            database_commands=Histogram(
                f"{PREFIX}_database_command_duration_seconds",
                "MongoDB commands by command name and collection, as the driver timed them.",
                ("command", "collection"),
                registry=registry,
                buckets=DATABASE_BUCKETS,
            ),
            database_failures=counter(
                "database_command_failures",
                "MongoDB commands that failed (server errors and network errors).",
                ("command", "collection"),
            ),
            database_up=gauge(
                "database_up",
                "1 while each worker's last database command or readiness ping succeeded, "
                "0 after one could not reach MongoDB; the minimum over the live workers.",
                "livemin",
            ),
            database_unavailable=counter(
                "database_unavailable",
                "Requests answered 503 because MongoDB could not be reached in time.",
            ),
            deadline_exceeded=counter(
                "request_deadline_exceeded",
                "Requests answered 503 because their database budget "
                "(REQUEST_DEADLINE_MS) was spent.",
            ),
            event_streams_open=gauge(
                "event_streams_open", "Open live-update event streams.", "livesum"
            ),
            events_delivered=counter(
                "events_delivered",
                "Todo change events written to event streams (live, or replayed after "
                "Last-Event-ID).",
                ("phase",),
            ),
            event_streams_dropped=counter(
                "event_streams_dropped",
                "Event streams cut because the client stopped reading (its queue filled up).",
            ),
            change_stream_lag=gauge(
                "change_stream_lag_seconds",
                "How far behind the database's history each worker's change stream was at "
                "its last change (0 once caught up); the maximum over the live workers.",
                "livemax",
            ),
            change_stream_interruptions=counter(
                "change_stream_interruptions",
                "Times a worker's change stream ended and was reopened, by reason.",
                ("reason",),
            ),
            rate_limit_refusals=counter(
                "rate_limit_refusals", "Requests refused 429 by rate-limit rule.", ("rule",)
            ),
            login_failures=counter(
                "login_failures", "Logins refused for a wrong username or password."
            ),
            idempotent_replays=counter(
                "idempotent_replays",
                "Creates answered from an earlier request with the same Idempotency-Key.",
            ),
            build_info=gauge(
                "build_info",
                "Always 1; the labels say what runs: version, driver, environment, Python.",
                "max",
                ("version", "driver", "app_env", "python"),
            ),
        )

    # -- the hot paths ------------------------------------------------------

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        series = self._request_series.get(key)
        if series is None:
            label = method if method in KNOWN_METHODS else "other"
            series = BufferedSeries(self.requests.labels(label, route, str(status)))
            self._request_series[key] = series
        series.observe(seconds)

    def observe_command(self, command: str, collection: str, seconds: float) -> None:
        key = (command, collection)
        series = self._command_series.get(key)
        if series is None:
            with self._adding:  # Motor's threads may meet a new series together
                series = self._command_series.get(key)
                if series is None:
                    series = BufferedSeries(self.database_commands.labels(command, collection))
                    # A new dict: a flush iterating the old one never sees it change.
                    self._command_series = {**self._command_series, key: series}
        series.observe(seconds)

    def database_reached(self, reached: bool) -> None:
        """Record whether MongoDB answered; the shared value is written only when it changes."""
        if reached is not self._database_up:
            self._database_up = reached
            self.database_up.set(1 if reached else 0)

    def flush(self) -> None:
        """Add every buffered observation to the shared values."""
        for series in [*self._request_series.values(), *self._command_series.values()]:
            series.flush()

    async def _flush_every_second(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            self.flush()

    async def start_flushing(self) -> None:
        self._flusher = asyncio.create_task(self._flush_every_second())

    async def stop_flushing(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self.flush()


class CommandMetrics(monitoring.CommandListener):
    """Times every MongoDB command by name and collection (PyMongo's and Motor's clients).

    The collection is known only when the command starts, the duration only
    when it ends: the start keeps the collection under the request id until
    then. Motor calls this from its worker threads; each step here is one
    dict operation, which the GIL makes atomic.
    """

    def __init__(self, metric_set: MetricSet) -> None:
        self._metrics = metric_set
        self._collections: dict[int, str] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        target = event.command.get(COLLECTION_FIELD.get(name, name))
        if len(self._collections) >= MAX_PENDING_COMMANDS:
            self._collections.clear()
        self._collections[event.request_id] = target if isinstance(target, str) else ""

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        collection = self._collections.pop(event.request_id, "")
        self._metrics.observe_command(
            event.command_name, collection, event.duration_micros / 1_000_000
        )
        self._metrics.database_reached(True)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        collection = self._collections.pop(event.request_id, "")
        self._metrics.observe_command(
            event.command_name, collection, event.duration_micros / 1_000_000
        )
        self._metrics.database_failures.labels(event.command_name, collection).inc()


def current() -> MetricSet:
    """The metrics of the app serving this request."""
    metric_set: MetricSet = current_app.extensions["metrics"]
    return metric_set


def count(pick: Callable[[MetricSet], Counter]) -> None:
    """Add one to the current app's counter ``pick`` chooses (for the rare events)."""
    pick(current()).inc()


def count_refusal(rule: str) -> None:
    current().rate_limit_refusals.labels(rule).inc()


def forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of workers that are gone (a crash never says so itself)."""
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        match = LIVE_GAUGE_FILE.fullmatch(os.path.basename(path))
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def exposition(metric_set: MetricSet) -> bytes:
    """The text format: every worker's numbers in multiprocess mode, else this app's."""
    metric_set.flush()
    if multiprocess_mode():
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(metric_set.registry)


def authorised(config: Any, authorization: str) -> bool | None:
    """Whether a scrape may read the metrics; None when the endpoint is off.

    With ``METRICS_TOKEN`` set, only ``Authorization: Bearer <that token>``
    (compared in constant time). Without it, production has no endpoint at
    all and other environments leave it open.
    """
    token: str | None = config["METRICS_TOKEN"]
    if not token:
        return None if config["APP_ENV"] == "production" else True
    scheme, _, offered = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        offered.strip().encode(), token.encode()
    )


#: The classic text format, which every Prometheus version reads (the names are ASCII).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class Metrics:
    """The extension: ``init_app`` gives the app its metric set and the listeners' hooks."""

    def init_app(self, app: Quart, version: str) -> None:
        metric_set = MetricSet.create()
        app.extensions["metrics"] = metric_set
        metric_set.build_info.labels(
            version, app.config["MONGO_DRIVER"], app.config["APP_ENV"], platform.python_version()
        ).set(1)
        app.before_serving(metric_set.start_flushing)
        app.after_serving(metric_set.stop_flushing)
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if multiprocess_mode() and directory:

            async def forget_dead_workers_at_start() -> None:
                forget_dead_workers(directory)

            async def leave() -> None:
                """A worker that stops cleanly takes its live gauges (open streams, lag) along."""
                multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]

            app.before_serving(forget_dead_workers_at_start)
            app.after_serving(leave)
        elif app.config["APP_ENV"] == "production":
            logger.warning(
                "metrics cover this worker only: start the server with hypercorn_conf.py, "
                "which sets PROMETHEUS_MULTIPROC_DIR for every worker"
            )

    @staticmethod
    def listeners(app: Quart) -> list[monitoring._EventListener]:
        """The driver listener that feeds ``app``'s metrics (given to each new client).

        A command listener only: with a topology or server listener, the
        driver runs an events thread that Motor's ``close()`` waits up to a
        second for, and hypercorn ends a worker's siblings as soon as the
        first has stopped, cutting the slower one's shutdown short.
        """
        metric_set: MetricSet = app.extensions["metrics"]
        return [CommandMetrics(metric_set)]
