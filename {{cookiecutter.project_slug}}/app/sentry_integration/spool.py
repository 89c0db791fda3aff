"""A bounded spool on disk for Sentry envelopes that could not be delivered yet.

When Sentry cannot be reached, answers 5xx or says to slow down, the transport
(delivery.py) writes error envelopes here instead of dropping them, and sends them,
oldest first, once Sentry answers again: later in the same process, or after a restart, or from
another worker of the same service that shares the directory. Only the transport's background
thread touches the disk; a request never waits for it.

The events are scrubbed but real: the directory is this user's alone. It is created 0700 and
its files 0600, whatever the umask; an existing directory that belongs to another user, or that
group or others can write to, is refused (one log line says why and what to do), and then there
is no spool: events are still sent, just not kept. The default directory
(`spool_directory`) is per service and per user in the temp directory, which a container loses
when it restarts: in a container, set SENTRY_SPOOL_DIR to a directory on a persistent volume.

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
  when the backlog has been sent or the process stops. `on_drop` hears of each dropped
  envelope (the transport reports them to Sentry as lost, "cache_overflow").

A process killed between Sentry's answer and the removal of the file sends that one event again
when it restarts: the only case of a duplicate, and it needs a crash at that instant.
"""

import contextlib
import fcntl
import logging
import os
import stat
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
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
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
#: Why an envelope was dropped, as client reports name it.
CAP_REASON = "cache_overflow"
DAMAGED_REASON = "internal_sdk_error"

#: Told of each envelope the spool drops: (reason, its data categories, its body if readable).
DropCallback = Callable[[str, tuple[str, ...], bytes | None], None]


def spool_directory(configured: str, name: str) -> Path:
    """Where undeliverable events wait: `configured` (SENTRY_SPOOL_DIR) if set, else this user's
    `<name>-<uid>` in the temp directory (which a container loses when it restarts)."""
    configured = configured.strip()
    if configured:
        return Path(configured).expanduser()
    return Path(tempfile.gettempdir()) / f"{name}-{os.geteuid()}"


class DamagedFileError(Exception):
    """A spool file whose header or content does not check out."""


@dataclass(frozen=True, slots=True)
class Spooled:
    """One spooled envelope: its file, and the data categories of its items."""

    path: Path
    categories: tuple[str, ...]


class Spool:
    """See the module's docstring. Used by one thread per process."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        max_age_seconds: float,
        on_drop: DropCallback | None = None,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self.on_drop = on_drop
        self.dropped_for_size = 0
        self.dropped_for_age = 0
        self.damaged = 0
        self._sequence = 0
        self._size = 0  # this process's estimate; made exact by `enforce_limits`
        self._drop_logged_at = -DROP_LOG_INTERVAL_SECONDS
        self._unlogged_drops = 0

    def prepare(self) -> bool:
        """Create the directory (0700) if needed, and check that it is this user's alone.

        Returns False, and logs why and what to do, if it cannot be used or is not safe.
        """
        try:
            unsafe = self._make_private()
            if unsafe is None:
                probe = self.directory / f".probe-{os.getpid()}"
                os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE))
                probe.unlink()
        except OSError as error:
            logger.warning(
                "Sentry spool directory %s cannot be used (%s): undeliverable events are "
                "dropped. Set SENTRY_SPOOL_DIR to a writable directory, or to nothing.",
                self.directory,
                error,
            )
            return False
        if unsafe is not None:
            logger.warning(
                "Sentry spool directory %s is not safe to use: %s; there is no spool "
                "(events are still sent, undeliverable ones are dropped). Fix: %s, or set "
                "SENTRY_SPOOL_DIR to a directory only this user can write.",
                self.directory,
                *unsafe,
            )
            return False
        self.enforce_limits()
        return True

    def _make_private(self) -> tuple[str, str] | None:
        """Create the directory 0700 if it is missing; make an existing one of ours 0700.

        Returns (what is wrong, the fix) if it belongs to another user or others can write it.
        """
        directory = self.directory
        missing = []
        while not directory.exists() and directory != directory.parent:
            missing.append(directory)
            directory = directory.parent
        for path in reversed(missing):  # private too: the umask is not asked
            with contextlib.suppress(FileExistsError):  # another worker made it meanwhile
                path.mkdir(mode=DIRECTORY_MODE)
                path.chmod(DIRECTORY_MODE)
        directory = self.directory
        status = directory.stat()
        if not stat.S_ISDIR(status.st_mode):
            raise NotADirectoryError(f"{directory} is not a directory")
        if status.st_uid != os.geteuid():
            return (
                f"it belongs to uid {status.st_uid}, not to this process's user "
                f"(uid {os.geteuid()}), so its owner could read the events or plant some",
                f"remove it (or chown it to uid {os.geteuid()})",
            )
        mode = stat.S_IMODE(status.st_mode)
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            return (
                f"group or other users can write to it (mode {mode:04o})",
                f"chmod 700 {directory}",
            )
        if mode != DIRECTORY_MODE:  # ours, but others could read the events in it
            directory.chmod(DIRECTORY_MODE)
        return None

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
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(descriptor, FILE_MODE)  # whatever the umask
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
            descriptor = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
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
        """Remove a file past a cap; tell `on_drop`. False if another process got there first."""
        categories: tuple[str, ...] = ()
        body = None
        if self.on_drop is not None:
            with contextlib.suppress(OSError, DamagedFileError):
                categories = _read_header(path)[2]
                body = _read_body(path)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._unlogged_drops += 1
        if self.on_drop is not None:
            self.on_drop(CAP_REASON, categories, body)
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
        categories: tuple[str, ...] = ()
        with contextlib.suppress(OSError, DamagedFileError):
            categories = _read_header(path)[2]
        with contextlib.suppress(OSError):
            path.unlink()
        if self.on_drop is not None:
            self.on_drop(DAMAGED_REASON, categories, None)


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


def _read_body(path: Path) -> bytes:
    with path.open("rb") as file:
        file.readline(256)
        return file.read()


def _spooled_at(path: Path, fallback: float) -> float:
    """When the file was spooled, from its name (seconds since the epoch)."""
    try:
        return int(path.name.split("-", 1)[0]) / 1e9
    except ValueError:
        return fallback
