"""The generated project's container set-up (Dockerfile, compose.yaml, .dockerignore).

Containers cannot run on the machines these tests run on (no Docker engine; podman installs but
cannot start one), so the image is never built here. What can be tested for real is: the exact
install commands of the Dockerfile's build stage and the exact migrate and start commands of the
image and of compose.yaml, run in a fresh environment by a non-root user, serving `/health` and
`/ready`; and, read from the files, that they use those same commands, the lock, a non-root user
and (with Sentry) the spool's volume.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.server import free_port, request
from tests.support.template import VARIANTS, Variant, baked_project

by_id = pytest.mark.parametrize("variant", VARIANTS, ids=[v.id for v in VARIANTS])
SECRET = "container-test-secret-key-that-is-long-enough"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments left out."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each stage (each FROM starts one)."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(dockerfile):
        if instruction[0] == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def environment(stage: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for word, rest in stage:
        if word == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                values[name] = value
    return values


def as_non_root() -> tuple[list[str], Callable[[Path], None]]:
    """A command prefix that runs as `nobody` when we are root, and a function that gives it a
    directory; nothing to do when we are not root already."""
    if os.geteuid() != 0:
        return [], lambda path: None
    nobody = pwd.getpwnam("nobody")

    def give(path: Path) -> None:
        for place in [path, *path.rglob("*")]:
            os.chown(place, nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)

    prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    return prefix, give


@pytest.fixture(scope="module")
def uv_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """uv as a program (the image copies the binary), in a place the non-root user may run."""
    found = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    place = tmp_path_factory.mktemp("uv-bin") / "uv"
    shutil.copy(found, place)
    place.parent.chmod(0o755)
    return place


@pytest.fixture
def project(tmp_path: Path, variant: Variant) -> Path:
    return baked_project(tmp_path / "bake", variant.answers)


def machine_environment() -> dict[str, str]:
    """This machine's settings (certificates, proxies, package index), not this run's Python."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT", "UV_PYTHON")
    return {key: value for key, value in os.environ.items() if key not in drop}


def python_for(prefix: list[str]) -> str:
    """A Python 3.11+ the (non-root) user can run: the image's `python:3.11-slim` stands for it."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (shutil.which("python3.11", path="/usr/local/bin:/usr/bin"), str(base)):
        if candidate is None:
            continue
        check = [*prefix, candidate, "-c", "import sys; assert sys.version_info >= (3, 11)"]
        if subprocess.run(check, capture_output=True, check=False).returncode == 0:
            return candidate
    raise AssertionError("no Python 3.11+ that a non-root user may run")


@pytest.fixture
def image() -> Iterator[Path]:
    """Where the "image" is installed: under /tmp itself, so that the non-root user may walk
    every parent directory (pytest's own are private to its user)."""
    place = Path(tempfile.mkdtemp(prefix="container-test-", dir="/tmp"))
    place.chmod(0o755)
    yield place
    shutil.rmtree(place, ignore_errors=True)


@by_id
def test_the_dockerfiles_commands_install_migrate_and_serve_as_a_non_root_user(
    project: Path, variant: Variant, tmp_path: Path, uv_binary: Path, image: Path
) -> None:
    build, final = stages(project / "Dockerfile")
    prefix, give = as_non_root()
    source, venv, service = image / "src", image / "opt-venv", image / "srv"
    # The build stage: its COPYs, then its `uv sync` commands, as they are.
    source.mkdir(parents=True)
    for word, rest in build:
        if word == "COPY" and not rest.startswith("--from"):
            *names, _ = rest.split()
            for name in names:
                target = source / name
                if (project / name).is_dir():
                    shutil.copytree(project / name, target)
                else:
                    shutil.copy(project / name, target)
    service.mkdir()
    shutil.copy(project / "alembic.ini", service)
    shutil.copytree(project / "alembic", service / "alembic")
    cache = image / "uv-cache"
    cache.mkdir()
    give(image)
    build_env = {
        **machine_environment(),
        "PATH": f"{uv_binary.parent}:/usr/bin:/bin",
        "HOME": str(image),
        "UV_CACHE_DIR": str(cache),
        **environment(build),
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON": python_for(prefix),
    }
    runs = [rest for word, rest in build if word == "RUN"]
    assert runs and all(run.startswith("uv sync --locked") for run in runs), runs
    for run in runs:
        succeeds([*prefix, *shlex.split(run)], source, build_env)
    assert not (venv / "bin" / "pytest").exists(), "the image's environment holds dev tools"

    # The final stage's environment, the migrate command of compose.yaml, then the CMD.
    data = image / "data"
    data.mkdir()
    spool = image / "spool"
    spool.mkdir(mode=0o700)
    give(image)
    run_env = {
        **machine_environment(),
        **environment(final),
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(image),
        "SECRET_KEY": SECRET,
        "DATABASE_URL": f"sqlite:///{data / 'service.db'}",
    }
    if "SENTRY_SPOOL_DIR" in run_env:
        run_env["SENTRY_SPOOL_DIR"] = str(spool)
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    migrate = compose["services"]["migrate"]["command"]
    succeeds([*prefix, *migrate], service, run_env)
    (command,) = [yaml.safe_load(rest) for word, rest in final if word == "CMD"]
    port = free_port()
    command = [f"127.0.0.1:{port}" if part == "0.0.0.0:8000" else part for part in command]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [*prefix, *command], cwd=service, env=run_env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        for path in ("/health", "/ready"):
            answer = _wait_for(f"http://127.0.0.1:{port}{path}", server, tmp_path / "server.log")
            assert answer == 200, f"{path} answered {answer}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def succeeds(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stderr[-3000:]}"


def _wait_for(url: str, server: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            return request(url, timeout=2).status
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"no answer from {url}:\n{log.read_text()[-3000:]}")


@by_id
def test_the_container_files_use_the_lock_a_non_root_user_and_separate_migrations(
    project: Path, variant: Variant
) -> None:
    build, final = stages(project / "Dockerfile")
    copied = " ".join(rest for word, rest in build if word == "COPY")
    assert "uv.lock" in copied, "the image is not built from the lock"
    runs = [rest for word, rest in build if word == "RUN"]
    assert all("--locked" in run and "--extra" not in run for run in runs), runs
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1] not in ("root", "0"), f"the image runs as {users}"
    (healthcheck,) = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert "/health" in healthcheck, healthcheck
    (cmd,) = [yaml.safe_load(rest) for word, rest in final if word == "CMD"]
    assert cmd[0] == "gunicorn" and "alembic" not in cmd, cmd
    assert int(cmd[cmd.index("-w") + 1]) > 1, f"one worker only: {cmd}"
    ignored = (project / ".dockerignore").read_text().split()
    assert {".venv", ".env", ".git", "tests"} <= set(ignored), ignored

    compose = yaml.safe_load((project / "compose.yaml").read_text())
    services = compose["services"]
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"], services["migrate"]
    waits_for = services["service"]["depends_on"]["migrate"]["condition"]
    assert waits_for == "service_completed_successfully", waits_for
    assert "SECRET_KEY" in services["service"]["environment"], services["service"]
    spool = environment(final).get("SENTRY_SPOOL_DIR")
    if variant.sentry:
        assert spool, "the image sets no SENTRY_SPOOL_DIR"
        mounts = services["service"]["volumes"]
        named = [m.split(":")[0] for m in mounts if m.split(":")[1] == spool]
        assert named and named[0] in compose["volumes"], f"no named volume on {spool}: {mounts}"
        dsn = services["service"]["environment"]["SENTRY_DSN"]
        assert dsn.startswith("${SENTRY_DSN"), f"the DSN is not taken from the environment: {dsn}"
    else:
        assert spool is None and "sentry" not in (project / "compose.yaml").read_text().lower()
