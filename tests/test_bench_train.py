"""portable-rnn bench --train: the same training job, our trainer against a torch.nn + torch.optim loop."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("torch")

from portable_rnn.app.bench.training import run_training_bench  # noqa: E402


def test_same_held_out_loss_as_the_torch_loop_after_the_same_steps():
    out = io.StringIO()
    report = run_training_bench(steps=3, backend_names=["numpy"], out=out)
    ours, torch_loop = report["portable_rnn (numpy)"], report["torch.nn + torch.optim"]
    assert abs(ours["val_loss"] - torch_loop["val_loss"]) < 1e-4  # same maths, float32 noise
    for entry in report.values():
        assert entry["chars_per_s"] > 0 and entry["val_bits_per_char"] > 0
    assert "x torch" in out.getvalue()
