"""Live updates: ``/api/v1/todos/events``, the caller's todo changes as they happen."""

from __future__ import annotations

from quart import Blueprint, Response, request
from quart_schema import document_response, operation_id, tag_blueprint, validate_querystring

from ..json_provider import json_response
from ..live import handoff, stream, tickets
from ..models.events import EventsQuery, StreamTicket
from ..openapi import event_stream, problems, request_headers, response_headers
from ..security import current_user, require_access, require_access_or_ticket

blueprint = Blueprint("events", __name__)
tag_blueprint(blueprint, ["events"])


@blueprint.get("")
@operation_id("stream_todo_events")
@require_access_or_ticket
@validate_querystring(EventsQuery)
@event_stream
@response_headers(200, "X-Accel-Buffering")
@request_headers("Last-Event-ID")
@problems(429)
async def events(query_args: EventsQuery) -> Response:
    """Stream the caller's todo changes (Server-Sent Events); see docs/live-updates.md."""
    opened = await stream.open_stream(current_user(), request.headers.get("Last-Event-ID"))
    response = handoff.hand_off(opened)  # the body is written outside Quart
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    return response


@blueprint.post("/tickets")
@operation_id("create_event_ticket")
@require_access
@document_response(StreamTicket, 200)
async def create_ticket() -> Response:
    """A single-use ticket for EventSource, which cannot send an Authorization header."""
    response = json_response(await tickets.issue(current_user()))
    response.headers["Cache-Control"] = "no-store"
    return response
