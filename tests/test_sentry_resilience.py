"""Sentry must never hurt the service (SPEC, Sentry requirements 7 and 8), checked end to end.

A generated `yes` project's probe app runs under real uvicorn and gunicorn processes, pointed at
Sentry servers that are down, hung, failing or rate limiting, and real HTTP requests go to it over
loopback. The service must start, answer every request with its usual status and no slower than
with a healthy Sentry, say once in its log that events are not accepted, stop promptly on SIGTERM,
and send the events it has queued when it stops. `python -m app.sentry check` is run against the
same kinds of servers.

Latency is only held to generous functional bounds here; the figures are printed (`-s`, `-rA`)
for a person to read. Precise latency goals belong to a benchmark, not to a test.
"""

from __future__ import annotations

import json
import re
import signal
import statistics
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import InstalledProject
from tests.support.bugsink import Bugsink
from tests.support.probe import Probe
from tests.support.recorder import Recorder, blackhole, closed_port_dsn
from tests.support.server import Response, stop

pytestmark = pytest.mark.slow

#: What `OutageLoggingTransport` in the generated app/sentry.py logs when delivery starts failing.
OUTAGE_LINE = "Sentry is not accepting events"
#: What `init_sentry` logs when SENTRY_DSN is empty.
OFF_LINE = "Sentry is off: SENTRY_DSN is empty."
#: SHUTDOWN_FLUSH_SECONDS in the generated app/sentry.py: the longest a shutdown waits for Sentry.
FLUSH_SECONDS = 2.0

#: no-dsn and answers-200 (a healthy Sentry) are the references the faults are compared with.
FAULTS = ["no-dsn", "answers-200", "closed-port", "never-answers", "answers-500", "answers-429"]
BASELINE, REFERENCE = "no-dsn", "answers-200"
REQUESTS_PER_KIND = 60
WARM_UP_REQUESTS = 5
REQUEST_TIMEOUT = 10.0
MAX_REQUEST_SECONDS = 2.0
P50_FACTOR, P50_SLACK_MS = 3.0, 5.0
STOP_BOUND_SECONDS = 8.0
LOG_TAIL_CHARS = 3000


# ---- helpers --------------------------------------------------------------------------------


def tail(log: str, chars: int = LOG_TAIL_CHARS) -> str:
    return f"\n---- last {chars} characters of the server log ----\n{log[-chars:]}"


@contextmanager
def fault_dsn(fault: str) -> Iterator[str]:
    """A DSN for a Sentry server that fails in the way `fault` names ("" for no DSN)."""
    if fault == "no-dsn":
        yield ""
    elif fault == "closed-port":
        yield closed_port_dsn()
    elif fault == "never-answers":
        with blackhole() as dsn:
            yield dsn
    elif fault.startswith("answers-"):
        with Recorder(status=int(fault.rpartition("-")[2])) as recorder:
            yield recorder.dsn
    else:  # pragma: no cover - a typo in the parameters
        raise ValueError(fault)


def call(
    probe: Probe, path: str, expected: int, method: str = "GET", body: object | None = None
) -> tuple[Response, float]:
    """One request; its answer and how long it took in ms. Fails unless the status is `expected`."""
    started = time.perf_counter()
    try:
        response = probe.call(path, method=method, body=body, timeout=REQUEST_TIMEOUT)
    except OSError as error:
        pytest.fail(f"{method} {path} got no answer ({error!r}){tail(probe.log())}")
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert response.status == expected, (
        f"{method} {path} answered {response.status}, expected {expected}: "
        f"{response.body[:300]!r}{tail(probe.log())}"
    )
    return response, elapsed_ms


def sentry_tracebacks(log: str) -> list[str]:
    """Tracebacks in the log that were raised inside sentry_sdk, and records of its loggers.

    The probe's own failures are logged with tracebacks that pass *through* sentry_sdk (its ASGI
    middleware wraps the app); only a traceback whose innermost frame is in sentry_sdk is the
    SDK's own failure. Log lines are JSON records (ENVIRONMENT=e2e) or plain text (gunicorn's
    master, or anything written to stderr directly)."""
    texts: list[str] = []
    found: list[str] = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            texts.append(line)
            continue
        if not isinstance(record, dict):
            texts.append(line)
            continue
        if str(record.get("logger", "")).startswith("sentry_sdk"):
            found.append(line)
        texts.extend(str(record[key]) for key in ("exception", "stack") if key in record)
    for block in "\n".join(texts).split("Traceback (most recent call last):")[1:]:
        frames = re.findall(r'File "([^"]+)"', block)
        if frames and "sentry_sdk" in frames[-1]:
            found.append("Traceback (most recent call last):" + block[:2000])
    return found


def p50(values: list[float]) -> float:
    return statistics.median(values)


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[94]


@dataclass
class LoadRun:
    """Latencies (ms) of one load: requests that raise (each an event) and healthy ones."""

    fault: str
    errors_ms: list[float] = field(default_factory=list)
    healthy_ms: list[float] = field(default_factory=list)
    log: str = ""
    events_received: int | None = None  # by a recording Sentry, when there is one

    def kinds(self) -> dict[str, list[float]]:
        return {"5xx": self.errors_ms, "200": self.healthy_ms}

    def summary(self, baseline: LoadRun, reference: LoadRun) -> str:
        """One line: percentiles, then the median per kind relative to no-DSN and to a healthy
        Sentry."""
        every = self.errors_ms + self.healthy_ms
        overall = p50(every) / p50(baseline.errors_ms + baseline.healthy_ms)
        ratios = "  ".join(
            f"{kind} p50 {p50(ms):.1f} ms = {p50(ms) / p50(baseline.kinds()[kind]):.1f}x no-dsn"
            f", {p50(ms) / p50(reference.kinds()[kind]):.1f}x {reference.fault}"
            for kind, ms in self.kinds().items()
        )
        return (
            f"fail-open {self.fault:<13} all: p50 {p50(every):5.1f} ms p95 {p95(every):5.1f} ms "
            f"max {max(every):5.1f} ms (p50 {overall:.1f}x no-dsn) | {ratios}"
        )


def drive_load(probe: Probe, fault: str) -> LoadRun:
    """Failing requests (each an event) interleaved with healthy ones, after a short warm-up."""
    for i in range(WARM_UP_REQUESTS):
        call(probe, f"/e2e/fail/warm-up-{i}", 500)
        call(probe, "/api/v1/items", 200)
    run = LoadRun(fault)
    for i in range(REQUESTS_PER_KIND):
        run.errors_ms.append(call(probe, f"/e2e/fail/load-{i}", 500)[1])
        run.healthy_ms.append(call(probe, "/api/v1/items", 200)[1])
    assert probe.server.process.poll() is None, f"the server exited under load{tail(probe.log())}"
    return run


def medians_within(run: LoadRun, reference: LoadRun) -> list[str]:
    """The kinds of request whose median is over P50_FACTOR x the reference's + P50_SLACK_MS."""
    over = []
    for kind, ms in run.kinds().items():
        bound = P50_FACTOR * p50(reference.kinds()[kind]) + P50_SLACK_MS
        if p50(ms) > bound:
            over.append(f"{kind} median {p50(ms):.1f} ms > {bound:.1f} ms")
    return over


# ---- 1. fail-open under faults ----------------------------------------------------------


@pytest.fixture(scope="module")
def references(
    sentry_project: InstalledProject, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, LoadRun]:
    """The load without a DSN and with a healthy Sentry, each measured once for the module."""
    runs = {}
    with sentry_project.probe(tmp_path_factory.mktemp(BASELINE), "") as probe:
        runs[BASELINE] = drive_load(probe, BASELINE)
    runs[BASELINE].log = probe.log()
    with (
        Recorder() as recorder,
        sentry_project.probe(tmp_path_factory.mktemp(REFERENCE), recorder.dsn) as probe,
    ):
        runs[REFERENCE] = drive_load(probe, REFERENCE)
    runs[REFERENCE].log = probe.log()
    runs[REFERENCE].events_received = len(recorder.events())
    return runs


@pytest.mark.parametrize("fault", FAULTS)
def test_service_fails_open(
    fault: str, references: dict[str, LoadRun], sentry_project: InstalledProject, tmp_path: Path
) -> None:
    baseline, reference = references[BASELINE], references[REFERENCE]
    stop_seconds: float | None = None
    if fault in references:
        run = references[fault]
    else:
        with fault_dsn(fault) as dsn, sentry_project.probe(tmp_path, dsn) as probe:
            run = drive_load(probe, fault)
            if fault == "never-answers":
                stop_seconds = stop(probe.server)
        run.log = probe.log()  # complete: the server has stopped
    summary = run.summary(baseline, reference)
    print(f"\n{summary}")

    slowest = max(run.errors_ms + run.healthy_ms)
    assert slowest < MAX_REQUEST_SECONDS * 1000, (
        f"{fault}: a request took {slowest:.0f} ms (bound {MAX_REQUEST_SECONDS} s): "
        f"{summary}{tail(run.log)}"
    )
    # A Sentry that is down or failing must cost nothing over a healthy one. What capturing
    # an error costs at all (next to no DSN) is test_capturing_errors_costs_little.
    over = medians_within(run, reference)
    assert not over, (
        f"{fault}: slower than with a healthy Sentry ({P50_FACTOR}x its median + "
        f"{P50_SLACK_MS} ms): {'; '.join(over)}\n{summary}"
    )

    outage_lines = run.log.count(OUTAGE_LINE)
    if fault == BASELINE:
        assert OFF_LINE in run.log, f"no-dsn: the log does not say {OFF_LINE!r}{tail(run.log)}"
    if fault in references:
        assert outage_lines == 0, f"{fault}: the log reports an outage{tail(run.log)}"
    elif fault == "never-answers":
        # The first send blocks for the transport's read timeout, so the outage may be reported
        # only after this load: test_hung_sentry_is_reported_before_shutdown checks that it is.
        assert outage_lines <= 1, (
            f"{fault}: {OUTAGE_LINE!r} is logged {outage_lines} times, at most once expected"
            f"{tail(run.log)}"
        )
    else:
        assert outage_lines == 1, (
            f"{fault}: {OUTAGE_LINE!r} is logged {outage_lines} times, exactly once expected"
            f"{tail(run.log)}"
        )
    leaked = sentry_tracebacks(run.log)
    assert not leaked, f"{fault}: the log has sentry_sdk errors:\n" + "\n".join(leaked)[:4000]

    if run.events_received is not None:
        sent = WARM_UP_REQUESTS + REQUESTS_PER_KIND
        assert run.events_received == sent, (
            f"{fault}: Sentry received {run.events_received} events for {sent} failed requests"
        )
    if stop_seconds is not None:
        print(f"fail-open {fault:<13} SIGTERM to exit: {stop_seconds:.2f} s")
        assert stop_seconds < STOP_BOUND_SECONDS, (
            f"{fault}: SIGTERM took {stop_seconds:.1f} s to stop the server "
            f"(bound {STOP_BOUND_SECONDS} s){tail(run.log)}"
        )


def test_capturing_errors_costs_little(references: dict[str, LoadRun]) -> None:
    """With a healthy Sentry, the same load stays within the generous bound of no DSN."""
    baseline, reference = references[BASELINE], references[REFERENCE]
    over = medians_within(reference, baseline)
    assert not over, (
        f"capturing errors for a healthy Sentry costs more than {P50_FACTOR}x the no-DSN median "
        f"+ {P50_SLACK_MS} ms: {'; '.join(over)}\n{reference.summary(baseline, reference)}"
    )


def test_hung_sentry_is_reported_before_shutdown(
    sentry_project: InstalledProject, tmp_path: Path
) -> None:
    """A Sentry that never answers is named in the log within seconds, or at the latest when
    the service stops with events it could not send."""
    wait_seconds = 6.0
    with blackhole() as dsn, sentry_project.probe(tmp_path, dsn) as probe:
        for i in range(3):
            call(probe, f"/e2e/fail/hung-{i}", 500)
        deadline = time.monotonic() + wait_seconds
        while OUTAGE_LINE not in probe.log() and time.monotonic() < deadline:
            time.sleep(0.2)
    log = probe.log()
    assert log.count(OUTAGE_LINE) == 1, (
        f"a hung Sentry is not reported ({OUTAGE_LINE!r} logged {log.count(OUTAGE_LINE)} "
        f"times) within {wait_seconds} s or at shutdown{tail(log)}"
    )


# ---- 2. events queued at shutdown are sent, with a bounded wait ---------------------------


def post_message(probe: Probe, label: str) -> dict[str, str]:
    body = call(probe, f"/e2e/message/{label}", 200, method="POST")[0].json()
    assert isinstance(body, dict) and body.get("event_id"), f"no event id in {body!r}"
    return body


def recorded_ids(recorder: Recorder) -> set[str]:
    return {str(event.get("event_id")) for event in recorder.events()}


def clean_exit(probe: Probe) -> str | None:
    """None if the server ended as SIGTERM asks (uvicorn re-raises the signal once it has shut
    down cleanly), else what went wrong."""
    code = probe.server.process.returncode
    if code in (0, -signal.SIGTERM):
        return None
    return f"the server ended with exit code {code}, not by SIGTERM{tail(probe.log())}"


def test_uvicorn_flushes_queued_events_at_shutdown(
    sentry_project: InstalledProject, tmp_path: Path
) -> None:
    count, delay = 5, 0.3
    with (
        Recorder(delay=delay) as recorder,
        sentry_project.probe(tmp_path, recorder.dsn) as probe,
    ):
        sent = [post_message(probe, f"uvicorn-{i}")["event_id"] for i in range(count)]
        before = len(recorded_ids(recorder) & set(sent))
        seconds = stop(probe.server)
        missing = set(sent) - recorded_ids(recorder)
    log = probe.log()
    print(
        f"\nshutdown flush, uvicorn: {count} events ({before} sent before SIGTERM), "
        f"SIGTERM to exit {seconds:.2f} s"
    )
    assert before < count, f"all {count} events were sent before SIGTERM: nothing to flush"
    assert not missing, (
        f"{len(missing)} of {count} events captured before SIGTERM never reached Sentry "
        f"(a slow server answering in {delay} s): {sorted(missing)}{tail(log)}"
    )
    assert seconds < FLUSH_SECONDS + 3, f"the shutdown took {seconds:.1f} s{tail(log)}"
    assert clean_exit(probe) is None, clean_exit(probe)


def test_gunicorn_workers_flush_queued_events_at_shutdown(
    sentry_project: InstalledProject, tmp_path: Path
) -> None:
    # Each worker sends its own queue; at 0.06 s an event even the most any one worker can get
    # here (all of them) fits in the flush bound, so a lost event is a real loss.
    least, batches, per_batch, delay = 12, 6, 4, 0.06
    heavy_body = {"title": "heavy", "padding": list(range(200_000))}
    sent: list[dict[str, str]] = []

    def one(index: int) -> dict[str, str] | None:
        if index == 0:  # a request whose JSON parsing keeps one worker's event loop busy
            call(probe, "/api/v1/items", 201, method="POST", body=heavy_body)
            return None
        return post_message(probe, f"gunicorn-{len(sent) + index}")

    with (
        Recorder(delay=delay) as recorder,
        sentry_project.probe(tmp_path, recorder.dsn, gunicorn_workers=2) as probe,
        ThreadPoolExecutor(max_workers=per_batch + 1) as pool,
    ):
        # An idle gunicorn lets one worker accept nearly every connection; messages sent while
        # that worker is busy go to the other one. Bounded: at most `batches` rounds.
        for _ in range(batches):
            sent.extend(m for m in pool.map(one, range(per_batch + 1)) if m is not None)
            if len(sent) >= least and len({m["pid"] for m in sent}) == 2:
                break
        pids = {message["pid"] for message in sent}
        per_worker = {pid: sum(m["pid"] == pid for m in sent) for pid in sorted(pids)}
        assert len(pids) == 2, (
            f"{len(sent)} messages went to workers {per_worker}, not to two workers"
            f"{tail(probe.log())}"
        )
        sent_ids = {message["event_id"] for message in sent}
        before = len(recorded_ids(recorder) & sent_ids)
        seconds = stop(probe.server)
        missing = sent_ids - recorded_ids(recorder)
        worker_pids = {
            str(event.get("contexts", {}).get("worker", {}).get("pid"))
            for event in recorder.events()
        }
    log = probe.log()
    print(
        f"\nshutdown flush, gunicorn: {len(sent)} events from workers {per_worker} "
        f"({before} sent before SIGTERM), SIGTERM to the master to exit {seconds:.2f} s"
    )
    assert before < len(sent), f"all {len(sent)} events were sent before SIGTERM"
    assert not missing, (
        f"{len(missing)} of {len(sent)} events captured before SIGTERM never reached Sentry "
        f"(a slow server answering in {delay} s): {sorted(missing)}{tail(log)}"
    )
    assert pids <= worker_pids, f"events came from workers {worker_pids}, expected {pids}"
    assert seconds < STOP_BOUND_SECONDS, f"the shutdown took {seconds:.1f} s{tail(log)}"
    assert probe.server.process.returncode == 0, (
        f"gunicorn's master ended with exit code {probe.server.process.returncode}{tail(log)}"
    )


def test_shutdown_waits_only_so_long_for_a_hung_sentry(
    sentry_project: InstalledProject, tmp_path: Path
) -> None:
    bound = FLUSH_SECONDS + 2.0
    with blackhole() as dsn, sentry_project.probe(tmp_path, dsn) as probe:
        for i in range(3):
            post_message(probe, f"hung-{i}")
        seconds = stop(probe.server)
    print(f"\nshutdown with a hung Sentry: SIGTERM to exit {seconds:.2f} s")
    assert seconds < bound, (
        f"with events stuck on a Sentry that never answers, SIGTERM took {seconds:.1f} s to "
        f"stop the server (bound: the {FLUSH_SECONDS} s flush + 2 s){tail(probe.log())}"
    )
    assert clean_exit(probe) is None, clean_exit(probe)


# ---- 3. `python -m app.sentry check` against real servers ---------------------------------


def run_check(project: InstalledProject, dsn: str) -> tuple[int, str, str]:
    result = project.run("python", "-m", "app.sentry", "check", env={"SENTRY_DSN": dsn}, timeout=60)
    return result.returncode, result.stdout, result.stderr


def test_check_passes_against_bugsink(sentry_project: InstalledProject, bugsink: Bugsink) -> None:
    project = bugsink.create_project(f"check-{uuid.uuid4().hex[:8]}")
    code, stdout, stderr = run_check(sentry_project, project.dsn)
    shown = f"exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    assert code == 0, shown
    assert stdout.startswith("OK:"), shown
    events = bugsink.wait_for_events(project, 1, timeout=15)
    messages = [event.get("message") for event in events]
    assert len(events) == 1, f"Bugsink stored {len(events)} events: {messages}\n{shown}"
    assert str(messages[0]).startswith("Sentry check from "), f"{messages}\n{shown}"
    assert events[0]["event_id"] in stdout, f"stored {events[0]['event_id']}, {shown}"


@contextmanager
def check_target(kind: str) -> Iterator[tuple[str, Recorder | None]]:
    if kind == "closed-port":
        yield closed_port_dsn(), None
    elif kind == "empty-dsn":
        yield "", None
    else:
        with Recorder(status=int(kind.rpartition("-")[2])) as recorder:
            yield recorder.dsn, recorder


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("closed-port", "could not reach"),
        ("answers-500", "HTTP 500"),
        ("answers-429", "HTTP 429"),
        ("empty-dsn", "SENTRY_DSN"),
    ],
)
def test_check_fails_clearly(sentry_project: InstalledProject, kind: str, expected: str) -> None:
    with check_target(kind) as (dsn, recorder):
        code, stdout, stderr = run_check(sentry_project, dsn)
        received = len(recorder.events()) if recorder else None
    shown = f"exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    assert code == 1, shown
    assert stderr.startswith("FAILED:"), shown
    assert expected in stderr, f"the message does not say {expected!r}: {shown}"
    assert "Traceback" not in stderr, shown
    if recorder is not None:
        assert received == 1, f"the server received {received} test events, expected 1: {shown}"
