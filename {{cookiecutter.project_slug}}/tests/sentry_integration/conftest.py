"""Fixtures for the Sentry tests: the SDK with an in-memory transport, never the network."""

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
import sentry_sdk.client
from pydantic import SecretStr
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from app.core.config import Settings
from app.sentry_integration.delivery import Answer, SendError, SentryTransport

DSN = "http://public@127.0.0.1:9/1"


class CapturingTransport(Transport):
    """Keeps every envelope, serialized as it would go over the wire."""

    def __init__(self) -> None:
        super().__init__({"dsn": DSN})  # the client takes the DSN's public key from here
        self.payloads: list[bytes] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.payloads.append(envelope.serialize())

    def items(self, item_type: str) -> list[dict[str, Any]]:
        found = []
        for payload in self.payloads:
            for item in Envelope.deserialize(payload).items:
                if item.type == item_type:
                    found.append(json.loads(item.get_bytes()))
        return found

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.items("event")


@pytest.fixture
def transport() -> Iterator[CapturingTransport]:
    capturing = CapturingTransport()
    yield capturing
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)
    sentry_sdk.get_isolation_scope().clear()


@pytest.fixture
def sentry_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "sentry_dsn": SecretStr(DSN),
            "sentry_environment": "staging",
            "sentry_release": "svc@1.2.3",
            "sentry_traces_sample_rate": 0.0,
        }
    )


class ScriptedConnection:
    """Answers each post with the next outcome of `script`; may hold a post until released."""

    def __init__(self, script: list[Answer | SendError]) -> None:
        self.script = script
        self.sent: list[bytes] = []
        self.release = threading.Event()
        self.release.set()

    def post(self, head: bytes, body: bytes) -> Answer:
        self.release.wait(5)
        self.sent.append(body)
        outcome = self.script.pop(0) if self.script else Answer(200)
        if isinstance(outcome, SendError):
            raise outcome
        return outcome

    def close(self) -> None:
        """Nothing to close."""


def scripted_transport(
    script: list[Answer | SendError], **options: Any
) -> tuple[Any, ScriptedConnection]:
    """A `SentryTransport` whose connection is a `ScriptedConnection` (returned with it)."""
    transport = SentryTransport(sentry_sdk.client._get_options(dsn=DSN, **options))
    connection = ScriptedConnection(script)
    transport._connection = connection  # type: ignore[assignment]
    return transport, connection
