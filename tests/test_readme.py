"""README.md runs as written: every Python block, and (with ``--soak``) the commands after the main job.

Each Python block is a complete program: it runs in a fresh interpreter in
its own folder under ``tmp_path`` (with this checkout's package on the path),
must exit 0 and print something. The blocks need what the ``test`` extra
installs (JAX, optax, Keras, Flax) and torch; a block whose library is
missing is skipped, naming it.

The shell commands of "The other commands" run in order, after the main job
(``portable-rnn train`` with its defaults), in one folder holding a copy of
the shipped text, as a new user runs them; that takes about three minutes on
two cores, so it runs with ``--soak``. The install lines (``pip install``) are
what the test command itself has done.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
#: Libraries a block may import that the core install does not bring.
OPTIONAL = {"jax", "torch", "optax", "keras", "flax"}


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    env.pop("KERAS_BACKEND", None)  # a block that needs it says so itself
    return env


def test_the_readme_has_the_python_blocks_this_file_runs():
    assert len(PYTHON_BLOCKS) >= 6


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)), ids=lambda i: f"block{i}")
def test_every_python_block_runs_as_written_and_prints(index, tmp_path):
    code = PYTHON_BLOCKS[index]
    missing = sorted(n for n in _imported(code) & set(OPTIONAL) if importlib.util.find_spec(n) is None)
    if missing:
        pytest.skip(f"README block {index} needs {', '.join(missing)}, which is not installed")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"block {index}:\n{code}\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), f"block {index} printed nothing"


def _imported(code: str) -> set:
    """The top-level modules the import statements of ``code`` name."""
    names = set()
    for line in map(str.strip, code.splitlines()):
        if line.startswith("from "):
            names.add(line.split()[1].split(".")[0])
        elif line.startswith("import "):
            names |= {part.split()[0].split(".")[0] for part in line[len("import "):].split(",")}
    return names


def _commands(heading: str) -> list[str]:
    """The command lines of the first bash block after ``heading``, comments removed."""
    block = re.search(re.escape(heading) + r".*?```bash\n(.*?)```", README, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.soak
def test_the_main_job_then_the_other_commands_run_in_order(tmp_path):
    shutil.copytree(ROOT / "portable_rnn" / "data", tmp_path / "portable_rnn" / "data")
    main_job = _commands("## The two commands")
    assert main_job == ['pip install ".[train]" && portable-rnn train'], main_job
    commands = ["portable-rnn train", *_commands("The other commands:")]
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "portable-rnn", command
        result = subprocess.run([sys.executable, "-m", "portable_rnn", *argv[1:]], cwd=tmp_path, env=_env(),
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
