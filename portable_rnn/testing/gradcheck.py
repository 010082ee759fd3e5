"""Finite-difference gradients for checking hand-written backward passes.

The perturbation happens on the host in float64 NumPy, so the function under
test may run on any backend: it receives a dict of NumPy arrays, converts
them itself and returns a Python float. A fourth-order central stencil,

.. math::

    f'(x) \\approx \\frac{f(x-2h) - 8 f(x-h) + 8 f(x+h) - f(x+2h)}{12 h},

has truncation error :math:`O(h^4)`, so with ``h = 1e-3`` it agrees with an
exact float64 gradient to about 1e-10 relative error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

__all__ = ["numerical_gradient"]


def numerical_gradient(
    f: Callable[[dict], float], inputs: Mapping[str, np.ndarray], wrt=None, h: float = 1e-3
) -> dict:
    """Gradient of a scalar function of named float64 arrays.

    Parameters
    ----------
    f : callable
        ``f(arrays) -> float`` for a dict of NumPy arrays shaped like ``inputs``.
    inputs : mapping of str to ndarray
        The point at which to differentiate; not modified.
    wrt : iterable of str, optional
        Names to differentiate with respect to (default: all).
    h : float
        Step size.

    Returns
    -------
    dict of str to ndarray
        One gradient per name in ``wrt``, shaped like the input.
    """
    point = {k: np.array(v, dtype=np.float64) for k, v in inputs.items()}
    grads = {}
    for name in wrt if wrt is not None else list(point):
        base = point[name]
        grad = np.zeros_like(base)
        for index in np.ndindex(base.shape):
            values = []
            for step in (-2, -1, 1, 2):
                shifted = base.copy()
                shifted[index] += step * h
                values.append(f({**point, name: shifted}))
            grad[index] = (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * h)
        grads[name] = grad
    return grads
