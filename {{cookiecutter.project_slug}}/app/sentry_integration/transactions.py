"""Sampled transactions, sent without the SDK's generic event preparation: the speed module.

The SDK finishes a sampled transaction (`Transaction.finish` builds the event from its spans) and
then prepares it as it prepares any event: the client's serializer walks every value (a memo
against cycles, a path for each value, annotations), which was about 40% of a traced request's
CPU on a route that reads a row (docs/performance.md). `TransactionSender` is the scope that the
middleware finishes sampled transactions with (`Transaction.finish(scope=...)`, public API). It
does what the client does for a transaction, through the scopes' own public methods, and encodes
the event with `json.dumps`:

1. the global, isolation and current scopes are merged and applied (`Scope.update_from_scope`,
   `Scope.apply_to_event`): user, tags, contexts and event processors (the request's URL);
2. event id, release, environment, server name, platform and the SDK's name and integrations;
3. `before_send_transaction` (the scrubber);
4. the envelope, with the trace's dynamic sampling context as its `trace` header, is queued on
   the transport.

A transaction the fast path would not encode exactly as the SDK does (one carrying `extra` or a
request body, which the SDK trims, or attachments, or a value `json` cannot encode as it is) takes
the SDK's own path. `check`, run when tracing is switched on, finishes one transaction both ways
into a capturing transport and compares the two envelopes; if they differ (a new SDK version that
builds transactions differently, say), the fast path stays off and the log says where they
differ. If it fails later, the SDK's path takes that transaction and every later one, and the log
says so once. This is the one module that relies on how the SDK's client prepares a transaction.
"""

import json
import logging
import uuid
from collections.abc import Iterator
from copy import copy
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sentry_sdk
from sentry_sdk.envelope import Envelope, Item, PayloadRef
from sentry_sdk.transport import Transport

if TYPE_CHECKING:
    from sentry_sdk.types import Event, Hint

logger = logging.getLogger("app.sentry")

#: What differs between two transactions by nature: ids, times, the random draw.
_VOLATILE = frozenset(
    {"event_id", "sent_at", "trace_id", "span_id", "parent_span_id", "timestamp"}
    | {"start_timestamp", "sample_rand", "length", "thread.id"}
)


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _encode_default(value: Any) -> str:
    if isinstance(value, datetime):
        return _timestamp(value)
    raise TypeError(f"{type(value).__name__} is not for the fast path")


def encode(event: "Event") -> bytes:
    """The event as the SDK's envelope item holds it: compact JSON, no NaN."""
    return json.dumps(
        event, default=_encode_default, allow_nan=False, separators=(",", ":")
    ).encode("utf-8")


class TransactionSender(sentry_sdk.Scope):
    """The scope sampled transactions are finished with; see the module's docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.fast = False
        self._sdk_info: tuple[Any, dict[str, Any]] | None = None  # (client, what it sends)

    def capture_event(
        self,
        event: "Event",
        hint: "Hint | None" = None,
        scope: "sentry_sdk.Scope | None" = None,
        **scope_kwargs: Any,
    ) -> str | None:
        if self.fast and event.get("type") == "transaction" and not hint and not scope:
            try:
                sent = self._send(event)
            except Exception as error:
                self.fast = False
                logger.error(
                    "Sentry: the fast path for transactions failed (%s: %s); the SDK's own path "
                    "sends them from now on. This is a bug in app/sentry_integration.",
                    type(error).__name__,
                    error,
                )
            else:
                if sent is not NotImplemented:
                    return str(sent) if sent is not None else None
        # The SDK's own path, as `Transaction.finish` takes it without a scope.
        return sentry_sdk.get_current_scope().capture_event(event, hint, scope, **scope_kwargs)

    def _send(self, event: "Event") -> Any:
        """Send `event`; NotImplemented if it is one the SDK's path must take."""
        if "extra" in event or "data" in (event.get("request") or {}):
            return NotImplemented
        client = sentry_sdk.get_client()
        merged = copy(sentry_sdk.get_global_scope())
        merged.update_from_scope(sentry_sdk.get_isolation_scope())
        merged.update_from_scope(sentry_sdk.get_current_scope())
        hint: dict[str, Any] = {}
        applied = merged.apply_to_event(event, hint, client.options)
        if hint.get("attachments") or "extra" in (applied or {}):
            return NotImplemented
        if applied is None:
            self._lost(client, "event_processor", event)
            return None
        event = applied
        options = client.options
        event_id = event.setdefault("event_id", uuid.uuid4().hex)
        for key in ("release", "environment", "server_name", "dist"):
            if event.get(key) is None and options.get(key) is not None:
                event[key] = str(options[key]).strip()
        event.setdefault("sdk", self._sdk(client))
        event.setdefault("platform", "python")
        before_send = options.get("before_send_transaction")
        if before_send is not None:
            spans = len(event.get("spans") or [])
            kept = before_send(event, {})
            if kept is None:
                self._lost(client, "before_send", event, spans)
                return None
            event = kept
        trace = (event.get("contexts") or {}).get("trace") or {}
        sampling = trace.pop("dynamic_sampling_context", None)
        try:
            payload = encode(event)
        except (TypeError, ValueError):  # a value json cannot take as it is: the SDK's path can
            if sampling is not None:
                trace["dynamic_sampling_context"] = sampling
            return NotImplemented
        headers: dict[str, Any] = {"event_id": event_id, "sent_at": _timestamp(datetime.now(UTC))}
        if sampling:
            headers["trace"] = sampling
        item = Item(
            payload=PayloadRef(bytes=payload), type="transaction", content_type="application/json"
        )
        if client.transport is None:
            return None
        client.transport.capture_envelope(Envelope(headers=headers, items=[item]))
        return str(event_id)

    def _sdk(self, client: Any) -> dict[str, Any]:
        if self._sdk_info is None or self._sdk_info[0] is not client:
            info = {
                "name": "sentry.python",
                "version": sentry_sdk.VERSION,
                "packages": [{"name": "pypi:sentry-sdk", "version": sentry_sdk.VERSION}],
                "integrations": sorted(client.integrations),
            }
            self._sdk_info = (client, info)
        return dict(self._sdk_info[1])

    @staticmethod
    def _lost(client: Any, reason: str, event: "Event", spans: int | None = None) -> None:
        if client.transport is not None:
            count = len(event.get("spans") or []) if spans is None else spans
            client.transport.record_lost_event(reason, data_category="transaction")
            client.transport.record_lost_event(reason, data_category="span", quantity=count + 1)

    def check(self) -> bool:
        """Finish one transaction the SDK's way and one this way, into a capturing transport
        (nothing is sent), and compare them. Switches the fast path on if they match."""
        envelopes = _made_both_ways(self)
        difference = _difference(*envelopes) if len(envelopes) == 2 else "not both were sent"
        self.fast = difference is None
        if difference is not None:
            logger.warning(
                "Sentry: transactions take the SDK's own, slower path: the fast one builds them "
                "differently with sentry-sdk %s (%s).",
                sentry_sdk.VERSION,
                difference,
            )
        return self.fast


#: The one sender; `init_sentry` runs its check when tracing is on.
SENDER = TransactionSender()


class _Capture(Transport):
    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)


def _made_both_ways(sender: TransactionSender) -> list[Envelope]:
    options = dict(sentry_sdk.get_client().options)
    options.pop("data_collection", None)  # derived from the others; given, it is a setting
    options.update(
        transport=_Capture,
        integrations=[],
        default_integrations=False,
        auto_enabling_integrations=False,
        enable_backpressure_handling=False,
        send_client_reports=False,
        traces_sampler=None,
        traces_sample_rate=1.0,
        profile_session_sample_rate=None,
        profiles_sample_rate=None,
    )
    client = sentry_sdk.Client(**options)
    sender.fast = True
    try:
        for finish_here in (False, True):
            with sentry_sdk.isolation_scope() as isolation:
                sentry_sdk.get_current_scope().set_client(client)
                isolation.set_user({"id": "check"})
                isolation.set_tag("check", "yes")
                isolation.set_context("check", {"step": 1})
                with sentry_sdk.start_transaction(
                    op="http.server", name="/check/{id}", source="route"
                ) as transaction:
                    with transaction.start_child(op="db", name="SELECT 1") as child:
                        child.set_data("db.system", "sqlite")
                    transaction.set_http_status(200)
                    if finish_here:
                        transaction.finish(scope=sender)
        return list(client.transport.envelopes) if isinstance(client.transport, _Capture) else []
    finally:
        sender.fast = False
        client.close(timeout=0)


def _difference(expected: Envelope, got: Envelope) -> str | None:
    """The first place where the two envelopes differ but for ids and times, or None."""
    want = [("headers", expected.headers)] + [(str(i.type), _item(i)) for i in expected.items]
    have = [("headers", got.headers)] + [(str(i.type), _item(i)) for i in got.items]
    for (kind, a), (other, b) in zip(want, have, strict=False):
        if kind != other:
            return f"items {kind} and {other}"
        mismatch = next(_mismatches(a, b, kind), None)
        if mismatch is not None:
            return mismatch
    if len(want) != len(have):
        return f"{len(want) - 1} items and {len(have) - 1}"
    return None


def _item(item: Item) -> dict[str, Any]:
    return {"headers": item.headers, "payload": json.loads(item.get_bytes())}


def _mismatches(a: Any, b: Any, path: str) -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                yield f"{path}.{key} only in the {'SDK' if key in a else 'fast'} path's"
            elif key not in _VOLATILE:
                yield from _mismatches(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for index, (left, right) in enumerate(zip(a, b, strict=True)):
            yield from _mismatches(left, right, f"{path}[{index}]")
    elif a != b:
        yield f"{path}: {a!r} and {b!r}"
