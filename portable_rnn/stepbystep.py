r"""The deeplearning.ai "RNN step by step" functions, on any Array API backend.

Names, signatures, layouts and return structures are the exercise's:
feature-major arrays (``x`` is (n_x, m, T_x), states (n_a, m)), separate gate
weights ``W*`` of shape (n_a, n_a + n_x) acting on the stacked
:math:`[a^{\langle t-1 \rangle}; x^{\langle t \rangle}]`, and caches

- RNN cell: ``(a_next, a_prev, xt, parameters)``
- LSTM cell: ``(a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters)``
- sequences: ``(list_of_cell_caches, x)``

Each function is thin: it checks its inputs, maps them onto the engine's
batch-major layout (transposes are views) and calls
:mod:`portable_rnn.engine.sequence`, where the maths lives once for every API.

The engine's ``retain="checkpoint"`` and ``"none"`` have no counterpart here:
the exercise's caches *are* the full tape by definition (``lstm_forward``
also returns ``c`` for every step), and ``rnn_forward``'s caches are views
of ``a`` and ``x`` that cost nothing. Long sequences in bounded memory are
the layers' (:meth:`portable_rnn.LSTM.forward`).
"""

from __future__ import annotations

from array_api_compat import device

from .engine import sequence
from ._validation import (
    check_arrays,
    check_keys,
    check_shape,
    check_time_steps,
    check_truncate,
)
from .activations import softmax
from .engine.cells import LSTMCell, LSTMTape, RNNCell
from .course_layouts import (
    STEPBYSTEP_GATES,
    STEPBYSTEP_KEYS,
    STEPBYSTEP_OUTPUT,
    from_stepbystep_layout,
    to_stepbystep_layout,
)

__all__ = [
    "rnn_cell_forward",
    "rnn_forward",
    "lstm_cell_forward",
    "lstm_forward",
    "rnn_cell_backward",
    "rnn_backward",
    "lstm_cell_backward",
    "lstm_backward",
]

#: The exercise's parameter keys: the recurrent layer's, then the output layer's.
RNN_KEYS = STEPBYSTEP_KEYS["rnn"] + STEPBYSTEP_OUTPUT["rnn"]
LSTM_KEYS = STEPBYSTEP_KEYS["lstm"] + STEPBYSTEP_OUTPUT["lstm"]
LSTM_GATES = STEPBYSTEP_GATES  # the engine's order (PyTorch's i, f, g, o)


# --------------------------------------------------------------------------- checks


def _checked(arrays: dict, parameters: dict, keys):
    """Namespace of arrays and parameters, after library, dtype and device checks."""
    check_keys("parameters", parameters, keys)
    named = dict(arrays)
    named.update({f"parameters['{k}']": parameters[k] for k in keys})
    return check_arrays(**named)[0]


def _check_rnn_parameters(parameters, n_x=None):
    n_a = parameters["Waa"].shape[0]
    n_y = parameters["Wya"].shape[0]
    check_shape("parameters['Waa']", parameters["Waa"], (n_a, n_a), "(n_a, n_a)")
    check_shape("parameters['Wax']", parameters["Wax"], (n_a, n_x), "(n_a, n_x)")
    check_shape("parameters['ba']", parameters["ba"], (n_a, 1), "(n_a, 1)")
    check_shape("parameters['Wya']", parameters["Wya"], (n_y, n_a), "(n_y, n_a)")
    check_shape("parameters['by']", parameters["by"], (n_y, 1), "(n_y, 1)")
    return n_a


def _check_lstm_parameters(parameters, n_x):
    n_a = parameters["Wf"].shape[0]
    n_y = parameters["Wy"].shape[0]
    for gate in ("f", "i", "c", "o"):
        check_shape(f"parameters['W{gate}']", parameters[f"W{gate}"], (n_a, n_a + n_x), "(n_a, n_a + n_x)")
        check_shape(f"parameters['b{gate}']", parameters[f"b{gate}"], (n_a, 1), "(n_a, 1)")
    check_shape("parameters['Wy']", parameters["Wy"], (n_y, n_a), "(n_y, n_a)")
    check_shape("parameters['by']", parameters["by"], (n_y, 1), "(n_y, 1)")
    return n_a


# --------------------------------------------------------------------------- layout maps


def _batch_major(a, xp):
    """(n, m) -> (m, n), or (n, m, T) -> (T, m, n)."""
    return xp.matrix_transpose(a) if a.ndim == 2 else xp.permute_dims(a, (2, 1, 0))


_feature_major = _batch_major  # the same axis swap undoes itself


def _one_step(a, xp):
    """(n, m) feature-major -> (1, m, n) engine sequence of one step."""
    return xp.expand_dims(xp.matrix_transpose(a), axis=0)


def _rnn_weights(parameters, xp):
    """Engine W_ih (n_a, n_x), W_hh (n_a, n_a), b (n_a,) of the exercise's RNN parameters."""
    return from_stepbystep_layout(parameters, "rnn", xp=xp)


def _lstm_weights(parameters, xp):
    """Stack the four (n_a, n_a + n_x) gate weights into W_ih, W_hh, b (order i, f, g, o)."""
    return from_stepbystep_layout(parameters, "lstm", xp=xp)


def _param_gradients(grads, mode: str, xp):
    """The engine's gradients under the exercise's keys (``dWax, dWaa, dba`` or ``dWf, dbf, ...``)."""
    per_key = to_stepbystep_layout(grads.dW_ih, grads.dW_hh, grads.db_ih, mode, xp=xp)
    return {f"d{key}": value for key, value in per_key.items()}


# --------------------------------------------------------------------------- RNN


def rnn_cell_forward(xt, a_prev, parameters, *, nonlinearity="tanh"):
    r"""One step of a vanilla RNN.

    .. math::

        a^{\langle t \rangle} = \phi(W_{aa} a^{\langle t-1 \rangle} + W_{ax} x^{\langle t \rangle} + b_a),
        \qquad
        \hat y^{\langle t \rangle} = \mathrm{softmax}(W_{ya} a^{\langle t \rangle} + b_y)

    Parameters
    ----------
    xt : array (n_x, m)
    a_prev : array (n_a, m)
    parameters : dict
        ``Wax`` (n_a, n_x), ``Waa`` (n_a, n_a), ``Wya`` (n_y, n_a), ``ba`` (n_a, 1), ``by`` (n_y, 1).
    nonlinearity : {"tanh", "relu"}
        :math:`\phi`.

    Returns
    -------
    a_next : array (n_a, m)
    yt_pred : array (n_y, m)
        Softmax over the n_y classes (axis 0).
    cache : tuple
        ``(a_next, a_prev, xt, parameters)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> p = {"Wax": rng.normal(size=(5, 3)), "Waa": rng.normal(size=(5, 5)),
    ...      "Wya": rng.normal(size=(2, 5)), "ba": np.zeros((5, 1)), "by": np.zeros((2, 1))}
    >>> a_next, yt_pred, cache = rnn_cell_forward(np.ones((3, 10)), np.zeros((5, 10)), p)
    >>> a_next.shape, yt_pred.shape, len(cache)
    ((5, 10), (2, 10), 4)
    """
    xp = _checked({"xt": xt, "a_prev": a_prev}, parameters, RNN_KEYS)
    check_shape("xt", xt, (None, None), "(n_x, m)")
    n_a = _check_rnn_parameters(parameters, xt.shape[0])
    check_shape("a_prev", a_prev, (n_a, xt.shape[1]), "(n_a, m) with m the batch of xt")
    W_ih, W_hh, b = _rnn_weights(parameters, xp)
    _, (h,), _ = sequence.forward(
        RNNCell(nonlinearity), _one_step(xt, xp), (_batch_major(a_prev, xp),), W_ih, W_hh, b, xp=xp
    )
    a_next = _feature_major(h, xp)
    yt_pred = softmax(parameters["Wya"] @ a_next + parameters["by"], axis=0)
    return a_next, yt_pred, (a_next, a_prev, xt, parameters)


def rnn_forward(x, a0, parameters, *, nonlinearity="tanh"):
    r"""A vanilla RNN over a whole sequence (the equations of :func:`rnn_cell_forward`).

    Parameters
    ----------
    x : array (n_x, m, T_x)
    a0 : array (n_a, m)
    parameters : dict
        As for :func:`rnn_cell_forward`.
    nonlinearity : {"tanh", "relu"}

    Returns
    -------
    a : array (n_a, m, T_x)
        Hidden state of every step.
    y_pred : array (n_y, m, T_x)
        Softmax predictions of every step.
    caches : tuple
        ``(list of T_x cell caches, x)``.
    """
    xp = _checked({"x": x, "a0": a0}, parameters, RNN_KEYS)
    check_shape("x", x, (None, None, None), "(n_x, m, T_x)")
    check_time_steps("x", x, axis=2)
    n_a = _check_rnn_parameters(parameters, x.shape[0])
    check_shape("a0", a0, (n_a, x.shape[1]), "(n_a, m) with m the batch of x")
    W_ih, W_hh, b = _rnn_weights(parameters, xp)
    hs, _, _ = sequence.forward(
        RNNCell(nonlinearity), _batch_major(x, xp), (_batch_major(a0, xp),), W_ih, W_hh, b, xp=xp
    )
    logits = hs @ xp.matrix_transpose(parameters["Wya"]) + xp.matrix_transpose(parameters["by"])
    a = _feature_major(hs, xp)
    y_pred = _feature_major(softmax(logits, axis=-1), xp)
    steps = [a[:, :, t] for t in range(x.shape[2])]
    caches = [
        (steps[t], a0 if t == 0 else steps[t - 1], x[:, :, t], parameters)
        for t in range(x.shape[2])
    ]
    return a, y_pred, (caches, x)


def _rnn_tape(a_next_steps, a_prev0, x_steps, xp):
    """Engine tape from feature-major pieces: (n_a, m, T), (n_a, m), (n_x, m, T)."""
    return sequence.Tape(
        x=_batch_major(x_steps, xp),
        state0=(_batch_major(a_prev0, xp),),
        states=(_batch_major(a_next_steps, xp),),
        cell_tape=None,
    )


def rnn_cell_backward(da_next, cache, *, nonlinearity="tanh"):
    r"""Backward pass of one RNN step.

    With :math:`dz = da_{next} \odot \phi'(z)` (for tanh, :math:`1 - a_{next}^2`):
    :math:`dx_t = W_{ax}^T dz`, :math:`da_{prev} = W_{aa}^T dz`,
    :math:`dW_{ax} = dz\,x_t^T`, :math:`dW_{aa} = dz\,a_{prev}^T`,
    :math:`db_a = \sum_m dz`.

    Parameters
    ----------
    da_next : array (n_a, m)
        Gradient of the loss with respect to ``a_next``.
    cache : tuple
        From :func:`rnn_cell_forward`.
    nonlinearity : {"tanh", "relu"}
        The one used in the forward pass.

    Returns
    -------
    dict
        ``dxt`` (n_x, m), ``da_prev`` (n_a, m), ``dWax`` (n_a, n_x),
        ``dWaa`` (n_a, n_a), ``dba`` (n_a, 1).
    """
    a_next, a_prev, xt, parameters = cache
    xp = _checked({"da_next": da_next, "a_next": a_next}, parameters, RNN_KEYS)
    check_shape("da_next", da_next, tuple(a_next.shape), "(n_a, m), the shape of a_next")
    W_ih, W_hh, _ = _rnn_weights(parameters, xp)
    tape = _rnn_tape(xp.expand_dims(a_next, axis=2), a_prev, xp.expand_dims(xt, axis=2), xp)
    d_final = (_batch_major(da_next, xp),)
    g = sequence.backward(RNNCell(nonlinearity), tape, None, d_final, W_ih, W_hh, xp=xp)
    return {
        "dxt": _feature_major(g.dx[0, ...], xp),
        "da_prev": _feature_major(g.dstate0[0], xp),
        **_param_gradients(g, "rnn", xp),
    }


def _unpack_caches(caches, da, name="caches"):
    if not (isinstance(caches, (tuple, list)) and len(caches) == 2):
        raise TypeError(f"{name} must be the (list_of_cell_caches, x) pair from the forward pass")
    cell_caches, x = caches
    T = da.shape[2] if da.ndim == 3 else None
    if T is None:
        raise ValueError(f"da has shape {tuple(da.shape)}; expected (n_a, m, T_x)")
    if len(cell_caches) != T or x.shape[2] != T:
        raise ValueError(
            f"da has {T} time steps but the forward pass ran {len(cell_caches)} "
            f"(x has shape {tuple(x.shape)}); they must match"
        )
    return cell_caches, x


def rnn_backward(da, caches, truncate=None, *, nonlinearity="tanh"):
    r"""Backpropagation through time for :func:`rnn_forward`.

    Step ``t`` receives ``da[:, :, t]`` plus the gradient carried back from
    step ``t + 1``, unless truncation cuts it.

    Parameters
    ----------
    da : array (n_a, m, T_x)
        Gradient of the loss with respect to every hidden state ``a``.
    caches : tuple
        From :func:`rnn_forward`.
    truncate : int or None
        Truncated BPTT: windows of ``truncate`` steps, no gradient crosses a
        window boundary. ``None`` is full BPTT.
    nonlinearity : {"tanh", "relu"}

    Returns
    -------
    dict
        ``dx`` (n_x, m, T_x), ``da0`` (n_a, m), ``dWax`` (n_a, n_x),
        ``dWaa`` (n_a, n_a), ``dba`` (n_a, 1).
    """
    truncate = check_truncate(truncate)
    cell_caches, x = _unpack_caches(caches, da)
    parameters = cell_caches[0][3]
    xp = _checked({"da": da, "x": x}, parameters, RNN_KEYS)
    a = xp.stack([c[0] for c in cell_caches], axis=2)
    check_shape("da", da, tuple(a.shape), "(n_a, m, T_x), the shape of a")
    W_ih, W_hh, _ = _rnn_weights(parameters, xp)
    tape = _rnn_tape(a, cell_caches[0][1], x, xp)
    g = sequence.backward(
        RNNCell(nonlinearity), tape, _batch_major(da, xp), None, W_ih, W_hh, xp=xp, truncate=truncate
    )
    return {
        "dx": _feature_major(g.dx, xp),
        "da0": _feature_major(g.dstate0[0], xp),
        **_param_gradients(g, "rnn", xp),
    }


# --------------------------------------------------------------------------- LSTM


def lstm_cell_forward(xt, a_prev, c_prev, parameters):
    r"""One step of an LSTM.

    With :math:`s = [a^{\langle t-1 \rangle}; x^{\langle t \rangle}]`:

    .. math::

        f_t &= \sigma(W_f s + b_f), \quad i_t = \sigma(W_i s + b_i), \quad
        \tilde c_t = \tanh(W_c s + b_c), \quad o_t = \sigma(W_o s + b_o) \\
        c^{\langle t \rangle} &= f_t \odot c^{\langle t-1 \rangle} + i_t \odot \tilde c_t, \qquad
        a^{\langle t \rangle} = o_t \odot \tanh(c^{\langle t \rangle}) \\
        \hat y^{\langle t \rangle} &= \mathrm{softmax}(W_y a^{\langle t \rangle} + b_y)

    Parameters
    ----------
    xt : array (n_x, m)
    a_prev, c_prev : arrays (n_a, m)
    parameters : dict
        ``Wf, Wi, Wc, Wo`` (n_a, n_a + n_x), ``bf, bi, bc, bo`` (n_a, 1),
        ``Wy`` (n_y, n_a), ``by`` (n_y, 1).

    Returns
    -------
    a_next, c_next : arrays (n_a, m)
    yt_pred : array (n_y, m)
    cache : tuple
        ``(a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters)``.
    """
    xp = _checked({"xt": xt, "a_prev": a_prev, "c_prev": c_prev}, parameters, LSTM_KEYS)
    check_shape("xt", xt, (None, None), "(n_x, m)")
    n_a = _check_lstm_parameters(parameters, xt.shape[0])
    m = xt.shape[1]
    check_shape("a_prev", a_prev, (n_a, m), "(n_a, m) with m the batch of xt")
    check_shape("c_prev", c_prev, (n_a, m), "(n_a, m) with m the batch of xt")
    W_ih, W_hh, b = _lstm_weights(parameters, xp)
    _, (h, c), tape = sequence.forward(
        LSTMCell(), _one_step(xt, xp), (_batch_major(a_prev, xp), _batch_major(c_prev, xp)),
        W_ih, W_hh, b, xp=xp,
    )
    it, ft, cct, ot, _ = (_feature_major(v[0, ...], xp) for v in tape.cell_tape)
    a_next, c_next = _feature_major(h, xp), _feature_major(c, xp)
    yt_pred = softmax(parameters["Wy"] @ a_next + parameters["by"], axis=0)
    cache = (a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters)
    return a_next, c_next, yt_pred, cache


def lstm_forward(x, a0, parameters):
    r"""An LSTM over a whole sequence, from :math:`c^{\langle 0 \rangle} = 0`.

    Parameters
    ----------
    x : array (n_x, m, T_x)
    a0 : array (n_a, m)
    parameters : dict
        As for :func:`lstm_cell_forward`.

    Returns
    -------
    a : array (n_a, m, T_x)
    y : array (n_y, m, T_x)
    c : array (n_a, m, T_x)
    caches : tuple
        ``(list of T_x cell caches, x)``.
    """
    xp = _checked({"x": x, "a0": a0}, parameters, LSTM_KEYS)
    check_shape("x", x, (None, None, None), "(n_x, m, T_x)")
    check_time_steps("x", x, axis=2)
    n_a = _check_lstm_parameters(parameters, x.shape[0])
    check_shape("a0", a0, (n_a, x.shape[1]), "(n_a, m) with m the batch of x")
    W_ih, W_hh, b = _lstm_weights(parameters, xp)
    h0 = _batch_major(a0, xp)
    c0 = xp.zeros(h0.shape, dtype=h0.dtype, device=device(h0))
    hs, _, tape = sequence.forward(LSTMCell(), _batch_major(x, xp), (h0, c0), W_ih, W_hh, b, xp=xp)
    a = _feature_major(hs, xp)
    c = _feature_major(tape.states[1], xp)
    logits = hs @ xp.matrix_transpose(parameters["Wy"]) + xp.matrix_transpose(parameters["by"])
    y = _feature_major(softmax(logits, axis=-1), xp)
    it, ft, cct, ot, _ = (_feature_major(v, xp) for v in tape.cell_tape)
    c_start = _feature_major(c0, xp)
    caches = []
    for t in range(x.shape[2]):
        a_prev = a0 if t == 0 else a[:, :, t - 1]
        c_prev = c_start if t == 0 else c[:, :, t - 1]
        caches.append(
            (a[:, :, t], c[:, :, t], a_prev, c_prev, ft[:, :, t], it[:, :, t],
             cct[:, :, t], ot[:, :, t], x[:, :, t], parameters)
        )
    return a, y, c, (caches, x)


def _lstm_tape(cell_caches, x, xp):
    """Engine tape from a list of LSTM cell caches and x (n_x, m, T)."""

    def steps(k):
        return _batch_major(xp.stack([cache[k] for cache in cell_caches], axis=2), xp)

    a_prev0, c_prev0 = cell_caches[0][2], cell_caches[0][3]
    c = steps(1)
    return sequence.Tape(
        x=_batch_major(x, xp),
        state0=(_batch_major(a_prev0, xp), _batch_major(c_prev0, xp)),
        states=(steps(0), c),
        cell_tape=LSTMTape(i=steps(5), f=steps(4), g=steps(6), o=steps(7), tanh_c=xp.tanh(c)),
    )


def lstm_cell_backward(da_next, dc_next, cache):
    r"""Backward pass of one LSTM step.

    With :math:`dc = dc_{next} + da_{next}\, o_t (1 - \tanh^2 c_{next})`:
    :math:`do = da_{next} \tanh c_{next}`, :math:`di = dc\,\tilde c_t`,
    :math:`df = dc\,c_{prev}`, :math:`d\tilde c = dc\,i_t`,
    :math:`dc_{prev} = dc\,f_t`; each through its activation's derivative
    gives :math:`dz`, then :math:`dW = dz\,[a_{prev}; x_t]^T`,
    :math:`db = \sum_m dz`, :math:`[da_{prev}; dx_t] = W^T dz`.

    Parameters
    ----------
    da_next, dc_next : arrays (n_a, m)
    cache : tuple
        From :func:`lstm_cell_forward`.

    Returns
    -------
    dict
        ``dxt`` (n_x, m), ``da_prev`` (n_a, m), ``dc_prev`` (n_a, m),
        ``dWf, dWi, dWc, dWo`` (n_a, n_a + n_x), ``dbf, dbi, dbc, dbo`` (n_a, 1).
    """
    a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters = cache
    xp = _checked({"da_next": da_next, "dc_next": dc_next, "a_next": a_next}, parameters, LSTM_KEYS)
    check_shape("da_next", da_next, tuple(a_next.shape), "(n_a, m), the shape of a_next")
    check_shape("dc_next", dc_next, tuple(c_next.shape), "(n_a, m), the shape of c_next")
    W_ih, W_hh, _ = _lstm_weights(parameters, xp)
    tape = _lstm_tape([cache], xp.expand_dims(xt, axis=2), xp)
    d_final = (_batch_major(da_next, xp), _batch_major(dc_next, xp))
    g = sequence.backward(LSTMCell(), tape, None, d_final, W_ih, W_hh, xp=xp)
    grads = {
        "dxt": _feature_major(g.dx[0, ...], xp),
        "da_prev": _feature_major(g.dstate0[0], xp),
        "dc_prev": _feature_major(g.dstate0[1], xp),
    }
    grads.update(_param_gradients(g, "lstm", xp))
    return grads


def lstm_backward(da, caches, truncate=None):
    r"""Backpropagation through time for :func:`lstm_forward`.

    Full BPTT by default: step ``t`` receives ``da[:, :, t]`` plus the
    gradients of :math:`a^{\langle t \rangle}` and :math:`c^{\langle t \rangle}`
    carried back from step ``t + 1``.

    Parameters
    ----------
    da : array (n_a, m, T_x)
        Gradient of the loss with respect to every hidden state ``a``.
    caches : tuple
        From :func:`lstm_forward`; must cover exactly the T_x steps of ``da``.
    truncate : int or None
        Truncated BPTT in windows of ``truncate`` steps. ``truncate=1`` gives
        each step only its own ``da[:, :, t]`` and a zero ``dc_next``, which
        reproduces the numbers printed by the original exercise.

    Returns
    -------
    dict
        ``dx`` (n_x, m, T_x), ``da0`` (n_a, m), ``dc0`` (n_a, m),
        ``dWf, dWi, dWc, dWo`` (n_a, n_a + n_x), ``dbf, dbi, dbc, dbo`` (n_a, 1).
    """
    truncate = check_truncate(truncate)
    cell_caches, x = _unpack_caches(caches, da)
    parameters = cell_caches[0][9]
    xp = _checked({"da": da, "x": x}, parameters, LSTM_KEYS)
    n_a = cell_caches[0][0].shape[0]
    check_shape("da", da, (n_a, x.shape[1], x.shape[2]), "(n_a, m, T_x), the shape of a")
    W_ih, W_hh, _ = _lstm_weights(parameters, xp)
    tape = _lstm_tape(cell_caches, x, xp)
    g = sequence.backward(
        LSTMCell(), tape, _batch_major(da, xp), None, W_ih, W_hh, xp=xp, truncate=truncate
    )
    grads = {
        "dx": _feature_major(g.dx, xp),
        "da0": _feature_major(g.dstate0[0], xp),
        "dc0": _feature_major(g.dstate0[1], xp),
    }
    grads.update(_param_gradients(g, "lstm", xp))
    return grads
