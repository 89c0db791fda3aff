"""The template's own code (hooks, tests, scripts) meets the standard of the code it generates."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.template import TEMPLATE_DIR

PATHS = ["hooks", "tests", "scripts", "benchmarks"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, *PATHS],
        cwd=TEMPLATE_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
