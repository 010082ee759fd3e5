"""``portable-rnn score``: bits per character on a 2-worker Dask cluster equal a one-process computation.

The checkpoint is tiny (hidden 8, float64), so that the Dask figure and the
independent one-process computation (one window at a time, log-softmax in
float64 on the host) agree to rounding. Clusters listen on 127.0.0.1 only;
every file is under ``tmp_path``.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from portable_rnn.app import cli, report, score
from portable_rnn.app.checkpoint import load_checkpoint
from portable_rnn.app.corpus import default_corpus

distributed = pytest.importorskip("distributed")

TINY = ["--hidden", "8", "--embed", "4", "--seq-len", "8", "--batch", "4", "--dtype", "float64",
        "--progress", "none", "--sample-every", "0", "--steps", "3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained checkpoint's folder and two texts in its vocabulary (a full last window and a short one)."""
    folder = tmp_path_factory.mktemp("score")
    assert cli.main(["train", *TINY, "--out", str(folder / "run")]) == 0
    text = default_corpus()
    (folder / "a.txt").write_text(text[:401], encoding="utf-8")  # 400 predictions: 50 full windows of 8
    (folder / "b.txt").write_text(text[1000:1130], encoding="utf-8")  # 129: 16 full windows and 1 of 1
    return folder


def _one_process_nll(model, params, tokens, seq_len):
    """Summed nats of independent windows, one window at a time: the reference the Dask figure must equal."""
    total = 0.0
    for start in range(0, len(tokens) - 1, seq_len):
        stop = min(start + seq_len, len(tokens) - 1)
        logits, _ = model.forward(params, np.asarray(tokens[None, start:stop], dtype=np.int32))
        z = np.asarray(logits, dtype=np.float64)[0]
        log_norm = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
        total += float(np.sum(log_norm - z[np.arange(stop - start), tokens[start + 1:stop + 1]]))
    return total


@pytest.mark.parametrize("n, seq_len", [(2, 8), (9, 8), (10, 8), (130, 8), (130, 1), (5, 64)])
def test_the_windows_hold_every_prediction_once(n, seq_len):
    tokens = np.arange(n)
    pairs = score.windows(tokens, seq_len)
    inputs = np.concatenate([x.ravel() for x, _ in pairs])
    targets = np.concatenate([y.ravel() for _, y in pairs])
    np.testing.assert_array_equal(inputs, tokens[:-1])
    np.testing.assert_array_equal(targets, tokens[1:])
    assert all(x.shape[1] <= seq_len for x, _ in pairs)


@pytest.mark.processes
def test_score_on_a_local_cluster_equals_one_process(run, capsys, monkeypatch):
    ckpt = load_checkpoint(run / "run" / "best.npz")
    files = [str(run / "a.txt"), str(run / "b.txt")]
    returned = []  # what the command's run_score returned: its figures unrounded, from the same cluster
    monkeypatch.setattr(cli, "run_score", lambda *a, **k: returned.append(score.run_score(*a, **k)) or returned[-1])
    assert cli.main(["score", str(run / "run"), *files, "--workers", "2", "--chunk-size", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "a local cluster of 2 worker" in lines[0] and len(lines) == 4
    (got,) = returned
    nats = [_one_process_nll(ckpt.model, ckpt.params, ckpt.vocab.encode(open(f).read()), 8) for f in files]
    for (name, bits, count), expected, f in zip(got["files"], nats, files):
        assert name == f and count == len(open(f).read()) - 1
        assert bits == pytest.approx(expected / count / math.log(2), rel=1e-12, abs=0)
    assert got["overall"] == pytest.approx(sum(nats) / (400 + 129) / math.log(2), rel=1e-12, abs=0)
    assert f"{got['overall']:.4f} bits per character (529 predictions)" in lines[3]


@pytest.mark.processes
def test_score_on_an_existing_scheduler(run, capsys, monkeypatch):
    """With ``--progress lines``, a line on stderr for every block of windows done (every 0 s here)."""
    monkeypatch.setattr(report, "PROGRESS_EVERY_S", 0.0)
    files = [str(run / "b.txt")]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        got = score.run_score(run / "run", files, scheduler=cluster.scheduler_address, seq_len=5, chunk_size=4,
                              progress="lines")
    ckpt = load_checkpoint(run / "run" / "best.npz")
    expected = _one_process_nll(ckpt.model, ckpt.params, ckpt.vocab.encode(open(files[0]).read()), 5)
    assert got["overall"] == pytest.approx(expected / 129 / math.log(2), rel=1e-12, abs=0)
    captured = capsys.readouterr()
    assert cluster.scheduler_address in captured.out
    # 129 predictions: 25 windows of 5 in blocks of 4 (7 blocks), then 1 window of 4 (1 block)
    assert captured.err.splitlines() == [f"{k}/8 blocks ({100 * k / 8:.0f}%), " + line.rsplit(", ", 1)[1]
                                         for k, line in enumerate(captured.err.splitlines(), start=1)]


@pytest.mark.processes
def test_score_runs_on_the_backend_and_device_given(run, capsys):
    """``--backend``/``--device`` as for ``eval``: array-api-strict's second device, in the workers too."""
    pytest.importorskip("array_api_strict")
    files = [str(run / "b.txt")]
    assert cli.main(["score", str(run / "run"), *files, "--workers", "1", "--chunk-size", "5",
                     "--backend", "array_api_strict", "--device", "device1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "(array_api_strict:device1 on array_api_strict.Device('device1'))" in lines[0]
    ckpt = load_checkpoint(run / "run" / "best.npz")
    expected = _one_process_nll(ckpt.model, ckpt.params, ckpt.vocab.encode(open(files[0]).read()), 8)
    assert f"{expected / 129 / math.log(2):.4f} bits per character (129 predictions)" in lines[-1]


def test_a_block_runs_on_the_backend_it_is_given(run, monkeypatch):
    """The task itself moves the block to the backend (not only the figure agrees): it asks for that backend."""
    pytest.importorskip("array_api_strict")
    asked = []
    resolve = score.backends.resolve
    monkeypatch.setattr(score.backends, "resolve", lambda name, device=None: asked.append((name, device))
                        or resolve(name, device))
    score._forward_on.cache_clear()
    ckpt = load_checkpoint(run / "run" / "best.npz")
    x, y = score.windows(ckpt.vocab.encode(open(run / "b.txt").read()), 8)[0]
    got = score._block_nll(ckpt.model, ckpt.params, "array_api_strict", "device1", x, y)
    score._forward_on.cache_clear()
    assert asked == [("array_api_strict", "device1")]
    assert got.shape == (1,) and got.dtype == np.float64
    expected = sum(_one_process_nll(ckpt.model, ckpt.params, np.concatenate([row, last[-1:]]), 8)
                   for row, last in zip(x, y))
    assert got[0] == pytest.approx(expected, rel=1e-12, abs=0)


def _error_line(capsys, argv):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    return captured.err


def test_bad_input_is_one_line_and_exit_2(run, capsys, monkeypatch):
    ckpt, good = str(run / "run"), str(run / "a.txt")
    (run / "alien.txt").write_text("ab\u2603", encoding="utf-8")
    (run / "one.txt").write_text("a", encoding="utf-8")
    assert "x.txt' does not exist" in _error_line(capsys, ["score", ckpt, str(run / "x.txt")])
    assert "alien.txt" in _error_line(capsys, ["score", ckpt, str(run / "alien.txt")])
    assert "needs at least 2" in _error_line(capsys, ["score", ckpt, str(run / "one.txt")])
    assert "checkpoint" in _error_line(capsys, ["score", str(run / "a.txt"), good])
    assert "--workers" in _error_line(capsys, ["score", ckpt, good, "--scheduler", "tcp://127.0.0.1:1",
                                               "--workers", "2"])
    assert "positive integer" in _error_line(capsys, ["score", ckpt, good, "--chunk-size", "0"])
    assert "numpy runs on the CPU only" in _error_line(capsys, ["score", ckpt, good, "--device", "cuda"])
    assert "--backend" in _error_line(capsys, ["score", ckpt, good, "--backend", "nope"])
    assert "device9" in _error_line(capsys, ["score", ckpt, good, "--backend", "array_api_strict",
                                             "--device", "device9"])
    monkeypatch.setattr(score, "CONNECT_TIMEOUT_S", 1)
    assert "cannot reach the Dask scheduler" in _error_line(capsys, ["score", ckpt, good, "--scheduler",
                                                                     "tcp://127.0.0.1:1"])


def test_without_dask_it_names_the_extra(run, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    err = _error_line(capsys, ["score", str(run / "run"), str(run / "a.txt")])
    assert "pip install 'portable-rnn[dask]'" in err
