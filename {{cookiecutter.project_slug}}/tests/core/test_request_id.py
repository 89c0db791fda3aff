"""Request ids: taken from a sane `X-Request-ID` or made, answered, and on every log line."""

import json
import logging
import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.core.config import Settings
from app.core.logging import configure_logging
from app.core.request_id import NO_REQUEST, RequestIdFilter, current_request_id
from app.main import create_app


@pytest.fixture
def app_with_probe(settings: Settings) -> FastAPI:
    app = create_app(settings)

    @app.get("/whoami")
    async def whoami() -> dict[str, str | None]:
        logging.getLogger("app.probe").warning("serving whoami")
        return {"request_id": current_request_id()}

    return app


def test_a_request_without_an_id_gets_a_new_one_everywhere(app_with_probe: FastAPI) -> None:
    with TestClient(app_with_probe) as client:
        first, second = client.get("/whoami"), client.get("/whoami")
    for response in (first, second):
        header = response.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", header), header
        assert response.json() == {"request_id": header}, "the route saw another id"
    assert first.headers["x-request-id"] != second.headers["x-request-id"], "ids repeat"


@pytest.mark.parametrize("given", ["abc-123", "lb.7f3a:42_x", "A" * 128])
def test_a_sane_caller_id_is_kept(app_with_probe: FastAPI, given: str) -> None:
    with TestClient(app_with_probe) as client:
        response = client.get("/whoami", headers={"X-Request-ID": given})
    assert response.headers["x-request-id"] == given, response.headers
    assert response.json() == {"request_id": given}


@pytest.mark.parametrize(
    "given", ["", "has space", "new\\u2028line", "A" * 129, "<script>", "a;b"], ids=repr
)
def test_an_insane_caller_id_is_replaced(app_with_probe: FastAPI, given: str) -> None:
    with TestClient(app_with_probe) as client:
        response = client.get("/whoami", headers={"X-Request-ID": given})
    header = response.headers["x-request-id"]
    assert header != given and re.fullmatch(r"[0-9a-f]{32}", header), header


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_log_lines_written_while_serving_carry_the_id(
    migrated_database: str, capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    settings = Settings(
        environment="test",
        database_url=migrated_database,
        secret_key=SecretStr("k" * 40),
        log_format=log_format,
    )
    app = create_app(settings)

    @app.get("/noisy")
    def noisy() -> dict[str, bool]:  # a sync route: it runs in the thread pool
        logging.getLogger("app.noisy").warning("working on it")
        return {"ok": True}

    with TestClient(app) as client:
        response = client.get("/noisy", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 200, response.text
    lines = [line for line in capsys.readouterr().err.splitlines() if "working on it" in line]
    assert len(lines) == 1, f"the route's log line is missing: {lines}"
    if log_format == "json":
        assert json.loads(lines[0])["request_id"] == "req-42", lines[0]
    else:
        assert "[req-42]" in lines[0], lines[0]
    configure_logging(settings)  # later tests log outside requests: they say "-"


def test_outside_a_request_a_record_says_so() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    assert RequestIdFilter().filter(record) is True, "the filter must not drop records"
    assert getattr(record, "request_id", None) == NO_REQUEST, record.__dict__


def test_an_answer_to_an_exception_that_escaped_carries_the_id_too(settings: Settings) -> None:
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"X-Request-ID": "failed-1"})
    assert response.status_code == 500, response.text
    assert response.headers.get("x-request-id") == "failed-1", dict(response.headers)
