"""portable_rnn.interop: weights from and to PyTorch, Keras 3, Flax and the course layouts.

For every framework that is installed: random weights (non-zero biases), then
our forward on every backend equals the framework's forward, and import/export
round trips are exact, bit for bit. Tolerances: float64 results agree to
rtol 1e-10; Keras 3 computes in float32 on the JAX and torch backends (its
type promotion maps float64 to float32 there, see ``test_keras_forward``), so
Keras comparisons are float32 at rtol 1e-5 / atol 1e-5 times the largest
magnitude.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

from portable_rnn import cs231n, interop, stepbystep
from portable_rnn.interop import courses
from portable_rnn.layers import GRU, LSTM, RNN

from ..helpers import assert_on_backend

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is first imported; tensorflow is not a dependency

try:
    import torch
except ImportError:  # pragma: no cover - torch is in every test environment
    torch = None

try:
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 weights on JAX; the library never switches it on
except ImportError:
    jax = None

try:
    import keras

    _KERAS_SKIP = None
except Exception as error:  # ImportError, or a KERAS_BACKEND that is not installed
    keras, _KERAS_SKIP = None, f"keras: not installed or unusable ({type(error).__name__}: {error})"

try:
    import flax.linen as nn
    import jax.numpy as jnp

    _FLAX_SKIP = None
except Exception as error:
    nn, _FLAX_SKIP = None, f"flax: not installed or unusable ({type(error).__name__}: {error})"

needs_torch = pytest.mark.skipif(torch is None, reason="torch: not installed")
needs_keras = pytest.mark.skipif(keras is None, reason=_KERAS_SKIP or "")
needs_flax = pytest.mark.skipif(nn is None, reason=_FLAX_SKIP or "")

F64 = {"rtol": 1e-10, "atol": 1e-12}


# --------------------------------------------------------------------------- helpers


def _bits(a):
    """Bytes of a host array, so equality is bit for bit (sign of zero, NaN payloads)."""
    a = np.ascontiguousarray(a)
    return a.dtype.str, a.shape, a.view(np.uint8).tobytes()


def _host(backend, a):
    return backend.to_numpy(a) if backend is not None else np.asarray(a)


def assert_same_params(got, expected, backend=None, expected_backend=None):
    assert list(got) == list(expected)
    for k in expected:
        assert _bits(_host(backend, got[k])) == _bits(_host(expected_backend, expected[k])), k


def _close(backend, got, ref, rtol, atol, what):
    got = backend.to_numpy(got).astype(np.float64)
    scale = max(1.0, float(np.max(np.abs(ref), initial=0.0)))
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol * scale, err_msg=what)


def _states(state):
    return state if isinstance(state, tuple) else (state,)


def _rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- PyTorch

TORCH_CASES = {
    "lstm-2layer-bidir": ("LSTM", dict(num_layers=2, bidirectional=True)),
    "lstm-nobias-bf": ("LSTM", dict(batch_first=True, bias=False)),
    "gru-2layer-bidir-nobias-bf": ("GRU", dict(num_layers=2, bidirectional=True, bias=False, batch_first=True)),
    "rnn-relu-2layer-nobias": ("RNN", dict(num_layers=2, nonlinearity="relu", bias=False)),
}
D, H, T, N = 3, 4, 5, 2


def _torch_module(kind, kw, dtype=None, seed=0):
    torch.manual_seed(seed)
    module = getattr(torch.nn, kind)(D, H, **kw)
    return module.double() if dtype == "float64" else module


def _torch_run(module, x, state0):
    """numpy out and states of ``module`` on numpy ``x`` and initial states."""
    with torch.no_grad():
        s0 = tuple(torch.from_numpy(s) for s in state0)
        out, st = module(torch.from_numpy(x), s0 if len(s0) == 2 else s0[0])
    return out.numpy(), tuple(s.numpy() for s in _states(st))


@needs_torch
@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_from_torch_forward_matches_torch(backend, case):
    kind, kw = TORCH_CASES[case]
    module = _torch_module(kind, kw, "float64")
    rng = _rng(1)
    x = rng.standard_normal((N, T, D) if kw.get("batch_first") else (T, N, D))
    L = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    state0 = tuple(rng.standard_normal((L, N, H)) for _ in range(2 if kind == "LSTM" else 1))
    ref_out, ref_state = _torch_run(module, x, state0)

    xb = backend.asarray(x, "float64")
    spec, params = interop.from_torch(module, like=xb)
    assert spec.batch_first == kw.get("batch_first", False)
    for v in params.values():
        assert_on_backend(backend, v, "float64")
    s0 = tuple(backend.asarray(s, "float64") for s in state0)
    out, state, _ = spec.forward(params, xb, s0 if kind == "LSTM" else s0[0])
    _close(backend, out, ref_out, what="out", **F64)
    for i, (s, r) in enumerate(zip(_states(state), ref_state)):
        _close(backend, s, r, what=f"state[{i}]", **F64)


@needs_torch
def test_from_torch_float32_defaults_to_numpy_of_module_dtype(backend):
    module = _torch_module("LSTM", dict(num_layers=2, bidirectional=True), None)
    spec, host = interop.from_torch(module)
    assert all(type(v) is np.ndarray and v.dtype == np.float32 for v in host.values())
    x = _rng(2).standard_normal((T, N, D)).astype(np.float32)
    ref_out, ref_state = _torch_run(module, x, tuple(np.zeros((4, N, H), np.float32) for _ in range(2)))
    _, params = interop.from_torch(module, like=backend.asarray(x, "float32"))
    out, state, _ = spec.forward(params, backend.asarray(x, "float32"))
    assert_on_backend(backend, out, "float32", ref_out.shape)
    _close(backend, out, ref_out, rtol=1e-5, atol=1e-6, what="out")
    _close(backend, state[1], ref_state[1], rtol=1e-5, atol=1e-6, what="c_n")


@needs_torch
@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_torch_round_trips_are_exact(case):
    kind, kw = TORCH_CASES[case]
    for dtype in ("float32", "float64"):
        module = _torch_module(kind, kw, dtype)
        spec, params = interop.from_torch(module)
        back = interop.to_torch(spec, params)
        assert type(back) is type(module)
        ref = {k: v.numpy() for k, v in module.state_dict().items()}
        assert_same_params({k: v.numpy() for k, v in back.state_dict().items()}, ref)
        for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional"):
            assert getattr(back, attr) == getattr(module, attr), attr
        assert back.mode == module.mode


@needs_torch
def test_to_torch_from_every_backend_is_exact(backend, dtype):
    spec = GRU(D, H, num_layers=2, bidirectional=True)
    params = spec.init(seed=3, xp=backend.xp, dtype=dtype, device=backend.device)
    module = interop.to_torch(spec, params)
    assert next(module.parameters()).dtype == getattr(torch, dtype)
    state = module.state_dict()
    assert_same_params({k: v.numpy() for k, v in state.items()}, params, None, backend)
    _, again = interop.from_torch(module, xp=backend.xp, device=backend.device)
    assert_same_params(again, params, backend, backend)
    for v in again.values():
        assert_on_backend(backend, v, dtype)


@needs_torch
def test_from_torch_copies_and_casts_on_request():
    module = _torch_module("GRU", {}, "float64")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    spec, params = interop.from_torch(module)
    params["weight_ih_l0"][...] = 7.0  # our copy, not the module's storage
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k])
    _, p32 = interop.from_torch(module, dtype="float32")
    assert all(v.dtype == np.float32 for v in p32.values())
    np.testing.assert_array_equal(p32["weight_hh_l0"], before["weight_hh_l0"].numpy().astype(np.float32))
    with pytest.raises(TypeError, match="like= or xp="):
        interop.from_torch(module, like=np.zeros(1), xp=np)


@needs_torch
def test_from_torch_refuses_what_it_cannot_represent():
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\)"):
        interop.from_torch(torch.nn.GRU(3, 4, num_layers=2, dropout=1.0))
    spec, _ = interop.from_torch(torch.nn.GRU(3, 4, num_layers=2, dropout=0.5))
    assert spec.dropout == 0.5 and spec.num_layers == 2
    spec, params = interop.from_torch(torch.nn.LSTM(3, 4, proj_size=2))
    assert spec.proj_size == 2 and tuple(params["weight_hr_l0"].shape) == (2, 4)
    for to in (interop.to_stepbystep, interop.to_cs231n):
        with pytest.raises(ValueError, match="has no LSTM projection"):
            to(spec, params)

    class Custom(torch.nn.LSTM):
        def forward(self, x, hx=None):  # pragma: no cover - never called
            return super().forward(x * 2, hx)

    with pytest.raises(ValueError, match="overrides forward"):
        interop.from_torch(Custom(3, 4))
    hooked = torch.nn.RNN(3, 4)
    hooked.register_forward_hook(lambda m, i, o: o)
    with pytest.raises(ValueError, match="hooks"):
        interop.from_torch(hooked)
    with pytest.raises(TypeError, match="torch.nn.RNN, LSTM or GRU"):
        interop.from_torch(torch.nn.LSTMCell(3, 4))
    with pytest.raises(TypeError, match="float32 or float64"):
        interop.from_torch(torch.nn.GRU(3, 4).half())
    normed = torch.nn.utils.parametrizations.weight_norm(torch.nn.GRU(3, 4), name="weight_hh_l0")
    with pytest.raises(ValueError, match="unexpected"):
        interop.from_torch(normed)


@needs_torch
def test_to_torch_checks_params():
    spec = LSTM(D, H)
    params = spec.init(seed=0)
    with pytest.raises(ValueError, match="missing"):
        interop.to_torch(spec, {k: v for k, v in params.items() if k != "bias_hh_l0"})
    with pytest.raises(ValueError, match="unexpected"):
        interop.to_torch(spec, {**params, "weight_hr_l0": params["weight_hh_l0"]})
    with pytest.raises(ValueError, match="shape"):
        interop.to_torch(spec, {**params, "weight_hh_l0": params["weight_ih_l0"]})
    with pytest.raises(TypeError, match="RNN, LSTM or GRU spec"):
        interop.to_torch("lstm", params)


# --------------------------------------------------------------------------- Keras 3


def _randomize_keras(layer, seed):
    """Random weights, including non-zero biases (Keras initialises biases to 0)."""
    rng = _rng(seed)
    for w in layer.weights:
        w.assign((0.5 * rng.standard_normal(tuple(w.shape))).astype(np.dtype(w.dtype)))
    return layer


def _weights(layer):
    """Host copies of a Keras layer's weights (``get_weights`` warns on NumPy 2 with JAX)."""
    return [np.asarray(keras.ops.convert_to_numpy(w.value)) for w in layer.weights]


def _keras_cases():
    L = keras.layers
    seq = dict(return_sequences=True, return_state=True)
    return {
        "bidir-simplernn-tanh": lambda: [L.Bidirectional(L.SimpleRNN(H, **seq))],
        "simplernn-relu-nobias": lambda: [L.SimpleRNN(H, activation="relu", use_bias=False, **seq)],
        "lstm": lambda: [L.LSTM(H, **seq)],
        "gru": lambda: [L.GRU(H, **seq)],
        # use_cudnn=False: Keras' fused JAX GRU (keras/src/backend/jax/rnn.py) makes its zero
        # biases with the default dtype, float64 under jax_enable_x64, and then fails on float32.
        "gru-nobias": lambda: [L.GRU(H, use_bias=False, use_cudnn=False, **seq)],
        "bidir-lstm": lambda: [L.Bidirectional(L.LSTM(H, **seq))],
        "stacked-bidir-gru": lambda: [
            L.Bidirectional(L.GRU(H, return_sequences=True)), L.Bidirectional(L.GRU(H, **seq))
        ],
        # the reset gate before the recurrent product (Cho et al.), one bias
        "gru-reset-before": lambda: [L.GRU(H, reset_after=False, **seq)],
        "stacked-bidir-gru-reset-before": lambda: [
            L.Bidirectional(L.GRU(H, reset_after=False, return_sequences=True)),
            L.Bidirectional(L.GRU(H, reset_after=False, **seq)),
        ],
    }


KERAS_CASES = [
    "bidir-simplernn-tanh", "simplernn-relu-nobias", "lstm", "gru", "gru-nobias", "bidir-lstm", "stacked-bidir-gru",
    "gru-reset-before", "stacked-bidir-gru-reset-before",
]


def _keras_layers(case, seed=0):
    layers = _keras_cases()[case]()
    d_in = D
    for k, layer in enumerate(layers):
        layer.build((None, None, d_in))
        _randomize_keras(layer, seed + k)
        d_in = 2 * H if isinstance(layer, keras.layers.Bidirectional) else H
    return layers


def _keras_run(layers, x):
    """numpy output and final states (stacked as ours: (dirs, N, H) per state kind) of the last layer."""
    y = x
    for layer in layers[:-1]:
        y = layer(y)
    res = [keras.ops.convert_to_numpy(r) for r in layers[-1](y)]
    out, states = res[0], res[1:]
    per_dir = len(states) // (2 if isinstance(layers[-1], keras.layers.Bidirectional) else 1)
    kinds = [np.stack(states[j::per_dir]) for j in range(per_dir)]  # [h_f, (c_f), h_b, (c_b)]
    return out, tuple(kinds)


@functools.lru_cache(maxsize=None)
def _keras_reference(case):
    """Layers of ``case`` with random weights, an input and Keras' outputs (computed once per case)."""
    layers = _keras_layers(case)
    x = _rng(4).standard_normal((N, T, D)).astype(np.float32)
    return layers, x, *_keras_run(layers, x)


@needs_keras
@pytest.mark.parametrize("case", KERAS_CASES)
def test_keras_forward_matches_keras(backend, case):
    layers, x, ref_out, ref_states = _keras_reference(case)
    source = layers if len(layers) > 1 else layers[0]
    spec, host = interop.from_keras(source)
    assert spec.batch_first and spec.num_layers == len(layers)
    assert all(v.dtype == np.float32 for v in host.values())
    L_dirs = spec.num_layers * spec.num_directions
    for dtype, tol in (("float32", dict(rtol=1e-5, atol=1e-5)), ("float64", dict(rtol=1e-5, atol=1e-6))):
        xb = backend.asarray(x, dtype)
        _, params = interop.from_keras(source, like=xb)
        out, state, _ = spec.forward(params, xb)
        assert_on_backend(backend, out, dtype, ref_out.shape)
        _close(backend, out, ref_out, what=f"{dtype} out", **tol)
        for i, (s, r) in enumerate(zip(_states(state), ref_states)):
            _close(backend, s[L_dirs - r.shape[0]:, ...], r, what=f"{dtype} state[{i}] of the last layer", **tol)


@needs_keras
@pytest.mark.parametrize("case", KERAS_CASES)
def test_keras_round_trips_are_exact(case):
    layers = _keras_reference(case)[0]
    source = layers if len(layers) > 1 else layers[0]
    spec, params = interop.from_keras(source)
    back = interop.to_keras(spec, params)
    back = back if isinstance(back, list) else [back]
    assert len(back) == len(layers)
    for a, b in zip(layers, back):
        assert type(a) is type(b)
        wa, wb = _weights(a), _weights(b)
        assert [_bits(w) for w in wa] == [_bits(w) for w in wb]
    again_spec, again = interop.from_keras(back if len(back) > 1 else back[0])
    assert again_spec == spec
    assert_same_params(again, params)


@needs_keras
@pytest.mark.parametrize("mode", ["rnn", "lstm", "gru", "gru-reset-before"])
def test_to_keras_then_from_keras_is_exact_on_every_backend(backend, mode):
    spec = {"rnn": RNN(D, H, nonlinearity="relu"), "lstm": LSTM(D, H, bidirectional=True), "gru": GRU(D, H),
            "gru-reset-before": GRU(D, H, reset_after=False)}[mode]
    params = spec.init(seed=6, xp=backend.xp, dtype="float32", device=backend.device)
    if mode != "gru":  # Keras has one bias per gate: the exact round trip needs bias_hh = 0
        params = {k: (backend.xp.zeros_like(v) if k.startswith("bias_hh") else v) for k, v in params.items()}
    layer = interop.to_keras(spec, params)
    got_spec, got = interop.from_keras(layer, xp=backend.xp, device=backend.device)
    assert got_spec == RNN(D, H, nonlinearity="relu", batch_first=True) if mode == "rnn" else got_spec.batch_first
    assert_same_params(got, params, backend, backend)
    x = _rng(7).standard_normal((N, T, D)).astype(np.float32)
    ref = keras.ops.convert_to_numpy(layer(x))
    out, _, _ = got_spec.forward(got, backend.asarray(x, "float32"))
    _close(backend, out, ref, rtol=1e-5, atol=1e-5, what="out")


@needs_keras
def test_to_keras_sums_the_two_biases_and_keeps_options():
    spec = LSTM(D, H, num_layers=2)
    params = spec.init(seed=8)
    layers = interop.to_keras(spec, params, return_sequences=False, return_state=True)
    assert isinstance(layers, list) and len(layers) == 2
    assert layers[0].return_sequences and not layers[0].return_state
    assert not layers[1].return_sequences and layers[1].return_state
    bias = np.asarray(keras.ops.convert_to_numpy(layers[0].cell.bias.value))
    np.testing.assert_array_equal(bias, params["bias_ih_l0"] + params["bias_hh_l0"])
    x = _rng(9).standard_normal((N, T, D)).astype(np.float32)
    last, h, c = (keras.ops.convert_to_numpy(r) for r in layers[1](layers[0](x)))
    out, (h_n, c_n), _ = spec.__class__(D, H, num_layers=2, batch_first=True).forward(params, x)
    np.testing.assert_allclose(last, out[:, -1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c, c_n[-1], rtol=1e-5, atol=1e-5)


@needs_keras
def test_keras_float64_weights_are_kept_exactly():
    """float64 weights go through exactly (Keras' own float64 compute is float32 on JAX/torch)."""
    spec = GRU(D, H, bidirectional=True)
    params = spec.init(seed=10, dtype="float64")
    layer = interop.to_keras(spec, params)
    assert layer.forward_layer.cell.kernel.dtype == "float64"
    got_spec, got = interop.from_keras(layer)
    assert_same_params(got, params)


@needs_keras
def test_from_keras_refuses_what_it_cannot_represent():
    L = keras.layers

    def built(layer, d=D):
        layer.build((None, None, d))
        return layer

    with pytest.raises(ValueError, match="recurrent_activation='hard_sigmoid'"):
        interop.from_keras(built(L.LSTM(H, recurrent_activation="hard_sigmoid")))
    with pytest.raises(ValueError, match="activation='relu'"):
        interop.from_keras(built(L.LSTM(H, activation="relu")))
    with pytest.raises(ValueError, match="activation='sigmoid'"):
        interop.from_keras(built(L.SimpleRNN(H, activation="sigmoid")))
    with pytest.raises(ValueError, match="go_backwards=True"):
        interop.from_keras(built(L.LSTM(H, go_backwards=True)))
    with pytest.raises(ValueError, match="merge_mode='sum'"):
        interop.from_keras(built(L.Bidirectional(L.GRU(H), merge_mode="sum")))
    with pytest.raises(ValueError, match="not built"):
        interop.from_keras(L.LSTM(H))
    with pytest.raises(TypeError, match="generic keras.layers.RNN"):
        interop.from_keras(built(L.RNN(L.LSTMCell(H))))
    with pytest.raises(TypeError, match="SimpleRNN, LSTM, GRU"):
        interop.from_keras(built(L.Dense(H)))
    with pytest.raises(ValueError, match="return_sequences=False"):
        interop.from_keras([built(L.LSTM(H)), built(L.LSTM(H), d=H)])
    with pytest.raises(ValueError, match="input_dim"):
        interop.from_keras([built(L.LSTM(H, return_sequences=True)), built(L.LSTM(H), d=H + 1)])
    with pytest.raises(ValueError, match="differs from layer"):
        interop.from_keras([built(L.LSTM(H, return_sequences=True)), built(L.GRU(H), d=H)])
    with pytest.raises(ValueError, match="empty"):
        interop.from_keras([])


# --------------------------------------------------------------------------- Flax linen


def _flax_cells():
    f64 = dict(param_dtype=jnp.float64, bias_init=nn.initializers.normal(0.5))
    return {
        "LSTMCell": lambda: nn.LSTMCell(H, **f64),
        "OptimizedLSTMCell": lambda: nn.OptimizedLSTMCell(H, **f64),
        "GRUCell": lambda: nn.GRUCell(H, **f64),
        "SimpleCell-tanh": lambda: nn.SimpleCell(H, **f64),
        "SimpleCell-relu": lambda: nn.SimpleCell(H, activation_fn=nn.relu, **f64),
    }


FLAX_CELLS = ["LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell-tanh", "SimpleCell-relu"]


@functools.lru_cache(maxsize=None)
def _flax_reference(name):
    """An nn.RNN over cell ``name``, its variables, an input, a random initial carry and Flax's outputs."""
    cell = _flax_cells()[name]()
    rnn = nn.RNN(cell, return_carry=True)
    rng = _rng(11)
    x = rng.standard_normal((N, T, D))
    variables = rnn.init(jax.random.key(0), x)
    carry0 = cell.initialize_carry(jax.random.key(1), (N, D))
    carry0 = jax.tree_util.tree_map(lambda a: rng.standard_normal(a.shape), carry0)
    ref_carry, ref_out = rnn.apply(variables, x, initial_carry=carry0)
    ref_carry = jax.tree_util.tree_map(np.array, ref_carry)
    return rnn, variables, x, carry0, ref_carry, np.array(ref_out)


@needs_flax
@pytest.mark.parametrize("name", FLAX_CELLS)
def test_flax_forward_matches_flax(backend, name):
    rnn, variables, x, carry0, ref_carry, ref_out = _flax_reference(name)
    xb = backend.asarray(x, "float64")
    spec, params = interop.from_flax(variables, rnn, like=xb)
    assert spec.batch_first and spec.num_layers == 1
    state0 = interop.flax_carry_to_state(
        jax.tree_util.tree_map(lambda a: backend.asarray(a, "float64"), carry0), spec
    )
    out, state, _ = spec.forward(params, xb, state0)
    _close(backend, out, ref_out, what="out", **F64)
    carry = interop.state_to_flax_carry(state, spec)
    for got, ref in zip(jax.tree_util.tree_leaves(carry), jax.tree_util.tree_leaves(ref_carry)):
        _close(backend, got, ref, what="carry", **F64)


@needs_flax
@pytest.mark.parametrize("name", FLAX_CELLS)
def test_flax_round_trips_are_exact(name):
    cell = _flax_cells()[name]()
    x = np.zeros((N, D))
    variables = cell.init(jax.random.key(2), cell.initialize_carry(jax.random.key(3), x.shape), x)
    spec, params = interop.from_flax(variables, cell)
    # the bare params tree works as well as the variables dict
    _, again = interop.from_flax(variables["params"], cell)
    assert_same_params(again, params)
    back_cell, back = interop.to_flax(spec, params, optimized=name == "OptimizedLSTMCell")
    assert type(back_cell) is type(cell)
    ref = jax.tree_util.tree_map(np.asarray, dict(variables["params"]))
    got = jax.tree_util.tree_map(np.asarray, back["params"])
    assert sorted(got) == sorted(ref)
    for dense in ref:
        assert sorted(got[dense]) == sorted(ref[dense]), dense
        for leaf in ref[dense]:
            assert _bits(got[dense][leaf]) == _bits(ref[dense][leaf]), (dense, leaf)


@needs_flax
def test_to_flax_from_any_backend_sums_biases_exactly(backend):
    spec = GRU(D, H)
    params = spec.init(seed=12, xp=backend.xp, dtype="float64", device=backend.device)
    cell, variables = interop.to_flax(spec, params)
    host = {k: backend.to_numpy(v) for k, v in params.items()}
    np.testing.assert_array_equal(
        np.asarray(variables["params"]["ir"]["bias"]), host["bias_ih_l0"][:H] + host["bias_hh_l0"][:H]
    )
    x = _rng(13).standard_normal((N, T, D))
    ref = nn.RNN(cell).apply({"params": {"cell": variables["params"]}}, x)
    out, _, _ = GRU(D, H, batch_first=True).forward(params, backend.asarray(x, "float64"))
    _close(backend, out, np.asarray(ref), what="out", **F64)


@needs_flax
def test_from_flax_refuses_what_it_cannot_represent():
    x = np.zeros((N, D))

    def init(cell):
        return cell.init(jax.random.key(0), cell.initialize_carry(jax.random.key(1), x.shape), x)

    residual = nn.SimpleCell(H, residual=True)
    with pytest.raises(ValueError, match="residual"):
        interop.from_flax(init(residual), residual)
    mgu = nn.MGUCell(H)
    with pytest.raises(TypeError, match="LSTMCell, OptimizedLSTMCell, GRUCell or SimpleCell"):
        interop.from_flax(init(mgu), mgu)
    hard = nn.LSTMCell(H, gate_fn=nn.hard_sigmoid)
    with pytest.raises(ValueError, match="gate_fn"):
        interop.from_flax(init(hard), hard)
    gru = nn.GRUCell(H)
    variables = init(gru)
    params = dict(variables["params"])
    with pytest.raises(ValueError, match="missing \\['hn'\\]"):
        interop.from_flax({k: v for k, v in params.items() if k != "hn"}, gru)
    with pytest.raises(ValueError, match="exactly \\['kernel'\\]"):
        interop.from_flax({**params, "hr": {**params["hr"], "bias": params["hn"]["bias"]}}, gru)
    with pytest.raises(ValueError, match="shape"):
        interop.from_flax({**params, "hz": {"kernel": params["iz"]["kernel"]}}, gru)
    with pytest.raises(ValueError, match="reverse=True"):
        interop.from_flax(variables, nn.RNN(gru, reverse=True))
    with pytest.raises(ValueError, match="one unidirectional layer"):
        interop.to_flax(GRU(D, H, num_layers=2), GRU(D, H, num_layers=2).init())
    with pytest.raises(ValueError, match="LSTM"):
        interop.to_flax(GRU(D, H), GRU(D, H).init(), optimized=True)


@needs_flax
def test_flax_carry_helpers_check_structure():
    spec = LSTM(D, H)
    h, c = np.ones((N, H)), np.zeros((N, H))
    state = interop.flax_carry_to_state((c, h), spec)
    assert state[0].shape == (1, N, H) and np.all(state[0] == 1) and np.all(state[1] == 0)
    c2, h2 = interop.state_to_flax_carry(state, spec)
    assert np.all(h2 == 1) and np.all(c2 == 0)
    with pytest.raises(TypeError, match="pair"):
        interop.flax_carry_to_state(h, spec)
    with pytest.raises(TypeError, match="one array"):
        interop.flax_carry_to_state((c, h), GRU(D, H))
    with pytest.raises(ValueError, match="shape"):
        interop.flax_carry_to_state(np.ones((N, H + 1)), GRU(D, H))


# --------------------------------------------------------------------------- course layouts

NX, NA, M, TX = 3, 4, 2, 5


def _stepbystep_params(backend, dtype, mode, seed=14, output=True):
    rng = _rng(seed)
    if mode == "lstm":
        names = {f"W{g}": (NA, NA + NX) for g in "fico"} | {f"b{g}": (NA, 1) for g in "fico"}
        out = {"Wy": (2, NA), "by": (2, 1)}
    else:
        names = {"Wax": (NA, NX), "Waa": (NA, NA), "ba": (NA, 1)}
        out = {"Wya": (2, NA), "by": (2, 1)}
    if output:
        names |= out
    return {k: backend.asarray(0.5 * rng.standard_normal(s), dtype) for k, s in names.items()}


@pytest.mark.parametrize("mode", ["rnn", "lstm", "rnn-relu"])
def test_stepbystep_forward_matches_the_exercise(backend, dtype, tol, mode):
    nonlinearity = "relu" if mode == "rnn-relu" else "tanh"
    mode = mode.split("-")[0]
    parameters = _stepbystep_params(backend, dtype, mode)
    rng = _rng(15)
    x = backend.asarray(rng.standard_normal((NX, M, TX)), dtype)
    a0 = backend.asarray(rng.standard_normal((NA, M)), dtype)
    if mode == "lstm":
        a_ref = stepbystep.lstm_forward(x, a0, parameters)[0]
    else:
        a_ref = stepbystep.rnn_forward(x, a0, parameters, nonlinearity=nonlinearity)[0]
    kw = {"nonlinearity": nonlinearity} if mode == "rnn" else {}
    spec, params = interop.from_stepbystep(parameters, mode, **kw)
    assert spec == (LSTM(NX, NA) if mode == "lstm" else RNN(NX, NA, nonlinearity=nonlinearity))
    xp = backend.xp
    h0 = xp.expand_dims(a0.mT, axis=0)
    state = (h0, xp.zeros_like(h0)) if mode == "lstm" else h0
    out, _, _ = spec.forward(params, xp.permute_dims(x, (2, 1, 0)), state)
    a = xp.permute_dims(out, (2, 1, 0))
    assert_on_backend(backend, a, dtype, (NA, M, TX))
    np.testing.assert_allclose(backend.to_numpy(a), backend.to_numpy(a_ref), **tol)


@pytest.mark.parametrize("mode", ["rnn", "lstm"])
def test_stepbystep_round_trips_are_exact(backend, dtype, mode):
    parameters = _stepbystep_params(backend, dtype, mode)
    spec, params = interop.from_stepbystep(parameters, mode)
    for v in params.values():
        assert_on_backend(backend, v, dtype)
    out_keys = ("Wy", "by") if mode == "lstm" else ("Wya", "by")
    back = interop.to_stepbystep(spec, params, parameters[out_keys[0]], parameters["by"])
    assert sorted(back) == sorted(parameters)
    assert_same_params({k: back[k] for k in parameters}, parameters, backend, backend)
    assert set(interop.to_stepbystep(spec, params)) == set(parameters) - set(out_keys)
    # the other way: a spec's params whose bias_hh is zero come back exactly
    params2 = {k: (backend.xp.zeros_like(v) if k.startswith("bias_hh") else v) for k, v in
               spec.init(seed=16, xp=backend.xp, dtype=dtype, device=backend.device).items()}
    spec2, again = interop.from_stepbystep(interop.to_stepbystep(spec, params2), mode)
    assert spec2 == spec
    assert_same_params(again, params2, backend, backend)


@pytest.mark.parametrize("mode", ["rnn", "lstm"])
def test_cs231n_forward_matches_the_assignment(backend, dtype, tol, mode):
    G = 4 if mode == "lstm" else 1
    rng = _rng(17)
    Wx, Wh, b = (backend.asarray(0.5 * rng.standard_normal(s), dtype) for s in ((D, G * H), (H, G * H), (G * H,)))
    x = backend.asarray(rng.standard_normal((N, T, D)), dtype)
    h0 = backend.asarray(rng.standard_normal((N, H)), dtype)
    forward = cs231n.lstm_forward if mode == "lstm" else cs231n.rnn_forward
    h_ref, _ = forward(x, h0, Wx, Wh, b)
    spec, params = interop.from_cs231n(Wx, Wh, b, mode)
    assert spec.batch_first
    s0 = backend.xp.expand_dims(h0, axis=0)
    out, _, _ = spec.forward(params, x, (s0, backend.xp.zeros_like(s0)) if mode == "lstm" else s0)
    assert_on_backend(backend, out, dtype, (N, T, H))
    np.testing.assert_allclose(backend.to_numpy(out), backend.to_numpy(h_ref), **tol)


@pytest.mark.parametrize("mode", ["rnn", "lstm"])
def test_cs231n_round_trips_are_exact(backend, dtype, mode):
    G = 4 if mode == "lstm" else 1
    rng = _rng(18)
    weights = tuple(backend.asarray(rng.standard_normal(s), dtype) for s in ((D, G * H), (H, G * H), (G * H,)))
    spec, params = interop.from_cs231n(*weights, mode)
    back = interop.to_cs231n(spec, params)
    for got, ref in zip(back, weights):
        assert_on_backend(backend, got, dtype, ref.shape)
        assert _bits(backend.to_numpy(got)) == _bits(backend.to_numpy(ref))
    params2 = {k: (backend.xp.zeros_like(v) if k.startswith("bias_hh") else v) for k, v in
               spec.init(seed=19, xp=backend.xp, dtype=dtype, device=backend.device).items()}
    _, again = interop.from_cs231n(*interop.to_cs231n(spec, params2), mode)
    assert_same_params(again, params2, backend, backend)


def test_course_layouts_refuse_what_does_not_fit():
    rng = _rng(20)
    p = {k: rng.standard_normal(s) for k, s in
         {"Wax": (NA, NX), "Waa": (NA, NA), "ba": (NA, 1)}.items()}
    with pytest.raises(ValueError, match="mode"):
        interop.from_stepbystep(p, "gru")
    with pytest.raises(ValueError, match="missing"):
        interop.from_stepbystep({k: v for k, v in p.items() if k != "ba"}, "rnn")
    with pytest.raises(ValueError, match="unexpected"):
        interop.from_stepbystep({**p, "Wy": p["Waa"]}, "rnn")  # the RNN output layer is Wya
    with pytest.raises(ValueError, match="shape"):
        interop.from_stepbystep({**p, "ba": rng.standard_normal((NA,))}, "rnn")
    with pytest.raises(TypeError, match="dtype"):
        interop.from_stepbystep({**p, "ba": p["ba"].astype(np.float32)}, "rnn")
    lstm = {f"W{g}": rng.standard_normal((NA, NA)) for g in "fico"} | {f"b{g}": rng.standard_normal((NA, 1)) for g in "fico"}
    with pytest.raises(ValueError, match="n_x >= 1"):
        interop.from_stepbystep(lstm, "lstm")
    spec, params = interop.from_stepbystep(p, "rnn")
    with pytest.raises(ValueError, match="both Wy and by"):
        interop.to_stepbystep(spec, params, Wy=rng.standard_normal((2, NA)))
    with pytest.raises(ValueError, match="shape"):
        interop.to_stepbystep(spec, params, rng.standard_normal((2, NA + 1)), rng.standard_normal((2, 1)))
    with pytest.raises(ValueError, match="GRU"):
        interop.to_stepbystep(GRU(NX, NA), GRU(NX, NA).init(dtype="float64"))
    with pytest.raises(ValueError, match="one unidirectional layer"):
        interop.to_cs231n(LSTM(D, H, bidirectional=True), LSTM(D, H, bidirectional=True).init())
    with pytest.raises(ValueError, match="tanh only"):
        interop.to_cs231n(RNN(D, H, nonlinearity="relu"), RNN(D, H, nonlinearity="relu").init())
    with pytest.raises(ValueError, match="shape"):
        interop.from_cs231n(rng.standard_normal((D, 4 * H)), rng.standard_normal((H, 4 * H)),
                            rng.standard_normal((4 * H,)), "rnn")
    with pytest.raises(TypeError, match="array"):
        interop.from_cs231n([[1.0]], [[1.0]], [1.0], "rnn")


def test_course_layouts_without_bias_export_zeros():
    spec = LSTM(NX, NA, bias=False)
    params = spec.init(seed=21, dtype="float64")
    sbs = interop.to_stepbystep(spec, params)
    assert all(np.all(sbs[f"b{g}"] == 0) for g in "fico")
    Wx, Wh, b = interop.to_cs231n(spec, params)
    assert Wx.shape == (NX, 4 * NA) and np.all(b == 0)
    # gate blocks are permuted i,f,g,o -> i,f,o,g
    np.testing.assert_array_equal(Wh[:, 2 * NA : 3 * NA], params["weight_hh_l0"][3 * NA :].T)


def test_course_converters_never_write_into_or_alias_their_inputs():
    rng = _rng(22)

    def frozen(shape):
        a = rng.standard_normal(shape)
        a.setflags(write=False)
        return a

    for mode, G in (("rnn", 1), ("lstm", 4)):
        weights = (frozen((D, G * H)), frozen((H, G * H)), frozen((G * H,)))
        spec, params = interop.from_cs231n(*weights, mode)
        back = interop.to_cs231n(spec, params)
        for a in (*params.values(), *back):
            assert a.flags.writeable and not any(np.shares_memory(a, w) for w in weights)
        sbs = interop.to_stepbystep(spec, params, frozen((2, H)), frozen((2, 1)))
        _, again = interop.from_stepbystep(sbs, mode)
        for a in (*sbs.values(), *again.values()):
            assert not any(np.shares_memory(a, p) for p in params.values())


@pytest.mark.parametrize("mode", ["rnn", "lstm"])
def test_course_layout_maps_invert_each_other_exactly_in_the_input_namespace(backend, mode):
    """The one source of the course layouts: engine <-> course and back is the identity, bit for
    bit, on the device of the input, without leaving its namespace (so also under jax.jit)."""
    G = 4 if mode == "lstm" else 1
    rng = _rng(23)
    cs = {k: backend.asarray(rng.standard_normal(s), "float64") for k, s in
          {"Wx": (D, G * H), "Wh": (H, G * H), "b": (G * H,)}.items()}
    engine = {k: courses.from_cs231n_layout(a, mode, xp=backend.xp) for k, a in cs.items()}
    assert [tuple(a.shape) for a in engine.values()] == [(G * H, D), (G * H, H), (G * H,)]
    for k, a in cs.items():
        back = courses.to_cs231n_layout(engine[k], mode)  # namespace taken from the array
        assert_on_backend(backend, back, "float64", tuple(a.shape))
        assert _bits(backend.to_numpy(back)) == _bits(backend.to_numpy(a)), k
    if mode == "lstm":  # gate blocks i, f, o, g -> i, f, g, o
        np.testing.assert_array_equal(backend.to_numpy(engine["b"])[2 * H : 3 * H],
                                      backend.to_numpy(cs["b"])[3 * H :])
    sbs = _stepbystep_params(backend, "float64", mode, output=False)
    W_ih, W_hh, b = courses.from_stepbystep_layout(sbs, mode, xp=backend.xp)
    assert (tuple(W_ih.shape), tuple(W_hh.shape), tuple(b.shape)) == ((G * NA, NX), (G * NA, NA), (G * NA,))
    again = courses.to_stepbystep_layout(W_ih, W_hh, b, mode)
    assert list(again) == list(courses.STEPBYSTEP_KEYS[mode])
    assert_same_params(again, {k: sbs[k] for k in again}, backend, backend)
    with pytest.raises(ValueError, match="mode"):
        courses.from_cs231n_layout(cs["b"], "gru")


@pytest.mark.skipif(jax is None, reason="jax: not installed")
def test_course_layout_maps_trace_under_jit():
    import jax.numpy as jnp

    rng = _rng(24)
    Wx, Wh, b = (jnp.asarray(rng.standard_normal(s)) for s in ((D, 4 * H), (H, 4 * H), (4 * H,)))
    to_engine = jax.jit(lambda *a: tuple(courses.from_cs231n_layout(x, "lstm") for x in a))
    back = jax.jit(lambda *a: tuple(courses.to_cs231n_layout(x, "lstm") for x in a))(*to_engine(Wx, Wh, b))
    for got, ref in zip(back, (Wx, Wh, b)):
        assert _bits(np.asarray(got)) == _bits(np.asarray(ref))


def test_every_format_module_is_reachable_from_the_package():
    import importlib

    for fmt in ("torch", "keras", "flax", "courses"):
        module = importlib.import_module(f"portable_rnn.interop.{fmt}")
        assert module.__name__ == f"portable_rnn.interop.{fmt}"
        for name in set(module.__all__) & set(interop.__all__):
            assert getattr(interop, name) is getattr(module, name), name
    covered = set().union(*(importlib.import_module(f"portable_rnn.interop.{f}").__all__
                            for f in ("torch", "keras", "flax", "courses")))
    assert set(interop.__all__) <= covered
    if torch is not None:  # the submodule named torch does not shadow the library
        assert torch.__name__ == "torch" and hasattr(torch, "nn")
