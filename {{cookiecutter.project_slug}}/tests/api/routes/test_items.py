from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

Headers = Callable[..., dict[str, str]]


def create(client: TestClient, headers: dict[str, str], title: str = "First") -> dict[str, object]:
    response = client.post("/api/v1/items", json={"title": title}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def test_create_then_read_back(client: TestClient, auth_headers: Headers) -> None:
    headers = auth_headers("alice", "tenant-a")
    created = client.post(
        "/api/v1/items", json={"title": "Invoice", "description": "March"}, headers=headers
    )
    assert created.status_code == 201, created.text
    item = created.json()
    assert (item["title"], item["description"]) == ("Invoice", "March")
    assert (item["tenant_id"], item["owner_id"]) == ("tenant-a", "alice")

    fetched = client.get(f"/api/v1/items/{item['id']}", headers=headers)
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == item


def test_list_is_paginated_and_ordered(client: TestClient, auth_headers: Headers) -> None:
    headers = auth_headers()
    ids = [create(client, headers, f"item {n}")["id"] for n in range(3)]
    page = client.get("/api/v1/items", params={"limit": 2, "offset": 1}, headers=headers)
    assert page.status_code == 200, page.text
    assert [row["id"] for row in page.json()] == ids[1:], page.json()


def test_partial_update_changes_only_given_fields(
    client: TestClient, auth_headers: Headers
) -> None:
    headers = auth_headers()
    item = client.post(
        "/api/v1/items", json={"title": "Old", "description": "kept"}, headers=headers
    ).json()
    response = client.patch(f"/api/v1/items/{item['id']}", json={"title": "New"}, headers=headers)
    assert response.status_code == 200, response.text
    assert (response.json()["title"], response.json()["description"]) == ("New", "kept")


def test_update_refuses_a_null_title(client: TestClient, auth_headers: Headers) -> None:
    headers = auth_headers()
    item = create(client, headers)
    response = client.patch(f"/api/v1/items/{item['id']}", json={"title": None}, headers=headers)
    assert response.status_code == 422, response.text


def test_delete_removes_the_item(client: TestClient, auth_headers: Headers) -> None:
    headers = auth_headers()
    item = create(client, headers)
    assert client.delete(f"/api/v1/items/{item['id']}", headers=headers).status_code == 204
    assert client.get(f"/api/v1/items/{item['id']}", headers=headers).status_code == 404


@pytest.mark.parametrize(
    ("method", "body"),
    [("GET", None), ("PATCH", {"title": "stolen"}), ("DELETE", None)],
    ids=["read", "update", "delete"],
)
def test_other_tenants_rows_are_not_found(
    client: TestClient, auth_headers: Headers, method: str, body: dict[str, str] | None
) -> None:
    item = create(client, auth_headers("alice", "tenant-a"))
    intruder = auth_headers("mallory", "tenant-b")
    response = client.request(method, f"/api/v1/items/{item['id']}", json=body, headers=intruder)
    assert response.status_code == 404, f"{method} across tenants answered {response.status_code}"
    still_there = client.get(f"/api/v1/items/{item['id']}", headers=auth_headers("alice"))
    assert still_there.json()["title"] == item["title"], "another tenant changed the row"


def test_listing_shows_only_the_callers_tenant(client: TestClient, auth_headers: Headers) -> None:
    create(client, auth_headers("alice", "tenant-a"), "mine")
    create(client, auth_headers("bob", "tenant-b"), "theirs")
    titles = [row["title"] for row in client.get("/api/v1/items", headers=auth_headers()).json()]
    assert titles == ["mine"], titles


def test_same_tenant_users_share_rows(client: TestClient, auth_headers: Headers) -> None:
    item = create(client, auth_headers("alice", "tenant-a"))
    response = client.get(f"/api/v1/items/{item['id']}", headers=auth_headers("bob", "tenant-a"))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/api/v1/items", "/api/v1/items/1"], ids=["list", "read"])
def test_routes_require_a_token(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"


def test_create_validates_the_body(client: TestClient, auth_headers: Headers) -> None:
    response = client.post("/api/v1/items", json={"title": ""}, headers=auth_headers())
    assert response.status_code == 422, response.text
