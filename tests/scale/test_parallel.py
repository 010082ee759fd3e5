"""portable_rnn.parallel: a data-parallel training step over 4 forced host devices equals one device."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from portable_rnn import CharModel, parallel
    from portable_rnn.optim import adam, clip_by_global_norm

    assert len(jax.devices()) == 4, jax.devices()
    model = CharModel(11, 8, 2, "lstm", 4)
    params = model.init(seed=0, xp=jnp, dtype="float64")
    opt = adam(1e-2)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 11, size=(8, 12)))
    targets = jnp.asarray(rng.integers(0, 11, size=(8, 12)))

    def step(params, opt_state, tokens, targets):
        loss, grads, _ = model.loss_and_grads(params, tokens, targets)
        grads, _ = clip_by_global_norm(grads, 1.0)
        params, opt_state = opt.update(grads, opt_state, params)
        return params, opt_state, loss

    one = jax.jit(step)
    p1, s1 = params, opt.init(params)
    losses1 = []
    for _ in range(3):
        p1, s1, loss = one(p1, s1, tokens, targets)
        losses1.append(float(loss))

    mesh = parallel.batch_mesh()
    specs = parallel.model_partition_specs(model)
    rep, tok = specs["params"], specs["tokens"]
    dp = parallel.data_parallel(step, mesh, in_specs=(rep, rep, tok, tok), out_specs=(rep, rep, rep))
    p4, s4 = parallel.shard(mesh, params, rep), parallel.shard(mesh, opt.init(params), rep)
    t4, y4 = parallel.shard(mesh, tokens, tok), parallel.shard(mesh, targets, tok)
    assert len(t4.sharding.device_set) == 4
    losses4 = []
    for _ in range(3):
        p4, s4, loss = dp(p4, s4, t4, y4)
        losses4.append(float(loss))
    np.testing.assert_allclose(losses4, losses1, rtol=1e-10)
    for key in params:
        np.testing.assert_allclose(np.asarray(p4[key]), np.asarray(p1[key]), rtol=1e-10, atol=1e-12)
    print("ok", losses1)
""")


@pytest.mark.processes
def test_data_parallel_step_on_four_devices_equals_one_device(tmp_path):
    script = tmp_path / "dp.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, str(script)], env=env, timeout=180, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")
