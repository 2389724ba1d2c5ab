"""Tokens, sessions and the decorators that protect routes.

Quart-JWT-Extended signs the tokens; verifying them, on every authenticated
request, is PyJWT's ``decode`` called once with a key and options prepared
once per app (the library's ``decode_token`` parses each token three times
and looks its settings up on every call). Its revocation and user-loader
hooks cannot be async anyway, so the session check (is the session still
open?) happens here, in the project's own async decorators, right after the
token is verified. Every token failure becomes a 401 with its own ``code``;
no decoder text reaches a client.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import jwt as pyjwt
from bson import ObjectId
from pydantic import ValidationError
from quart import Quart, current_app, g, request
from quart_jwt_extended import JWTManager, create_access_token, create_refresh_token
from quart_schema import security_scheme
from quart_schema.validation import QUART_SCHEMA_QUERYSTRING_ATTRIBUTE

from . import throttle
from .clock import utcnow
from .errors import ApiError, problem_response, unauthorized
from .stores import sessions, tickets

P = ParamSpec("P")
R = TypeVar("R")

BEARER = re.compile(r"Bearer +(\S+) *", re.IGNORECASE)
BEARER_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]


@dataclass(frozen=True)
class CurrentUser:
    """Who is calling, known from the session check alone (no extra query)."""

    id: ObjectId
    username: str
    created_at: datetime
    session_id: str
    token_expires_at: datetime  # when the access token (or the ticket's token) expires


def current_user() -> CurrentUser:
    """The caller of a route protected by ``require_access``."""
    user: CurrentUser = g.current_user
    return user


def refresh_lifetime() -> timedelta:
    return timedelta(seconds=current_app.config["JWT_REFRESH_TOKEN_EXPIRES"])


def access_lifetime() -> timedelta:
    return timedelta(seconds=current_app.config["JWT_ACCESS_TOKEN_EXPIRES"])


def session_lifetime() -> timedelta:
    """A session's absolute lifetime from its login (contract rule 4)."""
    return timedelta(seconds=current_app.config["SESSION_MAX_SECONDS"])


def _until(moment: datetime) -> timedelta:
    """The lifetime that makes a token issued now expire at ``moment`` (at least a second)."""
    return max(moment - utcnow(), timedelta(seconds=1))


def issue_tokens(
    session_id: str, user_id: ObjectId, generation: int, session_expires_at: datetime
) -> dict[str, Any]:
    """The login/refresh response body for a session's current generation.

    Lifetimes are passed explicitly: the library would leave ``exp`` out for
    a zero lifetime, and a token without ``exp`` must never exist. Neither
    token outlives its session's current expiry.
    """
    identity = str(user_id)
    session_left = _until(session_expires_at)
    return {
        "access_token": create_access_token(
            identity,
            expires_delta=min(access_lifetime(), session_left),
            user_claims={"sid": session_id},
        ),
        "refresh_token": create_refresh_token(
            identity,
            expires_delta=min(refresh_lifetime(), session_left),
            user_claims={"sid": session_id, "gen": generation},
        ),
        "token_type": "Bearer",
        "expires_in": current_app.config["JWT_ACCESS_TOKEN_EXPIRES"],
    }


def _bearer_token() -> str:
    match = BEARER.fullmatch(request.headers.get("Authorization", ""))
    if match is None:
        raise unauthorized("token_missing", "Send a token as 'Authorization: Bearer <token>'.")
    return match.group(1)


@dataclass(frozen=True)
class TokenClaims:
    user_id: ObjectId
    session_id: str
    generation: int  # the refresh token's place in its session; 0 for access tokens
    expires_at: datetime  # the token's; after a rotation, the session's new expiry


class WrongTokenType(Exception):
    """An access token where a refresh token belongs, or the reverse."""


class TokenVerifier:
    """Verifies this app's tokens: PyJWT with the key and options fixed at start."""

    TOKEN_TYPES = frozenset({"access", "refresh"})

    def __init__(self, secret: str, algorithm: str, identity_claim: str, user_claims: str):
        self._key = secret.encode()
        self._algorithms = [algorithm]
        self._identity_claim = identity_claim
        self._user_claims = user_claims
        # Tokens always carry exp, the identity and the type; none is optional.
        self._decoder = pyjwt.PyJWT(options={"require": ["exp", identity_claim, "type"]})

    def verify(self, token: str, expected_type: str) -> TokenClaims:
        """The claims of a token signed with this app's key; raises on any fault.

        ``pyjwt.ExpiredSignatureError`` for a good signature past ``exp``,
        ``WrongTokenType`` for the other kind of token, anything else for a
        token that is unreadable, tampered or signed otherwise.
        """
        claims = self._decoder.decode(token, self._key, algorithms=self._algorithms)
        if not isinstance(claims["exp"], int) or claims["type"] not in self.TOKEN_TYPES:
            raise pyjwt.InvalidTokenError("exp or type")
        if claims["type"] != expected_type:
            raise WrongTokenType(claims["type"])
        session_claims = claims[self._user_claims]
        session_id = session_claims["sid"]
        if not isinstance(session_id, str):
            raise TypeError("sid")
        return TokenClaims(
            user_id=ObjectId(claims[self._identity_claim]),
            session_id=session_id,
            generation=int(session_claims["gen"]) if expected_type == "refresh" else 0,
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )


def _verified_claims(expected_type: str) -> TokenClaims:
    """Verify the request's token; map each failure to its code."""
    token = _bearer_token()
    verifier: TokenVerifier = current_app.extensions["token_verifier"]
    try:
        return verifier.verify(token, expected_type)
    except pyjwt.ExpiredSignatureError:
        raise _expired(expected_type) from None
    except WrongTokenType:
        raise unauthorized("token_wrong_type", f"Send the {expected_type} token here.") from None
    except Exception:  # any other failure: unreadable, tampered, wrong key or algorithm
        raise _token_invalid() from None


def _token_invalid() -> ApiError:
    return unauthorized("token_invalid", "The token is invalid.")


def _expired(kind: str) -> ApiError:
    """An expired token's 401, saying what to do next."""
    if kind == "access":
        detail = (
            "The access token has expired; get a new one with POST /api/v1/auth/refresh "
            "and the refresh token."
        )
    else:
        detail = "The refresh token has expired; log in again with POST /api/v1/auth/login."
    return unauthorized("token_expired", detail)


def session_revoked() -> ApiError:
    return unauthorized("token_revoked", "The session has ended; log in again.")


async def _enter_session(session_id: str, user_id: ObjectId, token_expires_at: datetime) -> None:
    """Make the caller ``user_id`` in ``session_id``, if that session is open and theirs.

    Another user's session is not found, like a closed one (a token naming
    one was signed with the key, so it can only come from a leaked key).
    """
    session = await sessions.find_open(session_id, user_id)
    if session is None:
        raise session_revoked()
    g.current_user = CurrentUser(
        session["user_id"],
        session["username"],
        session["user_created_at"],
        session["_id"],
        token_expires_at,
    )


def require_access(view: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Let the request through with a valid access token of an open session."""

    @security_scheme(BEARER_SECURITY)
    @wraps(view)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        claims = _verified_claims("access")
        await _enter_session(claims.session_id, claims.user_id, claims.expires_at)
        with throttle.user_shares().hold(claims.user_id):
            return await view(*args, **kwargs)

    return wrapper


def require_access_or_ticket(view: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """``require_access``, or a stream ticket in ``?ticket=`` when no Authorization is sent.

    Browsers' EventSource cannot send headers, so it presents a ticket: used
    once, within its lifetime, and only while its session is open. The
    caller's token expiry is that of the access token that asked for it.
    """

    @security_scheme(BEARER_SECURITY)
    @wraps(view)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        ticket = request.args.get("ticket")
        if ticket is None or "Authorization" in request.headers or request.method != "GET":
            # A HEAD is answered by the same view but never spends a ticket.
            claims = _verified_claims("access")
            await _enter_session(claims.session_id, claims.user_id, claims.expires_at)
        elif _query_is_valid(view):
            # Spent only by a request that will be served (its query passes the
            # route's own schema); an invalid one still gets its 401 or 422.
            await _enter_ticket(await tickets.redeem(ticket))
        else:
            await _enter_ticket(await tickets.find(ticket))
        with throttle.user_shares().hold(current_user().id):
            return await view(*args, **kwargs)

    return wrapper


def _query_is_valid(view: Callable[..., Any]) -> bool:
    """Whether the request's query string passes the schema ``view`` declares, if any."""
    model = getattr(view, QUART_SCHEMA_QUERYSTRING_ATTRIBUTE, None)
    if model is None:
        return True
    try:
        model.model_validate(request.args.to_dict(flat=True))
    except ValidationError:
        return False
    return len(request.args.getlist("ticket")) == 1


async def _enter_ticket(ticket: tickets.Ticket | None) -> None:
    if ticket is None:
        raise unauthorized("token_invalid", "The ticket is unknown, used or expired.")
    await _enter_session(ticket["session_id"], ticket["user_id"], ticket["token_expires_at"])


def require_refresh(view: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Rotate the caller's session to its next refresh token; pass the claims on.

    The view gets ``claims`` whose ``generation`` is the new one and whose
    ``expires_at`` is the session's new expiry. A refresh token that is not
    the session's current one closes the session: burning it is the first
    and only write that acts on the reuse (``stores.sessions.rotate``).
    """

    @security_scheme(BEARER_SECURITY)
    @wraps(view)
    async def wrapper(*args: Any, **kwargs: Any) -> R:
        claims = _verified_claims("refresh")
        session = await sessions.find_open(claims.session_id, claims.user_id)
        if session is None:
            # Closed, expired, void, or another user's: close what is the caller's.
            await sessions.close(claims.session_id, claims.user_id)
            raise session_revoked()
        rotation = await sessions.rotate(session, claims.generation, refresh_lifetime())
        if rotation.burned:
            # Reuse of a spent refresh token: the session is closed, a thief may hold it.
            await sessions.close(claims.session_id, claims.user_id)
            raise session_revoked()
        if rotation.generation is None or rotation.expires_at is None:
            raise session_revoked()  # expired or closed meanwhile
        rotated = TokenClaims(
            claims.user_id, claims.session_id, rotation.generation, rotation.expires_at
        )
        return await view(*args, claims=rotated, **kwargs)

    return wrapper


def init_app(app: Quart, jwt: JWTManager) -> None:
    """Bind Quart-JWT-Extended (it issues tokens), prepare the verifier, and route
    every one of the library's error loaders to problem+json.

    The decorators above raise before the library's handlers could run; the
    loaders are overridden anyway so no default 422 with decoder text remains.
    """
    app.config["JWT_ACCESS_TOKEN_EXPIRES"] = int(app.config["JWT_ACCESS_TOKEN_EXPIRES"])
    app.config["JWT_REFRESH_TOKEN_EXPIRES"] = int(app.config["JWT_REFRESH_TOKEN_EXPIRES"])
    jwt.init_app(app)  # also fills in the library's defaults read below
    app.extensions["user_shares"] = throttle.UserShares(app.config["USER_CONCURRENT_REQUESTS"])
    app.extensions["token_verifier"] = TokenVerifier(
        app.config["JWT_SECRET_KEY"],
        app.config["JWT_ALGORITHM"],
        app.config["JWT_IDENTITY_CLAIM"],
        app.config["JWT_USER_CLAIMS"],
    )

    def invalid(*_: Any) -> Any:
        return problem_response(_token_invalid())

    jwt.expired_token_loader(lambda *_: problem_response(_expired("access")))
    jwt.invalid_token_loader(invalid)
    jwt.unauthorized_loader(
        lambda *_: problem_response(unauthorized("token_missing", "A bearer token is required."))
    )
    jwt.needs_fresh_token_loader(invalid)
    jwt.revoked_token_loader(lambda *_: problem_response(session_revoked()))
    jwt.user_loader_error_loader(invalid)
    jwt.claims_verification_failed_loader(invalid)
