r"""Optimisers and gradient clipping as pure functions of a params dict.

Parameters, gradients and optimiser state are plain nested dicts (lists and
tuples also work) of arrays from one Array API library on one device. Every
function returns new arrays and never writes into its inputs, nothing is
copied to the host, and the step count lives in the state as a 0-d ``int32``
array, so a whole update runs under ``jax.jit``.

Each optimiser factory returns an :class:`Optimizer` pair of functions,

``init(params) -> state``
    zero buffers shaped like ``params`` and ``step = 0``;
``update(grads, state, params) -> (new_params, new_state)``
    one step, matching ``torch.optim`` to rounding (see each factory).

>>> import numpy as np
>>> from portable_rnn.optim import adam
>>> params = {"W": np.ones((3, 2)), "b": np.zeros(2)}
>>> grads = {"W": np.full((3, 2), 0.5), "b": np.ones(2)}
>>> opt = adam(1e-3)
>>> state = opt.init(params)
>>> params, state = opt.update(grads, state, params)
>>> params["b"]  # Adam's first step moves each weight by about lr
array([-0.001, -0.001])

The same params dict is an ordinary JAX pytree, so it works with optax
unchanged, and optax's Adam takes the same step as :func:`adam`:

>>> import jax, jax.numpy as jnp, optax
>>> params = {"W": jnp.ones((3, 2)), "b": jnp.zeros(2)}
>>> grads = {"W": jnp.full((3, 2), 0.5), "b": jnp.ones(2)}
>>> opt = optax.adam(1e-3)
>>> opt_state = opt.init(params)
>>> updates, opt_state = opt.update(grads, opt_state, params)
>>> new_params = optax.apply_updates(params, updates)
>>> ours = adam(1e-3)
>>> our_params, _ = jax.jit(ours.update)(grads, ours.init(params), params)
>>> all(bool(jnp.allclose(our_params[k], new_params[k])) for k in params)
True

Hyperparameters are Python numbers fixed when the optimiser is built (an
array learning rate, e.g. from a schedule, is not supported).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from array_api_compat import device

from ._validation import (
    check_floating,
    check_keys,
    check_real,
    check_same_device,
    check_shape,
    namespace_of,
)
from .trees import map_with_path, tree_map

__all__ = [
    "Optimizer",
    "sgd",
    "adam",
    "adamw",
    "clip_by_value",
    "clip_by_global_norm",
    "apply_updates",
    "tree_map",
]


class Optimizer(NamedTuple):
    """A pair of pure functions (like optax's ``GradientTransformation``).

    Attributes
    ----------
    init : callable
        ``init(params) -> state``.
    update : callable
        ``update(grads, state, params) -> (new_params, new_state)``.
    """

    init: Callable
    update: Callable


# ---------------------------------------------------------------- trees


def _leaves(tree, name: str) -> dict:
    """``{"name[path]": leaf}`` for every leaf of ``tree``."""
    out = {}

    def visit(path, leaf):
        out[name + path] = leaf

    map_with_path(visit, tree)
    return out


def apply_updates(params, updates):
    """``params + updates`` leaf by leaf (as ``optax.apply_updates``).

    Parameters
    ----------
    params, updates : nested dict of arrays with one structure

    Returns
    -------
    nested dict of arrays, the structure of ``params``
    """
    xp, dev = _inspect(params)
    _check_like(xp, "updates", updates, params)
    return tree_map(lambda p, u: _array(xp, p + u, p, dev), params, updates)


# ---------------------------------------------------------------- validation


def _inspect(tree, name: str = "params"):
    """Check ``tree`` holds floating arrays of one library and device; return (xp, device)."""
    leaves = _leaves(tree, name)
    if not leaves:
        raise ValueError(f"{name} holds no arrays")
    xp = namespace_of(**leaves)
    for path, leaf in leaves.items():
        check_floating(xp, **{path: leaf})
    check_same_device(**leaves)
    return xp, device(next(iter(leaves.values())))


def _check_like(xp, name: str, tree, params) -> None:
    """``tree`` has the structure, library, shapes, dtypes and device of ``params``."""

    def check(path, p, other):
        pname, oname = "params" + path, name + path
        namespace_of(**{pname: p, oname: other})
        check_floating(xp, **{pname: p, oname: other})
        check_shape(oname, other, tuple(p.shape), f"(the shape of {pname})")
        check_same_device(**{pname: p, oname: other})

    map_with_path(check, params, tree)


def _check_state(xp, state, params, buffers) -> None:
    check_keys("state", state, ("step", *buffers))
    if namespace_of(**{"state['step']": state["step"]}) is not xp:
        raise TypeError("state['step'] comes from another array library than params")
    if tuple(state["step"].shape) != ():
        raise ValueError(f"state['step'] has shape {tuple(state['step'].shape)}; expected ()")
    for key in buffers:
        _check_like(xp, f"state[{key!r}]", state[key], params)


def _array(xp, value, like, dev):
    """``value`` as an array of ``like``'s dtype (NumPy 0-d arithmetic gives scalars)."""
    return xp.asarray(value, dtype=like.dtype, device=dev)


def _step_state(xp, dev):
    return xp.zeros((), dtype=xp.int32, device=dev)


def _next_step(xp, step, dev):
    return xp.asarray(step + 1, dtype=xp.int32, device=dev)


# ---------------------------------------------------------------- SGD


def sgd(
    lr: float,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    *,
    dampening: float = 0.0,
) -> Optimizer:
    r"""Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    With gradient :math:`g_t`, momentum :math:`\mu`, dampening :math:`\tau`,
    weight decay :math:`\lambda` and learning rate :math:`\eta`:

    .. math::

        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        b_t &= \begin{cases} g_t & t = 1 \\
                             \mu b_{t-1} + (1 - \tau) g_t & t > 1 \end{cases} \\
        g_t &\leftarrow \begin{cases} g_t + \mu b_t & \text{nesterov} \\
                                      b_t & \text{otherwise} \end{cases} \\
        \theta_t &= \theta_{t-1} - \eta g_t

    (the momentum lines only when :math:`\mu > 0`).

    Parameters
    ----------
    lr : float
        Learning rate :math:`\eta \ge 0`.
    momentum : float, default 0
        :math:`\mu \ge 0`.
    nesterov : bool, default False
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
    weight_decay : float, default 0
        L2 penalty :math:`\lambda \ge 0`, added to the gradient.
    dampening : float, keyword-only, default 0
        :math:`\tau`, as in PyTorch.

    Returns
    -------
    Optimizer
        State ``{"step": 0-d int32}``, plus ``"momentum_buffer"`` (shaped like
        ``params``) when ``momentum > 0``.
    """
    lr = check_real("lr", lr, 0)
    momentum = check_real("momentum", momentum, 0)
    weight_decay = check_real("weight_decay", weight_decay, 0)
    dampening = check_real("dampening", dampening, 0)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires momentum > 0 and zero dampening")
    buffers = ("momentum_buffer",) if momentum > 0 else ()

    def init(params):
        xp, dev = _inspect(params)
        state = {"step": _step_state(xp, dev)}
        if buffers:
            state["momentum_buffer"] = tree_map(xp.zeros_like, params)
        return state

    def update(grads, state, params):
        xp, dev = _inspect(params)
        _check_like(xp, "grads", grads, params)
        _check_state(xp, state, params, buffers)
        step = _next_step(xp, state["step"], dev)
        first = step == 1

        def leaf(p, g, *buf):
            if weight_decay != 0:
                g = g + weight_decay * p
            new_buf = None
            if buffers:
                (b,) = buf
                if dampening == 0:  # b starts at 0, so the first step gives b = g exactly
                    new_buf = momentum * b + g
                else:
                    new_buf = xp.where(first, g, momentum * b + (1 - dampening) * g)
                g = g + momentum * new_buf if nesterov else new_buf
            return _array(xp, p - lr * g, p, dev), new_buf

        bufs = (state["momentum_buffer"],) if buffers else ()
        pairs = map_with_path(lambda _path, *a: leaf(*a), params, grads, *bufs)
        new_params = tree_map(lambda _p, pair: pair[0], params, pairs)
        new_state = {"step": step}
        if buffers:
            new_state["momentum_buffer"] = tree_map(
                lambda p, pair: _array(xp, pair[1], p, dev), params, pairs
            )
        return new_params, new_state

    return Optimizer(init, update)


# ---------------------------------------------------------------- Adam / AdamW


def _bias_correction(xp, log_beta, t):
    r""":math:`1 - \beta^t = -\mathrm{expm1}(t \log\beta)`, accurate even in float32."""
    if log_beta is None:  # beta == 0
        return 1.0
    return -xp.expm1(t * log_beta)


def _adam(lr, b1, b2, eps, weight_decay, decoupled: bool) -> Optimizer:
    lr = check_real("lr", lr, 0)
    b1 = check_real("b1", b1, 0, 1)
    b2 = check_real("b2", b2, 0, 1)
    eps = check_real("eps", eps, 0)
    weight_decay = check_real("weight_decay", weight_decay, 0)
    log_b1 = math.log(b1) if b1 > 0 else None
    log_b2 = math.log(b2) if b2 > 0 else None
    buffers = ("exp_avg", "exp_avg_sq")

    def init(params):
        xp, dev = _inspect(params)
        return {
            "step": _step_state(xp, dev),
            "exp_avg": tree_map(xp.zeros_like, params),
            "exp_avg_sq": tree_map(xp.zeros_like, params),
        }

    def update(grads, state, params):
        xp, dev = _inspect(params)
        _check_like(xp, "grads", grads, params)
        _check_state(xp, state, params, buffers)
        step = _next_step(xp, state["step"], dev)

        def leaf(p, g, m, v):
            t = xp.astype(step, p.dtype)
            if weight_decay != 0:
                if decoupled:
                    p = p * (1 - lr * weight_decay)
                else:
                    g = g + weight_decay * p
            m = m + (1 - b1) * (g - m)  # torch's lerp
            v = b2 * v + (1 - b2) * (g * g)
            bc1 = _bias_correction(xp, log_b1, t)
            bc2 = _bias_correction(xp, log_b2, t)
            root_bc2 = 1.0 if log_b2 is None else xp.sqrt(bc2)  # b2 = 0: a float, not an array
            denom = xp.sqrt(v) / root_bc2 + eps
            new_p = p - (lr / bc1) * (m / denom)
            return tuple(_array(xp, a, p, dev) for a in (new_p, m, v))

        triples = map_with_path(
            lambda _path, *a: leaf(*a), params, grads, state["exp_avg"], state["exp_avg_sq"]
        )
        pick = lambda i: tree_map(lambda _p, trip: trip[i], params, triples)  # noqa: E731
        return pick(0), {"step": step, "exp_avg": pick(1), "exp_avg_sq": pick(2)}

    return Optimizer(init, update)


def adam(
    lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0
) -> Optimizer:
    r"""Adam, as ``torch.optim.Adam`` (and ``optax.adam``).

    .. math::

        g_t &\leftarrow g_t + \lambda \theta_{t-1} \quad (\text{L2, when } \lambda > 0) \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \theta_t &= \theta_{t-1} - \frac{\eta}{1 - \beta_1^t}
            \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    The bias corrections :math:`1 - \beta^t` are computed from the state's
    step array as :math:`-\mathrm{expm1}(t \log \beta)`, which avoids the
    cancellation of ``1 - beta**t`` (in float32 ``1 - 0.999`` is off by 1e-5).

    Parameters
    ----------
    lr : float
        Learning rate :math:`\eta \ge 0`.
    b1, b2 : float, default 0.9, 0.999
        Decay rates :math:`\beta_1, \beta_2 \in [0, 1)`.
    eps : float, default 1e-8
        :math:`\epsilon \ge 0`, added outside the square root.
    weight_decay : float, default 0
        L2 penalty :math:`\lambda` added to the gradient (coupled, as in
        ``torch.optim.Adam``; see :func:`adamw` for the decoupled form).

    Returns
    -------
    Optimizer
        State ``{"step": 0-d int32, "exp_avg": like params, "exp_avg_sq": like params}``.
    """
    return _adam(lr, b1, b2, eps, weight_decay, decoupled=False)


def adamw(
    lr: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
) -> Optimizer:
    r"""AdamW (decoupled weight decay), as ``torch.optim.AdamW``.

    First :math:`\theta \leftarrow \theta (1 - \eta \lambda)`, then the
    :func:`adam` step (without the L2 term) from the decayed parameters:

    .. math::

        \theta_t = \theta_{t-1}(1 - \eta\lambda) - \frac{\eta}{1 - \beta_1^t}
            \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    Parameters
    ----------
    lr, b1, b2, eps : float
        As in :func:`adam`.
    weight_decay : float, default 0.01
        Decoupled decay :math:`\lambda \ge 0` (PyTorch's default).

    Returns
    -------
    Optimizer
        State as in :func:`adam`.
    """
    return _adam(lr, b1, b2, eps, weight_decay, decoupled=True)


# ---------------------------------------------------------------- clipping


def clip_by_value(grads, limit: float):
    r"""Clamp every gradient entry to :math:`[-c, c]`, as ``torch.clamp(g, -c, c)``.

    Parameters
    ----------
    grads : nested dict of floating arrays
    limit : float
        :math:`c \ge 0`; ``math.inf`` clips nothing.

    Returns
    -------
    nested dict of arrays
        Same structure, shapes, dtypes and device; NaN stays NaN.
    """
    limit = check_real("limit", limit, 0, finite=False)
    xp, dev = _inspect(grads, "grads")
    return tree_map(lambda g: _array(xp, xp.clip(g, -limit, limit), g, dev), grads)


def clip_by_global_norm(grads, max_norm: float):
    r"""Rescale gradients so their joint 2-norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_`` (without its in-place write):

    .. math::

        \|g\| = \sqrt{\textstyle\sum_{\text{leaves}} \sum_i g_i^2}, \qquad
        g \leftarrow g \cdot \min\left(1, \frac{c}{\|g\| + 10^{-6}}\right).

    Parameters
    ----------
    grads : nested dict of arrays of one floating dtype
    max_norm : float
        :math:`c \ge 0`; ``math.inf`` rescales nothing (the norm is still returned).

    Returns
    -------
    grads : nested dict of arrays
        The rescaled gradients.
    norm : 0-d array
        :math:`\|g\|` before clipping, same dtype and device as the gradients
        (non-finite if a gradient is).
    """
    max_norm = check_real("max_norm", max_norm, 0, finite=False)
    xp, dev = _inspect(grads, "grads")
    leaves = _leaves(grads, "grads")
    dtype = check_floating(xp, **leaves)
    squares = [xp.sum(g * g) for g in leaves.values()]
    total = squares[0]
    for s in squares[1:]:
        total = total + s
    norm = xp.asarray(xp.sqrt(total), dtype=dtype, device=dev)
    one = xp.ones((), dtype=dtype, device=dev)  # made on the device: no host-to-device copy
    scale = xp.minimum(max_norm / (norm + 1e-6), one)
    return tree_map(lambda g: _array(xp, g * scale, g, dev), grads), norm
