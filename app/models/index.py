"""Schema of the index at ``/``."""

from __future__ import annotations

from pydantic import BaseModel, Field


class IndexLinks(BaseModel):
    """Paths of the places to start from: the docs, the probes and the API."""

    docs: str = Field(examples=["/docs"], description="The interactive API explorer.")
    openapi: str = Field(examples=["/openapi.json"], description="The OpenAPI 3.1 document.")
    health: str = Field(examples=["/healthz"], description="Liveness probe.")
    ready: str = Field(examples=["/readyz"], description="Readiness probe.")
    api: str = Field(
        examples=["/api/v1"],
        description=(
            "The API's base path: accounts and tokens under /api/v1/auth (start with POST "
            "/api/v1/auth/register), todos under /api/v1/todos; the OpenAPI document lists "
            "every route."
        ),
    )
    todos: str = Field(examples=["/api/v1/todos"], description="The caller's todos.")
    events: str = Field(
        examples=["/api/v1/todos/events"], description="The caller's todo changes, live."
    )


class Index(BaseModel):
    """What this server is and where to go next."""

    name: str = Field(examples=["Todo API"])
    version: str = Field(examples=["1.0.0"])
    links: IndexLinks
