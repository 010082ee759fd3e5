"""Property-based tests (hypothesis) of the sequence engine.

Shapes are drawn down to N=1, T=1, H=1, D=1. Each property is an identity of
the mathematics, so a failure is a bug, never noise. The identities are proven
on NumPy (the NumPy fast path) and array-api-strict (the portable path); every
other backend is held to equality with float64 references on the same engine
(``test_engine``, ``test_gradients``, ``test_layers``), which carries the
identities over without re-proving them per backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from portable_rnn.engine import sequence
from portable_rnn.testing.gradcheck import numerical_gradient

from ..helpers import every_cell, rel_error

pytestmark = pytest.mark.backends("numpy", "array_api_strict")

CELLS = every_cell()
SETTINGS = settings(
    max_examples=8, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
sizes = st.integers(min_value=1, max_value=4)


def _draw(seed, cell, T, N, D, H):
    rng = np.random.default_rng(seed)
    G = cell.n_gates
    return {
        "x": rng.normal(size=(T, N, D)),
        "W_ih": rng.normal(size=(G * H, D)) * 0.7,
        "W_hh": rng.normal(size=(G * H, H)) * 0.7,
        "b_ih": rng.normal(size=(G * H,)) * 0.5,
        "b_hh": rng.normal(size=(G * H,)) * 0.5,
        **{f"s{k}": rng.normal(size=(N, H)) for k in range(cell.n_states)},
        "G": rng.normal(size=(T, N, H)),
    }


def _forward(cell, d, backend, dtype="float64", mask=None):
    cv = lambda a: backend.asarray(a, dtype)  # noqa: E731
    state0 = tuple(cv(d[f"s{k}"]) for k in range(cell.n_states))
    return sequence.forward(cell, cv(d["x"]), state0, cv(d["W_ih"]), cv(d["W_hh"]),
                            cv(d["b_ih"]), cv(d["b_hh"]), mask, xp=backend.xp)


def _min_relu_preactivation(d):
    h, smallest = d["s0"], np.inf
    for x_t in d["x"]:
        z = x_t @ d["W_ih"].T + d["b_ih"] + h @ d["W_hh"].T + d["b_hh"]
        smallest, h = min(smallest, np.min(np.abs(z))), np.maximum(z, 0)
    return smallest


@pytest.mark.parametrize("name", list(CELLS))
@settings(SETTINGS, max_examples=5)
@given(T=sizes, N=sizes, D=sizes, H=sizes, seed=st.integers(0, 2**16))
def test_backward_equals_finite_differences(backend, name, T, N, D, H, seed):
    cell = CELLS[name]
    d = _draw(seed, cell, T, N, D, H)
    if name == "rnn_relu":  # finite differences are wrong across relu's kink
        assume(_min_relu_preactivation(d) > 0.05)
    wrt = ["x", "W_ih", "W_hh", "b_ih", "b_hh", "s0"]
    out, _, tape = _forward(cell, d, backend)
    cv = backend.asarray
    g = sequence.backward(cell, tape, cv(d["G"]), None, cv(d["W_ih"]), cv(d["W_hh"]), xp=backend.xp)
    ours = {"x": g.dx, "W_ih": g.dW_ih, "W_hh": g.dW_hh, "b_ih": g.db_ih, "b_hh": g.db_hh, "s0": g.dstate0[0]}

    def loss(dd):
        return float(np.sum(dd["G"] * backend.to_numpy(_forward(cell, dd, backend)[0])))

    numeric = numerical_gradient(loss, d, wrt=wrt)
    for k in wrt:
        err = rel_error(backend.to_numpy(ours[k]), numeric[k], floor=1e-4)
        assert err < 1e-7, f"{name} d{k}: {err:.2e}"


@pytest.mark.parametrize("name", list(CELLS))
@SETTINGS
@given(T=st.integers(2, 6), N=sizes, D=sizes, H=sizes, seed=st.integers(0, 2**16), data=st.data())
def test_two_halves_with_carried_state_equal_the_whole(backend, dtype, name, T, N, D, H, seed, data):
    cell = CELLS[name]
    d = _draw(seed, cell, T, N, D, H)
    split = data.draw(st.integers(1, T - 1))
    out, final, _ = _forward(cell, d, backend, dtype)
    first = dict(d, x=d["x"][:split])
    out1, mid, _ = _forward(cell, first, backend, dtype)
    second = dict(d, x=d["x"][split:], **{f"s{k}": backend.to_numpy(s) for k, s in enumerate(mid)})
    out2, final2, _ = _forward(cell, second, backend, dtype)
    rtol = 1e-12 if dtype == "float64" else 1e-5
    whole = backend.to_numpy(out)
    np.testing.assert_allclose(np.concatenate([backend.to_numpy(out1), backend.to_numpy(out2)]), whole,
                               rtol=rtol, atol=rtol)
    for a, b in zip(final, final2):
        np.testing.assert_allclose(backend.to_numpy(b), backend.to_numpy(a), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("name", list(CELLS))
@SETTINGS
@given(T=sizes, N=sizes, D=sizes, H=sizes, seed=st.integers(0, 2**16), extra=st.integers(0, 3))
def test_truncate_at_least_T_equals_full_bptt(backend, name, T, N, D, H, seed, extra):
    cell = CELLS[name]
    d = _draw(seed, cell, T, N, D, H)
    _, _, tape = _forward(cell, d, backend)
    cv = backend.asarray
    args = (cell, tape, cv(d["G"]), None, cv(d["W_ih"]), cv(d["W_hh"]))
    full = sequence.backward(*args, xp=backend.xp)
    cut = sequence.backward(*args, xp=backend.xp, truncate=T + extra)
    for a, b in zip(full.dstate0 + full[2:6], cut.dstate0 + cut[2:6]):  # the built-in cells have no cell_params
        np.testing.assert_array_equal(backend.to_numpy(b), backend.to_numpy(a))


@pytest.mark.parametrize("name", list(CELLS))
@SETTINGS
@given(T=sizes, N=sizes, D=sizes, H=sizes, seed=st.integers(0, 2**16))
def test_all_ones_mask_equals_no_mask(backend, name, T, N, D, H, seed):
    cell = CELLS[name]
    d = _draw(seed, cell, T, N, D, H)
    ones = backend.asarray(np.ones((T, N, 1)))
    plain, masked = _forward(cell, d, backend), _forward(cell, d, backend, mask=ones)
    np.testing.assert_allclose(backend.to_numpy(masked[0]), backend.to_numpy(plain[0]), rtol=1e-14, atol=1e-15)
