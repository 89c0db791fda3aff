"""Database queries as `db` spans of sampled transactions (app/sentry_integration/queries.py)."""

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sentry_sdk
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from sentry_sdk.tracing import Span
from sqlalchemy import Engine, delete, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from app import sentry
from app.core.config import Settings
from app.db.models import Item
from app.db.session import build_engine
from app.main import create_app
from app.sentry_integration import queries
from tests.sentry_integration.conftest import CapturingTransport

Headers = Callable[..., dict[str, str]]

MISSING_TABLE_QUERY = "SELECT * FROM no_such_table"


def _instrumented(engine: Engine) -> bool:
    return any(name in vars(engine.dialect) for name in queries._METHODS)


def _engine_of(app: FastAPI) -> Engine:
    factory: sessionmaker[Session] = app.state.session_factory
    engine = factory.kw["bind"]
    assert isinstance(engine, Engine), f"the app's sessions are not bound to an engine: {engine}"
    return engine


@pytest.fixture
def traced_app(sentry_settings: Settings, transport: CapturingTransport) -> FastAPI:
    traced = sentry_settings.model_copy(update={"sentry_traces_sample_rate": 1.0})
    app = create_app(traced)
    assert sentry.init_sentry(traced, transport=transport), "Sentry did not start"

    @app.get("/broken-query")
    def broken_query(request: Request) -> dict[str, bool]:
        factory: sessionmaker[Session] = request.app.state.session_factory
        with factory() as session:
            try:
                session.execute(text(MISSING_TABLE_QUERY))
            except DBAPIError:
                return {"failed": True}
        return {"failed": False}

    return app


@pytest.fixture
def traced_client(traced_app: FastAPI, migrated_database: str) -> Iterator[TestClient]:
    with TestClient(traced_app, raise_server_exceptions=False) as client:
        yield client
    engine = build_engine(migrated_database)  # the rows made here must not reach other tests
    with engine.begin() as connection:
        connection.execute(delete(Item))
    engine.dispose()


def _transaction(transport: CapturingTransport, name: str) -> dict[str, Any]:
    found = [t for t in transport.items("transaction") if t["transaction"] == name]
    assert len(found) == 1, f"expected one transaction {name!r}, got {len(found)}"
    return found[0]


def _db_spans(transaction: dict[str, Any]) -> list[dict[str, Any]]:
    return [span for span in transaction.get("spans", []) if span.get("op") == "db"]


def test_a_traced_request_has_a_db_span_for_each_query(
    traced_app: FastAPI,
    traced_client: TestClient,
    transport: CapturingTransport,
    auth_headers: Headers,
) -> None:
    engine = _engine_of(traced_app)
    executed: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        executed.append(statement)

    event.listen(engine, "before_cursor_execute", record)  # this engine only, disposed after
    headers = auth_headers("alice", "tenant-a")
    created = traced_client.post("/api/v1/items", json={"title": "Invoice"}, headers=headers)
    assert created.status_code == 201, f"creating the item failed: {created.text}"
    executed.clear()
    fetched = traced_client.get(f"/api/v1/items/{created.json()['id']}", headers=headers)
    assert fetched.status_code == 200, f"reading the item failed: {fetched.text}"
    sentry_sdk.flush(timeout=2)
    assert executed, "the route under test ran no query at all"

    read = [
        t
        for t in transport.items("transaction")
        if t["transaction"] == "/api/v1/items/{item_id}" and t["request"]["method"] == "GET"
    ]
    assert len(read) == 1, f"expected one transaction for the GET, got {len(read)}"
    transaction = read[0]
    spans = _db_spans(transaction)
    descriptions = [span.get("description") for span in spans]
    assert descriptions == executed, f"db spans {descriptions} are not the queries {executed}"
    trace = transaction["contexts"]["trace"]
    for span in spans:
        assert span.get("origin") == "auto.db.sqlalchemy", f"wrong origin: {span}"
        data = span.get("data", {})
        assert data.get("db.system") == engine.dialect.name, f"wrong db.system: {data}"
        if engine.url.database:
            assert data.get("db.name") == engine.url.database, f"wrong db.name: {data}"
        assert span.get("trace_id") == trace["trace_id"], f"span of another trace: {span}"
        assert span.get("status") != "internal_error", f"a query that worked failed: {span}"
        assert span.get("timestamp"), f"the query's span was never finished: {span}"


def test_a_failed_query_is_a_db_span_with_an_error_status(
    traced_client: TestClient, transport: CapturingTransport
) -> None:
    response = traced_client.get("/broken-query")
    assert response.json() == {"failed": True}, f"the query did not fail: {response.text}"
    sentry_sdk.flush(timeout=2)
    spans = _db_spans(_transaction(transport, "/broken-query"))
    failed = [span for span in spans if span.get("description") == MISSING_TABLE_QUERY]
    assert len(failed) == 1, f"expected one db span for the failed query, got {spans}"
    assert failed[0].get("status") == "internal_error", f"a failed query's status: {failed[0]}"
    assert failed[0].get("timestamp"), f"the failed query's span was never finished: {failed[0]}"


def test_with_tracing_off_the_engine_is_left_as_it_is(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    assert sentry_settings.sentry_traces_sample_rate == 0, "this test is about tracing off"
    app = create_app(sentry_settings)
    assert sentry.init_sentry(sentry_settings, transport=transport), "Sentry did not start"
    engine = _engine_of(app)
    assert not _instrumented(engine), f"tracing is off, yet queries are wrapped: {vars(engine)}"
    engine.dispose()


def test_with_tracing_on_the_apps_engine_is_instrumented(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    traced = sentry_settings.model_copy(update={"sentry_traces_sample_rate": 0.5})
    app = create_app(traced)
    engine = _engine_of(app)
    assert all(name in vars(engine.dialect) for name in queries._METHODS), (
        f"tracing is on, but not every method is wrapped: {sorted(vars(engine.dialect))}"
    )
    engine.dispose()


def _spans_made(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The operations of the spans started from here on."""
    children: list[str | None] = []
    start_child = Span.start_child

    def spy(self: Span, **kwargs: Any) -> Span:
        children.append(kwargs.get("op"))
        return start_child(self, **kwargs)

    monkeypatch.setattr(Span, "start_child", spy)
    return children


def test_instrumenting_twice_makes_one_span_per_query(
    sentry_settings: Settings, transport: CapturingTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    traced = sentry_settings.model_copy(update={"sentry_traces_sample_rate": 1.0})
    assert sentry.init_sentry(traced, transport=transport), "Sentry did not start"
    engine = build_engine("sqlite://")
    queries.instrument_queries(engine)
    queries.instrument_queries(engine)
    children = _spans_made(monkeypatch)
    try:
        with engine.connect() as connection, sentry_sdk.start_transaction(name="t", sampled=True):
            assert connection.execute(text("SELECT 1")).scalar() == 1, "no answer"
    finally:
        engine.dispose()
    assert children == ["db"], f"one query made the spans {children}"


def test_a_query_outside_a_sampled_transaction_makes_no_span(
    sentry_settings: Settings,
    transport: CapturingTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    traced = sentry_settings.model_copy(update={"sentry_traces_sample_rate": 1.0})
    assert sentry.init_sentry(traced, transport=transport), "Sentry did not start"
    children = _spans_made(monkeypatch)
    engine = build_engine(traced.database_url)
    queries.instrument_queries(engine)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1, "no transaction: no answer"
            with sentry_sdk.start_transaction(name="unsampled", sampled=False):
                answer = connection.execute(text("SELECT 2")).scalar()
                assert answer == 2, "in an unsampled transaction: no answer"
            assert children == [], f"spans made outside a sampled transaction: {children}"
            with sentry_sdk.start_transaction(name="sampled", sampled=True):
                answer = connection.execute(text("SELECT 3")).scalar()
                assert answer == 3, "in a sampled transaction: no answer"
    finally:
        engine.dispose()
    assert children == ["db"], f"the sampled transaction's query made spans {children}"
    sentry_sdk.flush(timeout=2)
    sent = [t["transaction"] for t in transport.items("transaction")]
    assert sent == ["sampled"], f"only the sampled transaction is sent: {sent}"
