"""Live updates: todo changes pushed to the owner's open event streams (SSE).

``hub`` holds the worker's one change stream and its subscribers;
``stream`` serves one client (replay, live events, heartbeats, endings);
``handoff`` lets that stream write its response outside Quart;
``changes`` says what a database change means to a stream; ``sse`` frames
events and reads ids; ``tickets`` lets EventSource authenticate.
"""

from __future__ import annotations

from quart import Quart

from .handoff import HandOff
from .hub import Hub


def init_app(app: Quart) -> None:
    """Give the app its hub and the stream hand-off around its ASGI callable.

    Call it before ``mongo.init_app``: ``after_serving`` functions run in the
    order they were registered, and the streams end before the database
    client closes.
    """
    hub = Hub(app)
    app.extensions["live"] = hub
    app.after_serving(hub.stop)
    app.asgi_app = HandOff(app.asgi_app)  # type: ignore[method-assign]
