"""Accounts and tokens: ``/api/v1/auth``."""

from __future__ import annotations

from quart import Blueprint, Response
from quart_schema import document_response, operation_id, tag_blueprint, validate_request

from .. import accounts
from ..json_provider import json_response
from ..models.auth import (
    AccountDeletionBody,
    Credentials,
    LoginBody,
    LoginTokens,
    PasswordChangeBody,
    TokenPair,
    UserOut,
    user_json,
)
from ..openapi import problems, response_headers
from ..security import TokenClaims, current_user, issue_tokens, require_access, require_refresh
from . import no_content

blueprint = Blueprint("auth", __name__)
tag_blueprint(blueprint, ["auth"])


@blueprint.post("/register")
@operation_id("register")
@validate_request(Credentials)
@document_response(UserOut, 201)
@problems(409, 429)
async def register(data: Credentials) -> Response:
    """Create an account."""
    user = await accounts.register(data.username, data.password)
    return json_response(user_json(user["_id"], user["username"], user["created_at"]), 201)


@blueprint.post("/login")
@operation_id("log_in")
@validate_request(LoginBody)
@document_response(LoginTokens, 200)
@problems(401, 429, 503)
async def login(data: LoginBody) -> Response:
    """Open a session: an access token, a refresh token, and this device's token."""
    session, device_token = await accounts.log_in(data.username, data.password, data.device_token)
    tokens = issue_tokens(
        session["_id"], session["user_id"], session["generation"], session["expires_at"]
    )
    return json_response({**tokens, "device_token": device_token})


@blueprint.post("/refresh")
@operation_id("refresh_tokens")
@require_refresh
@document_response(TokenPair, 200)
async def refresh(claims: TokenClaims) -> Response:
    """Trade the refresh token for new tokens; the old refresh token stops working."""
    return json_response(
        issue_tokens(claims.session_id, claims.user_id, claims.generation, claims.expires_at)
    )


@blueprint.post("/logout")
@operation_id("log_out")
@require_access
@response_headers(204)
async def logout() -> Response:
    """Close this session: its tokens are refused from now on."""
    await accounts.log_out(current_user())
    return no_content()


@blueprint.get("/me")
@operation_id("get_account")
@require_access
@document_response(UserOut, 200)
async def me() -> Response:
    """The caller's account."""
    caller = current_user()
    return json_response(user_json(caller.id, caller.username, caller.created_at))


@blueprint.post("/password")
@operation_id("change_password")
@require_access
@validate_request(PasswordChangeBody)
@response_headers(204)
@problems(429)
async def change_password(data: PasswordChangeBody) -> Response:
    """Change the password; every session of the user closes, this one too."""
    await accounts.change_password(current_user(), data.current_password, data.new_password)
    return no_content()


@blueprint.delete("/me")
@operation_id("delete_account")
@require_access
@validate_request(AccountDeletionBody)
@response_headers(204)
@problems(429)
async def delete_me(data: AccountDeletionBody) -> Response:
    """Delete the account with its todos and sessions."""
    await accounts.delete_account(current_user(), data.password)
    return no_content()
