"""Account rules that span users, sessions, todos and rate limits.

Routes call these; they raise ``ApiError`` and never see the database.

Logins race with password changes and deletions: a login verifies the
password (slow), then stores its session. So a change first moves the user's
credential epoch, then closes every session; a login stores its session
first, then checks that the epoch it verified against still holds, and
withdraws the session if not. Whatever the interleaving, a session opened
with old credentials is closed by one side or the other.
"""

from __future__ import annotations

from bson import ObjectId
from quart import current_app

from . import metrics, throttle
from .errors import ApiError, unauthorized, validation_error
from .extensions import passwords
from .security import CurrentUser, refresh_lifetime, session_revoked
from .stores import sessions, todos, users


def _invalid_credentials() -> ApiError:
    return unauthorized("invalid_credentials", "The username or password is wrong.")


async def register(username: str, password: str) -> users.User:
    await throttle.count_registration()
    password_hash = await passwords.hash(password)
    user = await users.create(username, password_hash)
    if user is None:
        abandoned = await users.find_being_deleted(username)
        if abandoned is None:
            raise ApiError(409, "username_taken", "That username is taken.")
        await _purge(abandoned["_id"])  # a deletion cut short: finish it, free the name
        user = await users.create(username, password_hash)
        if user is None:
            raise ApiError(409, "username_taken", "That username is taken.")
    return user


async def log_in(username: str, password: str) -> sessions.Session:
    """Check the credentials (rate limited) and open a session.

    An unknown user costs a full hash check too, and gets the same answer.
    """
    reservation = await throttle.take_login_attempt(username)
    user = await users.find_by_username(username)
    if not await passwords.verify(user["password_hash"] if user else None, password):
        throttle.log_failed_login(username)
        metrics.count(lambda m: m.login_failures)
        raise _invalid_credentials()
    assert user is not None
    await reservation.give_back()
    epoch = users.epoch_of(user)
    if passwords.needs_rehash(user["password_hash"]):
        await users.upgrade_password_hash(user["_id"], epoch, await passwords.hash(password))
    session = await sessions.open_session(user, refresh_lifetime())
    if not await users.credentials_unchanged(user["_id"], epoch):
        # The password changed or the account went while we verified: the
        # other side may have closed sessions before ours was stored.
        await sessions.close(session["_id"], user["_id"])
        raise _invalid_credentials()
    await sessions.close_beyond(user["_id"], current_app.config["SESSIONS_PER_USER"])
    return session


async def log_out(caller: CurrentUser) -> None:
    await sessions.close(caller.session_id, caller.id)


async def _confirm_password(caller: CurrentUser, password: str) -> users.User:
    """Re-check the caller's password; failures count against this session only."""
    reservation = await throttle.take_reauthentication(caller.session_id)
    user = await users.get(caller.id)
    if user is None or user.get("deleting"):
        raise session_revoked()
    if not await passwords.verify(user["password_hash"], password):
        throttle.log_failed_login(caller.username)
        raise _invalid_credentials()
    await reservation.give_back()
    return user


async def change_password(caller: CurrentUser, current: str, new: str) -> None:
    """Set a new password and close every session of the user, this one included."""
    if new.lower() == caller.username.lower():
        raise validation_error(["body", "new_password"], "the password must not equal the username")
    user = await _confirm_password(caller, current)
    await users.replace_password_hash(user["_id"], await passwords.hash(new))
    await sessions.close_all(user["_id"])


async def delete_account(caller: CurrentUser, password: str) -> None:
    """Remove the user, their todos and sessions.

    The account is marked first (no login can succeed from then on), then
    its sessions close, so it is unreachable at once. If this is cut short,
    registering the name again finishes the job.
    """
    user = await _confirm_password(caller, password)
    await users.begin_deletion(user["_id"])
    await _purge(user["_id"])


async def _purge(user_id: ObjectId) -> None:
    await sessions.close_all(user_id)
    await todos.delete_all_of(user_id)
    await users.delete(user_id)
