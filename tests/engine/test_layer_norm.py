"""``LSTM(layer_norm=True)`` and ``GRU(layer_norm=True)``: Ba, Kiros & Hinton (2016).

The reference is written here from the published equations, in eager torch
float64 with autograd and ``torch.nn.functional.layer_norm`` (eps 1e-5):

    LSTM  z = LN(x W_ih^T + b_ih; g_ih, b_ln_ih) + LN(h W_hh^T + b_hh; g_hh, b_ln_hh)   (i, f, g, o)
          c' = sigma(z_f) c + sigma(z_i) tanh(z_g),  h' = sigma(z_o) tanh(LN(c'; g_c, b_ln_c))
    GRU   y_x = LN(x W_ih^T + b_ih; ...),  y_h = LN(h W_hh^T + b_hh; ...)                  (r, z, n)
          r, z = sigma(y_x + y_h),  n = tanh(y_x_n + r y_h_n),  h' = (1 - z) n + z h

The layers' hand-written gradients must match to 1e-10 (float64), with
lengths, truncation, checkpointed tapes, two layers and both directions, on
every backend and under ``jax.jit``.
"""

from __future__ import annotations

import numpy as np
import pytest

from portable_rnn import check_cell, io
from portable_rnn.engine.layer_norm import LayerNormGRUCell, LayerNormLSTMCell
from portable_rnn.interop import to_keras, to_torch
from portable_rnn.layers import GRU, LSTM

from ..helpers import torch_stacked_reference

torch = pytest.importorskip("torch", reason="torch: not installed, needed as the reference")

T, N, D, H = 6, 3, 4, 5


def _ln(a, w, part):
    return torch.nn.functional.layer_norm(a, (a.shape[-1],), w[f"weight_ln_{part}"], w[f"bias_ln_{part}"], eps=1e-5)


def _biased(w, name):
    return w[name] if name in w else 0.0


def _lstm_step(x_t, state, w):
    h, c = state
    z = (_ln(x_t @ w["weight_ih"].T + _biased(w, "bias_ih"), w, "ih")
         + _ln(h @ w["weight_hh"].T + _biased(w, "bias_hh"), w, "hh"))
    zi, zf, zg, zo = z.split(H, dim=-1)
    c_new = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
    return torch.sigmoid(zo) * torch.tanh(_ln(c_new, w, "c")), c_new


def _gru_step(x_t, state, w):
    (h,) = state
    y_x = _ln(x_t @ w["weight_ih"].T + _biased(w, "bias_ih"), w, "ih")
    y_h = _ln(h @ w["weight_hh"].T + _biased(w, "bias_hh"), w, "hh")
    r, z = torch.sigmoid(y_x[..., : 2 * H] + y_h[..., : 2 * H]).split(H, dim=-1)
    n = torch.tanh(y_x[..., 2 * H :] + r * y_h[..., 2 * H :])
    return ((1 - z) * n + z * h,)


def _reference_direction(step):
    def direction(x, state, w, lengths, truncate):
        outs = []
        for t in range(x.shape[0]):
            if truncate and t and t % truncate == 0:
                state = tuple(s.detach() for s in state)
            new = step(x[t], state, w)
            valid = (t < lengths)[:, None].to(x.dtype)
            state = tuple(valid * n + (1 - valid) * s for n, s in zip(new, state))
            outs.append(valid * new[0])
        return torch.stack(outs), state
    return direction


SPECS = {"lstm": (LSTM, _lstm_step), "gru": (GRU, _gru_step)}
CASES = {
    "lengths": dict(spec=dict(), lengths=[6, 2, 4]),
    "truncate-checkpoint-nobias": dict(spec=dict(bias=False), truncate=2, retain="checkpoint"),
    "2l-bi-lengths": dict(spec=dict(num_layers=2, bidirectional=True), lengths=[3, 6, 1]),
}


@pytest.mark.jit(name=["2l-bi-lengths"], mode=["gru"])  # the LSTM's under jit: test_recurrent_regularisers
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("mode", list(SPECS))
def test_forward_and_gradients_match_the_equations(backend, mode, name):
    case, (spec_class, step) = CASES[name], SPECS[mode]
    spec = spec_class(D, H, layer_norm=True, **case["spec"])
    rng = np.random.default_rng(0)
    params = spec.init(seed=1, dtype="float64")
    params = {k: v + rng.normal(size=v.shape) / 4 if "_ln_" in k else v for k, v in params.items()}  # not 1 and 0
    L = spec.num_layers * spec.num_directions
    state0 = {"h0": rng.normal(size=(L, N, H))}
    if mode == "lstm":
        state0["c0"] = rng.normal(size=(L, N, H))
    x, lengths = rng.normal(size=(T, N, D)), np.array(case.get("lengths", [T] * N))
    d_out = rng.normal(size=spec._out_shape(T, N))
    d_final = {k: rng.normal(size=v.shape) for k, v in state0.items()}

    leaves, ref_out, ref_final = torch_stacked_reference(
        spec, params, x, state0, lengths, case.get("truncate"), _reference_direction(step))
    loss = (ref_out * torch.tensor(d_out)).sum()
    loss = loss + sum((f * torch.tensor(d)).sum() for f, d in zip(ref_final, d_final.values()))
    loss.backward()

    cv = lambda a: backend.asarray(a, "float64")  # noqa: E731
    p = {k: cv(v) for k, v in params.items()}
    lens = backend.asarray(lengths, "int64") if "lengths" in case else None
    as_state = lambda parts: tuple(parts) if mode == "lstm" else parts[0]  # noqa: E731
    out, final, kept = backend.run(spec.forward, p, cv(x), as_state([cv(s) for s in state0.values()]), lens,
                                   retain=case.get("retain", "full"))
    grads, dx, d0 = backend.run(spec.backward, p, kept, cv(d_out), as_state([cv(d) for d in d_final.values()]),
                                case.get("truncate"))
    final, d0 = spec.state_parts(final), spec.state_parts(d0)
    got = {"out": out, **{f"{k}_n": f for k, f in zip(state0, final)}, **grads, "x": dx, **dict(zip(state0, d0))}
    expected = {"out": ref_out.detach().numpy(), **{f"{k}_n": f.detach().numpy() for k, f in zip(state0, ref_final)},
                **{k: t.grad.numpy() for k, t in leaves.items()}}
    assert set(got) == set(expected)
    for k, ref in expected.items():
        np.testing.assert_allclose(backend.to_numpy(got[k]), ref, rtol=1e-10, atol=1e-12, err_msg=k)


def test_the_layer_norm_cells_pass_check_cell_and_run_the_portable_engine():
    for cell in (LayerNormLSTMCell(), LayerNormGRUCell()):
        errors = check_cell(cell, hidden_size=4)
        assert {"gain_ih", "bias_ih", "gain_hh", "bias_hh"} <= set(errors["finite differences"]), cell
        assert all(e < 1e-7 for by_input in errors.values() for e in by_input.values()), cell
    spec, x = GRU(D, H, layer_norm=True), np.zeros((T, N, D))
    with pytest.raises(ValueError, match=r"has parameters of its own \(.*gain_ih.*\); no fast kernel"):
        spec.forward(spec.init(like=x), x, fast_path=True)


def test_layer_norm_options_are_checked():
    with pytest.raises(ValueError, match="layer_norm must be True or False, got 1"):
        LSTM(D, H, layer_norm=1)
    with pytest.raises(ValueError, match="layer_norm=True takes neither proj_size nor peephole"):
        LSTM(D, H, layer_norm=True, proj_size=2)
    with pytest.raises(ValueError, match="layer_norm=True takes neither proj_size nor peephole"):
        LSTM(D, H, layer_norm=True, peephole=True)
    with pytest.raises(ValueError, match="layer_norm=True needs reset_after=True"):
        GRU(D, H, layer_norm=True, reset_after=False)


def test_normalisation_parameters_start_at_one_and_zero_are_saved_and_refused_by_the_exporters(tmp_path):
    spec = LSTM(D, H, num_layers=2, layer_norm=True)
    params = spec.init(seed=0)
    stems = ["weight_ln_ih", "bias_ln_ih", "weight_ln_hh", "bias_ln_hh", "weight_ln_c", "bias_ln_c"]
    assert [n for n in spec.param_shapes() if "_ln_" in n] == [f"{s}_l{k}" for k in range(2) for s in stems]
    for name in (n for n in params if "_ln_" in n):
        assert np.all(params[name] == (1.0 if name.startswith("weight") else 0.0)), name
    plain = LSTM(D, H, num_layers=2).init(seed=0)  # the other parameters keep their numbers
    assert all(np.array_equal(params[k], plain[k]) for k in plain)
    path = tmp_path / "layer_norm.npz"
    io.save(path, spec, params)
    spec_back, params_back = io.load(path)
    assert spec_back == spec and all(np.array_equal(params_back[k], params[k]) for k in params)
    for export, target in ((to_torch, "torch.nn"), (to_keras, "Keras")):
        with pytest.raises(ValueError, match=f"{target} has no layer-normalised LSTM"):
            export(spec, params)


@pytest.mark.parametrize("mode", list(SPECS))
def test_the_torch_modules_are_the_layers_with_torch_autograd(mode):
    """``portable_rnn.torch.LayerNormLSTM`` / ``LayerNormGRU``: the layer's numbers and gradients."""
    from portable_rnn.torch import LayerNormGRU, LayerNormLSTM

    torch.manual_seed(0)
    module = {"lstm": LayerNormLSTM, "gru": LayerNormGRU}[mode](D, H, num_layers=2, batch_first=True,
                                                                 dtype=torch.float64)
    spec = SPECS[mode][0](D, H, num_layers=2, batch_first=True, layer_norm=True)
    assert list(dict(module.named_parameters())) == list(spec.param_shapes())
    assert torch.all(module.weight_ln_hh_l1 == 1) and torch.all(module.bias_ln_ih_l0 == 0)
    with torch.no_grad():  # gains and biases away from 1 and 0
        for name, weight in module.named_parameters():
            if "_ln_" in name:
                weight.add_(torch.randn_like(weight) / 4)
    x = torch.randn(N, T, D, dtype=torch.float64)
    out, final = module(x)
    finals = final if isinstance(final, tuple) else (final,)
    (out.square().sum() + sum(f.sum() for f in finals)).backward()
    params = {k: v.detach().numpy() for k, v in module.named_parameters()}
    ref_out, ref_final, tape = spec.forward(params, x.numpy())
    ones = spec.state_value(tuple(np.ones_like(f) for f in spec.state_parts(ref_final)))
    grads, _, _ = spec.backward(params, tape, 2 * ref_out, ones)
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=1e-12, atol=1e-14)
    for name, weight in module.named_parameters():
        np.testing.assert_allclose(weight.grad.numpy(), grads[name], rtol=1e-10, atol=1e-13, err_msg=name)
