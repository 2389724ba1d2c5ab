"""A whole session through the client openapi-python-client generates, and nothing else.

`make clients` generates ``todo_api_client`` from the running server's
document, type-checks this file against it with ``mypy --strict``, and runs it:
every call goes through the generated client, and every value is checked as
the type the client gives it (timestamps are datetimes, errors are Problems
with their code).

Usage: python clients/python_session.py BASE_URL (with todo_api_client importable).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from todo_api_client import AuthenticatedClient, Client
from todo_api_client.api.auth import (
    get_account,
    log_in,
    log_out,
    refresh_tokens,
    register,
)
from todo_api_client.api.meta import get_index
from todo_api_client.api.todos import (
    clear_completed_todos,
    create_todo,
    delete_todo,
    get_todo,
    list_todos,
    update_todo,
)
from todo_api_client.models import (
    Credentials,
    Deleted,
    Index,
    LoginBody,
    LoginTokens,
    Priority,
    Problem,
    Sort,
    Todo,
    TodoCreate,
    TodoPage,
    TodoPatch,
    TokenPair,
    UserOut,
)
from todo_api_client.types import UNSET, Response, Unset

T = TypeVar("T")
USERNAME = "generated-client"
PASSWORD = "correct horse battery"


def expect(response: Response[Any], status: int, kind: type[T]) -> T:
    """The parsed body of ``response``, which must have ``status`` and be a ``kind``."""
    print(response.status_code, type(response.parsed).__name__)
    assert response.status_code == status, (response.status_code, response.content)
    assert isinstance(response.parsed, kind), response.parsed
    return response.parsed


def expect_problem(response: Response[Any], status: int, code: str) -> Problem:
    problem = expect(response, status, Problem)
    assert problem.code == code, problem
    assert problem.status == status
    return problem


def expect_empty(response: Response[Any], status: int) -> None:
    print(response.status_code, "(no body)")
    assert response.status_code == status, (response.status_code, response.content)
    assert response.content == b""


def is_utc(moment: datetime) -> bool:
    return moment.utcoffset() == timedelta(0)


def accounts(base_url: str) -> LoginTokens:
    public = Client(base_url=base_url, raise_on_unexpected_status=True)
    index = expect(get_index.sync_detailed(client=public), 200, Index)
    assert index.links.docs == "/docs"
    credentials = Credentials(username=USERNAME, password=PASSWORD)
    user = expect(register.sync_detailed(client=public, body=credentials), 201, UserOut)
    assert isinstance(user.created_at, datetime) and is_utc(user.created_at)
    expect_problem(register.sync_detailed(client=public, body=credentials), 409, "username_taken")
    wrong = LoginBody(username=USERNAME, password="not the password")
    expect_problem(log_in.sync_detailed(client=public, body=wrong), 401, "invalid_credentials")
    login = LoginBody(username=USERNAME, password=PASSWORD)
    tokens = expect(log_in.sync_detailed(client=public, body=login), 200, LoginTokens)
    assert tokens.token_type == "Bearer" and tokens.expires_in > 0 and tokens.device_token
    client = AuthenticatedClient(base_url=base_url, token=tokens.access_token)
    me = expect(get_account.sync_detailed(client=client), 200, UserOut)
    assert me.id == user.id and me.created_at == user.created_at
    return tokens


def todos(client: AuthenticatedClient) -> None:
    due = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    created: list[Todo] = []
    for number in range(3):
        body = TodoCreate(
            title=f"Todo {number}", tags=["Contact"], due_at=due + timedelta(days=number)
        )
        response = create_todo.sync_detailed(client=client, body=body)
        todo = expect(response, 201, Todo)
        assert response.headers["ETag"] == '"1"'
        assert response.headers["Location"] == f"/api/v1/todos/{todo.id}"
        created.append(todo)
    plain = expect(
        create_todo.sync_detailed(client=client, body=TodoCreate(title="Title only")),
        201,
        Todo,
    )
    assert plain.priority is Priority.NORMAL and plain.due_at is None and plain.tags == []
    first = created[0]
    assert isinstance(first.created_at, datetime) and is_utc(first.created_at)
    assert first.due_at == due and first.completed_at is None and first.tags == ["contact"]

    invalid = expect_problem(
        create_todo.sync_detailed(client=client, body=TodoCreate(title="  ")),
        422,
        "validation_failed",
    )
    assert not isinstance(invalid.errors, Unset)
    assert [error.loc for error in invalid.errors] == [["body", "title"]]

    # A filtered listing, two at a time, following next_cursor to the end.
    listed: list[Todo] = []
    cursor: str | Unset = UNSET
    while True:
        page = expect(
            list_todos.sync_detailed(
                client=client,
                tag="contact",
                sort=Sort.DUE_AT_DESC,
                limit=2,
                cursor=cursor,
            ),
            200,
            TodoPage,
        )
        listed.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [todo.id for todo in listed] == [todo.id for todo in reversed(created)]

    not_modified = get_todo.sync_detailed(first.id, client=client, if_none_match='"1"')
    expect_empty(not_modified, 304)
    assert not_modified.headers["ETag"] == '"1"'

    done = TodoPatch(completed=True)
    response = update_todo.sync_detailed(first.id, client=client, body=done, if_match='"1"')
    patched = expect(response, 200, Todo)
    assert response.headers["ETag"] == '"2"' and patched.version == 2
    assert isinstance(patched.completed_at, datetime) and patched.updated_at >= first.updated_at
    # A boolean filter is a bool in the client, sent as `completed=true`.
    finished = expect(list_todos.sync_detailed(client=client, completed=True), 200, TodoPage)
    assert [todo.id for todo in finished.items] == [first.id]

    stale = update_todo.sync_detailed(first.id, client=client, body=done, if_match='"1"')
    expect_problem(stale, 412, "version_conflict")
    assert stale.headers["ETag"] == '"2"'
    unquoted = update_todo.sync_detailed(first.id, client=client, body=done, if_match="2")
    assert '"2"' in expect_problem(unquoted, 412, "version_conflict").detail

    missing = expect_problem(get_todo.sync_detailed("0" * 24, client=client), 404, "not_found")
    assert isinstance(missing.errors, Unset)

    expect_empty(delete_todo.sync_detailed(created[1].id, client=client, if_match='"1"'), 204)
    expect_problem(get_todo.sync_detailed(created[1].id, client=client), 404, "not_found")
    cleared = expect(
        clear_completed_todos.sync_detailed(client=client, completed=True), 200, Deleted
    )
    assert cleared.deleted == 1


def main(base_url: str) -> None:
    tokens = accounts(base_url)
    todos(AuthenticatedClient(base_url=base_url, token=tokens.access_token))
    refreshing = AuthenticatedClient(base_url=base_url, token=tokens.refresh_token)
    renewed = expect(refresh_tokens.sync_detailed(client=refreshing), 200, TokenPair)
    assert renewed.refresh_token != tokens.refresh_token
    client = AuthenticatedClient(base_url=base_url, token=renewed.access_token)
    expect_empty(log_out.sync_detailed(client=client), 204)
    expect_problem(get_account.sync_detailed(client=client), 401, "token_revoked")
    print("python client session: ok")


if __name__ == "__main__":
    main(sys.argv[1])
