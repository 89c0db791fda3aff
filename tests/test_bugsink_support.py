"""The Bugsink helper works: a real server takes a Sentry envelope and gives the event back whole.

The envelope is built here by hand, as the Sentry SDK builds it, so that this test needs nothing
but the standard library in the test environment.
"""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.support.bugsink import BugsinkProject, running_bugsink


def error_event(event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "timestamp": "2026-01-02T03:04:05.000000Z",
        "platform": "python",
        "level": "error",
        "release": "billing@1.2.3",
        "environment": "staging",
        "server_name": "worker-7",
        "transaction": "/invoices/{invoice_id}",
        "exception": {
            "values": [
                {
                    "type": "ZeroDivisionError",
                    "value": "division by zero",
                    "mechanism": {"type": "starlette", "handled": False},
                    "stacktrace": {
                        "frames": [
                            {
                                "filename": "app/api/invoices.py",
                                "module": "app.api.invoices",
                                "function": "total",
                                "lineno": 42,
                                "in_app": True,
                                "vars": {"amount": "100", "parts": "0"},
                            }
                        ]
                    },
                }
            ]
        },
        "request": {
            "method": "GET",
            "url": "http://testserver/invoices/7",
            "headers": {"User-Agent": "test"},
        },
        "user": {"id": "user-1", "email": "ada@example.com"},
        "tags": {"tenant_id": "tenant-9"},
        "contexts": {"tenant": {"id": "tenant-9"}},
        "breadcrumbs": {"values": [{"message": "loading invoice", "category": "db"}]},
    }


def envelope(project: BugsinkProject, event: dict[str, Any]) -> bytes:
    """A Sentry envelope: header line, item header line, item payload."""
    payload = json.dumps(event).encode()
    header = {"event_id": event["event_id"], "dsn": project.dsn}
    item_header = {"type": "event", "length": len(payload)}
    lines = [json.dumps(header).encode(), json.dumps(item_header).encode(), payload]
    return b"\n".join(lines) + b"\n"


def send(project: BugsinkProject, body: bytes) -> tuple[int, dict[str, Any]]:
    auth = f"Sentry sentry_version=7, sentry_key={project.public_key}, sentry_client=test/1.0"
    headers = {"Content-Type": "application/x-sentry-envelope", "X-Sentry-Auth": auth}
    request = urllib.request.Request(project.envelope_url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status, json.loads(answer.read())


def process_group_exists(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_bugsink_stores_a_sent_event_and_stops_cleanly(tmp_path: Path) -> None:
    event_id = uuid.uuid4().hex
    with running_bugsink(tmp_path / "bugsink") as bugsink:
        project = bugsink.create_project("support-check")
        assert project.dsn.startswith("http://") and "@127.0.0.1:" in project.dsn, (
            f"the project's DSN should point at the loopback server: {project.dsn}"
        )

        status, answer = send(project, envelope(project, error_event(event_id)))
        assert status == 200, f"the envelope endpoint answered {status}: {answer}"
        assert answer.get("id") == event_id, f"the server did not acknowledge the event: {answer}"

        events = bugsink.wait_for_events(project, 1, timeout=10)
        assert len(events) == 1, (
            f"expected 1 stored event, got {len(events)}:\n{bugsink.log_tail()}"
        )
        (stored,) = events
        assert stored["event_id"] == event_id, f"stored event_id {stored['event_id']} != {event_id}"
        exception = stored["exception"]["values"][0]
        assert exception["value"] == "division by zero", (
            f"exception not stored as sent: {exception}"
        )
        frame_vars = exception["stacktrace"]["frames"][-1]["vars"]
        assert frame_vars == {"amount": "100", "parts": "0"}, f"frame vars lost: {frame_vars}"
        assert stored["user"] == {"id": "user-1", "email": "ada@example.com"}, (
            f"user not stored as sent: {stored.get('user')}"
        )
        assert stored["tags"] == {"tenant_id": "tenant-9"}, f"tags not as sent: {stored['tags']}"
        assert stored["request"]["url"] == "http://testserver/invoices/7", (
            f"request not stored as sent: {stored.get('request')}"
        )
        assert (stored["release"], stored["environment"]) == ("billing@1.2.3", "staging"), (
            f"release/environment not stored: {stored.get('release')}, {stored.get('environment')}"
        )

        issues = bugsink.issues(project)
        assert len(issues) == 1, f"expected exactly 1 issue, got {len(issues)}: {issues}"
        assert issues[0]["calculated_value"] == "division by zero", (
            f"the issue is not about the sent exception: {issues[0]}"
        )
        url = bugsink.issue_url(project, issues[0])
        assert url.startswith(bugsink.base_url + "/issues/issue/"), f"odd issue URL: {url}"
        server = bugsink.process

    assert server.poll() is not None, "the Bugsink server is still running after the block"
    assert not process_group_exists(server.pid), "a Bugsink worker outlived the server"
