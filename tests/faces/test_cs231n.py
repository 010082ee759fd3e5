"""The CS231n layers (``portable_rnn.cs231n``) on every backend.

Every forward/backward pair is checked three ways:

- against PyTorch autograd of the assignment's equations, written directly in
  torch below (float64: 1e-10 relative error; float32: against the float64
  reference with a float32-fitted tolerance);
- against a fourth-order central finite difference of the float64 forward
  pass on NumPy (computed once per case; references never depend on the
  backend under test);
- the LSTM forward against ``torch.nn.LSTM`` / ``torch.nn.LSTMCell`` with
  the weights mapped to PyTorch's layout (gate order i,f,g,o, transposed).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
from array_api_compat import array_namespace

from portable_rnn import cs231n
from portable_rnn.testing.gradcheck import numerical_gradient

from ..helpers import assert_on_backend, rel_error

torch = pytest.importorskip("torch", reason="torch: not installed, needed as the autograd reference")

# T, N, D, H of test_layers' CONFIGS: eager JAX compiles each operation once per shape
N, T, D, H, V, M = 3, 5, 2, 4, 5, 5
F32_TOL = {"rtol": 1e-4, "atol": 1e-5}


# --------------------------------------------------------------------------- helpers


def to_backend(backend, inputs: dict, dtype: str) -> dict:
    """Floating inputs in ``dtype``, indices as int64, masks as bool."""
    kinds = {"f": dtype, "i": "int64", "b": "bool"}
    return {k: backend.asarray(v, kinds[v.dtype.kind]) for k, v in inputs.items()}


def swap_og(a, axis=-1):
    """i,f,o,g <-> i,f,g,o blocks along ``axis`` (NumPy or torch)."""
    h = a.shape[axis] // 4
    blocks = [np.take(a, range(k * h, (k + 1) * h), axis=axis) for k in (0, 1, 3, 2)]
    return np.concatenate(blocks, axis=axis)


def _sum(a):
    return array_namespace(a).sum(a)


# --------------------------------------------------------------------------- torch references


def t_rnn_step(x, h, Wx, Wh, b):
    return torch.tanh(x @ Wx + h @ Wh + b)


def t_lstm_step(x, h, c, Wx, Wh, b):
    a = x @ Wx + h @ Wh + b
    ai, af, ao, ag = torch.split(a, a.shape[-1] // 4, dim=-1)
    c = torch.sigmoid(af) * c + torch.sigmoid(ai) * torch.tanh(ag)
    return torch.sigmoid(ao) * torch.tanh(c), c


def t_rnn(x, h0, Wx, Wh, b):
    h, hs = h0, []
    for t in range(x.shape[1]):
        h = t_rnn_step(x[:, t], h, Wx, Wh, b)
        hs.append(h)
    return torch.stack(hs, dim=1)


def t_lstm(x, h0, Wx, Wh, b):
    h, c, hs = h0, torch.zeros_like(h0), []
    for t in range(x.shape[1]):
        h, c = t_lstm_step(x[:, t], h, c, Wx, Wh, b)
        hs.append(h)
    return torch.stack(hs, dim=1)


def t_softmax_loss(x, y, mask):
    picked = torch.log_softmax(x, dim=-1).gather(-1, y[..., None])[..., 0]
    return -(mask * picked).sum() / x.shape[0]


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One forward/backward pair.

    ``forward(d) -> (results, cache)`` and ``backward(d, cache) -> results`` run
    on backend arrays (``backend.run`` compiles each on ``jax:jit``, so the
    cache crosses a ``jax.jit`` boundary); results are named. ``loss`` is the
    scalar whose gradients the backward gives (the forward contracted with the
    upstream gradients); ``torch_ref`` returns the forward results and that
    scalar in torch; ``grads`` maps each differentiated input to its result name.
    """

    name: str
    draw: Callable
    forward: Callable
    backward: Callable
    loss: Callable
    torch_ref: Callable
    grads: dict
    shapes: dict = field(default_factory=dict)

    def run(self, d):
        results, cache = self.forward(d)
        return {**results, **self.backward(d, cache)}


def _normal(rng, *shape, scale=1.0):
    return scale * rng.normal(size=shape)


def _rnn_step_case():
    def draw(rng):
        return {"x": _normal(rng, N, D), "prev_h": _normal(rng, N, H), "Wx": _normal(rng, D, H, scale=0.5),
                "Wh": _normal(rng, H, H, scale=0.5), "b": _normal(rng, H), "G": _normal(rng, N, H)}

    def forward(d):
        next_h, cache = cs231n.rnn_step_forward(d["x"], d["prev_h"], d["Wx"], d["Wh"], d["b"])
        return {"next_h": next_h}, cache

    def backward(d, cache):
        dx, dprev_h, dWx, dWh, db = cs231n.rnn_step_backward(d["G"], cache)
        return {"dx": dx, "dprev_h": dprev_h, "dWx": dWx, "dWh": dWh, "db": db}

    def torch_ref(t):
        next_h = t_rnn_step(t["x"], t["prev_h"], t["Wx"], t["Wh"], t["b"])
        return {"next_h": next_h}, (t["G"] * next_h).sum()

    return Case("rnn_step", draw, forward, backward, lambda d: _sum(d["G"] * forward(d)[0]["next_h"]), torch_ref,
                {"x": "dx", "prev_h": "dprev_h", "Wx": "dWx", "Wh": "dWh", "b": "db"},
                {"next_h": (N, H), "dx": (N, D), "dprev_h": (N, H), "dWx": (D, H), "dWh": (H, H), "db": (H,)})


def _rnn_case():
    def draw(rng):
        return {"x": _normal(rng, N, T, D), "h0": _normal(rng, N, H), "Wx": _normal(rng, D, H, scale=0.5),
                "Wh": _normal(rng, H, H, scale=0.5), "b": _normal(rng, H), "G": _normal(rng, N, T, H)}

    def forward(d):
        h, cache = cs231n.rnn_forward(d["x"], d["h0"], d["Wx"], d["Wh"], d["b"])
        return {"h": h}, cache

    def backward(d, cache):
        dx, dh0, dWx, dWh, db = cs231n.rnn_backward(d["G"], cache)
        return {"dx": dx, "dh0": dh0, "dWx": dWx, "dWh": dWh, "db": db}

    def torch_ref(t):
        h = t_rnn(t["x"], t["h0"], t["Wx"], t["Wh"], t["b"])
        return {"h": h}, (t["G"] * h).sum()

    return Case("rnn", draw, forward, backward, lambda d: _sum(d["G"] * forward(d)[0]["h"]), torch_ref,
                {"x": "dx", "h0": "dh0", "Wx": "dWx", "Wh": "dWh", "b": "db"},
                {"h": (N, T, H), "dx": (N, T, D), "dh0": (N, H), "dWx": (D, H), "dWh": (H, H), "db": (H,)})


def _lstm_step_case():
    def draw(rng):
        return {"x": _normal(rng, N, D), "prev_h": _normal(rng, N, H), "prev_c": _normal(rng, N, H),
                "Wx": _normal(rng, D, 4 * H, scale=0.5), "Wh": _normal(rng, H, 4 * H, scale=0.5),
                "b": _normal(rng, 4 * H), "G": _normal(rng, N, H), "Gc": _normal(rng, N, H)}

    def forward(d):
        next_h, next_c, cache = cs231n.lstm_step_forward(d["x"], d["prev_h"], d["prev_c"], d["Wx"], d["Wh"], d["b"])
        return {"next_h": next_h, "next_c": next_c}, cache

    def backward(d, cache):
        dx, dprev_h, dprev_c, dWx, dWh, db = cs231n.lstm_step_backward(d["G"], d["Gc"], cache)
        return {"dx": dx, "dprev_h": dprev_h, "dprev_c": dprev_c, "dWx": dWx, "dWh": dWh, "db": db}

    def loss(d):
        out, _ = forward(d)
        return _sum(d["G"] * out["next_h"]) + _sum(d["Gc"] * out["next_c"])

    def torch_ref(t):
        next_h, next_c = t_lstm_step(t["x"], t["prev_h"], t["prev_c"], t["Wx"], t["Wh"], t["b"])
        return {"next_h": next_h, "next_c": next_c}, (t["G"] * next_h).sum() + (t["Gc"] * next_c).sum()

    return Case("lstm_step", draw, forward, backward, loss, torch_ref,
                {"x": "dx", "prev_h": "dprev_h", "prev_c": "dprev_c", "Wx": "dWx", "Wh": "dWh", "b": "db"},
                {"next_h": (N, H), "next_c": (N, H), "dx": (N, D), "dprev_h": (N, H), "dprev_c": (N, H),
                 "dWx": (D, 4 * H), "dWh": (H, 4 * H), "db": (4 * H,)})


def _lstm_case():
    def draw(rng):
        return {"x": _normal(rng, N, T, D), "h0": _normal(rng, N, H), "Wx": _normal(rng, D, 4 * H, scale=0.5),
                "Wh": _normal(rng, H, 4 * H, scale=0.5), "b": _normal(rng, 4 * H), "G": _normal(rng, N, T, H)}

    def forward(d):
        h, cache = cs231n.lstm_forward(d["x"], d["h0"], d["Wx"], d["Wh"], d["b"])
        return {"h": h}, cache

    def backward(d, cache):
        dx, dh0, dWx, dWh, db = cs231n.lstm_backward(d["G"], cache)
        return {"dx": dx, "dh0": dh0, "dWx": dWx, "dWh": dWh, "db": db}

    def torch_ref(t):
        h = t_lstm(t["x"], t["h0"], t["Wx"], t["Wh"], t["b"])
        return {"h": h}, (t["G"] * h).sum()

    return Case("lstm", draw, forward, backward, lambda d: _sum(d["G"] * forward(d)[0]["h"]), torch_ref,
                {"x": "dx", "h0": "dh0", "Wx": "dWx", "Wh": "dWh", "b": "db"},
                {"h": (N, T, H), "dx": (N, T, D), "dh0": (N, H), "dWx": (D, 4 * H), "dWh": (H, 4 * H),
                 "db": (4 * H,)})


def _embedding_case():
    def draw(rng):  # N*T = 15 indices over V = 5 words: repeats are certain
        return {"x": rng.integers(0, V, size=(N, T)), "W": _normal(rng, V, D), "G": _normal(rng, N, T, D)}

    def forward(d):
        out, cache = cs231n.word_embedding_forward(d["x"], d["W"])
        return {"out": out}, cache

    def backward(d, cache):
        return {"dW": cs231n.word_embedding_backward(d["G"], cache)}

    def torch_ref(t):
        out = t["W"][t["x"]]
        return {"out": out}, (t["G"] * out).sum()

    return Case("word_embedding", draw, forward, backward, lambda d: _sum(d["G"] * forward(d)[0]["out"]),
                torch_ref, {"W": "dW"}, {"out": (N, T, D), "dW": (V, D)})


def _affine_case():
    def draw(rng):
        return {"x": _normal(rng, N, T, D), "w": _normal(rng, D, M), "b": _normal(rng, M),
                "G": _normal(rng, N, T, M)}

    def forward(d):
        out, cache = cs231n.temporal_affine_forward(d["x"], d["w"], d["b"])
        return {"out": out}, cache

    def backward(d, cache):
        dx, dw, db = cs231n.temporal_affine_backward(d["G"], cache)
        return {"dx": dx, "dw": dw, "db": db}

    def torch_ref(t):
        out = t["x"] @ t["w"] + t["b"]
        return {"out": out}, (t["G"] * out).sum()

    return Case("temporal_affine", draw, forward, backward, lambda d: _sum(d["G"] * forward(d)[0]["out"]),
                torch_ref, {"x": "dx", "w": "dw", "b": "db"},
                {"out": (N, T, M), "dx": (N, T, D), "dw": (D, M), "db": (M,)})


def _softmax_loss_case():
    def draw(rng):
        mask = rng.random(size=(N, T)) < 0.7
        mask[0, 0], mask[-1, -1] = True, False  # both kinds present
        return {"x": _normal(rng, N, T, V, scale=2.0), "y": rng.integers(0, V, size=(N, T)), "mask": mask}

    def forward(d):  # one function gives the loss and its gradient: no cache
        loss, dx = cs231n.temporal_softmax_loss(d["x"], d["y"], d["mask"])
        return {"loss": loss, "dx": dx}, None

    def torch_ref(t):
        loss = t_softmax_loss(t["x"], t["y"], t["mask"])
        return {"loss": loss}, loss

    return Case("temporal_softmax_loss", draw, forward, lambda d, cache: {}, lambda d: forward(d)[0]["loss"],
                torch_ref, {"x": "dx"}, {"loss": (), "dx": (N, T, V)})


CASES = {c.name: c for c in [_rnn_step_case(), _rnn_case(), _lstm_step_case(), _lstm_case(), _embedding_case(),
                             _affine_case(), _softmax_loss_case()]}


def _fresh(name):
    """Host inputs of CASES[name], drawn anew."""
    return CASES[name].draw(np.random.default_rng(sum(map(ord, name))))


@functools.lru_cache(maxsize=None)
def _draw(name):
    """Host inputs of CASES[name], shared by the tests that only read them."""
    return _fresh(name)


@functools.lru_cache(maxsize=None)
def torch_reference(name):
    """Forward results and gradients from torch autograd, float64, as NumPy: once per case."""
    case, inputs = CASES[name], _draw(name)
    t = {k: torch.tensor(v, requires_grad=(k in case.grads)) for k, v in inputs.items()}
    outputs, loss = case.torch_ref(t)
    wrt = list(case.grads)
    grads = torch.autograd.grad(loss, [t[k] for k in wrt])
    result = {k: v.detach().numpy() for k, v in outputs.items()}
    result.update({case.grads[k]: g.numpy() for k, g in zip(wrt, grads)})
    return result


@functools.lru_cache(maxsize=None)
def _finite_differences(name):
    """Finite differences of our float64 forward on NumPy: once per case."""
    case, inputs = CASES[name], _draw(name)
    kinds = {k: v.dtype for k, v in inputs.items()}  # numerical_gradient hands over float64

    def f(d):
        return float(case.loss({k: np.asarray(v, dtype=kinds[k]) for k, v in d.items()}))

    return numerical_gradient(f, inputs, wrt=list(case.grads))


# --------------------------------------------------------------------------- tests


# Compiled: the sequences (their steps are the step cases), the embedding and the loss; the others
# share their paths. Eager JAX runs float32, where its dtype handling could differ from the other
# backends'; float64 JAX is jax:jit's, float64 eager results every other backend's.
@pytest.mark.jit(name=["rnn", "lstm", "word_embedding", "temporal_softmax_loss"])
@pytest.mark.eager_jax(dtype=["float32"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch_autograd(backend, dtype, name):
    case = CASES[name]
    expected = torch_reference(name)
    inputs = to_backend(backend, _draw(name), dtype)
    got, cache = backend.run(case.forward, inputs)
    got.update(backend.run(case.backward, inputs, cache))
    assert set(got) == set(expected) == set(case.shapes)
    for k, value in got.items():
        assert_on_backend(backend, value, dtype, case.shapes[k])
        if dtype == "float64":
            err = rel_error(backend.to_numpy(value), expected[k])
            assert err < 1e-10, f"{case.name} {k}: relative error {err:.2e} against torch autograd"
        else:
            np.testing.assert_allclose(backend.to_numpy(value), expected[k], err_msg=k, **F32_TOL)


@pytest.mark.parametrize("name", list(CASES))
def test_backward_matches_finite_differences(backend, name):
    """Each backend's gradients against finite differences of the float64 forward on NumPy."""
    case = CASES[name]
    got = case.run(to_backend(backend, _draw(name), "float64"))
    numeric = _finite_differences(name)
    for input_name, key in case.grads.items():
        err = rel_error(backend.to_numpy(got[key]), numeric[input_name])
        assert err < 1e-9, f"{case.name} {key}: relative error {err:.2e} against finite differences"


def _torch_lstm_weights(module, Wx, Wh, b, suffix=""):
    """CS231n (D, 4H), (H, 4H), (4H,) in i,f,o,g -> PyTorch (4H, D), (4H, H) in i,f,g,o."""
    with torch.no_grad():
        getattr(module, "weight_ih" + suffix).copy_(torch.tensor(swap_og(Wx).T))
        getattr(module, "weight_hh" + suffix).copy_(torch.tensor(swap_og(Wh).T))
        getattr(module, "bias_ih" + suffix).copy_(torch.tensor(swap_og(b)))
        getattr(module, "bias_hh" + suffix).zero_()


@functools.lru_cache(maxsize=None)
def _torch_nn_lstm():
    d = _draw("lstm")
    lstm = torch.nn.LSTM(D, H, batch_first=True, dtype=torch.float64)
    _torch_lstm_weights(lstm, d["Wx"], d["Wh"], d["b"], "_l0")
    h0 = torch.tensor(d["h0"])[None]
    with torch.no_grad():
        expected, _ = lstm(torch.tensor(d["x"]), (h0, torch.zeros_like(h0)))
    return expected.numpy()


@functools.lru_cache(maxsize=None)
def _torch_nn_lstm_cell():
    d = _draw("lstm_step")
    cell = torch.nn.LSTMCell(D, H, dtype=torch.float64)
    _torch_lstm_weights(cell, d["Wx"], d["Wh"], d["b"])
    with torch.no_grad():
        h, c = cell(torch.tensor(d["x"]), (torch.tensor(d["prev_h"]), torch.tensor(d["prev_c"])))
    return h.numpy(), c.numpy()


def test_lstm_matches_torch_nn_lstm(backend, dtype):
    b = to_backend(backend, _draw("lstm"), dtype)
    h, _ = cs231n.lstm_forward(b["x"], b["h0"], b["Wx"], b["Wh"], b["b"])
    assert_on_backend(backend, h, dtype, (N, T, H))
    tol = {"rtol": 1e-12, "atol": 1e-13} if dtype == "float64" else F32_TOL
    np.testing.assert_allclose(backend.to_numpy(h), _torch_nn_lstm(), **tol)


def test_lstm_step_matches_torch_nn_lstm_cell(backend, dtype):
    b = to_backend(backend, _draw("lstm_step"), dtype)
    next_h, next_c, _ = cs231n.lstm_step_forward(b["x"], b["prev_h"], b["prev_c"], b["Wx"], b["Wh"], b["b"])
    tol = {"rtol": 1e-12, "atol": 1e-13} if dtype == "float64" else F32_TOL
    for got, exp in zip((next_h, next_c), _torch_nn_lstm_cell()):
        assert_on_backend(backend, got, dtype, (N, H))
        np.testing.assert_allclose(backend.to_numpy(got), exp, **tol)


@pytest.mark.backends("numpy", "array_api_strict")
def test_gate_order_is_i_f_o_g(backend):
    """Only the o block of b large: h = tanh(c) exactly where o saturates at 1.

    The layout is the same code on every backend; each backend meets torch.nn.LSTMCell's
    numbers in test_lstm_step_matches_torch_nn_lstm_cell.
    """
    rng = np.random.default_rng(1)
    x, h0 = rng.normal(size=(N, D)), rng.normal(size=(N, H))
    Wx, Wh = np.zeros((D, 4 * H)), np.zeros((H, 4 * H))
    b = np.zeros(4 * H)
    b[2 * H : 3 * H] = 50.0  # o
    b[3 * H :] = 1.0  # g
    cv = backend.asarray
    next_h, next_c, _ = cs231n.lstm_step_forward(cv(x), cv(h0), cv(np.zeros((N, H))), cv(Wx), cv(Wh), cv(b))
    c = 0.5 * np.tanh(1.0)  # i = 1/2, f = 1/2, c_prev = 0, g = tanh(1)
    np.testing.assert_allclose(backend.to_numpy(next_c), np.full((N, H), c), rtol=1e-14)
    np.testing.assert_allclose(backend.to_numpy(next_h), np.full((N, H), np.tanh(c)), rtol=1e-14)


def test_word_embedding_backward_accumulates_repeats(backend, dtype):
    x = np.array([[0, 2, 2], [2, 4, 0]])
    dout = np.random.default_rng(2).normal(size=(2, 3, D))
    expected = np.zeros((V, D))
    np.add.at(expected, x, dout)
    _, cache = cs231n.word_embedding_forward(backend.asarray(x, "int32"), backend.asarray(np.ones((V, D)), dtype))
    dW = cs231n.word_embedding_backward(backend.asarray(dout, dtype), cache)
    assert_on_backend(backend, dW, dtype, (V, D))
    np.testing.assert_allclose(backend.to_numpy(dW), expected, rtol=1e-6, atol=1e-6)
    assert not backend.to_numpy(dW)[[1, 3]].any()  # words never looked up get no gradient


def test_narrow_index_dtype_with_a_large_vocabulary(backend):
    """uint8 indices beside V = 300 words: the one-hot never wraps around at 256."""
    x = np.array([[255, 0, 44], [255, 255, 1]], dtype=np.uint8)
    W = np.random.default_rng(4).normal(size=(300, 2))
    dout = np.random.default_rng(5).normal(size=(2, 3, 2))
    out, cache = cs231n.word_embedding_forward(backend.asarray(x, "uint8"), backend.asarray(W, "float64"))
    np.testing.assert_array_equal(backend.to_numpy(out), W[x])
    expected = np.zeros_like(W)
    np.add.at(expected, x, dout)
    dW = cs231n.word_embedding_backward(backend.asarray(dout, "float64"), cache)
    np.testing.assert_allclose(backend.to_numpy(dW), expected, rtol=1e-14)
    y = backend.asarray(x, "uint8")
    loss, _ = cs231n.temporal_softmax_loss(backend.asarray(np.zeros((2, 3, 300)), "float64"), y,
                                           backend.asarray(np.ones((2, 3), dtype=bool), "bool"))
    np.testing.assert_allclose(float(backend.to_numpy(loss)), 3 * np.log(300), rtol=1e-14)


def test_temporal_softmax_loss_is_stable_and_masked(backend, dtype):
    y = np.array([[0, 1, 2], [3, 4, 0]])
    x = np.full((2, 3, V), -1e4)
    x[..., 1] = 1e4  # word 1 certain: loss 2e4 for every other label
    mask = np.array([[True, True, False], [True, False, False]])
    loss, dx = cs231n.temporal_softmax_loss(backend.asarray(x, dtype), backend.asarray(y, "int64"),
                                            backend.asarray(mask, "bool"))
    assert_on_backend(backend, loss, dtype, ())
    assert_on_backend(backend, dx, dtype, (2, 3, V))
    np.testing.assert_allclose(float(backend.to_numpy(loss)), 2 * 2e4 / 2, rtol=1e-6)
    dx = backend.to_numpy(dx)
    assert np.isfinite(dx).all()
    assert not dx[~mask].any()  # masked steps get no gradient
    none = backend.asarray(np.zeros((2, 3), dtype=bool), "bool")
    loss0, dx0 = cs231n.temporal_softmax_loss(backend.asarray(x, dtype), backend.asarray(y, "int64"), none)
    assert float(backend.to_numpy(loss0)) == 0.0 and not backend.to_numpy(dx0).any()


@pytest.mark.parametrize("name", list(CASES))
def test_inputs_are_never_mutated(name):
    inputs = _fresh(name)
    snapshot = {k: v.copy() for k, v in inputs.items()}
    for v in inputs.values():
        v.setflags(write=False)  # any write raises
    CASES[name].run(inputs)
    for k, v in snapshot.items():
        np.testing.assert_array_equal(inputs[k], v)


# --------------------------------------------------------------------------- bad input

# The shapes the messages below name (the layers run no maths here).
BN, BT, BD, BH, BV, BM = 3, 3, 4, 3, 5, 5


def _arrays(**shapes):
    rng = np.random.default_rng(3)
    return {k: rng.normal(size=s) for k, s in shapes.items()}


R = _arrays(x=(BN, BD), h=(BN, BH), Wx=(BD, BH), Wh=(BH, BH), b=(BH,), xs=(BN, BT, BD), dh=(BN, BT, BH))
L = _arrays(Wx=(BD, 4 * BH), Wh=(BH, 4 * BH), b=(4 * BH,))
IDX = np.zeros((BN, BT), dtype=np.int64)


def _bad_inputs():
    x, h, Wx, Wh, b = R["x"], R["h"], R["Wx"], R["Wh"], R["b"]
    rnn_cache = cs231n.rnn_forward(R["xs"], h, Wx, Wh, b)[1]
    step_cache = cs231n.rnn_step_forward(x, h, Wx, Wh, b)[1]
    lstm_step_cache = cs231n.lstm_step_forward(x, h, h, L["Wx"], L["Wh"], L["b"])[2]
    emb_cache = cs231n.word_embedding_forward(IDX, np.ones((BV, BD)))[1]
    aff_cache = cs231n.temporal_affine_forward(R["xs"], np.ones((BD, BM)), np.ones(BM))[1]
    return [
        ("int x", lambda: cs231n.rnn_step_forward(x.astype(np.int64), h, Wx, Wh, b),
         TypeError, r"x has dtype int64; expected a real floating dtype"),
        ("mixed float", lambda: cs231n.rnn_step_forward(x, h, Wx.astype(np.float32), Wh, b),
         TypeError, r"Wx has dtype float32 but x has dtype float64"),
        ("not an array", lambda: cs231n.rnn_step_forward(x.tolist(), h, Wx, Wh, b),
         TypeError, r"x must be an array .* got list"),
        ("mixed libraries", lambda: cs231n.rnn_step_forward(x, h, torch.tensor(Wx), Wh, b),
         TypeError, r"x is a numpy array but Wx is a torch array"),
        ("Wx rows", lambda: cs231n.rnn_step_forward(x, h, Wx[:3], Wh, b),
         ValueError, r"Wx has shape \(3, 3\); expected \(4, \*\) \(D, H\)"),
        ("Wh", lambda: cs231n.rnn_step_forward(x, h, Wx, Wh[:, :2], b),
         ValueError, r"Wh has shape \(3, 2\); expected \(3, 3\)"),
        ("b", lambda: cs231n.rnn_step_forward(x, h, Wx, Wh, b[:, None]),
         ValueError, r"b has shape \(3, 1\); expected \(3,\)"),
        ("prev_h batch", lambda: cs231n.rnn_step_forward(x, h[:2], Wx, Wh, b),
         ValueError, r"prev_h has shape \(2, 3\); expected \(3, 3\)"),
        ("x ndim", lambda: cs231n.rnn_forward(x, h, Wx, Wh, b),
         ValueError, r"x has shape \(3, 4\); expected \(\*, \*, \*\) \(N, T, D\)"),
        ("no steps", lambda: cs231n.rnn_forward(R["xs"][:, :0], h, Wx, Wh, b),
         ValueError, r"x has shape \(3, 0, 4\); expected at least one time step"),
        ("dh shape", lambda: cs231n.rnn_backward(R["dh"][:, :2], rnn_cache),
         ValueError, r"dh has shape \(3, 2, 3\); expected \(3, 3, 3\)"),
        ("dh dtype", lambda: cs231n.rnn_backward(R["dh"].astype(np.float32), rnn_cache),
         TypeError, r"dh has dtype float32 but x \(from cache\) has dtype float64"),
        ("dh library", lambda: cs231n.rnn_backward(torch.tensor(R["dh"]), rnn_cache),
         TypeError, r"x \(from cache\) is a numpy array but dh is a torch array"),
        ("dnext_h shape", lambda: cs231n.rnn_step_backward(h[:, :2], step_cache),
         ValueError, r"dnext_h has shape \(3, 2\); expected \(3, 3\) \(N, H\), the shape of next_h"),
        ("wrong cache", lambda: cs231n.rnn_backward(R["dh"], step_cache),
         TypeError, r"cache must be the cache returned by rnn_forward, got _RNNStepCache"),
        ("step cache", lambda: cs231n.rnn_step_backward(h, rnn_cache),
         TypeError, r"cache must be the cache returned by rnn_step_forward"),
        ("lstm 4H", lambda: cs231n.lstm_forward(R["xs"], h, L["Wx"][:, :10], L["Wh"], L["b"]),
         ValueError, r"Wx has shape \(4, 10\); expected \(D, 4H\).*multiple of 4"),
        ("lstm Wh", lambda: cs231n.lstm_forward(R["xs"], h, L["Wx"], Wh, L["b"]),
         ValueError, r"Wh has shape \(3, 3\); expected \(3, 12\)"),
        ("lstm prev_c", lambda: cs231n.lstm_step_forward(x, h, h[:, :2], L["Wx"], L["Wh"], L["b"]),
         ValueError, r"prev_c has shape \(3, 2\); expected \(3, 3\)"),
        ("lstm dnext_c", lambda: cs231n.lstm_step_backward(h, h.astype(np.float32), lstm_step_cache),
         TypeError, r"dnext_c has dtype float32 but x \(from cache\) has dtype float64"),
        ("lstm cache", lambda: cs231n.lstm_backward(R["dh"], rnn_cache),
         TypeError, r"cache must be the cache returned by lstm_forward"),
        ("float indices", lambda: cs231n.word_embedding_forward(IDX.astype(np.float64), np.ones((BV, BD))),
         TypeError, r"x has dtype float64; expected an integer dtype"),
        ("int W", lambda: cs231n.word_embedding_forward(IDX, np.ones((BV, BD), dtype=np.int64)),
         TypeError, r"W has dtype int64; expected a real floating dtype"),
        ("1-d indices", lambda: cs231n.word_embedding_forward(IDX[0], np.ones((BV, BD))),
         ValueError, r"x has shape \(3,\); expected \(\*, \*\) \(N, T\)"),
        ("dout", lambda: cs231n.word_embedding_backward(np.ones((BN, BT, BD + 1)), emb_cache),
         ValueError, r"dout has shape \(3, 3, 5\); expected \(3, 3, 4\)"),
        ("dout dtype", lambda: cs231n.word_embedding_backward(np.ones((BN, BT, BD), dtype=np.float32), emb_cache),
         TypeError, r"dout has dtype float32 but W \(from cache\) has dtype float64"),
        ("not a cache", lambda: cs231n.word_embedding_backward(np.ones((BN, BT, BD)), (IDX, np.ones((BV, BD)))),
         TypeError, r"cache must be the cache returned by word_embedding_forward, got tuple"),
        ("affine w", lambda: cs231n.temporal_affine_forward(R["xs"], np.ones((BD + 1, BM)), np.ones(BM)),
         ValueError, r"w has shape \(5, 5\); expected \(4, \*\)"),
        ("affine b", lambda: cs231n.temporal_affine_forward(R["xs"], np.ones((BD, BM)), np.ones(BM + 1)),
         ValueError, r"b has shape \(6,\); expected \(5,\)"),
        ("affine dout", lambda: cs231n.temporal_affine_backward(np.ones((BN, BT, BM + 1)), aff_cache),
         ValueError, r"dout has shape \(3, 3, 6\); expected \(3, 3, 5\)"),
        ("float labels", lambda: cs231n.temporal_softmax_loss(np.ones((BN, BT, BV)), IDX * 1.0, IDX == 0),
         TypeError, r"y has dtype float64; expected an integer dtype"),
        ("int mask", lambda: cs231n.temporal_softmax_loss(np.ones((BN, BT, BV)), IDX, IDX),
         TypeError, r"mask has dtype int64; expected bool"),
        ("int scores", lambda: cs231n.temporal_softmax_loss(np.ones((BN, BT, BV), dtype=np.int64), IDX, IDX == 0),
         TypeError, r"x has dtype int64; expected a real floating dtype"),
        ("labels shape", lambda: cs231n.temporal_softmax_loss(np.ones((BN, BT, BV)), IDX[:, :2], IDX == 0),
         ValueError, r"y has shape \(3, 2\); expected \(3, 3\)"),
        ("mask shape", lambda: cs231n.temporal_softmax_loss(np.ones((BN, BT, BV)), IDX, (IDX == 0)[:2]),
         ValueError, r"mask has shape \(2, 3\); expected \(3, 3\)"),
    ]


BAD = _bad_inputs()


@pytest.mark.parametrize("call,error,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_arrays_on_different_devices():
    xp = pytest.importorskip("array_api_strict", reason="array_api_strict: not installed")
    a = {k: xp.asarray(v) for k, v in R.items()}
    Wx = xp.asarray(R["Wx"], device=xp.Device("device1"))
    with pytest.raises(ValueError, match=r"Wx is on device .*device1.* but x is on device"):
        cs231n.rnn_step_forward(a["x"], a["h"], Wx, a["Wh"], a["b"])
    idx = xp.asarray(IDX, device=xp.Device("device1"))
    with pytest.raises(ValueError, match=r"W is on device .* but x is on device"):
        cs231n.word_embedding_forward(idx, xp.ones((BV, BD), dtype=xp.float64))
