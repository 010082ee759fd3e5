"""``LSTM(peephole=True)``: gates that read the cell state (Gers & Schmidhuber 2000).

The reference is written here from the published equations, in eager torch
float64 with autograd (torch.nn has no such LSTM):

    i = sigma(z_i + w_ci c),  f = sigma(z_f + w_cf c),  g = tanh(z_g),
    c' = f c + i g,  o = sigma(z_o + w_co c'),  h' = o tanh(c')  (then h' W_hr^T with proj_size),

with z = x W_ih^T + b_ih + h W_hh^T + b_hh in the gate order i, f, g, o. The
layer's hand-written gradients must match to 1e-10 (float64), with lengths,
truncation, checkpointed tapes, a projection, two layers and both directions,
on every backend.
"""

from __future__ import annotations

import numpy as np
import pytest

from portable_rnn import check_cell, io
from portable_rnn.engine.cells import LSTMCell
from portable_rnn.interop import to_keras, to_torch
from portable_rnn.layers import LSTM

from ..helpers import torch_stacked_reference

torch = pytest.importorskip("torch", reason="torch: not installed, needed as the reference")

T, N, D, H = 6, 3, 4, 5


def _reference_direction(x, state, w, lengths, truncate):
    """Outputs and final ``(h, c)`` of one direction over time-major ``x`` (already reversed if needed)."""
    h, c = state
    outs = []
    for t in range(x.shape[0]):
        if truncate and t and t % truncate == 0:
            h, c = h.detach(), c.detach()
        z = x[t] @ w["weight_ih"].T + w["bias_ih"] + h @ w["weight_hh"].T + w["bias_hh"]
        zi, zf, zg, zo = z.split(H, dim=-1)
        i, f = torch.sigmoid(zi + w["weight_ci"] * c), torch.sigmoid(zf + w["weight_cf"] * c)
        c_new = f * c + i * torch.tanh(zg)
        h_new = torch.sigmoid(zo + w["weight_co"] * c_new) * torch.tanh(c_new)
        if "weight_hr" in w:
            h_new = h_new @ w["weight_hr"].T
        valid = (t < lengths)[:, None].to(x.dtype)
        h, c = valid * h_new + (1 - valid) * h, valid * c_new + (1 - valid) * c
        outs.append(valid * h_new)
    return torch.stack(outs), (h, c)


CASES = {
    "lengths": dict(spec=dict(), lengths=[6, 2, 4]),
    "truncate-checkpoint": dict(spec=dict(), truncate=2, retain="checkpoint"),
    "proj-2l-bi-lengths": dict(spec=dict(num_layers=2, bidirectional=True, proj_size=3), lengths=[3, 6, 1]),
}


@pytest.mark.jit(name=["proj-2l-bi-lengths"])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients_match_the_equations(backend, name):
    case = CASES[name]
    spec = LSTM(D, H, peephole=True, **case["spec"])
    rng = np.random.default_rng(0)
    params = spec.init(seed=1, dtype="float64")
    L, R = spec.num_layers * spec.num_directions, spec.output_size
    h0, c0 = rng.normal(size=(L, N, R)), rng.normal(size=(L, N, H))
    x, lengths = rng.normal(size=(T, N, D)), np.array(case.get("lengths", [T] * N))
    d_out, d_h, d_c = rng.normal(size=spec._out_shape(T, N)), rng.normal(size=h0.shape), rng.normal(size=c0.shape)

    leaves, ref_out, (ref_h, ref_c) = torch_stacked_reference(
        spec, params, x, {"h0": h0, "c0": c0}, lengths, case.get("truncate"), _reference_direction)
    loss = (ref_out * torch.tensor(d_out)).sum() + (ref_h * torch.tensor(d_h)).sum() + (ref_c * torch.tensor(d_c)).sum()
    loss.backward()

    cv = lambda a: backend.asarray(a, "float64")  # noqa: E731
    p = {k: cv(v) for k, v in params.items()}
    lens = backend.asarray(lengths, "int64") if "lengths" in case else None
    out, (h_n, c_n), kept = backend.run(spec.forward, p, cv(x), (cv(h0), cv(c0)), lens,
                                        retain=case.get("retain", "full"))
    grads, dx, (dh0, dc0) = backend.run(spec.backward, p, kept, cv(d_out), (cv(d_h), cv(d_c)), case.get("truncate"))
    got = {"out": out, "h_n": h_n, "c_n": c_n, **grads, "x": dx, "h0": dh0, "c0": dc0}
    expected = {"out": ref_out.detach().numpy(), "h_n": ref_h.detach().numpy(), "c_n": ref_c.detach().numpy(),
                **{k: t.grad.numpy() for k, t in leaves.items()}}
    assert set(got) == set(expected)
    for k, ref in expected.items():
        np.testing.assert_allclose(backend.to_numpy(got[k]), ref, rtol=1e-10, atol=1e-12, err_msg=k)


def test_the_peephole_cell_passes_check_cell_and_runs_the_portable_engine():
    for cell, autodiff in ((LSTMCell(peephole=True), True), (LSTMCell(proj_size=2, peephole=True), False)):
        errors = check_cell(cell, hidden_size=4, autodiff=autodiff)  # finite differences suffice the second time
        assert {"w_ci", "w_cf", "w_co"} <= set(errors["finite differences"])
        assert all(e < 1e-7 for by_input in errors.values() for e in by_input.values()), cell
    spec, x = LSTM(D, H, peephole=True), np.zeros((T, N, D))
    with pytest.raises(ValueError, match=r"has parameters of its own \(w_ci, w_cf, w_co\); no fast kernel"):
        spec.forward(spec.init(like=x), x, fast_path=True)
    with pytest.raises(ValueError, match="peephole must be True or False, got 'yes'"):
        LSTM(D, H, peephole="yes")


def test_peephole_parameters_are_named_drawn_saved_and_refused_by_the_exporters(tmp_path):
    spec = LSTM(D, H, num_layers=2, peephole=True)
    params = spec.init(seed=0)
    names = [name for name in spec.param_shapes() if name.startswith("weight_c")]
    assert names == [f"weight_c{g}_l{k}" for k in range(2) for g in "ifo"]
    assert all(params[name].shape == (H,) and np.abs(params[name]).max() <= 1 / np.sqrt(H) for name in names)
    plain = LSTM(D, H, num_layers=2).init(seed=0)  # the other parameters keep their numbers
    assert all(np.array_equal(params[k], plain[k]) for k in plain)
    path = tmp_path / "peephole.npz"
    io.save(path, spec, params)
    spec_back, params_back = io.load(path)
    assert spec_back == spec and all(np.array_equal(params_back[k], params[k]) for k in params)
    for export, target in ((to_torch, "torch.nn"), (to_keras, "Keras")):
        with pytest.raises(ValueError, match=f"{target} has no LSTM with peepholes"):
            export(spec, params)


def test_the_torch_module_is_the_layer_with_torch_autograd():
    """``portable_rnn.torch.PeepholeLSTM``: the layer's numbers, and its gradients through ``.backward()``."""
    from portable_rnn.torch import PeepholeLSTM

    torch.manual_seed(0)
    module = PeepholeLSTM(D, H, num_layers=2, batch_first=True, dtype=torch.float64)
    spec = LSTM(D, H, num_layers=2, batch_first=True, peephole=True)
    assert list(dict(module.named_parameters())) == list(spec.param_shapes())
    x = torch.randn(N, T, D, dtype=torch.float64)
    out, (h_n, c_n) = module(x)
    (out.square().sum() + h_n.sum() + c_n.sum()).backward()
    params = {k: v.detach().numpy() for k, v in module.named_parameters()}
    ref_out, (ref_h, ref_c), tape = spec.forward(params, x.numpy())
    grads, _, _ = spec.backward(params, tape, 2 * ref_out, (np.ones_like(ref_h), np.ones_like(ref_c)))
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=1e-12, atol=1e-14)
    for name, weight in module.named_parameters():
        np.testing.assert_allclose(weight.grad.numpy(), grads[name], rtol=1e-10, atol=1e-13, err_msg=name)
