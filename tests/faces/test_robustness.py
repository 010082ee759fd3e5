"""Robustness: empty work, half precision, extreme values, layer-level properties.

The layer-level properties are identities, proven on NumPy and array-api-strict;
``test_layers`` holds every backend to torch's numbers on bidirectional layers
and on layers with lengths.
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import portable_rnn as prnn
from portable_rnn.backends import BACKEND_NAMES

LAYERS = {"rnn": prnn.RNN, "lstm": prnn.LSTM, "gru": prnn.GRU}
SETTINGS = settings(max_examples=6, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _states(state):
    return state if isinstance(state, tuple) else (state,)


# ---------------------------------------------------------------- empty work


@pytest.mark.parametrize("kind", list(LAYERS))
def test_empty_batch_is_ordinary_empty_work(backend, kind):
    """N = 0: empty outputs and states, zero weight gradients (what the math says)."""
    spec = LAYERS[kind](3, 4, num_layers=2, bidirectional=True)
    params = spec.init(seed=0, xp=backend.xp, dtype="float64", device=backend.device)
    out, state, tape = spec.forward(params, backend.asarray(np.zeros((5, 0, 3))))
    assert tuple(out.shape) == (5, 0, 8)
    assert all(tuple(s.shape) == (4, 0, 4) for s in _states(state))
    grads, dx, _ = spec.backward(params, tape, backend.asarray(np.zeros((5, 0, 8))))
    assert tuple(dx.shape) == (5, 0, 3)
    for k, g in grads.items():
        assert tuple(g.shape) == tuple(params[k].shape)
        np.testing.assert_array_equal(backend.to_numpy(g), 0.0)


@pytest.mark.parametrize("call", [
    lambda: prnn.LSTM(3, 4).forward(prnn.LSTM(3, 4).init(dtype="float64"), np.zeros((0, 2, 3))),
    lambda: prnn.rnn_forward(np.zeros((3, 2, 0)), np.zeros((5, 2)), {
        "Wax": np.zeros((5, 3)), "Waa": np.zeros((5, 5)), "Wya": np.zeros((2, 5)),
        "ba": np.zeros((5, 1)), "by": np.zeros((2, 1))}),
    lambda: prnn.cs231n.lstm_forward(np.zeros((2, 0, 3)), np.zeros((2, 4)), np.zeros((3, 16)),
                                     np.zeros((4, 16)), np.zeros(16)),
], ids=["layers", "stepbystep", "cs231n"])
def test_zero_time_steps_is_a_clear_error(call):
    """T = 0 has no output sequence to return: every API refuses it the same way."""
    with pytest.raises(ValueError, match=r"x has shape .*; expected at least one time step"):
        call()


# ---------------------------------------------------------------- half precision


#: The half-precision dtypes of each library that has them.
HALF = {"numpy": ("float16",), "cupy": ("float16",), "torch": ("bfloat16", "float16"), "jax": ("bfloat16",)}


@pytest.mark.backends(*(name for name in BACKEND_NAMES if name.split(":")[0] in HALF))
def test_half_precision_is_refused_with_advice(backend):
    spec = prnn.GRU(3, 2)
    library = importlib.import_module({"jax": "jax.numpy"}.get(backend.library, backend.library))
    params = spec.init(xp=backend.xp, dtype="float32", device=backend.device)
    for half in HALF[backend.library]:
        x = backend.xp.zeros((2, 1, 3), dtype=getattr(library, half), device=backend.device)
        with pytest.raises(TypeError, match=r"x has dtype .*16; portable_rnn computes in float32 or float64"):
            spec.forward(params, x)


# ---------------------------------------------------------------- extremes


@pytest.mark.parametrize("kind", list(LAYERS))
def test_extreme_weights_and_inputs_stay_finite(backend, dtype, kind):
    # the shapes of test_layers' CONFIGS: eager JAX compiles each operation once per shape
    spec = LAYERS[kind](2, 4, bidirectional=True, **({"nonlinearity": "tanh"} if kind == "rnn" else {}))
    rng = np.random.default_rng(0)
    params = {k: backend.asarray(rng.choice([-1e4, 1e4], size=v.shape), dtype)
              for k, v in spec.init(dtype="float64").items()}
    x = backend.asarray(rng.choice([-1e4, 0.0, 1e4], size=(5, 3, 2)), dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, state, tape = spec.forward(params, x)
        grads, dx, dstate = spec.backward(params, tape, backend.asarray(np.ones((5, 3, 8)), dtype))
    for a in (out, dx, *_states(state), *_states(dstate), *grads.values()):
        assert np.all(np.isfinite(backend.to_numpy(a)))


# ---------------------------------------------------------------- layer properties


def _random_layer(kind, data):
    D, H = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    return LAYERS[kind](D, H), D, H


@pytest.mark.backends("numpy", "array_api_strict")
@pytest.mark.parametrize("kind", list(LAYERS))
@SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_reverse_layer_equals_forward_layer_on_flipped_input(backend, kind, data, seed):
    spec, D, H = _random_layer(kind, data)
    T, N = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3))
    bi = LAYERS[kind](D, H, bidirectional=True)
    params = bi.init(seed=seed, xp=backend.xp, dtype="float64", device=backend.device)
    x = np.random.default_rng(seed).normal(size=(T, N, D))
    out, _, _ = bi.forward(params, backend.asarray(x))
    reverse_only = {k.replace("_reverse", ""): v for k, v in params.items() if k.endswith("_reverse")}
    flipped, _, _ = spec.forward(reverse_only, backend.asarray(x[::-1].copy()))
    np.testing.assert_allclose(backend.to_numpy(out)[..., H:], backend.to_numpy(flipped)[::-1], rtol=1e-12, atol=1e-14)


@pytest.mark.backends("numpy", "array_api_strict")
@pytest.mark.parametrize("kind", list(LAYERS))
@SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_lengths_all_T_equals_no_lengths(backend, kind, data, seed):
    spec = LAYERS[kind](2, 3, bidirectional=data.draw(st.booleans()), num_layers=data.draw(st.integers(1, 2)))
    T, N = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3))
    params = spec.init(seed=seed, xp=backend.xp, dtype="float64", device=backend.device)
    x = backend.asarray(np.random.default_rng(seed).normal(size=(T, N, 2)))
    lengths = backend.xp.asarray(np.full(N, T), device=backend.device)
    plain, with_lengths = spec.forward(params, x), spec.forward(params, x, lengths=lengths)
    for a, b in zip((plain[0], *_states(plain[1])), (with_lengths[0], *_states(with_lengths[1]))):
        np.testing.assert_allclose(backend.to_numpy(b), backend.to_numpy(a), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_outputs_never_alias_or_mutate_inputs(kind):
    spec = LAYERS[kind](2, 3, bidirectional=True)
    params = spec.init(seed=1, dtype="float64")
    x = np.random.default_rng(1).normal(size=(4, 2, 2))
    inputs = [x, *params.values()]
    for a in inputs:
        a.setflags(write=False)
    snapshot = [a.copy() for a in inputs]
    out, state, tape = spec.forward(params, x)
    d_out = np.ones(out.shape)
    d_out.setflags(write=False)
    grads, dx, dstate = spec.backward(params, tape, d_out)
    results = [out, *_states(state), dx, *_states(dstate), *grads.values()]
    for r in results:
        for a in [*inputs, d_out]:
            assert not np.shares_memory(r, a)
    for a, s in zip(inputs, snapshot):
        np.testing.assert_array_equal(a, s)
