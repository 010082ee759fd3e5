"""The engine is sharding-clean: batch-sharded forward+backward gathers nothing and reduces the gradients once.

The compiled programs are those of the four-device program of ``tests/scale/four_devices.py``
(section ``"clean"``): a 2-layer bidirectional LSTM with lengths, its batch over four forced
host devices, through the hand-written forward+backward, ``jax.grad`` of ``jax.apply`` and a
checkpointed tape (each held to the unsharded numbers, from NumPy), and a ``CharModel`` step.
"""

from __future__ import annotations

import pytest

from .four_devices import findings

pytest.importorskip("jax")

pytestmark = [pytest.mark.processes, pytest.mark.shared_program]  # a program with four forced devices


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return findings(tmp_path_factory, "clean")


@pytest.mark.parametrize("program", ["layer", "apply", "checkpoint", "charmodel"])
def test_no_gather_and_one_gradient_reduction(report, program):
    entry = report[program]
    assert entry.get("all-gather", 0) == 0, entry
    assert entry.get("all-to-all", 0) == 0 and entry.get("collective-permute", 0) == 0, entry
    if program == "checkpoint":
        # Weight gradients are summed per segment (the loop over segments and the tail, per
        # layer), each sum reduced over the devices: the price of not keeping every step.
        assert 1 <= entry.get("all-reduce", 0) <= 4, entry
    else:
        assert entry.get("all-reduce", 0) == 1, entry  # every weight gradient, summed in one all-reduce
    if "diff" in entry:
        assert entry["diff"] < 1e-12, entry
