"""A bounded spool on disk for Sentry envelopes that could not be delivered yet.

When Sentry cannot be reached, answers 5xx or says to slow down, the transport
(delivery.py) writes error envelopes here instead of dropping them, and sends them,
oldest first, once Sentry answers again: later in the same process, or after a restart, or from
another worker of the same service that shares the directory. `prepare` checks the directory on
the thread that sets the transport up, before the transport's background thread may use it; from
then on only that thread touches the disk. A request never waits for it.

The events are scrubbed but real: the directory is this user's alone. It is created 0700 and
its files 0600, whatever the umask; an existing directory that belongs to another user, or that
group or others can write to, or a symbolic link in its place, is refused (one log line says why
and what to do), and then there is no spool: events are still sent, just not kept. `prepare`
opens the directory it checked, and every later file operation is made relative to that open
directory, so that the path swapped for another one later cannot redirect the events.
SENTRY_SPOOL_DIR must name a directory dedicated to the spool: it is made 0700 and filled up to
the cap; files in it not named as the spool names its own are left alone. The default directory
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
import re
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
#: The spool's own files: envelopes, and the hidden temporary names they are written under.
_ENVELOPE_NAME = re.compile(r"\d{20}-\d+-\d+" + re.escape(SUFFIX))
_TEMPORARY_NAME = re.compile(r"\.(.+)\.tmp")
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
    """One spooled envelope: its file's name in the spool's directory, and the data categories of
    its items."""

    name: str
    categories: tuple[str, ...]


class Spool:
    """See the module's docstring. `prepare` first, then used by one thread at a time."""

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
        self._fd = -1  # the directory `prepare` checked, open for the process's lifetime

    def prepare(self) -> bool:
        """Create the directory (0700) if needed, and check that it is this user's alone.

        Returns False, and logs why and what to do, if it cannot be used or is not safe.
        """
        try:
            unsafe = self._make_private()
            if unsafe is None:
                probe = f".probe-{os.getpid()}{SUFFIX}.tmp"
                os.close(self._open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
                os.unlink(probe, dir_fd=self._fd)
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
        """Create the directory 0700 if it is missing; open it; make an existing one of ours 0700.

        Returns (what is wrong, the fix) if it is a symbolic link, belongs to another user or
        others can write it.
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
        if stat.S_ISLNK(os.lstat(directory).st_mode):
            return (
                f"it is a symbolic link (to {directory.readlink()}), which another user may "
                "have planted to make the events go where they choose",
                f"rm {directory}",
            )
        # O_NOFOLLOW: a link swapped in since the check above fails here (ELOOP), it is not used.
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            unsafe = _unsafe(directory, os.fstat(descriptor))
            if unsafe is None:
                os.fchmod(descriptor, DIRECTORY_MODE)  # ours, but others could read the events
                # Kept; the one of an earlier `prepare`, if any, is closed instead.
                descriptor, self._fd = self._fd, descriptor
        finally:
            if descriptor >= 0:
                os.close(descriptor)
        return unsafe

    def _open(self, name: str, flags: int) -> int:
        """Open a file of the spool's directory (never a symbolic link), 0600 if it is created."""
        return os.open(name, flags | os.O_NOFOLLOW, FILE_MODE, dir_fd=self._fd)

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
        temporary = f".{name}.tmp"
        descriptor = self._open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(descriptor, FILE_MODE)  # whatever the umask
            file.write(header)
            file.write(body)
        os.rename(temporary, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        self._size += len(header) + len(body)
        if self._size > self.max_bytes:
            self.enforce_limits()

    # ---- reading --------------------------------------------------------------------------

    def pending(self) -> list[Spooled]:
        """The spooled envelopes, oldest first (headers read, bodies not)."""
        found = []
        for name in self._files():
            try:
                categories = self._read_header(name)[2]
            except FileNotFoundError:
                continue  # delivered or dropped by another process meanwhile
            except (OSError, DamagedFileError) as error:
                self._discard_damaged(name, error)
                continue
            found.append(Spooled(name, categories))
        return found

    def read(self, spooled: Spooled) -> bytes | None:
        """The envelope in `spooled`, or None if it is gone or damaged (then removed)."""
        try:
            length, checksum, _ = self._read_header(spooled.name)
            body = self._read_body(spooled.name)
        except FileNotFoundError:
            return None
        except (OSError, DamagedFileError) as error:
            self._discard_damaged(spooled.name, error)
            return None
        if len(body) != length or zlib.crc32(body) != checksum:
            self._discard_damaged(spooled.name, DamagedFileError("length or checksum differs"))
            return None
        return body

    def remove(self, spooled: Spooled) -> None:
        """Forget a delivered envelope."""
        with contextlib.suppress(FileNotFoundError):
            size = self._stat(spooled.name).st_size
            os.unlink(spooled.name, dir_fd=self._fd)
            self._size = max(0, self._size - size)

    @contextlib.contextmanager
    def delivering(self) -> Iterator[bool]:
        """Hold the spool's delivery lock while inside; yields False if another process holds it."""
        try:
            descriptor = self._open(LOCK_NAME, os.O_RDWR | os.O_CREAT)
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
        sized: list[tuple[str, int]] = []
        for name in self._files(temporary=True):
            try:
                status = self._stat(name)
            except FileNotFoundError:
                continue
            if name.startswith("."):
                if now - status.st_mtime > STALE_TEMPORARY_SECONDS:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=self._fd)
                continue
            if now - _spooled_at(name, status.st_mtime) > self.max_age_seconds:
                if self._drop(name):
                    self.dropped_for_age += 1
                continue
            sized.append((name, status.st_size))
        total = sum(size for _, size in sized)
        # Over the cap, down to 90% of it: the next writes need not scan the directory again.
        target = self.max_bytes if total <= self.max_bytes else int(self.max_bytes * 0.9)
        for name, size in sized:  # oldest first
            if total <= target:
                break
            total -= size
            if self._drop(name):
                self.dropped_for_size += 1
        self._size = total
        self._log_drops()

    # ---- helpers --------------------------------------------------------------------------

    def _files(self, *, temporary: bool = False) -> list[str]:
        """The names of the spool's envelopes, oldest first; with `temporary`, of its temporary
        files too (`.<an envelope's name>.tmp`). Other files are not the spool's: left alone."""
        try:
            names = sorted(os.listdir(self._fd))  # noqa: PTH208 - the open directory, not a path
        except OSError:
            return []
        found = []
        for name in names:
            hidden = _TEMPORARY_NAME.fullmatch(name)
            if _ENVELOPE_NAME.fullmatch(name) or (
                temporary and hidden and _ENVELOPE_NAME.fullmatch(hidden[1])
            ):
                found.append(name)
        return found

    def _stat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self._fd, follow_symlinks=False)

    def _read_header(self, name: str) -> tuple[int, int, tuple[str, ...]]:
        with os.fdopen(self._open(name, os.O_RDONLY), "rb") as file:
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

    def _read_body(self, name: str) -> bytes:
        with os.fdopen(self._open(name, os.O_RDONLY), "rb") as file:
            file.readline(256)
            return file.read()

    def _drop(self, name: str) -> bool:
        """Remove a file past a cap; tell `on_drop`. False if another process got there first."""
        categories: tuple[str, ...] = ()
        body = None
        if self.on_drop is not None:
            with contextlib.suppress(OSError, DamagedFileError):
                categories = self._read_header(name)[2]
                body = self._read_body(name)
        try:
            os.unlink(name, dir_fd=self._fd)
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

    def _discard_damaged(self, name: str, error: Exception) -> None:
        self.damaged += 1
        logger.warning("Sentry spool: skipped damaged file %s (%s).", name, error)
        categories: tuple[str, ...] = ()
        with contextlib.suppress(OSError, DamagedFileError):
            categories = self._read_header(name)[2]
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=self._fd)
        if self.on_drop is not None:
            self.on_drop(DAMAGED_REASON, categories, None)


def _unsafe(directory: Path, status: os.stat_result) -> tuple[str, str] | None:
    """(What is wrong, the fix) if the directory of `status` is not this user's alone."""
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
    return None


def _spooled_at(name: str, fallback: float) -> float:
    """When the file was spooled, from its name (seconds since the epoch)."""
    try:
        return int(name.split("-", 1)[0]) / 1e9
    except ValueError:
        return fallback
