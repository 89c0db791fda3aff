"""The hooks' functions, called directly (the hooks are importable before rendering)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.template import COOKIECUTTER_JSON, load_hook

pre = load_hook("pre_gen_project")
post = load_hook("post_gen_project")

GOOD_ANSWERS = {
    "project_name": "My Service",
    "project_slug": "my-service",
    "description": "Does things.",
    "author_name": "Ada",
    "author_email": "ada@example.com",
    "include_sentry": "no",
    "_cookiecutter": COOKIECUTTER_JSON,  # as cookiecutter hands it to the hooks
}


@pytest.mark.parametrize("slug", ["svc", "my-service", "billing_api", "api2", "a1-b2_c3"])
def test_good_slugs_pass(slug: str) -> None:
    assert pre.check_slug(slug) is None


@pytest.mark.parametrize("slug", ["", "My-Service", "2api", "a--b", "a_", "-a", "a b", "a.b", "ä"])
def test_bad_slugs_name_the_value(slug: str) -> None:
    message = pre.check_slug(slug)
    assert message and repr(slug) in message, message


@pytest.mark.parametrize("email", ["", "ada@example.com", "first.last+tag@sub.example.org"])
def test_good_or_empty_emails_pass(email: str) -> None:
    assert pre.check_email(email) is None


@pytest.mark.parametrize("email", ["ada", "ada@", "@example.com", "a b@example.com", 'a"@x.io'])
def test_bad_emails_name_the_value(email: str) -> None:
    message = pre.check_email(email)
    assert message and repr(email) in message, message


def test_good_answers_have_no_problems() -> None:
    assert pre.problems(GOOD_ANSWERS) == []


def test_every_problem_is_listed() -> None:
    answers = {**GOOD_ANSWERS, "project_slug": "X", "include_sentry": "sure", "description": ""}
    found = pre.problems(answers)
    assert len(found) == 3, found


def test_the_choices_come_from_cookiecutter_json() -> None:
    allowed = pre.choices(GOOD_ANSWERS)
    assert allowed == {"include_sentry": ("no", "yes")}, allowed
    message = pre.check_choice("include_sentry", "sure", allowed["include_sentry"])
    assert message and "'sure'" in message and "no, yes" in message, message


def test_pre_main_reports_and_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(pre, "ANSWERS_JSON", json.dumps({**GOOD_ANSWERS, "project_slug": "A"}))
    assert pre.main() == 1
    assert "project_slug 'A'" in capsys.readouterr().err
    monkeypatch.setattr(pre, "ANSWERS_JSON", json.dumps(GOOD_ANSWERS))
    assert pre.main() == 0


MANIFEST = {"include_sentry": ["app/sentry.py", "docs/sentry.md", "tests/sentry"]}


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_excluded_files_follow_the_answers() -> None:
    assert post.excluded_files({"include_sentry": "no"}, MANIFEST) == MANIFEST["include_sentry"]
    assert post.excluded_files({"include_sentry": "yes"}, MANIFEST) == []


def test_remove_files_is_idempotent(tmp_path: Path) -> None:
    make_tree(tmp_path, {"app/sentry.py": "x", "app/main.py": "y", "tests/sentry/test_a.py": ""})
    post.remove_files(tmp_path, MANIFEST["include_sentry"])
    post.remove_files(tmp_path, MANIFEST["include_sentry"])
    assert not (tmp_path / "app/sentry.py").exists() and (tmp_path / "app/main.py").exists()
    assert not (tmp_path / "tests/sentry").exists(), "listed directories are removed whole"


def test_debris_is_found_but_actions_expressions_are_not(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            ".github/workflows/ci.yml": "run: echo ${{ secrets.TOKEN }}\n",
            "README.md": "# Title\n\nHello {{ cookiecutter.project_name }}\n",
            "app/x.py": "d = {'a': {'b': 1}}\n",
        },
    )
    assert post.template_debris(tmp_path) == ["README.md:3: Hello {{ cookiecutter.project_name }}"]


def test_mentions_look_at_names_and_text(tmp_path: Path) -> None:
    make_tree(tmp_path, {"app/sentry_extra.py": "", "README.md": "Uses SENTRY", "ok.txt": "fine"})
    assert post.mentions(tmp_path, "sentry") == ["README.md", "app/sentry_extra.py"]


def test_the_users_own_answers_are_not_mentions(tmp_path: Path) -> None:
    answers = {
        "include_sentry": "no",
        "project_name": "Sentry Relay Proxy",
        "project_slug": "sentry-relay-proxy",
        "description": "Forwards Sentry webhooks to chat.",
    }
    make_tree(
        tmp_path,
        {
            "pyproject.toml": (
                'name = "sentry-relay-proxy"\ndescription = "Forwards Sentry webhooks to chat."\n'
            ),
            "README.md": "# Sentry Relay Proxy\n\nDATABASE_URL=sqlite:///./sentry_relay_proxy.db\n",
            "app/main.py": "import sentry_sdk\n",
        },
    )
    no = post.check(tmp_path, answers, MANIFEST)
    assert no == ["app/main.py mentions 'sentry' although include_sentry=no"], (
        f"the user's answers were taken for the template's mentions, or a real one was missed: {no}"
    )


def test_check_reports_missing_and_leftover_files(tmp_path: Path) -> None:
    make_tree(tmp_path, {"app/sentry.py": "import sentry_sdk\n", "tests/sentry/t.py": ""})
    yes = post.check(tmp_path, {"include_sentry": "yes"}, MANIFEST)
    assert yes == ["docs/sentry.md is missing although include_sentry=yes"], yes
    (tmp_path / "tests/sentry/t.py").unlink()
    (tmp_path / "tests/sentry").rmdir()
    no = post.check(tmp_path, {"include_sentry": "no"}, MANIFEST)
    assert no == ["app/sentry.py mentions 'sentry' although include_sentry=no"], no


def test_post_main_cleans_and_can_run_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path, {"app/sentry.py": "x", "docs/sentry.md": "x", "app/main.py": "pass\n"})
    make_tree(tmp_path, {"tests/sentry/conftest.py": "x"})
    monkeypatch.setattr(post, "ANSWERS_JSON", json.dumps({"include_sentry": "no"}))
    monkeypatch.setattr(post, "OPTIONAL_FILES", MANIFEST)
    assert post.main(tmp_path) == 0
    assert post.main(tmp_path) == 0, "a second run must succeed too"
    assert sorted(p.name for p in tmp_path.rglob("*.py")) == ["main.py"]


def test_post_main_fails_loudly_on_a_bad_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_tree(tmp_path, {"app/main.py": "# {% if x %}\n"})
    monkeypatch.setattr(post, "ANSWERS_JSON", json.dumps({"include_sentry": "yes"}))
    monkeypatch.setattr(post, "OPTIONAL_FILES", MANIFEST)
    assert post.main(tmp_path) == 1
    err = capsys.readouterr().err
    assert "template syntax left in app/main.py:1" in err and "app/sentry.py is missing" in err


def test_the_manifest_names_only_yes_no_variables() -> None:
    assert post.OPTIONAL_FILES["include_sentry"], "the manifest must list the Sentry-only files"
    for variable in post.OPTIONAL_FILES:
        assert COOKIECUTTER_JSON.get(variable) == ["no", "yes"], (
            f"the manifest names {variable!r}, which is not a no/yes variable of cookiecutter.json"
        )


def test_no_private_variable_reaches_the_recorded_answers() -> None:
    """cruft copies every cookiecutter.json variable into each project's `.cruft.json`: only the
    extensions' constant list (the slug guard) may be there, never a manifest that changes."""
    private = [name for name in COOKIECUTTER_JSON if name.startswith("_") and name != "__prompts__"]
    assert private == ["_extensions"], f"private variables {private} would be recorded"
    assert COOKIECUTTER_JSON["_extensions"] == ["local_extensions.SlugGuard"]


@pytest.mark.parametrize("include_sentry", ["no", "yes"])
def test_next_steps_follow_the_readme(tmp_path: Path, include_sentry: str) -> None:
    answers = {**GOOD_ANSWERS, "include_sentry": include_sentry}
    steps = post.next_steps(tmp_path / "my-service", answers)
    for command in (
        f"cd {tmp_path / 'my-service'}",
        "uv sync --locked",
        "alembic upgrade head",
        "uvicorn",
        "pytest",
    ):
        assert command in steps, f"{command!r} missing from:\n{steps}"
    mentions_check = "python -m app.sentry check" in steps
    assert mentions_check == (include_sentry == "yes"), f"include_sentry={include_sentry}:\n{steps}"
