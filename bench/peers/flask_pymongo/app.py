"""The benchmark's comparison server: the API's core on the classic synchronous stack.

Flask, PyMongo's blocking ``MongoClient``, flask-jwt-extended and argon2-cffi,
served by gunicorn (``scripts/bench.py`` runs it with sync workers, and with
gthread workers and threads). It answers the routes the benchmark drives, in
the same shapes as the API, doing the same work per request the way a plain
Flask app does it:

- every authenticated request verifies the JWT and looks its session up once
  (flask-jwt-extended's blocklist loader), so a logout holds on every worker;
  ``me`` then reads the user;
- every todo query is filtered by the owner, so another user's todo is a 404;
- a create counts the owner's todos first and refuses one past the quota
  (``count_documents`` then ``insert_one``: the plain way, which concurrent
  creates can overshoot);
- listing is keyset-paged by ``(created_at, _id)`` with a signed cursor.

It is a measuring instrument: no rate limits, no OpenAPI, errors only as far
as the scenarios need them. Settings come from the environment: ``MONGO_URI``,
``MONGO_DB``, ``JWT_SECRET_KEY``, ``TODOS_PER_USER``.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from bson import ObjectId
from flask import Flask, Response, current_app, jsonify, request
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    create_refresh_token,
    get_jwt,
    jwt_required,
)
from itsdangerous import BadSignature, URLSafeSerializer
from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.errors import DuplicateKeyError

USERNAME = re.compile(r"[A-Za-z0-9_.-]{3,32}")
TAG = re.compile(r"[a-z0-9_-]{1,32}")
OBJECT_ID = re.compile(r"[0-9a-f]{24}")
PRIORITIES = {"low", "normal", "high"}
WRITABLE = {"title", "notes", "completed", "due_at", "priority", "tags"}


class Problem(Exception):
    """An error answer: status, code and detail as problem+json."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        JWT_SECRET_KEY=os.environ["JWT_SECRET_KEY"],
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(minutes=15),
        JWT_REFRESH_TOKEN_EXPIRES=timedelta(days=30),
        MAX_CONTENT_LENGTH=64 * 1024,
        TODOS_PER_USER=int(os.environ.get("TODOS_PER_USER", "10000")),
    )
    client: MongoClient[dict[str, Any]] = MongoClient(
        os.environ["MONGO_URI"], tz_aware=True, serverSelectionTimeoutMS=2000
    )
    db = client[os.environ.get("MONGO_DB", "peer")]
    db.users.create_index("username_key", unique=True)
    db.todos.create_index([("owner", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)])
    app.extensions["db"] = db
    app.extensions["hasher"] = PasswordHasher()  # argon2id, the library's defaults
    app.extensions["cursors"] = URLSafeSerializer(app.config["JWT_SECRET_KEY"], salt="cursor")

    jwt = JWTManager(app)

    @jwt.token_in_blocklist_loader
    def session_closed(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
        """One lookup per authenticated request: is the token's session still open?"""
        return db.sessions.find_one({"_id": ObjectId(payload["sid"])}, {"_id": 1}) is None

    @app.errorhandler(Problem)
    def problem(error: Problem) -> Response:
        body = {"status": error.status, "code": error.code, "detail": error.detail}
        response = jsonify(body)
        response.status_code = error.status
        response.mimetype = "application/problem+json"
        return response

    register_routes(app)
    return app


def database() -> Any:
    return current_app.extensions["db"]


def body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise Problem(422, "validation_failed", "Send a JSON object.")
    return data


def timestamp(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def now() -> datetime:
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def todo_json(doc: dict[str, Any]) -> dict[str, Any]:
    """The API's todo shape, written out again: the peer never imports the API's code."""
    return {
        "id": str(doc["_id"]),
        "title": doc["title"],
        "notes": doc["notes"],
        "completed": doc["completed"],
        "completed_at": timestamp(doc["completed_at"]),
        "due_at": timestamp(doc["due_at"]),
        "priority": doc["priority"],
        "tags": doc["tags"],
        "created_at": timestamp(doc["created_at"]),
        "updated_at": timestamp(doc["updated_at"]),
        "version": doc["version"],
    }


def with_etag(doc: dict[str, Any], status: int = 200) -> Response:
    response = jsonify(todo_json(doc))
    response.status_code = status
    response.headers["ETag"] = f'"{doc["version"]}"'
    return response


def checked_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The writable fields of a body, validated; anything unknown is refused."""
    unknown = set(data) - WRITABLE
    if unknown:
        raise Problem(422, "validation_failed", f"Unknown fields: {sorted(unknown)}")
    fields: dict[str, Any] = {}
    if "title" in data:
        title = data["title"].strip() if isinstance(data["title"], str) else ""
        if not 1 <= len(title) <= 200:
            raise Problem(422, "validation_failed", "title: 1 to 200 characters")
        fields["title"] = title
    if "notes" in data:
        if not isinstance(data["notes"], str) or len(data["notes"]) > 10_000:
            raise Problem(422, "validation_failed", "notes: up to 10,000 characters")
        fields["notes"] = data["notes"]
    if "completed" in data:
        if not isinstance(data["completed"], bool):
            raise Problem(422, "validation_failed", "completed: a boolean")
        fields["completed"] = data["completed"]
    if "priority" in data:
        if data["priority"] not in PRIORITIES:
            raise Problem(422, "validation_failed", "priority: low, normal or high")
        fields["priority"] = data["priority"]
    if "tags" in data:
        tags = data["tags"] if isinstance(data["tags"], list) else [None]
        lowered = [tag.lower() if isinstance(tag, str) else "" for tag in tags]
        if len(lowered) > 20 or not all(TAG.fullmatch(tag) for tag in lowered):
            raise Problem(422, "validation_failed", "tags: up to 20 of a-z0-9_-")
        fields["tags"] = list(dict.fromkeys(lowered))
    if "due_at" in data:
        due = data["due_at"]
        try:
            fields["due_at"] = None if due is None else datetime.fromisoformat(due)
        except (TypeError, ValueError):
            raise Problem(422, "validation_failed", "due_at: an RFC 3339 timestamp") from None
    return fields


def todo_id(value: str) -> ObjectId:
    if not OBJECT_ID.fullmatch(value):
        raise Problem(404, "not_found", "No such todo.")
    return ObjectId(value)


def owner() -> ObjectId:
    return ObjectId(get_jwt()["sub"])


def register_routes(app: Flask) -> None:
    @app.get("/healthz")
    def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> Any:
        database().command("ping")
        return {"status": "ok", "checks": {"mongo": "ok"}}

    @app.post("/api/v1/auth/register")
    def register() -> Any:
        data = body()
        username, password = data.get("username"), data.get("password")
        if not isinstance(username, str) or not USERNAME.fullmatch(username):
            raise Problem(422, "validation_failed", "username: 3 to 32 of A-Za-z0-9_.-")
        if not isinstance(password, str) or not 8 <= len(password) <= 128:
            raise Problem(422, "validation_failed", "password: 8 to 128 characters")
        user = {
            "username": username,
            "username_key": username.lower(),
            "password_hash": current_app.extensions["hasher"].hash(password),
            "created_at": now(),
        }
        try:
            database().users.insert_one(user)
        except DuplicateKeyError:
            raise Problem(409, "username_taken", "That username is taken.") from None
        account = {"id": str(user["_id"]), "username": username}
        return {**account, "created_at": timestamp(user["created_at"])}, 201

    @app.post("/api/v1/auth/login")
    def login() -> Any:
        data = body()
        user = database().users.find_one({"username_key": str(data.get("username")).lower()})
        try:
            if user is None:
                raise VerificationError
            current_app.extensions["hasher"].verify(user["password_hash"], data.get("password"))
        except (VerificationError, TypeError):
            raise Problem(401, "invalid_credentials", "Wrong username or password.") from None
        session = database().sessions.insert_one({"user_id": user["_id"], "created_at": now()})
        claims = {"sid": str(session.inserted_id)}
        subject = str(user["_id"])
        return {
            "access_token": create_access_token(subject, additional_claims=claims),
            "refresh_token": create_refresh_token(subject, additional_claims=claims),
            "token_type": "Bearer",
            "expires_in": 900,
        }

    @app.get("/api/v1/auth/me")
    @jwt_required()
    def me() -> Any:
        user = database().users.find_one({"_id": owner()})
        if user is None:
            raise Problem(401, "token_revoked", "The account is gone.")
        account = {"id": str(user["_id"]), "username": user["username"]}
        return {**account, "created_at": timestamp(user["created_at"])}

    @app.post("/api/v1/todos")
    @jwt_required()
    def create_todo() -> Any:
        fields = checked_fields(body())
        if "title" not in fields:
            raise Problem(422, "validation_failed", "title is required")
        todos = database().todos
        limit = current_app.config["TODOS_PER_USER"]
        if todos.count_documents({"owner": owner()}) >= limit:
            raise Problem(409, "quota_exceeded", f"At most {limit} todos.")
        moment = now()
        completed = fields.get("completed", False)
        doc = {
            "owner": owner(),
            "title": fields["title"],
            "notes": fields.get("notes", ""),
            "completed": completed,
            "completed_at": moment if completed else None,
            "due_at": fields.get("due_at"),
            "priority": fields.get("priority", "normal"),
            "tags": fields.get("tags", []),
            "created_at": moment,
            "updated_at": moment,
            "version": 1,
        }
        todos.insert_one(doc)
        response = with_etag(doc, 201)
        response.headers["Location"] = f"/api/v1/todos/{doc['_id']}"
        return response

    @app.get("/api/v1/todos")
    @jwt_required()
    def list_todos() -> Any:
        limit = request.args.get("limit", "20")
        if not limit.isdigit() or not 1 <= int(limit) <= 100:
            raise Problem(422, "validation_failed", "limit: 1 to 100")
        query: dict[str, Any] = {"owner": owner()}
        cursors = current_app.extensions["cursors"]
        if "cursor" in request.args:
            try:
                created_at, last_id = cursors.loads(request.args["cursor"])
            except BadSignature:
                raise Problem(422, "validation_failed", "cursor: not one of ours") from None
            moment = datetime.fromisoformat(created_at)
            query["$or"] = [
                {"created_at": {"$lt": moment}},
                {"created_at": moment, "_id": {"$lt": ObjectId(last_id)}},
            ]
        found = list(
            database()
            .todos.find(query)
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .limit(int(limit) + 1)
        )
        page = found[: int(limit)]
        next_cursor = None
        if len(found) > len(page):
            last = page[-1]
            next_cursor = cursors.dumps([last["created_at"].isoformat(), str(last["_id"])])
        return {"items": [todo_json(doc) for doc in page], "next_cursor": next_cursor}

    @app.get("/api/v1/todos/<todo>")
    @jwt_required()
    def get_todo(todo: str) -> Any:
        doc = database().todos.find_one({"_id": todo_id(todo), "owner": owner()})
        if doc is None:
            raise Problem(404, "not_found", "No such todo.")
        return with_etag(doc)

    @app.patch("/api/v1/todos/<todo>")
    @jwt_required()
    def update_todo(todo: str) -> Any:
        fields = checked_fields(body())
        if not fields:
            raise Problem(422, "validation_failed", "Send at least one field.")
        found = {"_id": todo_id(todo), "owner": owner()}
        if "completed" in fields:
            fields["completed_at"] = now() if fields["completed"] else None
        todos = database().todos
        changed = todos.update_one(
            found, {"$set": {**fields, "updated_at": now()}, "$inc": {"version": 1}}
        )
        if changed.matched_count == 0:
            raise Problem(404, "not_found", "No such todo.")
        return with_etag(todos.find_one(found))
