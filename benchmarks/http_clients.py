"""CPU to post one envelope-sized body to a sink on loopback, through each HTTP client layer.

    python benchmarks/http_clients.py [--posts 3000]

The figures behind `connection.py` in the generated project (docs/adr/0008): urllib3's pool
manager (as the transport used it before), one urllib3 connection pool used directly, http.client
alone, and a bare socket exchange like `connection.py`'s. Each posts the same 1.2 KiB body on one
kept-alive connection to `benchmarks/sink.py`; a figure is this process's CPU (`process_time`) per
post, the best of 3 runs of `--posts`, after 100 as warm-up. Run it pinned to compare with the
in-process figures: `taskset -c 0 python benchmarks/http_clients.py`.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import urllib3

HERE = Path(__file__).resolve().parent
BODY = b'{"event_id":"0"}\n{"type":"transaction","length":1200}\n' + b"x" * 1200
HEADERS = {
    "User-Agent": "sentry.python/2.75.0",
    "X-Sentry-Auth": "Sentry sentry_key=k, sentry_version=7, sentry_client=sentry.python/2.75.0",
    "Content-Type": "application/x-sentry-envelope",
}
PATH = "/api/1/envelope/"


def raw_client(port: int) -> Callable[[], None]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    fields = "".join(f"{name}: {value}\r\n" for name, value in HEADERS.items())
    head = f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{fields}"

    def post() -> None:
        sock.sendall(f"{head}Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(65536)
        answer, _, rest = buffer.partition(b"\r\n\r\n")
        length = 0
        for line in answer.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += sock.recv(65536)

    return post


def clients(port: int) -> dict[str, Callable[[], None]]:
    url = f"http://127.0.0.1:{port}{PATH}"
    manager = urllib3.PoolManager(num_pools=1, maxsize=1, retries=False)
    pool = manager.connection_from_url(url)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def through_manager() -> None:
        manager.request("POST", url, body=BODY, headers=HEADERS, retries=False, redirect=False)

    def through_pool() -> None:
        pool.urlopen(
            "POST",
            PATH,
            body=BODY,
            headers=HEADERS,
            retries=False,
            redirect=False,
            assert_same_host=False,
        )

    def through_http_client() -> None:
        connection.request("POST", PATH, BODY, HEADERS)
        connection.getresponse().read()

    return {
        "urllib3 PoolManager.request": through_manager,
        "urllib3 pool.urlopen": through_pool,
        "http.client": through_http_client,
        "bare socket (as connection.py)": raw_client(port),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=3000)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from tests.support.server import free_port

    port = free_port()
    sink = subprocess.Popen(
        [sys.executable, str(HERE / "sink.py"), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        for name, post in clients(port).items():
            for _ in range(100):
                post()
            best = float("inf")
            for _ in range(3):
                started = time.process_time()
                for _ in range(args.posts):
                    post()
                best = min(best, (time.process_time() - started) / args.posts * 1e6)
            print(f"{name:<32} {best:7.1f} us of CPU per post")
    finally:
        sink.terminate()
        sink.communicate(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
