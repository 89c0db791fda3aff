"""One kept-alive HTTP/1.1 connection straight to Sentry, for the transport's thread.

urllib3 (and http.client under it) took 136 to 178 us of CPU to post one envelope on loopback,
most of it building and parsing headers through general-purpose layers; this exchange takes about
8 us (the template's benchmarks/http_clients.py). It is used when no proxy is configured; with a
proxy, delivery.py goes through urllib3, which does CONNECT tunnels and SOCKS.

What it does, and no more: a POST with a `Content-Length` body; an answer with a `Content-Length`
body, a chunked one, or one that ends with the connection (HTTP/1.0); the connection is kept
unless the server says `Connection: close` (or HTTP/1.0 without keep-alive), and is not reused if
the server closed it while it was idle. TLS is verified with the context it is given (host name
included). Every post is bounded by `timeout` seconds in all, connecting included.
"""

import select
import socket
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MAX_HEAD_BYTES = 65_536


class ConnectError(OSError):
    """The connection could not be opened; the cause is the socket's or the resolver's error."""


class BrokenConnectionError(OSError):
    """The server closed the connection, or sent something that is not an HTTP answer."""


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    headers: dict[str, str]  # names in lower case


class DirectConnection:
    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        *,
        tls: ssl.SSLContext | None,
        socket_options: Iterable[tuple[int, int, int]],
        timeout: float,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._tls = tls
        self._socket_options = list(socket_options)
        default = 443 if tls is not None else 80
        name = f"[{host}]" if ":" in host else host
        authority = name if port == default else f"{name}:{port}"
        self._request_line = f"POST {path} HTTP/1.1\r\nHost: {authority}\r\n".encode("latin-1")
        self._socket: socket.socket | None = None
        self._buffer = b""

    def post(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Send `body`; raise OSError (ConnectError, BrokenConnectionError, TimeoutError, ssl's)."""
        deadline = time.monotonic() + self.timeout
        if self._socket is not None and _closed_by_peer(self._socket):
            self.close()
        if self._socket is None:
            self._socket = self._connect(deadline)
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = f"{fields}Content-Length: {len(body)}\r\n\r\n".encode("latin-1")
        try:
            self._socket.settimeout(_remaining(deadline))
            self._socket.sendall(self._request_line + head + body)
            reply, keep = self._read_reply(deadline)
        except BaseException:
            self.close()
            raise
        if not keep or self._buffer:  # bytes past the answer: nothing asked for them
            self.close()
        return reply

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._buffer = b""

    def _connect(self, deadline: float) -> socket.socket:
        try:
            raw = socket.create_connection((self.host, self.port), timeout=_remaining(deadline))
        except (TimeoutError, socket.gaierror):
            raise
        except OSError as error:
            raise ConnectError(error.errno, error.strerror or str(error)) from error
        try:
            for option in self._socket_options:
                raw.setsockopt(*option)
            if self._tls is None:
                return raw
            return self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def _read_reply(self, deadline: float) -> tuple[Reply, bool]:
        head = self._read_until(b"\r\n\r\n", deadline, MAX_HEAD_BYTES)
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise BrokenConnectionError(f"not an HTTP answer: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(code)
        connection = headers.get("connection", "").lower()
        keep = connection != "close" and (version != "HTTP/1.0" or connection == "keep-alive")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            self._skip_chunks(deadline)
        elif "content-length" in headers:
            try:
                self._read_exactly(int(headers["content-length"]), deadline)
            except ValueError:
                raise BrokenConnectionError("a Content-Length that is not a number") from None
        elif status >= 200 and status not in (204, 304):
            self._read_to_end(deadline)
            keep = False
        return Reply(status, reason, headers), keep

    def _skip_chunks(self, deadline: float) -> None:
        while True:
            size_line = self._read_until(b"\r\n", deadline, MAX_HEAD_BYTES)
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise BrokenConnectionError("a malformed chunk size") from None
            if size == 0:
                while self._read_until(b"\r\n", deadline, MAX_HEAD_BYTES):  # trailers
                    pass
                return
            self._read_exactly(size + 2, deadline)

    def _read_until(self, marker: bytes, deadline: float, limit: int) -> bytes:
        while marker not in self._buffer:
            if len(self._buffer) > limit:
                raise BrokenConnectionError("an answer's head is too long")
            self._receive(deadline)
        found, _, self._buffer = self._buffer.partition(marker)
        return found

    def _read_exactly(self, count: int, deadline: float) -> None:
        while len(self._buffer) < count:
            self._receive(deadline)
        self._buffer = self._buffer[count:]

    def _read_to_end(self, deadline: float) -> None:
        try:
            while True:
                self._receive(deadline)
        except BrokenConnectionError:
            self._buffer = b""

    def _receive(self, deadline: float) -> None:
        if self._socket is None:
            raise BrokenConnectionError("the connection is closed")
        self._socket.settimeout(_remaining(deadline))
        chunk = self._socket.recv(65_536)
        if not chunk:
            raise BrokenConnectionError("the server closed the connection")
        self._buffer += chunk


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle kept-alive connection can be read from: closed, or something unasked."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
