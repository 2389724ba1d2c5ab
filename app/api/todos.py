"""Todos: ``/api/v1/todos``. Every route acts on the caller's todos only."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from bson import ObjectId
from quart import Blueprint, Response, request, url_for
from quart_schema import (
    document_response,
    operation_id,
    tag_blueprint,
    validate_querystring,
    validate_request,
)

from .. import idempotency, todo_service
from ..errors import validation_error
from ..json_provider import json_response
from ..models.todos import (
    ClearCompletedQuery,
    Deleted,
    ListQuery,
    Todo,
    TodoCreate,
    TodoPage,
    TodoPatch,
    todo_json,
)
from ..openapi import problems, request_headers, response_headers
from ..security import current_user, require_access
from ..todo_service import IfMatch, etag
from . import no_content

blueprint = Blueprint("todos", __name__)
tag_blueprint(blueprint, ["todos"])

OBJECT_ID = re.compile(r"[0-9a-f]{24}")
# RFC 9110 section 8.8.3: an entity tag is quoted; list elements are split on
# commas outside quotes. Our tags are versions: decimal, no leading zero.
ENTITY_TAG = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')
LIST_ELEMENT = re.compile(r'(?:[^,"]|"[^"]*")+')
# At most 18 digits: any version a todo can reach, and never an integer too
# long for Python to parse (``If-Match: "<4,301 nines>"`` was a 500).
VERSION = re.compile(r"[1-9][0-9]{0,17}")
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
R = TypeVar("R")


def with_todo_id(view: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Turn the path's ``todo_id`` into an ObjectId; anything else is a 404.

    A decorator (not a URL converter) so that a missing token is a 401 first,
    and a malformed id a 404 before the body is validated (422).
    """

    @wraps(view)
    async def wrapper(*args: Any, todo_id: str, **kwargs: Any) -> R:
        if not OBJECT_ID.fullmatch(todo_id):
            raise todo_service.not_found()
        return await view(*args, todo_id=ObjectId(todo_id), **kwargs)

    return wrapper


def _entity_tags(header: str) -> list[tuple[bool, str]]:
    """The (weak, opaque tag) pairs of a conditional header's well-formed tags.

    Werkzeug's parser also takes unquoted tokens (``If-Match: 1``); here a
    malformed element matches nothing instead of being guessed at.
    """
    tags = []
    for element in LIST_ELEMENT.findall(header):
        match = ENTITY_TAG.fullmatch(element.strip(" \t"))
        if match is not None:
            tags.append((match.group(1) is not None, match.group(2)))
    return tags


def _malformed(header: str) -> bool:
    """True when the list is empty or an element is no quoted entity tag (``If-Match: 3``)."""
    elements = [element.strip(" \t") for element in LIST_ELEMENT.findall(header)]
    elements = [element for element in elements if element]  # RFC 9110 allows empty ones
    return not elements or any(ENTITY_TAG.fullmatch(element) is None for element in elements)


def _header(name: str) -> str | None:
    """A list header as one value (repeated header lines combine), or None if absent."""
    values = request.headers.getlist(name)
    return ", ".join(values) if values else None


def if_match() -> IfMatch | None:
    """The request's If-Match as a precondition (strong comparison), if it has one."""
    header = _header("If-Match")
    if header is None:
        return None
    if header.strip(" \t") == "*":
        return IfMatch(any_version=True, versions=frozenset())
    # Strong comparison is exact: W/"1" and "01" never match version 1.
    versions = frozenset(
        int(tag) for weak, tag in _entity_tags(header) if not weak and VERSION.fullmatch(tag)
    )
    return IfMatch(any_version=False, versions=versions, malformed=_malformed(header))


def if_none_match(version: int) -> bool:
    """True when If-None-Match names ``version`` (weak comparison) or is ``*``."""
    header = _header("If-None-Match")
    if header is None:
        return False
    if header.strip(" \t") == "*":
        return True
    return any(tag == str(version) for _, tag in _entity_tags(header))


def idempotency_key() -> str | None:
    """The request's Idempotency-Key: 1 to 255 visible ASCII characters, or None.

    The value is taken as sent: a client following the draft's structured
    string (``"k"``) keeps its quotes, and matches itself on every retry.
    """
    values = request.headers.getlist(idempotency.HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise validation_error(("header", idempotency.HEADER), "send one Idempotency-Key")
    if not IDEMPOTENCY_KEY.fullmatch(values[0]):
        raise validation_error(
            ("header", idempotency.HEADER), "must be 1 to 255 visible ASCII characters"
        )
    return values[0]


def todo_response(todo: dict[str, Any], status: int = 200) -> Response:
    """The todo as JSON with its ETag: every response showing a todo carries one."""
    response = json_response(todo_json(todo), status)
    response.headers["ETag"] = etag(todo["version"])
    return response


def created_response(todo: dict[str, Any], replayed: bool = False) -> Response:
    """201 with the todo, its ETag and Location; marked when it answers a replay."""
    response = todo_response(todo, 201)
    response.headers["Location"] = url_for("todos.get_todo", todo_id=str(todo["_id"]))
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@blueprint.post("")
@operation_id("create_todo")
@require_access
@validate_request(TodoCreate)
@document_response(Todo, 201)
@request_headers(idempotency.HEADER)
@response_headers(201, "Location", "ETag", "Idempotent-Replayed")
@problems(404, 409)
async def create_todo(data: TodoCreate) -> Response:
    """Create a todo; with an `Idempotency-Key`, at most once per key (retry safely)."""
    key = idempotency_key()
    if key is None:
        return created_response(await todo_service.create(current_user().id, data))
    todo, replayed = await todo_service.create_once(current_user().id, data, key)
    return created_response(todo, replayed)


@blueprint.get("")
@operation_id("list_todos")
@require_access
@validate_querystring(ListQuery)
@document_response(TodoPage, 200)
async def list_todos(query_args: ListQuery) -> Response:
    """List todos: filter, sort, and page with the opaque `next_cursor`."""
    todos, next_cursor = await todo_service.list_page(current_user().id, query_args)
    return json_response({"items": [todo_json(todo) for todo in todos], "next_cursor": next_cursor})


@blueprint.delete("")
@operation_id("clear_completed_todos")
@require_access
@validate_querystring(ClearCompletedQuery)
@document_response(Deleted, 200)
async def clear_completed(query_args: ClearCompletedQuery) -> Response:
    """Delete the caller's completed todos (exactly `?completed=true`)."""
    return json_response({"deleted": await todo_service.clear_completed(current_user().id)})


@blueprint.get("/<todo_id>")
@operation_id("get_todo")
@require_access
@with_todo_id
@document_response(Todo, 200)
@request_headers("If-None-Match")
@response_headers(200, "ETag")
@response_headers(304, "ETag")
async def get_todo(todo_id: ObjectId) -> Response:
    """Get one todo; 304 when If-None-Match names its current version."""
    todo = await todo_service.get(current_user().id, todo_id)
    if if_none_match(todo["version"]):
        response = Response(b"", status=304)
        del response.headers["Content-Type"]
        response.headers["ETag"] = etag(todo["version"])
        return response
    return todo_response(todo)


@blueprint.patch("/<todo_id>")
@operation_id("update_todo")
@require_access
@with_todo_id
@validate_request(TodoPatch)
@document_response(Todo, 200)
@request_headers("If-Match")
@response_headers(200, "ETag")
@problems(412)
async def update_todo(todo_id: ObjectId, data: TodoPatch) -> Response:
    """Change any subset of the writable fields; `due_at: null` clears the due date."""
    todo = await todo_service.update(current_user().id, todo_id, data.changes(), if_match())
    return todo_response(todo)


@blueprint.delete("/<todo_id>")
@operation_id("delete_todo")
@require_access
@with_todo_id
@request_headers("If-Match")
@response_headers(204)
@problems(412)
async def delete_todo(todo_id: ObjectId) -> Response:
    """Delete one todo."""
    await todo_service.delete(current_user().id, todo_id, if_match())
    return no_content()
