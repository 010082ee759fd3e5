"""The documentation site builds as CONTRIBUTING.md says, with no warning, and leaves no name out.

The build (``mkdocs build --strict``, the command between CONTRIBUTING.md's docs-command
markers) runs every ``exec="on"`` Python block of every page, so a failing example fails here;
the reference's cross-references are checked by the same build. One build serves the checks.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: The public modules, each with an ``__all__`` whose every name needs a reference entry.
PUBLIC_MODULES = (
    "portable_rnn", "portable_rnn.activations", "portable_rnn.backends", "portable_rnn.engine.cells",
    "portable_rnn.course_layouts", "portable_rnn.cs231n", "portable_rnn.dask", "portable_rnn.dense",
    "portable_rnn.init", "portable_rnn.interop", "portable_rnn.interop.courses", "portable_rnn.interop.flax",
    "portable_rnn.interop.keras", "portable_rnn.interop.torch", "portable_rnn.io", "portable_rnn.jax",
    "portable_rnn.layers", "portable_rnn.engine.loop", "portable_rnn.losses", "portable_rnn.model", "portable_rnn.optim",
    "portable_rnn.parallel", "portable_rnn.engine.sequence", "portable_rnn.stepbystep", "portable_rnn.testing.fixtures",
    "portable_rnn.testing.gradcheck", "portable_rnn.torch",
)


def docs_command() -> list[str]:
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- docs-command -->\s*```bash\n(.*?)```\s*<!-- /docs-command -->", text, re.S).group(1)
    (line,) = [line for line in block.splitlines() if line.strip()]
    return shlex.split(line)


def inventory(site: Path) -> set[str]:
    """The identifiers of the reference entries, from the site's ``objects.inv``."""
    data = (site / "objects.inv").read_bytes()
    body = zlib.decompress(data.split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines()}


def _missing_entries(entries: set[str]) -> list[str]:
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            homes = {f"{module_name}.{name}"}
            if hasattr(obj, "__module__") and hasattr(obj, "__qualname__"):
                homes.add(f"{obj.__module__}.{obj.__qualname__}")  # a re-export: documented where defined
            if type(obj).__name__ == "module":
                homes.add(obj.__name__)
            if module_name == "portable_rnn" and name == "__version__":
                continue  # its value is printed on the package's page
            if not homes & entries:
                missing.append(f"{module_name}.{name}")
    return missing


def test_the_command_is_mkdocs_strict():
    command = docs_command()
    assert command[:3] == ["mkdocs", "build", "--strict"], command


@pytest.mark.processes
def test_the_site_builds_without_warnings_and_every_public_name_has_an_entry(tmp_path):
    site = tmp_path / "site"
    command = docs_command()
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", MPLBACKEND="Agg")
    env.pop("KERAS_BACKEND", None)  # a page that needs it says so itself
    # mkdocs from this interpreter's environment, its output under tmp_path
    argv = [sys.executable, "-m", "mkdocs", *command[1:], "-d", str(site)]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    warnings = [line for line in log.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", line)]
    assert result.returncode == 0 and not warnings, "\n".join(warnings) or log[-5000:]
    assert (site / "index.html").is_file()
    assert _missing_entries(inventory(site)) == []


def test_every_python_block_on_every_page_runs_at_build_time():
    """A Python block without ``exec="on"`` would be shown but never run; only the README's are
    exempt, since tests/test_readme.py runs them."""
    unexecuted = []
    for page in sorted(DOCS.rglob("*.md")):
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(r"\s*```+\s*(python|py|pycon)\b", line) and 'exec="on"' not in line:
                unexecuted.append(f"{page.relative_to(ROOT)}:{number}: {line.strip()}")
    assert unexecuted == [], "\n".join(unexecuted)


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the front page keeps to 250"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_each_public_module_has_a_reference_page(module_name):
    pages = "\n".join(p.read_text(encoding="utf-8") for p in (DOCS / "reference").glob("*.md"))
    assert re.search(rf"^::: {re.escape(module_name)}$", pages, re.M), module_name
