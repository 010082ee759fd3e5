"""The contenders that are this package's layer: on NumPy, torch, JAX (jitted) and CuPy.

Each times ``loss = sum(outputs)`` -> gradients of one time-major,
unidirectional layer through the public ``init/forward/backward``; the
references it is compared with are in :mod:`~portable_rnn.app.bench.references`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ... import _eager_fast, backends
from .memory import cuda_memory, jax_memory, numpy_memory

__all__ = ["Contender", "Skip", "device_backend", "torch_sync", "fwd_bwd", "ours_numpy", "ours_torch",
           "ours_jax", "ours_cupy"]


class Skip(Exception):
    """A contender that cannot run here (the message says why)."""


@dataclass
class Contender:
    """Something to time.

    Attributes
    ----------
    name : str
    kind : {"ours", "reference", "bound"}
    device : str
    run : callable
        ``() -> result``; returns once the work is done (synchronised on GPUs).
    group : {"cpu", "cuda"}
        Ratios compare contenders of one group.
    grads : callable, optional
        ``result -> dict of NumPy arrays`` (``dx`` and the parameter
        gradients), for the correctness check.
    compile_s : float, optional
    memory : callable, optional
        ``() -> dict`` of memory fields (:mod:`~portable_rnn.app.bench.memory`).
    """

    name: str
    kind: str
    device: str
    run: object
    group: str = "cpu"
    grads: object = None
    compile_s: float | None = None
    memory: object = None


def device_backend(name: str) -> backends.Backend:
    """:func:`portable_rnn.backends.resolve`, raising :class:`Skip` with its reason."""
    try:
        return backends.resolve(name)
    except backends.BackendError as error:
        raise Skip(str(error)) from None


def torch_sync(dev):
    """A function that waits for ``dev``'s queued work (nothing to wait for on the CPU).

    ``dev`` is named: a bare ``synchronize()`` waits for the *current* GPU only.
    """
    import torch

    return (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)


def fwd_bwd(spec, params, x, loss_grad):
    """Forward, then backward of ``loss = sum(out)``; ``loss_grad(out)`` is d loss / d out (ones)."""
    out, _, tape = spec.forward(params, x)
    return spec.backward(params, tape, loss_grad(out))


def _numpy_ones(out):
    """d(sum)/d(out) as autograd makes it: one 1 broadcast to ``out``'s shape (nothing filled)."""
    return np.broadcast_to(np.ones((), out.dtype), out.shape)


def _torch_ones(out):
    """d(sum)/d(out) as torch autograd makes it: ``ones(()).expand`` (nothing filled).

    A filled ``ones_like`` is a parallel torch op: it cost 3 ms at 200k elements
    next to spinning BLAS threads, and its own OpenMP workers then spin while the
    layer's NumPy BLAS wants the cores.
    """
    import torch

    return torch.ones((), dtype=out.dtype, device=out.device).expand(out.shape)


def _grads_of_ours(result):
    grads, dx, _ = result
    return {"dx": backends.to_host(dx), **{k: backends.to_host(v) for k, v in grads.items()}}


def ours_numpy(case, spec, params, x, *, portable=False):
    """Our layer on NumPy: the fast path, or with ``portable`` the portable code (``numpy:portable``)."""

    def run():
        if portable:
            with _eager_fast.portable_only():
                return fwd_bwd(spec, params, x, _numpy_ones)
        return fwd_bwd(spec, params, x, _numpy_ones)

    return Contender("numpy:portable" if portable else "numpy", "ours", "cpu", run, grads=_grads_of_ours,
                     memory=numpy_memory(spec, params, x, portable=portable))


def ours_torch(case, spec, params, x, name="torch"):
    """Our layer on torch (``torch`` or ``torch:cuda``), synchronised after every run."""
    backend = device_backend(name)
    dev, sync = backend.device, torch_sync(backend.device)
    p = {k: backend.asarray(v) for k, v in params.items()}
    xt = backend.asarray(x)

    def run():
        r = fwd_bwd(spec, p, xt, _torch_ones)
        sync()
        return r

    return Contender(name, "ours", str(dev), run, group=dev.type, grads=_grads_of_ours,
                     memory=cuda_memory(dev, run, sync))


def ours_jax(case, spec, params, x, name="jax"):
    """Our layer on JAX (``jax`` or ``jax:gpu``): forward and backward in one ``jax.jit``, compiled first."""
    import jax
    import jax.numpy as jnp

    backend = device_backend(name)
    p = {k: backend.asarray(v) for k, v in params.items()}
    xj = backend.asarray(x)

    def fwd_bwd_jax(p, x):
        return fwd_bwd(spec, p, x, jnp.ones_like)

    start = time.perf_counter()
    compiled = jax.jit(fwd_bwd_jax).lower(p, xj).compile()
    compile_s = time.perf_counter() - start

    def run():
        return jax.block_until_ready(compiled(p, xj))

    return Contender(name, "ours", str(backend.device), run, group="cpu" if name == "jax" else "cuda",
                     compile_s=compile_s, grads=_grads_of_ours, memory=jax_memory(compiled))


def ours_cupy(case, spec, params, x):
    """Our layer on CuPy, inside its device's context, synchronised on that device's stream after every run."""
    backend = device_backend("cupy")
    import cupy

    p = {k: backend.asarray(v) for k, v in params.items()}
    xc = backend.asarray(x)

    def run():
        with backend.context():  # CuPy makes some arrays on the current device whatever device= says
            r = fwd_bwd(spec, p, xc, cupy.ones_like)
            cupy.cuda.get_current_stream().synchronize()
        return r

    return Contender("cupy", "ours", "cuda", run, group="cuda", grads=_grads_of_ours)
