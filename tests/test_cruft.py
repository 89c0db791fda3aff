"""Generated projects under cruft: create, check, update, and turning Sentry on and off later.

Every test works on a local git repository of the template's current working tree (see
tests/support/cruft.py: projects record the public URL, git is sent to the local copy, no network).
A project's "own work" is a set of edits a team typically makes in its first weeks, kept away from
the lines the template owns; the updated project must then equal a fresh generation with the same
edits made to it, byte for byte.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import InstalledProject, install
from tests.support.cruft import (
    TEMPLATE_URL,
    Workspace,
    assert_same_tree,
    edit,
    replace_once,
    tree,
    unresolved,
)
from tests.support.template import (
    COOKIECUTTER_JSON,
    CUSTOM_YES,
    DEFAULT_NO,
    DEFAULT_YES,
    SENTRY_ONLY_FILES,
    TEMPLATE_DIR,
    VARIANTS,
    Variant,
    baked_project,
)

by_variant = pytest.mark.parametrize("variant", VARIANTS, ids=[v.id for v in VARIANTS])
no_and_yes = pytest.mark.parametrize("variant", [DEFAULT_NO, DEFAULT_YES], ids=["no", "yes"])
CRUFT_PIN = re.search(
    r"^cruft==(\S+)$", (TEMPLATE_DIR / "requirements/test.txt").read_text(), re.MULTILINE
)


@pytest.fixture(scope="session")
def template_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One git repository of the template's working tree, cloned by each test's workspace."""
    return Workspace.create(tmp_path_factory.mktemp("template-repository")).template


@pytest.fixture
def workspace(tmp_path: Path, template_repository: Path) -> Workspace:
    return Workspace.create(tmp_path / "workspace", template_source=template_repository)


# --- a team's own work ----------------------------------------------------------------------------

PRICING_ROUTE = '''"""What the pricing engine quotes in; an example of a team's own route."""

from typing import Annotated

from fastapi import APIRouter, Depends

from app.api.deps import get_app_settings
from app.core.config import Settings

router = APIRouter(prefix="/pricing", tags=["pricing"])


@router.get("/currency")
def currency(settings: Annotated[Settings, Depends(get_app_settings)]) -> dict[str, str]:
    """The currency of every price this service returns."""
    return {"currency": settings.pricing_currency}
'''
PRICING_TEST = """from fastapi.testclient import TestClient


def test_prices_are_quoted_in_the_configured_currency(client: TestClient) -> None:
    response = client.get("/api/v1/pricing/currency")
    assert response.status_code == 200, response.text
    assert response.json() == {"currency": "EUR"}
"""


LAST_TEMPLATE_SETTING = (
    '    access_token_algorithm: Literal["HS256"] = "HS256"  # noqa: S105 - a name, not a secret\n'
)


def add_own_work(project: Path) -> None:
    """A route with its test, a setting of the team's own, and a README section of theirs."""
    (project / "app/api/routes/pricing.py").write_text(PRICING_ROUTE)
    (project / "tests/api/routes/test_pricing.py").write_text(PRICING_TEST)
    edit(
        project / "app/api/router.py",
        replace_once(
            "from app.api.routes import items\n", "from app.api.routes import items, pricing\n"
        ),
    )
    edit(
        project / "app/api/router.py",
        lambda text: text + "api_router.include_router(pricing.router)\n",
    )
    edit(
        project / "app/core/config.py",
        replace_once(
            LAST_TEMPLATE_SETTING,
            LAST_TEMPLATE_SETTING
            + '\n    pricing_currency: str = Field(default="EUR", min_length=3, max_length=3)\n',
        ),
    )
    edit(
        project / ".env.example",
        lambda text: (
            text + "\n# ISO 4217 code of the currency prices are quoted in.\nPRICING_CURRENCY=EUR\n"
        ),
    )
    edit(
        project / "README.md",
        lambda text: (
            text
            + "\n## Pricing\n\n`GET /api/v1/pricing/currency` names the currency of all prices.\n"
        ),
    )


def generated_with_own_work(workspace: Workspace, answers: dict[str, str], name: str) -> Path:
    project = workspace.create_project(answers, name)
    add_own_work(project)
    workspace.commit_project(project, "Our own work")
    return project


# --- a newer template -----------------------------------------------------------------------------


NEW_SENTRY_FILE = "app/sentry_later.py"


def change_the_template(workspace: Workspace) -> str:
    """A later template commit: edits near and far from the team's, a new file, a removed file.

    It also adds a Sentry-only file to the manifest: a project updated with `include_sentry=no`
    must not get it, which holds only if the update uses the newer template's manifest.
    """
    project = workspace.template / "{{cookiecutter.project_slug}}"
    edit(
        project / "README.md",
        replace_once("Python 3.11 or newer:\n", "Python 3.11 or newer (3.12 and 3.13 work too):\n"),
    )
    edit(
        project / "app/core/config.py",
        replace_once(
            "Read the settings now, turning validation errors into one readable",
            "Read the settings now; a validation error becomes one readable",
        ),
    )
    (project / "CONTRIBUTING.md").write_text(
        "# Contributing to {{ cookiecutter.project_name }}\n\n"
        "Run `pytest`, `ruff check .` and `mypy` before you push.\n"
    )
    (project / ".pre-commit-config.yaml").unlink()
    edit(
        project / "app/sentry_integration/privacy.py",
        lambda text: text + "\n# A change in a Sentry-only file.\n",
    )
    (project / NEW_SENTRY_FILE).write_text(
        '"""A Sentry-only module that a later template adds."""\n'
    )
    edit(
        workspace.template / "hooks/post_gen_project.py",
        replace_once(
            '        "app/sentry_integration",\n',
            f'        "app/sentry_integration",\n        "{NEW_SENTRY_FILE}",\n',
        ),
    )
    return workspace.commit_template("A newer template")


# --- create ---------------------------------------------------------------------------------------


@by_variant
def test_create_records_the_answers_and_nothing_of_the_machine(
    workspace: Workspace, variant: Variant
) -> None:
    project = workspace.create_project(variant.answers, variant.id)
    record = json.loads((project / ".cruft.json").read_text())
    commit = workspace.git("rev-parse", "HEAD", cwd=workspace.template)

    assert record["template"] == TEMPLATE_URL and record["commit"] == commit, record
    answers = record["context"]["cookiecutter"]
    private = {key: value for key, value in answers.items() if key.startswith("_")}
    # cookiecutter.json's `_extensions` is recorded too: a constant (the slug guard of
    # local_extensions.py), unlike the manifest of optional files, which is kept out of it.
    expected = {
        "_template": TEMPLATE_URL,
        "_commit": commit,
        "_extensions": COOKIECUTTER_JSON["_extensions"],
    }
    assert private == expected, f"only these private keys may be recorded, found {sorted(private)}"
    for key, value in variant.answers.items():
        assert answers[key] == value, f"{key}: recorded {answers[key]!r}, answered {value!r}"
    machine = [str(workspace.root), str(Path.home()), "/tmp", "/home/", "/root"]
    text = (project / ".cruft.json").read_text()
    assert not [where for where in machine if where in text], (
        f".cruft.json names a local path:\n{text}"
    )


@by_variant
def test_create_makes_the_same_project_as_cookiecutter(
    workspace: Workspace, variant: Variant, output_dir: Path
) -> None:
    """cruft runs the same hooks; apart from its `.cruft.json` the trees are identical."""
    created = workspace.create_project(variant.answers, variant.id)
    (created / ".cruft.json").unlink()
    baked = baked_project(output_dir, variant.answers)
    assert_same_tree(created, baked, "the project cruft created")


# --- check and update -----------------------------------------------------------------------------


def test_check_says_whether_the_project_is_behind(workspace: Workspace) -> None:
    project = workspace.create_project(DEFAULT_NO.answers, "service")

    current = workspace.cruft("check", cwd=project)
    assert current.returncode == 0 and "up to date" in current.stdout, (
        current.stdout + current.stderr
    )
    nothing = workspace.cruft("update", "--skip-apply-ask", cwd=project)
    assert "Nothing to do" in nothing.stdout, nothing.stdout + nothing.stderr
    assert workspace.git("status", "--porcelain", cwd=project) == "", (
        "an up-to-date update changed files"
    )

    change_the_template(workspace)
    behind = workspace.cruft("check", cwd=project)
    assert behind.returncode == 1 and "out of date" in behind.stdout, behind.stdout + behind.stderr

    workspace.update(project)
    workspace.commit_project(project, "Template update")
    after = workspace.cruft("check", cwd=project)
    assert after.returncode == 0, f"still behind after cruft update:\n{after.stdout}{after.stderr}"


@no_and_yes
def test_update_applies_the_newer_template_around_the_teams_work(
    workspace: Workspace, variant: Variant
) -> None:
    project = generated_with_own_work(workspace, variant.answers, "service")
    change_the_template(workspace)

    workspace.update(project)

    expected = generated_with_own_work(workspace, variant.answers, "expected")
    assert_same_tree(project, expected, "the updated project")
    assert (project / "CONTRIBUTING.md").read_text().startswith("# Contributing to My Service\n")
    assert not (project / ".pre-commit-config.yaml").exists(), "a file the template removed is left"
    assert (project / NEW_SENTRY_FILE).exists() == variant.sentry, (
        f"{NEW_SENTRY_FILE}, new in the manifest, must exist only with include_sentry=yes"
    )


def test_an_update_that_meets_the_teams_change_leaves_conflicts_to_resolve(
    workspace: Workspace,
) -> None:
    """The documented behaviour when both sides changed the same line: marked, not lost."""
    project = workspace.create_project(DEFAULT_NO.answers, "service")
    readme = replace_once("Python 3.11 or newer:\n", "Python 3.12 or newer, as we deploy on it:\n")
    edit(project / "README.md", readme)
    workspace.commit_project(project, "Our own README line")
    change_the_template(workspace)

    result = workspace.cruft("update", "--skip-apply-ask", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr
    assert unresolved(project) == ["README.md"], unresolved(project)
    text = (project / "README.md").read_text()
    assert "Python 3.12 or newer, as we deploy on it:" in text and "3.13 work too" in text, text
    assert (project / "CONTRIBUTING.md").exists(), "the rest of the update must still be applied"


def test_link_adopts_a_project_made_with_plain_cookiecutter(workspace: Workspace) -> None:
    answers = CUSTOM_YES.answers
    generated_from = workspace.git("rev-parse", "HEAD", cwd=workspace.template)
    command = [sys.executable, "-m", "cookiecutter", "--no-input", str(workspace.template)]
    command += ["--output-dir", str(workspace.projects), *(f"{k}={v}" for k, v in answers.items())]
    baked = workspace.run(command, workspace.projects)
    assert baked.returncode == 0, baked.stderr
    project = workspace.projects / answers["project_slug"]
    workspace.git("init", "--quiet", cwd=project)
    workspace.commit_project(project, "Generated with cookiecutter")
    change_the_template(workspace)

    link = workspace.cruft(
        "link",
        TEMPLATE_URL,
        "--no-input",
        "--checkout",
        generated_from,
        "--extra-context",
        json.dumps(answers),
        cwd=project,
    )
    assert link.returncode == 0, link.stdout + link.stderr
    workspace.commit_project(project, "Link to the template")
    behind = workspace.cruft("check", cwd=project)
    assert behind.returncode == 1, f"a linked project must know it is behind:\n{behind.stdout}"
    workspace.update(project)

    expected = workspace.create_project(answers, "expected")
    assert_same_tree(project, expected, "the linked and updated project")


# --- switching Sentry on and off ------------------------------------------------------------------


@pytest.fixture
def installed_after(postgres_database: str) -> Callable[[Path, Variant], InstalledProject]:
    """Install a switched project again, as its README says, and run its tests on both databases."""

    def run_tests(project: Path, variant: Variant) -> InstalledProject:
        installed = install(project, variant)
        for database, env in (
            ("SQLite", {}),
            ("PostgreSQL", {"TEST_DATABASE_URL": postgres_database}),
        ):
            result = installed.run("pytest", "-q", "-p", "no:cacheprovider", env=env)
            assert result.returncode == 0, f"tests fail on {database}:\n{result.stdout[-4000:]}"
        return installed

    return run_tests


def switched(workspace: Workspace, before: Variant, after: Variant) -> Path:
    """A project in use (own work, installed, migrated), then switched by `cruft update`.

    The result must be exactly what generating with the new answer, plus the same work, makes.
    """
    project = generated_with_own_work(workspace, before.answers, "service")
    migrated = install(project, before).run("alembic", "upgrade", "head")
    assert migrated.returncode == 0, migrated.stderr
    workspace.update(project, {"include_sentry": after.answers["include_sentry"]})
    expected = generated_with_own_work(workspace, after.answers, "expected")
    assert_same_tree(project, expected, "the switched project")
    return project


@pytest.mark.slow
def test_turning_sentry_on_later_equals_generating_with_it(
    workspace: Workspace, installed_after: Callable[[Path, Variant], InstalledProject]
) -> None:
    project = switched(workspace, DEFAULT_NO, DEFAULT_YES)

    installed = installed_after(project, DEFAULT_YES)
    imported = installed.run("python", "-c", "import sentry_sdk, app.sentry")
    assert imported.returncode == 0, imported.stderr


@pytest.mark.slow
def test_turning_sentry_off_removes_every_file_and_mention(
    workspace: Workspace, installed_after: Callable[[Path, Variant], InstalledProject]
) -> None:
    project = switched(workspace, DEFAULT_YES, DEFAULT_NO)

    left = [name for name in SENTRY_ONLY_FILES if (project / name).exists()]
    assert not left, f"Sentry files left after switching it off: {left}"
    mentions = [name for name, content in tree(project).items() if b"sentry" in content.lower()]
    assert mentions == [".cruft.json"], f"files that still mention Sentry: {mentions}"
    record = json.loads((project / ".cruft.json").read_text())
    answers = record["context"]["cookiecutter"]
    # The template's own address is the user's choice (and may well say "sentry"); nothing else may.
    del record["template"], answers["_template"]
    named = [line.strip() for line in json.dumps(record, indent=1).splitlines() if "sentry" in line]
    assert named == ['"include_sentry": "no",'], (
        f"the answers name Sentry beyond the option: {named}"
    )
    installed_after(project, DEFAULT_NO)


def test_a_bad_answer_in_an_update_stops_it_and_leaves_the_project_alone(
    workspace: Workspace,
) -> None:
    project = workspace.create_project(DEFAULT_NO.answers, "service")
    before = tree(project)

    choice = workspace.cruft(
        "update", "-y", "--variables-to-update", '{"include_sentry": "maybe"}', cwd=project
    )
    slug = workspace.cruft(
        "update", "-y", "--variables-to-update", '{"project_slug": "Bad Slug"}', cwd=project
    )

    # cruft prints the error inside a traceback box wrapped at 80 columns: compare words.
    choice_words, slug_words = " ".join(choice.stderr.split()), " ".join(slug.stderr.split())
    assert choice.returncode != 0, choice.stdout + choice.stderr
    assert "maybe provided for choice variable include_sentry" in choice_words, choice_words
    assert slug.returncode != 0, slug.stdout + slug.stderr
    assert "project_slug 'Bad Slug' is not allowed" in slug_words, slug_words
    assert tree(project) == before, "a refused update changed the project"
    assert workspace.git("status", "--porcelain", cwd=project) == ""


# --- the generated CI -----------------------------------------------------------------------------


def template_updates_step(project: Path) -> dict[str, str]:
    workflow = yaml.safe_load((project / ".github/workflows/ci.yml").read_text())
    (step,) = [s for s in workflow["jobs"]["template-updates"]["steps"] if "run" in s]
    return step


def run_step(workspace: Workspace, project: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run a workflow step's script the way GitHub's bash shell does, with pipx standing in.

    The stand-in accepts only the pinned cruft of the step and then runs that same cruft (the one
    these tests install), so the step's own command line and its exit handling are what is tested.
    """
    assert CRUFT_PIN, "requirements/test.txt must pin cruft"
    bin_dir = workspace.root / "bin"
    bin_dir.mkdir(exist_ok=True)
    pipx = bin_dir / "pipx"
    pipx.write_text(
        "#!/bin/sh\n"
        f'[ "$1 $2 $3 $4" = "run --spec cruft=={CRUFT_PIN.group(1)} cruft" ] '
        '|| { echo "unexpected pipx call: $*" >&2; exit 97; }\n'
        f'shift 4\nexec "{sys.executable}" -m cruft "$@"\n'
    )
    pipx.chmod(0o755)
    path = f"{bin_dir}:{workspace.environment()['PATH']}"
    script_run = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script]
    return workspace.run(script_run, project, PATH=path)


def test_ci_warns_without_failing_when_the_project_is_behind(workspace: Workspace) -> None:
    project = workspace.create_project(DEFAULT_NO.answers, "service")
    step = template_updates_step(project)
    assert step["if"] == "hashFiles('.cruft.json') != ''", step

    current = run_step(workspace, project, step["run"])
    assert current.returncode == 0 and "::warning" not in current.stdout, (
        current.stdout + current.stderr
    )
    assert "up to date" in current.stdout, current.stdout

    change_the_template(workspace)
    behind = run_step(workspace, project, step["run"])
    assert behind.returncode == 0, (
        f"the job must not fail the build:\n{behind.stdout}{behind.stderr}"
    )
    assert "::warning title=Template updates::" in behind.stdout, behind.stdout + behind.stderr
    assert "unexpected pipx call" not in behind.stderr, behind.stderr
