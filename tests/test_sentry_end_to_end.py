"""The `yes` variant under uvicorn, reporting to a real Bugsink and to a recording endpoint.

Privacy, noise control and context are checked on what the servers received: events read back
from Bugsink's API, and the raw envelopes (transactions included) kept by the recording endpoint.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import InstalledProject, clean_environment
from tests.support.bugsink import Bugsink, BugsinkProject
from tests.support.probe import Probe, running_probe
from tests.support.recorder import Recorder

pytestmark = pytest.mark.slow


def jwt_like(payload: str) -> str:
    """A value shaped like a JWT whose payload segment carries `payload`."""
    encoded = base64.urlsafe_b64encode(json.dumps({"sub": payload}).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJIUzI1NiJ9.{encoded}.c2lnbmF0dXJlLXBhcnQ"


@dataclass
class ClientVector:
    """How a client request carries a secret `s` into the app."""

    headers: dict[str, str] = field(default_factory=dict)
    query: str = ""
    body: Any = None
    form: dict[str, str] | None = None


def client_vectors(s: str, n: int) -> dict[str, ClientVector]:
    return {
        "cookie-header": ClientVector(headers={"Cookie": f"session={s}; theme=dark"}),
        "token-header": ClientVector(headers={"X-Auth-Token": s}),
        "key-header": ClientVector(headers={"X-Api-Key": s}),
        "session-header": ClientVector(headers={"X-Session-Id": s}),
        "query-string": ClientVector(query=f"?access_token={s}&page=2"),
        "json-body-nested": ClientVector(
            body={"name": "ok", "profile": {"billing": {"stripe_secret_key": s}}}
        ),
        "json-body-list": ClientVector(body={"items": [{"refresh_token": s}, {"n": 1}]}),
        "form-body": ClientVector(form={"username": "ada", "password": s}),
        "value-bearer": ClientVector(body={"note": f"Bearer {s}"}),
        "value-jwt": ClientVector(body={"blob": jwt_like(s)}),
        "value-url-password": ClientVector(body={"link": f"https://svc:{s}@example.com/x"}),
        "email-in-body": ClientVector(body={"contact": f"{s}@example.com"}),
        "client-ip": ClientVector(
            headers={"X-Forwarded-For": f"198.51.100.{n}", "X-Real-IP": f"198.51.100.{n}"}
        ),
    }


APP_VECTORS = [
    "local-variable",
    "local-object",
    "breadcrumb-data",
    "breadcrumb-log",
    "extra",
    "context",
    "tag",
    "exception-message",
    "log-error-event",
    "email-in-message",
]
CLIENT_VECTORS = list(client_vectors("x", 1))


@dataclass
class PrivacyRun:
    """Every vector sent once to an app reporting to Bugsink and once to one reporting to the
    recording endpoint (with every request traced)."""

    secrets: dict[str, list[str]]
    bugsink_events: list[dict[str, Any]]
    recorded_raw: bytes
    recorded_events: list[dict[str, Any]]
    token: str


def fire(probe: Probe, vector: str, n: int) -> str:
    """Send one request for `vector`; return the secret it carried (or the app planted)."""
    if vector in APP_VECTORS:
        response = probe.call(f"/e2e/fail/{vector}", method="POST")
        secret = probe.planted(vector)
    else:
        secret = f"{vector}-{probe.nonce}"
        how = client_vectors(secret, n)[vector]
        response = probe.call(
            f"/e2e/fail/{vector}{how.query}",
            method="POST",
            headers=how.headers,
            body=how.body,
            form=how.form,
        )
        if vector == "client-ip":
            secret = how.headers["X-Forwarded-For"]
    expected = 200 if vector == "log-error-event" else 500
    assert response.status == expected, f"{vector}: {response.status} {response.body[:200]!r}"
    return secret


EXPECTED_EVENTS = len(APP_VECTORS) + len(CLIENT_VECTORS) + 1  # "extra" also reports a handled one


@pytest.fixture(scope="module")
def privacy_run(
    sentry_project: InstalledProject, bugsink: Bugsink, tmp_path_factory: pytest.TempPathFactory
) -> PrivacyRun:
    project = bugsink.create_project("privacy")
    env = clean_environment()
    secrets: dict[str, list[str]] = {}
    workdir = tmp_path_factory.mktemp("privacy")
    vectors = APP_VECTORS + CLIENT_VECTORS
    with (
        Recorder() as recorder,
        running_probe(
            sentry_project.venv, sentry_project.path, env, workdir / "b", project.dsn
        ) as to_bugsink,
        running_probe(
            sentry_project.venv,
            sentry_project.path,
            env,
            workdir / "r",
            recorder.dsn,
            SENTRY_TRACES_SAMPLE_RATE="1.0",
        ) as to_recorder,
    ):
        for n, vector in enumerate(vectors, start=1):
            secrets[vector] = [fire(to_bugsink, vector, n), fire(to_recorder, vector, n + 100)]
        secrets["authorization-header"] = [to_bugsink.token, to_recorder.token]
        stored = bugsink.wait_for_events(project, EXPECTED_EVENTS, timeout=30)
        recorded = recorder.wait_for_events(EXPECTED_EVENTS, timeout=30)
        time.sleep(0.5)  # let the transactions of the last requests arrive too
        assert len(stored) == EXPECTED_EVENTS, (
            f"Bugsink has {len(stored)} of {EXPECTED_EVENTS} events\n{to_bugsink.log()[-3000:]}"
        )
        assert len(recorded) == EXPECTED_EVENTS, f"recorded {len(recorded)} of {EXPECTED_EVENTS}"
        return PrivacyRun(secrets, stored, recorder.raw(), recorded, to_bugsink.token)


def events_for(events: list[dict[str, Any]], vector: str) -> list[dict[str, Any]]:
    return [event for event in events if event.get("tags", {}).get("probe") == vector]


@pytest.mark.parametrize("vector", [*APP_VECTORS, *CLIENT_VECTORS, "authorization-header"])
def test_secret_never_reaches_the_server(privacy_run: PrivacyRun, vector: str) -> None:
    if vector != "authorization-header":
        assert events_for(privacy_run.bugsink_events, vector), f"no event for {vector}"
    stored = json.dumps(privacy_run.bugsink_events)
    recorded = privacy_run.recorded_raw.decode("utf-8", "replace")
    for secret in privacy_run.secrets[vector]:
        assert secret not in stored, f"{vector}: Bugsink stored {secret!r}"
        assert secret not in recorded, f"{vector}: {secret!r} went over the wire"


def test_the_jwt_payload_is_not_sent_either(privacy_run: PrivacyRun) -> None:
    payload_segment = privacy_run.token.split(".")[1]
    assert payload_segment[:12] not in json.dumps(privacy_run.bugsink_events)
    assert payload_segment[:12].encode() not in privacy_run.recorded_raw


def test_scrubbed_events_keep_their_useful_context(privacy_run: PrivacyRun) -> None:
    (event,) = events_for(privacy_run.bugsink_events, "json-body-nested")
    request = event["request"]
    assert request["method"] == "POST" and "/e2e/fail/json-body-nested" in request["url"], request
    assert request["data"]["name"] == "ok", request.get("data")
    assert request["data"]["profile"]["billing"]["stripe_secret_key"] == "[Filtered]", request
    (local,) = events_for(privacy_run.bugsink_events, "local-variable")
    frames = local["exception"]["values"][-1]["stacktrace"]["frames"]
    probe_frame = next(frame for frame in frames if frame.get("function") == "fail")
    assert probe_frame["vars"]["api_secret"] == "[Filtered]", probe_frame["vars"]
    assert probe_frame["vars"]["vector"] == "'local-variable'", probe_frame["vars"]


def test_every_event_carries_release_environment_server_user_and_tenant(
    privacy_run: PrivacyRun,
) -> None:
    (event,) = events_for(privacy_run.bugsink_events, "local-variable")
    assert (event["release"], event["environment"]) == ("probe@1.0.0", "e2e"), event["release"]
    assert event["server_name"], "server identity missing"
    assert event["contexts"]["worker"]["pid"] > 0, event["contexts"].get("worker")
    assert event["transaction"] == "/e2e/fail/{vector}", event.get("transaction")
    assert event["user"] == {"id": "user-7", "email": "owner@example.com"}, event["user"]
    assert event["tags"]["tenant_id"] == "tenant-42", event["tags"]
    assert event["contexts"]["tenant"]["id"] == "tenant-42", event["contexts"]
    for other in privacy_run.bugsink_events:
        assert other["release"] == "probe@1.0.0" and other["environment"] == "e2e", other


@pytest.fixture
def bugsink_probe(
    sentry_project: InstalledProject,
    bugsink: Bugsink,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Probe, BugsinkProject]]:
    project = bugsink.create_project(request.node.name)
    with running_probe(
        sentry_project.venv, sentry_project.path, clean_environment(), tmp_path, project.dsn
    ) as probe:
        yield probe, project


def test_client_errors_make_no_event_and_server_errors_exactly_one(
    bugsink_probe: tuple[Probe, BugsinkProject], bugsink: Bugsink
) -> None:
    probe, project = bugsink_probe
    quiet = [
        (probe.call("/e2e/status/400"), 400),
        (probe.server.get("/api/v1/items"), 401),
        (probe.call("/e2e/status/403"), 403),
        (probe.call("/api/v1/items/999999"), 404),
        (probe.call("/api/v1/items", method="POST", body={"title": ""}), 422),
        (probe.call("/api/v1/items/not-a-number"), 422),
    ]
    for response, status in quiet:
        assert response.status == status, (response.status, status, response.body[:200])
    assert probe.call("/e2e/status/503").status == 503
    assert probe.call("/e2e/fail/unhandled", method="POST").status == 500
    events = bugsink.wait_for_events(project, 2)
    time.sleep(1.0)  # anything else (a duplicate, a 4xx) would have arrived by now
    events = bugsink.events(project)
    kinds = sorted(event["exception"]["values"][-1]["type"] for event in events)
    assert kinds == ["HTTPException", "RuntimeError"], (
        f"expected one event per server error and none for client errors, got {kinds}\n"
        f"{probe.log()[-2000:]}"
    )


def test_error_logs_are_events_and_lower_levels_are_breadcrumbs(
    bugsink_probe: tuple[Probe, BugsinkProject], bugsink: Bugsink
) -> None:
    probe, project = bugsink_probe
    assert probe.call("/health").status == 200
    assert probe.call("/e2e/logs").status == 200
    (event,) = bugsink.wait_for_events(project, 1)
    time.sleep(0.5)
    assert len(bugsink.events(project)) == 1, "one ERROR record should make one event"
    assert event["logentry"]["message"] == "probe error record", event.get("logentry")
    crumbs = [crumb.get("message", "") for crumb in event.get("breadcrumbs", {}).get("values", [])]
    assert "probe info record" in crumbs and "probe warning record" in crumbs, crumbs
    assert not any("GET /" in crumb for crumb in crumbs), f"access logs leaked in: {crumbs}"


@pytest.fixture
def traced_probe(
    sentry_project: InstalledProject, tmp_path: Path
) -> Iterator[tuple[Probe, Recorder]]:
    with (
        Recorder() as recorder,
        running_probe(
            sentry_project.venv,
            sentry_project.path,
            clean_environment(),
            tmp_path,
            recorder.dsn,
            SENTRY_TRACES_SAMPLE_RATE="1.0",
        ) as probe,
    ):
        yield probe, recorder


def wait_for_transactions(recorder: Recorder, names: set[str], timeout: float = 15) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = recorder.items("transaction")
        if names <= {item.get("transaction") for item in found}:
            return found
        time.sleep(0.1)
    return recorder.items("transaction")


def test_probes_are_never_traced_and_routes_are_named_by_template(
    traced_probe: tuple[Probe, Recorder],
) -> None:
    probe, recorder = traced_probe
    for _ in range(5):
        assert probe.call("/health").status == 200
    created = probe.call("/api/v1/items", method="POST", body={"title": "traced"})
    assert created.status == 201, created.body
    item_id = json.loads(created.body)["id"]
    assert probe.call(f"/api/v1/items/{item_id}").status == 200
    names = {"/api/v1/items", "/api/v1/items/{item_id}"}
    transactions = wait_for_transactions(recorder, names)
    time.sleep(0.3)
    seen = sorted(item["transaction"] for item in recorder.items("transaction"))
    assert "/health" not in seen, f"health checks were traced: {seen}"
    assert seen == sorted(names), seen
    read = next(t for t in transactions if t["transaction"] == "/api/v1/items/{item_id}")
    db_spans = [span for span in read["spans"] if span.get("op", "").startswith("db")]
    assert db_spans, f"no database spans in {[span.get('op') for span in read['spans']]}"


def test_asyncio_tasks_become_spans_under_uvicorn(traced_probe: tuple[Probe, Recorder]) -> None:
    probe, recorder = traced_probe
    assert probe.call("/e2e/tasks").status == 200
    (transaction,) = [
        item
        for item in wait_for_transactions(recorder, {"/e2e/tasks"})
        if item["transaction"] == "/e2e/tasks"
    ]
    origins = {span.get("origin") for span in transaction["spans"]}
    assert "auto.function.asyncio" in origins, (
        f"the asyncio integration is not active: {origins}\n{probe.log()[-2000:]}"
    )
