"""portable_rnn.model: the character language model, its gradients, streaming and sampling.

References: ``torch.nn.Embedding -> torch.nn.LSTM/GRU/RNN -> torch.nn.Linear``
with ``F.cross_entropy`` in float64 autograd, loaded with our parameters
through ``load_state_dict`` (the names are PyTorch's), and the fourth-order
finite differences of :mod:`portable_rnn.testing.gradcheck`. Float64
gradients agree to 1e-10 relative error; float32 runs are compared with the
float64 result at rtol 1e-4.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from portable_rnn.app.gradients import hidden_state_gradients
from portable_rnn.layers import GRU, LSTM, RNN
from portable_rnn.layers import LAYERS as CELLS
from portable_rnn.model import CharModel
from portable_rnn.testing.gradcheck import numerical_gradient

from ..helpers import assert_on_backend, rel_error

# E, H, N, T are the shapes of test_layers' CONFIGS: eager JAX compiles each operation once per shape
V, E, H, N, T = 7, 2, 4, 3, 5


def _model(cell, layers=2):
    return CharModel(V, H, layers, cell, E)


def _tokens(seed=0, shape=(N, T)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, shape).astype(np.int32), rng.integers(0, V, shape).astype(np.int32)


def _state_np(model, seed=1):
    rng = np.random.default_rng(seed)
    shape = (model.num_layers, N, model.hidden_size)
    if model.mode == "lstm":
        return rng.standard_normal(shape), rng.standard_normal(shape)
    return rng.standard_normal(shape)


def _torch_reference(model, params, tokens, targets, state):
    """float64 torch autograd: loss, {name: grad}, final state."""
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(model.vocab_size, model.embed_size)
            self.rnn = getattr(torch.nn, {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[model.mode])(
                model.embed_size, model.hidden_size, model.num_layers)
            self.decoder = torch.nn.Linear(model.hidden_size, model.vocab_size)

    net = Net().double()
    net.load_state_dict({k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in params.items()})
    tok = torch.as_tensor(tokens.T.astype(np.int64))
    st = None if state is None else (
        tuple(torch.as_tensor(s) for s in state) if model.mode == "lstm" else torch.as_tensor(state))
    out, final = net.rnn(net.embedding(tok), st)
    logits = net.decoder(out)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, model.vocab_size), torch.as_tensor(targets.T.astype(np.int64)).reshape(-1))
    loss.backward()
    final = tuple(f.detach().numpy() for f in final) if model.mode == "lstm" else final.detach().numpy()
    return loss.item(), {k: p.grad.numpy() for k, p in net.named_parameters()}, final


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("with_state", [False, True])
def test_loss_and_grads_match_torch_autograd(cell, with_state):
    model = _model(cell)
    params = model.init(3, dtype="float64")
    tokens, targets = _tokens()
    state = _state_np(model) if with_state else None
    loss, grads, final = model.loss_and_grads(params, tokens, targets, state)
    ref_loss, ref_grads, ref_final = _torch_reference(model, params, tokens, targets, state)
    assert abs(float(loss) - ref_loss) < 1e-12 * abs(ref_loss)
    assert list(grads) == list(model.param_shapes()) == list(ref_grads)
    for key, ref in ref_grads.items():
        assert rel_error(grads[key], ref) < 1e-10, key
    for got, ref in zip(final if cell == "lstm" else (final,), ref_final if cell == "lstm" else (ref_final,)):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", list(CELLS))
def test_loss_and_grads_match_finite_differences(cell):
    model = CharModel(5, 3, 1, cell, 2)
    params = model.init(4, dtype="float64")
    tokens, targets = (a % 5 for a in _tokens(1, (2, 4)))
    _, grads, _ = model.loss_and_grads(params, tokens, targets)
    numeric = numerical_gradient(lambda p: float(model.loss_and_grads(p, tokens, targets)[0]), params)
    for key in params:
        assert rel_error(grads[key], numeric[key]) < 1e-8, key


def test_truncate_covering_the_sequence_is_full_bptt_and_shorter_windows_differ():
    model = _model("lstm")
    params = model.init(0, dtype="float64")
    tokens, targets = _tokens()
    _, full, _ = model.loss_and_grads(params, tokens, targets)
    _, same, _ = model.loss_and_grads(params, tokens, targets, truncate=T)
    _, cut, _ = model.loss_and_grads(params, tokens, targets, truncate=2)
    for key in full:
        np.testing.assert_array_equal(same[key], full[key])
    assert rel_error(cut["rnn.weight_hh_l0"], full["rnn.weight_hh_l0"]) > 1e-3
    np.testing.assert_allclose(cut["decoder.bias"], full["decoder.bias"])  # the head sees no recurrence


def test_param_shapes_and_names_are_torch_state_dict():
    model = CharModel(10, 6, 2, "gru", 4)
    shapes = model.param_shapes()
    assert shapes["embedding.weight"] == (10, 4)
    assert shapes["rnn.weight_ih_l0"] == (18, 4) and shapes["rnn.weight_ih_l1"] == (18, 6)
    assert shapes["decoder.weight"] == (10, 6) and shapes["decoder.bias"] == (10,)
    params = model.init(0)
    assert {k: tuple(v.shape) for k, v in params.items()} == shapes
    assert all(v.dtype == np.float32 for v in params.values())


def test_init_is_seeded_and_identical_on_every_backend(backend):
    model = _model("lstm")
    ref = model.init(7, dtype="float64")
    again = model.init(7, dtype="float64")
    other = model.init(8, dtype="float64")
    got = model.init(7, xp=backend.xp, dtype="float32", device=backend.device)
    for key in ref:
        np.testing.assert_array_equal(again[key], ref[key])
        assert not np.array_equal(other[key], ref[key])
        assert_on_backend(backend, got[key], "float32", ref[key].shape)
        np.testing.assert_array_equal(backend.to_numpy(got[key]), ref[key].astype(np.float32))


@functools.lru_cache(maxsize=None)
def _numpy_result(cell, truncate):
    """Params, tokens and loss_and_grads on NumPy in float64: the reference, once per configuration."""
    model = _model(cell)
    params = model.init(2, dtype="float64")
    tokens, targets = _tokens(2)
    return params, tokens, targets, model.loss_and_grads(params, tokens, targets, truncate=truncate)


# Eager JAX runs float32, where its dtype handling could differ from the other backends';
# float64 JAX is jax:jit's, every configuration.
@pytest.mark.jit
@pytest.mark.eager_jax(dtype=["float32"])
@pytest.mark.parametrize("cell, truncate", [("lstm", None), ("lstm", 3), ("gru", None), ("rnn", None)])
def test_every_backend_matches_numpy(backend, dtype, cell, truncate):
    model = _model(cell)
    ref_params, tokens, targets, (ref_loss, ref_grads, ref_final) = _numpy_result(cell, truncate)
    params = {k: backend.asarray(v, dtype) for k, v in ref_params.items()}
    tok, tgt = (backend.asarray(a, "int32") for a in (tokens, targets))
    loss, grads, final = backend.run(model.loss_and_grads, params, tok, tgt, truncate=truncate)
    rtol = 1e-10 if dtype == "float64" else 1e-4
    assert_on_backend(backend, loss, dtype, ())
    np.testing.assert_allclose(float(backend.to_numpy(loss)), float(ref_loss), rtol=rtol)
    for key, ref in ref_grads.items():
        assert_on_backend(backend, grads[key], dtype, ref.shape)
        assert rel_error(backend.to_numpy(grads[key]), ref) < rtol * 10, key
    for got, ref in zip(final if cell == "lstm" else (final,), ref_final if cell == "lstm" else (ref_final,)):
        assert_on_backend(backend, got, dtype, ref.shape)
        np.testing.assert_allclose(backend.to_numpy(got), ref, rtol=rtol, atol=rtol)


def test_inputs_are_not_mutated():
    model = _model("lstm")
    params = model.init(0, dtype="float64")
    copies = {k: v.copy() for k, v in params.items()}
    tokens, targets = _tokens()
    t_copy, g_copy = tokens.copy(), targets.copy()
    state = _state_np(model)
    s_copy = tuple(s.copy() for s in state)
    model.loss_and_grads(params, tokens, targets, state)
    model.step(params, tokens[:, 0], state)
    model.sample(params, [1, 2], 5)
    for k in params:
        np.testing.assert_array_equal(params[k], copies[k])
    np.testing.assert_array_equal(tokens, t_copy)
    np.testing.assert_array_equal(targets, g_copy)
    for s, c in zip(state, s_copy):
        np.testing.assert_array_equal(s, c)


@pytest.mark.parametrize("cell", list(CELLS))
def test_step_by_step_equals_the_full_forward(cell):
    model = _model(cell)
    params = model.init(5, dtype="float64")
    tokens, targets = _tokens(5)
    state0 = _state_np(model)
    logits, final = model.forward(params, tokens, state0)
    assert logits.shape == (N, T, V)
    state, stepped = state0, []
    for t in range(T):
        out, state = model.step(params, tokens[:, t], state)
        stepped.append(out)
    np.testing.assert_allclose(np.stack(stepped, axis=1), logits, rtol=1e-12, atol=1e-13)
    for a, b in zip(state if cell == "lstm" else (state,), final if cell == "lstm" else (final,)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    # The loss of the full forward is the loss that loss_and_grads reports.
    loss, _, final2 = model.loss_and_grads(params, tokens, targets, state0)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    np.testing.assert_allclose(float(loss), -np.take_along_axis(log_p, targets[..., None], -1).mean(), rtol=1e-12)


def test_carrying_the_state_across_batches_continues_the_sequence():
    model = _model("lstm")
    params = model.init(6, dtype="float64")
    tokens, _ = _tokens(6)
    whole, _ = model.forward(params, tokens)
    first, state = model.forward(params, tokens[:, :2])
    second, _ = model.forward(params, tokens[:, 2:], state)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, rtol=1e-12, atol=1e-13)


def test_init_state_is_zeros_like_params(backend):
    model = _model("lstm")
    params = model.init(0, xp=backend.xp, device=backend.device)
    h, c = model.init_state(params, 4)
    for s in (h, c):
        assert_on_backend(backend, s, "float32", (2, 4, H))
        assert not np.any(backend.to_numpy(s))
    assert_on_backend(backend, _model("gru").init_state(_model("gru").init(0, xp=backend.xp, device=backend.device), 2),
                      "float32", (2, 2, H))


def test_sampling_is_reproducible_by_seed():
    model = _model("gru")
    params = model.init(0, dtype="float64")
    a = model.sample(params, [1, 2, 3], 40, seed=11)
    b = model.sample(params, [1, 2, 3], 40, seed=11)
    c = model.sample(params, [1, 2, 3], 40, seed=12)
    assert a == b and a != c
    assert len(a) == 40 and all(0 <= t < V for t in a)
    assert model.sample(params, [1], 0) == []


def test_greedy_and_top_k_sampling():
    model = _model("lstm")
    params = model.init(1, dtype="float64")
    greedy = model.sample(params, [4], 12, temperature=0)
    assert greedy == model.sample(params, [4], 12, top_k=1, seed=3)  # top-1 is greedy for any seed
    state, token, expected = None, 4, []
    for _ in range(12):
        logits, state = model.step(params, np.asarray([token], dtype=np.int32), state)
        token = int(np.argmax(logits[0]))
        expected.append(token)
    assert greedy == expected
    drawn = model.sample(params, [4], 60, top_k=2, seed=0)
    state, token = None, 4
    for nxt in drawn:  # replay: every draw is one of the two most likely tokens
        logits, state = model.step(params, np.asarray([token], dtype=np.int32), state)
        assert nxt in np.argsort(logits[0])[-2:]
        token = nxt
    assert len(set(drawn)) > 1


def test_sampling_agrees_across_backends(backend):
    model = _model("lstm")
    ref_params = model.init(9, dtype="float64")
    params = {k: backend.asarray(v, "float64") for k, v in ref_params.items()}
    assert model.sample(params, [0, 5], 25, seed=4) == model.sample(ref_params, [0, 5], 25, seed=4)


def test_bad_arguments_are_refused_with_clear_messages():
    with pytest.raises(ValueError, match="mode must be one of"):
        CharModel(5, 4, 1, "transformer")
    with pytest.raises(ValueError, match="hidden_size must be an int >= 1"):
        CharModel(5, 0)
    model = _model("rnn")
    params = model.init(0, dtype="float64")
    tokens, targets = _tokens()
    with pytest.raises(TypeError, match="tokens has dtype float64"):
        model.loss_and_grads(params, tokens.astype(np.float64), targets)
    with pytest.raises(ValueError, match="targets has shape"):
        model.loss_and_grads(params, tokens, targets[:, :-1])
    with pytest.raises(ValueError, match="missing key"):
        model.loss_and_grads({k: v for k, v in params.items() if k != "decoder.bias"}, tokens, targets)
    with pytest.raises(ValueError, match="prime must hold at least one token"):
        model.sample(params, [], 3)
    with pytest.raises(ValueError, match="outside"):
        model.sample(params, [V], 3)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(params, [0], 3, temperature=-1.0)


# --------------------------------------------------------------------------- hidden_state_gradients


def _suffix_gradients(spec, params, x, v):
    """dL/dh_t by re-running the suffix from h_t (quadratic cost, obviously right)."""
    steps = x.shape[0]
    out = []
    for t in range(steps):
        state = None if t == 0 else spec.forward(params, x[:t])[1]
        y, _, tape = spec.forward(params, x[t:], state)
        d_out = np.zeros_like(y)
        d_out[-1] = v
        _, _, d_state = spec.backward(params, tape, d_out)
        out.append((d_state[0] if isinstance(spec, LSTM) else d_state)[0])
    return np.stack(out + [v])


@pytest.mark.parametrize("spec", [RNN(3, 4), RNN(3, 4, nonlinearity="relu"), LSTM(3, 4)], ids=["tanh", "relu", "lstm"])
def test_hidden_state_gradients_are_exact(spec):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 2, 3))
    v = rng.standard_normal((2, 4))
    params = spec.init(1, xp=np, dtype="float64")
    got = hidden_state_gradients(spec, params, x, v)
    assert got.shape == (8, 2, 4)
    np.testing.assert_allclose(got, _suffix_gradients(spec, params, x, v), rtol=1e-12, atol=1e-15)


def test_hidden_state_gradients_refuses_gru_and_stacks():
    x, v = np.zeros((3, 1, 2)), np.zeros((1, 4))
    with pytest.raises(TypeError, match="RNN or LSTM"):
        hidden_state_gradients(GRU(2, 4), GRU(2, 4).init(0, xp=np), x, v)
    with pytest.raises(ValueError, match="num_layers=1"):
        hidden_state_gradients(LSTM(2, 4, 2), LSTM(2, 4, 2).init(0, xp=np), x, v)
