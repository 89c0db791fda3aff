"""`python -m app.sentry check`, with the HTTP call replaced (the tests never use the network)."""

import json
import urllib.error
import urllib.request

import pytest
from pydantic import SecretStr

from app import sentry
from app.core.config import Settings
from tests.sentry_integration.conftest import DSN


def _posting(status: int, seen: list[urllib.request.Request]) -> sentry.Poster:
    def post(request: urllib.request.Request, timeout: float) -> int:
        seen.append(request)
        return status

    return post


def test_accepted_event_is_reported(sentry_settings: Settings) -> None:
    seen: list[urllib.request.Request] = []
    accepted, message = sentry.send_check_event(sentry_settings, post=_posting(200, seen))
    assert accepted, message
    assert "accepted test event" in message, message
    (request,) = seen
    assert request.full_url == "http://127.0.0.1:9/api/1/envelope/", request.full_url
    assert "sentry_key=public" in request.get_header("X-sentry-auth", ""), request.headers
    body = request.data
    assert isinstance(body, bytes)
    header, _, rest = body.partition(b"\n")
    assert json.loads(header)["event_id"] in message
    assert b'"release":"svc@1.2.3"' in rest.replace(b" ", b""), rest


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (urllib.error.HTTPError("u", 401, "Unauthorized", None, None), "HTTP 401"),  # type: ignore[arg-type]
        (ConnectionRefusedError(111, "Connection refused"), "could not reach"),
        (TimeoutError("timed out"), "could not reach"),
    ],
    ids=["refused", "down", "slow"],
)
def test_failures_say_what_happened(
    sentry_settings: Settings, failure: Exception, expected: str
) -> None:
    def post(request: urllib.request.Request, timeout: float) -> int:
        raise failure

    accepted, message = sentry.send_check_event(sentry_settings, post=post)
    assert not accepted and expected in message, message


def test_non_success_status_is_a_failure(sentry_settings: Settings) -> None:
    accepted, message = sentry.send_check_event(sentry_settings, post=_posting(500, []))
    assert not accepted and "HTTP 500" in message, message


@pytest.mark.parametrize(
    ("dsn", "expected"), [("", "SENTRY_DSN is empty"), ("nonsense", "not a valid DSN")]
)
def test_missing_or_bad_dsn(settings: Settings, dsn: str, expected: str) -> None:
    configured = settings.model_copy(update={"sentry_dsn": SecretStr(dsn)})
    accepted, message = sentry.send_check_event(configured, post=_posting(200, []))
    assert not accepted and expected in message, message


def test_command_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SENTRY_DSN", DSN)
    monkeypatch.setattr(sentry, "_post", _posting(202, []))
    assert sentry.main(["check"]) == 0
    assert capsys.readouterr().out.startswith("OK: ")
    monkeypatch.setattr(sentry, "_post", _posting(403, []))
    assert sentry.main(["check"]) == 1
    assert capsys.readouterr().err.startswith("FAILED: ")
    assert sentry.main(["nonsense"]) == 2
