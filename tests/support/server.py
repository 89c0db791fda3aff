"""Start a generated app under a real uvicorn process and talk to it over HTTP on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Response:
    status: int
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def request(
    url: str,
    method: str = "GET",
    body: object | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10,
    form: Mapping[str, str] | None = None,
) -> Response:
    """One HTTP request; `body` is sent as JSON, `form` as an urlencoded form."""
    if form is not None:
        data: bytes | None = urllib.parse.urlencode(form).encode()
        content_type = "application/x-www-form-urlencoded"
    else:
        data = json.dumps(body).encode() if body is not None else None
        content_type = "application/json"
    all_headers = {"Content-Type": content_type, **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return Response(answer.status, answer.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, error.read())


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kwargs: object) -> Response:
        return request(self.base_url + path, **kwargs)  # type: ignore[arg-type]


def wait_until_serving(server: RunningServer, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"the server exited with {server.process.returncode}:\n{server.log()}"
            )
        try:
            if request(server.base_url + "/health", timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the server did not answer /health in {timeout}s:\n{server.log()}")


@contextmanager
def running_server(
    command: list[str], cwd: Path, env: Mapping[str, str], log_path: Path, port: int
) -> Iterator[RunningServer]:
    """Start `command` (which must listen on `port`), wait for /health, SIGTERM it afterwards."""
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, text=True
        )
    server = RunningServer(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_serving(server)
        yield server
    finally:
        stop(server)


def stop(server: RunningServer, timeout: float = 15) -> float:
    """SIGTERM the server and wait for it to exit; returns how long that took, in seconds."""
    started = time.monotonic()
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return time.monotonic() - started


@contextmanager
def uvicorn_server(
    venv: Path,
    project: Path,
    env: Mapping[str, str],
    log_path: Path,
    *extra_args: str,
    app: str = "app.main:app",
) -> Iterator[RunningServer]:
    """`uvicorn <app>` on a free loopback port, stopped with SIGTERM afterwards."""
    port = free_port()
    command = [str(venv / "bin" / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port)]
    with running_server([*command, *extra_args], project, env, log_path, port) as server:
        yield server


@contextmanager
def gunicorn_server(
    venv: Path, project: Path, env: Mapping[str, str], log_path: Path, app: str, workers: int
) -> Iterator[RunningServer]:
    """gunicorn with `workers` uvicorn workers on a free loopback port."""
    port = free_port()
    command = [str(venv / "bin" / "gunicorn"), app, "-k", "uvicorn_worker.UvicornWorker"]
    command += ["-w", str(workers), "-b", f"127.0.0.1:{port}", "--graceful-timeout", "10"]
    with running_server(command, project, env, log_path, port) as server:
        yield server
