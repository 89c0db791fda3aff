"""The spool on disk: what the transport keeps when Sentry does not take it, and how it sends it.

The connection is scripted (no network); the spool is a real directory under pytest's tmp_path.
"""

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sentry_sdk.envelope import Envelope

from app.sentry_integration import delivery as sentry_transport
from app.sentry_integration.spool import Spool
from app.sentry_integration.delivery import Answer, SendError
from tests.sentry_integration.conftest import scripted_transport

MiB = 2**20


def _spool(directory: Path, max_bytes: int = MiB, max_age_seconds: float = 3600) -> Spool:
    return Spool(directory, max_bytes=max_bytes, max_age_seconds=max_age_seconds)


def _event(number: int) -> Envelope:
    envelope = Envelope()
    envelope.add_event({"message": f"event {number}", "event_id": f"{number:032x}"})
    return envelope


def _transaction() -> Envelope:
    envelope = Envelope()
    envelope.add_transaction({"type": "transaction", "transaction": "/x"})
    return envelope


def _numbers(bodies: list[bytes]) -> list[int]:
    """The numbers of the events in `bodies`, in the order they were posted."""
    found = []
    for body in bodies:
        for item in Envelope.deserialize(body).items:
            if item.type == "event":
                found.append(int(json.loads(item.get_bytes())["message"].split()[1]))
    return found


def _wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.01)


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry at once after a failure (the transport waits a second, then more, otherwise)."""
    monkeypatch.setattr(sentry_transport, "BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(sentry_transport, "MAX_BACKOFF_SECONDS", 0.0)


@pytest.mark.usefixtures("no_backoff")
def test_undelivered_events_are_kept_and_sent_in_order_once_sentry_answers(
    tmp_path: Path,
) -> None:
    failures: list[Answer | SendError] = [SendError("refused"), Answer(503), Answer(429, None, "0")]
    transport, connection = scripted_transport(failures)
    assert transport.use_spool(_spool(tmp_path))
    for number in range(1, 8):
        transport.capture_envelope(_event(number))
    _wait_for(lambda: _numbers(connection.sent)[-1:] == [7] and not list(tmp_path.glob("*.env*")))
    transport.kill()
    delivered = _numbers(connection.sent)[3:]  # the first three posts were answered with failures
    assert delivered == [1, 2, 3, 4, 5, 6, 7], f"not each once and in order: {connection.sent}"


def test_a_restarted_process_sends_what_the_previous_one_kept(tmp_path: Path) -> None:
    down, _ = scripted_transport([SendError("refused")] * 100)
    assert down.use_spool(_spool(tmp_path))
    for number in range(1, 6):
        down.capture_envelope(_event(number))
    down.flush(2)
    down.kill()
    assert len(list(tmp_path.glob("*.envelope"))) == 5, "the stopped process did not keep them"

    restarted, connection = scripted_transport([])
    assert restarted.use_spool(_spool(tmp_path))  # no new event needed to start sending
    _wait_for(lambda: len(connection.sent) == 5)
    restarted.kill()
    assert _numbers(connection.sent) == [1, 2, 3, 4, 5]
    assert not list(tmp_path.glob("*.envelope")), "delivered envelopes were left in the spool"


@pytest.mark.usefixtures("no_backoff")
def test_events_still_queued_at_shutdown_are_kept(tmp_path: Path) -> None:
    transport, connection = scripted_transport([SendError("refused")])
    connection.release.clear()  # the first post hangs: the rest stay queued
    assert transport.use_spool(_spool(tmp_path))
    for number in range(1, 5):
        transport.capture_envelope(_event(number))
    transport.kill()
    connection.release.set()
    _wait_for(lambda: len(list(tmp_path.glob("*.envelope"))) == 4)


@pytest.mark.usefixtures("no_backoff")
def test_transactions_are_dropped_not_kept(tmp_path: Path) -> None:
    transport, _ = scripted_transport([SendError("refused")] * 10)
    assert transport.use_spool(_spool(tmp_path))
    for _ in range(3):
        transport.capture_envelope(_transaction())
    transport.flush(2)
    transport.kill()
    assert not list(tmp_path.glob("*.envelope")), "transactions would push errors out"


def test_a_rate_limit_holds_the_spool_without_hammering(tmp_path: Path) -> None:
    transport, connection = scripted_transport([Answer(429, None, "0.3")])
    assert transport.use_spool(_spool(tmp_path))
    started = time.monotonic()
    for number in range(1, 4):
        transport.capture_envelope(_event(number))
    transport.flush(2)
    assert len(connection.sent) == 1, "posted again while Sentry said to wait"
    _wait_for(lambda: len(connection.sent) == 4)
    transport.kill()
    assert time.monotonic() - started >= 0.3, "the Retry-After was not waited out"
    assert _numbers(connection.sent) == [1, 1, 2, 3]


def test_a_damaged_file_is_skipped_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = _spool(tmp_path)
    assert spool.prepare()
    for number in range(1, 4):
        spool.put(_event(number).serialize(), ("error",))
    middle = sorted(tmp_path.glob("*.envelope"))[1]
    middle.write_bytes(middle.read_bytes()[:-10] + b"garbage!!!")
    caplog.set_level(logging.INFO, logger="app.sentry")
    transport, connection = scripted_transport([])
    assert transport.use_spool(_spool(tmp_path))
    _wait_for(lambda: len(connection.sent) == 2)
    transport.kill()
    assert _numbers(connection.sent) == [1, 3]
    damaged = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(damaged) == 1 and middle.name in damaged[0], damaged
    assert not list(tmp_path.glob("*.envelope")), "the damaged file was left behind"


def test_past_the_size_cap_the_oldest_are_dropped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = _event(0).serialize()
    spool = _spool(tmp_path, max_bytes=10 * (len(body) + 60))  # room for about ten
    assert spool.prepare()
    caplog.set_level(logging.INFO, logger="app.sentry")
    for number in range(1, 31):
        spool.put(_event(number).serialize(), ("error",))
    spool.enforce_limits()
    kept = [_numbers([spool.read(s) or b""])[0] for s in spool.pending()]
    assert 8 <= len(kept) <= 10, kept
    assert kept == list(range(31 - len(kept), 31)), f"not the newest that were kept: {kept}"
    assert spool.dropped_for_size == 30 - len(kept)
    logged = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(logged) == 1, f"drops should be logged once a minute at most: {logged}"
    spool.report_drops()
    logged = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    counts = [int(message.split(": ")[1].split()[0]) for message in logged]
    assert len(logged) == 2 and sum(counts) == spool.dropped_for_size, logged


def test_past_the_age_cap_files_are_dropped_and_counted(tmp_path: Path) -> None:
    spool = _spool(tmp_path, max_age_seconds=0.05)
    assert spool.prepare()
    spool.put(_event(1).serialize(), ("error",))
    time.sleep(0.1)
    spool.put(_event(2).serialize(), ("error",))
    spool.enforce_limits()
    assert [_numbers([spool.read(s) or b""]) for s in spool.pending()] == [[2]]
    assert spool.dropped_for_age == 1


def test_one_process_at_a_time_sends_from_a_shared_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers share the directory: while one holds the lock, the other leaves it alone."""
    monkeypatch.setattr(sentry_transport, "SPOOL_SCAN_SECONDS", 0.05)
    other_worker = _spool(tmp_path)
    assert other_worker.prepare()
    other_worker.put(_event(1).serialize(), ("error",))
    with other_worker.delivering() as ours:
        assert ours
        transport, connection = scripted_transport([])
        assert transport.use_spool(_spool(tmp_path))
        time.sleep(0.2)
        assert connection.sent == [], "sent an envelope another process was delivering"
    _wait_for(lambda: 1 in _numbers(connection.sent))
    transport.kill()


def test_disk_work_happens_on_the_transport_thread_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[str] = set()
    put = Spool.put

    def recording_put(self: Spool, body: bytes, categories: tuple[str, ...]) -> None:
        threads.add(threading.current_thread().name)
        put(self, body, categories)

    monkeypatch.setattr(Spool, "put", recording_put)
    transport, _ = scripted_transport([SendError("refused")] * 10)
    assert transport.use_spool(_spool(tmp_path))
    for number in range(5):
        transport.capture_envelope(_event(number))
    transport.flush(2)
    assert threads == {"sentry-transport"}, threads
    transport.kill()


def test_an_unusable_directory_turns_the_spool_off_with_a_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    transport, _ = scripted_transport([])
    caplog.set_level(logging.INFO, logger="app.sentry")
    assert not transport.use_spool(_spool(blocked / "spool"))
    transport.kill()
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and "SENTRY_SPOOL_DIR" in messages[0], messages
