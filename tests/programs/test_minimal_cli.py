"""``portable-rnn train --cell mingru | minlstm``: the minimal RNNs through train, resume, sample and eval.

Every run is tiny (hidden 8, windows of 8 characters, a few steps) and goes through
:func:`portable_rnn.app.cli.main` in this process, in an empty folder of its own, with
every path under ``tmp_path``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from portable_rnn import MinGRU, MinLSTM
from portable_rnn.app import cli
from portable_rnn.app.checkpoint import load_checkpoint
from portable_rnn.app.train import HISTORY

TINY = ["--hidden", "8", "--embed", "4", "--seq-len", "8", "--batch", "4", "--progress", "lines", "--log-every", "100",
        "--sample-every", "0", "--checkpoint-every", "2", "--val-every", "0"]


@pytest.fixture(autouse=True)
def _in_an_empty_folder(tmp_path_factory, monkeypatch):
    """Run each test in a fresh empty working directory, so no default path reaches the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def test_help_lists_the_minimal_cells_and_an_unknown_cell_is_one_line_with_exit_2(capsys, tmp_path):
    assert cli.main(["train", "--help"]) == 0
    assert "--cell {rnn,lstm,gru,mingru,minlstm}" in capsys.readouterr().out
    assert cli.main(["train", "--cell", "mingru2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'mingru2'" in err and "'minlstm'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("cell, library, extra", [
    ("mingru", "numpy", []),
    ("minlstm", "torch", ["--truncate", "3", "--retain", "checkpoint"]),
])
def test_train_resume_sample_and_eval_with_a_minimal_cell(capsys, tmp_path, cell, library, extra):
    """A run stopped at step 3 and resumed to 6 follows the straight run's loss curve (the carried
    state is the layer's one array); its checkpoint holds the layer's parameters only; sample and
    eval read it, sample reproducibly."""
    if library == "torch":
        pytest.importorskip("torch", reason="torch is not installed")
    straight, split = tmp_path / "straight", tmp_path / "split"

    def train(out, steps, *more):
        rc = cli.main(["train", *TINY, "--cell", cell, "--backend", library, *extra, "--steps", str(steps),
                       "--out", str(out), *more])
        return rc, capsys.readouterr()

    rc, captured = train(straight, 6)
    assert rc == 0, captured.err
    assert f"training {cell.upper()} (hidden 8" in captured.out
    assert train(split, 3)[0] == 0
    assert train(split, 6, "--resume")[0] == 0
    curves = [json.loads((out / HISTORY).read_text()) for out in (straight, split)]
    assert curves[0]["step"] == curves[1]["step"] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(curves[1]["loss"], curves[0]["loss"], rtol=1e-5)

    ckpt = load_checkpoint(split)
    assert ckpt.model.mode == cell and ckpt.meta["train"]["cell"] == cell and ckpt.meta["step"] == 6
    assert isinstance(ckpt.model.rnn, {"mingru": MinGRU, "minlstm": MinLSTM}[cell])
    assert list(ckpt.params) == list(ckpt.model.param_shapes())
    assert not any("weight_hh" in name for name in ckpt.params)
    assert len(ckpt.carry) == 1 and ckpt.carry[0].shape == (1, 4, 8)

    args = ["sample", str(split), "--prime", "Shall I", "--length", "30", "--seed", "3"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert cli.main([*args, "--backend", library]) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("Shall I") and len(first.rstrip("\n")) >= len("Shall I") + 25
    assert cli.main(["eval", str(split), "--progress", "none"]) == 0
    assert "bits per character" in capsys.readouterr().out
