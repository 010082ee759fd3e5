"""A cell of one's own in the layers, in ``portable_rnn.jax.apply`` and as a torch module.

The cell here is the coupled input-forget gate LSTM (CIFG: the input gate is
``1 - f``), written by the protocol of :class:`portable_rnn.engine.cells.Cell`
the way a user would, with the public sigmoid rather than the engine's
halved rows. Its layer's gradients are held to torch's autograd of the same
portable forward in float64 (the hand-written backward against autodiff,
stacked, bidirectional, with lengths and checkpointed tapes); the plumbing is
held to the built-in layers: a :class:`~portable_rnn.layers.Recurrent` of a
built-in cell gives exactly that layer's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import pytest

from portable_rnn import check_cell, io
from portable_rnn.activations import sigmoid
from portable_rnn.engine.cells import Cell, GRUCell, LSTMCell, RNNCell
from portable_rnn.layers import GRU, LSTM, RNN, Recurrent

from ..helpers import assert_on_backend

torch = pytest.importorskip("torch", reason="torch: not installed, needed as the reference")


class CIFGTape(NamedTuple):
    f: object
    g: object
    o: object
    tanh_c: object


class CIFGDerivatives(NamedTuple):
    gates: object  # the factors of dc (f, g) and dh (o), (..., 3H)
    h_to_c: object  # o (1 - tanh(c)^2)
    f: object


@dataclass(frozen=True)
class CIFGCell(Cell):
    """f = sigma(z_f), g = tanh(z_g), o = sigma(z_o); c = f c_prev + (1 - f) g; h = o tanh(c)."""

    mode: ClassVar[str] = "cifg"
    gates: ClassVar[tuple] = ("f", "g", "o")
    n_gates: ClassVar[int] = 3
    states: ClassVar[tuple] = ("h", "c")
    n_states: ClassVar[int] = 2
    tape_type: ClassVar[type] = CIFGTape

    def step(self, xw, state, W_hh, b_hh, *, xp):
        h_prev, c_prev = state
        H = c_prev.shape[-1]
        z = xw + h_prev @ xp.matrix_transpose(W_hh)
        f, g, o = sigmoid(z[..., :H]), xp.tanh(z[..., H : 2 * H]), sigmoid(z[..., 2 * H :])
        c = f * c_prev + (1 - f) * g
        tanh_c = xp.tanh(c)
        return (o * tanh_c, c), CIFGTape(f, g, o, tanh_c)

    def step_derivatives(self, state, state_prev, tape, *, xp):
        _, c_prev = state_prev
        f, g, o, tanh_c = tape
        gates = xp.concat([(c_prev - g) * f * (1 - f), (1 - f) * (1 - g * g), tanh_c * o * (1 - o)], axis=-1)
        return CIFGDerivatives(gates, o * (1 - tanh_c * tanh_c), f)

    def step_backward(self, d_state, derivatives, *, xp):
        dh, dc_next = d_state
        dc = dc_next + dh * derivatives.h_to_c
        return xp.concat([dc, dc, dh], axis=-1) * derivatives.gates, None, (None, dc * derivatives.f)


def test_the_cifg_cell_passes_check_cell():
    errors = check_cell(CIFGCell())
    assert set(errors) >= {"finite differences"} and all(e < 1e-7 for r in errors.values() for e in r.values())


# --------------------------------------------------------------------------- the layer

CASES = {
    "2l-bi-lengths": (dict(num_layers=2, bidirectional=True), dict(lengths=True)),
    "batch_first-nobias": (dict(batch_first=True, bias=False), dict()),
    "checkpoint-lengths": (dict(num_layers=2), dict(lengths=True, retain="checkpoint", checkpoint_every=2)),
}


def _case(name, seed=0):
    """The spec, float64 host inputs, and torch's autograd of the portable forward (the reference)."""
    spec_kw, run = CASES[name]
    spec = Recurrent(3, 4, cell=CIFGCell(), **spec_kw)
    rng = np.random.default_rng(seed)
    T, N = 5, 3
    x = rng.normal(size=(N, T, 3) if spec.batch_first else (T, N, 3))
    params = spec.init(seed, dtype="float64")
    state = tuple(rng.normal(size=(spec.num_layers * spec.num_directions, N, 4)) for _ in range(2))
    lengths = np.array([5, 2, 4]) if run.get("lengths") else None
    d_out = rng.normal(size=spec._out_shape(T, N))
    d_state = tuple(rng.normal(size=s.shape) for s in state)

    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in
               {**params, "x": x, "h0": state[0], "c0": state[1]}.items()}
    p_t = {k: tensors[k] for k in params}
    out, final, _ = spec.forward(p_t, tensors["x"], (tensors["h0"], tensors["c0"]),
                                 None if lengths is None else torch.tensor(lengths), retain="none")
    loss = (out * torch.tensor(d_out)).sum() + sum((f * torch.tensor(g)).sum() for f, g in zip(final, d_state))
    loss.backward()
    reference = {k: t.grad.numpy() for k, t in tensors.items()}
    return spec, params, x, state, lengths, d_out, d_state, run, out.detach().numpy(), reference


@pytest.mark.parametrize("name", list(CASES))
def test_a_layer_of_a_custom_cell_has_the_gradients_of_autodiff(backend, name):
    spec, params, x, state, lengths, d_out, d_state, run, ref_out, ref = _case(name)
    cv = lambda a: backend.asarray(a, "float64")  # noqa: E731
    p = {k: cv(v) for k, v in params.items()}
    lens = None if lengths is None else backend.asarray(lengths, "int64")
    out, final, tape = spec.forward(p, cv(x), tuple(map(cv, state)), lens, retain=run.get("retain", "full"),
                                    checkpoint_every=run.get("checkpoint_every"))
    grads, dx, (dh0, dc0) = spec.backward(p, tape, cv(d_out), tuple(map(cv, d_state)))
    assert_on_backend(backend, out, "float64", ref_out.shape)
    got = {**grads, "x": dx, "h0": dh0, "c0": dc0}
    for k, r in [("out", ref_out)] + sorted(ref.items()):
        a = backend.to_numpy(out if k == "out" else got[k])
        np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(r).max()), err_msg=k)


@pytest.mark.parametrize("cell, layer", [(RNNCell("relu"), RNN(3, 4, 2, bidirectional=True, nonlinearity="relu")),
                                         (LSTMCell(), LSTM(3, 4, 2, bidirectional=True)),
                                         (GRUCell(), GRU(3, 4, 2, bidirectional=True))], ids=["rnn", "lstm", "gru"])
def test_a_layer_of_a_built_in_cell_is_that_layer(cell, layer):
    """Same parameters, numbers, tapes and gradients (with lengths and truncation), bit for bit."""
    custom = Recurrent(3, 4, 2, cell=cell, bidirectional=True)
    x = np.random.default_rng(1).normal(size=(6, 3, 3))
    params = layer.init(0, like=x)
    assert custom.param_shapes() == layer.param_shapes()
    lengths = np.array([6, 3, 1])
    results = []
    for spec in (custom, layer):
        out, final, tape = spec.forward(params, x, None, lengths)
        grads, dx, d0 = spec.backward(params, tape, np.ones_like(out), truncate=2)
        results.append((out, final, grads, dx, d0))
    for a, b in zip(*(tuple(_leaves(r)) for r in results)):
        np.testing.assert_array_equal(a, b)


def _leaves(tree):
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from _leaves(tree[k])
    elif isinstance(tree, (tuple, list)):
        for t in tree:
            yield from _leaves(t)
    else:
        yield tree


def test_jax_apply_of_a_custom_cell_is_its_hand_written_backward():
    jax = pytest.importorskip("jax", reason="jax: not installed")
    from portable_rnn import jax as prnn_jax
    from portable_rnn.backends import jax_float64

    spec, params, x, state, lengths, d_out, d_state, _, ref_out, ref = _case("2l-bi-lengths", seed=2)
    with jax_float64():
        p = {k: jax.numpy.asarray(v) for k, v in params.items()}

        def loss(p, x):
            out, final = prnn_jax.apply(spec, p, x, tuple(map(jax.numpy.asarray, state)), jax.numpy.asarray(lengths))
            return (out * d_out).sum() + sum((f * g).sum() for f, g in zip(final, d_state))

        grads, dx = jax.jit(jax.grad(loss, argnums=(0, 1)))(p, jax.numpy.asarray(x))
        for k, g in grads.items():
            np.testing.assert_allclose(np.asarray(g), ref[k], rtol=1e-10, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(np.asarray(dx), ref["x"], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- torch module


def test_the_torch_module_of_a_built_in_cell_is_torch_nn():
    from portable_rnn.torch import Recurrent as TorchRecurrent

    torch.manual_seed(0)
    ours = TorchRecurrent(LSTMCell(), 3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    ref = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(4, 2, 4, dtype=torch.float64) for _ in range(2))
    results = []
    for m in (ours, ref):
        out, (h, c) = m(x, hx)
        grads = torch.autograd.grad(out.sum() + (h * 2).sum() + c.sum(), [x, *m.parameters()])
        results.append([out, h, c, *grads])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_the_torch_module_of_a_custom_cell():
    """Hand-written gradients pass gradcheck; unbatched input; dropout drawn only in training."""
    from portable_rnn.torch import Recurrent as TorchRecurrent

    torch.manual_seed(0)
    m = TorchRecurrent(CIFGCell(), 3, 4, num_layers=2, dropout=0.5, dtype=torch.float64).eval()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda x, h, c: m(x, (h, c))[0], (x, *hx))
    out, (h, c) = m(x[:, 0])  # unbatched (T, D)
    assert out.shape == (5, 4) and h.shape == c.shape == (2, 4)
    torch.testing.assert_close(out, m(x)[0][:, 0])
    m.train()
    assert not torch.equal(m(x)[0], m.eval()(x)[0])


def test_bad_cells_are_refused_naming_them():
    class NotACell:
        pass

    class Unhashable(CIFGCell):
        __hash__ = None  # type: ignore[assignment]  # as a mutable dataclass has

    with pytest.raises(TypeError, match="cell must be an instance of a portable_rnn.engine.cells.Cell"):
        Recurrent(3, 4, cell=NotACell())
    with pytest.raises(TypeError, match="cell must be hashable"):
        Recurrent(3, 4, cell=Unhashable())
    with pytest.raises(ValueError, match="n_gates=4 for gates"):
        Recurrent(3, 4, cell=type("Wrong", (CIFGCell,), {"n_gates": 4})())
    spec = Recurrent(3, 4, cell=CIFGCell())
    with pytest.raises(TypeError, match=r"state must be a pair \(h, c\) of arrays"):
        spec.forward(spec.init(0), np.zeros((2, 1, 3), np.float32), np.zeros((1, 1, 4), np.float32))
    with pytest.raises(TypeError, match="RNN, LSTM or GRU spec, got Recurrent"):
        io.spec_to_dict(spec)
