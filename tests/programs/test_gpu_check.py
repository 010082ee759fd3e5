"""``.ci/gpu-check``, the one script a GPU machine runs: it parses, and the two switches it
relies on (``--matrix-only`` and ``PORTABLE_RNN_TORCH_DEVICE``) do what it expects on a CPU.

The script itself runs unchanged on a CPU (CONTRIBUTING.md); running it whole here would
repeat ``portable-rnn check``, which ``tests/programs/test_cli.py`` covers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "gpu-check"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.processes
def test_the_script_parses_and_refuses_a_call_without_an_output_folder():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True).returncode == 0
    bare = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, cwd=ROOT)
    assert bare.returncode != 0 and "usage: .ci/gpu-check OUT_DIR" in bare.stderr


@pytest.mark.processes
def test_matrix_only_keeps_the_backend_tests_and_a_cuda_device_without_cuda_skips_the_module_db(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA device here: the module_db checks would run instead of skipping")
    env = {**os.environ, "PORTABLE_RNN_TORCH_DEVICE": "cuda"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-rs", "-p", "no:cacheprovider", "--matrix-only",
         "--backend", "numpy", "tests/engine/test_linear_scan.py", "tests/faces/test_torch_module_db.py",
         f"--rootdir={ROOT}", f"--basetemp={tmp_path / 'pytest'}"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    ids = [line for line in run.stdout.splitlines() if "::" in line]
    assert ids and all("test_linear_scan.py::" in i and "numpy" in i for i in ids), ids
    # test_the_backward_is_the_gradient takes no backend: it is one of the deselected
    assert not any("test_the_backward_is_the_gradient" in i for i in ids)
    assert "deselected" in run.stdout
    assert "PORTABLE_RNN_TORCH_DEVICE=cuda but torch sees no CUDA device" in run.stdout
