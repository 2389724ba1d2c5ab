"""One blueprint per resource, and the small response helpers they share."""

from __future__ import annotations

from quart import Response


def no_content() -> Response:
    """A 204 with no body and no content type."""
    response = Response(b"", status=204)
    del response.headers["Content-Type"]
    return response
