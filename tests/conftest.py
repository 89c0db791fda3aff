"""Fixtures shared by the template's tests.

Generated projects that are installed get one virtual environment each per run, created with uv,
whose package cache is shared by every environment (and by later runs on the same machine).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.support.bugsink import Bugsink, running_bugsink
from tests.support.probe import Probe, running_probe
from tests.support.template import (
    DEFAULT_YES,
    TEMPLATE_DIR,
    VARIANTS,
    Variant,
    baked_project,
    install_project,
)

PROBE_APP = Path(__file__).parent / "support" / "probe_app.py"
POSTGRES_ADMIN_URL = os.environ.get(
    "TEMPLATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def pytest_configure(config: pytest.Config) -> None:
    # pytest-cookies resolves its template relative to the working directory; pin it.
    config.option.template = str(TEMPLATE_DIR)


@dataclass(frozen=True)
class InstalledProject:
    """A generated project installed from its lock (`uv sync --locked`) in its own environment."""

    variant: Variant
    path: Path
    venv: Path

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(
        self, *command: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run a tool of the project's environment in the project's directory."""
        full_env = {**clean_environment(), **(env or {})}
        executable = self.bin(command[0])
        return subprocess.run(
            [executable, *command[1:]],
            cwd=self.path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @contextmanager
    def probe(
        self, workdir: Path, dsn: str, *, gunicorn_workers: int = 0, **settings: str
    ) -> Iterator[Probe]:
        """Serve the end-to-end probe app beside this project's app (tests/support/probe.py)."""
        environment = clean_environment()
        with running_probe(
            self.venv,
            self.path,
            environment,
            workdir,
            dsn,
            gunicorn_workers=gunicorn_workers,
            **settings,
        ) as running:
            yield running


def clean_environment() -> dict[str, str]:
    """The environment without the caller's virtualenv, Python and application settings."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "UV_CACHE_DIR", "CI", "TERM")
    return {key: os.environ[key] for key in keep if key in os.environ}


def install(project: Path, variant: Variant) -> InstalledProject:
    venv = project / ".venv"
    install_project(project, venv)
    return InstalledProject(variant=variant, path=project, venv=venv)


@pytest.fixture(scope="session")
def installs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Variant], InstalledProject]:
    """Bake and install each variant at most once per run, whichever tests ask for it."""
    done: dict[str, InstalledProject] = {}

    def get(variant: Variant) -> InstalledProject:
        if variant.id not in done:
            project = baked_project(tmp_path_factory.mktemp(variant.id), variant.answers)
            done[variant.id] = install(project, variant)
        return done[variant.id]

    return get


@pytest.fixture(scope="session", params=VARIANTS, ids=[variant.id for variant in VARIANTS])
def installed_project(
    request: pytest.FixtureRequest, installs: Callable[[Variant], InstalledProject]
) -> InstalledProject:
    variant: Variant = request.param
    return installs(variant)


@pytest.fixture(scope="session")
def sentry_project(installs: Callable[[Variant], InstalledProject]) -> InstalledProject:
    """The default `yes` project, with the end-to-end probe routes beside its app."""
    project = installs(DEFAULT_YES)
    shutil.copyfile(PROBE_APP, project.path / "e2e_probe_app.py")
    return project


@pytest.fixture(scope="session")
def bugsink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bugsink]:
    with running_bugsink(tmp_path_factory.mktemp("bugsink")) as server:
        yield server


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one generated project's test run; dropped afterwards."""
    name = f"template_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {error}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    return directory
