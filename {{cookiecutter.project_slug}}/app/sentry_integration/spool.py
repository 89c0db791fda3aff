"""A bounded spool on disk for Sentry envelopes that could not be delivered yet.

When Sentry cannot be reached, answers 5xx or says to slow down, the transport
(app/sentry_transport.py) writes error envelopes here instead of dropping them, and sends them,
oldest first, once Sentry answers again: later in the same process, or after a restart, or from
another worker of the same service that shares the directory. Only the transport's background
thread touches the disk; a request never waits for it.

The rules, all measured in files of this directory:

- one envelope per file, named by the time it was spooled, so that names sort oldest first;
- a file is written under a hidden temporary name and renamed when complete, so a reader never
  sees half a file; each starts with a header line holding its length and CRC-32, so a damaged
  file is recognised, skipped with one log line and removed, and never stops the rest;
- a file is removed only once Sentry has accepted it; one process at a time delivers (an
  exclusive `flock` on `.lock`), so that two workers never send the same event twice;
- the directory holds at most `max_bytes`: writing past that removes the oldest files first, and
  files older than `max_age_seconds` are removed unsent (Sentry would reject very old events
  anyway); both are counted and logged: at most once a minute while it goes on, and the rest
  when the backlog has been sent or the process stops.

A process killed between Sentry's answer and the removal of the file sends that one event again
when it restarts: the only case of a duplicate, and it needs a crash at that instant.
"""

import contextlib
import fcntl
import logging
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("app.sentry")

SUFFIX = ".envelope"
LOCK_NAME = ".lock"
_MAGIC = b"sentry-spool/1"
#: Drops are logged at most this often (an outage that overflows the spool drops on every write).
DROP_LOG_INTERVAL_SECONDS = 60.0
#: A temporary file older than this was left by a process that died while writing it.
STALE_TEMPORARY_SECONDS = 300.0


class DamagedFileError(Exception):
    """A spool file whose header or content does not check out."""


@dataclass(frozen=True, slots=True)
class Spooled:
    """One spooled envelope: its file, and the data categories of its items."""

    path: Path
    categories: tuple[str, ...]


class Spool:
    """See the module's docstring. Used by one thread per process."""

    def __init__(self, directory: Path, *, max_bytes: int, max_age_seconds: float) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self.dropped_for_size = 0
        self.dropped_for_age = 0
        self.damaged = 0
        self._sequence = 0
        self._size = 0  # this process's estimate; made exact by `enforce_limits`
        self._drop_logged_at = -DROP_LOG_INTERVAL_SECONDS
        self._unlogged_drops = 0

    def prepare(self) -> bool:
        """Create the directory if needed. Returns False (and logs why) if it cannot be used."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            logger.warning(
                "Sentry spool directory %s cannot be used (%s): undeliverable events are "
                "dropped. Set SENTRY_SPOOL_DIR to a writable directory, or to nothing.",
                self.directory,
                error,
            )
            return False
        self.enforce_limits()
        return True

    # ---- writing --------------------------------------------------------------------------

    def put(self, body: bytes, categories: tuple[str, ...]) -> None:
        """Keep `body` (a serialized envelope) as the newest file of the spool."""
        self._sequence += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._sequence:08d}{SUFFIX}"
        header = b"%s %d %d %s\n" % (
            _MAGIC,
            len(body),
            zlib.crc32(body),
            ",".join(categories).encode("ascii", "replace"),
        )
        temporary = self.directory / f".{name}.tmp"
        with temporary.open("wb") as file:
            file.write(header)
            file.write(body)
        temporary.rename(self.directory / name)
        self._size += len(header) + len(body)
        if self._size > self.max_bytes:
            self.enforce_limits()

    # ---- reading --------------------------------------------------------------------------

    def pending(self) -> list[Spooled]:
        """The spooled envelopes, oldest first (headers read, bodies not)."""
        found = []
        for path in self._files():
            try:
                categories = _read_header(path)[2]
            except FileNotFoundError:
                continue  # delivered or dropped by another process meanwhile
            except (OSError, DamagedFileError) as error:
                self._discard_damaged(path, error)
                continue
            found.append(Spooled(path, categories))
        return found

    def read(self, spooled: Spooled) -> bytes | None:
        """The envelope in `spooled`, or None if it is gone or damaged (then removed)."""
        try:
            length, checksum, _ = _read_header(spooled.path)
            with spooled.path.open("rb") as file:
                file.readline()
                body = file.read()
        except FileNotFoundError:
            return None
        except (OSError, DamagedFileError) as error:
            self._discard_damaged(spooled.path, error)
            return None
        if len(body) != length or zlib.crc32(body) != checksum:
            self._discard_damaged(spooled.path, DamagedFileError("length or checksum differs"))
            return None
        return body

    def remove(self, spooled: Spooled) -> None:
        """Forget a delivered envelope."""
        with contextlib.suppress(FileNotFoundError):
            size = spooled.path.stat().st_size
            spooled.path.unlink()
            self._size = max(0, self._size - size)

    @contextlib.contextmanager
    def delivering(self) -> Iterator[bool]:
        """Hold the spool's delivery lock while inside; yields False if another process holds it."""
        try:
            descriptor = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            yield False
            return
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            yield True
        finally:
            os.close(descriptor)  # closing releases the lock

    # ---- limits ---------------------------------------------------------------------------

    def enforce_limits(self) -> None:
        """Remove files past the age cap, then the oldest until the size cap holds."""
        now = time.time()
        sized: list[tuple[Path, int]] = []
        for path in self._files(temporary=True):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if path.name.startswith("."):
                if now - stat.st_mtime > STALE_TEMPORARY_SECONDS:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                continue
            if now - _spooled_at(path, stat.st_mtime) > self.max_age_seconds:
                if self._drop(path):
                    self.dropped_for_age += 1
                continue
            sized.append((path, stat.st_size))
        total = sum(size for _, size in sized)
        # Over the cap, down to 90% of it: the next writes need not scan the directory again.
        target = self.max_bytes if total <= self.max_bytes else int(self.max_bytes * 0.9)
        for path, size in sized:  # oldest first
            if total <= target:
                break
            total -= size
            if self._drop(path):
                self.dropped_for_size += 1
        self._size = total
        self._log_drops()

    # ---- helpers --------------------------------------------------------------------------

    def _files(self, *, temporary: bool = False) -> list[Path]:
        try:
            paths = sorted(self.directory.iterdir())
        except OSError:
            return []
        return [
            path
            for path in paths
            if path.name.endswith(SUFFIX) or (temporary and path.name.endswith(".tmp"))
        ]

    def _drop(self, path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False  # another process got there first
        self._unlogged_drops += 1
        return True

    def report_drops(self) -> None:
        """Log the drops not logged yet, now (when the backlog is sent, and at shutdown)."""
        self._log_drops(force=True)

    def _log_drops(self, *, force: bool = False) -> None:
        now = time.monotonic()
        due = force or now - self._drop_logged_at >= DROP_LOG_INTERVAL_SECONDS
        if self._unlogged_drops and due:
            self._drop_logged_at = now
            logger.warning(
                "Sentry spool %s: %d undelivered events dropped, oldest first (so far: %d over "
                "%d MB, %d older than %g hours). Sentry has been unreachable for long.",
                self.directory,
                self._unlogged_drops,
                self.dropped_for_size,
                self.max_bytes // 2**20,
                self.dropped_for_age,
                self.max_age_seconds / 3600,
            )
            self._unlogged_drops = 0

    def _discard_damaged(self, path: Path, error: Exception) -> None:
        self.damaged += 1
        logger.warning("Sentry spool: skipped damaged file %s (%s).", path.name, error)
        with contextlib.suppress(OSError):
            path.unlink()


def _read_header(path: Path) -> tuple[int, int, tuple[str, ...]]:
    with path.open("rb") as file:
        line = file.readline(256)
    fields = line.rstrip(b"\n").split(b" ")
    if not line.endswith(b"\n") or len(fields) != 4 or fields[0] != _MAGIC:
        raise DamagedFileError("no spool header")
    try:
        length, checksum = int(fields[1]), int(fields[2])
    except ValueError:
        raise DamagedFileError("bad spool header") from None
    categories = tuple(c for c in fields[3].decode("ascii", "replace").split(",") if c)
    return length, checksum, categories


def _spooled_at(path: Path, fallback: float) -> float:
    """When the file was spooled, from its name (seconds since the epoch)."""
    try:
        return int(path.name.split("-", 1)[0]) / 1e9
    except ValueError:
        return fallback
