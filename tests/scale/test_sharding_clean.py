"""The engine is sharding-clean: batch-sharded forward+backward gathers nothing and reduces the gradients once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")

SCRIPT = textwrap.dedent("""
    import json, re, jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P
    from portable_rnn import CharModel, LSTM, parallel
    from portable_rnn.jax import apply

    spec = LSTM(3, 4, 2, bidirectional=True)
    mesh = parallel.batch_mesh()
    T, N = 6, 8
    rng = np.random.default_rng(0)
    x_host, len_host = rng.normal(size=(T, N, 3)), rng.integers(1, T + 1, size=N)
    params_host = spec.init(seed=0, xp=jnp, dtype="float64")
    x = parallel.shard(mesh, jnp.asarray(x_host), P(None, "data", None))
    lengths = parallel.shard(mesh, jnp.asarray(len_host), P("data"))
    params = parallel.shard(mesh, params_host, P())

    def hand(params, x, lengths):
        out, final, tape = spec.forward(params, x, lengths=lengths)
        return spec.backward(params, tape, jnp.ones_like(out))[:2]

    def via_apply(params, x, lengths):
        loss = lambda p, x: jnp.sum(apply(spec, p, x, lengths=lengths)[0] ** 2)
        return jax.grad(loss, argnums=(0, 1))(params, x)

    def checkpointed(params, x, lengths):  # segments of 4 and 2 steps: the scan and the tail
        out, final, tape = spec.forward(params, x, lengths=lengths, tape="checkpoint", checkpoint_every=4)
        return spec.backward(params, tape, jnp.ones_like(out))[:2]

    model = CharModel(11, 8, 2, "gru", 4)
    mparams = parallel.shard(mesh, model.init(seed=0, xp=jnp, dtype="float64"), P())
    tokens = parallel.shard(mesh, jnp.asarray(rng.integers(0, 11, size=(N, T))), P("data", None))

    def char_step(params, tokens):
        return model.loss_and_grads(params, tokens, tokens)[:2]

    report = {}
    for name, f, args, host_args in (
        ("layer", hand, (params, x, lengths), (params_host, jnp.asarray(x_host), jnp.asarray(len_host))),
        ("apply", via_apply, (params, x, lengths), (params_host, jnp.asarray(x_host), jnp.asarray(len_host))),
        ("checkpoint", checkpointed, (params, x, lengths),
         (params_host, jnp.asarray(x_host), jnp.asarray(len_host))),
        ("charmodel", char_step, (mparams, tokens), None),
    ):
        text = jax.jit(f).lower(*args).compile().as_text()
        ops = re.findall(r"\\b(all-gather|all-reduce|all-to-all|collective-permute)(?:-start)?\\(", text)
        entry_lines = [l.strip()[:300] for l in text.splitlines() if re.search(r"\\ball-gather(?:-start)?\\(", l)]
        entry = {op: ops.count(op) for op in set(ops)}
        if host_args is not None:
            a = jax.tree.leaves(jax.jit(f)(*args))
            b = jax.tree.leaves(jax.jit(f)(*host_args))
            entry["diff"] = max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(a, b))
        entry["gathers"] = entry_lines
        report[name] = entry
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    import json

    script = tmp_path_factory.mktemp("hlo") / "hlo.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, str(script)], env=env, timeout=240, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


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
