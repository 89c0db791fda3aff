"""The `yes` variant under uvicorn, reporting to a real Bugsink and to a recording endpoint.

Privacy, noise control and context are checked on what the servers received: events read back
from Bugsink's API, and the raw envelopes (transactions included) kept by the recording endpoint.

"Nothing else arrived" is never a pause: a test waits until what it expects has arrived, then
stops the service (which sends what it still holds, with a bounded wait) and looks again: once
the process has exited, nothing more can come.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import InstalledProject, clean_environment
from tests.support.bugsink import Bugsink, BugsinkProject
from tests.support.probe import Probe, make_token, running_probe
from tests.support.recorder import Recorder
from tests.support.server import stop

pytestmark = pytest.mark.slow


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(segment: str) -> str:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode()


def jwt_like(secret: str, n: int) -> str:
    """A JWT-shaped value (header, claims, signature) with `secret` as the value of a claim."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sub": f"customer-{n}", "api_secret": secret}).encode())
    return f"{header}.{claims}.{b64url(hashlib.sha256(secret.encode()).digest())}"


#: Claims of the service's own token that events carry on purpose (user and tenant) or that
#: say nothing secret; every other claim's value is a secret that must not leave the process.
PUBLIC_CLAIMS = frozenset({"sub", "tenant_id", "email", "exp", "iat"})


def jwt_leak_forms(token: str, public_claims: frozenset[str] = frozenset()) -> list[str]:
    """Every form in which `token` could leak: whole, each segment and the start of each (a
    truncated token), its header and claims decoded, and the value of each non-public claim."""
    segments = token.split(".")
    header, claims = b64url_decode(segments[0]), b64url_decode(segments[1])
    forms = [token, *segments, *(segment[:16] for segment in segments), header, claims]
    forms += [str(value) for key, value in json.loads(claims).items() if key not in public_claims]
    return forms


#: Runs of base64 (either alphabet, padding left off) long enough to hide a secret in.
BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}")


def base64_decoded(text: str) -> str:
    """Every base64 run in `text` decoded, at each of the four alignments (a run may start
    before the encoded value does), so that a secret sent encoded is found as plain text."""
    decoded = []
    for run in BASE64_RUN.findall(text):
        standard = run.replace("-", "+").replace("_", "/")
        for start in range(4):
            chunk = standard[start:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            try:
                decoded.append(base64.b64decode(chunk).decode("utf-8", "replace"))
            except (binascii.Error, ValueError):
                continue
    return "\n".join(decoded)


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
        "value-jwt": ClientVector(body={"blob": jwt_like(s, n)}),
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


@dataclass(repr=False)
class PrivacyRun:
    """Every vector sent once to an app reporting to Bugsink and once to one reporting to the
    recording endpoint (with every request traced)."""

    #: vector -> each form of its secrets that must not reach a server, for both apps
    secrets: dict[str, list[str]]
    bugsink_events: list[dict[str, Any]]
    recorded_raw: bytes
    recorded_events: list[dict[str, Any]]
    recorded_transactions: list[dict[str, Any]]
    token: str
    #: what each server has, as text to search: the JSON, and its base64 runs decoded
    haystacks: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        stored = json.dumps(self.bugsink_events)
        recorded = self.recorded_raw.decode("utf-8", "replace")
        self.haystacks = {
            "Bugsink stored": stored,
            "went over the wire": recorded,
            "Bugsink stored, base64-encoded,": base64_decoded(stored),
            "went over the wire base64-encoded:": base64_decoded(recorded),
        }


def fire(probe: Probe, vector: str, n: int) -> list[str]:
    """Send one request for `vector`; return the forms of the secret it carried (or the app
    planted) that must not be sent on."""
    if vector in APP_VECTORS:
        response = probe.call(f"/e2e/fail/{vector}", method="POST")
        forms = [probe.planted(vector)]
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
        forms = [secret]
        if vector == "client-ip":
            forms = [how.headers["X-Forwarded-For"]]
        elif vector == "value-jwt":
            forms += jwt_leak_forms(how.body["blob"])
    expected = 200 if vector == "log-error-event" else 500
    assert response.status == expected, f"{vector}: {response.status} {response.body[:200]!r}"
    return forms


EXPECTED_EVENTS = len(APP_VECTORS) + len(CLIENT_VECTORS) + 1  # "extra" also reports a handled one
FAIL_ROUTE = "/e2e/fail/{vector}"


def wait_until(condition: Callable[[], bool], timeout: float = 30, interval: float = 0.1) -> bool:
    """Poll `condition` until it holds or `timeout` seconds have passed; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


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
            secrets[vector] = fire(to_bugsink, vector, n) + fire(to_recorder, vector, n + 100)
        secrets["authorization-header"] = [
            *jwt_leak_forms(to_bugsink.token, PUBLIC_CLAIMS),
            *jwt_leak_forms(to_recorder.token, PUBLIC_CLAIMS),
        ]
        bugsink.wait_for_events(project, EXPECTED_EVENTS, timeout=30)
        recorder.wait_for_events(EXPECTED_EVENTS, timeout=30)
        wait_until(
            lambda: len(transactions_named(recorder, FAIL_ROUTE)) >= len(vectors), timeout=30
        )
        # Leaving the block stops both apps (each sends what it still holds) before the
        # recording endpoint closes: what the servers have now is all they will ever get.
    stored = bugsink.events(project)
    assert len(stored) == EXPECTED_EVENTS, (
        f"Bugsink has {len(stored)} of {EXPECTED_EVENTS} events\n{to_bugsink.log()[-3000:]}"
    )
    recorded = recorder.events()
    assert len(recorded) == EXPECTED_EVENTS, f"recorded {len(recorded)} of {EXPECTED_EVENTS}"
    return PrivacyRun(
        secrets,
        stored,
        recorder.raw(),
        recorded,
        recorder.items("transaction"),
        to_bugsink.token,
    )


def events_for(events: list[dict[str, Any]], vector: str) -> list[dict[str, Any]]:
    return [event for event in events if event.get("tags", {}).get("probe") == vector]


def transactions_named(recorder: Recorder, name: str) -> list[dict[str, Any]]:
    return [item for item in recorder.items("transaction") if item.get("transaction") == name]


@pytest.mark.parametrize("vector", [*APP_VECTORS, *CLIENT_VECTORS, "authorization-header"])
def test_secret_never_reaches_the_server(privacy_run: PrivacyRun, vector: str) -> None:
    if vector != "authorization-header":
        assert events_for(privacy_run.bugsink_events, vector), f"no event for {vector}"
        assert events_for(privacy_run.recorded_events, vector), f"no recorded event for {vector}"
    assert privacy_run.secrets[vector], vector
    for form in privacy_run.secrets[vector]:
        escaped = json.dumps(form)[1:-1]  # as it would stand inside a JSON string
        for where, text in privacy_run.haystacks.items():
            assert form not in text and escaped not in text, f"{vector}: {where} {form!r}"


def test_the_leak_check_would_see_a_leaked_token() -> None:
    """The searches above find a token that did leak, in each form, by its secret claim."""
    token = make_token("user-1", "tenant-1", None, sid="claim-that-must-show")
    claims = b64url_decode(token.split(".")[1])
    for leaked in (
        json.dumps({"headers": {"Authorization": f"Bearer {token}"}}),
        json.dumps({"claims": json.loads(claims)}),
        json.dumps({"url": "/v1/" + base64.b64encode(b"{}" + claims.encode()).decode()}),
    ):
        text = leaked + "\n" + base64_decoded(leaked)
        found = [form for form in jwt_leak_forms(token, PUBLIC_CLAIMS) if form in text]
        assert "claim-that-must-show" in found, (leaked, found)


def test_the_privacy_run_is_traced_request_by_request(privacy_run: PrivacyRun) -> None:
    """Each request of the traced app is one transaction, named by its route, marked as failed
    when it answered 500, with the user and tenant, and in the same trace as its error."""
    transactions = privacy_run.recorded_transactions
    names = Counter(item.get("transaction") for item in transactions)
    vectors = APP_VECTORS + CLIENT_VECTORS
    assert names == {FAIL_ROUTE: len(vectors)}, f"expected one transaction per request: {names}"
    for vector in vectors:
        found = events_for(transactions, vector)
        assert len(found) == 1, f"{vector}: {len(found)} transactions"
        (transaction,) = found
        trace = transaction["contexts"]["trace"]
        expected = "ok" if vector == "log-error-event" else "internal_error"
        assert trace.get("status") == expected, f"{vector}: {trace}"
        assert transaction["user"] == {"id": "user-7", "email": "owner@example.com"}, transaction
        assert transaction["tags"]["tenant_id"] == "tenant-42", transaction["tags"]
        assert transaction["contexts"]["tenant"] == {"id": "tenant-42"}, transaction["contexts"]
        for event in events_for(privacy_run.recorded_events, vector):
            linked = event["contexts"]["trace"]["trace_id"]
            assert linked == trace["trace_id"], f"{vector}: the error is not in its trace"


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
    bugsink.wait_for_events(project, 2)
    stop(probe.server)  # sends what it still holds (a duplicate, a 4xx): then nothing more comes
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
    bugsink.wait_for_events(project, 1)
    stop(probe.server)
    events = bugsink.events(project)
    assert len(events) == 1, f"one ERROR record should make one event, got {len(events)}"
    (event,) = events
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


def wait_for_transactions(recorder: Recorder, names: set[str], timeout: float = 15) -> None:
    """Wait until a transaction of each name has been recorded."""
    wait_until(
        lambda: names <= {item.get("transaction") for item in recorder.items("transaction")},
        timeout,
    )


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
    wait_for_transactions(recorder, names)
    stop(probe.server)
    transactions = recorder.items("transaction")
    seen = sorted(item["transaction"] for item in transactions)
    assert "/health" not in seen, f"health checks were traced: {seen}"
    assert seen == sorted(names), seen
    read = next(t for t in transactions if t["transaction"] == "/api/v1/items/{item_id}")
    db_spans = [span for span in read["spans"] if span.get("op", "").startswith("db")]
    assert db_spans, f"no database spans in {[span.get('op') for span in read['spans']]}"


def test_asyncio_tasks_become_spans_under_uvicorn(traced_probe: tuple[Probe, Recorder]) -> None:
    probe, recorder = traced_probe
    assert probe.call("/e2e/tasks").status == 200
    wait_for_transactions(recorder, {"/e2e/tasks"})
    stop(probe.server)
    transactions = recorder.items("transaction")
    assert [item["transaction"] for item in transactions] == ["/e2e/tasks"], transactions
    origins = {span.get("origin") for span in transactions[0]["spans"]}
    assert "auto.function.asyncio" in origins, (
        f"the asyncio integration is not active: {origins}\n{probe.log()[-2000:]}"
    )


# ---- one request's user and tenant never on another's event ---------------------------------

#: Two tenants, each with its own user and token.
TENANTS = {
    "tenant-acme": ("user-ada", "ada@acme.example.com"),
    "tenant-globex": ("user-bob", "bob@globex.example.com"),
}
ISOLATION_MODES = ["raise", "capture", "capture-in-thread"]
ISOLATION_ROUNDS = 8  # per tenant and mode: 48 requests in all, up to 16 at a time


@dataclass(frozen=True)
class IsolationRequest:
    label: str
    tenant: str
    how: str
    pause_ms: int

    @property
    def user(self) -> str:
        return TENANTS[self.tenant][0]

    @property
    def email(self) -> str:
        return TENANTS[self.tenant][1]

    @property
    def request_id(self) -> str:
        return f"req-{self.label}"


def isolation_requests() -> list[IsolationRequest]:
    """Both tenants' requests interleaved, each pausing a different while in the middle, so that
    one request's user is set while another's is between its own start and its event."""
    requests = []
    for n in range(ISOLATION_ROUNDS):
        for how in ISOLATION_MODES:
            for tenant in TENANTS:
                label = f"{tenant}-{how}-{n}"
                requests.append(IsolationRequest(label, tenant, how, (n * 7 + len(how)) % 25))
    return requests


@dataclass
class IsolationRun:
    requests: list[IsolationRequest]
    #: "event" and "transaction" -> label -> what the recording endpoint got for that request
    received: dict[str, dict[str, list[dict[str, Any]]]]


@pytest.fixture(scope="module")
def isolation_run(
    sentry_project: InstalledProject, tmp_path_factory: pytest.TempPathFactory
) -> IsolationRun:
    """The requests of both tenants sent at once (up to 16 in flight) to one traced app."""
    requests = isolation_requests()
    tokens = {tenant: make_token(user, tenant, email) for tenant, (user, email) in TENANTS.items()}

    def send(request: IsolationRequest) -> int:
        response = probe.call(
            f"/e2e/isolation/{request.label}?how={request.how}&pause_ms={request.pause_ms}",
            headers={
                "Authorization": f"Bearer {tokens[request.tenant]}",
                "X-Request-ID": request.request_id,
            },
            timeout=30,
        )
        return response.status

    with (
        Recorder() as recorder,
        running_probe(
            sentry_project.venv,
            sentry_project.path,
            clean_environment(),
            tmp_path_factory.mktemp("isolation"),
            recorder.dsn,
            SENTRY_TRACES_SAMPLE_RATE="1.0",
        ) as probe,
        ThreadPoolExecutor(max_workers=16) as pool,
    ):
        statuses = list(pool.map(send, requests))
        expected = [500 if request.how == "raise" else 200 for request in requests]
        assert statuses == expected, f"{statuses}{probe.log()[-2000:]}"
        wait_until(lambda: len(recorder.events()) >= len(requests))
        wait_until(lambda: len(recorder.items("transaction")) >= len(requests))
        stop(probe.server)
    received = {}
    for kind, items in (
        ("event", recorder.events()),
        ("transaction", recorder.items("transaction")),
    ):
        by_label = {request.label: events_for(items, request.label) for request in requests}
        wrong = {label: len(found) for label, found in by_label.items() if len(found) != 1}
        assert not wrong, (
            f"expected one {kind} per request, got {len(items)} for {len(requests)} requests; "
            f"per label, where not one: {wrong}"
        )
        received[kind] = by_label
    return IsolationRun(requests, received)


@pytest.mark.parametrize("kind", ["event", "transaction"])
def test_concurrent_requests_of_two_tenants_keep_their_own_user_and_tenant(
    isolation_run: IsolationRun, kind: str
) -> None:
    for request in isolation_run.requests:
        (item,) = isolation_run.received[kind][request.label]
        shown = f"{kind} of {request.label} ({request.user} of {request.tenant})"
        assert item.get("user") == {"id": request.user, "email": request.email}, (
            f"{shown} has user {item.get('user')}"
        )
        assert item["tags"].get("tenant_id") == request.tenant, f"{shown}: {item['tags']}"
        assert item["contexts"].get("tenant") == {"id": request.tenant}, (
            f"{shown}: {item['contexts'].get('tenant')}"
        )
        crumbs = [
            crumb.get("message", "") for crumb in item.get("breadcrumbs", {}).get("values", [])
        ]
        others = [c for c in crumbs if "isolation step" in c and request.label not in c]
        assert not others, f"{shown} has another request's breadcrumbs: {others}"
        other_tenant = next(tenant for tenant in TENANTS if tenant != request.tenant)
        text = json.dumps(item)
        for foreign in (other_tenant, *TENANTS[other_tenant]):
            at = text.find(foreign)
            assert at < 0, f"{shown} mentions {foreign!r}: ...{text[max(0, at - 600) : at + 200]}"
