"""Dropout between stacked layers, as ``torch.nn``: on every layer's output but the last, in training mode.

The reference for training mode is built from single-layer ``torch.nn``
modules stacked by hand, with the same dropout factors multiplied between
them, in float64: outputs, final states and every gradient to 1e-10. (The
torch modules' same-seed parity with ``torch.nn`` and eval mode are in
``test_torch_modules.py``; ``portable_rnn.jax.apply``'s key in
``test_jax_apply.py``.)
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest

from portable_rnn import GRU, LSTM, RNN
from portable_rnn.engine import kernels

torch = pytest.importorskip("torch", reason="torch: not installed, needed as the reference")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402
from ..helpers import NOT_EAGER_JAX, float64_close as _close  # noqa: E402

D, H = 3, 4
# name: (spec, T, N, lengths or None, initial state given)
CASES = {
    "gru-3l-bi-bf-lengths": (GRU(D, H, 3, bidirectional=True, batch_first=True, dropout=0.5), 5, 3, [5, 2, 4], True),
    "lstm-proj-2l-default-state": (LSTM(D, H, 2, proj_size=2, dropout=0.3), 5, 3, None, False),
    "rnn-relu-2l-bi": (RNN(D, H, 2, bidirectional=True, nonlinearity="relu", dropout=0.5), 5, 3, None, True),
}
_NAME = re.compile(r"^(?P<stem>.+)_l(?P<layer>\d+)(?P<reverse>_reverse)?$")


def _one_layer(spec, k, params):
    """Layer ``k`` of ``spec`` as a single-layer float64 ``torch.nn`` module holding its parameters."""
    kw = dict(bias=spec.bias, batch_first=spec.batch_first, bidirectional=spec.bidirectional, dtype=torch.float64)
    if isinstance(spec, RNN):
        kw["nonlinearity"] = spec.nonlinearity
    if getattr(spec, "proj_size", 0):
        kw["proj_size"] = spec.proj_size
    d_in = spec.input_size if k == 0 else spec.num_directions * spec.output_size
    module = getattr(torch.nn, type(spec).__name__)(d_in, spec.hidden_size, 1, **kw)
    mine = {}
    for name, value in params.items():
        m = _NAME.match(name)
        if int(m["layer"]) == k:
            mine[f"{m['stem']}_l0{m['reverse'] or ''}"] = torch.from_numpy(value)
    module.load_state_dict(mine, strict=True)
    return module


def _stacked_reference(spec, params, x, state0, lengths, masks, g_out, g_state):
    """torch autograd through the layers stacked by hand: out_k * masks[k] feeds layer k + 1."""
    L, dirs = spec.num_layers, spec.num_directions
    xt = torch.tensor(x, requires_grad=True)
    s0 = tuple(torch.tensor(s, requires_grad=True) for s in state0)
    modules = [_one_layer(spec, k, params) for k in range(L)]
    T = x.shape[int(spec.batch_first)]
    inp, finals = xt, []
    for k, module in enumerate(modules):
        if k > 0:
            inp = inp * torch.from_numpy(masks[k - 1])
        hx = tuple(s[k * dirs : (k + 1) * dirs] for s in s0)
        packed = inp if lengths is None else pack_padded_sequence(inp, torch.from_numpy(lengths),
                                                                  batch_first=spec.batch_first, enforce_sorted=False)
        out, state = module(packed, hx if len(hx) > 1 else hx[0])
        if lengths is not None:
            out, _ = pad_packed_sequence(out, batch_first=spec.batch_first, total_length=T)
        finals.append(state if isinstance(state, tuple) else (state,))
        inp = out
    final = tuple(torch.cat([f[j] for f in finals], dim=0) for j in range(len(s0)))
    loss = (inp * torch.from_numpy(g_out)).sum() + sum((s * torch.from_numpy(g)).sum() for s, g in zip(final, g_state))
    loss.backward()
    grads = {}
    for name in params:
        m = _NAME.match(name)
        grads[name] = modules[int(m["layer"])].get_parameter(f"{m['stem']}_l0{m['reverse'] or ''}").grad.numpy()
    return (inp.detach().numpy(), tuple(s.detach().numpy() for s in final), grads, xt.grad.numpy(),
            tuple(s.grad.numpy() for s in s0))


@functools.lru_cache(maxsize=None)
def _case(name):
    """Spec, host inputs, the seed-0 factors and the hand-stacked reference, computed once per case."""
    spec, T, N, lengths, given = CASES[name]
    rng = np.random.default_rng(len(name))
    params = {k: 2.0 * v for k, v in spec.init(seed=2, dtype="float64").items()}
    x = rng.normal(size=(N, T, D) if spec.batch_first else (T, N, D))
    LD = spec.num_layers * spec.num_directions
    sizes = (spec.output_size, spec.hidden_size)[: spec.cell.n_states]
    state0 = tuple(rng.normal(size=(LD, N, s)) if given else np.zeros((LD, N, s)) for s in sizes)
    g_out = rng.normal(size=spec.forward(params, x)[0].shape)
    g_state = tuple(rng.normal(size=(LD, N, s)) for s in sizes)
    lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
    masks = spec.dropout_masks(0, x)
    ref = _stacked_reference(spec, params, x, state0, lengths, masks, g_out, g_state)
    return spec, params, x, (state0 if given else None), lengths, masks, g_out, g_state, ref


@NOT_EAGER_JAX
@pytest.mark.jit(name=["lstm-proj-2l-default-state"])
@pytest.mark.parametrize("name", list(CASES))
def test_training_mode_matches_torch_layers_stacked_by_hand_with_the_same_factors(backend, name):
    spec, params, x, state0, lengths, masks, g_out, g_state, ref = _case(name)
    ref_out, ref_final, ref_grads, ref_dx, ref_d0 = ref
    cv = lambda a: backend.asarray(a, "float64")  # noqa: E731
    xb = cv(x)
    drawn = spec.dropout_masks(0, xb)  # the same seed gives the same factors on every backend
    assert len(drawn) == spec.num_layers - 1
    for got, want in zip(drawn, masks):
        np.testing.assert_array_equal(backend.to_numpy(got), want)
    p = {k: cv(v) for k, v in params.items()}
    state = None if state0 is None else _public(tuple(cv(s) for s in state0))
    lens = None if lengths is None else backend.asarray(lengths, "int64")

    def forward(p, x, state, lengths, masks):
        return spec.forward(p, x, state, lengths, dropout_masks=masks)

    out, final, tape = backend.run(forward, p, xb, state, lens, drawn)
    d_state = _public(tuple(cv(g) for g in g_state))
    grads, dx, d0 = backend.run(spec.backward, p, tape, cv(g_out), d_state)
    _close(backend, out, ref_out, "out")
    for j, (got, want) in enumerate(zip(_parts(final), ref_final)):
        _close(backend, got, want, f"final state[{j}]")
    for key, want in ref_grads.items():
        _close(backend, grads[key], want, f"grad {key}")
    _close(backend, dx, ref_dx, "dx")
    if state0 is not None:
        for j, (got, want) in enumerate(zip(_parts(d0), ref_d0)):
            _close(backend, got, want, f"dstate0[{j}]")


def _parts(state):
    """A state as a tuple of arrays: (h, c) for LSTM, (h,) otherwise."""
    return state if isinstance(state, tuple) else (state,)


def _public(parts):
    """The state argument of a layer: the pair (h, c), or one array."""
    return parts if len(parts) > 1 else parts[0]


def test_without_factors_the_layer_is_in_eval_mode_and_factors_change_it():
    spec, params, x, *_ = _case("rnn-relu-2l-bi")
    plain = RNN(D, H, 2, bidirectional=True, nonlinearity="relu")
    out, _, _ = spec.forward(params, x)
    np.testing.assert_array_equal(out, plain.forward(params, x)[0])  # dropout=0.5, no factors: none
    for empty in (None, ()):
        np.testing.assert_array_equal(spec.forward(params, x, dropout_masks=empty)[0], out)
    dropped, _, tape = spec.forward(params, x, dropout_masks=spec.dropout_masks(1, x))
    assert not np.allclose(dropped, out)
    assert len(tape.dropout) == 1 and plain.forward(params, x)[2].dropout == ()


@pytest.mark.backends("numpy")
def test_the_fast_path_runs_the_layers_between_the_factors_with_the_portable_numbers(backend):
    spec, params, x, state0, lengths, masks, g_out, g_state, _ = _case("gru-3l-bi-bf-lengths")
    before = dict(kernels.calls)
    out, final, tape = spec.forward(params, x, state0[0], lengths, dropout_masks=masks)
    grads, dx, d0 = spec.backward(params, tape, g_out, g_state[0])
    assert kernels.calls["numpy", "forward", "gru"] == before.get(("numpy", "forward", "gru"), 0) + 6
    with kernels.portable_only():
        out_p, final_p, tape_p = spec.forward(params, x, state0[0], lengths, dropout_masks=masks)
        grads_p, dx_p, d0_p = spec.backward(params, tape_p, g_out, g_state[0])
    for a, b in [(out, out_p), (final, final_p), (dx, dx_p), (d0, d0_p), *((grads[k], grads_p[k]) for k in grads)]:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_backward_with_factors_is_jax_grad_of_the_portable_forward():
    jax = pytest.importorskip("jax")
    spec = RNN(D, H, 3, dropout=0.5)
    rng = np.random.default_rng(5)
    xj, hj = jax.numpy.asarray(rng.normal(size=(4, 2, D))), jax.numpy.asarray(rng.normal(size=(3, 2, H)))
    p = spec.init(seed=1, like=xj)
    mj, wj = spec.dropout_masks(3, xj), jax.numpy.asarray(rng.normal(size=(4, 2, H)))
    lens = jax.numpy.asarray([4, 1])

    @jax.jit
    def autodiff(p, x, h):
        return jax.grad(lambda p, x, h: (spec.forward(p, x, h, lens, dropout_masks=mj)[0] * wj).sum(),
                        argnums=(0, 1, 2))(p, x, h)

    auto_grads, auto_dx, auto_dh = autodiff(p, xj, hj)
    _, _, tape = spec.forward(p, xj, hj, lens, dropout_masks=mj)
    grads, dx, dh = spec.backward(p, tape, wj)
    for key in p:
        np.testing.assert_allclose(grads[key], auto_grads[key], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(dx, auto_dx, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(dh, auto_dh, rtol=1e-11, atol=1e-13)


def test_dropout_masks_are_seeded_inverted_bernoulli_factors_shaped_like_out():
    spec = LSTM(D, H, 3, bidirectional=True, batch_first=True, dropout=0.3, proj_size=2)
    x = np.zeros((40, 50, D), dtype=np.float32)
    masks = spec.dropout_masks(7, x)
    assert len(masks) == 2
    for m in masks:
        assert m.shape == (40, 50, 4) and m.dtype == np.float32  # like out: (N, T, dirs * proj_size)
        assert set(np.unique(m)) == {0.0, np.float32(1 / 0.7)}
        assert abs(np.mean(m == 0) - 0.3) < 0.03  # 8000 draws: the standard error is 0.005
    assert not np.array_equal(masks[0], masks[1])
    assert all(np.array_equal(a, b) for a, b in zip(masks, spec.dropout_masks(7, x)))
    assert not np.array_equal(masks[0], spec.dropout_masks(8, x)[0])
    assert GRU(D, H, 1, dropout=0.5).dropout_masks(0, x) == ()  # one layer: nothing between layers
    assert GRU(D, H, 2).dropout_masks(0, x) == ()  # no dropout


def test_dropout_is_a_spec_field_validated_and_zero_changes_nothing():
    assert GRU(D, H, dropout=0) == GRU(D, H) and GRU(D, H, dropout=0).dropout == 0.0
    assert isinstance(GRU(D, H, dropout=1 / 4).dropout, float)
    for bad in (1, 1.0, -0.1, 2, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\)"):
            GRU(D, H, 2, dropout=bad)
    for bad in (True, "0.5", None):
        with pytest.raises(TypeError, match=r"dropout must be a real number"):
            GRU(D, H, 2, dropout=bad)
    with pytest.raises(TypeError):
        GRU(D, H, 2, 0.5)  # keyword-only, as the other flags


def test_bad_dropout_masks_are_refused_with_their_name():
    spec = GRU(D, H, 3, dropout=0.5)
    x = np.zeros((5, 2, D))
    params = spec.init(seed=0, like=x)
    good = spec.dropout_masks(0, x)
    with pytest.raises(ValueError, match="dropout_masks were given but this spec has dropout=0.0"):
        GRU(D, H, 3).forward(params, x, dropout_masks=good)
    with pytest.raises(ValueError, match=r"dropout_masks must hold num_layers - 1 = 2 array\(s\)"):
        spec.forward(params, x, dropout_masks=good[:1])
    with pytest.raises(TypeError, match="dropout_masks must be a tuple of arrays"):
        spec.forward(params, x, dropout_masks=good[0])
    with pytest.raises(ValueError, match=r"dropout_masks\[1\] has shape \(5, 2, 3\); expected \(5, 2, 4\)"):
        spec.forward(params, x, dropout_masks=(good[0], np.ones((5, 2, 3))))
    with pytest.raises(TypeError, match=r"dropout_masks\[0\] has dtype float32"):
        spec.forward(params, x, dropout_masks=(good[0].astype(np.float32), good[1]))
    with pytest.raises(TypeError, match=r"dropout_masks\[0\] must be an array"):
        spec.forward(params, x, dropout_masks=([1.0], good[1]))
