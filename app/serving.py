"""What the hypercorn master does before any worker starts.

Hypercorn loses its workers' exit status (it exits 0 even when a worker fails
to import the app), so a refusal must happen here, in the master, where a
non-zero exit reaches the container runtime. The embedded database is also
started here, once, so that every worker shares one server.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys

from config import ConfigError, check_production_settings, load_settings

from .embedded_db import EmbeddedDatabase
from .logs import build_handler

logger = logging.getLogger("app.serving")

EXIT_CONFIG_REFUSED = 78  # EX_CONFIG from sysexits.h


def prepare_to_serve() -> None:
    """Refuse unsafe settings (exit 78), then start the embedded database if needed."""
    log_format = "json" if os.environ.get("APP_ENV") == "production" else "text"
    logger.handlers[:] = [build_handler(log_format)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        settings = load_settings()
        check_production_settings(settings)
    except ConfigError as error:
        logger.critical("refusing to start: %s", error)
        sys.exit(EXIT_CONFIG_REFUSED)
    if settings["MONGO_URI"]:
        return
    database = EmbeddedDatabase(settings["EMBEDDED_DB_PATH"])
    os.environ["MONGO_URI"] = database.start()
    atexit.register(database.stop)
    logger.info(
        "embedded database (SecantusDB) on port %d, data in %s",
        database.port,
        settings["EMBEDDED_DB_PATH"],
    )
