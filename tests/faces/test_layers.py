"""portable_rnn.layers (RNN, LSTM, GRU specs) and portable_rnn.init, on every backend.

The reference is ``torch.nn.RNN/LSTM/GRU`` in float64 with autograd, loaded
with our parameters. Tolerances: float64 results agree to rtol 1e-10 (a few
hundred flops per number, each off by ~1e-16). Float32 results are compared
with the float64 reference on the same float32-rounded inputs, so they carry
float32 rounding of every operation: rtol 1e-4 with an absolute floor of
1e-5 times the largest reference magnitude (a gradient that is a sum of
O(1) terms cancelling to ~0 can only be right to that absolute level).
"""

from __future__ import annotations

import functools
import importlib

import numpy as np
import pytest

from portable_rnn.layers import GRU, LSTM, RNN, RecurrentTape

from ..helpers import NOT_EAGER_JAX, assert_on_backend

torch = pytest.importorskip("torch", reason="torch: not installed, needed as the reference")

TOL = {"float64": (1e-10, 1e-12), "float32": (1e-4, 1e-5)}
KINDS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


def _spec(kind, D, H, nonlinearity="tanh", **kw):
    if kind == "rnn":
        return RNN(D, H, nonlinearity=nonlinearity, **kw)
    return KINDS[kind](D, H, **kw)


def _close(backend, got, ref, dtype, what):
    """``got`` is a ``backend`` array of ``dtype`` and ``ref``'s shape, equal to ``ref`` within TOL."""
    assert_on_backend(backend, got, dtype, ref.shape)
    rtol, atol = TOL[dtype]
    scale = max(1.0, float(np.max(np.abs(ref), initial=0.0)))
    np.testing.assert_allclose(
        backend.to_numpy(got).astype(np.float64), ref, rtol=rtol, atol=atol * scale, err_msg=what
    )


def _torch_module(spec):
    kind = type(spec).__name__
    kw = {"num_layers": spec.num_layers, "bidirectional": spec.bidirectional,
          "batch_first": spec.batch_first, "bias": spec.bias}
    if kind == "RNN":
        kw["nonlinearity"] = spec.nonlinearity
    return getattr(torch.nn, kind)(spec.input_size, spec.hidden_size, **kw).double()


def _load(module, params_np):
    module.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in params_np.items()})
    return module


def torch_reference(spec, params_np, x, state0, lengths, G_out, G_state):
    """float64 torch autograd of loss = sum(out * G_out) + sum_j sum(state_j * G_state[j]).

    Returns numpy ``out, state (tuple), grads (dict), dx, dstate0 (tuple)``.
    ``state0`` is a tuple of numpy arrays (zeros for "no initial state").
    """
    module = _load(_torch_module(spec), params_np)
    xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    s0 = [torch.tensor(np.asarray(s, dtype=np.float64), requires_grad=True) for s in state0]
    inp = xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.from_numpy(np.asarray(lengths, dtype=np.int64)),
            batch_first=spec.batch_first, enforce_sorted=False,
        )
    out, st = module(inp, tuple(s0) if isinstance(spec, LSTM) else s0[0])
    if lengths is not None:
        # total_length: torch would otherwise pad to max(lengths) only, we keep all T steps.
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(
            out, batch_first=spec.batch_first, total_length=x.shape[1 if spec.batch_first else 0]
        )
    st = st if isinstance(spec, LSTM) else (st,)
    loss = (out * torch.from_numpy(G_out)).sum()
    for s, g in zip(st, G_state):
        loss = loss + (s * torch.from_numpy(g)).sum()
    loss.backward()
    grads = {k: module.get_parameter(k).grad.numpy() for k in params_np}
    return (out.detach().numpy(), tuple(s.detach().numpy() for s in st), grads,
            xt.grad.numpy(), tuple(s.grad.numpy() for s in s0))


# --------------------------------------------------------------------------- parity with torch

# (kind, nonlinearity, spec kwargs, T, N, D, H, lengths or None, initial state given).
# Most cases share T, N, D, H = 5, 3, 2, 4: eager JAX compiles every operation
# once per shape, so shared shapes keep the file fast; three cases vary them.
CONFIGS = {
    "rnn-tanh": ("rnn", "tanh", {}, 5, 3, 2, 4, None, True),
    "rnn-relu-2l-bi-bf": ("rnn", "relu", dict(num_layers=2, bidirectional=True, batch_first=True), 5, 3, 2, 4, None, False),
    "rnn-nobias-lengths": ("rnn", "tanh", dict(bias=False), 6, 4, 3, 2, [6, 2, 1, 3], True),
    "rnn-relu-bi-lengths": ("rnn", "relu", dict(bidirectional=True), 5, 3, 2, 4, [3, 5, 1], True),
    "lstm": ("lstm", "tanh", {}, 5, 3, 2, 4, None, True),
    "lstm-2l-bi-lengths": ("lstm", "tanh", dict(num_layers=2, bidirectional=True), 5, 3, 2, 4, [4, 1, 2], True),
    "lstm-bi-bf-nobias-lengths": ("lstm", "tanh", dict(bidirectional=True, batch_first=True, bias=False), 4, 2, 5, 3, [4, 1], False),
    "lstm-2l-bf": ("lstm", "tanh", dict(num_layers=2, batch_first=True), 5, 3, 2, 4, None, False),
    "gru": ("gru", "tanh", {}, 5, 3, 2, 4, None, True),
    "gru-2l-bi-bf-lengths": ("gru", "tanh", dict(num_layers=2, bidirectional=True, batch_first=True), 5, 3, 2, 4, [5, 3, 2], True),
    "gru-nobias-bi": ("gru", "tanh", dict(bias=False, bidirectional=True), 5, 3, 2, 4, None, False),
    "gru-2l-lengths": ("gru", "tanh", dict(num_layers=2), 6, 4, 3, 2, [2, 6, 5, 1], False),
}


def _case(name, seed=0):
    """A spec and host data (float64 numpy) for CONFIGS[name]."""
    kind, nl, kw, T, N, D, H, lengths, with_state = CONFIGS[name]
    spec = _spec(kind, D, H, nl, **kw)
    rng = np.random.default_rng(seed + sum(map(ord, name)))
    params = {k: v * 2.0 for k, v in spec.init(seed=seed, dtype="float64").items()}  # livelier than U(+-1/sqrt(H))
    x = rng.normal(size=(N, T, D) if spec.batch_first else (T, N, D))
    LD = spec.num_layers * spec.num_directions
    n_states = 2 if kind == "lstm" else 1
    state0 = tuple(rng.normal(size=(LD, N, H)) if with_state else np.zeros((LD, N, H)) for _ in range(n_states))
    out_shape = (N, T, spec.num_directions * H) if spec.batch_first else (T, N, spec.num_directions * H)
    G_out = rng.normal(size=out_shape)
    G_state = tuple(rng.normal(size=(LD, N, H)) for _ in range(n_states))
    lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
    return spec, params, x, state0, with_state, lengths, G_out, G_state


def _on(backend, dtype, spec, params, x, state0, with_state, lengths, G_out, G_state):
    """The host case converted to ``backend`` (and rounded to ``dtype``)."""
    cv = lambda a: backend.asarray(a, dtype)  # noqa: E731
    p = {k: cv(v) for k, v in params.items()}
    state = None
    if with_state:
        state = tuple(cv(s) for s in state0) if isinstance(spec, LSTM) else cv(state0[0])
    d_state = tuple(cv(g) for g in G_state) if isinstance(spec, LSTM) else cv(G_state[0])
    lens = None if lengths is None else backend.asarray(lengths, "int64")
    return p, cv(x), state, lens, cv(G_out), d_state


def _rounded(tree, dtype):
    """What the backend actually saw: host arrays rounded to ``dtype``, back in float64."""
    if isinstance(tree, dict):
        return {k: _rounded(v, dtype) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(_rounded(v, dtype) for v in tree)
    return np.asarray(tree).astype(dtype).astype(np.float64)


def _tuple(state):
    return state if isinstance(state, tuple) else (state,)


@functools.lru_cache(maxsize=None)
def _torch_case(name, dtype, seed=0, partial=None):
    """CONFIGS[name] (``seed``), ``partial`` upstream gradients dropped, and its torch reference.

    Computed once per configuration and dtype: the reference sees the inputs rounded
    to ``dtype``, as the backend does, whatever the backend under test.
    """
    spec, params, x, state0, with_state, lengths, G_out, G_state = _case(name, seed)
    zero = np.zeros_like
    if partial == "no d_out":
        G_out = zero(G_out)
    elif partial == "no d_state":
        G_state = tuple(zero(g) for g in G_state)
    elif partial == "lstm h only":
        G_state = (G_state[0], zero(G_state[1]))
    elif partial == "lstm c only":
        G_state = (zero(G_state[0]), G_state[1])
    r = lambda a: _rounded(a, dtype)  # noqa: E731
    reference = torch_reference(spec, r(params), r(x), r(state0), lengths, r(G_out), r(G_state))
    return (spec, params, x, state0, with_state, lengths, G_out, G_state), reference


# compiled: stacking, both directions, lengths and batch_first across the three kinds (every
# cell with a mask and truncation compiles in test_engine). Eager JAX runs array_api_strict's
# portable code here, op by op and compiling each op (60 s of the suite's CPU time): jax:jit and
# array_api_strict cover its two halves.
@NOT_EAGER_JAX
@pytest.mark.jit(name=["lstm-2l-bi-lengths", "gru-nobias-bi", "rnn-relu-2l-bi-bf"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_and_backward_match_torch(backend, dtype, name):
    case, (ref_out, ref_final, ref_grads, ref_dx, ref_d0) = _torch_case(name, dtype)
    spec, params, lengths = case[0], case[1], case[5]
    p, xb, state, lens, d_out, d_state = _on(backend, dtype, *case)
    out, final, tape = backend.run(spec.forward, p, xb, state, lens)
    assert isinstance(tape, RecurrentTape)  # under jax.jit too: the tape is a pytree
    grads, dx, dstate0 = backend.run(spec.backward, p, tape, d_out, d_state)

    _close(backend, out, ref_out, dtype, "out")
    for j, (got, ref) in enumerate(zip(_tuple(final), ref_final)):
        _close(backend, got, ref, dtype, f"final state[{j}]")
    # params' keys in params' order (a dict out of jax.jit has its keys sorted)
    assert list(grads) == (sorted(params) if backend.jit else list(params))
    for k, ref in ref_grads.items():
        _close(backend, grads[k], ref, dtype, f"grad {k}")
    _close(backend, dx, ref_dx, dtype, "dx")
    for j, (got, ref) in enumerate(zip(_tuple(dstate0), ref_d0)):
        _close(backend, got, ref, dtype, f"dstate0[{j}]")
    if lengths is not None:  # padded outputs are exact zeros
        o = backend.to_numpy(out)
        o = np.swapaxes(o, 0, 1) if spec.batch_first else o
        pad = np.arange(o.shape[0])[:, None] >= lengths[None, :]
        assert np.all(o[pad] == 0)


PARTIAL = [(name, which) for name in ("lstm-2l-bi-lengths", "gru-nobias-bi", "rnn-tanh")
           for which in ("no d_out", "no d_state", "lstm h only", "lstm c only")
           if name.startswith("lstm") or not which.startswith("lstm")]  # the (h, c) pair is LSTM's


@pytest.mark.parametrize("name, which", PARTIAL)
def test_partial_output_gradients(backend, name, which):
    """d_out=None, d_state=None, and an LSTM d_state pair with a None entry, against torch."""
    case, (_, _, ref_grads, ref_dx, ref_d0) = _torch_case(name, "float64", seed=3, partial=which)
    spec = case[0]
    p, xb, state, lens, d_out, d_state = _on(backend, "float64", *case)
    if which == "no d_out":
        d_out = None
    elif which == "no d_state":
        d_state = None
    elif which == "lstm h only":
        d_state = (d_state[0], None)
    else:
        d_state = (None, d_state[1])
    _, _, tape = spec.forward(p, xb, state, lens)
    grads, dx, dstate0 = spec.backward(p, tape, d_out, d_state)
    for k, ref in ref_grads.items():
        _close(backend, grads[k], ref, "float64", f"grad {k}")
    _close(backend, dx, ref_dx, "float64", "dx")
    for got, ref in zip(_tuple(dstate0), ref_d0):
        _close(backend, got, ref, "float64", "dstate0")


def test_state_none_is_zeros(backend):
    spec = LSTM(3, 2, 2, bidirectional=True)
    x = backend.asarray(np.random.default_rng(0).normal(size=(4, 3, 3)))
    p = spec.init(seed=2, like=x)
    zeros = backend.asarray(np.zeros((4, 3, 2)))
    out_a, (h_a, c_a), _ = spec.forward(p, x)
    out_b, (h_b, c_b), _ = spec.forward(p, x, (zeros, zeros))
    for a, b in [(out_a, out_b), (h_a, h_b), (c_a, c_b)]:
        np.testing.assert_array_equal(backend.to_numpy(a), backend.to_numpy(b))


# --------------------------------------------------------------------------- truncated BPTT


def _windowed_reference(spec, params_np, x, state0, G_out, G_state, k):
    """torch autograd over windows [0,k), [k,2k), ... with the carried state detached.

    Unidirectional only (a stacked torch module: every layer's state is cut).
    """
    module = _load(_torch_module(spec), params_np)
    lstm = isinstance(spec, LSTM)
    xt = torch.tensor(x, requires_grad=True)
    s0 = [torch.tensor(s, requires_grad=True) for s in state0]
    state = tuple(s0) if lstm else s0[0]
    T, loss = x.shape[0], 0.0
    for start in range(0, T, k):
        if start:
            state = tuple(s.detach() for s in state) if lstm else state.detach()
        out, state = module(xt[start : start + k], state)
        loss = loss + (out * torch.from_numpy(G_out[start : start + k])).sum()
    for s, g in zip(state if lstm else (state,), G_state):
        loss = loss + (s * torch.from_numpy(g)).sum()
    loss.backward()
    grads = {n: module.get_parameter(n).grad.numpy() for n in params_np}
    return grads, xt.grad.numpy(), tuple(s.grad.numpy() for s in s0)


def _bidirectional_windowed_reference(spec, params_np, x, state0, G_out, G_state, k):
    """One bidirectional layer = a forward module on x and one on flip(x), each windowed."""
    H = spec.hidden_size
    one = _spec(type(spec).__name__.lower(), spec.input_size, H, getattr(spec, "nonlinearity", "tanh"), bias=spec.bias)
    total = {}
    dx = np.zeros_like(x)
    d0 = []
    for d, suffix in enumerate(("", "_reverse")):
        p = {n: params_np[n + "_l0" + suffix] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
             if n + "_l0" + suffix in params_np}
        p = {n + "_l0": v for n, v in p.items()}
        xs = x if d == 0 else np.flip(x, axis=0).copy()
        g_out = G_out[..., d * H : (d + 1) * H]
        g_out = g_out if d == 0 else np.flip(g_out, axis=0).copy()
        grads, gx, gs0 = _windowed_reference(
            one, p, xs, tuple(s[d : d + 1] for s in state0), g_out, tuple(g[d : d + 1] for g in G_state), k
        )
        total.update({n[:-3] + "_l0" + suffix: v for n, v in grads.items()})
        dx += gx if d == 0 else np.flip(gx, axis=0)
        d0.append(gs0)
    return total, dx, tuple(np.concatenate([d0[0][j], d0[1][j]], axis=0) for j in range(len(d0[0])))


def _truncation_id(kind, kw, T, k, with_d_state):
    layers = f"-{kw['num_layers']}l" if "num_layers" in kw else ""
    bi = "-bi" if kw.get("bidirectional") else ""
    return f"{kind}{layers}{bi}-T{T}-k{k}" + ("" if with_d_state else "-no_d_state")


TRUNCATION = {_truncation_id(*c): c for c in [
    # (kind, spec kwargs, T, k, with d_state)
    ("lstm", {}, 5, 2, True),
    ("lstm", dict(num_layers=2), 5, 3, True),
    ("lstm", dict(num_layers=2), 5, 2, False),
    ("gru", {}, 5, 3, True),
    ("gru", dict(num_layers=2), 5, 1, False),
    ("rnn", {}, 5, 2, True),
    ("lstm", dict(bidirectional=True), 5, 2, True),
    ("gru", dict(bidirectional=True), 5, 4, False),
    ("lstm", {}, 4, 2, True),  # T % k == 0: the final-state gradient still enters
]}


@functools.lru_cache(maxsize=None)
def _truncation_case(name):
    """TRUNCATION[name]: spec, host inputs and the windowed torch reference, computed once."""
    kind, kw, T, k, with_d_state = TRUNCATION[name]
    rng = np.random.default_rng(T * 10 + k)
    N, D, H = 3, 2, 4
    spec = _spec(kind, D, H, **kw)
    params = {n: v * 2.0 for n, v in spec.init(seed=k, dtype="float64").items()}
    LD, n_states = spec.num_layers * spec.num_directions, (2 if kind == "lstm" else 1)
    x = rng.normal(size=(T, N, D))
    state0 = tuple(rng.normal(size=(LD, N, H)) for _ in range(n_states))
    G_out = rng.normal(size=(T, N, spec.num_directions * H))
    G_state = tuple((rng.normal(size=(LD, N, H)) if with_d_state else np.zeros((LD, N, H))) for _ in range(n_states))
    ref = _bidirectional_windowed_reference if spec.bidirectional else _windowed_reference
    return spec, params, x, state0, G_out, G_state, ref(spec, params, x, state0, G_out, G_state, k)


# compiled: truncation across stacked layers and in the reverse direction (every cell's
# truncated backward compiles in test_engine)
@pytest.mark.jit(name=["lstm-2l-T5-k3", "lstm-bi-T5-k2"])
@pytest.mark.parametrize("name", list(TRUNCATION))
def test_truncate_matches_windowed_autodiff(backend, name):
    _, _, _, k, with_d_state = TRUNCATION[name]
    spec, params, x, state0, G_out, G_state, (ref_grads, ref_dx, ref_d0) = _truncation_case(name)
    p, xb, state, _, d_out, d_state = _on(backend, "float64", spec, params, x, state0, True, None, G_out, G_state)
    _, _, tape = backend.run(spec.forward, p, xb, state)
    grads, dx, dstate0 = backend.run(spec.backward, p, tape, d_out, d_state if with_d_state else None, truncate=k)
    for n, r in ref_grads.items():
        _close(backend, grads[n], r, "float64", f"grad {n}")
    _close(backend, dx, ref_dx, "float64", "dx")
    for got, r in zip(_tuple(dstate0), ref_d0):
        _close(backend, got, r, "float64", "dstate0")


@pytest.mark.backends("numpy", "array_api_strict")
def test_truncate_at_least_T_is_full_bptt(backend):
    """An identity; every backend's truncated gradients meet torch's in test_truncate_matches_windowed_autodiff."""
    spec, params, x, state0, with_state, lengths, G_out, G_state = _case("lstm-2l-bi-lengths")
    p, xb, state, lens, d_out, d_state = _on(backend, "float64", spec, params, x, state0, with_state, lengths, G_out, G_state)
    _, _, tape = spec.forward(p, xb, state, lens)
    full = spec.backward(p, tape, d_out, d_state)
    cut = spec.backward(p, tape, d_out, d_state, truncate=x.shape[0])
    for n in full[0]:
        np.testing.assert_array_equal(backend.to_numpy(full[0][n]), backend.to_numpy(cut[0][n]))
    np.testing.assert_array_equal(backend.to_numpy(full[1]), backend.to_numpy(cut[1]))


# --------------------------------------------------------------------------- init

INIT_SPECS = [
    RNN(3, 4), RNN(2, 3, 2, bidirectional=True, nonlinearity="relu", bias=False),
    LSTM(5, 2), LSTM(3, 4, 2, bidirectional=True), LSTM(2, 3, 3, bias=False),
    GRU(4, 3, bidirectional=True), GRU(2, 2, 2, batch_first=True),
]


@pytest.mark.parametrize("spec", INIT_SPECS, ids=repr)
def test_init_keys_and_shapes_are_torchs(spec):
    expected = {k: tuple(v.shape) for k, v in _torch_module(spec).state_dict().items()}
    params = spec.init(seed=0)
    assert list(params) == list(expected)
    assert {k: tuple(v.shape) for k, v in params.items()} == expected
    assert spec.param_shapes() == expected
    assert all(v.dtype == np.float32 for v in params.values()), "default dtype is float32, as torch"


def _library_module(backend):
    return importlib.import_module({"jax": "jax.numpy"}.get(backend.library, backend.library))


@pytest.mark.parametrize("spec", INIT_SPECS[1::2], ids=repr)
@pytest.mark.parametrize("scheme", ["uniform", "xavier", "orthogonal"])
def test_seeded_init_is_identical_on_every_backend(backend, dtype, spec, scheme):
    host = spec.init(seed=7, xp=np, dtype=dtype, init=scheme)
    like = backend.asarray(np.zeros((2, 1, spec.input_size)), dtype)
    by_like = spec.init(seed=7, like=like, init=scheme)
    by_module = spec.init(seed=7, xp=_library_module(backend), dtype=dtype, device=backend.device, init=scheme)
    by_namespace = spec.init(seed=7, xp=backend.xp, dtype=getattr(backend.xp, dtype), device=backend.device, init=scheme)
    for params in (by_like, by_module, by_namespace):
        assert list(params) == list(host)
        for k, v in host.items():
            assert_on_backend(backend, params[k], dtype, v.shape)
            np.testing.assert_array_equal(backend.to_numpy(params[k]), v)
    other = spec.init(seed=8, xp=np, dtype=dtype, init=scheme)
    assert any(not np.array_equal(other[k], host[k]) for k in host)


def test_init_schemes():
    H, D = 4, 3
    spec = LSTM(D, H, 2, bidirectional=True)
    uniform = spec.init(seed=1, dtype="float64")
    for v in uniform.values():
        assert np.all(np.abs(v) <= 1 / np.sqrt(H)) and np.std(v) > 0.1 / np.sqrt(H)
    xavier = spec.init(seed=1, dtype="float64", init="xavier")
    assert np.all(np.abs(xavier["weight_ih_l0"]) <= np.sqrt(6 / (D + H)))
    assert np.all(np.abs(xavier["weight_ih_l1"]) <= np.sqrt(6 / (2 * H + H)))
    assert np.all(np.abs(xavier["weight_hh_l1_reverse"]) <= np.sqrt(6 / (2 * H)))
    orth = spec.init(seed=1, dtype="float64", init="orthogonal")
    for g in range(4):
        w_hh = orth["weight_hh_l0"][g * H : (g + 1) * H]
        np.testing.assert_allclose(w_hh @ w_hh.T, np.eye(H), atol=1e-12)
        w_ih = orth["weight_ih_l0"][g * H : (g + 1) * H]  # (4, 3): orthonormal columns
        np.testing.assert_allclose(w_ih.T @ w_ih, np.eye(D), atol=1e-12)
        w_ih1 = orth["weight_ih_l1"][g * H : (g + 1) * H]  # (4, 8): orthonormal rows
        np.testing.assert_allclose(w_ih1 @ w_ih1.T, np.eye(H), atol=1e-12)
    for scheme in ("xavier", "orthogonal"):  # biases are the uniform ones whatever the scheme
        params = spec.init(seed=1, dtype="float64", init=scheme)
        for k in params:
            if k.startswith("bias"):
                assert np.all(np.abs(params[k]) <= 1 / np.sqrt(H))


def test_forget_bias():
    H = 3
    spec = LSTM(2, H, 2, bidirectional=True)
    plain = spec.init(seed=4, dtype="float64")
    fb = spec.init(seed=4, dtype="float64", forget_bias=1.0)
    for k, v in fb.items():
        if k.startswith("bias_ih"):
            np.testing.assert_array_equal(v[H : 2 * H], 1.0)
        elif k.startswith("bias_hh"):
            np.testing.assert_array_equal(v[H : 2 * H], 0.0)
        if k.startswith("bias"):  # other gates untouched
            np.testing.assert_array_equal(np.delete(v, np.s_[H : 2 * H]), np.delete(plain[k], np.s_[H : 2 * H]))
        else:
            np.testing.assert_array_equal(v, plain[k])


# --------------------------------------------------------------------------- JAX


def test_spec_is_a_static_jit_argument():
    """A spec hashes by value, so it can be a static argument of ``jax.jit``.

    (Compiled forward and backward against torch: ``jax:jit`` in the matrix.)
    """
    jax = pytest.importorskip("jax", reason="jax: not installed (pip install 'portable-rnn[jax]')")
    import jax.numpy as jnp

    spec = GRU(3, 2, bidirectional=True)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2, 3)))
    p = spec.init(seed=0, like=x)
    eager, _, _ = spec.forward(p, x)
    static, _, _ = jax.jit(lambda s, p, x: s.forward(p, x), static_argnums=0)(spec, p, x)
    assert hash(spec) == hash(GRU(3, 2, bidirectional=True))
    np.testing.assert_allclose(np.asarray(static), np.asarray(eager), rtol=1e-12)


def test_jit_grad_of_forward_matches_backward():
    """jax.grad through our forward (autodiff of the engine) equals our hand-written backward."""
    jax = pytest.importorskip("jax", reason="jax: not installed (pip install 'portable-rnn[jax]')")
    import jax.numpy as jnp

    # one bidirectional layer with lengths: stacking costs seconds of compile, and the
    # stacked backward meets torch's on every backend in test_forward_and_backward_match_torch
    spec, params, x, state0, with_state, lengths, G_out, G_state = _case("lstm-bi-bf-nobias-lengths", seed=5)
    p = {k: jnp.asarray(v) for k, v in params.items()}
    args = (p, jnp.asarray(x), tuple(map(jnp.asarray, state0)))
    lens = jnp.asarray(lengths)

    def loss(p, x, s):
        out, (h, c), _ = spec.forward(p, x, s, lens)
        return jnp.sum(out * G_out) + jnp.sum(h * G_state[0]) + jnp.sum(c * G_state[1])

    auto = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
    # the hand-written backward on the host arrays: eager JAX would compile each of its operations,
    # and test_forward_and_backward_match_torch holds every backend's backward to the same numbers
    _, _, tape = spec.forward(params, x, state0, lengths)
    mine = spec.backward(params, tape, G_out, G_state)
    for a, m in zip(jax.tree.leaves(auto), jax.tree.leaves(mine)):
        np.testing.assert_allclose(np.asarray(m), np.asarray(a), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, match", [
    (dict(input_size=0, hidden_size=3), "input_size"),
    (dict(input_size=2.0, hidden_size=3), "input_size"),
    (dict(input_size=True, hidden_size=3), "input_size"),
    (dict(input_size=2, hidden_size=-1), "hidden_size"),
    (dict(input_size=2, hidden_size=3, num_layers=0), "num_layers"),
    (dict(input_size=2, hidden_size=3, bidirectional=1), "bidirectional"),
    (dict(input_size=2, hidden_size=3, batch_first="yes"), "batch_first"),
    (dict(input_size=2, hidden_size=3, bias=None), "bias"),
])
def test_bad_spec(kwargs, match):
    for cls in (RNN, LSTM, GRU):
        with pytest.raises(ValueError, match=match):
            cls(**kwargs)


def test_bad_spec_rnn_nonlinearity_and_keyword_only():
    with pytest.raises(ValueError, match="nonlinearity"):
        RNN(2, 3, nonlinearity="sigmoid")
    with pytest.raises(TypeError):
        LSTM(2, 3, 1, True)  # torch's positional order differs: keyword-only on purpose


@pytest.mark.parametrize("call, error, match", [
    (lambda: LSTM(2, 3).init(seed=-1), ValueError, "seed"),
    (lambda: LSTM(2, 3).init(seed=1.5), ValueError, "seed"),
    (lambda: LSTM(2, 3).init(init="he"), ValueError, "init"),
    (lambda: GRU(2, 3).init(forget_bias=1.0), ValueError, "forget_bias"),
    (lambda: LSTM(2, 3, bias=False).init(forget_bias=1.0), ValueError, "forget_bias"),
    (lambda: LSTM(2, 3).init(dtype="int32"), ValueError, "dtype"),
    (lambda: LSTM(2, 3).init(dtype=np.int32), TypeError, "dtype"),
    (lambda: LSTM(2, 3).init(xp=object()), TypeError, "xp"),
    (lambda: LSTM(2, 3).init(like=np.zeros(2), xp=np), TypeError, "like"),
    (lambda: LSTM(2, 3).init(like=[0.0]), TypeError, "like"),
])
def test_bad_init(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _setup(backend, spec=None, T=4, N=3):
    spec = spec or LSTM(2, 3, 2, bidirectional=True)
    x = backend.asarray(np.random.default_rng(0).normal(size=(T, N, spec.input_size)))
    return spec, spec.init(seed=0, like=x), x


def test_bad_params(backend):
    spec, p, x = _setup(backend)
    missing = dict(p)
    del missing["bias_hh_l1_reverse"]
    with pytest.raises(ValueError, match=r"params is missing key\(s\) \['bias_hh_l1_reverse'\]"):
        spec.forward(missing, x)
    extra = dict(p, weight_hr_l0=p["weight_hh_l0"])
    with pytest.raises(ValueError, match=r"params has unexpected key\(s\) \['weight_hr_l0'\]"):
        spec.forward(extra, x)
    wrong = dict(p, weight_ih_l1=p["weight_ih_l0"])
    with pytest.raises(ValueError, match=r"params\['weight_ih_l1'\] has shape \(12, 2\); expected \(12, 6\)"):
        spec.forward(wrong, x)
    with pytest.raises(TypeError, match="params must be a dict"):
        spec.forward([p], x)
    no_bias = LSTM(2, 3, 2, bidirectional=True, bias=False).init(like=x)
    with pytest.raises(ValueError, match=r"params is missing key\(s\) \['bias_ih_l0'"):
        spec.forward(no_bias, x)
    half = {k: (backend.xp.astype(v, backend.xp.float32) if k == "weight_hh_l0" else v) for k, v in p.items()}
    with pytest.raises(TypeError, match=r"params\['weight_hh_l0'\] has dtype"):
        spec.forward(half, x)


def test_bad_x_and_state(backend):
    spec, p, x = _setup(backend)
    with pytest.raises(ValueError, match=r"x has shape \(4, 3\); expected \(\*, \*, 2\)"):
        spec.forward(p, x[..., 0])
    with pytest.raises(ValueError, match=r"x has shape \(4, 3, 1\); expected \(\*, \*, 2\)"):
        spec.forward(p, x[..., :1])
    with pytest.raises(TypeError, match="x has dtype"):
        spec.forward(p, backend.asarray(np.zeros((4, 3, 2)), "int64"))
    with pytest.raises(TypeError, match="x must be an array"):
        spec.forward(p, np.zeros((4, 3, 2)).tolist())
    h = backend.asarray(np.zeros((4, 3, 3)))
    with pytest.raises(ValueError, match=r"state\[1\] \(c\) has shape \(2, 3, 3\); expected \(4, 3, 3\)"):
        spec.forward(p, x, (h, h[:2, ...]))
    with pytest.raises(TypeError, match="state must be a pair"):
        spec.forward(p, x, h)
    with pytest.raises(TypeError, match="state must be a pair"):
        spec.forward(p, x, (h, None))
    gru = GRU(2, 3)
    with pytest.raises(TypeError, match="state must be one array"):
        gru.forward(gru.init(like=x), x, (h[:1, ...], h[:1, ...]))
    with pytest.raises(ValueError, match=r"state has shape \(4, 3, 3\); expected \(1, 3, 3\)"):
        gru.forward(gru.init(like=x), x, h)


def test_bad_lengths(backend):
    spec, p, x = _setup(backend)
    with pytest.raises(TypeError, match="lengths has dtype .*float.*; expected an integer dtype"):
        spec.forward(p, x, lengths=backend.asarray(np.array([1.0, 2.0, 3.0])))
    for bad in ([0, 2, 3], [1, 5, 3]):
        with pytest.raises(ValueError, match=r"lengths must lie in \[1, T\] = \[1, 4\]"):
            spec.forward(p, x, lengths=backend.asarray(np.array(bad), "int64"))
    with pytest.raises(ValueError, match=r"lengths has shape \(2,\); expected \(3,\)"):
        spec.forward(p, x, lengths=backend.asarray(np.array([1, 2]), "int64"))
    with pytest.raises(TypeError, match="lengths must be an array"):
        spec.forward(p, x, lengths=[1, 2, 3])
    if backend.library != "numpy":
        with pytest.raises(TypeError, match="lengths is a numpy array"):
            spec.forward(p, x, lengths=np.array([1, 2, 3]))


def test_other_library_and_device():
    import array_api_strict as xps

    spec = GRU(2, 3)
    x = torch.zeros((4, 3, 2), dtype=torch.float64)
    p = spec.init(like=x)
    with pytest.raises(TypeError, match=r"x is a torch array but params\['weight_ih_l0'\] is a numpy array"):
        spec.forward(spec.init(dtype="float64"), x)
    with pytest.raises(TypeError, match="lengths is a numpy array"):
        spec.forward(p, x, lengths=np.array([1, 2, 3]))
    dev1 = xps.Device("device1")
    xs = xps.asarray(np.zeros((4, 3, 2)), dtype=xps.float64)
    ps = spec.init(like=xs)
    with pytest.raises(ValueError, match="lengths is on device"):
        spec.forward(ps, xs, lengths=xps.asarray([1, 2, 3], device=dev1))
    with pytest.raises(ValueError, match="is on device"):
        spec.forward(spec.init(like=xs, device=dev1), xs)


def test_bad_backward_arguments(backend):
    spec, p, x = _setup(backend)
    out, (h, c), tape = spec.forward(p, x)
    with pytest.raises(ValueError, match=r"d_out has shape \(3, 4, 6\); expected \(4, 3, 6\)"):
        spec.backward(p, tape, backend.xp.permute_dims(out, (1, 0, 2)))
    with pytest.raises(ValueError, match=r"d_state\[0\] \(h\) has shape"):
        spec.backward(p, tape, out, (h[:1, ...], None))
    with pytest.raises(TypeError, match="d_state must be a pair"):
        spec.backward(p, tape, out, h)
    with pytest.raises(TypeError, match="tape must be the RecurrentTape"):
        spec.backward(p, tape.layers, out)
    with pytest.raises(ValueError, match=r"tape was made by LSTM\(.*\), not by this spec LSTM\(input_size=2"):
        LSTM(2, 3).backward(LSTM(2, 3).init(like=x), tape, out)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="truncate"):
            spec.backward(p, tape, out, truncate=bad)
    with pytest.raises(TypeError, match="d_out has dtype"):
        spec.backward(p, tape, backend.xp.astype(out, backend.xp.float32))
    # batch_first: d_out must be (N, T, F)
    bf = LSTM(2, 3, batch_first=True)
    xb = backend.xp.permute_dims(x, (1, 0, 2))
    out_bf, _, tape_bf = bf.forward(bf.init(like=xb), xb)
    assert tuple(out_bf.shape) == (3, 4, 3)
    with pytest.raises(ValueError, match=r"d_out has shape \(4, 3, 3\); expected \(3, 4, 3\)"):
        bf.backward(bf.init(like=xb), tape_bf, backend.xp.permute_dims(out_bf, (1, 0, 2)))
