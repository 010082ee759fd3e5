"""The package type-checks: ``mypy`` with the configuration in ``pyproject.toml`` reports no error.

The settings (``[tool.mypy]``) are the project's; this test only runs them, in
a fresh process, with mypy's cache under ``tmp_path`` (a cold run: about 10 s
on two cores, the frameworks' stubs being skipped by the configuration).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.processes
def test_mypy_finds_no_error_in_the_package(tmp_path):
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it is in the test extra)")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "mypy-cache"), "--no-error-summary", "--hide-error-context",
         str(ROOT / "portable_rnn")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"mypy reported errors:\n{result.stdout[-6000:]}{result.stderr[-2000:]}"
