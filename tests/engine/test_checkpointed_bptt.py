"""Checkpointed BPTT and the tape-free forward give the full tape's numbers, in less memory.

``retain="checkpoint"`` keeps the states entering each segment and recomputes
the segment's tape in the backward; every result must equal the full tape's
(float64, to the rounding of the weight gradients' sum over segments).
``retain="none"`` keeps nothing and must give the same outputs and final states.
"""

from __future__ import annotations

import numpy as np
import pytest

from portable_rnn.app.bench.memory import traced_peak
from portable_rnn.engine import kernels, sequence
from portable_rnn.engine.cells import LSTMCell
from portable_rnn.layers import GRU, LSTM, RNN
from portable_rnn.model import CharModel

from ..helpers import NOT_EAGER_JAX, every_cell, rel_error

CELLS = {**every_cell(), "lstm_proj": LSTMCell(proj_size=3)}
TOL = 1e-12  # float64: the checkpointed weight gradients add the same terms in another order


def _engine_inputs(cell, T, N=3, D=4, H=5, seed=0):
    rng = np.random.default_rng(seed)
    G, R = cell.n_gates, getattr(cell, "proj_size", 0) or H
    arrays = {
        "x": rng.normal(size=(T, N, D)),
        "W_ih": rng.normal(size=(G * H, D)) * 0.4,
        "W_hh": rng.normal(size=(G * H, R)) * 0.4,
        "b_ih": rng.normal(size=(G * H,)),
        "b_hh": rng.normal(size=(G * H,)),
        "state0": tuple(rng.normal(size=(N, R if j == 0 else H)) for j in range(cell.n_states)),
        "d_out": rng.normal(size=(T, N, R)),
        "d_final": tuple(rng.normal(size=(N, R if j == 0 else H)) for j in range(cell.n_states)),
        "mask": (np.arange(T)[:, None] < np.array([T, T // 2, 1])[None, :N])[..., None].astype(float),
    }
    if R != H:
        arrays["W_hr"] = rng.normal(size=(R, H)) * 0.4
    return arrays


def _own(cell, a) -> dict:
    """The cell's own parameters among the arrays ``a`` (an LSTM's ``W_hr``)."""
    return {name: a[name] for name in cell.cell_params(a["W_hh"].shape[0] // cell.n_gates)}


def _engine_run(cell, a, retain, every, truncate, with_mask, xp):
    mask = a["mask"] if with_mask else None
    out, final, kept = sequence.forward(
        cell, a["x"], a["state0"], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"], mask,
        xp=xp, cell_params=_own(cell, a), retain=retain, checkpoint_every=every,
    )
    g = sequence.backward(cell, kept, a["d_out"], a["d_final"], a["W_ih"], a["W_hh"], xp=xp,
                          truncate=truncate, cell_params=_own(cell, a))
    return out, final, g


ENGINE_CASES = {  # (T, checkpoint_every, truncate, mask)
    "T11-every3-truncate4-mask": (11, 3, 4, True),
    "T10-default-every": (10, None, None, False),
    "T7-every1": (7, 1, 2, False),
    "T6-every-T": (6, 6, None, True),
}


# compiled: GRU's one state and the projected LSTM's two; the plain LSTM's segments compile in
# test_layer_checkpoint_and_none_equal_the_full_tape (jax:jit, lengths, truncation, a short last segment)
@NOT_EAGER_JAX
@pytest.mark.jit(cell=["gru", "lstm_proj"], case=["T11-every3-truncate4-mask"])
@pytest.mark.parametrize("case", list(ENGINE_CASES))
@pytest.mark.parametrize("cell", list(CELLS))
def test_engine_checkpoint_equals_full_tape(backend, cell, case):
    cell = CELLS[cell]
    T, every, truncate, with_mask = ENGINE_CASES[case]
    a = {k: backend.asarray(v, "float64") if not isinstance(v, tuple) else tuple(backend.asarray(s, "float64") for s in v)
         for k, v in _engine_inputs(cell, T).items()}

    def run(a, retain):
        return _engine_run(cell, a, retain, every if retain == "checkpoint" else None, truncate, with_mask, backend.xp)

    full = backend.run(run, a, retain="full")
    ckpt = backend.run(run, a, retain="checkpoint")
    for (name, f), c in zip(_named(full), [leaf for _, leaf in _named(ckpt)]):
        assert rel_error(backend.to_numpy(c), backend.to_numpy(f)) <= TOL, name


def _named(result):
    out, final, g = result
    yield "out", out
    for j, s in enumerate(final):
        yield f"final[{j}]", s
    for field, value in zip(g._fields, g):
        parts = value.values() if isinstance(value, dict) else value if isinstance(value, tuple) else (value,)
        for j, leaf in enumerate(parts):
            if leaf is not None:
                yield f"{field}[{j}]", leaf


LAYER_SPECS = {
    "lstm-2l-bi": LSTM(3, 4, num_layers=2, bidirectional=True),
    "gru-bf-nobias": GRU(3, 4, batch_first=True, bias=False),
    "rnn-relu-2l-dropout": RNN(3, 4, num_layers=2, nonlinearity="relu", dropout=0.5),
    "lstm-proj-bi": LSTM(3, 4, bidirectional=True, proj_size=2),
}


def _layer_inputs(spec, T=9, N=3, seed=1):
    rng = np.random.default_rng(seed)
    shape = (N, T, spec.input_size) if spec.batch_first else (T, N, spec.input_size)
    x = rng.normal(size=shape)
    params = spec.init(seed=seed, like=x)
    out_shape = (N, T, spec.num_directions * spec.output_size) if spec.batch_first else \
        (T, N, spec.num_directions * spec.output_size)
    d_out = rng.normal(size=out_shape)
    masks = tuple(rng.choice([0.0, 2.0], size=out_shape) for _ in range(spec.num_layers - 1)) if spec.dropout else ()
    return params, x, np.array([T, 4, 1]), d_out, masks


@NOT_EAGER_JAX
@pytest.mark.jit(name=["lstm-2l-bi"])
@pytest.mark.parametrize("name", list(LAYER_SPECS))
def test_layer_checkpoint_and_none_equal_the_full_tape(backend, name):
    spec = LAYER_SPECS[name]
    params, x, lengths, d_out, masks = _layer_inputs(spec)
    params = {k: backend.asarray(v, "float64") for k, v in params.items()}
    x, lengths, d_out = backend.asarray(x, "float64"), backend.asarray(lengths), backend.asarray(d_out, "float64")
    masks = tuple(backend.asarray(m, "float64") for m in masks)

    def run(params, x, lengths, d_out, masks, retain, every):
        out, state, kept = spec.forward(params, x, lengths=lengths, dropout_masks=masks, retain=retain,
                                        checkpoint_every=every)
        if kept is None:
            return out, state
        return out, state, spec.backward(params, kept, d_out, state, truncate=3)

    full = backend.run(run, params, x, lengths, d_out, masks, retain="full", every=None)
    ckpt = backend.run(run, params, x, lengths, d_out, masks, retain="checkpoint", every=2)
    none = backend.run(run, params, x, lengths, d_out, masks, retain="none", every=4)
    flat = {name: _flat(full), "checkpoint": _flat(ckpt), "none": _flat(none)}
    assert len(flat["checkpoint"]) == len(flat[name]) > len(flat["none"]) > 0
    for other in ("checkpoint", "none"):
        for i, (got, ref) in enumerate(zip(flat[other], flat[name])):
            assert rel_error(backend.to_numpy(got), backend.to_numpy(ref)) <= TOL, (other, i)


def _flat(tree):
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in _flat(tree[key])]
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in _flat(item)]
    return [] if tree is None else [tree]


def test_jax_apply_with_a_checkpointed_tape_gives_the_same_gradients():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from portable_rnn.backends import jax_float64
    from portable_rnn.jax import apply

    spec = LSTM(3, 4, num_layers=2)
    with jax_float64():
        params, x, lengths, d_out, _ = _layer_inputs(spec)
        params = {k: jnp.asarray(v) for k, v in params.items()}
        x, lengths, d_out = jnp.asarray(x), jnp.asarray(lengths), jnp.asarray(d_out)

        def loss(params, x, retain):
            out, _ = apply(spec, params, x, lengths=lengths, truncate=4, retain=retain, checkpoint_every=3 if
                           retain == "checkpoint" else None)
            return jnp.sum(out * d_out)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
        (g_full, dx_full), (g_ckpt, dx_ckpt) = grad(params, x, "full"), grad(params, x, "checkpoint")
        assert rel_error(dx_ckpt, dx_full) <= TOL
        for key in g_full:
            assert rel_error(g_ckpt[key], g_full[key]) <= TOL, key
        with pytest.raises(ValueError, match="retain='none' keeps nothing for the backward that apply runs"):
            apply(spec, params, x, retain="none")


def test_charmodel_checkpointed_loss_and_grads_equal_the_full_tape():
    model = CharModel(7, 6, num_layers=2, mode="gru")
    params = model.init(seed=3, dtype="float64")
    tokens = np.random.default_rng(0).integers(0, 7, size=(2, 13))
    loss, grads, state = model.loss_and_grads(params, tokens[:, :-1], tokens[:, 1:])
    loss_c, grads_c, state_c = model.loss_and_grads(params, tokens[:, :-1], tokens[:, 1:], retain="checkpoint",
                                                    checkpoint_every=5)
    assert loss_c == loss and np.array_equal(state_c, state)
    for key in grads:
        assert rel_error(grads_c[key], grads[key]) <= TOL, key
    with pytest.raises(ValueError, match="loss_and_grads"):
        model.loss_and_grads(params, tokens[:, :-1], tokens[:, 1:], retain="none")


@pytest.mark.backends("numpy", "torch")
def test_the_in_place_segments_of_the_fast_path_equal_the_portable_ones(backend, monkeypatch):
    spec = LSTM(3, 4)
    params, x, lengths, d_out, _ = _layer_inputs(spec, T=10)
    params = {k: backend.asarray(v, "float64") for k, v in params.items()}
    x, lengths, d_out = backend.asarray(x, "float64"), backend.asarray(lengths), backend.asarray(d_out, "float64")
    runs = []
    real = kernels.over_segments
    monkeypatch.setattr(kernels, "over_segments", lambda *a: runs.append(1) or real(*a))

    def run():
        out, _, tape = spec.forward(params, x, lengths=lengths, retain="checkpoint", checkpoint_every=3)
        return [out, *spec.backward(params, tape, d_out)[:2]]

    fast = run()
    assert len(runs) == 2  # the forward's out and the backward's dx
    with kernels.portable_only():
        portable = run()
    assert len(runs) == 2
    for got, ref in zip(_flat(fast), _flat(portable)):
        assert rel_error(backend.to_numpy(got), backend.to_numpy(ref)) <= TOL


def test_memory_checkpoint_grows_like_sqrt_T_and_none_only_with_the_output():
    spec = LSTM(8, 32)
    N = 4
    params = spec.init(seed=0, like=np.zeros((1, N, 8), dtype=np.float32))
    scratch = {}  # (tape, T) -> peak bytes beyond out and dx, the results any tape must return
    for T in (256, 4096):
        x = np.ones((T, N, 8), dtype=np.float32)
        d_out = np.ones((T, N, 32), dtype=np.float32)
        results = x.nbytes + d_out.nbytes  # dx and out have the shapes of x and d_out

        def fwd_bwd(retain):
            out, _, kept = spec.forward(params, x, retain=retain)
            if kept is not None:
                spec.backward(params, kept, d_out)

        for retain in ("full", "checkpoint"):
            scratch[retain, T] = traced_peak(lambda: fwd_bwd(retain)) - results
        scratch["none", T] = traced_peak(lambda: fwd_bwd("none")) - d_out.nbytes
    assert scratch["full", 4096] > 12 * scratch["full", 256]  # the full tape: linear in T (16x)
    assert scratch["checkpoint", 4096] < 6 * scratch["checkpoint", 256]  # sqrt(16) = 4, plus fixed costs
    assert scratch["checkpoint", 4096] < 0.05 * scratch["full", 4096]
    assert scratch["none", 4096] < 1.5 * scratch["none", 256]  # one segment, whatever T is


@pytest.mark.parametrize("kwargs, error, match", [
    ({"retain": "partial"}, ValueError, r"retain must be one of 'full', 'checkpoint', 'none', got 'partial'"),
    ({"retain": "checkpoint", "checkpoint_every": 0}, ValueError, r"checkpoint_every must be an int >= 1, got 0"),
    ({"retain": "checkpoint", "checkpoint_every": 2.5}, ValueError, r"checkpoint_every must be an int >= 1"),
    ({"checkpoint_every": 4}, ValueError, r"checkpoint_every=4 needs retain='checkpoint'"),
    ({"tape": "partial"}, ValueError, r"retain must be one of 'full', 'checkpoint', 'none', got 'partial'"),
    ({"retain": "checkpoint", "tape": "none"}, TypeError, r"give retain= or its other name tape=, not both"),
])
def test_bad_tape_arguments_are_refused(kwargs, error, match):
    spec = GRU(2, 3)
    x = np.zeros((5, 1, 2))
    with pytest.raises(error, match=match):
        spec.forward(spec.init(like=x), x, **kwargs)


def test_tape_is_a_deprecated_spelling_of_retain():
    """``tape=`` still chooses what the forward keeps, on every function that took it, with a warning."""
    spec, x = GRU(2, 3), np.random.default_rng(0).normal(size=(5, 2, 2))
    params = spec.init(seed=0, like=x)
    with pytest.warns(DeprecationWarning, match=r"tape= is deprecated, use retain="):
        old = spec.forward(params, x, tape="checkpoint", checkpoint_every=2)
    new = spec.forward(params, x, retain="checkpoint", checkpoint_every=2)
    assert type(old[2].layers[0][0]) is type(new[2].layers[0][0]) is sequence.CheckpointTape
    np.testing.assert_array_equal(old[0], new[0])
    with pytest.warns(DeprecationWarning):
        assert spec.forward(params, x, tape="none")[2] is None
    model = CharModel(vocab_size=5, hidden_size=3)
    tokens = np.random.default_rng(1).integers(0, 5, size=(2, 7))
    model_params = model.init(seed=0)
    with pytest.warns(DeprecationWarning):
        loss_old, _, _ = model.loss_and_grads(model_params, tokens[:, :-1], tokens[:, 1:], tape="checkpoint")
    loss_new, _, _ = model.loss_and_grads(model_params, tokens[:, :-1], tokens[:, 1:], retain="checkpoint")
    np.testing.assert_array_equal(loss_old, loss_new)


def test_the_engine_checks_its_tape_arguments_too():
    cell, x = CELLS["gru"], np.zeros((5, 1, 2))
    args = (cell, x, (np.zeros((1, 3)),), np.zeros((9, 2)), np.zeros((9, 3)))
    with pytest.raises(ValueError, match=r"checkpoint_every must be an int >= 1, got 0"):
        sequence.forward(*args, xp=np, retain="checkpoint", checkpoint_every=0)
    with pytest.raises(ValueError, match=r"retain must be one of"):
        sequence.forward(*args, xp=np, retain="partial")


def test_backward_of_no_tape_says_why():
    spec = GRU(2, 3)
    x = np.zeros((5, 1, 2))
    params = spec.init(like=x)
    out, _, tape = spec.forward(params, x, retain="none")
    assert tape is None
    with pytest.raises(TypeError, match=r"forward\(retain='none'\) keeps nothing to differentiate"):
        spec.backward(params, tape, out)


@pytest.mark.parametrize("T, every, expected", [
    (10, None, 4),  # ceil(sqrt(10)) = 4, no divisor in (2, 4] -> 3 balanced segments: 4, 4, 2
    (10, 6, 5),  # a divisor: 5 + 5
    (9, 2, 2),  # 5 segments: 2, 2, 2, 2, 1
    (100_000, None, 250),  # every 317: the divisor 250, no short segment
    (1, None, 1),
    (7, 100, 7),
    (12, 1, 1),
])
def test_segment_length(T, every, expected):
    k = sequence.segment_length(T, every)
    assert k == expected
    n_segments = -(-T // k)
    assert 1 <= T - (n_segments - 1) * k <= k  # a last segment of at least one step
    assert -(-T // n_segments) == k  # the backward's recovery of k from T and the checkpoints
