"""Error tracking with Sentry: set-up, the helpers the rest of the app calls, and a `check` command.

Everything here is fail-open. With SENTRY_DSN empty or invalid, or with `sentry-sdk` not installed,
`init_sentry` logs one line and returns False, and every helper becomes a cheap no-op. When the
Sentry server is down, slow or refusing events, the service keeps serving and says so once in its
log. Error tracking must never be the reason the service does not start or a request fails.

Why each option is set the way it is: docs/adr/0003-error-tracking-with-sentry.md.
Check a configuration: `python -m app.sentry check`.
"""

import asyncio
import contextlib
import logging
import os
import socket
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException

from app.core.config import Settings, load_settings
from app.sentry_integration.privacy import safely, scrub_breadcrumb, scrub_event

try:
    import sentry_sdk
    from sentry_sdk.consts import EndpointType
    from sentry_sdk.envelope import Envelope, Item, PayloadRef
    from sentry_sdk.integrations.argv import ArgvIntegration
    from sentry_sdk.integrations.fastapi import FastApiIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration, ignore_logger
    from sentry_sdk.integrations.starlette import StarletteIntegration
    from sentry_sdk.tracing_utils import has_tracing_enabled
    from sentry_sdk.utils import Dsn

    from app import sentry_ids, sentry_serializer
    from app.sentry_integration.request import (
        TracingMiddleware,
        enable_asyncio_spans_for_traced_requests,
        sample_rate,
    )
    from app.sentry_integration.flood import FloodGate, issue_key
    from app.sentry_integration.frames import add_app_frame_detail
    from app.sentry_integration.spool import Spool
    from app.sentry_integration.delivery import SentryTransport, transport_class
except ImportError:  # pragma: no cover - exercised by a test that hides the package
    sentry_sdk = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from sentry_sdk.transport import Transport
    from sentry_sdk.types import Event, Hint

logger = logging.getLogger(__name__)

Level = Literal["fatal", "critical", "error", "warning", "info", "debug"]

#: Only server errors are reported; 4xx answers are the client's problem, not a bug here.
SERVER_ERROR_STATUS_CODES = frozenset(range(500, 600))
#: Requests to these paths never become transactions (probes would drown the real traffic).
UNTRACED_PATHS = frozenset({"/health", "/healthz", "/livez", "/readyz", "/metrics", "/favicon.ico"})
#: Not breadcrumbs or events: access logs repeat every request (with the client's address), and this
#: module's own messages are about Sentry itself.
IGNORED_LOGGERS = ("uvicorn.access", "gunicorn.access", __name__)
#: The spool's directory in the temp directory, unless SENTRY_SPOOL_DIR names another.
DEFAULT_SPOOL_NAME = "{{ cookiecutter.project_slug }}-sentry-spool"
#: How long a normal shutdown waits for queued events to be sent.
SHUTDOWN_FLUSH_SECONDS = 2.0
CHECK_TIMEOUT_SECONDS = 10.0


def init_sentry(settings: Settings, *, transport: "Transport | None" = None) -> bool:
    """Start reporting to Sentry if SENTRY_DSN is set. Returns whether reporting is on.

    `transport` replaces the network transport; the tests pass an in-memory one.
    """
    dsn = settings.sentry_dsn.get_secret_value().strip()
    if not dsn:
        logger.info("Sentry is off: SENTRY_DSN is empty.")
        return False
    if sentry_sdk is None:
        logger.warning("Sentry is off: SENTRY_DSN is set but the sentry-sdk package is missing.")
        return False
    for name in IGNORED_LOGGERS:
        ignore_logger(name)
    rate = settings.sentry_traces_sample_rate
    try:
        sentry_sdk.init(
            dsn=dsn,
            environment=settings.sentry_environment,
            release=settings.sentry_release,
            # With a rate of 0 the SDK's tracing is off: no span objects, no wrapped tasks.
            traces_sampler=_traces_sampler(rate) if rate > 0 else None,
            profile_session_sample_rate=settings.sentry_profiles_sample_rate,
            profile_lifecycle="trace",
            integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
            # Their per-request work is done by app/sentry_asgi.py, at a fraction of the cost.
            # Argv would attach the command line (which may hold secrets) to every event.
            disabled_integrations=[StarletteIntegration, FastApiIntegration, ArgvIntegration],
            in_app_include=["app"],
            # Added back for in-app frames only, by _before_send: see app/sentry_frames.py.
            include_local_variables=False,
            include_source_context=False,
            before_send=_before_send_with(
                FloodGate(settings.sentry_flood_max_events, settings.sentry_flood_window_seconds)
            ),
            before_send_transaction=safely(scrub_event),
            before_breadcrumb=safely(scrub_breadcrumb),
            transport=transport or transport_class(dsn),
            shutdown_timeout=SHUTDOWN_FLUSH_SECONDS,
        )
    except Exception as error:
        logger.error(
            "Sentry is off: it could not be started with SENTRY_DSN (%s: %s). "
            "Copy the DSN from your Sentry project's Client Keys settings.",
            type(error).__name__,
            error,
        )
        return False
    _skip_reported_exceptions_in_logging()
    _quiet_sdk_debug_logging()
    _use_spool(settings)
    sentry_serializer.install()
    sentry_ids.install()
    logger.info(
        "Sentry is on: environment=%s release=%s traces_sample_rate=%s",
        settings.sentry_environment,
        settings.sentry_release,
        settings.sentry_traces_sample_rate,
    )
    return True


def instrument_app(app: FastAPI, settings: Settings) -> None:
    """Report the app's failed requests and trace a sample of them, if Sentry is on.

    With Sentry off this adds nothing at all, so it costs requests nothing.
    """
    if sentry_sdk is None or not sentry_sdk.get_client().is_active():
        return
    app.add_middleware(
        TracingMiddleware,
        traces_sample_rate=settings.sentry_traces_sample_rate,
        untraced_paths=UNTRACED_PATHS,
        on_capture=_mark_reported,
    )
    app.add_exception_handler(HTTPException, _report_server_errors)


async def _report_server_errors(request: Request, error: Exception) -> Response:
    """Report an HTTPException with a 5xx status, then answer as FastAPI would anyway.

    Such an exception never reaches the middleware: Starlette turns it into a response first.
    """
    if isinstance(error, HTTPException) and error.status_code in SERVER_ERROR_STATUS_CODES:
        capture_exception(error)
    return await http_exception_handler(request, error)  # type: ignore[arg-type]


@asynccontextmanager
async def sentry_lifespan() -> AsyncIterator[None]:
    """Run around the app's lifespan: instrument the server's event loop, flush at shutdown.

    The asyncio integration patches the *running* loop, so it can only be enabled here, once the
    server has started its loop, not when the app is imported. With tracing off it is not enabled:
    it would only cost every request a check.
    """
    client = None if sentry_sdk is None else sentry_sdk.get_client()
    if client is not None and client.is_active() and has_tracing_enabled(client.options):
        enable_asyncio_spans_for_traced_requests()
    try:
        yield
    finally:
        if sentry_sdk is not None and sentry_sdk.get_client().is_active():
            await asyncio.to_thread(sentry_sdk.flush, timeout=SHUTDOWN_FLUSH_SECONDS)


def set_user_context(user_id: str, tenant_id: str, email: str | None = None) -> None:
    """Attach the caller to every event of the current request: user, tenant tag and context."""
    if sentry_sdk is None:  # pragma: no cover
        return
    user: dict[str, Any] = {"id": user_id}
    if email is not None:
        user["email"] = email
    scope = sentry_sdk.get_isolation_scope()
    scope.set_user(user)
    scope.set_tag("tenant_id", tenant_id)
    scope.set_context("tenant", {"id": tenant_id})


def clear_user_context() -> None:
    """Forget the user and tenant set by `set_user_context`."""
    if sentry_sdk is None:  # pragma: no cover
        return
    scope = sentry_sdk.get_isolation_scope()
    scope.set_user(None)
    scope.remove_tag("tenant_id")
    scope.remove_context("tenant")


def capture_message(message: str, level: Level = "info", **extra: Any) -> str | None:
    """Report a handled but noteworthy condition on purpose. Returns the event id."""
    if sentry_sdk is None:  # pragma: no cover
        return None
    return sentry_sdk.capture_message(message, level=level, extras=extra)


def capture_exception(exception: BaseException, **extra: Any) -> str | None:
    """Report a handled exception with its stack trace. Returns the event id."""
    if sentry_sdk is None:  # pragma: no cover
        return None
    return sentry_sdk.capture_exception(exception, extras=extra)


def add_breadcrumb(
    message: str,
    category: str | None = None,
    level: Level = "info",
    data: Mapping[str, Any] | None = None,
) -> None:
    """Record a step that will be shown with the next event of this request."""
    if sentry_sdk is None:  # pragma: no cover
        return
    sentry_sdk.add_breadcrumb(
        message=message, category=category, level=level, data=dict(data or {})
    )


def set_tag(key: str, value: str) -> None:
    """Add an indexed, searchable tag to the events of the current request."""
    if sentry_sdk is None:  # pragma: no cover
        return
    sentry_sdk.set_tag(key, value)


def set_context(name: str, context: Mapping[str, Any]) -> None:
    """Add a block of structured, non-indexed data to the events of the current request."""
    if sentry_sdk is None:  # pragma: no cover
        return
    sentry_sdk.set_context(name, dict(context))


def _is_client_error(hint: "Hint") -> bool:
    """Whether the event was caused by a 4xx HTTPException or a request validation error."""
    exc_info = hint.get("exc_info")
    if not exc_info:
        return False
    error = exc_info[1]
    status_code = getattr(error, "status_code", None)
    if isinstance(status_code, int):
        return status_code < 500
    return type(error).__name__ in {"RequestValidationError", "WebSocketRequestValidationError"}


_PROCESS = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
#: Set on an exception once an event has been built for it.
_REPORTED = "_reported_to_sentry"


class _SkipReportedExceptions(logging.Filter):
    """Keeps a log record about an exception already reported out of Sentry altogether.

    uvicorn logs every exception that escapes the app ("Exception in ASGI application") after the
    middleware has marked it for reporting. The SDK would build a second full event from that
    record, only for its de-duplication to drop it, and a breadcrumb, formatting the whole
    traceback for it; together that tripled the cost of an error. The breadcrumb would also say
    nothing the event does not.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not getattr(error, _REPORTED, False)


def _skip_reported_exceptions_in_logging() -> None:
    """Attach `_SkipReportedExceptions` to the logging integration's event and breadcrumb handlers.

    The SDK keeps those handlers in private attributes; if a later SDK moves them, nothing breaks:
    the duplicate event is still dropped, just not as cheaply.
    """
    integration = sentry_sdk.get_client().get_integration(LoggingIntegration)
    for attribute in ("_handler", "_breadcrumb_handler"):
        handler = getattr(integration, attribute, None)
        if isinstance(handler, logging.Handler) and not any(
            isinstance(existing, _SkipReportedExceptions) for existing in handler.filters
        ):
            handler.addFilter(_SkipReportedExceptions())


def _quiet_sdk_debug_logging() -> None:
    """Keep the SDK from building log records that it would only throw away.

    The SDK's logger is set to DEBUG with a filter that drops every record unless its `debug`
    option is on, so each of its debug calls (one per transaction, for one) still builds a record.
    With `debug` off, a level above CRITICAL skips that work and changes nothing that is shown.
    """
    if not sentry_sdk.get_client().options.get("debug"):
        logging.getLogger("sentry_sdk.errors").setLevel(logging.CRITICAL + 1)


def spool_directory(settings: Settings) -> Path:
    """Where undeliverable events wait: SENTRY_SPOOL_DIR, or one named after the service."""
    configured = settings.sentry_spool_dir.strip()
    if configured:
        return Path(configured).expanduser()
    return Path(tempfile.gettempdir()) / DEFAULT_SPOOL_NAME


def _use_spool(settings: Settings) -> None:
    transport = sentry_sdk.get_client().transport
    if not settings.sentry_spool_enabled or not isinstance(transport, SentryTransport):
        return
    spool = Spool(
        spool_directory(settings),
        max_bytes=int(settings.sentry_spool_max_mb * 2**20),
        max_age_seconds=settings.sentry_spool_max_age_hours * 3600,
    )
    if transport.use_spool(spool):
        logger.info("Sentry spool: undeliverable error events wait in %s.", spool.directory)


def _mark_reported(error: BaseException | None) -> None:
    # None, or an exception type that takes no attributes, is simply not marked.
    with contextlib.suppress(AttributeError, TypeError):
        setattr(error, _REPORTED, True)


def _before_send_with(flood: "FloodGate") -> Callable[["Event", "Hint"], "Event | None"]:
    def before_send(event: "Event", hint: "Hint") -> "Event | None":
        return _before_send(event, hint, flood)

    return before_send


def _before_send(event: "Event", hint: "Hint", flood: "FloodGate | None" = None) -> "Event | None":
    exc_info = hint.get("exc_info")
    error = exc_info[1] if exc_info else None
    _mark_reported(error)
    if _is_client_error(hint):
        return None
    if flood is not None:
        dropped = flood.admit(issue_key(event, error))
        if dropped is None:
            return None
        if dropped:
            event.setdefault("contexts", {})["flood_control"] = {
                "dropped_before_this": dropped,
                "max_events": flood.max_events,
                "window_seconds": flood.window_seconds,
            }
    with contextlib.suppress(Exception):  # without the detail, the event is still worth sending
        add_app_frame_detail(event, error)
    contexts = event.setdefault("contexts", {})
    contexts["worker"] = {"pid": os.getpid(), "process": _PROCESS}
    scrubbed: Event | None = safely(scrub_event)(event)
    return scrubbed


def _traces_sampler(rate: float) -> Callable[[dict[str, Any]], float]:
    """For transactions the SDK samples itself; HTTP requests are sampled by the middleware, with
    the same rule (`sample_rate`)."""

    def sample(context: dict[str, Any]) -> float:
        scope = context.get("asgi_scope") or {}
        if scope.get("path") in UNTRACED_PATHS:
            return 0.0
        return sample_rate(rate, context.get("parent_sampled"))

    return sample


Poster = Callable[[urllib.request.Request, float], int]


def send_check_event(settings: Settings, post: Poster | None = None) -> tuple[bool, str]:
    """Send one test event straight to the DSN's server; return (accepted, what happened).

    It bypasses the SDK's background queue on purpose, to see the server's answer.
    """
    dsn = settings.sentry_dsn.get_secret_value().strip()
    if not dsn:
        return False, "SENTRY_DSN is empty: set it to your project's DSN (Client Keys)."
    if sentry_sdk is None:
        return False, "the sentry-sdk package is not installed."
    try:
        auth = Dsn(dsn).to_auth(f"{settings.project_name}-check/1.0")
    except Exception as error:
        return False, f"SENTRY_DSN is not a valid DSN ({error})."
    event_id = uuid.uuid4().hex
    event = {
        "event_id": event_id,
        "timestamp": datetime.now(UTC).isoformat(),
        "platform": "python",
        "level": "info",
        "logger": __name__,
        "message": f"Sentry check from {settings.project_name}",
        "environment": settings.sentry_environment,
        "release": settings.sentry_release,
        "server_name": socket.gethostname(),
        "tags": {"check": "true"},
    }
    envelope = Envelope(headers={"event_id": event_id, "dsn": dsn})
    envelope.add_item(Item(payload=PayloadRef(json=event), type="event"))
    request = urllib.request.Request(  # noqa: S310 - the URL comes from the operator's DSN
        auth.get_api_url(EndpointType.ENVELOPE),
        data=envelope.serialize(),
        method="POST",
        headers={
            "Content-Type": "application/x-sentry-envelope",
            "X-Sentry-Auth": auth.to_header(),
        },
    )
    where = f"{auth.scheme}://{auth.host}"
    try:
        status = (post or _post)(request, CHECK_TIMEOUT_SECONDS)
    except urllib.error.HTTPError as error:
        return False, f"{where} refused the test event: HTTP {error.code} {error.reason}."
    except OSError as error:
        return False, f"could not reach {where}: {error}."
    if 200 <= status < 300:
        return True, f"{where} accepted test event {event_id} (HTTP {status})."
    return False, f"{where} answered HTTP {status} to the test event."


def _post(request: urllib.request.Request, timeout: float) -> int:
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        status: int = response.status
        return status


def main(argv: list[str] | None = None) -> int:
    """`python -m app.sentry check`: send one test event and say whether it was accepted."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["check"]:
        print("usage: python -m app.sentry check", file=sys.stderr)
        return 2
    accepted, message = send_check_event(load_settings())
    print(
        ("OK: " if accepted else "FAILED: ") + message, file=sys.stdout if accepted else sys.stderr
    )
    return 0 if accepted else 1


if __name__ == "__main__":
    sys.exit(main())
