"""README.md and CONTRIBUTING.md run as written: every Python block, and (with ``--soak``) their commands.

Each Python block of either file is a complete program: it runs in a fresh
interpreter in its own folder under ``tmp_path`` (with this checkout's
package on the path), must exit 0 and print something. The blocks need what
the ``test`` extra installs (JAX, optax, Keras, Flax) and torch; a block
whose library is missing is skipped, naming it.

README's shell commands: the install lines and the test command are what
the test command itself has done; the main job (``portable-rnn train`` with
its defaults) then "The other commands" run in order, in one folder holding
a copy of the shipped text, as a new user runs them (about three minutes on
two cores, so with ``--soak``); blocks under a "Scaling out" heading, if
README has one again, are run by ``tests/scale/test_multiprocess.py`` where one
machine can (the rest need several hosts or GPUs). Every bash block must be
one of these: a new one fails
:func:`test_every_readme_bash_block_is_run_by_a_test` until a test runs it.

The test commands of CONTRIBUTING.md and README.md (``python -m pytest ...``,
with their environment variables) must collect tests as written (``--soak``:
each collection imports the suite, about 12 s).
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
CONTRIBUTING = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
#: ``(document, index, code)`` of every Python block of the two files.
PYTHON_BLOCKS = [(name, i, code) for name, text in (("README.md", README), ("CONTRIBUTING.md", CONTRIBUTING))
                 for i, code in enumerate(re.findall(r"```python\n(.*?)```", text, re.S))]
#: README's sections whose bash blocks a test runs (or, for set-up, the test command has done), and which.
README_BASH = {
    "## Install": "the set-up: what the test command installs",
    "## The two commands": "the main job and the test command; the main job runs in "
                           "test_the_main_job_then_the_other_commands_run_in_order",
    "## Scaling out": "tests/scale/test_multiprocess.py, where one machine can run them",
}
#: Libraries a block may import that the core install does not bring.
OPTIONAL = {"jax", "torch", "optax", "keras", "flax"}


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    env.pop("KERAS_BACKEND", None)  # a block that needs it says so itself
    return env


def test_the_readme_has_the_python_blocks_this_file_runs():
    assert len([doc for doc, _, _ in PYTHON_BLOCKS if doc == "README.md"]) >= 6


@pytest.mark.processes
@pytest.mark.parametrize("doc, index, code", PYTHON_BLOCKS, ids=[f"{d.split('.')[0]}-block{i}"
                                                                 for d, i, _ in PYTHON_BLOCKS])
def test_every_python_block_runs_as_written_and_prints(doc, index, code, tmp_path):
    missing = sorted(n for n in _imported(code) & set(OPTIONAL) if importlib.util.find_spec(n) is None)
    if missing:
        pytest.skip(f"{doc} block {index} needs {', '.join(missing)}, which is not installed")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"{doc} block {index}:\n{code}\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), f"{doc} block {index} printed nothing"


def _sections_of_bash_blocks(text: str) -> list[str]:
    """The ``## `` heading above each bash block of ``text``, in order."""
    heading, found = None, []
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line.strip()
        elif line.strip() == "```bash":
            found.append(heading)
    return found


def test_every_readme_bash_block_is_run_by_a_test():
    sections = _sections_of_bash_blocks(README)
    assert sections.count("## The two commands") == 3  # the main job, the test command, the other commands
    unrun = sorted({s for s in sections if s not in README_BASH})
    assert not unrun, f"README.md has bash blocks under {unrun} that no test runs; add them to a test"


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


def _test_commands(text: str) -> list[str]:
    """Every ``python -m pytest`` command line of the bash blocks of ``text``, comments removed."""
    lines = [line.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
             for line in block.splitlines()]
    return [line for line in lines if re.match(r"^([A-Z_][A-Z0-9_]*=\S+ )*python -m pytest\b", line)]


def test_the_contributing_guide_shows_the_test_commands():
    commands = _test_commands(CONTRIBUTING)
    assert len(commands) >= 6 and any(c.startswith("PORTABLE_RNN_BACKEND=") for c in commands), commands


@pytest.mark.soak
@pytest.mark.processes
@pytest.mark.parametrize("command", sorted(set(_test_commands(CONTRIBUTING) + _test_commands(README))))
def test_every_test_command_collects_tests_as_written(command):
    """Flags, backends, paths and ``-k`` of each command are valid: it collects at least one test.

    It runs in the checkout's root, where the guide's commands are typed.
    """
    argv = shlex.split(command)
    env = _env()
    while "=" in argv[0]:
        name, value = argv.pop(0).split("=", 1)
        env[name] = value
    assert argv[:3] == ["python", "-m", "pytest"], command
    result = subprocess.run([sys.executable, *argv[1:], "--collect-only", "-q"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
    assert re.search(r"^\d+(/\d+)? tests? collected", result.stdout.splitlines()[-1]), result.stdout[-2000:]


def test_the_ci_script_the_guide_names_exists():
    assert "bash .ci/run" in CONTRIBUTING and (ROOT / ".ci" / "run").is_file()


@pytest.mark.soak
@pytest.mark.processes
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
