"""The time loop, the cells through the generic sequence engine, and activations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import portable_rnn as prnn
from portable_rnn import sequence
from portable_rnn.cells import GRUCell, LSTMCell, RNNCell, cell_for
from portable_rnn.loop import scan

from .helpers import assert_on_backend, rel_error

CELLS = [RNNCell("tanh"), RNNCell("relu"), LSTMCell(), GRUCell()]


def _layer_inputs(rng, cell, T=4, N=3, D=2, H=3):
    G = cell.n_gates
    return {
        "x": rng.normal(size=(T, N, D)),
        "W_ih": rng.normal(size=(G * H, D)) / 2,
        "W_hh": rng.normal(size=(G * H, H)) / 2,
        "b_ih": rng.normal(size=(G * H,)),
        "b_hh": rng.normal(size=(G * H,)),
        "state0": tuple(rng.normal(size=(N, H)) for _ in range(cell.n_states)),
    }


def _run(cell, d, xp, cv, use_lax=None, truncate=None, mask=None):
    """Forward and backward of loss = sum(G * out) + sum(G_final * h_T)."""
    x, W_ih, W_hh, b_ih, b_hh = (cv(d[k]) for k in ("x", "W_ih", "W_hh", "b_ih", "b_hh"))
    state0 = tuple(cv(s) for s in d["state0"])
    out, final, tape = sequence.forward(cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask, xp=xp)
    d_final = (cv(d["G_final"]),) + (None,) * (cell.n_states - 1)
    grads = sequence.backward(cell, tape, cv(d["G"]), d_final, W_ih, W_hh, xp=xp, truncate=truncate)
    return out, final, grads


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: type(c).__name__ + getattr(c, "nonlinearity", ""))
def test_cells_match_torch_autograd(backend, cell):
    """Every cell through the engine against torch.nn.RNN/LSTM/GRU autograd, float64."""
    torch = pytest.importorskip("torch", reason="torch: not installed, needed as the reference")
    rng = np.random.default_rng(1)
    d = _layer_inputs(rng, cell)
    d["G"] = rng.normal(size=(4, 3, 3))
    d["G_final"] = rng.normal(size=(3, 3))
    out, final, grads = _run(cell, d, backend.xp, backend.asarray)

    kind = {RNNCell: "RNN", LSTMCell: "LSTM", GRUCell: "GRU"}[type(cell)]
    kw = {"nonlinearity": cell.nonlinearity} if kind == "RNN" else {}
    module = getattr(torch.nn, kind)(2, 3, **kw).double()
    with torch.no_grad():
        for name in ("W_ih", "W_hh", "b_ih", "b_hh"):
            torch_name = {"W_ih": "weight_ih_l0", "W_hh": "weight_hh_l0", "b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0"}[name]
            getattr(module, torch_name).copy_(torch.from_numpy(d[name]))
    x = torch.tensor(d["x"], requires_grad=True)
    s0 = [torch.tensor(s[None], requires_grad=True) for s in d["state0"]]
    t_out, t_state = module(x, s0[0] if kind != "LSTM" else tuple(s0))
    h_n = t_state[0] if kind == "LSTM" else t_state
    loss = (t_out * torch.from_numpy(d["G"])).sum() + (h_n[0] * torch.from_numpy(d["G_final"])).sum()
    loss.backward()

    assert rel_error(backend.to_numpy(out), t_out.detach().numpy()) < 1e-12
    assert rel_error(backend.to_numpy(final[0]), h_n[0].detach().numpy()) < 1e-12
    expected = {
        "dx": x.grad, "dW_ih": module.weight_ih_l0.grad, "dW_hh": module.weight_hh_l0.grad,
        "db_ih": module.bias_ih_l0.grad, "db_hh": module.bias_hh_l0.grad, "dh0": s0[0].grad[0],
    }
    got = {"dx": grads.dx, "dW_ih": grads.dW_ih, "dW_hh": grads.dW_hh,
           "db_ih": grads.db_ih, "db_hh": grads.db_hh, "dh0": grads.dstate0[0]}
    for k, v in got.items():
        assert_on_backend(backend, v, "float64", tuple(expected[k].shape))
        err = rel_error(backend.to_numpy(v), expected[k].numpy())
        assert err < 1e-10, f"{kind} {k}: relative error {err:.2e}"
    if kind == "LSTM":
        assert rel_error(backend.to_numpy(grads.dstate0[1]), s0[1].grad[0].numpy()) < 1e-10


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: type(c).__name__ + getattr(c, "nonlinearity", ""))
@pytest.mark.parametrize("truncate", [None, 2])
def test_lax_scan_and_python_loop_agree(cell, truncate):
    jax = pytest.importorskip("jax", reason="jax: not installed (pip install 'portable-rnn[jax]')")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    rng = np.random.default_rng(2)
    d = _layer_inputs(rng, cell)
    d["G"] = rng.normal(size=(4, 3, 3))
    d["G_final"] = rng.normal(size=(3, 3))
    mask = jnp.asarray((np.arange(4)[:, None] < np.array([4, 2, 1])[None, :])[..., None], dtype=jnp.float64)

    def run(dd, mask):
        return _run(cell, dd, jnp, lambda a: a, truncate=truncate, mask=mask)

    args = jax.tree.map(jnp.asarray, d)
    eager = run(args, mask)  # concrete arrays: the Python loop
    jitted = jax.jit(run)(args, mask)  # tracers: lax.scan
    for e, j in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(np.asarray(j), np.asarray(e), rtol=1e-12, atol=1e-14)
    jaxpr = str(jax.make_jaxpr(run)(args, mask))
    assert jaxpr.count("scan[") >= 2, "forward and backward must each run through lax.scan"


def test_scan_paths_on_a_toy_step():
    jax = pytest.importorskip("jax", reason="jax: not installed (pip install 'portable-rnn[jax]')")
    import jax.numpy as jnp

    def step(carry, x_t):
        carry = carry * 0.5 + x_t
        return carry, (carry, None)

    xs = jnp.arange(6.0).reshape(3, 2)
    for reverse in (False, True):
        loop = scan(step, jnp.zeros(2), xs, xp=jnp, reverse=reverse, use_lax=False)
        lax = scan(step, jnp.zeros(2), xs, xp=jnp, reverse=reverse, use_lax=True)
        for a, b in zip(jax.tree.leaves(loop), jax.tree.leaves(lax)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_truncate_at_least_T_is_full_bptt(backend):
    rng = np.random.default_rng(4)
    cell = LSTMCell()
    d = _layer_inputs(rng, cell)
    d["G"], d["G_final"] = rng.normal(size=(4, 3, 3)), rng.normal(size=(3, 3))
    full = _run(cell, d, backend.xp, backend.asarray)[2]
    for k in (4, 10):
        cut = _run(cell, d, backend.xp, backend.asarray, truncate=k)[2]
        for a, b in zip(full, cut):
            if isinstance(a, tuple):
                a, b = a[0], b[0]
            np.testing.assert_array_equal(backend.to_numpy(a), backend.to_numpy(b))


def test_cell_for():
    assert cell_for("gru") == GRUCell() and cell_for("rnn", "relu") == RNNCell("relu")
    with pytest.raises(ValueError, match="mode"):
        cell_for("transformer")


# ---------------------------------------------------------------- activations


@pytest.mark.parametrize("fn", ["sigmoid", "softmax", "log_softmax", "relu"])
def test_activations_finite_and_correct_for_extreme_inputs(backend, dtype, fn):
    x = np.array([[-1e4, -88.0, -1.0, 0.0, 1.0, 88.0, 1e4]])
    xb = backend.asarray(x, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = getattr(prnn, fn)(xb)
    assert_on_backend(backend, y, dtype, x.shape)
    y = backend.to_numpy(y).astype(np.float64)
    assert np.all(np.isfinite(y))
    x32 = x.astype(dtype).astype(np.float64)
    with np.errstate(over="ignore"):
        expected = {
            "sigmoid": 1 / (1 + np.exp(-x32)),
            "relu": np.maximum(x32, 0),
            "log_softmax": x32 - x32.max() - np.log(np.exp(x32 - x32.max()).sum()),
            "softmax": np.exp(x32 - x32.max()) / np.exp(x32 - x32.max()).sum(),
        }[fn]
    rtol = 1e-12 if dtype == "float64" else 1e-6
    # Subnormal results may be flushed to zero (JAX on CPU does in float32).
    np.testing.assert_allclose(y, expected, rtol=rtol, atol=np.finfo(dtype).tiny)


def test_truncation_with_padding_cuts_only_between_valid_steps(backend):
    """A short sequence's final-state gradient crosses its padding whole.

    With lengths (5, 2), T=5 and windows of 2, the short sequence's valid steps
    0 and 1 form one window, so its gradients equal those of running it alone
    (T=2) with full BPTT.
    """
    rng = np.random.default_rng(5)
    cell = LSTMCell()
    d = _layer_inputs(rng, cell, T=5, N=2)
    d["G"], d["G_final"] = np.zeros((5, 2, 3)), rng.normal(size=(2, 3))
    mask = backend.asarray((np.arange(5)[:, None] < np.array([5, 2]))[..., None].astype(float))
    _, _, padded = _run(cell, d, backend.xp, backend.asarray, truncate=2, mask=mask)
    short = dict(d, x=d["x"][:2, 1:], G=d["G"][:2, 1:], G_final=d["G_final"][1:],
                 state0=tuple(s[1:] for s in d["state0"]))
    _, _, alone = _run(cell, short, backend.xp, backend.asarray)
    np.testing.assert_allclose(backend.to_numpy(padded.dx)[:2, 1], backend.to_numpy(alone.dx)[:, 0], rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(padded.dx)[2:, 1], 0.0)
    for a, b in zip(padded.dstate0, alone.dstate0):
        np.testing.assert_allclose(backend.to_numpy(a)[1], backend.to_numpy(b)[0], rtol=1e-12)
