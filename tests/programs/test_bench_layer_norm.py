"""``portable-rnn bench --layer-norm``: every contender computes the same gradients, and the report says so."""

from __future__ import annotations

import json

import pytest

from portable_rnn.app.cli import main

pytest.importorskip("torch", reason="torch: not installed, needed for the eager reference")
pytest.importorskip("jax", reason="jax: not installed, needed for the lax.scan reference")


def test_every_contender_runs_with_the_same_gradients_and_the_json_records_them(tmp_path, capsys):
    path = tmp_path / "ln.json"
    assert main(["bench", "--layer-norm", "--configs", "3x5x4x6", "--repeats", "1", "--threads", "1", "--settle", "0",
                 "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["schema"] == "portable_rnn.bench.layer_norm/1"
    assert report["config"] == {"N": 3, "T": 5, "D": 4, "H": 6, "dtype": "float32"}
    assert set(report["contenders"]) == {"portable_rnn numpy", "portable_rnn torch", "portable_rnn jax",
                                         "torch eager + autograd", "jax.grad of lax.scan"}
    for name, entry in report["contenders"].items():
        assert entry["max_rel_grad_diff"] < 1e-5, name
        assert entry["median_s"] > 0 and len(entry["times_s"]) >= 1
    printed = capsys.readouterr().out
    assert "layer-normalised LSTM, forward + backward, N=3 T=5 D=4 H=6 float32" in printed
    assert main(["bench", "--layer-norm", "--train"]) == 2
