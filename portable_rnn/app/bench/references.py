"""What the bench compares our layer with: ``torch.nn``, ``jax.grad`` of a ``lax.scan`` layer, and the GEMM bound.

``torch.nn``
    ``torch.nn.RNN/LSTM/GRU`` with autograd (oneDNN/MKL on CPU, cuDNN on
    CUDA), loaded with the same weights; ``x`` requires grad, so it also
    computes ``dx``. Its gradients are the reference of the correctness check.
``jax.grad``
    ``jax.jit(jax.value_and_grad(loss))`` of a ``lax.scan`` layer with the
    same hoisted input projection (PyTorch's gate order, ``jax.nn.sigmoid``):
    what JAX's autodiff makes of the layer.
``gemm``
    The pure-GEMM bound: exactly the matmuls of the layer, timed alone into
    preallocated outputs, with NumPy's BLAS (``gemm``) and torch's
    (``gemm:torch``).
"""

from __future__ import annotations

from typing import cast

import numpy as np

from .contenders import (Contender, device_backend, grads_of_value_and_grad, jax_contender, suffix, torch_autograd,
                         torch_sync)

__all__ = ["torch_nn", "jax_reference_forward", "jax_lstm_scan", "jax_grad_fn", "jax_grad", "gemm_numpy",
           "gemm_torch"]


def torch_nn(case, spec, params, x, name="torch"):
    """``torch.nn.<Layer>`` with autograd on backend ``name`` (``torch`` or ``torch:cuda``)."""
    import torch

    return torch_autograd(f"torch.nn{suffix(name)}", "reference", getattr(torch.nn, type(spec).__name__),
                          case, params, x, name)


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

    return jax_lstm_scan(p, (h0, h0), x)[1]


def jax_lstm_scan(p, carry, x):
    """The reference LSTM from ``carry = (h, c)``: ``(final carry, outputs (T, N, H))``.

    Hoisted input projection, PyTorch's gate order, ``jax.nn.sigmoid``; the
    LSTM of :func:`jax_reference_forward`, and the segment the long-sequence
    bench rematerialises.
    """
    import jax
    import jax.numpy as jnp

    W_hh, H = p["weight_hh_l0"], p["weight_hh_l0"].shape[1]
    xw = x @ p["weight_ih_l0"].T + (p["bias_ih_l0"] + p["bias_hh_l0"])

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

    return jax.lax.scan(step, carry, xw)


def jax_grad_fn(cell):
    """``jax.value_and_grad`` of ``sum(jax_reference_forward(...))`` with respect to the parameters and ``x``.

    The loss comes back with the gradients, as a training step wants it and as
    :func:`~portable_rnn.app.bench.contenders.ours_apply` returns it, so the
    two do the same work; ``jax.grad`` is this minus the returned value.
    """
    import jax
    import jax.numpy as jnp

    def loss(p, x):
        return jnp.sum(jax_reference_forward(cell, p, x))

    return jax.value_and_grad(loss, argnums=(0, 1))


def jax_grad(case, spec, params, x, name="jax"):
    """The ``jax.grad`` reference on backend ``name`` (``jax`` or ``jax:gpu``), compiled before timing."""
    return jax_contender(f"jax.grad{suffix(name)}", "reference", jax_grad_fn(case.cell), params, x, name,
                         grads=grads_of_value_and_grad)


def _gemm_schedule(matmul, T, x2, W, U, h, dz, DZ, HP, *, empty):
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
    operands = _gemm_operands(case, lambda *shape: np.asarray(rng.standard_normal(shape), dtype=case.dtype))
    run = _gemm_schedule(np.matmul, case.T, *operands, empty=lambda *shape: np.empty(shape, case.dtype))
    return Contender("gemm", "bound", "cpu", run)


def gemm_torch(case, name="torch"):
    """The GEMM bound with torch's BLAS on backend ``name`` (``torch`` or ``torch:cuda``)."""
    import torch

    backend = device_backend(name)
    dev, sync = cast("torch.device", backend.device), torch_sync(backend.device)
    g = torch.Generator().manual_seed(2)
    dtype = getattr(torch, case.dtype)
    operands = _gemm_operands(case, lambda *shape: torch.randn(shape, generator=g, dtype=dtype).to(dev))
    schedule = _gemm_schedule(torch.matmul, case.T, *operands,
                              empty=lambda *shape: torch.empty(shape, dtype=dtype, device=dev))

    def run():
        schedule()
        sync()

    return Contender(f"gemm:torch{suffix(name)}", "bound", str(dev), run, group=dev.type)
