"""Bad answers stop generation with a message that names the problem, and leave nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.template import TEMPLATE_DIR, bake

REFUSED = [
    pytest.param({"project_slug": "Billing API"}, "project_slug 'Billing API'", id="slug-space"),
    pytest.param({"project_slug": "1st-service"}, "project_slug '1st-service'", id="slug-digit"),
    pytest.param({"project_slug": "svc--api"}, "project_slug 'svc--api'", id="slug-double-dash"),
    pytest.param({"project_slug": "svc-"}, "project_slug 'svc-'", id="slug-trailing-dash"),
    pytest.param({"project_slug": "my.svc"}, "project_slug 'my.svc'", id="slug-dot"),
    pytest.param({"project_slug": "a/b"}, "project_slug 'a/b' is not allowed", id="slug-path"),
    pytest.param({"project_slug": "a\\b"}, "project_slug 'a\\\\b'", id="slug-backslash"),
    pytest.param({"project_slug": ".."}, "project_slug '..' is not allowed", id="slug-parent"),
    pytest.param({"project_slug": "s" * 65}, "at most 64", id="slug-too-long"),
    pytest.param({"author_email": "nobody"}, "author_email 'nobody'", id="email-no-at"),
    pytest.param({"author_email": "a@b"}, "author_email 'a@b'", id="email-no-domain"),
    pytest.param({"project_name": 'Say "hi"'}, "project_name", id="name-quote"),
    pytest.param({"description": " "}, "description is empty", id="description-empty"),
    pytest.param({"author_name": "back\\slash"}, "author_name", id="author-backslash"),
    pytest.param({"include_sentry": "maybe"}, "maybe", id="sentry-unknown-choice"),
]


@pytest.mark.parametrize(("answers", "message"), REFUSED)
def test_bad_answer_is_refused_and_leaves_nothing(
    output_dir: Path, answers: dict[str, str], message: str
) -> None:
    result = bake(output_dir, answers)
    assert result.returncode != 0, f"{answers} was accepted"
    said = result.stderr + result.stdout  # cookiecutter says some refusals on stdout
    assert message in said, f"expected {message!r} in:\n{said}"
    leftovers = list(output_dir.iterdir())
    assert leftovers == [], f"a refused generation left {leftovers}"


def test_every_problem_is_reported_at_once(output_dir: Path) -> None:
    result = bake(output_dir, {"project_slug": "Bad Slug", "author_email": "nope"})
    assert "project_slug" in result.stderr and "author_email" in result.stderr, result.stderr


def _cookiecutter(home: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """The cookiecutter command line with `home` as HOME (where it keeps its replay files)."""
    return subprocess.run(
        [sys.executable, "-m", "cookiecutter", *arguments, str(TEMPLATE_DIR)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HOME": str(home)},
    )


def test_an_unknown_choice_in_a_replay_file_is_refused_and_leaves_nothing(
    output_dir: Path, tmp_path: Path
) -> None:
    """Cookiecutter checks choices given on its command line, not those of a replay file (or of a
    project's recorded answers); the hook checks them against cookiecutter.json."""
    home = tmp_path / "home"
    first = _cookiecutter(home, "--no-input", "--output-dir", str(tmp_path / "first"))
    assert first.returncode == 0, first.stderr
    (recorded,) = (home / ".cookiecutter_replay").glob("*.json")
    context = json.loads(recorded.read_text())
    context["cookiecutter"]["include_sentry"] = "maybe"
    replay = tmp_path / "replay.json"
    replay.write_text(json.dumps(context))
    result = _cookiecutter(home, "--replay-file", str(replay), "--output-dir", str(output_dir))
    assert result.returncode != 0, "an unknown choice from a replay file was accepted"
    expected = "include_sentry 'maybe' is not one of the choices: no, yes"
    assert expected in result.stderr, result.stderr
    leftovers = list(output_dir.iterdir())
    assert leftovers == [], f"a refused generation left {leftovers}"


def test_a_project_without_sentry_may_be_named_and_described_after_it(output_dir: Path) -> None:
    answers = {
        "include_sentry": "no",
        "project_name": "Sentry Relay Proxy",
        "description": "Forwards Sentry webhooks to chat.",
    }
    result = bake(output_dir, answers)
    assert result.returncode == 0, (
        f"refused although only the user's answers say Sentry:\n{result.stderr}"
    )
    project = output_dir / "sentry-relay-proxy"
    pyproject = (project / "pyproject.toml").read_text()
    assert 'description = "Forwards Sentry webhooks to chat."' in pyproject, pyproject
    assert not (project / "app" / "sentry.py").exists(), "Sentry's code in a project without it"
