"""Error reporting, checked on the envelopes the SDK would send (in memory, never the network)."""

import logging

import pytest
import sentry_sdk
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app import sentry
from app.api.deps import CurrentUserDep
from app.core.config import ConfigurationError, Settings, load_settings
from app.main import create_app
from app.sentry_integration.request import traces_sampler
from tests.conftest import TokenFactory
from tests.sentry_integration.conftest import CapturingTransport


@pytest.fixture
def reporting_app(sentry_settings: Settings, transport: CapturingTransport) -> FastAPI:
    app = create_app(sentry_settings)
    assert sentry.init_sentry(sentry_settings, transport=transport), "Sentry did not start"

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    @app.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(status_code=418)

    return app


def _flush() -> None:
    sentry_sdk.flush(timeout=2)


def test_unhandled_error_becomes_one_event_with_context(
    reporting_app: FastAPI, transport: CapturingTransport
) -> None:
    with TestClient(reporting_app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    _flush()
    assert response.status_code == 500
    events = transport.events
    assert len(events) == 1, f"expected one event for one failure, got {len(events)}"
    event = events[0]
    assert event["exception"]["values"][-1]["value"] == "kaboom", event["exception"]
    assert (event["release"], event["environment"]) == ("svc@1.2.3", "staging")
    assert event["request"]["url"].endswith("/boom"), event["request"]
    assert event["server_name"], "events must say which server they came from"


def test_user_and_tenant_are_attached(
    reporting_app: FastAPI, transport: CapturingTransport, make_token: TokenFactory
) -> None:
    @reporting_app.get("/api/v1/fail-as-user")
    def fail_as_user(user: CurrentUserDep) -> None:
        raise RuntimeError(f"failure for {user.id}")

    token = make_token("user-42", "tenant-7", email="u42@example.com")
    with TestClient(reporting_app, raise_server_exceptions=False) as client:
        assert (
            client.get(
                "/api/v1/fail-as-user", headers={"Authorization": f"Bearer {token}"}
            ).status_code
            == 500
        )
    _flush()
    (event,) = transport.events
    assert event["user"] == {"id": "user-42", "email": "u42@example.com"}, event.get("user")
    assert event["tags"]["tenant_id"] == "tenant-7", event.get("tags")
    assert event["contexts"]["tenant"]["id"] == "tenant-7", event["contexts"]


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/api/v1/items", {}, 401),
        ("/api/v1/items/1", {"Authorization": "Bearer nope"}, 401),
        ("/nowhere", {}, 404),
        ("/teapot", {}, 418),
    ],
    ids=["401-missing-token", "401-bad-token", "404", "418"],
)
def test_client_errors_make_no_event(
    reporting_app: FastAPI,
    transport: CapturingTransport,
    path: str,
    headers: dict[str, str],
    status: int,
) -> None:
    with TestClient(reporting_app, raise_server_exceptions=False) as client:
        assert client.get(path, headers=headers).status_code == status
    _flush()
    assert transport.events == [], f"{status} must not be reported"


def test_validation_errors_make_no_event(
    reporting_app: FastAPI, transport: CapturingTransport, make_token: TokenFactory
) -> None:
    headers = {"Authorization": f"Bearer {make_token()}"}
    with TestClient(reporting_app, raise_server_exceptions=False) as client:
        assert client.post("/api/v1/items", json={}, headers=headers).status_code == 422
        assert client.get("/api/v1/items/not-a-number", headers=headers).status_code == 422
    _flush()
    assert transport.events == [], "validation errors must not be reported"


def test_helpers_send_what_they_are_given(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    assert sentry.init_sentry(sentry_settings, transport=transport)
    with sentry_sdk.isolation_scope():
        sentry.set_user_context("u1", "t1")
        sentry.set_tag("feature", "export")
        sentry.set_context("job", {"attempt": 3})
        sentry.add_breadcrumb("loaded rows", category="db", data={"rows": 12})
        message_id = sentry.capture_message("quota nearly used", level="warning", used=0.93)
        try:
            raise ValueError("bad row")
        except ValueError as error:
            error_id = sentry.capture_exception(error, row=17)
        sentry.clear_user_context()
        sentry.capture_message("after clearing")
    _flush()
    message, error_event, cleared = transport.events
    assert message["event_id"] == message_id and error_event["event_id"] == error_id
    assert (message["level"], message["extra"]["used"]) == ("warning", 0.93), message
    assert message["tags"] == {"tenant_id": "t1", "feature": "export"}, message["tags"]
    assert message["contexts"]["job"]["attempt"] == 3, message["contexts"]
    assert message["breadcrumbs"]["values"][-1]["data"] == {"rows": 12}
    assert error_event["extra"]["row"] == 17, error_event["extra"]
    assert "user" not in cleared and "tenant_id" not in cleared.get("tags", {}), cleared


def test_secrets_are_scrubbed_before_sending(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    assert sentry.init_sentry(sentry_settings, transport=transport)
    sentry.capture_message(
        "calling https://svc:hunter2@example.com with Bearer abc.def",
        api_key="k-123",
        nested={"stripe_secret_key": "sk_live_1", "fine": "visible"},
    )
    _flush()
    wire = b"".join(transport.payloads).decode()
    for secret in ("hunter2", "abc.def", "k-123", "sk_live_1"):
        assert secret not in wire, f"{secret!r} went over the wire"
    assert "visible" in wire


@pytest.mark.parametrize("dsn", ["", "   "], ids=["empty", "blank"])
def test_empty_dsn_keeps_reporting_off(
    settings: Settings, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.sentry")
    assert not sentry.init_sentry(settings.model_copy(update={"sentry_dsn": SecretStr(dsn)}))
    assert "SENTRY_DSN is empty" in caplog.text


def test_malformed_dsn_is_logged_once_and_the_app_still_serves(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    bad = settings.model_copy(update={"sentry_dsn": SecretStr("not a dsn")})
    caplog.set_level(logging.INFO, logger="app.sentry")
    with TestClient(create_app(bad)) as client:
        assert client.get("/health").status_code == 200
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(problems) == 1, [r.getMessage() for r in problems]
    assert "SENTRY_DSN" in problems[0].getMessage()


def test_an_sdk_this_code_does_not_fit_keeps_reporting_off_and_says_so(
    sentry_settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuses(**options: object) -> None:
        raise TypeError("Unknown option 'profile_lifecycle'")

    monkeypatch.setattr(sentry_sdk, "init", refuses)
    caplog.set_level(logging.INFO, logger="app.sentry")
    with TestClient(create_app(sentry_settings)) as client:
        assert client.get("/health").status_code == 200
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(problems) == 1, problems
    assert "does not work with this service" in problems[0], problems[0]
    assert "profile_lifecycle" in problems[0] and "pyproject.toml" in problems[0], problems[0]


def test_a_ca_bundle_that_is_not_a_file_keeps_reporting_off(
    sentry_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = sentry_settings.model_copy(update={"sentry_ca_certs": "/nonexistent/ca.pem"})
    caplog.set_level(logging.INFO, logger="app.sentry")
    assert not sentry.init_sentry(settings)
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(problems) == 1 and "SENTRY_CA_CERTS" in problems[0], problems


def test_missing_sdk_keeps_reporting_off(
    sentry_settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sentry, "sentry_sdk", None)
    caplog.set_level(logging.INFO, logger="app.sentry")
    assert not sentry.init_sentry(sentry_settings)
    assert "sentry-sdk package is not installed" in caplog.text


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SENTRY_TRACES_SAMPLE_RATE", "1.5"),
        ("SENTRY_TRACES_SAMPLE_RATE", "-0.1"),
        ("SENTRY_PROFILES_SAMPLE_RATE", "often"),
        ("SENTRY_PROFILES_SAMPLE_RATE", "nan"),
    ],
)
def test_bad_rates_stop_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        load_settings()


def test_sentry_environment_defaults_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "staging")
    monkeypatch.setenv("SECRET_KEY", "s" * 40)
    monkeypatch.delenv("SENTRY_ENVIRONMENT")
    assert load_settings().sentry_environment == "staging"


def test_health_checks_are_never_traced(sentry_settings: Settings) -> None:
    sample = traces_sampler(1.0, sentry.UNTRACED_PATHS)
    assert sample({"asgi_scope": {"path": "/health"}}) == 0.0
    assert sample({"asgi_scope": {"path": "/api/v1/items"}}) == 1.0
    assert sample({"asgi_scope": {"path": "/x"}, "parent_sampled": False}) == 0.0


def test_events_name_the_worker_process(
    reporting_app: FastAPI, transport: CapturingTransport
) -> None:
    with TestClient(reporting_app, raise_server_exceptions=False) as client:
        client.get("/boom")
    _flush()
    (event,) = transport.events
    assert event["contexts"]["worker"]["pid"] > 0, event["contexts"]


def test_error_logs_are_events_and_lower_levels_breadcrumbs(
    sentry_settings: Settings, transport: CapturingTransport
) -> None:
    assert sentry.init_sentry(sentry_settings, transport=transport)
    log = logging.getLogger("app.billing")
    with sentry_sdk.isolation_scope():
        log.info("loaded invoice %s", 12)
        log.warning("retrying charge")
        logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET / HTTP/1.1" 200')
        log.error("charge failed for invoice %s", 12)
    _flush()
    (event,) = transport.events
    assert event["logentry"]["message"] == "charge failed for invoice %s", event.get("logentry")
    crumbs = [crumb["message"] for crumb in event["breadcrumbs"]["values"]]
    assert crumbs == ["loaded invoice 12", "retrying charge"], crumbs


@pytest.mark.parametrize(
    ("rate", "instrumented"), [(0.0, False), (0.5, True)], ids=["tracing-off", "tracing-on"]
)
def test_lifespan_instruments_the_loop_if_tracing_and_flushes(
    sentry_settings: Settings, transport: CapturingTransport, rate: float, instrumented: bool
) -> None:
    from sentry_sdk.integrations.asyncio import AsyncioIntegration

    settings = sentry_settings.model_copy(update={"sentry_traces_sample_rate": rate})
    app = create_app(settings)
    assert sentry.init_sentry(settings, transport=transport), "Sentry did not start"
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        enabled = sentry_sdk.get_client().get_integration(AsyncioIntegration) is not None
        assert enabled == instrumented, f"asyncio integration enabled={enabled} at rate {rate}"
        sentry.capture_message("queued just before shutdown")
        flushes_while_serving = transport.flushes
    assert transport.flushes > flushes_while_serving, "the shutdown did not flush the transport"
    assert [e["message"] for e in transport.events] == ["queued just before shutdown"]
