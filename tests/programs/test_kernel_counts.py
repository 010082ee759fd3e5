"""The bench's count of kernels per time step: a stable number per cell, from the right libraries.

The counts are read, never asserted against a target: the engine may issue
fewer ops over time. What must hold is that the count is a property of the
step (the same whatever the sequence lengths it is measured at), whole per
chunk of the backward, and that the bench asks only the libraries of the
backends it runs.
"""

from __future__ import annotations

import importlib.util

import pytest

from portable_rnn.app.bench import kernels
from portable_rnn.engine.sequence import BACKWARD_CHUNK


def test_per_step_is_the_slope_between_two_lengths():
    assert kernels.per_step(lambda T: (12 * T + 7, 25 * T + 3), (4, 8)) == {"forward": 12.0, "backward": 25.0}


def _stable(counter, cell):
    """The count at two pairs of lengths (whole numbers of the backward's chunks): the same, and whole per chunk."""
    a = counter(cell, steps=(BACKWARD_CHUNK, 3 * BACKWARD_CHUNK))
    b = counter(cell, steps=(2 * BACKWARD_CHUNK, 4 * BACKWARD_CHUNK))
    assert a == b, (a, b)
    for direction in ("forward", "backward"):
        per_chunk = a[direction] * BACKWARD_CHUNK
        assert per_chunk == int(per_chunk), a
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


@pytest.mark.parametrize("mode", ["rnn", "lstm", "gru"])
def test_the_backward_computes_local_derivatives_once_per_chunk_not_per_step(mode):
    """A step of the portable backward costs less than the cell's derivatives alone would per step."""
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xp

    from portable_rnn.engine.cells import cell_for

    cell = cell_for(mode)
    one_step = tuple(torch.rand(1, 2, 4) for _ in cell.states)
    tape = None if cell.tape_type is None else cell.tape_type(*(torch.rand(1, 2, 4) for _ in cell.tape_type._fields))
    _, derivatives_ops = kernels._counted(lambda: cell.step_derivatives(one_step, one_step, tape, xp=xp))
    backward = kernels.torch_ours(mode)["backward"]
    # derivatives recomputed every step would cost them plus at least the
    # recurrent matmul and the add of d_out per step
    assert backward < derivatives_ops + 2, (backward, derivatives_ops)
