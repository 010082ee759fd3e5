r"""Token embeddings and time-distributed affine maps, forward and backward.

The pieces around a recurrent layer in a sequence model: the character
model (:class:`portable_rnn.CharModel`) is built on them, and the CS231n face
(:mod:`portable_rnn.cs231n`) exposes them under the exercise's names and
signatures. Batch-major: ``x`` is (N, T, ...), as in CS231n.
"""

from __future__ import annotations

from typing import NamedTuple

from array_api_compat import device

from ._validation import (
    check_arrays,
    check_cache,
    check_floating,
    check_integer_dtype,
    check_same_device,
    check_shape,
    check_upstream,
    namespace_of,
)

__all__ = [
    "one_hot",
    "word_embedding_forward",
    "word_embedding_backward",
    "temporal_affine_forward",
    "temporal_affine_backward",
]


class _EmbeddingCache(NamedTuple):
    x: object
    W: object


class _AffineCache(NamedTuple):
    x: object
    w: object
    b: object


def one_hot(indices, V: int, dtype, xp):
    """Integer indices (...) -> one-hot (..., V) of ``dtype``; an index outside [0, V) gives a zero row.

    The comparison runs in the indices' own dtype when it holds ``V - 1``,
    else in int64, so ``arange(V)`` never wraps around.
    """
    itype = indices.dtype if xp.iinfo(indices.dtype).max >= V - 1 else xp.int64
    vocab = xp.arange(V, dtype=itype, device=device(indices))
    return xp.astype(xp.expand_dims(xp.astype(indices, itype), axis=-1) == vocab, dtype)


# --------------------------------------------------------------------------- embedding


def word_embedding_forward(x, W):
    r"""Look up the embedding of every word: :math:`out_{n,t} = W_{x_{n,t}}`.

    Parameters
    ----------
    x : array (N, T) of an integer dtype
        Word indices, each in ``[0, V)``. They are not range-checked (that
        would need a copy to the host); an index outside it gives whatever
        the backend's ``take`` gives, and no gradient in the backward.
    W : array (V, D) of a real floating dtype
        The word vectors.

    Returns
    -------
    out : array (N, T, D)
    cache : tuple
        Opaque; pass it to :func:`word_embedding_backward`.
    """
    xp = namespace_of(x=x, W=W)
    check_integer_dtype(xp, "x", x)
    check_floating(xp, W=W)
    check_same_device(x=x, W=W)
    check_shape("x", x, (None, None), "(N, T) word indices")
    check_shape("W", W, (None, None), "(V, D)")
    N, T = x.shape
    indices = xp.reshape(x, (N * T,))
    if indices.dtype not in (xp.int32, xp.int64):  # PyTorch's take accepts only these
        indices = xp.astype(indices, xp.int64)
    out = xp.take(W, indices, axis=0)
    return xp.reshape(out, (N, T, W.shape[1])), _EmbeddingCache(x, W)


def word_embedding_backward(dout, cache):
    r"""Gradient of :func:`word_embedding_forward` with respect to ``W``.

    Row ``v`` of ``dW`` sums the upstream gradients of every position that
    looked up word ``v``:

    .. math::

        dW_v = \sum_{n,t} [x_{n,t} = v]\; dout_{n,t}
             = (\mathrm{onehot}(x)^T\, dout)_v

    The Array API has no scatter-add (NumPy's ``np.add.at``) and no item
    assignment, so the sum is one contraction of the (N, T, V) one-hot array
    of the indices with ``dout`` over batch and time. That costs :math:`O(NTV)` memory and :math:`O(NTVD)` flops,
    against :math:`O(NTD)` for a scatter-add: negligible for the assignment's
    sizes (V ~ 1000), worth knowing for very large vocabularies.

    Parameters
    ----------
    dout : array (N, T, D)
        Gradient of the loss with respect to ``out``.
    cache : tuple
        From :func:`word_embedding_forward`.

    Returns
    -------
    dW : array (V, D)
    """
    x, W = check_cache(cache, _EmbeddingCache, "word_embedding_forward")
    xp = namespace_of(**{"W (from cache)": W}, dout=dout)
    named = {"W (from cache)": W, "dout": dout}  # messages then blame dout
    check_floating(xp, **named)
    check_same_device(**named)
    N, T = x.shape
    V, D = W.shape
    check_shape("dout", dout, (N, T, D), "(N, T, D), the shape of out")
    onehot = one_hot(x, V, dout.dtype, xp)  # (N, T, V)
    return xp.tensordot(onehot, dout, axes=([0, 1], [0, 1]))  # no reshape merging N with T


# --------------------------------------------------------------------------- temporal affine


def temporal_affine_forward(x, w, b):
    r"""The same affine map at every time step: :math:`out_{n,t} = x_{n,t} w + b`.

    Parameters
    ----------
    x : array (N, T, D)
    w : array (D, M)
    b : array (M,)

    Returns
    -------
    out : array (N, T, M)
    cache : tuple
        Opaque; pass it to :func:`temporal_affine_backward`.
    """
    check_arrays(x=x, w=w, b=b)
    check_shape("x", x, (None, None, None), "(N, T, D)")
    check_shape("w", w, (x.shape[2], None), "(D, M) with D the features of x")
    check_shape("b", b, (w.shape[1],), "(M,) with M the columns of w")
    return x @ w + b, _AffineCache(x, w, b)


def temporal_affine_backward(dout, cache):
    r"""Backward pass of :func:`temporal_affine_forward`.

    .. math::

        dx = dout\, w^T, \qquad dw = \sum_{n,t} x_{n,t}^T\, dout_{n,t}, \qquad
        db = \sum_{n,t} dout_{n,t}

    Parameters
    ----------
    dout : array (N, T, M)
    cache : tuple
        From :func:`temporal_affine_forward`.

    Returns
    -------
    dx : array (N, T, D)
    dw : array (D, M)
    db : array (M,)
    """
    x, w, _ = check_cache(cache, _AffineCache, "temporal_affine_forward")
    xp = namespace_of(**{"x (from cache)": x}, dout=dout)
    N, T, D = x.shape
    M = w.shape[1]
    check_upstream(xp, "dout", dout, x, (N, T, M), "(N, T, M), the shape of out")
    dx = dout @ xp.matrix_transpose(w)
    dw = xp.tensordot(x, dout, axes=([0, 1], [0, 1]))  # no reshape merging N with T
    db = xp.sum(dout, axis=(0, 1))
    return dx, dw, db
