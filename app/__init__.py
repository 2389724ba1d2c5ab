"""The application factory."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quart import Quart

from config import DEFAULT_INSTANCE_PATH, ConfigError, check_production_settings, load_settings

from . import cli, errors, hooks, live, migrations, security
from .api import auth, docs, events, health, index, todos
from .api import metrics as metrics_api
from .extensions import API_INFO, jwt, mongo, passwords, prometheus, schema
from .json_provider import OrjsonProvider
from .logs import configure_logging

logger = logging.getLogger(__name__)


async def create_app(
    config: Mapping[str, Any] | None = None, *, instance_path: Path = DEFAULT_INSTANCE_PATH
) -> Quart:
    """Build the app: settings, extensions, blueprints and error handlers.

    It is ``async`` so callers build it inside their event loop, but it
    creates nothing loop-bound: clients start in ``before_serving``.
    """
    app = Quart(__name__, instance_path=str(instance_path), static_folder=None)
    app.config.update(load_settings(config, instance_path=instance_path))
    # Errors always become problem+json responses, also under TESTING.
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.url_map.strict_slashes = True
    app.url_map.merge_slashes = False  # no redirects: every unknown path is a 404
    configure_logging(app)
    try:
        check_production_settings(app.config)
    except ConfigError as error:
        logger.critical("refusing to start: %s", error)
        raise

    schema.init_app(app)
    app.json = OrjsonProvider(app)  # after quart-schema, which installs its own
    prometheus.init_app(app, str(API_INFO["version"]))
    live.init_app(app)  # before mongo: its streams end before the client closes
    mongo.init_app(app)
    migrations.init_app(app)  # after mongo: it needs the client at start
    passwords.init_app(app)
    security.init_app(app, jwt)
    errors.init_app(app)

    app.register_blueprint(index.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(docs.blueprint)
    app.register_blueprint(metrics_api.blueprint)
    app.register_blueprint(auth.blueprint, url_prefix="/api/v1/auth")
    app.register_blueprint(todos.blueprint, url_prefix="/api/v1/todos")
    app.register_blueprint(events.blueprint, url_prefix="/api/v1/todos/events")
    app.cli.add_command(cli.db)
    return hooks.init_app(app)
