"""A training run that turns non-finite stops with one line and keeps the last good checkpoint."""

from __future__ import annotations

import hashlib
import re

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


TINY = ["--hidden", "8", "--batch", "4", "--seq-len", "8", "--sample-every", "0", "--val-every", "0",
        "--progress", "none"]


def _text(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    return text


def test_a_diverging_run_writes_no_nonfinite_checkpoint_and_prints_no_warning(tmp_path, monkeypatch, capsys):
    """The loss of step 3 is finite but the update after it is not: the check is on what is written."""
    text, out = _text(tmp_path), tmp_path / "run"
    real = CharModel.loss_and_grads
    seen = {"calls": 0, "digest": None}

    def exploding(self, params, *args, **kwargs):
        seen["calls"] += 1
        loss, grads, state = real(self, params, *args, **kwargs)
        if seen["calls"] == 3:  # the checkpoint of step 2 is on disk now
            seen["digest"] = hashlib.sha256((out / "checkpoint.npz").read_bytes()).hexdigest()
            grads = {k: g * float("inf") for k, g in grads.items()}
        return loss, grads, state

    monkeypatch.setattr(CharModel, "loss_and_grads", exploding)
    capsys.readouterr()
    with _no_warnings():
        status = cli.main(["train", "--text", str(text), "--out", str(out), "--steps", "5",
                           "--checkpoint-every", "1", *TINY])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert "step 3: params/" in err and "is not finite (NaN or inf); checkpoint.npz of an earlier step is kept" in err
    assert hashlib.sha256((out / "checkpoint.npz").read_bytes()).hexdigest() == seen["digest"]
    assert load_checkpoint(out).meta["step"] == 2


class _no_warnings:
    """A block in which any warning is an error (NumPy's overflow warnings included)."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


def test_a_write_that_fails_is_one_line_keeps_the_previous_checkpoint_and_leaves_no_temporary(tmp_path, capsys,
                                                                                              monkeypatch):
    """A full disk (ENOSPC from the file system) while the second checkpoint is written."""
    import errno

    from portable_rnn import io as prnn_io

    text, out = _text(tmp_path), tmp_path / "run"
    assert cli.main(["train", "--text", str(text), "--out", str(out), "--steps", "2", *TINY]) == 0
    digest = hashlib.sha256((out / "checkpoint.npz").read_bytes()).hexdigest()
    real = prnn_io.np.lib.format.write_array

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prnn_io.np.lib.format, "write_array", full_disk)
    capsys.readouterr()
    status = cli.main(["train", "--resume", "--out", str(out), "--steps", "4", *TINY])
    monkeypatch.setattr(prnn_io.np.lib.format, "write_array", real)
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert "No space left on device (" in err and "files written before are kept" in err
    assert hashlib.sha256((out / "checkpoint.npz").read_bytes()).hexdigest() == digest
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.processes
def test_a_file_size_limit_is_one_line(tmp_path):
    """``ulimit -f``: the kernel refuses the write with EFBIG (Python ignores SIGXFSZ)."""
    import subprocess
    import sys

    text, out = _text(tmp_path), tmp_path / "run"
    command = [sys.executable, "-m", "portable_rnn", "train", "--text", str(text), "--out", str(out),
               "--steps", "2", "--hidden", "64", *TINY[2:]]
    # The limit is set by a shell that then becomes Python: no fork of this (threaded) process.
    result = subprocess.run(["sh", "-c", 'ulimit -f 128 && exec "$@"', "sh", *command],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert "File too large (" in result.stderr
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_stale_temporary_file_is_removed_by_the_next_run(tmp_path):
    text, out = _text(tmp_path), tmp_path / "run"
    out.mkdir()
    stale = out / ".checkpoint.npz.0123456789abcdef.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = out / ".notes.tmp"  # not a name atomic_write makes
    keep.write_text("mine")
    assert cli.main(["train", "--text", str(text), "--out", str(out), "--steps", "1", *TINY]) == 0
    assert not stale.exists() and keep.exists()


def test_a_model_too_large_for_memory_is_refused_before_allocating_with_its_size(tmp_path, capsys):
    import os

    if not os.path.exists("/proc/meminfo"):
        pytest.skip("the estimate is held to MemAvailable of /proc/meminfo, which this system has not")
    text = _text(tmp_path)
    status = cli.main(["train", "--text", str(text), "--out", str(tmp_path / "run"), "--hidden", "100000",
                       "--steps", "1", *TINY[2:]])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    # 4H(E + H + 2) + V(E + H + 1) parameters: 40 billion, 1 TiB with Adam's moments
    assert re.search(r"this run needs about 1,0\d\d\.\d GiB \(40,01\d,\d{3},\d{3} parameters and a tape of "
                     r"--batch 4 x --seq-len 8\) but [\d,.]+ GiB is available", err), err


def test_an_allocation_that_fails_anyway_is_one_line(monkeypatch, capsys):
    """Where no estimate caught it (another command, an accelerator), MemoryError is one line too."""

    def out_of_memory(args):
        raise MemoryError("Unable to allocate 298. GiB for an array with shape (400000, 100000)")

    monkeypatch.setitem(cli._COMMANDS, "sample", out_of_memory)
    assert cli.main(["sample", "anything"]) == 2
    err = capsys.readouterr().err
    assert err == ("portable-rnn sample: error: not enough memory (Unable to allocate 298. GiB for an array with "
                   "shape (400000, 100000)); try a smaller --hidden, --batch or --seq-len\n")


@pytest.mark.processes
def test_sigkill_at_random_moments_never_leaves_a_file_a_command_refuses(tmp_path, request):
    """``train --checkpoint-every 1`` killed (SIGKILL) at random moments, then resumed, again and again.

    After every kill each file the run keeps loads, and ``--resume`` goes on
    from the step the checkpoint holds. Four kills by default, fifty with
    ``--soak``; the moments are seeded.
    """
    import random
    import signal
    import subprocess
    import sys
    import time

    rng = random.Random(11)
    kills = 50 if request.config.getoption("--soak") else 4
    text, out = _text(tmp_path), tmp_path / "run"
    command = [sys.executable, "-m", "portable_rnn", "train", "--text", str(text), "--out", str(out),
               "--steps", "100000", "--checkpoint-every", "1", *TINY]
    steps = [0]
    for _ in range(kills):
        resume = ["--resume"] if (out / "checkpoint.npz").exists() else []
        process = subprocess.Popen(command + resume, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not _step_beyond(out, steps[-1]) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)  # until this run has written a checkpoint of its own
        time.sleep(rng.uniform(0.0, 0.5))  # then a random moment, most likely inside a write
        process.send_signal(signal.SIGKILL)
        _, err = process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL, err.decode()[-2000:]
        for name in ("checkpoint.npz", "best.npz"):
            if (out / name).exists():
                load_checkpoint(out / name)  # raises on anything a command would refuse
        steps.append(load_checkpoint(out).meta["step"])
        assert steps[-1] > steps[-2], steps  # the resumed run went on
    assert cli.main(["train", "--resume", "--out", str(out), "--steps", str(steps[-1] + 2), *TINY]) == 0
    assert load_checkpoint(out).meta["step"] == steps[-1] + 2
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def _step_beyond(out, step) -> bool:
    """Whether ``out`` holds a readable checkpoint past ``step`` (a half-written one reads as not yet)."""
    try:
        return load_checkpoint(out).meta["step"] > step
    except Exception:
        return False


@pytest.mark.processes
def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path):
    """SIGTERM: the checkpoint of the step reached is saved, one line says so, exit status 143."""
    import signal
    import subprocess
    import sys
    import time

    text, out = _text(tmp_path), tmp_path / "run"
    command = [sys.executable, "-m", "portable_rnn", "train", "--text", str(text), "--out", str(out),
               "--steps", "100000", "--checkpoint-every", "1", *TINY]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _step_beyond(out, 1) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-2000:]
    step = load_checkpoint(out).meta["step"]
    assert f"interrupted at step {step}: checkpoint saved; continue with --resume" in stdout
    assert "samples.txt" not in stdout  # none was written before the first sample (--sample-every 0)
    assert "Traceback" not in stderr


def test_version(capsys):
    from portable_rnn import __version__

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"portable-rnn {__version__}\n"
