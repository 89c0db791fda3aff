"""Which events are sent and what they carry when something goes wrong on the way."""

import logging
import random
from collections.abc import Callable
from typing import Any

import pytest
import sentry_sdk
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app import sentry
from app.core.config import Settings
from app.main import create_app
from app.sentry_integration import events
from tests.sentry_integration.conftest import CapturingTransport


class UpstreamUnauthorizedError(Exception):
    """What an HTTP client library raises for an upstream 401: it carries a `status_code`."""

    def __init__(self) -> None:
        super().__init__("the payment provider answered 401")
        self.status_code = 401


def _app(settings: Settings, transport: CapturingTransport) -> FastAPI:
    app = create_app(settings)
    assert sentry.init_sentry(settings, transport=transport), "Sentry did not start"

    @app.get("/pay")
    async def pay() -> None:
        raise UpstreamUnauthorizedError

    @app.get("/boom/{n}")
    async def boom(n: int) -> None:
        password = "hunter2-local"  # noqa: F841 - a local the scrubber must hide
        raise RuntimeError(f"boom {n}")

    return app


def test_an_escaping_exception_with_a_4xx_status_code_is_a_failure_of_this_service(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    with TestClient(_app(sentry_settings, transport), raise_server_exceptions=False) as client:
        assert client.get("/pay").status_code == 500
    sentry_sdk.flush(timeout=2)
    types = [event["exception"]["values"][-1]["type"] for event in transport.events]
    assert types == ["UpstreamUnauthorizedError"], f"the 500 was not reported: {types}"


def test_only_http_exceptions_and_validation_errors_are_client_errors() -> None:
    from fastapi import HTTPException
    from fastapi.exceptions import RequestValidationError

    assert events.is_client_error(HTTPException(status_code=404))
    assert events.is_client_error(RequestValidationError([]))
    assert not events.is_client_error(HTTPException(status_code=502))
    assert not events.is_client_error(UpstreamUnauthorizedError())


@pytest.fixture
def break_scrubber(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Callable[[type[Exception]], None]:
    """Makes the scrubber raise the given exception (an event shape nobody foresaw); logs kept."""

    def make_it_raise(kind: type[Exception]) -> None:
        def broken(event: dict[str, Any]) -> dict[str, Any]:
            raise kind("an event shape nobody foresaw")

        monkeypatch.setattr(events, "scrub_event", broken)
        caplog.set_level(logging.ERROR, logger="app.sentry")

    return make_it_raise


def test_a_failing_scrubber_sends_a_reduced_event_and_says_so_once(
    sentry_settings: Settings,
    transport: CapturingTransport,
    break_scrubber: Callable[[type[Exception]], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    break_scrubber(KeyError)
    with TestClient(_app(sentry_settings, transport), raise_server_exceptions=False) as client:
        for n in (1, 2):
            assert client.get(f"/boom/{n}", headers={"Authorization": "Bearer tok-1"}).status_code
    sentry_sdk.flush(timeout=2)

    sent = transport.events
    assert len(sent) == 2, f"every failure must still be reported, got {len(sent)} events"
    for event in sent:
        (value,) = event["exception"]["values"]
        assert (value["type"], value["value"]) == ("RuntimeError", value["value"]), value
        assert value["value"].startswith("boom "), value
        assert value["stacktrace"]["frames"], "the reduced event keeps the stack"
        assert all("vars" not in frame for frame in value["stacktrace"]["frames"])
        assert "request" not in event and "user" not in event, sorted(event)
        assert event["tags"] == {"reduced_event": "true"}, event.get("tags")
    wire = b"".join(transport.payloads)
    for secret in (b"hunter2-local", b"tok-1"):
        assert secret not in wire, f"{secret!r} went out with the reduced event"
    lines = [
        r.getMessage()
        for r in caplog.records
        if "preparing the error event failed" in r.getMessage()
    ]
    assert len(lines) == 1, f"expected one log line for two failures: {lines}"
    assert "KeyError" in lines[0], lines[0]


def test_a_failing_transaction_scrubber_drops_the_transaction_and_says_so(
    sentry_settings: Settings,
    transport: CapturingTransport,
    break_scrubber: Callable[[type[Exception]], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    break_scrubber(TypeError)
    traced = sentry_settings.model_copy(update={"sentry_traces_sample_rate": 1.0})
    with TestClient(_app(traced, transport)) as client:
        assert client.get("/api/v1/items", headers={}).status_code == 401
    sentry_sdk.flush(timeout=2)
    assert transport.items("transaction") == [], "an unscrubbed transaction went out"
    assert any("preparing the transaction failed" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


def test_ids_stay_unique_when_the_app_seeds_random(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    traced = sentry_settings.model_copy(update={"sentry_traces_sample_rate": 1.0})
    with TestClient(_app(traced, transport), raise_server_exceptions=False) as client:
        for n in (1, 2, 3):
            random.seed(42)  # an app, a library or a test may do this
            assert client.get(f"/boom/{n}").status_code == 500
    sentry_sdk.flush(timeout=2)
    errors, transactions = transport.events, transport.items("transaction")
    assert len(errors) == 3 and len(transactions) == 3, (len(errors), len(transactions))
    event_ids = {event["event_id"] for event in errors + transactions}
    trace_ids = {event["contexts"]["trace"]["trace_id"] for event in transactions}
    assert len(event_ids) == 6, f"event ids repeat under random.seed: {event_ids}"
    assert len(trace_ids) == 3, f"trace ids repeat under random.seed: {trace_ids}"


@pytest.mark.parametrize("how", ["captured", "logged"])
def test_an_exception_reported_in_a_sync_route_and_re_raised_is_one_event(
    sentry_settings: Settings, transport: CapturingTransport, how: str
) -> None:
    """The route reports it from a thread-pool copy of the context, where the SDK's own
    de-duplication does not see it; the request path must not report it again."""
    app = _app(sentry_settings, transport)

    @app.get("/reraise")
    def reraise() -> None:
        try:
            raise RuntimeError("reported, then re-raised")
        except RuntimeError as error:
            if how == "captured":
                sentry.capture_exception(error)
            else:
                logging.getLogger("app.orders").exception("order failed")
            raise

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/reraise").status_code == 500
    sentry_sdk.flush(timeout=2)
    values = [event["exception"]["values"][-1]["value"] for event in transport.events]
    assert values == ["reported, then re-raised"], f"one failure, {len(values)} events"
