"""Flax linen: ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell``, ``SimpleCell`` (and ``nn.RNN`` over one).

A Flax cell has one ``Dense`` per gate and side: ``i<gate>`` on the input,
``h<gate>`` on the hidden state, each with ``kernel`` (in, H) and, for some,
``bias`` (H,) (flax/linen/recurrent.py). Where Flax has one bias for a gate
it maps to one of our two and the other is zero; exporting writes their sum
there. Flax and JAX are imported when a function runs; this module's name
does not shadow them, the package uses absolute imports.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .. import init as _init
from ..backends import to_host
from .._validation import check_shape, namespace_of
from . import _common

__all__ = ["from_flax", "to_flax", "flax_carry_to_state", "state_to_flax_carry"]

#: Per mode, the gates in our order as Flax names their Denses (``"i" + suffix``,
#: ``"h" + suffix``) and whether the input and the hidden Dense have a bias.
_GATES = {
    "rnn": {"": (True, False)},
    "lstm": {g: (False, True) for g in ("i", "f", "g", "o")},
    "gru": {"r": (True, False), "z": (True, False), "n": (True, True)},
}


def _denses(mode) -> dict:
    """``Dense name -> leaf names`` of a Flax cell of ``mode``, input Denses first."""
    gates = _GATES[mode]
    out = {f"i{g}": ("kernel", "bias") if bi else ("kernel",) for g, (bi, _) in gates.items()}
    out.update({f"h{g}": ("kernel", "bias") if bh else ("kernel",) for g, (_, bh) in gates.items()})
    return out


def _check_cell(cell):
    """Check a Flax linen cell (or nn.RNN wrapping one); return (cell, mode, nonlinearity, batch_first)."""
    _common.require("flax", "Flax conversion")
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
    if _common.overrides(cell, cls, "__call__"):
        raise ValueError(f"{name} overrides __call__; only stock Flax cells convert")
    if mode == "rnn" and cell.residual:
        raise ValueError(f"{name} has residual=True (adds h to the pre-activation); not supported")
    supported = ((nn.tanh, "tanh"), (nn.relu, "relu")) if mode == "rnn" else ((nn.tanh, "tanh"),)
    nonlinearity = next((n for fn, n in supported if cell.activation_fn is fn), None)
    if nonlinearity is None:
        names = ", ".join(f"nn.{n}" for _, n in supported)
        raise ValueError(f"{name} has activation_fn={cell.activation_fn!r}; supported: {names}")
    if mode != "rnn" and cell.gate_fn is not nn.sigmoid:
        raise ValueError(f"{name} has gate_fn={cell.gate_fn!r}; only nn.sigmoid is supported")
    return cell, mode, nonlinearity, batch_first


def _cell_tree(params, wrapped: bool):
    """The mapping of the cell's Denses inside ``params`` (variables, params tree, or an nn.RNN's)."""
    tree = params
    if isinstance(tree, Mapping) and set(tree) == {"params"}:
        tree = tree["params"]
    if wrapped:
        if not (isinstance(tree, Mapping) and set(tree) == {"cell"}):
            keys = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
            raise ValueError(f"params of an nn.RNN must hold one entry 'cell'; got {keys}")
        tree = tree["cell"]
    if not isinstance(tree, Mapping):
        raise TypeError(f"params must be a mapping of the cell's Dense parameters, got {type(tree).__name__}")
    return tree


def _read_denses(tree, mode, H, cell_name):
    """Checked host copies ``{(dense, leaf): array}`` and the input size D."""
    layout = _denses(mode)
    _common.check_names(f"params do not fit a {cell_name}", tree, layout, f"; expected denses {list(layout)}")
    first_in = next(iter(layout))
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
            shape = (fan_in, H) if leaf_name == "kernel" else (H,)
            check_shape(where, entry[leaf_name], shape, "(in, features)" if leaf_name == "kernel" else "(features,)")
            host[(dense, leaf_name)] = to_host(entry[leaf_name], where)
    return host, D


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
        Target arrays, as in :func:`~portable_rnn.interop.from_torch`;
        default NumPy arrays of the parameters' dtype.

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
    cell, mode, nonlinearity, batch_first = _check_cell(cell)
    tree = _cell_tree(params, wrapper is not cell)
    H = int(cell.features)
    host, D = _read_denses(tree, mode, H, type(cell).__name__)
    source_dtype = _common.host_dtype(host, "params")
    zeros = np.zeros((H,), dtype=source_dtype)
    gates = _GATES[mode]
    w_ih, w_hh, b_ih, b_hh = _init.param_names(0, 0)
    out = {
        w_ih: np.concatenate([host[(f"i{g}", "kernel")].T for g in gates], axis=0),
        w_hh: np.concatenate([host[(f"h{g}", "kernel")].T for g in gates], axis=0),
        b_ih: np.concatenate([host[(f"i{g}", "bias")] if bi else zeros for g, (bi, _) in gates.items()]),
        b_hh: np.concatenate([host[(f"h{g}", "bias")] if bh else zeros for g, (_, bh) in gates.items()]),
    }
    kw = {"nonlinearity": nonlinearity} if mode == "rnn" else {}
    spec = _common.spec_class(mode)(D, H, batch_first=batch_first, **kw)
    return spec, _common.to_target(out, like, xp, dtype, device, source_dtype=source_dtype)


def _flax_tree(spec, host, dtype_name) -> dict:
    """``{dense: {"kernel", ["bias"]}}`` host arrays holding layer 0 of ``host``."""
    H = spec.hidden_size
    w_ih, w_hh, b_ih, b_hh = _init.param_names(0, 0)
    zero = np.zeros((spec.n_gates * H,), dtype=dtype_name)
    bi, bh = host.get(b_ih, zero), host.get(b_hh, zero)
    tree = {}
    for k, (g, (has_bi, has_bh)) in enumerate(_GATES[spec.mode].items()):
        rows = slice(k * H, (k + 1) * H)
        inp, hid = {"kernel": host[w_ih][rows].T}, {"kernel": host[w_hh][rows].T}
        if has_bi and has_bh:
            inp["bias"], hid["bias"] = bi[rows], bh[rows]
        elif has_bi:
            inp["bias"] = bi[rows] + bh[rows]
        else:
            hid["bias"] = bi[rows] + bh[rows]
        tree[f"i{g}"], tree[f"h{g}"] = inp, hid
    return tree


def to_flax(spec, params, *, optimized=False):
    """A Flax linen cell and its variables holding ``params``: the inverse of :func:`from_flax`.

    Parameters
    ----------
    spec : RNN, LSTM or GRU
        One unidirectional layer.
    params : dict of str to array
        Any backend, float32 or float64 (float64 needs JAX's float64 mode,
        :func:`portable_rnn.backends.jax_float64`).
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
    _common.single_layer(spec, "to_flax")
    if optimized and spec.mode != "lstm":
        raise ValueError("optimized=True is for LSTM (OptimizedLSTMCell) only")
    _common.require("flax", "to_flax")
    import flax.linen as nn
    import jax.numpy as jnp

    _common.no_learned_state(spec, "Flax")
    host, dtype_name = _common.host_params(spec, params)
    kw = dict(features=spec.hidden_size, param_dtype=getattr(jnp, dtype_name))
    cell: nn.RNNCellBase
    if spec.mode == "lstm":
        cell = (nn.OptimizedLSTMCell if optimized else nn.LSTMCell)(**kw)
    elif spec.mode == "gru":
        cell = nn.GRUCell(**kw)
    else:
        cell = nn.SimpleCell(**kw, activation_fn=nn.tanh if spec.nonlinearity == "tanh" else nn.relu)
    out: dict[str, dict] = {}
    for dense, leaves in _flax_tree(spec, host, dtype_name).items():
        out[dense] = {}
        for leaf_name, value in leaves.items():
            arr = jnp.asarray(np.ascontiguousarray(value))
            if arr.dtype != value.dtype:
                raise TypeError(
                    f"JAX made {arr.dtype} arrays from {value.dtype} parameters; enter "
                    "portable_rnn.backends.jax_float64() or convert the parameters to float32"
                )
            out[dense][leaf_name] = arr
    return cell, {"params": out}


def _unpack(value, names, spec, what, shape, meaning):
    """The checked arrays of a carry or state: one array, or a pair in the order ``names``."""
    kind = type(spec).__name__
    if len(names) == 2:
        if not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise TypeError(f"an {kind} {what} is the pair ({', '.join(names)}), got {type(value).__name__}")
        named = {f"{what}[{i}] ({n})": a for i, (n, a) in enumerate(zip(names, value))}
    else:
        if isinstance(value, (tuple, list)):
            raise TypeError(f"the {what} of a {kind} spec is one array {meaning}, got a {type(value).__name__}")
        named = {what: value}
    xp = namespace_of(**named)
    for name, a in named.items():
        check_shape(name, a, shape, meaning)
    return xp, dict(zip(names, named.values()))


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
    _common.single_layer(spec, "a Flax cell carry")
    states = spec.cell.states  # ours (h, c); Flax's LSTM carry is (c, h)
    xp, arrays = _unpack(carry, states[::-1], spec, "carry", (None, spec.hidden_size), "(N, H)")
    out = tuple(xp.expand_dims(arrays[s], axis=0) for s in states)
    return out if len(out) > 1 else out[0]


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
    _common.single_layer(spec, "a Flax cell carry")
    states = spec.cell.states
    _, arrays = _unpack(state, states, spec, "state", (1, None, spec.hidden_size), "(1, N, H)")
    out = tuple(arrays[s][0, ...] for s in states[::-1])
    return out if len(out) > 1 else out[0]
