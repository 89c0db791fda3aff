"""The fast path for sampled transactions (app/sentry_integration/transactions.py): the same
envelope as the SDK's own path, a check at start-up, and the SDK's path whenever it cannot."""

import json
from decimal import Decimal
from typing import Any

import pytest
import sentry_sdk
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sentry_sdk.envelope import Envelope

from app import sentry
from app.core.config import Settings
from app.main import create_app
from app.sentry_integration import transactions
from app.sentry_integration.transactions import SENDER
from tests.sentry_integration.conftest import CapturingTransport

TOKEN = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def _traced_app(settings: Settings, transport: CapturingTransport) -> FastAPI:
    traced = settings.model_copy(update={"sentry_traces_sample_rate": 1.0})
    app = create_app(traced)
    assert sentry.init_sentry(traced, transport=transport), "Sentry did not start"

    @app.get("/orders/{order_id}")
    async def read_order(order_id: int) -> dict[str, int]:
        sentry.set_user_context("user-1", "tenant-a")
        with sentry_sdk.start_span(op="payment", name=f"charge with {TOKEN}"):
            pass
        return {"id": order_id}

    return app


def _sent(transport: CapturingTransport) -> list[Envelope]:
    return [Envelope.deserialize(payload) for payload in transport.payloads]


def _transaction_envelope(transport: CapturingTransport) -> tuple[dict[str, Any], dict[str, Any]]:
    found = [
        (envelope.headers, json.loads(item.get_bytes()))
        for envelope in _sent(transport)
        for item in envelope.items
        if item.type == "transaction"
    ]
    assert len(found) == 1, f"expected one transaction, got {len(found)}"
    return found[0]


def test_with_tracing_on_the_check_passes_and_the_fast_path_is_on(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    _traced_app(sentry_settings, transport)
    assert SENDER.fast, "the installed sentry-sdk builds transactions unlike the fast path"
    assert transport.payloads == [], "the check sent something"


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the transactions the fast path encodes from now on (the start-up check's
    included)."""
    names: list[str] = []
    encode = transactions.encode

    def spy(event: Any) -> bytes:
        names.append(event["transaction"])
        return encode(event)

    monkeypatch.setattr(transactions, "encode", spy)
    return names


def test_a_sampled_request_goes_the_fast_path_with_everything_the_sdk_would_send(
    sentry_settings: Settings, transport: CapturingTransport, encoded: list[str]
) -> None:
    app = _traced_app(sentry_settings, transport)
    encoded.clear()  # the start-up check's
    with TestClient(app) as client:
        assert client.get("/orders/7").status_code == 200
    sentry_sdk.flush(timeout=2)
    assert encoded == ["/orders/{order_id}"], f"not sent by the fast path: {encoded}"
    headers, event = _transaction_envelope(transport)
    assert headers["trace"]["trace_id"] == event["contexts"]["trace"]["trace_id"], headers
    assert headers["trace"]["sample_rate"] == "1.0", headers
    assert "dynamic_sampling_context" not in event["contexts"]["trace"], "left in the payload"
    assert event["user"] == {"id": "user-1"}, event.get("user")
    assert event["tags"]["tenant_id"] == "tenant-a", event.get("tags")
    assert event["request"]["url"].endswith("/orders/7"), event.get("request")
    assert event["sdk"]["name"] == "sentry.python", event["sdk"]
    assert event["sdk"]["integrations"], "the SDK's integrations are not named"
    assert event["release"] == sentry_settings.sentry_release, event.get("release")
    payment = [span for span in event["spans"] if span["op"] == "payment"]
    assert len(payment) == 1, f"the route's span is missing: {event['spans']}"
    assert "eyJ" not in json.dumps(event), "a token went out unscrubbed"


def test_if_the_fast_path_fails_the_sdks_path_sends_it_and_the_log_says_so_once(
    sentry_settings: Settings,
    transport: CapturingTransport,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = _traced_app(sentry_settings, transport)

    def broken(event: Any) -> bytes:
        raise RuntimeError("encoder broke")

    monkeypatch.setattr(transactions, "encode", broken)
    with TestClient(app) as client:
        for order in (1, 2):
            assert client.get(f"/orders/{order}").status_code == 200
    sentry_sdk.flush(timeout=2)
    sent = [event["request"]["url"][-1] for _, event in _all_transactions(transport)]
    assert sent == ["1", "2"], f"transactions lost when the fast path failed: {sent}"
    failures = [r for r in caplog.records if "fast path for transactions failed" in r.message]
    assert len(failures) == 1, f"logged {len(failures)} times"
    assert "encoder broke" in failures[0].getMessage(), failures[0].getMessage()
    assert not SENDER.fast, "the fast path stayed on after failing"


def _all_transactions(transport: CapturingTransport) -> list[tuple[Any, dict[str, Any]]]:
    return [
        (envelope.headers, json.loads(item.get_bytes()))
        for envelope in _sent(transport)
        for item in envelope.items
        if item.type == "transaction"
    ]


def test_a_transaction_with_extra_takes_the_sdks_path(
    sentry_settings: Settings, transport: CapturingTransport, encoded: list[str]
) -> None:
    app = _traced_app(sentry_settings, transport)

    @app.get("/with-extra")
    async def with_extra() -> dict[str, bool]:
        sentry_sdk.set_extra("big", {str(n): n for n in range(20)})  # the SDK trims it to 10
        return {"ok": True}

    encoded.clear()  # the start-up check's
    with TestClient(app) as client:
        assert client.get("/with-extra").status_code == 200
    sentry_sdk.flush(timeout=2)
    assert encoded == [], "a transaction with extra went the fast path"
    _, event = _transaction_envelope(transport)
    assert len(event["extra"]["big"]) == 10, "the SDK's path did not trim it"


def test_a_value_json_cannot_encode_takes_the_sdks_path_for_that_transaction_only(
    sentry_settings: Settings, transport: CapturingTransport, caplog: pytest.LogCaptureFixture
) -> None:
    app = _traced_app(sentry_settings, transport)

    @app.get("/priced")
    async def priced() -> dict[str, bool]:
        with sentry_sdk.start_span(op="price") as span:
            span.set_data("amount", Decimal("1.50"))  # the SDK's serializer writes its repr
        return {"ok": True}

    with TestClient(app) as client:
        assert client.get("/priced").status_code == 200
    sentry_sdk.flush(timeout=2)
    headers, event = _transaction_envelope(transport)
    (price,) = [span for span in event["spans"] if span["op"] == "price"]
    assert price["data"]["amount"] in ("1.50", "Decimal('1.50')"), price["data"]
    assert headers["trace"]["trace_id"] == event["contexts"]["trace"]["trace_id"], headers
    assert SENDER.fast, "one odd value switched the fast path off for good"
    assert not [r for r in caplog.records if "fast path" in r.getMessage()], "logged as a bug"


def test_if_the_check_finds_a_difference_the_fast_path_stays_off_and_the_log_says_where(
    sentry_settings: Settings,
    transport: CapturingTransport,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(
        transactions, "_difference", lambda expected, got: "transaction.spans only in the SDK's"
    )
    app = _traced_app(sentry_settings, transport)
    assert not SENDER.fast, "the fast path is on although the check failed"
    warnings = [r.getMessage() for r in caplog.records if "slower path" in r.getMessage()]
    assert warnings and "transaction.spans only in the SDK's" in warnings[0], warnings
    with TestClient(app) as client:
        assert client.get("/orders/3").status_code == 200
    sentry_sdk.flush(timeout=2)
    _, event = _transaction_envelope(transport)
    assert event["transaction"] == "/orders/{order_id}", "the SDK's path did not send it"


@pytest.mark.parametrize(
    ("expected", "got", "where"),
    [
        ({"a": {"b": 1}}, {"a": {"b": 2}}, "x.a.b: 1 and 2"),
        ({"a": 1, "c": 1}, {"a": 1}, "x.c only in the SDK path's"),
        ({"a": [1, 2]}, {"a": [1, 3]}, "x.a[1]: 2 and 3"),
        ({"trace_id": "1", "timestamp": "t1"}, {"trace_id": "2", "timestamp": "t2"}, None),
    ],
    ids=["value", "missing-key", "list-item", "ids-and-times-differ"],
)
def test_the_comparison_names_the_first_difference_but_ignores_ids_and_times(
    expected: dict[str, Any], got: dict[str, Any], where: str | None
) -> None:
    found = next(transactions._mismatches(expected, got, "x"), None)
    assert found == where, f"{expected} against {got}: {found}"
