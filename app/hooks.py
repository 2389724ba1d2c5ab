"""Request-wide behaviour: request ids, trace context, body checks, security headers,
the access log and the request metrics.

The body checks run before routing and authentication, which gives the
contract's precedence for faults: 413, then 415, then 400, then the route.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time

import orjson
from quart import Quart, Response, current_app, g, request
from quart_cors import cors
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestTimeout

from . import metrics
from .errors import PROBLEM_CONTENT_TYPE, ApiError
from .logs import AccessLog

SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: W3C Trace Context, section 3.2: version, trace id, parent id, flags, in lowercase
#: hex. A later version may append fields after another "-"; version ff is invalid.
TRACEPARENT = re.compile(
    r"(?!ff)([0-9a-f]{2})-(?!0{32})([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-.*)?"
)
JSON_CSP = "default-src 'none'; frame-ancestors 'none'"
API_PREFIX = "/api/"
JSON_TYPES = frozenset({"application/json", PROBLEM_CONTENT_TYPE})
EXPOSED_HEADERS = [
    "ETag",
    "Location",
    "Retry-After",
    "X-Request-ID",
    "WWW-Authenticate",
    "Idempotent-Replayed",
]


def _has(headers: Headers, name: str) -> bool:
    """Whether ``name`` is present. Not ``in``, ``get`` or ``setdefault``: for a
    missing header werkzeug raises and catches a ``BadRequestKeyError`` (an
    HTTPException), which cost 3-4 % of a request's CPU in these hooks."""
    return bool(headers.getlist(name))


async def assign_request_id() -> None:
    """Echo the client's ``X-Request-ID`` when it is a sane token, else make one
    (128 random bits, as hex)."""
    g.started_at = time.perf_counter()
    offered = request.headers.getlist("X-Request-ID")
    sane = offered and SANE_REQUEST_ID.fullmatch(offered[0])
    g.request_id = offered[0] if sane else secrets.token_hex(16)
    g.trace_id = trace_id(request.headers.getlist("traceparent"))


def trace_id(traceparent: list[str]) -> str | None:
    """The trace id of a valid ``traceparent`` header, else None.

    Per the specification: exactly one header; version 00 has exactly four
    fields; a later version is read by its first four fields; an all-zero
    trace or parent id, version ff and upper-case hex make it invalid.
    """
    if len(traceparent) != 1:
        return None
    match = TRACEPARENT.fullmatch(traceparent[0].strip(" \t"))
    if match is None or (match.group(1) == "00" and match.group(3) is not None):
        return None
    return match.group(2)


async def _body() -> bytes:
    """The whole request body, waited for at most the request's body timeout.

    ``request.get_data`` does the same through ``asyncio.wait_for``, which
    starts a task on every call: about 3 % of a small request's CPU, paid by
    every request here. ``asyncio.timeout`` starts none.
    """
    try:
        async with asyncio.timeout(request.body_timeout):
            data: bytes = await request.body
    except TimeoutError:
        raise RequestTimeout() from None
    return data


async def check_body() -> None:
    """Refuse oversized, non-JSON and malformed bodies before anything reads them."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"The body is larger than {limit} bytes.")
    body = await _body()  # raises 413 while counting a chunked body
    if not body:
        return
    if request.mimetype != "application/json":
        raise ApiError(
            415, "unsupported_media_type", "Send the body as Content-Type: application/json."
        )
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(
            400, "malformed_json", "The body is not valid JSON (or not valid UTF-8)."
        ) from None


def _cache_policy(response: Response) -> str:
    """What caches may keep of an API response: a user's data never goes to a shared
    cache. A todo with an ETag may be kept privately and revalidated (304s); tokens,
    lists and errors are not stored at all (RFC 6749 section 5.1 for tokens)."""
    if _has(response.headers, "ETag"):
        return "private, no-cache"
    return "no-store"


async def finish_response(response: Response) -> Response:
    """Add the request id and security headers, and write the access log line."""
    request_id = g.get("request_id", "")
    headers = response.headers
    headers["X-Request-ID"] = request_id
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    # The media type without parameters; cheaper than parsing ``response.mimetype``.
    media_type = (response.content_type or "").partition(";")[0]
    if media_type in JSON_TYPES and not _has(headers, "Content-Security-Policy"):
        headers["Content-Security-Policy"] = JSON_CSP
    path = request.path
    if path.startswith(API_PREFIX) and not _has(headers, "Cache-Control"):
        policy = headers["Cache-Control"] = _cache_policy(response)
        if policy.startswith("private"):
            # A private cache keyed by URL alone would show one user's copy to the next.
            headers["Vary"] = ", ".join([*headers.getlist("Vary"), "Authorization"])
    _log_access(path, response.status_code, request_id)
    return response


def _log_access(path: str, status: int, request_id: str) -> None:
    """The access log line and the request's metrics (by route template, never the path)."""
    seconds = time.perf_counter() - g.get("started_at", time.perf_counter())
    duration_ms = round(seconds * 1000, 2)
    method = request.method
    rule = request.url_rule
    extensions = current_app.extensions
    metric_set: metrics.MetricSet = extensions["metrics"]
    metric_set.observe_request(
        method, metrics.UNMATCHED if rule is None else rule.rule, status, seconds
    )
    trace = g.get("trace_id")
    message = f"{method} {path} {status} {duration_ms:.2f}ms request_id={request_id}"
    access_log: AccessLog = extensions["access_log"]
    access_log.write(
        message if trace is None else f"{message} trace_id={trace}",
        {
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "request_id": request_id,
            "trace_id": trace,
        },
    )


def init_app(app: Quart) -> Quart:
    """Register the hooks (order matters: the request id comes first) and CORS."""
    app.before_request(assign_request_id)
    app.before_request(check_body)
    app.after_request(finish_response)
    origins = [origin.strip() for origin in app.config["CORS_ORIGINS"].split(",") if origin.strip()]
    if origins:
        app = cors(
            app,
            allow_origin=origins,
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "If-Match",
                "If-None-Match",
                "Last-Event-ID",  # an EventSource reconnecting sends it
                "X-Request-ID",
            ],
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
    return app
