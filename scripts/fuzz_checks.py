"""Schemathesis checks of our own, loaded by ``make fuzz`` through SCHEMATHESIS_HOOKS.

``errors_in_the_apis_words``: no problem body names an internal class (the
request and response schemas) or a library under the API, whatever input the
fuzzer made up. Pydantic's messages do by default ("Input should be a valid
dictionary or instance of TodoCreate").
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from functools import cache
from typing import Any
from urllib.parse import unquote_plus

import schemathesis
from pydantic import BaseModel

import app.models

PROBLEM = "application/problem+json"
#: Names of the libraries under the API, and of things only they talk about.
LIBRARY_NAMES = frozenset(
    {"pydantic", "quart", "Quart", "werkzeug", "motor", "pymongo", "bson", "ObjectId", "Traceback"}
)


@cache
def internal_names() -> frozenset[str]:
    """Every schema class in ``app.models``, plus ``LIBRARY_NAMES``."""
    names = set(LIBRARY_NAMES)
    for module_info in pkgutil.iter_modules(app.models.__path__):
        module = importlib.import_module(f"app.models.{module_info.name}")
        names |= {
            name
            for name, value in vars(module).items()
            if isinstance(value, type)
            and issubclass(value, BaseModel)
            and value.__module__ == module.__name__
        }
    return frozenset(names)


def internal_names_in(text: str) -> list[str]:
    """The internal names ``text`` mentions, as whole words."""
    return sorted(name for name in internal_names() if re.search(rf"\b{name}\b", text))


def sent_text(request: Any) -> str:
    """What the client sent in the URL and body, decoded: a 422's ``loc`` echoes it."""
    body = request.body or b""
    body_text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    return unquote_plus(str(request.url)) + body_text


@schemathesis.check
def errors_in_the_apis_words(ctx: Any, response: Any, case: Any) -> None:
    """Fail when a problem body mentions an internal class or library.

    A name the client itself sent (the fuzzer once named a query parameter
    ``pymongo``, and the 422 names the unknown parameter) is an echo, not a leak.
    """
    content_type = response.headers.get("content-type", [""])[0]
    found = internal_names_in(response.text) if content_type.startswith(PROBLEM) else []
    sent = sent_text(response.request) if found else ""
    found = [name for name in found if not re.search(rf"\b{name}\b", sent)]
    if found:
        raise AssertionError(f"problem body names internals {found}: {response.text}")
