"""Password hashing with argon2id, off the event loop.

Hashing is deliberately slow CPU work, so it runs in a thread. Parameters
come from config; hashes made with older parameters are upgraded at login.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from quart import Quart, current_app


@dataclass
class _HasherState:
    hasher: PasswordHasher
    dummy_hash: str | None = None


class PasswordHashing:
    """``init_app`` builds the app's hasher from ``ARGON2_*`` settings."""

    def init_app(self, app: Quart) -> None:
        app.extensions["passwords"] = _HasherState(
            PasswordHasher(
                time_cost=app.config["ARGON2_TIME_COST"],
                memory_cost=app.config["ARGON2_MEMORY_COST"],
                parallelism=app.config["ARGON2_PARALLELISM"],
                type=Type.ID,
            )
        )

    @staticmethod
    def _state() -> _HasherState:
        state: _HasherState = current_app.extensions["passwords"]
        return state

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._state().hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """Check ``password``; with no stored hash, spend the same time and say no.

        The dummy hash makes "no such user" as slow as "wrong password".
        """
        state = self._state()
        if stored_hash is None:
            if state.dummy_hash is None:
                state.dummy_hash = await self.hash("dummy password, for timing only")
            await asyncio.to_thread(_verify, state.hasher, state.dummy_hash, password)
            return False
        return await asyncio.to_thread(_verify, state.hasher, stored_hash, password)

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._state().hasher.check_needs_rehash(stored_hash)


def _verify(hasher: PasswordHasher, stored_hash: str, password: str) -> bool:
    try:
        return hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False
