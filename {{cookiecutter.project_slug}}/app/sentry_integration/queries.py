"""Database queries as `db` spans of sampled transactions, and nothing else.

This replaces the SDK's SQLAlchemy integration, which opens a span object and records a breadcrumb
for every query, traced or not, through SQLAlchemy's event listeners. Listening to an engine's
events has a price of its own: SQLAlchemy then builds an event dispatcher for every connection a
request opens, which cost a route that reads one row 30 to 40 us of CPU with tracing on, sampled
or not (docs/performance.md). So the engine's dialect is wrapped instead, at the three methods
through which SQLAlchemy hands every statement to the database driver (`do_execute`,
`do_executemany`, `do_execute_no_params`, part of its documented `Dialect` interface). Outside a
sampled transaction a query costs one look at the current span; inside one it is a span carrying
the database system, name and server, as the SDK's integration records them, marked as failed if
the driver raises. Only with tracing on (`instrument_app`). Queries are not breadcrumbs: an
error's own message names the statement that failed, and a sampled transaction shows the others.
"""

from collections.abc import Callable
from typing import Any

import sentry_sdk
from sqlalchemy import Engine

_METHODS = ("do_execute", "do_executemany", "do_execute_no_params")
_MARK = "_sentry_spans_for_queries"


def instrument_queries(engine: Engine) -> None:
    """Make `engine`'s queries spans of sampled transactions; calling it again changes nothing."""
    dialect = engine.dialect
    if getattr(dialect, _MARK, False):
        return
    url = engine.url
    data: dict[str, Any] = {"db.system": dialect.name}
    for key, value in (("db.name", url.database), ("server.address", url.host)):
        if value:
            data[key] = value
    if url.port:
        data["server.port"] = url.port
    for name in _METHODS:
        setattr(dialect, name, _traced(getattr(dialect, name), data))
    setattr(dialect, _MARK, True)


def _traced(execute: Callable[..., Any], data: dict[str, Any]) -> Callable[..., Any]:
    def run(cursor: Any, statement: str, *rest: Any) -> Any:
        span = sentry_sdk.get_current_span()
        if span is None or not span.sampled:
            return execute(cursor, statement, *rest)
        with span.start_child(op="db", name=statement, origin="auto.db.sqlalchemy") as child:
            for key, value in data.items():
                child.set_data(key, value)
            return execute(cursor, statement, *rest)

    return run
