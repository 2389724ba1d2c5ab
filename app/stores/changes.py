"""Change streams on the app's database: what the live updates read.

One pipeline serves the worker's shared stream and a reconnecting client's
replay alike: inserts, updates and deletes of todos (with the pre-image, so a
delete names its owner), and deletions of sessions and users (which end the
streams of that session or user). Session updates (every token refresh) and
the quota counters' changes (half of a create's writes; their ids are
strings, a todo's an ObjectId) are filtered out on the server: every change
that passes costs each open change stream a read (docs/scaling.md).
"""

from __future__ import annotations

from typing import Any

from pymongo.errors import OperationFailure

from ..extensions import mongo

PIPELINE: list[dict[str, Any]] = [
    {
        "$match": {
            "$or": [
                {
                    "ns.coll": "todos",
                    "operationType": {"$in": ["insert", "update", "replace", "delete"]},
                    "documentKey._id": {"$type": "objectId"},
                },
                {"ns.coll": {"$in": ["sessions", "users"]}, "operationType": "delete"},
            ]
        }
    }
]
#: A getMore waits at most this long for changes, so an idle stream costs
#: one small round trip per second per worker (not per subscriber).
MAX_AWAIT_MS = 1000

#: The server has no change streams (a standalone mongod).
NOT_A_REPLICA_SET = 40573
HISTORY_LOST = {260, 280, 286}


def no_change_streams(error: BaseException) -> bool:
    return isinstance(error, OperationFailure) and error.code == NOT_A_REPLICA_SET


def history_lost(error: BaseException) -> bool:
    """True when the position a stream resumes from is no longer in the oplog.

    ChangeStreamHistoryLost (286), InvalidResumeToken (260) or
    ChangeStreamFatalError (280), on MongoDB and SecantusDB alike. Other
    errors (a restarted server's lost cursor, a network failure) are retried.
    """
    return isinstance(error, OperationFailure) and error.code in HISTORY_LOST


def cannot_resume(error: BaseException) -> bool:
    """True when the database refuses to resume from a client's token.

    Besides lost history, a token that is malformed or from elsewhere is a
    parse error (9, 2) or another refusal; to a client it all means: refetch.
    Timeouts and "no change streams" are not about the token.
    """
    return (
        isinstance(error, OperationFailure) and not error.timeout and not no_change_streams(error)
    )


async def open_stream(resume_after: dict[str, Any] | None) -> Any:
    """A change stream over ``PIPELINE``, from now or just after ``resume_after``."""
    return await mongo.watch(
        PIPELINE,
        full_document="whenAvailable",
        full_document_before_change="whenAvailable",
        resume_after=resume_after,
        max_await_time_ms=MAX_AWAIT_MS,
    )
