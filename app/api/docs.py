"""``/docs``: an interactive API explorer that works with no internet access.

Swagger UI's files come from the ``swagger-ui-bundle-v2`` package and are
served by the app itself; the page's CSP allows its own origin only.
"""

from __future__ import annotations

from pathlib import Path

from quart import Blueprint, Response, send_from_directory
from quart_schema import hide
from swagger_ui_bundle import swagger_ui_path

from ..errors import ApiError

blueprint = Blueprint("docs", __name__)

PAGE_DIRECTORY = Path(__file__).resolve().parent.parent / "static" / "docs"
#: Only what the explorer needs: its own scripts, styles, images and API calls.
#: Swagger UI sets inline style attributes, hence 'unsafe-inline' for styles only.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)
ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "index.css", "favicon-32x32.png"})


def _with_csp(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


@blueprint.get("/docs")
@hide
async def explorer() -> Response:
    """The explorer page."""
    return _with_csp(await send_from_directory(PAGE_DIRECTORY, "index.html"))


@blueprint.get("/docs/explorer.js")
@hide
async def explorer_script() -> Response:
    return _with_csp(await send_from_directory(PAGE_DIRECTORY, "explorer.js"))


@blueprint.get("/docs/assets/<name>")
@hide
async def asset(name: str) -> Response:
    """Swagger UI's files, from the installed package."""
    if name not in ASSETS:
        raise ApiError(404, "not_found", "No such asset.")
    response = await send_from_directory(swagger_ui_path, name)
    response.cache_control.public = True
    response.cache_control.max_age = 86400
    return _with_csp(response)
