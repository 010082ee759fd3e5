"""Peak memory of one forward + backward: tracemalloc for NumPy, XLA's plan for JAX, CUDA's counter for torch.

NumPy reports its buffers to :mod:`tracemalloc`, so the NumPy contenders get
the peak of what the calls allocate (the input, the parameters and the loss
gradient ``d_out`` already exist), next to ``tape_bytes``: what the forward's
tape holds beyond the input (unique buffers: states, gate values, masks).
``peak/tape`` is their ratio; ``peak/(tape+grads)`` also counts the gradients
the backward must return, which are alive at the peak whatever the
implementation (``dx`` alone is D/H of an RNN's tape), so it measures the
scratch an implementation adds on top of the tape and the results.
"""

from __future__ import annotations

import contextlib
import gc
import tracemalloc

import numpy as np

from ...engine import kernels as engine_kernels
from ...trees import leaves

__all__ = ["numpy_memory", "jax_memory", "cuda_memory"]


def _unique_nbytes(arrays) -> int:
    """Bytes of the distinct buffers behind ``arrays`` (views count once, at their base)."""
    seen, total = set(), 0
    for a in arrays:
        if a is None:
            continue
        root = a
        while getattr(root, "base", None) is not None:
            root = root.base
        if id(root) in seen:
            continue
        seen.add(id(root))
        total += int(getattr(root, "nbytes", 0))
    return total


def _tape_bytes(spec, params, x) -> int:
    _, _, tape = spec.forward(params, x)
    engine_tape = tape.layers[0][0]
    return _unique_nbytes(
        list(leaves(engine_tape.states)) + list(leaves(engine_tape.cell_tape)) + [engine_tape.mask]
    )


def traced_peak(run) -> int:
    """The most that :mod:`tracemalloc` saw allocated during ``run()`` beyond what was live before, in bytes."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        run()
        return int(tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()


def numpy_memory(spec, params, x, *, portable=False):
    """``() -> dict`` of ``peak_bytes``, ``tape_bytes``, ``peak_over_tape``, ``peak_over_tape_and_grads``."""

    def memory():
        tape_bytes = _tape_bytes(spec, params, x)
        T, N = x.shape[0], x.shape[1]
        d_out = np.ones((T, N, spec.hidden_size), dtype=x.dtype)  # the loss's gradient: an input
        made: dict = {}

        def run():
            with engine_kernels.portable_only() if portable else contextlib.nullcontext():
                out, _, tape = spec.forward(params, x)  # out stays alive through the backward, as a caller's
                made["grads"] = spec.backward(params, tape, d_out)

        peak = traced_peak(run)
        grads, dx, d0 = made["grads"]
        grad_bytes = _unique_nbytes(list(grads.values()) + [dx] + list(leaves(d0)))
        return {
            "peak_bytes": peak,
            "tape_bytes": int(tape_bytes),
            "peak_over_tape": peak / tape_bytes if tape_bytes else None,
            "peak_over_tape_and_grads": peak / (tape_bytes + grad_bytes),
        }

    return memory


def jax_memory(compiled):
    """``() -> {"peak_bytes"}``: the temporaries and outputs XLA plans for ``compiled`` (``{}`` if unknown)."""

    def memory():
        try:
            m = compiled.memory_analysis()
            return {"peak_bytes": int(m.temp_size_in_bytes + m.output_size_in_bytes)}
        except Exception:  # not every XLA backend reports it
            return {}

    return memory


def cuda_memory(dev, run, sync):
    """``() -> {"peak_bytes"}`` of one run from ``torch.cuda.max_memory_allocated``; ``None`` off CUDA."""
    if dev.type != "cuda":
        return None
    import torch

    def memory():
        sync()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        run()
        return {"peak_bytes": int(torch.cuda.max_memory_allocated(dev) - base)}

    return memory
