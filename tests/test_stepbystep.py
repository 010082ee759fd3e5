"""The deeplearning.ai step-by-step functions: documented numbers on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import portable_rnn as prnn
from portable_rnn.fixtures import FIXTURES

from .helpers import assert_on_backend


def _check_fixture(backend, dtype, tol, fixture, convert):
    results = fixture.run(fixture.draw(), convert, **fixture.options)
    assert fixture.mismatches(results, backend.to_numpy, **tol) == []
    for key, value in results.items():
        if not key.startswith("len("):
            assert_on_backend(backend, value, dtype, fixture.shapes.get(key))


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.name)
def test_documented_numbers(backend, dtype, tol, fixture):
    _check_fixture(backend, dtype, tol, fixture, lambda a: backend.asarray(a, dtype))


def test_lstm_backward_default_is_full_bptt_not_the_printed_numbers():
    """The printed lstm_backward numbers are truncate=1 (the erratum), not full BPTT."""
    full, printed = (f for f in FIXTURES if f.name.startswith("lstm_backward"))
    inputs = full.draw()
    default = full.run(inputs, np.asarray)
    truncated = full.run(inputs, np.asarray, truncate=1)
    _, index, value = printed.expected["da0[2][3]"]
    np.testing.assert_allclose(truncated["da0"][index], value, rtol=1e-7)
    assert abs(default["da0"][index] - value) > 0.1


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.name)
def test_inputs_are_never_mutated(fixture):
    """Read-only NumPy inputs: any write would raise; the values stay as drawn."""
    inputs = fixture.draw()
    snapshot = {k: v.copy() for k, v in inputs.items()}

    def read_only(a):
        a = np.asarray(a)
        a.setflags(write=False)
        return a

    fixture.run(inputs, read_only, **fixture.options)
    for k, v in snapshot.items():
        np.testing.assert_array_equal(inputs[k], v)


# ---------------------------------------------------------------- jax.jit


def _jit_pairs():
    """(name, function of numpy inputs -> pytree, fixture) for the sequence functions."""
    by_name = {f.name: f for f in FIXTURES}

    def rnn_fwd(d):
        p = {k: d[k] for k in ("Wax", "Waa", "Wya", "ba", "by")}
        return lambda x, a0, p: prnn.rnn_forward(x, a0, p)[:2], (d["x"], d["a0"], p)

    def rnn_bwd(d):
        p = {k: d[k] for k in ("Wax", "Waa", "Wya", "ba", "by")}
        return (lambda x, a0, p, da: prnn.rnn_backward(da, prnn.rnn_forward(x, a0, p)[2]),
                (d["x"], d["a0"], p, d["da"]))

    def lstm_fwd(d):
        p = {k: d[k] for k in ("Wf", "bf", "Wi", "bi", "Wo", "bo", "Wc", "bc", "Wy", "by")}
        return lambda x, a0, p: prnn.lstm_forward(x, a0, p)[:3], (d["x"], d["a0"], p)

    def lstm_bwd(d, truncate=None):
        p = {k: d[k] for k in ("Wf", "bf", "Wi", "bi", "Wo", "bo", "Wc", "bc", "Wy", "by")}
        T = d["da"].shape[2]
        return (lambda x, a0, p, da: prnn.lstm_backward(da, prnn.lstm_forward(x, a0, p)[3], truncate),
                (d["x"][:, :, :T], d["a0"], p, d["da"]))

    return [
        ("rnn_forward", rnn_fwd, by_name["rnn_forward"]),
        ("rnn_backward", rnn_bwd, by_name["rnn_backward"]),
        ("lstm_forward", lstm_fwd, by_name["lstm_forward"]),
        ("lstm_backward", lstm_bwd, by_name["lstm_backward"]),
        ("lstm_backward[truncate=2]", lambda d: lstm_bwd(d, 2), by_name["lstm_backward"]),
    ]


@pytest.mark.parametrize("name,build,fixture", _jit_pairs(), ids=lambda v: v if isinstance(v, str) else "")
def test_sequence_functions_under_jax_jit(name, build, fixture):
    jax = pytest.importorskip("jax", reason="jax: not installed (pip install 'portable-rnn[jax]')")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    fn, args = build(fixture.draw())
    args = jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.float64), args)
    eager = fn(*args)
    jitted = jax.jit(fn)(*args)
    leaves_e, leaves_j = jax.tree.leaves(eager), jax.tree.leaves(jitted)
    assert len(leaves_e) == len(leaves_j) > 0
    for e, j in zip(leaves_e, leaves_j):
        np.testing.assert_allclose(np.asarray(j), np.asarray(e), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- relu and options


def test_rnn_relu_is_a_relu_rnn(backend):
    rng = np.random.default_rng(0)
    p = {"Wax": rng.normal(size=(4, 3)), "Waa": rng.normal(size=(4, 4)),
         "Wya": rng.normal(size=(2, 4)), "ba": rng.normal(size=(4, 1)), "by": rng.normal(size=(2, 1))}
    x, a0 = rng.normal(size=(3, 5, 6)), rng.normal(size=(4, 5))
    a_expected, a_prev = [], a0
    for t in range(6):
        a_prev = np.maximum(p["Waa"] @ a_prev + p["Wax"] @ x[:, :, t] + p["ba"], 0)
        a_expected.append(a_prev)
    cv = backend.asarray
    a, _, _ = prnn.rnn_forward(cv(x), cv(a0), {k: cv(v) for k, v in p.items()}, nonlinearity="relu")
    np.testing.assert_allclose(backend.to_numpy(a), np.stack(a_expected, axis=2), rtol=1e-12)
    with pytest.raises(ValueError, match="nonlinearity"):
        prnn.rnn_forward(cv(x), cv(a0), {k: cv(v) for k, v in p.items()}, nonlinearity="sigmoid")


@pytest.mark.parametrize("truncate", [0, -1, 1.5, True])
def test_bad_truncate(truncate):
    d = FIXTURES[5].draw()
    _, _, caches = prnn.rnn_forward(d["x"], d["a0"], {k: d[k] for k in ("Wax", "Waa", "Wya", "ba", "by")})
    with pytest.raises(ValueError, match="truncate"):
        prnn.rnn_backward(d["da"], caches, truncate=truncate)


def test_mismatches_reports_a_wrong_number():
    """The comparison used by the matrix and by `portable-rnn check` can fail."""
    fixture = FIXTURES[0]
    results = fixture.run(fixture.draw(), np.asarray)
    assert fixture.mismatches(results, np.asarray, rtol=1e-7, atol=1e-8) == []
    results["a_next"] = results["a_next"] * (1 + 1e-5)
    problems = fixture.mismatches(results, np.asarray, rtol=1e-7, atol=1e-8)
    assert len(problems) == 1 and problems[0].startswith("a_next[4]")
    results["len(cache)"] = 3
    assert len(fixture.mismatches(results, np.asarray, rtol=1e-7, atol=1e-8)) == 2
