"""portable_rnn.dask: batch inference over blocks of the batch equals one process's numbers."""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

from portable_rnn import GRU, LSTM, CharModel  # noqa: E402
from portable_rnn import dask as prnn_dask  # noqa: E402
from portable_rnn.losses import softmax_cross_entropy  # noqa: E402


@pytest.mark.parametrize("spec", [LSTM(3, 4, 2, bidirectional=True), GRU(3, 4, batch_first=True)],
                         ids=["lstm-2l-bi", "gru-bf"])
def test_forward_over_batch_blocks_equals_one_call(spec):
    rng = np.random.default_rng(0)
    N, T = 10, 7
    x = rng.normal(size=(N, T, 3) if spec.batch_first else (T, N, 3))
    lengths = rng.integers(1, T + 1, size=N)
    params = spec.init(seed=0, like=x)
    out, final, _ = spec.forward(params, x, lengths=lengths)
    chunks = (4, -1, -1) if spec.batch_first else (-1, 4, -1)
    d_out, d_final = prnn_dask.forward(spec, params, da.from_array(x, chunks=chunks),
                                       lengths=da.from_array(lengths, chunks=4))
    assert d_out.numblocks[0 if spec.batch_first else 1] == 3
    np.testing.assert_array_equal(d_out.compute(scheduler="sync"), out)
    for a, b in zip(final if isinstance(final, tuple) else (final,),
                    d_final if isinstance(d_final, tuple) else (d_final,)):
        np.testing.assert_array_equal(b.compute(scheduler="sync"), a)


def test_chunking_along_time_is_refused_with_the_fix():
    spec = GRU(3, 4)
    x = da.zeros((6, 4, 3), chunks=(3, 2, -1))
    with pytest.raises(ValueError, match=r"chunked along axis 0 too .*x\.rechunk\(\{0: -1\}\)"):
        prnn_dask.forward(spec, spec.init(like=np.zeros((1, 1, 3))), x)
    with pytest.raises(TypeError, match="x must be a dask array"):
        prnn_dask.forward(spec, spec.init(like=np.zeros((1, 1, 3))), np.zeros((6, 4, 3)))


def test_char_model_nll_on_a_local_cluster_equals_one_process():
    distributed = pytest.importorskip("distributed")
    model = CharModel(12, 8, 1, "lstm", 4)
    params = model.init(seed=0, dtype="float64")
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 12, size=(9, 11))
    targets = rng.integers(0, 12, size=(9, 11))
    logits, _ = model.forward(params, tokens)
    expected, _ = softmax_cross_entropy(logits, targets, reduction="sum")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as client:
        total = prnn_dask.char_model_nll(model, params, da.from_array(tokens, chunks=(4, -1)),
                                         da.from_array(targets, chunks=(4, -1)))
        got = client.compute(total).result(timeout=60)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
