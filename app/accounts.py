"""Account rules that span users, sessions, todos and rate limits.

Routes call these; they raise ``ApiError`` and never see the database.
"""

from __future__ import annotations

from .errors import ApiError, unauthorized, validation_error
from .extensions import passwords
from .security import CurrentUser, refresh_lifetime
from .stores import sessions, todos, users
from .throttle import count_registration, guard_login, record_login_failure


def _invalid_credentials() -> ApiError:
    return unauthorized("invalid_credentials", "The username or password is wrong.")


async def register(username: str, password: str) -> users.User:
    await count_registration()
    user = await users.create(username, await passwords.hash(password))
    if user is None:
        raise ApiError(409, "username_taken", "That username is taken.")
    return user


async def log_in(username: str, password: str) -> sessions.Session:
    """Check the credentials (rate limited) and open a session.

    An unknown user costs a full hash check too, and gets the same answer.
    """
    await guard_login(username)
    user = await users.find_by_username(username)
    if not await passwords.verify(user["password_hash"] if user else None, password):
        await record_login_failure(username)
        raise _invalid_credentials()
    assert user is not None
    if passwords.needs_rehash(user["password_hash"]):
        await users.set_password_hash(user["_id"], await passwords.hash(password))
    return await sessions.open_session(user, refresh_lifetime())


async def _confirm_password(caller: CurrentUser, password: str) -> users.User:
    """Re-check the caller's password; a wrong one counts as a failed login."""
    await guard_login(caller.username)
    user = await users.get(caller.id)
    if user is None:
        raise unauthorized("token_revoked", "The session has ended; log in again.")
    if not await passwords.verify(user["password_hash"], password):
        await record_login_failure(caller.username)
        raise _invalid_credentials()
    return user


async def change_password(caller: CurrentUser, current: str, new: str) -> None:
    """Set a new password and close every session of the user, this one included."""
    if new.lower() == caller.username.lower():
        raise validation_error(["body", "new_password"], "the password must not equal the username")
    user = await _confirm_password(caller, current)
    await users.set_password_hash(user["_id"], await passwords.hash(new))
    await sessions.close_all(user["_id"])


async def delete_account(caller: CurrentUser, password: str) -> None:
    """Remove the user, their todos and sessions.

    Sessions go first, so the account is unreachable at once; if this is cut
    short, repeating it (after logging in again) finishes the job.
    """
    user = await _confirm_password(caller, password)
    await sessions.close_all(user["_id"])
    await todos.delete_all_of(user["_id"])
    await users.delete(user["_id"])
