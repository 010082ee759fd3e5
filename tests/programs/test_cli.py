"""The ``portable-rnn`` command line: train, resume, sample, gradients, check, and bad input.

Every run here is tiny (hidden 8, windows of 8 characters, a few steps) and
goes through :func:`portable_rnn.app.cli.main`, the function behind the
console script and ``python -m portable_rnn``. Every test runs in an empty
folder of its own, and passes explicit paths under it: the commands' default
paths (``runs/...``) never reach the checkout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

from portable_rnn.app import cli, corpus
from portable_rnn.io import write_archive
from portable_rnn.app.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from portable_rnn.app.train import HISTORY, PLOT, SAMPLES
from portable_rnn.testing.fixtures import FIXTURES


def _installed(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


HAVE_MATPLOTLIB = _installed("matplotlib")

TINY = ["--hidden", "8", "--embed", "4", "--seq-len", "8", "--batch", "4", "--progress", "lines",
        "--log-every", "2", "--sample-every", "3", "--checkpoint-every", "2"]


def _train(capsys, out, *extra, steps=6):
    """Run ``portable-rnn train`` tiny; ``steps=None`` leaves --steps out."""
    flags = [] if steps is None else ["--steps", str(steps)]
    rc = cli.main(["train", *TINY, *flags, "--out", str(out), *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _history(out):
    return json.loads((out / HISTORY).read_text())


@pytest.fixture(autouse=True)
def _in_an_empty_folder(tmp_path_factory, monkeypatch):
    """Run each test in a fresh empty working directory, so no default path reaches the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


# --------------------------------------------------------------------------- help and check


def test_no_arguments_prints_help_listing_the_commands(capsys):
    assert cli.main([]) == 0
    text = capsys.readouterr().out
    for command in ("check", "train", "sample", "eval", "gradients"):
        assert command in text


@pytest.mark.processes
def test_python_dash_m_without_arguments_exits_0_with_help():
    result = subprocess.run([sys.executable, "-m", "portable_rnn"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "gradients" in result.stdout and not result.stderr


def test_check_still_works(capsys):
    assert cli.main(["check", "--backend", "numpy"]) == 0
    assert "all documented numbers reproduced" in capsys.readouterr().out


def test_check_of_a_named_backend_that_cannot_run_is_an_error_not_a_pass(capsys, monkeypatch):
    """``check --backend X`` where X cannot run: exit 2 and why; without --backend it is a skipped row."""
    from portable_rnn import backends

    real = backends.discover

    def without_torch(names=None):
        available, unavailable = real([n for n in names if n != "torch"])
        unavailable["torch"] = "torch is not installed (pip install torch)"
        return available, unavailable

    monkeypatch.setattr(backends, "discover", without_torch)
    assert cli.main(["check", "--backend", "numpy", "--backend", "torch"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "portable-rnn check: error: --backend torch: torch is not installed (pip install torch)\n"
    assert captured.out == ""


def test_drawing_the_fixtures_leaves_numpys_global_generator_alone():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    for fixture in FIXTURES:
        fixture.draw()
    assert np.array_equal(np.random.get_state()[1], before)


# --------------------------------------------------------------------------- train, resume, sample


def test_train_writes_checkpoint_history_plot_and_samples(capsys, tmp_path):
    out = tmp_path / "run"
    rc, stdout, _ = _train(capsys, out)
    assert rc == 0
    for name in (CHECKPOINT, HISTORY, SAMPLES):
        assert (out / name).is_file(), name
    if HAVE_MATPLOTLIB:
        assert (out / PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib is not installed" in stdout
    history = _history(out)
    assert history["step"] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(history["loss"]))
    assert "step      6/6  loss" in stdout and "tok/s" in stdout
    assert "----- sample at step 3" in stdout and "----- sample at step 6" in stdout
    assert "done: steps 0->6" in stdout
    ckpt = load_checkpoint(out)
    assert ckpt.meta["step"] == 6 and ckpt.meta["history"]["loss"] == history["loss"]
    assert ckpt.model.hidden_size == 8 and ckpt.model.mode == "lstm"
    assert [f for f in os.listdir(out) if f.endswith(".tmp")] == []


def test_resume_continues_the_same_loss_curve(capsys, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _train(capsys, straight, steps=10)[0] == 0
    assert _train(capsys, split, steps=4)[0] == 0
    rc, stdout, _ = _train(capsys, split, "--resume", steps=10)
    assert rc == 0 and "steps 4->10" in stdout
    resumed, whole = _history(split), _history(straight)
    for key in ("step", "loss"):  # bit for bit: same batches, same state, same Adam state
        assert resumed[key] == whole[key]
    # The held-out loss is taken at the end of each run; the resumed run kept the first one.
    assert resumed["val_step"] == [4, 10] and whole["val_step"] == [10]
    assert resumed["val_loss"][-1] == whole["val_loss"][-1]
    # Without --steps, --resume runs to the checkpoint's planned end: nothing left to do.
    rc = cli.main(["train", "--out", str(split), "--resume", "--progress", "none"])
    assert rc == 0 and "already at step 10 of 10" in capsys.readouterr().out


def test_interrupted_run_keeps_a_checkpoint_and_resumes_exactly(capsys, tmp_path, monkeypatch):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert _train(capsys, straight, steps=8)[0] == 0
    original = corpus.BatchSchedule.__call__

    def interrupt_at_5(self, step):
        if step == 5:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(corpus.BatchSchedule, "__call__", interrupt_at_5)
    rc, stdout, _ = _train(capsys, broken, steps=8)
    assert rc == 130 and "interrupted at step 5" in stdout
    assert load_checkpoint(broken).meta["step"] == 5
    monkeypatch.setattr(corpus.BatchSchedule, "__call__", original)
    assert _train(capsys, broken, "--resume", steps=None)[0] == 0  # the checkpoint remembers --steps 8
    assert _history(broken) == _history(straight)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(capsys, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert _train(capsys, out, steps=2)[0] == 0
    before = (out / CHECKPOINT).read_bytes()

    ckpt = load_checkpoint(out)
    ckpt.meta["step"] = 99

    def disk_full(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", disk_full)  # the new file is written, then cannot be made durable
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(out / CHECKPOINT, ckpt)
    assert (out / CHECKPOINT).read_bytes() == before
    assert [f for f in os.listdir(out) if f.endswith(".tmp")] == []


def test_sample_from_a_checkpoint_is_reproducible(capsys, tmp_path):
    out = tmp_path / "run"
    assert _train(capsys, out, steps=3)[0] == 0
    args = ["sample", str(out / CHECKPOINT), "--prime", "Shall I", "--length", "40", "--seed", "5"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert cli.main(args) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("Shall I") and len(first.rstrip("\n")) >= len("Shall I") + 30
    assert cli.main(["sample", str(out), "--length", "40", "--seed", "6", "--top-k", "3"]) == 0  # the folder works too
    assert capsys.readouterr().out != first
    assert cli.main(["sample", str(out), "--length", "20", "--temperature", "0"]) == 0


def test_train_on_a_text_file_with_gru_and_truncation(capsys, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    out = tmp_path / "run"
    rc, stdout, _ = _train(capsys, out, "--text", str(text), "--cell", "gru", "--truncate", "3", steps=4)
    assert rc == 0 and "GRU" in stdout and str(text.resolve()) in stdout
    ckpt = load_checkpoint(out)
    assert ckpt.meta["train"]["truncate"] == 3
    assert set(ckpt.vocab.chars) == set("the quick brown fox jumps over lazy dog.")


def test_numpy_and_jax_give_the_same_loss_curve(capsys, tmp_path):
    pytest.importorskip("jax")
    # the training losses only: no sampling, held-out text or checkpoints, each a JAX compile of its own
    only_steps = ["--sample-every", "0", "--val-fraction", "0", "--checkpoint-every", "0"]
    assert _train(capsys, tmp_path / "np", "--backend", "numpy", *only_steps, steps=5)[0] == 0
    assert _train(capsys, tmp_path / "jax", "--backend", "jax", *only_steps, steps=5)[0] == 0
    a, b = _history(tmp_path / "np"), _history(tmp_path / "jax")
    assert a["step"] == b["step"]
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)


def test_resume_on_another_backend(capsys, tmp_path):
    pytest.importorskip("torch")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _train(capsys, straight, steps=6)[0] == 0
    assert _train(capsys, split, steps=3)[0] == 0
    assert _train(capsys, split, "--resume", "--backend", "torch", steps=6)[0] == 0
    np.testing.assert_allclose(_history(split)["loss"], _history(straight)["loss"], rtol=1e-5)


# --------------------------------------------------------------------------- gradients


def test_gradients_prints_ratios_and_plots(capsys, tmp_path):
    assert cli.main(["gradients", "--seq-len", "40", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    ratios = {}
    for line in text.splitlines():
        if "||dL/da<1>|| / ||dL/da<40>||" in line:
            ratios[line.split(":")[0]] = float(line.rsplit("=", 1)[1])
    assert set(ratios) == {"vanilla RNN", "LSTM"}
    assert ratios["vanilla RNN"] < ratios["LSTM"] < 1  # the RNN's gradient vanishes faster
    if HAVE_MATPLOTLIB:
        assert (tmp_path / "gradients.png").read_bytes()[:4] == b"\x89PNG"


def test_without_matplotlib_and_tqdm_training_still_runs(capsys, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg", "tqdm"):
        monkeypatch.setitem(sys.modules, name, None)
    rc, stdout, _ = _train(capsys, tmp_path, "--progress", "bar", steps=2)
    assert rc == 0 and not (tmp_path / PLOT).exists()
    assert "skipped" in stdout and "matplotlib is not installed (pip install 'portable-rnn[plot]')" in stdout
    assert "step      2/2  loss" in stdout  # plain progress lines instead of the bar


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bad-input")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e ".encode("latin-1") * 50)
    short = tmp_path / "short.txt"
    short.write_text("to be or not", encoding="utf-8")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a checkpoint at all")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    other = tmp_path / "other.npz"
    write_archive(other, {"weights": np.ones(3)}, {"format": "someone.else", "version": 3})
    good = tmp_path / "good"
    assert cli.main(["train", *TINY, "--steps", "2", "--progress", "none", "--out", str(good)]) == 0
    pickled = tmp_path / "pickled.npz"  # the good checkpoint with one member a pickled object array
    with zipfile.ZipFile(good / CHECKPOINT) as src, zipfile.ZipFile(pickled, "w") as dst:
        for info in src.infolist():
            if info.filename == "params/decoder.bias.npy":
                with dst.open(info.filename, "w") as member:
                    np.lib.format.write_array(member, np.array([{"not": "numbers"}], dtype=object))
            else:
                dst.writestr(info, src.read(info))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes((good / CHECKPOINT).read_bytes()[:300])
    foreign_text = tmp_path / "foreign.txt"
    foreign_text.write_text("\u00e9t\u00e9 \u00e0 Paris", encoding="utf-8")
    one_char = tmp_path / "one.txt"
    one_char.write_text("a", encoding="utf-8")
    no_split = tmp_path / "no-split"
    assert cli.main(["train", *TINY, "--steps", "2", "--progress", "none", "--val-fraction", "0",
                     "--out", str(no_split)]) == 0
    corrupt_dir = tmp_path / "corrupt"
    corrupt_dir.mkdir()
    (corrupt_dir / CHECKPOINT).write_bytes((good / CHECKPOINT).read_bytes()[:-50])
    return {"empty": empty, "latin1": latin1, "short": short, "garbage": garbage, "foreign": foreign,
            "pickled": pickled, "other": other, "good": good, "truncated": truncated, "corrupt_dir": corrupt_dir,
            "foreign_text": foreign_text, "one_char": one_char, "no_split": no_split, "tmp": tmp_path}


BAD = {
    "missing text": (["train", "--text", "{tmp}/nope.txt", "--out", "{tmp}/c"], "does not exist"),
    "empty text": (["train", "--text", "{empty}", "--out", "{tmp}/c"], "is empty"),
    "non-UTF-8 text": (["train", "--text", "{latin1}", "--out", "{tmp}/c"], "is not UTF-8"),
    "text is a folder": (["train", "--text", "{tmp}", "--out", "{tmp}/c"], "is a directory"),
    "seq-len longer than the text": (["train", "--text", "{short}", "--seq-len", "50", "--out", "{tmp}/c"],
                                     "not shorter than the text"),
    "batch too large for the text": (["train", "--text", "{short}", "--seq-len", "4", "--batch", "8",
                                      "--out", "{tmp}/c"], "lower --batch"),
    "cupy not installed or no such GPU": (["train", "--backend", "cupy", "--device", "999", "--out", "{tmp}/c"],
                                         "cupy"),
    "torch device missing": (["train", "--backend", "torch", "--device", "cuda:999", "--out", "{tmp}/c"],
                             "cannot use device 'cuda:999'"),
    "jax device missing": (["train", "--backend", "jax", "--device", "tpu", "--out", "{tmp}/c"],
                           "cannot use device 'tpu'"),
    "numpy on a GPU": (["train", "--device", "cuda", "--out", "{tmp}/c"], "CPU only"),
    "strict device missing": (["train", "--backend", "array_api_strict", "--device", "nowhere", "--out", "{tmp}/c"],
                              "cannot use device 'nowhere'"),
    "negative hidden": (["train", "--hidden", "-4", "--out", "{tmp}/c"], "positive integer"),
    "zero layers": (["train", "--layers", "0", "--out", "{tmp}/c"], "positive integer"),
    "negative lr": (["train", "--lr", "-0.1", "--out", "{tmp}/c"], "positive number"),
    "nan lr": (["train", "--lr", "nan", "--out", "{tmp}/c"], "positive number"),
    "text steps": (["train", "--steps", "many", "--out", "{tmp}/c"], "positive integer"),
    "unknown cell": (["train", "--cell", "transformer", "--out", "{tmp}/c"], "invalid choice"),
    "unknown backend": (["train", "--backend", "tensorflow", "--out", "{tmp}/c"], "invalid choice"),
    "unknown flag": (["train", "--hiden", "4", "--out", "{tmp}/c"], "unrecognized arguments"),
    "unknown command": (["fly"], "invalid choice"),
    "resume without checkpoint": (["train", "--resume", "--out", "{tmp}/none"], "nothing to resume"),
    "resume a corrupt checkpoint": (["train", "--resume", "--out", "{corrupt_dir}"], "checkpoint"),
    "resume with other sizes": (["train", "--resume", "--out", "{good}", "--hidden", "16"], "--hidden 8, not 16"),
    "resume on another text": (["train", "--resume", "--out", "{good}", "--text", "{latin1}"], "UTF-8"),
    "existing checkpoint": (["train", "--out", "{good}"], "already exists"),
    "sample missing checkpoint": (["sample", "{tmp}/none.npz"], "does not exist"),
    "sample garbage": (["sample", "{garbage}"], "is not a readable .npz"),
    "sample foreign npz": (["sample", "{foreign}"], "not written by portable_rnn"),
    "sample another format": (["sample", "{other}"], "not a portable-rnn checkpoint (format 'someone.else')"),
    "sample pickled npz": (["sample", "{pickled}"], "'params/decoder.bias' holds a pickled object array"),
    "sample truncated": (["sample", "{truncated}"], "checkpoint"),
    "sample unknown prime": (["sample", "{good}", "--prime", "\u00e9t\u00e9"], "never saw"),
    "sample negative length": (["sample", "{good}", "--length", "-1"], "non-negative integer"),
    "sample bad top-k": (["sample", "{good}", "--top-k", "0"], "positive integer"),
    "sample torch on missing device": (["sample", "{good}", "--backend", "torch", "--device", "cuda:999"],
                                       "cannot use device 'cuda:999'"),
    "eval missing checkpoint": (["eval", "{tmp}/none.npz"], "does not exist"),
    "eval garbage": (["eval", "{garbage}"], "is not a readable .npz"),
    "eval another format": (["eval", "{other}"], "not a portable-rnn checkpoint (format 'someone.else')"),
    "eval truncated": (["eval", "{truncated}"], "checkpoint"),
    "eval missing text": (["eval", "{good}", "--text", "{tmp}/nope.txt"], "does not exist"),
    "eval empty text": (["eval", "{good}", "--text", "{empty}"], "is empty"),
    "eval non-UTF-8 text": (["eval", "{good}", "--text", "{latin1}"], "is not UTF-8"),
    "eval text is a folder": (["eval", "{good}", "--text", "{tmp}"], "is a directory"),
    "eval characters the model never saw": (["eval", "{good}", "--text", "{foreign_text}"],
                                            "not in the model's vocabulary"),
    "eval a one-character text": (["eval", "{good}", "--text", "{one_char}"], "needs at least 2"),
    "eval nothing held out": (["eval", "{no_split}"], "held nothing out (--val-fraction 0); pass --text"),
    "eval torch on missing device": (["eval", "{good}", "--backend", "torch", "--device", "cuda:999"],
                                     "cannot use device 'cuda:999'"),
    "val-fraction 1": (["train", "--val-fraction", "1", "--out", "{tmp}/c"], "expected a number in [0, 1)"),
    "val-fraction negative": (["train", "--val-fraction", "-0.1", "--out", "{tmp}/c"], "non-negative number"),
    "val-every negative": (["train", "--val-every", "-5", "--out", "{tmp}/c"], "non-negative integer"),
    "held-out split too small": (["train", "--text", "{short}", "--seq-len", "2", "--batch", "2",
                                  "--out", "{tmp}/c"], "evaluating needs at least 2"),
    "resume with another val-fraction": (["train", "--resume", "--out", "{good}", "--val-fraction", "0.2"],
                                         "--val-fraction 0.1, not 0.2"),
    "gradients too short": (["gradients", "--seq-len", "1", "--out", "{tmp}/g"], "at least 2"),
}


def _run_bad(case, files, capsys):
    """Run a ``BAD`` case; check its one line on stderr and exit status 2."""
    argv, expected = BAD[case]
    argv = [a.format(**files) for a in argv]
    if "--backend" in argv:  # without the library the message says how to install it instead
        library = argv[argv.index("--backend") + 1]
        if library in ("jax", "torch", "array_api_strict") and not _installed(library):
            expected = "is not installed"
    rc = cli.main(argv)
    captured = capsys.readouterr()
    assert rc == 2, (rc, captured.err)
    lines = captured.err.strip("\n").splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("portable-rnn") and "error:" in lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_on_stderr_and_exit_2(case, files, capsys):
    _run_bad(case, files, capsys)


def test_a_run_left_in_the_working_directory_changes_no_outcome(files, capsys, monkeypatch, tmp_path):
    """After ``portable-rnn train`` in a folder (it writes runs/char-model/), the CLI tests still pass there."""
    left = tmp_path / "runs" / "char-model"
    left.mkdir(parents=True)
    (left / CHECKPOINT).write_bytes((files["good"] / CHECKPOINT).read_bytes())
    monkeypatch.chdir(tmp_path)
    for case in BAD:
        _run_bad(case, files, capsys)
    assert os.listdir(tmp_path) == ["runs"] and os.listdir(left) == [CHECKPOINT]


@pytest.mark.parametrize("library", ["jax", "torch"])
def test_a_missing_backend_names_what_to_install(library, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, library, None)  # makes `import library` fail as if not installed
    rc = cli.main(["train", "--backend", library, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    hint = "pip install torch, the build for your machine from pytorch.org" if library == "torch" else (
        f"pip install 'portable-rnn[{library}]'")  # the torch extra could pull a multi-GB CUDA build
    assert f"{library} is not installed ({hint})" in err


def test_old_flag_spellings_still_work_for_a_release_and_say_so(tmp_path, capsys, monkeypatch):
    """``gradients --steps`` is ``--seq-len``, ``bench --backends`` is ``--backend`` and ``train --tape``
    (``--tape-segment``) is ``--retain`` (``--segment-steps``), with a line on stderr."""
    assert cli.main(["gradients", "--steps", "12", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ("portable-rnn: --steps is deprecated, use --seq-len "
                                       "(the old spelling goes in the next release)\n")
    seen = {}
    monkeypatch.setattr(cli, "run_bench", lambda **kw: seen.update(kw) or {"targets": []})
    monkeypatch.setattr(cli, "write_json", lambda *a: None)
    assert cli.main(["bench", "--quick", "--backends", "numpy,torch", "--backend", "jax"]) == 0
    assert seen["backend_names"] == ["numpy", "torch", "jax"]
    assert "--backends is deprecated, use --backend" in capsys.readouterr().err
    configs = []
    monkeypatch.setattr(cli, "train", lambda config: configs.append(config) or SimpleNamespace(status=0))
    assert cli.main(["train", "--tape", "checkpoint", "--tape-segment", "7", "--out", str(tmp_path / "run")]) == 0
    assert (configs[0].retain, configs[0].segment_steps) == ("checkpoint", 7)
    err = capsys.readouterr().err
    assert "--tape is deprecated, use --retain" in err and "--tape-segment is deprecated, use --segment-steps" in err
