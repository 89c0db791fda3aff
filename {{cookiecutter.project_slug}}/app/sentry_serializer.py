"""A fast path through the SDK's event serializer, for plain transactions.

Before an event is sent, the SDK passes every value in it through its serializer, which makes
values JSON-safe (datetimes become timestamps, other objects their `repr`), trims large "databags"
(request bodies, breadcrumb data, `extra`) and records what it changed under `_meta`. It does so
one value at a time in Python, a few microseconds each: for a sampled request's transaction, about
a third of its cost on the template's benchmark machine (docs/adr/0003).

A transaction made of dicts, lists, strings, numbers and datetimes, with nothing to trim, comes
out of that serializer unchanged but for the datetimes. `serialize` here gives the same result
with one round trip through the json module, which does the walk in C. Everything else goes to
the SDK's serializer as before: errors, and any transaction with a value the json module does
not take as it is (an object, a set, a float that is not a number, a non-string key), with
`extra`, request data or breadcrumbs, or with options that change serialization
(`max_value_length`, `custom_repr`). tests/sentry/test_serializer.py holds both to the same result.
"""

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import sentry_sdk.client
import sentry_sdk.serializer
from sentry_sdk.utils import format_timestamp

Serializer = Callable[..., Any]


class _NotPlainError(Exception):
    """A value the fast path leaves to the SDK's serializer."""


def _plain(value: object) -> str:
    if isinstance(value, datetime):
        return format_timestamp(value)
    raise _NotPlainError


def _is_plain_transaction(event: Mapping[str, Any], options: Mapping[str, Any]) -> bool:
    request = event.get("request")
    return (
        event.get("type") == "transaction"
        and options.get("max_value_length") is None
        and options.get("custom_repr") is None
        and not event.get("extra")
        and "breadcrumbs" not in event
        and "_meta" not in event
        and not (isinstance(request, Mapping) and "data" in request)
        and not sentry_sdk.serializer.global_repr_processors
    )


def fast_path(sdk_serialize: Serializer) -> Serializer:
    """`sdk_serialize`, with plain transactions serialized by the json module instead."""

    def serialize(event: Any, **options: Any) -> Any:
        if isinstance(event, dict) and _is_plain_transaction(event, options):
            try:
                return json.loads(json.dumps(event, default=_plain, allow_nan=False))
            except (_NotPlainError, TypeError, ValueError, RecursionError):
                pass
        return sdk_serialize(event, **options)

    serialize.sdk_serialize = sdk_serialize  # type: ignore[attr-defined]
    return serialize


#: The SDK's serializer behind the fast path, for callers that serialize an event themselves.
serialize_event = fast_path(sentry_sdk.serializer.serialize)


def install() -> bool:
    """Put the fast path in front of the SDK's serializer, once. Returns whether it is in place.

    The SDK looks `serialize` up in its client module when it prepares an event; if a later SDK
    no longer does, nothing is installed and events are serialized as before, only slower.
    """
    current = getattr(sentry_sdk.client, "serialize", None)
    if getattr(current, "sdk_serialize", None) is not None:
        return True
    if current is not sentry_sdk.serializer.serialize:
        return False
    sentry_sdk.client.serialize = fast_path(current)  # type: ignore[attr-defined]
    return True
