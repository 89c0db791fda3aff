"""Validate the answers before anything is generated.

Each check is a small pure function that returns a message (or None), so the tests can call them
directly. `main()` runs them all on the rendered answers and stops generation with every problem
listed; cookiecutter then removes the half-made project directory.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# Rendered by cookiecutter; left as raw Jinja when this module is imported by the tests.
ANSWERS_JSON = r"""{{ cookiecutter | tojson }}"""
# The rest is not rendered (it names template syntax itself): {% raw %}

SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
SLUG_MAX_LENGTH = 64
EMAIL_PATTERN = re.compile(r"^[^@\s\"\\]+@[^@\s\"\\]+\.[^@\s\"\\]+$")
# Free-text answers are written into Python strings, TOML and Markdown.
TEXT_FIELDS = ("project_name", "description", "author_name")
FORBIDDEN_TEXT = re.compile(r'["\\\n\r\t]|\{\{|\{%')


def check_slug(slug: str) -> str | None:
    if len(slug) > SLUG_MAX_LENGTH:
        return (
            f"project_slug {slug!r} is {len(slug)} characters long; use at most {SLUG_MAX_LENGTH}."
        )
    if not SLUG_PATTERN.match(slug):
        return (
            f"project_slug {slug!r} is not allowed: use lowercase letters and digits, starting "
            "with a letter, with single '-' or '_' between words (e.g. 'billing-api')."
        )
    return None


def check_email(email: str) -> str | None:
    if email and not EMAIL_PATTERN.match(email):
        return (
            f"author_email {email!r} is not an email address: use name@example.com, "
            "or leave it empty."
        )
    return None


def check_text(field: str, value: str) -> str | None:
    if not value.strip():
        return f"{field} is empty: give a few words."
    if FORBIDDEN_TEXT.search(value):
        return (
            f"{field} {value!r} contains a double quote, backslash, tab, line break or "
            "template braces; use plain text without them."
        )
    return None


def check_choice(field: str, value: str, allowed: tuple[str, ...]) -> str | None:
    if value not in allowed:
        return f"{field} {value!r} is not one of the choices: {', '.join(allowed)}."
    return None


def choices(answers: dict[str, object]) -> dict[str, tuple[str, ...]]:
    """The choice variables and their allowed values, as the template's cookiecutter.json lists
    them: the one place they are written. Cookiecutter refuses another value given on its command
    line itself; this catches one from a replay file or a project's recorded answers (cruft)."""
    template = answers.get("_cookiecutter")
    if not isinstance(template, dict):
        repo = answers.get("_repo_dir")
        config = Path(str(repo), "cookiecutter.json") if repo else None
        if config is None or not config.is_file():
            return {}
        template = json.loads(config.read_text(encoding="utf-8"))
    return {
        str(name): tuple(str(option) for option in value)
        for name, value in template.items()
        if isinstance(value, list) and not str(name).startswith("_")
    }


def problems(answers: dict[str, object]) -> list[str]:
    """Every problem with `answers`, as messages that name the value and what is allowed."""
    found = [
        check_slug(str(answers["project_slug"])),
        check_email(str(answers.get("author_email", ""))),
    ]
    found += [check_text(field, str(answers.get(field, ""))) for field in TEXT_FIELDS]
    found += [
        check_choice(field, str(answers.get(field)), allowed)
        for field, allowed in choices(answers).items()
    ]
    return [message for message in found if message]


def main() -> int:
    found = problems(json.loads(ANSWERS_JSON))
    for message in found:
        print(f"ERROR: {message}", file=sys.stderr)
    if found:
        print(
            "Generation stopped; nothing was created. Run it again with other answers.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
# {% endraw %}
