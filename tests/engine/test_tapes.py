"""A tape fits only the spec that made it, and outputs never share memory with it."""

from __future__ import annotations

import numpy as np
import pytest

from portable_rnn.layers import GRU, LSTM, RNN


@pytest.mark.parametrize("made_by, used_by", [
    (RNN(2, 3), RNN(2, 3, nonlinearity="relu")),  # same shapes: silently wrong without the check
    (RNN(2, 3), RNN(5, 3)),
    (LSTM(2, 3), LSTM(2, 3, batch_first=True)),
    (GRU(2, 3, 2), GRU(2, 3, 1)),
    (GRU(2, 3), GRU(2, 3, bidirectional=True)),
    (LSTM(2, 3), GRU(2, 3)),
])
def test_a_tape_of_another_spec_is_refused_naming_both(made_by, used_by):
    x = np.zeros((4, 2, 2))
    _, _, tape = made_by.forward(made_by.init(like=x), x)
    with pytest.raises(ValueError, match=r"tape was made by .*, not by this spec "):
        used_by.backward(used_by.init(like=np.zeros((4, 2, used_by.input_size))), tape, None)


def test_an_equal_spec_accepts_the_tape():
    x = np.ones((4, 2, 2))
    spec = GRU(2, 3)
    params = spec.init(like=x)
    out, _, tape = spec.forward(params, x)
    grads, _, _ = GRU(2, 3).backward(params, tape, np.ones_like(out))
    assert set(grads) == set(params)


def test_the_tape_check_holds_under_jax_jit():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    spec, other = RNN(2, 3), RNN(2, 3, nonlinearity="relu")
    x = jnp.ones((4, 2, 2), dtype=jnp.float32)
    params = spec.init(like=x)
    tape = jax.jit(lambda p, x: spec.forward(p, x)[2])(params, x)
    assert tape.spec == spec
    with pytest.raises(ValueError, match="tape was made by"):
        jax.jit(lambda p, t: other.backward(p, t, None))(params, tape)


@pytest.mark.backends("numpy", "torch", "array_api_strict")
@pytest.mark.parametrize("batch_first", [False, True])
def test_writing_into_out_does_not_change_the_gradients(backend, batch_first):
    spec = LSTM(3, 4, batch_first=batch_first)
    x = backend.asarray(np.random.default_rng(0).normal(size=(5, 2, 3)), "float64")
    params = spec.init(seed=0, like=x)
    out, _, tape = spec.forward(params, x)
    d_out = backend.asarray(np.ones(tuple(out.shape)), "float64")
    before = spec.backward(params, tape, d_out)[0]
    out_host = backend.to_numpy(out)
    out += 1.0  # in place on these three libraries
    after = spec.backward(params, tape, d_out)[0]
    for key in before:
        np.testing.assert_array_equal(backend.to_numpy(before[key]), backend.to_numpy(after[key]))
    np.testing.assert_array_equal(backend.to_numpy(out), out_host + 1.0)
