r"""The sequence engine: one recurrent layer over time, forward and backward.

Time-major and batch-major per step, as PyTorch: ``x`` is (T, N, D), each
state (N, H), weights ``W_ih`` (G*H, D) and ``W_hh`` (G*H, H). An LSTM with a
projection (``cell.proj_size = P``) has h states (N, P) and ``W_hh`` (4H, P).
A cell's own parameters beyond the weights and biases (:meth:`~portable_rnn.engine.cells.Cell.cell_params`:
an LSTM's projection ``W_hr``, its peepholes) travel as ``cell_params`` and
get their gradients from one contraction over all steps after the loop.

Only what must be sequential is in the loop (:func:`portable_rnn.engine.loop.scan`:
a Python loop, or ``jax.lax.scan`` under JAX tracing). The input projection
:math:`X W_{ih}^T + b` is one matmul for all steps; each step does the
recurrent matmul and the cell's elementwise maths. The backward carries only
:math:`dh_{t-1} = dz_t W_{hh}`, with :math:`dX = dZ\,W_{ih}`,
:math:`dW_{ih} = dZ^T X` and :math:`dW_{hh} = dZ_h^T H_{prev}` as single
matmuls after the loop; an eager backward computes the cells' local
derivatives for :data:`BACKWARD_CHUNK` steps at a time ahead of the loop over
them.

What the forward keeps for the backward, its *tape*, is chosen by ``retain``:

``"full"``
    every step's states and gate values, about :math:`(2 + 5) T N H`
    numbers for an LSTM (:class:`Tape`);
``"checkpoint"``
    only the states entering each segment of at most ``checkpoint_every``
    steps (default :math:`\lceil\sqrt T\rceil`, :class:`CheckpointTape`):
    the backward recomputes each segment's :class:`Tape` from its
    checkpoint, from the last segment to the first, so its memory grows like
    :math:`\sqrt T` instead of :math:`T` for one more forward pass of compute;
``"none"``
    nothing: inference, run in segments of :data:`INFERENCE_SEGMENT` steps
    so that not even the hoisted input projection grows with T.

Segments are nested loops (under ``jax.jit``, a ``lax.scan`` over segments
around the ``lax.scan`` over steps), so a compiled program stays one step's
code whatever T is.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from . import kernels
from .._validation import RETAIN, check_fast_path, check_retain
from .._validation import placement as device
from ..trees import leaves, tree_map
from .loop import compiles, scan

__all__ = [
    "RETAIN", "INFERENCE_SEGMENT", "BACKWARD_CHUNK", "Tape", "CheckpointTape", "Grads",
    "forward", "backward", "window_keep", "segment_length",
]

#: Steps whose local derivatives (``cell.step_derivatives``) an eager backward
#: computes at once, before its loop runs over them: a handful of kernels per
#: chunk instead of per step, for a scratch of one chunk's derivatives (5 to 7
#: numbers per step and hidden unit), never the sequence's. A compiled loop
#: (``lax.scan``) computes them in its step, where XLA fuses them.
BACKWARD_CHUNK = 32

#: Steps per segment of a ``retain="none"`` forward by default: a constant, so
#: that its scratch does not grow with T; long enough that the per-segment
#: overhead (a few small copies of the weights on the NumPy path) stays small.
INFERENCE_SEGMENT = 128


class Tape(NamedTuple):
    """What the backward of one layer needs (a pytree: fine under ``jax.jit``).

    ``x`` (T, N, D) is the layer input; ``state0`` the initial state,
    ``(h0,)`` or ``(h0, c0)``; ``states`` the state after every step, each
    (T, N, H), frozen past a sequence's length; ``cell_tape`` what the cell
    kept per step (:mod:`portable_rnn.engine.cells`), or None; ``mask``
    (T, N, 1) is 1.0 at valid steps and 0.0 at padding, or None. With
    zoneout, ``zoneout`` holds its factors and ``raw_states`` every step's
    new state before the blend with the old one (what the cell's
    derivatives are of); ``h_mask`` is the recurrent dropout factor (N, R).
    """

    x: object
    state0: tuple
    states: tuple
    cell_tape: object
    mask: object = None
    zoneout: tuple | None = None
    raw_states: tuple | None = None
    h_mask: object = None


class CheckpointTape(NamedTuple):
    """What the checkpointed backward needs: the input and the state entering every segment.

    ``x`` (T, N, D) is the layer input (zero at masked steps);
    ``checkpoints[j][s]`` (N, H) is state part ``j`` entering segment ``s``
    (segment 0's is the initial state); ``mask`` is (T, N, 1) or None;
    ``b_ih``, ``b_hh`` are the biases the recomputation needs (the backward
    is given the weights), ``zoneout`` and ``h_mask`` its regularisers'
    factors (see :func:`forward`). The segments are :func:`segment_length`'s for T
    and S = the number of checkpoints, so the layout travels in the shapes
    (static under ``jax.jit``), not in a field.
    """

    x: object
    checkpoints: tuple
    mask: object
    b_ih: object
    b_hh: object
    zoneout: tuple | None = None
    h_mask: object = None


class Grads(NamedTuple):
    """Gradients of one layer: input, initial state, parameters, and ``{keyword: gradient}`` of ``cell_params``."""

    dx: object
    dstate0: tuple
    dW_ih: object
    dW_hh: object
    db_ih: object
    db_hh: object
    dcell_params: dict | None = None


def _lax_unroll(x, W_hh) -> int:
    """``unroll`` for ``lax.scan``: 4 when a step is tiny (N*H <= 1024), where the XLA loop's own
    overhead per iteration dominates (a GRU at (N, H) = (1, 64) ran in 0.56x the time); else 1."""
    return 4 if x.shape[1] * W_hh.shape[-1] <= 1024 else 1


def forward(cell, x, state0, W_ih, W_hh, b_ih=None, b_hh=None, mask=None, *, xp, cell_params=None,
            zoneout=None, h_mask=None, retain="full", checkpoint_every=None, fast_path="auto", tape=None):
    r"""Run one layer of ``cell`` over a sequence.

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
    cell_params : dict of str to array, optional
        The cell's own parameters, exactly the keywords of its
        :meth:`~portable_rnn.engine.cells.Cell.cell_params` (e.g. ``{"W_hr": W_hr}``).
    zoneout : tuple of arrays, optional
        Zoneout (Krueger et al. 2016): one factor :math:`u` per state part,
        (T, N, F) or (T, 1, 1), and each step's state is
        :math:`u \odot s_{new} + (1 - u) \odot s_{t-1}`: 0/1 in training
        (a unit keeps its old value where 0), :math:`1 - p` in evaluation.
    h_mask : array (N, R), optional
        Recurrent dropout (Gal & Ghahramani 2016): the factor on
        :math:`h_{t-1}` where it enters the recurrent product, the same at
        every step; for cells that take it (``Cell.takes_h_mask``).
    retain : {"full", "checkpoint", "none"}
        What to keep for :func:`backward` (see the module docstring).
    checkpoint_every : int or None
        Steps per segment at most, for ``"checkpoint"`` and ``"none"``
        (:func:`segment_length`; ``None``: its default).
    fast_path : {"auto", True, False}
        Whether a fast kernel (:mod:`portable_rnn.engine.kernels`) runs the
        layer: where one accepts the case, always (``True``: a ``ValueError``
        says why none does, e.g. for a projected LSTM or JAX arrays), or
        never (``False``: the portable path). Both give the same numbers, to rounding.
    tape : {"full", "checkpoint", "none"} or None
        ``retain``'s deprecated spelling.

    Returns
    -------
    out : array (T, N, H), or (T, N, P) with a projection
        The hidden state of every step (zero where masked).
    final : tuple of arrays (N, H)
        The state after the last valid step of each sequence.
    tape : Tape, CheckpointTape or None
        ``None`` for ``retain="none"``.
    """
    retain, checkpoint_every = check_retain(retain, checkpoint_every, tape=tape)
    fast_path = check_fast_path(fast_path)
    params = _cell_params(cell, W_ih, cell_params)
    zoneout = _check_regularisers(cell, zoneout, h_mask)
    x = _zero_padding(x, mask, xp)
    if retain == "full":
        return _forward_full(cell, x, tuple(state0), W_ih, W_hh, b_ih, b_hh, mask, xp, params, fast_path,
                             zoneout, h_mask)
    keep_checkpoints = retain == "checkpoint"

    def segment(state, inputs):
        (x_s, mask_s, zoneout_s), _ = inputs
        out_s, final_s, _ = _forward_full(cell, x_s, state, W_ih, W_hh, b_ih, b_hh, mask_s, xp, params, fast_path,
                                          zoneout_s, h_mask)
        return final_s, (out_s, state if keep_checkpoints else None)

    if checkpoint_every is None and not keep_checkpoints:
        checkpoint_every = INFERENCE_SEGMENT
    k = segment_length(x.shape[0], checkpoint_every)
    final, (out, checkpoints) = _over_segments(segment, tuple(state0), (x, mask, zoneout), None, k, xp,
                                               fast_path=fast_path)
    if not keep_checkpoints:
        return out, final, None
    return out, final, CheckpointTape(x, checkpoints, mask, b_ih, b_hh, zoneout, h_mask)


def _check_regularisers(cell, zoneout, h_mask):
    """``zoneout`` as a tuple with one factor per state part (or None); refuse what the cell cannot take."""
    if h_mask is not None and not cell.takes_h_mask:
        raise ValueError(f"recurrent dropout (h_mask) needs a cell that takes it; {cell!r} does not "
                         "(Cell.takes_h_mask)")
    if zoneout is not None:
        zoneout = tuple(zoneout)
        if len(zoneout) != cell.n_states:
            raise ValueError(f"zoneout must hold one factor per state {cell.states}, got {len(zoneout)}")
    return zoneout


def _blends(mask, zoneout, n_states, xp):
    """Per state part, the factor on each step's new value (the rest keeps the old): ``(u, 1 - u)`` trees.

    ``mask`` (T, N, 1) freezes padded steps; ``zoneout`` factors multiply it.
    ``(None, None)`` when neither is given.
    """
    if zoneout is None:
        if mask is None:
            return None, None
        return (mask,) * n_states, (1 - mask,) * n_states
    update = zoneout if mask is None else tuple(mask * u for u in zoneout)
    return update, tuple(1 - u for u in update)


def _fast(fast_path, why_not, *args) -> bool:
    """Whether a fast kernel runs, given ``fast_path`` and its ``why_not(*args)`` (None: it accepts)."""
    if fast_path is False:
        return False
    reason = why_not(*args)
    if reason is not None and fast_path is True:
        raise ValueError(f"fast_path=True, but no fast kernel runs this layer: {reason}")
    return reason is None


def _forward_full(cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask, xp, params, fast_path, zoneout=None, h_mask=None):
    """:func:`forward` keeping the full :class:`Tape` (``x`` already zero at masked steps)."""
    if _fast(fast_path, kernels.why_not_forward, cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask, xp, zoneout, h_mask):
        out, final, states, cell_tape = kernels.forward(cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask, xp)
        return out, final, Tape(x, state0, states, cell_tape, mask)
    W_ih, W_hh, b_x, b_h = cell.prepared(W_ih, W_hh, b_ih, b_hh, xp=xp)
    xw = x @ xp.matrix_transpose(W_ih)
    if b_x is not None:
        xw = xw + b_x
    dropped = {} if h_mask is None else {"h_mask": h_mask}

    def step(state, inputs):
        xw_t, u_t, keep_old_t = inputs
        new_state, cell_tape = cell.step(xw_t, state, W_hh, b_h, xp=xp, **params, **dropped)
        raw = None if zoneout is None else new_state
        if u_t is not None:
            new_state = tuple(u * new + k * old for u, k, new, old in zip(u_t, keep_old_t, new_state, state))
        return new_state, (new_state, cell_tape, raw)

    update, keep_old = _blends(mask, zoneout, len(state0), xp)
    final, (states, cell_tape, raw) = scan(step, state0, (xw, update, keep_old), xp=xp, unroll=_lax_unroll(x, W_hh))
    out = states[0] if mask is None else states[0] * mask
    return out, final, Tape(x, state0, states, cell_tape, mask, zoneout, raw, h_mask)


def segment_length(n_steps: int, checkpoint_every: int | None = None) -> int:
    """Steps per segment when a sequence of ``n_steps`` is cut into segments of at most ``checkpoint_every``.

    The largest divisor k of T with every/2 < k <= every, so no short last
    segment (whose results XLA would join to the others' by copying); else
    S = ceil(T / every) balanced segments of k = ceil(T / S) steps, the last
    shorter. Either way the backward reads S off the checkpoints and knows k.
    ``None`` is every = ceil(sqrt(T)), about minimising checkpoints plus one
    segment's tape.
    """
    if checkpoint_every is None:
        checkpoint_every = math.isqrt(n_steps - 1) + 1
    checkpoint_every = min(checkpoint_every, n_steps)
    for k in range(checkpoint_every, checkpoint_every // 2, -1):
        if n_steps % k == 0:
            return k
    n_segments = -(-n_steps // checkpoint_every)
    return -(-n_steps // n_segments)


def _over_segments(fn, carry, step_xs, segment_xs, k, xp, reverse=False, fast_path="auto"):
    """Run ``fn`` over consecutive segments of ``k`` steps: a scan over full segments, then the short tail.

    ``fn(carry, (step_xs_s, segment_xs_s)) -> (carry, (step_ys_s, segment_ys_s))``:
    ``step_xs`` leaves (T, ...) are cut into segments and ``step_ys`` joined
    back into (T, ...); ``segment_xs`` and ``segment_ys`` leaves are (S, ...),
    one entry per segment. ``reverse`` runs from the last segment (the tail)
    to the first. Only the time axis is reshaped: a batch sharding is untouched.
    """
    if _fast(fast_path, kernels.why_not_segments, xp, step_xs, segment_xs):
        return kernels.over_segments(fn, carry, step_xs, segment_xs, k, xp, reverse)
    n_steps = next(a.shape[0] for a in leaves(step_xs))
    n_full, tail = divmod(n_steps, k)
    head_len = n_full * k

    def head(a):
        return xp.reshape(a[:head_len, ...], (n_full, k) + tuple(a.shape[1:]))

    head_xs = (tree_map(head, step_xs), tree_map(lambda a: a[:n_full, ...], segment_xs))

    def run_tail(carry):
        tail_xs = (tree_map(lambda a: a[head_len:, ...], step_xs), tree_map(lambda a: a[n_full, ...], segment_xs))
        return fn(carry, tail_xs)

    tail_ys = None
    if tail and reverse:
        carry, tail_ys = run_tail(carry)
    carry, (step_ys, segment_ys) = scan(fn, carry, head_xs, xp=xp, reverse=reverse)
    if tail and not reverse:
        carry, tail_ys = run_tail(carry)
    step_ys = tree_map(lambda a: xp.reshape(a, (head_len,) + tuple(a.shape[2:])), step_ys)
    if tail_ys is not None:
        step_ys = tree_map(lambda a, b: xp.concat([a, b], axis=0), step_ys, tail_ys[0])
        segment_ys = tree_map(lambda a, b: xp.concat([a, xp.expand_dims(b, axis=0)], axis=0),
                              segment_ys, tail_ys[1])
    return carry, (step_ys, segment_ys)


def _cell_params(cell, W_ih, cell_params) -> dict:
    """``cell_params`` as a dict, checked against the keywords the cell declares."""
    params = dict(cell_params or {})
    expected = cell.cell_params(W_ih.shape[0] // cell.n_gates)
    if set(params) != set(expected):
        raise ValueError(f"cell_params must have the keys {sorted(expected)} of cell {cell!r}, got {sorted(params)}")
    return params


def _zero_padding(a, mask, xp):
    """``a`` (T, N, F) with zeros at masked steps: a select, so NaN or inf there cannot leak."""
    if a is None or mask is None:
        return a
    return xp.where(mask > 0, a, xp.zeros((), dtype=a.dtype, device=device(a)))


def window_keep(n_steps: int, truncate: int | None, mask=None, *, dtype, device, xp):
    """Per-step factor on the carried gradient for truncated BPTT: (T,), (T, N, 1) with ``mask``, or None.

    The sequence is cut into windows ``[0, k), [k, 2k), ...``. Going backward,
    the gradient carried into step ``t`` from step ``t + 1`` is dropped when
    step ``t + 1`` starts a window, and only if it is a valid step: the
    final-state gradient enters at ``T - 1`` and crosses a short sequence's
    padding untouched, reaching its last valid step whole. ``None`` is full
    BPTT. The factors are made on ``device`` from ``arange`` and comparisons:
    an array built from a host list would be a blocking host-to-device copy
    in every backward of every layer and direction on a GPU.
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


def backward(cell, tape, d_out, d_final, W_ih, W_hh, *, xp, truncate=None, bias=True, cell_params=None,
             fast_path="auto"):
    """Backpropagation through time for one layer.

    Parameters
    ----------
    cell : RNNCell, LSTMCell or GRUCell
        The cell used in :func:`forward`.
    tape : Tape or CheckpointTape
        From :func:`forward`. With a :class:`CheckpointTape`, every per-step
        result is the full tape's computation (bit-identical where the backend
        rounds a segment's input projection as it rounds the whole one, else
        to a few ulps) and the weight gradients are sums of per-segment
        contractions (equal up to the order of the additions).
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
    cell_params : dict of str to array, optional
        The cell's own parameters used in :func:`forward`.
    fast_path : {"auto", True, False}
        As in :func:`forward`, for the backward's kernels.

    Returns
    -------
    Grads
        ``db_ih`` and ``db_hh`` are ``None`` when ``bias`` is false.
    """
    fast_path = check_fast_path(fast_path)
    params = _cell_params(cell, W_ih, cell_params)
    checkpointed = isinstance(tape, CheckpointTape)
    x, mask = tape.x, tape.mask
    state0 = tuple(c[0, ...] for c in tape.checkpoints) if checkpointed else tape.state0
    d_out = _zero_padding(d_out, mask, xp)
    keep = window_keep(x.shape[0], truncate, mask, dtype=x.dtype, device=device(x), xp=xp)
    if not checkpointed:
        return _backward_full(cell, tape, d_out, d_final, W_ih, W_hh, keep, bias, xp, params, fast_path)
    d_carry = _zeros_for_none(d_final, state0, xp)
    b_ih, b_hh = tape.b_ih, tape.b_hh
    sums = (W_ih, W_hh, b_ih if bias else None, b_hh if bias else None, params)
    sums = tree_map(xp.zeros_like, sums)

    def segment(carry, inputs):
        d_state, sums = carry
        (x_s, mask_s, zoneout_s, d_out_s, keep_s), state_s = inputs
        _, _, tape_s = _forward_full(cell, x_s, state_s, W_ih, W_hh, b_ih, b_hh, mask_s, xp, params, fast_path,
                                     zoneout_s, tape.h_mask)
        g = _backward_full(cell, tape_s, d_out_s, d_state, W_ih, W_hh, keep_s, bias, xp, params, fast_path)
        sums = tree_map(lambda total, part: total + part, sums, tuple(g[2:]))
        return (g.dstate0, sums), (g.dx, None)

    k = -(-x.shape[0] // tape.checkpoints[0].shape[0])  # ceil(T / S): see segment_length
    (d_state0, sums), (dx, _) = _over_segments(
        segment, (d_carry, sums), (x, mask, tape.zoneout, d_out, keep), tape.checkpoints, k, xp, reverse=True,
        fast_path=fast_path,
    )
    return Grads(dx, d_state0, *sums)


def _zeros_for_none(d_final, state0, xp):
    """``d_final`` as a tuple of arrays: zeros like the state where it is ``None``."""
    if d_final is None:
        d_final = (None,) * len(state0)
    return tuple(xp.zeros_like(s0) if d is None else d for s0, d in zip(state0, d_final))


def _backward_full(cell, tape, d_out, d_final, W_ih, W_hh, keep, bias, xp, params, fast_path):
    """:func:`backward` of a full :class:`Tape` (``d_out`` already zero at masked steps)."""
    x, state0, states, cell_tape, mask, zoneout, raw_states, h_mask = tape
    if _fast(fast_path, kernels.why_not_backward, cell, tape, d_out, d_final, W_ih, W_hh, xp):
        return Grads(*kernels.backward(cell, tape, d_out, d_final, W_ih, W_hh, keep, bias, xp))._replace(
            dcell_params={})
    d_carry = _zeros_for_none(d_final, state0, xp)
    prev_states = _shifted(state0, states, xp)
    recurrent = {"W_hh": W_hh} if cell.applies_W_hh else {}

    def step(d_state, inputs):
        d_out_t, derivatives_t, u_t, keep_old_t, keep_t = inputs
        if keep_t is not None:
            d_state = tuple(d * keep_t for d in d_state)
        d_h = d_state[0] if d_out_t is None else d_state[0] + d_out_t
        d_after = (d_h,) + d_state[1:]  # of the state after the step's blend
        d_new = d_after if u_t is None else tuple(u * d for u, d in zip(u_t, d_after))
        d_xw, d_hw, d_prev, *terms = cell.step_backward(d_new, derivatives_t, xp=xp, **params, **recurrent)
        if not recurrent:  # the path through W_hh, unless the cell applied it
            d_rec = (d_xw if d_hw is None else d_hw) @ W_hh
            if h_mask is not None:
                d_rec = d_rec * h_mask
            d_prev = (d_rec if d_prev[0] is None else d_prev[0] + d_rec,) + d_prev[1:]
        if u_t is not None:  # padded steps and zoned-out units pass the state gradient straight through
            d_prev = tuple(dp + k * d for dp, k, d in zip(d_prev, keep_old_t, d_after))
        # The cell's own parameters may need the gradient of each step's h, or terms of its own.
        return d_prev, (d_xw, d_hw, d_new[0] if params else None, terms[0] if terms else None)

    def step_computing_derivatives(d_state, inputs):
        d_out_t, state_t, prev_t, tape_t, u_t, keep_old_t, keep_t = inputs
        derivatives_t = cell.step_derivatives(state_t, prev_t, tape_t, xp=xp)
        return step(d_state, (d_out_t, derivatives_t, u_t, keep_old_t, keep_t))

    def chunk(d_state, inputs):  # the derivatives of a chunk's steps at once, then its loop
        (d_out_c, states_c, prev_c, tape_c, u_c, keep_old_c, keep_c), _ = inputs
        derivatives = cell.step_derivatives(states_c, prev_c, tape_c, xp=xp)
        d_state, ys = scan(step, d_state, (d_out_c, derivatives, u_c, keep_old_c, keep_c), xp=xp, reverse=True)
        return d_state, (ys, None)

    update, keep_old = _blends(mask, zoneout, len(state0), xp)
    new_states = states if raw_states is None else raw_states  # what each step made, before zoneout's blend
    xs = (d_out, new_states, prev_states, cell_tape, update, keep_old, keep)
    if compiles(xp, d_carry, xs):  # XLA fuses a step's ops: derivatives in the step, nothing to amortise
        d_state0, (d_xw, d_hw, d_h, terms) = scan(step_computing_derivatives, d_carry, xs, xp=xp, reverse=True,
                                           unroll=_lax_unroll(x, W_hh))
    else:
        k = segment_length(x.shape[0], BACKWARD_CHUNK)
        # a portable backward may still use the fast segment runner, unless fast_path is False
        d_state0, ((d_xw, d_hw, d_h, terms), _) = _over_segments(chunk, d_carry, xs, None, k, xp, reverse=True,
                                                          fast_path=fast_path and "auto")
    h_in = prev_states[0] if h_mask is None else prev_states[0] * h_mask  # what W_hh multiplied
    dW_ih, dW_hh, db_ih, db_hh = _weight_grads(cell, d_xw, d_hw, x, h_in, cell_tape, bias, xp)
    dparams = (cell.cell_params_grads(d_xw, d_h, prev_states, new_states, cell_tape, terms, xp=xp, **params)
               if params else {})
    return Grads(d_xw @ W_ih, d_state0, dW_ih, dW_hh, db_ih, db_hh, dparams)


def _weight_grads(cell, d_xw, d_hw, x, h_prev, cell_tape, bias, xp):
    """``(dW_ih, dW_hh, db_ih, db_hh)`` from the pre-activation gradients of every step.

    Weight gradients contract over time and batch together. A reshape to
    (T*N, F) would merge time with the batch axis, which XLA can only do for a
    batch-sharded x by gathering the whole batch on every device.
    """
    if d_hw is None:
        d_hw = d_xw
    steps_and_batch = ([0, 1], [0, 1])
    dW_ih = xp.tensordot(d_xw, x, axes=steps_and_batch)
    dW_hh = cell.weight_hh_grad(d_hw, h_prev, cell_tape, xp=xp)
    db_ih = db_hh = None
    if bias:
        db_ih = xp.sum(d_xw, axis=(0, 1))
        db_hh = db_ih if d_hw is d_xw else xp.sum(d_hw, axis=(0, 1))
    return dW_ih, dW_hh, db_ih, db_hh
