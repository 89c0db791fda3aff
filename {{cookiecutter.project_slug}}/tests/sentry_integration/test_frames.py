"""Which stack frames carry source lines and local variables (checked on the serialized event)."""

from typing import Any

import sentry_sdk
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy import text

from app import sentry
from app.core.config import Settings
from app.main import create_app
from app.sentry_integration.frames import add_app_frame_detail
from tests.sentry_integration.conftest import CapturingTransport


def _frames(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        frame for value in event["exception"]["values"] for frame in value["stacktrace"]["frames"]
    ]


def test_only_in_app_frames_carry_source_and_locals(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    app: FastAPI = create_app(sentry_settings)
    assert sentry.init_sentry(sentry_settings, transport=transport)

    @app.get("/boom")
    async def boom() -> None:
        order_reference = "order-31"
        raise RuntimeError(f"cannot ship {order_reference}")

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/boom").status_code == 500
    sentry_sdk.flush(timeout=2)
    (event,) = transport.events
    frames = _frames(event)
    in_app = [frame for frame in frames if frame.get("in_app")]
    framework = [frame for frame in frames if not frame.get("in_app")]
    assert in_app and framework, [(f["module"], f.get("in_app")) for f in frames]
    raising = in_app[-1]
    assert raising["function"] == "boom", raising
    assert raising["vars"]["order_reference"] == "'order-31'", raising.get("vars")
    assert "raise RuntimeError" in raising["context_line"], raising.get("context_line")
    assert len(raising["pre_context"]) == 5, raising.get("pre_context")
    for frame in framework:
        assert "vars" not in frame and "context_line" not in frame, (
            f"framework frame {frame['module']}.{frame['function']} carries detail"
        )
        assert frame["lineno"] and frame["function"], f"framework frame lost its place: {frame}"


def _raise_chained() -> None:
    try:
        first_local = "in the cause"
        raise KeyError(first_local)
    except KeyError as cause:
        second_local = "in the consequence"
        raise ValueError(second_local) from cause


def test_every_exception_of_a_chain_gets_its_detail(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    assert sentry.init_sentry(sentry_settings, transport=transport)
    try:
        _raise_chained()
    except ValueError as error:
        sentry.capture_exception(error)
    sentry_sdk.flush(timeout=2)
    (event,) = transport.events
    raising = [f for f in _frames(event) if f["function"] == "_raise_chained"]
    assert len(raising) == 2, raising
    assert {name for frame in raising for name in frame["vars"]} >= {
        "first_local",
        "second_local",
    }, [frame["vars"] for frame in raising]


def test_unmatched_or_odd_frames_are_left_alone() -> None:
    try:
        _raise_chained()
    except ValueError as error:
        caught = error
    unknown = {"in_app": True, "abs_path": "/nowhere.py", "lineno": 1, "function": "f"}
    no_path = {"in_app": True, "abs_path": None, "lineno": 1, "function": "f"}
    event: Any = {
        "exception": {
            "values": [{"stacktrace": {"frames": [unknown, no_path]}}, {"stacktrace": None}]
        }
    }
    add_app_frame_detail(event, caught)
    add_app_frame_detail(event, None)
    frames = event["exception"]["values"][0]["stacktrace"]["frames"]
    assert all("vars" not in frame for frame in frames), frames


def test_a_logged_exception_that_was_reported_is_not_sent_again(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    """uvicorn logs every exception the app raised after it was reported: that record must not
    become a second event, nor a breadcrumb; an exception that was only logged is an event."""
    import logging

    assert sentry.init_sentry(sentry_settings, transport=transport)
    server_log = logging.getLogger("uvicorn.error")
    try:
        raise RuntimeError("reported first")
    except RuntimeError as error:
        sentry.capture_exception(error)
        server_log.error("Exception in ASGI application", exc_info=error)
    try:
        raise RuntimeError("only logged")
    except RuntimeError as error:
        server_log.error("Exception in ASGI application", exc_info=error)
    sentry_sdk.flush(timeout=2)
    values = [event["exception"]["values"][-1]["value"] for event in transport.events]
    assert values == ["reported first", "only logged"], values
    crumbs = [
        crumb["message"] for crumb in transport.events[1].get("breadcrumbs", {}).get("values", [])
    ]
    assert "Exception in ASGI application" not in crumbs, f"the reported error left {crumbs}"


def test_a_failed_query_is_blamed_on_the_route_not_on_the_query_wrapper(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    """With tracing on, the query wrapper and SQLAlchemy's generated code (which the SDK takes
    for a file of the project) sit under every query: neither may be the event's culprit."""
    traced = sentry_settings.model_copy(update={"sentry_traces_sample_rate": 1.0})
    app: FastAPI = create_app(traced)
    assert sentry.init_sentry(traced, transport=transport)

    @app.get("/missing-table")
    def missing_table(request: Request) -> None:
        with request.app.state.session_factory() as session:
            session.execute(text("SELECT * FROM no_such_table"))

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/missing-table").status_code == 500
    sentry_sdk.flush(timeout=2)
    (event,) = transport.events
    culprit = [frame for frame in _frames(event) if frame.get("in_app")][-1]
    assert culprit["function"] == "missing_table", (culprit.get("module"), culprit["function"])
    wrapper = [f for f in _frames(event) if f.get("module") == "app.sentry_integration.queries"]
    assert wrapper and not any(f.get("in_app") for f in wrapper), wrapper
