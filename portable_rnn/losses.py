r"""Masked sequence losses that return their own gradient, on any Array API backend.

Each loss returns ``(loss, dlogits)``: the scalar loss as a 0-d array (same
dtype and device as ``logits``; nothing is copied to the host, so both run
under ``jax.jit``) and its gradient with respect to ``logits``, ready to feed
a hand-written backward pass.

Masking and reduction
---------------------
A *step* is one position of the leading axes (e.g. one ``(t, n)`` of a
``(T, N, V)`` score array). ``mask`` weighs each step's loss, :math:`m_s`
(``None`` means all ones; a bool mask counts as 0/1). With per-step losses
:math:`\ell_s`,

.. math::

    L_{\mathrm{sum}} = \sum_s m_s \ell_s, \qquad
    L_{\mathrm{mean}} = \frac{\sum_s m_s \ell_s}{\max\left(\sum_s m_s,\ 1\right)}.

For a 0/1 mask the mean divides by the number of unmasked steps; the
:math:`\max(\cdot, 1)` guard makes an all-masked batch give loss 0 and
gradient 0 instead of NaN (for fractional weights that sum below 1 it also
divides by 1). Unmasked, ``"mean"`` equals PyTorch's ``reduction="mean"``.
"""

from __future__ import annotations

import math

from array_api_compat import device

from ._validation import check_floating, check_same_device, check_shape, namespace_of
from .activations import log_softmax, sigmoid

__all__ = ["softmax_cross_entropy", "sigmoid_binary_cross_entropy"]

_REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _mask_weights(xp, mask, shape, dtype, dev, meaning):
    """``mask`` (bool or ``dtype``) of ``shape`` as a ``dtype`` array; ``None`` stays ``None`` (unweighted)."""
    if mask is None:
        return None
    check_shape("mask", mask, shape, meaning)
    if xp.isdtype(mask.dtype, "bool"):
        return xp.astype(mask, dtype)
    if mask.dtype != dtype:
        raise TypeError(
            f"mask has dtype {mask.dtype}; expected bool or the floating dtype of "
            f"logits ({dtype}). Cast it explicitly, e.g. xp.astype(mask, logits.dtype)"
        )
    return mask


def _weighted(xp, values, weights):
    """``values * weights``, and exactly 0 where the weight is 0 whatever ``values`` holds there.

    A select, not a product: masked-out entries may hold NaN or inf (padding),
    and ``0 * NaN`` is NaN. Applied to the logits before any arithmetic, so
    padding raises no floating-point warnings either. ``weights`` ``None``
    (no mask) returns ``values``: no pass over them at all.
    """
    if weights is None:
        return values
    zero = xp.zeros((), dtype=values.dtype, device=device(values))
    return xp.where(weights != 0, values, zero) * weights


def _reduce(xp, per_step, weights, reduction, dtype, dev):
    """Weighted loss (0-d array) and the normaliser dividing the gradient."""
    total = xp.sum(_weighted(xp, per_step, weights))
    if reduction == "sum":
        return xp.asarray(total, dtype=dtype, device=dev), None
    if weights is None:  # every step counts: the count is known without a pass over anything
        normaliser = xp.full((), max(math.prod(per_step.shape), 1), dtype=dtype, device=dev)
    else:
        one = xp.ones((), dtype=dtype, device=dev)  # made on the device: no host-to-device copy
        normaliser = xp.maximum(xp.asarray(xp.sum(weights), dtype=dtype, device=dev), one)
    return xp.asarray(total / normaliser, dtype=dtype, device=dev), normaliser


def softmax_cross_entropy(logits, targets, mask=None, reduction: str = "mean"):
    r"""Masked softmax cross-entropy over the last axis, and its gradient.

    For each step :math:`s` with scores :math:`z_s \in \mathbb{R}^V` and
    target class :math:`y_s`,

    .. math::

        \ell_s = -\log \mathrm{softmax}(z_s)_{y_s}
               = -z_{s,y_s} + \max_j z_{s,j}
                 + \log \sum_j e^{z_{s,j} - \max_k z_{s,k}},

    computed through :func:`portable_rnn.log_softmax`, so it stays finite for
    any finite scores. The gradient is

    .. math::

        \frac{\partial L}{\partial z_s}
        = \frac{m_s\,(\mathrm{softmax}(z_s) - \mathrm{onehot}(y_s))}{\nu},

    with :math:`\nu = 1` for ``"sum"`` and
    :math:`\nu = \max(\sum_s m_s, 1)` for ``"mean"`` (see the module notes).

    Parameters
    ----------
    logits : array (..., V) of a real floating dtype
        Unnormalised scores, classes on the last axis, e.g. (T, N, V).
    targets : array (...) of an integer dtype
        Class indices, shaped like ``logits`` without its last axis. Values
        must lie in ``[0, V)``; they are not range-checked (that would need a
        copy to the host): an index outside matches no class, adds 0 to the
        loss and :math:`m_s\,\mathrm{softmax}(z_s)/\nu` to the gradient.
    mask : array (...) of bool or of ``logits``' dtype, optional
        Weight of each step, shaped like ``targets``; ``None`` means all ones.
    reduction : {"mean", "sum"}, default "mean"
        ``"sum"`` adds the masked step losses; ``"mean"`` divides that sum by
        :math:`\max(\sum_s m_s, 1)`, the number of unmasked steps.

    Returns
    -------
    loss : 0-d array
        Same dtype and device as ``logits``.
    dlogits : array (..., V)
        :math:`\partial L / \partial z`, same shape, dtype and device as ``logits``.

    Raises
    ------
    TypeError
        Non-floating ``logits``, non-integer ``targets``, a ``mask`` that is
        neither bool nor ``logits``' dtype, or arrays from different libraries.
    ValueError
        Shape mismatches, ``logits`` without a class axis or with zero
        classes, an unknown ``reduction``, or arrays on different devices.

    Examples
    --------
    >>> import numpy as np
    >>> loss, dz = softmax_cross_entropy(np.zeros((2, 3)), np.asarray([0, 2]))
    >>> round(float(loss), 6)  # log 3
    1.098612
    >>> dz.shape
    (2, 3)
    """
    xp = namespace_of(logits=logits, targets=targets, mask=mask)
    dtype = check_floating(xp, logits=logits)
    if not xp.isdtype(targets.dtype, "integral"):
        raise TypeError(
            f"targets has dtype {targets.dtype}; expected an integer dtype of class "
            "indices (e.g. int64)"
        )
    check_same_device(logits=logits, targets=targets, mask=mask)
    _check_reduction(reduction)
    if logits.ndim < 1:
        raise ValueError("logits has shape (); expected (..., V) with classes on the last axis")
    lead, V = tuple(logits.shape[:-1]), logits.shape[-1]
    if V == 0:
        raise ValueError(f"logits has shape {tuple(logits.shape)}; expected at least one class")
    meaning = "(logits' shape without its class axis)"
    check_shape("targets", targets, lead, meaning)
    dev = device(logits)
    weights = _mask_weights(xp, mask, lead, dtype, dev, meaning)
    if weights is not None:
        logits = _weighted(xp, logits, xp.expand_dims(xp.astype(weights != 0, dtype), axis=-1))

    log_p = log_softmax(logits, axis=-1)
    classes = xp.arange(V, device=dev)  # default integer dtype: any V fits
    hot = xp.expand_dims(xp.astype(targets, classes.dtype), axis=-1) == classes  # (..., V)
    zero = xp.zeros((), dtype=dtype, device=dev)
    per_step = -xp.sum(xp.where(hot, log_p, zero), axis=-1)
    loss, normaliser = _reduce(xp, per_step, weights, reduction, dtype, dev)

    dlogits = xp.exp(log_p) - xp.astype(hot, dtype)
    if weights is not None:
        dlogits = _weighted(xp, dlogits, xp.expand_dims(weights, axis=-1))
    if normaliser is not None:
        dlogits = dlogits / normaliser
    return loss, dlogits


def sigmoid_binary_cross_entropy(logits, targets, mask=None, reduction: str = "mean"):
    r"""Masked binary cross-entropy on sigmoid outputs, and its gradient.

    The loss of the lecture notes, with :math:`\hat y = \sigma(z)`,

    .. math::

        \ell = -y \log \hat y - (1 - y) \log(1 - \hat y)
             = \max(z, 0) - z y + \log\left(1 + e^{-|z|}\right),

    evaluated in the second, stable form (``log1p``; the exponential never
    sees a positive argument), so it is finite for any finite :math:`z`. The
    gradient is

    .. math::

        \frac{\partial L}{\partial z} = \frac{m\,(\sigma(z) - y)}{\nu},

    with :math:`\nu = 1` for ``"sum"`` and :math:`\nu = \max(\sum m, 1)` for
    ``"mean"``, the sum running over every element of the broadcast mask.

    Parameters
    ----------
    logits : array (...) of a real floating dtype
        Pre-sigmoid scores, any shape, e.g. (T, N, K).
    targets : array (...) of ``logits``' dtype, or bool
        Labels or probabilities in ``[0, 1]``, shaped like ``logits``.
    mask : array, optional
        Bool or ``logits``' dtype, shaped like ``logits`` (one weight per
        element) or like ``logits`` without its last axis (one weight per
        step, shared by its ``K`` outputs). ``None`` means all ones.
    reduction : {"mean", "sum"}, default "mean"
        ``"sum"`` adds the masked element losses; ``"mean"`` divides by
        :math:`\max(\sum m, 1)`, the number of unmasked elements (so,
        unmasked, it is PyTorch's ``binary_cross_entropy_with_logits``).

    Returns
    -------
    loss : 0-d array
        Same dtype and device as ``logits``.
    dlogits : array (...)
        Same shape, dtype and device as ``logits``.

    Raises
    ------
    TypeError
        Non-floating ``logits``, ``targets`` of another dtype (integers
        included: cast them explicitly), a bad ``mask`` dtype, or arrays
        from different libraries.
    ValueError
        Shape mismatches, an unknown ``reduction``, or arrays on different
        devices.

    Examples
    --------
    >>> import numpy as np
    >>> loss, dz = sigmoid_binary_cross_entropy(np.zeros(4), np.ones(4))
    >>> round(float(loss), 6)  # log 2
    0.693147
    """
    xp = namespace_of(logits=logits, targets=targets, mask=mask)
    dtype = check_floating(xp, logits=logits)
    check_same_device(logits=logits, targets=targets, mask=mask)
    _check_reduction(reduction)
    shape = tuple(logits.shape)
    check_shape("targets", targets, shape, "(the shape of logits)")
    if xp.isdtype(targets.dtype, "bool"):
        y = xp.astype(targets, dtype)
    else:
        if not xp.isdtype(targets.dtype, "real floating"):
            raise TypeError(
                f"targets has dtype {targets.dtype}; expected bool or the floating dtype "
                f"of logits ({dtype}). Cast it explicitly, e.g. xp.astype(targets, logits.dtype)"
            )
        check_floating(xp, logits=logits, targets=targets)
        y = targets
    dev = device(logits)
    if mask is not None and len(shape) >= 1 and tuple(mask.shape) == shape[:-1]:
        per_step = _mask_weights(xp, mask, shape[:-1], dtype, dev, "")
        weights = xp.broadcast_to(xp.expand_dims(per_step, axis=-1), shape)
    else:
        weights = _mask_weights(
            xp, mask, shape, dtype, dev, "(the shape of logits, or it without its last axis)"
        )

    keep = None if weights is None else xp.astype(weights != 0, dtype)
    z, y = _weighted(xp, logits, keep), _weighted(xp, y, keep)
    per_element = (
        xp.maximum(z, xp.zeros((), dtype=dtype, device=dev))
        - z * y
        + xp.log1p(xp.exp(-xp.abs(z)))
    )
    loss, normaliser = _reduce(xp, per_element, weights, reduction, dtype, dev)
    dlogits = _weighted(xp, sigmoid(z) - y, weights)
    if normaliser is not None:
        dlogits = dlogits / normaliser
    return loss, dlogits
