"""Todos: ``/api/v1/todos``."""

from __future__ import annotations

from quart import Blueprint
from quart_schema import tag_blueprint

blueprint = Blueprint("todos", __name__)
tag_blueprint(blueprint, ["todos"])
