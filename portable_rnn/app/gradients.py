r"""``portable-rnn gradients``: the vanishing gradient of a vanilla RNN against an LSTM.

Both layers read the same random sequence; the loss reads only the last
hidden state, and :func:`hidden_state_gradients` gives the exact gradient that
reaches every earlier state, so the plot shows how fast it decays with
distance for each cell.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
from array_api_compat import device as device_of

from .. import backends
from .._validation import check_shape, namespace_of
from ..layers import LSTM, RNN
from .report import plot_curves

__all__ = ["hidden_state_gradients", "run_gradients"]


def hidden_state_gradients(layer, params, x, d_h_last):
    r"""Exact :math:`\partial L / \partial h_t` for every step, with :math:`L = \langle v, h_T \rangle`.

    The vanishing-gradient picture: the loss reads only the last hidden
    state, :math:`L = \sum v \odot h_T`, and the result is the gradient
    carried back to every earlier state :math:`h_0, \dots, h_T` (``h_0``
    the initial state).

    The layer API returns gradients of the inputs, not of intermediate
    states, so the layer is run once with a zero *probe* input wired through
    the recurrent weights: the input becomes :math:`[x_t, p_t]` with
    :math:`p_t = 0` and :math:`W_{ih}' = [W_{ih} \mid W_{hh}]`, i.e.
    :math:`z_t = W_{ih} x_t + W_{hh}(h_{t-1} + p_t) + b`. The forward pass is
    unchanged, and since :math:`h_{t-1}` reaches the loss only through
    :math:`z_t` (true for the Elman RNN and for the LSTM's ``h``; the LSTM's
    ``c`` is a separate state),

    .. math::

        \frac{\partial L}{\partial p_t} = W_{hh}^T \frac{\partial L}{\partial z_t}
        = \frac{\partial L}{\partial h_{t-1}}

    exactly, for every ``t`` from one forward and one backward pass. (The GRU
    is excluded: its :math:`h_{t-1}` also enters through the reset gate's
    product and the update gate's direct path.)

    Parameters
    ----------
    layer : RNN or LSTM
        One layer, unidirectional, time-major (``num_layers=1``,
        ``bidirectional=False``, ``batch_first=False``).
    params : dict of str to array
        The layer's parameters.
    x : array (T, N, D)
    d_h_last : array (N, H)
        :math:`v = \partial L / \partial h_T`.

    Returns
    -------
    array (T + 1, N, H)
        Row ``t`` is :math:`\partial L / \partial h_t`; row 0 is the initial
        state's and row ``T`` is ``d_h_last``.
    """
    if not isinstance(layer, (RNN, LSTM)):
        raise TypeError(f"layer must be an RNN or LSTM spec, got {type(layer).__name__}")
    if layer.num_layers != 1 or layer.bidirectional or layer.batch_first:
        raise ValueError("layer must have num_layers=1, bidirectional=False and batch_first=False")
    xp = namespace_of(x=x, d_h_last=d_h_last, **{f"params['{k}']": v for k, v in params.items()})
    T, N, D = x.shape
    H = layer.hidden_size
    check_shape("d_h_last", d_h_last, (N, H), f"(N, H) = ({N}, {H})")
    dev = device_of(x)
    kwargs: dict[str, Any] = {"nonlinearity": layer.nonlinearity} if isinstance(layer, RNN) else {}
    probe = type(layer)(D + H, H, bias=layer.bias, **kwargs)
    probe_params = dict(params)
    probe_params["weight_ih_l0"] = xp.concat([params["weight_ih_l0"], params["weight_hh_l0"]], axis=1)
    x_probe = xp.concat([x, xp.zeros((T, N, H), dtype=x.dtype, device=dev)], axis=-1)
    _, _, tape = probe.forward(probe_params, x_probe)
    d_out = xp.concat(
        [xp.zeros((T - 1, N, H), dtype=x.dtype, device=dev), xp.expand_dims(d_h_last, axis=0)], axis=0
    )
    _, dx, _ = probe.backward(probe_params, tape, d_out)
    return xp.concat([dx[..., D:], xp.expand_dims(d_h_last, axis=0)], axis=0)


def _print_table(norms: dict, steps: int, out) -> None:
    """A few rows of the two norm curves, and the ratio of the first to the last."""
    print(f"{'t':>5s} {'vanilla RNN':>14s} {'LSTM':>14s}", file=out)
    for k in sorted({0, 1, steps // 4, steps // 2, 3 * steps // 4, steps - 1, steps}):
        print(f"{k:>5d} {norms['rnn'][k]:14.3e} {norms['lstm'][k]:14.3e}", file=out)
    for name, label in (("rnn", "vanilla RNN"), ("lstm", "LSTM")):
        ratio = norms[name][1] / norms[name][steps]
        print(f"{label}: ||dL/da<1>|| / ||dL/da<{steps}>|| = {ratio:.3e}", file=out)


def run_gradients(*, steps=100, hidden=32, inputs=8, seed=0, forget_bias=1.0, backend="numpy",
                  device=None, out_dir="runs/gradients", out=None) -> dict:
    r"""Norm of :math:`\partial L / \partial a^{\langle t \rangle}` for a vanilla RNN and an LSTM.

    Both layers (PyTorch's default initialisation, seed ``seed``; the LSTM's
    forget-gate bias set to ``forget_bias``) read the same random sequence
    :math:`x \sim \mathcal N(0, 1)` of ``steps`` steps; the loss is
    :math:`L = \langle v, a^{\langle T \rangle} \rangle` with a random unit
    vector :math:`v`, so only the last step has a loss. The gradients are
    exact, from one forward and one backward pass each
    (:func:`hidden_state_gradients`), in float64 (on JAX inside
    :func:`portable_rnn.backends.jax_float64`).

    Returns
    -------
    dict
        ``{"rnn": norms, "lstm": norms}``, each a NumPy array (steps + 1,)
        indexed by ``t`` (0 is the initial state), and ``"png"``: the plot's
        path or ``None``.
    """
    out = sys.stdout if out is None else out
    runtime = backends.resolve(backend, device)
    rng = np.random.default_rng(seed)
    x, v = rng.standard_normal((steps, 1, inputs)), rng.standard_normal((1, hidden))
    norms = {}
    x64 = backends.jax_float64() if runtime.library == "jax" else contextlib.nullcontext()
    with runtime.context(), x64:
        x, v = runtime.asarray(x), runtime.asarray(v / np.linalg.norm(v))
        for name, spec, extra in (("rnn", RNN(inputs, hidden), {}),
                                  ("lstm", LSTM(inputs, hidden), {"forget_bias": forget_bias})):
            params = spec.init(seed, xp=runtime.xp, dtype="float64", device=runtime.device, **extra)
            grads = runtime.to_numpy(hidden_state_gradients(spec, params, x, v))
            norms[name] = np.linalg.norm(grads[:, 0, :], axis=-1)
    print(f"||dL/da<t>|| with the loss on the last step only (T = {steps}, hidden {hidden}, "
          f"{inputs} inputs, seed {seed}, LSTM forget-gate bias {forget_bias}, {runtime.name})", file=out)
    _print_table(norms, steps, out)
    png, t = Path(out_dir) / "gradients.png", np.arange(steps + 1)
    why = plot_curves(
        png, {"vanilla RNN (tanh)": (t, norms["rnn"]), f"LSTM (forget bias {forget_bias})": (t, norms["lstm"])},
        title=f"Gradient reaching step t from a loss at step {steps}", xlabel="t",
        ylabel="||dL/da<t>||", log_y=True,
    )
    print(f"skipped the plot: {why}" if why else f"wrote {png}", file=out)
    return {**norms, "png": None if why else png}
