"""The transport: HTTP answers read off a socket pair, and its queue, limits and log lines.

No network: answers are written by the test into one end of `socket.socketpair()`, and the
transport's own tests replace its connection with one that answers from a script.
"""

import logging
import socket
import threading
from collections.abc import Iterator

import pytest
import sentry_sdk.client
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import HttpTransport

from app.sentry_integration import delivery as sentry_transport
from app.sentry_integration.delivery import (
    Answer,
    Connection,
    SendError,
    SentryTransport,
    Target,
    parse_rate_limits,
    target_for,
)
from tests.sentry_integration.conftest import DSN, scripted_transport

HEAD = b"POST /api/1/envelope/ HTTP/1.1\r\nContent-Length: 4\r\n\r\n"


@pytest.fixture
def connected() -> Iterator[tuple[Connection, socket.socket]]:
    """A `Connection` already connected to `server`, the test's end of a socket pair."""
    ours, server = socket.socketpair()
    server.settimeout(5)
    connection = Connection(Target("http", "sentry.test", 80, "/api/1/envelope/"), lambda: None)  # type: ignore[arg-type,return-value]
    connection._socket = ours
    yield connection, server
    connection.close()
    server.close()


def _answer_with(server: socket.socket, answer: bytes, *, close: bool) -> threading.Thread:
    def serve() -> None:
        request = b""
        while not request.endswith(b"\r\n\r\nbody"):
            request += server.recv(65536)
        server.sendall(answer)
        if close:
            server.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=serve)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("raw", "expected", "kept_open"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            Answer(200),
            True,
        ),
        (
            b"HTTP/1.1 429 Too Many\r\nRetry-After: 30\r\nX-Sentry-Rate-Limits: 30:error\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            Answer(429, "30:error", "30"),
            True,
        ),
        (
            b"HTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            Answer(500),
            False,
        ),
        (b"HTTP/1.0 200 OK\r\n\r\n{}", Answer(200), False),
    ],
    ids=["content-length", "chunked-429-with-limits", "connection-close", "http-1.0-no-length"],
)
def test_answers_are_read_whole(
    connected: tuple[Connection, socket.socket], raw: bytes, expected: Answer, kept_open: bool
) -> None:
    connection, server = connected
    thread = _answer_with(server, raw, close=not kept_open)
    answer = connection.post(HEAD, b"body")
    thread.join()
    assert answer == expected
    assert (connection._socket is not None) is kept_open, "keep-alive decided wrongly"
    assert connection._buffer == b"", "part of the answer was left unread"


def test_a_connection_closed_by_the_server_is_an_error_not_a_hang(
    connected: tuple[Connection, socket.socket],
) -> None:
    connection, server = connected
    thread = _answer_with(server, b"HTTP/1.1 200 OK\r\nContent-Len", close=True)
    with pytest.raises(SendError):
        connection.post(HEAD, b"body")
    thread.join()
    assert connection._socket is None, "a broken connection must not be reused"


def test_rate_limit_headers_are_read_per_category() -> None:
    limits = parse_rate_limits("60:transaction;span:key, 10::organization, junk, 5:error", 100.0)
    assert limits == {"transaction": 160.0, "span": 160.0, None: 110.0, "error": 105.0}


def test_proxies_come_from_the_environment_unless_the_host_is_excluded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dsn = sentry_sdk.utils.Dsn("https://key@sentry.example.com/7")
    monkeypatch.setenv("https_proxy", "http://user:p%40ss@proxy.internal:3128")
    target = target_for({}, dsn)
    assert target is not None and target.proxy == ("proxy.internal", 3128), target
    assert target.proxy_authorization == "Basic dXNlcjpwQHNz", "credentials are decoded"
    monkeypatch.setenv("no_proxy", "sentry.example.com")
    assert target_for({}, dsn) == Target("https", "sentry.example.com", 443, "/api/7/envelope/")
    monkeypatch.delenv("no_proxy")
    monkeypatch.setenv("https_proxy", "socks5://proxy.internal:1080")
    assert target_for({}, dsn) is None, "a SOCKS proxy is left to the SDK's transport"


def _envelope(kind: str = "event") -> Envelope:
    envelope = Envelope()
    if kind == "event":
        envelope.add_event({"message": "boom"})
    else:
        envelope.add_transaction({"type": "transaction", "transaction": "/x"})
    return envelope


def test_an_outage_is_logged_once_and_the_recovery_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sentry_transport, "BACKOFF_SECONDS", 0.0)
    outcomes: list[Answer | SendError] = [SendError("refused"), Answer(500), Answer(503)]
    transport, connection = scripted_transport([*outcomes, Answer(200), Answer(200)])
    caplog.set_level(logging.INFO, logger="app.sentry")
    for _ in range(5):
        transport.capture_envelope(_envelope())
        transport.flush(2)
    transport.kill()
    messages = [record.getMessage() for record in caplog.records]
    assert len(connection.sent) == 5, "every envelope should have been tried"
    assert len(messages) == 2, messages
    assert "not accepting events (refused)" in messages[0] and "again" in messages[1], messages


def test_after_a_failure_sending_backs_off() -> None:
    transport, connection = scripted_transport([SendError("refused")])
    for _ in range(3):
        transport.capture_envelope(_envelope())
        transport.flush(2)
    transport.kill()
    assert len(connection.sent) == 1, "envelopes were sent to a server that just failed"


def test_rate_limits_are_honoured_per_category() -> None:
    transport, connection = scripted_transport([Answer(200, rate_limits="60:transaction")])
    for kind in ("event", "transaction", "event", "transaction"):
        transport.capture_envelope(_envelope(kind))
        transport.flush(2)
    transport.kill()
    sent = [b'"type":"transaction"' in body for body in connection.sent]
    assert sent == [False, False], f"a rate-limited category was sent: {connection.sent}"


def test_a_429_stops_everything_for_its_retry_after() -> None:
    transport, connection = scripted_transport([Answer(429, retry_after="120")])
    for kind in ("event", "transaction", "event"):
        transport.capture_envelope(_envelope(kind))
        transport.flush(2)
    transport.kill()
    assert len(connection.sent) == 1, "the server said to wait and was not left alone"


def test_a_full_queue_drops_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    transport, connection = scripted_transport([], transport_queue_size=2)
    connection.release.clear()  # the first envelope is held in flight
    caplog.set_level(logging.INFO, logger="app.sentry")
    for _ in range(10):
        transport.capture_envelope(_envelope())
    connection.release.set()
    transport.flush(2)
    transport.kill()
    assert 2 <= len(connection.sent) <= 3, len(connection.sent)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and "faster than they can be sent" in messages[0], messages


def test_a_flush_that_gives_up_says_how_many_events_are_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport, connection = scripted_transport([])
    connection.release.clear()  # the server never answers
    caplog.set_level(logging.INFO, logger="app.sentry")
    transport.capture_envelope(_envelope())
    transport.capture_envelope(_envelope())
    transport.flush(0.2)
    connection.release.set()
    transport.kill()
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and "2 events still unsent" in messages[0], messages


def test_large_envelopes_are_compressed() -> None:
    transport, connection = scripted_transport([])
    envelope = Envelope()
    envelope.add_event({"message": "x" * 10_000})
    transport.capture_envelope(envelope)
    transport.flush(2)
    transport.kill()
    assert connection.sent and connection.sent[0][:2] == b"\x1f\x8b", "not gzipped"


def test_a_socks_proxy_is_left_to_the_sdksscripted_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert sentry_transport.transport_class(DSN) is SentryTransport
    monkeypatch.setenv("http_proxy", "socks5://proxy.internal:1080")
    assert sentry_transport.transport_class(DSN) is HttpTransport


def test_through_a_plain_proxy_the_request_names_the_whole_url() -> None:
    target = Target("http", "sentry.test", 9000, "/api/1/envelope/", ("proxy", 3128), "Basic eA==")
    head = SentryTransport._request_head(target, "Sentry sentry_key=public")
    lines = head.split("\r\n")
    assert lines[0] == "POST http://sentry.test:9000/api/1/envelope/ HTTP/1.1", lines
    assert "Host: sentry.test:9000" in lines and "Proxy-Authorization: Basic eA==" in lines, lines


def test_a_connection_is_opened_once_and_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    ours, server = socket.socketpair()
    opened: list[tuple[str, int]] = []

    def create_connection(address: tuple[str, int], timeout: float) -> socket.socket:
        opened.append(address)
        return ours

    monkeypatch.setattr(socket, "create_connection", create_connection)
    connection = Connection(Target("http", "sentry.test", 80, "/api/1/envelope/"), lambda: None)  # type: ignore[arg-type,return-value]
    for _ in range(2):
        thread = _answer_with(server, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", close=False)
        assert connection.post(HEAD, b"body") == Answer(200)
        thread.join()
    connection.close()
    server.close()
    assert opened == [("sentry.test", 80)], opened


def test_a_proxy_that_refuses_the_tunnel_is_a_send_error(monkeypatch: pytest.MonkeyPatch) -> None:
    ours, server = socket.socketpair()
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout: ours)
    target = Target("https", "sentry.test", 443, "/api/1/envelope/", ("proxy", 3128), "Basic eA==")
    connection = Connection(target, lambda: sentry_transport._tls_context({}))

    def proxy() -> None:
        request = b""
        while not request.endswith(b"\r\n\r\n"):
            request += server.recv(65536)
        assert request.startswith(b"CONNECT sentry.test:443 HTTP/1.1\r\n"), request
        assert b"Proxy-Authorization: Basic eA==" in request, request
        server.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=proxy)
    thread.start()
    with pytest.raises(SendError, match="407"):
        connection.post(HEAD, b"body")
    thread.join()
    server.close()


def test_tls_verifies_the_server_with_a_ca_bundle() -> None:
    context = sentry_transport._tls_context({})
    assert context.verify_mode.name == "CERT_REQUIRED" and context.check_hostname
