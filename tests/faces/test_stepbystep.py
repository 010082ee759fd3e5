"""The deeplearning.ai step-by-step functions: documented numbers on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import portable_rnn as prnn
from portable_rnn.testing.fixtures import FIXTURES

from ..helpers import assert_on_backend


BY_NAME = {f.name: f for f in FIXTURES}


def _run_fixture(inputs, *, name):
    """The documented fixture ``name`` on inputs already on the backend."""
    fixture = BY_NAME[name]
    return fixture.run(inputs, lambda a: a, **fixture.options)


# the sequence functions under jax.jit; the cell functions are their steps. Eager JAX runs float32,
# where its dtype handling could differ from the other backends': float64 JAX is jax:jit's, and the
# documented numbers on eager JAX in both dtypes are also `portable-rnn check`'s, which
# tests/test_docs.py runs (docs/how-to/gpus.md).
@pytest.mark.jit(name=["rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "lstm_backward[truncate=1]"])
@pytest.mark.eager_jax(dtype=["float32"])
@pytest.mark.parametrize("name", list(BY_NAME))
def test_documented_numbers(backend, dtype, tol, name):
    fixture = BY_NAME[name]
    inputs = {k: backend.asarray(v, dtype) for k, v in fixture.draw().items()}
    results = backend.run(_run_fixture, inputs, name=name)
    assert fixture.mismatches(results, backend.to_numpy, **tol) == []
    for key, value in results.items():
        if not key.startswith("len("):
            assert_on_backend(backend, value, dtype, fixture.shapes.get(key))


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
