"""``GET /``: the address ``make run`` prints, answered with pointers instead of a 404."""

from __future__ import annotations

from quart import Blueprint, url_for
from quart_schema import document_response, operation_id, tag

from ..extensions import API_INFO
from ..models.index import Index

blueprint = Blueprint("index", __name__)

#: Every route of the API is below this path (the blueprints' prefixes in ``create_app``).
API_BASE = "/api/v1"


@blueprint.get("/")
@operation_id("get_index")
@tag(["meta"])
@document_response(Index, 200)
async def index() -> dict[str, object]:
    """Where to start: the explorer, the OpenAPI document, the probes and the API."""
    return {
        "name": API_INFO["title"],
        "version": API_INFO["version"],
        "links": {
            "docs": url_for("docs.explorer"),
            "openapi": url_for("openapi"),
            "health": url_for("health.healthz"),
            "ready": url_for("health.readyz"),
            "api": API_BASE,
            "todos": url_for("todos.list_todos"),
            "events": url_for("events.events"),
        },
    }
