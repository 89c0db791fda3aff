"""The spool on disk: what the transport keeps when Sentry does not take it, how it sends it, and
who may read it.

Sentry is `FakeSentry` on 127.0.0.1, or a closed port when it is down; the spool is a real
directory under pytest's tmp_path.
"""

import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sentry_sdk.envelope import Envelope

from app.sentry_integration import delivery
from app.sentry_integration.spool import STALE_TEMPORARY_SECONDS, Spool, spool_directory
from tests.sentry_integration.conftest import (
    DROP,
    FakeSentry,
    Received,
    Reply,
    TransportFactory,
    wait_for,
)

MiB = 2**20

pytestmark = pytest.mark.usefixtures("clean_network_environment")


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


def _numbers(sentry: FakeSentry) -> list[int]:
    """The numbers of the events Sentry received, in the order they were posted."""
    return [int(message.split()[1]) for message in sentry.messages()]


def _body_numbers(spool: Spool) -> list[int]:
    numbers = []
    for spooled in spool.pending():
        body = spool.read(spooled) or b""
        for item in Envelope.deserialize(body).items:
            numbers.append(int(str((item.get_event() or {})["message"]).split()[1]))
    return numbers


def _files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.envelope"))


def _log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "app.sentry"]


@pytest.fixture
def down_dsn() -> str:
    """A DSN whose server is down: nothing listens on its port."""
    with socket.create_server(("127.0.0.1", 0)) as reserved:
        port = reserved.getsockname()[1]
    return f"http://public@127.0.0.1:{port}/1"


@pytest.fixture(autouse=True)
def quick_scans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Look at the spool often, so that a test never waits for the 5 s rescan."""
    monkeypatch.setattr(delivery, "SPOOL_SCAN_SECONDS", 0.05)


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry at once after a failure (the transport waits a second, then more, otherwise)."""
    monkeypatch.setattr(delivery, "BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(delivery, "MAX_BACKOFF_SECONDS", 0.0)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


# ---- keeping and sending ------------------------------------------------------------------------


@pytest.mark.usefixtures("no_backoff")
def test_undelivered_events_are_kept_and_sent_in_order_once_sentry_answers(
    fake_sentry: FakeSentry, new_transport: TransportFactory, spool_dir: Path
) -> None:
    fake_sentry.answer(DROP, Reply(503), Reply(429, (("Retry-After", "0"),)))
    transport = new_transport(fake_sentry.dsn)
    assert transport.use_spool(_spool(spool_dir))
    for number in range(1, 8):
        transport.capture_envelope(_event(number))
    wait_for(lambda: _numbers(fake_sentry)[-1:] == [7] and not _files(spool_dir))
    delivered = _numbers(fake_sentry)[3:]  # the first three posts were answered with failures
    assert delivered == [1, 2, 3, 4, 5, 6, 7], f"not each once and in order: {delivered}"


def test_while_backing_off_from_a_server_that_is_down_the_thread_sleeps(
    new_transport: TransportFactory,
    spool_dir: Path,
    down_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It once looked at the spool's clock, not the back-off's, and spun for the whole back-off:
    a core's worth of CPU and the GIL taken from the requests whenever Sentry was down."""
    monkeypatch.setattr(delivery, "BACKOFF_SECONDS", 30.0)
    transport = new_transport(down_dsn)
    assert transport.use_spool(_spool(spool_dir))
    looks: list[float] = []
    idle_wait = transport._idle_wait

    def counted() -> float | None:
        looks.append(time.monotonic())
        return idle_wait()

    monkeypatch.setattr(transport, "_idle_wait", counted)
    transport.capture_envelope(_event(1))
    wait_for(lambda: _files(spool_dir))  # the send failed and the back-off began
    before = len(looks)
    time.sleep(0.5)  # what is checked is how often the thread wakes meanwhile
    assert len(looks) - before < 5, f"the thread woke {len(looks) - before} times in 0.5 s"


def test_a_restarted_process_sends_what_the_previous_one_kept(
    fake_sentry: FakeSentry, new_transport: TransportFactory, spool_dir: Path, down_dsn: str
) -> None:
    down = new_transport(down_dsn)
    assert down.use_spool(_spool(spool_dir))
    for number in range(1, 6):
        down.capture_envelope(_event(number))
    down.flush(2)
    down.kill()
    assert len(_files(spool_dir)) == 5, "the stopped process did not keep them"

    restarted = new_transport(fake_sentry.dsn)
    assert restarted.use_spool(_spool(spool_dir))  # no new event needed to start sending
    wait_for(lambda: len(fake_sentry.received) == 5)
    assert _numbers(fake_sentry) == [1, 2, 3, 4, 5]
    wait_for(lambda: not _files(spool_dir))  # delivered envelopes are not left in the spool


def _queued_behind_a_hanging_post(
    fake_sentry: FakeSentry, new_transport: TransportFactory, spool_dir: Path
) -> delivery.SentryTransport:
    """A spooling transport whose first post (event 1) hangs, with events 2 to 4 queued."""
    fake_sentry.answer(DROP)
    fake_sentry.answering.clear()
    transport = new_transport(fake_sentry.dsn)
    assert transport.use_spool(_spool(spool_dir))
    for number in range(1, 5):
        transport.capture_envelope(_event(number))
    wait_for(lambda: fake_sentry.received)
    return transport


@pytest.mark.usefixtures("no_backoff")
def test_events_still_queued_at_shutdown_are_kept(
    fake_sentry: FakeSentry, new_transport: TransportFactory, spool_dir: Path
) -> None:
    transport = _queued_behind_a_hanging_post(fake_sentry, new_transport, spool_dir)
    transport.kill()
    fake_sentry.answering.set()
    wait_for(lambda: len(_files(spool_dir)) == 4)


def test_transactions_are_dropped_not_kept(
    new_transport: TransportFactory, spool_dir: Path, down_dsn: str
) -> None:
    transport = new_transport(down_dsn)
    assert transport.use_spool(_spool(spool_dir))
    for _ in range(3):
        transport.capture_envelope(_transaction())
    transport.flush(2)
    assert not _files(spool_dir), "transactions would push errors out"


def test_a_rate_limit_holds_the_spool_without_hammering(
    fake_sentry: FakeSentry, new_transport: TransportFactory, spool_dir: Path
) -> None:
    fake_sentry.answer(Reply(429, (("Retry-After", "0.3"),)))
    transport = new_transport(fake_sentry.dsn)
    assert transport.use_spool(_spool(spool_dir))
    started = time.monotonic()
    for number in range(1, 4):
        transport.capture_envelope(_event(number))
    transport.flush(2)
    assert len(fake_sentry.received) == 1, "posted again while Sentry said to wait"
    wait_for(lambda: len(fake_sentry.received) == 4)
    assert time.monotonic() - started >= 0.3, "the Retry-After was not waited out"
    assert _numbers(fake_sentry) == [1, 1, 2, 3]


def test_a_damaged_file_is_skipped_with_one_log_line_and_reported(
    fake_sentry: FakeSentry,
    new_transport: TransportFactory,
    spool_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = _spool(spool_dir)
    assert spool.prepare()
    for number in range(1, 4):
        spool.put(_event(number).serialize(), ("error",))
    middle = _files(spool_dir)[1]
    middle.write_bytes(middle.read_bytes()[:-10] + b"garbage!!!")
    caplog.set_level(logging.INFO, logger="app.sentry")
    transport = new_transport(fake_sentry.dsn)
    assert transport.use_spool(_spool(spool_dir))
    wait_for(lambda: len(fake_sentry.received) == 2)
    assert _numbers(fake_sentry) == [1, 3]
    damaged = [line for line in _log_lines(caplog) if "skipped damaged file" in line]
    assert len(damaged) == 1 and middle.name in damaged[0], damaged
    wait_for(lambda: not _files(spool_dir))  # the damaged file is not left behind either
    transport.flush(2)
    assert fake_sentry.discarded() == {("internal_sdk_error", "error"): 1}


def test_past_the_size_cap_the_oldest_are_dropped_counted_and_told(
    spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = _event(0).serialize()
    spool = _spool(spool_dir, max_bytes=10 * (len(body) + 60))  # room for about ten
    told: list[tuple[str, tuple[str, ...], int]] = []
    spool.on_drop = lambda reason, categories, body: told.append(
        (reason, categories, len(Envelope.deserialize(body or b"").items))
    )
    assert spool.prepare()
    caplog.set_level(logging.INFO, logger="app.sentry")
    for number in range(1, 31):
        spool.put(_event(number).serialize(), ("error",))
    spool.enforce_limits()
    kept = _body_numbers(spool)
    assert 8 <= len(kept) <= 10, kept
    assert kept == list(range(31 - len(kept), 31)), f"not the newest that were kept: {kept}"
    assert spool.dropped_for_size == 30 - len(kept)
    assert told == [("cache_overflow", ("error",), 1)] * spool.dropped_for_size
    logged = [line for line in _log_lines(caplog) if "dropped" in line]
    assert len(logged) == 1, f"drops should be logged once a minute at most: {logged}"
    spool.report_drops()
    logged = [line for line in _log_lines(caplog) if "dropped" in line]
    counts = [int(message.split(": ")[1].split()[0]) for message in logged]
    assert len(logged) == 2 and sum(counts) == spool.dropped_for_size, logged


def test_past_the_age_cap_files_are_dropped_and_counted(spool_dir: Path) -> None:
    spool = _spool(spool_dir, max_age_seconds=0.05)
    assert spool.prepare()
    spool.put(_event(1).serialize(), ("error",))
    time.sleep(0.1)  # the cap is about age: this is the time that passes, not a wait for a thread
    spool.put(_event(2).serialize(), ("error",))
    spool.enforce_limits()
    assert _body_numbers(spool) == [2]
    assert spool.dropped_for_age == 1


def test_spool_drops_reach_sentry_as_client_reports(
    fake_sentry: FakeSentry,
    new_transport: TransportFactory,
    spool_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delivery, "BACKOFF_SECONDS", 0.3)
    fake_sentry.answer(DROP)
    spool = _spool(spool_dir, max_bytes=3 * (len(_event(0).serialize()) + 60))
    transport = new_transport(fake_sentry.dsn)
    assert transport.use_spool(spool)
    for number in range(10):
        transport.capture_envelope(_event(number))
    wait_for(lambda: _numbers(fake_sentry)[-1:] == [9] and not _files(spool_dir))
    transport.flush(2)
    assert spool.dropped_for_size > 0
    assert fake_sentry.discarded() == {("cache_overflow", "error"): spool.dropped_for_size}


def test_transactions_dropped_in_an_outage_are_reported(
    fake_sentry: FakeSentry, new_transport: TransportFactory, spool_dir: Path
) -> None:
    fake_sentry.answer(DROP)  # then a second of back-off (BACKOFF_SECONDS)
    transport = new_transport(fake_sentry.dsn)
    assert transport.use_spool(_spool(spool_dir))
    transport.capture_envelope(_event(1))
    transport.flush(2)
    transport.capture_envelope(_transaction())  # within the back-off: dropped
    transport.flush(2)
    wait_for(lambda: _numbers(fake_sentry) == [1, 1])  # the spooled event, once Sentry is back
    transport.flush(2)
    assert fake_sentry.discarded() == {
        ("network_error", "transaction"): 1,
        ("network_error", "span"): 1,
    }


def test_one_process_at_a_time_sends_from_a_shared_spool(
    fake_sentry: FakeSentry, new_transport: TransportFactory, spool_dir: Path
) -> None:
    """Two workers share the directory: while one holds the lock, the other leaves it alone."""
    other_worker = _spool(spool_dir)
    assert other_worker.prepare()
    other_worker.put(_event(1).serialize(), ("error",))
    kept_out = threading.Event()
    transport = new_transport(fake_sentry.dsn)
    with other_worker.delivering() as ours:
        assert ours
        spool = _spool(spool_dir)
        delivering = spool.delivering

        @contextlib.contextmanager
        def watched() -> Iterator[bool]:
            with delivering() as got_it:
                yield got_it
            if not got_it:
                kept_out.set()

        spool.delivering = watched  # type: ignore[method-assign]
        assert transport.use_spool(spool)
        assert kept_out.wait(5), "the transport never tried the spool's lock"
        assert fake_sentry.received == [], "sent an envelope another process was delivering"
    wait_for(lambda: _numbers(fake_sentry) == [1])


@pytest.fixture
def put_threads(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The names of the threads that write to a spool during the test."""
    threads: set[str] = set()
    put = Spool.put

    def recording_put(self: Spool, body: bytes, categories: tuple[str, ...]) -> None:
        threads.add(threading.current_thread().name)
        put(self, body, categories)

    monkeypatch.setattr(Spool, "put", recording_put)
    return threads


def test_disk_work_happens_on_the_transport_thread_only(
    new_transport: TransportFactory,
    spool_dir: Path,
    down_dsn: str,
    put_threads: set[str],
) -> None:
    threads = put_threads
    transport = new_transport(down_dsn)
    assert transport.use_spool(_spool(spool_dir))
    for number in range(5):
        transport.capture_envelope(_event(number))
    transport.flush(2)
    assert threads == {"sentry-transport"}, threads


# ---- where the spool is, and who may read it -----------------------------------------------------


def test_the_default_directory_is_this_users_own_in_the_temp_directory(tmp_path: Path) -> None:
    default = spool_directory("", "billing-api-sentry-spool")
    assert default == Path(tempfile.gettempdir()) / f"billing-api-sentry-spool-{os.geteuid()}"
    assert spool_directory(f" {tmp_path}/spool ", "billing-api-sentry-spool") == tmp_path / "spool"
    assert spool_directory("~/spool", "billing-api-sentry-spool") == Path.home() / "spool"


def test_the_spool_is_private_whatever_the_umask(spool_dir: Path) -> None:
    previous = os.umask(0)
    try:
        spool = _spool(spool_dir / "nested")
        assert spool.prepare()
        spool.put(_event(1).serialize(), ("error",))
        with spool.delivering() as ours:
            assert ours
    finally:
        os.umask(previous)
    modes = {path.name: path.stat().st_mode & 0o777 for path in (spool_dir / "nested").iterdir()}
    assert (spool_dir / "nested").stat().st_mode & 0o777 == 0o700
    assert spool_dir.stat().st_mode & 0o777 == 0o700, "a directory it made for it is open"
    assert modes and set(modes.values()) == {0o600}, {name: oct(m) for name, m in modes.items()}


def test_an_existing_directory_of_ours_is_made_private(spool_dir: Path) -> None:
    spool_dir.mkdir(mode=0o755)
    spool_dir.chmod(0o755)
    assert _spool(spool_dir).prepare()
    assert spool_dir.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o702])
def test_a_directory_others_can_write_is_refused_with_one_line(
    spool_dir: Path,
    new_transport: TransportFactory,
    fake_sentry: FakeSentry,
    caplog: pytest.LogCaptureFixture,
    mode: int,
) -> None:
    spool_dir.mkdir()
    spool_dir.chmod(mode)
    caplog.set_level(logging.INFO, logger="app.sentry")
    transport = new_transport(fake_sentry.dsn)
    assert not transport.use_spool(_spool(spool_dir))
    (line,) = _log_lines(caplog)
    assert f"Sentry spool directory {spool_dir} is not safe to use" in line, line
    assert f"chmod 700 {spool_dir}" in line and "SENTRY_SPOOL_DIR" in line, line
    transport.capture_envelope(_event(1))
    transport.flush(2)
    assert _numbers(fake_sentry) == [1], "without a spool, events must still be sent"
    assert not _files(spool_dir)


def test_a_directory_of_another_user_is_refused_with_one_line(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(spool_dir, 65534, 65534)  # nobody's
    else:  # only root can give a directory away: be someone else instead
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)
    caplog.set_level(logging.INFO, logger="app.sentry")
    assert not _spool(spool_dir).prepare()
    (line,) = _log_lines(caplog)
    assert f"Sentry spool directory {spool_dir} is not safe to use: it belongs to uid" in line
    assert "SENTRY_SPOOL_DIR" in line, line


def test_the_start_up_log_says_where_the_spool_is(
    new_transport: TransportFactory,
    spool_dir: Path,
    down_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="app.sentry")
    assert new_transport(down_dsn).use_spool(_spool(spool_dir))
    assert _log_lines(caplog) == [
        f"Sentry spool: undeliverable error events wait in {spool_dir}; in a container, put it "
        "on a persistent volume (SENTRY_SPOOL_DIR)."
    ]


def test_an_unusable_directory_turns_the_spool_off_with_a_message(
    tmp_path: Path, new_transport: TransportFactory, down_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    transport = new_transport(down_dsn)
    caplog.set_level(logging.INFO, logger="app.sentry")
    assert not transport.use_spool(_spool(blocked / "spool"))
    messages = _log_lines(caplog)
    assert len(messages) == 1 and "SENTRY_SPOOL_DIR" in messages[0], messages


def test_a_symbolic_link_in_place_of_the_directory_is_refused_and_its_target_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another user of a shared /tmp could plant the default path as a link to a directory of
    theirs (or of ours): the spool must not chmod the link's target nor write into it."""
    target = tmp_path / "somewhere"
    target.mkdir()
    target.chmod(0o755)
    link = tmp_path / "spool"
    link.symlink_to(target)
    caplog.set_level(logging.INFO, logger="app.sentry")
    assert not _spool(link).prepare()
    (line,) = _log_lines(caplog)
    assert f"Sentry spool directory {link} is not safe to use: it is a symbolic link" in line
    assert f"rm {link}" in line and "SENTRY_SPOOL_DIR" in line, line
    assert target.stat().st_mode & 0o777 == 0o755, "the link's target was chmodded"
    assert not list(target.iterdir()), "something was written through the link"


def test_swapping_the_directory_after_start_up_does_not_redirect_the_spool(tmp_path: Path) -> None:
    """Once prepared, the spool keeps using the directory it checked, whatever the path becomes."""
    checked = tmp_path / "spool"
    spool = _spool(checked)
    assert spool.prepare()
    moved, elsewhere = tmp_path / "moved", tmp_path / "elsewhere"
    checked.rename(moved)
    elsewhere.mkdir()
    checked.symlink_to(elsewhere)
    spool.put(_event(1).serialize(), ("error",))
    with spool.delivering() as ours:
        assert ours
    spool.enforce_limits()
    assert not list(elsewhere.iterdir()), "a write followed the swapped path"
    assert len(_files(moved)) == 1 and _body_numbers(spool) == [1]


def test_only_the_spools_own_files_are_picked_up_or_cleaned(spool_dir: Path) -> None:
    """The directory should be the spool's alone, but a stray file of someone else's is left be."""
    spool = _spool(spool_dir)
    assert spool.prepare()
    spool.put(_event(1).serialize(), ("error",))
    ours = spool_dir / f".{'1' * 20}-1-00000001.envelope.tmp"  # left by a writer that died
    theirs = [spool_dir / name for name in ("notes.tmp", ".draft.tmp", "README.envelope")]
    stale = time.time() - STALE_TEMPORARY_SECONDS - 60
    for path in (ours, *theirs):
        path.write_bytes(b"x")
        os.utime(path, (stale, stale))
    spool.enforce_limits()
    assert _body_numbers(spool) == [1]
    assert not ours.exists(), "a stale temporary file of the spool's was left"
    assert all(path.exists() for path in theirs), [p.name for p in theirs if not p.exists()]


# ---- an envelope Sentry never takes ------------------------------------------------------------


def _poison() -> Envelope:
    """An event numbered 0 that, with `_answer_poison`, Sentry always answers with `reply`."""
    envelope = Envelope()
    envelope.add_event({"message": "event 0 poison", "event_id": "f" * 32})
    return envelope


def _answer_poison(
    fake_sentry: FakeSentry, monkeypatch: pytest.MonkeyPatch, reply: Reply | None
) -> None:
    record = fake_sentry._record

    def answer(received: Received) -> Reply | None:
        scripted = record(received)
        return reply if b"poison" in received.body else scripted

    monkeypatch.setattr(fake_sentry, "_record", answer)


def _spool_ahead(spool_dir: Path, *envelopes: Envelope) -> None:
    spool = _spool(spool_dir)
    assert spool.prepare()
    for envelope in envelopes:
        spool.put(envelope.serialize(), ("error",))


@pytest.mark.usefixtures("no_backoff")
def test_an_envelope_sentry_always_answers_5xx_for_does_not_block_the_rest(
    fake_sentry: FakeSentry,
    new_transport: TransportFactory,
    spool_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _answer_poison(fake_sentry, monkeypatch, Reply(500))
    _spool_ahead(spool_dir, _poison(), _event(1), _event(2))
    poison = _files(spool_dir)[0].name
    caplog.set_level(logging.INFO, logger="app.sentry")
    transport = new_transport(fake_sentry.dsn)
    assert transport.use_spool(_spool(spool_dir))
    wait_for(lambda: not _files(spool_dir))
    assert _numbers(fake_sentry) == [0, 0, 0, 1, 2]
    transport.flush(2)
    assert fake_sentry.discarded() == {("send_error", "error"): 1}
    (line,) = [line for line in _log_lines(caplog) if poison in line]
    assert "HTTP 500" in line and "dropped" in line, line


@pytest.mark.usefixtures("no_backoff")
def test_when_the_next_envelope_fails_too_it_is_an_outage_and_both_are_kept(
    fake_sentry: FakeSentry, new_transport: TransportFactory, spool_dir: Path
) -> None:
    fake_sentry.answer(*[Reply(500)] * 4)  # the first three times, then the next one: an outage
    _spool_ahead(spool_dir, _event(1), _event(2))
    transport = new_transport(fake_sentry.dsn)
    assert transport.use_spool(_spool(spool_dir))
    wait_for(lambda: not _files(spool_dir))
    assert _numbers(fake_sentry)[-2:] == [1, 2], _numbers(fake_sentry)
    transport.flush(2)
    assert ("send_error", "error") not in fake_sentry.discarded()


@pytest.mark.usefixtures("no_backoff")
def test_connection_errors_never_make_an_envelope_a_suspect(
    fake_sentry: FakeSentry,
    new_transport: TransportFactory,
    spool_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _answer_poison(fake_sentry, monkeypatch, DROP)  # no answer is not the server's verdict
    _spool_ahead(spool_dir, _poison(), _event(1))
    transport = new_transport(fake_sentry.dsn)
    assert transport.use_spool(_spool(spool_dir))
    wait_for(lambda: len(fake_sentry.received) >= 6)
    assert set(_numbers(fake_sentry)) == {0}, "sent past the oldest while there was no answer"
    assert len(_files(spool_dir)) == 2


# ---- shutdown ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_backoff")
def test_at_shutdown_the_transport_thread_keeps_what_is_queued_and_kill_waits_for_it(
    fake_sentry: FakeSentry,
    new_transport: TransportFactory,
    spool_dir: Path,
    put_threads: set[str],
) -> None:
    threads = put_threads
    transport = _queued_behind_a_hanging_post(fake_sentry, new_transport, spool_dir)
    threading.Timer(0.2, fake_sentry.answering.set).start()
    transport.kill()
    assert len(_files(spool_dir)) == 4, "kill returned before the thread had kept them"
    assert threads == {"sentry-transport"}, threads


def test_kill_waits_a_bounded_time_for_a_stuck_send_and_says_nothing(
    fake_sentry: FakeSentry,
    new_transport: TransportFactory,
    spool_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(delivery, "SHUTDOWN_JOIN_SECONDS", 0.2)
    fake_sentry.answering.clear()  # the post hangs past the wait
    transport = new_transport(fake_sentry.dsn)
    assert transport.use_spool(_spool(spool_dir))
    transport.capture_envelope(_event(1))
    wait_for(lambda: fake_sentry.received)
    caplog.set_level(logging.INFO, logger="app.sentry")
    caplog.clear()
    started = time.monotonic()
    transport.kill()
    assert time.monotonic() - started < 1.5
    assert _log_lines(caplog) == []
    fake_sentry.answering.set()
