r"""The hand-written BPTT inside JAX programs: :func:`apply`, a layer whose VJP is :meth:`backward`.

``jax.grad`` through ``spec.forward`` would differentiate the engine's
``lax.scan`` instead of running the hand-written backward: slower, and
without truncated BPTT. :func:`apply` wraps one forward in a
``jax.custom_vjp`` whose backward pass *is* the spec's :meth:`backward`, so
``jax.grad``, ``jax.value_and_grad``, ``jax.vjp``, ``jax.jit``, ``jax.vmap``,
sharded inputs and optax all use it::

    import jax, optax
    from portable_rnn import LSTM
    from portable_rnn.jax import apply

    spec = LSTM(16, 64, num_layers=2)

    def loss(params, x, y):
        out, _ = apply(spec, params, x, truncate=20)
        return ((out[..., :1] - y) ** 2).mean()

    grads = jax.jit(jax.grad(loss))(params, x, y)

Gradients flow to ``params``, ``x`` and the initial ``state``; ``lengths``
(integers) has none. Importing this module needs JAX; the rest of the package
does not.
"""

from __future__ import annotations

import functools

import jax

from ._validation import check_truncate

__all__ = ["apply"]


def apply(spec, params, x, state=None, lengths=None, *, truncate=None):
    """Run ``spec.forward`` with the hand-written backward as its vector-Jacobian product.

    Parameters
    ----------
    spec : portable_rnn.RNN, LSTM or GRU
        The layer (hashable: it is a static argument of the VJP).
    params : dict of str to array
        As :meth:`~portable_rnn.LSTM.init` returns them.
    x : array (T, N, D), or (N, T, D) when ``spec.batch_first``
    state : array (L*dirs, N, H), a pair of them for LSTM, or None
        The initial state; ``None`` is zeros (and gets no gradient).
    lengths : integer array (N,), optional
        Valid steps of each sequence (see :meth:`~portable_rnn.LSTM.forward`).
    truncate : int, optional
        Truncated BPTT window used by the backward pass (see
        :meth:`~portable_rnn.LSTM.backward`); ``None`` is full BPTT.

    Returns
    -------
    out : array (T, N, dirs*H), or (N, T, dirs*H) when ``batch_first``
    final_state : array (L*dirs, N, H), or the pair ``(h_n, c_n)`` for LSTM
    """
    return _layer(spec, check_truncate(truncate), state is None)(params, x, state, lengths)


@functools.lru_cache(maxsize=128)
def _layer(spec, truncate, zero_state):
    """The ``custom_vjp`` function of one (spec, truncate, state given or not), built once.

    One function object per key keeps ``jax.jit``'s caches warm; whether a
    state was given is part of the key because the backward must return no
    cotangent for a ``None`` state.
    """

    @jax.custom_vjp
    def layer(params, x, state, lengths):
        out, final, _ = spec.forward(params, x, state, lengths)
        return out, final

    def forward(params, x, state, lengths):
        out, final, tape = spec.forward(params, x, state, lengths)
        return (out, final), (params, tape, lengths)

    def backward(residuals, cotangents):
        params, tape, lengths = residuals
        d_out, d_final = cotangents
        grads, dx, dstate0 = spec.backward(params, tape, d_out, d_final, truncate=truncate)
        return grads, dx, (None if zero_state else dstate0), _no_gradient(lengths)

    layer.defvjp(forward, backward)
    return layer


def _no_gradient(lengths):
    """The cotangent of an integer input: ``None`` (no lengths) or float0 zeros of its shape."""
    if lengths is None:
        return None
    import numpy as np  # float0 cotangents are host constants by JAX's convention

    return np.zeros(lengths.shape, dtype=jax.dtypes.float0)
