"""The held-out loss: its value against an independent computation, best.npz, eval, resume and the metadata.

Runs are tiny (hidden 8, windows of 8 characters) in float64, so that the
held-out loss and its independent computation agree to rounding. Every test
writes only under its ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from portable_rnn import backends
from portable_rnn.app import cli, report
from portable_rnn.app.checkpoint import (BEST, CHECKPOINT, CheckpointError, NonFiniteError, load_checkpoint,
                                         save_checkpoint)
from portable_rnn.app.corpus import default_corpus, split_text
from portable_rnn.app.eval import LN2, evaluate_checkpoint, mean_loss, stream_layout
from portable_rnn.app.train import HISTORY
from portable_rnn.model import CharModel

TINY = ["--hidden", "8", "--embed", "4", "--seq-len", "8", "--batch", "4", "--dtype", "float64",
        "--progress", "none", "--sample-every", "0"]


def _train(out, *extra, steps=6):
    assert cli.main(["train", *TINY, "--steps", str(steps), "--out", str(out), *extra]) == 0
    return json.loads((out / HISTORY).read_text())


def _direct_loss(model, params, tokens, batch):
    """Nats per character one token at a time with ``CharModel.step`` (no windows, no padding): the reference."""
    rows, length = stream_layout(len(tokens), batch)
    total, count = 0.0, 0
    for r in range(rows):
        stream = tokens[r * length: min((r + 1) * length, len(tokens) - 1) + 1]
        state = model.init_state(params, 1)
        for t in range(len(stream) - 1):
            logits, state = model.step(params, np.asarray(stream[t:t + 1], dtype=np.int32), state)
            z = np.asarray(logits, dtype=np.float64)[0]
            total += math.log(np.sum(np.exp(z - z.max()))) + z.max() - z[stream[t + 1]]
            count += 1
    assert count == len(tokens) - 1  # every prediction once
    return total / count


@pytest.mark.parametrize("n, batch", [(2, 4), (9, 4), (10, 4), (101, 4), (101, 1), (37, 50)])
def test_the_streams_cover_every_prediction_once(n, batch):
    rows, length = stream_layout(n, batch)
    assert rows <= batch and rows * length >= n - 1 > (rows - 1) * length


@pytest.mark.parametrize("seq_len", [1, 7, 64])
def test_mean_loss_equals_a_token_by_token_computation(seq_len):
    model = CharModel(11, 6, 2, "lstm", 3)
    params = model.init(3, dtype="float64")
    tokens = np.random.default_rng(0).integers(0, 11, size=101).astype(np.int32)
    runtime = backends.resolve("numpy")
    got = mean_loss(model, params, tokens, batch=4, seq_len=seq_len, runtime=runtime)
    assert got == pytest.approx(_direct_loss(model, params, tokens, batch=4), rel=1e-12)


def test_the_held_out_loss_of_a_run_is_that_of_the_whole_split(tmp_path):
    path = tmp_path / "verse.txt"
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(60))
    path.write_text(text, encoding="utf-8")
    history = _train(tmp_path / "run", "--val-every", "3", "--text", str(path), "--val-fraction", "0.15")
    assert history["val_step"] == [3, 6] and len(history["val_loss"]) == 2
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    _, held_out = split_text(text, 0.15)
    split = ckpt.meta["split"]
    assert held_out.startswith("line 52:") and split["val_chars"] == len(held_out)
    assert split["train_chars"] == len(text) - len(held_out)
    assert split["sha256"] == hashlib.sha256(held_out.encode()).hexdigest()
    tokens = ckpt.vocab.encode(held_out)
    direct = _direct_loss(ckpt.model, ckpt.params, tokens, batch=4)
    assert history["val_loss"][-1] == pytest.approx(direct, rel=1e-12)


def test_best_npz_holds_the_lowest_held_out_loss(tmp_path):
    out = tmp_path / "run"
    # A learning rate far too high makes the held-out loss go up as well as down.
    history = _train(out, "--val-every", "1", "--lr", "0.3", steps=9)
    losses = history["val_loss"]
    best = load_checkpoint(out / BEST)
    lowest = int(np.argmin(losses))
    assert lowest < len(losses) - 1  # the minimum is not the last evaluation: best.npz is not the latest
    assert best.meta["step"] == history["val_step"][lowest]
    assert best.meta["history"]["val_loss"] == losses[: lowest + 1]
    assert evaluate_checkpoint(best, split_text(default_corpus(), 0.1)[1]) == losses[lowest]
    assert load_checkpoint(out / CHECKPOINT).meta["step"] == 9


def test_eval_of_a_checkpoint_equals_the_loss_its_run_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    history = _train(out)
    capsys.readouterr()
    for target, step in ((out / CHECKPOINT, 6), (out, 6)):  # the folder means its best.npz
        assert cli.main(["eval", str(target)]) == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith(f"{out / (CHECKPOINT if target != out else BEST)} (step {step}) on the held-out")
        assert f"= {history['val_loss'][-1] / LN2:.4f} bits per character" in line
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert evaluate_checkpoint(ckpt, split_text(default_corpus(), 0.1)[1]) == history["val_loss"][-1]


def test_eval_on_a_text_file(tmp_path, capsys):
    out = tmp_path / "run"
    _train(out)
    text = tmp_path / "verse.txt"
    text.write_text("Shall I compare thee to a summer's day?\n", encoding="utf-8")
    capsys.readouterr()
    assert cli.main(["eval", str(out / CHECKPOINT), "--text", str(text)]) == 0
    line = capsys.readouterr().out
    nats = evaluate_checkpoint(load_checkpoint(out / CHECKPOINT), text.read_text())
    assert f"on {str(text.resolve())!r} (39 predictions): {nats:.4f} nats = {nats / LN2:.4f} bits" in line


def test_resume_keeps_the_held_out_history_and_the_best_checkpoint(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    whole = _train(straight, "--val-every", "2", steps=8)
    _train(split, "--val-every", "2", steps=4)
    first_best = (split / BEST).read_bytes()
    resumed = _train(split, "--val-every", "2", "--resume", steps=8)
    assert resumed["val_step"] == whole["val_step"] == [2, 4, 6, 8]
    assert resumed["val_loss"] == whole["val_loss"]
    assert load_checkpoint(split / CHECKPOINT).meta["history"]["val_loss"] == whole["val_loss"]
    lowest = int(np.argmin(whole["val_loss"]))
    assert load_checkpoint(split / BEST).meta["step"] == whole["val_step"][lowest]
    if whole["val_step"][lowest] <= 4:  # nothing better after the resume: best.npz is the first run's
        assert (split / BEST).read_bytes() == first_best


def test_a_new_run_removes_the_best_checkpoint_of_an_older_one(tmp_path):
    out = tmp_path / "run"
    _train(out)
    assert (out / BEST).exists()
    _train(out, "--overwrite", "--val-fraction", "0")
    assert not (out / BEST).exists()
    assert load_checkpoint(out).meta["split"]["val_chars"] == 0


def test_val_fraction_zero_holds_nothing_out(tmp_path):
    history = _train(tmp_path / "run", "--val-fraction", "0")
    assert history["val_step"] == [] and history["val_loss"] == []
    meta = load_checkpoint(tmp_path / "run").meta
    assert meta["train"]["val_fraction"] == 0 and meta["split"]["train_chars"] == meta["text"]["chars"]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    _train(out, steps=2)
    return load_checkpoint(out / CHECKPOINT)


def _change_split(meta, **values):
    meta["split"] = dict(meta["split"], **values)


def _change_val_fraction(value):
    return lambda meta: meta.update(train=dict(meta["train"], val_fraction=value))


def _change_val_history(**values):
    return lambda meta: meta.update(history=dict(meta["history"], **values))


BAD_META = {
    "sizes that do not add up": (lambda m: _change_split(m, val_chars=m["split"]["val_chars"] + 1),
                                 "split.train_chars + split.val_chars is"),
    "negative held-out size": (lambda m: _change_split(m, val_chars=-1), "split.val_chars must be an int >= 0"),
    "held-out size a float": (lambda m: _change_split(m, train_chars=1.5), "split.train_chars must be an int >= 1"),
    "digest not hex": (lambda m: _change_split(m, sha256="z" * 64), "split.sha256 must be 64 lowercase"),
    "an unknown split key": (lambda m: _change_split(m, seed=1), "unexpected ['seed']"),
    "no split": (lambda m: m.pop("split"), "metadata lacks ['split']"),
    "val_fraction 1": (_change_val_fraction(1.0), "train.val_fraction must be < 1"),
    "val_fraction negative": (_change_val_fraction(-0.1), "train.val_fraction must be a finite number >= 0"),
    "val_fraction 0 with a held-out part": (_change_val_fraction(0.0), "but train.val_fraction is 0"),
    "held-out step beyond the checkpoint": (_change_val_history(val_step=[99], val_loss=[1.0]),
                                            "history/val_step must increase within [1, step 2]"),
    "held-out steps out of order": (_change_val_history(val_step=[2, 1], val_loss=[1.0, 1.0]),
                                    "history/val_step must increase"),
}


def test_a_nan_held_out_loss_is_never_written(good, tmp_path):
    """The writer refuses it (the reader refuses such a file too: tests/formats/test_hostile_files.py)."""
    meta = json.loads(json.dumps(good.meta))
    _change_val_history(val_loss=[float("nan")])(meta)
    with pytest.raises(NonFiniteError, match="history/val_loss holds values that are not finite"):
        save_checkpoint(tmp_path / CHECKPOINT, type(good)(good.params, good.opt_state, good.carry, meta))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("case", list(BAD_META))
def test_a_checkpoint_with_a_bad_split_or_held_out_history_is_refused(good, tmp_path, case):
    change, expected = BAD_META[case]
    meta = json.loads(json.dumps(good.meta))
    change(meta)
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, type(good)(good.params, good.opt_state, good.carry, meta))
    with pytest.raises(CheckpointError, match="checkpoint") as error:
        load_checkpoint(path)
    assert expected in str(error.value)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("good_run")
    _train(out, steps=2)
    return out


def test_eval_shows_its_windows_on_stderr_and_prints_nothing_for_short_work(good_run, capsys, monkeypatch):
    """``--progress lines``: a line per window when lines are due at once; none by default (work under 5 s)."""
    assert cli.main(["eval", str(good_run), "--progress", "lines"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(report, "PROGRESS_EVERY_S", 0.0)
    assert cli.main(["eval", str(good_run), "--progress", "lines"]) == 0
    lines = capsys.readouterr().err.splitlines()
    total = int(lines[0].split("/")[1].split()[0])
    assert [line.split(" (")[0] for line in lines] == [f"{k}/{total} windows" for k in range(1, total + 1)]
