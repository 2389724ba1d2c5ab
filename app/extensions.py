"""The extension objects, created unbound; ``create_app`` binds each with ``init_app``.

They hold no state of their own: whatever belongs to an app lives on that app
(``app.extensions``, ``app.config``), so many apps can share one process.
"""

from __future__ import annotations

from quart_jwt_extended import JWTManager
from quart_schema import QuartSchema

from .db import Mongo
from .metrics import Metrics
from .openapi import ApiOpenAPIProvider
from .passwords import PasswordHashing

#: The document's info object; GET / repeats its title and version.
API_INFO = {
    "title": "Todo API",
    "version": "1.0.0",
    "description": "Todos with user accounts. Errors are RFC 9457 problem details.",
    # The LICENSE file at the repository's root.
    "license": {"name": "MIT", "identifier": "MIT"},
}

mongo = Mongo()
prometheus = Metrics()
jwt = JWTManager()
schema = QuartSchema(
    info=API_INFO,
    # Relative: the host that served the document is the one to call.
    servers=[{"url": "/", "description": "The server that served this document"}],
    tags=[
        {"name": "meta", "description": "Where to start: links to the docs and probes."},
        {"name": "health", "description": "Liveness and readiness probes."},
        {"name": "auth", "description": "Accounts, sessions and tokens."},
        {"name": "todos", "description": "The caller's todos."},
        {
            "name": "events",
            "description": "Live updates: the caller's todo changes as they happen.",
        },
    ],
    openapi_path="/openapi.json",
    swagger_ui_path=None,
    redoc_ui_path=None,
    scalar_ui_path=None,
    security_schemes={"bearer": {"type": "http", "scheme": "bearer", "bearer_format": "JWT"}},
    openapi_provider_class=ApiOpenAPIProvider,
)
passwords = PasswordHashing()
