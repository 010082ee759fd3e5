"""What the bench compares our layer with: ``torch.nn``, ``jax.grad`` of a ``lax.scan`` layer, and the GEMM bound.

``torch.nn``
    ``torch.nn.RNN/LSTM/GRU`` with autograd (oneDNN/MKL on CPU, cuDNN on
    CUDA), loaded with the same weights; ``x`` requires grad, so it also
    computes ``dx``. Its gradients are the reference of the correctness check.
``jax.grad``
    ``jax.jit(jax.grad(loss))`` of a ``lax.scan`` layer with the same hoisted
    input projection (PyTorch's gate order, ``jax.nn.sigmoid``).
``gemm``
    The pure-GEMM bound: exactly the matmuls of the layer, timed alone into
    preallocated outputs, with NumPy's BLAS (``gemm``) and torch's
    (``gemm:torch``).
"""

from __future__ import annotations

import time

import numpy as np

from ... import backends
from .contenders import Contender, device_backend, torch_sync
from .memory import cuda_memory, jax_memory

__all__ = ["torch_nn", "jax_reference_forward", "jax_grad_fn", "jax_grad", "gemm_numpy", "gemm_torch"]


def _suffix(name: str) -> str:
    """``""`` for a CPU backend name, else its device part with a colon (``":cuda"``, ``":gpu"``)."""
    _, _, device = name.partition(":")
    return f":{device}" if device else ""


def torch_nn(case, spec, params, x, name="torch"):
    """``torch.nn.<Layer>`` with autograd on backend ``name`` (``torch`` or ``torch:cuda``)."""
    import torch

    backend = device_backend(name)
    dev, sync = backend.device, torch_sync(backend.device)
    module = getattr(torch.nn, type(spec).__name__)(case.D, case.H).to(device=dev, dtype=getattr(torch, case.dtype))
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

    return Contender(f"torch.nn{_suffix(name)}", "reference", str(dev), run, group=dev.type, grads=grads,
                     memory=cuda_memory(dev, run, sync))


def jax_reference_forward(cell, p, x):
    """``lax.scan`` layer (hoisted projection, PyTorch gate order): outputs (T, N, H)."""
    import jax
    import jax.numpy as jnp

    W_ih, W_hh = p["weight_ih_l0"], p["weight_hh_l0"]
    b_ih, b_hh = p["bias_ih_l0"], p["bias_hh_l0"]
    N, H = x.shape[1], W_hh.shape[1]
    h0 = jnp.zeros((N, H), x.dtype)
    if cell == "gru":
        xw = x @ W_ih.T + b_ih

        def step(h, xw_t):
            hw = h @ W_hh.T + b_hh
            r = jax.nn.sigmoid(xw_t[:, :H] + hw[:, :H])
            z = jax.nn.sigmoid(xw_t[:, H : 2 * H] + hw[:, H : 2 * H])
            n = jnp.tanh(xw_t[:, 2 * H :] + r * hw[:, 2 * H :])
            h = (1 - z) * n + z * h
            return h, h

        return jax.lax.scan(step, h0, xw)[1]
    xw = x @ W_ih.T + (b_ih + b_hh)
    if cell == "rnn":
        def step(h, xw_t):
            h = jnp.tanh(xw_t + h @ W_hh.T)
            return h, h

        return jax.lax.scan(step, h0, xw)[1]

    def step(carry, xw_t):
        h, c = carry
        z = xw_t + h @ W_hh.T
        i = jax.nn.sigmoid(z[:, :H])
        f = jax.nn.sigmoid(z[:, H : 2 * H])
        g = jnp.tanh(z[:, 2 * H : 3 * H])
        o = jax.nn.sigmoid(z[:, 3 * H :])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), h

    return jax.lax.scan(step, (h0, h0), xw)[1]


def jax_grad_fn(cell):
    """``jax.grad`` of ``sum(jax_reference_forward(...))`` with respect to the parameters and ``x``."""
    import jax
    import jax.numpy as jnp

    def loss(p, x):
        return jnp.sum(jax_reference_forward(cell, p, x))

    return jax.grad(loss, argnums=(0, 1))


def jax_grad(case, spec, params, x, name="jax"):
    """The ``jax.grad`` reference on backend ``name`` (``jax`` or ``jax:gpu``), compiled before timing."""
    import jax

    backend = device_backend(name)
    p = {k: backend.asarray(v) for k, v in params.items()}
    xj = backend.asarray(x)
    start = time.perf_counter()
    compiled = jax.jit(jax_grad_fn(case.cell)).lower(p, xj).compile()
    compile_s = time.perf_counter() - start

    def run():
        return jax.block_until_ready(compiled(p, xj))

    def grads(r):
        gp, gx = r
        return {"dx": backends.to_host(gx), **{k: backends.to_host(v) for k, v in gp.items()}}

    return Contender(f"jax.grad{_suffix(name)}", "reference", str(backend.device), run,
                     group="cpu" if name == "jax" else "cuda", compile_s=compile_s, grads=grads,
                     memory=jax_memory(compiled))


def _gemm_schedule(matmul, T, x2, W, U, h, dz, DZ, HP, empty):
    """The matmuls of one layer's forward + backward and nothing else: the GEMM bound.

    The input projection, T recurrent matmuls forward and T backward, then the
    input and weight gradients, each into a preallocated ``out=`` buffer made
    by ``empty(*shape)``. ``matmul`` is ``np.matmul`` or ``torch.matmul``.
    """
    TN, D, GH, N, H = x2.shape[0], x2.shape[1], W.shape[0], h.shape[0], h.shape[1]
    XW, hw, dh, dX = empty(TN, GH), empty(N, GH), empty(N, H), empty(TN, D)
    dWih, dWhh = empty(GH, D), empty(GH, H)
    WT, UT, DZT = W.T, U.T, DZ.T

    def run():
        matmul(x2, WT, out=XW)
        for _ in range(T):
            matmul(h, UT, out=hw)
        for _ in range(T):
            matmul(dz, U, out=dh)
        matmul(DZ, W, out=dX)
        matmul(DZT, x2, out=dWih)
        matmul(DZT, HP, out=dWhh)

    return run


def _gemm_operands(case, draw):
    """``(x2, W, U, h, dz, DZ, HP)`` of the case's shapes, each ``draw(*shape)``."""
    T, N, D, H, GH = case.T, case.N, case.D, case.H, case.G * case.H
    return draw(T * N, D), draw(GH, D), draw(GH, H), draw(N, H), draw(N, GH), draw(T * N, GH), draw(T * N, H)


def gemm_numpy(case):
    """The GEMM bound with NumPy's BLAS."""
    rng = np.random.default_rng(2)
    operands = _gemm_operands(case, lambda *shape: rng.standard_normal(shape).astype(case.dtype))
    run = _gemm_schedule(np.matmul, case.T, *operands, lambda *shape: np.empty(shape, case.dtype))
    return Contender("gemm", "bound", "cpu", run)


def gemm_torch(case, name="torch"):
    """The GEMM bound with torch's BLAS on backend ``name`` (``torch`` or ``torch:cuda``)."""
    import torch

    backend = device_backend(name)
    dev, sync = backend.device, torch_sync(backend.device)
    g = torch.Generator().manual_seed(2)
    dtype = getattr(torch, case.dtype)
    operands = _gemm_operands(case, lambda *shape: torch.randn(shape, generator=g, dtype=dtype).to(dev))
    schedule = _gemm_schedule(torch.matmul, case.T, *operands,
                              lambda *shape: torch.empty(shape, dtype=dtype, device=dev))

    def run():
        schedule()
        sync()

    return Contender(f"gemm:torch{_suffix(name)}", "bound", str(dev), run, group=dev.type)
