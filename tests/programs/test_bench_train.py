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


def test_torch_trainer_matches_the_torch_loop():
    report = run_training_bench(steps=3, backend_names=["torch"], out=io.StringIO())
    ours, torch_loop = report["portable_rnn (torch)"], report["torch.nn + torch.optim"]
    assert abs(ours["val_loss"] - torch_loop["val_loss"]) < 1e-4


def test_the_trainer_runs_numpy_blas_and_cpu_torch_on_one_thread():
    """NumPy's BLAS (NumPy and CPU torch runs) and torch's ops (CPU torch runs) on one thread, restored after."""
    import torch

    threadpoolctl = pytest.importorskip("threadpoolctl")
    threadpool_info = threadpoolctl.threadpool_info

    from portable_rnn import backends
    from portable_rnn.app.train import _single_threaded

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    torch_before, blas_before = torch.get_num_threads(), blas_threads()
    with _single_threaded(backends.resolve("torch")):
        assert torch.get_num_threads() == 1
        assert set(blas_threads()) <= {1}
    assert torch.get_num_threads() == torch_before and blas_threads() == blas_before
    with _single_threaded(backends.resolve("numpy")):
        assert torch.get_num_threads() == torch_before  # a NumPy run leaves torch's pool alone
        assert set(blas_threads()) <= {1}
    assert blas_threads() == blas_before
