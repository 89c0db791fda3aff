"""Refresh the generated projects' lock: `make lock`.

For each variant of `include_sentry`, bakes a project, runs `uv lock` in it (the newest versions
the declared ranges allow), and writes the two results into the template's
`{{cookiecutter.project_slug}}/uv.lock`, one per branch of an `include_sentry` condition, with the
project's own name left to the template. A generated project is installed from it
(`uv sync --locked`); `tests/test_generated_project.py` fails when it no longer matches the
project's declared dependencies. Run this after changing a dependency in the template's
pyproject.toml, then run `make test`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.template import baked_project  # noqa: E402

LOCK = REPO / "{{cookiecutter.project_slug}}" / "uv.lock"
SLUG = "lock-placeholder"
#: The project's own entry: its name is the only part of the lock that depends on the answers
#: (uv normalises `_` to `-` in names).
OWN_NAME = f'name = "{SLUG}"'
TEMPLATED_NAME = "name = \"{{ cookiecutter.project_slug | replace('_', '-') }}\""


def locked(variant: str, workdir: Path) -> str:
    project = baked_project(workdir / variant, {"include_sentry": variant, "project_slug": SLUG})
    subprocess.run(
        [sys.executable, "-m", "uv", "lock", "--quiet", "--directory", str(project)], check=True
    )
    text = (project / "uv.lock").read_text()
    if text.count(OWN_NAME) != 1:
        sys.exit(f"expected the project's own name once in the {variant} lock")
    if any(marker in text for marker in ("{{", "{%", "{#")):
        sys.exit(f"the {variant} lock holds template syntax; it cannot be rendered as it is")
    return text.replace(OWN_NAME, TEMPLATED_NAME)


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        yes, no = locked("yes", workdir), locked("no", workdir)
    # `-` on the tags: the rendered lock is exactly one of the two, newline included.
    LOCK.write_text(
        '{%- if cookiecutter.include_sentry == "yes" -%}\n'
        + yes
        + "{%- else -%}\n"
        + no
        + "{%- endif %}\n"
    )
    print(f"wrote {LOCK.relative_to(REPO)} ({LOCK.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
