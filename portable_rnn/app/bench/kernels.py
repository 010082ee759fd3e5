"""Kernels (ops) one time step launches, forward and backward: counted on the CPU, never timed.

On a GPU a recurrent layer is launch-bound at small sizes: every op of a
step is a kernel launch of a few microseconds whatever its size. The count
does not depend on the device for eager code, so it is made on the CPU with
tiny sizes, once per cell. Each count is the slope between two sequence
lengths, which removes the per-call part (input projection, weight
gradients, stacking); the lengths are whole numbers of the backward's chunks
(:data:`~portable_rnn.engine.sequence.BACKWARD_CHUNK`), so the local derivatives
computed once per chunk of an eager backward count as their share per step
(e.g. 7.5).

``torch`` (this package's layer on the portable path, which CUDA tensors and
CuPy take too)
    aten ops seen by a ``TorchDispatchMode`` during an eager forward, then
    backward, of T steps; ops that only make views or allocate launch no
    kernel and are left out.
``torch.nn``
    The same for ``torch.nn.RNN/LSTM/GRU`` with autograd on the CPU: oneDNN
    runs the LSTM's loop inside one op (0 per step); on CUDA cuDNN runs all
    three cells that way, so these are CPU numbers only.
``jax`` and ``jax.grad``
    Equations the jaxpr of the jitted forward + backward runs in its first
    ``lax.scan`` (the forward) and in the ones after it (the backward), a
    scan's body counted once per step. XLA fuses elementwise equations into
    fewer kernels, so this is an upper bound of what a compiled step launches.
NumPy
    Its calls are not kernels; the ``torch`` count stands for the portable code.
"""

from __future__ import annotations

import functools

import numpy as np

from ...engine import kernels as engine_kernels
from ...layers import LAYERS
from ...engine.sequence import BACKWARD_CHUNK

__all__ = ["STEPS", "UNITS", "per_step", "torch_ours", "torch_nn", "jax_ours", "jax_grad", "kernels_per_step"]

#: The two sequence lengths whose difference gives the per-step count: two and
#: four of the backward's chunks.
STEPS = (2 * BACKWARD_CHUNK, 4 * BACKWARD_CHUNK)
#: Tiny sizes: the counts do not depend on them.
_N, _D, _H = 2, 3, 4
#: aten ops that allocate or reinterpret memory without launching a kernel (besides views).
_NO_KERNEL = frozenset({"empty", "empty_strided", "empty_like", "lift_fresh", "unsafe_split",
                        "unsafe_split_with_sizes", "unsafe_chunk"})


def per_step(count, steps=STEPS) -> dict:
    """``{"forward", "backward"}``: the slope of ``count(T) -> (forward, backward)`` between two lengths.

    Parameters
    ----------
    count : callable
        ``count(T)`` gives the ops of a forward and of a backward over T steps.
    steps : (int, int)
        The two lengths.
    """
    (t1, t2) = steps
    f1, b1 = count(t1)
    f2, b2 = count(t2)
    return {"forward": (f2 - f1) / (t2 - t1), "backward": (b2 - b1) / (t2 - t1)}


def _host_inputs(cell, T, seed=0):
    spec = LAYERS[cell](_D, _H)
    params = {k: np.asarray(v) for k, v in spec.init(seed, dtype="float32").items()}
    x = np.random.default_rng(seed + 1).standard_normal((T, _N, _D)).astype(np.float32)
    return spec, params, x


@functools.cache
def _op_counter():
    """A ``TorchDispatchMode`` class that counts the aten ops that launch kernels."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.kernels = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view and func._schema.name.split("::")[-1] not in _NO_KERNEL:
                self.kernels += 1
            return func(*args, **(kwargs or {}))

    return OpCounter


def _counted(fn):
    """``(result, kernels)`` of ``fn()`` under a fresh op counter."""
    with _op_counter()() as counter:
        result = fn()
    return result, counter.kernels


def torch_ours(cell, steps=STEPS) -> dict:
    """Per-step kernels of this package's layer on torch, portable path (what CUDA tensors run)."""
    import torch

    def count(T):
        spec, params, x = _host_inputs(cell, T)
        p = {k: torch.asarray(v) for k, v in params.items()}
        with engine_kernels.portable_only():
            (out, _, tape), forward = _counted(lambda: spec.forward(p, torch.asarray(x)))
            d_out = torch.ones((), dtype=out.dtype).expand(out.shape)
            _, backward = _counted(lambda: spec.backward(p, tape, d_out))
        return forward, backward

    return per_step(count, steps)


def torch_nn(cell, steps=STEPS) -> dict:
    """Per-step kernels of ``torch.nn.<Layer>`` with autograd on the CPU."""
    import torch

    def count(T):
        spec, params, x = _host_inputs(cell, T)
        module = getattr(torch.nn, type(spec).__name__)(_D, _H)
        module.load_state_dict({k: torch.asarray(v) for k, v in params.items()})
        xt = torch.asarray(x).requires_grad_(True)
        (out, _), forward = _counted(lambda: module(xt))
        d_out = torch.ones((), dtype=out.dtype).expand(out.shape)
        _, backward = _counted(lambda: out.backward(d_out))
        return forward, backward

    return per_step(count, steps)


def _sub_jaxprs(params):
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(v, "jaxpr", v)  # ClosedJaxpr -> Jaxpr
            if hasattr(inner, "eqns"):
                yield inner


def _top_level_scans(jaxpr, found):
    """The ``scan`` equations of ``jaxpr`` that are not inside another scan, in program order."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            found.append(eqn)
        else:
            for sub in _sub_jaxprs(eqn.params):
                _top_level_scans(sub, found)
    return found


def _executed(jaxpr) -> int:
    """Equations ``jaxpr`` runs: a scan's body once per step, a nested call (``pjit``) its equations."""
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            n += eqn.params["length"] * _executed(eqn.params["jaxpr"].jaxpr)
            continue
        subs = list(_sub_jaxprs(eqn.params))
        n += sum(_executed(s) for s in subs) if subs else 1
    return n


def _jax_per_step(fn, cell, steps) -> dict:
    """Per-step equations of the forward (first scan) and the backward (the scans after it) of ``fn(params, x)``."""
    import jax
    import jax.numpy as jnp

    def count(T):
        _, params, x = _host_inputs(cell, T)
        closed = jax.make_jaxpr(fn)({k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(x))
        scans = _top_level_scans(closed.jaxpr, [])
        if len(scans) < 2:
            raise RuntimeError(f"expected a forward and a backward scan, found {len(scans)}")
        forward, *backward = (eqn.params["length"] * _executed(eqn.params["jaxpr"].jaxpr) for eqn in scans)
        return forward, sum(backward)

    return per_step(count, steps)


def jax_ours(cell, steps=STEPS) -> dict:
    """Per-step jaxpr equations of this package's layer, forward + backward as the bench jits it."""
    import jax.numpy as jnp

    from .contenders import fwd_bwd

    spec = LAYERS[cell](_D, _H)
    return _jax_per_step(lambda p, x: fwd_bwd(spec, p, x, jnp.ones_like), cell, steps)


def jax_grad(cell, steps=STEPS) -> dict:
    """Per-step jaxpr equations of the ``jax.grad`` reference (a ``lax.scan`` layer)."""
    from .references import jax_grad_fn

    return _jax_per_step(jax_grad_fn(cell), cell, steps)


#: What each count measures, by contender.
UNITS = {
    "torch": "aten ops launching kernels, portable path",
    "torch.nn": "aten ops launching kernels, CPU (oneDNN/cuDNN fuse the loop)",
    "jax": "jaxpr equations per scan step (before XLA fusion)",
    "jax.grad": "jaxpr equations per scan step (before XLA fusion)",
}
_COUNTERS = {"torch": torch_ours, "torch.nn": torch_nn, "jax": jax_ours, "jax.grad": jax_grad}


@functools.cache
def _count(name, cell):
    return _COUNTERS[name](cell)


def kernels_per_step(cell, backend_names) -> dict:
    """``contender -> {"forward", "backward", "unit"}`` for the libraries of ``backend_names``.

    torch's counts come with any of ``numpy``, ``torch``, ``torch:cuda`` or
    ``cupy`` (the portable code they run issues the same ops), JAX's with
    ``jax`` or ``jax:gpu``; a library that is not installed is left out.
    Counts are cached per cell.
    """
    names = set(backend_names)
    wanted = []
    if names & {"numpy", "torch", "torch:cuda", "cupy"}:
        wanted += ["torch", "torch.nn"]
    if names & {"jax", "jax:gpu"}:
        wanted += ["jax", "jax.grad"]
    out = {}
    for name in wanted:
        try:
            out[name] = {**_count(name, cell), "unit": UNITS[name]}
        except ImportError:
            continue
    return out
