"""portable_rnn.jax.apply: JAX's autodiff runs the hand-written backward."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from portable_rnn import GRU, LSTM, RNN  # noqa: E402
from portable_rnn.jax import apply, dropout_masks  # noqa: E402

SPECS = {
    "lstm-bi-bf": LSTM(3, 4, 1, bidirectional=True, batch_first=True),
    "gru": GRU(3, 4),
    "rnn-relu-2l": RNN(3, 4, 2, nonlinearity="relu"),
    "lstm-proj-2l-bi": LSTM(3, 4, 2, bidirectional=True, proj_size=2),
    "gru-dropout-3l-bf": GRU(3, 4, 3, batch_first=True, dropout=0.5),
}


def _inputs(spec, seed=0):
    rng = np.random.default_rng(seed)
    T, N = 5, 3
    x = jnp.asarray(rng.normal(size=(N, T, 3) if spec.batch_first else (T, N, 3)))
    params = spec.init(seed=seed, like=x)
    dirs, R = spec.num_directions, spec.output_size  # R: proj_size or the hidden size 4
    h0 = jnp.asarray(rng.normal(size=(spec.num_layers * dirs, N, R)))
    c0 = jnp.asarray(rng.normal(size=(spec.num_layers * dirs, N, 4)))
    state = (h0, c0) if isinstance(spec, LSTM) else h0
    w = jnp.asarray(rng.normal(size=(N, T, R * dirs) if spec.batch_first else (T, N, R * dirs)))
    return params, x, state, jnp.asarray([5, 2, 4]), w


def _loss(spec, truncate, key=None):
    def loss(params, x, state, lengths, w):
        out, final = apply(spec, params, x, state, lengths, truncate=truncate, dropout_key=key)
        h = final[0] if isinstance(final, tuple) else final
        return jnp.sum(out * w) + jnp.sum(jnp.tanh(h))
    return loss


def _host(tree):
    """A tree of JAX arrays as NumPy arrays (``None`` and the tuple structure kept)."""
    return jax.tree.map(np.asarray, tree)


def _reference(spec, params, x, state, lengths, w, truncate, key=None):
    """The same gradients from spec.backward called by hand, on NumPy (with the dropout factors of ``key``).

    The reference runs the hand-written forward and backward on the host, so no second program
    compiles: apply's own backward is the same code on JAX's arrays, which holds to it within
    rounding (the tolerances below).
    """
    masks = None if key is None else _host(dropout_masks(spec, key, x))
    params, x, state, lengths, w = _host((params, x, state, lengths, w))
    out, final, tape = spec.forward(params, x, state, lengths, dropout_masks=masks)
    h = final[0] if isinstance(final, tuple) else final
    d_h = 1 - np.tanh(h) ** 2
    d_final = (d_h, np.zeros_like(final[1])) if isinstance(final, tuple) else d_h
    return spec.backward(params, tape, w, d_final, truncate=truncate)


@pytest.mark.parametrize("name, truncate", [("lstm-bi-bf", 2), ("gru", 2), ("rnn-relu-2l", None),
                                            ("lstm-proj-2l-bi", None)])
def test_grad_through_apply_is_the_hand_written_backward(name, truncate):
    spec = SPECS[name]
    params, x, state, lengths, w = _inputs(spec)
    # Compiled: eager JAX would dispatch (and compile) op by op, for seconds per case.
    grad = jax.jit(jax.grad(_loss(spec, truncate), argnums=(0, 1, 2)))
    grads, dx, dstate = grad(params, x, state, lengths, w)
    ref_grads, ref_dx, ref_dstate = _reference(spec, params, x, state, lengths, w, truncate)
    for key in params:
        np.testing.assert_allclose(grads[key], ref_grads[key], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-14)
    for a, b in zip(jax.tree.leaves(dstate), jax.tree.leaves(ref_dstate)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_dropout_key_is_training_mode_with_the_same_factors_in_the_backward():
    spec = SPECS["gru-dropout-3l-bf"]
    params, x, state, lengths, w = _inputs(spec)
    key = jax.random.key(3)

    @jax.jit  # the factors are drawn inside the compiled function, from a traced key
    def grad(key):
        return jax.grad(_loss(spec, None, key), argnums=(0, 1, 2))(params, x, state, lengths, w)

    grads, dx, dstate = grad(key)
    ref_grads, ref_dx, ref_dstate = _reference(spec, params, x, state, lengths, w, None, key)
    for name in params:
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dstate, ref_dstate, rtol=1e-12, atol=1e-14)
    masks = dropout_masks(spec, key, x)
    assert len(masks) == 2 and all(m.shape == (3, 5, 4) for m in masks)  # batch_first, like out
    assert set(np.unique(np.concatenate([np.ravel(m) for m in masks]))) == {0.0, 2.0}  # 0 or 1/(1-p)
    trained, _ = apply(spec, params, x, dropout_key=key)
    evaluated, _ = apply(spec, params, x)
    assert not np.allclose(trained, evaluated)
    np.testing.assert_array_equal(evaluated, spec.forward(params, x)[0])  # no key: no dropout


def test_truncation_inside_grad_differs_from_full_bptt():
    spec = SPECS["gru"]
    params, x, state, lengths, w = _inputs(spec)
    full = jax.grad(_loss(spec, None))(params, x, state, lengths, w)
    cut = jax.grad(_loss(spec, 2))(params, x, state, lengths, w)
    assert not np.allclose(full["weight_hh_l0"], cut["weight_hh_l0"])


def test_jit_value_and_grad_and_vjp_agree_with_eager():
    spec = SPECS["lstm-bi-bf"]
    params, x, state, lengths, w = _inputs(spec)
    loss = _loss(spec, None)
    value, grads = jax.jit(jax.value_and_grad(loss))(params, x, state, lengths, w)
    eager = jax.grad(loss)(params, x, state, lengths, w)
    np.testing.assert_allclose(value, loss(params, x, state, lengths, w), rtol=1e-13)
    for key in params:
        np.testing.assert_allclose(grads[key], eager[key], rtol=1e-12, atol=1e-14)
    (out, final), vjp = jax.vjp(lambda p: apply(spec, p, x, state, lengths), params)
    (g,) = vjp((w, jax.tree.map(jnp.zeros_like, final)))
    ref = spec.backward(params, spec.forward(params, x, state, lengths)[2], w, None)[0]
    for key in params:
        np.testing.assert_allclose(g[key], ref[key], rtol=1e-12, atol=1e-14)


def test_state_none_and_no_lengths_and_vmap():
    spec = SPECS["gru"]
    params, x, _, _, w = _inputs(spec)

    def loss(params, x):
        out, _ = apply(spec, params, x)
        return jnp.sum(out * w)

    grads = jax.grad(loss)(params, x)
    ref = spec.backward(params, spec.forward(params, x)[2], w)[0]
    for key in params:
        np.testing.assert_allclose(grads[key], ref[key], rtol=1e-12, atol=1e-14)
    # vmap over a leading axis of independent batches: each equals its own call
    xs = jnp.stack([x, 2 * x])
    per = jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, xs)
    for i in range(2):
        one = jax.grad(loss)(params, xs[i])
        np.testing.assert_allclose(per["weight_ih_l0"][i], one["weight_ih_l0"], rtol=1e-12, atol=1e-14)


def test_optax_step_uses_it():
    optax = pytest.importorskip("optax")
    spec = SPECS["gru"]
    params, x, _, _, w = _inputs(spec)

    def loss(params):
        return jnp.sum(apply(spec, params, x)[0] * w)

    opt = optax.adam(1e-2)
    state = opt.init(params)
    before = loss(params)
    for _ in range(5):
        updates, state = opt.update(jax.grad(loss)(params), state)
        params = optax.apply_updates(params, updates)
    assert loss(params) < before
