"""The OpenAPI document as client generators and linters read it (issue: first contact).

`make clients` runs the generators themselves; these tests hold the document
to the properties they depend on, so a regression shows up in `make test`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import jsonschema
import pytest
from quart.typing import TestClientProtocol

from app.openapi import HEADERS
from scripts.clients import EXPLAINED_WARNINGS
from scripts.devserver import ROOT
from tests.conftest import Api

Spec = dict[str, Any]
METHODS = {"get", "post", "put", "patch", "delete"}
#: OpenAPI ignores Content-Type in response headers (the media type says it).
UNDECLARED = {"content-type", "content-length"}


@pytest.fixture
async def spec(client: TestClientProtocol) -> Spec:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    body: Spec = await response.get_json()
    return body


def operations(spec: Spec) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every object in the document, at any depth."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def component(spec: Spec, ref: str) -> dict[str, Any]:
    _, _, kind, name = ref.split("/")
    found: dict[str, Any] = spec["components"][kind][name]
    return found


def response_of(spec: Spec, path: str, method: str, status: int) -> dict[str, Any]:
    response: dict[str, Any] = spec["paths"][path][method]["responses"][str(status)]
    return component(spec, response["$ref"]) if "$ref" in response else response


def schema_of(spec: Spec, name: str) -> dict[str, Any]:
    """A named schema that validates with jsonschema (refs resolved in the document)."""
    return {**spec["components"]["schemas"][name], "components": spec["components"]}


async def test_response_timestamps_are_date_times(spec: Spec) -> None:
    schemas = spec["components"]["schemas"]
    todo = schemas["Todo"]["properties"]
    for name in ["created_at", "updated_at"]:
        assert todo[name]["format"] == "date-time" and todo[name]["type"] == "string"
    for name in ["due_at", "completed_at"]:
        variants = todo[name]["anyOf"]
        assert {"type": "null"} in variants
        assert any(variant.get("format") == "date-time" for variant in variants)
    assert schemas["UserOut"]["properties"]["created_at"]["format"] == "date-time"


async def test_every_request_body_is_required(spec: Spec) -> None:
    bodies = [op["requestBody"] for _, _, op in operations(spec) if "requestBody" in op]
    assert len(bodies) >= 6
    assert all(body["required"] is True for body in bodies)


async def test_query_parameters_are_required_per_the_api_and_never_null(spec: Spec) -> None:
    clear = spec["paths"]["/api/v1/todos"]["delete"]["parameters"]
    assert clear == [
        {
            "name": "completed",
            "in": "query",
            "required": True,
            "schema": {"type": "boolean", "const": True},
        }
    ]
    listing = {p["name"]: p for p in spec["paths"]["/api/v1/todos"]["get"]["parameters"]}
    assert listing["completed"]["schema"] == {"type": "boolean"}  # a bool in generated clients
    assert not any(p.get("required") for p in listing.values())
    for parameter in listing.values():
        assert "null" not in str(parameter["schema"]), parameter  # a query string has no null
    assert listing["limit"]["schema"] == {
        "default": 20,
        "minimum": 1,
        "maximum": 100,
        "type": "integer",
    }


async def test_no_pydantic_only_keywords(spec: Spec) -> None:
    """`ge`/`le` are pydantic's; JSON Schema (and every tool) reads minimum/maximum."""
    for node in walk(spec):
        assert not {"ge", "le", "gt", "lt"} & set(node), node


async def test_sort_members_have_names(spec: Spec) -> None:
    parameters = spec["paths"]["/api/v1/todos"]["get"]["parameters"]
    sort = next(p for p in parameters if p["name"] == "sort")["schema"]
    assert sort == {"$ref": "#/components/schemas/Sort", "default": "-created_at"}
    values, names = (
        component(spec, sort["$ref"])["enum"],
        component(spec, sort["$ref"])["x-enum-varnames"],
    )
    assert len(names) == len(values) == len(set(names))
    assert dict(zip(values, names, strict=True))["-due_at"] == "DUE_AT_DESC"
    assert all(name.isidentifier() for name in names)


async def test_priority_is_one_named_schema(spec: Spec) -> None:
    """One Priority type in generated clients, not one per model."""
    schemas = spec["components"]["schemas"]
    assert schemas["Priority"] == {"enum": ["low", "normal", "high"], "type": "string"}
    for model in ["Todo", "TodoCreate", "TodoPatch"]:
        assert schemas[model]["properties"]["priority"]["$ref"] == "#/components/schemas/Priority"


async def test_request_schemas_have_no_defaults_and_responses_require_every_field(
    spec: Spec,
) -> None:
    """A default makes openapi-typescript require the field; responses list what is always there."""
    request_refs = {
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        for _, _, op in operations(spec)
        if "requestBody" in op
    }
    for ref in request_refs:
        for name, prop in component(spec, ref)["properties"].items():
            assert "default" not in prop, (ref, name)
    create = spec["components"]["schemas"]["TodoCreate"]
    assert create["required"] == ["title"]
    assert 'Defaults to `"normal"`' in create["properties"]["priority"]["description"]
    for name in ["Todo", "UserOut", "TokenPair", "TodoPage", "Deleted", "Index", "Readiness"]:
        schema = spec["components"]["schemas"][name]
        assert set(schema["required"]) == set(schema["properties"]), name


async def test_problem_errors_is_optional_and_never_null(spec: Spec, api: Api) -> None:
    problem = spec["components"]["schemas"]["Problem"]
    assert "errors" not in problem["required"]
    assert problem["properties"]["errors"]["type"] == "array"
    assert "default" not in problem["properties"]["errors"]
    # A real 404 (no errors) and a real 422 (errors) both fit the schema.
    headers = await api.headers()
    not_found = await api.client.get("/api/v1/todos/" + "0" * 24, headers=headers)
    invalid = await api.client.post("/api/v1/todos", json={}, headers=headers)
    for response in [not_found, invalid]:
        jsonschema.validate(await response.get_json(), schema_of(spec, "Problem"))
    assert "errors" not in await not_found.get_json()


async def test_servers_license_and_tags_are_declared(spec: Spec) -> None:
    assert spec["servers"] == [{"url": "/", "description": "The server that served this document"}]
    assert spec["info"]["license"] == {"name": "MIT", "identifier": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    used = {tag for _, _, op in operations(spec) for tag in op.get("tags", [])}
    declared = {tag["name"]: tag for tag in spec["tags"]}
    assert used == set(declared) and all(tag["description"] for tag in declared.values())


async def test_public_operations_say_so_and_protected_ones_name_the_scheme(spec: Spec) -> None:
    public = {
        ("/", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/api/v1/auth/register", "post"),
        ("/api/v1/auth/login", "post"),
    }
    for path, method, operation in operations(spec):
        expected = [] if (path, method) in public else [{"bearer": []}]
        assert operation["security"] == expected, (path, method)
        if expected:
            assert "401" in operation["responses"], (path, method)


async def test_no_unused_components(spec: Spec) -> None:
    used = {
        node["$ref"]
        for node in walk({key: value for key, value in spec.items() if key != "components"})
        if "$ref" in node
    }
    pending = list(used)
    while pending:
        for node in walk(component(spec, pending.pop())):
            if "$ref" in node and node["$ref"] not in used:
                used.add(node["$ref"])
                pending.append(node["$ref"])
    for kind in ["schemas", "responses", "headers"]:
        for name in spec["components"][kind]:
            assert f"#/components/{kind}/{name}" in used, (kind, name)


async def test_summaries_are_plain_text_and_descriptions_are_not_empty(spec: Spec) -> None:
    for path, method, operation in operations(spec):
        assert operation["summary"] and "`" not in operation["summary"], (path, method)
        assert operation.get("description", "x"), (path, method)
        assert operation["operationId"]
    assert "``" not in str(spec)  # reStructuredText from docstrings, not Markdown


async def test_the_412_declares_the_etag_it_sends(spec: Spec) -> None:
    for method in ["patch", "delete"]:
        response = response_of(spec, "/api/v1/todos/{todo_id}", method, 412)
        assert "ETag" in response["headers"]


async def test_every_header_a_response_sends_is_declared(spec: Spec, api: Api) -> None:
    """Real exchanges: each API header in a response is documented for that status."""
    tokens = await api.user_tokens()
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    created = await api.client.post("/api/v1/todos", json={"title": "x"}, headers=auth)
    item = "/api/v1/todos/{todo_id}"
    location = created.headers["Location"]
    exchanges = [
        ("/", "get", await api.client.get("/")),
        ("/api/v1/todos", "post", created),
        ("/api/v1/todos", "get", await api.client.get("/api/v1/todos", headers=auth)),
        (item, "get", await api.client.get(location, headers=auth)),
        (item, "get", await api.client.get(location, headers={**auth, "If-None-Match": '"1"'})),
        (item, "patch", await api.client.patch(location, json={}, headers=auth)),
        (item, "patch", await api.client.patch(location, json={"notes": "n"}, headers=auth)),
        (item, "delete", await api.client.delete(location, headers={**auth, "If-Match": '"1"'})),
        ("/api/v1/auth/me", "get", await api.client.get("/api/v1/auth/me")),
        ("/api/v1/auth/logout", "post", await api.client.post("/api/v1/auth/logout", headers=auth)),
    ]
    statuses = [response.status_code for _, _, response in exchanges]
    assert statuses == [200, 201, 200, 200, 304, 422, 200, 412, 401, 204]
    for path, method, response in exchanges:
        documented = response_of(spec, path, method, response.status_code)
        sent = {name.lower() for name, _ in response.headers.items()} - UNDECLARED
        assert {"x-request-id", "x-content-type-options", "referrer-policy"} <= sent
        declared = {name.lower() for name in documented.get("headers", {})}
        assert sent <= declared, (path, method, response.status_code, sent - declared)
        assert declared <= {name.lower() for name in HEADERS}


async def test_the_index_links_to_the_docs_probes_and_api(
    client: TestClientProtocol, spec: Spec
) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = await response.get_json()
    assert body == {
        "name": "Todo API",
        "version": "1.0.0",
        "links": {
            "docs": "/docs",
            "openapi": "/openapi.json",
            "health": "/healthz",
            "ready": "/readyz",
            "api": "/api/v1",
            "todos": "/api/v1/todos",
            "events": "/api/v1/todos/events",
        },
    }
    links = body["links"]
    for name in ("docs", "openapi", "health", "ready"):
        assert (await client.get(links[name])).status_code == 200, name
    for name in ("todos", "events"):
        assert links[name] in spec["paths"], name
    assert all(path.startswith(links["api"] + "/") for path in spec["paths"] if "/api" in path)
    assert (await client.get(links["todos"])).status_code == 401  # there, behind a token


async def test_the_index_is_documented_without_a_database_error(spec: Spec) -> None:
    index = spec["paths"]["/"]["get"]
    assert index["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Index"
    }
    assert set(index["responses"]) == {"200", "500"}  # no database, so no 503


def test_the_docs_explain_every_redocly_warning_make_clients_accepts() -> None:
    """`make clients` fails on any other warning; each accepted one is explained in the docs."""
    page = (ROOT / "docs" / "clients.md").read_text()
    explanation = page[page.index("Redocly's remaining warnings") :][:1200]
    for rule, pointer in EXPLAINED_WARNINGS:
        path = pointer.split("/")[2].replace("~1", "/")
        method = pointer.split("/")[3].upper()
        assert rule in explanation and f"`{method} {path}`" in explanation, (rule, pointer)


async def test_every_operation_has_its_own_snake_case_verb_noun_id(spec: Spec) -> None:
    ids = [op.get("operationId") for _, _, op in operations(spec)]
    assert all(ids), "an operation without an explicit @operation_id"
    assert len(set(ids)) == len(ids), ids
    for operation_id in ids:
        words = operation_id.split("_")
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", operation_id), operation_id
        # No doubled word (get_get_todo) and no HTTP method glued in front of a verb.
        assert all(a != b for a, b in pairwise(words)), operation_id
        assert words[0] not in {"post", "put", "patch"}, operation_id
