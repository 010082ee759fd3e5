"""LSTM projections (``proj_size``): layers on every backend against ``torch.nn.LSTM(proj_size=...)``.

``h_t = W_hr (o * tanh(c_t))``. The torch modules' parity is in
``test_torch_modules.py`` and ``portable_rnn.jax.apply``'s in
``test_jax_apply.py``; here: the core layer (forward, hand-written backward,
lengths, default and given state) on every backend, the fast path declining,
the seeded init, the checks, and the torch interop round trip.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from portable_rnn import LSTM, interop
from portable_rnn.engine import kernels
from portable_rnn.engine.cells import LSTMCell, cell_for
from portable_rnn.init import projection_name

torch = pytest.importorskip("torch", reason="torch: not installed, needed as the reference")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402
from ..helpers import NOT_EAGER_JAX, float64_close as _close  # noqa: E402

D, H, P = 3, 5, 2
# name: (spec keywords, T, N, lengths or None, initial state given)
CASES = {
    "1l": (dict(), 5, 3, None, True),
    "2l-bi-bf-lengths": (dict(num_layers=2, bidirectional=True, batch_first=True), 5, 3, [5, 2, 3], True),
    "2l-nobias-default-state": (dict(num_layers=2, bias=False), 4, 2, None, False),
    "bi-lengths-default-state": (dict(bidirectional=True), 5, 3, [4, 5, 1], False),
}


@functools.lru_cache(maxsize=None)
def _case(name):
    """Spec, host inputs and torch.nn's float64 outputs and gradients, computed once per case."""
    kw, T, N, lengths, given = CASES[name]
    spec = LSTM(D, H, proj_size=P, **kw)
    rng = np.random.default_rng(len(name))
    params = {k: 2.0 * v for k, v in spec.init(seed=1, dtype="float64").items()}  # livelier numbers
    x = rng.normal(size=(N, T, D) if spec.batch_first else (T, N, D))
    LD, F = spec.num_layers * spec.num_directions, spec.num_directions * P
    state0 = (rng.normal(size=(LD, N, P)), rng.normal(size=(LD, N, H))) if given else None
    g_out = rng.normal(size=(N, T, F) if spec.batch_first else (T, N, F))
    g_state = (rng.normal(size=(LD, N, P)), rng.normal(size=(LD, N, H)))
    lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
    return spec, params, x, state0, lengths, g_out, g_state, _torch_reference(spec, params, x, state0, lengths,
                                                                              g_out, g_state)


def _torch_reference(spec, params, x, state0, lengths, g_out, g_state):
    module = torch.nn.LSTM(D, H, spec.num_layers, bias=spec.bias, batch_first=spec.batch_first,
                           bidirectional=spec.bidirectional, proj_size=P, dtype=torch.float64)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=True)
    xt = torch.tensor(x, requires_grad=True)
    s0 = None if state0 is None else tuple(torch.tensor(s, requires_grad=True) for s in state0)
    inp = xt if lengths is None else pack_padded_sequence(xt, torch.from_numpy(lengths),
                                                          batch_first=spec.batch_first, enforce_sorted=False)
    out, (h, c) = module(inp, s0)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=spec.batch_first, total_length=x.shape[int(spec.batch_first)])
    loss = (out * torch.from_numpy(g_out)).sum() + (h * torch.from_numpy(g_state[0])).sum() \
        + (c * torch.from_numpy(g_state[1])).sum()
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in module.named_parameters()}
    d0 = None if s0 is None else tuple(s.grad.numpy() for s in s0)
    return out.detach().numpy(), (h.detach().numpy(), c.detach().numpy()), grads, xt.grad.numpy(), d0


@NOT_EAGER_JAX
@pytest.mark.jit(name=["bi-lengths-default-state"])
@pytest.mark.parametrize("name", list(CASES))
def test_layer_matches_torch_lstm_with_proj_size(backend, name):
    spec, params, x, state0, lengths, g_out, g_state, ref = _case(name)
    ref_out, ref_final, ref_grads, ref_dx, ref_d0 = ref
    cv = lambda a: backend.asarray(a, "float64")  # noqa: E731
    p = {k: cv(v) for k, v in params.items()}
    state = None if state0 is None else tuple(cv(s) for s in state0)
    lens = None if lengths is None else backend.asarray(lengths, "int64")
    out, final, tape = backend.run(spec.forward, p, cv(x), state, lens)
    grads, dx, d0 = backend.run(spec.backward, p, tape, cv(g_out), tuple(cv(g) for g in g_state))
    _close(backend, out, ref_out, "out")
    for got, want, what in zip(final, ref_final, ("h_n", "c_n")):
        _close(backend, got, want, what)
    assert set(grads) == set(ref_grads) and any(k.startswith("weight_hr") for k in grads)
    for key, want in ref_grads.items():
        _close(backend, grads[key], want, f"grad {key}")
    _close(backend, dx, ref_dx, "dx")
    if ref_d0 is not None:
        for got, want, what in zip(d0, ref_d0, ("dh_0", "dc_0")):
            _close(backend, got, want, what)


@pytest.mark.backends("numpy", "torch")
def test_the_fast_path_declines_projections_and_the_portable_path_runs_them(backend):
    spec = LSTM(D, H, proj_size=P)
    x = backend.asarray(np.random.default_rng(0).normal(size=(4, 2, D)), "float64")
    params = spec.init(seed=0, like=x)
    before = dict(kernels.calls)
    out, _, tape = spec.forward(params, x)
    spec.backward(params, tape, out)
    assert dict(kernels.calls) == before
    assert tuple(out.shape) == (4, 2, P)
    plain = LSTM(D, H)
    plain.forward(plain.init(seed=0, like=x), x)
    assert sum(kernels.calls.values()) == sum(before.values()) + 1  # the counter does count


def test_init_draws_torch_shapes_in_state_dict_order_and_keeps_proj_size_0_unchanged():
    spec = LSTM(D, H, 2, bidirectional=True, proj_size=P)
    module = torch.nn.LSTM(D, H, 2, bidirectional=True, proj_size=P)
    assert spec.param_shapes() == {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert list(spec.param_shapes()) == list(module.state_dict())
    params = spec.init(seed=3, dtype="float64")
    bound = 1 / np.sqrt(H)  # torch's U(-1/sqrt(H), 1/sqrt(H)), weight_hr too
    assert all(np.abs(v).max() <= bound for v in params.values())
    ortho = spec.init(seed=3, dtype="float64", init="orthogonal")
    w_hr = ortho[projection_name(1, 1)]
    np.testing.assert_allclose(w_hr @ w_hr.T, np.eye(P), atol=1e-12)  # (P, H): orthonormal rows
    # the seeded draws without a projection are those of LSTM without the field
    a, b = LSTM(D, H, 2).init(seed=3), LSTM(D, H, 2, proj_size=0).init(seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a) and list(a) == list(b)


def test_state_dicts_round_trip_through_interop_bit_for_bit():
    torch.manual_seed(0)
    module = torch.nn.LSTM(D, H, 2, bidirectional=True, batch_first=True, proj_size=P, dtype=torch.float64)
    spec, params = interop.from_torch(module)
    assert spec == LSTM(D, H, 2, bidirectional=True, batch_first=True, proj_size=P)
    back = interop.to_torch(spec, params)
    assert back.proj_size == P and list(back.state_dict()) == list(module.state_dict())
    for key, value in module.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)
    x = torch.randn(2, 4, D, dtype=torch.float64)
    out, (h, c), _ = spec.forward(params, x.numpy())
    ref, (h_ref, c_ref) = module(x)
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h, h_ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert h.shape == (4, 2, P) and c.shape == (4, 2, H)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(proj_size=H), ValueError, "proj_size must be smaller than hidden_size = 5, got 5"),
    (dict(proj_size=-1), ValueError, "proj_size must be an int >= 0"),
    (dict(proj_size=True), ValueError, "proj_size must be an int >= 0"),
    (dict(proj_size=1.0), ValueError, "proj_size must be an int >= 0"),
])
def test_bad_proj_size(kwargs, error, match):
    with pytest.raises(error, match=match):
        LSTM(D, H, **kwargs)


def test_only_lstm_has_a_projection_and_states_are_checked():
    from portable_rnn import GRU, RNN

    for cls in (GRU, RNN):
        with pytest.raises(TypeError, match="proj_size"):
            cls(D, H, proj_size=P)
    with pytest.raises(ValueError, match="proj_size must be an int >= 0"):
        LSTMCell(-2)
    assert cell_for("lstm", proj_size=P) == LSTMCell(P) and cell_for("lstm") == LSTMCell()
    spec = LSTM(D, H, proj_size=P)
    x = np.zeros((4, 2, D))
    params = spec.init(seed=0, like=x)
    wrong_h = (np.zeros((1, 2, H)), np.zeros((1, 2, H)))
    with pytest.raises(ValueError, match=r"state\[0\] \(h\) has shape \(1, 2, 5\); expected \(1, 2, 2\) "
                                         r"\(num_layers \* dirs, N, proj_size\)"):
        spec.forward(params, x, wrong_h)
