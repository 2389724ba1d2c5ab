"""Schemas of the live updates: the ticket, the stream's query and each event's data.

The stream itself is ``text/event-stream``; these models name the JSON in
each event's ``data:`` line so the OpenAPI document can show them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class EventsQuery(BaseModel):
    """``?ticket=`` replaces the Authorization header for EventSource."""

    model_config = ConfigDict(extra="forbid")

    ticket: Annotated[str, Field(min_length=1, max_length=128)] | None = None


class StreamTicket(BaseModel):
    """A single-use ticket for ``GET /api/v1/todos/events?ticket=...``."""

    ticket: str
    expires_in: int = Field(description="Seconds the ticket stays valid (it works once).")


class DeletedEvent(BaseModel):
    """Data of a `deleted` event: the todo's id and the version it had."""

    id: str = Field(pattern=r"^[0-9a-f]{24}$")
    version: int = Field(ge=1)


class ResetEvent(BaseModel):
    """Data of a `reset` event (`{}`): events were missed; refetch the list."""

    model_config = ConfigDict(extra="forbid")


class RevokedEvent(BaseModel):
    """Data of a `revoked` event (`{}`): the session closed; the stream ends. Log in again."""

    model_config = ConfigDict(extra="forbid")


class ExpiredEvent(BaseModel):
    """Data of an `expired` event (`{}`): the access token expired; reconnect with a fresh one."""

    model_config = ConfigDict(extra="forbid")


class ShutdownEvent(BaseModel):
    """Data of a `shutdown` event (`{}`): the server is stopping; reconnect with Last-Event-ID."""

    model_config = ConfigDict(extra="forbid")
