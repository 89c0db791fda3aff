"""No event lost while Sentry is down, and no flood while the service is on fire (issue 5).

A generated `yes` project's probe app runs under uvicorn; Sentry is a real Bugsink server that
the tests stop and start again (same port, same data), as an outage would. Events are identified
by the ids the app answers with, and counted twice: as Bugsink stored them, and as envelope
requests Bugsink's access log says it accepted (so a duplicate that a server might fold away is
still seen).
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.conftest import InstalledProject
from tests.support.bugsink import Bugsink, BugsinkProject
from tests.support.probe import Probe
from tests.support.server import stop

pytestmark = pytest.mark.slow

#: Events caused while Bugsink is down, over two processes and a restart (acceptance: >= 200).
OUTAGE_EVENTS = 240
DELIVERY_TIMEOUT = 150.0


@contextmanager
def outage(bugsink: Bugsink) -> Iterator[None]:
    """Bugsink down from the start of the block (which may start it again); up after it."""
    bugsink.stop_server()
    try:
        yield
    finally:
        if bugsink.process.poll() is not None:
            bugsink.start_server()


def message(running: Probe, label: str) -> str:
    answer = running.call(f"/e2e/message/{label}", method="POST", timeout=10)
    assert answer.status == 200, f"/e2e/message/{label} answered {answer.status}"
    event_id = answer.json()["event_id"]  # type: ignore[index]
    assert isinstance(event_id, str) and event_id, answer.body
    return event_id


def accepted_envelopes(bugsink: Bugsink, project: BugsinkProject) -> int:
    """Envelope requests for `project` that Bugsink's access log shows answered with 200."""
    pattern = re.compile(rf'"POST /api/{project.id}/envelope/ HTTP/1\.1" 200 ')
    return len(pattern.findall(bugsink.log_path.read_text(errors="replace")))


def stored_ids(bugsink: Bugsink, project: BugsinkProject, count: int) -> list[str]:
    return [str(event["event_id"]) for event in bugsink.wait_for_events(project, count, 60)]


def stored_when(
    bugsink: Bugsink, project: BugsinkProject, at_least: int, enough: Callable[[list[str]], bool]
) -> list[str]:
    """The ids Bugsink stored, asked again until `enough` holds or DELIVERY_TIMEOUT passes."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    stored = stored_ids(bugsink, project, at_least)
    while not enough(stored) and time.monotonic() < deadline:
        stored = stored_ids(bugsink, project, at_least)
    return stored


def wait_for_files(directory: Path, count: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while len(list(directory.glob("*.envelope"))) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(list(directory.glob("*.envelope")))


def test_every_event_of_an_outage_arrives_once(
    sentry_project: InstalledProject, bugsink: Bugsink, tmp_path: Path
) -> None:
    project = bugsink.create_project("spool-outage")
    spool_dir = tmp_path / "spool"
    spool = {"SENTRY_SPOOL_DIR": str(spool_dir)}
    third = OUTAGE_EVENTS // 3
    sent: list[str] = []
    with outage(bugsink), ExitStack() as running:
        first = running.enter_context(
            sentry_project.probe(tmp_path / "first", project.dsn, **spool)
        )
        second = running.enter_context(
            sentry_project.probe(tmp_path / "second", project.dsn, **spool)
        )
        for n in range(third):
            sent.append(message(first, f"first-{n}"))
            sent.append(message(second, f"second-{n}"))
        stop(first.server)  # a restart: the first process goes, a new one comes
        restarted = running.enter_context(
            sentry_project.probe(tmp_path / "restarted", project.dsn, **spool)
        )
        sent.extend(message(restarted, f"restarted-{n}") for n in range(third))
        waiting = wait_for_files(spool_dir, len(sent))
        started = time.monotonic()
        bugsink.start_server()
        stored_when(bugsink, project, len(sent), lambda stored: len(stored) >= len(sent))
        seconds = time.monotonic() - started
        time.sleep(2)  # time for a duplicate to show up, if one were coming
        stored = stored_ids(bugsink, project, len(sent))
        logs = "".join(p.log() for p in (first, second, restarted))
    print(
        f"\noutage: {len(sent)} events over two processes and a restart, {waiting} waiting in "
        f"the spool; all stored {seconds:.1f} s after Bugsink started"
    )
    assert len(sent) >= 200 and len(set(sent)) == len(sent), "the app gave duplicate ids"
    counts = collections.Counter(stored)
    missing = set(sent) - set(stored)
    assert not missing, f"{len(missing)} of {len(sent)} events never arrived\n{logs[-3000:]}"
    duplicates = {event_id: n for event_id, n in counts.items() if n > 1}
    assert not duplicates, f"events stored more than once: {duplicates}"
    assert accepted_envelopes(bugsink, project) == len(sent), (
        f"Bugsink accepted {accepted_envelopes(bugsink, project)} envelopes for {len(sent)} events"
    )
    assert not list(spool_dir.glob("*.envelope")), "delivered events were left in the spool"


def test_past_its_cap_the_spool_drops_the_oldest_and_says_how_many(
    sentry_project: InstalledProject, bugsink: Bugsink, tmp_path: Path
) -> None:
    project = bugsink.create_project("spool-cap")
    settings = {"SENTRY_SPOOL_DIR": str(tmp_path / "spool"), "SENTRY_SPOOL_MAX_MB": "0.015"}
    # about 2.5 KiB a message event: room for a handful
    with (
        outage(bugsink),
        sentry_project.probe(tmp_path / "app", project.dsn, **settings) as running,
    ):
        sent = [message(running, f"cap-{n}") for n in range(40)]
        time.sleep(1)
        bugsink.start_server()
        stored = set(stored_when(bugsink, project, 1, lambda stored: sent[-1] in stored))
        log = running.log()
    kept = [event_id in stored for event_id in sent]
    print(f"\nspool cap: {sum(kept)} of {len(sent)} events kept and delivered")
    assert kept[-1] and not kept[0], f"not the oldest dropped: {kept}"
    assert kept == sorted(kept), f"a newer event was dropped before an older one: {kept}"
    dropped = re.findall(r"Sentry spool .*?: (\d+) undelivered events dropped", log)
    assert dropped, f"the drops were not logged\n{log[-3000:]}"
    assert sum(map(int, dropped)) == kept.count(False), (dropped, kept)


def test_a_damaged_spool_file_is_skipped_and_the_rest_arrive(
    sentry_project: InstalledProject, bugsink: Bugsink, tmp_path: Path
) -> None:
    project = bugsink.create_project("spool-damaged")
    spool = tmp_path / "spool"
    settings = {"SENTRY_SPOOL_DIR": str(spool)}
    with (
        outage(bugsink),
        sentry_project.probe(tmp_path / "app", project.dsn, **settings) as running,
    ):
        sent = [message(running, f"damaged-{n}") for n in range(10)]
        assert wait_for_files(spool, len(sent)) == len(sent), "events were not spooled"
        damaged = sorted(spool.glob("*.envelope"))[3]
        damaged.write_bytes(b"\x00not an envelope\n" + damaged.read_bytes()[40:])
        bugsink.start_server()
        intact = len(sent) - 1
        stored = stored_when(bugsink, project, intact, lambda stored: len(stored) >= intact)
        log = running.log()
    assert len(stored) == len(sent) - 1 and set(stored) < set(sent), (
        f"{len(stored)} of the {len(sent) - 1} intact events arrived\n{log[-3000:]}"
    )
    assert log.count("skipped damaged file") == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_a_flood_of_one_error_is_capped_and_the_drops_counted(
    sentry_project: InstalledProject, bugsink: Bugsink, tmp_path: Path
) -> None:
    project = bugsink.create_project("flood")
    cap, window, hits = 5, 3.0, 60
    with sentry_project.probe(
        tmp_path / "app",
        project.dsn,
        SENTRY_SPOOL_DIR=str(tmp_path / "spool"),
        SENTRY_FLOOD_MAX_EVENTS=str(cap),
        SENTRY_FLOOD_WINDOW_SECONDS=str(window),
    ) as running:
        started = time.monotonic()
        for _ in range(hits):
            assert running.call("/e2e/fail/flood", timeout=10).status == 500
        assert time.monotonic() - started < window, "the hot loop took longer than one window"
        time.sleep(window)
        assert running.call("/e2e/fail/flood", timeout=10).status == 500
        events = bugsink.wait_for_events(project, cap + 1, 30)
        time.sleep(1)
        events = bugsink.events(project)
        log = running.log()
    assert len(events) == cap + 1, f"{len(events)} events for {hits + 1} hits\n{log[-2000:]}"
    last = events[-1]["contexts"].get("flood_control", {})
    assert last.get("dropped_before_this") == hits - cap, events[-1]["contexts"]
    assert log.count("Sentry flood control") == 1, log[-2000:]
