r"""Batch inference on Dask: the layer (or the character model) mapped over blocks of the batch.

Dask arrays are not run through the engine itself: its time loop would
become tens of thousands of tiny tasks. Instead every block of the batch
axis is one task that runs the ordinary NumPy (or CuPy) forward on its
block; sequences are independent, so the result equals one process's exactly.
Dask is for scoring and inference here, not for step-by-step training (every
step would ship the parameters to the workers).

The input must be chunked along the batch axis only (one chunk along time
and features); parameters are NumPy or CuPy arrays, shipped once per block
inside the graph::

    import dask.array as da
    from portable_rnn import GRU, dask as prnn_dask

    x = da.from_array(x_host, chunks=(-1, 256, -1))        # (T, N, D), blocks of 256 sequences
    out, h_n = prnn_dask.forward(spec, params, x)          # dask arrays, nothing computed yet
    out = out.compute()
"""

from __future__ import annotations

import dask
import dask.array as da

from .losses import softmax_cross_entropy

__all__ = ["forward", "char_model_nll", "char_model_nll_parts"]


def _batch_blocks(name: str, x, batch_axis: int):
    """The delayed blocks of ``x`` along ``batch_axis``; refuses chunking along any other axis."""
    if not isinstance(x, da.Array):
        raise TypeError(f"{name} must be a dask array, got {type(x).__name__}")
    split = [axis for axis, chunks in enumerate(x.chunks) if axis != batch_axis and len(chunks) > 1]
    if split:
        raise ValueError(
            f"{name} is chunked along axis {split[0]} too (chunks {x.chunks}); chunk it along the batch "
            f"axis {batch_axis} only, e.g. x.rechunk({{{split[0]}: -1}})"
        )
    return list(x.to_delayed().reshape(-1)), x.chunks[batch_axis]


def _run_layer(spec, params, x, lengths):
    out, final, _ = spec.forward(params, x, None, lengths)
    return out, final


def forward(spec, params, x, lengths=None):
    """``spec.forward`` over a dask array chunked along the batch; returns dask arrays.

    Parameters
    ----------
    spec : portable_rnn.RNN, LSTM or GRU
    params : dict of str to numpy or cupy arrays
    x : dask array (T, N, D), or (N, T, D) when ``spec.batch_first``
        Chunked along N only; blocks are NumPy or CuPy arrays.
    lengths : dask array (N,) of integers, optional
        Chunked like x's batch axis.

    Returns
    -------
    out : dask array (T, N, dirs*H), or (N, T, dirs*H)
    final : dask array (L*dirs, N, H), or a pair of them for LSTM
        The initial state is zeros.
    """
    batch_axis = 0 if spec.batch_first else 1
    blocks, sizes = _batch_blocks("x", x, batch_axis)
    length_blocks = [None] * len(blocks)
    if lengths is not None:
        length_blocks, length_sizes = _batch_blocks("lengths", lengths, 0)
        if length_sizes != sizes:
            raise ValueError(f"lengths has chunks {length_sizes}; expected x's batch chunks {sizes}")
    T, F = x.shape[1 - batch_axis], spec.num_directions * spec.hidden_size
    LD, H, n_states = spec.num_layers * spec.num_directions, spec.hidden_size, spec.cell.n_states
    outs: list = []
    finals: list[list] = [[] for _ in range(n_states)]
    run = dask.delayed(_run_layer, nout=2)
    for block, block_lengths, n in zip(blocks, length_blocks, sizes):
        out, final = run(spec, params, block, block_lengths)
        shape = (n, T, F) if spec.batch_first else (T, n, F)
        outs.append(da.from_delayed(out, shape, dtype=x.dtype, meta=x._meta))
        parts = [final] if n_states == 1 else [final[j] for j in range(n_states)]
        for j, part in enumerate(parts):
            finals[j].append(da.from_delayed(part, (LD, n, H), dtype=x.dtype, meta=x._meta))
    out = da.concatenate(outs, axis=batch_axis)
    final = tuple(da.concatenate(f, axis=1) for f in finals)
    return out, (final if n_states > 1 else final[0])


def _nll(model, params, tokens, targets):
    """Summed negative log-likelihood (nats) of one block of sequences, as a (1,) array."""
    from array_api_compat import array_namespace

    logits, _ = model.forward(params, tokens)
    loss, _ = softmax_cross_entropy(logits, targets, reduction="sum")
    return array_namespace(loss).reshape(loss, (1,))


def char_model_nll(model, params, tokens, targets):
    """Total negative log-likelihood of ``targets`` under a :class:`~portable_rnn.CharModel`, on Dask.

    Parameters
    ----------
    model : portable_rnn.CharModel
    params : dict of str to numpy or cupy arrays
    tokens, targets : dask arrays (N, T) of integers, chunked along N only

    Returns
    -------
    dask array ()
        The summed negative log-likelihood in nats (divide by ``targets.size``
        for the mean; by ``log(2)`` too for bits per character).
    """
    dtype = params["decoder.weight"].dtype
    parts = [da.from_delayed(part, (1,), dtype=dtype) for part in char_model_nll_parts(model, params, tokens, targets)]
    return da.sum(da.concatenate(parts))


def char_model_nll_parts(model, params, tokens, targets) -> list:
    """:func:`char_model_nll` as one ``dask.delayed`` value per chunk of the batch, each a (1,) array.

    Their sum is :func:`char_model_nll`'s result; computed one by one (e.g.
    with ``distributed.as_completed``), they show how far the work has got.
    """
    blocks, sizes = _batch_blocks("tokens", tokens, 0)
    target_blocks, target_sizes = _batch_blocks("targets", targets, 0)
    if target_sizes != sizes or tokens.shape != targets.shape:
        raise ValueError(f"targets has shape {targets.shape} and chunks {targets.chunks}; "
                         f"expected those of tokens, {tokens.shape} and {tokens.chunks}")
    return [dask.delayed(_nll)(model, params, b, t) for b, t in zip(blocks, target_blocks)]
