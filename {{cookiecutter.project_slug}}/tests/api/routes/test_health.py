from pathlib import Path

from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app


def test_health_answers_without_authentication(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}


def test_ready_answers_200_when_the_database_answers(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}


def test_ready_answers_503_when_the_database_does_not(settings: Settings, tmp_path: Path) -> None:
    unreachable = f"sqlite:///{tmp_path / 'missing-directory' / 'service.db'}"
    app = create_app(settings.model_copy(update={"database_url": unreachable}))
    with TestClient(app) as client:
        response = client.get("/ready")
        alive = client.get("/health")
    assert response.status_code == 503, response.text
    assert response.json() == {"status": "unavailable", "database": "unreachable"}
    assert alive.status_code == 200, "liveness must not depend on the database"
