"""Numerically stable activations on any Array API namespace.

Each function takes its namespace from its input and never overflows: the
exponentials only ever see non-positive arguments.
"""

from __future__ import annotations

from array_api_compat import array_namespace

__all__ = ["sigmoid", "sigmoid_pair", "softmax", "log_softmax", "relu"]


def sigmoid(x, /):
    r"""Logistic function :math:`\sigma(x) = 1 / (1 + e^{-x})`, stable for any x.

    With :math:`e = \exp(-|x|) \in (0, 1]`, :math:`\sigma(x) = 1/(1+e)` for
    :math:`x \ge 0` and :math:`e/(1+e)` otherwise, so nothing overflows and
    small results keep full relative precision.

    Parameters
    ----------
    x : array of a real floating dtype, any shape

    Returns
    -------
    array, same shape, dtype and device as ``x``

    Examples
    --------
    >>> import numpy as np
    >>> sigmoid(np.asarray([-1e4, 0.0, 1e4]))
    array([0. , 0.5, 1. ])
    """
    xp = array_namespace(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_pair(x, /):
    r""":math:`(\sigma(x), \sigma(-x))` from one exponential, each as :func:`sigmoid` computes it.

    :math:`\sigma(-x) = 1 - \sigma(x)` without the cancellation of the
    subtraction where :math:`\sigma(x)` is near 1: both are :math:`1/(1+e)`
    or :math:`e/(1+e)` with :math:`e = \exp(-|x|)`, swapped by the sign of x.

    Parameters
    ----------
    x : array of a real floating dtype, any shape

    Returns
    -------
    tuple of two arrays, same shape, dtype and device as ``x``
    """
    xp = array_namespace(x)
    e = xp.exp(-xp.abs(x))
    big, small = 1 / (1 + e), e / (1 + e)
    return xp.where(x >= 0, big, small), xp.where(x >= 0, small, big)


def softmax(x, /, *, axis: int = -1):
    r"""Softmax along ``axis``: :math:`e^{x_i - \max x} / \sum_j e^{x_j - \max x}`.

    Parameters
    ----------
    x : array of a real floating dtype
    axis : int, default -1
        The axis that sums to one (the deeplearning.ai functions use axis 0).

    Returns
    -------
    array, same shape as ``x``
    """
    xp = array_namespace(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def log_softmax(x, /, *, axis: int = -1):
    r"""Logarithm of :func:`softmax`, computed as :math:`x - \max x - \log\sum e^{x - \max x}`."""
    xp = array_namespace(x)
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def relu(x, /):
    """Rectified linear unit ``max(x, 0)``."""
    xp = array_namespace(x)
    return xp.where(x > 0, x, xp.zeros_like(x))
