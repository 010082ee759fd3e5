r"""Import and export of recurrent-layer weights: PyTorch, Keras 3, Flax and the course layouts.

Every importer returns ``(spec, params)``: a :mod:`portable_rnn.layers` spec
(:class:`~portable_rnn.layers.RNN`, :class:`~portable_rnn.layers.LSTM` or
:class:`~portable_rnn.layers.GRU`) and a dict with PyTorch's ``state_dict``
names, shapes and gate orders, such that ``spec.forward(params, x)`` computes
what the source computes. Every exporter takes ``(spec, params)`` back.

Nothing is guessed: an importer checks the type, configuration, parameter
names and shapes of what it gets and raises ``TypeError``/``ValueError``
naming the part that does not fit, in particular for configurations whose
equations differ from ours (Keras ``GRU(reset_after=False)``, activations
other than tanh/sigmoid, ``proj_size``, ...).

Layouts, with ``G`` gates of size ``H`` and input size ``D``:

``torch.nn.RNN/LSTM/GRU`` (:func:`from_torch`, :func:`to_torch`)
    The ``state_dict`` is ours: same names, shapes and gate orders.
Keras 3 ``SimpleRNN/LSTM/GRU``, ``Bidirectional`` (:func:`from_keras`, :func:`to_keras`)
    ``kernel`` (D, G*H) and ``recurrent_kernel`` (H, G*H) multiply from the
    right: ``weight_ih = kernel.T``. Gate order LSTM i, f, c, o (= ours),
    GRU z, r, h (ours r, z, n).
Flax linen cells (:func:`from_flax`, :func:`to_flax`)
    One ``Dense`` per gate, ``kernel`` (in, H); gate order LSTM i, f, g, o,
    GRU r, z, n.
deeplearning.ai "RNN step by step" (:func:`from_stepbystep`, :func:`to_stepbystep`)
    ``W*`` (n_a, n_a + n_x) acting on :math:`[a; x]`, ``b*`` (n_a, 1); LSTM
    keys ``f, i, c, o``.
CS231n (:func:`from_cs231n`, :func:`to_cs231n`)
    ``Wx`` (D, G*H), ``Wh`` (H, G*H), ``b`` (G*H,) multiplying from the
    right; LSTM gate order i, f, o, g.

Biases. Where a source has one bias per gate (Keras LSTM and SimpleRNN,
Flax ``SimpleCell``, both course layouts) it becomes ``bias_ih`` and
``bias_hh`` is zero; Flax's LSTM cells keep their bias on the hidden
``Dense``, so it becomes ``bias_hh`` and ``bias_ih`` is zero. Exporting to a
one-bias layout writes ``bias_ih + bias_hh``. Round trips
``to_X(*from_X(obj))`` and ``from_X(*to_X(spec, params))`` of parameters that
came from ``X`` are therefore exact, bit for bit (a bias of ``-0.0`` comes
back as ``+0.0``, the only value that changes).

Arrays. :func:`from_torch`, :func:`from_keras` and :func:`from_flax` copy the
weights to the host and build the target arrays with explicit ``dtype`` and
``device``: by default NumPy arrays of the source's dtype; ``like=x`` takes
namespace, dtype and device from ``x``; ``xp=``, ``dtype=``, ``device=``
choose them explicitly, as in :meth:`portable_rnn.layers.LSTM.init`. The
course-layout converters stay in the namespace, dtype and device of their
inputs. No function writes into its inputs, and every returned array is new:
none shares memory with the source's parameters.

This module and :mod:`portable_rnn.io` are host-side tools: they use NumPy
for the copies between libraries.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import array_api_compat.numpy as _np_xp
from array_api_compat import device as device_of
from array_api_compat import (
    is_array_api_strict_namespace,
    is_cupy_array,
    is_jax_array,
    is_numpy_array,
    is_torch_array,
)

from . import init as _init
from ._validation import check_floating, check_keys, check_same_device, check_shape, namespace_of
from .layers import GRU, LSTM, RNN

__all__ = [
    "from_torch",
    "to_torch",
    "from_keras",
    "to_keras",
    "from_flax",
    "to_flax",
    "flax_carry_to_state",
    "state_to_flax_carry",
    "from_stepbystep",
    "to_stepbystep",
    "from_cs231n",
    "to_cs231n",
]

_SPECS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
_HOST_DTYPES = {16: np.float16, 32: np.float32, 64: np.float64}


# --------------------------------------------------------------------------- shared helpers


def _check_spec(spec, name="spec"):
    if not isinstance(spec, (RNN, LSTM, GRU)):
        raise TypeError(
            f"{name} must be a portable_rnn.layers RNN, LSTM or GRU spec, got {type(spec).__name__}"
        )
    return spec


def _check_names(what, got, expected, hint="", error=ValueError):
    """Raise ``error`` naming the missing and unexpected names of ``got`` against ``expected``."""
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    if missing or extra:
        raise error(f"{what}: missing {missing}, unexpected {extra}{hint}")


def _require(module_name, what):
    """Import an optional library or raise ImportError saying what needs it."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"{what} needs {module_name.split('.')[0]}, which could not be imported "
            f"({type(error).__name__}: {error})"
        ) from None


def _to_host(a, name):
    """A fresh, writable, C-contiguous NumPy copy of the array ``a`` (any backend, any device)."""
    try:
        if is_numpy_array(a):
            return np.array(a, copy=True, order="C")
        if is_torch_array(a):
            return np.array(a.detach().to("cpu").numpy(), copy=True, order="C")
        if is_cupy_array(a):
            return np.array(a.get(), copy=True, order="C")
        if is_jax_array(a):
            return np.array(a, copy=True, order="C")
        xp = namespace_of(**{name: a})
        if is_array_api_strict_namespace(xp):
            a = xp.asarray(a, device=xp.Device("CPU_DEVICE"))
        return np.array(np.from_dlpack(a), copy=True, order="C")
    except TypeError:
        raise
    except Exception as error:  # tracers, meta tensors, devices without a host path
        raise TypeError(
            f"{name} cannot be copied to the host ({type(error).__name__}: {error}); "
            "export concrete arrays, outside jax.jit"
        ) from None


def _float_bits(xp, dtype, name):
    try:
        bits = xp.finfo(dtype).bits
    except Exception:
        bits = None
    if bits not in _HOST_DTYPES:
        raise TypeError(f"{name} has dtype {dtype}; expected float32 or float64")
    return bits


def _one_dtype(host, what):
    """The one dtype name ("float32"/"float64") shared by the host arrays of ``host``."""
    dtype = check_floating(_np_xp, **{f"{what}[{k!r}]": a for k, a in host.items()})
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{what} has dtype {dtype}; expected float32 or float64")
    return "float64" if dtype == np.float64 else "float32"


def _target(like, xp, dtype, device, source_dtype):
    """Namespace, dtype and device of converted arrays (see the module docstring)."""
    return _init.resolve_target(like, xp, dtype, device, default_dtype=source_dtype)


def _convert(host, like=None, xp=None, dtype=None, device=None, *, source_dtype):
    """Host arrays -> arrays of the target namespace, dtype and device (same keys and order).

    The cast, if any, happens on the host with NumPy's round-to-nearest, so
    every backend receives the same numbers.
    """
    xp, dtype, device = _target(like, xp, dtype, device, source_dtype)
    np_dtype = _HOST_DTYPES[_float_bits(xp, dtype, "dtype")]
    out = {}
    for key, a in host.items():
        arr = xp.asarray(a.astype(np_dtype, copy=False), dtype=dtype, device=device)
        if arr.dtype != dtype:  # e.g. JAX without jax_enable_x64 silently gives float32
            raise TypeError(
                f"the target library made {arr.dtype} arrays when {dtype} was asked for "
                "(for float64 with JAX, enable jax_enable_x64)"
            )
        out[key] = arr
    return out


def _check_params(spec, params, name="params"):
    """Keys, shapes, namespace, dtype and device of ``params`` for ``spec``; returns (xp, dtype)."""
    _check_spec(spec)
    shapes = spec.param_shapes()
    check_keys(name, params, list(shapes))
    _check_names(f"{name} does not fit {spec!r}", params, shapes, f"; expected keys {list(shapes)}")
    for key, shape in shapes.items():
        check_shape(f"{name}[{key!r}]", params[key], shape)
    named = {f"{name}[{k!r}]": params[k] for k in shapes}
    xp = namespace_of(**named)
    dtype = check_floating(xp, **named)
    check_same_device(**named)
    return xp, dtype


def _host_params(spec, params, name="params"):
    """Checked host copies of ``params`` (state_dict order) and their dtype name."""
    xp, dtype = _check_params(spec, params, name)
    bits = _float_bits(xp, dtype, name)
    if bits == 16:
        raise TypeError(f"{name} has dtype {dtype}; expected float32 or float64")
    host = {k: _to_host(params[k], f"{name}[{k!r}]") for k in spec.param_shapes()}
    return host, ("float64" if bits == 64 else "float32")


def _names(k, d):
    return _init.param_names(k, d)


def _blocks(a, order, H, axis):
    """Permute the gate blocks of size ``H`` of host array ``a`` along ``axis``."""
    return np.concatenate([np.take(a, np.arange(g * H, (g + 1) * H), axis=axis) for g in order], axis=axis)


def _single_layer(spec, target, modes=("rnn", "lstm", "gru")):
    _check_spec(spec)
    if spec.mode not in modes:
        raise ValueError(f"{target} has no {type(spec).__name__}; supported: {[m.upper() for m in modes]}")
    if spec.num_layers != 1 or spec.bidirectional:
        raise ValueError(
            f"{target} holds one unidirectional layer; got num_layers={spec.num_layers}, "
            f"bidirectional={spec.bidirectional}"
        )


def _overrides(obj, base, method):
    """Whether ``type(obj)`` replaces ``base.method`` (then we cannot know what it computes)."""
    return getattr(type(obj), method) is not getattr(base, method)


# --------------------------------------------------------------------------- PyTorch


def from_torch(module, *, like=None, xp=None, dtype=None, device=None):
    r"""Spec and parameters of a ``torch.nn.RNN``, ``LSTM`` or ``GRU``.

    Parameters
    ----------
    module : torch.nn.RNN, torch.nn.LSTM or torch.nn.GRU
        Any ``num_layers``, ``bidirectional``, ``batch_first``, ``bias`` and
        RNN ``nonlinearity``, on any device, float32 or float64.
    like : array, optional
        Put the parameters in this array's namespace, dtype and device.
    xp : module, optional
        Target library (``numpy``, ``jax.numpy``, ``torch``, ...); default NumPy.
    dtype : dtype or {"float32", "float64"}, optional
        Default: the module's dtype (or the dtype of ``like``).
    device : device, optional
        Default: the library's default device (or the device of ``like``).

    Returns
    -------
    spec : RNN, LSTM or GRU
        With the module's sizes and flags.
    params : dict of str to array
        The module's ``state_dict`` (same names, shapes and order), copied.

    Raises
    ------
    TypeError
        Not one of the three modules, or a dtype other than float32/float64.
    ValueError
        What our layers do not compute: ``proj_size != 0``, ``dropout > 0``
        between layers of a module in training mode, a subclass overriding
        ``forward``, forward hooks, or a ``state_dict`` with other names
        (e.g. weight-norm parametrizations).

    Notes
    -----
    The state maps one to one: ``h_0``/``h_n`` (and ``c``) are
    ``(num_layers * dirs, N, H)`` in both, so ``module(x, (h0, c0))`` is
    ``spec.forward(params, x, (h0, c0))``. Packed sequences correspond to
    ``lengths=``. A module in eval mode, or with one layer, ignores
    ``dropout``, so it is accepted.
    """
    torch = _require("torch", "from_torch")
    nn = torch.nn
    bases = ((nn.LSTM, "lstm"), (nn.GRU, "gru"), (nn.RNN, "rnn"))
    base = next(((b, m) for b, m in bases if isinstance(module, b)), None)
    if base is None:
        raise TypeError(f"module must be a torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
    base_cls, mode = base
    name = type(module).__name__
    if _overrides(module, base_cls, "forward"):
        raise ValueError(
            f"{name} overrides forward(); only the stock torch.nn.{base_cls.__name__} computation "
            "can be converted"
        )
    if module._forward_hooks or module._forward_pre_hooks:
        raise ValueError(f"{name} has forward hooks, which may change what it computes; remove them first")
    if getattr(module, "proj_size", 0):
        raise ValueError(
            f"{name} has proj_size={module.proj_size}: LSTM projections are not supported "
            "(portable_rnn.layers.LSTM has no weight_hr)"
        )
    if module.training and module.dropout > 0 and module.num_layers > 1:
        raise ValueError(
            f"{name} has dropout={module.dropout} between layers and is in training mode; "
            "portable_rnn layers have no dropout. Call module.eval() to convert its inference computation"
        )
    kw = dict(bidirectional=bool(module.bidirectional), batch_first=bool(module.batch_first), bias=bool(module.bias))
    if mode == "rnn":
        if module.mode not in ("RNN_TANH", "RNN_RELU"):
            raise ValueError(f"{name} has unknown mode {module.mode!r}")
        kw["nonlinearity"] = "tanh" if module.mode == "RNN_TANH" else "relu"
    spec = _SPECS[mode](int(module.input_size), int(module.hidden_size), int(module.num_layers), **kw)

    state = module.state_dict()
    shapes = spec.param_shapes()
    _check_names(
        f"{name}.state_dict() does not have the names of a plain {base_cls.__name__}", state, shapes,
        " (parametrizations such as weight norm are not supported)",
    )
    host = {}
    for key, shape in shapes.items():
        t = state[key]
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"{name}.{key} has dtype {t.dtype}; expected float32 or float64 "
                "(convert the module with .float() or .double() first)"
            )
        if t.is_meta:
            raise ValueError(f"{name}.{key} is on the meta device and has no values")
        check_shape(f"{name}.{key}", t, shape)
        host[key] = _to_host(t, f"{name}.{key}")
    source_dtype = _one_dtype(host, f"{name}.state_dict()")
    return spec, _convert(host, like, xp, dtype, device, source_dtype=source_dtype)


def to_torch(spec, params, *, device=None):
    """A ``torch.nn.RNN``, ``LSTM`` or ``GRU`` holding exactly ``params``.

    Parameters
    ----------
    spec : RNN, LSTM or GRU
    params : dict of str to array
        Any backend; float32 or float64 (the module gets that dtype).
    device : torch.device or str, optional
        Default: the device of ``params`` when they are torch tensors, else CPU.

    Returns
    -------
    torch.nn.Module
        ``torch.nn.RNN/LSTM/GRU`` with the spec's sizes and flags, ``dropout=0``,
        in training mode (as torch constructs it; without dropout the mode does
        not change what it computes). Its ``state_dict()`` equals ``params``
        bit for bit.
    """
    torch = _require("torch", "to_torch")
    host, dtype_name = _host_params(spec, params)
    if device is None:
        first = next(iter(params.values()))
        device = first.device if is_torch_array(first) else "cpu"
    kw = dict(
        num_layers=spec.num_layers, bias=spec.bias, batch_first=spec.batch_first,
        bidirectional=spec.bidirectional, dtype=getattr(torch, dtype_name), device=device,
    )
    if spec.mode == "rnn":
        kw["nonlinearity"] = spec.nonlinearity
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[spec.mode]
    module = cls(spec.input_size, spec.hidden_size, **kw)
    with torch.no_grad():
        module.load_state_dict({k: torch.from_numpy(a) for k, a in host.items()}, strict=True)
    return module


# --------------------------------------------------------------------------- Keras 3

_KERAS_GRU_TO_TORCH = (1, 0, 2)  # Keras z, r, h -> torch r, z, n (its own inverse)


def _keras():
    return _require("keras", "Keras conversion")


def _keras_activation(keras, fn):
    for name in ("tanh", "sigmoid", "relu"):
        if fn is getattr(keras.activations, name):
            return name
    try:
        return f"{keras.activations.serialize(fn)!s}"
    except Exception:
        return repr(fn)


def _keras_layer_info(layer, where, go_backwards=False):
    """Check one Keras SimpleRNN/LSTM/GRU; return (mode, nonlinearity, units, input_dim, use_bias)."""
    keras = _keras()
    L = keras.layers
    kinds = ((L.LSTM, L.LSTMCell, "lstm"), (L.GRU, L.GRUCell, "gru"), (L.SimpleRNN, L.SimpleRNNCell, "rnn"))
    kind = next((k for k in kinds if isinstance(layer, k[0])), None)
    if kind is None:
        raise TypeError(
            f"{where} must be a keras.layers.SimpleRNN, LSTM, GRU or a Bidirectional wrapping one, "
            f"got {type(layer).__name__} (a generic keras.layers.RNN(cell) is not supported)"
        )
    layer_cls, cell_cls, mode = kind
    if _overrides(layer, layer_cls, "call") or _overrides(layer.cell, cell_cls, "call"):
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
    act = _keras_activation(keras, layer.cell.activation)
    nonlinearity = "tanh"
    if mode == "rnn":
        if act not in ("tanh", "relu"):
            raise ValueError(f"{where} ({layer.name}) has activation={act!r}; supported: 'tanh', 'relu'")
        nonlinearity = act
    else:
        if act != "tanh":
            raise ValueError(f"{where} ({layer.name}) has activation={act!r}; only 'tanh' is supported")
        rec = _keras_activation(keras, layer.cell.recurrent_activation)
        if rec != "sigmoid":
            raise ValueError(
                f"{where} ({layer.name}) has recurrent_activation={rec!r}; only 'sigmoid' is supported"
            )
    if mode == "gru" and not layer.cell.reset_after:
        raise ValueError(
            f"{where} ({layer.name}) has reset_after=False: that GRU applies the reset gate before "
            "the recurrent matmul, a different equation from torch's (and ours); only "
            "reset_after=True (the Keras default) converts exactly"
        )
    units = int(layer.cell.units)
    input_dim = int(layer.cell.kernel.shape[0])
    return mode, nonlinearity, units, input_dim, bool(layer.cell.use_bias)


def _keras_numpy(keras, variable, name):
    value = getattr(variable, "value", variable)  # the backend tensor behind a keras.Variable
    return _to_host(np.asarray(keras.ops.convert_to_numpy(value)), name)


def _keras_read(layer, mode, H, D, use_bias, k, d, where):
    """Host torch-layout weights of one Keras layer (direction ``d`` of layer ``k``)."""
    keras = _keras()
    G = {"rnn": 1, "lstm": 4, "gru": 3}[mode]
    cell = layer.cell
    kernel = _keras_numpy(keras, cell.kernel, f"{where}.kernel")
    rec = _keras_numpy(keras, cell.recurrent_kernel, f"{where}.recurrent_kernel")
    check_shape(f"{where}.kernel", kernel, (D, G * H))
    check_shape(f"{where}.recurrent_kernel", rec, (H, G * H))
    w_ih, w_hh, b_ih, b_hh = _names(k, d)
    order = _KERAS_GRU_TO_TORCH if mode == "gru" else tuple(range(G))
    out = {
        w_ih: np.ascontiguousarray(_blocks(kernel, order, H, axis=1).T),
        w_hh: np.ascontiguousarray(_blocks(rec, order, H, axis=1).T),
    }
    if use_bias:
        bias = _keras_numpy(keras, cell.bias, f"{where}.bias")
        if mode == "gru":
            check_shape(f"{where}.bias", bias, (2, G * H), "(2, 3H): input and recurrent biases")
            out[b_ih] = _blocks(bias[0], order, H, axis=0)
            out[b_hh] = _blocks(bias[1], order, H, axis=0)
        else:
            check_shape(f"{where}.bias", bias, (G * H,))
            out[b_ih] = bias
            out[b_hh] = np.zeros_like(bias)
    return out


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
        Target arrays, as in :func:`from_torch`; default NumPy arrays of the
        layer's variable dtype.

    Returns
    -------
    spec : RNN, LSTM or GRU
        ``batch_first=True`` (Keras is batch-major), so ``spec.forward(params, x)``
        takes the ``x`` (N, T, D) the layer takes.
    params : dict of str to array
        ``weight_ih = kernel.T`` and ``weight_hh = recurrent_kernel.T`` with the
        gate blocks reordered (GRU z, r, h -> r, z, n; LSTM i, f, c, o is
        already i, f, g, o). Keras LSTM and SimpleRNN have one bias, which
        becomes ``bias_ih`` (``bias_hh`` zero); GRU's (2, 3H) bias is the
        input and recurrent bias. ``use_bias=False`` gives ``bias=False``.

    Raises
    ------
    TypeError
        Another layer type (including a generic ``keras.layers.RNN(cell)``).
    ValueError
        A layer that computes something else: GRU ``reset_after=False`` (reset
        gate before the recurrent matmul), ``activation`` other than tanh
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
    layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not layers:
        raise ValueError("from_keras got an empty list of layers")
    host, config = {}, None
    D_next = None
    for k, item in enumerate(layers):
        where = f"layer[{k}]" if isinstance(layer, (list, tuple)) else "layer"
        if isinstance(item, keras.layers.Bidirectional):
            if item.merge_mode != "concat":
                raise ValueError(
                    f"{where} is a Bidirectional with merge_mode={item.merge_mode!r}; only 'concat' "
                    "matches our output layout (forward then reverse along the last axis)"
                )
            parts = [(item.forward_layer, False), (item.backward_layer, True)]
            names = [f"{where}.forward_layer", f"{where}.backward_layer"]
        else:
            parts = [(item, False)]
            names = [where]
        infos = [_keras_layer_info(p, n, go_backwards=b) for (p, b), n in zip(parts, names)]
        if len(infos) == 2 and infos[0] != infos[1]:
            raise ValueError(
                f"{where}: forward and backward layers differ (mode, nonlinearity, units, input_dim, "
                f"use_bias) {infos[0]} vs {infos[1]}"
            )
        mode, nonlinearity, H, D, use_bias = infos[0]
        this = (mode, nonlinearity, H, use_bias, len(parts))
        if config is None:
            config, D0 = this, D
        elif this != config:
            raise ValueError(
                f"{where} differs from layer[0] (mode, nonlinearity, units, use_bias, directions): "
                f"{this} vs {config}; a stacked spec needs identical layers"
            )
        elif D != D_next:
            raise ValueError(f"{where} has input_dim {D}; the previous layer outputs {D_next} features")
        if k < len(layers) - 1 and not item.return_sequences:
            raise ValueError(
                f"{where} has return_sequences=False, so the next layer would see only its last output"
            )
        D_next = len(parts) * H
        for d, ((p, _), n) in enumerate(zip(parts, names)):
            host.update(_keras_read(p, mode, H, D, use_bias, k, d, n))
    mode, nonlinearity, H, use_bias, dirs = config
    kw = dict(bidirectional=dirs == 2, batch_first=True, bias=use_bias)
    if mode == "rnn":
        kw["nonlinearity"] = nonlinearity
    spec = _SPECS[mode](D0, H, len(layers), **kw)
    host = {key: host[key] for key in spec.param_shapes()}
    source_dtype = _one_dtype(host, "keras weights")
    return spec, _convert(host, like, xp, dtype, device, source_dtype=source_dtype)


def _keras_write(keras, layer, mode, host, H, k, d, use_bias, where):
    G = {"rnn": 1, "lstm": 4, "gru": 3}[mode]
    w_ih, w_hh, b_ih, b_hh = _names(k, d)
    order = _KERAS_GRU_TO_TORCH if mode == "gru" else tuple(range(G))
    values = {
        "kernel": _blocks(host[w_ih].T, order, H, axis=1),
        "recurrent_kernel": _blocks(host[w_hh].T, order, H, axis=1),
    }
    if use_bias:
        if mode == "gru":
            values["bias"] = np.stack([_blocks(host[b_ih], order, H, 0), _blocks(host[b_hh], order, H, 0)])
        else:
            values["bias"] = host[b_ih] + host[b_hh]
    for attr, value in values.items():
        var = getattr(layer.cell, attr)
        var.assign(np.ascontiguousarray(value))
        back = _keras_numpy(keras, var, f"{where}.{attr}")
        if back.dtype != value.dtype or not np.array_equal(back, value):
            raise TypeError(
                f"Keras stored {where}.{attr} as {back.dtype}, not exactly the {value.dtype} values given "
                "(with the JAX backend and float64, enable jax_enable_x64 before building layers)"
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
        One built ``SimpleRNN``/``LSTM``/``GRU`` (``reset_after=True``), wrapped
        in ``Bidirectional(merge_mode="concat")`` when ``spec.bidirectional``;
        for ``num_layers > 1`` a list of them, to apply in order (all but the
        last with ``return_sequences=True``). A relu RNN gets
        ``activation="relu"``. Keras has one bias per gate for SimpleRNN and
        LSTM, which gets ``bias_ih + bias_hh``; ``bias=False`` gives
        ``use_bias=False``.
    """
    keras = _keras()
    host, dtype_name = _host_params(spec, params)
    L = keras.layers
    cls = {"rnn": L.SimpleRNN, "lstm": L.LSTM, "gru": L.GRU}[spec.mode]
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
            kw["reset_after"] = True
        layer = cls(**kw)
        if spec.bidirectional:
            layer = L.Bidirectional(layer, merge_mode="concat", dtype=dtype_name)
        D = spec.input_size if k == 0 else dirs * H
        layer.build((None, None, D))
        parts = [layer.forward_layer, layer.backward_layer] if spec.bidirectional else [layer]
        for d, part in enumerate(parts):
            _keras_write(keras, part, spec.mode, host, H, k, d, spec.bias, f"layer {k} direction {d}")
        out.append(layer)
    return out[0] if spec.num_layers == 1 else out


# --------------------------------------------------------------------------- Flax linen

#: Dense names and their leaves, per Flax linen cell (flax/linen/recurrent.py).
_FLAX_DENSES = {
    "lstm": {**{f"i{g}": ("kernel",) for g in "ifgo"}, **{f"h{g}": ("kernel", "bias") for g in "ifgo"}},
    "gru": {
        "ir": ("kernel", "bias"), "iz": ("kernel", "bias"), "in": ("kernel", "bias"),
        "hr": ("kernel",), "hz": ("kernel",), "hn": ("kernel", "bias"),
    },
    "rnn": {"i": ("kernel", "bias"), "h": ("kernel",)},
}


def _flax_cell_info(cell):
    """Check a Flax linen cell (or nn.RNN wrapping one); return (cell, mode, nonlinearity, batch_first)."""
    _require("flax", "Flax conversion")
    import flax.linen as nn

    batch_first = True
    if isinstance(cell, nn.RNN):
        if cell.reverse:
            raise ValueError(
                "cell is a flax nn.RNN with reverse=True: it runs backwards, which a "
                "unidirectional spec does not compute"
            )
        batch_first = not cell.time_major
        cell = cell.cell
    kinds = ((nn.OptimizedLSTMCell, "lstm"), (nn.LSTMCell, "lstm"), (nn.GRUCell, "gru"), (nn.SimpleCell, "rnn"))
    kind = next(((c, m) for c, m in kinds if isinstance(cell, c)), None)
    if kind is None:
        raise TypeError(
            "cell must be a flax.linen LSTMCell, OptimizedLSTMCell, GRUCell or SimpleCell "
            f"(or an nn.RNN wrapping one), got {type(cell).__name__}"
        )
    cls, mode = kind
    name = type(cell).__name__
    if _overrides(cell, cls, "__call__"):
        raise ValueError(f"{name} overrides __call__; only stock Flax cells convert")
    nonlinearity = "tanh"
    if mode == "rnn":
        if cell.residual:
            raise ValueError(f"{name} has residual=True (adds h to the pre-activation); not supported")
        if cell.activation_fn is nn.tanh:
            nonlinearity = "tanh"
        elif cell.activation_fn is nn.relu:
            nonlinearity = "relu"
        else:
            raise ValueError(f"{name} has activation_fn={cell.activation_fn!r}; supported: nn.tanh, nn.relu")
    else:
        if cell.activation_fn is not nn.tanh:
            raise ValueError(f"{name} has activation_fn={cell.activation_fn!r}; only nn.tanh is supported")
        if cell.gate_fn is not nn.sigmoid:
            raise ValueError(f"{name} has gate_fn={cell.gate_fn!r}; only nn.sigmoid is supported")
    return cell, mode, nonlinearity, batch_first


def from_flax(params, cell, *, like=None, xp=None, dtype=None, device=None):
    r"""Spec and parameters of a Flax linen recurrent cell.

    Parameters
    ----------
    params : mapping
        The cell's variables, as returned by ``cell.init(...)`` (``{"params":
        {...}}``) or the inner ``params`` tree; for an ``nn.RNN`` wrapper, its
        variables (the cell's under ``"cell"``). One ``Dense`` per gate:
        ``{"kernel": (in, H)[, "bias": (H,)]}``.
    cell : flax.linen cell or flax.linen.RNN
        ``LSTMCell`` or ``OptimizedLSTMCell`` (denses ``ii, if, ig, io``
        without bias, ``hi, hf, hg, ho`` with bias), ``GRUCell`` (``ir, iz,
        in`` with bias, ``hr, hz`` without, ``hn`` with), ``SimpleCell``
        (``i`` with bias, ``h`` without; tanh or relu, ``residual=False``),
        or an ``nn.RNN`` wrapping one (not ``reverse``).
    like, xp, dtype, device
        Target arrays, as in :func:`from_torch`; default NumPy arrays of the
        parameters' dtype.

    Returns
    -------
    spec : RNN, LSTM or GRU
        One unidirectional layer; ``batch_first=True`` like ``nn.RNN``'s
        default (for an ``nn.RNN`` wrapper: ``not time_major``).
    params : dict of str to array
        ``weight_ih`` rows are the input kernels transposed, gate by gate
        (LSTM i, f, g, o; GRU r, z, n), ``weight_hh`` the hidden ones. LSTM:
        ``bias_hh`` is the hidden biases, ``bias_ih`` zero. GRU: ``bias_ih``
        is ``ir, iz, in``'s bias, ``bias_hh`` is ``(0, 0, hn``'s bias). RNN:
        ``bias_ih`` is ``i``'s bias, ``bias_hh`` zero.

    Notes
    -----
    The carry is a single step's state without a layer axis, and Flax's LSTM
    carry is ``(c, h)`` where ours is ``(h, c)``: ``state = (h[None], c[None])``,
    or for GRU/SimpleCell ``state = h[None]``; :func:`flax_carry_to_state`
    and :func:`state_to_flax_carry` do this. Flax's ``dtype`` attribute (the
    compute dtype) is not a parameter; the computation here runs in the
    dtype of the target arrays.
    """
    wrapper = cell
    cell, mode, nonlinearity, batch_first = _flax_cell_info(cell)
    tree = params
    if isinstance(tree, Mapping) and set(tree) == {"params"}:
        tree = tree["params"]
    if wrapper is not cell:
        if not (isinstance(tree, Mapping) and set(tree) == {"cell"}):
            keys = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
            raise ValueError(f"params of an nn.RNN must hold one entry 'cell'; got {keys}")
        tree = tree["cell"]
    if not isinstance(tree, Mapping):
        raise TypeError(f"params must be a mapping of the cell's Dense parameters, got {type(tree).__name__}")
    layout = _FLAX_DENSES[mode]
    _check_names(f"params do not fit a {type(cell).__name__}", tree, layout, f"; expected denses {list(layout)}")
    H = int(cell.features)
    first_in = next(k for k in layout if k.startswith("i"))
    leaf = tree[first_in]
    if not isinstance(leaf, Mapping) or "kernel" not in leaf or len(getattr(leaf["kernel"], "shape", ())) != 2:
        raise ValueError(f"params[{first_in!r}] must hold a 2-D 'kernel' (input_size, {H})")
    D = int(leaf["kernel"].shape[0])
    host = {}
    for dense, leaves in layout.items():
        entry = tree[dense]
        if not isinstance(entry, Mapping) or set(entry) != set(leaves):
            got = sorted(entry) if isinstance(entry, Mapping) else type(entry).__name__
            raise ValueError(f"params[{dense!r}] must hold exactly {list(leaves)}, got {got}")
        fan_in = D if dense.startswith("i") else H
        for leaf_name in leaves:
            where = f"params[{dense!r}][{leaf_name!r}]"
            a = entry[leaf_name]
            shape = (fan_in, H) if leaf_name == "kernel" else (H,)
            check_shape(where, a, shape, "(in, features)" if leaf_name == "kernel" else "(features,)")
            host[(dense, leaf_name)] = _to_host(a, where)
    source_dtype = _one_dtype(host, "params")
    zeros = np.zeros((H,), dtype=source_dtype)

    def stack(names, leaf_name):
        return np.concatenate([host[(n, leaf_name)].T if leaf_name == "kernel" else host[(n, leaf_name)]
                               for n in names], axis=0)

    w_ih, w_hh, b_ih, b_hh = _names(0, 0)
    if mode == "lstm":
        out = {
            w_ih: stack([f"i{g}" for g in "ifgo"], "kernel"), w_hh: stack([f"h{g}" for g in "ifgo"], "kernel"),
            b_ih: np.zeros((4 * H,), dtype=source_dtype), b_hh: stack([f"h{g}" for g in "ifgo"], "bias"),
        }
    elif mode == "gru":
        out = {
            w_ih: stack(["ir", "iz", "in"], "kernel"), w_hh: stack(["hr", "hz", "hn"], "kernel"),
            b_ih: stack(["ir", "iz", "in"], "bias"),
            b_hh: np.concatenate([zeros, zeros, host[("hn", "bias")]]),
        }
    else:
        out = {w_ih: stack(["i"], "kernel"), w_hh: stack(["h"], "kernel"), b_ih: host[("i", "bias")], b_hh: zeros}
    kw = dict(batch_first=batch_first)
    if mode == "rnn":
        kw["nonlinearity"] = nonlinearity
    spec = _SPECS[mode](D, H, **kw)
    out = {k: np.ascontiguousarray(out[k]) for k in spec.param_shapes()}
    return spec, _convert(out, like, xp, dtype, device, source_dtype=source_dtype)


def to_flax(spec, params, *, optimized=False):
    """A Flax linen cell and its variables holding ``params``: the inverse of :func:`from_flax`.

    Parameters
    ----------
    spec : RNN, LSTM or GRU
        One unidirectional layer.
    params : dict of str to array
        Any backend, float32 or float64 (float64 needs ``jax_enable_x64``).
    optimized : bool, default False
        LSTM only: make an ``OptimizedLSTMCell`` (same parameters) instead of
        an ``LSTMCell``.

    Returns
    -------
    cell : flax.linen.LSTMCell, OptimizedLSTMCell, GRUCell or SimpleCell
        With ``features = hidden_size`` and ``param_dtype`` the params' dtype;
        a relu RNN gets ``activation_fn=nn.relu``.
    variables : dict
        ``{"params": {dense: {"kernel", ["bias"]}}}`` of JAX arrays, for
        ``cell.apply(variables, carry, x_t)`` or ``nn.RNN(cell).apply({"params":
        {"cell": variables["params"]}}, x)``. Where Flax has one bias for two
        of ours it holds the sum (LSTM gates, GRU r and z, SimpleCell);
        ``bias=False`` specs get zero biases (Flax cells always have them).
    """
    _single_layer(spec, "to_flax")
    if optimized and spec.mode != "lstm":
        raise ValueError("optimized=True is for LSTM (OptimizedLSTMCell) only")
    _require("flax", "to_flax")
    import flax.linen as nn
    import jax.numpy as jnp

    host, dtype_name = _host_params(spec, params)
    H = spec.hidden_size
    G = spec.n_gates
    w_ih, w_hh, b_ih, b_hh = _names(0, 0)
    zero = np.zeros((G * H,), dtype=dtype_name)
    bi = host.get(b_ih, zero)
    bh = host.get(b_hh, zero)
    Wi, Wh = host[w_ih], host[w_hh]

    def rows(a, g):
        return a[g * H : (g + 1) * H]

    tree = {}
    if spec.mode == "lstm":
        cell = (nn.OptimizedLSTMCell if optimized else nn.LSTMCell)(features=H, param_dtype=getattr(jnp, dtype_name))
        for g, name in enumerate("ifgo"):
            tree[f"i{name}"] = {"kernel": rows(Wi, g).T}
            tree[f"h{name}"] = {"kernel": rows(Wh, g).T, "bias": rows(bi, g) + rows(bh, g)}
    elif spec.mode == "gru":
        cell = nn.GRUCell(features=H, param_dtype=getattr(jnp, dtype_name))
        for g, name in enumerate("rz"):
            tree[f"i{name}"] = {"kernel": rows(Wi, g).T, "bias": rows(bi, g) + rows(bh, g)}
            tree[f"h{name}"] = {"kernel": rows(Wh, g).T}
        tree["in"] = {"kernel": rows(Wi, 2).T, "bias": rows(bi, 2)}
        tree["hn"] = {"kernel": rows(Wh, 2).T, "bias": rows(bh, 2)}
    else:
        act = nn.tanh if spec.nonlinearity == "tanh" else nn.relu
        cell = nn.SimpleCell(features=H, param_dtype=getattr(jnp, dtype_name), activation_fn=act)
        tree["i"] = {"kernel": Wi.T, "bias": bi + bh}
        tree["h"] = {"kernel": Wh.T}
    out = {}
    for dense, leaves in tree.items():
        out[dense] = {}
        for leaf_name, value in leaves.items():
            arr = jnp.asarray(np.ascontiguousarray(value))
            if arr.dtype != value.dtype:
                raise TypeError(
                    f"JAX made {arr.dtype} arrays from {value.dtype} parameters; enable jax_enable_x64 "
                    "or convert the parameters to float32"
                )
            out[dense][leaf_name] = arr
    return cell, {"params": out}


def _check_flax_spec(spec):
    _single_layer(spec, "a Flax cell carry")


def flax_carry_to_state(carry, spec):
    """Our initial/final ``state`` from a Flax cell carry.

    Parameters
    ----------
    carry : array (N, H), or the pair ``(c, h)`` for LSTM cells
        As made by ``cell.initialize_carry`` or returned by the cell.
    spec : RNN, LSTM or GRU
        One unidirectional layer (as from :func:`from_flax`).

    Returns
    -------
    array (1, N, H), or the pair ``(h, c)`` of them for LSTM
        In the carry's namespace and device.
    """
    _check_flax_spec(spec)
    if spec.mode == "lstm":
        if not (isinstance(carry, (tuple, list)) and len(carry) == 2):
            raise TypeError(f"an LSTM carry is the pair (c, h), got {type(carry).__name__}")
        c, h = carry
        xp = namespace_of(**{"carry[0] (c)": c, "carry[1] (h)": h})
        for name, a in (("carry[0] (c)", c), ("carry[1] (h)", h)):
            check_shape(name, a, (None, spec.hidden_size), "(N, H)")
        return xp.expand_dims(h, axis=0), xp.expand_dims(c, axis=0)
    if isinstance(carry, (tuple, list)):
        raise TypeError(f"a {type(spec).__name__} carry is one array (N, H), got a {type(carry).__name__}")
    xp = namespace_of(carry=carry)
    check_shape("carry", carry, (None, spec.hidden_size), "(N, H)")
    return xp.expand_dims(carry, axis=0)


def state_to_flax_carry(state, spec):
    """A Flax cell carry from our ``state``: the inverse of :func:`flax_carry_to_state`.

    Parameters
    ----------
    state : array (1, N, H), or the pair ``(h, c)`` of them for LSTM
    spec : RNN, LSTM or GRU
        One unidirectional layer.

    Returns
    -------
    array (N, H), or the pair ``(c, h)`` for LSTM
    """
    _check_flax_spec(spec)
    if spec.mode == "lstm":
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise TypeError(f"an LSTM state is the pair (h, c), got {type(state).__name__}")
        h, c = state
        namespace_of(**{"state[0] (h)": h, "state[1] (c)": c})
        for name, a in (("state[0] (h)", h), ("state[1] (c)", c)):
            check_shape(name, a, (1, None, spec.hidden_size), "(1, N, H)")
        return c[0, ...], h[0, ...]
    if isinstance(state, (tuple, list)):
        raise TypeError(f"a {type(spec).__name__} state is one array (1, N, H), got a {type(state).__name__}")
    namespace_of(state=state)
    check_shape("state", state, (1, None, spec.hidden_size), "(1, N, H)")
    return state[0, ...]


# --------------------------------------------------------------------------- course layouts

_SBS_LSTM = ("Wf", "bf", "Wi", "bi", "Wc", "bc", "Wo", "bo")
_SBS_RNN = ("Wax", "Waa", "ba")
_SBS_OUTPUT = {"lstm": ("Wy", "by"), "rnn": ("Wya", "by")}


def _mode(mode, allowed=("rnn", "lstm")):
    if mode not in allowed:
        raise ValueError(f"mode must be one of {list(allowed)}, got {mode!r}")
    return mode


def _copy(xp, a):
    return xp.asarray(a, copy=True)


def _checked_arrays(**named):
    xp = namespace_of(**named)
    dtype = check_floating(xp, **named)
    dev = check_same_device(**named)
    return xp, dtype, dev


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
    mode = _mode(mode)
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    if mode == "lstm" and nonlinearity != "tanh":
        raise ValueError("nonlinearity is for mode='rnn' only")
    keys = _SBS_LSTM if mode == "lstm" else _SBS_RNN
    check_keys("parameters", parameters, keys)
    extra = [k for k in parameters if k not in keys and k not in _SBS_OUTPUT[mode]]
    if extra:
        raise ValueError(
            f"parameters has unexpected key(s) {extra} for mode={mode!r}; expected {list(keys)} "
            f"(and optionally the output layer {list(_SBS_OUTPUT[mode])})"
        )
    named = {f"parameters[{k!r}]": parameters[k] for k in keys}
    xp, dtype, dev = _checked_arrays(**named)
    if mode == "lstm":
        Wf = parameters["Wf"]
        check_shape("parameters['Wf']", Wf, (None, None), "(n_a, n_a + n_x)")
        n_a = Wf.shape[0]
        n_x = Wf.shape[1] - n_a
        if n_x < 1:
            raise ValueError(f"parameters['Wf'] has shape {tuple(Wf.shape)}; expected (n_a, n_a + n_x) with n_x >= 1")
        for g in "fico":
            check_shape(f"parameters['W{g}']", parameters[f"W{g}"], (n_a, n_a + n_x), "(n_a, n_a + n_x)")
            check_shape(f"parameters['b{g}']", parameters[f"b{g}"], (n_a, 1), "(n_a, 1)")
        W = [parameters[f"W{g}"] for g in "ifco"]  # torch order i, f, g, o
        params = {
            "weight_ih_l0": xp.concat([w[:, n_a:] for w in W], axis=0),
            "weight_hh_l0": xp.concat([w[:, :n_a] for w in W], axis=0),
            "bias_ih_l0": xp.reshape(xp.concat([parameters[f"b{g}"] for g in "ifco"], axis=0), (4 * n_a,)),
            "bias_hh_l0": xp.zeros((4 * n_a,), dtype=dtype, device=dev),
        }
        return LSTM(n_x, n_a), params
    Waa, Wax = parameters["Waa"], parameters["Wax"]
    check_shape("parameters['Waa']", Waa, (None, None), "(n_a, n_a)")
    n_a = Waa.shape[0]
    check_shape("parameters['Waa']", Waa, (n_a, n_a), "(n_a, n_a)")
    check_shape("parameters['Wax']", Wax, (n_a, None), "(n_a, n_x)")
    check_shape("parameters['ba']", parameters["ba"], (n_a, 1), "(n_a, 1)")
    n_x = Wax.shape[1]
    if n_x < 1:
        raise ValueError("parameters['Wax'] has no columns; expected (n_a, n_x) with n_x >= 1")
    params = {
        "weight_ih_l0": _copy(xp, Wax),
        "weight_hh_l0": _copy(xp, Waa),
        "bias_ih_l0": _copy(xp, xp.reshape(parameters["ba"], (n_a,))),
        "bias_hh_l0": xp.zeros((n_a,), dtype=dtype, device=dev),
    }
    return RNN(n_x, n_a, nonlinearity=nonlinearity), params


def _biases(spec, params, xp, dtype, dev):
    """``bias_ih + bias_hh`` of layer 0 (zeros without bias)."""
    GH = spec.n_gates * spec.hidden_size
    if not spec.bias:
        return xp.zeros((GH,), dtype=dtype, device=dev)
    return params["bias_ih_l0"] + params["bias_hh_l0"]


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
        b_hh)`` as a column. RNN: ``Wax, Waa, ba`` (+ ``Wya, by``). In the
        namespace, dtype and device of ``params``.

    Notes
    -----
    The dict does not record the RNN's nonlinearity: for a relu spec call the
    exercise functions with ``nonlinearity="relu"``. Our ``batch_first`` is
    irrelevant here (the exercise layout is (n_x, m, T_x)).
    """
    _single_layer(spec, "the step-by-step layout", modes=("rnn", "lstm"))
    xp, dtype = _check_params(spec, params)
    dev = device_of(params["weight_ih_l0"])
    if (Wy is None) != (by is None):
        raise ValueError("give both Wy and by (the output layer), or neither")
    H = spec.hidden_size
    W_ih, W_hh = params["weight_ih_l0"], params["weight_hh_l0"]
    b = _biases(spec, params, xp, dtype, dev)
    out = {}
    if spec.mode == "lstm":
        for g, name in zip(range(4), "ifco"):
            rows = slice(g * H, (g + 1) * H)
            out[f"W{name}"] = xp.concat([W_hh[rows, :], W_ih[rows, :]], axis=1)
            out[f"b{name}"] = xp.reshape(b[rows], (H, 1))
        out = {k: out[k] for k in _SBS_LSTM}  # the exercise's key order
    else:
        out = {"Wax": _copy(xp, W_ih), "Waa": _copy(xp, W_hh), "ba": xp.reshape(b, (H, 1))}
    if Wy is not None:
        wy_name, by_name = _SBS_OUTPUT[spec.mode]
        _checked_arrays(**{"params['weight_ih_l0']": W_ih, wy_name: Wy, by_name: by})
        check_shape(wy_name, Wy, (None, H), f"(n_y, n_a) with n_a = {H}")
        check_shape(by_name, by, (Wy.shape[0], 1), "(n_y, 1)")
        out[wy_name], out[by_name] = _copy(xp, Wy), _copy(xp, by)
    return out


_CS231N_TO_TORCH = (0, 1, 3, 2)  # i, f, o, g <-> i, f, g, o (its own inverse)


def _permute_gate_rows(xp, a, order, H):
    return xp.concat([a[g * H : (g + 1) * H, ...] for g in order], axis=0)


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
    mode = _mode(mode)
    xp, dtype, dev = _checked_arrays(Wx=Wx, Wh=Wh, b=b)
    G = 4 if mode == "lstm" else 1
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
    if mode == "lstm":
        params = {
            "weight_ih_l0": _permute_gate_rows(xp, Wx.mT, _CS231N_TO_TORCH, H),
            "weight_hh_l0": _permute_gate_rows(xp, Wh.mT, _CS231N_TO_TORCH, H),
            "bias_ih_l0": _permute_gate_rows(xp, b, _CS231N_TO_TORCH, H),
            "bias_hh_l0": xp.zeros((4 * H,), dtype=dtype, device=dev),
        }
        return LSTM(D, H, batch_first=True), params
    params = {
        "weight_ih_l0": _copy(xp, Wx.mT),
        "weight_hh_l0": _copy(xp, Wh.mT),
        "bias_ih_l0": _copy(xp, b),
        "bias_hh_l0": xp.zeros((H,), dtype=dtype, device=dev),
    }
    return RNN(D, H, batch_first=True), params


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
        assignment's order i, f, o, g. In the namespace, dtype and device of
        ``params``.
    """
    _single_layer(spec, "the CS231n layout", modes=("rnn", "lstm"))
    if spec.mode == "rnn" and spec.nonlinearity != "tanh":
        raise ValueError("the CS231n RNN is tanh only; this spec has nonlinearity='relu'")
    xp, dtype = _check_params(spec, params)
    dev = device_of(params["weight_ih_l0"])
    H = spec.hidden_size
    W_ih, W_hh = params["weight_ih_l0"], params["weight_hh_l0"]
    b = _biases(spec, params, xp, dtype, dev)
    if spec.mode == "lstm":
        W_ih = _permute_gate_rows(xp, W_ih, _CS231N_TO_TORCH, H)
        W_hh = _permute_gate_rows(xp, W_hh, _CS231N_TO_TORCH, H)
        b = _permute_gate_rows(xp, b, _CS231N_TO_TORCH, H)
    return _copy(xp, W_ih.mT), _copy(xp, W_hh.mT), _copy(xp, b)

