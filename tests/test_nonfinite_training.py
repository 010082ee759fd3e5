"""A training run that turns non-finite stops with one line and keeps the last good checkpoint."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from portable_rnn.app import cli
from portable_rnn.app.checkpoint import load_checkpoint
from portable_rnn.model import CharModel


def test_a_nan_loss_stops_the_run_and_keeps_the_good_checkpoint(tmp_path, monkeypatch, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "run"
    real = CharModel.loss_and_grads
    calls = {"n": 0}

    def poisoned(self, params, *args, **kwargs):
        calls["n"] += 1
        loss, grads, state = real(self, params, *args, **kwargs)
        if calls["n"] > 25:  # from step 26 on, as an exploding run would
            loss, grads = loss * float("nan"), {k: g * float("nan") for k, g in grads.items()}
        return loss, grads, state

    monkeypatch.setattr(CharModel, "loss_and_grads", poisoned)
    argv = ["train", "--text", str(text), "--out", str(out), "--steps", "60", "--hidden", "8",
            "--batch", "4", "--seq-len", "8", "--checkpoint-every", "20", "--sample-every", "0",
            "--progress", "none"]
    status = cli.main(argv)
    captured = capsys.readouterr()
    assert status == 2
    error_lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(error_lines) == 1 and "not finite" in error_lines[0], captured.err
    ckpt = load_checkpoint(out / "checkpoint.npz")
    assert ckpt.meta["step"] == 20
    assert all(np.isfinite(p).all() for p in ckpt.params.values())
    digest = hashlib.sha256((out / "checkpoint.npz").read_bytes()).hexdigest()
    assert cli.main(argv[:1] + ["--resume"] + argv[1:]) == 2  # resuming meets the same NaN again
    assert hashlib.sha256((out / "checkpoint.npz").read_bytes()).hexdigest() == digest
