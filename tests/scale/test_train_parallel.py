"""Data-parallel ``portable-rnn train``: 4 forced JAX host devices equal one device; bad parallel input.

Runs are tiny (hidden 8, batch 4, 20 steps). The JAX runs happen in a
subprocess (the device count is fixed when JAX starts). torchrun's two gloo
processes against one process are ``tests/scale/test_multiprocess.py``'s
(two nodes; one node of two processes runs the same code on a CPU, and the
how-to's ``torchrun --nproc-per-node 2`` command runs in ``tests/test_docs.py``).
Multi-host JAX (``--coordinator``) is checked here for its arguments; two
real processes run in ``tests/scale/test_multiprocess.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from portable_rnn.app import cli
from portable_rnn.app.checkpoint import load_checkpoint

TINY = ["--hidden", "8", "--embed", "4", "--seq-len", "8", "--batch", "4", "--progress", "none",
        "--sample-every", "0", "--steps", "20", "--val-every", "10", "--checkpoint-every", "10"]


def _layout(path):
    """Member names and shapes of a checkpoint file (what must not depend on how the run was split)."""
    ckpt = load_checkpoint(path)
    shapes = {f"params/{k}": v.shape for k, v in ckpt.params.items()}
    shapes.update({f"carry/{i}": v.shape for i, v in enumerate(ckpt.carry)})
    shapes.update({f"opt/{b}/{k}": v.shape for b in ("exp_avg", "exp_avg_sq") for k, v in ckpt.opt_state[b].items()})
    with zipfile.ZipFile(path) as archive:
        return sorted(archive.namelist()), shapes


def _history(folder):
    return json.loads((folder / "history.json").read_text())


JAX_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    from portable_rnn.app import cli
    assert len(jax.devices()) == 4, jax.devices()
    tiny, out = sys.argv[2:], sys.argv[1]
    for dtype, extra in (("float64", []), ("float32", ["--val-fraction", "0"])):  # float32: no held-out compile
        for devices in ([], ["--devices", "4", "--progress", "lines"]):
            name = f"{out}/{dtype}-{len(devices) and 4 or 1}"
            assert cli.main(["train", *tiny, *extra, "--backend", "jax", "--dtype", dtype, "--out", name,
                             *devices]) == 0
    assert cli.main(["train", *tiny, "--backend", "jax", "--batch", "6", "--devices", "4", "--out", out + "/x"]) == 2
""")


@pytest.mark.processes
def test_jax_on_four_devices_follows_the_one_device_loss_curve(tmp_path, capfd):
    pytest.importorskip("jax")
    script = tmp_path / "run.py"
    script.write_text(JAX_SCRIPT)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, str(script), str(tmp_path), *TINY], env=env, timeout=180,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--batch 6 does not split evenly over --devices 4" in result.stderr
    for dtype, rtol in (("float64", 1e-10), ("float32", 1e-5)):
        one, four = _history(tmp_path / f"{dtype}-1"), _history(tmp_path / f"{dtype}-4")
        assert len(one["loss"]) == 20
        np.testing.assert_allclose(four["loss"], one["loss"], rtol=rtol)
        np.testing.assert_allclose(four["val_loss"], one["val_loss"], rtol=rtol)
        assert len(four["val_loss"]) == (2 if dtype == "float64" else 0)
        assert _layout(tmp_path / f"{dtype}-4" / "checkpoint.npz") == _layout(tmp_path / f"{dtype}-1" / "checkpoint.npz")
    assert "data parallel over 4 devices" in result.stdout


BAD = {
    "devices-on-numpy": ([ "--devices", "2"], {}, "--devices is data parallel over JAX devices: it needs --backend jax"),
    "more-devices-than-jax-has": (["--backend", "jax", "--devices", "64"], {},
                                  "xla_force_host_platform_device_count=64"),
    "multi-host-flags-alone": (["--backend", "jax", "--coordinator", "127.0.0.1:1234"], {},
                               "--num-processes P and --process-id I together"),
    "bad-coordinator": (["--backend", "jax", "--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"],
                        {}, "--coordinator must be HOST:PORT"),
    "process-id-too-big": (["--backend", "jax", "--coordinator", "127.0.0.1:1234", "--num-processes", "2",
                            "--process-id", "2"], {}, "--process-id 2 is not below --num-processes 2"),
    "torchrun-with-numpy": ([], {"WORLD_SIZE": "2", "RANK": "0"}, "needs --backend torch"),
    "torchrun-uneven-batch": (["--backend", "torch", "--batch", "3"], {"WORLD_SIZE": "2", "RANK": "0"},
                              "--batch 3 does not split evenly over the 2 torchrun processes"),
    "torchrun-bad-rank": (["--backend", "torch"], {"WORLD_SIZE": "2", "RANK": "x"}, "RANK is 'x'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_parallel_input_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch):
    flags, environment, message = BAD[case]
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    argv = ["train", *TINY, "--out", str(tmp_path / "run"), *flags]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()
