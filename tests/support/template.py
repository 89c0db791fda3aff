"""What the tests and the demo share about the template: its place, its variants, its manifest."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

TEMPLATE_DIR = Path(__file__).resolve().parents[2]
COOKIECUTTER_JSON = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())


def load_hook(name: str) -> ModuleType:
    """Import a hook unrendered (its Jinja sits inside string literals)."""
    spec = importlib.util.spec_from_file_location(name, TEMPLATE_DIR / "hooks" / f"{name}.py")
    assert spec and spec.loader, f"hooks/{name}.py cannot be loaded"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: variable -> files that exist only when it is "yes" (the post-generation hook's manifest)
OPTIONAL_FILES: dict[str, list[str]] = load_hook("post_gen_project").OPTIONAL_FILES
SENTRY_ONLY_FILES = OPTIONAL_FILES["include_sentry"]


@dataclass(frozen=True)
class Variant:
    """One way of answering the prompts, with a readable id for test names."""

    id: str
    answers: dict[str, str] = field(default_factory=dict)

    @property
    def sentry(self) -> bool:
        return self.answers.get("include_sentry", "no") == "yes"


DEFAULT_NO = Variant("sentry-no", {"include_sentry": "no"})
DEFAULT_YES = Variant("sentry-yes", {"include_sentry": "yes"})
CUSTOM_YES = Variant(
    "custom-answers-sentry-yes",
    {
        "project_name": "Billing Gateway",
        "project_slug": "billing_gateway",
        "description": "Charges cards and keeps invoices for every tenant.",
        "author_name": "Ada Lovelace",
        "author_email": "",
        "include_sentry": "yes",
    },
)
VARIANTS = [DEFAULT_NO, DEFAULT_YES, CUSTOM_YES]


def bake(output_dir: Path, answers: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the cookiecutter command line as a user would, without prompts."""
    command = [sys.executable, "-m", "cookiecutter", "--no-input", str(TEMPLATE_DIR)]
    command += ["--output-dir", str(output_dir)]
    command += [f"{key}={value}" for key, value in answers.items()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def baked_project(output_dir: Path, answers: dict[str, str]) -> Path:
    """Bake and return the project directory, failing with cookiecutter's output if it fails."""
    result = bake(output_dir, answers)
    assert result.returncode == 0, f"generation failed:\n{result.stdout}\n{result.stderr}"
    (project,) = [p for p in output_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return project


def install_project(project: Path, venv: Path) -> None:
    """Install the project into `venv` exactly as its lock says, dev tools included (`uv sync
    --locked`, which fails if the lock no longer matches pyproject.toml), with uv's shared cache."""
    command = [sys.executable, "-m", "uv", "sync", "--locked", "--extra", "dev", "--quiet"]
    command += ["--directory", str(project), "--python", sys.executable]
    environment = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)}
    environment.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, env=environment
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
