"""Keras 3: ``SimpleRNN``, ``LSTM``, ``GRU`` and ``Bidirectional`` layers.

``kernel`` (D, G*H) and ``recurrent_kernel`` (H, G*H) multiply from the
right: ``weight_ih = kernel.T``. Gate order LSTM i, f, c, o (ours), GRU
z, r, h (ours r, z, n). Keras LSTM and SimpleRNN have one bias per gate,
which becomes ``bias_ih`` (``bias_hh`` zero); GRU's (2, 3H) bias holds the
input and the recurrent bias. Keras is imported when a function runs.
"""

from __future__ import annotations

import numpy as np

from .. import init as _init
from ..backends import to_host
from ..engine.cells import CELLS
from .._validation import check_shape
from . import _common

__all__ = ["from_keras", "to_keras"]

#: Keras's gate blocks in our gate order, where they differ (z, r, h -> r, z, n; its own inverse).
_GATE_ORDER = {"gru": (1, 0, 2)}


def _keras():
    return _common.require("keras", "Keras conversion")


def _kinds(keras) -> dict:
    """``mode -> (layer class, cell class)`` of the stock Keras layers."""
    L = keras.layers
    return {"lstm": (L.LSTM, L.LSTMCell), "gru": (L.GRU, L.GRUCell), "rnn": (L.SimpleRNN, L.SimpleRNNCell)}


def _gate_order(mode):
    return _GATE_ORDER.get(mode, tuple(range(CELLS[mode].n_gates)))


def _blocks(a, order, H, axis):
    """Permute the gate blocks of size ``H`` of host array ``a`` along ``axis``."""
    return np.concatenate([np.take(a, np.arange(g * H, (g + 1) * H), axis=axis) for g in order], axis=axis)


def _activation(keras, fn):
    for name in ("tanh", "sigmoid", "relu"):
        if fn is getattr(keras.activations, name):
            return name
    try:
        return f"{keras.activations.serialize(fn)!s}"
    except Exception:  # a custom callable Keras cannot name
        return repr(fn)


def _check_equations(keras, layer, mode, where) -> str:
    """The nonlinearity of a Keras layer whose equations are ours, else ``ValueError``."""
    act = _activation(keras, layer.cell.activation)
    if mode == "rnn":
        if act not in ("tanh", "relu"):
            raise ValueError(f"{where} ({layer.name}) has activation={act!r}; supported: 'tanh', 'relu'")
        return act
    if act != "tanh":
        raise ValueError(f"{where} ({layer.name}) has activation={act!r}; only 'tanh' is supported")
    rec = _activation(keras, layer.cell.recurrent_activation)
    if rec != "sigmoid":
        raise ValueError(f"{where} ({layer.name}) has recurrent_activation={rec!r}; only 'sigmoid' is supported")
    return "tanh"


def _layer_info(keras, layer, where, go_backwards=False):
    """Check one Keras SimpleRNN/LSTM/GRU; return (mode, nonlinearity, units, input_dim, use_bias, reset_after)."""
    kind = next(((m, k) for m, k in _kinds(keras).items() if isinstance(layer, k[0])), None)
    if kind is None:
        raise TypeError(
            f"{where} must be a keras.layers.SimpleRNN, LSTM, GRU or a Bidirectional wrapping one, "
            f"got {type(layer).__name__} (a generic keras.layers.RNN(cell) is not supported)"
        )
    mode, (layer_cls, cell_cls) = kind
    if _common.overrides(layer, layer_cls, "call") or _common.overrides(layer.cell, cell_cls, "call"):
        raise ValueError(f"{where} ({type(layer).__name__}) overrides call(); only stock Keras layers convert")
    if not layer.built or getattr(layer.cell, "kernel", None) is None:
        raise ValueError(
            f"{where} ({layer.name}) is not built and has no weights yet: call it on an input "
            "or layer.build((None, None, input_dim)) first"
        )
    if bool(layer.go_backwards) != go_backwards:
        if go_backwards:
            raise ValueError(f"{where} ({layer.name}) should have go_backwards=True as the backward layer")
        raise ValueError(
            f"{where} ({layer.name}) has go_backwards=True: it reads the sequence backwards and "
            "returns the outputs reversed, which a unidirectional spec does not compute "
            "(wrap it in Bidirectional, or flip x yourself and use go_backwards=False)"
        )
    nonlinearity = _check_equations(keras, layer, mode, where)
    reset_after = bool(layer.cell.reset_after) if mode == "gru" else True
    return (mode, nonlinearity, int(layer.cell.units), int(layer.cell.kernel.shape[0]), bool(layer.cell.use_bias),
            reset_after)


def _host(keras, variable, name):
    value = getattr(variable, "value", variable)  # the backend tensor behind a keras.Variable
    return to_host(np.asarray(keras.ops.convert_to_numpy(value)), name)


def _read(keras, layer, mode, H, D, use_bias, reset_after, k, d, where):
    """Host torch-layout weights of one Keras layer (direction ``d`` of layer ``k``)."""
    order = _gate_order(mode)
    G = len(order)
    kernel = _host(keras, layer.cell.kernel, f"{where}.kernel")
    rec = _host(keras, layer.cell.recurrent_kernel, f"{where}.recurrent_kernel")
    check_shape(f"{where}.kernel", kernel, (D, G * H))
    check_shape(f"{where}.recurrent_kernel", rec, (H, G * H))
    w_ih, w_hh, b_ih, b_hh = _init.param_names(k, d)
    out = {
        w_ih: np.ascontiguousarray(_blocks(kernel, order, H, axis=1).T),
        w_hh: np.ascontiguousarray(_blocks(rec, order, H, axis=1).T),
    }
    if use_bias:
        bias = _host(keras, layer.cell.bias, f"{where}.bias")
        if mode == "gru" and reset_after:
            check_shape(f"{where}.bias", bias, (2, G * H), "(2, 3H): input and recurrent biases")
            out[b_ih] = _blocks(bias[0], order, H, axis=0)
            out[b_hh] = _blocks(bias[1], order, H, axis=0)
        else:
            check_shape(f"{where}.bias", bias, (G * H,))
            out[b_ih] = _blocks(bias, order, H, axis=0)
            out[b_hh] = np.zeros_like(bias)
    return out


def _directions(keras, item, where):
    """``[(keras layer, is backward, where)]`` of one list item: itself, or a Bidirectional's two layers."""
    if not isinstance(item, keras.layers.Bidirectional):
        return [(item, False, where)]
    if item.merge_mode != "concat":
        raise ValueError(
            f"{where} is a Bidirectional with merge_mode={item.merge_mode!r}; only 'concat' "
            "matches our output layout (forward then reverse along the last axis)"
        )
    return [
        (item.forward_layer, False, f"{where}.forward_layer"),
        (item.backward_layer, True, f"{where}.backward_layer"),
    ]


def _stack(keras, layers, listed):
    """Check that ``layers`` chain into one stacked spec; return (config, input_dim, host weights)."""
    host, config, D0, D_next = {}, None, None, None
    for k, item in enumerate(layers):
        where = f"layer[{k}]" if listed else "layer"
        parts = _directions(keras, item, where)
        infos = [_layer_info(keras, p, w, go_backwards=b) for p, b, w in parts]
        if len(infos) == 2 and infos[0] != infos[1]:
            raise ValueError(
                f"{where}: forward and backward layers differ (mode, nonlinearity, units, input_dim, "
                f"use_bias, reset_after) {infos[0]} vs {infos[1]}"
            )
        mode, nonlinearity, H, D, use_bias, reset_after = infos[0]
        this = (mode, nonlinearity, H, use_bias, len(parts), reset_after)
        if config is None:
            config, D0 = this, D
        elif this != config:
            raise ValueError(
                f"{where} differs from layer[0] (mode, nonlinearity, units, use_bias, directions, reset_after): "
                f"{this} vs {config}; a stacked spec needs identical layers"
            )
        elif D != D_next:
            raise ValueError(f"{where} has input_dim {D}; the previous layer outputs {D_next} features")
        if k < len(layers) - 1 and not item.return_sequences:
            raise ValueError(f"{where} has return_sequences=False, so the next layer would see only its last output")
        D_next = len(parts) * H
        for d, (p, _, w) in enumerate(parts):
            host.update(_read(keras, p, mode, H, D, use_bias, reset_after, k, d, w))
    return config, D0, host


def from_keras(layer, *, like=None, xp=None, dtype=None, device=None):
    r"""Spec and parameters of Keras 3 ``SimpleRNN``, ``LSTM``, ``GRU`` or ``Bidirectional`` layers.

    Parameters
    ----------
    layer : keras layer, or a list of them
        A built ``keras.layers.SimpleRNN``, ``LSTM`` or ``GRU``, or a
        ``keras.layers.Bidirectional`` wrapping one (``merge_mode="concat"``).
        A list or tuple of such layers, each feeding the next, becomes one
        stacked spec: all of one kind and size, every one but the last with
        ``return_sequences=True``.
    like, xp, dtype, device
        Target arrays, as in :func:`~portable_rnn.interop.from_torch`;
        default NumPy arrays of the layer's variable dtype.

    Returns
    -------
    spec : RNN, LSTM or GRU
        ``batch_first=True`` (Keras is batch-major), so ``spec.forward(params, x)``
        takes the ``x`` (N, T, D) the layer takes.
    params : dict of str to array
        ``weight_ih = kernel.T`` and ``weight_hh = recurrent_kernel.T`` with the
        gate blocks reordered (GRU z, r, h -> r, z, n; LSTM i, f, c, o is
        already i, f, g, o). Keras LSTM, SimpleRNN and ``GRU(reset_after=False)``
        have one bias, which becomes ``bias_ih`` (``bias_hh`` zero); a
        ``reset_after=True`` GRU's (2, 3H) bias is the input and recurrent bias.
        ``use_bias=False`` gives ``bias=False``. A ``GRU(reset_after=False)``
        (the reset gate before the recurrent product) becomes
        ``GRU(..., reset_after=False)``.

    Raises
    ------
    TypeError
        Another layer type (including a generic ``keras.layers.RNN(cell)``).
    ValueError
        A layer that computes something else: ``activation`` other than tanh
        (SimpleRNN: tanh or relu), ``recurrent_activation`` other than
        sigmoid, ``go_backwards=True`` outside a Bidirectional, a merge mode
        other than ``"concat"``, a subclass overriding ``call``, an unbuilt
        layer, or a list whose layers do not chain.

    Notes
    -----
    ``return_sequences=True`` output is ``out``; with ``return_sequences=False``
    the output is ``state[-1]`` (``h_n[-1]``) for a unidirectional layer and
    ``concat(h_n[-2], h_n[-1])`` for a Bidirectional one. Keras returns states
    as ``[h]`` or ``[h, c]`` of shape (N, H) (forward then backward for
    Bidirectional); ours stack them as (L*dirs, N, H). ``dropout`` and
    ``recurrent_dropout`` act only in training calls (our layers have no
    dropout), ``stateful`` only keeps the state between calls (pass it as
    ``state=``), and ``unit_forget_bias`` only changes the initial values, so
    all three are accepted. The weights keep their values; the compute dtype
    is whatever the target arrays are.
    """
    keras = _keras()
    listed = isinstance(layer, (list, tuple))
    layers = list(layer) if listed else [layer]
    if not layers:
        raise ValueError("from_keras got an empty list of layers")
    (mode, nonlinearity, H, use_bias, dirs, reset_after), D0, host = _stack(keras, layers, listed)
    kw: dict = dict(bidirectional=dirs == 2, batch_first=True, bias=use_bias)
    if mode == "rnn":
        kw["nonlinearity"] = nonlinearity
    if mode == "gru":
        kw["reset_after"] = reset_after
    spec = _common.spec_class(mode)(D0, H, len(layers), **kw)
    host = {key: host[key] for key in spec.param_shapes()}
    source_dtype = _common.host_dtype(host, "keras weights")
    return spec, _common.to_target(host, like, xp, dtype, device, source_dtype=source_dtype)


def _write(keras, layer, mode, host, H, k, d, use_bias, reset_after, where):
    """Assign the host weights of direction ``d`` of layer ``k`` to a built Keras layer, exactly."""
    w_ih, w_hh, b_ih, b_hh = _init.param_names(k, d)
    order = _gate_order(mode)
    values = {
        "kernel": _blocks(host[w_ih].T, order, H, axis=1),
        "recurrent_kernel": _blocks(host[w_hh].T, order, H, axis=1),
    }
    if use_bias:
        if mode == "gru" and reset_after:
            values["bias"] = np.stack([_blocks(host[b_ih], order, H, 0), _blocks(host[b_hh], order, H, 0)])
        else:  # one bias: b_hh is outside every gate's nonlinearity-free part, so it folds into b_ih
            values["bias"] = _blocks(host[b_ih] + host[b_hh], order, H, 0)
    for attr, value in values.items():
        var = getattr(layer.cell, attr)
        var.assign(np.ascontiguousarray(value))
        back = _host(keras, var, f"{where}.{attr}")
        if back.dtype != value.dtype or not np.array_equal(back, value):
            raise TypeError(
                f"Keras stored {where}.{attr} as {back.dtype}, not exactly the {value.dtype} values given "
                "(with the JAX backend and float64, build the layers inside portable_rnn.backends.jax_float64())"
            )


def to_keras(spec, params, *, return_sequences=True, return_state=False):
    """Keras 3 layer(s) holding ``params``: the inverse of :func:`from_keras`.

    Parameters
    ----------
    spec : RNN, LSTM or GRU
        ``batch_first`` is ignored: Keras layers always take (N, T, D).
    params : dict of str to array
        Any backend; float32 or float64 (the layers get that ``dtype``).
    return_sequences, return_state : bool
        Passed to the (last) layer. Defaults give the full output sequence,
        which is our ``out``.

    Returns
    -------
    keras layer or list of keras layers
        One built ``SimpleRNN``/``LSTM``/``GRU`` (with the spec's ``reset_after``), wrapped
        in ``Bidirectional(merge_mode="concat")`` when ``spec.bidirectional``;
        for ``num_layers > 1`` a list of them, to apply in order (all but the
        last with ``return_sequences=True``). A relu RNN gets
        ``activation="relu"``. Keras has one bias per gate for SimpleRNN, LSTM
        and ``GRU(reset_after=False)``, which gets ``bias_ih + bias_hh``; ``bias=False`` gives
        ``use_bias=False``.
    """
    _common.no_learned_state(spec, "Keras")  # before importing keras: a refusal needs no Keras
    keras = _keras()
    host, dtype_name = _common.host_params(spec, params)
    L = keras.layers
    cls = _kinds(keras)[spec.mode][0]
    if getattr(spec, "proj_size", 0) or spec.dropout:
        raise ValueError(f"Keras layers have no LSTM projection or between-layer dropout; got {spec!r}")
    H, dirs = spec.hidden_size, spec.num_directions
    out = []
    for k in range(spec.num_layers):
        last = k == spec.num_layers - 1
        kw = dict(
            units=H, use_bias=spec.bias, dtype=dtype_name,
            return_sequences=True if not last else bool(return_sequences),
            return_state=bool(return_state) if last else False,
        )
        if spec.mode == "rnn":
            kw["activation"] = spec.nonlinearity
        if spec.mode == "gru":
            kw["reset_after"] = spec.reset_after
        layer = cls(**kw)
        if spec.bidirectional:
            layer = L.Bidirectional(layer, merge_mode="concat", dtype=dtype_name)
        layer.build((None, None, spec.input_size if k == 0 else dirs * H))
        parts = [layer.forward_layer, layer.backward_layer] if spec.bidirectional else [layer]
        for d, part in enumerate(parts):
            _write(keras, part, spec.mode, host, H, k, d, spec.bias, getattr(spec, "reset_after", True),
                   f"layer {k} direction {d}")
        out.append(layer)
    return out[0] if spec.num_layers == 1 else out
