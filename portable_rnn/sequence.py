r"""The sequence engine: one recurrent layer over time, forward and backward.

Time-major and batch-major per step, as PyTorch: ``x`` is (T, N, D), each
state (N, H), weights ``W_ih`` (G*H, D) and ``W_hh`` (G*H, H). An LSTM with a
projection (``cell.proj_size = P``) has h states (N, P), ``W_hh`` (4H, P) and
the projection ``W_hr`` (P, H), whose gradient is one more contraction after
the loop, :math:`dW_{hr} = dH^T M` with :math:`m_t = o \odot \tanh(c_t)`.

The work is arranged so that only what must be sequential is in the loop:

- the input projection :math:`X W_{ih}^T + b` is one matmul for all steps;
- each step does the recurrent matmul and the cell's elementwise maths;
- in the backward, :math:`dX = dZ\,W_{ih}`, :math:`dW_{ih} = dZ^T X` and
  :math:`dW_{hh} = dZ_h^T H_{prev}` are single matmuls over all steps after
  the loop, and the loop itself carries only :math:`dh_{t-1} = dz_t W_{hh}`.

The loop goes through :func:`portable_rnn.loop.scan`, so it is a Python loop
on eager backends and ``jax.lax.scan`` on JAX.
"""

from __future__ import annotations

from typing import NamedTuple

from . import _eager_fast
from ._validation import placement as device
from .loop import scan

__all__ = ["Tape", "Grads", "ProjectedGrads", "forward", "backward", "window_keep"]


class Tape(NamedTuple):
    """What the backward of one layer needs (a pytree: fine under ``jax.jit``).

    Attributes
    ----------
    x : array (T, N, D)
        The layer input.
    state0 : tuple of arrays (N, H)
        The initial state, ``(h0,)`` or ``(h0, c0)``.
    states : tuple of arrays (T, N, H)
        The state after every step (frozen past a sequence's length).
    cell_tape : tree of arrays (T, ...) or None
        What the cell kept per step (see :mod:`portable_rnn.cells`).
    mask : array (T, N, 1) or None
        1.0 for valid steps and 0.0 for padding.
    """

    x: object
    state0: tuple
    states: tuple
    cell_tape: object
    mask: object = None


class Grads(NamedTuple):
    """Gradients of one layer: input, initial state and parameters."""

    dx: object
    dstate0: tuple
    dW_ih: object
    dW_hh: object
    db_ih: object
    db_hh: object


ProjectedGrads = NamedTuple("ProjectedGrads", [(name, object) for name in (*Grads._fields, "dW_hr")])
ProjectedGrads.__doc__ = """The :class:`Grads` of a layer with a projection (LSTM ``proj_size``), then ``dW_hr`` (P, H).

A type of its own, so that :class:`Grads` keeps its six fields for every
other layer (code that unpacks or slices it stays right).
"""


def _lax_unroll(x, W_hh) -> int:
    """``unroll`` for ``lax.scan``: 4 when a step is tiny (N*H <= 1024), else 1.

    At (N, H) = (1, 64) a step is a few hundred flops and the XLA loop's own
    overhead per iteration dominates (GRU: 6.2 ms -> 3.5 ms at T = 1000 with 4);
    from N*H ~ 4096 on, unrolling stops paying and only adds compile time.
    """
    return 4 if x.shape[1] * W_hh.shape[-1] <= 1024 else 1


def _folded_biases(cell, b_ih, b_hh):
    """Biases added to the hoisted projection and inside the step."""
    if cell.recurrent_bias_inside:
        return b_ih, b_hh
    if b_ih is None or b_hh is None:
        return (b_ih if b_hh is None else b_hh), None
    return b_ih + b_hh, None


def forward(cell, x, state0, W_ih, W_hh, b_ih=None, b_hh=None, mask=None, *, xp, W_hr=None):
    """Run one layer of ``cell`` over a sequence.

    Parameters
    ----------
    cell : RNNCell, LSTMCell or GRUCell
    x : array (T, N, D)
    state0 : tuple of arrays (N, H)
        (N, P) for the h of a projected LSTM.
    W_ih : array (G*H, D)
    W_hh : array (G*H, H), or (4H, P) for a projected LSTM
    b_ih, b_hh : array (G*H,) or None
    mask : array (T, N, 1) or None
        Steps where the mask is 0 leave the state unchanged and output zeros.
        Whatever ``x`` holds there (NaN, inf) never reaches a result: it is
        replaced by zeros first, so the masked blend below only ever
        multiplies finite numbers (``0 * NaN`` would be NaN).
    xp : namespace
    W_hr : array (P, H) or None
        The projection of an LSTM cell with ``proj_size = P``; ``None`` otherwise.

    Returns
    -------
    out : array (T, N, H), or (T, N, P) with a projection
        The hidden state of every step (zero where masked).
    final : tuple of arrays (N, H)
        The state after the last valid step of each sequence.
    tape : Tape
    """
    projection = _projection(cell, W_hr)
    x = _zero_padding(x, mask, xp)
    if _eager_fast.accepts_forward(cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask, xp):
        out, final, states, cell_tape = _eager_fast.forward(cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask, xp)
        return out, final, Tape(x, tuple(state0), states, cell_tape, mask)
    b_x, b_h = _folded_biases(cell, b_ih, b_hh)
    xw = x @ xp.matrix_transpose(W_ih)
    if b_x is not None:
        xw = xw + b_x


    def step(state, inputs):
        xw_t, m_t, om_t = inputs
        new_state, cell_tape = cell.step(xw_t, state, W_hh, b_h, xp=xp, **projection)
        if m_t is not None:
            new_state = tuple(m_t * new + om_t * old for new, old in zip(new_state, state))
        return new_state, (new_state, cell_tape)

    om = None if mask is None else 1 - mask
    final, (states, cell_tape) = scan(step, tuple(state0), (xw, mask, om), xp=xp,
                                      unroll=_lax_unroll(x, W_hh))
    out = states[0] if mask is None else states[0] * mask
    return out, final, Tape(x, tuple(state0), states, cell_tape, mask)


def _projection(cell, W_hr) -> dict:
    """The keyword a projected cell's ``step`` and ``step_backward`` take (``W_hr``); ``{}`` for the others."""
    if bool(getattr(cell, "proj_size", 0)) != (W_hr is not None):
        raise ValueError(f"W_hr must be given exactly when the cell has a projection; cell {cell!r}")
    return {} if W_hr is None else {"W_hr": W_hr}


def _zero_padding(a, mask, xp):
    """``a`` (T, N, F) with zeros at masked steps: a select, so NaN or inf there cannot leak."""
    if a is None or mask is None:
        return a
    return xp.where(mask > 0, a, xp.zeros((), dtype=a.dtype, device=device(a)))


def window_keep(n_steps: int, truncate: int | None, mask=None, *, dtype, device, xp):
    """Per-step factor on the carried gradient for truncated BPTT.

    The sequence is cut into windows ``[0, k), [k, 2k), ...``. Going backward,
    the gradient carried into step ``t`` from step ``t + 1`` is dropped when
    step ``t + 1`` starts a window, and only if it is a valid step: the
    final-state gradient enters at ``T - 1`` and crosses a short sequence's
    padding untouched, reaching its last valid step whole.

    Returns
    -------
    array (T,) or (T, N, 1), or None
        ``None`` means full BPTT (nothing dropped); (T, N, 1) when ``mask``
        is given.

    Notes
    -----
    The factors are computed on ``device`` from ``arange`` and comparisons:
    an array built from a host list would be a blocking host-to-device copy
    on every backward of every layer and direction on a GPU.
    """
    if truncate is None or truncate >= n_steps:
        return None
    starts = xp.arange(1, n_steps + 1, device=device)  # t + 1, for t = 0 .. T-1
    cut = (starts % truncate == 0) & (starts < n_steps)
    keep = xp.astype(xp.logical_not(cut), dtype)
    if mask is None:
        return keep
    next_valid = xp.concat([mask[1:, ...], xp.zeros_like(mask[:1, ...])], axis=0)
    return 1 - (1 - keep[:, None, None]) * next_valid


def _shifted(state0, states, xp):
    """States entering each step: (s0, s1, ..., s_{T-1})."""
    return tuple(
        xp.concat([xp.expand_dims(s0, axis=0), s[:-1, ...]], axis=0)
        for s0, s in zip(state0, states)
    )


def backward(cell, tape, d_out, d_final, W_ih, W_hh, *, xp, truncate=None, bias=True, W_hr=None):
    """Backpropagation through time for one layer.

    Parameters
    ----------
    cell : RNNCell, LSTMCell or GRUCell
        The cell used in :func:`forward`.
    tape : Tape
    d_out : array (T, N, H) or None
        Gradient of the loss with respect to ``out``; ignored (read as zero)
        at masked steps.
    d_final : tuple of arrays (N, H), entries may be None
        Gradient with respect to the final state.
    W_ih, W_hh : arrays
        The weights used in :func:`forward`.
    xp : namespace
    truncate : int or None
        Truncated BPTT window (see :func:`window_keep`).
    bias : bool
        Whether to return bias gradients.
    W_hr : array (P, H) or None
        The projection used in :func:`forward` (projected LSTM only).

    Returns
    -------
    Grads, or ProjectedGrads with a projection
        ``db_ih`` and ``db_hh`` are ``None`` when ``bias`` is false.
    """
    projection = _projection(cell, W_hr)
    x, state0, states, cell_tape, mask = tape
    n_steps = x.shape[0]
    dtype, dev = x.dtype, device(x)
    d_out = _zero_padding(d_out, mask, xp)
    if _eager_fast.accepts_backward(cell, tape, d_out, d_final, W_ih, W_hh, xp):
        keep = window_keep(n_steps, truncate, mask, dtype=dtype, device=dev, xp=xp)
        return Grads(*_eager_fast.backward(cell, tape, d_out, d_final, W_ih, W_hh, keep, bias, xp))
    d_carry = tuple(
        xp.zeros_like(s0) if d is None else d
        for s0, d in zip(state0, d_final if d_final is not None else (None,) * len(state0))
    )
    prev_states = _shifted(state0, states, xp)
    keep = window_keep(n_steps, truncate, mask, dtype=dtype, device=dev, xp=xp)

    def step(d_state, inputs):
        d_out_t, state_t, prev_t, tape_t, m_t, keep_t = inputs
        if keep_t is not None:
            d_state = tuple(d * keep_t for d in d_state)
        d_h = d_state[0] if d_out_t is None else d_state[0] + d_out_t
        d_new = (d_h,) + d_state[1:]
        if m_t is not None:
            d_new = tuple(m_t * d for d in d_new)
        d_xw, d_hw, d_direct = cell.step_backward(d_new, state_t, prev_t, tape_t, xp=xp, **projection)
        d_rec = (d_xw if d_hw is None else d_hw) @ W_hh
        d_prev = (d_rec if d_direct[0] is None else d_direct[0] + d_rec,) + d_direct[1:]
        if m_t is not None:  # padded steps pass the state gradient straight through
            d_prev = tuple(dp + (1 - m_t) * ds for dp, ds in zip(d_prev, d_state))
        # The projection's gradient needs the gradient of each step's h.
        return d_prev, (d_xw, d_hw, d_new[0] if projection else None)

    xs = (d_out, states, prev_states, cell_tape, mask, keep)
    d_state0, (d_xw, d_hw, d_h) = scan(step, d_carry, xs, xp=xp, reverse=True, unroll=_lax_unroll(x, W_hh))
    grads = (d_xw @ W_ih, d_state0, *_weight_grads(d_xw, d_hw, x, prev_states[0], bias, xp))
    if not projection:
        return Grads(*grads)
    return ProjectedGrads(*grads, xp.tensordot(d_h, cell.unprojected(cell_tape), axes=([0, 1], [0, 1])))


def _weight_grads(d_xw, d_hw, x, h_prev, bias, xp):
    """``(dW_ih, dW_hh, db_ih, db_hh)`` from the pre-activation gradients of every step.

    Weight gradients contract over time and batch together. A reshape to
    (T*N, F) would merge time with the batch axis, which XLA can only do for a
    batch-sharded x by gathering the whole batch on every device.
    """
    if d_hw is None:
        d_hw = d_xw
    steps_and_batch = ([0, 1], [0, 1])
    dW_ih = xp.tensordot(d_xw, x, axes=steps_and_batch)
    dW_hh = xp.tensordot(d_hw, h_prev, axes=steps_and_batch)
    db_ih = db_hh = None
    if bias:
        db_ih = xp.sum(d_xw, axis=(0, 1))
        db_hh = db_ih if d_hw is d_xw else xp.sum(d_hw, axis=(0, 1))
    return dW_ih, dW_hh, db_ih, db_hh
