"""Error tracking with Sentry: set-up, the helpers the rest of the app calls, and a `check` command.

Everything here is fail-open. With SENTRY_DSN empty or invalid, or with `sentry-sdk` not installed
(or installed in a version this code cannot work with), `init_sentry` logs one line and returns
False, and every helper becomes a cheap no-op. When the Sentry server is down, slow or refusing
events, the service keeps serving and says so once in its log. Error tracking must never be the
reason the service does not start or a request fails.

The parts behind this module live in `app/sentry_integration/`. Why each option is set the way
it is: docs/adr/0003-error-tracking-with-sentry.md. Check a configuration:
`python -m app.sentry check`.
"""

import asyncio
import logging
import re
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI

from app.core.config import Settings, load_settings

try:
    import sentry_sdk
except ImportError:  # pragma: no cover - exercised by a test that hides the package
    sentry_sdk = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from sentry_sdk.transport import Transport
    from sqlalchemy import Engine

logger = logging.getLogger(__name__)

Level = Literal["fatal", "critical", "error", "warning", "info", "debug"]

#: Requests to these paths never become transactions (probes would drown the real traffic).
UNTRACED_PATHS = frozenset({"/health", "/healthz", "/livez", "/ready", "/readyz", "/metrics"})
#: Not breadcrumbs or events: access logs repeat every request (with the client's address), and
#: this package's own messages are about Sentry itself.
IGNORED_LOGGERS = ("uvicorn.access", "gunicorn.access", __name__)
#: The spool's directory is named after the service, unless SENTRY_SPOOL_DIR names one.
SPOOL_NAME = "{{ cookiecutter.project_slug }}-sentry-spool"
#: How long a normal shutdown waits for queued events to be sent.
SHUTDOWN_FLUSH_SECONDS = 2.0

_state: dict[str, Any] = {"on": False, "tracing": False}


def init_sentry(settings: Settings, *, transport: "Transport | None" = None) -> bool:
    """Start reporting to Sentry if SENTRY_DSN is set. Returns whether reporting is on.

    `transport` replaces the network transport; the tests pass an in-memory one.
    """
    _state.update(on=False, tracing=False)
    dsn = settings.sentry_dsn.get_secret_value().strip()
    if not dsn:
        logger.info("Sentry is off: SENTRY_DSN is empty.")
        return False
    if sentry_sdk is None:
        logger.warning(
            "Sentry is off: SENTRY_DSN is set but the sentry-sdk package is not installed "
            "(install the project's dependencies: pip install -e .)."
        )
        return False
    ca_certs = settings.sentry_ca_certs.strip()
    if ca_certs and not Path(ca_certs).is_file():
        logger.error(
            "Sentry is off: SENTRY_CA_CERTS=%s is not a file; set it to the PEM bundle of the CA "
            "that signed your Sentry server's certificate, or leave it empty for the default.",
            ca_certs,
        )
        return False
    previous = sentry_sdk.get_client()
    if previous.is_active():  # initialised again (tests do): stop the old client's transport
        previous.close(timeout=0)
    try:
        options = _options(settings, dsn, transport)
        sentry_sdk.init(**options)
    except ValueError as error:  # a malformed DSN, or a CA bundle that cannot be loaded
        logger.error(
            "Sentry is off: it could not be started (%s). Check SENTRY_DSN (copy it from your "
            "Sentry project's Client Keys settings) and SENTRY_CA_CERTS.",
            error,
        )
        return False
    except (ImportError, AttributeError, TypeError) as error:  # an SDK this code does not fit
        _log_incompatible_sdk(error)
        return False
    except Exception as error:  # anything else: say what, never stop the service
        logger.error("Sentry is off: starting it failed (%s: %s).", type(error).__name__, error)
        return False
    # Without `debug`, the SDK's logger drops every record it makes, but makes them all first:
    # one per unsampled transaction.
    logging.getLogger("sentry_sdk.errors").setLevel(logging.WARNING)
    try:
        from app.sentry_integration.events import attach_log_handlers
        from app.sentry_integration.transactions import SENDER

        attach_log_handlers(event_level=logging.ERROR, breadcrumb_level=logging.INFO)
        SENDER.fast = False
        if settings.sentry_traces_sample_rate > 0:
            SENDER.check()
        _use_spool(settings)
    except Exception as error:  # reporting works; something around it is missing
        logger.error(
            "Sentry is on, but without log events, the fast path for transactions or the spool: "
            "setting them up failed (%s: %s).",
            type(error).__name__,
            error,
        )
    _state.update(on=True, tracing=settings.sentry_traces_sample_rate > 0)
    logger.info(
        "Sentry is on: environment=%s release=%s traces_sample_rate=%s",
        settings.sentry_environment,
        settings.sentry_release,
        settings.sentry_traces_sample_rate,
    )
    return True


def _log_incompatible_sdk(error: Exception) -> None:
    logger.error(
        "Sentry is off: the installed sentry-sdk %s does not work with this service (%s: %s). "
        "Install a version in the range pyproject.toml declares.",
        getattr(sentry_sdk, "VERSION", "?"),
        type(error).__name__,
        error,
    )


def _use_spool(settings: Settings) -> None:
    from app.sentry_integration.delivery import SentryTransport
    from app.sentry_integration.spool import Spool, spool_directory

    transport = sentry_sdk.get_client().transport
    if not settings.sentry_spool_enabled or not isinstance(transport, SentryTransport):
        return
    spool = Spool(
        spool_directory(settings.sentry_spool_dir, SPOOL_NAME),
        max_bytes=int(settings.sentry_spool_max_mb * 2**20),
        max_age_seconds=settings.sentry_spool_max_age_hours * 3600,
    )
    transport.use_spool(spool)


def _options(settings: Settings, dsn: str, transport: "Transport | None") -> dict[str, Any]:
    """The options of `sentry_sdk.init`; importing the integration's parts is part of it."""
    from sentry_sdk.integrations.argv import ArgvIntegration
    from sentry_sdk.integrations.fastapi import FastApiIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration, ignore_logger
    from sentry_sdk.integrations.sqlalchemy import SqlalchemyIntegration
    from sentry_sdk.integrations.starlette import StarletteIntegration

    from app.sentry_integration.delivery import SentryTransport
    from app.sentry_integration.events import EventHooks
    from app.sentry_integration.flood import FloodGate
    from app.sentry_integration.request import traces_sampler

    for name in IGNORED_LOGGERS:
        ignore_logger(name)
    hooks = EventHooks(
        FloodGate(settings.sentry_flood_max_events, settings.sentry_flood_window_seconds)
    )
    rate = settings.sentry_traces_sample_rate
    return {
        "dsn": dsn,
        "environment": settings.sentry_environment,
        "release": settings.sentry_release,
        # With a rate of 0 the SDK's tracing is off: no span objects, no wrapped tasks.
        "traces_sampler": traces_sampler(rate, UNTRACED_PATHS) if rate > 0 else None,
        "trace_propagation_targets": propagation_targets(settings.sentry_trace_propagation_targets),
        "profile_session_sample_rate": settings.sentry_profiles_sample_rate,
        "profile_lifecycle": "trace",
        # Its handlers are attached by `attach_log_handlers` instead, with a filter.
        "integrations": [LoggingIntegration(level=None, event_level=None)],
        # Their per-request and per-query work is done by app/sentry_integration/request.py and
        # queries.py, at a fraction of the cost. Argv would attach the command line (which may
        # hold secrets) to every event.
        "disabled_integrations": [
            StarletteIntegration,
            FastApiIntegration,
            SqlalchemyIntegration,
            ArgvIntegration,
        ],
        "in_app_include": ["app"],
        # Added back for in-app frames only, in before_send: app/sentry_integration/frames.py.
        "include_local_variables": False,
        "include_source_context": False,
        "before_send": hooks.before_send,
        "before_send_transaction": hooks.before_send_transaction,
        "ca_certs": settings.sentry_ca_certs.strip() or None,
        "transport": transport or SentryTransport,
        "shutdown_timeout": SHUTDOWN_FLUSH_SECONDS,
    }


def propagation_targets(hosts: str) -> list[str]:
    """SENTRY_TRACE_PROPAGATION_TARGETS (host names, comma-separated) as the SDK's URL patterns.

    Outgoing requests to these hosts, and to no others, carry `sentry-trace` and `baggage`
    headers: the SDK's default would send the trace ids to every third-party API called.
    """
    return [
        rf"^[a-z][a-z0-9+.-]*://{re.escape(host)}(?::\d+)?(?:[/?#]|$)"
        for host in (part.strip().lower() for part in hosts.split(","))
        if host
    ]


def instrument_app(app: FastAPI, settings: Settings, engine: "Engine | None" = None) -> None:
    """Report the app's failed requests and trace a sample of them, if Sentry is on; with tracing
    on, `engine`'s queries become spans of the sampled ones.

    With Sentry off this adds nothing at all, so it costs requests nothing.
    """
    if not _state["on"]:
        return
    from app.sentry_integration.request import SentryMiddleware

    if engine is not None and _state["tracing"]:
        from app.sentry_integration.queries import instrument_queries

        try:
            instrument_queries(engine)
        except Exception as error:  # traced requests lose their query spans, nothing more
            logger.error("Sentry: query spans are off (%s: %s).", type(error).__name__, error)

    app.add_middleware(
        SentryMiddleware,
        traces_rate=settings.sentry_traces_sample_rate,
        untraced_paths=UNTRACED_PATHS,
    )


@asynccontextmanager
async def sentry_lifespan() -> AsyncIterator[None]:
    """Run around the app's lifespan: instrument the server's event loop, flush at shutdown.

    The asyncio integration patches the *running* loop, so it can only be enabled here, once the
    server has started its loop, not when the app is imported. With tracing off it is not enabled:
    it would only cost every request a check.
    """
    if _state["on"] and _state["tracing"]:
        from app.sentry_integration.request import enable_asyncio_spans_for_traced_requests

        try:
            enable_asyncio_spans_for_traced_requests()
        except Exception as error:  # traced requests lose their task spans, nothing more
            logger.error(
                "Sentry: asyncio task spans are off (%s: %s).", type(error).__name__, error
            )
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


def main(argv: list[str] | None = None) -> int:
    """`python -m app.sentry check`: send one test event and say whether it was accepted."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["check"]:
        print("usage: python -m app.sentry check", file=sys.stderr)
        return 2
    if sentry_sdk is None:
        print("FAILED: the sentry-sdk package is not installed.", file=sys.stderr)
        return 1
    from app.sentry_integration.check import send_check_event

    accepted, message = send_check_event(load_settings())
    print(
        ("OK: " if accepted else "FAILED: ") + message, file=sys.stdout if accepted else sys.stderr
    )
    return 0 if accepted else 1


if __name__ == "__main__":
    sys.exit(main())
