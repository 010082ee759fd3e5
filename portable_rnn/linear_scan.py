r"""Linear recurrences over time, :math:`h_t = a_t \odot h_{t-1} + b_t`, forward and backward.

The recurrence of the minimal GRU and LSTM (Feng et al., "Were RNNs All We
Needed?", 2024), whose gates do not depend on :math:`h_{t-1}`: given every
:math:`a_t` and :math:`b_t` up front, it can be computed in far fewer than T
sequential steps.

``method="sequential"``
    T steps of :math:`h \leftarrow a_t h + b_t`: the definition.
``method="parallel"`` (default)
    A chunked scan. Time is cut into C chunks of K steps (K about
    :math:`\sqrt T`, a divisor of T when one lies in
    :math:`[\sqrt T / 2, \sqrt T]`, else a tail of fewer than K steps run
    one by one; the time axis reshaped alone, so a batch sharding is
    untouched). (1) Within every chunk at once, K steps compose the chunk's
    affine map, keeping only its totals :math:`A^c = a_K \cdots a_1` and
    :math:`B^c` (the chunk's state from a zero start), arrays (C, ...);
    (2) C steps carry the state from chunk to chunk,
    :math:`h_{in}^{c+1} = A^c h_{in}^c + B^c`; (3) K steps run every chunk
    again from its entering state, :math:`h \leftarrow a_k h + b_k`, and
    write the states. That is :math:`2K + C \approx 3\sqrt T` sequential
    steps over arrays C (or K) times larger; each step makes only (C, ...)
    arrays, and the (T, ...) inputs are read twice, the states stacked once.

Stability: the parallel form multiplies and adds the same numbers as the
sequential one, only grouped differently: no division, no logarithm, no
exponential. With :math:`|a_t| \le 1` (gates in [0, 1]) no partial product
grows, so nothing overflows at any T; a product that underflows to 0 is a
contribution the sequential form rounds away too. (A log-space scan, as in
the paper, needs positive inputs and loses the recurrence where
:math:`\log a_t` underflows; a ``cumsum(b / cumprod(a))`` form divides by
products that reach 0 within a few hundred steps.)

The backward of a linear recurrence is one too, run in reverse: with
:math:`g_t` the gradient of the loss with respect to :math:`h_t` alone,
:math:`\lambda_t = g_t + a_{t+1} \odot \lambda_{t+1}`, then
:math:`da_t = \lambda_t \odot h_{t-1}`, :math:`db_t = \lambda_t` and
:math:`dh_0 = a_0 \odot \lambda_0` (with :math:`h_{-1} = h_0`, the initial
state). :func:`linear_scan_backward` runs it with the same method, carrying
:math:`s_t = a_t \odot \lambda_t` instead of :math:`\lambda_t`
(:math:`\lambda_t = g_t + s_{t+1}`, :math:`s_t = a_t \odot \lambda_t`), so
that it reads :math:`a_t` at its own step (no shifted copy of ``a``) and
ends with :math:`s_0 = dh_0`.

``mask`` (T, ..., 1 or ...): steps where it is 0 leave the state unchanged
(:math:`a_t = 1`, :math:`b_t = 0` there) and get zero gradients.

``keep`` (backward only, T broadcasting against ``a``): truncated BPTT, a
factor :math:`\kappa_t` on the gradient carried from step t+1 into step t,
:math:`\lambda_t = g_t + \kappa_t\, a_{t+1} \odot \lambda_{t+1}` (0 where a
window starts at t+1, 1 elsewhere: see
:func:`portable_rnn.engine.sequence.window_keep`).
"""

from __future__ import annotations

import math

from ._validation import check_int, namespace_of
from ._validation import placement as device
from .engine.loop import compiles, scan

__all__ = ["linear_scan", "linear_scan_backward", "METHODS"]

#: The ways to run a linear recurrence.
METHODS = ("parallel", "sequential")


def _check(method, chunk):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return None if chunk is None else check_int("chunk", chunk)


def _masked_a(a, mask):
    """``a`` with the identity step's coefficient (1) where ``mask`` is 0."""
    return a if mask is None else mask * a + (1 - mask)


def _chunk_size(T, chunk):
    """Steps per chunk: ``chunk``, or a divisor of T in [sqrt(T)/2, sqrt(T)] (no ragged tail), else ceil(sqrt(T))."""
    if chunk is not None:
        return min(chunk, T)
    root = math.isqrt(T - 1) + 1
    for K in range(root, max(root // 2, 1) - 1, -1):
        if T % K == 0:
            return K
    return root


# The two recurrences, one step each: ``step(carry, (a_t, b_t[, keep_t])) -> (carry, out_t)``, and the
# composition of a run of steps into one affine map of the carry, ``total((A, B), x_t)``.
# forward (time increasing):   h <- a_t h + b_t,                      out h
# adjoint (time decreasing):   lam <- b_t + keep_t s,  s <- a_t lam,   out lam


def _forward_step(h, xs):
    a_t, b_t = xs
    h = a_t * h + b_t
    return h, h


def _forward_total(carry, xs):
    A, B = carry
    a_t, b_t = xs
    return (a_t * A, a_t * B + b_t), None


def _adjoint_step(s, xs):
    a_t, g_t = xs[0], xs[1]
    lam = g_t + (s if len(xs) == 2 else xs[2] * s)
    return a_t * lam, lam


def _adjoint_total(carry, xs):
    A, B = carry
    a_t, g_t = xs[0], xs[1]
    if len(xs) == 3:
        A, B = xs[2] * A, xs[2] * B
    return (a_t * A, a_t * (g_t + B)), None


def _steps(step, carry, xs, xp, reverse, outputs):
    """:func:`~portable_rnn.engine.loop.scan` over axis 0 of ``xs`` (K, C, ...), outputs stacked as (C, K, ...).

    The eager loop stacks the outputs on axis 1 directly: no (K, C, ...) array
    is made and then transposed.
    """
    if compiles(xp, carry, xs):
        carry, ys = scan(step, carry, xs, xp=xp, reverse=reverse)
        return carry, (xp.permute_dims(ys, (1, 0, *range(2, ys.ndim))) if outputs else None)
    n = xs[0].shape[0]
    ys = []
    for t in range(n - 1, -1, -1) if reverse else range(n):
        carry, y = step(carry, tuple(v[t, ...] for v in xs))
        if outputs:
            ys.append(y)
    if not outputs:
        return carry, None
    if reverse:
        ys.reverse()
    return carry, xp.stack(ys, axis=1)


def _parallel(step, total, xs, s0, xp, chunk, reverse):
    """The chunked scan of the module docstring: ``(final carry, outputs (T, ...))``.

    ``xs`` are (T, ...) arrays (a coefficient first); time is cut into C chunks
    of K steps and, when K does not divide T, a tail of fewer than K steps run
    step by step (first when ``reverse``). Only the time axis is reshaped.
    """
    T = xs[0].shape[0]
    K = _chunk_size(T, chunk)
    C, r = divmod(T, K)
    head_len = C * K
    tail_out = None
    if r and reverse:
        s0, tail_out = scan(step, s0, tuple(v[head_len:, ...] for v in xs), xp=xp, reverse=True)

    def chunked(v):  # (K, C, ...): step k of every chunk along axis 0 (a view)
        v = v if not r else v[:head_len, ...]
        v = xp.reshape(v, (C, K, *v.shape[1:]))
        return xp.permute_dims(v, (1, 0, *range(2, v.ndim)))

    xs_kc = tuple(chunked(v) for v in xs)
    a0 = xs_kc[0]
    shape = (C, *s0.shape)  # the carry's: the totals start as the identity map
    ones = xp.ones(shape, dtype=a0.dtype, device=device(a0))
    zeros = xp.zeros(shape, dtype=a0.dtype, device=device(a0))
    # (1) the affine map of every chunk at once, keeping only its two totals (C, ...)
    (A, B), _ = _steps(total, (ones, zeros), xs_kc, xp, reverse, outputs=False)

    def across(s, inputs):  # from chunk to chunk
        A_c, B_c = inputs
        return A_c * s + B_c, s

    # (2) the carry entering each chunk, (C, ...), and the one leaving the last
    s_final, s_in = scan(across, s0, (A, B), xp=xp, reverse=reverse)
    # (3) every chunk again from its true entering carry, writing the outputs
    _, out = _steps(step, s_in, xs_kc, xp, reverse, outputs=True)
    out = xp.reshape(out, (head_len, *out.shape[2:]))
    if r and not reverse:
        s_final, tail_out = scan(step, s_final, tuple(v[head_len:, ...] for v in xs), xp=xp)
    if r:
        out = xp.concat([out, tail_out], axis=0)
    return s_final, out


def _run(step, total, xs, s0, xp, method, chunk, reverse=False):
    """``(final carry, outputs (T, ...))`` of ``step`` over ``xs``, by ``method``."""
    if method == "sequential":
        return scan(step, s0, xs, xp=xp, reverse=reverse)
    return _parallel(step, total, xs, s0, xp, chunk, reverse)


def _adjoint(a, g, s0, *, keep=None, method="parallel", chunk=None):
    r"""The backward recurrence of :func:`linear_scan_backward`: ``(lam, dh0)``.

    Run from the last step to the first, carrying :math:`s_{t+1} = a_{t+1}\lambda_{t+1}`:
    :math:`\lambda_t = g_t + \kappa_t s_{t+1}`, :math:`s_t = a_t \lambda_t`, from
    :math:`s_T` = ``s0`` (the gradient of the final state, which :math:`\kappa_{T-1}`
    multiplies too); the carry left at the end is :math:`s_0 = \partial h_{-1}`.
    ``a`` is the masked coefficient (see :func:`_masked_a`); ``keep`` as in
    :func:`linear_scan_backward`, ``g`` (T, ...).
    """
    xp = namespace_of(a=a, g=g, s0=s0)
    chunk = _check(method, chunk)
    xs = (a, g) if keep is None else (a, g, keep)
    s_final, lam = _run(_adjoint_step, _adjoint_total, xs, s0, xp, method, chunk, reverse=True)
    return lam, s_final


def linear_scan(a, b, h0, *, mask=None, method: str = "parallel", chunk: int | None = None):
    r"""All states of :math:`h_t = a_t \odot h_{t-1} + b_t`, :math:`t = 0, \dots, T-1`.

    Parameters
    ----------
    a, b : array (T, ...)
        Per-step coefficients and inputs, of one floating dtype.
    h0 : array (...)
        The state before step 0 (:math:`h_{-1}`).
    mask : array (T, ...) broadcasting against ``a``, optional
        1 at valid steps, 0 at padded ones (which leave the state unchanged).
    method : {"parallel", "sequential"}
        See the module docstring; both give the same numbers to rounding.
    chunk : int, optional
        Steps per chunk of the parallel scan; default about :math:`\sqrt T` (see the module docstring).

    Returns
    -------
    h : array (T, ...)
    """
    xp = namespace_of(a=a, b=b, h0=h0)
    chunk = _check(method, chunk)
    if a.shape[0] == 0:
        raise ValueError("a linear scan needs at least one step (a has T = 0)")
    b = b if mask is None else mask * b  # the identity step adds nothing
    return _run(_forward_step, _forward_total, (_masked_a(a, mask), b), h0, xp, method, chunk)[1]


def linear_scan_backward(a, h, h0, d_h, *, mask=None, keep=None, method: str = "parallel",
                         chunk: int | None = None):
    r"""Gradients of a :func:`linear_scan` with respect to ``a``, ``b`` and ``h0``.

    Parameters
    ----------
    a : array (T, ...)
        The coefficients of the forward.
    h : array (T, ...)
        Its states (what :func:`linear_scan` returned).
    h0 : array (...)
        Its initial state.
    d_h : array (T, ...)
        Gradient of the loss with respect to each :math:`h_t` directly (add a
        gradient of the final state to ``d_h[-1]``).
    mask, method, chunk
        As in the forward.
    keep : array (T, ...) broadcasting against ``a``, optional
        Truncated BPTT: the factor on the gradient carried from step t+1 into
        step t (see the module docstring); ``None`` is 1 everywhere, full
        BPTT. ``dh0`` is not scaled: the gradient leaving step 0 is whole.

    Returns
    -------
    da, db : arrays (T, ...)
        Zero at masked steps.
    dh0 : array (...)
    """
    xp = namespace_of(a=a, h=h, h0=h0, d_h=d_h)
    chunk = _check(method, chunk)
    a_eff = _masked_a(a, mask)
    lam, dh0 = _adjoint(a_eff, d_h, xp.zeros_like(h0), keep=keep, method=method, chunk=chunk)
    h_prev = xp.concat([xp.expand_dims(h0, axis=0), h[:-1, ...]], axis=0)
    da, db = lam * h_prev, lam
    if mask is not None:
        da, db = mask * da, mask * db
    return da, db, dh0
