"""Every request's id, so that its log lines (and its error reports) can be joined.

The id is the caller's `X-Request-ID` when it is a sane value (a load balancer or another service
set it), a new random one otherwise. It is returned in the response's `X-Request-ID` header, put
on every log record written while the request is served (`RequestIdFilter`), and can be read
anywhere during the request with `current_request_id()`.
"""

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEADER = b"x-request-id"
#: What is taken from a caller: letters, digits and `.-_:` only, 1 to 128 of them. Anything else
#: (a log-injection attempt, a huge value) gets a new id instead.
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: On a log record written outside any request.
NO_REQUEST = "-"

_current: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served, or None outside a request."""
    return _current.get()


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's id if it is sane, else a new one (32 hex digits)."""
    for name, value in headers:
        if name == HEADER:
            text = value.decode("latin-1")
            if _SANE.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Gives each HTTP request and WebSocket connection its id; answers carry it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope["headers"])
        header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        # Not reset afterwards: the server serves each request in a task (and context) of its
        # own, and its log line about an exception that escaped the app comes after the app.
        _current.set(request_id)
        await self.app(scope, receive, send_with_id)


class RequestIdFilter(logging.Filter):
    """Puts `request_id` on every record (`NO_REQUEST` outside a request); filters nothing out."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _current.get() or NO_REQUEST
        return True
