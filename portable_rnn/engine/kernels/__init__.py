r"""The NumPy and CPU-torch kernels behind the sequence engine, one per built-in cell.

The engine asks this registry once per pass (:func:`why_not_forward`,
:func:`why_not_backward`). A kernel runs when the cell's class names one in
``fast_kernel`` (:data:`KERNELS`) and every array is a plain NumPy array, or
every one a plain CPU torch tensor (:func:`~portable_rnn.backends.in_host_memory`),
of one float dtype and the layer's own shapes; otherwise the portable path,
the definition of the maths, runs, and the reason is what ``fast_path=True`` reports.

A kernel is written once, in NumPy, on the engine's layouts (the cell's gate
order, its :meth:`~portable_rnn.engine.cells.Cell.prepared` weights, its
named tape as views of the kernel's buffers, mapped in each kernel's
docstring); torch tensors run it on the same memory. It writes only arrays it
allocated. ``tests/engine/test_fastpath.py`` proves every kernel equal to the
portable path and counts its runs (:data:`calls`; :func:`portable_only` switches them off).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import Counter

from ...backends import host_memory_library, in_host_memory, on_host_memory
from ...trees import leaves, stack_trees, tree_map
from . import gru, lstm, rnn, tuning
from ._shared import NUMPY_BLAS, TorchBLAS

__all__ = ["KERNELS", "calls", "portable_only", "enabled", "why_not_forward", "why_not_backward",
           "why_not_segments", "forward", "backward", "over_segments", "tuning"]

#: The kernels by the name a cell class gives in ``fast_kernel``: modules with
#: ``forward``, ``Backward`` and ``torch_blas``.
KERNELS = {"rnn": rnn, "lstm": lstm, "gru": gru}

#: How often each kernel ran, keyed ``(library, "forward" | "backward", kernel)``,
#: e.g. ``calls["numpy", "forward", "lstm"]`` (a spy for the tests).
calls: Counter = Counter()

_local = threading.local()


def enabled() -> bool:
    """Whether a fast path may be chosen in this thread."""
    return getattr(_local, "disabled", 0) == 0


@contextlib.contextmanager
def portable_only():
    """Within this block (and thread), NumPy and torch inputs take the portable path."""
    _local.disabled = getattr(_local, "disabled", 0) + 1
    try:
        yield
    finally:
        _local.disabled -= 1


def _fast_mode(cell):
    """The kernel that runs ``cell`` (a key of :data:`KERNELS`), or None.

    The cell's class names it itself (``fast_kernel`` in its own body; a
    subclass does not inherit it). No kernel takes a cell's own parameters
    (``cell_params``: a projection, peepholes) or applies ``W_hh`` inside its
    step backward (``applies_W_hh``).
    """
    if cell.cell_params(1) or getattr(cell, "applies_W_hh", False):
        return None
    mode = vars(type(cell)).get("fast_kernel")
    return mode if isinstance(mode, str) and mode in KERNELS else None


class _Declined(Exception):
    """Why the fast kernels do not run a case (the portable path then does)."""


def _check(condition, reason: str) -> None:
    if not condition:
        raise _Declined(reason)


def _fast_library(xp) -> str:
    """The library the fast path runs on ``xp`` ("numpy" or "torch"), or :class:`_Declined`."""
    _check(enabled(), "the fast path is switched off in this thread (portable_only)")
    library = host_memory_library(xp)
    if library is None:
        raise _Declined(f"the fast kernels run NumPy arrays and CPU torch tensors, not {xp.__name__}'s")
    return library


def _check_plain(library, arrays) -> None:
    """:class:`_Declined` unless the non-None ``arrays`` are plain arrays of ``library`` of one float dtype."""
    present = [a for a in arrays if a is not None]
    _check(all(in_host_memory(a, library) for a in present) and len({a.dtype for a in present}) <= 1,
           f"not every array is a plain float32 or float64 {_PLAIN[library]} of one dtype")


#: What counts as a plain array of each library (see :func:`~portable_rnn.backends.in_host_memory`).
_PLAIN = {"numpy": "numpy.ndarray",
          "torch": "CPU torch.Tensor (strided, outside autograd and torch.func)"}


def _check_layer(cell, xp, x, W_ih, W_hh, mask, *, vectors=(), states=(), per_step=()):
    """:class:`_Declined` unless a kernel runs ``cell`` on these arrays, all of the layer's own shapes.

    ``vectors`` are (G*H,), ``states`` (N, H) and ``per_step`` (T, N, H); a
    ``None`` among them is an absent bias or gradient.
    """
    library = _fast_library(xp)
    if _fast_mode(cell) is None:
        _check(not getattr(cell, "proj_size", 0), "an LSTM with a projection (proj_size) has no fast kernel")
        _check(not cell.cell_params(1), f"{cell!r} has parameters of its own ({', '.join(cell.cell_params(1))}); "
               "no fast kernel takes them")
        _check(not getattr(cell, "applies_W_hh", False),
               f"{cell!r} applies W_hh in its own step backward; no fast kernel does")
        raise _Declined(f"{type(cell).__name__} names no fast kernel (fast_kernel, set in its own class body)")
    _check(not any(a is None for a in (x, W_ih, W_hh)), "x or a weight is None")
    _check_plain(library, [x, W_ih, W_hh, mask, *vectors, *states, *per_step])
    _check(x.ndim == 3 and x.shape[0] > 0 and W_hh.ndim == 2, "x is not (T, N, D) with T > 0")
    (T, N, D), H = x.shape, W_hh.shape[1]
    shapes = {(cell.n_gates * H, D): [W_ih], (cell.n_gates * H, H): [W_hh], (T, N, 1): [mask],
              (cell.n_gates * H,): vectors, (N, H): states, (T, N, H): per_step}
    _check(all(a is None or tuple(a.shape) == shape for shape, arrays in shapes.items() for a in arrays),
           "an array does not have the layer's own shape (broadcasting)")


def _states(tree, cell, *, optional=False) -> tuple:
    """``tree`` as a tuple of one array per state of ``cell`` (None allowed if ``optional``), or :class:`_Declined`."""
    _check(isinstance(tree, (tuple, list)) and len(tree) == cell.n_states
           and (optional or not any(a is None for a in tree)), "the states do not fit the cell")
    return tuple(tree)


def _reason(check, *args):
    """``None`` when ``check(*args)`` accepts, else why it declines."""
    try:
        check(*args)
    except _Declined as declined:
        return str(declined)
    return None


_REGULARISED = "no fast kernel applies zoneout or recurrent dropout"


def why_not_forward(cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask, xp, zoneout=None, h_mask=None) -> str | None:
    """``None`` when :func:`forward` runs these inputs, else why not (the portable path then does)."""
    def accept():
        _check(zoneout is None and h_mask is None, _REGULARISED)
        _check_layer(cell, xp, x, W_ih, W_hh, mask, vectors=(b_ih, b_hh), states=_states(state0, cell))

    return _reason(accept)


def why_not_backward(cell, tape, d_out, d_final, W_ih, W_hh, xp) -> str | None:
    """``None`` when :func:`backward` runs this tape, else why not (the portable path then does)."""
    def accept():
        _check(isinstance(tape, tuple) and len(tape) >= 5, "the tape is not a full Tape")
        _check(all(field is None for field in tape[5:]), _REGULARISED)
        x, state0, states, cell_tape, mask = tape[:5]
        fields = () if cell.tape_type is None else cell_tape
        _check(isinstance(fields, (tuple, list)) and len(fields) == len(getattr(cell.tape_type, "_fields", ()))
               and not any(a is None for a in fields), "the cell's tape does not have the cell's fields")
        d_final_ = _states((None,) * cell.n_states if d_final is None else d_final, cell, optional=True)
        _check_layer(cell, xp, x, W_ih, W_hh, mask, states=(*_states(state0, cell), *d_final_),
                     per_step=(d_out, *_states(states, cell), *fields))

    return _reason(accept)


def why_not_segments(xp, *trees) -> str | None:
    """``None`` when :func:`over_segments` runs (every leaf a plain array of one dtype), else why not."""
    return _reason(lambda: _check_plain(_fast_library(xp), [a for t in trees for a in leaves(t)]))


def over_segments(fn, carry, step_xs, segment_xs, k, xp, reverse):
    """:func:`portable_rnn.engine.sequence._over_segments`, writing each segment's per-step results in place.

    The same segments (``k`` steps each, the last shorter) in the same order
    and the same numbers; the (T, ...) results are allocated when the first
    segment's come back and every segment's are copied into their rows and
    dropped, so they are never held twice.
    """
    n_steps = next(a.shape[0] for a in leaves(step_xs))
    starts = range(0, n_steps, k)
    order = reversed(range(len(starts))) if reverse else range(len(starts))
    joined, per_segment = None, [None] * len(starts)
    for s in order:
        t0, t1 = starts[s], min(starts[s] + k, n_steps)
        xs = (tree_map(lambda a: a[t0:t1, ...], step_xs), tree_map(lambda a: a[s, ...], segment_xs))
        carry, (step_ys, per_segment[s]) = fn(carry, xs)
        if joined is None:
            joined = tree_map(
                lambda a: xp.empty((n_steps, *a.shape[1:]), dtype=a.dtype, device=a.device), step_ys
            )
        for buffer, rows in zip(leaves(joined), leaves(step_ys)):
            buffer[t0:t1, ...] = rows
    return carry, (joined, stack_trees(per_segment, xp))


# --------------------------------------------------------------------------- running a kernel


def _blas(library, name, N, W_hh):
    """The BLAS chooser of kernel ``name`` at batch ``N``: torch's on torch tensors where the kernel wants it."""
    return TorchBLAS() if library == "torch" and KERNELS[name].torch_blas(N, W_hh) else NUMPY_BLAS


def forward(cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask, xp):
    """Fast :func:`portable_rnn.engine.sequence.forward`: ``(out, final, states, cell_tape)``."""
    name, library = _fast_mode(cell), _fast_library(xp)
    calls[library, "forward", name] += 1
    kernel = functools.partial(KERNELS[name].forward, cell, _blas(library, name, x.shape[1], W_hh))
    out, final, states, fields = on_host_memory(library, kernel, x, state0, W_ih, W_hh, b_ih, b_hh, mask)
    return out, final, states, (None if fields is None else cell.tape_type(*fields))


def backward(cell, tape, d_out, d_final, W_ih, W_hh, keep, bias, xp):
    """Fast :func:`portable_rnn.engine.sequence.backward`: ``(dx, dstate0, dW_ih, dW_hh, db_ih, db_hh)``.

    ``keep`` is :func:`portable_rnn.engine.sequence.window_keep`'s result.
    """
    name, library = _fast_mode(cell), _fast_library(xp)
    calls[library, "backward", name] += 1
    x, state0, states, cell_tape, mask = tape[:5]
    tape = (x, tuple(state0), tuple(states), None if cell_tape is None else tuple(cell_tape), mask)
    d_final = (None,) * cell.n_states if d_final is None else tuple(d_final)
    blas = _blas(library, name, x.shape[1], W_hh)

    def kernel(*arrays):
        return KERNELS[name].Backward(cell, *arrays, bias, blas).run()

    return on_host_memory(library, kernel, tape, d_out, d_final, W_ih, W_hh, keep)
