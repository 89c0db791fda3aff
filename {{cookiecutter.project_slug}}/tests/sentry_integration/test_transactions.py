"""The short way for transactions sends what the SDK's own pipeline would have sent."""

from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app import sentry, sentry_transactions
from app.core.config import Settings
from app.main import create_app
from tests.sentry_integration.conftest import CapturingTransport

#: Fields that differ between any two transactions: ids and times.
VARYING = {
    "event_id",
    "timestamp",
    "start_timestamp",
    "trace_id",
    "span_id",
    "parent_span_id",
    "sample_rand",
}


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VARYING}
    if isinstance(value, list):
        return [_stable(item) for item in value]
    return value


@pytest.fixture
def traced_client(sentry_settings: Settings, transport: CapturingTransport) -> Iterator[TestClient]:
    settings = sentry_settings.model_copy(update={"sentry_traces_sample_rate": 1.0})
    app: FastAPI = create_app(settings)
    assert sentry.init_sentry(settings, transport=transport)

    @app.get("/orders/{order_id}")
    async def read_order(order_id: int) -> dict[str, int]:
        sentry.set_user_context("u-1", "acme", email="ada@example.com")
        sentry.set_tag("channel", "web")
        with sentry_sdk.start_span(op="db", name="SELECT 1 -- token=abc123"):
            pass
        return {"id": order_id}

    @app.get("/quiet")
    async def quiet() -> dict[str, str]:
        sentry_sdk.get_isolation_scope().add_event_processor(lambda event, hint: None)
        return {"sent": "nothing"}

    with TestClient(app) as client:
        yield client


def _sent(client: TestClient, transport: CapturingTransport) -> tuple[dict[str, Any], Any]:
    transport.payloads.clear()
    assert client.get("/orders/7").status_code == 200
    sentry_sdk.flush(timeout=2)
    (transaction,) = transport.items("transaction")
    (payload,) = transport.payloads
    return transaction, payload.split(b"\n", 1)[0]


def test_the_short_way_sends_what_the_sdk_would(
    traced_client: TestClient, transport: CapturingTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    short, short_header = _sent(traced_client, transport)

    def sdk_path(event: dict[str, Any], client: Any) -> str | None:
        return sentry_sdk.get_current_scope().capture_event(event)  # type: ignore[arg-type]

    monkeypatch.setattr(sentry_transactions, "_send", sdk_path)
    sdk, sdk_header = _sent(traced_client, transport)
    assert _stable(short) == _stable(sdk), "the short way changed what is sent"
    assert short["spans"][0]["description"] == "SELECT 1 -- token=[Filtered]", short["spans"]
    assert short["user"] == {"id": "u-1", "email": "ada@example.com"}, short["user"]
    assert short["tags"]["channel"] == "web", short["tags"]
    assert b'"trace"' in short_header and b'"trace"' in sdk_header, (short_header, sdk_header)


def test_a_dropped_transaction_is_not_sent(
    traced_client: TestClient, transport: CapturingTransport
) -> None:
    options = sentry_sdk.get_client().options
    scrubber = options["before_send_transaction"]
    options["before_send_transaction"] = lambda event, hint: None
    assert traced_client.get("/orders/7").status_code == 200
    options["before_send_transaction"] = scrubber
    assert traced_client.get("/quiet").status_code == 200  # its event processor drops it
    sentry_sdk.flush(timeout=2)
    assert transport.items("transaction") == []


def test_a_failure_on_the_short_way_costs_the_transaction_not_the_request(
    traced_client: TestClient, transport: CapturingTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("serializer broke")

    monkeypatch.setattr(sentry_transactions, "serialize_event", broken)
    assert traced_client.get("/orders/7").status_code == 200
    sentry_sdk.flush(timeout=2)
    assert transport.items("transaction") == []


def test_the_sample_rate_that_applied_is_in_the_trace_header(
    sentry_settings: Settings, transport: CapturingTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = sentry_settings.model_copy(update={"sentry_traces_sample_rate": 0.25})
    app = create_app(settings)
    assert sentry.init_sentry(settings, transport=transport)
    monkeypatch.setattr("app.sentry_asgi.random.random", lambda: 0.125)
    with TestClient(app) as client:
        assert client.get("/api/v1/items", headers={}).status_code == 401
    sentry_sdk.flush(timeout=2)
    (payload,) = transport.payloads
    header = payload.split(b"\n", 1)[0]
    assert b'"sample_rate":"0.25"' in header and b'"sample_rand":"0.125000"' in header, header
