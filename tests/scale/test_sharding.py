"""JAX arrays sharded over several devices: one device *set*, replicated parameters, same numbers.

Four CPU devices exist only if ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
is set before JAX starts, so everything runs in one subprocess (about 10 s)
whose findings the tests read. x (T, N, D) and the lengths (N,) are sharded
along the batch N over the four devices, on a mesh with ``Auto`` axes (XLA's
partitioner places what the code leaves open); the parameters come from
``init(like=x)``. The layer is a 2-layer bidirectional LSTM with lengths, in
float64, compared with the same calls on one device.

Not covered: on a mesh with ``Explicit`` axes (``jax.make_mesh``'s
default in JAX 0.10) the backward's reshape of (T, N, F) to (T*N, F) for the
weight gradients is refused under ``jax.jit`` (``ShardingTypeError``), and
on ``Auto`` axes XLA all-gathers the batch there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("jax")

_SCRIPT = r"""
import json
import numpy as np
import jax, jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from portable_rnn import backends
from portable_rnn.layers import LSTM

def spec_of(a):
    s = a.sharding
    return {"spec": list(getattr(s, "spec", ())), "replicated": bool(s.is_fully_replicated),
            "devices": len(s.device_set)}

def error_of(fn):
    try:
        fn()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None

def fwd_bwd(spec, p, x, lengths, d_out):
    out, final, tape = spec.forward(p, x, lengths=lengths)
    grads, dx, d0 = spec.backward(p, tape, d_out)
    return out, grads, dx

def diff(a, b):
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in leaves)

report = {}
with backends.jax_float64():
    mesh = jax.make_mesh((4,), ("batch",), axis_types=(AxisType.Auto,))
    batch3, batch1 = NamedSharding(mesh, P(None, "batch")), NamedSharding(mesh, P("batch"))
    rng = np.random.default_rng(0)
    T, N, D, H = 6, 8, 3, 5
    spec = LSTM(D, H, num_layers=2, bidirectional=True)
    xh = rng.standard_normal((T, N, D))
    lh = np.array([6, 3, 5, 1, 6, 2, 4, 6])
    dh = rng.standard_normal((T, N, 2 * H))
    x, lengths, d_out = (jax.device_put(xh, batch3), jax.device_put(lh, batch1), jax.device_put(dh, batch3))
    p = spec.init(0, like=x)
    report["params"] = {k: spec_of(v) for k, v in p.items()}
    one = jax.devices()[0]
    p1 = {k: jax.device_put(np.asarray(v), one) for k, v in p.items()}
    ref = fwd_bwd(spec, p1, *(jax.device_put(a, one) for a in (xh, lh, dh)))
    report["mixed_error"] = error_of(lambda: spec.forward(p1, x, lengths=lengths))
    got = {}
    report["eager_error"] = error_of(lambda: got.update(eager=fwd_bwd(spec, p, x, lengths, d_out)))
    jitted = jax.jit(lambda p, x, l, d: fwd_bwd(spec, p, x, l, d))
    got["jit"] = jitted(p, x, lengths, d_out)
    for mode, (out, grads, dx) in got.items():
        report[mode] = {"diff": diff((out, grads, dx), ref), "out": spec_of(out), "dx": spec_of(dx),
                        "grads": {k: spec_of(v) for k, v in grads.items()}}
print("REPORT" + json.dumps(report))
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """What the four-device subprocess found (it runs once for this module)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path_factory.mktemp("sharding"), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("REPORT"))
    return json.loads(line[len("REPORT"):])


def _batch_sharded(s):
    return s == {"spec": [None, "batch"], "replicated": False, "devices": 4}


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
