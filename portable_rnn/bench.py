r"""Benchmark: forward + backward of one recurrent layer, on every installed backend.

``python -m portable_rnn.bench`` (or :func:`main` with an argv list) times
``loss = sum(outputs)`` -> gradients of one time-major, unidirectional layer
(:class:`~portable_rnn.layers.RNN`, :class:`~portable_rnn.layers.LSTM`,
:class:`~portable_rnn.layers.GRU`: the public layers, ``init/forward/backward``)
against references in the same process:

``torch.nn``
    ``torch.nn.RNN/LSTM/GRU`` with autograd (oneDNN/MKL on CPU, cuDNN on CUDA),
    loaded with the same weights; ``x`` requires grad, so it also computes ``dx``.
``jax.grad``
    ``jax.jit(jax.grad(loss))`` of a ``lax.scan`` layer with the same hoisted
    input projection (PyTorch's gate order, ``jax.nn.sigmoid``).
``gemm``
    The pure-GEMM bound: exactly the matmuls of the layer, timed alone with
    preallocated outputs: the input projection ``X W_ih^T`` (one matmul), ``T``
    recurrent matmuls ``h W_hh^T`` forward, ``T`` matmuls ``dz W_hh`` backward,
    and ``dX = dZ W_ih``, ``dW_ih = dZ^T X``, ``dW_hh = dZ^T H``. NumPy's BLAS
    (``gemm``) and, when torch is benchmarked, torch's (``gemm:torch``).

Contenders named after a backend (``numpy``, ``jax``, ``torch``, ``torch:cuda``,
``cupy``, ``jax:gpu``) are this package's layer on that backend; JAX runs under
``jax.jit`` (forward and backward in one compiled function, compiled before
timing; the compile time is reported). On a CUDA machine the GPU contenders are
compared with ``torch.nn`` on CUDA (cuDNN) and synchronised after every run
(``torch.cuda.synchronize``, ``block_until_ready``, the CuPy stream).

Method
------
* Thread counts are pinned equal before anything is timed: ``--threads``
  (default: the CPUs this process may use) for torch (``torch.set_num_threads``)
  and NumPy's BLAS (``threadpoolctl``). XLA's CPU thread pool cannot be changed
  after JAX is imported; it is reported (``XLA_FLAGS``), not set.
  ``OPENBLAS_CORETYPE`` is reported and never changed.
* One warm-up run per contender (it also feeds the correctness check), then
  ``--repeats`` (default 5, at least 5 for the full bench) rounds; every round
  runs every contender once, interleaved, starting at a different contender
  each round, with the garbage collector paused. The median is reported.
  Every timed run starts after a pause (``--settle``, default 0.2 s): BLAS and
  OpenMP worker threads spin for ~0.1 s after a call, and back to back, each
  library's spinning threads slowed the next contender by up to 1.5x. A run
  shorter than the pause is preceded by one untimed run of its own, so that it
  does not pay for waking its own threads.
  Configurations whose runs all take under 0.1 s get three times the rounds
  (their medians moved by up to 30% between runs on a shared 2-core machine).
* GFLOP/s counts the matmul FLOPs only:
  :math:`6\,T N G H (D + H)` (forward projection and recurrence, backward
  ``dX``, ``dW_ih``, recurrence and ``dW_hh``; G = 1, 4, 3 gates).
* Peak memory of NumPy contenders: ``tracemalloc`` (NumPy reports its buffers
  to it) over one forward + backward, counting only what the calls allocate
  (the input, the parameters and the loss gradient ``d_out`` already exist). ``tape_bytes`` is what the tape
  of the forward pass holds beyond the input (unique buffers: states, gate
  values, masks); ``peak/tape`` is the ratio, and ``peak/(tape+grads)`` also
  counts the gradients the backward must return. The memory target is stated on
  the latter: the returned ``dx`` alone is D/H of an RNN's tape, so no
  implementation gets ``peak/tape`` near 1 for every cell; what an
  implementation controls is its scratch on top of the tape and the results. For JAX the bytes XLA plans
  for the compiled function (``memory_analysis``: temporaries + outputs); for
  torch on CUDA ``torch.cuda.max_memory_allocated``; ``null`` elsewhere.
* Correctness: each contender's gradients from its warm-up run are compared
  with torch.nn's (``err``: max abs difference / max abs value, over dx and
  all parameter gradients).

JSON (``--json FILE``)
----------------------
``schema``
    ``"portable_rnn.bench/1"``.
``machine``
    ``cpu``, ``cores``, ``threads``, ``platform``, ``python``, ``versions``
    (library -> version), ``blas`` (threadpoolctl: ``internal_api``,
    ``architecture`` = the BLAS kernel that ran, ``num_threads``, ``version``),
    ``env`` (``OPENBLAS_CORETYPE``, ``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``, ``XLA_FLAGS``, ...),
    ``numpy_simd`` (the SIMD extensions NumPy found), ``elementwise`` (dtype ->
    ``tanh_ns``, ``exp_ns``, ``multiply_ns``: NumPy's cost per element on one
    thread, see :func:`elementwise_costs`),
    ``load_before``/``load_after`` (1-minute load average), ``cuda``.
``settings``
    ``quick``, ``repeats``, ``threads``, ``backends``, ``cells``, ``configs``.
``results``
    One entry per (cell, config): ``cell``, ``N``, ``T``, ``D``, ``H``,
    ``dtype``, ``flops``, and ``contenders``: name -> ``{"kind": "ours" |
    "reference" | "bound", "device", "median_s", "times_s", "gflops",
    "compile_s", "peak_bytes", "tape_bytes", "peak_over_tape",
    "peak_over_tape_and_grads", "err"}`` (unknown fields are ``null``),
    ``ratios``: ``"A/B"`` -> median ratio, and ``skipped``: name -> reason.
``compile_vs_T``
    JAX compile times (``jax.jit(...).lower().compile()``) of our LSTM
    forward + backward and of the ``jax.grad`` reference at (1, T, 32, 64),
    for several T.
``targets``
    The goals of the performance issue, each ``{"name", "value", "limit",
    "met"}`` (``met`` is ``null`` when not measured).

Nothing here asserts a timing; the numbers are for reading.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

__all__ = ["main", "run", "add_arguments", "run_args", "CONFIGS", "QUICK_CONFIGS"]

SCHEMA = "portable_rnn.bench/1"

#: The configurations of the performance issue: (N, T, D, H, dtype).
CONFIGS = [
    (64, 100, 128, 256, "float32"),
    (32, 50, 64, 128, "float32"),
    (1, 1000, 32, 64, "float32"),
    (256, 50, 512, 512, "float32"),
    (64, 100, 128, 256, "float64"),
]
#: Tiny configurations for ``--quick`` (CI): a few seconds in all.
QUICK_CONFIGS = [(4, 12, 8, 16, "float32")]

CELLS = ("lstm", "gru", "rnn")
BACKENDS = ("numpy", "jax", "torch", "torch:cuda", "cupy", "jax:gpu")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
TORCH_MODULES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
#: Targets of the performance issue (ratios are medians measured in one run).
TARGET_CONFIGS = [(64, 100, 128, 256), (256, 50, 512, 512)]


@dataclass(frozen=True)
class Case:
    cell: str
    N: int
    T: int
    D: int
    H: int
    dtype: str

    @property
    def G(self) -> int:
        return GATES[self.cell]

    @property
    def flops(self) -> int:
        return 6 * self.T * self.N * self.G * self.H * (self.D + self.H)

    @property
    def shape(self) -> tuple:
        return (self.N, self.T, self.D, self.H)


class Skip(Exception):
    """A contender that cannot run here (the message says why)."""


@dataclass
class Contender:
    name: str
    kind: str  # "ours", "reference" or "bound"
    device: str
    run: object  # () -> result, synchronised
    group: str = "cpu"  # ratios compare contenders of one group (cpu / cuda)
    grads: object = None  # result -> dict of numpy arrays, for the correctness check
    compile_s: float | None = None
    memory: object = None  # () -> dict of memory fields


# --------------------------------------------------------------------------- inputs


def _host_inputs(case: Case, seed: int = 0):
    """Parameters (torch.nn names) and x as NumPy arrays of the case's dtype."""
    from .layers import GRU, LSTM, RNN

    spec = {"rnn": RNN, "lstm": LSTM, "gru": GRU}[case.cell](case.D, case.H)
    params = {k: np.asarray(v) for k, v in spec.init(seed, dtype=case.dtype).items()}
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((case.T, case.N, case.D)).astype(case.dtype)
    return spec, params, x


def _grads_of_ours(result, to_numpy):
    grads, dx, _ = result
    out = {"dx": to_numpy(dx)}
    out.update({k: to_numpy(v) for k, v in grads.items()})
    return out


def _rel_err(got: dict, ref: dict) -> float:
    worst = 0.0
    for key, r in ref.items():
        if key not in got:
            continue
        r = np.asarray(r, dtype=np.float64)
        g = np.asarray(got[key], dtype=np.float64)
        scale = max(float(np.max(np.abs(r), initial=0.0)), 1e-300)
        worst = max(worst, float(np.max(np.abs(g - r), initial=0.0)) / scale)
    return worst


def _unique_nbytes(arrays) -> int:
    seen, total = set(), 0
    for a in arrays:
        if a is None:
            continue
        root = a
        while getattr(root, "base", None) is not None:
            root = root.base
        if id(root) in seen:
            continue
        seen.add(id(root))
        total += int(getattr(root, "nbytes", 0))
    return total


def _leaves(tree):
    if isinstance(tree, (tuple, list)):
        for t in tree:
            yield from _leaves(t)
    elif tree is not None:
        yield tree


# --------------------------------------------------------------------------- contenders


def _ours_numpy(case, spec, params, x, *, portable=False):
    from . import _eager_fast

    def run():
        if portable:
            with _eager_fast.portable_only():
                return _fwd_bwd(spec, params, x, _numpy_ones)
        return _fwd_bwd(spec, params, x, _numpy_ones)

    def memory():
        _, _, tape = spec.forward(params, x)
        engine_tape = tape.layers[0][0]
        tape_bytes = _unique_nbytes(
            list(_leaves(engine_tape.states)) + list(_leaves(engine_tape.cell_tape)) + [engine_tape.mask]
        )
        del tape, engine_tape
        d_out = np.ones((case.T, case.N, case.H), dtype=case.dtype)  # the loss's gradient: an input
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            with contextlib.ExitStack() as stack:
                if portable:
                    stack.enter_context(_eager_fast.portable_only())
                out, _, tape = spec.forward(params, x)
                grads, dx, d0 = spec.backward(params, tape, d_out)
                del out, tape
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        grad_bytes = _unique_nbytes(list(grads.values()) + [dx] + list(_leaves(d0)))
        return {
            "peak_bytes": int(peak),
            "tape_bytes": int(tape_bytes),
            "peak_over_tape": peak / tape_bytes if tape_bytes else None,
            "peak_over_tape_and_grads": peak / (tape_bytes + grad_bytes),
        }

    return Contender(
        "numpy:portable" if portable else "numpy", "ours", "cpu", run,
        grads=lambda r: _grads_of_ours(r, np.asarray), memory=memory,
    )


def _fwd_bwd(spec, params, x, loss_grad):
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


def _torch_device(name):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise Skip("torch: no CUDA device")
    return torch.device(name)


def _torch_sync(device):
    import torch

    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _cuda_memory(dev, run, sync):
    """Peak CUDA memory of one run (``torch.cuda.max_memory_allocated``); None on CPU."""
    if dev.type != "cuda":
        return None
    import torch

    def memory():
        sync()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        run()
        return {"peak_bytes": int(torch.cuda.max_memory_allocated(dev) - base)}

    return memory


def _ours_torch(case, spec, params, x, device_name="cpu"):
    import torch

    dev = _torch_device(device_name)
    sync = _torch_sync(dev)
    p = {k: torch.asarray(v, device=dev) for k, v in params.items()}
    xt = torch.asarray(x, device=dev)

    def run():
        r = _fwd_bwd(spec, p, xt, _torch_ones)
        sync()
        return r

    name = "torch" if dev.type == "cpu" else f"torch:{dev.type}"
    return Contender(name, "ours", str(dev), run, group=dev.type,
                     grads=lambda r: _grads_of_ours(r, lambda a: a.detach().cpu().numpy()),
                     memory=_cuda_memory(dev, run, sync))


def _torch_nn(case, spec, params, x, device_name="cpu"):
    import torch

    dev = _torch_device(device_name)
    sync = _torch_sync(dev)
    dtype = getattr(torch, case.dtype)
    module = getattr(torch.nn, TORCH_MODULES[case.cell])(case.D, case.H).to(device=dev, dtype=dtype)
    module.load_state_dict({k: torch.asarray(v) for k, v in params.items()})
    xt = torch.asarray(x, device=dev).requires_grad_(True)

    def run():
        module.zero_grad(set_to_none=True)
        xt.grad = None
        out, _ = module(xt)
        out.sum().backward()
        sync()
        return module, xt

    def grads(r):
        m, xg = r
        g = {k: v.grad.detach().cpu().numpy() for k, v in m.named_parameters()}
        g["dx"] = xg.grad.detach().cpu().numpy()
        return g

    name = "torch.nn" if dev.type == "cpu" else f"torch.nn:{dev.type}"
    return Contender(name, "reference", str(dev), run, group=dev.type, grads=grads,
                     memory=_cuda_memory(dev, run, sync))


def _jax_device(platform_name):
    import jax

    try:
        devices = jax.devices(platform_name)
    except RuntimeError as error:
        raise Skip(f"jax: no {platform_name} device ({error})") from None
    if not devices:
        raise Skip(f"jax: no {platform_name} device")
    return devices[0]


def _jax_memory(compiled):
    def memory():
        try:
            m = compiled.memory_analysis()
            return {"peak_bytes": int(m.temp_size_in_bytes + m.output_size_in_bytes)}
        except Exception:  # not every XLA backend reports it
            return {}

    return memory


def _ours_jax(case, spec, params, x, platform_name="cpu"):
    import jax
    import jax.numpy as jnp

    dev = _jax_device(platform_name)
    p = jax.device_put({k: jnp.asarray(v) for k, v in params.items()}, dev)
    xj = jax.device_put(jnp.asarray(x), dev)

    def fwd_bwd(p, x):
        return _fwd_bwd(spec, p, x, jnp.ones_like)

    start = time.perf_counter()
    compiled = jax.jit(fwd_bwd).lower(p, xj).compile()
    compile_s = time.perf_counter() - start

    def run():
        return jax.block_until_ready(compiled(p, xj))

    name = "jax" if platform_name == "cpu" else "jax:gpu"
    group = "cpu" if platform_name == "cpu" else "cuda"
    return Contender(name, "ours", str(dev), run, group=group, compile_s=compile_s,
                     grads=lambda r: _grads_of_ours(r, np.asarray), memory=_jax_memory(compiled))


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


def _jax_grad_fn(cell):
    import jax
    import jax.numpy as jnp

    def loss(p, x):
        return jnp.sum(jax_reference_forward(cell, p, x))

    return jax.grad(loss, argnums=(0, 1))


def _jax_ref(case, spec, params, x, platform_name="cpu"):
    import jax
    import jax.numpy as jnp

    dev = _jax_device(platform_name)
    p = jax.device_put({k: jnp.asarray(v) for k, v in params.items()}, dev)
    xj = jax.device_put(jnp.asarray(x), dev)
    start = time.perf_counter()
    compiled = jax.jit(_jax_grad_fn(case.cell)).lower(p, xj).compile()
    compile_s = time.perf_counter() - start

    def run():
        return jax.block_until_ready(compiled(p, xj))

    def grads(r):
        gp, gx = r
        g = {k: np.asarray(v) for k, v in gp.items()}
        g["dx"] = np.asarray(gx)
        return g

    name = "jax.grad" if platform_name == "cpu" else "jax.grad:gpu"
    group = "cpu" if platform_name == "cpu" else "cuda"
    return Contender(name, "reference", str(dev), run, group=group, compile_s=compile_s,
                     grads=grads, memory=_jax_memory(compiled))


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


def _gemm_numpy(case):
    T, N, D, H, GH = case.T, case.N, case.D, case.H, case.G * case.H
    rng = np.random.default_rng(2)

    def r(*shape):
        return rng.standard_normal(shape).astype(case.dtype)

    x2, W, U, h, dz, DZ, HP = r(T * N, D), r(GH, D), r(GH, H), r(N, H), r(N, GH), r(T * N, GH), r(T * N, H)

    def e(*shape):
        return np.empty(shape, case.dtype)

    return Contender("gemm", "bound", "cpu", _gemm_schedule(np.matmul, T, x2, W, U, h, dz, DZ, HP, e))


def _gemm_torch(case, device_name="cpu"):
    import torch

    dev = _torch_device(device_name)
    sync = _torch_sync(dev)
    T, N, D, H, GH = case.T, case.N, case.D, case.H, case.G * case.H
    g = torch.Generator().manual_seed(2)
    dtype = getattr(torch, case.dtype)

    def r(*shape):
        return torch.randn(shape, generator=g, dtype=dtype).to(dev)

    x2, W, U, h, dz, DZ, HP = r(T * N, D), r(GH, D), r(GH, H), r(N, H), r(N, GH), r(T * N, GH), r(T * N, H)

    def e(*shape):
        return torch.empty(shape, dtype=dtype, device=dev)

    schedule = _gemm_schedule(torch.matmul, T, x2, W, U, h, dz, DZ, HP, e)

    def run():
        schedule()
        sync()

    name = "gemm:torch" if dev.type == "cpu" else f"gemm:torch:{dev.type}"
    return Contender(name, "bound", str(dev), run, group=dev.type)


def _ours_cupy(case, spec, params, x):
    try:
        import cupy
    except ImportError:
        raise Skip("cupy: not installed") from None
    try:
        (cupy.zeros(1) + 1).get()
    except Exception as error:  # imports without a GPU, fails at first use
        raise Skip(f"cupy: no CUDA device ({type(error).__name__})") from None
    p = {k: cupy.asarray(v) for k, v in params.items()}
    xc = cupy.asarray(x)

    def run():
        r = _fwd_bwd(spec, p, xc, cupy.ones_like)
        cupy.cuda.get_current_stream().synchronize()
        return r

    return Contender("cupy", "ours", "cuda", run, group="cuda",
                     grads=lambda r: _grads_of_ours(r, cupy.asnumpy))


def _contenders(case, backends, portable, skipped):
    """Build every contender for ``case``; record the ones that cannot run."""
    spec, params, x = _host_inputs(case)
    want = set(backends)
    builders = []
    if "numpy" in want:
        builders.append(("numpy", lambda: _ours_numpy(case, spec, params, x)))
        if portable:
            builders.append(("numpy:portable", lambda: _ours_numpy(case, spec, params, x, portable=True)))
    if "jax" in want:
        builders.append(("jax", lambda: _ours_jax(case, spec, params, x)))
    if "torch" in want:
        builders.append(("torch", lambda: _ours_torch(case, spec, params, x)))
    if "torch:cuda" in want:
        builders.append(("torch:cuda", lambda: _ours_torch(case, spec, params, x, "cuda")))
    if "cupy" in want:
        builders.append(("cupy", lambda: _ours_cupy(case, spec, params, x)))
    if "jax:gpu" in want:
        builders.append(("jax:gpu", lambda: _ours_jax(case, spec, params, x, "gpu")))
    cpu = bool(want & {"numpy", "jax", "torch"})
    cuda = bool(want & {"torch:cuda", "cupy", "jax:gpu"})
    if cpu:
        builders.append(("torch.nn", lambda: _torch_nn(case, spec, params, x)))
        if "jax" in want:
            builders.append(("jax.grad", lambda: _jax_ref(case, spec, params, x)))
        builders.append(("gemm", lambda: _gemm_numpy(case)))
        if "torch" in want:
            builders.append(("gemm:torch", lambda: _gemm_torch(case)))
    if cuda:
        builders.append(("torch.nn:cuda", lambda: _torch_nn(case, spec, params, x, "cuda")))
        if "jax:gpu" in want:
            builders.append(("jax.grad:gpu", lambda: _jax_ref(case, spec, params, x, "gpu")))
        builders.append(("gemm:torch:cuda", lambda: _gemm_torch(case, "cuda")))
    out = []
    for name, build in builders:
        try:
            out.append(build())
        except Skip as why:
            skipped[name] = str(why)
        except ImportError as error:
            skipped[name] = f"{name.split(':')[0].split('.')[0]}: not installed ({error})"
    return out


# --------------------------------------------------------------------------- timing


#: Seconds to pause before each timed run (full bench): BLAS and OpenMP worker threads
#: spin for ~0.1 s after a call, and a contender started while another library's threads
#: still spin on the same cores measured up to 1.5x slower (torch.nn after NumPy). After
#: the pause a contender's own threads are asleep, which cost a short run up to 1.4x, so
#: a run shorter than the pause is preceded by one untimed run of its own.
SETTLE_S = 0.2


#: When every contender's first timed run is shorter than this, the configuration gets
#: :data:`SHORT_ROUNDS_FACTOR` times the rounds: on a shared 2-core machine the medians of
#: such short runs moved by up to 30%.
SHORT_S = 0.1
SHORT_ROUNDS_FACTOR = 3


def _time_all(contenders, repeats, settle=0.0):
    """Warm up each contender once, then ``repeats`` interleaved rounds; returns times.

    With ``settle``, every timed run follows a pause of that many seconds, and a
    run shorter than the pause follows one untimed run of itself (:data:`SETTLE_S`).
    When every contender's first timed run took under :data:`SHORT_S`, the
    rounds are multiplied by :data:`SHORT_ROUNDS_FACTOR`.
    """
    results, warm_s = {}, {}
    for c in contenders:
        start = time.perf_counter()
        results[c.name] = c.run()
        warm_s[c.name] = time.perf_counter() - start
    times = {c.name: [] for c in contenders}
    n = len(contenders)
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        r, rounds = 0, repeats
        while r < rounds:
            for j in range(n):
                c = contenders[(r + j) % n]
                if settle:
                    time.sleep(settle)
                    if warm_s[c.name] < settle:
                        c.run()
                start = time.perf_counter()
                c.run()
                times[c.name].append(time.perf_counter() - start)
            if r == 0 and n and max(t[0] for t in times.values()) < SHORT_S:
                rounds = repeats * SHORT_ROUNDS_FACTOR
            r += 1
    finally:
        if enabled:
            gc.enable()
    return times, results


def _measure(case, backends, repeats, portable, check, settle):
    skipped = {}
    contenders = _contenders(case, backends, portable, skipped)
    times, warm = _time_all(contenders, repeats, settle)
    ref = None
    if check:
        for c in contenders:
            if c.name.startswith("torch.nn") and c.grads is not None:
                ref = c.grads(warm[c.name])
                break
    entry = {"cell": case.cell, "N": case.N, "T": case.T, "D": case.D, "H": case.H,
             "dtype": case.dtype, "flops": case.flops, "contenders": {}, "ratios": {},
             "skipped": skipped}
    for c in contenders:
        med = statistics.median(times[c.name])
        info = {"kind": c.kind, "device": c.device, "group": c.group, "median_s": med,
                "times_s": times[c.name], "gflops": case.flops / med / 1e9,
                "compile_s": c.compile_s, "peak_bytes": None, "tape_bytes": None,
                "peak_over_tape": None, "peak_over_tape_and_grads": None, "err": None}
        if ref is not None and c.grads is not None and not c.name.startswith("torch.nn"):
            info["err"] = _rel_err(c.grads(warm[c.name]), ref)
        if c.memory is not None:
            info.update(c.memory())
        entry["contenders"][c.name] = info
    del warm
    med = {name: v["median_s"] for name, v in entry["contenders"].items()}
    groups = {name: v["group"] for name, v in entry["contenders"].items()}
    for name, v in entry["contenders"].items():
        if v["kind"] != "ours":
            continue
        g = groups[name]
        refs = ["torch.nn" if g == "cpu" else f"torch.nn:{g}",
                "jax.grad" if g == "cpu" else "jax.grad:gpu",
                "gemm" if g == "cpu" else f"gemm:torch:{g}"]
        if name == "torch":
            refs.append("gemm:torch")
        for r in refs:
            if r in med and (not r.startswith("jax.grad") or name.startswith("jax")):
                entry["ratios"][f"{name}/{r}"] = med[name] / med[r]
    return entry


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _versions(backends):
    out = {"numpy": np.__version__}
    libs = ["array_api_compat", "threadpoolctl", "torch", "jax", "jaxlib"]
    if "cupy" in backends:
        libs.append("cupy")
    for lib in libs:
        try:
            out[lib] = getattr(importlib.import_module(lib), "__version__", None)
        except Exception:
            out[lib] = None
    return out


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed: BLAS kernel unknown"}]
    keep = ("user_api", "internal_api", "prefix", "architecture", "num_threads", "version",
            "threading_layer")
    return [{k: d.get(k) for k in keep if k in d} for d in threadpool_info()]


def _cuda_info():
    try:
        import torch

        if torch.cuda.is_available():
            return {"device": torch.cuda.get_device_name(0), "cudnn": torch.backends.cudnn.version()}
    except ImportError:
        pass
    return None


def _simd_found():
    """The SIMD extensions NumPy found on this CPU (its dispatch picks kernels from them)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # NumPy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return None
    return sorted(k for k, v in __cpu_features__.items() if v and k.startswith(("AVX", "FMA", "SSE4", "ASIMD", "SVE")))


def elementwise_costs(size=1 << 16, repeats=20):
    """NumPy's single-thread cost per element (ns) of the elementwise ops the cells use.

    ``tanh`` and ``exp`` are where machines differ most: NumPy dispatches them to
    SIMD kernels on some CPUs and runs scalar code on others (about 0.4 vs 4 ns
    per float32 ``tanh``), which moves the elementwise share of a layer by
    several times between machines with the same GEMM speed.
    """
    out = {}
    for dtype in ("float32", "float64"):
        a = np.linspace(-4, 4, size, dtype=dtype)
        b = np.empty_like(a)
        costs = {}
        for name, call in (("tanh", lambda: np.tanh(a, out=b)), ("exp", lambda: np.exp(a, out=b)),
                           ("multiply", lambda: np.multiply(a, a, out=b))):
            call()
            best = min(_timed(call) for _ in range(repeats))
            costs[f"{name}_ns"] = round(best / size * 1e9, 3)
        out[dtype] = costs
    return out


def _timed(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def machine_info(backends, threads):
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                          "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "XLA_FLAGS")}
    return {
        "cpu": _cpu_model(), "cores": _cores(), "threads": threads,
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": _versions(backends), "blas": _blas_info(), "env": env,
        "numpy_simd": _simd_found(), "elementwise": elementwise_costs(),
        "xla_threads": "not settable after import; XLA_FLAGS=" + repr(env["XLA_FLAGS"]),
        "cuda": _cuda_info(),
    }


def _pin_threads(threads):
    """Pin torch's and NumPy's BLAS thread counts; returns a function that restores them."""
    undo = []
    try:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        undo.append(lambda: torch.set_num_threads(before))
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=threads, user_api="blas")
        undo.append(limiter.restore_original_limits)
    except ImportError:
        pass

    def restore():
        for fn in reversed(undo):
            fn()

    return restore


# --------------------------------------------------------------------------- compile study


def compile_vs_T(steps=(10, 100, 1000), N=1, D=32, H=64, dtype="float32"):
    """Compile times of our jitted LSTM forward + backward and of the jax.grad reference."""
    import jax
    import jax.numpy as jnp

    rows = []
    for T in steps:
        case = Case("lstm", N, T, D, H, dtype)
        spec, params, x = _host_inputs(case)
        p = {k: jnp.asarray(v) for k, v in params.items()}
        xj = jnp.asarray(x)

        def fwd_bwd(p, x, spec=spec):
            return _fwd_bwd(spec, p, x, jnp.ones_like)

        row = {"T": T}
        for name, fn in (("ours", fwd_bwd), ("jax.grad", _jax_grad_fn("lstm"))):
            start = time.perf_counter()
            jax.jit(fn).lower(p, xj).compile()
            row[name] = time.perf_counter() - start
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- targets


def _targets(results, compile_rows):
    out = []

    def entry(name, value, limit):
        out.append({"name": name, "value": value, "limit": limit,
                    "met": None if value is None else bool(value <= limit)})

    issue = {tuple(c) for c in CONFIGS}
    for r in results:
        cell, N, T, D, H, dtype = (r[k] for k in ("cell", "N", "T", "D", "H", "dtype"))
        if (N, T, D, H, dtype) not in issue:
            continue  # targets are stated for the issue's configurations only
        tag = f"{cell} ({N},{T},{D},{H}) {dtype}"
        ratios = r["ratios"]
        if (N, T, D, H) in TARGET_CONFIGS:
            if "numpy/torch.nn" in ratios:
                entry(f"numpy/torch.nn {tag}", ratios["numpy/torch.nn"], 1.0)
            if "numpy/gemm" in ratios:
                entry(f"numpy/gemm {tag}", ratios["numpy/gemm"], 1.25)
        if "jax/jax.grad" in ratios:
            entry(f"jax/jax.grad {tag}", ratios["jax/jax.grad"], 1.0)
        if (N, T, D, H) == (1, 1000, 32, 64) and "jax/torch.nn" in ratios:
            entry(f"jax/torch.nn {tag}", ratios["jax/torch.nn"], 1.0)
        if "torch/torch.nn" in ratios:
            entry(f"torch/torch.nn {tag}", ratios["torch/torch.nn"], 1.2)
        c = r["contenders"].get("numpy")
        if c and c.get("peak_over_tape_and_grads") is not None:
            # The returned gradients are alive at the peak whatever the implementation
            # (dx alone is D/H of an RNN's tape), so the 1.2x budget is for the scratch
            # on top of the tape and the results.
            entry(f"numpy peak/(tape+grads) {tag}", c["peak_over_tape_and_grads"], 1.2)
    if compile_rows:
        big = max(compile_rows, key=lambda row: row["T"])
        small = min(compile_rows, key=lambda row: row["T"])
        entry(f"jax compile s at T={big['T']}", big["ours"], 3.0)
        entry(f"jax compile T={big['T']}/T={small['T']} (flat in T)", big["ours"] / small["ours"], 1.5)
    return out


# --------------------------------------------------------------------------- driver


def _parse_config(text):
    try:
        shape, _, dtype = text.partition(":")
        N, T, D, H = (int(v) for v in shape.lower().split("x"))
        dtype = dtype or "float32"
        if dtype not in ("float32", "float64") or min(N, T, D, H) < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad config {text!r}: expected NxTxDxH[:float32|float64], e.g. 64x100x128x256:float32"
        ) from None
    return (N, T, D, H, dtype)


def _available_backends():
    """Installed backends (by import only; devices are probed when contenders are built)."""
    names = ["numpy"]
    for lib, name in (("jax", "jax"), ("torch", "torch")):
        try:
            importlib.import_module(lib)
            names.append(name)
        except ImportError:
            pass
    return names


def run(*, configs=None, cells=CELLS, backends=None, repeats=5, threads=None, quick=False,
        portable=False, check=True, compile_study=None, settle=None, out=None):
    """Run the benchmark and return the JSON-able report (see the module docstring).

    Parameters
    ----------
    configs : list of (N, T, D, H, dtype), optional
        Default :data:`CONFIGS` (:data:`QUICK_CONFIGS` when ``quick``).
    cells : iterable of {"lstm", "gru", "rnn"}
    backends : iterable of str, optional
        From :data:`BACKENDS`; default every installed CPU backend, plus the
        CUDA ones when torch sees a GPU.
    repeats : int
        Timed rounds (median reported).
    threads : int, optional
        Threads for torch and NumPy's BLAS; default the usable CPUs.
    quick : bool
        Tiny configurations, no compile study.
    portable : bool
        Also time the NumPy portable path (``numpy:portable``).
    check : bool
        Compare gradients with torch.nn.
    compile_study : bool, optional
        JAX compile time against T; default on unless ``quick``.
    settle : float, optional
        Pause in seconds before every timed run; default :data:`SETTLE_S`, 0 when ``quick``.
    out : file, optional
        Where the tables go (default ``sys.stdout``); ``None`` output with ``out=False``.
    """
    out = sys.stdout if out is None else out
    say = (lambda *a: None) if out is False else (lambda *a: print(*a, file=out, flush=True))
    configs = list(configs or (QUICK_CONFIGS if quick else CONFIGS))
    if backends is None:
        backends = _available_backends()
        cuda = _cuda_info()
        if cuda is not None:
            backends += ["torch:cuda", "cupy", "jax:gpu"]
    backends = list(backends)
    threads = threads or _cores()
    settle = (0.0 if quick else SETTLE_S) if settle is None else settle
    restore_x64 = None
    if any(b.startswith("jax") for b in backends) and any(c[4] == "float64" for c in configs):
        try:
            import jax

            x64 = bool(jax.config.jax_enable_x64)
            jax.config.update("jax_enable_x64", True)
            restore_x64 = lambda: jax.config.update("jax_enable_x64", x64)  # noqa: E731
        except ImportError:
            pass
    restore_threads = _pin_threads(threads)
    try:
        return _run(configs, cells, backends, repeats, threads, quick, portable, check, compile_study,
                    settle, say)
    finally:
        restore_threads()
        if restore_x64 is not None:
            restore_x64()


def _run(configs, cells, backends, repeats, threads, quick, portable, check, compile_study, settle, say):
    report = {
        "schema": SCHEMA,
        "machine": machine_info(backends, threads),
        "settings": {"quick": quick, "repeats": repeats, "threads": threads, "settle_s": settle,
                     "backends": backends,
                     "cells": list(cells), "configs": [list(c) for c in configs]},
        "results": [],
        "compile_vs_T": [],
        "targets": [],
    }
    report["machine"]["load_before"] = _load()
    m = report["machine"]
    say(f"machine: {m['cpu']}, {m['cores']} cores, {threads} threads pinned (torch, BLAS); "
        f"load {m['load_before']}")
    for b in m["blas"]:
        if b.get("user_api") == "blas":
            say(f"BLAS: {b.get('internal_api')} {b.get('version')} kernel={b.get('architecture')} "
                f"threads={b.get('num_threads')}; OPENBLAS_CORETYPE={m['env']['OPENBLAS_CORETYPE']}")
    say("NumPy elementwise, ns/element on 1 thread (SIMD found: "
        + ", ".join(m["numpy_simd"] or ["unknown"]) + "): "
        + "; ".join(f"{dt} " + " ".join(f"{k[:-3]} {v:.2f}" for k, v in c.items())
                    for dt, c in m["elementwise"].items()))
    say(f"XLA CPU threads: {m['xla_threads']}")
    for config in configs:
        for cell in cells:
            case = Case(cell, *config)
            entry = _measure(case, backends, repeats, portable, check, settle)
            report["results"].append(entry)
            _print_entry(entry, say)
    if compile_study is None:
        compile_study = not quick
    if compile_study and "jax" in backends:
        try:
            report["compile_vs_T"] = compile_vs_T()
            say("\nJAX compile time (s) of LSTM fwd+bwd at (1, T, 32, 64):")
            for row in report["compile_vs_T"]:
                say(f"  T={row['T']:5d}  ours {row['ours']:.2f}  jax.grad {row['jax.grad']:.2f}")
        except ImportError:
            pass
    report["targets"] = _targets(report["results"], report["compile_vs_T"])
    report["machine"]["load_after"] = _load()
    say("\ntargets:")
    for t in report["targets"]:
        mark = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        val = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        say(f"  {t['name']:48s} {val:>7s} (limit {t['limit']})  {mark}")
    say(f"load after: {report['machine']['load_after']}")
    return report


def _fmt_bytes(n):
    return "-" if n is None else f"{n / 2**20:.1f}M"


def _print_entry(entry, say):
    say(f"\n{entry['cell'].upper()} N={entry['N']} T={entry['T']} D={entry['D']} H={entry['H']} "
        f"{entry['dtype']}  ({entry['flops'] / 1e9:.2f} GFLOP)")
    say(f"  {'contender':16s} {'median ms':>10s} {'GFLOP/s':>8s} {'compile s':>9s} "
        f"{'peak':>8s} {'peak/tape':>9s} {'err':>8s}")
    for name, c in entry["contenders"].items():
        comp = "-" if c["compile_s"] is None else f"{c['compile_s']:.2f}"
        pt = "-" if c["peak_over_tape"] is None else f"{c['peak_over_tape']:.2f}"
        err = "-" if c["err"] is None else f"{c['err']:.1e}"
        say(f"  {name:16s} {1e3 * c['median_s']:10.2f} {c['gflops']:8.1f} {comp:>9s} "
            f"{_fmt_bytes(c['peak_bytes']):>8s} {pt:>9s} {err:>8s}")
    if entry["ratios"]:
        say("  ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in entry["ratios"].items()))
    for name, why in entry["skipped"].items():
        say(f"  skipped {name}: {why}")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the bench flags to ``parser`` (for a ``portable-rnn bench`` sub-command)."""
    parser.add_argument("--quick", action="store_true", help="tiny configurations for CI (a few seconds)")
    parser.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    parser.add_argument("--backends", type=lambda s: [b.strip() for b in s.split(",") if b.strip()],
                        help=f"comma-separated, from {', '.join(BACKENDS)} (default: all installed)")
    parser.add_argument("--cells", type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
                        default=list(CELLS), help="comma-separated from lstm, gru, rnn")
    parser.add_argument("--configs", type=lambda s: [_parse_config(c) for c in s.split(",") if c.strip()],
                        help="comma-separated NxTxDxH[:dtype], e.g. 64x100x128x256:float32")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds, median reported (default 5)")
    parser.add_argument("--threads", type=int, help="threads for torch and BLAS (default: usable CPUs)")
    parser.add_argument("--portable", action="store_true", help="also time the NumPy portable path")
    parser.add_argument("--no-check", action="store_true", help="skip the gradient check against torch.nn")
    parser.add_argument("--no-compile-study", action="store_true", help="skip JAX compile time against T")
    parser.add_argument("--settle", type=float, metavar="S",
                        help=f"seconds of pause before every timed run (default {SETTLE_S}; 0 with --quick)")
    return parser


def run_args(args) -> int:
    """Run from parsed arguments (see :func:`add_arguments`); returns an exit status."""
    for cell in args.cells:
        if cell not in CELLS:
            print(f"error: unknown cell {cell!r}; expected one of {', '.join(CELLS)}", file=sys.stderr)
            return 2
    for b in args.backends or ():
        if b not in BACKENDS:
            print(f"error: unknown backend {b!r}; expected one of {', '.join(BACKENDS)}", file=sys.stderr)
            return 2
    if args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    report = run(configs=args.configs, cells=args.cells, backends=args.backends, repeats=args.repeats,
                 threads=args.threads, quick=args.quick, portable=args.portable, check=not args.no_check,
                 compile_study=False if args.no_compile_study else None, settle=args.settle)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def main(argv=None) -> int:
    """``python -m portable_rnn.bench [flags]``; returns the exit status."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m portable_rnn.bench",
        description="Time forward+backward of RNN/LSTM/GRU layers on every backend against torch.nn, "
                    "jax.grad(lax.scan) and the pure-GEMM bound."))
    return run_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
