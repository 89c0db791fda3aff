"""Flood control: a capped number of events per issue and window, the rest counted."""

from types import SimpleNamespace
from typing import Any

import pytest
import sentry_sdk
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app import sentry
from app.core.config import Settings
from app.main import create_app
from app.sentry_integration import flood as sentry_flood
from app.sentry_integration.flood import DEFAULT_FINGERPRINT, FloodGate, issue_key
from tests.sentry_integration.conftest import CapturingTransport


def _raised_at_one_place(message: str) -> ValueError:
    try:
        raise ValueError(message)
    except ValueError as error:
        return error


def _raised_at_another_place(message: str) -> ValueError:
    try:
        raise ValueError(message)
    except ValueError as error:
        return error


def test_the_gate_admits_the_cap_per_window_then_reports_what_it_dropped() -> None:
    gate = FloodGate(max_events=3, window_seconds=10)
    key = ("ValueError", "app/x.py", "f", "12")
    verdicts = [gate.admit(key, now=100.0 + n * 0.01) for n in range(10)]
    assert verdicts == [0, 0, 0] + [None] * 7, verdicts
    assert gate.admit(("other",), now=101.0) == 0, "another issue has its own cap"
    assert gate.admit(key, now=111.0) == 7, "the next event sent should carry the dropped count"
    assert gate.admit(key, now=111.1) == 0
    assert gate.dropped_total == 7


def test_a_cap_of_zero_turns_flood_control_off() -> None:
    gate = FloodGate(max_events=0, window_seconds=10)
    assert all(gate.admit(("k",), now=1.0) == 0 for _ in range(100))


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        (_raised_at_one_place("a"), _raised_at_one_place("b"), True),
        (_raised_at_one_place("a"), _raised_at_another_place("a"), False),
    ],
    ids=["same-place-other-message", "other-place-same-message"],
)
def test_an_issue_is_the_exception_type_and_where_it_was_raised(
    first: BaseException, second: BaseException, same: bool
) -> None:
    assert (issue_key({}, first) == issue_key({}, second)) is same


def test_a_fingerprint_or_a_message_template_is_the_issue_otherwise() -> None:
    error = _raised_at_one_place("x")
    assert issue_key({"fingerprint": ["db-down"]}, error) == ("fingerprint", "db-down")
    assert issue_key({"fingerprint": [DEFAULT_FINGERPRINT]}, error) == issue_key({}, error)
    logged = {"logger": "app.jobs", "logentry": {"message": "job %s failed", "params": ["7"]}}
    other = {"logger": "app.jobs", "logentry": {"message": "job %s failed", "params": ["8"]}}
    assert issue_key(logged, None) == issue_key(other, None)


@pytest.fixture
def flooding_app(sentry_settings: Settings, transport: CapturingTransport) -> FastAPI:
    settings = sentry_settings.model_copy(
        update={"sentry_flood_max_events": 3, "sentry_flood_window_seconds": 0.5}
    )
    app = create_app(settings)
    assert sentry.init_sentry(settings, transport=transport), "Sentry did not start"

    @app.get("/hot-loop")
    async def hot_loop() -> None:
        raise RuntimeError("the same bug, again")

    return app


def test_a_flood_of_one_error_is_capped_and_counted(
    flooding_app: FastAPI, transport: CapturingTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(sentry_flood, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    with TestClient(flooding_app, raise_server_exceptions=False) as client:
        for _ in range(50):
            assert client.get("/hot-loop").status_code == 500
        sentry_sdk.flush(timeout=2)
        assert len(transport.events) == 3, f"{len(transport.events)} events for one bug"
        clock[0] += 0.6  # the window ends
        assert client.get("/hot-loop").status_code == 500
        sentry_sdk.flush(timeout=2)
    events: list[dict[str, Any]] = transport.events
    assert len(events) == 4
    assert events[-1]["contexts"]["flood_control"]["dropped_before_this"] == 47, events[-1]
    assert "flood_control" not in events[0]["contexts"]
