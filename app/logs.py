"""Logging: readable lines in development, one JSON object per line in production."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from quart import Quart

#: Attributes every LogRecord has; anything else was passed in ``extra``.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the ``extra`` fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRIBUTES})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class AccessLog:
    """Writes the access log line straight to the ``app`` logger's handler.

    The line is the one ``logger.info(message, extra=fields)`` would give (the
    JSON keys of ``JsonFormatter``, or the text format). Going through
    logging cost more per request than everything else the hooks do (a
    LogRecord with thread and process names, a look for the caller's frame,
    filters), and the access log is written on every request.
    """

    NAME = "app.access"

    def __init__(self, log_format: str, handler: logging.StreamHandler[Any]) -> None:
        self._json = log_format == "json"
        self._handler = handler
        self._logger = logging.getLogger(self.NAME)

    def write(self, message: str, fields: dict[str, Any]) -> None:
        """Write one INFO line, if INFO is enabled for ``app.access``."""
        if not self._logger.isEnabledFor(logging.INFO):
            return
        now = time.time()
        if self._json:
            entry = {
                "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
                "level": "INFO",
                "logger": self.NAME,
                "message": message,
                **fields,
            }
            line = orjson.dumps(entry, default=str).decode()
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            line = f"{stamp},{int(now * 1000) % 1000:03d} INFO {self.NAME}: {message}"
        with self._handler.lock or contextlib.nullcontext():
            self._handler.stream.write(line + "\n")
            self._handler.flush()


def build_handler(log_format: str) -> logging.StreamHandler[Any]:
    """A stdout handler writing ``json`` or readable ``text`` lines."""
    handler = logging.StreamHandler(sys.stdout)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(app: Quart) -> None:
    """Send the ``app`` package's logs to stdout in the configured format; the
    access log writes to the same handler."""
    handler = build_handler(app.config["LOG_FORMAT"])
    package_logger = logging.getLogger("app")
    package_logger.handlers[:] = [handler]
    package_logger.setLevel(app.config["LOG_LEVEL"].upper())
    package_logger.propagate = False
    app.extensions["access_log"] = AccessLog(app.config["LOG_FORMAT"], handler)
