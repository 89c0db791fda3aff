"""Database queries: a breadcrumb for every query, a span only inside a sampled transaction.

This replaces the SDK's SQLAlchemy integration, which opens a span object and records a breadcrumb
(through `before_breadcrumb`, scrubbed on the spot) for every query, traced or not: on a route
that reads one row that was a sixth of the route's CPU with tracing off. Here, outside a sampled
transaction, a query costs one tuple appended to its request's list; the list becomes breadcrumbs
(scrubbed with the rest of the event) only when an event of that request is built. Queries run
outside any request (a script, a background job) go to the SDK's `add_breadcrumb` directly.

Inside a sampled transaction each query is a `db` span carrying the database system and name, as
the SDK's integration records them.
"""

import contextvars
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sentry_sdk
from sqlalchemy import event
from sqlalchemy.engine import Engine

#: As many as the SDK keeps of its own breadcrumbs.
MAX_QUERIES = 100
_SPAN_KEY = "_sentry_query_span"

Queries = deque[tuple[float, str]]
_queries: contextvars.ContextVar[Queries | None] = contextvars.ContextVar(
    "sentry_request_queries", default=None
)


def instrument_queries() -> None:
    """Listen to every SQLAlchemy engine's queries; calling it again changes nothing."""
    for name, listener in (
        ("before_cursor_execute", _before),
        ("after_cursor_execute", _after),
        ("handle_error", _failed),
    ):
        if not event.contains(Engine, name, listener):
            event.listen(Engine, name, listener)


def record_queries() -> Queries:
    """Collect the queries of the current request (its context) from now on; returns the list."""
    queries: Queries = deque(maxlen=MAX_QUERIES)
    _queries.set(queries)
    return queries


def query_breadcrumbs(queries: Iterable[tuple[float, str]]) -> list[dict[str, Any]]:
    """`queries` as the SDK's breadcrumbs (category `query`, as its integration names them)."""
    return [
        {
            "type": "default",
            "category": "query",
            "message": statement,
            "level": "info",
            "timestamp": datetime.fromtimestamp(at, UTC),
        }
        for at, statement in queries
    ]


def _before(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    queries = _queries.get()
    if queries is not None:
        queries.append((time.time(), statement))
    else:
        sentry_sdk.add_breadcrumb(category="query", message=statement)
    span = sentry_sdk.get_current_span()
    if span is not None and span.sampled and context is not None:
        child = span.start_child(op="db", name=statement, origin="auto.db.sqlalchemy")
        dialect = conn.engine.dialect
        child.set_data("db.system", dialect.name)
        url = conn.engine.url
        if url.database:
            child.set_data("db.name", url.database)
        if url.host:
            child.set_data("server.address", url.host)
        if url.port:
            child.set_data("server.port", url.port)
        setattr(context, _SPAN_KEY, child)


def _after(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    child = getattr(context, _SPAN_KEY, None)
    if child is not None:
        setattr(context, _SPAN_KEY, None)
        child.finish()


def _failed(exception_context: Any) -> None:
    context = exception_context.execution_context
    child = getattr(context, _SPAN_KEY, None)
    if child is not None:
        setattr(context, _SPAN_KEY, None)
        child.set_status("internal_error")
        child.finish()
