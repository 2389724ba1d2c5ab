"""The problem details body (RFC 9457) every error response carries."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .absent import never_null


class FieldError(BaseModel):
    """One validation failure: where it is and what is wrong."""

    loc: list[str] = Field(examples=[["body", "title"]])
    msg: str


class Problem(BaseModel):
    """An error. Switch on `code`; `detail` is for humans."""

    model_config = ConfigDict(json_schema_extra=never_null("errors", "errors_omitted"))

    type: str = Field(examples=["https://todo-api.example.com/problems/validation_failed"])
    title: str = Field(examples=["Unprocessable Entity"])
    status: int = Field(examples=[422])
    detail: str
    code: str = Field(description="Stable snake_case error code.", examples=["validation_failed"])
    request_id: str
    errors: list[FieldError] | None = Field(
        default=None, description="Present on 422: one entry per invalid input, at most 20."
    )
    errors_omitted: int | None = Field(
        default=None,
        ge=1,
        description="Present when more than 20 inputs were invalid: how many more.",
    )
