"""Account rules that span users, sessions, todos and rate limits.

Routes call these; they raise ``ApiError`` and never see the database.

A change of credentials (a new password, the account's deletion) first
raises the user's credential floor: one write that voids every session
opened before it, on every worker, so nothing that cuts the rest short (the
request's deadline, a crash, a lost connection) leaves an old session
working. Then it changes the user, guarded by the epoch it read, moving the
epoch with the change; then it deletes the sessions it voided.

Logins race with such changes: a login verifies the password (slow), then
stores its session under the epoch it read, then checks the floor and the
user again. A session opened under the old credentials is below the floor
once the floor is raised, whatever the interleaving. A floor above the user
whose change has run out of time was cut short before it changed the user:
the next login settles the user up to the floor (the old password still
stands) instead of being refused for ever.
"""

from __future__ import annotations

from datetime import timedelta

from bson import ObjectId
from quart import current_app

from . import devices, metrics, throttle
from .clock import utcnow
from .errors import ApiError, unauthorized, validation_error
from .extensions import mongo, passwords
from .security import CurrentUser, refresh_lifetime, session_lifetime, session_revoked
from .stores import sessions, todos, users


def _invalid_credentials() -> ApiError:
    return unauthorized("invalid_credentials", "The username or password is wrong.")


def _username_taken() -> ApiError:
    return ApiError(409, "username_taken", "That username is taken.")


def _time_left() -> timedelta:
    """How long this request may still run: what a claim or a pending change holds."""
    return timedelta(seconds=mongo.time_left())


async def register(username: str, password: str) -> users.User:
    """Claim the name, then hash the password: racing registrations cost one hash."""
    await throttle.count_registration()
    user = await _claim(username)
    if not await users.complete_claim(user, await passwords.hash(password)):
        raise _username_taken()  # the claim outlived this request and was taken over
    return {key: value for key, value in user.items() if key != "claim_until"}


async def _claim(username: str) -> users.User:
    """Claim ``username`` for this request; 409 while another holds it."""
    now = utcnow()
    claimed = await users.claim(username, now + _time_left())
    if claimed is not None:
        return claimed
    holder = await users.find_claimed(username)
    if holder is None:  # gone since: try once more
        claimed = await users.claim(username, now + _time_left())
    elif holder.get("deleting"):
        await _purge(holder["_id"])  # a deletion cut short: finish it, free the name
        claimed = await users.claim(username, now + _time_left())
    elif holder["password_hash"] is None and holder.get("claim_until", now) <= now:
        claimed = await users.take_over_claim(holder, username, now + _time_left())
    if claimed is None:
        raise _username_taken()
    return claimed


async def log_in(
    username: str, password: str, device_token: str | None
) -> tuple[sessions.Session, str]:
    """Check the credentials (rate limited) and open a session; also the device's token.

    An unknown user costs a full hash check too, and gets the same answer. A
    valid device token of this user moves the failure count to that device.
    """
    await throttle.count_password_attempt(throttle.login_subject(username))
    user = await users.find_by_username(username)
    device = devices.recognise(device_token, user["_id"] if user else None)
    if device is not None:
        reservation = await throttle.take_device_login_failure(username, device.id)
    else:
        reservation = await throttle.take_login_failure(username)
    if not await passwords.verify(user["password_hash"] if user else None, password):
        throttle.log_failed_login(username)
        metrics.count(lambda m: m.login_failures)
        raise _invalid_credentials()
    assert user is not None
    await reservation.give_back()
    epoch = users.epoch_of(user)
    if passwords.needs_rehash(user["password_hash"]):
        await users.upgrade_password_hash(user["_id"], epoch, await passwords.hash(password))
    session = await sessions.open_session(user, refresh_lifetime(), session_lifetime())
    await _hold_or_withdraw(session, epoch)
    await sessions.close_beyond(user["_id"], current_app.config["SESSIONS_PER_USER"])
    return session, devices.issue(user["_id"], device)


async def _hold_or_withdraw(session: sessions.Session, epoch: int) -> None:
    """Keep a just-opened session only if the credentials it was opened with still stand."""
    user_id: ObjectId = session["user_id"]
    floor = await sessions.floor_of(user_id)
    if not await users.credentials_unchanged(user_id, epoch):
        # The password changed or the account went while we verified.
        await sessions.close(session["_id"], user_id)
        raise _invalid_credentials()
    if floor.min_epoch <= epoch:
        return
    pending = floor.pending_until is not None and floor.pending_until > utcnow()
    if pending or not await users.settle_epoch(user_id, epoch, floor.min_epoch):
        await sessions.close(session["_id"], user_id)  # a change under way voids it
        raise _invalid_credentials()
    await sessions.move_to_epoch(session, floor.min_epoch)
    session["credential_epoch"] = floor.min_epoch


async def log_out(caller: CurrentUser) -> None:
    await sessions.close(caller.session_id, caller.id)


async def _confirm_password(caller: CurrentUser, password: str) -> users.User:
    """Re-check the caller's password; failures count per session and per user."""
    reservation = await throttle.take_reauthentication(caller.session_id, caller.id)
    user = await users.get(caller.id)
    if user is None or user.get("deleting"):
        raise session_revoked()
    if not await passwords.verify(user["password_hash"], password):
        throttle.log_failed_login(caller.username)
        raise _invalid_credentials()
    await reservation.give_back()
    return user


async def _void_sessions(user: users.User) -> int:
    """Raise the user's floor above every session: the first step of a credential change."""
    epoch = users.epoch_of(user)
    await sessions.raise_floor(user["_id"], epoch + 1, utcnow() + _time_left())
    return epoch


async def change_password(caller: CurrentUser, current: str, new: str) -> None:
    """Set a new password and close every session of the user, this one included."""
    if new.lower() == caller.username.lower():
        raise validation_error(["body", "new_password"], "the password must not equal the username")
    user = await _confirm_password(caller, current)
    new_hash = await passwords.hash(new)
    epoch = await _void_sessions(user)
    if not await users.replace_password_hash(user["_id"], epoch, new_hash):
        raise session_revoked()  # another change got there first; this session is void anyway
    await sessions.close_all(user["_id"])


async def delete_account(caller: CurrentUser, password: str) -> None:
    """Remove the user, their todos and sessions.

    Every session is void from the first step; then the account is marked
    (no login can succeed from then on), then its sessions, todos and the
    user go. If this is cut short after the mark, registering the name
    again finishes the job. The floor stays behind: one small document
    holding the deleted account's id, which keeps any session a racing
    login stored void.
    """
    user = await _confirm_password(caller, password)
    epoch = await _void_sessions(user)
    if not await users.begin_deletion(user["_id"], epoch):
        raise session_revoked()
    await _purge(user["_id"])


async def _purge(user_id: ObjectId) -> None:
    await sessions.close_all(user_id)
    await todos.delete_all_of(user_id)
    await users.delete(user_id)
