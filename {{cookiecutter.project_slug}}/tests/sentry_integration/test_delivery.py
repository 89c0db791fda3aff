"""The transport, sending for real over loopback: HTTP, TLS, proxies, its queue, limits, log lines
and client reports.

Sentry is `FakeSentry` on 127.0.0.1 (see conftest.py); a few tests need answers no HTTP server
library would write, and get them from `RawServer`, which writes whatever bytes it is given.
"""

import contextlib
import logging
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope, Item

from app.sentry_integration import delivery
from app.sentry_integration.delivery import (
    Answer,
    HttpClient,
    SendError,
    SentryTransport,
    parse_dsn,
    parse_rate_limits,
    proxy_url,
    tls_context,
)
from tests.sentry_integration.conftest import (
    DROP,
    ConnectProxy,
    FakeSentry,
    LoopbackServer,
    Reply,
    Tls,
    TransportFactory,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("clean_network_environment")


def _event(message: str = "boom") -> Envelope:
    envelope = Envelope()
    envelope.add_event({"message": message})
    return envelope


def _transaction(spans: int = 0) -> Envelope:
    envelope = Envelope()
    envelope.add_transaction(
        {"type": "transaction", "transaction": "/x", "spans": [{"op": "db"}] * spans}
    )
    return envelope


def _log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "app.sentry"]


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry at once after a failure (the transport waits a second, then more, otherwise)."""
    monkeypatch.setattr(delivery, "BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(delivery, "MAX_BACKOFF_SECONDS", 0.0)


# ---- the DSN ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "url", "auth"),
    [
        (
            "https://key@sentry.example.com/7",
            "https://sentry.example.com/api/7/envelope/",
            "sentry_key=key, sentry_version=7, sentry_client=sentry.python/",
        ),
        (
            "http://key:secret@Sentry.Example.com:9000/prefix/path/42",
            "http://sentry.example.com:9000/prefix/path/api/42/envelope/",
            ", sentry_secret=secret",
        ),
        ("https://key@[::1]:8443/3", "https://[::1]:8443/api/3/envelope/", "sentry_key=key"),
        (
            "  https://key@o1.ingest.sentry.io:443/0042 ",
            "https://o1.ingest.sentry.io/api/42/envelope/",
            "key",
        ),
    ],
    ids=["plain", "port-path-secret", "ipv6", "default-port"],
)
def test_a_dsn_gives_the_envelope_url_and_auth_header(dsn: str, url: str, auth: str) -> None:
    endpoint = parse_dsn(dsn)
    assert endpoint.envelope_url == url
    header = endpoint.auth_header()
    assert header.startswith("Sentry sentry_key=key, sentry_version=7, ") and auth in header
    assert f"sentry_client=sentry.python/{sentry_sdk.VERSION}" in header, header


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("nonsense", "scheme"),
        ("ftp://key@host/1", "scheme"),
        ("https://host/1", "public key"),
        ("https://key@/1", "host"),
        ("https://key@host/", "project id"),
        ("https://key@host/sentry", "project id"),
        ("https://key@host:99999/1", "port"),
    ],
)
def test_a_malformed_dsn_is_refused_saying_why(dsn: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        parse_dsn(dsn)


# ---- HTTP ----------------------------------------------------------------------------------------


class RawServer(LoopbackServer):
    """Answers each request on 127.0.0.1 with the next of `answers` (raw bytes; the last one
    repeats), closing the connection after it if its flag says so."""

    def __init__(self, answers: list[tuple[bytes, bool]]) -> None:
        self.answers = answers
        self.heads: list[bytes] = []
        super().__init__()

    def _serve(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.settimeout(10)
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += connection.recv(65536)
                buffer = buffer[length:]
                self.heads.append(head)
                answer, close = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
                connection.sendall(answer)
                if close:
                    connection.shutdown(socket.SHUT_WR)
                    return


@pytest.fixture
def raw_server() -> Iterator[type[RawServer]]:
    made: list[RawServer] = []

    class Made(RawServer):
        def __init__(self, answers: list[tuple[bytes, bool]]) -> None:
            super().__init__(answers)
            made.append(self)

    yield Made
    for server in made:
        server.close()


def _client(port: int, **options: object) -> HttpClient:
    return HttpClient(parse_dsn(f"http://public@127.0.0.1:{port}/1"), options)


@pytest.mark.parametrize(
    ("raw", "closes", "expected", "connections"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", False, Answer(200, reason="OK"), 1),
        (
            b"HTTP/1.1 429 Too Many\r\nRetry-After: 30\r\nX-Sentry-Rate-Limits: 30:error\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            False,
            Answer(429, "30:error", "30", "Too Many"),
            1,
        ),
        (
            b"HTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            False,
            Answer(500, reason="Oops"),
            2,
        ),
        (b"HTTP/1.0 200 OK\r\n\r\n{}", True, Answer(200, reason="OK"), 2),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}junk", False, Answer(200, reason="OK"), 2),
    ],
    ids=[
        "content-length",
        "chunked-429-with-limits",
        "connection-close",
        "http-1.0-no-length",
        "bytes-past-the-answer",
    ],
)
def test_answers_are_read_whole_and_the_connection_kept_when_it_may_be(
    raw_server: type[RawServer], raw: bytes, closes: bool, expected: Answer, connections: int
) -> None:
    server = raw_server([(raw, closes)])
    client = _client(server.port)
    for _ in range(2):
        assert client.post(b"body", {}) == expected
    client.close()
    assert server.connections == connections, "keep-alive decided wrongly"
    assert server.heads[0].startswith(b"POST /api/1/envelope/ HTTP/1.1\r\n"), server.heads


@pytest.mark.parametrize("cut", [b"", b"HTTP/1.1 2"], ids=["no-answer", "mid-status-line"])
def test_a_connection_closed_mid_answer_is_a_send_error_not_a_hang(
    raw_server: type[RawServer], cut: bytes
) -> None:
    server = raw_server([(cut, True), (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False)])
    client = _client(server.port)
    with pytest.raises(SendError, match="broke"):
        client.post(b"body", {})
    assert client.post(b"body", {}).status == 200, "the broken connection was reused"
    client.close()
    assert server.connections == 2


def test_a_server_that_does_not_answer_in_time_is_a_send_error(
    fake_sentry: FakeSentry, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_sentry.answering.clear()
    client = HttpClient(parse_dsn(fake_sentry.dsn), {}, timeout=0.2)
    with pytest.raises(SendError, match=r"no answer from http://127\.0\.0\.1:\d+ within 0\.2 s"):
        client.post(b"body", {})
    client.close()


def test_a_server_that_is_down_is_a_send_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as reserved:
        port = reserved.getsockname()[1]
    with pytest.raises(
        SendError, match=r"cannot connect to http://127\.0\.0\.1:\d+: Connection refused"
    ):
        _client(port).post(b"body", {})


def test_one_connection_is_opened_and_kept(
    fake_sentry: FakeSentry, new_transport: TransportFactory
) -> None:
    transport = new_transport(fake_sentry.dsn)
    for number in range(3):
        transport.capture_envelope(_event(f"event {number}"))
        transport.flush(2)
    assert fake_sentry.messages() == ["event 0", "event 1", "event 2"]
    assert fake_sentry.connections == 1, "a new connection for each envelope"


def test_envelopes_go_to_the_envelope_endpoint_with_the_dsns_key(
    fake_sentry: FakeSentry, new_transport: TransportFactory
) -> None:
    transport = new_transport(fake_sentry.dsn)
    transport.capture_envelope(_event())
    transport.flush(2)
    (received,) = fake_sentry.received
    assert received.path == "/api/1/envelope/"
    assert received.headers["content-type"] == "application/x-sentry-envelope"
    assert received.headers["x-sentry-auth"].startswith("Sentry sentry_key=public, ")
    assert received.headers["user-agent"] == f"sentry.python/{sentry_sdk.VERSION}"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_sending_does_not_go_through_the_sdks_http_client_instrumentation(
    fake_sentry: FakeSentry,
    tls_sentry: FakeSentry,
    tls: Tls,
    new_transport: TransportFactory,
    monkeypatch: pytest.MonkeyPatch,
    scheme: str,
) -> None:
    """The stdlib integration wraps http.client's putrequest (a span and a breadcrumb per call),
    and takes the transport's requests for the app's when the DSN names a port."""
    import http.client

    calls: list[str] = []
    wrapped = http.client.HTTPConnection.putrequest

    def counting(self: http.client.HTTPConnection, method: str, url: str, **kwargs: bool) -> None:
        calls.append(url)
        wrapped(self, method, url, **kwargs)

    monkeypatch.setattr(http.client.HTTPConnection, "putrequest", counting)
    server = fake_sentry if scheme == "http" else tls_sentry
    transport = new_transport(server.dsn, ca_certs=str(tls.ca_file))
    transport.capture_envelope(_event("sent"))
    transport.flush(5)
    assert server.messages() == ["sent"], "the envelope was not delivered"
    assert calls == [], f"the transport's requests went through the wrapped putrequest: {calls}"
    connection = http.client.HTTPConnection("127.0.0.1", fake_sentry.port)
    connection.request("GET", "/app-call")
    connection.close()
    assert calls == ["/app-call"], "the check itself is broken: the app's request was not seen"


def _types(server: FakeSentry) -> list[str]:
    """The type of each envelope received (each holds one event or transaction here)."""
    return [
        "transaction" if received.items("transaction") else "event"
        for received in list(server.received)
    ]


def test_transactions_linger_to_go_together_and_an_error_event_takes_them_along(
    fake_sentry: FakeSentry, new_transport: TransportFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "LINGER_SECONDS", 30.0)
    monkeypatch.setattr(delivery, "LINGER_ENVELOPES", 3)
    transport = new_transport(fake_sentry.dsn)
    transport.capture_envelope(_transaction())
    transport.capture_envelope(_transaction())
    time.sleep(0.3)  # what is being checked is that nothing happens meanwhile
    assert fake_sentry.received == [], "a lone transaction was sent without lingering"
    transport.capture_envelope(_event("urgent"))
    wait_for(lambda: len(fake_sentry.received) == 3)
    assert _types(fake_sentry) == ["transaction", "transaction", "event"], "order changed"
    for _ in range(3):  # a full batch goes without waiting
        transport.capture_envelope(_transaction())
    wait_for(lambda: len(fake_sentry.received) == 6)


def test_a_flush_sends_lingering_transactions_at_once(
    fake_sentry: FakeSentry, new_transport: TransportFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "LINGER_SECONDS", 30.0)
    transport = new_transport(fake_sentry.dsn)
    transport.capture_envelope(_transaction())
    started = time.monotonic()
    transport.flush(5)
    assert len(fake_sentry.received) == 1, "the flush did not send the lingering transaction"
    assert time.monotonic() - started < 5, "the flush waited for the linger"


def test_a_lingering_transaction_goes_once_its_time_is_up(
    fake_sentry: FakeSentry, new_transport: TransportFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "LINGER_SECONDS", 0.3)
    transport = new_transport(fake_sentry.dsn)
    transport.capture_envelope(_transaction())
    wait_for(lambda: len(fake_sentry.received) == 1, seconds=5)


def test_rate_limit_headers_are_read_per_category() -> None:
    limits = parse_rate_limits("60:transaction;span:key, 10::organization, junk, 5:error", 100.0)
    assert limits == {"transaction": 160.0, "span": 160.0, None: 110.0, "error": 105.0}


# ---- TLS -------------------------------------------------------------------------------------


def test_tls_always_verifies_the_server() -> None:
    """Host names too (test_a_certificate_for_another_host_sends_nothing_and_the_log_says_why)."""
    assert tls_context({}).verify_mode.name == "CERT_REQUIRED"


def test_with_the_ca_given_events_are_delivered_over_tls(
    tls_sentry: FakeSentry, tls: Tls, new_transport: TransportFactory
) -> None:
    transport = new_transport(tls_sentry.dsn, ca_certs=str(tls.ca_file))
    transport.capture_envelope(_event("over tls"))
    transport.flush(5)
    assert tls_sentry.messages() == ["over tls"]


@pytest.mark.parametrize("trusted", ["other-ca", "default-bundle"])
def test_a_certificate_the_ca_did_not_sign_sends_nothing_and_the_log_says_why(
    tls_sentry: FakeSentry,
    tls: Tls,
    new_transport: TransportFactory,
    caplog: pytest.LogCaptureFixture,
    trusted: str,
) -> None:
    ca_certs = str(tls.other_ca_file) if trusted == "other-ca" else None
    transport = new_transport(tls_sentry.dsn, ca_certs=ca_certs)
    caplog.set_level(logging.INFO, logger="app.sentry")
    started = time.monotonic()
    transport.capture_envelope(_event("never sent"))
    assert time.monotonic() - started < 0.5, "the caller waited for the network"
    transport.flush(5)
    assert tls_sentry.received == [], "an event went to a server that could not be verified"
    wait_for(lambda: tls_sentry.failed_connections >= 1)  # it did try, and gave up
    (line,) = _log_lines(caplog)
    assert "not accepting events (TLS certificate verify failed for https://127.0.0.1:" in line
    assert "set SENTRY_CA_CERTS to the CA bundle that signed it" in line, line


def test_a_certificate_for_another_host_sends_nothing_and_the_log_says_why(
    tls: Tls, new_transport: TransportFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeSentry(tls.other_host_context)
    try:
        transport = new_transport(server.dsn, ca_certs=str(tls.ca_file))
        caplog.set_level(logging.INFO, logger="app.sentry")
        transport.capture_envelope(_event("never sent"))
        transport.flush(5)
        assert server.received == []
    finally:
        server.close()
    (line,) = _log_lines(caplog)
    assert "TLS certificate verify failed for https://127.0.0.1:" in line, line
    assert "the certificate is not for 127.0.0.1" in line, line


@pytest.mark.parametrize("content", [None, b"not a certificate"], ids=["missing", "not-pem"])
def test_an_unusable_ca_bundle_is_refused_at_start_naming_it(
    tmp_path: Path, content: bytes | None
) -> None:
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_bytes(content)
    with pytest.raises(ValueError, match=f"{bundle}.*SENTRY_CA_CERTS"):
        SentryTransport({"dsn": "https://public@127.0.0.1:9/1", "ca_certs": str(bundle)})


# ---- proxies ---------------------------------------------------------------------------------


def test_proxies_come_from_the_options_or_the_environment_unless_the_host_is_excluded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    https = parse_dsn("https://key@sentry.example.com/7")
    http = parse_dsn("http://key@sentry.example.com:9000/7")
    assert proxy_url({}, https) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://user:p%40ss@proxy.internal:3128")
    monkeypatch.setenv("HTTP_PROXY", "plain.internal:8080")
    assert proxy_url({}, https) == "http://user:p%40ss@proxy.internal:3128"
    assert proxy_url({}, http) == "http://plain.internal:8080", "no scheme means http"
    assert proxy_url({"https_proxy": ""}, https) == "http://plain.internal:8080"
    assert proxy_url({"https_proxy": "", "http_proxy": ""}, https) is None, "'' turns it off"
    monkeypatch.setenv("NO_PROXY", "localhost,.example.com")
    assert proxy_url({}, https) is None and proxy_url({}, http) is None
    assert proxy_url({"https_proxy": "http://chosen:1"}, https) == "http://chosen:1"
    client = HttpClient(https, {"https_proxy": "http://user:secret@chosen:1"})
    assert client.proxy == "http://chosen:1", "credentials must not reach the log"


@pytest.mark.parametrize("configured_by", ["HTTPS_PROXY", "https_proxy option"])
def test_https_goes_through_a_connect_proxy(
    tls_sentry: FakeSentry,
    tls: Tls,
    connect_proxy: ConnectProxy,
    new_transport: TransportFactory,
    monkeypatch: pytest.MonkeyPatch,
    configured_by: str,
) -> None:
    proxy = connect_proxy.url.replace("http://", "http://user:p%40ss@")
    options: dict[str, object] = {"ca_certs": str(tls.ca_file)}
    if configured_by == "HTTPS_PROXY":
        monkeypatch.setenv("HTTPS_PROXY", proxy)
    else:
        options["https_proxy"] = proxy
    transport = new_transport(tls_sentry.dsn, **options)
    transport.capture_envelope(_event("tunnelled"))
    transport.flush(5)
    assert tls_sentry.messages() == ["tunnelled"]
    (head,) = connect_proxy.requests
    lines = head.decode().lower().split("\r\n")
    assert lines[0].startswith(f"connect 127.0.0.1:{tls_sentry.port} http/1."), lines
    assert "proxy-authorization: basic dxnlcjpwqhnz" in lines, "credentials are decoded and sent"


def test_no_proxy_sends_directly(
    tls_sentry: FakeSentry,
    tls: Tls,
    connect_proxy: ConnectProxy,
    new_transport: TransportFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", connect_proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.1")
    transport = new_transport(tls_sentry.dsn, ca_certs=str(tls.ca_file))
    transport.capture_envelope(_event("direct"))
    transport.flush(5)
    assert tls_sentry.messages() == ["direct"]
    assert connect_proxy.requests == [], "NO_PROXY named the host, yet the proxy was used"


def test_through_a_plain_proxy_the_request_names_the_whole_url(
    raw_server: type[RawServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = raw_server([(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False)])
    monkeypatch.setenv("HTTP_PROXY", f"http://user:pw@127.0.0.1:{proxy.port}")
    client = HttpClient(parse_dsn("http://public@sentry.test:9000/1"), {})
    assert client.post(b"body", {}).status == 200
    client.close()
    lines = proxy.heads[0].decode().lower().split("\r\n")
    assert lines[0] == "post http://sentry.test:9000/api/1/envelope/ http/1.1", lines
    assert "host: sentry.test:9000" in lines and "proxy-authorization: basic dxnlcjpwdw==" in lines


def test_a_proxy_that_refuses_the_tunnel_is_a_send_error(
    raw_server: type[RawServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = raw_server(
        [(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n", True)]
    )
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    client = HttpClient(parse_dsn("https://public@sentry.test/1"), {})
    with pytest.raises(SendError, match=f"the proxy http://127.0.0.1:{proxy.port} failed.*407"):
        client.post(b"body", {})
    assert proxy.heads[0].startswith(b"CONNECT sentry.test:443 HTTP/1."), proxy.heads


def test_a_socks_proxy_without_pysocks_is_named_once_and_bypassed(
    fake_sentry: FakeSentry,
    new_transport: TransportFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "urllib3.contrib.socks", None)  # as if PySocks were missing
    monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:1")
    caplog.set_level(logging.INFO, logger="app.sentry")
    transport = new_transport(fake_sentry.dsn)
    transport.capture_envelope(_event("direct"))
    transport.flush(2)
    assert fake_sentry.messages() == ["direct"]
    (line,) = _log_lines(caplog)
    assert "SOCKS proxy socks5://127.0.0.1:1 is not used: PySocks is not installed" in line, line


def test_a_proxy_of_an_unknown_kind_is_named_once_and_bypassed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="app.sentry")
    client = HttpClient(parse_dsn("https://key@sentry.example.com/1"), {"https_proxy": "ftp://p:1"})
    assert client.proxy is None
    (line,) = _log_lines(caplog)
    assert (
        "proxy ftp://p:1 is not used" in line and "directly to https://sentry.example.com" in line
    )


@pytest.mark.parametrize("option", ["cert_file", "ca_certs"])
def test_a_certificate_file_that_cannot_be_read_is_named(tmp_path: Path, option: str) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=str(missing)):
        tls_context({option: str(missing)})


def test_socket_options_and_tcp_keep_alive_are_honoured(
    fake_sentry: FakeSentry, new_transport: TransportFactory
) -> None:
    options = delivery._socket_options({"keep_alive": True})
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in options
    chosen = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    assert delivery._socket_options({"socket_options": chosen}) == chosen
    transport = new_transport(fake_sentry.dsn, keep_alive=True)
    transport.capture_envelope(_event("kept alive"))
    transport.flush(2)
    assert fake_sentry.messages() == ["kept alive"]


# ---- the queue, failures and limits ----------------------------------------------------------


@pytest.mark.usefixtures("no_backoff")
def test_an_outage_is_logged_once_and_the_recovery_once(
    fake_sentry: FakeSentry, new_transport: TransportFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake_sentry.answer(DROP, Reply(500), Reply(503))
    transport = new_transport(fake_sentry.dsn)
    caplog.set_level(logging.INFO, logger="app.sentry")
    for number in range(5):
        transport.capture_envelope(_event(f"event {number}"))
        transport.flush(2)
    assert len(fake_sentry.messages()) == 5, "every envelope should have been tried"
    messages = _log_lines(caplog)
    assert len(messages) == 2, messages
    assert "not accepting events (the connection to http://127.0.0.1:" in messages[0], messages
    assert "accepting events again" in messages[1], messages


def test_after_a_failure_sending_backs_off(
    fake_sentry: FakeSentry, new_transport: TransportFactory
) -> None:
    fake_sentry.answer(DROP)
    transport = new_transport(fake_sentry.dsn)
    for _ in range(3):
        transport.capture_envelope(_event())
        transport.flush(2)
    assert len(fake_sentry.received) == 1, "envelopes were sent to a server that just failed"


def test_rate_limits_are_honoured_per_category(
    fake_sentry: FakeSentry, new_transport: TransportFactory
) -> None:
    fake_sentry.answer(Reply(200, (("X-Sentry-Rate-Limits", "60:transaction"),)))
    transport = new_transport(fake_sentry.dsn)
    for envelope in (_event("1"), _transaction(), _event("2"), _transaction()):
        transport.capture_envelope(envelope)
        transport.flush(2)
    assert fake_sentry.messages() == ["1", "2"]
    assert fake_sentry.items("transaction") == [], "a rate-limited category was sent"


def test_a_429_stops_everything_for_its_retry_after(
    fake_sentry: FakeSentry, new_transport: TransportFactory
) -> None:
    fake_sentry.answer(Reply(429, (("Retry-After", "120"),)))
    transport = new_transport(fake_sentry.dsn)
    for envelope in (_event(), _transaction(), _event()):
        transport.capture_envelope(envelope)
        transport.flush(2)
    assert len(fake_sentry.received) == 1, "the server said to wait and was not left alone"


def test_a_full_queue_drops_and_says_so_once(
    fake_sentry: FakeSentry, new_transport: TransportFactory, caplog: pytest.LogCaptureFixture
) -> None:
    transport = new_transport(fake_sentry.dsn, transport_queue_size=2)
    fake_sentry.answering.clear()  # the first envelope is held in flight
    caplog.set_level(logging.INFO, logger="app.sentry")
    for _ in range(10):
        transport.capture_envelope(_event())
    fake_sentry.answering.set()
    transport.flush(2)
    assert 2 <= len(fake_sentry.messages()) <= 3, fake_sentry.messages()
    messages = _log_lines(caplog)
    assert len(messages) == 1 and "faster than they can be sent" in messages[0], messages


def test_a_flush_that_gives_up_says_how_many_events_are_left(
    fake_sentry: FakeSentry, new_transport: TransportFactory, caplog: pytest.LogCaptureFixture
) -> None:
    transport = new_transport(fake_sentry.dsn)
    fake_sentry.answering.clear()  # the server never answers in time
    caplog.set_level(logging.INFO, logger="app.sentry")
    transport.capture_envelope(_event())
    transport.capture_envelope(_event())
    transport.flush(0.2)
    fake_sentry.answering.set()
    messages = _log_lines(caplog)
    assert len(messages) == 1 and "2 events still unsent" in messages[0], messages


def test_large_envelopes_are_compressed(
    fake_sentry: FakeSentry, new_transport: TransportFactory
) -> None:
    transport = new_transport(fake_sentry.dsn)
    transport.capture_envelope(_event("x" * 10_000))
    transport.capture_envelope(_event("small"))
    transport.flush(2)
    large, small = fake_sentry.received
    assert large.headers.get("content-encoding") == "gzip" and large.raw[:2] == b"\x1f\x8b"
    assert "content-encoding" not in small.headers
    assert fake_sentry.messages() == ["x" * 10_000, "small"]


# ---- client reports ----------------------------------------------------------------------------


@pytest.fixture
def sdk(fake_sentry: FakeSentry, clean_network_environment: None) -> Iterator[None]:
    """Leaves the SDK as it was after a test that called `sentry_sdk.init`."""
    yield
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)
    sentry_sdk.get_isolation_scope().clear()


@pytest.mark.usefixtures("sdk")
def test_events_the_sdk_drops_are_reported_as_lost(fake_sentry: FakeSentry) -> None:
    """before_send is where flood control drops events: Sentry hears how many."""

    def before_send(event: dict[str, object], hint: dict[str, object]) -> object:
        return None if event.get("message") == "flood" else event

    sentry_sdk.init(
        dsn=fake_sentry.dsn,
        transport=SentryTransport,
        before_send=before_send,  # type: ignore[arg-type]
        default_integrations=False,
    )
    scope = sentry_sdk.get_isolation_scope()
    scope.add_event_processor(
        lambda event, hint: None if event.get("message") == "noise" else event
    )
    for message in ("flood", "flood", "flood", "noise", "noise", "kept"):
        sentry_sdk.capture_message(message)
    sentry_sdk.flush(5)
    assert fake_sentry.messages() == ["kept"]
    assert fake_sentry.discarded() == {("before_send", "error"): 3, ("event_processor", "error"): 2}


@pytest.mark.usefixtures("sdk")
def test_sampled_out_events_are_reported_on_their_own_at_a_flush(fake_sentry: FakeSentry) -> None:
    sentry_sdk.init(
        dsn=fake_sentry.dsn, transport=SentryTransport, sample_rate=0.0, default_integrations=False
    )
    sentry_sdk.capture_message("sampled out")
    sentry_sdk.capture_message("sampled out")
    sentry_sdk.flush(5)
    (received,) = fake_sentry.received
    assert [item["discarded_events"] for item in received.items("client_report")] == [
        [{"reason": "sample_rate", "category": "error", "quantity": 2}]
    ]
    assert isinstance(received.items("client_report")[0]["timestamp"], float)


def test_a_full_queue_is_reported(fake_sentry: FakeSentry, new_transport: TransportFactory) -> None:
    transport = new_transport(fake_sentry.dsn, transport_queue_size=2)
    fake_sentry.answering.clear()
    for number in range(10):
        transport.capture_envelope(_event(f"event {number}"))
    fake_sentry.answering.set()
    transport.flush(5)
    delivered = len(fake_sentry.messages())
    assert delivered in (2, 3), delivered
    assert fake_sentry.discarded() == {("queue_overflow", "error"): 10 - delivered}


def test_rate_limited_items_are_reported_with_their_spans(
    fake_sentry: FakeSentry, new_transport: TransportFactory
) -> None:
    fake_sentry.answer(Reply(200, (("X-Sentry-Rate-Limits", "60:transaction"),)))
    transport = new_transport(fake_sentry.dsn)
    transport.capture_envelope(_event())
    transport.capture_envelope(_transaction(spans=3))
    transport.capture_envelope(_transaction(spans=1))
    transport.flush(5)
    assert fake_sentry.discarded() == {
        ("ratelimit_backoff", "transaction"): 2,
        ("ratelimit_backoff", "span"): (3 + 1) + (1 + 1),
    }


@pytest.mark.usefixtures("no_backoff")
def test_events_lost_in_an_outage_are_reported_once_sentry_answers_again(
    fake_sentry: FakeSentry, new_transport: TransportFactory
) -> None:
    fake_sentry.answer(DROP, Reply(500), Reply(413))
    transport = new_transport(fake_sentry.dsn)
    for number in range(3):
        transport.capture_envelope(_event(f"lost {number}"))
        transport.flush(2)  # asks for the report too, but Sentry is not taking events
    assert fake_sentry.discarded() == {}, "a client report was sent during the outage"
    assert len(fake_sentry.received) == 3
    transport.capture_envelope(_event("delivered"))
    transport.flush(2)
    assert fake_sentry.discarded() == {("network_error", "error"): 2, ("send_error", "error"): 1}


def test_a_rate_limit_on_errors_does_not_hold_back_the_report(
    fake_sentry: FakeSentry, new_transport: TransportFactory
) -> None:
    """The first error is answered 429 (Sentry counts that one itself); the next ones are dropped
    under the limit and reported, although Sentry keeps answering 429."""
    limited = Reply(429, (("X-Sentry-Rate-Limits", "60:error:key"),))
    fake_sentry.answer(*[limited] * 5)
    transport = new_transport(fake_sentry.dsn)
    for number in range(4):
        transport.capture_envelope(_event(f"event {number}"))
        transport.flush(2)
    assert fake_sentry.messages() == ["event 0"]
    assert fake_sentry.discarded() == {("ratelimit_backoff", "error"): 3}
    transport.flush(2)
    assert fake_sentry.discarded() == {("ratelimit_backoff", "error"): 3}, "reported twice"


def test_reports_wait_out_a_rate_limit_on_them(
    fake_sentry: FakeSentry, new_transport: TransportFactory
) -> None:
    fake_sentry.answer(Reply(200, (("X-Sentry-Rate-Limits", "0.5:internal"),)))
    transport = new_transport(fake_sentry.dsn)
    transport.capture_envelope(_event())
    transport.flush(2)
    transport.record_lost_event("before_send", "error")
    transport.flush(2)
    assert fake_sentry.discarded() == {}, "a rate-limited client report was sent"
    transport.record_lost_event("before_send", "error")

    def reported() -> bool:
        transport.flush(2)
        return bool(fake_sentry.discarded())

    wait_for(reported)
    assert fake_sentry.discarded() == {("before_send", "error"): 2}, "counts were lost"


def test_a_due_report_rides_on_the_next_envelope(
    fake_sentry: FakeSentry, new_transport: TransportFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "CLIENT_REPORT_INTERVAL_SECONDS", 0.0)
    transport = new_transport(fake_sentry.dsn)
    fake_sentry.answering.clear()
    transport.capture_envelope(_event("first"))
    wait_for(lambda: fake_sentry.received)  # the thread is busy with it
    transport.record_lost_event("event_processor", "error", quantity=4)
    transport.capture_envelope(_event("second"))
    fake_sentry.answering.set()
    transport.flush(2)
    assert fake_sentry.discarded() == {("event_processor", "error"): 4}
    with_report = [r for r in fake_sentry.received if r.items("client_report")]
    assert len(with_report) == 1 and with_report[0].items("event"), "not attached to an event"


def test_a_due_report_is_sent_on_its_own_without_a_flush(
    fake_sentry: FakeSentry, new_transport: TransportFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "CLIENT_REPORT_INTERVAL_SECONDS", 0.2)
    transport = new_transport(fake_sentry.dsn)
    transport.record_lost_event("sample_rate", "transaction", quantity=7)
    wait_for(lambda: fake_sentry.discarded())
    assert fake_sentry.discarded() == {("sample_rate", "transaction"): 7}


def test_lost_items_are_counted_as_the_sdk_counts_them(
    fake_sentry: FakeSentry, new_transport: TransportFactory
) -> None:
    transport = new_transport(fake_sentry.dsn)
    transport.record_lost_event("before_send", item=Item(b"12345", type="attachment"))
    transport.record_lost_event("before_send", item=Item(b"", type="attachment"))
    transport.record_lost_event(
        "backpressure", item=Item(b"{}", type="log", headers={"item_count": 3})
    )
    transport.record_lost_event("before_send", data_category="profile", quantity=2)
    with pytest.raises(TypeError):
        transport.record_lost_event("before_send")
    transport.flush(2)
    assert fake_sentry.discarded() == {
        ("before_send", "attachment"): 5 + 1,
        ("backpressure", "log_item"): 3,
        ("backpressure", "log_byte"): 2,
        ("before_send", "profile"): 2,
    }


def test_client_reports_can_be_turned_off(
    fake_sentry: FakeSentry, new_transport: TransportFactory
) -> None:
    transport = new_transport(fake_sentry.dsn, send_client_reports=False, transport_queue_size=1)
    fake_sentry.answering.clear()
    for _ in range(3):
        transport.capture_envelope(_event())
    transport.record_lost_event("before_send", "error")
    fake_sentry.answering.set()
    transport.flush(2)
    assert fake_sentry.received and fake_sentry.items("client_report") == []
