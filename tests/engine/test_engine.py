"""The time loop, the cells through the generic sequence engine, and activations."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

import portable_rnn as prnn
from portable_rnn.engine import sequence
from portable_rnn.engine.cells import GRUCell, LSTMCell, RNNCell, cell_for
from portable_rnn.engine.loop import scan

from ..helpers import assert_on_backend, every_cell, rel_error

CELLS = list(every_cell().values())
CELL_IDS = list(every_cell())
# the shapes of test_layers' CONFIGS: eager JAX compiles each operation once per shape
T, N, D, H = 5, 3, 2, 4


def _layer_inputs(rng, cell, T=T, N=N, D=D, H=H):
    G = cell.n_gates
    return {
        "x": rng.normal(size=(T, N, D)),
        "W_ih": rng.normal(size=(G * H, D)) / 2,
        "W_hh": rng.normal(size=(G * H, H)) / 2,
        "b_ih": rng.normal(size=(G * H,)),
        "b_hh": rng.normal(size=(G * H,)),
        "state0": tuple(rng.normal(size=(N, H)) for _ in range(cell.n_states)),
    }


def _engine(x, state0, W_ih, W_hh, b_ih, b_hh, G, G_final, mask=None, *, cell, xp, truncate=None):
    """Forward and backward of loss = sum(G * out) + sum(G_final * h_T), on arrays of one backend."""
    out, final, tape = sequence.forward(cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask, xp=xp)
    d_final = (G_final,) + (None,) * (cell.n_states - 1)
    grads = sequence.backward(cell, tape, G, d_final, W_ih, W_hh, xp=xp, truncate=truncate)
    return out, final, grads


def _run(backend, cell, d, truncate=None, mask=None):
    """:func:`_engine` on ``backend`` (compiled on jax:jit) from the host inputs ``d``."""
    cv = lambda a: backend.asarray(a, "float64")  # noqa: E731
    args = [cv(d[k]) for k in ("x",)] + [tuple(cv(s) for s in d["state0"])]
    args += [cv(d[k]) for k in ("W_ih", "W_hh", "b_ih", "b_hh", "G", "G_final")] + [mask]
    return backend.run(_engine, *args, cell=cell, xp=backend.xp, truncate=truncate)


@functools.lru_cache(maxsize=None)
def _torch_reference(cell):
    """Inputs and torch.nn.RNN/LSTM/GRU float64 autograd for ``cell``: computed once per cell."""
    torch = pytest.importorskip("torch", reason="torch: not installed, needed as the reference")
    rng = np.random.default_rng(1)
    d = _layer_inputs(rng, cell)
    d["G"] = rng.normal(size=(T, N, H))
    d["G_final"] = rng.normal(size=(N, H))
    kind = cell.mode.upper()  # torch.nn.RNN, LSTM, GRU: a new cell needs its reference here
    kw = {"nonlinearity": cell.nonlinearity} if kind == "RNN" else {}
    module = getattr(torch.nn, kind)(D, H, **kw).double()
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
    expected = {
        "out": t_out, "h_n": h_n[0], "dx": x.grad, "dW_ih": module.weight_ih_l0.grad,
        "dW_hh": module.weight_hh_l0.grad, "db_ih": module.bias_ih_l0.grad, "db_hh": module.bias_hh_l0.grad,
        "dh0": s0[0].grad[0],
    }
    if kind == "LSTM":
        expected["dc0"] = s0[1].grad[0]
    return d, {k: v.detach().numpy() for k, v in expected.items()}


@pytest.mark.jit
@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_cells_match_torch_autograd(backend, cell):
    """Every cell through the engine against torch.nn.RNN/LSTM/GRU autograd, float64."""
    d, expected = _torch_reference(cell)
    out, final, grads = _run(backend, cell, d)
    assert rel_error(backend.to_numpy(out), expected["out"]) < 1e-12
    assert rel_error(backend.to_numpy(final[0]), expected["h_n"]) < 1e-12
    got = {"dx": grads.dx, "dW_ih": grads.dW_ih, "dW_hh": grads.dW_hh,
           "db_ih": grads.db_ih, "db_hh": grads.db_hh, "dh0": grads.dstate0[0]}
    if isinstance(cell, LSTMCell):
        got["dc0"] = grads.dstate0[1]
    for k, v in got.items():
        assert_on_backend(backend, v, "float64", expected[k].shape)
        err = rel_error(backend.to_numpy(v), expected[k])
        assert err < 1e-10, f"{type(cell).__name__} {k}: relative error {err:.2e}"


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("truncate", [None, 2])
def test_jit_runs_forward_and_backward_through_lax_scan(cell, truncate):
    """Under tracing the engine takes ``lax.scan`` (an unrolled loop compiles for minutes at T=100).

    Its numbers are the matrix's business: ``jax:jit`` runs the engine tests compiled.
    """
    jax = pytest.importorskip("jax", reason="jax: not installed (pip install 'portable-rnn[jax]')")
    import jax.numpy as jnp

    d = _layer_inputs(np.random.default_rng(2), cell)
    args = [jnp.asarray(d["x"]), tuple(map(jnp.asarray, d["state0"]))]
    args += [jnp.asarray(d[k]) for k in ("W_ih", "W_hh", "b_ih", "b_hh")]
    args += [jnp.ones((T, N, H)), jnp.ones((N, H)), jnp.ones((T, N, 1))]
    jaxpr = str(jax.make_jaxpr(lambda *a: _engine(*a, cell=cell, xp=jnp, truncate=truncate))(*args))
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


def _padding_case(cell):
    """Host inputs with lengths (5, 2): d and the mask."""
    rng = np.random.default_rng(5)
    d = _layer_inputs(rng, cell, T=5, N=2)
    d["G"], d["G_final"] = np.zeros((5, 2, H)), rng.normal(size=(2, H))
    return d, (np.arange(5)[:, None] < np.array([5, 2]))[..., None].astype(np.float64)


@functools.lru_cache(maxsize=None)
def _short_sequence_alone(cell):
    """The short sequence run alone (T=2) with full BPTT, in float64 on NumPy: the reference."""
    import array_api_compat.numpy as xp

    d, _ = _padding_case(cell)
    args = [d["x"][:2, 1:], tuple(s[1:] for s in d["state0"]), d["W_ih"], d["W_hh"], d["b_ih"], d["b_hh"],
            d["G"][:2, 1:], d["G_final"][1:]]
    _, _, grads = _engine(*args, cell=cell, xp=xp)
    return grads


@pytest.mark.jit
@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_truncation_with_padding_cuts_only_between_valid_steps(backend, cell):
    """A short sequence's final-state gradient crosses its padding whole (every cell, mask and
    truncation together: compiled on jax:jit, where the engine runs lax.scan).

    With lengths (5, 2), T=5 and windows of 2, the short sequence's valid steps
    0 and 1 form one window, so its gradients equal those of running it alone
    (T=2) with full BPTT.
    """
    d, mask = _padding_case(cell)
    _, _, padded = _run(backend, cell, d, truncate=2, mask=backend.asarray(mask, "float64"))
    alone = _short_sequence_alone(cell)
    np.testing.assert_allclose(backend.to_numpy(padded.dx)[:2, 1], alone.dx[:, 0], rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(padded.dx)[2:, 1], 0.0)
    for a, b in zip(padded.dstate0, alone.dstate0):
        np.testing.assert_allclose(backend.to_numpy(a)[1], b[0], rtol=1e-12)
