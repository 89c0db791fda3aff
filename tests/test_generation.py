"""What generation produces for each variant: files, content, and no template debris."""

from __future__ import annotations

import py_compile
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.support.template import (
    COOKIECUTTER_JSON,
    CUSTOM_YES,
    OPTIONAL_FILES,
    SENTRY_ONLY_FILES,
    TEMPLATE_DIR,
    VARIANTS,
    Variant,
)

TEMPLATE_SYNTAX = re.compile(r"\{\{|\{%|%\}|\{#")
ACTIONS_EXPRESSION = re.compile(r"\$\{\{[^}]*\}\}")
by_id = pytest.mark.parametrize("variant", VARIANTS, ids=[v.id for v in VARIANTS])


@pytest.fixture
def project(cookies, variant: Variant) -> Path:  # type: ignore[no-untyped-def]
    result = cookies.bake(extra_context=variant.answers, template=str(TEMPLATE_DIR))
    assert result.exit_code == 0, f"generation failed: {result.exception!r}"
    return result.project_path


def text_files(root: Path) -> dict[Path, str]:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            files[path.relative_to(root)] = path.read_text(encoding="utf-8")
    return files


@by_id
def test_manifest_files_follow_the_answer(project: Path, variant: Variant) -> None:
    for name in SENTRY_ONLY_FILES:
        exists = (project / name).exists()
        assert exists == variant.sentry, (
            f"{name} {'missing' if variant.sentry else 'present'} with include_sentry="
            f"{variant.answers['include_sentry']}"
        )


def test_every_manifest_entry_exists_in_the_template() -> None:
    template_root = TEMPLATE_DIR / "{{cookiecutter.project_slug}}"
    for variable, names in OPTIONAL_FILES.items():
        assert variable in COOKIECUTTER_JSON, f"manifest names unknown variable {variable}"
        for name in names:
            assert (template_root / name).exists(), f"manifest lists {name}, not in the template"


@by_id
def test_no_template_debris(project: Path, variant: Variant) -> None:
    for relative, text in text_files(project).items():
        for number, line in enumerate(text.splitlines(), start=1):
            if relative.parts[0] == ".github":
                line = ACTIONS_EXPRESSION.sub("", line)
            assert not TEMPLATE_SYNTAX.search(line), f"{relative}:{number}: {line}"


@by_id
def test_text_files_are_tidy(project: Path, variant: Variant) -> None:
    """No blank runs or trailing blanks left by removed conditional blocks."""
    for relative, text in text_files(project).items():
        if text:
            assert text.endswith("\n") and not text.endswith("\n\n"), f"{relative}: bad ending"
        limit = "\n\n\n\n" if relative.suffix in {".py", ".mako"} else "\n\n\n"
        assert limit not in text, f"{relative}: a run of blank lines"
        trailing = [n for n, line in enumerate(text.splitlines(), 1) if line != line.rstrip()]
        assert not trailing, f"{relative}: trailing whitespace on lines {trailing}"


def test_no_variant_never_mentions_sentry(cookies) -> None:  # type: ignore[no-untyped-def]
    result = cookies.bake(extra_context={"include_sentry": "no"}, template=str(TEMPLATE_DIR))
    assert result.exit_code == 0, result.exception
    for path in result.project_path.rglob("*"):
        relative = path.relative_to(result.project_path)
        assert "sentry" not in str(relative).lower(), f"file name {relative} mentions Sentry"
        if path.is_file():
            assert "sentry" not in path.read_text().lower(), f"{relative} mentions Sentry"


@by_id
def test_python_files_compile(project: Path, variant: Variant) -> None:
    for path in project.rglob("*.py"):
        py_compile.compile(str(path), doraise=True, cfile=str(path) + "c.tmp")
        Path(str(path) + "c.tmp").unlink()


@by_id
def test_dependencies_follow_the_answer(project: Path, variant: Variant) -> None:
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    has_sdk = any(dep.startswith("sentry-sdk") for dep in meta["dependencies"])
    assert has_sdk == variant.sentry, meta["dependencies"]
    env_example = (project / ".env.example").read_text()
    assert ("SENTRY_DSN=" in env_example) == variant.sentry, env_example


def test_answers_reach_the_project(cookies) -> None:  # type: ignore[no-untyped-def]
    result = cookies.bake(extra_context=CUSTOM_YES.answers, template=str(TEMPLATE_DIR))
    assert result.exit_code == 0, result.exception
    project = result.project_path
    answers = CUSTOM_YES.answers
    assert project.name == answers["project_slug"], project.name
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    assert meta["name"] == answers["project_slug"], meta["name"]
    assert meta["description"] == answers["description"], meta["description"]
    assert meta["authors"] == [{"name": answers["author_name"]}], "empty email must be left out"
    readme = (project / "README.md").read_text()
    assert readme.startswith(f"# {answers['project_name']}\n"), readme[:80]
    config = (project / "app/core/config.py").read_text()
    assert f'project_name: str = "{answers["project_name"]}"' in config
    assert f"sqlite:///./{answers['project_slug']}.db" in config


def test_slug_is_derived_from_the_name(cookies) -> None:  # type: ignore[no-untyped-def]
    result = cookies.bake(
        extra_context={"project_name": "Order Intake API (EU)"}, template=str(TEMPLATE_DIR)
    )
    assert result.exit_code == 0, result.exception
    assert result.project_path.name == "order-intake-api-eu", result.project_path.name


def test_every_variable_has_a_prompt() -> None:
    prompts = COOKIECUTTER_JSON["__prompts__"]
    public = [key for key in COOKIECUTTER_JSON if not key.startswith("_")]
    assert sorted(prompts) == sorted(public), "each public variable needs a plain question"
    sentry = prompts["include_sentry"]
    assert set(sentry) == {"__prompt__", "no", "yes"}, sentry
    assert COOKIECUTTER_JSON["include_sentry"] == ["no", "yes"], "'no' must be the default"


@by_id
def test_ci_workflow_is_a_valid_github_workflow(project: Path, variant: Variant) -> None:
    """Checked against the GitHub workflow schema that check-jsonschema ships (no network)."""
    workflows = sorted((project / ".github" / "workflows").glob("*.yml"))
    assert workflows, "the project has no CI workflow"
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema"]
    command += ["vendor.github-workflows", *map(str, workflows)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@by_id
def test_sentry_release_job_runs_only_when_configured(project: Path, variant: Variant) -> None:
    workflow = yaml.safe_load((project / ".github/workflows/ci.yml").read_text())
    jobs = workflow["jobs"]
    assert ("sentry-release" in jobs) == variant.sentry, sorted(jobs)
    if not variant.sentry:
        return
    job = jobs["sentry-release"]
    secrets = ("SENTRY_AUTH_TOKEN", "SENTRY_ORG", "SENTRY_PROJECT")
    assert {name: job["env"][name] for name in secrets} == {
        name: f"${{{{ secrets.{name} }}}}" for name in secrets
    }, job["env"]
    configured = " && ".join(f"env.{name} != ''" for name in secrets)
    missing = " || ".join(f"env.{name} == ''" for name in secrets)
    skip, *work = job["steps"]
    assert skip["if"] == missing and "::notice::" in skip["run"], skip
    assert all(step["if"] == configured for step in work), work
    release = work[-1]
    assert release["uses"].startswith("getsentry/action-release@"), release
    assert release["with"]["release"] == "${{ github.sha }}", release


@by_id
def test_the_lock_matches_the_declared_dependencies(project: Path, variant: Variant) -> None:
    """uv.lock is what generated projects install (README, CI, these tests): it must still
    resolve from pyproject.toml as it is, or `uv sync --locked` refuses to install."""
    assert (project / "uv.lock").is_file(), "no uv.lock in the generated project"
    result = subprocess.run(
        [sys.executable, "-m", "uv", "lock", "--locked", "--directory", str(project)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (
        f"uv.lock no longer matches pyproject.toml ({variant.id}): run `make lock`.\n"
        f"{result.stderr[-2000:]}"
    )
