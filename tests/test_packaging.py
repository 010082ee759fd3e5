"""What ``pip install portable-rnn`` gives a new user: the sdist and wheel build, and the wheel alone runs.

A copy of the source tree is built with ``python -m build`` (the sdist, then
the wheel from the sdist, as PyPI's users and packagers get them), the wheel
is installed into a fresh virtual environment that does not see this one's
packages (its dependencies come from the package index, or from
``PIP_FIND_LINKS`` when that is set), and the installed command runs
``--version`` and a short training run. Everything is written under
``tmp_path`` (``TMPDIR`` and pip's cache included). It downloads and builds,
about a minute, so it runs with ``--soak``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from portable_rnn._version import __version__

ROOT = Path(__file__).resolve().parent.parent
#: What the sdist must carry so that its test suite runs from the unpacked archive.
SDIST_TEST_FILES = ("conftest.py", "tests/__init__.py", "tests/helpers.py", "tests/reference.py")
#: Not part of the source: local environments, caches and build outputs.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "venv", "runs", "build", "dist", "*.egg-info", "__pycache__",
                                    ".mypy_cache", ".hypothesis", ".pytest_cache")


def _run(argv, *, cwd, env, timeout=900):
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, argv))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.soak
@pytest.mark.processes
def test_the_wheel_alone_installs_and_runs_and_the_sdist_carries_the_tests(tmp_path):
    if importlib.util.find_spec("build") is None:
        pytest.skip("the build package is not installed (it is in the test extra)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    (tmp_path / "tmp").mkdir()
    env.update(TMPDIR=str(tmp_path / "tmp"), PIP_CACHE_DIR=str(tmp_path / "pip-cache"),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    source, dist = tmp_path / "source", tmp_path / "dist"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    _run([sys.executable, "-m", "build", "--outdir", dist, source], cwd=tmp_path, env=env)

    sdist, = dist.glob("portable_rnn-*.tar.gz")
    wheel, = dist.glob("portable_rnn-*.whl")
    assert sdist.name == f"portable_rnn-{__version__}.tar.gz" and wheel.name.startswith(f"portable_rnn-{__version__}-")
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert not [f for f in SDIST_TEST_FILES if f not in members], sorted(members)
    with zipfile.ZipFile(wheel) as archive:
        files = set(archive.namelist())
    assert {"portable_rnn/py.typed", "portable_rnn/data/sonnets.txt"} <= files
    assert not [f for f in files if f.startswith(("tests/", "conftest"))]

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    _run([python, "-m", "pip", "install", "--quiet", wheel], cwd=tmp_path, env=env)

    where = _run([python, "-c", "import portable_rnn; print(portable_rnn.__file__)"], cwd=tmp_path, env=env)
    assert Path(where.strip()).resolve().is_relative_to(env_dir.resolve()), where
    command = bin_dir / "portable-rnn"
    assert _run([command, "--version"], cwd=tmp_path, env=env).split() == ["portable-rnn", __version__]
    out = tmp_path / "run"
    _run([command, "train", "--steps", "20", "--out", out], cwd=tmp_path, env=env)
    assert (out / "checkpoint.npz").is_file()
