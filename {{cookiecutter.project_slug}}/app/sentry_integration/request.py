"""The request path: a lean ASGI middleware instead of the SDK's Starlette and FastAPI integrations.

Those integrations do a lot of work for every request, sampled or not (request-info extractors,
spans around every middleware, patched handlers); on a trivial route that cost more than half the
service's throughput with tracing off (docs/adr/0003). For each HTTP or WebSocket request, this
middleware does only what cannot wait:

- an isolation scope of its own, forked from the server's (without its breadcrumbs), so that
  user, tenant, tags and breadcrumbs stay with their request (probe paths get one too), tagged
  with the request's id (`app/core/request_id.py`);
- the request's trace: the caller's (`sentry-trace`, `baggage`) or a new one;
- with tracing on, a transaction that the SDK samples (`sentry_sdk.start_transaction`); the
  sampling rule is `sample_rate`, used by `init_sentry`'s `traces_sampler`;
- a copy of the first `MAX_BODY_BYTES` of the request body, kept only in case an error is reported.

The request context (method, URL, headers, query, body) is read only when an event is built. An
exception that escapes the app is reported once the server has answered 500; an exception that a
handler turned into a 5xx answer (FastAPI's `HTTPException`, or the team's own handler for any
exception) is reported when that answer starts. Only `sentry_sdk`'s public API is used.
"""

import asyncio
import contextvars
import json
import random
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import sentry_sdk
from sentry_sdk.integrations.asyncio import enable_asyncio_integration

from app.core.request_id import current_request_id
from app.sentry_integration.events import is_client_error, mark_unhandled, was_reported
from app.sentry_integration.transactions import SENDER

if TYPE_CHECKING:
    from sentry_sdk.types import Event, Hint

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
EventProcessor = Callable[["Event", "Hint"], "Event | None"]

_ROUTE_KEY = "sentry.route_template"
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})
_TRACE_HEADERS = frozenset({b"sentry-trace", b"baggage"})
#: How much of a request body is kept for error reports (the SDK's "medium").
MAX_BODY_BYTES = 10_000
_FORM = "application/x-www-form-urlencoded"
_ORIGIN = "auto.http.asgi"


class SentryMiddleware:
    """Wraps the app; see the module's docstring. Requests to `untraced_paths` get only a scope."""

    def __init__(self, app: ASGIApp, *, traces_rate: float, untraced_paths: frozenset[str]) -> None:
        self.app = app
        self.traces_rate = traces_rate
        self.untraced_paths = untraced_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["path"] in self.untraced_paths:  # never traced, but what they record stays theirs
            with sentry_sdk.isolation_scope():
                await self.app(scope, receive, send)
            return
        incoming, has_body = {}, False
        for key, value in scope["headers"]:
            if key in _TRACE_HEADERS:
                incoming[key.decode("latin-1")] = value.decode("latin-1")
            elif key in _BODY_HEADERS:
                has_body = value != b"0"
        with sentry_sdk.isolation_scope() as sentry_scope:
            sentry_sdk.get_current_scope().span = None  # nothing of the server's own context
            sentry_scope.clear_breadcrumbs()  # nor the server's start-up log lines
            request_id = current_request_id()
            if request_id is not None:  # joins the request's events with its log lines
                sentry_scope.set_tag("request_id", request_id)
            body = _BodyCopy(receive) if has_body and kind == "http" else None
            receive = body.receive if body is not None else receive
            sentry_scope.add_event_processor(_request_processor(scope, body))
            # A new trace is sampled here, before any transaction object exists (an unsampled
            # one cost as much again as the rest); a caller's trace is continued and sampled by
            # the SDK, with `traces_sampler`.
            sampled: bool | None = False
            if self.traces_rate and kind == "http":
                if "sentry-trace" in incoming:
                    sampled = None
                elif random.random() < self.traces_rate:  # noqa: S311 - sampling, not secrets
                    sampled = True
                else:
                    _record_unsampled()
            if sampled is False:  # the trace without a transaction: a new one, or the caller's
                if incoming:
                    sentry_scope.generate_propagation_context(incoming)
                else:
                    sentry_scope.set_new_propagation_context()
                await self._serve(scope, receive, send, None)
                return
            transaction = sentry_sdk.continue_trace(
                incoming, op="http.server", name=scope["path"], source="url", origin=_ORIGIN
            )
            if sampled:
                transaction.sampled = True
            with sentry_sdk.start_transaction(
                transaction, custom_sampling_context={"asgi_scope": scope}
            ) as started:
                if sampled:  # the rate that applied, which Sentry scales its counts by
                    transaction.sample_rate = self.traces_rate
                started.set_data("http.request.method", scope.get("method"))
                try:
                    await self._serve(scope, receive, send, started)
                finally:
                    route = _route_template(scope)
                    if route is not None and started.sampled:
                        sentry_sdk.get_current_scope().set_transaction_name(route, source="route")
                    if started.sampled and SENDER.fast:  # before the SDK's exit would finish it
                        transaction.finish(scope=SENDER)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, span: Any) -> None:
        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if span is not None:
                    span.set_http_status(status)
                if status >= 500:
                    _report_handled_server_error()
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except Exception as error:
            if span is not None:
                span.set_http_status(500)
            _capture_later(error)
            raise


def _record_unsampled() -> None:
    """Count a request that was not sampled as the SDK does, for Sentry's statistics."""
    transport = sentry_sdk.get_client().transport
    if transport is not None:
        transport.record_lost_event("sample_rate", data_category="transaction")
        transport.record_lost_event("sample_rate", data_category="span")


def _report_handled_server_error() -> None:
    """Report the exception that an exception handler is answering with a 5xx, if any.

    Starlette sends a handler's response from inside the `except` block that caught the exception,
    so the exception is still the one being handled: whatever the handler (FastAPI's own for
    `HTTPException`, or one the team registered) and whenever it was registered.
    """
    error = sys.exc_info()[1]
    if isinstance(error, Exception) and not was_reported(error) and not is_client_error(error):
        sentry_sdk.capture_exception(error)


def _capture_later(error: Exception) -> None:
    """Report `error` once the server has sent the 500, still in this request's scope.

    Not if it was reported already: a route may have logged or captured it before re-raising,
    in a thread-pool copy of the context where the SDK's de-duplication cannot see it.
    """
    if was_reported(error):
        return
    mark_unhandled(error)
    asyncio.get_running_loop().call_soon(
        sentry_sdk.capture_exception, error, context=contextvars.copy_context()
    )


def sample_rate(rate: float, parent_sampled: bool | None) -> float:
    """The one sampling rule, for `init_sentry`'s traces_sampler.

    A caller's decision (the flag of `sentry-trace`) wins, so that a distributed trace is
    complete, and `rate` decides the rest. With tracing off (rate 0) there is no sampler at all:
    nothing is traced, whatever a caller asks, or any client could switch tracing on.
    """
    if parent_sampled is not None:
        return 1.0 if parent_sampled else 0.0
    return rate


def traces_sampler(
    rate: float, untraced_paths: frozenset[str]
) -> Callable[[dict[str, Any]], float]:
    """`sample_rate` as the SDK's `traces_sampler`; probe paths are never traced."""

    def sample(context: dict[str, Any]) -> float:
        scope = context.get("asgi_scope") or {}
        if scope.get("path") in untraced_paths:
            return 0.0
        return sample_rate(rate, context.get("parent_sampled"))

    return sample


def enable_asyncio_spans_for_traced_requests() -> None:
    """Enable the SDK's asyncio integration on the running loop, for traced requests only.

    The integration wraps every task the loop creates (uvicorn creates one per request) in an
    extra coroutine, an isolation scope and a span: about a quarter of the throughput of a trivial
    route, spent mostly on requests that are not traced. Here a task goes through the SDK's
    wrapper only when it is created inside a sampled transaction, where its span is wanted.
    Call it once the server's loop is running (the integration patches the running loop).
    """
    loop = asyncio.get_running_loop()
    plain = loop.get_task_factory()
    enable_asyncio_integration()
    traced = loop.get_task_factory()
    if traced is plain or traced is None:  # the integration did not patch this loop
        return

    def create_task(
        loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
    ) -> "asyncio.Future[Any]":
        span = sentry_sdk.get_current_span()
        if span is not None and span.sampled:
            return traced(loop, coro, **kwargs)
        if plain is not None:
            return plain(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(create_task)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _route_template(scope: Scope) -> str | None:
    """The path template of the route that handled the request, with its routers' prefixes.

    FastAPI keeps included routers nested: the route in `scope["route"]` knows only its own part
    of the path (`/items/{item_id}`), and the prefixed template it keeps on the side is gone
    again once the route returns, which is before an error is reported. So the prefix is taken
    from the request's path: whatever precedes the part that the route's own pattern matches.
    Only events and sampled transactions ask for it.
    """
    cached: str | None = scope.get(_ROUTE_KEY)
    if cached is not None:
        return cached
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    template = getattr(context, "path", None)
    if not isinstance(template, str):
        route = scope.get("route")
        own = getattr(route, "path", None)
        if not isinstance(own, str):
            return None
        template = own
        pattern, path = getattr(route, "path_regex", None), scope["path"]
        if pattern is not None and not pattern.match(path):
            for index, character in enumerate(path):
                if index and character == "/" and pattern.match(path[index:]):
                    template = path[:index] + own
                    break
    scope[_ROUTE_KEY] = template
    return template


class _BodyCopy:
    """Passes `receive` through, keeping the first MAX_BODY_BYTES of the body for error reports."""

    __slots__ = ("_chunks", "_kept", "_receive", "truncated")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._chunks: list[bytes] = []
        self._kept = 0
        self.truncated = False

    async def receive(self) -> Message:
        message = await self._receive()
        chunk = message.get("body") if message["type"] == "http.request" else None
        if chunk:
            room = MAX_BODY_BYTES - self._kept
            if len(chunk) > room:
                self.truncated = True
            if room > 0:
                self._chunks.append(chunk[:room])
                self._kept += min(len(chunk), room)
        return message

    def content(self) -> bytes:
        return b"".join(self._chunks)


def _request_processor(scope: Scope, body: _BodyCopy | None) -> EventProcessor:
    """An event processor that adds the request to events of this request, built only then."""

    def add_request(event: "Event", hint: "Hint") -> "Event":
        if event.get("type") == "transaction":  # the name says enough; keep traces cheap
            url = _url(scope, _header(scope, b"host") or "")
            event.setdefault("request", {"method": scope.get("method"), "url": url})
            return event
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            name = key.decode("latin-1")
            text = value.decode("latin-1")
            headers[name] = f"{headers[name]}, {text}" if name in headers else text
        request: dict[str, Any] = {
            "url": _url(scope, headers.get("host", "")),
            "query_string": scope.get("query_string", b"").decode("latin-1"),
            "headers": headers,
        }
        if scope.get("method"):
            request["method"] = scope["method"]
        data = None if body is None else _parse_body(body, headers.get("content-type", ""))
        if data is not None:
            request["data"] = data
        event.setdefault("request", request)
        route = _route_template(scope)
        if route is not None:
            event["transaction"] = route
            event["transaction_info"] = {"source": "route"}
        return event

    return add_request


def _url(scope: Scope, host: str) -> str:
    if not host:
        server = scope.get("server") or ("localhost", None)
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    scheme = scope.get("scheme") or ("ws" if scope["type"] == "websocket" else "http")
    return f"{scheme}://{host}{scope.get('root_path', '')}{scope['path']}"


def _parse_body(body: _BodyCopy, content_type: str) -> Any:
    content = body.content()
    if not content:
        return None
    if body.truncated:
        return "[body too large, not kept]"
    text = content.decode("utf-8", "replace")
    if content_type.startswith("application/json"):
        try:
            return json.loads(text)
        except ValueError:
            return text
    if content_type.startswith(_FORM):
        return dict(parse_qsl(text, keep_blank_values=True))
    return "[body not kept: " + (content_type or "no content type") + "]"
