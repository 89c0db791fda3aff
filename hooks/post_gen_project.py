"""Remove the files the answers leave out, then check the generated project.

The optional files are listed once, in `OPTIONAL_FILES` below: for each yes/no variable, the files
and directories that exist only when it is "yes". The tests import the same manifest. It lives
here, not in cookiecutter.json, because cruft copies every variable of that file, private ones too,
into the answers it records in a project's `.cruft.json`: a project without Sentry would list
Sentry's files there, and each change to the list would change every project's answers.

Running `main()` twice is harmless (removing a missing file is not an error, and the checks only
read), and so is running it in the scratch directories where `cruft update` regenerates the old and
new template to compute a project's update: it touches nothing outside the generated tree.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

# Rendered by cookiecutter; left as raw Jinja when this module is imported by the tests.
ANSWERS_JSON = r"""{{ cookiecutter | tojson }}"""
# The rest is not rendered (it names template syntax itself): {% raw %}

# Any Jinja opener, or a closing tag; `}}` alone is ordinary Python or JSON.
TEMPLATE_SYNTAX = re.compile(r"\{\{|\{%|%\}|\{#")
# GitHub Actions expressions look like Jinja but belong in workflow files.
ACTIONS_EXPRESSION = re.compile(r"\$\{\{.*?\}\}")
#: The answers a user writes: a project without Sentry may still be named or described after it.
OWN_ANSWERS = ("project_name", "project_slug", "description", "author_name", "author_email")
#: variable -> files and directories of the generated project that exist only when it is "yes".
OPTIONAL_FILES: dict[str, list[str]] = {
    "include_sentry": [
        "app/sentry.py",
        "app/sentry_integration",
        "docs/adr/0003-error-tracking-with-sentry.md",
        "tests/sentry_integration",
    ],
}
SKIPPED_DIRS = {".git", ".venv", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


def project_files(root: Path) -> list[Path]:
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and not SKIPPED_DIRS.intersection(path.relative_to(root).parts)
    )


def excluded_files(answers: dict[str, object], manifest: dict[str, list[str]]) -> list[str]:
    """The manifest's files whose variable was answered "no"."""
    return [
        name
        for variable, names in manifest.items()
        if answers.get(variable) != "yes"
        for name in names
    ]


def remove_files(root: Path, names: list[str]) -> None:
    """Remove each listed file or directory; one that is already gone is fine."""
    for name in names:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def template_debris(root: Path) -> list[str]:
    """Files that still hold template syntax, with the first offending line."""
    found = []
    for path in project_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if ".github" in path.relative_to(root).parts:
                line = ACTIONS_EXPRESSION.sub("", line)
            if TEMPLATE_SYNTAX.search(line):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
                break
    return found


def own_words(answers: dict[str, object]) -> list[str]:
    """The user's own answers, lower-cased (the slug also with '_'), longest first."""
    words = set()
    for field in OWN_ANSWERS:
        value = str(answers.get(field) or "").lower()
        if value:
            words.update((value, value.replace("-", "_")))
    return sorted(words, key=len, reverse=True)


def mentions(root: Path, word: str, ignore: list[str] | None = None) -> list[str]:
    """Files whose name or text mentions `word`, ignoring case and the strings in `ignore` (the
    user's own answers: what the template writes is checked, not what the user wrote)."""
    word = word.lower()

    def says(text: str) -> bool:
        text = text.lower()
        for own in ignore or ():
            text = text.replace(own, " ")
        return word in text

    found = []
    for path in project_files(root):
        relative = str(path.relative_to(root))
        try:
            if says(relative) or says(path.read_text(encoding="utf-8")):
                found.append(relative)
        except UnicodeDecodeError:
            continue
    return found


def missing_files(root: Path, names: list[str]) -> list[str]:
    return [name for name in names if not (root / name).exists()]


def check(root: Path, answers: dict[str, object], manifest: dict[str, list[str]]) -> list[str]:
    """Everything wrong with the generated tree, as readable messages."""
    problems = [f"template syntax left in {where}" for where in template_debris(root)]
    for variable, names in manifest.items():
        if answers.get(variable) == "yes":
            problems += [
                f"{name} is missing although {variable}=yes" for name in missing_files(root, names)
            ]
        else:
            topic = variable.removeprefix("include_")
            problems += [
                f"{where} mentions {topic!r} although {variable}=no"
                for where in mentions(root, topic, own_words(answers))
            ]
    return problems


def next_steps(root: Path, answers: dict[str, object]) -> str:
    """What to do after generating: the generated README's quick start, and Sentry's check."""
    lines = [
        f"Generated {answers.get('project_name')} in {root}. Next:",
        f"  cd {root}",
        "  uv sync --locked --extra dev && . .venv/bin/activate   # the locked versions",
        "  alembic upgrade head          # the tables (a SQLite file by default)",
        "  uvicorn app.main:app --reload # http://127.0.0.1:8000/docs",
        "  pytest                        # the tests",
    ]
    if answers.get("include_sentry") == "yes":
        lines += [
            "Sentry: put your project's DSN in .env (cp .env.example .env; SENTRY_DSN=...), then",
            "  python -m app.sentry check    # sends one test event and says if it was accepted",
        ]
    lines.append("README.md says more.")
    return "\n".join(lines)


def main(root: Path | None = None) -> int:
    root = root or Path.cwd()
    answers = json.loads(ANSWERS_JSON)
    remove_files(root, excluded_files(answers, OPTIONAL_FILES))
    problems = check(root, answers, OPTIONAL_FILES)
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    if problems:
        print(
            "The generated project failed its self-check; it has been removed. "
            "This is a bug in the template: please report it.",
            file=sys.stderr,
        )
        return 1
    print(next_steps(root, answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
# {% endraw %}
