r"""The course layouts: deeplearning.ai "RNN step by step" and CS231n, mapped onto the engine's.

With ``G`` gates of size ``H`` (the step-by-step exercise's ``n_a``) and
input size ``D`` (its ``n_x``):

engine (PyTorch's ``state_dict``)
    ``W_ih`` (G*H, D), ``W_hh`` (G*H, H), ``b`` (G*H,) multiplying from the
    left; LSTM gates i, f, g, o.
step by step
    LSTM: one ``W*`` (n_a, n_a + n_x) per gate acting on
    :math:`[a^{\langle t-1 \rangle}; x^{\langle t \rangle}]` and ``b*``
    (n_a, 1), keys ``f, i, c, o`` (``c`` is our ``g``). RNN: ``Wax`` (n_a,
    n_x), ``Waa`` (n_a, n_a), ``ba`` (n_a, 1).
CS231n
    ``Wx`` (D, G*H), ``Wh`` (H, G*H), ``b`` (G*H,) multiplying from the
    right; LSTM gates i, f, o, g.

The maps between them are written once, here, as backend-neutral functions:
they slice, stack and transpose in the namespace of their inputs, so they run
under ``jax.jit`` and on any device, and they move no number, bit for bit.
The course faces :mod:`portable_rnn.stepbystep` and :mod:`portable_rnn.cs231n`
call them on every forward and backward (gradients have the weights' layout);
:mod:`portable_rnn.interop.courses` builds the converters between course
parameters and :mod:`portable_rnn.layers` specs on them.
"""

from __future__ import annotations

from array_api_compat import array_namespace

__all__ = [
    "COURSE_MODES",
    "check_mode",
    "STEPBYSTEP_GATES",
    "STEPBYSTEP_KEYS",
    "STEPBYSTEP_OUTPUT",
    "from_stepbystep_layout",
    "to_stepbystep_layout",
    "from_cs231n_layout",
    "to_cs231n_layout",
]

#: The exercise's LSTM gate letters in the engine's gate order (i, f, g, o).
STEPBYSTEP_GATES = ("i", "f", "c", "o")
#: The exercise's recurrent-layer keys, in its own order.
STEPBYSTEP_KEYS = {
    "rnn": ("Wax", "Waa", "ba"),
    "lstm": ("Wf", "bf", "Wi", "bi", "Wc", "bc", "Wo", "bo"),
}
#: The output layer, which the exercise keeps in the same dict.
STEPBYSTEP_OUTPUT = {"rnn": ("Wya", "by"), "lstm": ("Wy", "by")}

#: The cells the two courses have.
COURSE_MODES = ("rnn", "lstm")


def check_mode(mode):
    """``mode`` if the courses have that cell, else a ValueError."""
    if mode not in COURSE_MODES:
        raise ValueError(f"mode must be one of {list(COURSE_MODES)}, got {mode!r}")
    return mode


def from_stepbystep_layout(parameters, mode: str, *, xp=None):
    """Engine weights from the step-by-step recurrent parameters.

    Parameters
    ----------
    parameters : dict of str to array
        :data:`STEPBYSTEP_KEYS` of ``mode`` (other keys are ignored), shapes
        as in the module docstring (not checked here).
    mode : {"rnn", "lstm"}
    xp : namespace, optional
        Default: the namespace of the parameters.

    Returns
    -------
    W_ih : array (G*n_a, n_x)
    W_hh : array (G*n_a, n_a)
    b : array (G*n_a,)
        Gate rows in the engine's order. RNN: ``Wax``, ``Waa`` themselves and
        a reshape of ``ba`` (views of the inputs); LSTM: views of one new
        stacked array.
    """
    check_mode(mode)
    if mode == "lstm":
        xp = xp or array_namespace(parameters["Wf"])
        n_a = parameters["Wf"].shape[0]
        W = xp.concat([parameters[f"W{g}"] for g in STEPBYSTEP_GATES], axis=0)
        b = xp.concat([parameters[f"b{g}"] for g in STEPBYSTEP_GATES], axis=0)
        return W[:, n_a:], W[:, :n_a], xp.reshape(b, (len(STEPBYSTEP_GATES) * n_a,))
    xp = xp or array_namespace(parameters["Waa"])
    n_a = parameters["Waa"].shape[0]
    return parameters["Wax"], parameters["Waa"], xp.reshape(parameters["ba"], (n_a,))


def to_stepbystep_layout(W_ih, W_hh, b, mode: str, *, xp=None) -> dict:
    """Step-by-step recurrent parameters from engine weights (or gradients, which share their layout).

    Parameters
    ----------
    W_ih : array (G*n_a, n_x)
    W_hh : array (G*n_a, n_a)
    b : array (G*n_a,)
    mode : {"rnn", "lstm"}
    xp : namespace, optional
        Default: the namespace of the arrays.

    Returns
    -------
    dict of str to array
        :data:`STEPBYSTEP_KEYS` of ``mode``, in that order. LSTM: ``W*`` =
        ``[W_hh | W_ih]`` rows of the gate (views of one new array), ``b*``
        (n_a, 1). RNN: ``W_ih``, ``W_hh`` themselves and ``b`` as a column.
    """
    check_mode(mode)
    xp = xp or array_namespace(W_ih, W_hh, b)
    n_a = W_hh.shape[1]
    if mode == "rnn":
        return {"Wax": W_ih, "Waa": W_hh, "ba": xp.reshape(b, (n_a, 1))}
    W = xp.concat([W_hh, W_ih], axis=1)
    out = {}
    for k, gate in enumerate(STEPBYSTEP_GATES):
        rows = slice(k * n_a, (k + 1) * n_a)
        out[f"W{gate}"] = W[rows, :]
        out[f"b{gate}"] = xp.reshape(b[rows], (n_a, 1))
    return {key: out[key] for key in STEPBYSTEP_KEYS["lstm"]}


def _swap_og(a, xp):
    """Swap the last two of the four gate blocks of the last axis: i,f,o,g <-> i,f,g,o."""
    H = a.shape[-1] // 4
    return xp.concat([a[..., : 2 * H], a[..., 3 * H :], a[..., 2 * H : 3 * H]], axis=-1)


def from_cs231n_layout(a, mode: str, *, xp=None):
    """One CS231n weight or bias in the engine's layout.

    Parameters
    ----------
    a : array (D, G*H), (H, G*H) or (G*H,)
        ``Wx``, ``Wh`` or ``b``; LSTM gates i, f, o, g along the last axis.
    mode : {"rnn", "lstm"}
    xp : namespace, optional
        Default: the namespace of ``a``.

    Returns
    -------
    array (G*H, D), (G*H, H) or (G*H,)
        Gates i, f, g, o along the first axis; a transposed view (RNN
        weights), ``a`` itself (RNN bias) or a new array (LSTM).
    """
    check_mode(mode)
    xp = xp or array_namespace(a)
    if mode == "lstm":
        a = _swap_og(a, xp)
    return a if a.ndim == 1 else xp.matrix_transpose(a)


def to_cs231n_layout(a, mode: str, *, xp=None):
    """One engine weight, bias or gradient in the CS231n layout: the inverse of :func:`from_cs231n_layout`.

    Parameters
    ----------
    a : array (G*H, D), (G*H, H) or (G*H,)
    mode : {"rnn", "lstm"}
    xp : namespace, optional

    Returns
    -------
    array (D, G*H), (H, G*H) or (G*H,)
        LSTM gates in the order i, f, o, g.
    """
    check_mode(mode)
    xp = xp or array_namespace(a)
    if a.ndim == 2:
        a = xp.matrix_transpose(a)
    return _swap_og(a, xp) if mode == "lstm" else a
