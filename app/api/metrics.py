"""``GET /metrics``: Prometheus's text format, for every worker of this server.

Not part of the API: hidden from the OpenAPI document, like ``/docs``, and in
production answered only to ``Authorization: Bearer <METRICS_TOKEN>``
(docs/operations.md says why a token rather than a separate port).
"""

from __future__ import annotations

from quart import Blueprint, Response, current_app, request
from quart_schema import hide

from .. import metrics
from ..errors import NOT_FOUND_DETAIL, ApiError

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
@hide
async def scrape() -> Response:
    """The metrics; 404 in production without a token, 401 without the right one."""
    allowed = metrics.authorised(current_app.config, request.headers.get("Authorization", ""))
    if allowed is None:
        raise ApiError(404, "not_found", NOT_FOUND_DETAIL)
    if not allowed:
        raise ApiError(
            401,
            "token_invalid",
            "Send the metrics token as 'Authorization: Bearer <METRICS_TOKEN>'.",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    response = Response(metrics.exposition(metrics.current()), content_type=metrics.CONTENT_TYPE)
    response.headers["Cache-Control"] = "no-store"
    return response
