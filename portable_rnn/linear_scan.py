r"""Linear recurrences over time, :math:`h_t = a_t \odot h_{t-1} + b_t`, forward and backward.

The recurrence of the minimal GRU and LSTM (Feng et al., "Were RNNs All We
Needed?", 2024), whose gates do not depend on :math:`h_{t-1}`: given every
:math:`a_t` and :math:`b_t` up front, it can be computed in far fewer than T
sequential steps.

``method="sequential"``
    T steps of :math:`h \leftarrow a_t h + b_t`: the definition.
``method="parallel"`` (default)
    A chunked scan. Time is cut into C chunks of K steps (K about
    :math:`\sqrt T`, the time axis reshaped alone, so a batch sharding is
    untouched). (1) Within every chunk at once, K steps compute the chunk's
    products :math:`A_k = a_k \cdots a_1` and its state from a zero start
    :math:`B_k`; (2) C steps carry the state from chunk to chunk,
    :math:`h_{in}^{c+1} = A_K^c h_{in}^c + B_K^c`; (3) one elementwise pass
    gives :math:`h = A\,h_{in} + B`. That is :math:`K + C \approx 2\sqrt T`
    sequential steps over arrays C (or K) times larger, and a few passes over
    the (T, ...) arrays.

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
state). :func:`linear_scan_backward` runs it with the same method.

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
from .engine.loop import scan

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


def _sequential(a, b, h0, xp, reverse=False):
    def step(h, inputs):
        a_t, b_t = inputs
        h = a_t * h + b_t
        return h, h

    _, h = scan(step, h0, (a, b), xp=xp, reverse=reverse)
    return h


def _parallel(a, b, h0, xp, chunk):
    """The chunked scan of the module docstring (forward in time)."""
    T, rest = a.shape[0], tuple(a.shape[1:])
    K = chunk or math.isqrt(T - 1) + 1
    K = min(K, T)
    C = -(-T // K)
    pad = C * K - T
    if pad:  # identity steps at the end: the state passes through them unchanged
        dev = device(a)
        a = xp.concat([a, xp.ones((pad, *rest), dtype=a.dtype, device=dev)], axis=0)
        b = xp.concat([b, xp.zeros((pad, *rest), dtype=b.dtype, device=dev)], axis=0)
    order = (1, 0, *range(2, 2 + len(rest)))
    a_kc = xp.permute_dims(xp.reshape(a, (C, K, *rest)), order)  # (K, C, ...): a view, k first
    b_kc = xp.permute_dims(xp.reshape(b, (C, K, *rest)), order)

    def within(carry, inputs):  # one step of every chunk at once
        A, B = carry
        a_k, b_k = inputs
        A, B = a_k * A, a_k * B + b_k
        return (A, B), (A, B)

    ones = xp.ones((C, *rest), dtype=a.dtype, device=device(a))
    zeros = xp.zeros((C, *rest), dtype=b.dtype, device=device(b))
    (A_last, B_last), (A, B) = scan(within, (ones, zeros), (a_kc, b_kc), xp=xp)

    def across(h_in, inputs):  # from chunk to chunk
        A_c, B_c = inputs
        return A_c * h_in + B_c, h_in

    _, h_in = scan(across, h0, (A_last, B_last), xp=xp)  # (C, ...): the state entering each chunk
    h = A * h_in + B  # (K, C, ...)
    h = xp.reshape(xp.permute_dims(h, order), (C * K, *rest))
    return h[:T, ...] if pad else h


def _run(a, b, h0, xp, method, chunk, reverse=False):
    if method == "sequential":
        return _sequential(a, b, h0, xp, reverse=reverse)
    if not reverse:
        return _parallel(a, b, h0, xp, chunk)
    return xp.flip(_parallel(xp.flip(a, axis=0), xp.flip(b, axis=0), h0, xp, chunk), axis=0)


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
        Steps per chunk of the parallel scan; default :math:`\lceil\sqrt T\rceil`.

    Returns
    -------
    h : array (T, ...)
    """
    xp = namespace_of(a=a, b=b, h0=h0)
    chunk = _check(method, chunk)
    if a.shape[0] == 0:
        raise ValueError("a linear scan needs at least one step (a has T = 0)")
    b = b if mask is None else mask * b  # the identity step adds nothing
    return _run(_masked_a(a, mask), b, h0, xp, method, chunk)


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
    # lambda_t = g_t + a_{t+1} lambda_{t+1}: a reverse scan whose coefficient at t is a_{t+1}
    one = xp.ones((1, *a.shape[1:]), dtype=a.dtype, device=device(a))
    a_next = xp.concat([a_eff[1:, ...], one], axis=0)
    if keep is not None:
        a_next = keep * a_next
    lam = _run(a_next, d_h, xp.zeros_like(h0), xp, method, chunk, reverse=True)
    h_prev = xp.concat([xp.expand_dims(h0, axis=0), h[:-1, ...]], axis=0)
    da, db = lam * h_prev, lam
    if mask is not None:
        da, db = mask * da, mask * db
    return da, db, a_eff[0, ...] * lam[0, ...]
