"""Optimisers and clipping against torch.optim and torch.nn.utils, on every backend.

float64 agrees with PyTorch (float64) to 1e-12 after several steps; float32,
run from the float32-rounded inputs, to a float32-fitted 1e-5 against the same
float64 reference, computed once per configuration. The params are a nested dict with a matrix, a vector and a
0-d leaf (NumPy's 0-d arithmetic returns scalars, which must not leak out).
"""

from __future__ import annotations

import doctest
import functools
import math

import numpy as np
import pytest

import portable_rnn.optim as optim
from portable_rnn.optim import (
    adam,
    adamw,
    apply_updates,
    clip_by_global_norm,
    clip_by_value,
    sgd,
    tree_map,
)

from ..helpers import assert_on_backend

#: (rtol, atol) against the float64 reference, per dtype of the computation.
OPT_TOL = {"float64": (1e-12, 1e-14), "float32": (1e-5, 1e-6)}
SHAPES = {"W": (3, 2), "b": (2,), "inner": {"s": ()}}
N_STEPS = 4


def _torch():
    return pytest.importorskip("torch", reason="torch: not installed, needed as the reference")


def _flat(tree):
    """Leaves of a nested dict in insertion order."""
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _flat(v)]
    return [tree]


def _draw(rng, dtype, scale=1.0):
    """A nested dict shaped like SHAPES, float64 values already rounded to ``dtype``."""

    def leaf(shape):
        return np.asarray(scale * rng.normal(size=shape), dtype=dtype).astype(np.float64)

    return {"W": leaf(SHAPES["W"]), "b": leaf(SHAPES["b"]), "inner": {"s": leaf(SHAPES["inner"]["s"])}}


def _on(backend, tree, dtype):
    return tree_map(lambda a: backend.asarray(a, dtype), tree)


def _torch_run(make, params, grads_seq):
    """Apply ``make(torch_params)`` for each grads dict; params after every step."""
    torch = _torch()
    tparams = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in _flat(params)]
    opt = make(tparams)
    history = []
    for grads in grads_seq:
        for p, g in zip(tparams, _flat(grads)):
            p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        history.append([p.detach().numpy().copy() for p in tparams])
    return history


def _check_tree(backend, dtype, got, expected_leaves):
    rtol, atol = OPT_TOL[dtype]
    for leaf, shape, expected in zip(_flat(got), _flat_shapes(), expected_leaves):
        assert_on_backend(backend, leaf, dtype, shape)
        np.testing.assert_allclose(backend.to_numpy(leaf), expected, rtol=rtol, atol=atol)


def _flat_shapes():
    return [SHAPES["W"], SHAPES["b"], SHAPES["inner"]["s"]]


@functools.lru_cache(maxsize=None)
def _torch_history(kind, config, dtype):
    """Host params, gradients and torch.optim's params after each step: once per configuration."""
    torch = _torch()
    kw = dict(CONFIGS[kind][config])
    b1, b2 = kw.pop("b1", 0.9), kw.pop("b2", 0.999)
    make = {
        "sgd": lambda ps: torch.optim.SGD(ps, foreach=False, **kw),
        "adam": lambda ps: torch.optim.Adam(ps, betas=(b1, b2), foreach=False, **kw),
        "adamw": lambda ps: torch.optim.AdamW(ps, betas=(b1, b2), foreach=False, **kw),
    }[kind]
    rng = np.random.default_rng({"sgd": 0, "adam": 10, "adamw": 20}[kind] + len(config))
    params = _draw(rng, dtype)
    grads_seq = [_draw(rng, dtype) for _ in range(N_STEPS)]
    return params, grads_seq, _torch_run(make, params, grads_seq)


def _ours(kind, config):
    kw = dict(CONFIGS[kind][config])
    if kind == "sgd":
        return sgd(**kw)
    b1, b2 = kw.pop("b1", 0.9), kw.pop("b2", 0.999)
    return {"adam": adam, "adamw": adamw}[kind](b1=b1, b2=b2, **kw)


def _compare_with_torch(backend, dtype, kind, config):
    params, grads_seq, expected = _torch_history(kind, config, dtype)
    ours = _ours(kind, config)
    p = _on(backend, params, dtype)
    state = ours.init(p)
    for step, (grads, exp) in enumerate(zip(grads_seq, expected), start=1):
        p, state = backend.run(ours.update, _on(backend, grads, dtype), state, p)
        _check_tree(backend, dtype, p, exp)
        assert_on_backend(backend, state["step"], "int32", ())
        assert int(backend.to_numpy(state["step"])) == step
        for key, buf in state.items():
            if key != "step":
                _check_tree_meta(backend, dtype, buf)


def _check_tree_meta(backend, dtype, tree):
    for leaf, shape in zip(_flat(tree), _flat_shapes()):
        assert_on_backend(backend, leaf, dtype, shape)


SGD_CONFIGS = {
    "plain": {"lr": 0.1},
    "momentum": {"lr": 0.05, "momentum": 0.9},
    "nesterov": {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    "weight_decay": {"lr": 0.1, "weight_decay": 0.01},
    "all": {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1},
    "dampening": {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.05},
}

ADAM_CONFIGS = {
    "default": {"lr": 1e-3},
    "custom": {"lr": 0.05, "b1": 0.8, "b2": 0.99, "eps": 1e-6},
    "l2": {"lr": 0.01, "weight_decay": 0.1},
    "b1_zero": {"lr": 0.01, "b1": 0.0},
}

ADAMW_CONFIGS = {
    "default": {"lr": 1e-3},
    "strong_decay": {"lr": 0.05, "weight_decay": 0.5, "b1": 0.85, "b2": 0.95, "eps": 1e-7},
    "no_decay": {"lr": 0.01, "weight_decay": 0.0},
}

CONFIGS = {"sgd": SGD_CONFIGS, "adam": ADAM_CONFIGS, "adamw": ADAMW_CONFIGS}


@pytest.mark.jit(config=["all", "dampening"])
@pytest.mark.parametrize("config", list(SGD_CONFIGS))
def test_sgd_matches_torch(backend, dtype, config):
    _compare_with_torch(backend, dtype, "sgd", config)


@pytest.mark.jit(config=["l2"])
@pytest.mark.parametrize("config", list(ADAM_CONFIGS))
def test_adam_matches_torch(backend, dtype, config):
    _compare_with_torch(backend, dtype, "adam", config)


@pytest.mark.jit(config=["strong_decay"])
@pytest.mark.parametrize("config", list(ADAMW_CONFIGS))
def test_adamw_matches_torch(backend, dtype, config):
    _compare_with_torch(backend, dtype, "adamw", config)


def test_adamw_decays_before_the_adam_step():
    """With zero gradients Adam's step is 0, so AdamW leaves p (1 - lr wd)^t."""
    params = {"w": np.asarray([1.0, -2.0])}
    opt = adamw(0.1, weight_decay=0.5)
    state = opt.init(params)
    p = params
    for _ in range(3):
        p, state = opt.update({"w": np.zeros(2)}, state, p)
    np.testing.assert_allclose(p["w"], params["w"] * 0.95**3, rtol=1e-15)


# ---------------------------------------------------------------- clipping


@functools.lru_cache(maxsize=None)
def _torch_clip(dtype, max_norm):
    """Host gradients, torch's norm and clipped gradients: once per configuration."""
    torch = _torch()
    grads = _draw(np.random.default_rng(30), dtype, scale=2.0)
    tgrads = [torch.tensor(g, dtype=torch.float64, requires_grad=True) for g in _flat(grads)]
    for t, g in zip(tgrads, _flat(grads)):
        t.grad = torch.tensor(g, dtype=torch.float64)
    expected_norm = torch.nn.utils.clip_grad_norm_(tgrads, max_norm, foreach=False).item()
    return grads, expected_norm, [t.grad.numpy() for t in tgrads]


@pytest.mark.jit(max_norm=[0.5])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_by_global_norm_matches_torch(backend, dtype, max_norm):
    grads, expected_norm, expected = _torch_clip(dtype, max_norm)
    clipped, norm = backend.run(clip_by_global_norm, _on(backend, grads, dtype), max_norm=max_norm)
    rtol, atol = OPT_TOL[dtype]
    assert_on_backend(backend, norm, dtype, ())
    np.testing.assert_allclose(backend.to_numpy(norm), expected_norm, rtol=rtol)
    _check_tree(backend, dtype, clipped, expected)
    if max_norm > expected_norm:  # no clipping: the gradients come back unchanged
        for got, g in zip(_flat(clipped), _flat(grads)):
            np.testing.assert_allclose(backend.to_numpy(got), g, rtol=rtol, atol=atol)


def test_clip_by_value_matches_torch(backend, dtype):
    torch = _torch()
    grads = _draw(np.random.default_rng(31), dtype, scale=2.0)
    clipped = clip_by_value(_on(backend, grads, dtype), 1.5)
    expected = [torch.clamp(torch.tensor(g), -1.5, 1.5).numpy() for g in _flat(grads)]
    _check_tree(backend, dtype, clipped, expected)


# ---------------------------------------------------------------- contracts


def test_tree_helpers(backend):
    params = _on(backend, _draw(np.random.default_rng(32), "float64"), "float64")
    updates = tree_map(lambda p: -p, params)
    zero = apply_updates(params, updates)
    _check_tree(backend, "float64", zero, [np.zeros(s) for s in _flat_shapes()])
    assert tree_map(lambda a, b: a + b, {"x": [1, (2, 3)]}, {"x": [10, (20, 30)]}) == {"x": [11, (22, 33)]}


def test_bad_arguments(backend):
    p = _on(backend, _draw(np.random.default_rng(33), "float64"), "float64")
    g = tree_map(lambda a: a, p)
    opt = adam(1e-3)
    state = opt.init(p)
    with pytest.raises(ValueError, match="structure"):
        opt.update({"W": g["W"], "b": g["b"]}, state, p)
    with pytest.raises(ValueError, match=r"grads\['W'\]"):
        opt.update({**g, "W": backend.asarray(np.ones((2, 3)))}, state, p)
    with pytest.raises(TypeError, match=r"grads\['b'\]"):
        opt.update({**g, "b": backend.asarray(np.ones(2), "float32")}, state, p)
    with pytest.raises(TypeError, match="floating"):
        opt.init({"W": backend.asarray(np.ones(2), "int64")})
    with pytest.raises(ValueError, match="state"):
        opt.update(g, {"step": state["step"]}, p)
    with pytest.raises(ValueError, match="no arrays"):
        opt.init({})
    with pytest.raises(TypeError, match="array"):
        clip_by_value({"W": [1.0, 2.0]}, 1.0)
    with pytest.raises(TypeError, match="float32"):
        clip_by_global_norm({"a": backend.asarray(np.ones(2)), "b": backend.asarray(np.ones(2), "float32")}, 1.0)


@pytest.mark.parametrize("make", [
    lambda: sgd(-0.1), lambda: sgd(0.1, momentum=-1.0), lambda: sgd(0.1, nesterov=True),
    lambda: sgd(0.1, momentum=0.9, nesterov=True, dampening=0.1), lambda: adam(0.1, b1=1.0),
    lambda: adam(0.1, b2=-0.1), lambda: adamw(0.1, weight_decay=-1.0), lambda: adam(0.1, eps=-1.0),
    lambda: clip_by_value({"a": np.ones(2)}, -1.0), lambda: clip_by_global_norm({"a": np.ones(2)}, -1.0),
])
def test_bad_hyperparameters(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("make", [
    lambda bad: sgd(bad), lambda bad: sgd(0.1, momentum=bad), lambda bad: sgd(0.1, weight_decay=bad),
    lambda bad: adam(bad), lambda bad: adam(0.1, eps=bad), lambda bad: adamw(0.1, weight_decay=bad),
])
@pytest.mark.parametrize("bad", [math.inf, math.nan, 10**400])
def test_non_finite_hyperparameters_are_refused(make, bad):
    with pytest.raises(ValueError, match="must be a finite number"):
        make(bad)


def test_infinite_clipping_bounds_clip_nothing():
    grads = {"a": np.asarray([3.0, -4.0])}
    np.testing.assert_array_equal(clip_by_value(grads, math.inf)["a"], grads["a"])
    clipped, norm = clip_by_global_norm(grads, math.inf)
    np.testing.assert_array_equal(clipped["a"], grads["a"])
    assert norm == 5.0
    with pytest.raises(ValueError, match="max_norm"):
        clip_by_global_norm(grads, math.nan)


def test_hyperparameters_must_be_python_numbers():
    with pytest.raises(TypeError, match="lr"):
        adam(np.asarray(1e-3))
    with pytest.raises(TypeError, match="momentum"):
        sgd(0.1, momentum=True)


def test_mixed_devices():
    strict = pytest.importorskip("array_api_strict")
    params = {"a": strict.asarray([1.0, 2.0]), "b": strict.asarray([1.0], device=strict.Device("device1"))}
    with pytest.raises(ValueError, match="device"):
        sgd(0.1).init(params)
    p = {"a": strict.asarray([1.0, 2.0])}
    with pytest.raises(ValueError, match="device"):
        sgd(0.1).update({"a": strict.asarray([1.0, 2.0], device=strict.Device("device1"))},
                        sgd(0.1).init(p), p)


OPTIMIZERS = [
    pytest.param(lambda: sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.1), id="sgd"),
    pytest.param(lambda: sgd(0.1, momentum=0.9, dampening=0.5), id="sgd_dampening"),
    pytest.param(lambda: adam(0.01, weight_decay=0.1), id="adam"),
    pytest.param(lambda: adamw(0.01), id="adamw"),
]


def _read_only(tree):
    def freeze(a):
        a = np.array(a)
        a.setflags(write=False)
        return a

    return tree_map(freeze, tree)


@pytest.mark.parametrize("make", OPTIMIZERS)
def test_inputs_are_never_mutated(make):
    rng = np.random.default_rng(34)
    params, grads = _read_only(_draw(rng, "float64")), _read_only(_draw(rng, "float64"))
    opt = make()
    state = _read_only(opt.init(params))
    snapshot = [tree_map(np.copy, t) for t in (params, grads, state)]
    new_params, new_state = opt.update(grads, state, params)
    opt.update(grads, _read_only(new_state), _read_only(new_params))
    clip_by_value(grads, 0.1)
    clip_by_global_norm(grads, 0.1)
    apply_updates(params, grads)
    for tree, snap in zip((params, grads, state), snapshot):
        for a, s in zip(_flat(tree), _flat(snap)):
            np.testing.assert_array_equal(a, s)
    assert all(isinstance(a, np.ndarray) for a in _flat(new_params))  # 0-d stays an array


def test_optax_docs_example():
    """The module docstring's examples, including the optax snippet, run as written."""
    pytest.importorskip("jax", reason="jax: not installed (pip install 'portable-rnn[jax]')")
    pytest.importorskip("optax", reason="optax: not installed")
    test = doctest.DocTestParser().get_doctest(optim.__doc__, {}, "portable_rnn.optim", None, 0)
    assert any("optax.apply_updates" in ex.source for ex in test.examples)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed"
