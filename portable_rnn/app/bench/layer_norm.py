r"""``portable-rnn bench --layer-norm``: the layer-normalised LSTM against what users have without it.

One :class:`~portable_rnn.layers.LSTM` layer with ``layer_norm=True``
(N, T, D, H from ``--configs``, default :data:`CONFIG`), forward + backward
of :math:`\sum \text{out} \odot G` for a fixed cotangent G, time-major on the CPU.

Contenders
----------
``portable_rnn numpy``, ``portable_rnn torch``
    This package's layer on NumPy arrays and on torch tensors:
    ``spec.forward`` then the hand-written ``spec.backward``.
``portable_rnn jax``
    ``jax.jit`` of ``jax.grad`` through :func:`portable_rnn.jax.apply` (the
    hand-written backward as the VJP).
``torch eager + autograd``
    What a PyTorch user writes, ``torch.nn`` having no such layer: a loop
    over the steps of a cell built from ``torch.nn.functional.layer_norm``
    and ``torch.sigmoid``/``torch.tanh``, differentiated by autograd.
``jax.grad of lax.scan``
    ``jax.jit`` of ``jax.grad`` of a ``lax.scan`` of the same cell in
    ``jax.numpy``: what a JAX user writes.

All five compute the same maths from the same numbers; every contender's
parameter gradients are compared with ``portable_rnn numpy``'s (the largest
relative difference is reported), so the speed ratios compare equal work.
Timing is :func:`~portable_rnn.app.bench.timing.time_all`'s: interleaved
rounds, the median reported, thread counts pinned.
"""

from __future__ import annotations

import sys

import numpy as np

from ... import backends
from ...engine.layer_norm import EPS
from ...layers import LSTM
from .contenders import Contender
from .run import relative_error
from .timing import SETTLE_S, pin_threads, time_all

__all__ = ["CONFIG", "run_layer_norm_bench"]

#: (N, T, D, H, dtype) without ``--configs``.
CONFIG = (32, 100, 64, 128, "float32")


def _ours(spec, params, x, g, library):
    """Forward and hand-written backward on ``library``'s arrays; returns the gradients as NumPy."""
    p, xs, gs = params, x, g
    if library == "torch":
        import torch

        p = {k: torch.from_numpy(v) for k, v in params.items()}
        xs, gs = torch.from_numpy(x), torch.from_numpy(g)

    def run():
        out, _, tape = spec.forward(p, xs)
        grads, _, _ = spec.backward(p, tape, gs)
        return {k: np.asarray(v) for k, v in grads.items()}

    return run


def _torch_eager(params, x, g, H):
    """The eager torch LayerNorm-LSTM loop with autograd (the equations of ``LayerNormLSTMCell``)."""
    import torch
    from torch.nn.functional import layer_norm

    leaves = {k: torch.from_numpy(v).requires_grad_(True) for k, v in params.items()}
    xs, gs = torch.from_numpy(x), torch.from_numpy(g)
    w = {k.removesuffix("_l0"): v for k, v in leaves.items()}

    def ln(a, part):
        return layer_norm(a, (a.shape[-1],), w[f"weight_ln_{part}"], w[f"bias_ln_{part}"], eps=EPS)

    def run():
        for leaf in leaves.values():
            leaf.grad = None
        h = c = xs.new_zeros((xs.shape[1], H))
        xw = xs @ w["weight_ih"].T + w["bias_ih"]
        outs = []
        for t in range(xs.shape[0]):
            z = ln(xw[t], "ih") + ln(h @ w["weight_hh"].T + w["bias_hh"], "hh")
            i, f, gg, o = z.split(H, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
            h = torch.sigmoid(o) * torch.tanh(ln(c, "c"))
            outs.append(h)
        (torch.stack(outs) * gs).sum().backward()
        return {k: v.grad.numpy() for k, v in leaves.items()}

    return run


def _jax_scan(params, x, g, H):
    """``jax.jit(jax.grad)`` of a ``lax.scan`` of the same cell in ``jax.numpy``."""
    import jax
    import jax.numpy as jnp

    def ln(a, gain, bias):
        mu = jnp.mean(a, axis=-1, keepdims=True)
        var = jnp.mean((a - mu) ** 2, axis=-1, keepdims=True)
        return (a - mu) / jnp.sqrt(var + EPS) * gain + bias

    def loss(p, xs, gs):
        w = {k.removesuffix("_l0"): v for k, v in p.items()}
        xw = xs @ w["weight_ih"].T + w["bias_ih"]

        def step(carry, xw_t):
            h, c = carry
            z = (ln(xw_t, w["weight_ln_ih"], w["bias_ln_ih"])
                 + ln(h @ w["weight_hh"].T + w["bias_hh"], w["weight_ln_hh"], w["bias_ln_hh"]))
            i, f, gg, o = jnp.split(z, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
            h = jax.nn.sigmoid(o) * jnp.tanh(ln(c, w["weight_ln_c"], w["bias_ln_c"]))
            return (h, c), h

        zeros = jnp.zeros((xs.shape[1], H), xs.dtype)
        _, out = jax.lax.scan(step, (zeros, zeros), xw)
        return jnp.sum(out * gs)

    grad = jax.jit(jax.grad(loss))
    p, xs, gs = ({k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(x), jnp.asarray(g))

    def run():
        return {k: np.asarray(jax.block_until_ready(v)) for k, v in grad(p, xs, gs).items()}

    return run


def _ours_jax(spec, params, x, g):
    import jax
    import jax.numpy as jnp

    from ...jax import apply

    grad = jax.jit(jax.grad(lambda p, xs, gs: jnp.sum(apply(spec, p, xs)[0] * gs)))
    p, xs, gs = ({k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(x), jnp.asarray(g))

    def run():
        return {k: np.asarray(jax.block_until_ready(v)) for k, v in grad(p, xs, gs).items()}

    return run


def run_layer_norm_bench(config=None, repeats: int = 5, threads: int | None = None, settle=None, out=None) -> dict:
    """Time every contender on one configuration and print a table.

    Parameters
    ----------
    config : tuple (N, T, D, H, dtype), optional
        Default :data:`CONFIG`.
    repeats : int
        Timed rounds; the median is reported.
    threads : int, optional
        Pin torch's and NumPy's BLAS threads to this count.
    settle : float, optional
        Seconds of pause before every timed run (default :data:`~.timing.SETTLE_S`).
    out : file, optional

    Returns
    -------
    dict
        ``{"config": {...}, "contenders": {name: {"median_s", "times_s", "vs_ours_numpy",
        "max_rel_grad_diff"}}}``.
    """
    out = sys.stdout if out is None else out
    N, T, D, H, dtype = config or CONFIG
    spec = LSTM(D, H, layer_norm=True)
    rng = np.random.default_rng(0)
    params = {k: v.astype(dtype) for k, v in spec.init(seed=0, dtype="float64").items()}
    x, g = rng.normal(size=(T, N, D)).astype(dtype), rng.normal(size=(T, N, H)).astype(dtype)
    available, _ = backends.discover(("jax", "torch"))
    contenders = [Contender("portable_rnn numpy", "ours", "cpu", _ours(spec, params, x, g, "numpy"))]
    if "torch" in available:
        contenders += [Contender("portable_rnn torch", "ours", "cpu", _ours(spec, params, x, g, "torch")),
                       Contender("torch eager + autograd", "reference", "cpu", _torch_eager(params, x, g, H))]
    if "jax" in available:
        contenders += [Contender("portable_rnn jax", "ours", "cpu", _ours_jax(spec, params, x, g)),
                       Contender("jax.grad of lax.scan", "reference", "cpu", _jax_scan(params, x, g, H))]
    restore = pin_threads(threads) if threads else (lambda: None)
    try:
        times, results = time_all(contenders, repeats, SETTLE_S if settle is None else settle)
    finally:
        restore()
    base = results["portable_rnn numpy"]
    ours_s = float(np.median(times["portable_rnn numpy"]))
    report: dict = {"config": dict(N=N, T=T, D=D, H=H, dtype=dtype), "contenders": {}}
    print(f"layer-normalised LSTM, forward + backward, N={N} T={T} D={D} H={H} {dtype} "
          f"(median of {len(times['portable_rnn numpy'])} rounds)", file=out)
    for c in contenders:
        median = float(np.median(times[c.name]))
        diff = relative_error(results[c.name], base)
        report["contenders"][c.name] = {"median_s": median, "times_s": times[c.name],
                                        "vs_ours_numpy": median / ours_s, "max_rel_grad_diff": diff}
        print(f"  {c.name:26s} {median * 1e3:9.1f} ms  {median / ours_s:6.2f}x ours (numpy)  "
              f"gradients within {diff:.1e} of ours", file=out)
    return report
