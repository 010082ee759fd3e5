r"""``portable-rnn bench --minimal``: minGRU and minLSTM against T, parallel and sequential, and their peers.

Forward + backward of :math:`\sum \text{out} \odot G` for one layer (N = 16,
D = H, float32, time-major, on the CPU) at every T of ``--minimal-lengths``
(default :data:`LENGTHS`) and every H of ``--minimal-hidden`` (default 64).

Contenders
----------
``{mingru,minlstm} parallel|sequential (numpy)``, ``gru``, ``lstm (numpy)``
    This package's layers on NumPy arrays: ``spec.forward`` then ``spec.backward``.
``{mingru,minlstm} parallel|sequential (jax)``
    ``jax.jit`` of ``jax.grad`` through :func:`portable_rnn.jax.apply`.
``{mingru,minlstm} jax.lax.associative_scan``
    ``jax.jit(jax.grad)`` of the same layer written with ``lax.associative_scan``
    over :math:`(a, b)` pairs: what a JAX user writes. Same maths, so its
    gradients are compared with this package's.
``mingru log-space (torch eager)``
    The paper's log-space minGRU (Feng et al. 2024, appendix): ``logcumsumexp``
    over :math:`\log a_t` and :math:`\log b_t` with the positive activation
    :math:`g(x) = x + 1/2` for :math:`x \ge 0`, :math:`\sigma(x)` otherwise,
    differentiated by autograd. Another model (``g``), so timed only.

Peak memory: NumPy's from :mod:`tracemalloc` (what forward + backward
allocate), JAX's from XLA's plan (temporaries and outputs), torch's is not
measured on the CPU. Times: medians of interleaved rounds
(:func:`~portable_rnn.app.bench.timing.time_all`).
"""

from __future__ import annotations

import sys

import numpy as np

from ... import backends
from ...layers import GRU, LSTM
from ...minimal import MinGRU, MinLSTM
from .contenders import Contender
from .memory import jax_memory, traced_peak
from .run import relative_error
from .timing import SETTLE_S, pin_threads, time_all

__all__ = ["LENGTHS", "run_minimal_bench"]

#: T without ``--minimal-lengths``.
LENGTHS = (512, 1024, 4096, 16384)
N = 16


def _numpy(spec, params, x, g):
    def run():
        out, _, tape = spec.forward(params, x)
        grads, _, _ = spec.backward(params, tape, g)
        return grads

    return run, lambda: {"peak_bytes": traced_peak(run)}


def _jax_compiled(loss, params, x, g):
    import jax
    import jax.numpy as jnp

    p, xs, gs = ({k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(x), jnp.asarray(g))
    compiled = jax.jit(jax.grad(loss)).lower(p, xs, gs).compile()

    def run():
        return {k: np.asarray(v) for k, v in jax.block_until_ready(compiled(p, xs, gs)).items()}

    return run, jax_memory(compiled)


def _jax_ours(spec, params, x, g):
    import jax.numpy as jnp

    from ...jax import apply

    return _jax_compiled(lambda p, xs, gs: jnp.sum(apply(spec, p, xs)[0] * gs), params, x, g)


def _jax_associative(spec, params, x, g):
    """``lax.associative_scan`` of the layer's :math:`(a_t, b_t)` (the layer's own coefficients)."""
    import jax
    import jax.numpy as jnp

    def combine(earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a1 * a2, a2 * b1 + b2

    def loss(p, xs, gs):
        pre = xs @ p["weight_ih_l0"].T + p["bias_ih_l0"]
        a, b = spec.coefficients(pre, jnp)
        _, h = jax.lax.associative_scan(combine, (a, b), axis=0)
        return jnp.sum(h * gs)

    return _jax_compiled(loss, params, x, g)


def _torch_log_space(params, x, g, H):
    """The paper's log-space minGRU in eager torch with autograd (its own activation g: timing only)."""
    import torch
    import torch.nn.functional as F

    W = torch.from_numpy(params["weight_ih_l0"]).requires_grad_(True)
    b = torch.from_numpy(params["bias_ih_l0"]).requires_grad_(True)
    xs, gs = torch.from_numpy(x), torch.from_numpy(g)

    def log_g(v):
        return torch.where(v >= 0, torch.log(F.relu(v) + 0.5), -F.softplus(-v))

    def run():
        W.grad = b.grad = None
        k, h_tilde = (xs @ W.T + b).split(H, dim=-1)
        log_coeffs, log_z = -F.softplus(k), -F.softplus(-k)
        log_values = log_z + log_g(h_tilde)
        a_star = torch.cumsum(log_coeffs, dim=0)
        h = torch.exp(a_star + torch.logcumsumexp(log_values - a_star, dim=0))
        (h * gs).sum().backward()
        return {"weight_ih_l0": W.grad.numpy(), "bias_ih_l0": b.grad.numpy()}

    return run, None


def _contender(name, kind, run, memory):
    return Contender(name, kind, "cpu", run, memory=memory)


def _contenders(T, H, available):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(T, N, H)).astype(np.float32)
    g = rng.normal(size=(T, N, H)).astype(np.float32)
    made: list[tuple[Contender, str | None]] = []  # a contender, the cell whose parallel NumPy gradients it equals
    for name, cls in (("mingru", MinGRU), ("minlstm", MinLSTM)):
        specs = {scan: cls(H, H, bias=True, scan=scan) for scan in ("parallel", "sequential")}
        params = specs["parallel"].init(seed=0, like=x)
        for scan, spec in specs.items():
            made.append((_contender(f"{name} {scan} (numpy)", "ours", *_numpy(spec, params, x, g)), name))
            if "jax" in available:
                made.append((_contender(f"{name} {scan} (jax)", "ours", *_jax_ours(spec, params, x, g)), name))
        if "jax" in available:
            made.append((_contender(f"{name} jax.lax.associative_scan", "reference",
                                    *_jax_associative(specs["parallel"], params, x, g)), name))
        if name == "mingru" and "torch" in available:
            made.append((_contender("mingru log-space (torch eager)", "reference",
                                    *_torch_log_space(params, x, g, H)), None))
    for name, layer in (("gru", GRU), ("lstm", LSTM)):
        gated = layer(H, H)
        made.append((_contender(f"{name} (numpy)", "ours", *_numpy(gated, gated.init(seed=0, like=x), x, g)), None))
    return made


def run_minimal_bench(lengths=None, hidden=(64,), repeats: int = 3, threads: int | None = None, settle=None,
                      out=None) -> dict:
    """Time every contender at every (T, H) and print a table per configuration.

    ``settle`` is the pause before every timed run (default :data:`~.timing.SETTLE_S`).

    Returns
    -------
    dict
        ``{"rows": [{"T", "H", "contender", "median_s", "peak_bytes", "max_rel_grad_diff"}]}``;
        ``max_rel_grad_diff`` compares a contender's weight gradients with the
        parallel NumPy layer of the same cell (``None`` for another model).
    """
    out = sys.stdout if out is None else out
    available, _ = backends.discover(("jax", "torch"))
    restore = pin_threads(threads) if threads else (lambda: None)
    rows = []
    try:
        for H in hidden:
            for T in lengths or LENGTHS:
                made = _contenders(T, H, available)
                times, results = time_all([c for c, _ in made], repeats, SETTLE_S if settle is None else settle,
                                          stretch=False)
                print(f"minimal RNNs, forward + backward, N={N} D=H={H} T={T} float32", file=out)
                for c, cell in made:
                    base = None if cell is None else results[f"{cell} parallel (numpy)"]
                    diff = None if base is None else relative_error(results[c.name], base)
                    peak = (c.memory() if c.memory else {}).get("peak_bytes")
                    median = float(np.median(times[c.name]))
                    rows.append({"T": T, "H": H, "contender": c.name, "median_s": median, "peak_bytes": peak,
                                 "max_rel_grad_diff": diff})
                    print(f"  {c.name:34s} {median * 1e3:10.1f} ms  "
                          f"{'' if peak is None else f'{peak / 2**20:8.1f} MiB'}"
                          f"{'' if diff is None else f'  gradients within {diff:.1e}'}", file=out)
    finally:
        restore()
    return {"rows": rows}
