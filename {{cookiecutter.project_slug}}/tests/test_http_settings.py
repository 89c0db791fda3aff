"""What the app accepts over HTTP beyond its routes: CORS, trusted proxies and form posts."""

import pytest
from fastapi import FastAPI, Form, Request
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app

ORIGIN = "https://app.example.com"


def _app(settings: Settings, **changes: str) -> FastAPI:
    app = create_app(settings.model_copy(update=changes))

    @app.get("/client")
    async def client_address(request: Request) -> dict[str, str | None]:
        return {
            "host": request.client.host if request.client else None,
            "scheme": request.url.scheme,
        }

    @app.post("/signup")
    async def signup(name: str = Form()) -> dict[str, str]:
        return {"name": name}

    return app


def _preflight(client: TestClient, origin: str) -> dict[str, str]:
    answer = client.options(
        "/client", headers={"Origin": origin, "Access-Control-Request-Method": "GET"}
    )
    return dict(answer.headers)


def test_by_default_no_origin_may_call_from_a_browser(settings: Settings) -> None:
    with TestClient(_app(settings)) as client:
        headers = _preflight(client, ORIGIN)
        plain = client.get("/client", headers={"Origin": ORIGIN}).headers
    assert "access-control-allow-origin" not in headers, headers
    assert "access-control-allow-origin" not in plain, dict(plain)


def test_configured_origins_may_call_and_others_may_not(settings: Settings) -> None:
    app = _app(settings, cors_origins=f"{ORIGIN}, https://admin.example.com")
    with TestClient(app) as client:
        allowed = _preflight(client, ORIGIN)
        other = _preflight(client, "https://evil.example.net")
        answer = client.get("/client", headers={"Origin": ORIGIN})
    assert allowed.get("access-control-allow-origin") == ORIGIN, allowed
    assert other.get("access-control-allow-origin") != "https://evil.example.net", other
    assert answer.headers.get("access-control-allow-origin") == ORIGIN, dict(answer.headers)
    assert "x-request-id" in answer.headers.get("access-control-expose-headers", "").lower()


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [("", ("testclient", "http")), ("testclient", ("203.0.113.7", "https"))],
    ids=["not-configured", "trusted"],
)
def test_forwarded_headers_are_believed_only_from_trusted_proxies(
    settings: Settings, trusted: str, expected: tuple[str, str]
) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    with TestClient(_app(settings, trusted_proxies=trusted)) as client:
        seen = client.get("/client", headers=forwarded).json()
    assert (seen["host"], seen["scheme"]) == expected, f"TRUSTED_PROXIES={trusted!r}: {seen}"


def test_a_form_post_works(settings: Settings) -> None:
    with TestClient(_app(settings)) as client:
        answer = client.post("/signup", data={"name": "Ada"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"name": "Ada"}
