"""What error tracking costs per request: the `yes` variant against the `no` variant, side by side.

    python benchmarks/run.py [--rounds 5] [--duration 5] [--connections 16]   (or: make bench)

1. Bakes both variants into .cache/bench/ and installs each into its own environment (reused).
2. Starts a sink that accepts every Sentry envelope (benchmarks/sink.py), in its own process.
3. For each round, and in a different order each round (so that A/B pairs are close in time),
   starts every configuration under uvicorn (one worker, no access log) with benchmarks/bench_app.py
   and drives each route with wrk from its own process on loopback: a warm-up, then the measurement.
   With two CPUs or more, the server runs on the first and wrk and the sink on the others.
4. Prints one table: requests/s, p50 and p99 latency, start-up (process start to the first answer)
   and resident memory, each with its ratio to the `no` variant. A ratio is the median over rounds
   of the ratio within a round; figures are medians over rounds.
5. Times a failed request in-process with and without Sentry, and the scrubber on its event.
6. Times the trivial route in-process: Sentry off, tracing off, every request traced.
7. Times sending one transaction with the SDK's HTTP transport and with the project's transport.

Needs wrk (Debian's package). Run as root with apt-get, it is installed when missing.
Figures depend on the machine: compare ratios, not absolute numbers, across machines.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.probe import SECRET_KEY, make_token  # noqa: E402
from tests.support.server import free_port, request  # noqa: E402
from tests.support.template import baked_project, install_project  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = REPO / ".cache" / "bench"
TOKEN = make_token("bench-user", "bench-tenant", "bench@example.com")


@dataclass(frozen=True)
class Config:
    name: str
    variant: str  # "no" or "yes"
    env: dict[str, str] = field(default_factory=dict)
    sentry_down: bool = False  # the DSN names a port nobody listens on


def configs() -> list[Config]:
    def ours(rate: str) -> dict[str, str]:
        return {
            "SENTRY_DSN": "{dsn}",
            "SENTRY_TRACES_SAMPLE_RATE": rate,
            "SENTRY_PROFILES_SAMPLE_RATE": "0",
        }

    stock = {"SENTRY_DSN": "", "BENCH_STOCK_DSN": "{dsn}"}
    return [
        Config("no", "no"),
        Config("yes, tracing off", "yes", ours("0")),
        Config("yes, traces 0.1", "yes", ours("0.1")),
        Config("yes, traces 0.1, Sentry down", "yes", ours("0.1"), sentry_down=True),
        Config("yes, traces 1.0", "yes", ours("1.0")),
        Config("stock init(dsn)", "yes", {**stock, "BENCH_STOCK_SENTRY": "0"}),
        Config("stock, traces 0.1", "yes", {**stock, "BENCH_STOCK_SENTRY": "0.1"}),
    ]


#: The goals under load (docs/performance.md): (configuration, route) -> (the least median
#: `x no` of requests/s, the most p99 milliseconds added, or None).
GOALS = {
    ("yes, tracing off", "trivial"): (0.95, None),
    ("yes, traces 0.1", "auth+db"): (0.95, 1.0),
    ("yes, traces 0.1, Sentry down", "auth+db"): (None, 1.0),
}

ROUTES = {
    "trivial": ("/bench/ping", {}),
    "auth+db": ("/api/v1/items/{item_id}", {"Authorization": f"Bearer {TOKEN}"}),
}


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float


@dataclass
class Results:
    load: dict[tuple[str, str], list[Sample]] = field(default_factory=lambda: defaultdict(list))
    startup_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    rss_mib: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


#: The server gets a core of its own; wrk and the sink share the others (as a remote Sentry would
#: not take the server's CPU). Without pinning, the scheduler moved them around and throughput
#: of the same configuration varied by up to 25% between rounds on a 2-core machine.
_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
SERVER_CPUS = set(_CPUS[:1]) if len(_CPUS) >= 2 else set(_CPUS)
OTHER_CPUS = set(_CPUS[1:]) if len(_CPUS) >= 2 else set(_CPUS)


def pinned(cpus: set[int]) -> Callable[[], None]:
    """A preexec_fn that keeps the child process on `cpus`."""

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    return pin


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing wrk from Debian's packages")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, **quiet).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, check=True, **quiet)
            subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, check=True, **quiet)
        found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed: install it (apt-get install wrk, brew install wrk) and run again.")
    return found


def prepare(variant: str) -> tuple[Path, Path]:
    """Bake `variant` afresh into WORK, install it into its (reused) environment."""
    out = WORK / f"project-{variant}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    project = baked_project(out, {"project_name": "Bench Service", "include_sentry": variant})
    venv = WORK / f"venv-{variant}"
    install_project(project, venv)
    shutil.copyfile(HERE / "bench_app.py", project / "bench_app.py")
    return project, venv


@contextmanager
def sink() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(HERE / "sink.py"), str(port)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=pinned(OTHER_CPUS),
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    try:
        yield f"http://bench-key@127.0.0.1:{port}/1"
    finally:
        process.terminate()
        say(f"sink: {process.communicate(timeout=10)[0].strip()}")


def base_env(project: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    return {
        **{key: os.environ[key] for key in keep if key in os.environ},
        "DATABASE_URL": f"sqlite:///{project / 'bench.db'}",
        "SECRET_KEY": SECRET_KEY,
        "ENVIRONMENT": "production",
        "LOG_LEVEL": "WARNING",
    }


def seed(project: Path, venv: Path) -> int:
    """Migrate the database and create the one row the auth+db route reads; return its id."""
    env = base_env(project)
    (project / "bench.db").unlink(missing_ok=True)
    subprocess.run(
        [str(venv / "bin" / "alembic"), "upgrade", "head"],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
    )
    with serving(project, venv, env) as (url, _pid, _startup):
        created = request(
            url + "/api/v1/items",
            method="POST",
            body={"title": "bench row"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert created.status == 201, created.body
    item_id = created.json()["id"]  # type: ignore[index]
    assert isinstance(item_id, int)
    return item_id


@contextmanager
def serving(project: Path, venv: Path, env: dict[str, str]) -> Iterator[tuple[str, int, float]]:
    """uvicorn with bench_app; yields (base url, pid, ms from process start to the first 200)."""
    port = free_port()
    command = [
        str(venv / "bin" / "uvicorn"),
        "bench_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    log = (WORK / "server.log").open("w")
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=project, env=env, stdout=log, stderr=log, preexec_fn=pinned(SERVER_CPUS)
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                sys.exit(f"the server exited:\n{(WORK / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.005)
        yield url, process.pid, (time.perf_counter() - started) * 1000
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(binary: str, url: str, headers: dict[str, str], seconds: float, connections: int) -> Sample:
    command = [binary, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, preexec_fn=pinned(OTHER_CPUS)
    ).stdout
    if re.search(r"Non-2xx or 3xx responses: \d+", output):
        sys.exit(f"{url} answered errors under load:\n{output}")

    def latency(percent: str) -> float:
        found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        assert found, output
        return float(found.group(1)) * _UNITS[found.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    assert rps, output
    return Sample(float(rps.group(1)), latency("50"), latency("99"))


def run_round(
    number: int,
    args: argparse.Namespace,
    wrk_binary: str,
    projects: dict[str, tuple[Path, Path, int]],
    dsn: str,
    results: Results,
) -> None:
    order = configs()
    shift = number % len(order)
    order = order[shift:] + order[:shift]
    for config in order:
        project, venv, item_id = projects[config.variant]
        target = "http://bench-key@127.0.0.1:9/1" if config.sentry_down else dsn
        env = {**base_env(project), **{k: v.format(dsn=target) for k, v in config.env.items()}}
        with serving(project, venv, env) as (url, pid, startup_ms):
            results.startup_ms[config.name].append(startup_ms)
            for route, (path, headers) in ROUTES.items():
                full = url + path.format(item_id=item_id)
                wrk(wrk_binary, full, headers, args.warm_up, args.connections)
                sample = wrk(wrk_binary, full, headers, args.duration, args.connections)
                results.load[config.name, route].append(sample)
            results.rss_mib[config.name].append(resident_mib(pid))
        say(f"round {number + 1}: {config.name} done")


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_table(results: Results, args: argparse.Namespace) -> None:
    base = "no"
    print(
        f"\nuvicorn, 1 worker, no access log; wrk -t1 -c{args.connections} -d{args.duration}s "
        f"after a {args.warm_up}s warm-up; {args.rounds} rounds in rotating order; medians"
    )
    if SERVER_CPUS != OTHER_CPUS:
        print(f"server on CPU {sorted(SERVER_CPUS)}, wrk and sink on CPU {sorted(OTHER_CPUS)}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {platform.platform()}\n"
    )
    header = (
        f"| {'configuration':<30} | {'route':<8} | {'req/s':>7} | {'x no':>5} | "
        f"{'p50 ms':>6} | {'p99 ms':>6} | {'p99 +ms':>7} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for config in configs():
        for route in ROUTES:
            samples, bases = results.load[config.name, route], results.load[base, route]
            ratio = median([s.rps / b.rps for s, b in zip(samples, bases, strict=True)])
            added = median([s.p99_ms - b.p99_ms for s, b in zip(samples, bases, strict=True)])
            print(
                f"| {config.name:<30} | {route:<8} | {median([s.rps for s in samples]):>7.0f} | "
                f"{ratio:>5.2f} | {median([s.p50_ms for s in samples]):>6.2f} | "
                f"{median([s.p99_ms for s in samples]):>6.2f} | {added:>+7.2f} |"
            )
    print("\ngoals (medians of the rounds' ratios and differences):")
    for (name, route), (least, most_ms) in GOALS.items():
        samples, bases = results.load[name, route], results.load[base, route]
        ratio = median([s.rps / b.rps for s, b in zip(samples, bases, strict=True)])
        added = median([s.p99_ms - b.p99_ms for s, b in zip(samples, bases, strict=True)])
        checks = []
        if least is not None:
            checks.append(f"x no {ratio:.2f}, goal {least:.2f}: {_verdict(ratio >= least)}")
        if most_ms is not None:
            checks.append(f"p99 {added:+.2f} ms, goal < {most_ms:g}: {_verdict(added < most_ms)}")
        print(f"  {name:<30} {route:<8} " + "; ".join(checks))
    print(
        f"\n| {'configuration':<30} | {'start-up ms':>11} | {'x no':>5} | {'RSS MiB':>7} | "
        f"{'x no':>5} |"
    )
    print(f"|{'-' * 32}|{'-' * 13}|{'-' * 7}|{'-' * 9}|{'-' * 7}|")
    for config in configs():
        startup, rss = results.startup_ms[config.name], results.rss_mib[config.name]
        startup_ratio = median(
            [s / b for s, b in zip(startup, results.startup_ms[base], strict=True)]
        )
        rss_ratio = median([s / b for s, b in zip(rss, results.rss_mib[base], strict=True)])
        print(
            f"| {config.name:<30} | {median(startup):>11.0f} | {startup_ratio:>5.2f} | "
            f"{median(rss):>7.1f} | {rss_ratio:>5.2f} |"
        )


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def in_project(project: Path, venv: Path, script: str, *args: str) -> str:
    """Run `script` with the project's interpreter, in the project's folder; return its stdout."""
    command = [str(venv / "bin" / "python"), "-c", script, *args]
    result = subprocess.run(
        command, cwd=project, capture_output=True, text=True, check=True, env=base_env(project)
    )
    return result.stdout


ERROR_COST = """
import asyncio, json, sys, time
import sentry_sdk
from pydantic import SecretStr
from sentry_sdk.transport import Transport
import app.sentry_integration.privacy as privacy
from app import sentry
from app.sentry_integration import events
from app.core.config import Settings
from app.main import create_app

class Keep(Transport):
    def capture_envelope(self, envelope):
        envelope.serialize()

seen = []
original = privacy.scrub_event
def keep(event):
    seen.append(json.loads(json.dumps(event, default=str)))
    return original(event)
events.scrub_event = keep
dsn = "http://k@127.0.0.1:9/1" if sys.argv[2] == "on" else ""
settings = Settings(environment="test", database_url="sqlite://", sentry_dsn=SecretStr(dsn),
                    sentry_flood_max_events=0)  # every one of the 200 errors is an event
app = create_app(settings)
if dsn:
    sentry.init_sentry(settings, transport=Keep())

@app.post("/orders/{order_id}")
async def order(order_id: int, body: dict) -> None:
    card_token = body["payment"]["card_token"]
    raise RuntimeError(f"payment provider refused order {order_id} ({len(card_token)})")

BODY = json.dumps({"customer": {"email": "ada@example.com", "name": "Ada"},
                   "payment": {"card_token": "tok_visa_4242", "amount": 1250},
                   "items": [{"sku": f"sku-{n}", "qty": n} for n in range(10)]}).encode()
HEADERS = [(b"host", b"bench"), (b"content-type", b"application/json"),
           (b"content-length", str(len(BODY)).encode()), (b"cookie", b"session=s3cr3t"),
           (b"authorization", b"Bearer " + sys.argv[1].encode())]

async def fail_once():
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/orders/7", "raw_path": b"/orders/7",
             "query_string": b"access_token=abc", "root_path": "", "headers": HEADERS,
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
    async def receive():
        return {"type": "http.request", "body": BODY, "more_body": False}
    async def send(message):
        pass
    try:
        await app(scope, receive, send)
    except RuntimeError:
        pass
    await asyncio.sleep(0)  # the report is made once the 500 has been sent

async def main():
    for _ in range(20):
        await fail_once()
    count = 200
    started = time.perf_counter()
    for _ in range(count):
        await fail_once()
    per_error_ms = (time.perf_counter() - started) / count * 1000
    rate = 0.0
    if seen:
        event, scrubbed, started = seen[-1], 0, time.perf_counter()
        while time.perf_counter() - started < 2.0:
            original(event)
            scrubbed += 1
        rate = scrubbed / (time.perf_counter() - started)
    print(f"{per_error_ms:.3f} {rate:.0f} {len(json.dumps(seen[-1])) if seen else 0}")

asyncio.run(main())
"""


def error_cost(project: Path, venv: Path) -> None:
    """A failed request's cost with and without Sentry (in-process, so only the app's own work),
    and the scrubber's throughput on that request's error event."""
    figures = {}
    for mode in ("off", "on"):
        figures[mode] = in_project(project, venv, ERROR_COST, TOKEN, mode).split()
    off_ms, on_ms = float(figures["off"][0]), float(figures["on"][0])
    per_second, size = float(figures["on"][1]), int(figures["on"][2])
    print(
        f"\nfailed request (in-process, 200 in a row): {off_ms:.2f} ms without Sentry, "
        f"{on_ms:.2f} ms with it (+{on_ms - off_ms:.2f} ms for building, scrubbing and "
        f"serializing the error event)"
    )
    print(
        f"scrubber: {per_second:.0f} events/s ({1000 / per_second:.3f} ms per event) on that "
        f"error event, {size / 1024:.1f} KiB of JSON"
    )


REQUEST_COST = """
import asyncio, sys, time
from pydantic import SecretStr
from sentry_sdk.transport import Transport
from app import sentry
from app.core.config import Settings
from app.main import create_app

class Keep(Transport):
    def capture_envelope(self, envelope):
        envelope.serialize()

rate = sys.argv[1]
dsn = "" if rate == "off" else "http://k@127.0.0.1:9/1"
settings = Settings(environment="test", database_url="sqlite://", sentry_dsn=SecretStr(dsn),
                    sentry_traces_sample_rate=0.0 if rate == "off" else float(rate),
                    sentry_profiles_sample_rate=0.0)
app = create_app(settings)
if dsn:
    sentry.init_sentry(settings, transport=Keep({"dsn": dsn}))

@app.get("/bench/ping")
async def ping() -> dict[str, str]:
    return {"pong": "ok"}

HEADERS = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk")]

async def one():
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/bench/ping", "raw_path": b"/bench/ping",
             "query_string": b"", "root_path": "", "headers": HEADERS,
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        pass
    await app(scope, receive, send)

async def main():
    async with app.router.lifespan_context(app):
        for _ in range(500):
            await one()
        best = float("inf")
        for _ in range(5):
            count, started = 3000, time.process_time()
            for _ in range(count):
                await one()
            best = min(best, (time.process_time() - started) / count * 1e6)
    print(best)

asyncio.run(main())
"""


def request_cost(project: Path, venv: Path) -> None:
    """CPU per request of the trivial route in-process (no server, no network, so far less noisy
    than wrk): Sentry off, on with tracing off, and on with every request traced; the last minus
    the second is what one traced request costs. Best of 5 runs of 3000 requests."""
    figures = {}
    for rate in ("off", "0", "1.0"):
        figures[rate] = float(in_project(project, venv, REQUEST_COST, rate).split()[-1])
    off, untraced, traced = figures["off"], figures["0"], figures["1.0"]
    print(
        f"trivial route in-process (CPU per request, best of 5 x 3000): {off:.0f} us without "
        f"Sentry, {untraced:.0f} us with tracing off (+{untraced - off:.0f}), {traced:.0f} us "
        f"with every request traced: {traced - untraced:.0f} us per traced request"
    )


SEND_COST = """
import sys, time
import sentry_sdk.client
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import HttpTransport
from app.sentry_integration.delivery import SentryTransport

options = sentry_sdk.client._get_options(dsn=sys.argv[1])
event = {"type": "transaction", "transaction": "/api/v1/items/{item_id}",
         "contexts": {"trace": {"trace_id": "a" * 32, "span_id": "b" * 16, "op": "http.server"}},
         "spans": [{"span_id": "c" * 16, "op": "db", "description": "SELECT items.id FROM items "
                    "WHERE items.id = ? AND items.tenant_id = ?"}] * 3,
         "timestamp": 1.0, "start_timestamp": 0.5}

def envelope():
    built = Envelope(headers={"event_id": "d" * 32})
    built.add_transaction(event)
    return built

for name, transport, send in (
    ("sdk", HttpTransport(options), lambda t: t._send_envelope(envelope())),
    ("ours", SentryTransport(options), lambda t: t._deliver(envelope())),
):
    for _ in range(100):
        send(transport)
    count, started = 2000, time.process_time()
    for _ in range(count):
        send(transport)
    print(name, (time.process_time() - started) / count * 1e6)
"""


def send_cost(project: Path, venv: Path, dsn: str) -> None:
    """CPU per envelope (a 1.4 KiB transaction) to send it to the sink and read the answer: the
    SDK's HTTP transport against the project's, one after the other, in the yes variant."""
    output = in_project(project, venv, SEND_COST, dsn)
    figures = dict(line.split() for line in output.splitlines())
    sdk, ours = float(figures["sdk"]), float(figures["ours"])
    print(
        f"sending one transaction (CPU, 2000 in a row to the sink): {sdk:.0f} us with the SDK's "
        f"HTTP transport, {ours:.0f} us with app/sentry_integration/delivery.py "
        f"({sdk / ours:.1f}x less)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per route")
    parser.add_argument("--warm-up", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    wrk_binary = ensure_wrk()
    WORK.mkdir(parents=True, exist_ok=True)
    projects = {}
    for variant in ("no", "yes"):
        say(f"preparing the {variant} variant")
        project, venv = prepare(variant)
        projects[variant] = (project, venv, seed(project, venv))
    results = Results()
    with sink() as dsn:
        for number in range(args.rounds):
            run_round(number, args, wrk_binary, projects, dsn, results)
        print_table(results, args)
        error_cost(*projects["yes"][:2])
        request_cost(*projects["yes"][:2])
        send_cost(*projects["yes"][:2], dsn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
