"""The OpenAPI document and the offline explorer."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate


async def test_openapi_document_lists_the_routes(client: Any) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec = await response.get_json()
    assert spec["openapi"].startswith("3.1")
    assert {"/healthz", "/readyz", "/api/v1/auth/login", "/api/v1/auth/me"} <= set(spec["paths"])
    assert not any(path.startswith("/docs") or path == "/openapi.json" for path in spec["paths"])
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/api/v1/auth/me"]["get"]["security"] == [{"bearer": []}]


async def test_explorer_is_served_from_the_app_itself(client: Any) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    html = await page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html  # no outside assets
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    for path in [
        "/docs/explorer.js",
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
    ]:
        asset = await client.get(path)
        assert asset.status_code == 200, path
        assert len(await asset.get_data()) > 100
    missing = await client.get("/docs/assets/swagger-ui.js.map")
    assert missing.status_code == 404


async def test_openapi_document_is_valid_and_documents_problems(client: Any) -> None:

    spec = await (await client.get("/openapi.json")).get_json()
    validate(spec)
    problem = spec["components"]["responses"]["Unauthorized"]
    assert problem["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert "WWW-Authenticate" in problem["headers"]
    me = spec["paths"]["/api/v1/auth/me"]["get"]["responses"]
    assert me["401"] == {"$ref": "#/components/responses/Unauthorized"}
    assert me["200"]["content"]["application/json"]["schema"]["$ref"].startswith(
        "#/components/schemas/"
    )
    password = spec["paths"]["/api/v1/auth/password"]["post"]["responses"]
    assert {"400", "401", "413", "415", "422", "500", "503"} <= set(password)


async def test_openapi_documents_the_event_stream_and_its_events(client: Any) -> None:
    spec = await (await client.get("/openapi.json")).get_json()
    stream = spec["paths"]["/api/v1/todos/events"]["get"]
    ok = stream["responses"]["200"]
    assert ok["content"] == {
        "text/event-stream": {"schema": {"$ref": "#/components/schemas/StreamEvent"}}
    }
    assert {"Cache-Control", "X-Accel-Buffering"} <= set(ok["headers"])
    assert {"401", "422", "429", "503"} <= set(stream["responses"])
    parameters = {parameter["name"] for parameter in stream["parameters"]}
    assert {"ticket", "Last-Event-ID"} <= parameters
    schemas = spec["components"]["schemas"]
    variants = [ref["$ref"].rsplit("/", 1)[1] for ref in schemas["StreamEvent"]["oneOf"]]
    data_of = {
        schemas[name]["properties"]["event"]["const"]: schemas[name]["properties"]["data"]["$ref"]
        for name in variants
    }
    assert data_of == {
        "created": "#/components/schemas/Todo",
        "updated": "#/components/schemas/Todo",
        "deleted": "#/components/schemas/DeletedEvent",
        "reset": "#/components/schemas/ResetEvent",
        "revoked": "#/components/schemas/RevokedEvent",
        "expired": "#/components/schemas/ExpiredEvent",
        "shutdown": "#/components/schemas/ShutdownEvent",
    }
    assert set(schemas["DeletedEvent"]["required"]) == {"id", "version"}
    tickets = spec["paths"]["/api/v1/todos/events/tickets"]["post"]["responses"]
    assert tickets["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StreamTicket"
    }
