"""PyTorch: ``torch.nn.RNN``, ``LSTM`` and ``GRU`` modules.

Their ``state_dict`` is our parameter dict: same names, shapes and gate
orders, so the conversion is a checked copy. torch is imported when a
function runs (it is optional); this module's name does not shadow it, the
package uses absolute imports.
"""

from __future__ import annotations

from ..backends import to_host
from .._validation import check_shape
from . import _common

__all__ = ["from_torch", "to_torch"]


def _torch_classes(torch) -> dict:
    """``mode -> torch.nn`` class: torch names its modules as our specs are named."""
    return {mode: getattr(torch.nn, cls.__name__) for mode, cls in _common.spec_classes().items()}


def _torch_spec(torch, module):
    """The spec computing what ``module`` computes, or the error saying why there is none."""
    base = next(((m, c) for m, c in _torch_classes(torch).items() if isinstance(module, c)), None)
    if base is None:
        raise TypeError(f"module must be a torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
    mode, base_cls = base
    name = type(module).__name__
    if _common.overrides(module, base_cls, "forward"):
        raise ValueError(
            f"{name} overrides forward(); only the stock torch.nn.{base_cls.__name__} computation "
            "can be converted"
        )
    if module._forward_hooks or module._forward_pre_hooks:
        raise ValueError(f"{name} has forward hooks, which may change what it computes; remove them first")
    kw: dict[str, object] = dict(bidirectional=bool(module.bidirectional), batch_first=bool(module.batch_first),
                                 bias=bool(module.bias), dropout=float(module.dropout))
    if getattr(module, "proj_size", 0):
        kw["proj_size"] = int(module.proj_size)
    if mode == "rnn":
        if module.mode not in ("RNN_TANH", "RNN_RELU"):
            raise ValueError(f"{name} has unknown mode {module.mode!r}")
        kw["nonlinearity"] = "tanh" if module.mode == "RNN_TANH" else "relu"
    spec_cls = _common.spec_class(mode)
    return spec_cls(int(module.input_size), int(module.hidden_size), int(module.num_layers), **kw)


def from_torch(module, *, like=None, xp=None, dtype=None, device=None):
    r"""Spec and parameters of a ``torch.nn.RNN``, ``LSTM`` or ``GRU``.

    Parameters
    ----------
    module : torch.nn.RNN, torch.nn.LSTM or torch.nn.GRU
        Any ``num_layers``, ``bidirectional``, ``batch_first``, ``bias``,
        ``dropout`` below 1, LSTM ``proj_size`` and RNN ``nonlinearity``, on
        any device, float32 or float64.
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
        With the module's sizes, flags, ``dropout`` and ``proj_size``.
    params : dict of str to array
        The module's ``state_dict`` (same names, shapes and order), copied.

    Raises
    ------
    TypeError
        Not one of the three modules, or a dtype other than float32/float64.
    ValueError
        What our layers do not compute: ``dropout=1``, a subclass overriding
        ``forward``, forward hooks, or a ``state_dict`` with other names
        (e.g. weight-norm parametrizations).

    Notes
    -----
    The state maps one to one: ``h_0``/``h_n`` (and ``c``) are
    ``(num_layers * dirs, N, H)`` in both (h has ``proj_size`` features when
    it is > 0), so ``module(x, (h0, c0))`` is ``spec.forward(params, x, (h0, c0))``
    in eval mode; in training mode ``spec.forward`` needs the dropout factors
    (``dropout_masks=``). Packed sequences correspond to ``lengths=``.
    """
    torch = _common.require("torch", "from_torch")
    spec = _torch_spec(torch, module)
    name = type(module).__name__
    state = module.state_dict()
    shapes = spec.param_shapes()
    _common.check_names(
        f"{name}.state_dict() does not have the names of a plain torch.nn.{type(spec).__name__}", state, shapes,
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
        host[key] = to_host(t, f"{name}.{key}")
    source_dtype = _common.host_dtype(host, f"{name}.state_dict()")
    return spec, _common.to_target(host, like, xp, dtype, device, source_dtype=source_dtype)


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
        ``torch.nn.RNN/LSTM/GRU`` with the spec's sizes, flags, ``dropout`` and
        ``proj_size``, in training mode (as torch constructs it: with
        ``dropout > 0`` and several layers, call ``.eval()`` for what
        ``spec.forward`` computes without dropout factors). Its
        ``state_dict()`` equals ``params`` bit for bit.
    """
    torch = _common.require("torch", "to_torch")
    _common.no_learned_state(spec, "torch.nn")
    host, dtype_name = _common.host_params(spec, params)
    if device is None:
        first = next(iter(params.values()))
        device = first.device if isinstance(first, torch.Tensor) else "cpu"
    kw = dict(
        num_layers=spec.num_layers, bias=spec.bias, batch_first=spec.batch_first,
        bidirectional=spec.bidirectional, dropout=spec.dropout, dtype=getattr(torch, dtype_name), device=device,
    )
    if getattr(spec, "proj_size", 0):
        kw["proj_size"] = spec.proj_size
    if spec.mode == "rnn":
        kw["nonlinearity"] = spec.nonlinearity
    module = _torch_classes(torch)[spec.mode](spec.input_size, spec.hidden_size, **kw)
    with torch.no_grad():
        module.load_state_dict({k: torch.from_numpy(a) for k, a in host.items()}, strict=True)
    return module
