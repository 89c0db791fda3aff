"""CPU per request, in-process: the `yes` variant's configurations against the `no` variant.

    python benchmarks/inprocess.py [--rounds 5] [--routes trivial,auth+db,write] [--no-pin]
        [--profile DIR]
    python benchmarks/inprocess.py --project-no DIR --project-yes DIR \\
        [--python-no PYTHON] [--python-yes PYTHON]

No server and no load generator: each configuration runs in a fresh interpreter (the project's
own), which imports the generated app (`app.main:app`, the module-level app uvicorn serves), runs
its lifespan and calls the ASGI app directly, each request in its own asyncio task as uvicorn does
(16 in flight), sync routes in the thread pool as usual. A figure is `time.process_time()` (all
threads, so the transport's sending thread counts) over a batch of requests plus the
`sentry_sdk.flush()` that ends the batch, divided by the batch's size; the best of 3 batches is
kept, after a fifth of a batch as warm-up. Batches are 1000 requests on the trivial route and 300
on the two database routes, whose requests take 15 to 30 times longer (0.4 to 1.5 s of CPU per
batch; --db-batch-size 1000 would triple the run time). The configurations run in a different
order each round; a ratio is (`no`'s CPU per request) / (the configuration's) within one round,
so below 1 means dearer.

With tracing on, a batch also flushes after every ~50 expected transactions: the SDK's queue holds
100 envelopes and the loop makes requests faster than the sending thread gets the GIL, so without
it a quarter of the transactions at 1.0 were dropped (and cost nothing). The sink's envelope
counts, printed per configuration, show what was sent.

Routes: `trivial` is `GET /bench/ping` (an async route added here, returning a dict); `auth+db` is
`GET /api/v1/items/{id}` with a bearer token (JWT check, user context, one row read from a SQLite
file); `write` is an authenticated `POST /api/v1/items` with a JSON body (one row inserted). Each
run gets a fresh copy of a database migrated with `alembic upgrade head`, on a tmpfs by default
(--db-dir).
Configurations: `no`; `yes` without a DSN (Sentry off: what the project's own code costs); `yes`
with SENTRY_DSN pointing at a sink on loopback (benchmarks/sink.py,
one per run, so that its envelope count is the run's) and tracing off, 0.1 and 1.0 (profiling off);
"stock": `sentry_sdk.init(dsn=...)` with the SDK's defaults before the app is imported, the
project's own set-up off (SENTRY_DSN empty, SENTRY_TRACES_SAMPLE_RATE=0), with
`traces_sample_rate` unset or 0.1. (The table's last section lists each configuration's
integrations and middleware.)

Without --project-*, both variants are baked from this repository's working tree into
.cache/inprocess/ and installed into their own environments (as benchmarks/run.py does). With
them, the given projects are used as they are: each must be installed (`pip install -e .[dev]`)
into the environment of --python-* (default: PROJECT/.venv/bin/python).

By default every process is pinned to the first CPU (`taskset -c 0`; the sink to the others):
this machine drifts by up to 30% from one run to the next otherwise. --no-pin measures with the
scheduler free, thread-pool hand-offs across CPUs included.
"""

from __future__ import annotations

# Only the standard library at module level: the same file runs, with --child, in the projects'
# own interpreters.
import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = REPO / ".cache" / "inprocess"
ROUTES = ("trivial", "auth+db", "write")
#: The goals (docs/performance.md): (route, configuration) -> the least median `x no`, with every
#: process on one CPU (pinned) and with the scheduler free (not pinned).
GOALS = {
    "pinned": {
        ("auth+db", "yes tracing off"): 0.98,
        ("auth+db", "yes traces 0.1"): 0.95,
        ("auth+db", "yes traces 1.0"): 0.75,
        ("trivial", "yes tracing off"): 0.90,
        ("trivial", "yes traces 0.1"): 0.65,
        ("trivial", "yes traces 1.0"): 0.35,
    },
    "not pinned": {("auth+db", "yes tracing off"): 0.95},
}
WRITE_BODY = {"title": "bench row", "description": "written by benchmarks/inprocess.py"}


# --------------------------------------------------------------------------------------------
# The child: one configuration, in the project's interpreter.
# --------------------------------------------------------------------------------------------


class Client:
    """Calls an ASGI app as a server would, one request at a time."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def request(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        received = False
        finished = asyncio.Event()
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished.wait()  # as a server does: the client goes away after the answer
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    finished.set()

        try:
            await self.app(scope, receive, send)
        finally:
            finished.set()
        return status, b"".join(chunks)


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> Any:
    """Run the app's lifespan through the ASGI protocol, as uvicorn does."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    answer = await from_app.get()
    if answer["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"lifespan start-up failed: {answer}")
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await from_app.get()
        await task


async def run_batch(
    one: Callable[[], Any],
    count: int,
    concurrency: int,
    failures: list[str],
    flush: Callable[[], None],
    flush_every: int,
) -> None:
    """`count` requests, each in its own task, at most `concurrency` of them in flight; a flush
    after every `flush_every` requests started (0: none), so that the transport's queue (100
    envelopes by default) does not overflow: dropped envelopes would cost nothing."""
    slots = asyncio.Semaphore(concurrency)
    pending: set[asyncio.Task[None]] = set()

    def done(task: asyncio.Task[None]) -> None:
        pending.discard(task)
        slots.release()
        if task.cancelled():
            failures.append("cancelled")
        elif task.exception() is not None:
            failures.append(repr(task.exception()))

    for number in range(1, count + 1):
        await slots.acquire()
        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(done)
        if flush_every and number % flush_every == 0:
            flush()
    if pending:
        await asyncio.wait(set(pending))


async def measure_routes(app: Any, spec: dict[str, Any], flush: Callable[[], None]) -> dict:
    client = Client(app)
    auth = [(b"authorization", b"Bearer " + spec["token"].encode())]
    common = [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"inprocess-bench"),
        (b"accept", b"*/*"),
    ]
    body = json.dumps(WRITE_BODY).encode()
    write_headers = [
        *common,
        *auth,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    results: dict[str, Any] = {}
    async with lifespan(app):
        status, answer = await client.request("POST", "/api/v1/items", write_headers, body)
        if status != 201:
            raise RuntimeError(f"creating the row to read answered {status}: {answer[:500]!r}")
        item_id = json.loads(answer)["id"]
        requests = {
            "trivial": ("GET", "/bench/ping", common, b"", 200),
            "auth+db": ("GET", f"/api/v1/items/{item_id}", [*common, *auth], b"", 200),
            "write": ("POST", "/api/v1/items", write_headers, body, 201),
        }
        for route in spec["routes"]:
            method, path, headers, payload, expected = requests[route]
            warmup, size = spec["sizes"][route]
            failures: list[str] = []

            async def one(
                method: str = method,
                path: str = path,
                headers: list[tuple[bytes, bytes]] = headers,
                payload: bytes = payload,
                expected: int = expected,
                failures: list[str] = failures,
            ) -> None:
                status, answer = await client.request(method, path, headers, payload)
                if status != expected:
                    failures.append(f"{method} {path}: {status} {answer[:300]!r}")

            pace = (flush, spec["flush_every"])
            await run_batch(one, warmup, spec["concurrency"], failures, *pace)
            flush()
            profiler = Profiler(spec.get("profile"), route)
            cpu, wall = [], []
            for _ in range(spec["batches"]):
                started_cpu, started_wall = time.process_time(), time.perf_counter()
                await run_batch(one, size, spec["concurrency"], failures, *pace)
                flush()
                cpu.append((time.process_time() - started_cpu) / size * 1e6)
                wall.append((time.perf_counter() - started_wall) / size * 1e6)
            profiler.stop(size * spec["batches"])
            # A failed request (SQLite's "database is locked" under a loaded machine, say) is
            # reported, not fatal: the driver stops only if more than 1% failed.
            results[route] = {
                "cpu_us": min(cpu),
                "cpu_all": cpu,
                "wall_us": min(wall),
                "requests": warmup + size * spec["batches"],
                "failures": len(failures),
                "failure_sample": failures[:3],
            }
    return results


class Profiler:
    """With --profile: yappi over a route's measured batches, CPU clock, every thread (the
    transport's sending thread and the thread pool included; cProfile sees only the loop's).
    Writes the functions that cost most, per request, to the file `path` names. The figures
    under the profiler are inflated; only their shares mean something."""

    def __init__(self, path: str | None, route: str) -> None:
        self.path = path.format(route=route.replace("+", "_")) if path else None
        if self.path:
            import yappi

            yappi.clear_stats()
            yappi.set_clock_type("cpu")
            yappi.start(builtins=True, profile_threads=True)

    def stop(self, requests: int) -> None:
        if not self.path:
            return
        import yappi

        yappi.stop()
        functions = yappi.get_func_stats()
        total = sum(stat.tsub for stat in functions)
        lines = [
            f"{requests} requests; {total / requests * 1e6:.0f} us of CPU per request under the "
            "profiler; per request: own = in the function itself, incl = with what it calls",
            f"{'own us':>8} {'incl us':>8} {'calls/req':>9}  function",
        ]
        for key in ("tsub", "ttot"):
            lines.append(f"-- by {'own' if key == 'tsub' else 'inclusive'} time --")
            for stat in sorted(functions, key=lambda s: getattr(s, key), reverse=True)[:150]:
                where = f"{stat.module.split('site-packages/')[-1]}:{stat.lineno}"
                lines.append(
                    f"{stat.tsub / requests * 1e6:8.1f} {stat.ttot / requests * 1e6:8.1f} "
                    f"{stat.ncall / requests:9.2f}  {stat.name}  {where}"
                )
        Path(self.path).write_text("\n".join(lines) + "\n")
        yappi.clear_stats()


def child(spec: dict[str, Any]) -> None:
    """Import the app with the environment the driver set, measure, print one JSON line."""
    try:
        import sentry_sdk
    except ImportError:
        sentry_sdk = None
    stock = spec.get("stock")
    if stock is not None:
        # The SDK's documented set-up, before the app is created (its integrations patch
        # Starlette and FastAPI as they are set up).
        sentry_sdk.init(dsn=stock["dsn"], traces_sample_rate=stock["rate"] or None)

    from app.main import app

    @app.get("/bench/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "ok"}

    active = sentry_sdk is not None and sentry_sdk.get_client().is_active()

    def flush() -> None:
        if active:
            sentry_sdk.flush(timeout=30)

    results = asyncio.run(measure_routes(app, spec, flush))
    info: dict[str, Any] = {"python": platform.python_version(), "sentry_active": active}
    if sentry_sdk is not None:
        info["sentry_sdk"] = sentry_sdk.VERSION
    if active:
        client = sentry_sdk.get_client()
        options = client.options
        info["traces_sample_rate"] = options.get("traces_sample_rate")
        info["traces_sampler"] = options.get("traces_sampler") is not None
        info["integrations"] = sorted(getattr(client, "integrations", {}) or {})
        info["transport"] = type(client.transport).__name__ if client.transport else None
    info["middleware"] = [
        getattr(m.cls, "__name__", str(m.cls)) for m in getattr(app, "user_middleware", [])
    ]
    print("RESULT " + json.dumps({"routes": results, "info": info}), flush=True)


# --------------------------------------------------------------------------------------------
# The driver.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    name: str
    variant: str  # "no" or "yes"
    env: dict[str, str] = field(default_factory=dict)
    stock_rate: float | None = None  # set: sentry_sdk.init(dsn) with this traces_sample_rate
    traced: float = 0.0  # share of requests expected to send a transaction


def configs() -> list[Config]:
    def ours(rate: str) -> dict[str, str]:
        return {
            "SENTRY_DSN": "{dsn}",
            "SENTRY_TRACES_SAMPLE_RATE": rate,
            "SENTRY_PROFILES_SAMPLE_RATE": "0",
        }

    # The project's own set-up is off; with the SDK's client active, the app may still add its
    # own middleware (rate 0, so that it does as little as it can): the table shows it.
    stock = {"SENTRY_DSN": "", "SENTRY_TRACES_SAMPLE_RATE": "0", "SENTRY_PROFILES_SAMPLE_RATE": "0"}
    return [
        Config("no", "no"),
        Config("yes no DSN", "yes", {"SENTRY_DSN": ""}),
        Config("yes tracing off", "yes", ours("0")),
        Config("yes traces 0.1", "yes", ours("0.1"), traced=0.1),
        Config("yes traces 1.0", "yes", ours("1.0"), traced=1.0),
        Config("stock init(dsn)", "yes", stock, stock_rate=0.0),
        Config("stock traces 0.1", "yes", stock, stock_rate=0.1, traced=0.1),
    ]


@dataclass
class Project:
    variant: str
    path: Path
    python: Path
    database: Path  # migrated and empty; copied for each run


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def pinned(selected: set[int] | None) -> Callable[[], None] | None:
    if not selected:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, selected)

    return pin


def base_env(database: Path, workdir: Path) -> dict[str, str]:
    from tests.support.probe import SECRET_KEY

    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    return {
        **{key: os.environ[key] for key in keep if key in os.environ},
        "ENVIRONMENT": "test",
        "LOG_LEVEL": "WARNING",
        "DATABASE_URL": f"sqlite:///{database}",
        "SECRET_KEY": SECRET_KEY,
        "SENTRY_DSN": "",
        # Settings of the `yes` variant; the `no` one ignores unknown variables.
        "SENTRY_SPOOL_DIR": str(workdir / "spool"),
    }


def bake_from_working_tree() -> dict[str, tuple[Path, Path]]:
    from tests.support.template import baked_project, install_project

    made = {}
    for variant in ("no", "yes"):
        say(f"baking and installing the {variant} variant from {REPO}")
        out = WORK / f"project-{variant}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        project = baked_project(out, {"project_name": "Bench Service", "include_sentry": variant})
        venv = WORK / f"venv-{variant}"
        install_project(project, venv)
        made[variant] = (project, venv / "bin" / "python")
    return made


def migrate(path: Path, python: Path, database: Path, workdir: Path) -> None:
    result = subprocess.run(
        [str(python), "-m", "alembic", "upgrade", "head"],
        cwd=path,
        env=base_env(database, workdir),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"alembic upgrade head failed in {path}:\n{result.stderr[-3000:]}")


@contextlib.contextmanager
def sink(selected: set[int] | None) -> Any:
    """benchmarks/sink.py in its own process; yields (dsn, a list the envelope count goes into)."""
    from tests.support.server import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(HERE / "sink.py"), str(port)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=pinned(selected),
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        sys.exit("the sink did not start")
    count: list[int] = []
    try:
        yield f"http://bench-key@127.0.0.1:{port}/1", count
    finally:
        process.terminate()
        out = process.communicate(timeout=10)[0]
        count.extend(int(line.split()[1]) for line in out.splitlines() if line.startswith("env"))


@dataclass
class Run:
    cpu_us: dict[str, float]
    wall_us: dict[str, float]
    envelopes: int
    info: dict[str, Any]
    failed: dict[str, int]


def sizes(route: str, args: argparse.Namespace) -> tuple[int, int]:
    """(warm-up, batch) for `route`: the database routes take 15 to 30 times longer per request."""
    batch = args.batch_size if route == "trivial" else args.db_batch_size
    return batch // 5, batch


def run_config(
    config: Config,
    project: Project,
    args: argparse.Namespace,
    token: str,
    workdir: Path,
    child_cpus: set[int] | None,
    sink_cpus: set[int] | None,
) -> Run:
    database = workdir / f"run-{project.variant}.db"
    shutil.copyfile(project.database, database)
    spec = {
        "routes": args.routes,
        "batches": args.batches,
        "sizes": {route: sizes(route, args) for route in args.routes},
        "concurrency": args.concurrency,
        "token": token,
        # Flushes in proportion to the envelopes expected: a few per batch when every request
        # is traced, only the batch's last one with tracing off.
        "flush_every": round(args.flush_every / config.traced) if config.traced else 0,
    }
    if args.profile:
        name = config.name.replace(" ", "-").replace("(", "").replace(")", "")
        spec["profile"] = str(args.profile / f"{name}-{{route}}.txt")
    log = workdir / "child.log"
    with sink(sink_cpus) as (dsn, count):
        env = {**base_env(database, workdir)}
        env.update({key: value.format(dsn=dsn) for key, value in config.env.items()})
        if config.stock_rate is not None:
            spec["stock"] = {"dsn": dsn, "rate": config.stock_rate}
        with log.open("w") as errors:
            result = subprocess.run(
                [str(project.python), str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                cwd=workdir,  # not the project's folder: its .env, if any, is not read
                env=env,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                timeout=900,
                check=False,
                preexec_fn=pinned(child_cpus),
            )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        sys.exit(f"{config.name} failed ({result.returncode}):\n{log.read_text()[-4000:]}")
    data = json.loads(lines[-1].removeprefix("RESULT "))
    routes = data["routes"]
    failed = {route: figures["failures"] for route, figures in routes.items()}
    for route, figures in routes.items():
        if figures["failures"] > figures["requests"] / 100:
            sys.exit(
                f"{config.name}, {route}: {figures['failures']} of {figures['requests']} requests "
                f"failed, e.g. {figures['failure_sample']}\n{log.read_text()[-3000:]}"
            )
        if figures["failures"]:
            say(
                f"{config.name}, {route}: {figures['failures']} failed: {figures['failure_sample']}"
            )
    logged = log.read_text().splitlines()
    data["info"]["log_lines"] = len(logged)
    data["info"]["log_head"] = [line[:200] for line in logged[:3]]
    return Run(
        {route: routes[route]["cpu_us"] for route in routes},
        {route: routes[route]["wall_us"] for route in routes},
        count[0] if count else -1,
        data["info"],
        failed,
    )


def install_yappi(python: Path) -> None:
    found = subprocess.run([str(python), "-c", "import yappi"], capture_output=True, check=False)
    if found.returncode != 0:
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        command = [uv, "pip", "install", "--quiet", "--python", str(python), "yappi"]
        subprocess.run(command, check=True)


def git_state() -> str:
    def git(*arguments: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(REPO), *arguments], capture_output=True, text=True
        )
        return result.stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + (" with uncommitted changes" if changed else "")


def load() -> str:
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())


def machine_lines(projects: dict[str, Project]) -> list[str]:
    versions = {}
    for variant, project in projects.items():
        probe = (
            "import platform, importlib.metadata as m\n"
            "def v(n):\n"
            "    try:\n        return m.version(n)\n"
            "    except m.PackageNotFoundError:\n        return '-'\n"
            "print(platform.python_version(), v('sentry-sdk'), v('fastapi'), v('starlette'),"
            " v('sqlalchemy'))"
        )
        out = subprocess.run(
            [str(project.python), "-c", probe], capture_output=True, text=True, check=True
        ).stdout.split()
        versions[variant] = out
    yes = versions.get("yes", ["?"] * 5)
    return [
        f"machine: {platform.machine()}, nproc {len(cpus()) or os.cpu_count()} "
        f"(cpu_count {os.cpu_count()}), {platform.platform()}",
        f"driver Python {platform.python_version()}; projects' Python "
        f"{', '.join(f'{v}: {o[0]}' for v, o in versions.items())}",
        f"sentry-sdk {yes[1]}, fastapi {yes[2]}, starlette {yes[3]}, sqlalchemy {yes[4]}",
        *(f"project {v}: {p.path} (python {p.python})" for v, p in projects.items()),
    ]


def print_table(
    runs: dict[str, list[Run]], selected: list[Config], args: argparse.Namespace
) -> None:
    routes: list[str] = args.routes
    base = runs["no"]
    names = [c.name for c in selected]
    width = max(len(n) for n in names)
    header = (
        f"| {'route':<8} | {'configuration':<{width}} | {'CPU us/req':>10} | {'x no':>5} | "
        f"{'x no min-max':>12} | {'+us/req':>8} | {'best us':>7} | {'x no best':>9} | "
        f"{'wall us':>7} |"
    )
    rule = "|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|"
    print(header)
    print(rule)
    for route in routes:
        for name in names:
            cpu = [r.cpu_us[route] for r in runs[name]]
            pairs = list(zip(base, runs[name], strict=True))  # one of each per round
            ratios = [b.cpu_us[route] / r.cpu_us[route] for b, r in pairs]
            added = [r.cpu_us[route] - b.cpu_us[route] for b, r in pairs]
            wall = [r.wall_us[route] for r in runs[name]]
            print(
                f"| {route:<8} | {name:<{width}} | {statistics.median(cpu):>10.0f} | "
                f"{statistics.median(ratios):>5.2f} | "
                f"{f'{min(ratios):.2f}-{max(ratios):.2f}':>12} | "
                f"{statistics.median(added):>+8.0f} | {min(cpu):>7.0f} | "
                f"{min(r.cpu_us[route] for r in base) / min(cpu):>9.2f} | "
                f"{statistics.median(wall):>7.0f} |"
            )
        print(rule)
    print_goals(runs, args)
    per_route = [sizes(route, args) for route in routes]
    requests = sum(warmup + args.batches * size for warmup, size in per_route)
    requests += 1  # the row auth+db reads
    print(
        f"\nenvelopes received by the sink per run ({requests} requests per run; a traced "
        f"request sends one transaction):"
    )
    for config in selected:
        counts = [r.envelopes for r in runs[config.name]]
        expected = f", ~{config.traced * requests:.0f} expected" if config.traced else ""
        print(f"  {config.name:<{width}}  {counts}{expected}")
    print("\nwhat each configuration ran (first round):")
    for config in selected:
        info = runs[config.name][0].info
        bits = [f"sentry active={info.get('sentry_active')}"]
        if info.get("sentry_active"):
            bits.append(
                f"traces_sample_rate={info.get('traces_sample_rate')}, "
                f"traces_sampler={info.get('traces_sampler')}, transport={info.get('transport')}"
            )
            bits.append(f"integrations={','.join(info.get('integrations', []))}")
        bits.append(f"app middleware={info.get('middleware') or 'none'}")
        bits.append(f"log lines={info.get('log_lines')}")
        print(f"  {config.name}: " + "; ".join(bits))
        for line in info.get("log_head", []):
            print(f"      log: {line}")


def print_goals(runs: dict[str, list[Run]], args: argparse.Namespace) -> None:
    where = "pinned" if args.pin else "not pinned"
    lines = []
    for (route, name), least in GOALS[where].items():
        if route not in args.routes or name not in runs:
            continue
        pairs = zip(runs["no"], runs[name], strict=True)
        ratio = statistics.median(b.cpu_us[route] / r.cpu_us[route] for b, r in pairs)
        verdict = "met" if ratio >= least else "NOT met"
        lines.append(f"  {route:<8} {name:<16} x no {ratio:.2f}, goal {least:.2f}: {verdict}")
    if lines:
        print(f"\ngoals ({where}, median of the rounds' ratios):")
        print("\n".join(lines))


def measure(
    args: argparse.Namespace,
    paths: dict[str, tuple[Path, Path]],
    selected: list[Config],
    workdir: Path,
) -> None:
    from tests.support.probe import make_token

    projects = {}
    for variant, (path, python) in paths.items():
        database = workdir / f"base-{variant}.db"
        migrate(path, python, database, workdir)
        projects[variant] = Project(variant, path, python, database)

    available = cpus()
    if args.pin and available:
        child_cpus: set[int] | None = {available[0]}
        sink_cpus: set[int] | None = set(available[1:]) or {available[0]}
        where = f"pinned: each run on CPU {available[0]}, the sink on {sorted(sink_cpus)}"
    else:
        child_cpus = sink_cpus = None
        where = "not pinned"
    for line in machine_lines(projects):
        print(line)
    print(
        f"{args.rounds} rounds in rotating order, each configuration in a fresh interpreter; "
        f"{where}; ENVIRONMENT=test, LOG_LEVEL=WARNING, SQLite file in {workdir}\n"
        f"per route: best of {args.batches} batches (CPU = process_time over the batch and its "
        f"flush) after a fifth of one as warm-up, batches of {args.batch_size} requests (trivial),"
        f" {args.db_batch_size} (auth+db, write), "
        f"{args.concurrency} requests in flight, each in its own task; with tracing on, a flush "
        f"every ~{args.flush_every} expected transactions too (the SDK's queue holds 100)\n"
        f"{load()} at the start",
        flush=True,
    )

    token = make_token("bench-user", "bench-tenant", "bench@example.com")
    runs: dict[str, list[Run]] = defaultdict(list)
    started = time.perf_counter()
    print("\nper run (CPU us/request per route; envelopes at the sink):")
    for number in range(args.rounds):
        shift = number % len(selected)
        for config in selected[shift:] + selected[:shift]:
            run = run_config(
                config, projects[config.variant], args, token, workdir, child_cpus, sink_cpus
            )
            runs[config.name].append(run)
            figures = "  ".join(f"{r} {run.cpu_us[r]:6.0f}" for r in args.routes)
            if any(run.failed.values()):
                figures += f"  failed requests {run.failed}"
            print(f"  round {number + 1}  {config.name:<20} {figures}  envelopes {run.envelopes}")
            say(f"round {number + 1}: {config.name} done ({time.perf_counter() - started:.0f} s)")
    print(
        f"\nmedians over {args.rounds} rounds; x no = no's CPU per request / this one's, within a "
        "round (below 1 = dearer), its median and range; +us/req = extra CPU per request against "
        "no, median of the rounds' differences;\nbest us = the lowest of the rounds (another "
        "process on the CPU only ever adds), x no best = no's best / this one's best; wall us = "
        "elapsed time per request, median\n"
    )
    print_table(runs, selected, args)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; {load()} at the end")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=3, help="batches per route; best is kept")
    parser.add_argument("--batch-size", type=int, default=1000, help="requests, trivial route")
    parser.add_argument(
        "--db-batch-size", type=int, default=300, help="requests, auth+db and write routes"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument(
        "--flush-every",
        type=int,
        default=50,
        help="flush after this many expected transactions (the SDK's queue holds 100)",
    )
    parser.add_argument(
        "--routes", default=",".join(ROUTES), help="comma-separated, of: %(default)s"
    )
    parser.add_argument("--configs", help="comma-separated names (default: all); `no` is added")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each run on the first CPU, the sink on the others (default); --no-pin: free",
    )
    shm = Path("/dev/shm")
    parser.add_argument(
        "--db-dir",
        type=Path,
        default=shm if shm.is_dir() and os.access(shm, os.W_OK) else None,
        help="where the SQLite files go (default: %(default)s, a tmpfs: on a disk, other "
        "processes' writes stalled commits past SQLite's 5 s lock timeout)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="a folder: each configuration's run under yappi writes where its CPU went there, "
        "one file per route (yappi is installed into the projects' environments)",
    )
    parser.add_argument("--label", help="what is measured (a commit, say), printed at the top")
    for variant in ("no", "yes"):
        parser.add_argument(f"--project-{variant}", type=Path, help="a baked, installed project")
        parser.add_argument(f"--python-{variant}", type=Path, help="its interpreter")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0

    sys.path.insert(0, str(REPO))
    args.routes = [route.strip() for route in args.routes.split(",") if route.strip()]
    if unknown := set(args.routes) - set(ROUTES):
        parser.error(f"unknown routes: {sorted(unknown)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    selected = configs()
    if args.configs:
        wanted = {"no", *(name.strip() for name in args.configs.split(","))}
        selected = [c for c in selected if c.name in wanted]
        if unknown := wanted - {c.name for c in selected}:
            parser.error(f"unknown configurations: {sorted(unknown)}; see the table's names")

    print("$ " + shlex.join([sys.executable, *sys.argv]))
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M:%S %z}")
    if args.label:
        print(f"measuring: {args.label}")

    given = {v: getattr(args, f"project_{v}") for v in ("no", "yes")}
    if any(given.values()) and not all(given.values()):
        parser.error("give both --project-no and --project-yes, or neither")
    if all(given.values()):
        paths = {}
        for variant, path in given.items():
            python = getattr(args, f"python_{variant}") or path / ".venv" / "bin" / "python"
            if not Path(python).exists():
                parser.error(f"no interpreter for the {variant} project: {python}")
            paths[variant] = (path.resolve(), Path(python).absolute())
    else:
        WORK.mkdir(parents=True, exist_ok=True)
        paths = bake_from_working_tree()
        print(f"baked from the working tree of {REPO} at {git_state()}")

    if args.profile:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
        for _, python in paths.values():
            install_yappi(python)
    workdir = Path(tempfile.mkdtemp(prefix="inprocess-bench-", dir=args.db_dir))
    try:
        measure(args, paths, selected, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
