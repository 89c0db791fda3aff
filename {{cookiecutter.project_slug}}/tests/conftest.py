"""Shared fixtures: a migrated test database, settings, the app and an HTTP client.

The database is a fresh SQLite file unless TEST_DATABASE_URL names another one (CI sets it to a
PostgreSQL database). The developer's `.env` and shell never leak into the tests: every setting is
pinned to its default below, before the app is imported.
"""

import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.config import Config
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import delete

from alembic import command
from app.core.config import Settings
from app.core.security import DEFAULT_TOKEN_LIFETIME, TokenClaims, create_access_token
from app.db.models import Item
from app.db.session import build_engine

for _name, _field in Settings.model_fields.items():
    _default = _field.default
    os.environ[_name.upper()] = str(
        _default.get_secret_value() if isinstance(_default, SecretStr) else _default
    )
os.environ["ENVIRONMENT"] = "test"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEST_SECRET_KEY = "test-secret-key-that-is-long-enough-for-hs256"
TokenFactory = Callable[..., str]


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        return configured
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"


def alembic_config(database_url: str) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


@pytest.fixture(scope="session")
def migrated_database(database_url: str) -> Iterator[str]:
    """The test database at the newest migration for the whole run, emptied again at the end."""
    config = alembic_config(database_url)
    command.upgrade(config, "head")
    yield database_url
    command.downgrade(config, "base")


@pytest.fixture
def settings(migrated_database: str) -> Settings:
    return Settings(
        environment="test", database_url=migrated_database, secret_key=SecretStr(TEST_SECRET_KEY)
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    from app.main import create_app

    return create_app(settings)


@pytest.fixture
def client(app: FastAPI, migrated_database: str) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    engine = build_engine(migrated_database)
    with engine.begin() as connection:
        connection.execute(delete(Item))
    engine.dispose()


@pytest.fixture
def make_token() -> TokenFactory:
    def make(
        user_id: str = "user-1",
        tenant_id: str = "tenant-a",
        *,
        email: str | None = None,
        secret_key: str = TEST_SECRET_KEY,
        expires_in: timedelta = DEFAULT_TOKEN_LIFETIME,
    ) -> str:
        claims = TokenClaims(user_id=user_id, tenant_id=tenant_id, email=email)
        return create_access_token(claims, secret_key, expires_in=expires_in)

    return make


@pytest.fixture
def auth_headers(make_token: TokenFactory) -> Callable[..., dict[str, str]]:
    def headers(user_id: str = "user-1", tenant_id: str = "tenant-a") -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(user_id, tenant_id)}"}

    return headers
