"""Schemas of the accounts and tokens endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from bson import ObjectId
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..clock import format_timestamp

Username = Annotated[
    str,
    Field(
        min_length=3,
        max_length=32,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="3 to 32 characters of A-Za-z0-9_.-; unique without regard to case.",
        examples=["alice"],
    ),
]
NewPassword = Annotated[
    str,
    Field(
        min_length=8,
        max_length=128,
        description="8 to 128 characters (Unicode code points); not the username.",
        examples=["correct horse battery staple"],
    ),
]
# Login and re-authentication check only the shape; a wrong value is a 401.
GivenUsername = Annotated[str, Field(max_length=256)]
GivenPassword = Annotated[str, Field(max_length=1024)]
#: A device token as issued (base64url); anything else in its place is malformed (422).
DeviceToken = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_-]{16,256}$",
        description="The `device_token` of an earlier login on this device (optional).",
    ),
]


class StrictBody(BaseModel):
    """Request bodies: exact JSON types, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Credentials(StrictBody):
    """A new account's username and password."""

    username: Username
    password: NewPassword

    @model_validator(mode="after")
    def password_is_not_username(self) -> Credentials:
        if self.password.lower() == self.username.lower():
            raise ValueError("the password must not equal the username")
        return self


class LoginBody(StrictBody):
    """The username and password of an account, and the device's token if it has one."""

    username: GivenUsername
    password: GivenPassword
    device_token: DeviceToken | None = None


class PasswordChangeBody(StrictBody):
    """The current password, and the new one (same rules as at registration)."""

    current_password: GivenPassword
    new_password: NewPassword


class AccountDeletionBody(StrictBody):
    """The account's password, to confirm."""

    password: GivenPassword


#: A timestamp in a response: always RFC 3339 in UTC with milliseconds.
Instant = Annotated[
    datetime, Field(description="RFC 3339 in UTC with milliseconds, e.g. 2026-11-23T18:24:17.123Z")
]


class UserOut(BaseModel):
    """An account as clients see it."""

    id: str = Field(pattern=r"^[0-9a-f]{24}$")
    username: str
    created_at: Instant


class TokenPair(BaseModel):
    """The tokens of one session: send the access token, trade the refresh token for new ones."""

    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Lifetime of the access token in seconds")


class LoginTokens(TokenPair):
    """A new session's tokens, and this device's token to send with later logins."""

    device_token: str = Field(
        description="Keep it across logouts and send it with every login from this device: "
        "failures others cause then never lock this device out."
    )


def user_json(user_id: ObjectId, username: str, created_at: datetime) -> dict[str, str]:
    """The public view of an account."""
    return {"id": str(user_id), "username": username, "created_at": format_timestamp(created_at)}
