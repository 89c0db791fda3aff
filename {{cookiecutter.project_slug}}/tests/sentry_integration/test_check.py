"""`python -m app.sentry check`: one test event, sent for real to a Sentry stand-in on 127.0.0.1."""

import json
import socket
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from app import sentry
from app.core.config import Settings
from app.sentry_integration import check
from tests.sentry_integration.conftest import DROP, ConnectProxy, FakeSentry, Reply, Tls

pytestmark = pytest.mark.usefixtures("clean_network_environment")


def _pointed_at(settings: Settings, dsn: str, ca_certs: str = "") -> Settings:
    return settings.model_copy(update={"sentry_dsn": SecretStr(dsn), "sentry_ca_certs": ca_certs})


def test_an_accepted_event_is_reported(sentry_settings: Settings, fake_sentry: FakeSentry) -> None:
    accepted, message = check.send_check_event(_pointed_at(sentry_settings, fake_sentry.dsn))
    assert accepted, message
    assert message.startswith(f"http://127.0.0.1:{fake_sentry.port} accepted test event "), message
    (received,) = fake_sentry.received
    assert received.path == "/api/1/envelope/", received.path
    assert "sentry_key=public" in received.headers["x-sentry-auth"], received.headers
    header = json.loads(received.body.partition(b"\n")[0])
    assert header["event_id"] in message
    (event,) = received.items("event")
    assert event["release"] == "svc@1.2.3" and event["tags"] == {"check": "true"}, event


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(401), "refused the test event: HTTP 401 Unauthorized."),
        (Reply(500), "refused the test event: HTTP 500 Internal Server Error."),
        (Reply(302), "answered HTTP 302 to the test event."),
        (DROP, "could not reach http://127.0.0.1:"),
    ],
    ids=["refused", "failing", "redirected", "hung-up"],
)
def test_failures_say_what_happened(
    sentry_settings: Settings, fake_sentry: FakeSentry, reply: Reply | None, expected: str
) -> None:
    fake_sentry.answer(reply)
    accepted, message = check.send_check_event(_pointed_at(sentry_settings, fake_sentry.dsn))
    assert not accepted and expected in message, message


def test_a_server_that_is_down_cannot_be_reached(sentry_settings: Settings) -> None:
    with socket.create_server(("127.0.0.1", 0)) as reserved:
        port = reserved.getsockname()[1]
    settings = _pointed_at(sentry_settings, f"http://public@127.0.0.1:{port}/1")
    accepted, message = check.send_check_event(settings)
    assert not accepted and "could not reach" in message and "refused" in message, message


def test_a_slow_server_is_given_up_on(
    sentry_settings: Settings, fake_sentry: FakeSentry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(check, "CHECK_TIMEOUT_SECONDS", 0.2)
    fake_sentry.answering.clear()
    accepted, message = check.send_check_event(_pointed_at(sentry_settings, fake_sentry.dsn))
    assert not accepted and "could not reach" in message and "within 0.2 s" in message, message


@pytest.mark.parametrize(
    ("dsn", "expected"), [("", "SENTRY_DSN is empty"), ("nonsense", "not a valid DSN")]
)
def test_missing_or_bad_dsn(sentry_settings: Settings, dsn: str, expected: str) -> None:
    accepted, message = check.send_check_event(_pointed_at(sentry_settings, dsn))
    assert not accepted and expected in message, message


def test_the_ca_given_in_sentry_ca_certs_is_trusted(
    sentry_settings: Settings, tls_sentry: FakeSentry, tls: Tls
) -> None:
    settings = _pointed_at(sentry_settings, tls_sentry.dsn, str(tls.ca_file))
    accepted, message = check.send_check_event(settings)
    assert accepted, message
    assert len(tls_sentry.received) == 1


@pytest.mark.parametrize("trusted", ["other-ca", "default-bundle"])
def test_a_certificate_the_ca_did_not_sign_is_named(
    sentry_settings: Settings, tls_sentry: FakeSentry, tls: Tls, trusted: str
) -> None:
    ca_certs = str(tls.other_ca_file) if trusted == "other-ca" else ""
    accepted, message = check.send_check_event(
        _pointed_at(sentry_settings, tls_sentry.dsn, ca_certs)
    )
    assert not accepted and tls_sentry.received == [], message
    assert "TLS certificate verify failed" in message and "SENTRY_CA_CERTS" in message, message


def test_an_unusable_ca_bundle_is_named(sentry_settings: Settings, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    settings = _pointed_at(sentry_settings, "https://public@127.0.0.1:9/1", str(missing))
    accepted, message = check.send_check_event(settings)
    assert not accepted and str(missing) in message and "SENTRY_CA_CERTS" in message, message


def test_the_proxy_of_https_proxy_is_used(
    sentry_settings: Settings,
    tls_sentry: FakeSentry,
    tls: Tls,
    connect_proxy: ConnectProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", connect_proxy.url)
    settings = _pointed_at(sentry_settings, tls_sentry.dsn, str(tls.ca_file))
    accepted, message = check.send_check_event(settings)
    assert accepted and f"(through the proxy {connect_proxy.url})" in message, message
    assert len(connect_proxy.requests) == 1 and len(tls_sentry.received) == 1


def test_without_sentry_sdk_it_says_so(
    sentry_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sentry_sdk.envelope", None)
    accepted, message = check.send_check_event(sentry_settings)
    assert not accepted and message == "the sentry-sdk package is not installed.", message


def test_command_line(
    fake_sentry: FakeSentry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SENTRY_DSN", fake_sentry.dsn)
    assert sentry.main(["check"]) == 0
    assert capsys.readouterr().out.startswith("OK: ")
    fake_sentry.answer(Reply(403))
    assert sentry.main(["check"]) == 1
    assert capsys.readouterr().err.startswith("FAILED: ")
    assert sentry.main(["nonsense"]) == 2
