"""The test event of `python -m app.sentry check`: one event straight to the DSN's server.

It bypasses the SDK and the transport's background queue on purpose, to see the server's answer,
but goes through the transport's HTTP client (delivery.py): SENTRY_CA_CERTS and the proxy
settings (HTTPS_PROXY, NO_PROXY) apply to it as they do to the service's events.

Importable without sentry-sdk installed: it then says so instead of sending.
"""

import socket
import uuid
from datetime import UTC, datetime
from typing import Any

from app.core.config import Settings

CHECK_TIMEOUT_SECONDS = 10.0


def send_check_event(settings: Settings) -> tuple[bool, str]:
    """Send one test event to the server of SENTRY_DSN; return (accepted, what happened)."""
    dsn = settings.sentry_dsn.get_secret_value().strip()
    if not dsn:
        return False, "SENTRY_DSN is empty: set it to your project's DSN (Client Keys)."
    try:
        from sentry_sdk.envelope import Envelope, Item, PayloadRef

        from app.sentry_integration.delivery import CLIENT_NAME, HttpClient, SendError, parse_dsn
    except ImportError as error:
        if (error.name or "").partition(".")[0] == "sentry_sdk":
            return False, "the sentry-sdk package is not installed."
        return False, f"the check could not be loaded ({error})."
    try:
        endpoint = parse_dsn(dsn)
    except ValueError as error:
        return False, f"SENTRY_DSN is not a valid DSN ({error})."
    options = {"ca_certs": settings.sentry_ca_certs.strip() or None}
    try:
        client = HttpClient(endpoint, options, timeout=CHECK_TIMEOUT_SECONDS)
    except ValueError as error:
        return False, f"{error}."
    event_id = uuid.uuid4().hex
    event: dict[str, Any] = {
        "event_id": event_id,
        "timestamp": datetime.now(UTC).isoformat(),
        "platform": "python",
        "level": "info",
        "logger": "app.sentry",
        "message": f"Sentry check from {settings.project_name}",
        "environment": settings.sentry_environment,
        "release": settings.sentry_release,
        "server_name": socket.gethostname(),
        "tags": {"check": "true"},
    }
    envelope = Envelope(headers={"event_id": event_id, "dsn": dsn})
    envelope.add_item(Item(payload=PayloadRef(json=event), type="event"))
    headers = {
        "Content-Type": "application/x-sentry-envelope",
        "User-Agent": CLIENT_NAME,
        "X-Sentry-Auth": endpoint.auth_header(f"{settings.project_name}-check/1.0"),
    }
    where = endpoint.origin
    if client.proxy:
        where += f" (through the proxy {client.proxy})"
    try:
        answer = client.post(envelope.serialize(), headers)
    except SendError as error:
        return False, f"could not reach {where}: {error}."
    finally:
        client.close()
    status = answer.status
    if 200 <= status < 300:
        return True, f"{where} accepted test event {event_id} (HTTP {status})."
    if status >= 400:
        return (
            False,
            f"{where} refused the test event: HTTP {status} {answer.reason}".rstrip() + ".",
        )
    return False, f"{where} answered HTTP {status} to the test event."
