"""Events the service drops reach Sentry as client reports, as the SDK's own transport sends them.

A client report is an envelope item of type `client_report`:
`{"timestamp": ..., "discarded_events": [{"reason": ..., "category": ..., "quantity": n}]}`; Sentry
shows them as the events a project lost and why. The SDK's transport counts what it drops and
sends the counts with a later envelope and at every flush (so at the latest when the service
stops). The reasons checked here are the SDK's: `before_send` (flood control drops an event in
`before_send`), `ratelimit_backoff` (the server asked for no errors for a while),
`network_error` (no connection, with no spool to keep the event) and `queue_overflow` (events
come faster than they can be sent).

Bugsink throws client reports away, so the generated `yes` project's probe app reports to the
recording endpoint (tests/support/recorder.py), and the envelopes' items are decoded here. Each
test stops the service with SIGTERM before it reads the reports: the shutdown flush is the one
moment at which a transport must send what it has counted.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import InstalledProject
from tests.support.probe import Probe, sentry_log
from tests.support.recorder import Recorder
from tests.support.server import free_port, stop

pytestmark = pytest.mark.slow

#: What the transport logs when delivery starts failing (tests/test_sentry_resilience.py).
OUTAGE_LINE = "Sentry is not accepting events"
#: The SDK's `transport_queue_size` default, which the service does not change.
QUEUE_SIZE = 100
DELIVERY_TIMEOUT = 20.0
#: No spool: an event that cannot be delivered is dropped, and so counted.
NO_SPOOL = {"SENTRY_SPOOL_ENABLED": "false"}

Discards = collections.Counter[tuple[str, str]]


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def client_reports(recorder: Recorder) -> list[dict[str, Any]]:
    """Every `client_report` item the endpoint received, decoded from the raw envelopes and
    checked for the shape Sentry accepts."""
    reports = []
    for envelope in list(recorder.envelopes):
        for header, payload in envelope.items:
            if header.get("type") != "client_report":
                continue
            report = json.loads(payload)
            assert isinstance(report.get("timestamp"), int | float), (
                f"a client report without a numeric timestamp: {report}"
            )
            discarded = report.get("discarded_events")
            assert isinstance(discarded, list) and discarded, (
                f"a client report without discarded events: {report}"
            )
            for entry in discarded:
                assert (
                    isinstance(entry.get("reason"), str)
                    and isinstance(entry.get("category"), str)
                    and isinstance(entry.get("quantity"), int)
                    and entry["quantity"] > 0
                ), f"a discarded-events entry Sentry would not take: {entry} in {report}"
            reports.append(report)
    return reports


def discards(recorder: Recorder) -> Discards:
    """(reason, category) -> quantity, summed over every client report received."""
    counted: Discards = collections.Counter()
    for report in client_reports(recorder):
        for entry in report["discarded_events"]:
            counted[entry["reason"], entry["category"]] += entry["quantity"]
    return counted


def events_tagged(recorder: Recorder, label: str) -> list[dict[str, Any]]:
    return [e for e in recorder.events() if (e.get("tags") or {}).get("probe") == label]


def fail(probe: Probe, label: str) -> None:
    answer = probe.call(f"/e2e/fail/{label}", timeout=10)
    assert answer.status == 500, (
        f"/e2e/fail/{label} answered {answer.status}, not 500: {answer.body[:300]!r}"
        f"{sentry_log(probe.log())}"
    )


def fail_until_one_arrives(probe: Probe, recorder: Recorder, prefix: str) -> int:
    """Fail requests labelled `prefix`-N, one a second, until an event of one reaches the server;
    how many were made. The transport sends in order: once one is in, all queued before it are
    sent (or dropped), and the next may be dropped while the queue is full or while it backs off.
    """
    made = 0

    def arrived() -> bool:
        nonlocal made
        fail(probe, f"{prefix}-{made}")
        made += 1
        return wait_until(lambda: bool(events_labelled(recorder, prefix)), 1.0)

    assert wait_until(arrived, DELIVERY_TIMEOUT + 40), (
        f"no event of {made} failed requests {prefix}-N reached the server{sentry_log(probe.log())}"
    )
    return made


def events_labelled(recorder: Recorder, prefix: str) -> list[dict[str, Any]]:
    return [
        e for e in recorder.events() if str((e.get("tags") or {}).get("probe")).startswith(prefix)
    ]


def stop_and_read(probe: Probe, recorder: Recorder) -> tuple[Discards, str]:
    """SIGTERM the service (its shutdown flush sends the reports); what was reported, and the
    complete log."""
    stop(probe.server)
    return discards(recorder), probe.log()


def shown(counted: Discards, recorder: Recorder) -> str:
    kinds = collections.Counter(
        header.get("type") for envelope in list(recorder.envelopes) for header, _ in envelope.items
    )
    return f"client reports say {dict(counted)}; items received by type: {dict(kinds)}"


def test_one_error_reports_nothing_dropped(
    sentry_project: InstalledProject, tmp_path: Path
) -> None:
    """A failed request is one event: the copy of it that uvicorn's error log would make is not
    an event lost, and must not be counted as one (Sentry would show it as dropped)."""
    with Recorder() as recorder, sentry_project.probe(tmp_path, recorder.dsn) as probe:
        fail(probe, "single")
        wait_until(lambda: bool(events_tagged(recorder, "single")), DELIVERY_TIMEOUT)
        counted, log = stop_and_read(probe, recorder)
        sent = len(events_tagged(recorder, "single"))
    assert sent == 1, f"{sent} events were sent for one failed request{sentry_log(log)}"
    assert not counted, (
        f"nothing was lost, yet {shown(counted, recorder)} (one failed request, one event sent)"
        f"{sentry_log(log)}"
    )


def test_flood_control_drops_are_reported_as_before_send(
    sentry_project: InstalledProject, tmp_path: Path
) -> None:
    cap, hits = 3, 10
    settings = {"SENTRY_FLOOD_MAX_EVENTS": str(cap), "SENTRY_FLOOD_WINDOW_SECONDS": "600"}
    with Recorder() as recorder, sentry_project.probe(tmp_path, recorder.dsn, **settings) as probe:
        for _ in range(hits):
            fail(probe, "flood")
        wait_until(lambda: len(events_tagged(recorder, "flood")) >= cap, DELIVERY_TIMEOUT)
        counted, log = stop_and_read(probe, recorder)
        sent = len(events_tagged(recorder, "flood"))
    assert sent == cap, f"{sent} events of {hits} hits were sent, flood control allows {cap}"
    assert counted["before_send", "error"] == hits - cap, (
        f"flood control dropped {hits - cap} error events in before_send, but "
        f"{shown(counted, recorder)}{sentry_log(log)}"
    )
    assert set(counted) == {("before_send", "error")}, (
        f"other drops than flood control's were reported: {shown(counted, recorder)}"
    )


def test_events_dropped_under_a_rate_limit_are_reported_as_ratelimit_backoff(
    sentry_project: InstalledProject, tmp_path: Path
) -> None:
    """Sentry answers 429 with `X-Sentry-Rate-Limits` for errors only (a limit on every category,
    as a bare `Retry-After` sets, would hold back the client report itself, in the SDK too)."""
    later = 4
    limit = {"X-Sentry-Rate-Limits": "60:error:key"}
    with (
        Recorder(status=429, headers=limit) as recorder,
        sentry_project.probe(tmp_path, recorder.dsn, **NO_SPOOL) as probe,
    ):
        fail(probe, "limited-first")
        first = wait_until(lambda: bool(events_tagged(recorder, "limited-first")), DELIVERY_TIMEOUT)
        assert first, f"the first event never reached the server{sentry_log(probe.log())}"
        for n in range(later):
            fail(probe, f"limited-{n}")
        counted, log = stop_and_read(probe, recorder)
        sent_later = [n for n in range(later) if events_tagged(recorder, f"limited-{n}")]
    assert not sent_later, (
        f"events {sent_later} were sent although Sentry had asked for no errors for 60 s"
    )
    assert counted["ratelimit_backoff", "error"] == later, (
        f"{later} error events were dropped under the server's rate limit (the first one, "
        f"answered 429, Sentry counts itself), but {shown(counted, recorder)}{sentry_log(log)}"
    )


def test_events_dropped_in_an_outage_without_a_spool_are_reported_as_network_error(
    sentry_project: InstalledProject, tmp_path: Path
) -> None:
    port, during = free_port(), 5
    dsn = f"http://public@127.0.0.1:{port}/1"
    with sentry_project.probe(tmp_path, dsn, **NO_SPOOL) as probe:
        for n in range(during):
            fail(probe, f"outage-{n}")
        noticed = wait_until(lambda: OUTAGE_LINE in probe.log(), DELIVERY_TIMEOUT)
        assert noticed, (
            f"the service did not log {OUTAGE_LINE!r} with Sentry down{sentry_log(probe.log())}"
        )
        with Recorder(port=port) as recorder:
            markers = fail_until_one_arrives(probe, recorder, "back")
            counted, log = stop_and_read(probe, recorder)
            received = len(recorder.events())
    fired = during + markers
    lost = fired - received
    assert lost >= 1, f"all {fired} events arrived: the outage lost none{sentry_log(log)}"
    assert counted["network_error", "error"] == lost, (
        f"{lost} of {fired} error events never arrived ({during} while Sentry was down, "
        f"{markers} after it came back), but {shown(counted, recorder)}{sentry_log(log)}"
    )
    # before_send is test_one_error_reports_nothing_dropped's, not this test's, business.
    reasons = {key for key in counted if key[0] != "before_send"}
    assert reasons == {("network_error", "error")}, (
        f"other reasons than network_error were reported: {shown(counted, recorder)}"
    )


def test_events_dropped_by_a_full_queue_are_reported_as_queue_overflow(
    sentry_project: InstalledProject, tmp_path: Path
) -> None:
    """The server holds its answer to the first envelope while the service raises more errors
    than its queue holds; then it answers them all."""
    fired = QUEUE_SIZE + 20
    with Recorder() as recorder, sentry_project.probe(tmp_path, recorder.dsn, **NO_SPOOL) as probe:
        recorder.answering.clear()
        fail(probe, "queued")
        sending = wait_until(lambda: bool(recorder.events()), DELIVERY_TIMEOUT)
        assert sending, f"the first event never reached the server{sentry_log(probe.log())}"
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda _: fail(probe, "queued"), range(fired - 1)))
        recorder.answering.set()
        markers = fail_until_one_arrives(probe, recorder, "drained")
        counted, log = stop_and_read(probe, recorder)
        received = len(events_tagged(recorder, "queued"))
        markers_lost = markers - len(events_labelled(recorder, "drained"))
    lost = fired - received
    assert lost > 0, (
        f"all {fired} events fitted in the queue (of {QUEUE_SIZE} expected){sentry_log(log)}"
    )
    # The held envelope may time out on a slow machine: received here, a network error there.
    timed_out = counted["network_error", "error"]
    assert timed_out <= 1, f"only the held envelope could fail, yet {shown(counted, recorder)}"
    assert counted["queue_overflow", "error"] == lost + markers_lost, (
        f"{lost} of {fired} error events were dropped with the queue full (and {markers_lost} "
        f"of {markers} made while it emptied), but {shown(counted, recorder)}{sentry_log(log)}"
    )
