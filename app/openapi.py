"""The OpenAPI document: quart-schema's, completed with what clients need.

quart-schema documents the request and success schemas a route declares.
This provider adds the rest from facts the routes already state: every
problem+json error a route can return (derived from its auth, body, query
and path, plus the extra statuses it names with ``@problems``), response
headers, conditional request headers, and named schema components instead of
inlined copies. It then shapes the document the way client generators and
linters read it: request bodies required, query parameters required when the
model says so and never "or null", defaults of request bodies in prose (a
default there makes TypeScript generators require the field), public
operations marked ``security: []``, summaries as plain text, and no component
that nothing uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any, TypeVar

from quart_schema import OpenAPIProvider
from quart_schema.openapi import QUART_SCHEMA_OPERATION_ID_ATTRIBUTE
from quart_schema.validation import (
    QUART_SCHEMA_QUERYSTRING_ATTRIBUTE,
    QUART_SCHEMA_REQUEST_ATTRIBUTE,
)
from werkzeug.routing import Rule

from .errors import PROBLEM_CONTENT_TYPE
from .models.absent import drop_null
from .models.events import DeletedEvent, ExpiredEvent, ResetEvent, RevokedEvent, ShutdownEvent
from .models.problem import Problem

F = TypeVar("F", bound=Callable[..., Any])

PROBLEMS_ATTRIBUTE = "_api_problems"
RESPONSE_HEADERS_ATTRIBUTE = "_api_response_headers"
REQUEST_HEADERS_ATTRIBUTE = "_api_request_headers"

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id: the client's X-Request-ID when sane, else a fresh one.",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
    },
    "ETag": {
        "description": 'Strong tag of the todo\'s version, e.g. "3".',
        "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
    },
    "Location": {
        "description": "Path of the created todo.",
        "schema": {"type": "string", "pattern": "^/api/v1/todos/[0-9a-f]{24}$"},
    },
    "Retry-After": {
        "description": "Whole seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "WWW-Authenticate": {
        "description": "Bearer challenge (RFC 6750).",
        "schema": {"type": "string"},
    },
    # Sent by app/hooks.py on every response (Cache-Control: under /api/v1 only).
    "Cache-Control": {
        "description": (
            "Under /api/v1: `private, no-cache` on a response with an ETag (keep, revalidate), "
            "`no-store` on everything else."
        ),
        "schema": {"type": "string", "enum": ["private, no-cache", "no-store"]},
    },
    # Sent by app/hooks.py with every ETag (a private response) under /api/v1.
    "Vary": {
        "description": "`Authorization`: a private cache keeps one copy per caller.",
        "schema": {"type": "string"},
    },
    "X-Content-Type-Options": {"schema": {"type": "string", "const": "nosniff"}},
    "Referrer-Policy": {"schema": {"type": "string", "const": "no-referrer"}},
    "Content-Security-Policy": {
        "description": "On JSON bodies: nothing in them may load or run.",
        "schema": {"type": "string"},
    },
    "X-Accel-Buffering": {
        "description": "`no`: tells nginx-style proxies not to buffer the event stream.",
        "schema": {"type": "string", "const": "no"},
    },
    "Idempotent-Replayed": {
        "description": "Present (`true`) when the response answers a repeat of an "
        "Idempotency-Key: the todo was created by an earlier request and is shown as it is now.",
        "schema": {"type": "string", "enum": ["true"]},
    },
}
#: Headers every response carries (app/hooks.py), and those of responses with a JSON body.
COMMON_HEADERS = ["X-Request-ID", "Cache-Control", "X-Content-Type-Options", "Referrer-Policy"]
BODY_HEADERS = ["Content-Security-Policy"]
REQUEST_HEADERS: dict[str, dict[str, Any]] = {
    "Idempotency-Key": {
        "description": "Optional. 1 to 255 visible ASCII characters, one per intended todo, "
        "scoped to "
        "the user and remembered for 24 hours. A repeat with the same body answers 201 with "
        "the same todo (its current ETag) and `Idempotent-Replayed: true`, or 404 (also "
        "replayed) when that todo was deleted since; with another body 422 "
        "`idempotency_key_reused`; while the first attempt still runs 409 "
        "`idempotency_key_in_progress` with Retry-After.",
        "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
    },
    "If-Match": {
        "description": (
            "Optional. Act only if the todo's ETag is listed (strong comparison), or `*`. "
            'Tags are quoted: `"3"`.'
        ),
        "schema": {"type": "string"},
    },
    "If-None-Match": {
        "description": (
            "Optional. Answer 304 if the todo's ETag is listed (weak comparison), or `*`. "
            'Tags are quoted: `"3"`.'
        ),
        "schema": {"type": "string"},
    },
    "Last-Event-ID": {
        "description": (
            "Optional. The `id` of the last event received: every later event is replayed, "
            "or `reset` is sent when that position cannot be resumed."
        ),
        "schema": {"type": "string", "maxLength": 2048},
    },
}
#: Headers each problem status always carries besides X-Request-ID.
PROBLEM_HEADERS = {
    401: ["WWW-Authenticate"],
    412: ["ETag", "Vary"],
    429: ["Retry-After"],
    503: ["Retry-After"],
}
#: Every problem ``code`` the API answers with: its status and when. The document
#: carries the list (``x-problem-codes``) and each error status's response names
#: its codes; docs/api.md explains each one (tests/test_api_reference.py keeps
#: the code, the document and the page in step).
PROBLEM_CODES: dict[str, tuple[int, str]] = {
    "malformed_json": (400, "The body is not valid JSON, or not valid UTF-8."),
    "token_missing": (401, "No `Authorization: Bearer <token>` header."),
    "token_invalid": (
        401,
        "The token is unreadable, tampered with, or signed with another key or algorithm; "
        "or the event-stream ticket is unknown, used or expired.",
    ),
    "token_expired": (401, "The token is past its expiry: refresh the access token."),
    "token_wrong_type": (401, "A refresh token where an access token belongs, or the reverse."),
    "token_revoked": (
        401,
        "The session has ended: logout, password change, refresh-token reuse, deleted account.",
    ),
    "invalid_credentials": (401, "Wrong username or password (one answer for both)."),
    "not_found": (
        404,
        "No such route, or no such todo of the caller (another user's and a malformed id alike).",
    ),
    "method_not_allowed": (405, "The path does not take this method; `Allow` lists those it does."),
    "username_taken": (409, "The username exists, in any case."),
    "quota_exceeded": (409, "The caller already holds as many todos as allowed."),
    "idempotency_key_in_progress": (
        409,
        "The first request with this Idempotency-Key may still be running; retry after "
        "`Retry-After`.",
    ),
    "version_conflict": (
        412,
        "If-Match names no current version of the todo (or no quoted tag); `ETag` is the current.",
    ),
    "payload_too_large": (413, "The body is larger than the limit (64 KiB by default)."),
    "unsupported_media_type": (415, "A non-empty body that is not `application/json`."),
    "validation_failed": (422, "Well-formed but invalid input; `errors` says where and why."),
    "idempotency_key_reused": (
        422,
        "This Idempotency-Key was used before with another body.",
    ),
    "rate_limited": (429, "Too many attempts or open event streams; retry after `Retry-After`."),
    "internal_error": (500, "An unexpected error; it is logged with the request id."),
    "service_unavailable": (
        503,
        "The database is unreachable, or the request's database time ran out; retry after "
        "`Retry-After`.",
    ),
    "live_updates_unavailable": (
        503,
        "The event stream needs a database with change streams (a replica set).",
    ),
}
#: The error statuses operations document, each a named response listing its codes.
PROBLEM_STATUSES = sorted({status for status, _ in PROBLEM_CODES.values()} - {405})


def _problem_description(status: int) -> str:
    codes = [f"`{code}`: {when}" for code, (of, when) in PROBLEM_CODES.items() if of == status]
    return f"{HTTPStatus(status).phrase}. " + " ".join(codes)


EVENT_STREAM_ATTRIBUTE = "_api_event_stream"
EVENT_STREAM_TYPE = "text/event-stream"
#: Each event of the live stream and the named schema of its ``data:`` JSON.
STREAM_EVENTS = {
    "created": ("Todo", "A todo was created: the todo as GET /api/v1/todos/{id} returns it."),
    "updated": ("Todo", "A todo changed: the todo as GET /api/v1/todos/{id} returns it."),
    "deleted": ("DeletedEvent", "A todo was deleted (one event per todo when clearing)."),
    "reset": ("ResetEvent", "Events were missed: refetch the list, then follow the stream."),
    "revoked": ("RevokedEvent", "The session closed; the stream ends."),
    "expired": ("ExpiredEvent", "The access token expired; the stream ends."),
    "shutdown": ("ShutdownEvent", "The server is stopping; the stream ends."),
}
#: Blueprints whose routes answer without the database (so never 503 for it).
DATABASE_FREE_BLUEPRINTS = frozenset({"health", "index"})
REF = re.compile(r"^#/components/(\w+)/(.+)$")


def _add_to(attribute: str, values: tuple[Any, ...]) -> Callable[[F], F]:
    def decorator(func: F) -> F:
        setattr(func, attribute, (*getattr(func, attribute, ()), *values))
        return func

    return decorator


def problems(*statuses: int) -> Callable[[F], F]:
    """Document error statuses a route returns beyond those derived from its shape."""
    return _add_to(PROBLEMS_ATTRIBUTE, statuses)


def response_headers(status: int, *names: str) -> Callable[[F], F]:
    """Document headers (from ``HEADERS``) that a route's ``status`` response carries.

    With no names it declares a bodiless response, such as a 204 or a 304.
    """
    return _add_to(RESPONSE_HEADERS_ATTRIBUTE, ((status, names),))


def request_headers(*names: str) -> Callable[[F], F]:
    """Document conditional request headers (from ``REQUEST_HEADERS``) a route honours."""
    return _add_to(REQUEST_HEADERS_ATTRIBUTE, names)


def event_stream(func: F) -> F:
    """Document the route's 200 as the live ``text/event-stream`` (see ``STREAM_EVENTS``)."""
    setattr(func, EVENT_STREAM_ATTRIBUTE, True)
    return func


def _stream_event_schema(name: str, data_schema: str, description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {
            "event": {"const": name},
            "id": {
                "type": "string",
                "description": "Send it back as Last-Event-ID to resume after this event.",
            },
            "data": {**_ref("schemas", data_schema), "description": "The JSON of the data line."},
        },
        "required": ["event", "id", "data"],
    }


def _stream_response() -> dict[str, Any]:
    return {
        "description": (
            "The live stream (Server-Sent Events): a retry line, then events as `id:`, "
            "`event:` and one JSON `data:` line, and a comment line as a heartbeat. The "
            "schema describes one event; its `data` is the named component."
        ),
        "content": {EVENT_STREAM_TYPE: {"schema": _ref("schemas", "StreamEvent")}},
    }


def _stream_schemas() -> dict[str, Any]:
    """The named schemas of the event stream: one per event and their union."""
    schemas: dict[str, Any] = {
        model.__name__: model.model_json_schema(ref_template="#/components/schemas/{model}")
        for model in (DeletedEvent, ResetEvent, RevokedEvent, ExpiredEvent, ShutdownEvent)
    }
    variants = {
        f"{name.capitalize()}StreamEvent": _stream_event_schema(name, data, description)
        for name, (data, description) in STREAM_EVENTS.items()
    }
    schemas.update(variants)
    schemas["StreamEvent"] = {
        "description": "One event of GET /api/v1/todos/events.",
        "oneOf": [_ref("schemas", name) for name in variants],
    }
    return schemas


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _header_refs(*name_lists: Any) -> dict[str, dict[str, str]]:
    """References to the named header components, in order, each once."""
    return {name: _ref("headers", name) for names in name_lists for name in names}


def _refs(node: Any) -> Iterator[tuple[str, str]]:
    """Every (kind, name) that ``node`` refers to, at any depth."""
    if isinstance(node, dict):
        match = REF.match(node.get("$ref", ""))
        if match:
            yield match.group(1), match.group(2)
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _boolean_when_true_or_false(schema: dict[str, Any]) -> None:
    """A string schema of ``true``/``false`` only becomes a boolean (``const`` kept)."""
    values = schema.get("enum", [schema["const"]] if "const" in schema else [])
    if schema.get("type") != "string" or not values or not set(values) <= {"true", "false"}:
        return
    schema.pop("enum", None)
    schema.pop("const", None)
    schema["type"] = "boolean"
    if len(set(values)) == 1:
        schema["const"] = values[0] == "true"


def _plain(text: str) -> str:
    """A summary as plain text: Swagger UI and generators show backticks literally."""
    return text.replace("`", "")


def _markdown(text: str) -> str:
    """Docstrings use reStructuredText's ``x``; descriptions are Markdown's `x`."""
    return text.replace("``", "`")


class ApiOpenAPIProvider(OpenAPIProvider):
    """Builds the complete document; plugged in as quart-schema's provider class."""

    def schema(self) -> dict[str, Any]:
        spec = super().schema()
        components = spec["components"]
        components["schemas"]["Problem"] = Problem.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        components["schemas"].update(components["schemas"]["Problem"].pop("$defs", {}))
        components["schemas"].update(_stream_schemas())
        components["headers"] = HEADERS
        spec["x-problem-codes"] = {
            code: {"status": status, "description": when}
            for code, (status, when) in PROBLEM_CODES.items()
        }
        components["responses"] = {
            self._problem_name(status): {
                "description": _problem_description(status),
                "headers": _header_refs(
                    COMMON_HEADERS, BODY_HEADERS, PROBLEM_HEADERS.get(status, [])
                ),
                "content": {PROBLEM_CONTENT_TYPE: {"schema": _ref("schemas", "Problem")}},
            }
            for status in PROBLEM_STATUSES
        }
        for schema in components["schemas"].values():
            if "description" in schema:
                schema["description"] = _markdown(schema["description"])
        self._defaults_in_prose(spec)
        self._drop_unused_components(spec)
        return spec

    @staticmethod
    def _problem_name(status: int) -> str:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "")

    @staticmethod
    def _defaults_in_prose(spec: dict[str, Any]) -> None:
        """Move the defaults of request body schemas into their descriptions.

        openapi-typescript (default options) types a component property with a
        ``default`` as always present, which is true of responses only: a
        title-only create body would not compile. A null default just means
        "optional" and goes; a real one is kept for people, in words.
        """
        schemas = spec["components"]["schemas"]
        bodies = [
            operation["requestBody"]
            for path in spec["paths"].values()
            for operation in path.values()
            if "requestBody" in operation
        ]
        for _, name in _refs(bodies):
            for prop in schemas[name].get("properties", {}).values():
                default = prop.pop("default", None)
                if default is not None:
                    described = (
                        f"{prop.get('description', '')} Defaults to `{json.dumps(default)}`."
                    )
                    prop["description"] = described.strip()

    @staticmethod
    def _drop_unused_components(spec: dict[str, Any]) -> None:
        """Keep only the components the paths reach, directly or through other components."""
        components = spec["components"]
        reached: set[tuple[str, str]] = set()
        pending = list(_refs(spec["paths"]))
        while pending:
            kind, name = pending.pop()
            if (kind, name) not in reached:
                reached.add((kind, name))
                pending.extend(_refs(components[kind][name]))
        for kind in ("schemas", "responses", "headers"):
            components[kind] = {
                name: value for name, value in components[kind].items() if (kind, name) in reached
            }

    def operation_id(self, method: str, path: str, func: Callable[..., Any]) -> str | None:
        """The route's own ``@operation_id`` as it is (quart-schema prefixes the method).

        Generated clients name their functions after it: ``get_todo``, not
        ``get_get_todo``. A route without one gets none (a test requires one).
        """
        explicit: str | None = getattr(func, QUART_SCHEMA_OPERATION_ID_ATTRIBUTE, None)
        return explicit

    def build_querystring_parameters(
        self, model: type[Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Query parameters as a client sends them: required per the model, never null.

        A query string cannot carry null, so "X or null, default null" is just
        an optional X. A parameter whose only values are ``true`` and ``false``
        is a boolean to clients (they send it lower-case, as the model requires).
        """
        parameters, definitions = super().build_querystring_parameters(model)
        for parameter in parameters:
            field = model.model_fields[parameter["name"]]
            parameter["schema"].pop("title", None)
            if field.is_required():
                parameter["required"] = True
            elif field.default is None:
                drop_null(parameter["schema"])
            _boolean_when_true_or_false(parameter["schema"])
        return parameters, definitions

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        func = self._app.view_functions[rule.endpoint]
        for operations in paths.values():
            for operation in operations.values():
                operation["responses"] = {
                    str(status): response for status, response in operation["responses"].items()
                }
                if getattr(func, EVENT_STREAM_ATTRIBUTE, False):
                    operation["responses"]["200"] = _stream_response()
                self._describe(operation)
                self._name_schemas(operation, components)
                self._add_headers(operation, func)
                for status in self._problem_statuses(rule, func, operation):
                    operation["responses"][str(status)] = _ref(
                        "responses", self._problem_name(status)
                    )
                operation["responses"] = dict(sorted(operation["responses"].items()))
                if "requestBody" in operation:
                    operation["requestBody"]["required"] = True
                # Public operations say so; otherwise a global default could apply.
                operation.setdefault("security", [])
        return paths, components

    @staticmethod
    def _describe(operation: dict[str, Any]) -> None:
        """Summaries as plain text, descriptions as Markdown, none left empty."""
        if "summary" in operation:
            operation["summary"] = _plain(operation["summary"])
        description = _markdown(operation.pop("description", "")).strip()
        if description:
            operation["description"] = description
        for response in operation["responses"].values():
            # A model's docstring: its first paragraph describes the response.
            first = response.get("description", "").split("\n\n")[0]
            response["description"] = _markdown(" ".join(first.split()))

    @staticmethod
    def _name_schemas(operation: dict[str, Any], components: dict[str, Any]) -> None:
        """Move inlined model schemas into named components and refer to them."""
        bodies = [operation.get("requestBody", {}), *operation["responses"].values()]
        for body in bodies:
            for media in body.get("content", {}).values():
                schema = media.get("schema", {})
                if "title" in schema and schema.get("type") == "object":
                    components[schema["title"]] = schema
                    media["schema"] = _ref("schemas", schema["title"])

    @staticmethod
    def _add_headers(operation: dict[str, Any], func: Callable[..., Any]) -> None:
        responses = operation["responses"]
        for status, _ in getattr(func, RESPONSE_HEADERS_ATTRIBUTE, ()):
            responses.setdefault(str(status), {"description": HTTPStatus(status).phrase})
        named: dict[str, list[str]] = {}
        for status, names in getattr(func, RESPONSE_HEADERS_ATTRIBUTE, ()):
            named.setdefault(str(status), []).extend(names)
        for status_code, response in responses.items():
            response["description"] = (
                response.get("description") or HTTPStatus(int(status_code)).phrase
            )
            names = named.get(status_code, [])
            response["headers"] = _header_refs(
                COMMON_HEADERS,
                BODY_HEADERS if set(response.get("content", {})) - {EVENT_STREAM_TYPE} else [],
                [*names, "Vary"] if "ETag" in names else names,
            )
        for name in getattr(func, REQUEST_HEADERS_ATTRIBUTE, ()):
            operation["parameters"].append({"name": name, "in": "header", **REQUEST_HEADERS[name]})

    @staticmethod
    def _problem_statuses(
        rule: Rule, func: Callable[..., Any], operation: dict[str, Any]
    ) -> set[int]:
        statuses = {500, *getattr(func, PROBLEMS_ATTRIBUTE, ())}
        if rule.endpoint.split(".")[0] not in DATABASE_FREE_BLUEPRINTS:
            statuses.add(503)
        if getattr(func, QUART_SCHEMA_REQUEST_ATTRIBUTE, None) is not None:
            statuses |= {400, 413, 415, 422}
        if getattr(func, QUART_SCHEMA_QUERYSTRING_ATTRIBUTE, None) is not None:
            statuses.add(422)
        if operation.get("security"):
            statuses.add(401)
        if rule.arguments:
            statuses.add(404)
        return statuses
