"""The extension objects, created unbound; ``create_app`` binds each with ``init_app``.

They hold no state of their own: whatever belongs to an app lives on that app
(``app.extensions``, ``app.config``), so many apps can share one process.
"""

from __future__ import annotations

from quart_jwt_extended import JWTManager
from quart_schema import QuartSchema

from .db import Mongo
from .openapi import ApiOpenAPIProvider
from .passwords import PasswordHashing

mongo = Mongo()
jwt = JWTManager()
schema = QuartSchema(
    info={"title": "Todo API", "version": "1.0.0"},
    openapi_path="/openapi.json",
    swagger_ui_path=None,
    redoc_ui_path=None,
    scalar_ui_path=None,
    security_schemes={"bearer": {"type": "http", "scheme": "bearer", "bearer_format": "JWT"}},
    openapi_provider_class=ApiOpenAPIProvider,
)
passwords = PasswordHashing()
