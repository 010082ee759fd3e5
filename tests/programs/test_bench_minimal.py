"""``portable-rnn bench --minimal``: every contender of the same maths computes the same gradients."""

from __future__ import annotations

import json

import pytest

from portable_rnn.app.cli import main

pytest.importorskip("torch", reason="torch: not installed, needed for the log-space reference")
pytest.importorskip("jax", reason="jax: not installed, needed for the associative_scan reference")


def test_every_contender_runs_and_the_same_maths_has_the_same_gradients(tmp_path, capsys):
    path = tmp_path / "minimal.json"
    assert main(["bench", "--minimal", "--minimal-lengths", "9", "--minimal-hidden", "4", "--repeats", "1",
                 "--settle", "0", "--threads", "1", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["schema"] == "portable_rnn.bench.minimal/1"
    rows = report["rows"]
    assert {(r["T"], r["H"]) for r in rows} == {(9, 4)}
    names = {r["contender"] for r in rows}
    for cell in ("mingru", "minlstm"):
        assert {f"{cell} parallel (numpy)", f"{cell} sequential (numpy)", f"{cell} parallel (jax)",
                f"{cell} sequential (jax)", f"{cell} jax.lax.associative_scan"} <= names
    assert {"mingru log-space (torch eager)", "gru (numpy)", "lstm (numpy)"} <= names
    for r in rows:
        assert r["median_s"] > 0
        if r["contender"].startswith("min") and "log-space" not in r["contender"]:
            assert r["max_rel_grad_diff"] < 1e-5, r
        else:  # another model, or another cell: timed only
            assert r["max_rel_grad_diff"] is None, r
        if "(numpy)" in r["contender"]:
            assert r["peak_bytes"] > 0, r
    assert "minimal RNNs, forward + backward, N=16 D=H=4 T=9 float32" in capsys.readouterr().out
    assert main(["bench", "--minimal-lengths", "9"]) == 2
