"""Flood control: at most `max_events` events per issue per time window.

A bug hit in a hot loop, or by every request while a dependency is down, would otherwise send the
same event thousands of times: the service spends its CPU building them, Sentry's quota is gone in
minutes, and the rarer errors are rate-limited with it. Here each error event gets a key that
stands for its issue (the exception's type and where it was raised, or a message's template),
and only the first `max_events` of a key in each window of `window_seconds` are sent.

What was dropped is not forgotten: the next event of the same key that is sent carries a
`flood_control` context with how many were dropped before it, and the log says once per window
and key that the cap was reached.
"""

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("app.sentry")

#: Keys remembered at once; the least recently seen is forgotten first.
MAX_KEYS = 1000
#: The fingerprint that means "group as Sentry would" (spelt so, as it is also Jinja syntax).
DEFAULT_FINGERPRINT = "{" + "{ default }" + "}"


@dataclass(slots=True)
class _Window:
    started: float
    sent: int = 0
    dropped: int = 0  # in this window, not yet reported
    logged: bool = False


class FloodGate:
    """Decides which events of an issue are sent; see the module's docstring."""

    def __init__(self, max_events: int, window_seconds: float) -> None:
        self.max_events = max_events
        self.window_seconds = window_seconds
        self.dropped_total = 0
        self._windows: OrderedDict[tuple[str, ...], _Window] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, key: tuple[str, ...], now: float | None = None) -> int | None:
        """None if an event of `key` is to be dropped; else how many were dropped before it."""
        if self.max_events <= 0:
            return 0
        now = time.monotonic() if now is None else now
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window.started >= self.window_seconds:
                carried = 0 if window is None else window.dropped
                window = self._windows[key] = _Window(started=now, dropped=carried)
                while len(self._windows) > MAX_KEYS:
                    self._windows.popitem(last=False)
            self._windows.move_to_end(key)
            if window.sent < self.max_events:
                window.sent += 1
                dropped, window.dropped = window.dropped, 0
                return dropped
            window.dropped += 1
            self.dropped_total += 1
            first_drop, window.logged = not window.logged, True
        if first_drop:
            logger.warning(
                "Sentry flood control: %s reached %d events in %g s; more of it are dropped "
                "until the window ends (the next one sent says how many).",
                " ".join(key),
                self.max_events,
                self.window_seconds,
            )
        return None


def issue_key(event: Mapping[str, Any], error: BaseException | None) -> tuple[str, ...]:
    """What stands for the event's issue: a fingerprint if set, else the exception's type and the
    place it was raised (file, function, line), else the message's template."""
    fingerprint = event.get("fingerprint")
    if fingerprint and fingerprint != [DEFAULT_FINGERPRINT]:
        return ("fingerprint", *map(str, fingerprint))
    if error is not None:
        place = ("", "", "")
        traceback = error.__traceback__
        while traceback is not None:
            code = traceback.tb_frame.f_code
            place = (code.co_filename, code.co_name, str(traceback.tb_lineno))
            traceback = traceback.tb_next
        kind = type(error)
        return (f"{kind.__module__}.{kind.__qualname__}", *place)
    logentry = event.get("logentry") or {}
    message = logentry.get("message") or event.get("message") or ""
    return ("message", str(event.get("logger") or ""), str(message))
