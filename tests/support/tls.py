"""Real TLS on loopback for the end-to-end tests: a throwaway CA, a TLS front, a CONNECT proxy.

- `Authority`: a certificate authority made for one test run (trustme), its certificate written
  as a PEM bundle a service can be given (SENTRY_CA_CERTS), and server certificates it signs:
  for 127.0.0.1, for another name, or already expired.
- `TlsFront`: listens on 127.0.0.1, terminates TLS with one such certificate (Python's `ssl`,
  i.e. OpenSSL) and forwards the decrypted bytes to a plain HTTP server (Bugsink's port). It
  records every handshake: done, or failed and with which error, as the server saw it.
- `ConnectProxy`: an HTTP proxy on 127.0.0.1 that only tunnels (`CONNECT host:port`), as an
  https client behind a corporate proxy uses one. It records each request line and each tunnel.

Both servers are threads of the test process: one that accepts, one per connection; each
connection is pumped by a single thread (no SSL object is shared between threads). Leaving
their `with` block closes the listener and every open connection.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import trustme

#: Connecting, a TLS handshake, a proxy's request head: each may take this long.
STEP_TIMEOUT = 5.0
#: How long a pumping thread waits in one select() before it looks whether to stop.
POLL_SECONDS = 0.2
#: A connection with no traffic either way for this long is closed.
IDLE_TIMEOUT = 60.0
MAX_HEAD_BYTES = 65536


class Authority:
    """A throwaway CA; `pem` is its certificate as a file, a bundle a client can trust."""

    def __init__(self, directory: Path, name: str = "template-tests") -> None:
        self.name = name
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._ca = trustme.CA(organization_name=name)
        self.pem = directory / f"{name}-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.pem))

    def server_certificate(self, *identities: str, expired: bool = False) -> tuple[Path, Path]:
        """A certificate for `identities` (default: 127.0.0.1) and its key, as PEM files."""
        identities = identities or ("127.0.0.1",)
        validity: dict[str, datetime] = {}
        if expired:
            now = datetime.now(UTC)
            validity = {"not_before": now - timedelta(days=30), "not_after": now - timedelta(1)}
        leaf = self._ca.issue_cert(*identities, **validity)
        stem = "-".join(identities).replace("*", "star") + ("-expired" if expired else "")
        chain = self.directory / f"{self.name}-{stem}.pem"
        key = self.directory / f"{self.name}-{stem}.key"
        chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())
        return chain, key

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA only (for checks from the test process)."""
        return ssl.create_default_context(cafile=str(self.pem))


@dataclass(frozen=True)
class Handshake:
    """One TLS handshake as the front saw it: `error` is None when it succeeded."""

    peer: str
    error: str | None


def _pump(left: socket.socket, right: socket.socket, stopping: threading.Event) -> None:
    """Copy bytes both ways until either side closes, `stopping` is set, or nothing moves for
    IDLE_TIMEOUT. Decrypted bytes an SSL socket already holds are read before select()."""
    sockets = (left, right)
    last_traffic = time.monotonic()
    while not stopping.is_set():
        try:
            ready = [s for s in sockets if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready, _, _ = select.select(sockets, [], [], POLL_SECONDS)
        except (OSError, ValueError):  # closed under it: the server is stopping
            return
        if not ready:
            if time.monotonic() - last_traffic > IDLE_TIMEOUT:
                return
            continue
        for source in ready:
            target = right if source is left else left
            try:
                data = source.recv(65536)
            except (ssl.SSLWantReadError, TimeoutError):
                continue  # a TLS record not complete yet, or one without application data
            except OSError:
                return
            if not data:
                return
            try:
                target.sendall(data)
            except OSError:
                return
            last_traffic = time.monotonic()


class _LoopbackServer:
    """A listening socket on 127.0.0.1 and a thread per accepted connection."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(POLL_SECONDS)
        self._port: int = self._listener.getsockname()[1]  # also known once it is closed
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    @property
    def port(self) -> int:
        return self._port

    def __enter__(self) -> Self:
        self._acceptor.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._acceptor.join(timeout=STEP_TIMEOUT)
        self._listener.close()
        with self._lock:
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.close()
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=STEP_TIMEOUT)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(
                target=self._serve, args=(connection, f"{peer[0]}:{peer[1]}"), daemon=True
            )
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _track(self, connection: socket.socket) -> socket.socket:
        with self._lock:
            self._open.add(connection)
        return connection

    def _close(self, *connections: socket.socket | None) -> None:
        for connection in connections:
            if connection is None:
                continue
            with contextlib.suppress(OSError):
                connection.close()
            with self._lock:
                self._open.discard(connection)

    def _serve(self, connection: socket.socket, peer: str) -> None:
        raise NotImplementedError


class TlsFront(_LoopbackServer):
    """TLS on 127.0.0.1:`port` with `certificate`, forwarded as plain bytes to `upstream`."""

    def __init__(self, certificate: tuple[Path, Path], upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream = upstream
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(str(certificate[0]), str(certificate[1]))
        self.handshakes: list[Handshake] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def https_dsn(self, dsn: str) -> str:
        """`dsn` (a plain http DSN of the upstream server) with https and this front's port."""
        parts = urllib.parse.urlsplit(dsn)
        key = parts.username or ""
        return urllib.parse.urlunsplit(
            ("https", f"{key}@{self.address}", parts.path, parts.query, parts.fragment)
        )

    def completed(self) -> list[Handshake]:
        with self._lock:
            return [h for h in self.handshakes if h.error is None]

    def failed(self) -> list[Handshake]:
        with self._lock:
            return [h for h in self.handshakes if h.error is not None]

    def wait_for(self, condition: Callable[[TlsFront], bool], timeout: float = 15.0) -> bool:
        """Whether `condition(self)` became true within `timeout` seconds."""
        return _wait(lambda: condition(self), timeout)

    def _serve(self, connection: socket.socket, peer: str) -> None:
        self._track(connection)
        upstream: socket.socket | None = None
        secure: ssl.SSLSocket | None = None
        try:
            connection.settimeout(STEP_TIMEOUT)
            try:
                secure = self._context.wrap_socket(connection, server_side=True)
            except (OSError, ValueError) as error:
                self._record(Handshake(peer, f"{type(error).__name__}: {error}"))
                return
            self._track(secure)
            self._record(Handshake(peer, None))
            try:
                upstream = self._track(socket.create_connection(self.upstream, STEP_TIMEOUT))
            except OSError:
                return  # the client sees the connection close, as with a server that is down
            secure.settimeout(STEP_TIMEOUT)
            upstream.settimeout(STEP_TIMEOUT)
            _pump(secure, upstream, self._stopping)
        finally:
            self._close(secure, upstream, connection)

    def _record(self, handshake: Handshake) -> None:
        with self._lock:
            self.handshakes.append(handshake)


class ConnectProxy(_LoopbackServer):
    """An HTTP proxy that tunnels `CONNECT host:port` and refuses anything else (501)."""

    def __init__(self) -> None:
        super().__init__()
        self.request_lines: list[str] = []  # the first line of every request it was sent
        self.tunnels: list[str] = []  # "host:port" of every tunnel it opened
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def seen(self) -> tuple[int, list[str], list[str]]:
        """Connections accepted, request lines and tunnels, as they are now."""
        with self._lock:
            return self.connections, list(self.request_lines), list(self.tunnels)

    def wait_for_tunnel(self, address: str, timeout: float = 15.0) -> bool:
        return _wait(lambda: address in self.seen()[2], timeout)

    def _serve(self, connection: socket.socket, peer: str) -> None:
        self._track(connection)
        with self._lock:
            self.connections += 1
        upstream: socket.socket | None = None
        try:
            connection.settimeout(STEP_TIMEOUT)
            try:
                head, rest = _read_head(connection)
            except (OSError, ValueError):
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            with self._lock:
                self.request_lines.append(request_line)
            method, _, target = request_line.partition(" ")
            target = target.rpartition(" ")[0] or target
            host, _, port = target.rpartition(":")
            if method != "CONNECT" or not host or not port.isdigit():
                connection.sendall(
                    b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
                return
            try:
                upstream = self._track(
                    socket.create_connection((host.strip("[]"), int(port)), STEP_TIMEOUT)
                )
            except OSError:
                connection.sendall(
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                return
            with self._lock:
                self.tunnels.append(target)
            connection.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            _pump(connection, upstream, self._stopping)
        except OSError:
            return
        finally:
            self._close(upstream, connection)


def _read_head(connection: socket.socket) -> tuple[bytes, bytes]:
    """A request's head (up to the blank line) and whatever came after it."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD_BYTES:
            raise ValueError("request head too large")
        chunk = connection.recv(65536)
        if not chunk:
            raise ValueError("closed before the end of the request head")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
