"""``GRU(reset_after=False)``: the reset gate before the recurrent product (Cho et al. 2014).

The reference is written here from the published equations, in eager torch
float64 with autograd (torch.nn has no such GRU):

    r = sigma(x W_ir^T + b_ir + h W_hr^T + b_hr),  z = sigma(x W_iz^T + b_iz + h W_hz^T + b_hz),
    n = tanh(x W_in^T + b_in + (r * h) W_hn^T + b_hn),  h' = (1 - z) n + z h.

Padded steps keep the state and output zeros; truncated BPTT detaches the
state entering each window. The layer's hand-written gradients must match to
1e-10 (float64), with lengths, truncation, checkpointed tapes, two layers and
both directions, on every backend.
"""

from __future__ import annotations

import numpy as np
import pytest

from portable_rnn import check_cell
from portable_rnn.engine.cells import GRUCell
from portable_rnn.layers import GRU

from ..helpers import torch_stacked_reference

torch = pytest.importorskip("torch", reason="torch: not installed, needed as the reference")

T, N, D, H = 6, 3, 4, 5


def _reference_direction(x, state, w, lengths, truncate):
    """Outputs (T, N, H) and final state of one direction over time-major ``x`` (already reversed if needed)."""
    (h,), W_ih, W_hh, b_ih, b_hh = state, w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"]
    outs = []
    for t in range(x.shape[0]):
        if truncate and t and t % truncate == 0:
            h = h.detach()
        xw = x[t] @ W_ih.T + b_ih
        hw_rz = h @ W_hh[: 2 * H].T + b_hh[: 2 * H]
        r = torch.sigmoid(xw[:, :H] + hw_rz[:, :H])
        z = torch.sigmoid(xw[:, H : 2 * H] + hw_rz[:, H:])
        n = torch.tanh(xw[:, 2 * H :] + (r * h) @ W_hh[2 * H :].T + b_hh[2 * H :])
        new = (1 - z) * n + z * h
        valid = (t < lengths)[:, None].to(x.dtype)
        h = valid * new + (1 - valid) * h
        outs.append(valid * new)
    return torch.stack(outs), (h,)


CASES = {
    "lengths": dict(spec=dict(), lengths=[6, 2, 4]),
    "truncate-checkpoint": dict(spec=dict(), truncate=2, retain="checkpoint"),
    "2l-bi-lengths": dict(spec=dict(num_layers=2, bidirectional=True), lengths=[3, 6, 1]),
}


@pytest.mark.jit(name=["2l-bi-lengths"])
@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients_match_the_equations(backend, name):
    case = CASES[name]
    spec = GRU(D, H, reset_after=False, **case["spec"])
    rng = np.random.default_rng(0)
    params = spec.init(seed=1, dtype="float64")
    x, h0 = rng.normal(size=(T, N, D)), rng.normal(size=(spec.num_layers * spec.num_directions, N, H))
    lengths = np.array(case.get("lengths", [T] * N))
    d_out, d_h = rng.normal(size=spec._out_shape(T, N)), rng.normal(size=h0.shape)

    leaves, ref_out, (ref_h,) = torch_stacked_reference(spec, params, x, {"h0": h0}, lengths, case.get("truncate"),
                                                        _reference_direction)
    ((ref_out * torch.tensor(d_out)).sum() + (ref_h * torch.tensor(d_h)).sum()).backward()

    cv = lambda a: backend.asarray(a, "float64")  # noqa: E731
    p = {k: cv(v) for k, v in params.items()}
    lens = backend.asarray(lengths, "int64") if "lengths" in case else None
    retain = case.get("retain", "full")
    out, h_n, kept = backend.run(spec.forward, p, cv(x), cv(h0), lens, retain=retain)
    grads, dx, dh0 = backend.run(spec.backward, p, kept, cv(d_out), cv(d_h), case.get("truncate"))
    got = {"out": out, "h_n": h_n, **grads, "x": dx, "h0": dh0}
    expected = {"out": ref_out.detach().numpy(), "h_n": ref_h.detach().numpy(),
                **{k: t.grad.numpy() for k, t in leaves.items()}}
    for k, ref in expected.items():
        np.testing.assert_allclose(backend.to_numpy(got[k]), ref, rtol=1e-10, atol=1e-12, err_msg=k)


def test_the_reset_before_cell_passes_check_cell_and_has_no_fast_kernel():
    assert all(e < 1e-7 for errors in check_cell(GRUCell(reset_after=False)).values() for e in errors.values())
    spec, x = GRU(D, H, reset_after=False), np.zeros((T, N, D))
    with pytest.raises(ValueError, match="applies W_hh in its own step backward; no fast kernel does"):
        spec.forward(spec.init(like=x), x, fast_path=True)
    with pytest.raises(ValueError, match="reset_after must be True or False, got 'no'"):
        GRU(D, H, reset_after="no")
    with pytest.raises(ValueError, match="reset_after must be True or False, got 1"):
        GRUCell(reset_after=1)
