"""The bench's count of kernels per time step: a stable number per cell, from the right libraries.

The counts are read, never asserted against a target: the engine may issue
fewer ops over time. What must hold is that the count is a property of the
step (the same whatever the sequence lengths it is measured at), whole, and
that the bench asks only the libraries of the backends it runs.
"""

from __future__ import annotations

import importlib.util

import pytest

from portable_rnn.app.bench import kernels


def test_per_step_is_the_slope_between_two_lengths():
    assert kernels.per_step(lambda T: (12 * T + 7, 25 * T + 3), (4, 8)) == {"forward": 12.0, "backward": 25.0}


def _stable(counter, cell):
    a, b = counter(cell, steps=(3, 5)), counter(cell, steps=(4, 8))
    assert a == b, (a, b)
    for direction in ("forward", "backward"):
        assert a[direction] == int(a[direction]), a
    return a


@pytest.mark.parametrize("counter", ["torch_ours", "torch_nn"])
def test_torch_counts_a_whole_number_of_ops_per_lstm_step_at_any_length(counter):
    pytest.importorskip("torch")
    counts = _stable(getattr(kernels, counter), "lstm")
    if counter == "torch_ours":  # at least the recurrent matmul and an activation, both ways
        assert counts["forward"] >= 2 and counts["backward"] >= 2, counts


@pytest.mark.parametrize("counter", ["jax_ours", "jax_grad"])
def test_jax_counts_the_same_scan_body_at_any_length(counter):
    pytest.importorskip("jax")
    counts = _stable(getattr(kernels, counter), "lstm")
    assert counts["forward"] >= 2 and counts["backward"] >= 2, counts


def test_the_bench_counts_the_libraries_of_its_backends():
    torch_names = {"torch", "torch.nn"} if importlib.util.find_spec("torch") else set()
    jax_names = {"jax", "jax.grad"} if importlib.util.find_spec("jax") else set()
    from_numpy = kernels.kernels_per_step("rnn", ["numpy"])  # NumPy calls are not kernels: torch stands in
    assert set(from_numpy) == torch_names
    for counts in from_numpy.values():
        assert set(counts) == {"forward", "backward", "unit"}
    assert set(kernels.kernels_per_step("rnn", ["jax"])) == jax_names
    assert kernels.kernels_per_step("rnn", ["array_api_strict"]) == {}


def test_the_bench_report_carries_the_counts_and_the_matmul_precision():
    from portable_rnn.app.bench.run import run

    report = run(quick=True, cells=["rnn"], backend_names=["numpy"], compile_study=False, check=False,
                 repeats=1, out=False)
    (result,) = report["results"]
    assert result["kernels_per_step"] == kernels.kernels_per_step("rnn", ["numpy"])
    assert report["machine"]["matmul_precision"] == {"numpy": "full float32 on the host (TF32 off)"}
