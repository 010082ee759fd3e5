r"""The CS231n RNN-captioning layers, on any Array API backend.

Names, signatures, return structures and layouts are the assignment's
(``rnn_layers.py``): batch-major arrays (``x`` is (N, T, D), hidden states
(N, H)), weights that multiply from the right (``Wx`` (D, H), ``Wh`` (H, H))
and, for the LSTM, the four gates stacked along the columns in the order
**i, f, o, g**:

.. math::

    a = x W_x + h W_h + b = [a_i, a_f, a_o, a_g] \in \mathbb{R}^{N \times 4H}

Each recurrent function is thin: it checks its inputs, maps them onto the
engine's layout (time-major sequences, ``W_ih = W_x^T``, gate blocks permuted
to PyTorch's i, f, g, o; transposes are views) and calls
:mod:`portable_rnn.engine.sequence`, where the maths lives once for every API.
Gradients are mapped back the same way.

Caches are opaque tuples (pytrees, so they pass through ``jax.jit``): hand
each one, unchanged, to the matching ``*_backward``.

Every function takes its namespace from its arguments, never copies to the
host and never writes into an array, so all of them run unchanged on NumPy,
CuPy, PyTorch, JAX (also under ``jax.jit``) and ``array_api_strict``.
"""

from __future__ import annotations

from typing import NamedTuple

from array_api_compat import device

from .engine import sequence
from ._validation import (
    check_arrays,
    check_cache,
    check_floating,
    check_integer_dtype,
    check_same_device,
    check_shape,
    check_time_steps,
    check_upstream,
    namespace_of,
)
from .activations import log_softmax
from .engine.cells import LSTMCell, RNNCell
from .course_layouts import from_cs231n_layout, to_cs231n_layout
from .dense import (
    one_hot,
    temporal_affine_backward,
    temporal_affine_forward,
    word_embedding_backward,
    word_embedding_forward,
)

__all__ = [
    "rnn_step_forward",
    "rnn_step_backward",
    "rnn_forward",
    "rnn_backward",
    "lstm_step_forward",
    "lstm_step_backward",
    "lstm_forward",
    "lstm_backward",
    "word_embedding_forward",
    "word_embedding_backward",
    "temporal_affine_forward",
    "temporal_affine_backward",
    "temporal_softmax_loss",
]

_RNN = RNNCell("tanh")
_LSTM = LSTMCell()


# --------------------------------------------------------------------------- caches


class _RNNStepCache(NamedTuple):
    tape: sequence.Tape
    W_ih: object
    W_hh: object


class _RNNCache(NamedTuple):
    tape: sequence.Tape
    W_ih: object
    W_hh: object


class _LSTMStepCache(NamedTuple):
    tape: sequence.Tape
    W_ih: object
    W_hh: object


class _LSTMCache(NamedTuple):
    tape: sequence.Tape
    W_ih: object
    W_hh: object


# --------------------------------------------------------------------------- checks


def _floats(**arrays):
    """Namespace of the named arrays after library, real-floating dtype and device checks."""
    return check_arrays(**arrays)[0]


def _check_bool(xp, name: str, value) -> None:
    if not xp.isdtype(value.dtype, "bool"):
        raise TypeError(
            f"{name} has dtype {value.dtype}; expected bool. Build it with a comparison, "
            "e.g. mask = y != null_index"
        )


def _check_rnn_weights(x_features: int, Wx, Wh, b) -> int:
    check_shape("Wx", Wx, (x_features, None), "(D, H) with D the features of x")
    H = Wx.shape[1]
    check_shape("Wh", Wh, (H, H), "(H, H) with H the columns of Wx")
    check_shape("b", b, (H,), "(H,) with H the columns of Wx")
    return H


def _check_lstm_weights(x_features: int, Wx, Wh, b) -> int:
    check_shape("Wx", Wx, (x_features, None), "(D, 4H) with D the features of x")
    if Wx.shape[1] % 4:
        raise ValueError(
            f"Wx has shape {tuple(Wx.shape)}; expected (D, 4H): its columns must be a "
            "multiple of 4 (the i, f, o, g gate blocks)"
        )
    H = Wx.shape[1] // 4
    check_shape("Wh", Wh, (H, 4 * H), "(H, 4H) with 4H the columns of Wx")
    check_shape("b", b, (4 * H,), "(4H,) with 4H the columns of Wx")
    return H


# --------------------------------------------------------------------------- layout maps


def _time_major(a, xp):
    """(N, T, ...) <-> (T, N, ...): the swap undoes itself."""
    return xp.permute_dims(a, (1, 0, 2))


def _rnn_engine_weights(Wx, Wh):
    """CS231n (D, H), (H, H) -> engine W_ih (H, D), W_hh (H, H) (transposed views)."""
    return from_cs231n_layout(Wx, "rnn"), from_cs231n_layout(Wh, "rnn")


def _lstm_engine_weights(Wx, Wh, b, H: int, xp):
    """CS231n (D, 4H), (H, 4H), (4H,) in i,f,o,g -> engine (4H, D), (4H, H), (4H,) in i,f,g,o."""
    return tuple(from_cs231n_layout(a, "lstm", xp=xp) for a in (Wx, Wh, b))


def _param_grads(g, mode: str, xp):
    """Engine gradients (G*H rows) -> dWx (D, G*H), dWh (H, G*H), db (G*H,) in the CS231n layout."""
    return tuple(to_cs231n_layout(a, mode, xp=xp) for a in (g.dW_ih, g.dW_hh, g.db_ih))


# --------------------------------------------------------------------------- vanilla RNN


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    r"""One time step of a vanilla RNN with tanh.

    .. math::

        h_{next} = \tanh(x W_x + h_{prev} W_h + b)

    Parameters
    ----------
    x : array (N, D)
        Input of this step.
    prev_h : array (N, H)
        Hidden state of the previous step.
    Wx : array (D, H)
        Input-to-hidden weights.
    Wh : array (H, H)
        Hidden-to-hidden weights.
    b : array (H,)
        Bias.

    Returns
    -------
    next_h : array (N, H)
    cache : tuple
        Opaque; pass it to :func:`rnn_step_backward`.

    Raises
    ------
    TypeError
        Arrays from different libraries, or a non-floating / mixed dtype.
    ValueError
        Shapes that do not fit together, or arrays on different devices.

    Examples
    --------
    >>> import numpy as np
    >>> x, h = np.ones((2, 4)), np.zeros((2, 3))
    >>> next_h, cache = rnn_step_forward(x, h, np.zeros((4, 3)), np.eye(3), np.zeros(3))
    >>> next_h.shape
    (2, 3)
    """
    xp = _floats(x=x, prev_h=prev_h, Wx=Wx, Wh=Wh, b=b)
    check_shape("x", x, (None, None), "(N, D)")
    H = _check_rnn_weights(x.shape[1], Wx, Wh, b)
    check_shape("prev_h", prev_h, (x.shape[0], H), "(N, H) with N the batch of x")
    W_ih, W_hh = _rnn_engine_weights(Wx, Wh)
    _, (next_h,), tape = sequence.forward(
        _RNN, xp.expand_dims(x, axis=0), (prev_h,), W_ih, W_hh, b, xp=xp
    )
    return next_h, _RNNStepCache(tape, W_ih, W_hh)


def rnn_step_backward(dnext_h, cache):
    r"""Backward pass of :func:`rnn_step_forward`.

    With :math:`dz = dh_{next} \odot (1 - h_{next}^2)`:

    .. math::

        dx = dz\, W_x^T, \quad dh_{prev} = dz\, W_h^T, \quad
        dW_x = x^T dz, \quad dW_h = h_{prev}^T dz, \quad db = \textstyle\sum_N dz

    Parameters
    ----------
    dnext_h : array (N, H)
        Gradient of the loss with respect to ``next_h``.
    cache : tuple
        From :func:`rnn_step_forward`.

    Returns
    -------
    dx : array (N, D)
    dprev_h : array (N, H)
    dWx : array (D, H)
    dWh : array (H, H)
    db : array (H,)
    """
    tape, W_ih, W_hh = check_cache(cache, _RNNStepCache, "rnn_step_forward")
    xp = namespace_of(**{"x (from cache)": tape.x}, dnext_h=dnext_h)
    check_upstream(xp, "dnext_h", dnext_h, tape.x, tuple(tape.state0[0].shape),
                    "(N, H), the shape of next_h")
    g = sequence.backward(_RNN, tape, None, (dnext_h,), W_ih, W_hh, xp=xp)
    return (g.dx[0, ...], g.dstate0[0], *_param_grads(g, "rnn", xp))


def rnn_forward(x, h0, Wx, Wh, b):
    r"""A vanilla tanh RNN over a whole sequence.

    .. math::

        h_t = \tanh(x_t W_x + h_{t-1} W_h + b), \qquad t = 1, \dots, T

    Parameters
    ----------
    x : array (N, T, D)
        Input sequence, batch-major.
    h0 : array (N, H)
        Initial hidden state.
    Wx : array (D, H)
    Wh : array (H, H)
    b : array (H,)

    Returns
    -------
    h : array (N, T, H)
        Hidden state of every step (:math:`h_1 \dots h_T`).
    cache : tuple
        Opaque; pass it to :func:`rnn_backward`.
    """
    xp = _floats(x=x, h0=h0, Wx=Wx, Wh=Wh, b=b)
    check_shape("x", x, (None, None, None), "(N, T, D)")
    check_time_steps("x", x, axis=1)
    H = _check_rnn_weights(x.shape[2], Wx, Wh, b)
    check_shape("h0", h0, (x.shape[0], H), "(N, H) with N the batch of x")
    W_ih, W_hh = _rnn_engine_weights(Wx, Wh)
    hs, _, tape = sequence.forward(_RNN, _time_major(x, xp), (h0,), W_ih, W_hh, b, xp=xp)
    return _time_major(hs, xp), _RNNCache(tape, W_ih, W_hh)


def rnn_backward(dh, cache):
    r"""Backpropagation through time for :func:`rnn_forward`.

    Step ``t`` receives the upstream ``dh[:, t, :]`` plus the gradient
    :math:`dz_{t+1} W_h^T` carried back from step ``t + 1``; the weight
    gradients sum the per-step ones of :func:`rnn_step_backward`.

    Parameters
    ----------
    dh : array (N, T, H)
        Gradient of the loss with respect to every hidden state ``h``.
    cache : tuple
        From :func:`rnn_forward`.

    Returns
    -------
    dx : array (N, T, D)
    dh0 : array (N, H)
    dWx : array (D, H)
    dWh : array (H, H)
    db : array (H,)
    """
    tape, W_ih, W_hh = check_cache(cache, _RNNCache, "rnn_forward")
    xp = namespace_of(**{"x (from cache)": tape.x}, dh=dh)
    T, N, _ = tape.x.shape
    check_upstream(xp, "dh", dh, tape.x, (N, T, W_hh.shape[0]), "(N, T, H), the shape of h")
    g = sequence.backward(_RNN, tape, _time_major(dh, xp), None, W_ih, W_hh, xp=xp)
    return (_time_major(g.dx, xp), g.dstate0[0], *_param_grads(g, "rnn", xp))


# --------------------------------------------------------------------------- LSTM


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    r"""One time step of an LSTM (CS231n gate order i, f, o, g).

    .. math::

        a &= x W_x + h_{prev} W_h + b = [a_i, a_f, a_o, a_g] \\
        i &= \sigma(a_i), \quad f = \sigma(a_f), \quad o = \sigma(a_o), \quad g = \tanh(a_g) \\
        c_{next} &= f \odot c_{prev} + i \odot g, \qquad h_{next} = o \odot \tanh(c_{next})

    Parameters
    ----------
    x : array (N, D)
    prev_h, prev_c : arrays (N, H)
        Hidden and cell state of the previous step.
    Wx : array (D, 4H)
        Input-to-hidden weights, column blocks i, f, o, g.
    Wh : array (H, 4H)
        Hidden-to-hidden weights, column blocks i, f, o, g.
    b : array (4H,)
        Bias, blocks i, f, o, g.

    Returns
    -------
    next_h, next_c : arrays (N, H)
    cache : tuple
        Opaque; pass it to :func:`lstm_step_backward`.
    """
    xp = _floats(x=x, prev_h=prev_h, prev_c=prev_c, Wx=Wx, Wh=Wh, b=b)
    check_shape("x", x, (None, None), "(N, D)")
    H = _check_lstm_weights(x.shape[1], Wx, Wh, b)
    check_shape("prev_h", prev_h, (x.shape[0], H), "(N, H) with N the batch of x")
    check_shape("prev_c", prev_c, (x.shape[0], H), "(N, H) with N the batch of x")
    W_ih, W_hh, b_ih = _lstm_engine_weights(Wx, Wh, b, H, xp)
    _, (next_h, next_c), tape = sequence.forward(
        _LSTM, xp.expand_dims(x, axis=0), (prev_h, prev_c), W_ih, W_hh, b_ih, xp=xp
    )
    return next_h, next_c, _LSTMStepCache(tape, W_ih, W_hh)


def lstm_step_backward(dnext_h, dnext_c, cache):
    r"""Backward pass of :func:`lstm_step_forward`.

    .. math::

        dc &= dc_{next} + dh_{next} \odot o \odot (1 - \tanh^2 c_{next}), \qquad
        dc_{prev} = dc \odot f \\
        da &= [dc\,g\,i(1-i),\; dc\,c_{prev}\,f(1-f),\;
               dh_{next} \tanh(c_{next})\,o(1-o),\; dc\,i\,(1-g^2)] \\
        dx &= da\, W_x^T, \quad dh_{prev} = da\, W_h^T, \quad
        dW_x = x^T da, \quad dW_h = h_{prev}^T da, \quad db = \textstyle\sum_N da

    Parameters
    ----------
    dnext_h, dnext_c : arrays (N, H)
        Gradients of the loss with respect to ``next_h`` and ``next_c``.
    cache : tuple
        From :func:`lstm_step_forward`.

    Returns
    -------
    dx : array (N, D)
    dprev_h, dprev_c : arrays (N, H)
    dWx : array (D, 4H)
    dWh : array (H, 4H)
    db : array (4H,)
        Gate blocks in the order i, f, o, g.
    """
    tape, W_ih, W_hh = check_cache(cache, _LSTMStepCache, "lstm_step_forward")
    xp = namespace_of(**{"x (from cache)": tape.x}, dnext_h=dnext_h, dnext_c=dnext_c)
    shape = tuple(tape.state0[0].shape)
    check_upstream(xp, "dnext_h", dnext_h, tape.x, shape, "(N, H), the shape of next_h")
    check_upstream(xp, "dnext_c", dnext_c, tape.x, shape, "(N, H), the shape of next_c")
    g = sequence.backward(_LSTM, tape, None, (dnext_h, dnext_c), W_ih, W_hh, xp=xp)
    dWx, dWh, db = _param_grads(g, "lstm", xp)
    return g.dx[0, ...], g.dstate0[0], g.dstate0[1], dWx, dWh, db


def lstm_forward(x, h0, Wx, Wh, b):
    r"""An LSTM over a whole sequence, from :math:`c_0 = 0`.

    Every step is :func:`lstm_step_forward` (gate order i, f, o, g):

    .. math::

        [a_i, a_f, a_o, a_g] &= x_t W_x + h_{t-1} W_h + b \\
        c_t &= \sigma(a_f) \odot c_{t-1} + \sigma(a_i) \odot \tanh(a_g), \qquad
        h_t = \sigma(a_o) \odot \tanh(c_t)

    Parameters
    ----------
    x : array (N, T, D)
    h0 : array (N, H)
        Initial hidden state; the initial cell state is zero.
    Wx : array (D, 4H)
    Wh : array (H, 4H)
    b : array (4H,)

    Returns
    -------
    h : array (N, T, H)
        Hidden state of every step.
    cache : tuple
        Opaque; pass it to :func:`lstm_backward`.
    """
    xp = _floats(x=x, h0=h0, Wx=Wx, Wh=Wh, b=b)
    check_shape("x", x, (None, None, None), "(N, T, D)")
    check_time_steps("x", x, axis=1)
    H = _check_lstm_weights(x.shape[2], Wx, Wh, b)
    check_shape("h0", h0, (x.shape[0], H), "(N, H) with N the batch of x")
    W_ih, W_hh, b_ih = _lstm_engine_weights(Wx, Wh, b, H, xp)
    c0 = xp.zeros(h0.shape, dtype=h0.dtype, device=device(h0))
    hs, _, tape = sequence.forward(_LSTM, _time_major(x, xp), (h0, c0), W_ih, W_hh, b_ih, xp=xp)
    return _time_major(hs, xp), _LSTMCache(tape, W_ih, W_hh)


def lstm_backward(dh, cache):
    r"""Backpropagation through time for :func:`lstm_forward`.

    Step ``t`` receives ``dh[:, t, :]`` plus the gradients of :math:`h_t` and
    :math:`c_t` carried back from step ``t + 1`` (full BPTT), then applies
    :func:`lstm_step_backward`; weight gradients are summed over steps.

    Parameters
    ----------
    dh : array (N, T, H)
        Gradient of the loss with respect to every hidden state ``h``.
    cache : tuple
        From :func:`lstm_forward`.

    Returns
    -------
    dx : array (N, T, D)
    dh0 : array (N, H)
    dWx : array (D, 4H)
    dWh : array (H, 4H)
    db : array (4H,)
        Gate blocks in the order i, f, o, g.
    """
    tape, W_ih, W_hh = check_cache(cache, _LSTMCache, "lstm_forward")
    xp = namespace_of(**{"x (from cache)": tape.x}, dh=dh)
    T, N, _ = tape.x.shape
    H = W_hh.shape[1]
    check_upstream(xp, "dh", dh, tape.x, (N, T, H), "(N, T, H), the shape of h")
    g = sequence.backward(_LSTM, tape, _time_major(dh, xp), None, W_ih, W_hh, xp=xp)
    dWx, dWh, db = _param_grads(g, "lstm", xp)
    return _time_major(g.dx, xp), g.dstate0[0], dWx, dWh, db


# --------------------------------------------------------------------------- loss


def temporal_softmax_loss(x, y, mask, verbose=False):
    r"""Softmax cross-entropy summed over valid time steps, averaged over the batch.

    .. math::

        L = -\frac{1}{N} \sum_{n,t} m_{n,t} \log \mathrm{softmax}(x_{n,t})_{y_{n,t}},
        \qquad
        \frac{\partial L}{\partial x_{n,t}} = \frac{m_{n,t}}{N}
            \bigl(\mathrm{softmax}(x_{n,t}) - \mathrm{onehot}(y_{n,t})\bigr)

    The log-softmax is the stable :math:`x - \max x - \log\sum e^{x - \max x}`,
    so no score overflows; the label's entry is picked with a one-hot mask.

    Parameters
    ----------
    x : array (N, T, V) of a real floating dtype
        Scores over the vocabulary.
    y : array (N, T) of an integer dtype
        Ground-truth indices, each in ``[0, V)`` (not range-checked; an
        index outside it contributes a zero log-probability).
    mask : array (N, T) of bool
        Which steps count in the loss.
    verbose : bool, default False
        Print the shape of the flattened gradient, as the assignment does.

    Returns
    -------
    loss : 0-d array
        Same dtype and device as ``x``; no copy to the host is made.
    dx : array (N, T, V)
    """
    xp = namespace_of(x=x, y=y, mask=mask)
    check_floating(xp, x=x)
    check_integer_dtype(xp, "y", y)
    _check_bool(xp, "mask", mask)
    check_same_device(x=x, y=y, mask=mask)
    check_shape("x", x, (None, None, None), "(N, T, V)")
    N, T, V = x.shape
    check_shape("y", y, (N, T), "(N, T) with N, T those of x")
    check_shape("mask", mask, (N, T), "(N, T) with N, T those of x")
    # Selects, not products with the mask: masked steps may hold NaN or inf.
    zero = xp.zeros((), dtype=x.dtype, device=device(x))
    x = xp.where(xp.expand_dims(mask, axis=-1), x, zero)
    log_p = log_softmax(x, axis=-1)
    onehot = one_hot(y, V, x.dtype, xp)
    loss = -xp.sum(xp.where(mask, xp.sum(onehot * log_p, axis=-1), zero)) / N
    loss = xp.asarray(loss, dtype=x.dtype, device=device(x))  # NumPy sums give scalars
    dx = xp.where(xp.expand_dims(mask, axis=-1), (xp.exp(log_p) - onehot) / N, zero)
    if verbose:
        print("dx_flat: ", (N * T, V))
    return loss, dx
