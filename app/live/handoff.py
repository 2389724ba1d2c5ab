"""Event streams leave Quart once their response has started.

Quart keeps a request's machinery (the request object, two tasks, their
queues and events: about 10 KiB) until the response body ends, which for an
event stream is hours later, and a worker holds thousands of them. So the
events view does everything a request does (authentication, validation, the
stream's registration, headers, the access log) and answers with an empty
streaming body while naming its stream in the ASGI scope. This middleware
holds back Quart's end of that body and, once Quart is done with the
request, lets the stream write the rest of the response itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPScope,
    Scope,
)
from quart import Response, request

from .stream import EventStream

SCOPE_KEY = "todo_api.event_stream"
#: Header pairs shared by every stream's response: at most this many, and
#: never the request id (unique to each response).
SHARED_HEADERS = 32
UNIQUE_HEADERS = frozenset({b"x-request-id"})

ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]]


async def _no_body() -> AsyncIterator[bytes]:
    """An empty streaming body: no Content-Length, so the stream may follow."""
    return
    yield


def hand_off(stream: EventStream) -> Response:
    """The events view's response: its headers now, its body written by ``stream``."""
    _extra(request.scope)[SCOPE_KEY] = stream
    return Response(_no_body(), mimetype="text/event-stream")


def _extra(scope: Any) -> dict[str, Any]:
    """The scope as a plain dict, for the one key this module adds to it."""
    return cast(dict[str, Any], scope)


class HandOff:
    """ASGI middleware around Quart: serves a handed-off stream after Quart returns."""

    def __init__(self, asgi_app: ASGIApp) -> None:
        self.asgi_app = asgi_app
        self._header_pairs: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.asgi_app(scope, receive, send)
            return
        stream = await self._through_quart(scope, receive, send)
        if stream is None:
            return
        with stream:  # see EventStream: why the wait is written out here
            if await stream.start(send):
                while (await receive())["type"] != "http.disconnect":
                    pass

    async def _through_quart(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> EventStream | None:
        """Run the request through Quart; the stream to serve, if it was handed off."""
        status = 0
        held = False  # the body's end, held back for the stream
        disconnected = False

        async def watched_receive() -> ASGIReceiveEvent:
            nonlocal disconnected
            message = await receive()
            disconnected = disconnected or message["type"] == "http.disconnect"
            return message

        async def holding_send(message: ASGISendEvent) -> None:
            nonlocal status, held
            if message["type"] == "http.response.start":
                status = message["status"]
                if SCOPE_KEY in _extra(scope):
                    message["headers"] = [self._shared(pair) for pair in message["headers"]]
            elif (
                SCOPE_KEY in _extra(scope)
                and status == 200
                and scope["method"] == "GET"
                and not message.get("more_body", False)
                and not message.get("body")
            ):
                held = True
                return
            await send(message)

        served = False
        try:
            await self.asgi_app(scope, watched_receive, holding_send)
            served = held and not disconnected
        finally:
            stream: EventStream | None = _extra(scope).pop(SCOPE_KEY, None)
            if stream is not None and not served:
                stream.close()  # Quart failed the request, the client left, or HEAD
        if held and not served:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return stream if served else None

    def _shared(self, pair: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
        """One copy of a header pair for every stream.

        The server keeps a response's start (its headers) until the response
        ends: about 1 KiB per open stream when each has its own copy.
        """
        shared = self._header_pairs.get(pair)
        if shared is not None:
            return shared
        if pair[0] not in UNIQUE_HEADERS and len(self._header_pairs) < SHARED_HEADERS:
            self._header_pairs[pair] = pair
        return pair
