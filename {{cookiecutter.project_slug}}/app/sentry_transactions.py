"""Sending a sampled request's transaction the short way.

When a transaction ends, the SDK builds its event (spans, contexts, measurements) and hands it to
the pipeline every event goes through: copy and merge three scopes, run the event processors, fill
in release, environment and SDK details, mark in-app frames, run its own scrubber, serialize,
call `before_send_transaction`, build the envelope. For a transaction, several of those steps have
nothing to do and the rest can be done more cheaply; together they were most of what a traced
request cost (docs/adr/0003).

`finish` lets the SDK build the event as usual (`Transaction.finish` takes the scope to report
to), then does only what a transaction needs: the isolation scope's data and every event
processor (`Scope.apply_to_event`), release, environment, server name and SDK details, the
serializer (with app/sentry_serializer.py's fast path), `before_send_transaction` (the scrubber),
and an envelope with the trace's dynamic sampling context, queued on the client's transport.
A transaction with anything more to it (a profile, AI spans, or Spotlight on) takes the SDK's
own path, as does every error event.
"""

import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sentry_sdk
import sentry_sdk.client
from sentry_sdk.envelope import Envelope
from sentry_sdk.utils import format_timestamp

from app.sentry_ids import FAST_UUID
from app.sentry_serializer import serialize_event

if TYPE_CHECKING:
    from sentry_sdk.tracing import Transaction
    from sentry_sdk.types import Event

#: Keys `Transaction.finish` adds for the SDK's own pipeline; their presence sends it there.
_SDK_PATH_KEYS = ("profile", "_has_gen_ai_span")


class _Receiver(sentry_sdk.Scope):
    """The scope `Transaction.finish` reports to: it receives the built event."""

    def __init__(self) -> None:
        super().__init__()
        self.event: Event | None = None

    def capture_event(
        self, event: "Event", hint: Any = None, scope: Any = None, **scope_kwargs: Any
    ) -> str | None:
        self.event = event
        return None


_receivers = threading.local()


def finish(transaction: "Transaction") -> str | None:
    """End `transaction` (sampled, not yet finished) and queue it. Returns its event id, if sent.

    Call it inside the transaction's `with` block, in the request's own scopes: the context
    manager's exit then finds it finished and only restores the scope's span.
    """
    receiver = getattr(_receivers, "receiver", None)
    if receiver is None:  # one per thread: a new Scope reads the environment, each time
        receiver = _receivers.receiver = _Receiver()
    receiver.event = None
    transaction.finish(scope=receiver)
    event, receiver.event = receiver.event, None
    if event is None:  # not sampled after all, or dropped by the SDK's own rules
        return None
    client = sentry_sdk.get_client()
    if any(key in event for key in _SDK_PATH_KEYS) or client.options.get("spotlight"):
        return sentry_sdk.get_current_scope().capture_event(event)
    try:
        return _send(event, client)
    except Exception:  # a transaction is not worth a failed request
        return None


def _send(event: "Event", client: Any) -> str | None:
    transport, options = client.transport, client.options
    if transport is None:
        return None
    hint: dict[str, Any] = {}
    event.pop("_dropped_spans", None)
    prepared = sentry_sdk.get_isolation_scope().apply_to_event(event, hint, options)
    if prepared is None:  # an event processor dropped it
        return None
    for key in ("release", "environment", "server_name", "dist"):
        if prepared.get(key) is None and options[key] is not None:
            prepared[key] = str(options[key]).strip()
    if prepared.get("sdk") is None:
        prepared["sdk"] = {
            **sentry_sdk.client.SDK_INFO,
            "integrations": sorted(client.integrations),
        }
    prepared.setdefault("platform", "python")
    event_id = prepared.setdefault("event_id", FAST_UUID.uuid4().hex)
    serialized: Event | None = serialize_event(
        prepared,
        max_request_body_size=options.get("max_request_body_size"),
        max_value_length=options.get("max_value_length"),
        custom_repr=options.get("custom_repr"),
    )
    hook = options.get("before_send_transaction")
    if hook is not None and serialized is not None:
        serialized = hook(serialized, hint)
    if serialized is None:
        return None
    trace = (serialized.get("contexts") or {}).get("trace") or {}
    sampling_context = trace.pop("dynamic_sampling_context", None)
    headers: dict[str, Any] = {
        "event_id": event_id,
        "sent_at": format_timestamp(datetime.now(UTC)),
    }
    if sampling_context:
        headers["trace"] = sampling_context
    envelope = Envelope(headers=headers)
    envelope.add_transaction(serialized)
    transport.capture_envelope(envelope)
    return str(event_id)
