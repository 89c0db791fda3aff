"""The request path: what each kind of request sends, checked on the serialized envelopes."""

import asyncio
import contextlib
import json
import re
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import sentry_sdk
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from sentry_sdk.envelope import Envelope

from app import sentry
from app.core.config import Settings
from app.main import create_app
from app.sentry_integration.request import MAX_BODY_BYTES, sample_rate
from tests.conftest import TokenFactory
from tests.sentry_integration.conftest import CapturingTransport


def _app(settings: Settings, transport: CapturingTransport, rate: float) -> FastAPI:
    traced = settings.model_copy(update={"sentry_traces_sample_rate": rate})
    app = create_app(traced)
    assert sentry.init_sentry(traced, transport=transport), "Sentry did not start"

    @app.get("/orders/{order_id}")
    async def read_order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    @app.post("/orders/{order_id}/fail")
    async def fail(order_id: int, request: Request) -> None:
        await request.body()
        raise RuntimeError(f"order {order_id} failed")

    nested = APIRouter(prefix="/api/v2/things")

    @nested.get("/{thing_id}/parts/{part}")
    async def broken_part(thing_id: int, part: str) -> None:
        raise RuntimeError(f"part {part} of {thing_id} is broken")

    app.include_router(nested)

    @app.get("/unavailable")
    async def unavailable() -> None:
        raise HTTPException(status_code=503, detail="down for maintenance")

    @app.get("/fan-out")
    async def fan_out() -> dict[str, int]:
        async def step(n: int) -> int:
            await asyncio.sleep(0)
            return n

        return {"sum": sum(await asyncio.gather(*(asyncio.create_task(step(n)) for n in (1, 2))))}

    return app


@pytest.fixture
def client_for(sentry_settings: Settings, transport: CapturingTransport) -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(rate: float) -> TestClient:
        client = TestClient(_app(sentry_settings, transport, rate), raise_server_exceptions=False)
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def test_unsampled_requests_send_nothing(client_for: Any, transport: CapturingTransport) -> None:
    client = client_for(0.0)
    for _ in range(20):
        assert client.get("/orders/7").status_code == 200
    assert client.get("/fan-out").json() == {"sum": 3}
    sentry_sdk.flush(timeout=2)
    assert transport.payloads == [], "a request that is not traced and did not fail sent data"


def test_sampled_requests_are_transactions_named_by_route(
    client_for: Any, transport: CapturingTransport
) -> None:
    client = client_for(1.0)
    assert client.get("/orders/7").status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200
    assert client.get("/fan-out").status_code == 200
    sentry_sdk.flush(timeout=2)
    transactions = {t["transaction"]: t for t in transport.items("transaction")}  # no probes
    assert sorted(transactions) == ["/fan-out", "/orders/{order_id}"], sorted(transactions)
    order = transactions["/orders/{order_id}"]
    assert order["transaction_info"]["source"] == "route", order["transaction_info"]
    assert order["contexts"]["trace"]["op"] == "http.server", order["contexts"]["trace"]
    assert order["contexts"]["response"]["status_code"] == 200, order["contexts"]
    assert order["request"] == {"method": "GET", "url": "http://testserver/orders/7"}, order
    origins = {span.get("origin") for span in transactions["/fan-out"]["spans"]}
    assert "auto.function.asyncio" in origins, f"tasks of a traced request are spans: {origins}"


def test_a_caller_decides_for_the_trace_but_not_when_tracing_is_off(
    client_for: Any, transport: CapturingTransport
) -> None:
    trace_id = "771a43a4192642f0b136d5159a501700"
    client = client_for(0.5)
    for flag in ("1", "0"):
        header = {"sentry-trace": f"{trace_id}-b7ad6b7169203331-{flag}"}
        for _ in range(10):
            assert client.get("/orders/1", headers=header).status_code == 200
    sentry_sdk.flush(timeout=2)
    transactions = transport.items("transaction")
    assert len(transactions) == 10, f"{len(transactions)} of 10 asked-for traces were sent"
    assert {t["contexts"]["trace"]["trace_id"] for t in transactions} == {trace_id}
    assert sample_rate(0.5, parent_sampled=None) == 0.5
    off = client_for(0.0)
    header = {"sentry-trace": f"{trace_id}-b7ad6b7169203331-1"}
    assert off.get("/orders/1", headers=header).status_code == 200
    sentry_sdk.flush(timeout=2)
    assert len(transport.items("transaction")) == 10, "with tracing off a caller turned it on"


def test_a_failed_request_is_one_event_with_its_request(
    client_for: Any, transport: CapturingTransport, make_token: TokenFactory
) -> None:
    client = client_for(0.0)
    response = client.post(
        "/orders/9/fail?page=2",
        json={"note": "rush", "card": {"number": "4242"}},
        headers={"X-Request-Id": "req-1"},
    )
    assert response.status_code == 500
    sentry_sdk.flush(timeout=2)
    (event,) = transport.events
    assert event["transaction"] == "/orders/{order_id}/fail", event.get("transaction")
    request = event["request"]
    assert (request["method"], request["url"]) == ("POST", "http://testserver/orders/9/fail")
    assert request["query_string"] == "page=2", request
    assert request["headers"]["x-request-id"] == "req-1", request["headers"]
    assert request["data"]["note"] == "rush", request.get("data")
    assert event["contexts"]["trace"]["trace_id"], "errors carry the request's trace id"
    mechanism = event["exception"]["values"][-1]["mechanism"]
    assert mechanism["handled"] is False, mechanism


def test_routes_of_included_routers_are_named_with_their_prefix(
    client_for: Any, transport: CapturingTransport
) -> None:
    client = client_for(1.0)
    assert client.get("/api/v2/things/4/parts/valve").status_code == 500
    sentry_sdk.flush(timeout=2)
    (event,) = transport.events
    (transaction,) = transport.items("transaction")
    expected = "/api/v2/things/{thing_id}/parts/{part}"
    assert event["transaction"] == expected, event.get("transaction")
    assert transaction["transaction"] == expected, transaction["transaction"]
    assert transaction["contexts"]["trace"]["status"] == "internal_error", transaction["contexts"]


def test_each_request_has_its_own_trace_id(client_for: Any, transport: CapturingTransport) -> None:
    client = client_for(0.0)
    for n in (1, 2):
        # The SDK's httpx integration sends the test client's own trace along (the server then
        # continues it, as it should): two callers here, as in production, with a trace each.
        with sentry_sdk.isolation_scope() as caller:
            sentry_sdk.continue_trace({})
            assert caller.get_traceparent() is not None
            assert client.post(f"/orders/{n}/fail").status_code == 500
    sentry_sdk.flush(timeout=2)
    trace_ids = {event["contexts"]["trace"]["trace_id"] for event in transport.events}
    assert len(trace_ids) == 2, trace_ids


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("application/x-www-form-urlencoded", b"user=ada&note=hi", {"user": "ada", "note": "hi"}),
        ("application/json", b"{not json", "{not json"),
        ("text/plain", b"hello", "[body not kept: text/plain]"),
        ("application/json", b"[" + b"1," * MAX_BODY_BYTES + b"1]", "[body too large, not kept]"),
    ],
    ids=["form", "broken-json", "other-type", "too-large"],
)
def test_request_bodies_in_events(
    client_for: Any,
    transport: CapturingTransport,
    content_type: str,
    body: bytes,
    expected: object,
) -> None:
    client = client_for(0.0)
    response = client.post("/orders/3/fail", content=body, headers={"content-type": content_type})
    assert response.status_code == 500
    sentry_sdk.flush(timeout=2)
    (event,) = transport.events
    assert event["request"]["data"] == expected, event["request"].get("data")


def test_server_error_answers_are_reported_and_still_answered(
    client_for: Any, transport: CapturingTransport
) -> None:
    client = client_for(0.0)
    response = client.get("/unavailable")
    assert (response.status_code, response.json()) == (503, {"detail": "down for maintenance"})
    sentry_sdk.flush(timeout=2)
    (event,) = transport.events
    assert event["exception"]["values"][-1]["type"] == "HTTPException", event["exception"]


def test_with_sentry_off_the_app_gets_no_middleware(settings: Settings) -> None:
    app = create_app(settings)
    sentry.instrument_app(app, settings)
    added = [getattr(m.cls, "__name__", str(m.cls)) for m in app.user_middleware]
    assert "SentryMiddleware" not in added, added


def test_envelopes_carry_the_dsn_public_key_for_trace_sampling(
    client_for: Any, transport: CapturingTransport
) -> None:
    client = client_for(1.0)
    assert client.get("/orders/7").status_code == 200
    assert client.post("/orders/7/fail", json={}).status_code == 500
    sentry_sdk.flush(timeout=2)
    headers = [json.loads(payload.split(b"\n", 1)[0]) for payload in transport.payloads]
    contexts = [header["trace"] for header in headers if "trace" in header]
    assert len(contexts) == 3, f"expected two transactions and an error with a trace: {headers}"
    keys = {context.get("public_key") for context in contexts}
    assert keys == {"public"}, f"the scrubber must leave the DSN's public key for Sentry: {keys}"


def test_events_and_transactions_carry_the_requests_id(
    client_for: Any, transport: CapturingTransport
) -> None:
    """The tag joins an issue in Sentry with the request's log lines (and its X-Request-ID)."""
    client = client_for(1.0)
    read = client.get("/orders/7", headers={"X-Request-ID": "read-1"})
    failed = client.post("/orders/7/fail", json={})
    assert (read.status_code, failed.status_code) == (200, 500)
    sentry_sdk.flush(timeout=2)
    transactions = {t["request"]["method"]: t for t in transport.items("transaction")}
    assert transactions["GET"]["tags"].get("request_id") == "read-1", transactions["GET"]["tags"]
    assert transactions["POST"]["tags"].get("request_id") == failed.headers["x-request-id"]
    (error,) = transport.items("event")
    assert error["tags"].get("request_id") == failed.headers["x-request-id"], error["tags"]


@pytest.mark.parametrize("registered", ["before", "after"])
def test_the_teams_own_http_exception_handler_keeps_working(
    sentry_settings: Settings, transport: CapturingTransport, registered: str
) -> None:
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def own_handler(request: Request, error: Exception) -> JSONResponse:
        status = getattr(error, "status_code", 500)
        return JSONResponse({"problem": "ours", "status": status}, status_code=status)

    settings = sentry_settings
    if registered == "before":  # in create_app, before instrument_app adds the middleware
        app = FastAPI()
        app.add_exception_handler(StarletteHTTPException, own_handler)
        assert sentry.init_sentry(settings, transport=transport)
        sentry.instrument_app(app, settings)
    else:
        app = create_app(settings)
        assert sentry.init_sentry(settings, transport=transport)
        app.add_exception_handler(StarletteHTTPException, own_handler)

    @app.get("/down")
    async def down() -> None:
        raise HTTPException(status_code=503, detail="maintenance")

    @app.get("/gone")
    async def gone() -> None:
        raise HTTPException(status_code=410, detail="gone")

    with TestClient(app) as client:
        assert client.get("/down").json() == {"problem": "ours", "status": 503}
        assert client.get("/gone").json() == {"problem": "ours", "status": 410}
    sentry_sdk.flush(timeout=2)
    reported = [event["exception"]["values"][-1]["value"] for event in transport.events]
    assert reported == ["maintenance"], f"5xx reported once, 4xx not at all: {reported}"


def test_websocket_connections_have_their_own_scope(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    from fastapi import WebSocket

    app = create_app(sentry_settings)
    assert sentry.init_sentry(sentry_settings, transport=transport)

    @app.websocket("/ws/{tenant}")
    async def chat(websocket: WebSocket, tenant: str) -> None:
        await websocket.accept()
        sentry.set_user_context(f"user-{tenant}", tenant)
        sentry.add_breadcrumb(f"joined {tenant}")
        if tenant == "b":
            raise RuntimeError("chat broke")
        await websocket.send_text("hi")
        await websocket.close()

    async def connect(path: str) -> None:
        scope = {
            "type": "websocket", "path": path, "raw_path": path.encode(), "query_string": b"",
            "headers": [(b"host", b"testserver")], "scheme": "ws", "root_path": "",
            "client": ("127.0.0.1", 5000), "server": ("testserver", 80), "subprotocols": [],
            "asgi": {"version": "3.0"},
        }  # fmt: skip
        inbox = [{"type": "websocket.connect"}]

        async def receive() -> MutableMapping[str, Any]:
            return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

        async def send(message: MutableMapping[str, Any]) -> None:
            """The client side of the socket takes whatever the app sends."""

        with contextlib.suppress(RuntimeError):  # the failing connection's error escapes
            await app(scope, receive, send)

    async def both() -> None:  # one after the other, in one context, as one server task would
        await connect("/ws/a")
        await connect("/ws/b")
        sentry.capture_message("after both")

    asyncio.run(both())
    sentry_sdk.flush(timeout=2)
    by_message = {
        event.get("message") or event["exception"]["values"][-1]["value"]: event
        for event in transport.events
    }
    broke = by_message["chat broke"]
    assert broke["user"]["id"] == "user-b", broke.get("user")
    crumbs = [crumb["message"] for crumb in broke.get("breadcrumbs", {}).get("values", [])]
    assert crumbs == ["joined b"], f"another connection's breadcrumbs leaked in: {crumbs}"
    assert broke["request"]["url"] == "ws://testserver/ws/b", broke["request"]
    after = by_message["after both"]
    assert "user" not in after, f"a connection's user stayed behind: {after.get('user')}"
    assert "tenant_id" not in after.get("tags", {}), after.get("tags")


@pytest.mark.parametrize(
    ("targets", "expected"), [("", False), ("127.0.0.1", True), ("api.example.com", False)]
)
def test_trace_headers_go_only_to_listed_hosts(
    sentry_settings: Settings, transport: CapturingTransport, targets: str, expected: bool
) -> None:
    import http.server
    import threading
    import urllib.request

    seen: list[dict[str, str]] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = sentry_settings.model_copy(
        update={"sentry_traces_sample_rate": 1.0, "sentry_trace_propagation_targets": targets}
    )
    app = create_app(settings)
    assert sentry.init_sentry(settings, transport=transport)

    @app.get("/call-out")
    def call_out() -> dict[str, int]:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return {"status": answer.status}

    try:
        with TestClient(app) as client:
            assert client.get("/call-out").json() == {"status": 204}
    finally:
        server.shutdown()
    (headers,) = seen
    sent = {name.lower() for name in headers} & {"sentry-trace", "baggage"}
    assert bool(sent) == expected, f"SENTRY_TRACE_PROPAGATION_TARGETS={targets!r}: sent {sent}"


def test_the_sample_rate_that_applied_is_in_the_trace_header(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    """Sentry scales counts by the trace header's sample rate: it must be the rate that applied."""
    settings = sentry_settings.model_copy(update={"sentry_traces_sample_rate": 0.25})
    app = create_app(settings)
    assert sentry.init_sentry(settings, transport=transport)
    trace_id = "771a43a4192642f0b136d5159a501700"
    caller = {  # no sampling decision, only the caller's random draw, which falls under 0.25
        "sentry-trace": f"{trace_id}-b7ad6b7169203331",
        "baggage": f"sentry-trace_id={trace_id},sentry-sample_rand=0.125",
    }
    with TestClient(app) as client:
        assert client.get("/api/v1/items", headers=caller).status_code == 401
    sentry_sdk.flush(timeout=2)
    (payload,) = transport.payloads
    header = json.loads(payload.split(b"\n", 1)[0])["trace"]
    assert (header["sample_rate"], header["sample_rand"]) == ("0.25", "0.125"), header
    assert header["trace_id"] == trace_id, header


def test_probe_requests_and_start_up_logs_stay_out_of_other_requests_events(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    import logging

    app = _app(sentry_settings, transport, 0.0)

    @app.get("/metrics")
    async def metrics() -> dict[str, int]:
        sentry.set_tag("scraper", "prometheus")
        logging.getLogger("app.metrics").warning("metrics scraped")
        return {}

    logging.getLogger("uvicorn.error").info("Started server process")  # before any request
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/metrics").status_code == 200
        assert client.post("/orders/5/fail").status_code == 500
    sentry_sdk.flush(timeout=2)
    (event,) = transport.events
    assert "scraper" not in event.get("tags", {}), event.get("tags")
    crumbs = [crumb.get("message") for crumb in event.get("breadcrumbs", {}).get("values", [])]
    assert crumbs == [], f"another request's or the server's log lines: {crumbs}"


def _draw(monkeypatch: pytest.MonkeyPatch, value: float) -> None:
    """Make the middleware's random draw for a new trace `value`."""
    monkeypatch.setattr("app.sentry_integration.request.random.random", lambda: value)


def _sampled_out(transport: CapturingTransport) -> dict[str, int]:
    """{category: quantity} of what the transport was told was lost to sampling."""
    return {
        category: quantity
        for (reason, category), quantity in transport.lost.items()
        if reason == "sample_rate"
    }


def test_a_new_trace_the_middleware_samples_carries_the_rate_that_applied(
    client_for: Any, transport: CapturingTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    _draw(monkeypatch, 0.1)  # under the rate: sampled
    client = client_for(0.25)
    assert client.get("/orders/7").status_code == 200, "the traced request failed"
    sentry_sdk.flush(timeout=2)
    transactions = transport.items("transaction")
    assert len(transactions) == 1, f"expected one transaction, got {len(transactions)}"
    envelopes = [Envelope.deserialize(payload) for payload in transport.payloads]
    headers = [
        envelope.headers
        for envelope in envelopes
        if any(item.type == "transaction" for item in envelope.items)
    ]
    assert len(headers) == 1, f"expected one transaction envelope, got headers {headers}"
    trace = headers[0].get("trace", {})
    assert trace.get("sample_rate") == "0.25", f"not the rate that applied: {trace}"
    assert trace.get("sampled") == "true", f"a sampled trace not marked sampled: {trace}"
    assert trace.get("trace_id") == transactions[0]["contexts"]["trace"]["trace_id"], trace
    assert _sampled_out(transport) == {}, f"a sampled request was counted as sampled out: {trace}"


def test_a_new_trace_the_middleware_samples_out_is_counted_and_errors_keep_a_trace(
    client_for: Any, transport: CapturingTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    _draw(monkeypatch, 0.9)  # over the rate: not sampled
    client = client_for(0.25)
    assert client.get("/orders/7").status_code == 200, "the unsampled request failed"
    assert client.post("/orders/9/fail").status_code == 500, "the failing route did not fail"
    sentry_sdk.flush(timeout=2)
    transactions = transport.items("transaction")
    assert transactions == [], f"unsampled requests sent {len(transactions)} transactions"
    lost = _sampled_out(transport)
    assert lost.get("transaction") == 2, f"two requests sampled out, Sentry was told {lost}"
    assert lost.get("span"), f"a sampled-out transaction's span was not counted: {lost}"
    events = transport.events
    assert len(events) == 1, f"the unsampled request's error: {len(events)} events, not one"
    trace_id = events[0].get("contexts", {}).get("trace", {}).get("trace_id", "")
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id), f"the error has no trace id: {trace_id!r}"


def test_with_tracing_off_nothing_is_counted_as_sampled_out(
    client_for: Any, transport: CapturingTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    _draw(monkeypatch, 0.9)
    client = client_for(0.0)
    assert client.get("/orders/7").status_code == 200, "the request failed"
    assert client.post("/orders/9/fail").status_code == 500, "the failing route did not fail"
    sentry_sdk.flush(timeout=2)
    assert len(transport.events) == 1, f"the error was not reported: {len(transport.events)}"
    lost = _sampled_out(transport)
    assert lost == {}, f"with tracing off, requests were counted as sampled out: {lost}"
