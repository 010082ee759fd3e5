"""``portable-rnn bench --long``: the report, the skip rule, the memory measurement and the sqrt(T) reference.

No timing is asserted: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import functools
import io
import json
import os

import numpy as np
import pytest

from portable_rnn.app import cli
from portable_rnn.app.bench import long as bench_long
from portable_rnn.layers import LSTM


@pytest.mark.processes
def test_quick_cli_run_writes_every_contender(tmp_path, capsys):
    path = tmp_path / "long.json"
    # One length keeps it to a few seconds; the skip rule across lengths is tested with a fake worker below.
    assert cli.main(["bench", "--long", "--quick", "--long-lengths", "30", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["schema"] == bench_long.SCHEMA
    assert report["settings"]["lengths"] == [30] and report["settings"]["D"] == bench_long.DEFAULT_INPUT
    rows = {(r["contender"], r["T"]): r for r in report["results"]}
    assert set(rows) == {(name, 30) for name in bench_long.CONTENDERS}
    for (name, _), row in rows.items():
        assert row["out_bytes"] == 30 * 8 * 256 * 4
        if not bench_long._installed(bench_long.CONTENDERS[name][0]):
            assert row["status"] == "skipped" and "not installed" in row["reason"]
            continue
        assert row["status"] == "ok", row["reason"]
        assert len(row["times_s"]) == 5 and row["median_s"] > 0
        if os.access("/proc/self/clear_refs", os.W_OK):
            assert row["peak_bytes"] >= row["out_bytes"]  # the run holds its output at least
    assert [t["met"] in (True, False, None) for t in report["targets"]] == [True] * 5
    printed = capsys.readouterr().out
    assert all(name in printed for name in bench_long.CONTENDERS) and "targets:" in printed


def _fake_worker(calls):
    """A worker whose peaks are given: ``jax full`` (if asked) grows past the fake MemAvailable."""

    def worker(name, T, D, threads):
        calls.append((name, T))
        if name == "torch.nn":
            return {"error": "worker killed by signal 9 (out of memory?)"}
        peak = {"numpy full": 100 * T, "numpy checkpoint": 5 * 10**6, "jax full": 600 * 2**20 * T // 10}.get(name)
        times = [0.3] if name == "numpy checkpoint" else [0.2, 0.1, 0.4]
        return {"peak_bytes": T * 10**5 if peak is None else peak, "times_s": times, "compile_s": None}

    return worker


def test_a_contender_that_would_not_fit_or_failed_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.setattr(bench_long, "_installed", lambda library: True)
    monkeypatch.setattr(bench_long, "mem_available", lambda: 2**30)
    calls, out = [], io.StringIO()
    report = bench_long.run_long_bench([10, 20], out=out, worker=_fake_worker(calls))
    rows = {(r["contender"], r["T"]): r for r in report["results"]}
    # 600 MiB at T=10 -> 1200 MiB at T=20, over 80% of 1 GiB: never started.
    skipped = rows["jax full", 20]
    assert skipped["status"] == "skipped" and "exceeds 80% of MemAvailable" in skipped["reason"]
    assert skipped["estimate_bytes"] == 1200 * 2**20 and ("jax full", 20) not in calls
    assert rows["torch.nn", 10]["status"] == "failed" and "signal 9" in rows["torch.nn", 10]["reason"]
    assert rows["torch.nn", 20]["reason"] == "failed at T=10" and ("torch.nn", 20) not in calls
    assert rows["numpy none", 20]["estimate_bytes"] == 2 * 10**6 and rows["numpy none", 20]["median_s"] == 0.2
    ratio = report["ratios"]["20"]["numpy checkpoint/numpy full"]
    assert ratio == pytest.approx({"peak": 5 * 10**6 / 2000, "time": 1.5})
    targets = {t["name"]: t for t in report["targets"]}
    # No T = 10,000 here: numpy is judged at the longest T both ran, jax at the only one.
    assert targets["numpy checkpoint/full time at T=20"]["met"] is False
    assert targets["jax checkpoint/full peak at T=10"]["value"] == pytest.approx(1e6 / (600 * 2**20))
    assert "skipped: estimated peak" in out.getvalue()


def test_plan_estimates_linearly_and_carries_a_skip_forward():
    ran = {"T": 1000, "status": "ok", "peak_bytes": 10**9, "estimate_bytes": None, "reason": None}
    assert bench_long.plan(ran, 10000, 100 * 10**9) == (10**10, None)
    estimate, reason = bench_long.plan(ran, 10000, 10**10)
    assert estimate == 10**10 and "exceeds 80%" in reason
    skipped = {"T": 10000, "status": "skipped", "peak_bytes": None, "estimate_bytes": 10**10, "reason": reason}
    assert bench_long.plan(skipped, 100000, 10**10)[0] == 10**11


@pytest.mark.processes
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="the peak RSS cannot be reset here")
def test_the_worker_sees_a_known_allocation():
    measured = bench_long._spawn("probe", 200_000_000, 1, 1)  # fills a 200 MB array
    assert 190e6 <= measured["peak_bytes"] <= 260e6


@pytest.mark.parametrize("T", [50, 49, 1])  # a shorter last segment, equal segments, one step
def test_sqrt_checkpoint_reference_gives_the_plain_reference_gradients(T):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from portable_rnn.app.bench.references import jax_reference_forward

    rng = np.random.default_rng(T)
    x = jnp.asarray(rng.standard_normal((T, 3, 5)).astype(np.float32))
    p = {k: jnp.asarray(v) for k, v in LSTM(5, 6).init(seed=0, like=np.asarray(x)).items()}
    weights = jnp.asarray(rng.standard_normal((T, 3, 6)).astype(np.float32))  # a misplaced step would show

    def grads(forward):
        return jax.jit(jax.grad(lambda p, x: jnp.sum(forward(p, x) * weights), argnums=(0, 1)))(p, x)

    want = grads(functools.partial(jax_reference_forward, "lstm"))
    got = grads(bench_long.sqrt_checkpoint_forward)
    for w, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
        assert g.dtype == np.float32
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)
    names = _primitives(jax.make_jaxpr(bench_long.sqrt_checkpoint_forward)(p, x).jaxpr)
    assert any(n.startswith(("remat", "checkpoint")) for n in names)  # jax.checkpoint's primitive


def _primitives(jaxpr):
    """Names of the primitives in ``jaxpr`` and the jaxprs inside it (scan bodies, checkpoints)."""
    for eqn in jaxpr.eqns:
        yield eqn.primitive.name
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)  # a ClosedJaxpr holds its Jaxpr
            if hasattr(inner, "eqns"):
                yield from _primitives(inner)


@pytest.mark.parametrize("argv, message", [
    (["--long", "--long-lengths", "1000,ten"], "expected comma-separated lengths >= 2"),
    (["--long", "--long-lengths", "1"], "expected comma-separated lengths >= 2"),
    (["--long", "--long-input", "0"], "expected a positive integer"),
    (["--long-input", "16"], "need --long"),
    (["--long", "--train"], "are different benches"),
])
def test_bad_long_flags_answer_one_line_and_exit_2(argv, message, capsys):
    assert cli.main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
