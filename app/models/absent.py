"""Fields that may be left out but are never null, documented as such.

Pydantic models such a field as ``X | None = None`` and documents it as
"X or null, default null". Clients then have to handle a null that never comes
(a problem's ``errors``) or may send one that is refused (PATCH fields). This
rewrites the named properties to plain ``X`` with no default: optional because
they are not ``required``, and never null.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def drop_null(prop: dict[str, Any]) -> None:
    """Rewrite one property's schema from "X or null, default null" to plain X."""
    variants = [variant for variant in prop.pop("anyOf", []) if variant.get("type") != "null"]
    if variants:
        prop.update(variants[0] if len(variants) == 1 else {"anyOf": variants})
    prop.pop("default", None)


def never_null(*names: str) -> Callable[[dict[str, Any]], None]:
    """A ``json_schema_extra`` hook for a model whose ``names`` may be absent but not null."""

    def rewrite(schema: dict[str, Any]) -> None:
        for name in names:
            drop_null(schema["properties"][name])

    return rewrite
