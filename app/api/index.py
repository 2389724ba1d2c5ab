"""``GET /``: the address ``make run`` prints, answered with pointers instead of a 404."""

from __future__ import annotations

from quart import Blueprint, url_for
from quart_schema import document_response, tag

from ..extensions import API_INFO
from ..models.index import Index

blueprint = Blueprint("index", __name__)


@blueprint.get("/")
@tag(["meta"])
@document_response(Index, 200)
async def index() -> dict[str, object]:
    """Where to start: the explorer, the OpenAPI document and the probes."""
    return {
        "name": API_INFO["title"],
        "version": API_INFO["version"],
        "links": {
            "docs": url_for("docs.explorer"),
            "openapi": url_for("openapi"),
            "health": url_for("health.healthz"),
            "ready": url_for("health.readyz"),
        },
    }
