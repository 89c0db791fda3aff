"""Fixtures for the Sentry tests: the SDK with an in-memory transport, never the network.

The transport's own tests (delivery, spool, check) send for real, over loopback only: to
`FakeSentry`, a Sentry stand-in on 127.0.0.1 (plain HTTP, or TLS with a throwaway CA), optionally
through `ConnectProxy`, a small HTTP CONNECT proxy that only tunnels to 127.0.0.1.
"""

import contextlib
import gzip
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
import sentry_sdk
from pydantic import SecretStr
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from app.core.config import Settings
from app.sentry_integration.delivery import SentryTransport

DSN = "http://public@127.0.0.1:9/1"


class CapturingTransport(Transport):
    """Keeps every envelope, serialized as it would go over the wire, and counts lost events."""

    def __init__(self) -> None:
        super().__init__({"dsn": DSN})  # the client takes the DSN's public key from here
        self.payloads: list[bytes] = []
        self.flushes = 0
        self.lost: dict[tuple[str, str], int] = {}  # {(reason, category): quantity}

    def capture_envelope(self, envelope: Envelope) -> None:
        self.payloads.append(envelope.serialize())

    def record_lost_event(
        self, reason: str, data_category: Any = None, item: Any = None, *, quantity: int = 1
    ) -> None:
        category = str(item.data_category if item is not None else data_category)
        self.lost[reason, category] = self.lost.get((reason, category), 0) + quantity

    def flush(self, timeout: float, callback: Any = None) -> None:
        self.flushes += 1

    def items(self, item_type: str) -> list[dict[str, Any]]:
        found = []
        for payload in self.payloads:
            for item in Envelope.deserialize(payload).items:
                if item.type == item_type:
                    found.append(json.loads(item.get_bytes()))
        return found

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.items("event")


@pytest.fixture
def transport() -> Iterator[CapturingTransport]:
    capturing = CapturingTransport()
    yield capturing
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)
    sentry_sdk.get_isolation_scope().clear()


@pytest.fixture
def sentry_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "sentry_dsn": SecretStr(DSN),
            "sentry_environment": "staging",
            "sentry_release": "svc@1.2.3",
            "sentry_traces_sample_rate": 0.0,
            "sentry_spool_dir": str(tmp_path / "spool"),  # never a real service's spool
        }
    )


# ---- a Sentry stand-in on loopback ---------------------------------------------------------------


def wait_for(condition: Callable[[], object], seconds: float = 5.0) -> None:
    """Poll `condition` until it holds; fail the test if it does not within `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.01)


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer of `FakeSentry`."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()


#: In a script: close the connection without answering (the sender sees a broken connection).
DROP = None


@dataclass(frozen=True, slots=True)
class Received:
    """One POST as `FakeSentry` received it."""

    path: str
    headers: dict[str, str]  # names in lower case
    raw: bytes  # the body as sent (gzipped or not)
    body: bytes  # the envelope

    def items(self, item_type: str) -> list[dict[str, Any]]:
        return [
            json.loads(item.get_bytes())
            for item in Envelope.deserialize(self.body).items
            if item.type == item_type
        ]


class FakeSentry:
    """A Sentry stand-in on 127.0.0.1: records each POST, then answers with the next reply of
    `script` (200 once it is empty). While `answering` is clear, it holds every answer."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.script: list[Reply | None] = []
        self.received: list[Received] = []
        self.answering = threading.Event()
        self.answering.set()
        self.connections = 0
        self.failed_connections = 0  # a client that gave up, on the certificate say
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._server.tls = tls
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def dsn(self) -> str:
        scheme = "http" if self._server.tls is None else "https"
        return f"{scheme}://public@127.0.0.1:{self.port}/1"

    def answer(self, *replies: Reply | None) -> None:
        with self._lock:
            self.script.extend(replies)

    def items(self, item_type: str) -> list[dict[str, Any]]:
        """The items of this type in everything received, in order."""
        return [found for received in list(self.received) for found in received.items(item_type)]

    def messages(self) -> list[str]:
        """The messages of the error events received, in order."""
        return [str(event.get("message")) for event in self.items("event")]

    def discarded(self) -> dict[tuple[str, str], int]:
        """{(reason, category): quantity} over all client reports received."""
        totals: dict[tuple[str, str], int] = {}
        for report in self.items("client_report"):
            for entry in report["discarded_events"]:
                key = (entry["reason"], entry["category"])
                totals[key] = totals.get(key, 0) + entry["quantity"]
        return totals

    def close(self) -> None:
        self.answering.set()
        self._server.shutdown()
        self._server.server_close()

    def _record(self, received: Received) -> Reply | None:
        with self._lock:
            self.received.append(received)
        self.answering.wait(10)
        with self._lock:
            return self.script.pop(0) if self.script else Reply()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeSentry
    tls: ssl.SSLContext | None

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        self.fake.connections += 1
        if self.tls is not None:  # the handshake happens in the handler's thread
            connection = self.tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (say, on the server's certificate): counted, not printed."""
        self.fake.failed_connections += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10

    def setup(self) -> None:
        connection = self.request
        connection.settimeout(self.timeout)
        if isinstance(connection, ssl.SSLSocket):
            connection.do_handshake()
        super().setup()

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        gzipped = self.headers.get("Content-Encoding") == "gzip"
        received = Received(
            self.path,
            {name.lower(): value for name, value in self.headers.items()},
            raw,
            gzip.decompress(raw) if gzipped else raw,
        )
        reply = cast(_Server, self.server).fake._record(received)
        if reply is DROP:
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def fake_sentry() -> Iterator[FakeSentry]:
    server = FakeSentry()
    yield server
    server.close()


@dataclass(frozen=True, slots=True)
class Tls:
    """A throwaway CA, a server certificate for 127.0.0.1 it signed, and a CA that did not; and
    one the CA signed for another host."""

    ca_file: Path
    other_ca_file: Path
    server_context: ssl.SSLContext
    other_host_context: ssl.SSLContext


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    import trustme  # a dev dependency: certificates made for the test, never the network

    directory = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    other_host = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("sentry.example.com").configure_cert(other_host)
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    other.cert_pem.write_to_path(str(directory / "other-ca.pem"))
    return Tls(directory / "ca.pem", directory / "other-ca.pem", context, other_host)


@pytest.fixture
def tls_sentry(tls: Tls) -> Iterator[FakeSentry]:
    server = FakeSentry(tls.server_context)
    yield server
    server.close()


class LoopbackServer:
    """A TCP server on 127.0.0.1 that serves each connection (`_serve`) in a thread of its own and
    counts them in `connections`."""

    def __init__(self) -> None:
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        raise NotImplementedError


class ConnectProxy(LoopbackServer):
    """An HTTP proxy on 127.0.0.1 that tunnels (CONNECT) to 127.0.0.1 only; keeps each request's
    head in `requests`."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        super().__init__()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                head += chunk
            self.requests.append(head.partition(b"\r\n\r\n")[0])
            method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            host, _, port = target.rpartition(b":")
            if method != b"CONNECT" or host not in (b"127.0.0.1", b"localhost"):
                connection.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as upstream:
                connection.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                _relay(connection, upstream)


def _relay(one: socket.socket, other: socket.socket) -> None:
    peers = {one: other, other: one}
    while True:
        readable, _, _ = select.select(list(peers), [], [], 10)
        if not readable:
            return
        for source in readable:
            data = source.recv(65536)
            if not data:
                return
            peers[source].sendall(data)


@pytest.fixture
def connect_proxy() -> Iterator[ConnectProxy]:
    proxy = ConnectProxy()
    yield proxy
    proxy.close()


# ---- the transport under test --------------------------------------------------------------------

#: Environment variables that would change where the transport connects or what it trusts.
NETWORK_VARIABLES = (
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CLIENT_CERT_FILE",
    "CLIENT_KEY_FILE",
)


@pytest.fixture
def clean_network_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy and no CA bundle from the developer's or CI's environment."""
    for name in NETWORK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


TransportFactory = Callable[..., SentryTransport]


@pytest.fixture
def new_transport(clean_network_environment: None) -> Iterator[TransportFactory]:
    """Makes `SentryTransport`s for a DSN and SDK options; kills them after the test."""
    made: list[SentryTransport] = []

    def make(dsn: str, **options: Any) -> SentryTransport:
        transport = SentryTransport({"dsn": dsn, **options})
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.kill()
