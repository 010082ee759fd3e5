"""Every hand-written backward against finite differences and JAX / PyTorch autodiff.

float64 on every backend: autodiff agreement to 1e-10 relative error, the
fourth-order finite-difference stencil to 1e-8 (its own error is ~1e-11;
the margin covers cancellation in the loss). float32: the same gradients
against the float64 reference with a float32-fitted tolerance.

The references do not depend on the backend under test, so each is computed
once per configuration (``functools.lru_cache``): autodiff in JAX and PyTorch,
and finite differences of our float64 forward on NumPy.
"""

from __future__ import annotations

import functools
import importlib.util
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

import portable_rnn as prnn
from portable_rnn.testing.gradcheck import numerical_gradient

from .. import reference as ref
from ..helpers import NOT_EAGER_JAX, assert_on_backend, rel_error

SHAPES = [  # (n_x, n_a, m, T); the first is the documented fixtures' (eager JAX compiles once per shape)
    (3, 5, 10, 4),
    (1, 1, 1, 1),
    (2, 3, 1, 5),
    (4, 2, 3, 1),
]
FD_SHAPE = (2, 3, 2, 3)
LSTM_KEYS = ("Wf", "bf", "Wi", "bi", "Wc", "bc", "Wo", "bo")


@dataclass(frozen=True)
class Case:
    """A backward function, its inputs, and the same loss written independently."""

    draw: Callable  # (rng, n_x, n_a, m, T) -> dict of float64 inputs (incl. upstream grads)
    ours: Callable  # (inputs on backend) -> dict input name -> gradient
    loss: Callable  # (ops, inputs) -> scalar, the reference loss
    wrt: tuple  # differentiated inputs
    forward_loss: Callable  # (inputs, to_numpy, upstream) -> float: our forward's loss, for FD


def _rnn_params(rng, n_x, n_a, n_y=2):
    return {"Wax": rng.normal(size=(n_a, n_x)), "Waa": rng.normal(size=(n_a, n_a)) / np.sqrt(n_a),
            "ba": rng.normal(size=(n_a, 1)), "Wya": rng.normal(size=(n_y, n_a)), "by": rng.normal(size=(n_y, 1))}


def _lstm_params(rng, n_x, n_a, n_y=2):
    p = {k: rng.normal(size=(n_a, n_a + n_x) if k[0] == "W" else (n_a, 1)) for k in LSTM_KEYS}
    p.update(Wy=rng.normal(size=(n_y, n_a)), by=rng.normal(size=(n_y, 1)))
    return p


def _rnn_p(d):
    return {k: d[k] for k in ("Wax", "Waa", "ba", "Wya", "by")}


def _lstm_p(d):
    return {k: d[k] for k in (*LSTM_KEYS, "Wy", "by")}


def _rnn_seq(nonlinearity, truncate=None):
    def draw(rng, n_x, n_a, m, T):
        return {"x": rng.normal(size=(n_x, m, T)), "a0": rng.normal(size=(n_a, m)),
                **_rnn_params(rng, n_x, n_a), "G": rng.normal(size=(n_a, m, T))}

    def ours(d):
        _, _, caches = prnn.rnn_forward(d["x"], d["a0"], _rnn_p(d), nonlinearity=nonlinearity)
        g = prnn.rnn_backward(d["G"], caches, truncate=truncate, nonlinearity=nonlinearity)
        return {"x": g["dx"], "a0": g["da0"], "Wax": g["dWax"], "Waa": g["dWaa"], "ba": g["dba"]}

    def loss(ops, d):
        return (d["G"] * ref.rnn_sequence(ops, d["x"], d["a0"], d, nonlinearity, truncate)).sum()

    def forward_loss(d, to_numpy, G):
        a, _, _ = prnn.rnn_forward(d["x"], d["a0"], _rnn_p(d), nonlinearity=nonlinearity)
        return float(np.sum(G * to_numpy(a)))

    return Case(draw, ours, loss, ("x", "a0", "Wax", "Waa", "ba"), forward_loss)


def _rnn_cell():
    def draw(rng, n_x, n_a, m, T):
        return {"xt": rng.normal(size=(n_x, m)), "a_prev": rng.normal(size=(n_a, m)),
                **_rnn_params(rng, n_x, n_a), "G": rng.normal(size=(n_a, m))}

    def ours(d):
        _, _, cache = prnn.rnn_cell_forward(d["xt"], d["a_prev"], _rnn_p(d))
        g = prnn.rnn_cell_backward(d["G"], cache)
        return {"xt": g["dxt"], "a_prev": g["da_prev"], "Wax": g["dWax"], "Waa": g["dWaa"], "ba": g["dba"]}

    def loss(ops, d):
        a = ref.rnn_sequence(ops, d["xt"][:, :, None], d["a_prev"], d)
        return (d["G"] * a[:, :, 0]).sum()

    def forward_loss(d, to_numpy, G):
        a, _, _ = prnn.rnn_cell_forward(d["xt"], d["a_prev"], _rnn_p(d))
        return float(np.sum(G * to_numpy(a)))

    return Case(draw, ours, loss, ("xt", "a_prev", "Wax", "Waa", "ba"), forward_loss)


def _lstm_seq(truncate=None):
    def draw(rng, n_x, n_a, m, T):
        return {"x": rng.normal(size=(n_x, m, T)), "a0": rng.normal(size=(n_a, m)),
                **_lstm_params(rng, n_x, n_a), "G": rng.normal(size=(n_a, m, T))}

    def ours(d):
        *_, caches = prnn.lstm_forward(d["x"], d["a0"], _lstm_p(d))
        g = prnn.lstm_backward(d["G"], caches, truncate=truncate)
        return {"x": g["dx"], "a0": g["da0"], **{k: g["d" + k] for k in LSTM_KEYS}}

    def loss(ops, d):
        a, _ = ref.lstm_sequence(ops, d["x"], d["a0"], d, truncate=truncate)
        return (d["G"] * a).sum()

    def forward_loss(d, to_numpy, G):
        a, *_ = prnn.lstm_forward(d["x"], d["a0"], _lstm_p(d))
        return float(np.sum(G * to_numpy(a)))

    return Case(draw, ours, loss, ("x", "a0", *LSTM_KEYS), forward_loss)


def _lstm_cell():
    def draw(rng, n_x, n_a, m, T):
        return {"xt": rng.normal(size=(n_x, m)), "a_prev": rng.normal(size=(n_a, m)),
                "c_prev": rng.normal(size=(n_a, m)), **_lstm_params(rng, n_x, n_a),
                "G": rng.normal(size=(n_a, m)), "Gc": rng.normal(size=(n_a, m))}

    def ours(d):
        *_, cache = prnn.lstm_cell_forward(d["xt"], d["a_prev"], d["c_prev"], _lstm_p(d))
        g = prnn.lstm_cell_backward(d["G"], d["Gc"], cache)
        return {"xt": g["dxt"], "a_prev": g["da_prev"], "c_prev": g["dc_prev"],
                **{k: g["d" + k] for k in LSTM_KEYS}}

    def loss(ops, d):
        a, c = ref.lstm_sequence(ops, d["xt"][:, :, None], d["a_prev"], d, c0=d["c_prev"])
        return (d["G"] * a[:, :, 0]).sum() + (d["Gc"] * c[:, :, 0]).sum()

    def forward_loss(d, to_numpy, G):
        a, c, _, _ = prnn.lstm_cell_forward(d["xt"], d["a_prev"], d["c_prev"], _lstm_p(d))
        return float(np.sum(G[0] * to_numpy(a)) + np.sum(G[1] * to_numpy(c)))

    return Case(draw, ours, loss, ("xt", "a_prev", "c_prev", *LSTM_KEYS), forward_loss)


CASES = {
    "rnn_cell_backward": _rnn_cell(),
    "rnn_backward": _rnn_seq("tanh"),
    "rnn_backward[relu]": _rnn_seq("relu"),
    "rnn_backward[truncate=2]": _rnn_seq("tanh", truncate=2),
    "lstm_cell_backward": _lstm_cell(),
    "lstm_backward": _lstm_seq(),
    "lstm_backward[truncate=1]": _lstm_seq(truncate=1),
    "lstm_backward[truncate=3]": _lstm_seq(truncate=3),
}


def _inputs(name, shape, seed=None):
    """Host float64 inputs of CASES[name] for ``shape`` (n_x, n_a, m, T)."""
    draw = CASES[name].draw
    seed = zlib.crc32(f"{name}{shape}".encode()) if seed is None else seed
    return draw(np.random.default_rng(seed), *shape)


@functools.lru_cache(maxsize=None)
def _autodiff(lib, name, shape, seed=None):
    """``lib`` autodiff of CASES[name]'s reference loss: computed once, whatever the backend under test."""
    return ref.autodiff(lib, CASES[name].loss, _inputs(name, shape, seed))


@functools.lru_cache(maxsize=None)
def _finite_differences(name):
    """Finite differences of our forward on NumPy (float64), once per case."""
    case = CASES[name]
    inputs = _inputs(name, FD_SHAPE, seed=7)
    upstream = (inputs["G"], inputs["Gc"]) if "Gc" in inputs else inputs["G"]
    return numerical_gradient(lambda d: case.forward_loss(d, np.asarray, upstream), inputs, wrt=case.wrt)


def _ours_on(backend, dtype, name, inputs):
    return backend.run(CASES[name].ours, {k: backend.asarray(v, dtype) for k, v in inputs.items()})


@NOT_EAGER_JAX  # the portable path eager JAX runs is array_api_strict's; jax:jit checks JAX compiled
@pytest.mark.jit(shape=[SHAPES[0]])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(CASES))
def test_backward_matches_autodiff(backend, name, shape):
    libs = [lib for lib in ("jax", "torch") if importlib.util.find_spec(lib)]
    if not libs:
        pytest.skip("jax, torch: neither installed, one is needed as the autodiff reference")
    inputs = _inputs(name, shape)
    wrt = CASES[name].wrt
    got = _ours_on(backend, "float64", name, inputs)
    assert set(got) == set(wrt)
    for lib in libs:
        expected = _autodiff(lib, name, shape)
        for k in wrt:
            assert_on_backend(backend, got[k], "float64", inputs[k].shape)
            err = rel_error(backend.to_numpy(got[k]), expected[k])
            assert err < 1e-10, f"{name} d{k}: relative error {err:.2e} against {lib} autodiff"


@pytest.mark.parametrize("name", [n for n in CASES if "truncate" not in n])
def test_backward_matches_finite_differences(backend, name):
    """Truncated gradients are not gradients of the loss: autodiff with detached states checks them.

    The finite differences are those of our float64 forward on NumPy (the forward
    of every backend equals it: see the autodiff and documented-number tests).
    """
    got = _ours_on(backend, "float64", name, _inputs(name, FD_SHAPE, seed=7))
    numeric = _finite_differences(name)
    for k in CASES[name].wrt:
        err = rel_error(backend.to_numpy(got[k]), numeric[k])
        assert err < 1e-8, f"{name} d{k}: relative error {err:.2e} against finite differences"


@pytest.mark.parametrize("name", list(CASES))
def test_float32_backward_within_float32_tolerance(backend, name):
    """float32 gradients against the float64 reference (torch autodiff) of the same inputs."""
    pytest.importorskip("torch", reason="torch: not installed, needed as the float64 reference")
    inputs = _inputs(name, SHAPES[0], seed=3)
    expected = _autodiff("torch", name, SHAPES[0], seed=3)
    got = _ours_on(backend, "float32", name, inputs)
    for k in CASES[name].wrt:
        assert_on_backend(backend, got[k], "float32", inputs[k].shape)
        err = rel_error(backend.to_numpy(got[k]), expected[k])
        assert err < 2e-5, f"{name} d{k}: float32 relative error {err:.2e}"
