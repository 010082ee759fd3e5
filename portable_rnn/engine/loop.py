"""The time loop: ``scan(step, carry, xs)`` on any backend.

A plain Python loop everywhere, ``jax.lax.scan`` when JAX is tracing (under
``jax.jit``, ``jax.grad``, ``jax.vmap``): an unrolled Python loop under
``jax.jit`` traces every step and compiles for about a minute at T=100, while
``lax.scan`` compiles one step, whatever T is. On concrete (eager) JAX arrays
the Python loop runs instead: an eager ``lax.scan`` re-traces and compiles its
step on every call (the step is a fresh closure), which costs ~0.1-0.4 s per
call where the eager loop costs microseconds per operation.

``xs`` and the per-step outputs are trees (:mod:`portable_rnn.trees`): an array,
``None``, or a tuple or list of trees. Every array leaf of ``xs`` has time as its first axis.
"""

from __future__ import annotations

from array_api_compat import is_jax_namespace

from ..trees import leaves, rebuild, stack_trees

__all__ = ["scan", "compiles"]


def _index(tree, t):
    if tree is None:
        return None
    if isinstance(tree, (tuple, list)):
        return rebuild(tree, (_index(leaf, t) for leaf in tree))
    return tree[t, ...]


def _tracing(*trees) -> bool:
    """Whether any leaf is a JAX tracer (we are inside jit, grad or vmap)."""
    from jax.core import Tracer

    return any(isinstance(leaf, Tracer) for tree in trees for leaf in leaves(tree))


def compiles(xp, *trees) -> bool:
    """Whether :func:`scan` over these inputs runs ``jax.lax.scan`` (JAX tracers) rather than a Python loop.

    A compiled loop's step is fused by XLA, so it has no per-operation cost
    to amortise; an eager loop pays a dispatch (a kernel launch on a GPU) for
    every operation of every step.
    """
    return is_jax_namespace(xp) and _tracing(*trees)


def scan(step, carry, xs, *, xp, reverse: bool = False, use_lax: bool | None = None, unroll: int = 1):
    """Run ``carry, y_t = step(carry, xs[t])`` over time and stack the ``y_t``.

    The semantics are those of ``jax.lax.scan``.

    Parameters
    ----------
    step : callable
        ``step(carry, x_t) -> (carry, y_t)``.
    carry : tree of arrays
    xs : tree of arrays, each (T, ...)
        Per-step inputs, sliced along the first axis.
    xp : namespace
    reverse : bool, default False
        Run from ``t = T-1`` down to ``0``; outputs stay in time order.
    use_lax : bool or None
        ``None`` picks ``jax.lax.scan`` exactly when :func:`compiles`;
        ``True``/``False`` force one path (the tests compare both).
    unroll : int, default 1
        Steps per iteration of ``jax.lax.scan``'s loop; ignored by the Python loop.

    Returns
    -------
    carry : tree of arrays
    ys : tree of arrays, each (T, ...)
        The stacked per-step outputs, in time order.
    """
    if use_lax is None:
        use_lax = compiles(xp, carry, xs)
    if use_lax:
        import jax

        return jax.lax.scan(step, carry, xs, reverse=reverse, unroll=unroll)
    n_steps = next((leaf.shape[0] for leaf in leaves(xs)), None)
    if not n_steps:
        raise ValueError("scan needs at least one time step in xs")
    order = range(n_steps - 1, -1, -1) if reverse else range(n_steps)
    ys = []
    for t in order:
        carry, y = step(carry, _index(xs, t))
        ys.append(y)
    if reverse:
        ys.reverse()
    return carry, stack_trees(ys, xp)
