"""A minimal Sentry-compatible ingestion endpoint on loopback that records what the SDK sends.

It accepts envelopes (`POST /api/<project>/envelope/`), keeps the raw bytes exactly as they came
over the wire, and parses their items, so that tests and the demo can look at real payloads.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: The longest an answer is held back (`Recorder.answering`): no handler outlives a test for long.
HOLD_TIMEOUT = 60.0


@dataclass
class Envelope:
    raw: bytes
    headers: dict[str, Any]
    items: list[tuple[dict[str, Any], bytes]] = field(default_factory=list)

    def payloads(self, item_type: str) -> list[dict[str, Any]]:
        return [json.loads(body) for header, body in self.items if header.get("type") == item_type]


def decompress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]  # only if the SDK found it too

        return bytes(brotli.decompress(body))
    return body


def parse_envelope(data: bytes) -> Envelope:
    """Split an envelope into its header and (item header, payload) pairs."""
    header_line, _, rest = data.partition(b"\n")
    envelope = Envelope(raw=data, headers=json.loads(header_line))
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        item_header = json.loads(item_line)
        length = item_header.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length + 1 :]
        envelope.items.append((item_header, payload))
    return envelope


class Recorder:
    """Runs the endpoint in a background thread; `dsn` points an SDK at it."""

    def __init__(
        self,
        status: int = 200,
        delay: float = 0.0,
        *,
        headers: Mapping[str, str] | None = None,
        port: int = 0,
    ) -> None:
        """Answer every envelope with `status` and `headers`, after `delay` seconds (a slow
        server), on `port` (0: a free one; a given one lets a test bring a server back up).

        `answering` is set: clearing it holds every answer back (the envelope is recorded at
        once) until it is set again, as a server that stalls for as long as the test wants."""
        self.status = status
        self.delay = delay
        self.answer_headers = dict(headers or {})
        self.answering = threading.Event()
        self.answering.set()
        self.envelopes: list[Envelope] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                data = decompress(body, self.headers.get("Content-Encoding", ""))
                with recorder._lock:
                    recorder.envelopes.append(parse_envelope(data))
                recorder.answering.wait(timeout=HOLD_TIMEOUT)
                time.sleep(recorder.delay)
                self.send_response(recorder.status)
                if recorder.status == 429:
                    self.send_header("Retry-After", "60")
                for name, value in recorder.answer_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                """Silence the per-request access log."""

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self._server.server_address[1]}/1"

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.answering.set()  # answers held back go out now: closing waits for their threads
        self._server.shutdown()
        self._server.server_close()

    def events(self) -> list[dict[str, Any]]:
        return self.items("event")

    def items(self, item_type: str) -> list[dict[str, Any]]:
        with self._lock:
            return [item for env in self.envelopes for item in env.payloads(item_type)]

    def raw(self) -> bytes:
        with self._lock:
            return b"".join(env.raw for env in self.envelopes)

    def wait_for_events(self, count: int, timeout: float = 15) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events()
            if len(events) >= count:
                return events
            time.sleep(0.05)
        return self.events()


@contextmanager
def blackhole() -> Iterator[str]:
    """A DSN whose server accepts connections and never answers (a hung Sentry)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://public@127.0.0.1:{listener.getsockname()[1]}/1"
    finally:
        stop.set()
        thread.join(timeout=2)
        for connection in held:
            connection.close()
        listener.close()


def closed_port_dsn() -> str:
    """A DSN for a loopback port nobody listens on (a Sentry that is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://public@127.0.0.1:{port}/1"
