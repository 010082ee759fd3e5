"""What the format modules of :mod:`portable_rnn.interop` and :mod:`portable_rnn.io` share.

Checks of specs and parameter dicts, checked host copies of a spec's
parameters, and the conversion of host arrays to the arrays a caller asked
for (``like=`` or ``xp=``/``dtype=``/``device=``). Host side: NumPy is used
on host copies only.
"""

from __future__ import annotations

import dataclasses
import importlib
import math

import array_api_compat.numpy as _np_xp

from ..backends import DTYPES, resolve_target, to_host, to_namespace
from .._validation import check_floating, check_params
from ..layers import LAYERS

__all__ = [
    "require",
    "spec_classes",
    "spec_class",
    "check_spec",
    "param_count",
    "single_layer",
    "overrides",
    "check_names",
    "dtype_name",
    "host_dtype",
    "check_spec_params",
    "no_learned_state",
    "host_params",
    "to_target",
]


def require(module_name: str, what: str):
    """Import an optional library, or raise ``ImportError`` saying what needs it."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"{what} needs {module_name.split('.')[0]}, which could not be imported "
            f"({type(error).__name__}: {error})"
        ) from None


def spec_classes() -> dict:
    """:data:`portable_rnn.layers.LAYERS`: ``mode -> spec class``."""
    return LAYERS


def spec_class(mode: str):
    """The :mod:`portable_rnn.layers` spec class of ``mode`` ("rnn", "lstm" or "gru")."""
    return spec_classes()[mode]


def check_spec(spec, name: str = "spec"):
    """``spec`` itself if it is an RNN, LSTM or GRU spec, else ``TypeError`` naming ``name``."""
    if not isinstance(spec, tuple(spec_classes().values())):
        raise TypeError(
            f"{name} must be a portable_rnn.layers RNN, LSTM or GRU spec, got {type(spec).__name__}"
        )
    return spec


def param_count(spec) -> tuple[int, int]:
    r"""How many arrays and numbers ``spec.param_shapes()`` lists, computed without listing them.

    A spec read from a file may claim ``num_layers=10**8``: its size is
    checked against the file before any name is built.

    Parameters
    ----------
    spec : RNN, LSTM or GRU, or another layer spec (MinGRU, MinLSTM, Recurrent)
        Another spec is counted from its one- and two-layer versions: every layer after
        the first holds the same parameters, so both counts grow linearly in L.

    Returns
    -------
    arrays : int
        :math:`L \cdot dirs \cdot (2 + 2b + p)`.
    numbers : int
        :math:`dirs \cdot (GH\,D + q) + (L - 1) \, dirs \cdot (GH \cdot dirs \cdot R + q)`,
        :math:`q = GH (R + 2b) + c`, with :math:`GH = G \cdot H`, :math:`b = 1` with
        bias (else 0), :math:`R` the output size (``proj_size`` or H), and :math:`p`
        arrays of :math:`c` numbers in all of the cell's own parameters (a projection's
        P H, peepholes' 3 H, normalisations' gains and biases).
    """
    with_formula = isinstance(spec, tuple(spec_classes().values()))
    if not with_formula:
        return _count_by_layers(spec)
    L, dirs, H, b = spec.num_layers, spec.num_directions, spec.hidden_size, int(spec.bias)
    GH = spec.n_gates * H
    R, own = spec.output_size, [shape for _, shape in spec.cell.cell_params(H).values()]  # R = P with a projection
    p = len(own)
    per_direction = GH * (R + 2 * b) + sum(math.prod(shape) for shape in own)  # weight_hh, biases, cell's own
    numbers = dirs * (GH * spec.input_size + per_direction) + (L - 1) * dirs * (GH * dirs * R + per_direction)
    arrays = L * dirs * (2 + 2 * b + p)
    if spec.learn_initial_state:  # initial_h (L*dirs, R), and an LSTM's initial_c (L*dirs, H)
        n_states = spec.cell.n_states
        arrays, numbers = arrays + n_states, numbers + L * dirs * (R + (n_states - 1) * H)
    return arrays, numbers


def _count_by_layers(spec) -> tuple[int, int]:
    """:func:`param_count` of a spec without a formula here, from its one- and two-layer versions."""
    if not (dataclasses.is_dataclass(spec) and hasattr(spec, "num_layers") and hasattr(spec, "param_shapes")):
        check_spec(spec)  # the TypeError that names what a spec is
    counts = []
    for layers in (1, 2):
        shapes = dataclasses.replace(spec, num_layers=layers).param_shapes()
        counts.append((len(shapes), sum(math.prod(shape) for shape in shapes.values())))
    (arrays, numbers), (arrays_2, numbers_2) = counts
    L = spec.num_layers
    return arrays + (L - 1) * (arrays_2 - arrays), numbers + (L - 1) * (numbers_2 - numbers)


def no_learned_state(spec, target: str) -> None:
    """Refuse a spec with parameters ``target`` has no place for: a learned initial state, peepholes, normalisations."""
    if check_spec(spec).learn_initial_state:
        raise ValueError(f"{target} has no learned initial state; got a spec with learn_initial_state=True "
                         "(pass its initial_* parameters as the state instead)")
    if getattr(spec, "peephole", False):
        raise ValueError(f"{target} has no LSTM with peepholes; got a spec with peephole=True")
    if getattr(spec, "layer_norm", False):
        raise ValueError(f"{target} has no layer-normalised {spec.mode.upper()}; got a spec with layer_norm=True")


def single_layer(spec, target: str, modes=("rnn", "lstm", "gru")) -> None:
    """Refuse a spec that ``target`` cannot hold: another mode, or more than one unidirectional layer."""
    check_spec(spec)
    no_learned_state(spec, target)
    if spec.mode not in modes:
        raise ValueError(f"{target} has no {type(spec).__name__}; supported: {[m.upper() for m in modes]}")
    if getattr(spec, "proj_size", 0):
        raise ValueError(f"{target} has no LSTM projection (proj_size={spec.proj_size})")
    if spec.num_layers != 1 or spec.bidirectional:
        raise ValueError(
            f"{target} holds one unidirectional layer; got num_layers={spec.num_layers}, "
            f"bidirectional={spec.bidirectional}"
        )


def overrides(obj, base, method: str) -> bool:
    """Whether ``type(obj)`` replaces ``base.method`` (then we cannot know what it computes)."""
    return getattr(type(obj), method) is not getattr(base, method)


def check_names(what: str, got, expected, hint: str = "") -> None:
    """``ValueError`` naming the missing and unexpected names of ``got`` (a mapping of a foreign format)."""
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
        raise ValueError(f"{what}: {', '.join(parts)}{hint}")


def dtype_name(xp, dtype, what: str = "dtype") -> str:
    """``"float32"`` or ``"float64"`` for a dtype of ``xp``; ``TypeError`` for any other."""
    try:
        name = f"float{xp.finfo(dtype).bits}"
    except Exception:  # not a floating dtype of xp
        name = None
    if name not in DTYPES:
        raise TypeError(f"{what} is {dtype}; expected one of {list(DTYPES)}")
    return name


def host_dtype(host: dict, what: str) -> str:
    """The one dtype name (``"float32"``/``"float64"``) of the host arrays of ``host``."""
    dtype = check_floating(_np_xp, **{f"{what}[{k!r}]": a for k, a in host.items()})
    return dtype_name(_np_xp, dtype, what)


def check_spec_params(spec, params, name: str = "params"):
    """Check ``params`` against ``spec``: exact keys and shapes, one library, dtype and device.

    Returns
    -------
    xp : namespace
    dtype : dtype
        float32 or float64.
    """
    check_spec(spec)
    return check_params(name, params, spec.param_shapes(), spec)


def host_params(spec, params, name: str = "params") -> tuple[dict, str]:
    """Checked host copies of a spec's parameters.

    Parameters
    ----------
    spec : RNN, LSTM or GRU
    params : dict of str to array
        Exactly ``spec.param_shapes()``, one library, one float32/float64
        dtype, one device.
    name : str
        What to call ``params`` in messages.

    Returns
    -------
    host : dict of str to numpy.ndarray
        Fresh C-contiguous copies, in ``spec.param_shapes()`` order.
    dtype : {"float32", "float64"}
    """
    xp, dtype = check_spec_params(spec, params, name)
    host = {k: to_host(params[k], f"{name}[{k!r}]") for k in spec.param_shapes()}
    return host, dtype_name(xp, dtype, name)


def to_target(host: dict, like=None, xp=None, dtype=None, device=None, *, source_dtype: str) -> dict:
    """Host arrays as arrays of the requested namespace, dtype and device (same keys, same order).

    Parameters
    ----------
    host : dict of str to numpy.ndarray
    like : array, optional
        Take namespace, dtype and device from it.
    xp : module, optional
        Target library; default NumPy.
    dtype : dtype or {"float32", "float64"}, optional
        Default: ``source_dtype`` (or the dtype of ``like``).
    device : device, optional
        Default: the library's default device (or the device of ``like``).
    source_dtype : {"float32", "float64"}
        The dtype of the host arrays.

    Raises
    ------
    TypeError
        A target dtype other than float32/float64, or ``like=`` with ``xp=``.
    portable_rnn.backends.BackendError
        The library made another dtype than the one asked for (JAX float64
        outside :func:`portable_rnn.backends.jax_float64`).
    """
    xp, dtype, device = resolve_target(like, xp, dtype, device, default_dtype=source_dtype)
    return to_namespace(host, xp, dtype, device)
