"""JSON through orjson: fast, strict (no NaN), and one place that fixes the format."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
from quart.json.provider import DefaultJSONProvider


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class OrjsonProvider(DefaultJSONProvider):
    """Set after quart-schema's ``init_app``, which installs its own provider."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, default=_default).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)
