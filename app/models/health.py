"""Schemas of the health probes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Health(BaseModel):
    status: Literal["ok"]


class ReadinessChecks(BaseModel):
    mongo: Literal["ok", "unavailable"]


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: ReadinessChecks
