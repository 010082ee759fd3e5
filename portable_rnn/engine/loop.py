"""The time loop: ``scan(step, carry, xs)`` on any backend.

A plain Python loop everywhere, ``jax.lax.scan`` when JAX is tracing (under
``jax.jit``, ``jax.grad``, ``jax.vmap``): an unrolled Python loop under
``jax.jit`` traces every step and compiles for about a minute at T=100, while
``lax.scan`` compiles one step, whatever T is. On concrete (eager) JAX arrays
the Python loop runs instead: an eager ``lax.scan`` re-traces and compiles its
step on every call (the step is a fresh closure), which costs ~0.1-0.4 s per
call where the eager loop costs microseconds per operation.

``xs`` and the per-step outputs are *trees*: an array, ``None``, or a tuple
or list of trees. Every array leaf of ``xs`` has time as its first axis.
"""

from __future__ import annotations

from collections.abc import Mapping

from array_api_compat import is_jax_namespace

__all__ = ["scan", "compiles", "tree_map", "map_with_path", "leaves", "stack_trees"]


def map_with_path(f, tree, *rest, path=""):
    """``f(path, leaf, *other_leaves)`` over nested dicts, lists and tuples; ``None`` stays ``None``.

    ``rest`` must have the structure of ``tree`` (a ``ValueError`` names the
    first place where it does not); dicts come back as ``dict`` with ``tree``'s
    key order, NamedTuples as their own type. ``path`` is the leaf's place,
    e.g. ``"['W'][0]"``.
    """
    if tree is None:
        return None
    if isinstance(tree, Mapping):
        for other in rest:
            if not isinstance(other, Mapping) or set(other) != set(tree):
                got = sorted(other) if isinstance(other, Mapping) else type(other).__name__
                raise ValueError(
                    f"structure mismatch at {path or 'the top level'}: expected keys "
                    f"{sorted(tree)}, got {got}"
                )
        return {
            k: map_with_path(f, tree[k], *(o[k] for o in rest), path=f"{path}[{k!r}]")
            for k in tree
        }
    if isinstance(tree, (list, tuple)):
        for other in rest:
            if not isinstance(other, (list, tuple)) or len(other) != len(tree):
                raise ValueError(
                    f"structure mismatch at {path or 'the top level'}: expected a "
                    f"sequence of {len(tree)}, got {type(other).__name__}"
                )
        items = [
            map_with_path(f, t, *(o[i] for o in rest), path=f"{path}[{i}]")
            for i, t in enumerate(tree)
        ]
        if hasattr(tree, "_fields"):  # NamedTuple
            return type(tree)(*items)
        return type(tree)(items)
    return f(path, tree, *rest)


def tree_map(fn, *trees):
    """``fn(leaf, *other_leaves)`` over trees of one structure (see :func:`map_with_path`).

    Examples
    --------
    >>> tree_map(lambda a, b: a + b, {"W": 1, "b": [2, 3]}, {"W": 10, "b": [20, 30]})
    {'W': 11, 'b': [22, 33]}
    """
    return map_with_path(lambda _path, *leaves: fn(*leaves), *trees)


def _rebuild(tree, children):
    """A tuple, list or NamedTuple like ``tree`` holding ``children``."""
    children = list(children)
    return type(tree)(*children) if hasattr(tree, "_fields") else type(tree)(children)


def _index(tree, t):
    if tree is None:
        return None
    if isinstance(tree, (tuple, list)):
        return _rebuild(tree, (_index(leaf, t) for leaf in tree))
    return tree[t, ...]


def stack_trees(trees, xp):
    """Trees of one structure stacked leaf by leaf along a new first axis."""
    first = trees[0]
    if first is None:
        return None
    if isinstance(first, (tuple, list)):
        return _rebuild(first, (stack_trees([tree[i] for tree in trees], xp) for i in range(len(first))))
    return xp.stack(trees, axis=0)


def _length(tree):
    if isinstance(tree, (tuple, list)):
        for leaf in tree:
            n = _length(leaf)
            if n is not None:
                return n
        return None
    return None if tree is None else tree.shape[0]


def leaves(tree):
    """The array leaves of a tree, in order (``None`` skipped)."""
    if isinstance(tree, (tuple, list)):
        for leaf in tree:
            yield from leaves(leaf)
    elif tree is not None:
        yield tree


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
        The initial carry (e.g. the initial hidden state).
    xs : tree of arrays, each of shape (T, ...)
        Per-step inputs, sliced along the first axis.
    xp : namespace
        The array namespace of the inputs.
    reverse : bool, default False
        Run from ``t = T-1`` down to ``0``; outputs stay in time order.
    use_lax : bool or None
        ``None`` picks ``jax.lax.scan`` exactly when ``xp`` is JAX and the
        inputs are tracers. ``True``/``False`` force one path (the tests
        compare both).
    unroll : int, default 1
        Steps per iteration of ``jax.lax.scan``'s loop (its ``unroll``): more
        code to compile, less loop overhead per step. Ignored by the Python loop.

    Returns
    -------
    carry : tree of arrays
        The final carry.
    ys : tree of arrays, each of shape (T, ...)
        The stacked per-step outputs, in time order.
    """
    if use_lax is None:
        use_lax = compiles(xp, carry, xs)
    if use_lax:
        import jax

        return jax.lax.scan(step, carry, xs, reverse=reverse, unroll=unroll)
    n_steps = _length(xs)
    if n_steps is None or n_steps == 0:
        raise ValueError("scan needs at least one time step in xs")
    order = range(n_steps - 1, -1, -1) if reverse else range(n_steps)
    ys = []
    for t in order:
        carry, y = step(carry, _index(xs, t))
        ys.append(y)
    if reverse:
        ys.reverse()
    return carry, stack_trees(ys, xp)
