"""Delivery of Sentry envelopes: one kept-alive HTTP connection, written to by a background thread.

The SDK's own HTTP transport spent several hundred microseconds of CPU per envelope on the
template's benchmark machine (urllib3's pool and response objects, gzip at level 9, and the SDK's
instrumentation of http.client, which it then has to skip for its own requests): in a service that
traces one request in ten, a large part of what tracing cost (docs/adr/0003). This transport writes
each envelope to one kept-alive connection and reads the answer with a small parser, for a fraction
of that. What it keeps from the SDK's transport:

- nothing is sent on the request path: `capture_envelope` only queues, up to the
  `transport_queue_size` option; beyond that envelopes are dropped and counted;
- rate limits are honoured: `X-Sentry-Rate-Limits` per data category, `Retry-After` on 429;
- TLS with the `ca_certs` option or certifi's bundle, client certificates (`cert_file`,
  `key_file`), HTTP proxies from the options or the environment (`https_proxy`, `http_proxy`,
  `no_proxy`); for a SOCKS proxy, `transport_class` picks the SDK's own transport instead.

What it adds: a send may take `SEND_TIMEOUT_SECONDS`, not the SDK's 30; after a failed send it
backs off (`BACKOFF_SECONDS` doubling up to `MAX_BACKOFF_SECONDS`) rather than try every envelope
against a server that is down; and the service's log says once that Sentry is not accepting events
and once that it accepts them again (the SDK itself is silent unless `debug` is on).

With a spool (`use_spool`, app/sentry_spool.py), error events that cannot be delivered (no
connection, timeout, 5xx, 429 or a rate limit on their category) are kept on disk and sent in order
once Sentry answers again, before any newer one. Transactions are not kept: in an outage they
would fill the spool and push the errors out; they are dropped, as without a spool.
"""

import contextlib
import gzip
import logging
import os
import select
import socket
import ssl
import threading
import time
import urllib.request
from base64 import b64encode
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from sentry_sdk.consts import VERSION, EndpointType
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import HttpTransport, Transport
from sentry_sdk.utils import Dsn

from app.sentry_integration.spool import Spool, Spooled

logger = logging.getLogger("app.sentry")

#: How long connecting, sending an envelope or waiting for the answer may take.
SEND_TIMEOUT_SECONDS = 5.0
#: After a failed send, envelopes are dropped for this long, doubling with each further failure.
BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
#: Without a Retry-After header, a 429 answer stops sending for this long (as the SDK does).
DEFAULT_RETRY_AFTER_SECONDS = 60.0
#: Bodies this large are gzipped (level 1); smaller ones fit in a few packets as they are.
COMPRESS_FROM_BYTES = 4096
#: Dropped envelopes because the queue is full are logged at most this often.
QUEUE_FULL_LOG_INTERVAL_SECONDS = 60.0
#: An answer's head larger than this is not from a Sentry server.
MAX_HEAD_BYTES = 65536
#: Data categories kept in the spool when they cannot be delivered (see the module's docstring).
SPOOLED_CATEGORIES = frozenset({"error", "default", "security", "attachment", "monitor"})
#: How often an idle process looks for envelopes spooled by others (or by its previous run).
SPOOL_SCAN_SECONDS = 5.0
#: Spooled envelopes sent in a row before the queue is looked at again.
SPOOL_BATCH = 50


class SendError(Exception):
    """An envelope could not be delivered; the message says why, for the log."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What the transport needs from the server's answer."""

    status: int
    rate_limits: str | None = None
    retry_after: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """Where envelopes go: the DSN's server, directly or through an HTTP proxy."""

    scheme: str
    host: str
    port: int
    path: str
    proxy: tuple[str, int] | None = None
    proxy_authorization: str | None = None
    proxy_headers: tuple[tuple[str, str], ...] = ()

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


def _proxy_url(options: dict[str, Any], scheme: str, host: str) -> str | None:
    """The proxy for the DSN's server, as the SDK resolves it: the `https_proxy` option for https
    DSNs, then `http_proxy`, then the environment's proxies unless `no_proxy` matches the host.
    An option set to "" turns the proxy off."""
    environment = urllib.request.getproxies()
    bypass = bool(urllib.request.proxy_bypass_environment(host, environment))  # type: ignore[attr-defined]
    proxy = None
    if scheme == "https" and options.get("https_proxy") != "":
        proxy = options.get("https_proxy") or (None if bypass else environment.get("https"))
    if not proxy and options.get("http_proxy") != "":
        proxy = options.get("http_proxy") or (None if bypass else environment.get("http"))
    return proxy or None


def target_for(options: dict[str, Any], parsed_dsn: Any) -> Target | None:
    """The `Target` for these SDK options, or None if a proxy this transport cannot use is set."""
    url = urlsplit(parsed_dsn.to_auth().get_api_url(EndpointType.ENVELOPE))
    scheme, host = url.scheme, url.hostname or ""
    port = url.port or (443 if scheme == "https" else 80)
    proxy = _proxy_url(options, scheme, host)
    if proxy is None:
        return Target(scheme, host, port, url.path)
    parsed = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if parsed.scheme != "http" or not parsed.hostname:
        return None
    authorization = None
    if parsed.username is not None:
        credentials = f"{unquote(parsed.username)}:{unquote(parsed.password or '')}"
        authorization = "Basic " + b64encode(credentials.encode()).decode("ascii")
    headers = tuple((options.get("proxy_headers") or {}).items())
    return Target(
        scheme, host, port, url.path, (parsed.hostname, parsed.port or 80), authorization, headers
    )


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    import certifi

    context = ssl.create_default_context(
        cafile=options.get("ca_certs")
        or os.environ.get("SSL_CERT_FILE")
        or os.environ.get("REQUESTS_CA_BUNDLE")
        or certifi.where()
    )
    cert_file = options.get("cert_file") or os.environ.get("CLIENT_CERT_FILE")
    if cert_file:
        context.load_cert_chain(
            cert_file, options.get("key_file") or os.environ.get("CLIENT_KEY_FILE")
        )
    return context


class Connection:
    """One HTTP/1.1 connection to `target`, opened on first use and reopened when it was closed."""

    def __init__(self, target: Target, tls_context: Callable[[], ssl.SSLContext]) -> None:
        self.target = target
        self._tls_context = tls_context
        self._socket: socket.socket | None = None
        self._buffer = b""

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
        self._socket, self._buffer = None, b""

    def post(self, head: bytes, body: bytes) -> Answer:
        """Send one request (`head` ends with the blank line) and read its answer."""
        if self._closed_by_server():
            self.close()
        if self._socket is None:
            self._socket = self._open()
        try:
            self._socket.sendall(head + body)
            answer, keep_alive = self._read_answer()
        except (OSError, ValueError) as error:
            self.close()
            raise SendError(f"{type(error).__name__}: {error}") from None
        if not keep_alive:
            self.close()
        return answer

    def _closed_by_server(self) -> bool:
        """Whether the kept-alive connection has been closed (or written to) by the server.

        Checked before each send, so that an envelope is never written to a connection the server
        has already given up on (a retry after such a write could deliver it twice).
        """
        connection = self._socket
        if connection is None:
            return False
        if isinstance(connection, ssl.SSLSocket) and connection.pending():
            return True
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable)

    def _open(self) -> socket.socket:
        target = self.target
        address = target.proxy or (target.host, target.port)
        try:
            raw = socket.create_connection(address, timeout=SEND_TIMEOUT_SECONDS)
        except OSError as error:
            raise SendError(f"cannot connect to {address[0]}:{address[1]} ({error})") from None
        try:
            with contextlib.suppress(OSError):  # not every socket is TCP (tests use pairs)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if target.proxy is not None and target.tls:
                self._tunnel(raw)
            if target.tls:
                return self._tls_context().wrap_socket(raw, server_hostname=target.host)
        except (OSError, ValueError) as error:
            raw.close()
            raise SendError(f"cannot open a connection to {target.host} ({error})") from None
        return raw

    def _tunnel(self, raw: socket.socket) -> None:
        """Ask the HTTP proxy for a tunnel to the server (CONNECT), for TLS through it."""
        target = self.target
        lines = [f"CONNECT {target.host}:{target.port} HTTP/1.1", f"Host: {target.host}"]
        if target.proxy_authorization:
            lines.append(f"Proxy-Authorization: {target.proxy_authorization}")
        lines += [f"{name}: {value}" for name, value in target.proxy_headers]
        raw.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self._socket = raw
        try:
            head = self._read_head()
        finally:
            self._socket, self._buffer = None, b""
        status = _status(head)
        if status != 200:
            raise ValueError(f"the proxy answered {status} to CONNECT")

    def _receive(self) -> bytes:
        if self._socket is None:
            raise ConnectionError("not connected")
        chunk = self._socket.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def _read_head(self) -> bytes:
        while b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise ValueError("the answer's head is too large")
            self._buffer += self._receive()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        return head

    def _read_answer(self) -> tuple[Answer, bool]:
        head = self._read_head()
        lines = head.split(b"\r\n")
        status = _status(head)
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        keep_alive = lines[0].startswith(b"HTTP/1.1") and headers.get(b"connection") != b"close"
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            self._skip_chunks()
        elif b"content-length" in headers:
            self._skip(int(headers[b"content-length"]))
        elif status not in (204, 304):
            keep_alive = False  # the body ends when the server closes the connection
            self._buffer = b""
        answer = Answer(
            status,
            _text(headers.get(b"x-sentry-rate-limits")),
            _text(headers.get(b"retry-after")),
        )
        return answer, keep_alive

    def _skip(self, length: int) -> None:
        while len(self._buffer) < length:
            self._buffer += self._receive()
        self._buffer = self._buffer[length:]

    def _skip_chunks(self) -> None:
        while True:
            while b"\r\n" not in self._buffer:
                self._buffer += self._receive()
            size_line, _, self._buffer = self._buffer.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            self._skip(size + 2)  # the chunk and its CRLF
            if size == 0:
                return


def _status(head: bytes) -> int:
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError("not an HTTP answer")
    return int(parts[1])


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def parse_rate_limits(header: str, now: float) -> dict[str | None, float]:
    """`X-Sentry-Rate-Limits` as {data category (None: all): time until which it is limited}."""
    limits: dict[str | None, float] = {}
    for limit in header.split(","):
        fields = limit.strip().split(":")
        try:
            until = now + float(fields[0])
        except ValueError:
            continue
        categories = fields[1].split(";") if len(fields) > 1 and fields[1] else [""]
        for category in categories:
            key = category or None
            limits[key] = max(until, limits.get(key, 0.0))
    return limits


def retry_after_seconds(value: str | None) -> float:
    if value is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value))
    return DEFAULT_RETRY_AFTER_SECONDS


class SentryTransport(Transport):
    """See the module's docstring. One instance per process that sends to Sentry."""

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        target = None if self.parsed_dsn is None else target_for(options, self.parsed_dsn)
        if self.parsed_dsn is None or target is None:
            raise ValueError("SentryTransport needs a DSN and no proxy but an HTTP one")
        auth = self.parsed_dsn.to_auth(f"sentry.python/{VERSION}")
        self._head = self._request_head(target, auth.to_header())
        self._connection = Connection(target, lambda: _tls_context(options))
        self._capacity = max(1, int(options.get("transport_queue_size") or 100))
        self._queue: deque[Envelope] = deque()
        self._condition = threading.Condition()
        self._busy = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._limits: dict[str | None, float] = {}
        self._retry_at = 0.0
        self._backoff = BACKOFF_SECONDS
        self._failing = False
        self._dropped_full = 0
        self._full_logged_at = -QUEUE_FULL_LOG_INTERVAL_SECONDS
        self._spool: Spool | None = None
        self._backlog = False  # the spool holds envelopes to send before any new one
        self._next_scan = 0.0
        self._resume_at = 0.0  # a rate limit holds the oldest spooled envelope until then

    def use_spool(self, spool: Spool) -> bool:
        """Keep undeliverable error events in `spool`; returns False if its directory is unusable.

        If the spool holds envelopes from an earlier run, sending them starts now.
        """
        if not spool.prepare():
            return False
        with self._condition:
            self._spool = spool
            self._backlog = bool(spool.pending())
            if self._backlog and self._pid != os.getpid():
                self._start()
        return True

    @staticmethod
    def _request_head(target: Target, auth_header: str) -> str:
        path = target.path
        if target.proxy is not None and not target.tls:  # a plain proxy takes the whole URL
            path = f"http://{target.host}:{target.port}{path}"
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {target.host}" + ("" if target.port in (80, 443) else f":{target.port}"),
            f"User-Agent: sentry.python/{VERSION}",
            f"X-Sentry-Auth: {auth_header}",
            "Content-Type: application/x-sentry-envelope",
        ]
        if target.proxy is not None and not target.tls:
            if target.proxy_authorization:
                lines.append(f"Proxy-Authorization: {target.proxy_authorization}")
            lines += [f"{name}: {value}" for name, value in target.proxy_headers]
        return "\r\n".join(lines) + "\r\n"

    # ---- the request path: queue only ------------------------------------------------------

    def capture_envelope(self, envelope: Envelope) -> None:
        with self._condition:
            if self._pid != os.getpid():  # first use, or a forked worker (gunicorn --preload)
                self._start()
            if len(self._queue) >= self._capacity:
                self._dropped_full += 1
                self._log_full_queue()
                return
            self._queue.append(envelope)
            self._condition.notify()

    def _start(self) -> None:
        self._queue.clear()
        self._connection.close()
        self._busy = self._closing = False
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="sentry-transport", daemon=True)
        self._thread.start()

    def _log_full_queue(self) -> None:
        now = time.monotonic()
        if now - self._full_logged_at >= QUEUE_FULL_LOG_INTERVAL_SECONDS:
            self._full_logged_at = now
            logger.warning(
                "Sentry events are produced faster than they can be sent: %d dropped so far "
                "(queue of %d). The service is not affected.",
                self._dropped_full,
                self._capacity,
            )

    # ---- the background thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._closing:
                    wait = self._spool_wait()
                    if wait is not None and wait <= 0:
                        break
                    self._condition.wait(wait)
                if self._closing:
                    return
                envelope = self._queue.popleft() if self._queue else None
                self._busy = True
            try:
                if envelope is not None:
                    self._deliver(envelope)
                if self._spool is not None:
                    self._send_spooled()
            except Exception:  # never let one envelope stop the thread
                logger.debug("Sentry envelope could not be sent", exc_info=True)
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()

    def _spool_wait(self) -> float | None:
        """Seconds until the spool is due to be looked at; None without a spool."""
        if self._spool is None:
            return None
        now = time.monotonic()
        if self._backlog:
            return max(0.0, self._retry_at - now, self._resume_at - now)
        return max(0.0, self._next_scan - now)

    def _deliver(self, envelope: Envelope) -> None:
        now = time.monotonic()
        categories = tuple(item.data_category for item in envelope.items)
        if self._spool is not None and SPOOLED_CATEGORIES.intersection(categories):
            held = now < self._retry_at or any(self._limited(c, now) for c in categories)
            body = envelope.serialize()
            if held or self._backlog or self._post(body) == "retry":
                self._keep(body, categories)  # in order: after what is spooled already
            return
        if now < self._retry_at:
            return  # backing off after a failure: the envelope is dropped
        items = [item for item in envelope.items if not self._limited(item.data_category, now)]
        if not items:
            return
        if len(items) < len(envelope.items):
            envelope = Envelope(headers=envelope.headers, items=items)
        self._post(envelope.serialize())

    def _post(self, body: bytes) -> str:
        """Send a serialized envelope: "sent", "retry" (worth sending again later) or "refused"."""
        head = self._head
        if len(body) >= COMPRESS_FROM_BYTES:
            body = gzip.compress(body, compresslevel=1)
            head += "Content-Encoding: gzip\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        try:
            answer = self._connection.post(head.encode("latin-1"), body)
        except SendError as error:
            self._failed(str(error))
            return "retry"
        return self._answered(answer)

    def _keep(self, body: bytes, categories: tuple[str, ...]) -> None:
        if self._spool is None:
            return
        try:
            self._spool.put(body, categories)
        except OSError as error:
            logger.warning("Sentry spool: an event could not be written (%s); dropped.", error)
            return
        self._backlog = True

    def _send_spooled(self) -> None:
        """Send what the spool holds, oldest first, while Sentry accepts it."""
        spool = self._spool
        now = time.monotonic()
        if spool is None or now < max(self._retry_at, self._resume_at):
            return
        if not self._backlog and now < self._next_scan:
            return
        self._next_scan = now + SPOOL_SCAN_SECONDS
        with spool.delivering() as ours:
            if not ours:  # another process is sending them; look again later
                self._backlog = False
                return
            spool.enforce_limits()
            pending = spool.pending()
            for spooled in pending[:SPOOL_BATCH]:
                if self._closing or self._queue_is_filling() or not self._send_one(spool, spooled):
                    return  # still a backlog: the thread comes back to it
            self._backlog = len(pending) > SPOOL_BATCH
            if not self._backlog:
                spool.report_drops()

    def _send_one(self, spool: Spool, spooled: Spooled) -> bool:
        """Send one spooled envelope; False if Sentry did not take it and sending should pause."""
        now = time.monotonic()
        if any(self._limited(category, now) for category in spooled.categories):
            limits = self._limits
            self._resume_at = max(
                limits.get(None, 0.0), *(limits.get(c, 0.0) for c in spooled.categories)
            )
            return False
        body = spool.read(spooled)
        if body is None:  # damaged (logged and removed) or gone
            return True
        outcome = self._post(body)
        if outcome == "retry":
            return False
        spool.remove(spooled)  # sent, or refused for good (a retry would be refused too)
        return True

    def _queue_is_filling(self) -> bool:
        return len(self._queue) >= self._capacity // 2

    def _limited(self, category: str, now: float) -> bool:
        limits = self._limits
        return bool(limits) and (limits.get(category, 0.0) > now or limits.get(None, 0.0) > now)

    def _answered(self, answer: Answer) -> str:
        now = time.monotonic()
        if answer.rate_limits:
            for category, until in parse_rate_limits(answer.rate_limits, now).items():
                self._limits[category] = max(until, self._limits.get(category, 0.0))
        elif answer.status == 429:
            self._limits[None] = now + retry_after_seconds(answer.retry_after)
        if answer.status == 429:
            self._report_outage("rate limited: HTTP 429")
            return "retry"
        if answer.status >= 500:
            self._failed(f"HTTP {answer.status}")
            return "retry"
        if answer.status >= 300:
            self._report_outage(f"HTTP {answer.status}")  # refused: a retry would be refused too
            return "refused"
        self._backoff = BACKOFF_SECONDS
        if self._failing:
            self._failing = False
            logger.info("Sentry is accepting events again.")
        return "sent"

    def _failed(self, reason: str) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)
        self._report_outage(reason)

    def _report_outage(self, reason: str) -> None:
        if not self._failing:
            self._failing = True
            kept = (
                "" if self._spool is None else f"error events are kept in {self._spool.directory}, "
            )
            logger.warning(
                "Sentry is not accepting events (%s); %sthe rest are dropped until it does. "
                "The service is not affected.",
                reason,
                kept,
            )

    # ---- flush and shutdown ---------------------------------------------------------------

    def pending(self) -> int:
        """Envelopes queued or being sent."""
        with self._condition:
            return len(self._queue) + self._busy

    def flush(self, timeout: float, callback: Callable[[int, float], None] | None = None) -> None:
        """Wait up to `timeout` seconds for the queue to be sent; say so if events are left."""
        deadline = time.monotonic() + timeout
        with self._condition:
            waiting = len(self._queue) + self._busy
            if waiting and callback is not None:
                callback(waiting, timeout)
            while (self._queue or self._busy) and self._pid == os.getpid():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            unsent = len(self._queue) + self._busy if self._pid == os.getpid() else 0
        if unsent:
            self._report_outage(f"{unsent} events still unsent after waiting {timeout:g} s")

    def kill(self) -> None:
        with self._condition:
            self._closing = True
            left = list(self._queue) if self._pid == os.getpid() else []
            self._queue.clear()
            self._condition.notify_all()
        if self._spool is not None:  # what is still queued survives the process
            for envelope in left:
                categories = tuple(item.data_category for item in envelope.items)
                if SPOOLED_CATEGORIES.intersection(categories):
                    self._keep(envelope.serialize(), categories)
            self._spool.report_drops()
        self._connection.close()

    def is_healthy(self) -> bool:
        return not self._failing and len(self._queue) < self._capacity


def transport_class(dsn: str) -> type[Transport]:
    """`SentryTransport`, or the SDK's own transport if the environment names a proxy that is
    not an HTTP proxy (SOCKS, for one), which only the SDK's transport can use."""
    parsed = Dsn(dsn)
    return SentryTransport if target_for({}, parsed) is not None else HttpTransport
