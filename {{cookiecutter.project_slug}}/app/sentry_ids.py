"""Trace, span and event ids from Python's `random` module instead of `uuid.uuid4()`.

The SDK makes each id with `uuid.uuid4()`, that is `os.urandom(16)`, a system call: on the
template's benchmark machine (a small virtual machine) it took about 14 µs inside the running
service, and a traced request needs four of them. These ids only have to be unique, not
unpredictable (they travel in plain sight, in the `sentry-trace` header); OpenTelemetry's default
id generator draws them from `random` too, which Python reseeds in every forked worker.

`install()` gives the SDK modules that make ids a stand-in for the `uuid` module whose `uuid4()`
draws from `random.getrandbits`. Nothing else changes: the rest of the process, including the
app's own `uuid.uuid4()`, still gets ids from the operating system.
"""

import importlib
import random
import uuid
from typing import Any

#: The SDK modules that call uuid.uuid4() for trace, span, event and profile ids.
SDK_MODULES = (
    "sentry_sdk.tracing",
    "sentry_sdk.tracing_utils",
    "sentry_sdk.client",
    "sentry_sdk.profiler.transaction_profiler",
)


class _FastUuid:
    """The `uuid` module, but for `uuid4()`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(uuid, name)

    @staticmethod
    def uuid4() -> uuid.UUID:
        return uuid.UUID(int=random.getrandbits(128), version=4)


FAST_UUID = _FastUuid()


def install() -> list[str]:
    """Put the stand-in into each SDK module that still uses the real `uuid`; return their names.

    A module that no longer imports `uuid` (a later SDK) is left alone: its ids just cost more.
    """
    installed = []
    for name in SDK_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "uuid", None) in (uuid, FAST_UUID):
            module.uuid = FAST_UUID  # type: ignore[attr-defined]
            installed.append(name)
    return installed
