"""portable_rnn.parallel: a data-parallel training step over 4 forced host devices equals one device.

The steps run in the four-device program of ``tests/scale/four_devices.py`` (section
``"data_parallel"``): three Adam steps (clipped) of a 2-layer LSTM ``CharModel`` in float64,
the batch sharded by :func:`portable_rnn.parallel.shard`, the step compiled by
:func:`portable_rnn.parallel.data_parallel`, against the same steps unsharded (on NumPy, the
batch whole: no second program to compile).
"""

from __future__ import annotations

import numpy as np
import pytest

from .four_devices import findings

pytest.importorskip("jax")


@pytest.mark.processes
@pytest.mark.shared_program
def test_data_parallel_step_on_four_devices_equals_one_device(tmp_path_factory):
    found = findings(tmp_path_factory, "data_parallel")
    assert found["token_devices"] == 4
    assert len(found["losses_1"]) == 3
    np.testing.assert_allclose(found["losses_4"], found["losses_1"], rtol=1e-10)
    assert found["params_4"].keys() == found["params_1"].keys()
    for key, value in found["params_1"].items():
        np.testing.assert_allclose(np.asarray(found["params_4"][key]), np.asarray(value), rtol=1e-10, atol=1e-12,
                                   err_msg=key)
