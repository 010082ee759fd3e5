"""Padding never leaks: whatever sits at padded steps, every result equals the one for zeros there.

Torch's packed sequences never read padded entries; here they are read and
must be selected away, not multiplied by 0 (``0 * NaN`` is NaN). Each test
builds inputs once with zeros and once with garbage (NaN, +-inf, 1e30) at the
padded positions and asks for bit-identical results.
"""

from __future__ import annotations

import numpy as np
import pytest

from portable_rnn import cs231n, losses
from portable_rnn.layers import LAYERS

GARBAGE = np.array([np.nan, np.inf, -np.inf, 1e30])


def _poison(a: np.ndarray, padded: np.ndarray, rng) -> np.ndarray:
    """A copy of ``a`` with garbage wherever ``padded`` (broadcast to ``a``) is true."""
    out = a.copy()
    where = np.broadcast_to(padded, a.shape)
    out[where] = rng.choice(GARBAGE, size=int(where.sum())).astype(a.dtype)
    return out


def _layer_results(backend, spec, params, x, lengths, d_out):
    def fwd_bwd(params, x, lengths, d_out):
        out, state, tape = spec.forward(params, x, lengths=lengths)
        grads, dx, dstate0 = spec.backward(params, tape, d_out, state)
        return out, state, grads, dx, dstate0

    result = backend.run(fwd_bwd, params, x, lengths, d_out)
    leaves = []

    def collect(tree):
        if isinstance(tree, dict):
            for key in sorted(tree):
                collect(tree[key])
        elif isinstance(tree, (tuple, list)):
            for leaf in tree:
                collect(leaf)
        else:
            leaves.append(backend.to_numpy(tree))

    collect(result)
    return leaves


# The portable code runs every mode and layout on array_api_strict; JAX runs it compiled (an LSTM,
# batch-first) and eagerly, op by op (a stacked GRU, time-major).
@pytest.mark.jit(mode=["lstm"], batch_first=[True])
@pytest.mark.eager_jax(mode=["gru"], batch_first=[False])
@pytest.mark.parametrize("mode", list(LAYERS))
@pytest.mark.parametrize("batch_first", [False, True])
def test_garbage_at_padded_steps_of_x_and_d_out_changes_nothing(backend, mode, batch_first):
    rng = np.random.default_rng(7)
    T, N, D, H = 5, 3, 2, 4
    spec = LAYERS[mode](D, H, 2 if mode == "gru" else 1, bidirectional=True, batch_first=batch_first)
    lengths = np.array([5, 2, 1])
    padded = np.arange(T)[:, None] >= lengths[None, :]  # (T, N)
    padded = (padded.T if batch_first else padded)[..., None]
    shape = (N, T) if batch_first else (T, N)
    x = rng.normal(size=(*shape, D)) * (~padded)
    d_out = rng.normal(size=(*shape, 2 * H)) * (~padded)
    dtype = "float64"
    params = spec.init(seed=1, xp=backend.xp, dtype=dtype, device=backend.device)
    length_arr = backend.asarray(lengths)
    clean = _layer_results(backend, spec, params, backend.asarray(x, dtype), length_arr,
                           backend.asarray(d_out, dtype))
    dirty = _layer_results(backend, spec, params, backend.asarray(_poison(x, padded, rng), dtype),
                           length_arr, backend.asarray(_poison(d_out, padded, rng), dtype))
    assert len(clean) == len(dirty)
    for a, b in zip(clean, dirty):
        assert np.all(np.isfinite(a))
        np.testing.assert_array_equal(a, b)


@pytest.mark.backends("numpy", "array_api_strict", "torch", "jax")
def test_masked_losses_ignore_garbage_under_the_mask(backend):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 6, 5))
    targets = rng.integers(0, 5, size=(4, 6))
    mask = rng.random((4, 6)) < 0.6
    clean, dirty = logits * mask[..., None], _poison(logits, ~mask[..., None], rng)
    y = (rng.random((4, 6, 5)) < 0.5).astype(np.float64)
    cases = [(losses.softmax_cross_entropy, targets, mask),
             (losses.softmax_cross_entropy, targets, mask.astype(np.float64)),  # weights, not bools
             (losses.sigmoid_binary_cross_entropy, y, mask),
             (cs231n.temporal_softmax_loss, targets, mask)]
    for loss_fn, labels, weights in cases:
        results = []
        for lg in (clean, dirty):
            args = (backend.asarray(lg, "float64"), backend.asarray(labels), backend.asarray(weights))
            results.append([backend.to_numpy(r) for r in backend.run(loss_fn, *args)])
        for a, b in zip(*results):  # the loss, then its gradient
            assert np.all(np.isfinite(a)), loss_fn.__name__
            np.testing.assert_array_equal(a, b, err_msg=loss_fn.__name__)
