"""``recurrent_dropout=p`` (Gal & Ghahramani 2016) and ``zoneout=p`` (Krueger et al. 2016) on every layer.

The reference is written here from the published equations in eager torch
float64 with autograd, with the factors the layer is given:

    recurrent dropout   the recurrent product reads h_{t-1} * m, m (N, R) one draw per sequence,
                        layer and direction; everything else reads h_{t-1};
    zoneout             s_t = u_t * s_new + (1 - u_t) * s_{t-1} for every state part, u_t in {0, 1}
                        in training and u = 1 - p in evaluation; the output is the blended h.

The layers' hand-written gradients must match to 1e-10 in float64, with
lengths, truncation, checkpointed tapes, two layers and both directions, for
the RNN, LSTM, GRU and the layer-normalised cells, on every backend.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from portable_rnn.layers import GRU, LSTM, RNN

from ..helpers import torch_stacked_reference

torch = pytest.importorskip("torch", reason="torch: not installed, needed as the reference")

T, N, D, H = 6, 3, 4, 5


def _ln(a, w, part):
    return torch.nn.functional.layer_norm(a, (a.shape[-1],), w[f"weight_ln_{part}"], w[f"bias_ln_{part}"], eps=1e-5)


def _rnn_step(x_t, state, h_rec, w):
    return (torch.tanh(x_t @ w["weight_ih"].T + w["bias_ih"] + h_rec @ w["weight_hh"].T + w["bias_hh"]),)


def _lstm_step(x_t, state, h_rec, w):
    _, c = state
    if "weight_ln_ih" in w:
        z = _ln(x_t @ w["weight_ih"].T + w["bias_ih"], w, "ih") + _ln(h_rec @ w["weight_hh"].T + w["bias_hh"], w, "hh")
    else:
        z = x_t @ w["weight_ih"].T + w["bias_ih"] + h_rec @ w["weight_hh"].T + w["bias_hh"]
    zi, zf, zg, zo = z.split(H, dim=-1)
    c_new = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
    return torch.sigmoid(zo) * torch.tanh(_ln(c_new, w, "c") if "weight_ln_c" in w else c_new), c_new


def _gru_step(x_t, state, h_rec, w):
    (h,) = state
    y_x, y_h = x_t @ w["weight_ih"].T + w["bias_ih"], h_rec @ w["weight_hh"].T + w["bias_hh"]
    if "weight_ln_ih" in w:
        y_x, y_h = _ln(y_x, w, "ih"), _ln(y_h, w, "hh")
    r, z = torch.sigmoid(y_x[..., : 2 * H] + y_h[..., : 2 * H]).split(H, dim=-1)
    n = torch.tanh(y_x[..., 2 * H :] + r * y_h[..., 2 * H :])
    return ((1 - z) * n + z * h,)


def _reference(step, recurrent, zoneout):
    """One direction's reference; layers and directions are called in order, so a counter indexes the factors."""
    order = itertools.count()

    def direction(x, state, w, lengths, truncate):
        i, outs = next(order), []
        for t in range(x.shape[0]):
            if truncate and t and t % truncate == 0:
                state = tuple(s.detach() for s in state)
            h_rec = state[0] if recurrent is None else state[0] * recurrent[i]
            new = step(x[t], state, h_rec, w)
            if zoneout is not None:
                new = tuple(u[i][t] * n + (1 - u[i][t]) * s for u, n, s in zip(zoneout, new, state))
            valid = (t < lengths)[:, None].to(x.dtype)
            state = tuple(valid * n + (1 - valid) * s for n, s in zip(new, state))
            outs.append(valid * new[0])
        return torch.stack(outs), state

    return direction


CELLS = {"rnn": (RNN, {}, _rnn_step), "lstm": (LSTM, {}, _lstm_step), "gru": (GRU, {}, _gru_step),
         "lstm-ln": (LSTM, {"layer_norm": True}, _lstm_step), "gru-ln": (GRU, {"layer_norm": True}, _gru_step)}
CASES = {
    "both-lengths": dict(spec=dict(zoneout=0.3, recurrent_dropout=0.4), lengths=[6, 2, 4]),
    "zoneout-eval-truncate-checkpoint": dict(spec=dict(zoneout=0.25), truncate=2, retain="checkpoint", train=False),
    "recurrent-2l-bi-lengths": dict(spec=dict(recurrent_dropout=0.5, num_layers=2, bidirectional=True),
                                    lengths=[3, 6, 1]),
    "both-2l-bi-checkpoint": dict(spec=dict(zoneout=0.5, recurrent_dropout=0.3, num_layers=2, bidirectional=True),
                                  retain="checkpoint", truncate=4),
}


# Compiles cost seconds each: jax:jit and eager JAX run the cells that cover the others' code paths
# (the engine's blend for every cell, h_mask in a plain and a normalised step).
@pytest.mark.jit(name=["both-2l-bi-checkpoint"], cell=["lstm-ln", "gru"])
@pytest.mark.eager_jax(cell=["lstm", "gru-ln"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("cell", list(CELLS))
def test_forward_and_gradients_match_the_equations(backend, cell, name):
    case, (spec_class, options, step) = CASES[name], CELLS[cell]
    spec = spec_class(D, H, **options, **case["spec"])
    rng = np.random.default_rng(0)
    params = spec.init(seed=1, dtype="float64")
    params = {k: v + rng.normal(size=v.shape) / 4 if "_ln_" in k else v for k, v in params.items()}
    x, lengths = rng.normal(size=(T, N, D)), np.array(case.get("lengths", [T] * N))
    train = case.get("train", True)
    recurrent = spec.recurrent_dropout_masks(3, x) if train else None
    zoneout = spec.zoneout_masks(4, x) if train else None
    if zoneout is not None:
        assert all(set(np.unique(z)) == {0.0, 1.0} for z in zoneout)
    L = spec.num_layers * spec.num_directions
    state0 = {f"{name}0": rng.normal(size=(L, N, H)) for name in spec.cell.states}
    d_out = rng.normal(size=spec._out_shape(T, N))
    d_final = {k: rng.normal(size=v.shape) for k, v in state0.items()}

    ref_zoneout = zoneout
    if not train and spec.zoneout:
        ref_zoneout = tuple(np.full((L, T, 1, 1), 1 - spec.zoneout) for _ in spec.cell.states)
    direction = _reference(step, None if recurrent is None else torch.tensor(recurrent),
                           None if ref_zoneout is None else tuple(torch.tensor(z) for z in ref_zoneout))
    leaves, ref_out, ref_final = torch_stacked_reference(spec, params, x, state0, lengths, case.get("truncate"),
                                                         direction)
    loss = (ref_out * torch.tensor(d_out)).sum()
    loss = loss + sum((f * torch.tensor(d)).sum() for f, d in zip(ref_final, d_final.values()))
    loss.backward()

    cv = lambda a: backend.asarray(a, "float64")  # noqa: E731
    p = {k: cv(v) for k, v in params.items()}
    lens = backend.asarray(lengths, "int64") if "lengths" in case else None
    masks = {}
    if recurrent is not None:
        masks["recurrent_masks"] = cv(recurrent)
    if zoneout is not None:
        masks["zoneout_masks"] = tuple(cv(z) for z in zoneout)
    out, final, kept = backend.run(spec.forward, p, cv(x), spec.state_value([cv(s) for s in state0.values()]), lens,
                                   retain=case.get("retain", "full"), **masks)
    grads, dx, d0 = backend.run(spec.backward, p, kept, cv(d_out),
                                spec.state_value([cv(d) for d in d_final.values()]), truncate=case.get("truncate"))
    got = {"out": out, **{f"{k}_n": f for k, f in zip(state0, spec.state_parts(final))}, **grads, "x": dx,
           **dict(zip(state0, spec.state_parts(d0)))}
    expected = {"out": ref_out.detach().numpy(), **{f"{k}_n": f.detach().numpy() for k, f in zip(state0, ref_final)},
                **{k: t.grad.numpy() for k, t in leaves.items()}}
    assert set(got) == set(expected)
    for k, ref in expected.items():
        np.testing.assert_allclose(backend.to_numpy(got[k]), ref, rtol=1e-10, atol=1e-12, err_msg=k)


def test_the_masks_are_drawn_checked_and_refused_where_they_do_not_apply():
    spec, x = LSTM(D, H, num_layers=2, bidirectional=True, batch_first=True, zoneout=0.5, recurrent_dropout=0.25), \
        np.zeros((N, T, D))
    m, (u_h, u_c) = spec.recurrent_dropout_masks(0, x), spec.zoneout_masks(0, x)
    assert m.shape == (4, N, H) and set(np.unique(m)) == {0.0, 1 / 0.75}
    assert u_h.shape == u_c.shape == (4, T, N, H) and 0.3 < u_h.mean() < 0.7
    assert np.array_equal(spec.zoneout_masks(0, x)[0], u_h) and not np.array_equal(spec.zoneout_masks(1, x)[0], u_h)
    params = spec.init(like=x)
    with pytest.raises(ValueError, match=r"recurrent_masks has shape \(2, 3, 5\); expected \(4, 3, 5\)"):
        spec.forward(params, x, recurrent_masks=m[:2])
    with pytest.raises(TypeError, match=r"zoneout_masks must be a tuple of 2 array\(s\), one per state"):
        spec.forward(params, x, zoneout_masks=u_h)
    plain = LSTM(D, H)
    with pytest.raises(ValueError, match="recurrent_masks were given but this spec has recurrent_dropout=0.0"):
        plain.forward(plain.init(like=x), x[:, :1], recurrent_masks=m[:1, :T])
    with pytest.raises(ValueError, match=r"zoneout must be a number in \[0, 1\), got 1.0"):
        GRU(D, H, zoneout=1.0)
    with pytest.raises(ValueError, match=r"recurrent_dropout needs a cell that takes it .*GRUCell\(reset_after=False\) does not"):
        GRU(D, H, reset_after=False, recurrent_dropout=0.1)
    with pytest.raises(ValueError, match="no fast kernel applies zoneout or recurrent dropout"):
        RNN(D, H, zoneout=0.1).forward(RNN(D, H).init(like=x), x, fast_path=True)
    assert LSTM(D, H).zoneout_masks(0, x) is None and LSTM(D, H).recurrent_dropout_masks(0, x) is None


def test_jax_apply_draws_the_factors_from_its_key_and_differentiates_them():
    jax = pytest.importorskip("jax", reason="jax: not installed")
    import jax.numpy as jnp

    from portable_rnn.jax import apply, recurrent_dropout_masks, zoneout_masks

    spec = GRU(D, H, num_layers=2, batch_first=True, zoneout=0.3, recurrent_dropout=0.2)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(N, T, D)), dtype=jnp.float32)
    params, key = spec.init(seed=0, like=x), jax.random.key(7)
    masks = dict(recurrent_masks=recurrent_dropout_masks(spec, key, x), zoneout_masks=zoneout_masks(spec, key, x))

    def applied(p):
        return jnp.sum(apply(spec, p, x, dropout_key=key)[0] ** 2)

    loss, got = jax.jit(jax.value_and_grad(applied))(params)
    # the same factors on the host: the layer's forward and hand-written backward on NumPy
    host, x_host = {k: np.asarray(v) for k, v in params.items()}, np.asarray(x)
    host_masks = dict(recurrent_masks=np.asarray(masks["recurrent_masks"]),
                      zoneout_masks=tuple(np.asarray(z) for z in masks["zoneout_masks"]))
    out, _, tape = spec.forward(host, x_host, **host_masks)
    expected, _, _ = spec.backward(host, tape, 2 * out)
    np.testing.assert_allclose(loss, np.sum(out ** 2), rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(got[name], expected[name], rtol=2e-5, atol=1e-6, err_msg=name)
    evaluation = jax.jit(lambda p: apply(spec, p, x)[0])(params)  # no key: evaluation mode
    np.testing.assert_allclose(evaluation, spec.forward(host, x_host)[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.sum(np.asarray(evaluation) ** 2), loss)


def test_the_torch_modules_draw_the_factors_from_torch_in_training_and_blend_in_evaluation():
    from portable_rnn.torch import LayerNormLSTM

    torch.manual_seed(0)  # the module's parameters and x, whatever ran before in this process
    module = LayerNormLSTM(D, H, num_layers=2, dtype=torch.float64, zoneout=0.4, recurrent_dropout=0.3)
    spec = LSTM(D, H, num_layers=2, layer_norm=True, zoneout=0.4, recurrent_dropout=0.3)
    params = {k: v.detach().numpy() for k, v in module.named_parameters()}
    x = torch.randn(T, N, D, dtype=torch.float64)
    torch.manual_seed(5)
    out, (h_n, c_n) = module(x)
    (out.square().sum() + h_n.sum()).backward()
    torch.manual_seed(5)  # the same draws, in the module's order: the recurrent factor, then h's and c's zoneout
    m = torch.empty((2, N, H), dtype=torch.float64).bernoulli_(0.7).div_(0.7).numpy()
    u = tuple(torch.empty((2, T, N, H), dtype=torch.float64).bernoulli_(0.6).numpy() for _ in range(2))
    ref_out, (ref_h, ref_c), tape = spec.forward(params, x.numpy(), recurrent_masks=m, zoneout_masks=u)
    grads, _, _ = spec.backward(params, tape, 2 * ref_out, (np.ones_like(ref_h), None))
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=1e-12, atol=1e-14)
    for name, weight in module.named_parameters():
        np.testing.assert_allclose(weight.grad.numpy(), grads[name], rtol=1e-10, atol=1e-13, err_msg=name)
    module.eval()
    np.testing.assert_allclose(module(x)[0].detach().numpy(), spec.forward(params, x.numpy())[0], rtol=1e-12,
                               atol=1e-14)
    assert "recurrent_dropout=0.3, zoneout=0.4" in repr(module)


@pytest.mark.parametrize("train", [True, False], ids=["training", "evaluation"])
def test_the_gradients_equal_finite_differences(train):
    """Every parameter's and the input's gradient, with both regularisers, against central differences.

    One layer: the layers' plumbing of the factors is held to the torch reference above.
    """
    from portable_rnn.testing.gradcheck import numerical_gradient

    spec = LSTM(3, 4, zoneout=0.3, recurrent_dropout=0.4)
    rng = np.random.default_rng(2)
    x, params = rng.normal(size=(5, 2, 3)), spec.init(seed=0, dtype="float64")
    masks = dict(recurrent_masks=spec.recurrent_dropout_masks(1, x), zoneout_masks=spec.zoneout_masks(2, x)) \
        if train else {}
    g = rng.normal(size=spec._out_shape(5, 2))

    def loss(arrays):
        point = dict(arrays)
        return float(np.sum(spec.forward({k: point[k] for k in params}, point["x"], **masks)[0] * g))

    out, _, tape = spec.forward(params, x, **masks)
    grads, dx, _ = spec.backward(params, tape, g)
    numeric = numerical_gradient(loss, {**params, "x": x}, h=1e-5)
    for name, got in {**grads, "x": dx}.items():
        np.testing.assert_allclose(got, numeric[name], rtol=1e-6, atol=1e-8, err_msg=name)
