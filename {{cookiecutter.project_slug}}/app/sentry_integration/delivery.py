"""Delivery of Sentry envelopes over one kept-alive connection, from a background thread.

Built on sentry-sdk's public `Transport` base class and on urllib3 (which the SDK depends on), for
what the SDK's own transport does not do (docs/adr/0003):

- a send may take `SEND_TIMEOUT_SECONDS`, not the SDK's 30; after a failed send the transport
  backs off (`BACKOFF_SECONDS` doubling up to `MAX_BACKOFF_SECONDS`) rather than try every envelope
  against a server that is down; the service's log says once that Sentry is not accepting events,
  and why (a TLS certificate it cannot verify is named as such), and once that it accepts them
  again (the SDK itself is silent unless `debug` is on);
- with a spool (`use_spool`, spool.py), error events that cannot be delivered (no connection,
  timeout, 5xx, 429 or a rate limit on their category) are kept on disk and sent in order once
  Sentry answers again, before any newer one. Transactions are not kept: in an outage they would
  fill the spool and push the errors out; they are dropped, as without a spool. An envelope that
  Sentry answers with 5xx `STUCK_ATTEMPTS` times in a row, while it takes the next one, is
  dropped (logged, and reported as lost: "send_error") rather than hold back all the others;
- at shutdown (`kill`) the thread writes what is still queued to the spool, and `kill` waits for
  it up to `SHUTDOWN_JOIN_SECONDS`: only that thread touches the spool's files.

What it keeps from the SDK's transport, through documented options only:

- nothing is sent on the request path: `capture_envelope` only queues, up to the
  `transport_queue_size` option; beyond that envelopes are dropped and counted. Transactions
  linger in the queue (`LINGER_SECONDS`, `LINGER_ENVELOPES`) to be sent together; error events
  are sent at once;
- rate limits are honoured: `X-Sentry-Rate-Limits` per data category, `Retry-After` on 429;
- TLS is always verified: against the `ca_certs` option (SENTRY_CA_CERTS) if set, else
  `SSL_CERT_FILE` or `REQUESTS_CA_BUNDLE` if set, else certifi's bundle, else the system's;
  client certificates from `cert_file`/`key_file`;
- proxies: the `https_proxy`/`http_proxy` options, else the environment's (`HTTPS_PROXY`,
  `HTTP_PROXY`) unless `NO_PROXY` names the DSN's host; an option set to "" turns the proxy off.
  HTTP(S) proxies tunnel with CONNECT. A SOCKS proxy needs PySocks (urllib3's `socks` extra):
  without it, the transport says so once in the log and connects directly, as the SDK does;
- lost events are counted and reported to Sentry as client reports, as the SDK's transport does
  (`record_lost_event`; the `send_client_reports` option turns that off): attached to the next
  envelope, or sent on their own, at most every `CLIENT_REPORT_INTERVAL_SECONDS` and at a flush;
  never while Sentry cannot be reached or limits client reports: they are counted until then.

Only sentry-sdk's documented public API is used: `sentry_sdk.VERSION`, the `Transport` base class
and `Envelope`/`Item`/`PayloadRef`. The DSN is parsed here, from its documented format.
"""

import contextlib
import gzip
import http.client
import logging
import os
import socket
import ssl
import threading
import time
import urllib.request
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import urllib3
from sentry_sdk import VERSION
from sentry_sdk.envelope import Envelope, Item, PayloadRef
from sentry_sdk.transport import Transport
from urllib3.util.ssl_ import create_urllib3_context  # urllib3.util's in 2.x, not in 1.26

from app.sentry_integration.connection import BrokenConnectionError, ConnectError, DirectConnection
from app.sentry_integration.spool import Spool, Spooled

logger = logging.getLogger("app.sentry")

#: Who is sending, in the `X-Sentry-Auth` and `User-Agent` headers.
CLIENT_NAME = f"sentry.python/{VERSION}"
#: How long connecting, sending an envelope and reading the answer may take together.
SEND_TIMEOUT_SECONDS = 5.0
#: After a failed send, envelopes are dropped for this long, doubling with each further failure.
BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
#: Without a Retry-After header, a 429 answer stops sending for this long (as the SDK does).
DEFAULT_RETRY_AFTER_SECONDS = 60.0
#: Transactions wait in the queue up to LINGER_SECONDS, or until LINGER_ENVELOPES are queued, and
#: go together: waking the sending thread for each one cost more CPU than sending it. Anything
#: else (an error event) is sent at once, with whatever waits before it; so is all at a flush.
LINGER_SECONDS = 0.2
LINGER_ENVELOPES = 16
#: Bodies this large are gzipped (level 1); smaller ones fit in a few packets as they are.
COMPRESS_FROM_BYTES = 4096
#: Dropped envelopes because the queue is full are logged at most this often.
QUEUE_FULL_LOG_INTERVAL_SECONDS = 60.0
#: Data categories kept in the spool when they cannot be delivered (see the module's docstring).
SPOOLED_CATEGORIES = frozenset({"error", "default", "security", "attachment", "monitor"})
#: How often an idle process looks for envelopes spooled by others (or by its previous run).
SPOOL_SCAN_SECONDS = 5.0
#: Spooled envelopes sent in a row before the queue is looked at again.
SPOOL_BATCH = 50
#: The oldest spooled envelope answered 5xx this many times in a row is skipped once: if Sentry
#: takes the next one, it is dropped as one Sentry will never take; if not, Sentry is down.
STUCK_ATTEMPTS = 3
#: How long `kill` waits for the thread to write what is queued to the spool.
SHUTDOWN_JOIN_SECONDS = 1.0
#: Client reports (counts of lost events) are sent at most this often, and at a flush.
CLIENT_REPORT_INTERVAL_SECONDS = 30.0

# What became of a send (`_post`).
SENT = "sent"
RETRY = "retry"  # no answer, or 5xx: worth sending again later
RATE_LIMITED = "rate_limited"  # 429: worth sending again once the limit is over
REFUSED = "refused"  # another 3xx/4xx: sending it again would be refused again
TOO_LARGE = "too_large"  # 413
#: How an envelope lost after a send is reported (as the SDK's transport reports it); a 429 is
#: counted by Sentry itself.
LOSS_REASONS = {RETRY: "network_error", REFUSED: "network_error", TOO_LARGE: "send_error"}


class SendError(Exception):
    """An envelope could not be delivered; the message says why, for the log."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What the transport needs from the server's answer."""

    status: int
    rate_limits: str | None = None
    retry_after: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A DSN, `{scheme}://{public_key}[:{secret_key}]@{host}[:{port}]/{path}{project_id}`."""

    scheme: str
    host: str
    port: int
    path: str  # "/" or "/some/prefix/"
    public_key: str
    project_id: str
    secret_key: str | None = None

    @property
    def origin(self) -> str:
        """`scheme://host[:port]`, for messages (no key)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")

    @property
    def envelope_url(self) -> str:
        return f"{self.origin}{self.path}api/{self.project_id}/envelope/"

    def auth_header(self, client: str = CLIENT_NAME) -> str:
        """The `X-Sentry-Auth` header."""
        fields = f"sentry_key={self.public_key}, sentry_version=7, sentry_client={client}"
        if self.secret_key:
            fields += f", sentry_secret={self.secret_key}"
        return f"Sentry {fields}"


def parse_dsn(dsn: str) -> Endpoint:
    """The `Endpoint` of a DSN; ValueError, saying what is wrong, if it is not one."""
    parts = urlsplit(dsn.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the scheme must be http or https, not {parts.scheme!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise ValueError("it has no host")
    if not parts.username:
        raise ValueError("it has no public key (the part before '@')")
    prefix, _, project = parts.path.rpartition("/")
    if not (project.isascii() and project.isdigit()):
        raise ValueError("it does not end with a project id (a number)")
    return Endpoint(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or (443 if parts.scheme == "https" else 80),
        path=prefix + "/",
        public_key=parts.username,
        project_id=str(int(project)),
        secret_key=parts.password or None,
    )


def proxy_url(options: Mapping[str, Any], endpoint: Endpoint) -> str | None:
    """The proxy for the DSN's server, as the SDK resolves it: the `https_proxy` option for https
    DSNs, then `http_proxy`, then the environment's proxies unless `NO_PROXY` matches the host.
    An option set to "" turns the proxy off."""
    environment = urllib.request.getproxies()
    bypass = bool(urllib.request.proxy_bypass(f"{endpoint.host}:{endpoint.port}"))
    proxy = None
    if endpoint.scheme == "https" and options.get("https_proxy") != "":
        proxy = options.get("https_proxy") or (None if bypass else environment.get("https"))
    if not proxy and options.get("http_proxy") != "":
        proxy = options.get("http_proxy") or (None if bypass else environment.get("http"))
    if not proxy:
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def ca_bundle(options: Mapping[str, Any]) -> str | None:
    """The CA bundle that server certificates are verified against; None: the system's."""
    configured = (
        options.get("ca_certs")
        or os.environ.get("SSL_CERT_FILE")
        or os.environ.get("REQUESTS_CA_BUNDLE")
    )
    if configured:
        return str(configured)
    try:
        import certifi
    except ImportError:  # pragma: no cover - sentry-sdk depends on certifi
        return None
    return str(certifi.where())


def tls_context(options: Mapping[str, Any]) -> ssl.SSLContext:
    """Verification on, against `ca_bundle(options)`; a client certificate if one is configured.

    Raises ValueError, naming the file, if the CA bundle or the certificate cannot be loaded.
    """
    bundle = ca_bundle(options)
    # urllib3's own context; host names checked by it too, not only by urllib3 (connection.py).
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    context.check_hostname = True
    try:
        if bundle is None:
            context.load_default_certs()
        else:
            context.load_verify_locations(cafile=bundle)
    except (OSError, ssl.SSLError) as error:
        raise ValueError(
            f"the CA bundle {bundle} (SENTRY_CA_CERTS) cannot be used: {error}"
        ) from None
    cert_file = options.get("cert_file") or os.environ.get("CLIENT_CERT_FILE")
    if cert_file:
        key_file = options.get("key_file") or os.environ.get("CLIENT_KEY_FILE")
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as error:
            raise ValueError(
                f"the client certificate {cert_file} cannot be used: {error}"
            ) from None
    return context


def _socket_options(options: Mapping[str, Any]) -> list[tuple[int, int, int]]:
    """urllib3's (TCP_NODELAY) or the `socket_options` option; TCP keep-alive with `keep_alive`."""
    chosen = list(
        options.get("socket_options") or urllib3.connection.HTTPConnection.default_socket_options
    )
    if options.get("keep_alive"):
        for name, value in (("TCP_KEEPIDLE", 45), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
            if hasattr(socket, name):
                chosen.append((socket.IPPROTO_TCP, getattr(socket, name), value))
        chosen.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
    return chosen


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


#: http.client's own `putrequest`, taken before `sentry_sdk.init` wraps it (this module is imported
#: first). The SDK's stdlib integration wraps it to record a span and a breadcrumb for every
#: outgoing request, and takes the transport's own requests for the app's when the DSN names a
#: port: a third of the CPU of sending a transaction. The transport's connections use this one.
_PLAIN_PUTREQUEST = http.client.HTTPConnection.putrequest
if _PLAIN_PUTREQUEST.__module__ != "http.client":  # wrapped already: use it as it is
    _PLAIN_PUTREQUEST = None  # type: ignore[assignment]


class _Connection(urllib3.connection.HTTPConnection):
    def putrequest(
        self,
        method: str,
        url: str,
        skip_host: bool = False,
        skip_accept_encoding: bool = False,
    ) -> None:
        if _PLAIN_PUTREQUEST is None:
            super().putrequest(method, url, skip_host, skip_accept_encoding)
        else:
            _PLAIN_PUTREQUEST(self, method, url, skip_host, skip_accept_encoding)


class _TlsConnection(urllib3.connection.HTTPSConnection):
    putrequest = _Connection.putrequest


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Connection


class _TlsPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TlsConnection


class HttpClient:
    """POSTs to the DSN's envelope endpoint, directly or through the configured proxy.

    One urllib3 pool holding one kept-alive connection; certificate verification always on;
    no retries, no redirects; every send bounded by `timeout` seconds.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        options: Mapping[str, Any],
        *,
        timeout: float = SEND_TIMEOUT_SECONDS,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        proxy = proxy_url(options, endpoint)
        self.proxy = None if proxy is None else _redacted(proxy)
        self._timeout = urllib3.Timeout(total=timeout)
        settings: dict[str, Any] = {
            "num_pools": 1,
            "maxsize": 1,
            "retries": False,
            "timeout": self._timeout,
            "socket_options": _socket_options(options),
        }
        if endpoint.scheme == "https":
            settings["ssl_context"] = tls_context(options)
        self._pool = self._pool_manager(proxy, options, settings)
        if type(self._pool) in (urllib3.PoolManager, urllib3.ProxyManager):  # not SOCKS
            self._pool.pool_classes_by_scheme = {"http": _Pool, "https": _TlsPool}
        self._direct: DirectConnection | None = None
        if self.proxy is None:  # urllib3's general layers cost 15 times more (connection.py)
            self._direct = DirectConnection(
                endpoint.host,
                endpoint.port,
                f"{endpoint.path}api/{endpoint.project_id}/envelope/",
                tls=settings.get("ssl_context"),
                socket_options=settings["socket_options"],
                timeout=timeout,
            )

    def _pool_manager(
        self, proxy: str | None, options: Mapping[str, Any], settings: dict[str, Any]
    ) -> urllib3.PoolManager:
        if proxy is None:
            return urllib3.PoolManager(**settings)
        scheme = urlsplit(proxy).scheme
        headers = dict(options.get("proxy_headers") or {})
        if scheme.startswith("socks"):
            try:
                from urllib3.contrib.socks import SOCKSProxyManager
            except ImportError:
                logger.warning(
                    "Sentry: the SOCKS proxy %s is not used: PySocks is not installed "
                    "(pip install PySocks); events go directly to %s.",
                    self.proxy,
                    self.endpoint.origin,
                )
                self.proxy = None
                return urllib3.PoolManager(**settings)
            return SOCKSProxyManager(proxy, headers=headers or None, **settings)
        if scheme not in ("http", "https"):
            logger.warning(
                "Sentry: the proxy %s is not used: only http, https and socks proxies are; "
                "events go directly to %s.",
                self.proxy,
                self.endpoint.origin,
            )
            self.proxy = None
            return urllib3.PoolManager(**settings)
        parts = urlsplit(proxy)
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            headers.update(urllib3.util.make_headers(proxy_basic_auth=credentials))
        return urllib3.ProxyManager(_redacted(proxy), proxy_headers=headers or None, **settings)

    def post(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        """Send one envelope; SendError (its message fit for the log) if no answer came."""
        if self._direct is not None:
            try:
                reply = self._direct.post(body, headers)
            except OSError as error:
                raise SendError(describe_error(error, self)) from error
            fields = reply.headers
            return Answer(
                reply.status,
                fields.get("x-sentry-rate-limits"),
                fields.get("retry-after"),
                reply.reason,
            )
        try:
            response = self._pool.request(
                "POST",
                self.endpoint.envelope_url,
                body=body,
                headers=dict(headers),
                retries=False,
                redirect=False,
                timeout=self._timeout,
            )
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise SendError(describe_error(error, self)) from error
        return Answer(
            response.status,
            response.headers.get("X-Sentry-Rate-Limits"),
            response.headers.get("Retry-After"),
            response.reason or "",
        )

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
        self._pool.clear()


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and every exception it wraps (causes, contexts, arguments, `reason`)."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        wrapped += list(current.args)
        pending += [item for item in wrapped if isinstance(item, BaseException)]


def describe_error(error: BaseException, client: HttpClient) -> str:
    """Why a send failed, in words for the service's log."""
    origin = client.endpoint.origin
    causes = list(_causes(error))
    for cause in causes:
        # urllib3 1.26 checks host names itself, and raises its own CertificateError.
        if isinstance(cause, ssl.SSLCertVerificationError) or (
            type(cause).__name__ == "CertificateError"
        ):
            problem = getattr(cause, "verify_message", None) or str(cause)
            if "match" in problem.lower():
                advice = f"the certificate is not for {client.endpoint.host}"
            elif "expired" in problem or "not yet valid" in problem:
                advice = "the server needs a certificate valid now"
            else:
                advice = "set SENTRY_CA_CERTS to the CA bundle that signed it"
            return f"TLS certificate verify failed for {origin}: {problem}; {advice}"
    detail = _innermost(causes)
    timed_out = any(isinstance(c, TimeoutError) for c in causes)  # socket.timeout is one
    if isinstance(error, urllib3.exceptions.ProxyError):
        return f"the proxy {client.proxy} failed: {detail}"
    if any(isinstance(c, socket.gaierror) for c in causes):
        return f"cannot resolve the host of {origin}: {detail}"
    # Before the timeouts: urllib3's NewConnectionError is a ConnectTimeoutError too.
    if isinstance(error, urllib3.exceptions.NewConnectionError | ConnectError) and not timed_out:
        return f"cannot connect to {origin}: {detail}"
    if timed_out or isinstance(error, urllib3.exceptions.TimeoutError):
        return f"no answer from {origin} within {client.timeout:g} s"
    if isinstance(error, urllib3.exceptions.SSLError | ssl.SSLError):
        return f"TLS failed with {origin}: {detail}"
    if isinstance(error, urllib3.exceptions.ProtocolError | BrokenConnectionError):
        return f"the connection to {origin} broke: {detail}"
    return f"{type(error).__name__}: {error}"


def _innermost(causes: list[BaseException]) -> str:
    """The most specific message among `causes`: an OSError's strerror if there is one."""
    for cause in reversed(causes):
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    last = causes[-1]
    return str(last) or type(last).__name__


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
    """See the module's docstring. One instance per process that sends to Sentry.

    Raises ValueError if the DSN is not one, or if the CA bundle or client certificate cannot be
    loaded (`sentry_sdk.init` passes that on).
    """

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.endpoint = parse_dsn(str(options.get("dsn") or ""))
        self._http = HttpClient(self.endpoint, options)
        self._headers = {
            "User-Agent": CLIENT_NAME,
            "X-Sentry-Auth": self.endpoint.auth_header(),
            "Content-Type": "application/x-sentry-envelope",
        }
        self._capacity = max(1, int(options.get("transport_queue_size") or 100))
        self._reports_on = options.get("send_client_reports", True) is not False
        self._queue: deque[Envelope] = deque()
        self._condition = threading.Condition()
        self._busy = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._limits: dict[str | None, float] = {}
        self._retry_at = 0.0
        self._backoff = BACKOFF_SECONDS
        self._failing = False  # said so in the log; until an envelope is accepted again
        self._unreachable = False  # no answer or 5xx: client reports wait for an accepted one
        self._dropped_full = 0
        self._full_logged_at = -QUEUE_FULL_LOG_INTERVAL_SECONDS
        self._spool: Spool | None = None
        self._backlog = False  # the spool holds envelopes to send before any new one
        self._next_scan = 0.0
        self._resume_at = 0.0  # a rate limit holds the oldest spooled envelope until then
        self._server_error = 0  # the status of the last answer if it was a 5xx, else 0
        self._oldest_failures = ("", 0)  # the oldest spooled file's name, its 5xx answers in a row
        self._lost: defaultdict[tuple[str, str], int] = defaultdict(int)  # (category, reason)
        self._last_report = time.monotonic()
        self._report_now = False  # a flush asked for the client report
        self._urgent = False  # the queue holds more than lingering transactions, or a flush came
        self._oldest_at = 0.0  # when the oldest queued envelope was queued

    def use_spool(self, spool: Spool) -> bool:
        """Keep undeliverable error events in `spool`; returns False if its directory is unusable
        or unsafe (the spool logs why). Says in the log where the spool is.

        If the spool holds envelopes from an earlier run, sending them starts now.

        The spool's directory is checked and looked at here, on the calling thread (at start-up),
        before the transport's thread can see the spool; from then on only that thread uses it.
        """
        spool.on_drop = self._spool_dropped
        if not spool.prepare():
            return False
        logger.info(
            "Sentry spool: undeliverable error events wait in %s; in a container, put it on a "
            "persistent volume (SENTRY_SPOOL_DIR).",
            spool.directory,
        )
        backlog = bool(spool.pending())
        with self._condition:
            self._spool = spool
            self._backlog = backlog
            if self._backlog and self._pid != os.getpid():
                self._start()
        return True

    # ---- the request path: queue only ------------------------------------------------------

    def capture_envelope(self, envelope: Envelope) -> None:
        with self._condition:
            if self._pid != os.getpid():  # first use, or a forked worker (gunicorn --preload)
                self._start()
            if len(self._queue) >= self._capacity:
                self._dropped_full += 1
                self._log_full_queue()
                full = True
            else:
                self._queue.append(envelope)
                if any(item.type != "transaction" for item in envelope.items):
                    self._urgent = True
                if len(self._queue) == 1:  # the thread may be waiting with no time limit
                    self._oldest_at = time.monotonic()
                    self._condition.notify()
                elif self._urgent or len(self._queue) >= LINGER_ENVELOPES:
                    self._condition.notify()
                full = False
        if full:
            self._record_envelope("queue_overflow", envelope)

    def record_lost_event(
        self,
        reason: str,
        data_category: str | None = None,
        item: Item | None = None,
        *,
        quantity: int = 1,
    ) -> None:
        """Count a lost event for the next client report (the SDK's client calls this too, e.g.
        with "before_send", "event_processor" or "sample_rate").

        With `item`, its data category and quantity are used, as the SDK's transport does:
        a transaction also counts its spans, an attachment its bytes, a batch its items.
        """
        if not self._reports_on:
            return
        if item is None:
            if data_category is None:
                raise TypeError("data category not provided")
            self._count(data_category, reason, quantity)
            return
        category = item.data_category
        quantity = 1
        if category == "transaction":
            event = item.get_transaction_event() or {}
            self._count("span", reason, len(event.get("spans") or []) + 1)
        elif category in ("span", "log_item", "trace_metric"):
            count = item.headers.get("item_count")
            if isinstance(count, int) and count > 0:
                quantity = count
            if category == "log_item":
                self._count("log_byte", reason, len(item.get_bytes()))
            elif category == "trace_metric":
                self._count("trace_metric_byte", reason, len(item.get_bytes()))
        elif category == "attachment":
            quantity = len(item.get_bytes()) or 1
        self._count(category, reason, quantity)

    def _count(self, category: str, reason: str, quantity: int) -> None:
        with self._condition:
            if self._pid != os.getpid():
                self._start()
            first = not self._lost
            self._lost[category, reason] += quantity
            if first:
                self._condition.notify()  # the thread may now have a report to send later

    def _record_envelope(self, reason: str, envelope: Envelope) -> None:
        for item in envelope.items:
            self.record_lost_event(reason, item=item)

    def _record_body(self, reason: str, body: bytes | None, categories: tuple[str, ...]) -> None:
        """Count a lost serialized envelope: its items if it can be read, else its categories."""
        try:
            envelope = None if body is None else Envelope.deserialize(body)
        except Exception:  # a damaged body is still one lost envelope
            envelope = None
        if envelope is not None and envelope.items:
            self._record_envelope(reason, envelope)
            return
        for category in categories or ("error",):
            self.record_lost_event(reason, category)

    def _spool_dropped(self, reason: str, categories: tuple[str, ...], body: bytes | None) -> None:
        self._record_body(reason, body, categories)

    def _start(self) -> None:
        if self._pid:  # a forked worker: what the parent counted, the parent reports
            self._lost.clear()
        self._queue.clear()
        self._http.close()
        self._busy = self._closing = self._report_now = self._urgent = False
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
                while not self._closing and not self._queue_due():
                    wait = self._idle_wait()
                    if self._queue:  # transactions lingering
                        linger = self._oldest_at + LINGER_SECONDS - time.monotonic()
                        wait = linger if wait is None else min(wait, linger)
                    if wait is not None and wait <= 0:
                        break
                    self._condition.wait(wait)
                self._urgent = bool(self._queue)  # once sending, the whole queue goes
                if self._closing:
                    left = list(self._queue)
                    self._queue.clear()
                    self._report_now = False
                    self._condition.notify_all()
                    break
                envelope = self._queue.popleft() if self._queue else None
                if not self._queue:
                    self._urgent = False
                self._busy = True
            try:
                if envelope is not None:
                    self._deliver(envelope)
                if self._spool is not None:
                    self._send_spooled()
                with self._condition:
                    idle = not self._queue
                if idle:  # otherwise a due report rides on the next envelope
                    self._send_client_report()
            except Exception:  # never let one envelope stop the thread
                logger.debug("Sentry envelope could not be sent", exc_info=True)
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()
        self._stop(left)

    def _stop(self, left: list[Envelope]) -> None:
        """At shutdown: keep in the spool the error events still queued."""
        try:
            if self._spool is not None:
                for envelope in left:
                    categories = tuple(item.data_category for item in envelope.items)
                    if SPOOLED_CATEGORIES.intersection(categories):
                        self._keep(envelope, envelope.serialize(), categories)
                self._spool.report_drops()
        finally:
            self._http.close()

    def _queue_due(self) -> bool:
        """Whether the queue is to be sent now, not left to linger (see LINGER_SECONDS)."""
        return bool(self._queue) and (
            self._urgent
            or self._report_now
            or len(self._queue) >= LINGER_ENVELOPES
            or time.monotonic() - self._oldest_at >= LINGER_SECONDS
        )

    def _idle_wait(self) -> float | None:
        """Seconds until there is something to do without a new envelope; None: nothing."""
        if self._report_now:
            return 0.0
        waits = [wait for wait in (self._spool_wait(), self._report_wait()) if wait is not None]
        return min(waits, default=None)

    def _spool_wait(self) -> float | None:
        """Seconds until the spool is due to be looked at (`_send_spooled` would do something);
        None without a spool. Never before a back-off or a rate limit ends."""
        if self._spool is None:
            return None
        due = max(self._retry_at, self._resume_at)
        if not self._backlog:
            due = max(due, self._next_scan)
        return max(0.0, due - time.monotonic())

    def _report_wait(self) -> float | None:
        """Seconds until a client report is due; None: nothing to report, or not now."""
        if not self._lost or self._unreachable:
            return None
        return max(0.0, self._report_allowed_at(force=False) - time.monotonic())

    def _report_allowed_at(self, *, force: bool) -> float:
        limits = self._limits
        allowed = max(self._retry_at, limits.get(None, 0.0), limits.get("internal", 0.0))
        if not force:
            allowed = max(allowed, self._last_report + CLIENT_REPORT_INTERVAL_SECONDS)
        return allowed

    def _take_report(self, *, force: bool) -> dict[tuple[str, str], int] | None:
        """The counts of lost events, taken for a client report if one may be sent now."""
        with self._condition:
            if not self._lost or self._unreachable:
                return None
            now = time.monotonic()
            if now < self._report_allowed_at(force=force):
                return None
            lost = dict(self._lost)
            self._lost.clear()
            self._last_report = now
            return lost

    def _restore_report(self, lost: dict[tuple[str, str], int], outcome: str) -> None:
        """Count again what a client report held if it did not get through: no answer or 5xx, or
        a rate limit on client reports themselves (a refusal, or a limit on the envelope's other
        items, would refuse it again)."""
        if outcome != RETRY and not (
            outcome == RATE_LIMITED and self._limited("internal", time.monotonic())
        ):
            return
        with self._condition:
            for key, quantity in lost.items():
                self._lost[key] += quantity

    @staticmethod
    def _report_item(lost: dict[tuple[str, str], int]) -> Item:
        discarded = [
            {"reason": reason, "category": category, "quantity": quantity}
            for (category, reason), quantity in lost.items()
        ]
        payload = {"timestamp": time.time(), "discarded_events": discarded}
        return Item(PayloadRef(json=payload), type="client_report")

    def _send_client_report(self) -> None:
        """Send the client report on its own if it is due, or if a flush asked for it."""
        with self._condition:
            force, self._report_now = self._report_now, False
        lost = self._take_report(force=force)
        if lost is None:
            return
        envelope = Envelope(items=[self._report_item(lost)])
        self._restore_report(lost, self._post(envelope.serialize()))

    def _deliver(self, envelope: Envelope) -> None:
        now = time.monotonic()
        categories = tuple(item.data_category for item in envelope.items)
        if self._spool is not None and SPOOLED_CATEGORIES.intersection(categories):
            held = now < self._retry_at or any(self._limited(c, now) for c in categories)
            body = envelope.serialize()
            outcome = RETRY if held or self._backlog else self._post(body)
            if outcome in (RETRY, RATE_LIMITED):
                self._keep(envelope, body, categories)  # in order: after what is spooled already
            elif outcome in LOSS_REASONS:
                self._record_envelope(LOSS_REASONS[outcome], envelope)
            return
        if now < self._retry_at:  # backing off after a failure: the envelope is dropped
            self._record_envelope("network_error", envelope)
            return
        items = []
        for item in envelope.items:
            if self._limited(item.data_category, now):
                self.record_lost_event("ratelimit_backoff", item=item)
            else:
                items.append(item)
        if not items:
            return
        sending = Envelope(headers=envelope.headers, items=items)
        lost = self._take_report(force=False)
        report = [] if lost is None else [self._report_item(lost)]
        outcome = self._post(Envelope(headers=envelope.headers, items=items + report).serialize())
        if lost is not None:
            self._restore_report(lost, outcome)
        if outcome in LOSS_REASONS:
            self._record_envelope(LOSS_REASONS[outcome], sending)

    def _post(self, body: bytes) -> str:
        """Send a serialized envelope; what became of it (`SENT`, `RETRY`, ...)."""
        headers = self._headers
        if len(body) >= COMPRESS_FROM_BYTES:
            body = gzip.compress(body, compresslevel=1)
            headers = {**headers, "Content-Encoding": "gzip"}
        self._server_error = 0
        try:
            answer = self._http.post(body, headers)
        except SendError as error:
            self._failed(str(error))
            return RETRY
        return self._answered(answer)

    def _keep(self, envelope: Envelope, body: bytes, categories: tuple[str, ...]) -> None:
        if self._spool is None:
            return
        try:
            self._spool.put(body, categories)
        except OSError as error:
            logger.warning("Sentry spool: an event could not be written (%s); dropped.", error)
            self._record_envelope("cache_overflow", envelope)
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
            stuck: tuple[Spooled, int] | None = None  # the oldest, skipped, and its last 5xx
            for index, spooled in enumerate(pending[:SPOOL_BATCH]):
                if self._closing or self._queue_is_filling():
                    return  # still a backlog: the thread comes back to it
                outcome = self._send_one(spool, spooled)
                if stuck is not None and outcome is not None:
                    if outcome == SENT:  # Sentry takes envelopes, just never that one
                        self._drop_stuck(spool, *stuck)
                    else:  # an outage: both are kept, and the count starts again
                        self._oldest_failures = (stuck[0].name, 0)
                    stuck = None
                if outcome in (RETRY, RATE_LIMITED):
                    if index == 0 and outcome == RETRY and self._count_stuck(spooled):
                        stuck = (spooled, self._server_error)
                        continue  # try the next one
                    return  # still a backlog: the thread comes back to it
            if stuck is not None:
                return  # nothing after it to tell whether Sentry is down: it waits
            self._backlog = len(pending) > SPOOL_BATCH
            if not self._backlog:
                spool.report_drops()

    def _send_one(self, spool: Spool, spooled: Spooled) -> str | None:
        """Send one spooled envelope; what became of it (`SENT`, `RETRY`, ...; `RATE_LIMITED` if
        held by a rate limit), None if there was nothing to send (damaged or gone)."""
        now = time.monotonic()
        if any(self._limited(category, now) for category in spooled.categories):
            limits = self._limits
            self._resume_at = max(
                limits.get(None, 0.0), *(limits.get(c, 0.0) for c in spooled.categories)
            )
            return RATE_LIMITED
        body = spool.read(spooled)
        if body is None:  # damaged (logged, counted and removed) or gone
            return None
        outcome = self._post(body)
        if outcome in (RETRY, RATE_LIMITED):
            return outcome
        spool.remove(spooled)  # sent, or refused for good (a retry would be refused too)
        if outcome in LOSS_REASONS:
            self._record_body(LOSS_REASONS[outcome], body, spooled.categories)
        return outcome

    def _count_stuck(self, oldest: Spooled) -> bool:
        """Count a failed send of the oldest spooled file if Sentry answered it (5xx): True once
        that happened `STUCK_ATTEMPTS` times in a row. No answer at all is not counted."""
        if not self._server_error:
            return False
        name, failures = self._oldest_failures
        failures = failures + 1 if name == oldest.name else 1
        self._oldest_failures = (oldest.name, failures)
        return failures >= STUCK_ATTEMPTS

    def _drop_stuck(self, spool: Spool, stuck: Spooled, status: int) -> None:
        spool.remove(stuck)
        self._oldest_failures = ("", 0)
        self._record_body("send_error", None, stuck.categories)
        logger.warning(
            "Sentry spool: dropped %s: Sentry answered it with HTTP %d %d times in a row while "
            "it takes the others, so it would hold them back; reported as lost (send_error).",
            stuck.name,
            status,
            STUCK_ATTEMPTS,
        )

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
            return RATE_LIMITED
        if answer.status >= 500:
            self._server_error = answer.status
            self._failed(f"HTTP {answer.status}")
            return RETRY
        if answer.status >= 300 or answer.status < 200:
            self._report_outage(f"HTTP {answer.status}")  # refused: a retry would be refused too
            return TOO_LARGE if answer.status == 413 else REFUSED
        self._backoff = BACKOFF_SECONDS
        self._unreachable = False
        if self._failing:
            self._failing = False
            logger.info("Sentry is accepting events again.")
        return SENT

    def _failed(self, reason: str) -> None:
        self._unreachable = True
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
        """Wait up to `timeout` seconds for the queue (and the client report) to be sent; say so
        in the log if events are left."""
        deadline = time.monotonic() + timeout
        with self._condition:
            if self._pid != os.getpid():
                return  # nothing was queued or counted in this process
            self._urgent = bool(self._queue)
            if self._reports_on and not self._closing:
                self._report_now = True  # once the queue is sent: it may add to the counts
            self._condition.notify_all()
            waiting = len(self._queue) + self._busy
            if waiting and callback is not None:
                callback(waiting, timeout)
            while self._queue or self._busy or self._report_now:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            unsent = len(self._queue) + self._busy
        if unsent:
            self._report_outage(f"{unsent} events still unsent after waiting {timeout:g} s")

    def kill(self) -> None:
        """Stop the thread: it writes what is still queued to the spool, and closes the
        connection. Waits for it up to `SHUTDOWN_JOIN_SECONDS`; a send that takes longer is left
        to finish (or to end with the process: the thread is a daemon)."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
            thread = self._thread if self._pid == os.getpid() else None
        if thread is None:  # never started in this process: nothing queued here
            self._http.close()
        elif thread is not threading.current_thread():
            thread.join(SHUTDOWN_JOIN_SECONDS)

    def is_healthy(self) -> bool:
        return not self._failing and len(self._queue) < self._capacity
