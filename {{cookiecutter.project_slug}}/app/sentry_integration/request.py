"""The request path of error tracking: a lean ASGI middleware in place of the SDK's Starlette and
FastAPI integrations.

Those integrations did a lot of work for every request, sampled or not: a transaction object, a
request-info extractor, spans around every middleware, patched handlers. On a trivial route that
cost more than half the service's throughput with tracing off (docs/adr/0003). This middleware
does, for a request that is not traced and does not fail, only what cannot wait:

- a fresh isolation scope, so that user, tenant, tags and breadcrumbs stay with their request;
- a new trace id (generated lazily by the SDK);
- a copy of the first `MAX_BODY_BYTES` of the request body, kept only in case an error is reported.

Everything else happens only when it is needed: the request context (method, URL, headers, query,
body) is read when an event is built, and a transaction, with spans and the route template as its
name, is started only for a request that is sampled; app/sentry_transactions.py sends it when the
request ends. The SDK still does the rest: client, scopes, transaction and span objects.
"""

import asyncio
import contextvars
import json
import random
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import sentry_sdk
from sentry_sdk.integrations.asyncio import enable_asyncio_integration
from sentry_sdk.tracing import TransactionSource
from sentry_sdk.utils import event_from_exception

from app import sentry_transactions

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
#: How much of a request body is kept for error reports (the SDK's "medium").
MAX_BODY_BYTES = 10_000
_FORM = "application/x-www-form-urlencoded"


class TracingMiddleware:
    """Wraps the app; see the module's docstring. Requests to `untraced_paths` pass untouched."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        traces_sample_rate: float,
        untraced_paths: frozenset[str],
        on_capture: Callable[[BaseException], None],
    ) -> None:
        self.app = app
        self.traces_sample_rate = traces_sample_rate
        self.untraced_paths = untraced_paths
        self.on_capture = on_capture

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.untraced_paths:
            await self.app(scope, receive, send)
            return
        trace_header, has_body = None, False
        for key, value in scope["headers"]:
            if key == b"sentry-trace":
                trace_header = value.decode("latin-1")
            elif key in _BODY_HEADERS:
                has_body = value != b"0"
        with sentry_sdk.isolation_scope() as sentry_scope:
            body = _BodyCopy(receive) if has_body else None
            receive = body.receive if body is not None else receive
            sentry_scope.add_event_processor(_request_processor(scope, body))
            sampled, chance, draw = _sampling(trace_header, self.traces_sample_rate)
            if sampled:
                await self._traced(scope, receive, send, sentry_scope, chance, draw)
                return
            # Its own trace id (or the caller's), on both scopes: the current scope's would win,
            # as would a span the server's context carried in.
            incoming = None if trace_header is None else _incoming_trace(scope)
            current = sentry_sdk.get_current_scope()
            current.span = None
            for each in (sentry_scope, current):
                if incoming is None:
                    each.set_new_propagation_context()
                else:
                    each.generate_propagation_context(incoming)
            try:
                await self.app(scope, receive, send)
            except Exception as error:
                self._capture_later(error)
                raise

    async def _traced(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        sentry_scope: sentry_sdk.Scope,
        chance: float,
        draw: float | None,
    ) -> None:
        transaction = sentry_scope.continue_trace(
            _incoming_trace(scope),
            op="http.server",
            name=scope["path"],
            source=TransactionSource.URL,
            origin="auto.http.asgi",
        )
        transaction.sampled = True  # decided above, with the same rule as init's traces_sampler
        transaction.set_data("http.request.method", scope.get("method"))

        async def send_and_record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                transaction.set_http_status(message["status"])
            await send(message)

        sampling_context = {"asgi_scope": scope}
        with sentry_sdk.start_transaction(transaction, custom_sampling_context=sampling_context):
            # What the trace's dynamic sampling context tells Sentry: the rate that applied (the
            # SDK would say 1.0, the decision having been made here), and the draw that fell
            # under it (Sentry scales counts by the rate; callees may sample with the draw).
            transaction.sample_rate = chance
            if draw is not None and hasattr(transaction, "_sample_rand"):
                transaction._sample_rand = draw
            try:
                await self.app(scope, receive, send_and_record_status)
            except Exception as error:
                transaction.set_http_status(500)
                self._capture_later(error)
                raise
            finally:
                route = _route_template(scope)
                if route is not None:
                    transaction.name, transaction.source = route, TransactionSource.ROUTE
                sentry_transactions.finish(transaction)

    def _capture_later(self, error: Exception) -> None:
        """Report `error` once the server has sent the 500, still in this request's scope."""
        self.on_capture(error)
        asyncio.get_running_loop().call_soon(_capture, error, context=contextvars.copy_context())


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


def _capture(error: BaseException) -> None:
    client = sentry_sdk.get_client()
    event, hint = event_from_exception(
        error, client_options=client.options, mechanism={"type": "asgi", "handled": False}
    )
    sentry_sdk.capture_event(event, hint=hint)


def sample_rate(rate: float, parent_sampled: bool | None) -> float:
    """The one sampling rule, for this middleware and for `init_sentry`'s traces_sampler.

    With tracing off (rate 0), nothing is traced, whatever a caller asks: otherwise any client
    could switch tracing on by sending a header. Else a caller's decision (the flag of
    `sentry-trace`) wins, so that a distributed trace is complete, and `rate` decides the rest.
    """
    if rate <= 0:
        return 0.0
    if parent_sampled is not None:
        return 1.0 if parent_sampled else 0.0
    return rate


def _sampling(trace_header: str | None, rate: float) -> tuple[bool, float, float | None]:
    """(whether to trace the request, the rate that applied, the random draw if one was made)."""
    parent_sampled = None
    if trace_header is not None:
        flag = trace_header.rsplit("-", 2)[1:]
        if len(flag) == 2 and flag[1] in {"0", "1"}:
            parent_sampled = flag[1] == "1"
    chance = sample_rate(rate, parent_sampled)
    if chance >= 1.0 or chance <= 0.0:
        return chance >= 1.0, chance, None
    draw = random.random()  # noqa: S311 - sampling, not security
    return draw < chance, chance, draw


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _incoming_trace(scope: Scope) -> dict[str, str]:
    return {
        key.decode("latin-1"): value.decode("latin-1")
        for key, value in scope["headers"]
        if key in {b"sentry-trace", b"baggage", b"traceparent"}
    }


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
            "method": scope.get("method"),
            "url": _url(scope, headers.get("host", "")),
            "query_string": scope.get("query_string", b"").decode("latin-1"),
            "headers": headers,
        }
        data = None if body is None else _parse_body(body, headers.get("content-type", ""))
        if data is not None:
            request["data"] = data
        event.setdefault("request", request)
        route = _route_template(scope)
        if route is not None:
            event["transaction"] = route
            event["transaction_info"] = {"source": TransactionSource.ROUTE}
        return event

    return add_request


def _url(scope: Scope, host: str) -> str:
    if not host:
        server = scope.get("server") or ("localhost", None)
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}{scope['path']}"


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
