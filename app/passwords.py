"""Password hashing with argon2id, off the event loop, a bounded number at a time.

Hashing is deliberately slow CPU work, so it runs in a thread. A process
computes at most ``PASSWORD_HASH_SLOTS`` hashes at once: a burst of logins
cannot take every core from the requests that need no hash. A request waits
for a slot at most ``PASSWORD_HASH_WAIT_MS``, then gets 503 with
``Retry-After`` (contract rule 10a). Parameters come from config; hashes
made with older parameters are upgraded at login.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from quart import Quart, current_app

from .errors import ApiError

T = TypeVar("T")


@dataclass
class _HasherState:
    hasher: PasswordHasher
    slots: asyncio.Semaphore
    wait_seconds: float
    dummy_hash: str | None = None


def _busy() -> ApiError:
    return ApiError(
        503,
        "service_unavailable",
        "Too many password checks are running; try again shortly.",
        headers={"Retry-After": "1"},
    )


class PasswordHashing:
    """``init_app`` builds the app's hasher from ``ARGON2_*`` settings."""

    def init_app(self, app: Quart) -> None:
        app.extensions["passwords"] = _HasherState(
            PasswordHasher(
                time_cost=app.config["ARGON2_TIME_COST"],
                memory_cost=app.config["ARGON2_MEMORY_COST"],
                parallelism=app.config["ARGON2_PARALLELISM"],
                type=Type.ID,
            ),
            asyncio.Semaphore(app.config["PASSWORD_HASH_SLOTS"]),
            app.config["PASSWORD_HASH_WAIT_MS"] / 1000,
        )

    @staticmethod
    def _state() -> _HasherState:
        state: _HasherState = current_app.extensions["passwords"]
        return state

    async def _in_slot(self, work: Callable[..., T], *args: object) -> T:
        """Run ``work`` in a thread once a hash slot is free; 503 if none frees in time."""
        state = self._state()
        try:
            async with asyncio.timeout(state.wait_seconds):
                await state.slots.acquire()
        except TimeoutError:
            raise _busy() from None
        try:
            return await asyncio.to_thread(work, *args)
        finally:
            state.slots.release()

    async def hash(self, password: str) -> str:
        return await self._in_slot(self._state().hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """Check ``password``; with no stored hash, spend the same time and say no.

        The dummy hash makes "no such user" as slow as "wrong password".
        """
        state = self._state()
        if stored_hash is None:
            if state.dummy_hash is None:
                state.dummy_hash = await self.hash("dummy password, for timing only")
            await self._in_slot(_verify, state.hasher, state.dummy_hash, password)
            return False
        return await self._in_slot(_verify, state.hasher, stored_hash, password)

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._state().hasher.check_needs_rehash(stored_hash)


def _verify(hasher: PasswordHasher, stored_hash: str, password: str) -> bool:
    try:
        return hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False
