"""Schemas of the todos endpoints and the one document -> JSON mapping."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from typing_extensions import TypeAliasType

from ..clock import format_timestamp, parse_timestamp
from .absent import never_null
from .auth import Instant, StrictBody

TAG = re.compile(r"[a-z0-9_-]{1,32}")
MAX_TAGS = 20
Sort = TypeAliasType(
    "Sort",
    Annotated[
        Literal["created_at", "-created_at", "updated_at", "-updated_at", "due_at", "-due_at"],
        # Generators name enum members after their values, and "-created_at" is no
        # identifier (openapi-python-client made it VALUE_1): name each one here.
        Field(
            json_schema_extra={
                "x-enum-varnames": [
                    "CREATED_AT",
                    "CREATED_AT_DESC",
                    "UPDATED_AT",
                    "UPDATED_AT_DESC",
                    "DUE_AT",
                    "DUE_AT_DESC",
                ]
            }
        ),
    ],
)


def _trimmed_title(value: str) -> str:
    title = value.strip()
    if not 1 <= len(title) <= 200:
        raise ValueError("must be 1 to 200 characters after trimming whitespace")
    return title


def _tag(value: str) -> str:
    tag = value.lower()
    if not TAG.fullmatch(tag):
        raise ValueError("each tag must be 1 to 32 characters of a-z0-9_-")
    return tag


def _distinct_tags(tags: list[str]) -> list[str]:
    distinct = list(dict.fromkeys(tags))
    if len(distinct) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} distinct tags")
    return distinct


LATEST_TIMESTAMP = datetime(9999, 12, 31, 23, 59, 59, 998000, tzinfo=UTC)


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string")
    moment = parse_timestamp(value)
    if moment > LATEST_TIMESTAMP:  # the last millisecond stands for "no due date"
        raise ValueError("must be before 9999-12-31T23:59:59.999Z")
    return moment


Title = Annotated[str, AfterValidator(_trimmed_title), Field(examples=["Buy milk"])]
Notes = Annotated[str, Field(max_length=10_000)]
# A named alias: one `Priority` schema that every model refers to, so generated
# clients get one Priority type instead of one per model.
Priority = TypeAliasType("Priority", Literal["low", "normal", "high"])
Tag = Annotated[str, AfterValidator(_tag)]
Tags = Annotated[list[Tag], AfterValidator(_distinct_tags), Field(examples=[["home"]])]
Timestamp = Annotated[
    datetime,
    BeforeValidator(_timestamp),
    Field(description="RFC 3339 with an offset; stored in UTC, milliseconds"),
]


class TodoCreate(StrictBody):
    """A new todo: ``title`` is required, the other writable fields have defaults."""

    title: Title
    notes: Notes = ""
    completed: bool = False
    due_at: Timestamp | None = None
    priority: Priority = "normal"
    tags: Tags = Field(default_factory=list)


class TodoPatch(StrictBody):
    """Any subset of the writable fields; only ``due_at`` may be null (to clear it)."""

    model_config = ConfigDict(
        json_schema_extra=never_null("title", "notes", "completed", "priority", "tags")
    )

    title: Title | None = None
    notes: Notes | None = None
    completed: bool | None = None
    due_at: Timestamp | None = None
    priority: Priority | None = None
    tags: Tags | None = None

    @field_validator("title", "notes", "completed", "priority", "tags", mode="before")
    @classmethod
    def not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may not be null")
        return value

    @model_validator(mode="after")
    def not_empty(self) -> TodoPatch:
        if not self.model_fields_set:
            raise ValueError("send at least one field to change")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the client sent, with their validated values."""
        return {name: getattr(self, name) for name in self.model_fields_set}


def _limit(value: Any) -> int:
    """A plain decimal: pydantic's int parsing would take ``+5``, `` 5`` and ``5.0``."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,3}", value):
        raise ValueError("must be a whole number from 1 to 100")
    if not 1 <= int(value) <= 100:
        raise ValueError("must be a whole number from 1 to 100")
    return int(value)


CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"  # documented in the OpenAPI schema of ``q``


def _printable(value: str) -> str:
    """MongoDB refuses a NUL in ``$regex``: control characters never reach the query."""
    if CONTROL_CHARACTERS.search(value):
        raise ValueError("must not contain control characters")
    return value


class ListQuery(BaseModel):
    """List filters, sort and paging. Query values arrive as strings."""

    model_config = ConfigDict(extra="forbid")

    completed: Literal["true", "false"] | None = None
    tag: Tag | None = None
    q: (
        Annotated[
            str,
            Field(min_length=1, max_length=200, json_schema_extra={"pattern": PRINTABLE}),
            AfterValidator(_printable),
        ]
        | None
    ) = None
    due_before: Timestamp | None = None
    due_after: Timestamp | None = None
    sort: Sort = "-created_at"
    # _limit checks the range; pydantic would document ge/le, which no tool reads.
    limit: Annotated[
        int, BeforeValidator(_limit), Field(json_schema_extra={"minimum": 1, "maximum": 100})
    ] = 20
    cursor: Annotated[str, Field(min_length=1)] | None = None

    def filters(self) -> dict[str, Any]:
        """What a cursor is bound to besides the user and the sort."""
        return {
            "completed": self.completed,
            "tag": self.tag,
            "q": self.q,
            "due_before": self.due_before,
            "due_after": self.due_after,
        }


class ClearCompletedQuery(BaseModel):
    """``DELETE /api/v1/todos`` takes exactly ``completed=true``."""

    model_config = ConfigDict(extra="forbid")

    completed: Literal["true"]


class Todo(BaseModel):
    """A todo as clients see it; the `ETag` header carries its version."""

    # Documents what todo_json builds: every field is always present (so all are
    # required), and timestamps are date-times so generated clients parse them.

    id: str = Field(pattern=r"^[0-9a-f]{24}$")
    title: str
    notes: str
    completed: bool
    completed_at: Instant | None
    due_at: Instant | None
    priority: Priority
    tags: list[str]
    created_at: Instant
    updated_at: Instant
    version: int = Field(ge=1)


class TodoPage(BaseModel):
    """One page of a listing."""

    items: list[Todo]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class Deleted(BaseModel):
    """How many todos a bulk delete removed."""

    deleted: int


def _optional_timestamp(moment: datetime | None) -> str | None:
    return None if moment is None else format_timestamp(moment)


def todo_json(doc: dict[str, Any]) -> dict[str, Any]:
    """The public view of a stored todo."""
    return {
        "id": str(doc["_id"]),
        "title": doc["title"],
        "notes": doc["notes"],
        "completed": doc["completed"],
        "completed_at": _optional_timestamp(doc["completed_at"]),
        "due_at": _optional_timestamp(doc["due_at"]),
        "priority": doc["priority"],
        "tags": doc["tags"],
        "created_at": format_timestamp(doc["created_at"]),
        "updated_at": format_timestamp(doc["updated_at"]),
        "version": doc["version"],
    }
