"""Change streams on the app's database: what the live updates read.

The worker's shared stream reads inserts, updates and deletes of todos (with
the pre-image, so a delete names its owner), and what ends streams: deleted
sessions and users, a raised credential floor (every older session of the
user is void) and a burned session. Session updates of every other kind
(each token refresh) and the quota counters' changes (half of a create's
writes; their ids are strings, a todo's an ObjectId) are filtered out on the
server: every change that passes costs each open change stream a read
(docs/scaling.md).

A reconnecting client's replay reads the same history from its position, but
filtered on the server to that client's own changes, so the database sends
only those (and the worker does not filter every user's changes itself).
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo.errors import OperationFailure

from ..extensions import mongo
from .sessions import BURNED, FLOOR_PREFIX, floor_id

TODO_CHANGES = {
    "ns.coll": "todos",
    "operationType": {"$in": ["insert", "update", "replace", "delete"]},
    "documentKey._id": {"$type": "objectId"},
}
FLOOR_RAISED = {
    "ns.coll": "sessions",
    "operationType": {"$in": ["insert", "update", "replace"]},
    "documentKey._id": {"$regex": f"^{FLOOR_PREFIX}"},
}
SESSION_BURNED = {
    "ns.coll": "sessions",
    "operationType": "update",
    "updateDescription.updatedFields.generation": BURNED,
}
PIPELINE: list[dict[str, Any]] = [
    {
        "$match": {
            "$or": [
                TODO_CHANGES,
                {"ns.coll": {"$in": ["sessions", "users"]}, "operationType": "delete"},
                FLOOR_RAISED,
                SESSION_BURNED,
            ]
        }
    }
]


def replay_pipeline(owner: ObjectId, session_id: str) -> list[dict[str, Any]]:
    """One stream's share of the history: its owner's todos, its session, its user."""
    return [
        {
            "$match": {
                "$or": [
                    {
                        **TODO_CHANGES,
                        "$or": [
                            {"fullDocument.owner": owner},
                            {"fullDocumentBeforeChange.owner": owner},
                        ],
                    },
                    {
                        "ns.coll": "sessions",
                        "documentKey._id": {"$in": [session_id, floor_id(owner)]},
                    },
                    {"ns.coll": "users", "operationType": "delete", "documentKey._id": owner},
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


async def open_stream(
    resume_after: dict[str, Any] | None,
    owner: ObjectId | None = None,
    session_id: str | None = None,
) -> Any:
    """A change stream from now or just after ``resume_after``: every stream's share,
    or (given ``owner`` and ``session_id``) that one stream's."""
    pipeline = PIPELINE
    if owner is not None and session_id is not None:
        pipeline = replay_pipeline(owner, session_id)
    return await mongo.watch(
        pipeline,
        full_document="whenAvailable",
        full_document_before_change="whenAvailable",
        resume_after=resume_after,
        max_await_time_ms=MAX_AWAIT_MS,
    )
