from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TokenFactory


def test_valid_token_resolves_the_user(client: TestClient, make_token: TokenFactory) -> None:
    token = make_token("alice", "tenant-a", email="alice@example.com")
    response = client.get("/api/v1/items", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer not-a-jwt",
        "Basic YWxpY2U6c2VjcmV0",
        "Bearer ",
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.",
    ],
    ids=["malformed", "wrong-scheme", "empty", "unsigned"],
)
def test_bad_authorization_is_401(client: TestClient, authorization: str) -> None:
    response = client.get("/api/v1/items", headers={"Authorization": authorization})
    assert response.status_code == 401, response.text


def test_expired_token_is_401(client: TestClient, make_token: TokenFactory) -> None:
    token = make_token(expires_in=timedelta(seconds=-1))
    response = client.get("/api/v1/items", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text


def test_token_signed_with_another_key_is_401(client: TestClient, make_token: TokenFactory) -> None:
    token = make_token(secret_key="another-secret-key-that-is-long-enough-too")
    response = client.get("/api/v1/items", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
