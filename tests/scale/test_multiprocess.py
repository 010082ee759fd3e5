"""Scaling out for real on one machine: every process a separate program, talking over 127.0.0.1.

- JAX on two processes (``--coordinator``, one CPU device each, Gloo
  collectives) follows the loss curve of one process with two forced host
  devices, across a ``--resume``, to 1e-10 in float64, and writes the same
  checkpoints; killing one process ends the other with one line, in bounded
  time.
- torch on two nodes (``torchrun --nnodes 2``, one process per node, gloo,
  c10d rendezvous) follows one process's loss curve.
- ``portable-rnn score`` against a separately started ``dask scheduler`` and
  ``dask worker --nworkers 2`` equals the one-process figure.

Every port is a free one found by binding to port 0; every program runs in
its own session and is killed with its group when the test ends, fails or
passes its deadline. Runs are tiny (hidden 8, a 3,000-character text, 150 of it held out). What
one machine cannot prove (hosts that reach each other, a file system they
share) is said in the README's "Scaling out".
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from portable_rnn.app import cli, score
from portable_rnn.app.checkpoint import load_checkpoint
from portable_rnn.app.corpus import default_corpus

pytestmark = pytest.mark.processes  # every test here starts processes

#: Seconds a group of programs may run before the test kills them and fails.
DEADLINE_S = 120

TINY = ["--hidden", "8", "--embed", "4", "--seq-len", "8", "--batch", "4", "--dtype", "float64",
        "--val-fraction", "0.05", "--sample-every", "0", "--progress", "none"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(**extra) -> dict:
    """A child's environment: this interpreter's import path, JAX on the CPU, one thread per library."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1",
                PYTHONUNBUFFERED="1", **extra)


def _cli(*argv) -> list:
    return [sys.executable, "-m", "portable_rnn", *argv]


def _kill(procs) -> None:
    """Kill the process groups still running (each program started its own session)."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def _started(argvs, env, folder, name):
    """Start the programs ``argvs`` (logs ``folder/name-i.out|err``); yields ``(procs, logs)``; kills what is left."""
    procs, logs = [], []
    try:
        for i, argv in enumerate(argvs):
            out, err = folder / f"{name}-{i}.out", folder / f"{name}-{i}.err"
            with open(out, "w") as o, open(err, "w") as e:
                procs.append(subprocess.Popen(argv, env=env, stdout=o, stderr=e, start_new_session=True,
                                              cwd=folder))
            logs.append((out, err))
        yield procs, logs
    finally:
        _kill(procs)


def _finish(procs, logs, deadline_s=DEADLINE_S):
    """Wait for every program (all of them killed past the deadline); exit statuses and (stdout, stderr) texts."""
    deadline = time.monotonic() + deadline_s
    try:
        statuses = [proc.wait(timeout=max(deadline - time.monotonic(), 0.1)) for proc in procs]
    finally:
        _kill(procs)
    return statuses, [(out.read_text(), err.read_text()) for out, err in logs]


def _history(folder):
    return json.loads((folder / "history.json").read_text())


def _assert_same_checkpoint(got, expected) -> None:
    """The same members; parameters, Adam's moments and the carried state equal (float64, 1e-10); the same step
    and history."""
    with zipfile.ZipFile(got) as x, zipfile.ZipFile(expected) as y:
        assert sorted(x.namelist()) == sorted(y.namelist())
    a, b = load_checkpoint(got), load_checkpoint(expected)
    assert a.meta["step"] == b.meta["step"] and a.meta["history"]["step"] == b.meta["history"]["step"]
    pairs = [(a.params, b.params)] + [(a.opt_state[m], b.opt_state[m]) for m in ("exp_avg", "exp_avg_sq")]
    for x, y in pairs:
        assert x.keys() == y.keys()
        for key in y:
            np.testing.assert_allclose(x[key], y[key], rtol=1e-10, atol=1e-14, err_msg=key)
    for x, y in zip(a.carry, b.carry, strict=True):  # gathered back into the global batch
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-14)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """The text every run here trains on: the first 3,000 characters of the default corpus."""
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(default_corpus()[:3000], encoding="utf-8")
    return path


# --------------------------------------------------------------------------- JAX


def _jax_processes(text, out, *flags) -> list:
    """The two command lines of a two-process JAX run into ``out``, on a fresh coordinator port."""
    coordinator = f"127.0.0.1:{_free_port()}"
    return [_cli("train", "--text", str(text), *TINY, *flags, "--backend", "jax", "--out", str(out),
                 "--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i)) for i in (0, 1)]


def test_jax_on_two_processes_equals_one_process_on_two_devices(tmp_path, text):
    """Steps 0->4, then ``--resume`` to 8 in two processes; one process on two devices runs 0->8 beside them."""
    pytest.importorskip("jax")
    schedule = ["--val-every", "4", "--checkpoint-every", "4", "--log-every", "4", "--progress", "lines"]
    one = _cli("train", "--text", str(text), *TINY, *schedule, "--steps", "8", "--backend", "jax", "--devices", "2",
               "--out", str(tmp_path / "one"))
    with _started([one], _environment(XLA_FLAGS="--xla_force_host_platform_device_count=2"), tmp_path,
                  "one") as (one_procs, one_logs):
        with _started(_jax_processes(text, tmp_path / "two", *schedule, "--steps", "4"), _environment(), tmp_path,
                      "first") as started:
            statuses, [(out0, err0), (out1, err1)] = _finish(*started)
        assert statuses == [0, 0], (err0[-3000:], err1[-3000:])
        assert "data parallel over 2 devices; steps 0->4" in out0 and "done: steps 0->4" in out0
        assert "done:" not in out1 and not err1.strip(), err1  # process 1 neither prints nor complains
        with _started(_jax_processes(text, tmp_path / "two", *schedule, "--steps", "8", "--resume"),
                      _environment(), tmp_path, "resumed") as started:
            statuses, [(out0, err0), (out1, err1)] = _finish(*started)
        assert statuses == [0, 0], (err0[-3000:], err1[-3000:])
        assert "done: steps 4->8" in out0 and "done:" not in out1
        statuses, [(_, err)] = _finish(one_procs, one_logs)
        assert statuses == [0], err[-3000:]
    one_h, two_h = _history(tmp_path / "one"), _history(tmp_path / "two")
    assert one_h["step"] == two_h["step"] == list(range(1, 9)) and two_h["val_step"] == [4, 8]
    np.testing.assert_allclose(two_h["loss"], one_h["loss"], rtol=1e-10, atol=0)
    np.testing.assert_allclose(two_h["val_loss"], one_h["val_loss"], rtol=1e-10, atol=0)
    _assert_same_checkpoint(tmp_path / "two" / "checkpoint.npz", tmp_path / "one" / "checkpoint.npz")
    _assert_same_checkpoint(tmp_path / "two" / "best.npz", tmp_path / "one" / "best.npz")


def test_killing_one_jax_process_ends_the_other_with_one_line(tmp_path, text):
    """Process 1 is killed once process 0 has written a checkpoint (both are stepping); process 0 stops at once."""
    pytest.importorskip("jax")
    out = tmp_path / "run"
    argvs = _jax_processes(text, out, "--steps", "100000", "--val-every", "0", "--checkpoint-every", "5")
    with _started(argvs, _environment(), tmp_path, "killed") as (procs, logs):
        deadline = time.monotonic() + DEADLINE_S
        while not (out / "checkpoint.npz").exists():
            assert all(proc.poll() is None for proc in procs), [e.read_text()[-2000:] for _, e in logs]
            assert time.monotonic() < deadline, "no checkpoint before the deadline"
            time.sleep(0.1)
        os.killpg(procs[1].pid, signal.SIGKILL)
        killed = time.monotonic()
        statuses, [(_, err), _] = _finish(procs, logs, deadline_s=30)
    assert time.monotonic() - killed < 30
    assert statuses[0] == 2, err[-3000:]
    assert err.count("\n") == 1, err[-3000:]
    assert err.startswith("portable-rnn train: error: process 0 of 2 stopped: another process failed"), err


# --------------------------------------------------------------------------- torch


def test_torchrun_on_two_nodes_follows_the_one_process_loss_curve(tmp_path, text):
    pytest.importorskip("torch")
    common = ["--text", str(text), *TINY, "--steps", "8", "--val-every", "4", "--backend", "torch"]
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
              "--node-rank", str(rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "prnn",
              "--max-restarts", "0", "-m", "portable_rnn", "train", *common, "--progress", "lines",
              "--out", str(tmp_path / "two")] for rank in (0, 1)]
    with _started(nodes, _environment(), tmp_path, "node") as started:
        assert cli.main(["train", *common, "--out", str(tmp_path / "one")]) == 0  # beside the two nodes
        statuses, logs = _finish(*started)
    assert statuses == [0, 0], [err[-3000:] for _, err in logs]
    outs = "".join(out for out, _ in logs)
    assert outs.count("data parallel over 2 torch processes") == 1 and outs.count("done: steps 0->8") == 1
    one, two = _history(tmp_path / "one"), _history(tmp_path / "two")
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-10, atol=0)
    np.testing.assert_allclose(two["val_loss"], one["val_loss"], rtol=1e-10, atol=0)
    _assert_same_checkpoint(tmp_path / "two" / "checkpoint.npz", tmp_path / "one" / "checkpoint.npz")


# --------------------------------------------------------------------------- Dask


def test_score_on_a_separately_started_dask_cluster_equals_one_process(tmp_path, text, capsys):
    pytest.importorskip("distributed")
    from tests.programs.test_score import _one_process_nll

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    cluster = [[*dask, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
               [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "2", "--nthreads", "1",
                "--host", "127.0.0.1", "--no-dashboard"]]
    with _started(cluster, _environment(), tmp_path, "dask") as (procs, logs):
        assert cli.main(["train", "--text", str(text), *TINY, "--steps", "3", "--out", str(tmp_path / "run")]) == 0
        files = [tmp_path / "a.txt", tmp_path / "b.txt"]
        files[0].write_text(text.read_text()[:401], encoding="utf-8")
        files[1].write_text(text.read_text()[1000:1130], encoding="utf-8")
        capsys.readouterr()
        status = cli.main(["score", str(tmp_path / "run"), *map(str, files), "--scheduler", address,
                           "--chunk-size", "7", "--progress", "none"])
        assert status == 0, capsys.readouterr().err
        got = score.run_score(tmp_path / "run", files, scheduler=address, chunk_size=7, progress="none")
        assert all(proc.poll() is None for proc in procs), [e.read_text()[-2000:] for _, e in logs]
    lines = capsys.readouterr().out.splitlines()
    assert address in lines[0]
    ckpt = load_checkpoint(tmp_path / "run" / "best.npz")
    nats = [_one_process_nll(ckpt.model, ckpt.params, ckpt.vocab.encode(f.read_text()), 8) for f in files]
    for (name, bits, count), expected, f in zip(got["files"], nats, files, strict=True):
        assert name == str(f) and bits == pytest.approx(expected / count / math.log(2), rel=1e-12, abs=0)
    assert got["overall"] == pytest.approx(sum(nats) / (400 + 129) / math.log(2), rel=1e-12, abs=0)
    assert f"{got['overall']:.4f} bits per character (529 predictions)" in lines[-1], lines
