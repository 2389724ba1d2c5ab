"""Schema of the index at ``/``."""

from __future__ import annotations

from pydantic import BaseModel, Field


class IndexLinks(BaseModel):
    """Paths of the places to start from."""

    docs: str = Field(examples=["/docs"], description="The interactive API explorer.")
    openapi: str = Field(examples=["/openapi.json"], description="The OpenAPI 3.1 document.")
    health: str = Field(examples=["/healthz"], description="Liveness probe.")
    ready: str = Field(examples=["/readyz"], description="Readiness probe.")


class Index(BaseModel):
    """What this server is and where to go next."""

    name: str = Field(examples=["Todo API"])
    version: str = Field(examples=["1.0.0"])
    links: IndexLinks
