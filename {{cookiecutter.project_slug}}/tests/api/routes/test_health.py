from fastapi.testclient import TestClient


def test_health_answers_without_authentication(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}
