"""Database queries as `db` spans of sampled transactions, and nothing else.

This replaces the SDK's SQLAlchemy integration, which opens a span object and records a breadcrumb
for every query, traced or not. Listening to an engine's events at all has a price of its own:
SQLAlchemy then builds an event dispatcher for every connection a request opens, which cost a
route that reads one row (docs/performance.md) as much as the rest of error tracking. So the
listeners are attached only when tracing is on (`init_sentry`), and a query outside a sampled
transaction costs one look at the current span. Queries are not breadcrumbs: an error's own
message names the failed statement, and a sampled transaction shows the others.
"""

from typing import Any

import sentry_sdk
from sqlalchemy import event
from sqlalchemy.engine import Engine

_SPAN_KEY = "_sentry_query_span"


def instrument_queries() -> None:
    """Listen to every SQLAlchemy engine's queries; calling it again changes nothing."""
    for name, listener in (
        ("before_cursor_execute", _before),
        ("after_cursor_execute", _after),
        ("handle_error", _failed),
    ):
        if not event.contains(Engine, name, listener):
            event.listen(Engine, name, listener)


def _before(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    span = sentry_sdk.get_current_span()
    if span is None or not span.sampled or context is None:
        return
    child = span.start_child(op="db", name=statement, origin="auto.db.sqlalchemy")
    url = conn.engine.url
    child.set_data("db.system", conn.engine.dialect.name)
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
