"""Which events are sent, and what an error event carries: the SDK's `before_send` hooks.

Every error event passes `EventHooks.before_send`, in this order:

1. (before it is even built) a log record about an exception the request path has already
   reported is not turned into an event or a breadcrumb: uvicorn logs each exception that escapes
   the app, which the middleware reported already (`attach_log_handlers`);
2. client errors are dropped: FastAPI's `HTTPException` with a 4xx status and request validation
   errors. Any other exception is a failure of this service, whatever attributes it carries;
3. flood control (`flood.py`): at most N events per issue per window;
4. an exception that escaped a request is marked unhandled;
5. the service's own stack frames get their source lines and local variables (`frames.py`);
6. the worker (process id and name) is added as a context;
7. everything is scrubbed (`privacy.py`).

If any step fails (a bug, or an event shape nobody foresaw), the event is not lost and nothing
unscrubbed is sent: a reduced event goes instead (`privacy.reduced_event`: the exception's type,
its scrubbed message and a stack without locals or request), and the log says so once.
Transactions are scrubbed the same way; one that cannot be is dropped and logged. Breadcrumbs
are taken as they are, at no cost, and scrubbed with the event that carries them, if one is sent.
"""

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from starlette.exceptions import HTTPException

from app.sentry_integration.flood import FloodGate, issue_key
from app.sentry_integration.frames import add_app_frame_detail
from app.sentry_integration.privacy import reduced_event, scrub_event

if TYPE_CHECKING:
    from sentry_sdk.types import Event, Hint

logger = logging.getLogger("app.sentry")

#: Set on an exception once it is reported: True, or "unhandled" if it escaped a request.
_REPORTED = "_reported_to_sentry"
_UNHANDLED = "unhandled"
_PROCESS = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
_CLIENT_ERRORS = (RequestValidationError, WebSocketRequestValidationError)


def _mark(error: BaseException | None, value: object) -> None:
    # None, or an exception type that takes no attributes, is simply not marked.
    with contextlib.suppress(AttributeError, TypeError):
        if getattr(error, _REPORTED, None) != _UNHANDLED:
            setattr(error, _REPORTED, value)


def mark_unhandled(error: BaseException) -> None:
    """Mark `error` as escaping a request: reported by the request path, shown as unhandled."""
    _mark(error, _UNHANDLED)


def was_reported(error: BaseException | None) -> bool:
    """Whether an event has been built for `error`, or the request path is about to build one."""
    return bool(getattr(error, _REPORTED, False))


def is_client_error(error: BaseException | None) -> bool:
    """Whether `error` is the client's fault: a 4xx `HTTPException` or a validation error."""
    if isinstance(error, HTTPException):
        return error.status_code < 500
    return isinstance(error, _CLIENT_ERRORS)


class EventHooks:
    """The SDK's `before_send` and `before_send_transaction` hooks."""

    def __init__(self, flood: FloodGate) -> None:
        self.flood = flood
        self._logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def before_send(self, event: "Event", hint: "Hint") -> "Event | None":
        try:
            return self._filter_and_enrich(event, hint)
        except Exception as error:
            self._log_once("error event", error)
        try:
            reduced: Event = reduced_event(event)  # type: ignore[assignment]
        except Exception as error:  # pragma: no cover - reduced_event takes any dict
            logger.error("Sentry: an error event was dropped: it could not be reduced (%r).", error)
            return None
        return reduced

    def before_send_transaction(self, event: "Event", hint: "Hint") -> "Event | None":
        scrubbed: Event | None = self._scrubbed("transaction", scrub_event, event)
        return scrubbed

    def _filter_and_enrich(self, event: "Event", hint: "Hint") -> "Event | None":
        exc_info = hint.get("exc_info")
        error = exc_info[1] if exc_info else None
        if is_client_error(error):
            return None
        dropped = self.flood.admit(issue_key(event, error))
        if dropped is None:
            return None
        contexts = event.setdefault("contexts", {})
        if dropped:
            contexts["flood_control"] = {
                "dropped_before_this": dropped,
                "max_events": self.flood.max_events,
                "window_seconds": self.flood.window_seconds,
            }
        if getattr(error, _REPORTED, None) == _UNHANDLED:
            for value in (event.get("exception") or {}).get("values") or []:
                value["mechanism"] = {**(value.get("mechanism") or {}), "type": "asgi"}
                value["mechanism"]["handled"] = False
        _mark(error, True)
        add_app_frame_detail(event, error)
        contexts["worker"] = {"pid": os.getpid(), "process": _PROCESS}
        scrubbed: Event = scrub_event(event)  # type: ignore[arg-type, assignment]
        return scrubbed

    def _scrubbed(self, kind: str, scrubber: Callable[[Any], Any], item: Any) -> Any:
        try:
            return scrubber(item)
        except Exception as error:
            self._log_once(kind, error)
            return None

    def _log_once(self, kind: str, error: Exception) -> None:
        key = (kind, type(error).__name__)
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        what = "a reduced event was sent instead" if kind == "error event" else "it was dropped"
        logger.error(
            "Sentry: preparing the %s failed (%s: %s); %s. This is a bug in "
            "app/sentry_integration; later failures of this kind are not logged.",
            kind,
            type(error).__name__,
            error,
            what,
        )


class _SkipReportedExceptions(logging.Filter):
    """Keeps a log record about an exception that was already reported out of Sentry.

    Filtered here, the record costs nothing: no second event built only to be dropped (and
    counted as a loss in Sentry's stats), no breadcrumb that says what the event says.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and was_reported(record.exc_info[1]))


def attach_log_handlers(event_level: int, breadcrumb_level: int) -> None:
    """Turn log records into events and breadcrumbs through the SDK's own logging handlers.

    `init_sentry` switches the logging integration's built-in handlers off and attaches the SDK's
    documented `EventHandler` and `BreadcrumbHandler` to the root logger here instead, so that
    they can carry a filter. Every record reaches them: app/core/logging.py sends the server's
    loggers through the root logger too. Attaching twice replaces the earlier pair.
    """
    from sentry_sdk.integrations.logging import BreadcrumbHandler, EventHandler

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, EventHandler | BreadcrumbHandler)]:
        root.removeHandler(old)
    # Events first: a record that becomes an event is not also a breadcrumb on that event.
    for handler in (EventHandler(level=event_level), BreadcrumbHandler(level=breadcrumb_level)):
        handler.addFilter(_SkipReportedExceptions())
        root.addHandler(handler)
