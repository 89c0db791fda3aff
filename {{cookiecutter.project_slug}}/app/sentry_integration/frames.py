"""Source lines and local variables for the service's own stack frames, and for no others.

The SDK can add both to every frame of a stack trace, but an error raised in a route passes through
about twenty frames of uvicorn, Starlette, FastAPI and anyio whose locals (ASGI scopes, apps,
routers, middleware stacks) are large, and it reads each frame's source file again for every event.
That work ran on the event loop and cost about 10 ms per error here, mostly for frames nobody reads
(Sentry folds them away as not "in app"). So `init_sentry` turns both off in the SDK, and
`add_app_frame_detail` adds them back, in `before_send`, to the frames the SDK marked `in_app`:
the `app` package and any other module of the project itself.

Every frame is still sent, with file, function, module and line number: the stack trace stays
complete. Locals go through the same scrubber as the rest of the event afterwards.
"""

import itertools
import linecache
import os
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sentry_sdk.types import Event

#: Lines of source shown before and after the line of each in-app frame (the SDK's default).
CONTEXT_LINES = 5
#: A source line longer than this is cut, as the SDK cuts long values.
MAX_LINE_LENGTH = 300
#: How a local variable is shown: nested containers down to this depth, this many items of each,
#: strings and reprs cut at this length (about what the SDK's own serializer keeps).
MAX_VAR_DEPTH = 3
MAX_VAR_ITEMS = 20
MAX_VAR_LENGTH = 1024

FrameKey = tuple[str, int, str]


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, its causes and contexts, and the members of exception groups, each once."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [current.__cause__, current.__context__, *getattr(current, "exceptions", ())]


def _frames_by_location(error: BaseException) -> dict[FrameKey, list[FrameType]]:
    """Every frame of every traceback in the chain, by (absolute path, line, function)."""
    found: dict[FrameKey, list[FrameType]] = {}
    for current in _chain(error):
        traceback = current.__traceback__
        while traceback is not None:
            code = traceback.tb_frame.f_code
            # As the SDK computes `abs_path` (Path.resolve would also follow links).
            path = os.path.abspath(code.co_filename)  # noqa: PTH100
            key = (path, traceback.tb_lineno, code.co_name)
            found.setdefault(key, []).append(traceback.tb_frame)
            traceback = traceback.tb_next
    return found


def _source_context(path: str, lineno: int) -> dict[str, Any]:
    """The frame's line with the lines around it, read through Python's line cache."""
    lines = linecache.getlines(path)
    if not 0 < lineno <= len(lines):
        return {}
    index = lineno - 1

    def clean(line: str) -> str:
        return line.rstrip("\r\n")[:MAX_LINE_LENGTH]

    return {
        "pre_context": [clean(line) for line in lines[max(0, index - CONTEXT_LINES) : index]],
        "context_line": clean(lines[index]),
        "post_context": [clean(line) for line in lines[index + 1 : index + 1 + CONTEXT_LINES]],
    }


#: This integration's own frames are not the service's code (`in_app_include` covers all of `app`).
_OWN_PACKAGE = "app.sentry_integration."


def _not_the_services(entry: dict[str, Any]) -> bool:
    """Frames the SDK marks in-app that are not the service's code, and must not be an error's
    culprit: this integration's (its query wrapper sits under every query), and code without a
    source file (`<sqlalchemy generated ...>`, which the SDK takes for a file in the project)."""
    module = str(entry.get("module") or "")
    return module.startswith(_OWN_PACKAGE) or str(entry.get("filename") or "").startswith("<")


def _stack_frames(event: "Event") -> Iterator[dict[str, Any]]:
    for value in (event.get("exception") or {}).get("values") or []:
        yield from ((value.get("stacktrace") or {}).get("frames")) or []


def add_app_frame_detail(event: "Event", error: BaseException | None) -> None:
    """Add source lines and locals to the in-app frames of `event`, taken from `error`'s tracebacks.

    Frames are matched on path, line and function; a frame that cannot be matched keeps what the
    SDK gave it.
    """
    if error is None:
        return
    frames = _frames_by_location(error)
    for entry in _stack_frames(event):
        if _not_the_services(entry):
            entry["in_app"] = False
        if not entry.get("in_app"):
            continue
        path, lineno, function = entry.get("abs_path"), entry.get("lineno"), entry.get("function")
        if not (isinstance(path, str) and isinstance(lineno, int) and isinstance(function, str)):
            continue
        candidates = frames.get((path, lineno, function))
        if not candidates:
            continue
        frame = candidates.pop(0)
        entry.update(_source_context(frame.f_code.co_filename, lineno))
        entry["vars"] = {str(name): shown(value) for name, value in frame.f_locals.items()}


def shown(value: Any, depth: int = 0) -> Any:
    """A local variable as sent: numbers as they are, containers walked, anything else its repr.

    Never raises: a repr that fails is shown as such. The scrubber runs on the result afterwards.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):  # quoted, as Sentry shows strings among variables
        return repr(value[:MAX_VAR_LENGTH])
    if isinstance(value, bytes | bytearray):  # cut before repr: an upload may be megabytes
        return repr(bytes(value[:MAX_VAR_LENGTH]))[:MAX_VAR_LENGTH]
    if depth < MAX_VAR_DEPTH:
        if isinstance(value, dict):
            items = itertools.islice(value.items(), MAX_VAR_ITEMS)
            return {str(key)[:MAX_VAR_LENGTH]: shown(item, depth + 1) for key, item in items}
        if isinstance(value, list | tuple | set | frozenset):
            return [shown(item, depth + 1) for item in itertools.islice(value, MAX_VAR_ITEMS)]
    try:
        text = repr(value)
    except Exception as error:
        text = f"<{type(value).__name__} whose repr failed: {type(error).__name__}>"
    return text[:MAX_VAR_LENGTH]
