"""Each variant, installed in its own fresh environment, passes its own checks and runs for real."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.conftest import InstalledProject, clean_environment
from tests.support.server import uvicorn_server

pytestmark = pytest.mark.slow


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def test_ruff_check_passes(installed_project: InstalledProject) -> None:
    result = installed_project.run("ruff", "check", ".")
    assert result.returncode == 0, output(result)


def test_ruff_format_is_clean(installed_project: InstalledProject) -> None:
    result = installed_project.run("ruff", "format", "--check", ".")
    assert result.returncode == 0, output(result)


def test_mypy_strict_passes(installed_project: InstalledProject) -> None:
    result = installed_project.run("mypy")
    assert result.returncode == 0, output(result)
    assert "Success" in result.stdout, output(result)


def test_own_tests_pass_on_sqlite(installed_project: InstalledProject) -> None:
    result = installed_project.run("pytest", "-q", "-p", "no:cacheprovider")
    assert result.returncode == 0, output(result)
    assert " passed" in result.stdout and "Required test coverage" in result.stdout, output(result)


def test_own_tests_pass_on_postgresql(
    installed_project: InstalledProject, postgres_database: str
) -> None:
    result = installed_project.run(
        "pytest", "-q", "-p", "no:cacheprovider", env={"TEST_DATABASE_URL": postgres_database}
    )
    assert result.returncode == 0, output(result)
    plain_url = postgres_database.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain_url) as connection:
        migrated = connection.execute("SELECT to_regclass('alembic_version')").fetchone()
    assert migrated and migrated[0], "the tests did not run their migrations on PostgreSQL"


def test_sentry_sdk_is_installed_only_with_sentry(installed_project: InstalledProject) -> None:
    result = installed_project.run("python", "-c", "import sentry_sdk")
    installed = result.returncode == 0
    assert installed == installed_project.variant.sentry, (
        f"sentry_sdk importable={installed} for {installed_project.variant.id}"
    )


def mint_token(project: InstalledProject, secret: str) -> str:
    code = (
        "from app.core.security import TokenClaims, create_access_token\n"
        f"print(create_access_token(TokenClaims('user-1', 'tenant-a'), {secret!r}))"
    )
    result = project.run("python", "-c", code)
    assert result.returncode == 0, output(result)
    return result.stdout.strip()


def test_migrates_and_serves_under_uvicorn(
    installed_project: InstalledProject, tmp_path: Path
) -> None:
    secret = "a-long-enough-secret-for-the-end-to-end-test-0123456789"
    env = {
        **clean_environment(),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'service.db'}",
        "SECRET_KEY": secret,
        "ENVIRONMENT": "production",
    }
    migrated = installed_project.run("alembic", "upgrade", "head", env=env)
    assert migrated.returncode == 0, output(migrated)
    token = {"Authorization": f"Bearer {mint_token(installed_project, secret)}"}
    with uvicorn_server(
        installed_project.venv, installed_project.path, env, tmp_path / "log"
    ) as server:
        assert server.get("/health").json() == {"status": "ok"}
        assert server.get("/api/v1/items").status == 401
        created = server.get("/api/v1/items", method="POST", body={"title": "real"}, headers=token)
        assert created.status == 201, created.body
        listed = server.get("/api/v1/items", headers=token)
        assert [row["title"] for row in listed.json()] == ["real"], listed.body  # type: ignore[union-attr]
    log = server.log()
    assert '"level": "INFO"' in log, f"production logs must be JSON lines:\n{log}"


def test_bad_setting_stops_start_up_naming_the_variable(
    installed_project: InstalledProject, tmp_path: Path
) -> None:
    variable, value = (
        ("SENTRY_TRACES_SAMPLE_RATE", "1.5")
        if installed_project.variant.sentry
        else ("LOG_LEVEL", "LOUD")
    )
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", variable: value}
    result = installed_project.run("uvicorn", "app.main:app", "--port", "0", env=env, timeout=60)
    assert result.returncode != 0, output(result)
    assert variable in result.stderr, output(result)
