"""``learn_initial_state=True``: the initial state as parameters, on every layer and face.

The reference is torch's autograd of the portable forward, in float64, with
the ``initial_*`` parameters as leaves broadcast over the batch; the layer's
hand-written gradients (the batch sum of the initial-state gradient) must
match to 1e-10 on every backend, with lengths, both directions, two layers
and a checkpointed tape.
"""

from __future__ import annotations

import numpy as np
import pytest

from portable_rnn import GRU, LSTM, RNN, interop, io
from portable_rnn.engine.cells import GRUCell
from portable_rnn.engine.kernels import portable_only

torch = pytest.importorskip("torch", reason="torch: not installed, needed as the reference")

SPECS = {
    "lstm-2l-bi": LSTM(3, 4, 2, bidirectional=True, learn_initial_state=True),
    "gru-batch_first": GRU(3, 4, batch_first=True, learn_initial_state=True),
    "rnn-relu-2l": RNN(3, 4, 2, nonlinearity="relu", learn_initial_state=True),
}
T, N = 5, 3


def _case(name):
    spec = SPECS[name]
    rng = np.random.default_rng(0)
    params = spec.init(1, dtype="float64")
    params = {k: (rng.normal(size=v.shape) if k.startswith("initial_") else v) for k, v in params.items()}
    x = rng.normal(size=(N, T, 3) if spec.batch_first else (T, N, 3))
    lengths = np.array([5, 2, 4])
    d_out = rng.normal(size=spec._out_shape(T, N))
    d_state = tuple(rng.normal(size=(spec.num_layers * spec.num_directions, N, 4)) for _ in spec.cell.states)
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in {**params, "x": x}.items()}
    with portable_only():
        out, final, _ = spec.forward({k: leaves[k] for k in params}, leaves["x"], None, torch.tensor(lengths),
                                     retain="none")
    final = final if isinstance(final, tuple) else (final,)
    loss = (out * torch.tensor(d_out)).sum() + sum((f * torch.tensor(g)).sum() for f, g in zip(final, d_state))
    loss.backward()
    return spec, params, x, lengths, d_out, d_state, {k: t.grad.numpy() for k, t in leaves.items()}


@pytest.mark.parametrize("retain", ["full", "checkpoint"])
@pytest.mark.parametrize("name", list(SPECS))
def test_the_learned_initial_state_has_the_gradients_of_autodiff(backend, name, retain):
    spec, params, x, lengths, d_out, d_state, ref = _case(name)
    cv = lambda a: backend.asarray(a, "float64")  # noqa: E731
    p = {k: cv(v) for k, v in params.items()}
    out, final, kept = spec.forward(p, cv(x), None, backend.asarray(lengths, "int64"), retain=retain)
    ds = tuple(map(cv, d_state))
    grads, dx, _ = spec.backward(p, kept, cv(d_out), ds if len(ds) > 1 else ds[0])
    assert list(grads) == list(spec.param_shapes()) and list(grads)[-1].startswith("initial_")
    for k, r in ref.items():
        got = backend.to_numpy(dx if k == "x" else grads[k])
        np.testing.assert_allclose(got, r, rtol=1e-10, atol=1e-12, err_msg=k)


def test_jax_apply_and_the_torch_module_learn_it_too():
    jax = pytest.importorskip("jax", reason="jax: not installed")
    from portable_rnn import jax as prnn_jax
    from portable_rnn import torch as prnn_torch
    from portable_rnn.backends import jax_float64

    spec, params, x, lengths, d_out, d_state, ref = _case("lstm-2l-bi")
    with jax_float64():
        def loss(p):
            out, final = prnn_jax.apply(spec, p, jax.numpy.asarray(x), None, jax.numpy.asarray(lengths))
            return (out * d_out).sum() + sum((f * g).sum() for f, g in zip(final, d_state))

        grads = jax.jit(jax.grad(loss))({k: jax.numpy.asarray(v) for k, v in params.items()})
    for k in ("initial_h", "initial_c", "weight_hh_l1_reverse"):
        np.testing.assert_allclose(np.asarray(grads[k]), ref[k], rtol=1e-10, atol=1e-12, err_msg=k)

    module = prnn_torch.Recurrent(GRUCell(), 3, 4, learn_initial_state=True, dtype=torch.float64)
    assert torch.equal(module.initial_h, torch.zeros(1, 4, dtype=torch.float64))  # starts at the zero state
    out, h_n = module(torch.randn(T, N, 3, dtype=torch.float64))
    (out.sum() + h_n.sum()).backward()
    assert module.initial_h.grad.shape == (1, 4) and torch.all(module.initial_h.grad != 0)


def test_where_a_learned_initial_state_has_no_place_it_is_refused(tmp_path):
    spec = LSTM(3, 4, learn_initial_state=True)
    x = np.zeros((T, N, 3), np.float32)
    params = spec.init(0, like=x)
    with pytest.raises(ValueError, match="state must be None: the initial state is a parameter"):
        spec.forward(params, x, (np.zeros((1, N, 4), np.float32),) * 2)
    with pytest.raises(ValueError, match="torch.nn has no learned initial state"):
        interop.to_torch(spec, params)
    with pytest.raises(ValueError, match="learn_initial_state must be True or False"):
        GRU(3, 4, learn_initial_state=1)
    path = tmp_path / "model.safetensors"  # the file format keeps the option and the parameters
    io.save(path, spec, params)
    again, loaded = io.load(path)
    assert again == spec and all(np.array_equal(loaded[k], params[k]) for k in params)
