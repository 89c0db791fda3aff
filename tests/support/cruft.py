"""cruft and git against a local copy of the template, isolated from the machine's own set-up.

Projects record the template's public address, `TEMPLATE_URL`, exactly as they would for a user.
A git `url.<copy>.insteadOf` rule, in a git config of the test's own, sends that address to a
local git repository holding the template's working tree, and `GIT_ALLOW_PROTOCOL=file` makes any
other fetch fail at once: nothing goes over the network. The user's own git and cookiecutter
configuration (a global `insteadOf`, a `default_context`) cannot leak in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.support.template import TEMPLATE_DIR

#: What a user would pass to `cruft create`; never fetched (see the module docstring).
TEMPLATE_URL = "https://github.com/example-org/fastapi-sentry-template"
#: Left out of a copy of the template when it is not a git checkout.
NOT_TEMPLATE = shutil.ignore_patterns(
    ".git", ".venv", ".cache", "demo", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"
)
#: A line git leaves where a three-way merge could not decide.
CONFLICT_MARKER = re.compile(rb"^(<{7}|>{7})( |$)", re.MULTILINE)


def git_files(root: Path) -> list[str]:
    """The files of a git working tree as they are now: tracked and new, not the ignored ones.

    (Deleted but still tracked files are left out; the user's own git configuration is not read.)
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"},
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(name for name in listed.split("\0") if name and (root / name).is_file())


def copy_template(destination: Path) -> None:
    """The template's working tree (uncommitted changes included) as plain files."""
    if not (TEMPLATE_DIR / ".git").exists():
        shutil.copytree(TEMPLATE_DIR, destination, ignore=NOT_TEMPLATE)
        return
    for name in git_files(TEMPLATE_DIR):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(TEMPLATE_DIR / name, target)


@dataclass(frozen=True)
class Workspace:
    """A scratch home: a git repository of the template, its rules, and where projects go."""

    root: Path

    @property
    def template(self) -> Path:
        return self.root / "template.git"

    @property
    def projects(self) -> Path:
        return self.root / "projects"

    @classmethod
    def create(cls, root: Path, template_source: Path | None = None) -> Workspace:
        """A workspace; its template repository clones `template_source` or copies the template."""
        workspace = cls(root)
        (root / "home").mkdir(parents=True)
        workspace.projects.mkdir()
        (root / "cookiecutterrc").write_text("default_context: {}\n")
        (root / "gitconfig").write_text(
            "[user]\n\tname = Template Tests\n\temail = template-tests@example.com\n"
            "[init]\n\tdefaultBranch = main\n"
            f'[url "{workspace.template}"]\n\tinsteadOf = {TEMPLATE_URL}\n'
        )
        if template_source is None:
            workspace.template.mkdir()
            copy_template(workspace.template)
            workspace.git("init", "--quiet", cwd=workspace.template)
            workspace.commit_template("The template as it is now")
        else:
            workspace.git(
                "clone", "--quiet", str(template_source), str(workspace.template), cwd=root
            )
        return workspace

    def environment(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "TERM")
        return {
            **{key: os.environ[key] for key in keep if key in os.environ},
            "HOME": str(self.root / "home"),
            "GIT_CONFIG_GLOBAL": str(self.root / "gitconfig"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_ALLOW_PROTOCOL": "file",
            "GIT_TERMINAL_PROMPT": "0",
            "COOKIECUTTER_CONFIG": str(self.root / "cookiecutterrc"),
        }

    def run(
        self, command: list[str], cwd: Path, **environment: str
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` in the workspace's environment, with `environment` on top."""
        return subprocess.run(
            command,
            cwd=cwd,
            env={**self.environment(), **environment},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def git(self, *arguments: str, cwd: Path) -> str:
        result = self.run(["git", *arguments], cwd)
        assert result.returncode == 0, f"git {' '.join(arguments)} failed:\n{result.stderr}"
        return result.stdout.strip()

    def cruft(self, *arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """The cruft command line, as a user would run it."""
        return self.run([sys.executable, "-m", "cruft", *arguments], cwd or self.projects)

    def commit_template(self, message: str) -> str:
        """Commit everything in the template repository; the new commit's hash."""
        self.git("add", "--all", cwd=self.template)
        self.git("commit", "--quiet", "--message", message, cwd=self.template)
        return self.git("rev-parse", "HEAD", cwd=self.template)

    def create_project(self, answers: dict[str, str], name: str) -> Path:
        """`cruft create` into its own directory, then the project's first commit."""
        output = self.projects / name
        output.mkdir()
        result = self.cruft(
            "create",
            TEMPLATE_URL,
            "--no-input",
            "--output-dir",
            str(output),
            "--extra-context",
            json.dumps(answers),
        )
        assert result.returncode == 0, f"cruft create failed:\n{result.stdout}\n{result.stderr}"
        (project,) = [path for path in output.iterdir() if path.is_dir()]
        self.git("init", "--quiet", cwd=project)
        self.commit_project(project, "Generated from the template")
        return project

    def commit_project(self, project: Path, message: str) -> None:
        self.git("add", "--all", cwd=project)
        self.git("commit", "--quiet", "--allow-empty", "--message", message, cwd=project)

    def update(self, project: Path, variables: dict[str, str] | None = None) -> str:
        """`cruft update` without questions; fails the test unless it applied without conflict."""
        arguments = ["update", "--skip-apply-ask"]
        if variables:
            arguments += ["--variables-to-update", json.dumps(variables)]
        result = self.cruft(*arguments, cwd=project)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"cruft update failed:\n{output}"
        assert "Failed to apply the update" not in output, f"the update did not apply:\n{output}"
        assert not unresolved(project), f"conflicts left by the update: {unresolved(project)}"
        return output


def unresolved(project: Path) -> list[str]:
    """Rejected hunks (`*.rej`) and files with conflict markers: what a user would have to fix."""
    files = tree(project)
    found = [name for name in files if name.endswith(".rej")]
    found += [name for name, content in files.items() if CONFLICT_MARKER.search(content)]
    return found


def tree(root: Path) -> dict[str, bytes]:
    """The project's files by relative path, with an `(executable)` mark.

    In a git repository, the files git would track (the virtual environment, databases and caches
    a user's work leaves behind are ignored); elsewhere every file but git's own.
    """
    if (root / ".git").exists():
        paths = [root / name for name in git_files(root)]
    else:
        paths = [path for path in root.rglob("*") if ".git" not in path.relative_to(root).parts]
    files = {}
    for path in sorted(paths):
        if path.is_file():
            mark = " (executable)" if os.access(path, os.X_OK) else ""
            files[f"{path.relative_to(root)}{mark}"] = path.read_bytes()
    return files


def tree_differences(actual: Path, expected: Path) -> list[str]:
    """How two trees differ, one readable line per file (empty when they are the same)."""
    have, want = tree(actual), tree(expected)
    lines = [f"missing: {name}" for name in sorted(want.keys() - have.keys())]
    lines += [f"unexpected: {name}" for name in sorted(have.keys() - want.keys())]
    for name in sorted(have.keys() & want.keys()):
        if have[name] != want[name]:
            lines.append(f"differs: {name}\n{first_difference(have[name], want[name])}")
    return lines


def assert_same_tree(actual: Path, expected: Path, what: str) -> None:
    differences = tree_differences(actual, expected)
    assert not differences, f"{what} differs from {expected.name}:\n" + "\n".join(differences)


def first_difference(have: bytes, want: bytes) -> str:
    have_lines = have.decode(errors="replace").splitlines()
    want_lines = want.decode(errors="replace").splitlines()
    for number, (got, expected) in enumerate(zip(have_lines, want_lines, strict=False), start=1):
        if got != expected:
            return f"  line {number}: got {got!r}, expected {expected!r}"
    return f"  {len(have_lines)} lines, expected {len(want_lines)}"


def edit(path: Path, change: Callable[[str], str]) -> None:
    path.write_text(change(path.read_text(encoding="utf-8")), encoding="utf-8")


def replace_once(old: str, new: str) -> Callable[[str], str]:
    """A text change that insists `old` occurs exactly once (else the test's anchor is stale)."""

    def change(text: str) -> str:
        count = text.count(old)
        assert count == 1, f"expected {old!r} once in the file, found it {count} times"
        return text.replace(old, new)

    return change
