"""``portable_rnn.linear_scan``: the parallel scan equals the sequential one, the backward is exact,
padded steps leave the state alone, and long sequences with gates near 0 and 1 stay exact."""

from __future__ import annotations

import numpy as np
import pytest

from portable_rnn.linear_scan import linear_scan, linear_scan_backward
from portable_rnn.testing.gradcheck import numerical_gradient

from ..helpers import float64_close, rel_error


def _inputs(T, N=3, H=4, seed=0, masked=False, near=None):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 1, size=(T, N, H))
    if near is not None:  # gates within 1e-12 of 0 or of 1
        a = np.where(rng.random((T, N, H)) < 0.5, near, 1 - near)
    d = {"a": a, "b": rng.normal(size=(T, N, H)), "h0": rng.normal(size=(N, H)),
         "d_h": rng.normal(size=(T, N, H)), "mask": None}
    if masked:
        lengths = rng.integers(1, T + 1, size=N)
        d["mask"] = (np.arange(T)[:, None] < lengths[None, :]).astype(np.float64)[..., None]
    return d


def _reference(d):
    """The recurrence and its backward written out step by step on the host."""
    a, b, h0, d_h, m = d["a"], d["b"], d["h0"], d["d_h"], d["mask"]
    T = a.shape[0]
    if m is not None:
        a, b = m * a + (1 - m), m * b
    h, state = np.empty_like(b), h0
    for t in range(T):
        state = a[t] * state + b[t]
        h[t] = state
    lam, carry = np.empty_like(b), np.zeros_like(h0)
    for t in range(T - 1, -1, -1):
        carry = d_h[t] + (a[t + 1] * carry if t + 1 < T else 0)
        lam[t] = carry
    h_prev = np.concatenate([h0[None], h[:-1]])
    da, db = lam * h_prev, lam
    if m is not None:
        da, db = m * da, m * db
    return h, da, db, a[0] * lam[0]


def _scan_and_backward(a, b, h0, d_h, mask, method, chunk):
    h = linear_scan(a, b, h0, mask=mask, method=method, chunk=chunk)
    return (h, *linear_scan_backward(a, h, h0, d_h, mask=mask, method=method, chunk=chunk))


@pytest.mark.jit(case=["T23-chunk5-masked"])
@pytest.mark.parametrize("case", ["T1", "T23-chunk5-masked", "T64", "T50-chunk7"])
@pytest.mark.parametrize("method", ["parallel", "sequential"])
def test_both_methods_equal_the_recurrence_and_its_backward(backend, case, method):
    T = int(case.split("-")[0][1:])
    chunk = int(case.split("chunk")[1].split("-")[0]) if "chunk" in case else None
    d = _inputs(T, masked="masked" in case)
    args = [backend.asarray(d[k]) if d[k] is not None else None for k in ("a", "b", "h0", "d_h", "mask")]
    got = backend.run(_scan_and_backward, *args, method=method, chunk=chunk)
    for name, value, expected in zip(("h", "da", "db", "dh0"), got, _reference(d)):
        float64_close(backend, value, expected, f"{name} ({method}, {case})")


def test_the_backward_is_the_gradient():
    """Against fourth-order finite differences of a loss of h (the reference above is checked too)."""
    d = _inputs(9, N=2, H=3, masked=True, seed=3)
    d_h, mask = d["d_h"], d["mask"]

    def loss(p):
        return float(np.sum(linear_scan(p["a"], p["b"], p["h0"], mask=mask) * d_h))

    point = {k: d[k] for k in ("a", "b", "h0")}
    expected = numerical_gradient(loss, point)
    h = linear_scan(d["a"], d["b"], d["h0"], mask=mask)
    da, db, dh0 = linear_scan_backward(d["a"], h, d["h0"], d_h, mask=mask)
    for name, got in (("a", da), ("b", db), ("h0", dh0)):
        assert rel_error(got, expected[name]) < 1e-10, name


@pytest.mark.parametrize("library", ["jax", "torch"])
def test_the_backward_equals_autodiff(library):
    d = _inputs(31, masked=True, seed=5)
    h = linear_scan(d["a"], d["b"], d["h0"], mask=d["mask"])
    ours = linear_scan_backward(d["a"], h, d["h0"], d["d_h"], mask=d["mask"])
    if library == "jax":
        jax = pytest.importorskip("jax", reason="JAX is not installed")
        import jax.numpy as jnp

        def loss(a, b, h0):
            return jnp.sum(linear_scan(a, b, h0, mask=jnp.asarray(d["mask"])) * d["d_h"])

        expected = jax.grad(loss, argnums=(0, 1, 2))(*(jnp.asarray(d[k]) for k in ("a", "b", "h0")))
    else:
        torch = pytest.importorskip("torch", reason="torch is not installed")
        leaves = [torch.tensor(d[k], requires_grad=True) for k in ("a", "b", "h0")]
        h_t = linear_scan(*leaves, mask=torch.tensor(d["mask"]))
        expected = torch.autograd.grad(torch.sum(h_t * torch.tensor(d["d_h"])), leaves)
    for name, got, want in zip(("da", "db", "dh0"), ours, expected):
        assert rel_error(got, np.asarray(want)) < 1e-12, name


def test_sixty_five_thousand_steps_with_gates_near_zero_and_one_stay_exact():
    """No division, logarithm or exponential: the parallel scan groups the sequential products, so
    at T = 65,536 with gates 1e-12 from 0 or 1 both forms agree and nothing is lost or infinite."""
    d = _inputs(65_536, N=2, H=8, near=1e-12, seed=7)
    got = _scan_and_backward(d["a"], d["b"], d["h0"], d["d_h"], None, "parallel", None)
    expected = _scan_and_backward(d["a"], d["b"], d["h0"], d["d_h"], None, "sequential", None)
    for name, value, want in zip(("h", "da", "db", "dh0"), got, expected):
        assert np.all(np.isfinite(value)), name
        assert rel_error(value, want) < 1e-10, name
    # the recurrence is kept: a unit carried through gates at 1 - 1e-12 for 65,535 steps stays ~1
    ones = np.full((65_536, 1), 1 - 1e-12)
    zeros = np.zeros((65_536, 1))
    carried = linear_scan(ones, zeros, np.ones(1))
    assert abs(float(carried[-1, 0]) - (1 - 1e-12) ** 65_536) < 1e-12


def test_bad_arguments_are_refused():
    a = np.ones((3, 2))
    with pytest.raises(ValueError, match="method must be one of"):
        linear_scan(a, a, a[0], method="log")
    with pytest.raises(ValueError, match="chunk must be"):
        linear_scan(a, a, a[0], chunk=0)
    with pytest.raises(ValueError, match="at least one step"):
        linear_scan(a[:0], a[:0], a[0])
