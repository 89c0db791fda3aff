"""The fast path for transactions gives what the SDK's serializer gives, or leaves it to it."""

import copy
import math
from datetime import UTC, datetime
from typing import Any

import pytest
import sentry_sdk.client
from sentry_sdk.serializer import serialize as sdk_serialize

from app import sentry_serializer

STARTED = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC)
ENDED = datetime(2026, 11, 24, 12, 0, 0, 456789, tzinfo=UTC)


def _transaction(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "transaction",
        "transaction": "/items/{item_id}",
        "transaction_info": {"source": "route"},
        "contexts": {
            "trace": {"trace_id": "a" * 32, "span_id": "b" * 16, "op": "http.server"},
            "runtime": {"name": "CPython", "version": "3.11.7"},
            "tenant": {"id": "acme", "plan": None, "seats": 12, "ratio": 0.5, "on": True},
        },
        "tags": {"http.status_code": "200", "tenant_id": "acme"},
        "timestamp": ENDED,
        "start_timestamp": STARTED,
        "spans": [
            {
                "span_id": "c" * 16,
                "op": "db",
                "description": "SELECT items.id FROM items WHERE items.id = ?",
                "start_timestamp": STARTED,
                "timestamp": ENDED,
                "data": {"db.system": "sqlite", "thread.id": "140", "rows": [1, 2, (3, 4)]},
            }
        ],
        "measurements": {},
        "user": {"id": "u-1", "email": "ada@example.com"},
        "request": {"method": "GET", "url": "http://testserver/items/1"},
        "sdk": {"name": "sentry.python", "integrations": ["asyncio", "logging"]},
        "text": 'Grüße, 東京 \u2028 "quoted" \\ back',
    }
    event.update(changes)
    return event


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


EVENTS = {
    "plain transaction": _transaction(),
    "error event": {"type": None, "message": "boom", "timestamp": ENDED, "extra": {"a": 1}},
    "transaction with extra": _transaction(extra={str(n): n for n in range(20)}),
    "transaction with an object": _transaction(tags={"thing": Opaque()}),
    "transaction with a set": _transaction(tags={"values": {1}}),
    "transaction with NaN": _transaction(measurements={"x": {"value": math.nan}}),
    "transaction with a non-string key": _transaction(contexts={"c": {(1, 2): "tuple key"}}),
    "transaction with request data": _transaction(request={"data": {"password": "x" * 3000}}),
}


@pytest.mark.parametrize("event", EVENTS.values(), ids=EVENTS.keys())
def test_the_fast_path_gives_what_the_sdk_gives(event: dict[str, Any]) -> None:
    fast = sentry_serializer.fast_path(sdk_serialize)
    expected = sdk_serialize(copy.deepcopy(event))
    assert fast(copy.deepcopy(event)) == expected


def test_only_plain_transactions_take_the_fast_path() -> None:
    calls: list[str] = []

    def sdk(event: dict[str, Any], **options: Any) -> dict[str, Any]:
        calls.append(str(event.get("type")))
        return sdk_serialize(event, **options)

    fast = sentry_serializer.fast_path(sdk)
    for event in EVENTS.values():
        fast(copy.deepcopy(event))
    fast(_transaction(), max_value_length=10)
    assert len(calls) == len(EVENTS), f"only the plain transaction may skip the SDK: {calls}"


def test_install_puts_the_fast_path_in_front_of_the_sdk_once() -> None:
    original = sentry_sdk.client.serialize  # type: ignore[attr-defined]
    try:
        assert sentry_serializer.install(), "the SDK no longer looks serialize up in its client"
        installed = sentry_sdk.client.serialize  # type: ignore[attr-defined]
        assert getattr(installed, "sdk_serialize", None) is sdk_serialize
        assert sentry_serializer.install()
        assert sentry_sdk.client.serialize is installed, "installed twice"  # type: ignore[attr-defined]
    finally:
        sentry_sdk.client.serialize = original  # type: ignore[attr-defined]
