"""Bad answers stop generation with a message that names the problem, and leave nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.template import bake

REFUSED = [
    pytest.param({"project_slug": "Billing API"}, "project_slug 'Billing API'", id="slug-space"),
    pytest.param({"project_slug": "1st-service"}, "project_slug '1st-service'", id="slug-digit"),
    pytest.param({"project_slug": "svc--api"}, "project_slug 'svc--api'", id="slug-double-dash"),
    pytest.param({"project_slug": "svc-"}, "project_slug 'svc-'", id="slug-trailing-dash"),
    pytest.param({"project_slug": "my.svc"}, "project_slug 'my.svc'", id="slug-dot"),
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
    assert message in result.stderr, f"expected {message!r} in:\n{result.stderr}"
    leftovers = list(output_dir.iterdir())
    assert leftovers == [], f"a refused generation left {leftovers}"


def test_every_problem_is_reported_at_once(output_dir: Path) -> None:
    result = bake(output_dir, {"project_slug": "Bad Slug", "author_email": "nope"})
    assert "project_slug" in result.stderr and "author_email" in result.stderr, result.stderr
