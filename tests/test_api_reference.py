"""docs/api.md, the OpenAPI document and the code agree on routes and error codes.

The page must name every operation and every error code the document has,
and nothing the document lacks; the document's list of codes must be the
codes the code can answer with. A new route or code fails here until the
document and the page say what it is.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from quart.typing import TestClientProtocol

from app.errors import CODE_BY_STATUS
from scripts.devserver import ROOT

PAGE = ROOT / "docs" / "api.md"
METHODS = ("get", "put", "post", "patch", "delete", "head", "options")
#: `METHOD /path` anywhere on the page (a query string is not part of the route).
NAMED_ROUTE = re.compile(r"`(GET|PUT|POST|PATCH|DELETE|HEAD|OPTIONS) (/[^`?\s]*)")
#: A row of the codes table: | 404 | `not_found` | ...
CODE_ROW = re.compile(r"^\| (\d{3}) \| `([a-z_]+)` \|", re.MULTILINE)

Spec = dict[str, Any]


@pytest.fixture
async def spec(client: TestClientProtocol) -> Spec:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: Spec = await response.get_json()
    return document


def operations(spec: Spec) -> Iterator[tuple[str, str]]:
    for path, item in spec["paths"].items():
        for method in item:
            if method in METHODS:
                yield method.upper(), path


def page_codes() -> dict[str, int]:
    rows = CODE_ROW.findall(PAGE.read_text())
    codes = {code: int(status) for status, code in rows}
    assert len(codes) == len(rows), "a code is listed twice"
    return codes


async def test_the_page_names_every_operation_of_the_document(spec: Spec) -> None:
    text = PAGE.read_text()
    missing = [f"{m} {p}" for m, p in operations(spec) if f"`{m} {p}`" not in text]
    assert not missing, missing


async def test_the_page_names_every_operation_id_with_its_route(spec: Spec) -> None:
    text = PAGE.read_text()
    for method, path in operations(spec):
        operation_id = spec["paths"][path][method.lower()]["operationId"]
        row = f"| `{method} {path}` | `{operation_id}` |"
        assert row in text, row


async def test_every_route_the_page_names_is_in_the_document(spec: Spec) -> None:
    documented = set(operations(spec))
    named = set(NAMED_ROUTE.findall(PAGE.read_text()))
    assert named, "the page names no route"
    assert named <= documented, sorted(named - documented)


async def test_the_page_lists_exactly_the_documents_error_codes(spec: Spec) -> None:
    document = {code: entry["status"] for code, entry in spec["x-problem-codes"].items()}
    assert page_codes() == document


async def test_each_error_status_of_an_operation_has_its_codes_listed(spec: Spec) -> None:
    listed = {entry["status"] for entry in spec["x-problem-codes"].values()}
    for method, path in operations(spec):
        responses = spec["paths"][path][method.lower()]["responses"]
        errors = {int(status) for status in responses if int(status) >= 400}
        assert errors <= listed, (method, path, errors - listed)


def _code_literals(tree: ast.AST) -> Iterator[str]:
    """Codes given to ``ApiError(status, code, ...)`` and ``unauthorized(code, ...)``."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        position = {"ApiError": 1, "unauthorized": 0}.get(name or "")
        if position is None:
            continue
        candidates = [kw.value for kw in node.keywords if kw.arg == "code"]
        if len(node.args) > position:
            candidates.append(node.args[position])
        for value in candidates:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                yield value.value


def raised_codes(package: Path) -> set[str]:
    return {
        code
        for source in package.rglob("*.py")
        for code in _code_literals(ast.parse(source.read_text(), str(source)))
    }


async def test_the_documents_codes_are_the_codes_the_app_answers_with(spec: Spec) -> None:
    raised = raised_codes(ROOT / "app")
    assert {"username_taken", "token_revoked", "rate_limited"} <= raised  # the scan works
    documented = set(spec["x-problem-codes"])
    assert raised <= documented, sorted(raised - documented)
    # Codes of the framework's own errors (404, 405, ...) come from CODE_BY_STATUS.
    assert documented <= raised | set(CODE_BY_STATUS.values()), sorted(
        documented - raised - set(CODE_BY_STATUS.values())
    )
