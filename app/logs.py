"""Logging: readable lines in development, one JSON object per line in production."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

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


def build_handler(log_format: str) -> logging.Handler:
    """A stdout handler writing ``json`` or readable ``text`` lines."""
    handler = logging.StreamHandler(sys.stdout)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def configure_logging(app: Quart) -> None:
    """Send the ``app`` package's logs to stdout in the configured format."""
    package_logger = logging.getLogger("app")
    package_logger.handlers[:] = [build_handler(app.config["LOG_FORMAT"])]
    package_logger.setLevel(app.config["LOG_LEVEL"].upper())
    package_logger.propagate = False
