"""The floor for ``GET /healthz``: a bare Quart app answering a fixed body.

``make bench`` serves it with the same hypercorn command and settings as the
API, so the difference between the two is what the API adds per request.
It is a measuring instrument, not part of the product.
"""

from __future__ import annotations

from quart import Quart, Response

BODY = b'{"status":"ok"}'


def create_app() -> Quart:
    app = Quart(__name__)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(BODY, content_type="application/json")

    return app
