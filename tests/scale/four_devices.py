"""One program on four forced JAX host devices, whose findings several test modules read.

Four CPU devices exist only if ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` is
set before JAX starts, so everything runs in one subprocess, once per test session (the
pytest-xdist workers share its findings; see :func:`tests.helpers.once_per_session`). Each
section is what one test module checks:

- ``"sharding"`` (``test_sharding.py``): a 2-layer bidirectional LSTM with lengths, float64,
  x (T, N, D) and the lengths (N,) sharded along the batch over the four devices of
  :func:`portable_rnn.parallel.batch_mesh` (``Auto`` axes: XLA's partitioner places what the
  code leaves open), the parameters from ``init(like=x)``; forward+backward eager and under
  ``jax.jit`` against the same calls on unsharded NumPy arrays.
- ``"clean"`` (``test_sharding_clean.py``): the collectives in the compiled programs of that
  layer's forward+backward (the same compile as the section above), of ``jax.apply``'s gradient,
  of a checkpointed tape and of a ``CharModel`` step, with the sharded programs' numbers
  against the unsharded reference.
- ``"data_parallel"`` (``test_parallel.py``): three Adam steps of a ``CharModel`` through
  :func:`portable_rnn.parallel.data_parallel` against the same steps unsharded (on NumPy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import once_per_session

SCRIPT = r"""
import json, re
import numpy as np
import jax, jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from portable_rnn import CharModel, backends, parallel
from portable_rnn.jax import apply
from portable_rnn.layers import LSTM
from portable_rnn.optim import adam, clip_by_global_norm

assert len(jax.devices()) == 4, jax.devices()


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


def diff(a, b):
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in leaves)


def collectives(compiled):
    text = compiled.as_text()
    ops = re.findall(r"\b(all-gather|all-reduce|all-to-all|collective-permute)(?:-start)?\(", text)
    entry = {op: ops.count(op) for op in set(ops)}
    entry["gathers"] = [l.strip()[:300] for l in text.splitlines() if re.search(r"\ball-gather(?:-start)?\(", l)]
    return entry


report = {}
with backends.jax_float64():
    mesh = parallel.batch_mesh()  # the four devices on one Auto axis "data"
    rng = np.random.default_rng(0)
    T, N, D, H = 6, 8, 3, 5
    spec = LSTM(D, H, num_layers=2, bidirectional=True)
    xh = rng.standard_normal((T, N, D))
    lh = np.array([6, 3, 5, 1, 6, 2, 4, 6])
    dh = rng.standard_normal((T, N, 2 * H))
    x = parallel.shard(mesh, jnp.asarray(xh), P(None, "data", None))
    lengths = parallel.shard(mesh, jnp.asarray(lh), P("data"))
    d_out = parallel.shard(mesh, jnp.asarray(dh), P(None, "data", None))
    p = spec.init(0, like=x)

    def fwd_bwd(p, x, lengths, d_out):
        out, final, tape = spec.forward(p, x, lengths=lengths)
        grads, dx, d0 = spec.backward(p, tape, d_out)
        return out, grads, dx

    def via_apply(p, x, lengths, d_out):  # the same gradients, through jax.grad of apply
        loss = lambda p, x: jnp.sum(apply(spec, p, x, lengths=lengths)[0] * d_out)
        return jax.grad(loss, argnums=(0, 1))(p, x)

    def checkpointed(p, x, lengths, d_out):  # segments of 4 and 2 steps: the scan and the tail
        out, final, tape = spec.forward(p, x, lengths=lengths, retain="checkpoint", checkpoint_every=4)
        return spec.backward(p, tape, d_out)[:2]

    # -- "sharding": where the arrays live, eager and compiled
    sharding = report["sharding"] = {"params": {k: spec_of(v) for k, v in p.items()}}
    one = jax.devices()[0]
    p1 = {k: jax.device_put(np.asarray(v), one) for k, v in p.items()}
    # the unsharded numbers, from NumPy: eager JAX on one device would compile every operation again
    ref = fwd_bwd({k: np.asarray(v) for k, v in p.items()}, xh, lh, dh)
    sharding["mixed_error"] = error_of(lambda: spec.forward(p1, x, lengths=lengths))
    got = {}
    sharding["eager_error"] = error_of(lambda: got.update(eager=fwd_bwd(p, x, lengths, d_out)))
    layer = jax.jit(fwd_bwd).lower(p, x, lengths, d_out).compile()
    got["jit"] = layer(p, x, lengths, d_out)
    for mode, (out, grads, dx) in got.items():
        sharding[mode] = {"diff": diff((out, grads, dx), ref), "out": spec_of(out), "dx": spec_of(dx),
                          "grads": {k: spec_of(v) for k, v in grads.items()}}

    # -- "clean": the collectives of the compiled programs, their numbers against the reference
    clean = report["clean"] = {"layer": collectives(layer)}
    clean["layer"]["diff"] = sharding["jit"]["diff"]
    for name, f in (("apply", via_apply), ("checkpoint", checkpointed)):
        compiled = jax.jit(f).lower(p, x, lengths, d_out).compile()
        clean[name] = collectives(compiled)
        clean[name]["diff"] = diff(compiled(p, x, lengths, d_out), ref[1:])
    model = CharModel(11, 8, 2, "gru", 4)
    mparams = parallel.shard(mesh, model.init(seed=0, xp=jnp, dtype="float64"), P())
    tokens = parallel.shard(mesh, jnp.asarray(rng.integers(0, 11, size=(N, T))), P("data", None))
    char_step = lambda params, tokens: model.loss_and_grads(params, tokens, tokens)[:2]
    clean["charmodel"] = collectives(jax.jit(char_step).lower(mparams, tokens).compile())

    # -- "data_parallel": three Adam steps over the four devices against the unsharded steps
    model = CharModel(11, 8, 2, "lstm", 4)
    params = model.init(seed=0, xp=jnp, dtype="float64")
    opt = adam(1e-2)
    tokens = jnp.asarray(rng.integers(0, 11, size=(8, 12)))
    targets = jnp.asarray(rng.integers(0, 11, size=(8, 12)))

    def step(params, opt_state, tokens, targets):
        loss, grads, _ = model.loss_and_grads(params, tokens, targets)
        grads, _ = clip_by_global_norm(grads, 1.0)
        params, opt_state = opt.update(grads, opt_state, params)
        return params, opt_state, loss

    # the reference: the same steps unsharded, on NumPy (jax.jit on one device would compile once more)
    p_1 = {k: np.asarray(v) for k, v in params.items()}
    s_1 = opt.init(p_1)
    losses_1 = []
    for _ in range(3):
        p_1, s_1, loss = step(p_1, s_1, np.asarray(tokens), np.asarray(targets))
        losses_1.append(float(loss))
    specs = parallel.model_partition_specs(model)
    rep, tok = specs["params"], specs["tokens"]
    dp = parallel.data_parallel(step, mesh, in_specs=(rep, rep, tok, tok), out_specs=(rep, rep, rep))
    p_4, s_4 = parallel.shard(mesh, params, rep), parallel.shard(mesh, opt.init(params), rep)
    t_4, y_4 = parallel.shard(mesh, tokens, tok), parallel.shard(mesh, targets, tok)
    losses_4 = []
    for _ in range(3):
        p_4, s_4, loss = dp(p_4, s_4, t_4, y_4)
        losses_4.append(float(loss))
    report["data_parallel"] = {
        "token_devices": len(t_4.sharding.device_set), "losses_1": losses_1, "losses_4": losses_4,
        "params_1": {k: np.asarray(v).tolist() for k, v in p_1.items()},
        "params_4": {k: np.asarray(v).tolist() for k, v in p_4.items()},
    }
print("REPORT" + json.dumps(report))
"""


def _run(folder) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                            cwd=folder, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("REPORT"))
    return json.loads(line[len("REPORT"):])


def findings(tmp_path_factory, section: str) -> dict:
    """What the four-device program found for ``section`` (the program runs once per session)."""
    return once_per_session(tmp_path_factory, "four-devices", _run)[section]
