"""Problem details (RFC 9457): the project's one exception type and its one renderer.

Code anywhere raises ``ApiError``; framework, schema and driver errors are
translated into it here, so every error a client sees has the same shape,
a stable ``code`` and the request id, and nothing internal leaks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from pydantic import ValidationError
from quart import Quart, Response, current_app, g, request
from quart_schema import RequestSchemaValidationError
from quart_schema.validation import QuerystringValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from .json_provider import json_response

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"

#: The code each plain HTTP status maps to when nothing more specific applies.
CODE_BY_STATUS = {
    400: "malformed_json",
    401: "token_missing",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    412: "version_conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}

VALIDATION_DETAIL = "The request is well-formed but not valid."
#: Details for the framework's own 404 and 405, in this API's words.
NOT_FOUND_DETAIL = (
    "Nothing here. The API lives under /api/v1: GET / links to the explorer (/docs) "
    "and the OpenAPI document."
)
METHOD_NOT_ALLOWED_DETAIL = "This path does not take {method}; the Allow header lists what it does."
#: Pydantic messages that name an internal class, in the API's words instead
#: ("Input should be a valid dictionary or instance of TodoCreate").
MESSAGES_BY_ERROR_TYPE = {
    "model_type": "Input should be a JSON object",
    "model_attributes_type": "Input should be a JSON object",
    "dataclass_type": "Input should be a JSON object",
    "is_instance_of": "Input is of the wrong type",
    "is_subclass_of": "Input is of the wrong type",
}

#: A problem body lists at most this many errors and says how many it left
#: out, so a hostile body cannot make the answer large (3,000 bad tags once
#: gave a 317 KB 422). Names echoed in ``loc`` are cut to a bounded length.
MAX_LISTED_ERRORS = 20
MAX_LOC_PART_CHARS = 64
MAX_MESSAGE_CHARS = 200

Location = Sequence[str | int]


class ApiError(Exception):
    """An error a client is meant to see, rendered as problem+json."""

    def __init__(
        self,
        status: int,
        code: str | None = None,
        detail: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code or CODE_BY_STATUS.get(status, "error")
        self.detail = detail or HTTPStatus(status).description
        self.errors = errors
        self.headers = dict(headers or {})


def validation_error(loc: Location, msg: str) -> ApiError:
    """A 422 about one place in the request, e.g. ``("query", "cursor")``."""
    return ApiError(
        422, "validation_failed", VALIDATION_DETAIL, errors=[{"loc": list(loc), "msg": msg}]
    )


def unauthorized(code: str, detail: str) -> ApiError:
    """A 401 with the RFC 6750 challenge every 401 must carry.

    Token failures say ``error="invalid_token"``; a missing token or wrong
    credentials carry the bare challenge, as RFC 6750 section 3.1 asks.
    """
    challenge = 'Bearer realm="todo-api"'
    if code.startswith("token_") and code != "token_missing":
        challenge += ', error="invalid_token"'
    return ApiError(401, code, detail, headers={"WWW-Authenticate": challenge})


def problem_response(error: ApiError) -> Response:
    """Render an ``ApiError``: the only place a problem body is built."""
    body: dict[str, Any] = {
        "type": current_app.config["PROBLEM_TYPE_BASE"] + error.code,
        "title": HTTPStatus(error.status).phrase,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
        "request_id": g.get("request_id", ""),
    }
    if error.errors is not None:
        body["errors"] = [_bounded(item) for item in error.errors[:MAX_LISTED_ERRORS]]
        if len(error.errors) > MAX_LISTED_ERRORS:
            body["errors_omitted"] = len(error.errors) - MAX_LISTED_ERRORS
    response = json_response(body, error.status, PROBLEM_CONTENT_TYPE)
    response.headers.update(error.headers)
    return response


def _bounded(item: dict[str, Any]) -> dict[str, Any]:
    """One ``errors`` entry with every string cut to its bound."""
    return {
        "loc": [
            part[:MAX_LOC_PART_CHARS] if isinstance(part, str) else part for part in item["loc"]
        ],
        "msg": str(item["msg"])[:MAX_MESSAGE_CHARS],
    }


def _message(item: Mapping[str, Any]) -> str:
    """Pydantic's message for one error, without class names or its "Value error, " prefix."""
    message: str = MESSAGES_BY_ERROR_TYPE.get(item["type"], item["msg"])
    return message.removeprefix("Value error, ")


def _errors_from_pydantic(error: ValidationError, source: str) -> list[dict[str, Any]]:
    """Turn pydantic's error list into ``[{"loc": [...], "msg": ...}]``.

    ``input`` and ``ctx`` are dropped: they echo client data and internals.
    """
    return [
        {"loc": [source, *(str(part) for part in item["loc"])], "msg": _message(item)}
        for item in error.errors(include_url=False, include_input=False, include_context=False)
    ]


async def _handle_api_error(error: ApiError) -> Response:
    return problem_response(error)


async def _handle_schema_error(error: RequestSchemaValidationError) -> Response:
    source = "query" if isinstance(error, QuerystringValidationError) else "body"
    cause = error.validation_error
    if isinstance(cause, ValidationError):
        errors = _errors_from_pydantic(cause, source)
    else:
        errors = [{"loc": [source], "msg": "Invalid input."}]
    return problem_response(ApiError(422, "validation_failed", VALIDATION_DETAIL, errors=errors))


async def _handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    headers: dict[str, str] = {}
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        headers["Allow"] = ", ".join(sorted(error.valid_methods))
    if status == 400:
        detail = "The request body is not valid JSON."
    elif status == 404:
        detail = NOT_FOUND_DETAIL
    elif status == 405:
        detail = METHOD_NOT_ALLOWED_DETAIL.format(method=request.method)
    else:
        detail = HTTPStatus(status).description
    return problem_response(
        ApiError(status, CODE_BY_STATUS.get(status, "error"), detail, headers=headers)
    )


async def handle_unexpected(error: Exception) -> Response:
    logger.error(
        "unhandled error on %s %s (request_id=%s)",
        request.method,
        request.path,
        g.get("request_id", ""),
        exc_info=error,
    )
    return problem_response(ApiError(500, "internal_error", "An unexpected error occurred."))


def init_app(app: Quart) -> None:
    """Register the handlers: every error in the app ends in ``problem_response``."""
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(RequestSchemaValidationError, _handle_schema_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
