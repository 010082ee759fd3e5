"""Trees of arrays: nested dicts, lists, tuples and NamedTuples, with ``None`` for an absent leaf.

Parameters, tapes, gradients and optimiser states are such trees; these
helpers walk them on any backend (under ``jax.jit`` too: they only rebuild
Python containers around the leaves).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["map_with_path", "tree_map", "leaves", "stack_trees", "rebuild"]


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


def rebuild(tree, children):
    """A tuple, list or NamedTuple like ``tree`` holding ``children``."""
    children = list(children)
    return type(tree)(*children) if hasattr(tree, "_fields") else type(tree)(children)


def stack_trees(trees, xp):
    """Trees of one structure stacked leaf by leaf along a new first axis."""
    first = trees[0]
    if first is None:
        return None
    if isinstance(first, (tuple, list)):
        return rebuild(first, (stack_trees([tree[i] for tree in trees], xp) for i in range(len(first))))
    return xp.stack(trees, axis=0)


def leaves(tree):
    """The array leaves of a tree, in order (``None`` skipped)."""
    if isinstance(tree, (tuple, list)):
        for leaf in tree:
            yield from leaves(leaf)
    elif tree is not None:
        yield tree
