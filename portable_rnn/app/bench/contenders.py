"""The contenders that are this package's layer: on NumPy, torch, JAX (jitted) and CuPy, and its framework faces.

Each times ``loss = sum(outputs)`` -> gradients of one time-major,
unidirectional layer. ``numpy``, ``torch``, ``jax`` and ``cupy`` call the
public ``forward/backward`` by hand; the framework faces run the same
hand-written backward from inside the framework's own differentiation:

``jax.apply``
    ``jax.jit(jax.value_and_grad(loss))`` through :func:`portable_rnn.jax.apply`
    (a ``jax.custom_vjp``), as a JAX training step calls it.
``torch.module``
    :class:`portable_rnn.torch.RNN` / ``LSTM`` / ``GRU`` (default constructor
    arguments) with ``loss.backward()`` through autograd, exactly as the
    ``torch.nn`` reference is run.

The references they are compared with are in
:mod:`~portable_rnn.app.bench.references`; :func:`jax_contender` and
:func:`torch_autograd` are the harnesses both sides share, so a ratio compares
the layers and nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np

from ...engine import kernels as engine_kernels

from ... import backends
from .memory import cuda_memory, jax_memory, numpy_memory

if TYPE_CHECKING:  # for annotations only: torch is optional and imported where a contender runs
    import torch

__all__ = ["Contender", "Skip", "device_backend", "suffix", "torch_sync", "fwd_bwd", "jax_contender",
           "grads_of_value_and_grad", "torch_autograd", "ours_numpy", "ours_torch", "ours_jax", "ours_apply",
           "ours_torch_module", "ours_cupy"]


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


def suffix(name: str) -> str:
    """``""`` for a CPU backend name, else its device part with a colon (``":cuda"``, ``":gpu"``)."""
    _, _, device = name.partition(":")
    return f":{device}" if device else ""


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
            with engine_kernels.portable_only():
                return fwd_bwd(spec, params, x, _numpy_ones)
        return fwd_bwd(spec, params, x, _numpy_ones)

    return Contender("numpy:portable" if portable else "numpy", "ours", "cpu", run, grads=_grads_of_ours,
                     memory=numpy_memory(spec, params, x, portable=portable))


def ours_torch(case, spec, params, x, name="torch"):
    """Our layer on torch (``torch`` or ``torch:cuda``), synchronised after every run."""
    backend = device_backend(name)
    dev, sync = cast("torch.device", backend.device), torch_sync(backend.device)
    p = {k: backend.asarray(v) for k, v in params.items()}
    xt = backend.asarray(x)

    def run():
        r = fwd_bwd(spec, p, xt, _torch_ones)
        sync()
        return r

    return Contender(name, "ours", str(dev), run, group=dev.type, grads=_grads_of_ours,
                     memory=cuda_memory(dev, run, sync))


def jax_contender(label, kind, fn, params, x, name="jax", grads=None):
    """``jax.jit(fn)(params, x)`` on backend ``name`` (``jax`` or ``jax:gpu``), compiled before timing.

    Parameters
    ----------
    label : str
        The contender's name in the report.
    kind : {"ours", "reference"}
    fn : callable
        ``fn(params, x) -> result``, traced once.
    params, x : NumPy arrays
        Copied to the backend's device first, so no transfer is timed.
    name : str
        The backend.
    grads : callable, optional
        ``result -> dict of NumPy arrays`` for the correctness check.
    """
    import jax

    backend = device_backend(name)
    p = {k: backend.asarray(v) for k, v in params.items()}
    xj = backend.asarray(x)
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(p, xj).compile()
    compile_s = time.perf_counter() - start

    def run():
        return jax.block_until_ready(compiled(p, xj))

    return Contender(label, kind, str(backend.device), run, group="cpu" if name == "jax" else "cuda",
                     compile_s=compile_s, grads=grads, memory=jax_memory(compiled))


def grads_of_value_and_grad(result):
    """The check's dict from ``jax.value_and_grad(loss, argnums=(0, 1))``'s ``(loss, (d params, dx))``."""
    _, (gp, gx) = result
    return {"dx": backends.to_host(gx), **{k: backends.to_host(v) for k, v in gp.items()}}


def ours_jax(case, spec, params, x, name="jax"):
    """Our layer on JAX (``jax`` or ``jax:gpu``): forward and backward in one ``jax.jit``, compiled first."""
    import jax.numpy as jnp

    def fwd_bwd_jax(p, x):
        return fwd_bwd(spec, p, x, jnp.ones_like)

    return jax_contender(name, "ours", fwd_bwd_jax, params, x, name, grads=_grads_of_ours)


def ours_apply(case, spec, params, x, name="jax"):
    """``jax.value_and_grad`` of ``sum(out)`` through :func:`portable_rnn.jax.apply`, jitted (``jax.apply``)."""
    import jax
    import jax.numpy as jnp

    from ...jax import apply

    def loss(p, x):
        return jnp.sum(apply(spec, p, x)[0])

    return jax_contender(f"jax.apply{suffix(name)}", "ours", jax.value_and_grad(loss, argnums=(0, 1)),
                         params, x, name, grads=grads_of_value_and_grad)


def torch_autograd(label, kind, module_class, case, params, x, name="torch"):
    """``module_class(D, H)`` loaded with ``params``, forward + ``sum().backward()`` through autograd.

    ``x`` requires grad, so ``dx`` is computed too; gradients are reset to
    ``None`` before each run, as a training loop's ``zero_grad`` does.

    Parameters
    ----------
    label, kind :
        As for :func:`jax_contender`.
    module_class : type
        ``torch.nn.LSTM`` or :class:`portable_rnn.torch.LSTM` (and the other cells).
    case : Case
        Gives the sizes and the dtype the module is made with.
    params, x : NumPy arrays
        ``torch.nn``'s state_dict names; x is (T, N, D).
    name : {"torch", "torch:cuda"}
        The backend.
    """
    import torch

    backend = device_backend(name)
    dev, sync = cast("torch.device", backend.device), torch_sync(backend.device)
    module = module_class(case.D, case.H).to(device=dev, dtype=getattr(torch, case.dtype))
    module.load_state_dict({k: torch.asarray(v) for k, v in params.items()})
    xt = backend.asarray(x).requires_grad_(True)

    def run():
        module.zero_grad(set_to_none=True)
        xt.grad = None
        out, _ = module(xt)
        out.sum().backward()
        sync()
        return module, xt

    def grads(r):
        m, xg = r
        g = {k: backends.to_host(v.grad) for k, v in m.named_parameters()}
        g["dx"] = backends.to_host(xg.grad)
        return g

    return Contender(label, kind, str(dev), run, group=dev.type, grads=grads, memory=cuda_memory(dev, run, sync))


def ours_torch_module(case, spec, params, x, name="torch"):
    """:class:`portable_rnn.torch.<Layer>` through autograd (``torch.module``), run as ``torch.nn`` is."""
    from ... import torch as torch_faces

    return torch_autograd(f"torch.module{suffix(name)}", "ours", getattr(torch_faces, type(spec).__name__),
                          case, params, x, name)


def ours_cupy(case, spec, params, x, name="cupy"):
    """Our layer on CuPy (backend ``name``) in its device's context, synchronised on its stream after every run."""
    backend = device_backend(name)
    import cupy

    p = {k: backend.asarray(v) for k, v in params.items()}
    xc = backend.asarray(x)

    def run():
        with backend.context():  # CuPy makes some arrays on the current device whatever device= says
            r = fwd_bwd(spec, p, xc, cupy.ones_like)
            cupy.cuda.get_current_stream().synchronize()
        return r

    return Contender("cupy", "ours", "cuda", run, group="cuda", grads=_grads_of_ours)
