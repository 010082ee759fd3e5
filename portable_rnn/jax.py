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

    spec = LSTM(16, 64, num_layers=2, dropout=0.1)

    def loss(params, x, y, key):
        out, _ = apply(spec, params, x, truncate=20, dropout_key=key)
        return ((out[..., :1] - y) ** 2).mean()

    grads = jax.jit(jax.grad(loss))(params, x, y, jax.random.key(0))

Gradients flow to ``params``, ``x`` and the initial ``state``; ``lengths``
(integers) and the dropout factors have none. A ``dropout_key`` is training
mode (:func:`dropout_masks` draws the factors from it); without one there is
no dropout. Importing this module needs JAX; the rest of the package does not.
"""

from __future__ import annotations

import functools

import jax

from ._validation import check_retain, check_truncate

__all__ = ["apply", "dropout_masks", "weight_drop_masks", "recurrent_dropout_masks", "zoneout_masks"]


def apply(spec, params, x, state=None, lengths=None, *, truncate=None, dropout_key=None, retain="full",
          checkpoint_every=None, tape=None):
    """Run ``spec.forward`` with the hand-written backward as its vector-Jacobian product.

    Parameters
    ----------
    spec : portable_rnn.RNN, LSTM, GRU, Recurrent, MinGRU or MinLSTM
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
    dropout_key : jax.random key, optional
        Training mode for a spec with ``dropout > 0`` (without dropout it
        changes nothing): the factors of :func:`dropout_masks` for this key
        are applied between layers, in the forward pass and to the gradients,
        with ``weight_drop > 0`` those of :func:`weight_drop_masks` to the
        recurrent weights, and with ``recurrent_dropout`` or ``zoneout`` those
        of :func:`recurrent_dropout_masks` and :func:`zoneout_masks`. ``None``
        is evaluation mode.
    retain : {"full", "checkpoint"}
        What the forward pass keeps for the backward (the residuals of the
        VJP): every step (``"full"``), or the states entering segments of at
        most ``checkpoint_every`` steps (``"checkpoint"``), which the backward
        recomputes one segment at a time: memory like sqrt(T), one more
        forward pass of work. Outside differentiation nothing is kept either way.
    checkpoint_every : int, optional
        Steps per segment at most with ``"checkpoint"``; ``None`` is ceil(sqrt(T)).
    tape : {"full", "checkpoint"}, optional
        ``retain``'s deprecated spelling.

    Returns
    -------
    out : array (T, N, dirs*R), or (N, T, dirs*R) when ``batch_first``
        R is the hidden size, or an LSTM's ``proj_size`` when it is > 0.
    final_state : array (L*dirs, N, R), or the pair ``(h_n, c_n)`` for LSTM
    """
    retain, checkpoint_every = check_retain(retain, checkpoint_every, backward_by="apply", tape=tape)
    masks = () if dropout_key is None else dropout_masks(spec, dropout_key, x)
    weights = {} if dropout_key is None else weight_drop_masks(spec, dropout_key, params)
    recurrent = {} if dropout_key is None else _recurrent_regularisers(spec, dropout_key, x)
    layer = _layer(spec, check_truncate(truncate), state is None, retain, checkpoint_every)
    return layer(params, x, state, lengths, masks, {**weights, **recurrent})


def dropout_masks(spec, key, x):
    r"""The dropout factors :func:`apply` uses for ``dropout_key=key``.

    Parameters
    ----------
    spec : portable_rnn.RNN, LSTM or GRU
    key : jax.random key
    x : array (T, N, D), or (N, T, D) when ``spec.batch_first``
        The input: the factors' layout and dtype.

    Returns
    -------
    tuple of arrays shaped like ``out``
        One per layer but the last (``jax.random.split`` of ``key``), 0 with
        probability ``spec.dropout`` and :math:`1/(1 - \text{dropout})`
        otherwise; empty when ``dropout`` is 0 or there is one layer.
    """
    if spec.dropout == 0 or spec.num_layers == 1:
        return ()
    T, N = (x.shape[1], x.shape[0]) if spec.batch_first else (x.shape[0], x.shape[1])
    F = spec.num_directions * spec.output_size
    shape = (N, T, F) if spec.batch_first else (T, N, F)
    keep = 1.0 - spec.dropout
    keys = jax.random.split(key, spec.num_layers - 1)
    return tuple(jax.random.bernoulli(k, keep, shape).astype(x.dtype) / keep for k in keys)


def weight_drop_masks(spec, key, params):
    r"""The weight-drop factors :func:`apply` uses for ``dropout_key=key``.

    Parameters
    ----------
    spec : portable_rnn.RNN, LSTM, GRU or Recurrent
    key : jax.random key
        The factors come from ``jax.random.fold_in(key, 1)``, so that a key
        gives the same :func:`dropout_masks` with or without weight drop.
    params : dict of str to array
        The parameters: the factors' shapes and dtype.

    Returns
    -------
    dict of str to array
        One per ``weight_hh`` name, 0 with probability ``spec.weight_drop``
        and :math:`1/(1 - \text{weight\_drop})` otherwise; empty when
        ``weight_drop`` is 0 (or the spec has none).
    """
    rate = getattr(spec, "weight_drop", 0.0)  # MinGRU and MinLSTM have no recurrent weights
    if rate == 0:
        return {}
    names = [name for name in spec.param_shapes() if name.startswith("weight_hh_")]
    keep = 1.0 - rate
    keys = jax.random.split(jax.random.fold_in(key, 1), len(names))
    return {name: jax.random.bernoulli(k, keep, params[name].shape).astype(params[name].dtype) / keep
            for name, k in zip(names, keys)}


def recurrent_dropout_masks(spec, key, x):
    r"""The recurrent dropout factors :func:`apply` uses for ``dropout_key=key``.

    Parameters
    ----------
    spec : portable_rnn.RNN, LSTM, GRU or Recurrent
    key : jax.random key
        The factors come from ``jax.random.fold_in(key, 2)``.
    x : array (T, N, D), or (N, T, D) when ``spec.batch_first``

    Returns
    -------
    array (L*dirs, N, R) or None
        0 with probability ``spec.recurrent_dropout`` and
        :math:`1/(1 - p)` otherwise; ``None`` when it is 0 (or the spec has none).
    """
    rate = getattr(spec, "recurrent_dropout", 0.0)
    if rate == 0:
        return None
    N = x.shape[0] if spec.batch_first else x.shape[1]
    shape = (spec.num_layers * spec.num_directions, N, spec.output_size)
    keep = 1.0 - rate
    return jax.random.bernoulli(jax.random.fold_in(key, 2), keep, shape).astype(x.dtype) / keep


def zoneout_masks(spec, key, x):
    r"""The zoneout factors :func:`apply` uses for ``dropout_key=key``.

    Parameters
    ----------
    spec : portable_rnn.RNN, LSTM, GRU or Recurrent
    key : jax.random key
        The factors come from ``jax.random.fold_in(key, 3)``.
    x : array (T, N, D), or (N, T, D) when ``spec.batch_first``

    Returns
    -------
    tuple of arrays (L*dirs, T, N, F) or None
        One per state of the cell, 0 (the unit keeps its previous value)
        with probability ``spec.zoneout`` and 1 otherwise; ``None`` when it is 0.
    """
    rate = getattr(spec, "zoneout", 0.0)
    if rate == 0:
        return None
    T, N = (x.shape[1], x.shape[0]) if spec.batch_first else (x.shape[0], x.shape[1])
    LD = spec.num_layers * spec.num_directions
    keys = jax.random.split(jax.random.fold_in(key, 3), spec.cell.n_states)
    return tuple(jax.random.bernoulli(k, 1.0 - rate, (LD, T, N, size)).astype(x.dtype)
                 for k, size in zip(keys, spec._state_sizes()))


def _recurrent_regularisers(spec, key, x) -> dict:
    """``spec.forward``'s ``recurrent_masks`` and ``zoneout_masks`` for ``key``, where the spec has them."""
    made = {"recurrent_masks": recurrent_dropout_masks(spec, key, x), "zoneout_masks": zoneout_masks(spec, key, x)}
    return {name: masks for name, masks in made.items() if masks is not None}


@functools.lru_cache(maxsize=128)
def _layer(spec, truncate, zero_state, retain, checkpoint_every):
    """The ``custom_vjp`` function of one (spec, truncate, state given or not, retain), built once.

    One function object per key keeps ``jax.jit``'s caches warm; whether a
    state was given is part of the key because the backward must return no
    cotangent for a ``None`` state.
    """

    def weight_drop(factors):  # keywords only where there are factors: MinGRU/MinLSTM take none
        weights = {name: m for name, m in factors.items() if name.startswith("weight_hh_")}
        others = {name: m for name, m in factors.items() if not name.startswith("weight_hh_")}
        return {**({"weight_masks": weights} if weights else {}), **others}

    @jax.custom_vjp
    def layer(params, x, state, lengths, masks, weights):  # not differentiated: nothing to keep
        out, final, _ = spec.forward(params, x, state, lengths, dropout_masks=masks, retain="none",
                                     checkpoint_every=checkpoint_every, **weight_drop(weights))
        return out, final

    def forward(params, x, state, lengths, masks, weights):
        out, final, kept = spec.forward(params, x, state, lengths, dropout_masks=masks, retain=retain,
                                        checkpoint_every=checkpoint_every, **weight_drop(weights))
        return (out, final), (params, kept, lengths)

    def backward(residuals, cotangents):
        params, kept, lengths = residuals
        d_out, d_final = cotangents
        grads, dx, dstate0 = spec.backward(params, kept, d_out, d_final, truncate=truncate)
        # None: no cotangent for the dropout and weight-drop factors, constants drawn from a key
        return grads, dx, (None if zero_state else dstate0), _no_gradient(lengths), None, None

    layer.defvjp(forward, backward)
    return layer


def _no_gradient(lengths):
    """The cotangent of an integer input: ``None`` (no lengths) or float0 zeros of its shape."""
    if lengths is None:
        return None
    import numpy as np  # float0 cotangents are host constants by JAX's convention

    return np.zeros(lengths.shape, dtype=jax.dtypes.float0)
