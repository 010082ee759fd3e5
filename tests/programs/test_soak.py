"""Soak test (opt in with ``--soak``): 10,000 training steps, no NaN, flat memory.

``python -m pytest tests/programs/test_soak.py --soak`` trains the character model on
the embedded corpus with gradient clipping, on NumPy and on JAX. Memory is
the process's resident set size read from /proc after 2,000 steps and again
after 10,000: it must not grow by more than 64 MiB.
"""

from __future__ import annotations

import io
import math
import os

import pytest

from portable_rnn.app.train import TrainConfig, train

pytestmark = pytest.mark.soak


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="soak: needs /proc to read memory")
@pytest.mark.parametrize("backend_name", ["numpy", "jax"])
def test_ten_thousand_steps_stay_finite_with_flat_memory(tmp_path, backend_name):
    if backend_name == "jax":
        pytest.importorskip("jax", reason="jax: not installed (pip install 'portable-rnn[jax]')")
    common = dict(out=str(tmp_path / backend_name), backend=backend_name, hidden=32, embed=16,
                  seq_len=32, batch=8, clip=1.0, lr=3e-3, log_every=1000, sample_every=5000,
                  checkpoint_every=1000, progress="lines")
    train(TrainConfig(steps=2000, **common), out=io.StringIO())
    mid = _rss_mib()
    second = train(TrainConfig(steps=10_000, resume=True, **common), out=io.StringIO())
    end = _rss_mib()
    losses = second.losses  # the whole history, resumed runs included
    assert len(second.steps) and second.steps[-1] == 10_000
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    assert end - mid < 64, f"resident memory grew {end - mid:.1f} MiB from step 2,000 to 10,000"
