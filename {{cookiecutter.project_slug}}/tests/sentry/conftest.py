"""Fixtures for the Sentry tests: the SDK with an in-memory transport, never the network."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from pydantic import SecretStr
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from app.core.config import Settings

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
