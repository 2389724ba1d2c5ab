"""What the hypercorn master does before any worker starts.

Hypercorn loses its workers' exit status (it exits 0 even when a worker fails
to import the app), so a refusal must happen here, in the master, where a
non-zero exit reaches the container runtime: unsafe settings, and in
production a database schema older than this version. The embedded database
is also started here, once, so that every worker shares one server, and the
metrics directory is prepared, which every worker must find in its
environment before it imports prometheus-client.

A start-up failure the master meets is one log line on stderr naming the
cause and the fix, and an exit status of its own; never a traceback:

- ``EXIT_SCHEMA_BEHIND`` (65): in production, the database's schema is older than
  this version (run ``python -m app db upgrade`` first);
- ``EXIT_ADDRESS_IN_USE`` (69): another program listens on the address to serve on;
- ``EXIT_CANNOT_CREATE`` (73): the metrics directory cannot be prepared;
- ``EXIT_DATA_FOLDER_IN_USE`` (75): another server uses the embedded database's folder;
- ``EXIT_CONFIG_REFUSED`` (78): a setting is missing or unsafe.
"""

from __future__ import annotations

import atexit
import errno
import glob
import logging
import os
import resource
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from pymongo.errors import PyMongoError

from config import ConfigError, check_production_settings, load_settings

from . import migrations
from .embedded_db import DataFolderInUse, EmbeddedDatabase
from .logs import build_handler

logger = logging.getLogger("app.serving")

# Status codes from sysexits.h, one per cause, so that scripts can tell them apart.
EXIT_SCHEMA_BEHIND = migrations.EXIT_SCHEMA_BEHIND  # 65, EX_DATAERR: upgrade, then start again
EXIT_ADDRESS_IN_USE = 69  # EX_UNAVAILABLE
EXIT_CANNOT_CREATE = 73  # EX_CANTCREAT: the metrics directory
EXIT_DATA_FOLDER_IN_USE = 75  # EX_TEMPFAIL: it works once the other server has stopped
EXIT_CONFIG_REFUSED = 78  # EX_CONFIG

ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], object]


def prepare_to_serve() -> None:
    """Refuse unsafe settings or an older schema, prepare the metrics directory, start the
    embedded database if needed, report a busy address."""
    log_format = "json" if os.environ.get("APP_ENV") == "production" else "text"
    handler = build_handler(log_format)
    handler.setStream(sys.stderr)  # beside hypercorn's own lines, away from the access log
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        settings = load_settings()
        check_production_settings(settings)
    except ConfigError as error:
        fail(
            EXIT_CONFIG_REFUSED,
            f"refusing to start: {error}. Set it in the environment or in "
            "instance/config.py (docs/configuration.md lists every setting).",
        )
    check_schema(settings)
    try:
        prepare_metrics_directory()
    except OSError as error:
        fail(
            EXIT_CANNOT_CREATE,
            f"cannot start: the metrics directory (PROMETHEUS_MULTIPROC_DIR) cannot be "
            f"prepared: {error}. Point PROMETHEUS_MULTIPROC_DIR at a writable folder.",
        )
    database = None
    if not settings["MONGO_URI"]:
        database = start_embedded_database(settings["EMBEDDED_DB_PATH"])
    sys.excepthook = report_address_in_use(sys.excepthook, database)


def check_schema(settings: Mapping[str, Any]) -> None:
    """In production, refuse a database whose schema is older than this version.

    A database that does not answer is not refused: the workers check when it does.
    """
    if settings["APP_ENV"] != "production":
        return
    try:
        pending = migrations.pending_in(
            settings["MONGO_URI"],
            settings["MONGO_DB"],
            settings["MONGO_SERVER_SELECTION_TIMEOUT_MS"],
        )
    except PyMongoError as error:
        logger.warning(
            "database unreachable at start (%s); the workers check the schema when it answers",
            type(error).__name__,
        )
        return
    if pending:
        fail(EXIT_SCHEMA_BEHIND, f"refusing to start: {migrations.SchemaBehind(pending)}")


def prepare_metrics_directory() -> str:
    """Empty ``PROMETHEUS_MULTIPROC_DIR`` (or make a fresh one) for this server's workers.

    Files left by an earlier run would add its counts to this one's.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for path in glob.glob(os.path.join(directory, "*.db")):
            os.remove(path)
    else:
        directory = tempfile.mkdtemp(prefix="todo-api-metrics-")
        atexit.register(shutil.rmtree, directory, True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


def fail(status: int, message: str) -> NoReturn:
    """One critical line, then exit with ``status`` (atexit handlers run)."""
    logger.critical(message)
    sys.exit(status)


def start_embedded_database(storage_path: str) -> EmbeddedDatabase:
    """Start SecantusDB on ``storage_path``; it stops when the master exits."""
    database = EmbeddedDatabase(storage_path, log_path=Path(f"{storage_path}.log"))
    try:
        os.environ["MONGO_URI"] = database.start()
    except DataFolderInUse:
        fail(
            EXIT_DATA_FOLDER_IN_USE,
            f"cannot start: another server is using the data folder {storage_path} "
            "(is make run already running?). Stop that server, or give this one a "
            "folder of its own with EMBEDDED_DB_PATH.",
        )
    atexit.register(database.stop)
    logger.info(
        "embedded database (SecantusDB) on port %d, data in %s, its log in %s",
        database.port,
        storage_path,
        database.log_path,
    )
    return database


def report_address_in_use(previous: ExceptHook, database: EmbeddedDatabase | None) -> ExceptHook:
    """An except hook that turns hypercorn's failure to bind into one line and its own status.

    Hypercorn's master binds the listening sockets after this file has run, so
    a busy address reaches the top of the process as an ``OSError``; anything
    else goes to the hook that was there before.
    """

    def hook(
        kind: type[BaseException], error: BaseException, trace: TracebackType | None
    ) -> object:
        if not (isinstance(error, OSError) and error.errno == errno.EADDRINUSE):
            return previous(kind, error, trace)
        logger.critical(
            "cannot start: %s is already in use by another program. Stop it, or serve on "
            "another port: make run PORT=8124, or BIND=127.0.0.1:8124 for hypercorn.",
            _failed_address(trace),
        )
        if database is not None:
            database.stop()
        logging.shutdown()
        sys.stdout.flush()
        # An except hook cannot choose the exit status; the database is stopped already.
        os._exit(EXIT_ADDRESS_IN_USE)

    return hook


def _failed_address(trace: TracebackType | None) -> str:
    """``host:port`` hypercorn was binding when it failed, from its frame; else "the address"."""
    for frame, _ in reversed(list(traceback.walk_tb(trace))):
        binding = frame.f_locals.get("binding")
        if isinstance(binding, tuple) and len(binding) >= 2:
            return f"{binding[0]}:{binding[1]}"
    return "the address to serve on"


def raise_open_file_limit() -> int:
    """Lift the soft limit on open files to the hard one; return the new soft limit.

    Every connection is a file descriptor, and the usual soft limit (1,024)
    lets a few thousand idle sockets stop a worker from accepting anyone.
    The hard limit is what the operator allows; the soft one only a default.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            logger.warning("could not raise the open-file limit from %d: %s", soft, error)
            return soft
        logger.info("open-file limit raised from %d to %d", soft, target)
        return target
    return soft
