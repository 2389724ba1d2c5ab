"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from quart import Blueprint, Response
from quart_schema import document_response, operation_id, tag

from ..extensions import mongo
from ..json_provider import json_response
from ..models.health import Health, Readiness

blueprint = Blueprint("health", __name__)

READINESS_TIMEOUT_SECONDS = 2.0


@blueprint.get("/healthz")
@operation_id("get_health")
@tag(["health"])
@document_response(Health, 200)
async def healthz() -> Response:
    """Liveness: the process answers. Touches no database."""
    return json_response({"status": "ok"})


@blueprint.get("/readyz")
@operation_id("get_readiness")
@tag(["health"])
@document_response(Readiness, 200)
@document_response(Readiness, 503)
async def readyz() -> Response:
    """Readiness: the database answers a ping within 2 s."""
    ready = await mongo.is_ready(READINESS_TIMEOUT_SECONDS)
    state = "ok" if ready else "unavailable"
    return json_response({"status": state, "checks": {"mongo": state}}, 200 if ready else 503)
