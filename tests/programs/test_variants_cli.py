"""The character model and ``portable-rnn train`` with the layer variants and regularisers.

``--layer-norm``, ``--peephole``, ``--weight-drop``, ``--recurrent-dropout`` and ``--zoneout``
build the layer, are drawn per step in training only, are recorded by the checkpoint (an older
file without them is the plain layer) and are refused where the cell has no such option.
"""

from __future__ import annotations

import numpy as np
import pytest

from portable_rnn.app.checkpoint import load_checkpoint, save_checkpoint
from portable_rnn.app.cli import main
from portable_rnn.app.train import TrainConfig, train
from portable_rnn.model import VARIANTS, CharModel

FAST = dict(steps=6, hidden=16, seq_len=16, batch=4, val_every=0, sample_every=0, progress="none",
            checkpoint_every=3)


def test_the_char_model_draws_training_factors_and_evaluates_without_them():
    model = CharModel(11, 8, 2, "gru", layer_norm=True, weight_drop=0.3, recurrent_dropout=0.2, zoneout=0.1)
    assert model.rnn.layer_norm and model.rnn.zoneout == 0.1
    params = model.init(0, dtype="float64")
    tokens = np.random.default_rng(0).integers(0, 11, size=(3, 9))
    masks = model.training_masks(4, params, 3, 9)
    assert sorted(masks) == ["recurrent_masks", "weight_masks", "zoneout_masks"]
    assert masks["zoneout_masks"][0].shape == (2, 9, 3, 8)
    assert model.training_masks(4, params, 3, 9)["recurrent_masks"].tolist() == masks["recurrent_masks"].tolist()
    trained, _, _ = model.loss_and_grads(params, tokens, tokens, masks=masks)
    evaluated, _, _ = model.loss_and_grads(params, tokens, tokens)
    assert trained != evaluated
    assert CharModel(11, 8).training_masks(4, CharModel(11, 8).init(0), 3, 9) == {}
    with pytest.raises(ValueError, match="mode 'gru' has no peephole"):
        CharModel(11, 8, mode="gru", peephole=True)
    with pytest.raises(ValueError, match="mode 'minlstm' has no layer_norm, zoneout"):
        CharModel(11, 8, mode="minlstm", layer_norm=True, zoneout=0.5)


def test_train_records_the_variants_and_resume_keeps_them(tmp_path):
    out = tmp_path / "run"
    first = train(TrainConfig(out=str(out), cell="lstm", layer_norm=True, peephole=None, zoneout=0.1,
                              recurrent_dropout=0.2, weight_drop=0.2, **{**FAST, "steps": 3}))
    assert first.status == 0
    ckpt = load_checkpoint(out)
    assert ckpt.model == CharModel(ckpt.model.vocab_size, 16, 1, "lstm", 32, layer_norm=True, zoneout=0.1,
                                   recurrent_dropout=0.2, weight_drop=0.2)
    assert {k: ckpt.meta["train"][k] for k in VARIANTS} == {**VARIANTS, "layer_norm": True, "zoneout": 0.1,
                                                            "recurrent_dropout": 0.2, "weight_drop": 0.2}
    resumed = train(TrainConfig(out=str(out), resume=True, **FAST))
    assert resumed.status == 0 and all(np.isfinite(resumed.losses))
    uninterrupted = train(TrainConfig(out=str(tmp_path / "again"), cell="lstm", layer_norm=True, zoneout=0.1,
                                      recurrent_dropout=0.2, weight_drop=0.2, **FAST))
    np.testing.assert_allclose(resumed.losses[-3:], uninterrupted.losses[-3:], rtol=1e-5)  # the same factors


def test_a_checkpoint_without_the_variants_is_the_plain_layer(tmp_path):
    out = tmp_path / "run"
    assert train(TrainConfig(out=str(out), cell="gru", **{**FAST, "steps": 3})).status == 0
    ckpt = load_checkpoint(out)
    for part in ("model", "train"):
        for name in VARIANTS:
            del ckpt.meta[part][name]
    save_checkpoint(out / "checkpoint.npz", ckpt)
    older = load_checkpoint(out)
    assert older.model == CharModel(older.model.vocab_size, 16, 1, "gru", 32)
    assert train(TrainConfig(out=str(out), resume=True, **FAST)).status == 0


def test_the_command_line_refuses_a_flag_the_cell_has_not(tmp_path, capsys):
    assert main(["train", "--cell", "gru", "--peephole", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip() == "portable-rnn train: error: --cell gru: mode 'gru' has no peephole"
    assert main(["train", "--zoneout", "1", "--out", str(tmp_path / "b")]) == 2
    assert "--zoneout: expected a number in [0, 1), got '1'" in capsys.readouterr().err
    out = tmp_path / "c"
    assert main(["train", "--cell", "rnn", "--recurrent-dropout", "0.1", "--steps", "2", "--hidden", "8",
                 "--seq-len", "8", "--batch", "2", "--val-every", "0", "--sample-every", "0", "--progress", "lines",
                 "--out", str(out)]) == 0
    assert "training RNN (--recurrent-dropout 0.1, hidden 8" in capsys.readouterr().out
    assert main(["train", "--resume", "--zoneout", "0.2", "--out", str(out)]) == 2
    assert "the checkpoint was trained with --zoneout 0.0, not 0.2" in capsys.readouterr().err
