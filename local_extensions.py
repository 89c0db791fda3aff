"""A Jinja extension cookiecutter loads (cookiecutter.json's `_extensions`): a project slug that is
a path is refused before any directory exists.

Cookiecutter creates the project's directory, named by rendering `{{cookiecutter.project_slug}}`,
before it runs the pre-generation hook, and when the hook fails it removes that directory only:
`project_slug=a/b` left an empty `a/` behind. Rendering the directory's name through
`project_dir_name` stops generation at that point, with the reason, and nothing created. Every
other check of the answers is the pre-generation hook's.
"""

from __future__ import annotations

from jinja2 import Environment
from jinja2.exceptions import UndefinedError
from jinja2.ext import Extension

#: The project directory's name in the template, as cookiecutter renders it.
DIRECTORY_NAME = "{{cookiecutter.project_slug}}"


def project_dir_name(slug: str) -> str:
    """`slug`, if it can name a directory; refused (cookiecutter reports the message) if not."""
    if "/" in slug or "\\" in slug or slug in ("", ".", ".."):
        raise UndefinedError(
            f"project_slug {slug!r} is not allowed: it names the project's directory, so it "
            "cannot be a path; use lowercase letters and digits, starting with a letter, with "
            "single '-' or '_' between words (e.g. 'billing-api')."
        )
    return slug


class SlugGuard(Extension):
    """Renders the project directory's name through `project_dir_name`."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.filters["project_dir_name"] = project_dir_name

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        return source.replace(DIRECTORY_NAME, "{{cookiecutter.project_slug | project_dir_name}}")
