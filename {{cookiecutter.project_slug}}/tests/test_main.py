from fastapi.testclient import TestClient

from app import __version__


def test_openapi_describes_the_service(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["info"]["version"] == __version__, schema["info"]
    assert "/api/v1/items" in schema["paths"], sorted(schema["paths"])


def test_module_level_app_serves_health() -> None:
    from app.main import app

    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
