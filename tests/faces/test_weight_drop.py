"""Weight drop (DropConnect on ``weight_hh``, as AWD-LSTM): training-mode factors on the recurrent weights.

The reference is ``torch.nn``'s own module run through ``torch.func.functional_call``
with each ``weight_hh`` replaced by ``weight_hh * factor`` in float64, so
autograd differentiates the raw weights through the product: outputs, final
states and every gradient must match to 1e-10 on every backend.
"""

from __future__ import annotations

import numpy as np
import pytest

from portable_rnn import GRU, LSTM, RNN

torch = pytest.importorskip("torch", reason="torch: not installed, needed as the reference")

D, H, T, N = 3, 4, 5, 2
SPECS = {
    "lstm-2l-bi": LSTM(D, H, 2, bidirectional=True, weight_drop=0.5),
    "gru-bf": GRU(D, H, batch_first=True, weight_drop=0.3),
    "rnn-2l-proj-free": RNN(D, H, 2, weight_drop=0.25),
}


def _reference(spec, params, masks, x, d_out):
    kw = dict(bias=spec.bias, batch_first=spec.batch_first, bidirectional=spec.bidirectional, dtype=torch.float64)
    module = getattr(torch.nn, type(spec).__name__)(spec.input_size, spec.hidden_size, spec.num_layers, **kw)
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    used = {k: v * torch.tensor(masks[k]) if k in masks else v for k, v in leaves.items()}
    xt = torch.tensor(x, requires_grad=True)
    out, _ = torch.func.functional_call(module, used, (xt,))
    (out * torch.tensor(d_out)).sum().backward()
    return out.detach().numpy(), {k: v.grad.numpy() for k, v in leaves.items()}, xt.grad.numpy()


@pytest.mark.parametrize("name", list(SPECS))
def test_weight_drop_matches_torch_nn_with_the_same_factors(backend, name):
    spec = SPECS[name]
    rng = np.random.default_rng(0)
    params = spec.init(seed=1, dtype="float64")
    masks = spec.weight_drop_masks(7, params)
    x = rng.normal(size=(N, T, D) if spec.batch_first else (T, N, D))
    d_out = rng.normal(size=spec._out_shape(T, N))
    ref_out, ref_grads, ref_dx = _reference(spec, params, masks, x, d_out)

    cv = lambda a: backend.asarray(a, "float64")  # noqa: E731
    p, m = {k: cv(v) for k, v in params.items()}, {k: cv(v) for k, v in masks.items()}
    out, _, tape = backend.run(lambda p, m, x: spec.forward(p, x, weight_masks=m), p, m, cv(x))
    grads, dx, _ = backend.run(spec.backward, p, tape, cv(d_out))
    np.testing.assert_allclose(backend.to_numpy(out), ref_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(dx), ref_dx, rtol=1e-10, atol=1e-12)
    for k, ref in ref_grads.items():
        np.testing.assert_allclose(backend.to_numpy(grads[k]), ref, rtol=1e-10, atol=1e-12, err_msg=k)


def test_the_factors_are_seeded_shaped_and_checked():
    spec = LSTM(D, H, 2, weight_drop=0.5)
    params = spec.init(seed=0)
    masks = spec.weight_drop_masks(3, params)
    assert list(masks) == ["weight_hh_l0", "weight_hh_l1"]
    for name, m in masks.items():
        assert m.shape == params[name].shape and m.dtype == params[name].dtype
        assert set(np.unique(m)) <= {0.0, 2.0} and 0.3 < np.mean(m == 0) < 0.7
        np.testing.assert_array_equal(m, spec.weight_drop_masks(3, params)[name])
    assert LSTM(D, H).weight_drop_masks(3, LSTM(D, H).init(seed=0)) == {}
    x = np.zeros((T, N, D), np.float32)
    with pytest.raises(ValueError, match="weight_masks were given but this spec has weight_drop=0.0"):
        LSTM(D, H, 2).forward(params, x, weight_masks=masks)
    with pytest.raises(ValueError, match=r"weight_masks must have the keys \['weight_hh_l0', 'weight_hh_l1'\]"):
        spec.forward(params, x, weight_masks={"weight_hh_l0": masks["weight_hh_l0"]})
    with pytest.raises(ValueError, match=r"weight_masks\['weight_hh_l1'\] has shape \(3, 4\); expected \(16, 4\)"):
        spec.forward(params, x, weight_masks={**masks, "weight_hh_l1": masks["weight_hh_l1"][:3]})
    with pytest.raises(ValueError, match="weight_drop must be"):
        GRU(D, H, weight_drop=1.0)


def test_jax_apply_draws_the_factors_from_its_key():
    """``apply(..., dropout_key=k)`` is the layer with :func:`portable_rnn.jax.weight_drop_masks` of ``k``."""
    jax = pytest.importorskip("jax", reason="jax: not installed")
    import jax.numpy as jnp

    from portable_rnn.jax import apply, weight_drop_masks

    spec = GRU(D, H, 2, weight_drop=0.5)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(T, N, D)), jnp.float32)
    params, key = spec.init(seed=0, like=x), jax.random.key(3)
    masks = weight_drop_masks(spec, key, params)
    assert sorted(masks) == ["weight_hh_l0", "weight_hh_l1"] and float(jnp.mean(masks["weight_hh_l0"] == 0)) > 0

    def loss(p):
        return jnp.sum(apply(spec, p, x, dropout_key=key)[0] ** 2)

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    host = {k: np.asarray(v) for k, v in params.items()}  # the reference on NumPy: eager JAX compiles every op
    out, _, tape = spec.forward(host, np.asarray(x), weight_masks={k: np.asarray(m) for k, m in masks.items()})
    ours, _, _ = spec.backward(host, tape, 2 * out)
    np.testing.assert_allclose(value, np.sum(out ** 2), rtol=1e-5)
    for k in params:
        np.testing.assert_allclose(grads[k], ours[k], rtol=1e-4, atol=1e-6, err_msg=k)
    plain = jax.jit(jax.grad(lambda p: jnp.sum(apply(spec, p, x)[0] ** 2)))(params)
    assert not np.allclose(plain["weight_hh_l0"], grads["weight_hh_l0"])


def test_the_torch_modules_drop_weights_in_training_only():
    """``portable_rnn.torch.PeepholeLSTM(weight_drop=0.5)``: in training each forward draws factors (0 or 2) from
    torch's generator and autograd differentiates the raw weights through them; in evaluation nothing is dropped."""
    from portable_rnn.torch import PeepholeLSTM

    torch.manual_seed(0)
    module = PeepholeLSTM(D, H, num_layers=2, weight_drop=0.5, dtype=torch.float64)
    spec = LSTM(D, H, 2, peephole=True, weight_drop=0.5)
    params = {k: v.detach().numpy() for k, v in module.named_parameters()}
    x = torch.randn(T, N, D, dtype=torch.float64)
    module.eval()
    np.testing.assert_allclose(module(x)[0].detach().numpy(), spec.forward(params, x.numpy())[0], rtol=1e-12)

    module.train()
    out, _ = module(x)
    out.square().sum().backward()
    # the factor is 0 exactly where a weight_hh entry gets no gradient (and 2 elsewhere)
    masks = {k: 2.0 * (getattr(module, k).grad.numpy() != 0) for k in ("weight_hh_l0", "weight_hh_l1")}
    assert all(0.3 < np.mean(m == 0) < 0.7 for m in masks.values())
    ref_out, _, tape = spec.forward(params, x.numpy(), weight_masks=masks)
    grads, _, _ = spec.backward(params, tape, 2 * ref_out)
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=1e-12, atol=1e-14)
    for name, weight in module.named_parameters():
        np.testing.assert_allclose(weight.grad.numpy(), grads[name], rtol=1e-10, atol=1e-13, err_msg=name)
    assert not torch.equal(module(x)[0], out)  # a new draw every forward
    with pytest.raises(ValueError, match="weight_drop must be"):
        PeepholeLSTM(D, H, weight_drop=1.5)
