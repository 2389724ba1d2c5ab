"""Schemas of the health probes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Health(BaseModel):
    """The process answers."""

    status: Literal["ok"]


class ReadinessChecks(BaseModel):
    """The state of each dependency."""

    mongo: Literal["ok", "unavailable"]


class Readiness(BaseModel):
    """Whether the server can take traffic: unavailable while the database does not answer."""

    status: Literal["ok", "unavailable"]
    checks: ReadinessChecks
