r"""Course parameters to layer specs and back: deeplearning.ai "RNN step by step" and CS231n.

The layouts themselves, and the maps between them and the engine's, are
:mod:`portable_rnn.course_layouts` (re-exported here); the converters
:func:`from_stepbystep`, :func:`to_stepbystep`, :func:`from_cs231n` and
:func:`to_cs231n` give the course parameters to :mod:`portable_rnn.layers`
specs and back.

Biases. The course layouts have one bias per gate: it becomes ``bias_ih``
and ``bias_hh`` is zero; exporting writes ``bias_ih + bias_hh``.
"""

from __future__ import annotations

from array_api_compat import device as device_of

from ..engine.cells import CELLS
from .._validation import check_arrays, check_keys, check_shape
from ..course_layouts import (
    STEPBYSTEP_GATES,
    STEPBYSTEP_KEYS,
    STEPBYSTEP_OUTPUT,
    COURSE_MODES,
    check_mode,
    from_cs231n_layout,
    from_stepbystep_layout,
    to_cs231n_layout,
    to_stepbystep_layout,
)
from . import _common

__all__ = [
    "STEPBYSTEP_GATES",
    "STEPBYSTEP_KEYS",
    "STEPBYSTEP_OUTPUT",
    "from_stepbystep_layout",
    "to_stepbystep_layout",
    "from_cs231n_layout",
    "to_cs231n_layout",
    "from_stepbystep",
    "to_stepbystep",
    "from_cs231n",
    "to_cs231n",
]

# --------------------------------------------------------------------------- checks


def _fresh(xp, arrays: dict) -> dict:
    """New arrays, none sharing memory with the caller's (the layout maps may return views)."""
    return {k: xp.asarray(a, copy=True) for k, a in arrays.items()}


def _summed_bias(spec, params, xp, dtype, dev):
    """``bias_ih + bias_hh`` of layer 0 (zeros without bias): the one bias of the course layouts."""
    if not spec.bias:
        return xp.zeros((spec.n_gates * spec.hidden_size,), dtype=dtype, device=dev)
    return params["bias_ih_l0"] + params["bias_hh_l0"]


def _engine_params(W_ih, W_hh, b, xp, dtype, dev) -> dict:
    """Layer-0 params from one-bias course weights: ``bias_ih = b``, ``bias_hh`` zero, all new arrays."""
    params = _fresh(xp, {"weight_ih_l0": W_ih, "weight_hh_l0": W_hh, "bias_ih_l0": b})
    params["bias_hh_l0"] = xp.zeros(tuple(b.shape), dtype=dtype, device=dev)
    return params


def _check_stepbystep_keys(parameters, mode):
    keys = STEPBYSTEP_KEYS[mode]
    check_keys("parameters", parameters, keys)
    extra = [k for k in parameters if k not in keys and k not in STEPBYSTEP_OUTPUT[mode]]
    if extra:
        raise ValueError(
            f"parameters has unexpected key(s) {extra} for mode={mode!r}; expected {list(keys)} "
            f"(and optionally the output layer {list(STEPBYSTEP_OUTPUT[mode])})"
        )


def _stepbystep_sizes(parameters, mode) -> tuple[int, int]:
    """``(n_x, n_a)`` of checked step-by-step parameters."""
    if mode == "lstm":
        Wf = parameters["Wf"]
        check_shape("parameters['Wf']", Wf, (None, None), "(n_a, n_a + n_x)")
        n_a, n_x = Wf.shape[0], Wf.shape[1] - Wf.shape[0]
        if n_x < 1:
            raise ValueError(f"parameters['Wf'] has shape {tuple(Wf.shape)}; expected (n_a, n_a + n_x) with n_x >= 1")
        for g in STEPBYSTEP_GATES:
            check_shape(f"parameters['W{g}']", parameters[f"W{g}"], (n_a, n_a + n_x), "(n_a, n_a + n_x)")
            check_shape(f"parameters['b{g}']", parameters[f"b{g}"], (n_a, 1), "(n_a, 1)")
        return n_x, n_a
    Waa, Wax = parameters["Waa"], parameters["Wax"]
    check_shape("parameters['Waa']", Waa, (None, None), "(n_a, n_a)")
    n_a = Waa.shape[0]
    check_shape("parameters['Waa']", Waa, (n_a, n_a), "(n_a, n_a)")
    check_shape("parameters['Wax']", Wax, (n_a, None), "(n_a, n_x)")
    check_shape("parameters['ba']", parameters["ba"], (n_a, 1), "(n_a, 1)")
    if Wax.shape[1] < 1:
        raise ValueError("parameters['Wax'] has no columns; expected (n_a, n_x) with n_x >= 1")
    return Wax.shape[1], n_a


# --------------------------------------------------------------------------- step by step


def from_stepbystep(parameters, mode, *, nonlinearity="tanh"):
    r"""Spec and parameters from a deeplearning.ai "RNN step by step" parameter dict.

    Parameters
    ----------
    parameters : dict of str to array
        ``mode="lstm"``: ``Wf, Wi, Wc, Wo`` (n_a, n_a + n_x) acting on
        :math:`[a^{\langle t-1 \rangle}; x^{\langle t \rangle}]` and ``bf, bi,
        bc, bo`` (n_a, 1). ``mode="rnn"``: ``Wax`` (n_a, n_x), ``Waa`` (n_a,
        n_a), ``ba`` (n_a, 1). The output layer (``Wy, by`` / ``Wya, by``) may
        be present; it is not part of the recurrent layer and is ignored
        (any other key is refused).
    mode : {"rnn", "lstm"}
    nonlinearity : {"tanh", "relu"}, default "tanh"
        RNN only: the ``nonlinearity`` the exercise functions are called with.

    Returns
    -------
    spec : RNN or LSTM
        ``RNN/LSTM(n_x, n_a)``, time-major. The exercise's ``x`` (n_x, m, T_x)
        is our ``xp.permute_dims(x, (2, 1, 0))``, and its ``a`` (n_a, m, T_x)
        is ``out`` permuted the same way; ``a0`` (n_a, m) is ``state = a0.T[None]``
        (LSTM: ``(a0.T[None], zeros)``, the exercise starts with ``c = 0``).
    params : dict of str to array
        ``weight_ih`` = the ``x`` columns ``W[:, n_a:]`` of each gate in the
        order i, f, g (``c``), o; ``weight_hh`` = the ``a`` columns ``W[:, :n_a]``;
        ``bias_ih`` the biases, ``bias_hh`` zero. New arrays in the
        namespace, dtype and device of ``parameters``.
    """
    mode = check_mode(mode)
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    if mode == "lstm" and nonlinearity != "tanh":
        raise ValueError("nonlinearity is for mode='rnn' only")
    _check_stepbystep_keys(parameters, mode)
    xp, dtype, dev = check_arrays(**{f"parameters[{k!r}]": parameters[k] for k in STEPBYSTEP_KEYS[mode]})
    n_x, n_a = _stepbystep_sizes(parameters, mode)
    W_ih, W_hh, b = from_stepbystep_layout(parameters, mode, xp=xp)
    params = _engine_params(W_ih, W_hh, b, xp, dtype, dev)
    kw = {"nonlinearity": nonlinearity} if mode == "rnn" else {}
    return _common.spec_class(mode)(n_x, n_a, **kw), params


def to_stepbystep(spec, params, Wy=None, by=None):
    """The deeplearning.ai "RNN step by step" parameter dict: the inverse of :func:`from_stepbystep`.

    Parameters
    ----------
    spec : RNN or LSTM
        One unidirectional layer.
    params : dict of str to array
    Wy, by : array (n_y, n_a) and (n_y, 1), optional
        The output layer, which the exercise keeps in the same dict (as
        ``Wy, by`` for LSTM and ``Wya, by`` for RNN); give both or neither.
        ``rnn_forward``/``lstm_forward`` need it; the cell-level maths does not.

    Returns
    -------
    dict of str to array
        LSTM: ``Wf, bf, Wi, bi, Wc, bc, Wo, bo`` (+ ``Wy, by``) with ``W* =
        concat([W_hh, W_ih], axis=1)`` rows of the gate and ``b* = (b_ih +
        b_hh)`` as a column. RNN: ``Wax, Waa, ba`` (+ ``Wya, by``). New
        arrays in the namespace, dtype and device of ``params``.

    Notes
    -----
    The dict does not record the RNN's nonlinearity: for a relu spec call the
    exercise functions with ``nonlinearity="relu"``. Our ``batch_first`` is
    irrelevant here (the exercise layout is (n_x, m, T_x)).
    """
    _common.single_layer(spec, "the step-by-step layout", modes=COURSE_MODES)
    xp, dtype = _common.check_spec_params(spec, params)
    dev = device_of(params["weight_ih_l0"])
    if (Wy is None) != (by is None):
        raise ValueError("give both Wy and by (the output layer), or neither")
    W_ih, W_hh = params["weight_ih_l0"], params["weight_hh_l0"]
    b = _summed_bias(spec, params, xp, dtype, dev)
    out = to_stepbystep_layout(W_ih, W_hh, b, spec.mode, xp=xp)
    if Wy is not None:
        H = spec.hidden_size
        wy_name, by_name = STEPBYSTEP_OUTPUT[spec.mode]
        check_arrays(**{"params['weight_ih_l0']": W_ih, wy_name: Wy, by_name: by})
        check_shape(wy_name, Wy, (None, H), f"(n_y, n_a) with n_a = {H}")
        check_shape(by_name, by, (Wy.shape[0], 1), "(n_y, 1)")
        out[wy_name], out[by_name] = Wy, by
    return _fresh(xp, out)


# --------------------------------------------------------------------------- CS231n


def from_cs231n(Wx, Wh, b, mode):
    r"""Spec and parameters from the CS231n captioning RNN/LSTM weights.

    Parameters
    ----------
    Wx : array (D, H), or (D, 4H) for LSTM
    Wh : array (H, H), or (H, 4H) for LSTM
    b : array (H,), or (4H,) for LSTM
        The assignment multiplies from the right, :math:`x W_x + h W_h + b`,
        with the LSTM gates stacked as i, f, o, g.
    mode : {"rnn", "lstm"}

    Returns
    -------
    spec : RNN or LSTM
        ``RNN/LSTM(D, H, batch_first=True)``: the assignment's ``x`` is (N, T,
        D) and its ``h`` (N, T, H) is our ``out``; ``h0`` (N, H) is ``state =
        h0[None]`` (LSTM: ``(h0[None], zeros)``, the assignment starts with
        ``c = 0``).
    params : dict of str to array
        ``weight_ih = Wx.T``, ``weight_hh = Wh.T`` and ``bias_ih = b``, gate
        blocks reordered to i, f, g, o; ``bias_hh`` zero. New arrays in the
        namespace, dtype and device of the inputs.
    """
    mode = check_mode(mode)
    xp, dtype, dev = check_arrays(Wx=Wx, Wh=Wh, b=b)
    G = CELLS[mode].n_gates
    check_shape("Wh", Wh, (None, None), "(H, 4H)" if G == 4 else "(H, H)")
    H = Wh.shape[0]
    if H < 1:
        raise ValueError("Wh has no rows; expected (H, G*H) with H >= 1")
    check_shape("Wh", Wh, (H, G * H), f"(H, {G}H) with H = {H}")
    check_shape("Wx", Wx, (None, G * H), f"(D, {G}H) with H = {H}")
    check_shape("b", b, (G * H,), f"({G}H,) with H = {H}")
    D = Wx.shape[0]
    if D < 1:
        raise ValueError("Wx has no rows; expected (D, G*H) with D >= 1")
    W_ih, W_hh, b_ih = (from_cs231n_layout(a, mode, xp=xp) for a in (Wx, Wh, b))
    return _common.spec_class(mode)(D, H, batch_first=True), _engine_params(W_ih, W_hh, b_ih, xp, dtype, dev)


def to_cs231n(spec, params):
    """The CS231n weights ``(Wx, Wh, b)``: the inverse of :func:`from_cs231n`.

    Parameters
    ----------
    spec : RNN (tanh) or LSTM
        One unidirectional layer. The assignment's RNN is tanh only, so a relu
        spec is refused.
    params : dict of str to array

    Returns
    -------
    Wx : array (D, G*H)
    Wh : array (H, G*H)
    b : array (G*H,)
        ``b = bias_ih + bias_hh`` (zeros without bias); LSTM gate blocks in the
        assignment's order i, f, o, g. New arrays in the namespace, dtype and
        device of ``params``.
    """
    _common.single_layer(spec, "the CS231n layout", modes=COURSE_MODES)
    if spec.mode == "rnn" and spec.nonlinearity != "tanh":
        raise ValueError("the CS231n RNN is tanh only; this spec has nonlinearity='relu'")
    xp, dtype = _common.check_spec_params(spec, params)
    dev = device_of(params["weight_ih_l0"])
    b = _summed_bias(spec, params, xp, dtype, dev)
    arrays = (params["weight_ih_l0"], params["weight_hh_l0"], b)
    out = _fresh(xp, {k: to_cs231n_layout(a, spec.mode, xp=xp) for k, a in zip("Wx Wh b".split(), arrays)})
    return out["Wx"], out["Wh"], out["b"]
