"""portable_rnn.MinGRU and MinLSTM (portable_rnn.minimal): the minimal RNNs of Feng et al. (2024).

The reference is the paper's equations written out step by step (``_naive``: the gates as
sigmoids, minLSTM's normalisation as the ratio f / (f + i), padding, the within-length reversal
and truncation's cut written as a stop-gradient), differentiated by torch autograd and by
``jax.grad`` in float64. On every backend (JAX compiled: eager JAX would run array-api-strict's
portable code again), the parallel and the sequential scan both give the torch reference's
outputs, final states and every gradient to 1e-10 (full, checkpointed and tape-free passes,
lengths, truncation, two layers, both directions, batch_first). Facts that do
not depend on the backend run once on NumPy: the JAX reference and finite differences agree
with the hand-written backward, ``portable_rnn.jax.apply`` under ``jax.jit`` and ``jax.grad``,
65,536 steps with saturated gates, the closed-form normalisation at extreme pre-activations,
``step`` against ``forward``, and the messages of bad arguments. At the end: ``CharModel`` on
the minimal layers (finite differences, the layer's own truncated backward composed by hand,
every backend, sampling by the layer's ``step``) and the torch modules
``portable_rnn.torch.MinGRU``/``MinLSTM`` (the spec's gradients, unbatched input, an optimiser).
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
from typing import NamedTuple

import numpy as np
import pytest
from array_api_compat import array_namespace

from portable_rnn import MinGRU, MinLSTM
from portable_rnn.minimal import Checkpoints, Kept, MinimalTape
from portable_rnn.testing.gradcheck import numerical_gradient

from ..helpers import NOT_EAGER_JAX, assert_on_backend, float64_close, rel_error

KINDS = {"gru": MinGRU, "lstm": MinLSTM}

# name: (kind, spec kwargs, T, N, D, H, lengths or None, initial state given, truncate, retain, checkpoint_every)
CASES = {
    "gru": ("gru", {}, 5, 3, 2, 4, None, True, None, "full", None),
    "lstm": ("lstm", {}, 5, 3, 2, 4, None, True, None, "full", None),
    "gru-2l-bi-bf-lengths": ("gru", dict(num_layers=2, bidirectional=True, batch_first=True), 5, 3, 2, 4,
                             [5, 3, 1], True, None, "full", None),
    "lstm-2l-bi-lengths-trunc2": ("lstm", dict(num_layers=2, bidirectional=True), 5, 3, 2, 4, [4, 1, 2], True, 2,
                                  "full", None),
    "gru-nobias-lengths-trunc2-checkpoint3": ("gru", dict(bias=False), 7, 3, 2, 4, [7, 4, 1], False, 2,
                                              "checkpoint", 3),
    "lstm-2l-bi-bf-lengths-trunc3-checkpoint": ("lstm", dict(num_layers=2, bidirectional=True, batch_first=True),
                                                7, 3, 2, 4, [6, 7, 2], True, 3, "checkpoint", None),
    "lstm-nobias-bf-trunc1": ("lstm", dict(bias=False, batch_first=True), 5, 3, 2, 4, None, False, 1, "full", None),
}


class Case(NamedTuple):
    spec: object
    params: dict  # float64 host arrays
    x: np.ndarray  # (T, N, D): time-major, whatever the spec's layout
    h0: np.ndarray  # (L*dirs, N, H): zeros when the case gives no initial state
    with_state: bool
    lengths: np.ndarray | None
    G_out: np.ndarray  # time-major, like out
    G_state: np.ndarray
    truncate: int | None
    retain: str
    checkpoint_every: int | None


@functools.lru_cache(maxsize=None)
def _case(name: str) -> Case:
    kind, kw, T, N, D, H, lengths, with_state, truncate, retain, every = CASES[name]
    spec = KINDS[kind](D, H, **kw)
    rng = np.random.default_rng(sum(map(ord, name)))
    params = {k: 2.0 * v for k, v in spec.init(seed=1, dtype="float64").items()}  # livelier gates
    LD = spec.num_layers * spec.num_directions
    h0 = rng.normal(size=(LD, N, H)) if with_state else np.zeros((LD, N, H))
    lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
    return Case(spec, params, rng.normal(size=(T, N, D)), h0, with_state, lengths,
                rng.normal(size=(T, N, spec.num_directions * H)), rng.normal(size=(LD, N, H)), truncate, retain, every)


def _layout(spec, a):
    """A time-major host array in the spec's layout (and back: the swap is its own inverse)."""
    return np.swapaxes(a, 0, 1) if spec.batch_first else a


# --------------------------------------------------------------------------- the reference


def _naive(spec, p, x, h0, lengths, truncate, stop):
    """``(out, final)`` of the paper's equations, step by step, time-major, in the namespace of ``x``.

    ``stop`` is the library's stop-gradient: truncated BPTT cuts the state entering a valid step
    that starts a window of the direction's own pass (t = truncate, 2 truncate, ...).
    """
    xp = array_namespace(x)
    T, N, H, dirs = x.shape[0], x.shape[1], spec.hidden_size, spec.num_directions
    ell = np.full(N, T) if lengths is None else np.asarray(lengths)
    t = np.arange(T)[:, None]
    valid = t < ell[None, :]
    rev, cols = xp.asarray(np.where(valid, ell[None, :] - 1 - t, t)), xp.asarray(np.arange(N)[None, :])
    mask = xp.asarray(valid[..., None].astype(np.float64))

    def sigmoid(u):
        return 1 / (1 + xp.exp(-u))

    layer_in, finals = x, []
    for k in range(spec.num_layers):
        outs = []
        for d in range(dirs):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            W, b = p[f"weight_ih{suffix}"], p.get(f"bias_ih{suffix}")
            seq = layer_in if d == 0 else layer_in[rev, cols]
            h, hs = h0[k * dirs + d], []
            for s in range(T):
                v = xp.asarray(valid[s][:, None])
                u = seq[s] @ W.T + (0.0 if b is None else b)
                h_prev = xp.where(v, stop(h), h) if truncate and s and s % truncate == 0 else h
                if isinstance(spec, MinGRU):
                    z = sigmoid(u[:, :H])
                    new = (1 - z) * h_prev + z * u[:, H:]
                else:
                    f, i = sigmoid(u[:, :H]), sigmoid(u[:, H : 2 * H])
                    new = f / (f + i) * h_prev + i / (f + i) * u[:, 2 * H :]
                h = xp.where(v, new, h)
                hs.append(h)
            out = xp.stack(hs) * mask
            outs.append(out if d == 0 else out[rev, cols])
            finals.append(h)
        layer_in = xp.concat(outs, axis=-1) if dirs > 1 else outs[0]
    return layer_in, xp.stack(finals)


@functools.lru_cache(maxsize=None)
def _reference(name: str, library: str) -> dict:
    """``_naive`` of CASES[name] and the gradients of ``sum(out G_out) + sum(final G_state)`` by autodiff."""
    c = _case(name)
    if library == "torch":
        torch = pytest.importorskip("torch", reason="torch: not installed, needed as a reference")
        p = {k: torch.tensor(v, requires_grad=True) for k, v in c.params.items()}
        x, h0 = torch.tensor(c.x, requires_grad=True), torch.tensor(c.h0, requires_grad=True)
        out, final = _naive(c.spec, p, x, h0, c.lengths, c.truncate, lambda a: a.detach())
        loss = (out * torch.tensor(c.G_out)).sum() + (final * torch.tensor(c.G_state)).sum()
        *dp, dx, dh0 = torch.autograd.grad(loss, [*p.values(), x, h0])
        grads = dict(zip(p, (g.numpy() for g in dp)))
        return {"out": out.detach().numpy(), "final": final.detach().numpy(), "grads": grads,
                "dx": dx.numpy(), "dh0": dh0.numpy()}
    jax = pytest.importorskip("jax", reason="JAX: not installed, needed as a reference")
    import jax.numpy as jnp

    def loss(p, x, h0):
        out, final = _naive(c.spec, p, x, h0, c.lengths, c.truncate, jax.lax.stop_gradient)
        return jnp.sum(out * c.G_out) + jnp.sum(final * c.G_state), (out, final)

    args = ({k: jnp.asarray(v) for k, v in c.params.items()}, jnp.asarray(c.x), jnp.asarray(c.h0))
    # compiled: cheaper than compiling each of the eager loop's few thousand operations one by one
    (_, (out, final)), (grads, dx, dh0) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(*args)
    return {"out": np.asarray(out), "final": np.asarray(final), "grads": {k: np.asarray(v) for k, v in grads.items()},
            "dx": np.asarray(dx), "dh0": np.asarray(dh0)}


def _ours(spec, c: Case, convert=np.asarray, run=None):
    """Forward and backward of ``spec`` on the case; host results, time-major."""
    run = run or (lambda fn, *args, **static: fn(*args, **static))
    p = {k: convert(v) for k, v in c.params.items()}
    state = convert(c.h0) if c.with_state else None
    lengths = None if c.lengths is None else convert(c.lengths)
    x = convert(_layout(spec, c.x))
    out, final, tape = run(spec.forward, p, x, state, lengths, retain=c.retain, checkpoint_every=c.checkpoint_every)
    grads, dx, dh0 = run(spec.backward, p, tape, convert(_layout(spec, c.G_out)), convert(c.G_state),
                         truncate=c.truncate)
    return {"out": out, "final": final, "grads": grads, "dx": dx, "dh0": dh0, "tape": tape}


def _assert_equal(got: dict, ref: dict, spec, close, what: str):
    """Host results ``got`` of :func:`_ours` against a reference, each array by ``close(got, want, what)``."""
    close(_layout(spec, got["out"]), ref["out"], f"out ({what})")
    close(got["final"], ref["final"], f"final state ({what})")
    assert sorted(got["grads"]) == sorted(ref["grads"])
    for k, want in ref["grads"].items():
        close(got["grads"][k], want, f"grad {k} ({what})")
    close(_layout(spec, got["dx"]), ref["dx"], f"dx ({what})")
    close(got["dh0"], ref["dh0"], f"dstate0 ({what})")


def _rel_close(got, want, what):
    assert rel_error(got, want) < 1e-10, what


# --------------------------------------------------------------------------- every backend


# JAX: compiled, in one case (checkpoints, lengths, truncation); test_jax_apply_... compiles
# another (minLSTM, two layers, both directions) through apply. Eager JAX would run
# array_api_strict's portable code op by op, compiling each op: seconds per case for nothing new.
@NOT_EAGER_JAX
@pytest.mark.jit(name=["gru-nobias-lengths-trunc2-checkpoint3"])
@pytest.mark.parametrize("name", list(CASES))
def test_parallel_and_sequential_scans_equal_the_reference(backend, name):
    """Outputs, final states and every gradient, both scans, to 1e-10 in float64; then the
    tape-free forward run segment by segment gives the same outputs."""
    c = _case(name)
    ref = _reference(name, "torch")

    def convert(a):
        return backend.asarray(a, "int64" if a.dtype.kind == "i" else "float64")

    def close(got, want, what):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=what)

    for scan in ("parallel", "sequential"):
        spec = dataclasses.replace(c.spec, scan=scan)
        got = _ours(spec, c, convert, backend.run)
        assert_on_backend(backend, got["out"], "float64")
        assert_on_backend(backend, got["grads"]["weight_ih_l0"], "float64")
        if not backend.jit:  # a dict out of jax.jit has its keys sorted
            assert list(got["grads"]) == list(spec.param_shapes())
        tape = got.pop("tape")
        assert isinstance(tape, MinimalTape)  # under jax.jit too: the tape is a pytree
        kind = Checkpoints if c.retain == "checkpoint" else Kept
        assert all(isinstance(kept, kind) for layer in tape.kept for kept in layer)
        host = {k: {n: backend.to_numpy(a) for n, a in v.items()} if k == "grads" else backend.to_numpy(v)
                for k, v in got.items()}
        _assert_equal(host, ref, spec, close, scan)
        if c.lengths is not None:  # padded outputs are exact zeros
            out = _layout(spec, host["out"])
            assert np.all(out[np.arange(out.shape[0])[:, None] >= c.lengths[None, :]] == 0)

    p = {k: convert(v) for k, v in c.params.items()}
    state = convert(c.h0) if c.with_state else None
    lengths = None if c.lengths is None else convert(c.lengths)
    out, final, tape = backend.run(c.spec.forward, p, convert(_layout(c.spec, c.x)), state, lengths,
                                   retain="none", checkpoint_every=2)
    assert tape is None
    close(_layout(c.spec, backend.to_numpy(out)), ref["out"], "out (retain='none', segments of 2)")
    close(backend.to_numpy(final), ref["final"], "final state (retain='none', segments of 2)")


# --------------------------------------------------------------------------- once, on NumPy


def test_the_hand_written_backward_equals_jax_grad():
    """One case, the richest (minLSTM, two layers, both directions, lengths, truncation): each
    jax.grad of the unrolled reference compiles for seconds."""
    name = "lstm-2l-bi-lengths-trunc2"
    c = _case(name)
    _assert_equal(_ours(c.spec, c), _reference(name, "jax"), c.spec, _rel_close, "numpy against jax.grad")


@pytest.mark.parametrize("kind, kw", [("gru", dict(num_layers=2, bidirectional=True)),
                                      ("lstm", dict(num_layers=2, bidirectional=True, batch_first=True))])
def test_the_hand_written_backward_equals_finite_differences(kind, kw):
    """Fourth-order central differences of the tape-free forward, every parameter, x and h0."""
    T, N, D, H = 4, 2, 2, 2
    spec = KINDS[kind](D, H, **kw)
    rng = np.random.default_rng(11)
    point = {k: 2.0 * v for k, v in spec.init(seed=4, dtype="float64").items()}
    point["x"] = rng.normal(size=(N, T, D) if spec.batch_first else (T, N, D))
    point["h0"] = rng.normal(size=(spec.num_layers * spec.num_directions, N, H))
    lengths = np.asarray([4, 2])
    out, final, tape = spec.forward({k: point[k] for k in spec.param_shapes()}, point["x"], point["h0"], lengths)
    G_out, G_state = rng.normal(size=out.shape), rng.normal(size=final.shape)

    def loss(q):
        o, f, _ = spec.forward({k: q[k] for k in spec.param_shapes()}, q["x"], q["h0"], lengths, retain="none")
        return float(np.sum(o * G_out) + np.sum(f * G_state))

    expected = numerical_gradient(loss, point)
    grads, dx, dh0 = spec.backward({k: point[k] for k in spec.param_shapes()}, tape, G_out, G_state)
    for name, got in {**grads, "x": dx, "h0": dh0}.items():
        assert rel_error(got, expected[name]) < 1e-10, name


@pytest.mark.parametrize("name, retain", [("lstm-2l-bi-lengths-trunc2", "full")])
def test_jax_apply_under_jit_and_grad_runs_the_hand_written_backward(name, retain):
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    import jax.numpy as jnp

    from portable_rnn.jax import apply

    c = _case(name)
    ref = _reference(name, "torch")

    def loss(params, x, state, lengths):
        out, final = apply(c.spec, params, x, state, lengths, truncate=c.truncate, retain=retain)
        return jnp.sum(out * _layout(c.spec, c.G_out)) + jnp.sum(final * c.G_state), out

    args = ({k: jnp.asarray(v) for k, v in c.params.items()}, jnp.asarray(_layout(c.spec, c.x)), jnp.asarray(c.h0),
            jnp.asarray(c.lengths))
    (_, out), (grads, dx, dh0) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(*args)
    _rel_close(_layout(c.spec, np.asarray(out)), ref["out"], "out")
    for k, want in ref["grads"].items():
        _rel_close(np.asarray(grads[k]), want, f"grad {k}")
    _rel_close(_layout(c.spec, np.asarray(dx)), ref["dx"], "dx")
    _rel_close(np.asarray(dh0), ref["dh0"], "dstate0")


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_sixty_five_thousand_steps_with_saturated_gates_stay_finite_and_exact(kind):
    """Gate pre-activations of +-30 (gates 1e-13 from 0 or 1) for T = 65,536 steps: the parallel
    scan's outputs, final state and gradients are finite and equal the sequential scan's."""
    T, N, D, H = 65_536, 2, 4, 4
    spec = KINDS[kind](D, H)
    rng = np.random.default_rng(5)
    x = rng.choice([-1.0, 1.0], size=(T, N, D))
    gate = 30.0 * np.eye(H, D)
    blocks = [gate, 30.0 * np.roll(np.eye(H, D), 1, axis=1)][: spec.n_gates - 1]  # minLSTM's i: another sign pattern
    params = {"weight_ih_l0": np.concatenate([*blocks, rng.normal(size=(H, D))]),
              "bias_ih_l0": np.zeros(spec.n_gates * H)}
    h0, G_out, G_state = rng.normal(size=(1, N, H)), rng.normal(size=(T, N, H)), rng.normal(size=(1, N, H))
    results = {}
    for scan in ("parallel", "sequential"):
        s = dataclasses.replace(spec, scan=scan)
        out, final, tape = s.forward(params, x, h0)
        grads, dx, dh0 = s.backward(params, tape, G_out, G_state)
        results[scan] = {"out": out, "final": final, **grads, "dx": dx, "dh0": dh0}
    for name, got in results["parallel"].items():
        assert np.all(np.isfinite(got)), name
        assert rel_error(got, results["sequential"][name]) < 1e-10, name
    a, _ = spec.coefficients(x @ params["weight_ih_l0"].T, np)
    assert a.min() < 1e-12 and a.max() > 1 - 1e-12  # the recurrence's coefficients at both ends


def _decimal_sigmoid(u):
    return 1 / (1 + (-decimal.Decimal(u)).exp())


@pytest.mark.parametrize("u_f, u_i", [(30, -30), (-30, 30), (30, 30), (-30, -30), (40, 0.5), (-745, -740),
                                      (-800, -800), (800, -800), (-800, 800), (1000, 1000)])
def test_the_minlstm_normalisation_is_exact_at_any_pre_activation(u_f, u_i):
    """f' = f / (f + i) and i' = i / (f + i) against 50-digit arithmetic, where the ratio itself
    would be 0/0 (both gates underflow at -800) or lose every digit (f subnormal at -745)."""
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        f, i = _decimal_sigmoid(u_f), _decimal_sigmoid(u_i)
        want_f, want_i = float(f / (f + i)), float(i / (f + i))
    pre = np.asarray([[u_f, u_i, 1.0]])
    a, b = MinLSTM(1, 1).coefficients(pre, np)
    np.testing.assert_allclose(a[0, 0], want_f, rtol=1e-12, atol=0)
    np.testing.assert_allclose(b[0, 0], want_i, rtol=1e-12, atol=0)


@pytest.mark.parametrize("u", [30.0, -30.0, 700.0, -700.0])
def test_the_mingru_keeps_one_minus_z_exact(u):
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        want_a, want_z = float(_decimal_sigmoid(-u)), float(_decimal_sigmoid(u))
    a, b = MinGRU(1, 1).coefficients(np.asarray([[u, 1.0]]), np)
    np.testing.assert_allclose([a[0, 0], b[0, 0]], [want_a, want_z], rtol=1e-14, atol=0)


@pytest.mark.backends("numpy", "array_api_strict")
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_step_equals_forward_token_by_token(backend, kind):
    T, N, D, H = 6, 3, 2, 4
    spec = KINDS[kind](D, H, num_layers=2)
    rng = np.random.default_rng(2)
    x, h0 = backend.asarray(rng.normal(size=(T, N, D))), backend.asarray(rng.normal(size=(2, N, H)))
    params = spec.init(seed=3, like=x)
    out, final, _ = spec.forward(params, x, h0, retain="none")
    state = h0
    for t in range(T):
        out_t, state = spec.step(params, x[t, ...], state)
        float64_close(backend, out_t, backend.to_numpy(out)[t], f"out at step {t}")
    float64_close(backend, state, backend.to_numpy(final), "final state")
    out_0, state_0 = spec.step(params, x[0, ...])  # no state: zeros
    float64_close(backend, out_0, backend.to_numpy(spec.forward(params, x[:1, ...])[0])[0], "step from zeros")
    assert tuple(state_0.shape) == (2, N, H)


def test_none_upstream_gradients_are_zeros():
    c = _case("lstm-2l-bi-lengths-trunc2")
    out, final, tape = c.spec.forward(c.params, c.x, c.h0, c.lengths)
    g_zeros, dx_zeros, d0_zeros = c.spec.backward(c.params, tape, np.zeros_like(out), np.zeros_like(final))
    g_none, dx_none, d0_none = c.spec.backward(c.params, tape, None, None)
    for k in g_zeros:
        np.testing.assert_array_equal(g_none[k], g_zeros[k], err_msg=k)
    np.testing.assert_array_equal(dx_none, dx_zeros)
    np.testing.assert_array_equal(d0_none, d0_zeros)


def test_parameters_are_named_and_shaped_as_torch_would_name_them():
    assert MinLSTM(3, 4, num_layers=2, bidirectional=True).param_shapes() == {
        "weight_ih_l0": (12, 3), "bias_ih_l0": (12,), "weight_ih_l0_reverse": (12, 3), "bias_ih_l0_reverse": (12,),
        "weight_ih_l1": (12, 8), "bias_ih_l1": (12,), "weight_ih_l1_reverse": (12, 8), "bias_ih_l1_reverse": (12,)}
    assert MinGRU(3, 4, bias=False).param_shapes() == {"weight_ih_l0": (8, 3)}
    params = MinGRU(3, 4).init(seed=7)
    assert list(params) == ["weight_ih_l0", "bias_ih_l0"] and params["weight_ih_l0"].dtype == np.float32


def test_the_tape_keyword_is_retain_deprecated_spelling():
    spec = MinGRU(2, 3)
    x = np.ones((4, 1, 2))
    p = spec.init(like=x)
    with pytest.warns(DeprecationWarning, match="use retain="):
        _, _, tape = spec.forward(p, x, tape="checkpoint")
    assert isinstance(tape.kept[0][0], Checkpoints)
    with pytest.raises(TypeError, match="not both"):
        spec.forward(p, x, retain="none", tape="full")


def test_bad_arguments_are_refused_naming_them():
    spec = MinLSTM(2, 3, num_layers=2)
    x = np.ones((4, 2, 2))
    p = spec.init(like=x)
    out, final, tape = spec.forward(p, x)
    cases = [
        (lambda: MinGRU(2, 3, scan="log"), ValueError, "scan must be one of"),
        (lambda: MinGRU(0, 3), ValueError, "input_size must be an int >= 1"),
        (lambda: MinLSTM(2, 3, bidirectional=1), ValueError, "bidirectional must be True or False"),
        (lambda: spec.init(init="glorot"), ValueError, "init must be one of"),
        (lambda: spec.forward(p, np.ones((4, 2, 3))), ValueError, r"x has shape \(4, 2, 3\)"),
        (lambda: spec.forward(p, np.ones((0, 2, 2))), ValueError, "at least one time step"),
        (lambda: spec.forward(p, np.ones((4, 2, 2), dtype=np.int64)), TypeError, "x has dtype int64"),
        (lambda: spec.forward(p, x.astype(np.float32)), TypeError, "float32"),
        (lambda: spec.forward({"weight_ih_l0": p["weight_ih_l0"]}, x), ValueError, "params is missing key"),
        (lambda: spec.forward(p, x, np.ones((1, 2, 3))), ValueError, r"state has shape \(1, 2, 3\)"),
        (lambda: spec.forward(p, x, lengths=np.asarray([1.0, 2.0])), TypeError, "lengths has dtype"),
        (lambda: spec.forward(p, x, lengths=np.asarray([5, 2])), ValueError, r"lengths must lie in \[1, T\]"),
        (lambda: spec.forward(p, x, retain="some"), ValueError, "retain must be one of"),
        (lambda: spec.forward(p, x, checkpoint_every=2), ValueError, "checkpoint_every=2 needs retain="),
        (lambda: spec.forward(p, x, dropout_masks=(x,)), ValueError, "dropout_masks must be None"),
        (lambda: spec.backward(p, None, out), TypeError, "tape is None"),
        (lambda: spec.backward(p, (1, 2), out), TypeError, "tape must be the MinimalTape"),
        (lambda: MinLSTM(2, 3).backward(MinLSTM(2, 3).init(like=x), tape, out[..., :3]), ValueError,
         "tape was made by"),
        (lambda: spec.backward(p, tape, out[:2]), ValueError, r"d_out has shape \(2, 2, 3\)"),
        (lambda: spec.backward(p, tape, out, final[:1]), ValueError, r"d_state has shape \(1, 2, 3\)"),
        (lambda: spec.backward(p, tape, out, truncate=0), ValueError, "truncate must be None or a positive int"),
        (lambda: spec.step(p, x), ValueError, r"x_t has shape \(4, 2, 2\)"),
        (lambda: spec.step(p, x[0], final[:1]), ValueError, r"state has shape \(1, 2, 3\)"),
        (lambda: MinGRU(2, 3, bidirectional=True).step(p, x[0]), ValueError, "bidirectional layer"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


# --------------------------------------------------------------------------- the char model


MODES = {"mingru": MinGRU, "minlstm": MinLSTM}


def _char_case(mode, layers=2, V=6, H=3, E=2, N=2, T=6, seed=0):
    from portable_rnn.model import CharModel

    model = CharModel(V, H, layers, mode, E)
    rng = np.random.default_rng(seed)
    tokens, targets = (rng.integers(0, V, (N, T)).astype(np.int32) for _ in range(2))
    return model, {k: 2.0 * v for k, v in model.init(seed, dtype="float64").items()}, tokens, targets


@pytest.mark.parametrize("mode", list(MODES))
def test_char_model_gradients_equal_finite_differences(mode):
    """Every parameter of a two-layer CharModel on a minimal layer, full BPTT, float64; the
    checkpointed tape gives the same numbers."""
    model, params, tokens, targets = _char_case(mode)
    assert isinstance(model.rnn, MODES[mode]) and model.cell.states == ("h",)
    loss, grads, final = model.loss_and_grads(params, tokens, targets)
    numeric = numerical_gradient(lambda p: float(model.loss_and_grads(p, tokens, targets)[0]), params)
    assert list(grads) == list(model.param_shapes())
    for key in params:
        assert rel_error(grads[key], numeric[key]) < 1e-8, key
    again, grads_ckpt, final_ckpt = model.loss_and_grads(params, tokens, targets, retain="checkpoint",
                                                         checkpoint_every=4)
    assert float(again) == float(loss)
    np.testing.assert_allclose(final_ckpt, final, rtol=1e-14, atol=0)
    for key in grads:
        np.testing.assert_allclose(grads_ckpt[key], grads[key], rtol=1e-12, atol=1e-15, err_msg=key)


@pytest.mark.parametrize("mode", list(MODES))
def test_char_model_truncated_gradients_are_the_layers_backward_composed(mode):
    """loss_and_grads(truncate=2) from a given state is the embedding, the layer's own forward and
    truncated backward, and the softmax head, composed here by hand in NumPy."""
    model, params, tokens, targets = _char_case(mode, T=7, seed=1)
    spec, L, N, T, H = model.rnn, model.num_layers, *tokens.shape, model.hidden_size
    state = np.random.default_rng(2).normal(size=(L, N, H))
    loss, grads, final = model.loss_and_grads(params, tokens, targets, state, truncate=2)

    rnn = {k.removeprefix("rnn."): v for k, v in params.items() if k.startswith("rnn.")}
    W, b = params["decoder.weight"], params["decoder.bias"]
    x = np.swapaxes(params["embedding.weight"][tokens], 0, 1)  # (T, N, E)
    out, want_final, tape = spec.forward(rnn, x, state)
    logits = out @ W.T + b
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    y = targets.T
    want_loss = -np.mean(np.log(np.take_along_axis(p, y[..., None], -1)))
    d_logits = (p - np.eye(model.vocab_size)[y]) / (N * T)
    d_rnn, dx, _ = spec.backward(rnn, tape, d_logits @ W, None, truncate=2)
    d_emb = np.zeros_like(params["embedding.weight"])
    np.add.at(d_emb, tokens.T, dx)
    want = {"embedding.weight": d_emb, **{f"rnn.{k}": v for k, v in d_rnn.items()},
            "decoder.weight": np.einsum("tnv,tnh->vh", d_logits, out), "decoder.bias": d_logits.sum((0, 1))}

    assert abs(float(loss) - want_loss) < 1e-12 * want_loss
    np.testing.assert_allclose(final, want_final, rtol=1e-13, atol=1e-15)
    for key, value in want.items():
        assert rel_error(grads[key], value) < 1e-10, key
    _, full, _ = model.loss_and_grads(params, tokens, targets, state)
    assert rel_error(full["rnn.weight_ih_l0"], grads["rnn.weight_ih_l0"]) > 1e-3  # the cut reached the layer


@functools.lru_cache(maxsize=None)
def _char_numpy(mode):
    model, params, tokens, targets = _char_case(mode, seed=3)
    return model, params, tokens, targets, model.loss_and_grads(params, tokens, targets, truncate=4)


@NOT_EAGER_JAX
@pytest.mark.jit
@pytest.mark.parametrize("mode", list(MODES))
def test_char_model_on_every_backend_equals_numpy(backend, mode):
    """loss_and_grads (truncated), the final state and sampling, float64, against NumPy's."""
    model, ref_params, tokens, targets, (ref_loss, ref_grads, ref_final) = _char_numpy(mode)
    params = {k: backend.asarray(v, "float64") for k, v in ref_params.items()}
    tok, tgt = (backend.asarray(a, "int32") for a in (tokens, targets))
    loss, grads, final = backend.run(model.loss_and_grads, params, tok, tgt, truncate=4)
    assert_on_backend(backend, loss, "float64", ())
    np.testing.assert_allclose(float(backend.to_numpy(loss)), float(ref_loss), rtol=1e-12)
    for key, ref in ref_grads.items():
        assert_on_backend(backend, grads[key], "float64", ref.shape)
        assert rel_error(backend.to_numpy(grads[key]), ref) < 1e-10, key
    np.testing.assert_allclose(backend.to_numpy(final), ref_final, rtol=1e-12, atol=1e-14)
    assert model.sample(params, [0, 5], 12, seed=4) == model.sample(ref_params, [0, 5], 12, seed=4)


@pytest.mark.parametrize("mode", list(MODES))
def test_char_model_sampling_runs_the_layers_sequential_step(mode, monkeypatch):
    """Each generated token is one call of the layer's step (one a h + b per layer, not a scan),
    and greedy sampling picks what the whole-sequence forward (the parallel scan) picks."""
    model, params, _, _ = _char_case(mode, seed=5)
    calls = []
    step = MODES[mode].step

    def counted(self, *args, **kwargs):
        calls.append(args[1].shape)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(MODES[mode], "step", counted)
    prime, length = [1, 4, 2], 8
    greedy = model.sample(params, prime, length, temperature=0)
    assert calls == [(1, model.embed_size)] * length
    seq = list(prime)
    for token in greedy:  # replay with the forward over the whole sequence so far
        logits, _ = model.forward(params, np.asarray([seq], dtype=np.int32))
        assert token == int(np.argmax(logits[0, -1]))
        seq.append(token)
    state, logits_fwd = None, model.forward(params, np.asarray([seq], dtype=np.int32))[0]
    for t, token in enumerate(seq):
        logits_t, state = model.step(params, np.asarray([token], dtype=np.int32), state)
        np.testing.assert_allclose(logits_t[0], logits_fwd[0, t], rtol=1e-12, atol=1e-13, err_msg=f"step {t}")


def test_char_model_modes_are_one_table_and_the_checkpoint_sizes_them():
    from portable_rnn.interop._common import param_count
    from portable_rnn.layers import LAYERS
    from portable_rnn.model import MODES as TABLE
    from portable_rnn.model import CharModel

    assert TABLE == {**LAYERS, "mingru": MinGRU, "minlstm": MinLSTM}
    assert all(cls.mode == mode for mode, cls in TABLE.items())
    with pytest.raises(ValueError, match=r"mode must be one of \['rnn', 'lstm', 'gru', 'mingru', 'minlstm'\]"):
        CharModel(5, mode="mingru2")
    for spec in (MinGRU(3, 4), MinLSTM(3, 4, 3, bias=False), MinGRU(2, 5, 2, bidirectional=True),
                 MinLSTM(4, 2, 3, bidirectional=True)):
        shapes = spec.param_shapes()
        assert param_count(spec) == (len(shapes), sum(int(np.prod(s)) for s in shapes.values())), spec
    assert param_count(MinLSTM(2, 2, 10**8)) == (2 * 10**8, 18 + (10**8 - 1) * 18)  # no names are built
    with pytest.raises(TypeError, match="spec must be a portable_rnn.layers RNN, LSTM or GRU spec"):
        param_count("minlstm")


def test_the_state_of_a_minimal_layer_is_one_array():
    spec = MinLSTM(2, 3)
    h = np.zeros((1, 2, 3))
    assert spec.state_parts(h) == (h,) and spec.state_value((h,)) is h
    with pytest.raises(TypeError, match=r"hx must be one array .* for MinLSTM \(its one state is h\), got a tuple"):
        spec.state_parts((h, h), name="hx")


# --------------------------------------------------------------------------- the torch modules


def _torch_module(kind, **kw):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from portable_rnn import torch as prnn_torch

    torch.manual_seed(0)
    return torch, getattr(prnn_torch, {"gru": "MinGRU", "lstm": "MinLSTM"}[kind])(3, 4, dtype=torch.float64, **kw)


@pytest.mark.parametrize("kind, kw", [("gru", dict(num_layers=2, bidirectional=True, batch_first=True)),
                                      ("lstm", dict(num_layers=2, bidirectional=True, scan="sequential")),
                                      ("lstm", dict(bias=False, batch_first=True))])
def test_torch_module_gradients_are_the_specs(kind, kw):
    """Output, h_n and every gradient of the module under autograd are the spec's forward and
    hand-written backward on the same numbers (float64); the module's grad_fn is that backward."""
    torch, module = _torch_module(kind, **kw)
    spec = KINDS[kind](3, 4, **kw)
    assert [name for name, _ in module.named_parameters()] == list(spec.param_shapes())
    rng = np.random.default_rng(8)
    N, T, LD = 2, 5, spec.num_layers * spec.num_directions
    x_np = rng.normal(size=(N, T, 3) if spec.batch_first else (T, N, 3))
    h0_np = rng.normal(size=(LD, N, 4))
    x, h0 = torch.tensor(x_np, requires_grad=True), torch.tensor(h0_np, requires_grad=True)
    out, h_n = module(x, h0)
    assert type(out.grad_fn).__name__ == "_HandWrittenBPTTBackward"
    G_out, G_state = rng.normal(size=tuple(out.shape)), rng.normal(size=tuple(h_n.shape))
    ((out * torch.tensor(G_out)).sum() + (h_n * torch.tensor(G_state)).sum()).backward()

    params = {k: v.detach().numpy() for k, v in module.named_parameters()}
    want_out, want_final, tape = spec.forward(params, x_np, h0_np)
    grads, dx, dh0 = spec.backward(params, tape, G_out, G_state)
    np.testing.assert_allclose(out.detach().numpy(), want_out, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(h_n.detach().numpy(), want_final, rtol=1e-13, atol=1e-14)
    for name, weight in module.named_parameters():
        assert rel_error(weight.grad.numpy(), grads[name]) < 1e-12, name
    assert rel_error(x.grad.numpy(), dx) < 1e-12 and rel_error(h0.grad.numpy(), dh0) < 1e-12


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_torch_module_unbatched_input_init_and_optimiser_step(kind):
    torch, module = _torch_module(kind, num_layers=2)
    bound = 4 ** -0.5
    weights = torch.cat([w.detach().reshape(-1) for w in module.parameters()])
    assert weights.abs().max() <= bound and weights.abs().max() > 0.9 * bound  # U(-1/sqrt(H), 1/sqrt(H))
    assert all(w.dtype == torch.float64 for w in module.parameters())

    x, h0 = torch.randn(5, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    out, h_n = module(x, h0)
    out_b, h_n_b = module(x.unsqueeze(1), h0.unsqueeze(1))
    assert out.shape == (5, 4) and h_n.shape == (2, 4)
    torch.testing.assert_close(out, out_b[:, 0]), torch.testing.assert_close(h_n, h_n_b[:, 0])

    target = torch.randn(5, 4, dtype=torch.float64)
    optimiser = torch.optim.Adam(module.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        optimiser.zero_grad()
        loss = ((module(x)[0] - target) ** 2).mean()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_torch_modules_refuse_bad_arguments_naming_them():
    torch, module = _torch_module("lstm", num_layers=2)
    from portable_rnn.torch import MinGRU as TorchMinGRU

    x = torch.zeros(5, 2, 3, dtype=torch.float64)
    h = torch.zeros(2, 2, 4, dtype=torch.float64)
    cases = [
        (lambda: TorchMinGRU(3, 0), ValueError, "hidden_size must be an int >= 1"),
        (lambda: TorchMinGRU(3, 4, scan="log"), ValueError, "scan must be one of"),
        (lambda: TorchMinGRU(3, 4, bidirectional="yes"), ValueError, "bidirectional must be True or False"),
        (lambda: module(x[None]), ValueError, "Expected input to be 2D or 3D, got 4D"),
        (lambda: module(x.float()), ValueError, "input must have the type torch.float64"),
        (lambda: module(x[..., :2]), ValueError, "input has 2 features .* input_size = 3"),
        (lambda: module(x[:0]), ValueError, "input has no time steps"),
        (lambda: module(x, (h, h)), TypeError, r"hx must be one array .* \(its one state is h\)"),
        (lambda: module(x, h[:1]), ValueError, r"hx has shape \(1, 2, 4\); expected .* = \(2, 2, 4\)"),
        (lambda: module(x, h.float()), ValueError, "hx has dtype torch.float32"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
