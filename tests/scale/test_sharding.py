"""JAX arrays sharded over several devices: one device *set*, replicated parameters, same numbers.

Four CPU devices exist only if ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
is set before JAX starts: the checks read the findings of the four-device program of
``tests/scale/four_devices.py`` (section ``"sharding"``). x (T, N, D) and the lengths
(N,) are sharded along the batch N over the four devices, on the mesh of
``parallel.batch_mesh()`` (an ``Auto`` axis: XLA's partitioner places what the code
leaves open); the parameters come from ``init(like=x)``. The layer is a 2-layer
bidirectional LSTM with lengths, in float64, compared with the same calls on unsharded NumPy
arrays.

Not covered: on a mesh with ``Explicit`` axes (``jax.make_mesh``'s
default in JAX 0.10) the backward's reshape of (T, N, F) to (T*N, F) for the
weight gradients is refused under ``jax.jit`` (``ShardingTypeError``), and
on ``Auto`` axes XLA all-gathers the batch there.
"""

from __future__ import annotations

import pytest

from .four_devices import findings

pytest.importorskip("jax")

pytestmark = [pytest.mark.processes, pytest.mark.shared_program]  # a program with four forced devices


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return findings(tmp_path_factory, "sharding")


def _batch_sharded(s):
    return s == {"spec": [None, "data"], "replicated": False, "devices": 4}


def test_init_like_a_sharded_array_replicates_the_parameters_on_its_devices(report):
    assert report["params"], "no parameters"
    for name, s in report["params"].items():
        assert s["replicated"] and s["devices"] == 4, (name, s)


def test_a_parameter_on_one_device_beside_x_on_four_is_refused_naming_both(report):
    error = report["mixed_error"]
    assert error is not None and error.startswith("ValueError"), error
    assert "x is on devices [" in error and "weight_ih_l0" in error and "on device " in error, error


def test_jit_gives_the_unsharded_numbers_and_keeps_the_batch_sharded(report):
    jit = report["jit"]
    assert jit["diff"] < 1e-12
    assert _batch_sharded(jit["out"]) and _batch_sharded(jit["dx"]), (jit["out"], jit["dx"])
    for name, s in jit["grads"].items():
        assert s["replicated"] and s["devices"] == 4, (name, s)


def test_eager_gives_the_unsharded_numbers_and_keeps_the_batch_sharded(report):
    assert report["eager_error"] is None, report["eager_error"]
    eager = report["eager"]
    assert eager["diff"] < 1e-12
    assert _batch_sharded(eager["out"]) and _batch_sharded(eager["dx"]), (eager["out"], eager["dx"])
    for name, s in eager["grads"].items():
        assert s["replicated"] and s["devices"] == 4, (name, s)
