"""Masked losses and their gradients on every backend and dtype.

References: PyTorch's ``F.cross_entropy`` / ``F.binary_cross_entropy_with_logits``
(reduction "none", then masked and reduced by hand) and their autograd
gradients, in float64. Our float64 results agree to 1e-10 relative; float32
results, computed from the float32-rounded inputs, to a float32-fitted 2e-5.
References are computed once per configuration, whatever the backend under test.
"""

from __future__ import annotations

import functools
import warnings
import zlib

import numpy as np
import pytest

from portable_rnn.testing.gradcheck import numerical_gradient
from portable_rnn.losses import sigmoid_binary_cross_entropy, softmax_cross_entropy

from ..helpers import assert_on_backend

#: (rtol, atol) against the float64 reference, per dtype of the computation.
LOSS_TOL = {"float64": (1e-10, 1e-13), "float32": (2e-5, 2e-6)}

# JAX compiles every eager operation once per shape and dtype (~0.5 s per loss),
# so the grids share one logits shape; other leading shapes are checked in float64.
SHAPE = (3, 2, 4)  # logits (T, N, V), classes last
OTHER_SHAPES = [(4,), (1, 2, 3, 4)]
MASKS = ["none", "bool", "float01", "weights"]
REDUCTIONS = ["mean", "sum"]


def _torch():
    torch = pytest.importorskip("torch", reason="torch: not installed, needed as the reference")
    return torch, torch.nn.functional


def _draw_mask(rng, kind, shape):
    if kind == "none":
        return None
    if kind == "weights":
        return rng.uniform(0.0, 2.0, size=shape)
    keep = rng.uniform(size=shape) < 0.7
    return keep if kind == "bool" else keep.astype(np.float64)


def _to_backend(backend, dtype, mask):
    if mask is None:
        return None
    return backend.asarray(mask, "bool" if mask.dtype == bool else dtype)


def _reduce_ref(torch, per, m, reduction):
    total = (per * m).sum()
    return total if reduction == "sum" else total / torch.clamp(m.sum(), min=1.0)


def _ce_reference(logits, targets, mask, reduction):
    """Loss and gradient from torch autograd, float64 (callers cache it: see _ce_host)."""
    torch, F = _torch()
    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    V = logits.shape[-1]
    per = F.cross_entropy(z.reshape(-1, V), torch.tensor(targets).reshape(-1), reduction="none")
    per = per.reshape(targets.shape)
    m = torch.ones(targets.shape, dtype=torch.float64) if mask is None else torch.tensor(
        np.asarray(mask, dtype=np.float64))
    loss = _reduce_ref(torch, per, m, reduction)
    loss.backward()
    return loss.item(), z.grad.numpy()


def _bce_reference(logits, targets, mask, reduction):
    torch, F = _torch()
    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    per = F.binary_cross_entropy_with_logits(
        z, torch.tensor(targets, dtype=torch.float64), reduction="none")
    if mask is None:
        m = torch.ones(logits.shape, dtype=torch.float64)
    else:
        m = torch.tensor(np.asarray(mask, dtype=np.float64))
        if m.ndim < z.ndim:
            m = m[..., None].expand(z.shape)
    loss = _reduce_ref(torch, per, m, reduction)
    loss.backward()
    return loss.item(), z.grad.numpy()


def _rounded(a, dtype):
    """The float64 value of ``a`` after rounding to ``dtype``."""
    return np.asarray(a, dtype=dtype).astype(np.float64)


def _check(backend, dtype, got, expected_loss, expected_grad, shape):
    loss, grad = got
    rtol, atol = LOSS_TOL[dtype]
    assert_on_backend(backend, loss, dtype, ())
    assert_on_backend(backend, grad, dtype, shape)
    np.testing.assert_allclose(backend.to_numpy(loss), expected_loss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(backend.to_numpy(grad), expected_grad, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- softmax cross-entropy


def _seed(*key) -> int:
    return zlib.crc32(repr(key).encode())


@functools.lru_cache(maxsize=None)
def _ce_host(shape, mask_kind, dtype):
    """Host inputs rounded to ``dtype`` and the torch reference per reduction: once per configuration."""
    rng = np.random.default_rng(_seed(shape, mask_kind, "ce"))
    logits = _rounded(3 * rng.normal(size=shape), dtype)
    targets = rng.integers(0, shape[-1], size=shape[:-1])
    mask = _draw_mask(rng, mask_kind, shape[:-1])
    if mask is not None:
        mask = _rounded(mask, dtype) if mask.dtype != bool else mask
    expected = {reduction: _ce_reference(logits, targets, mask, reduction) for reduction in REDUCTIONS}
    return logits, targets, mask, expected


def _ce_case(backend, dtype, shape, mask_kind):
    logits, targets, mask, expected = _ce_host(shape, mask_kind, dtype)
    args = (backend.asarray(logits, dtype), backend.asarray(targets, "int64"),
            _to_backend(backend, dtype, mask))
    for reduction in REDUCTIONS:
        got = backend.run(softmax_cross_entropy, *args, reduction=reduction)
        _check(backend, dtype, got, *expected[reduction], shape)


@pytest.mark.jit(mask_kind=["bool"])
@pytest.mark.parametrize("mask_kind", MASKS)
def test_softmax_cross_entropy_matches_torch(backend, dtype, mask_kind):
    _ce_case(backend, dtype, SHAPE, mask_kind)


@pytest.mark.parametrize("shape", OTHER_SHAPES, ids=str)
def test_softmax_cross_entropy_any_leading_axes(backend, shape):
    _ce_case(backend, "float64", shape, "bool")


def test_softmax_cross_entropy_unmasked_mean_is_torch_mean(backend, dtype):
    torch, F = _torch()
    rng = np.random.default_rng(1)
    logits, targets = rng.normal(size=(3, 2, 4)), rng.integers(0, 4, size=(3, 2))
    expected = F.cross_entropy(torch.tensor(logits).reshape(-1, 4), torch.tensor(targets).reshape(-1))
    loss, _ = softmax_cross_entropy(backend.asarray(logits, dtype), backend.asarray(targets, "int32"))
    np.testing.assert_allclose(backend.to_numpy(loss), expected.item(), rtol=LOSS_TOL[dtype][0] * 10)


@functools.lru_cache(maxsize=None)
def _finite_differences(fn):
    """Inputs (float64, host) and finite differences of ``fn``'s loss on NumPy: once per loss."""
    if fn is softmax_cross_entropy:
        rng = np.random.default_rng(2)
        logits = rng.normal(size=(3, 2, 4))
        targets, mask = rng.integers(0, 4, size=(3, 2)), rng.uniform(size=(3, 2)) < 0.6
    else:
        rng = np.random.default_rng(6)
        logits = rng.normal(size=(3, 2, 4))
        targets, mask = rng.uniform(size=(3, 2, 4)), rng.uniform(0, 2, size=(3, 2, 4))
    numeric = numerical_gradient(lambda d: float(fn(d["z"], targets, mask)[0]), {"z": logits})["z"]
    return logits, targets, mask, numeric


@pytest.mark.parametrize("fn", [softmax_cross_entropy, sigmoid_binary_cross_entropy], ids=lambda f: f.__name__)
def test_gradient_matches_finite_differences(backend, fn):
    """Each backend's gradient against finite differences of the float64 loss on NumPy."""
    logits, targets, mask, numeric = _finite_differences(fn)
    kinds = {"i": "int64", "b": "bool", "f": "float64"}
    _, grad = fn(*(backend.asarray(a, kinds[a.dtype.kind]) for a in (logits, targets, mask)))
    np.testing.assert_allclose(backend.to_numpy(grad), numeric, rtol=1e-8, atol=1e-10)


@functools.lru_cache(maxsize=None)
def _extreme_ce(dtype, scale):
    rng = np.random.default_rng(3)
    logits = scale * np.sign(rng.normal(size=(3, 2, 4))) * rng.uniform(0.5, 1.0, size=(3, 2, 4))
    logits = _rounded(logits, dtype)
    targets = rng.integers(0, 4, size=(3, 2))
    return logits, targets, _ce_reference(logits, targets, None, "mean")


@pytest.mark.parametrize("scale", [1e2, 1e3, 1e4])
def test_softmax_cross_entropy_extreme_logits(backend, dtype, scale):
    logits, targets, (expected_loss, expected_grad) = _extreme_ce(dtype, scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = softmax_cross_entropy(backend.asarray(logits, dtype), backend.asarray(targets, "int64"))
        loss_np, grad_np = backend.to_numpy(loss), backend.to_numpy(grad)
    assert np.isfinite(loss_np) and np.all(np.isfinite(grad_np))
    rtol, atol = LOSS_TOL[dtype]
    np.testing.assert_allclose(loss_np, expected_loss, rtol=rtol)
    np.testing.assert_allclose(grad_np, expected_grad, rtol=rtol, atol=atol)


def test_softmax_cross_entropy_all_masked_is_zero(backend, dtype):
    logits = backend.asarray(np.ones((3, 2, 4)), dtype)
    targets = backend.asarray(np.zeros((3, 2)), "int64")
    for reduction in REDUCTIONS:
        loss, grad = softmax_cross_entropy(
            logits, targets, backend.asarray(np.zeros((3, 2), dtype=bool), "bool"), reduction)
        assert_on_backend(backend, loss, dtype, ())
        assert backend.to_numpy(loss) == 0 and not np.any(backend.to_numpy(grad))


# ---------------------------------------------------------------- sigmoid binary cross-entropy


@functools.lru_cache(maxsize=None)
def _bce_host(shape, mask_kind, dtype):
    """Host inputs rounded to ``dtype`` and the torch reference per reduction: once per configuration."""
    rng = np.random.default_rng(_seed(shape, mask_kind, "bce"))
    logits = _rounded(3 * rng.normal(size=shape), dtype)
    targets = _rounded(rng.uniform(size=shape), dtype)  # probabilities, not only labels
    if mask_kind == "bool_per_step":
        mask = _draw_mask(rng, "bool", shape[:-1])
    else:
        mask = _draw_mask(rng, mask_kind, shape)
    if mask is not None and mask.dtype != bool:
        mask = _rounded(mask, dtype)
    expected = {reduction: _bce_reference(logits, targets, mask, reduction) for reduction in REDUCTIONS}
    return logits, targets, mask, expected


def _bce_case(backend, dtype, shape, mask_kind):
    logits, targets, mask, expected = _bce_host(shape, mask_kind, dtype)
    args = (backend.asarray(logits, dtype), backend.asarray(targets, dtype),
            _to_backend(backend, dtype, mask))
    for reduction in REDUCTIONS:
        got = backend.run(sigmoid_binary_cross_entropy, *args, reduction=reduction)
        _check(backend, dtype, got, *expected[reduction], shape)


@pytest.mark.jit(mask_kind=["bool_per_step"])
@pytest.mark.parametrize("mask_kind", MASKS + ["bool_per_step"])
def test_sigmoid_bce_matches_torch(backend, dtype, mask_kind):
    _bce_case(backend, dtype, SHAPE, mask_kind)


@pytest.mark.parametrize("shape", OTHER_SHAPES, ids=str)
def test_sigmoid_bce_any_shape(backend, shape):
    _bce_case(backend, "float64", shape, "bool_per_step" if len(shape) > 1 else "float01")


def test_sigmoid_bce_bool_targets_and_torch_mean(backend, dtype):
    torch, F = _torch()
    rng = np.random.default_rng(4)
    logits, labels = rng.normal(size=(3, 2, 4)), rng.uniform(size=(3, 2, 4)) < 0.5
    expected = F.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(labels, dtype=torch.float64))
    loss, _ = sigmoid_binary_cross_entropy(backend.asarray(logits, dtype), backend.asarray(labels, "bool"))
    np.testing.assert_allclose(backend.to_numpy(loss), expected.item(), rtol=LOSS_TOL[dtype][0] * 10)


def test_sigmoid_bce_is_the_lecture_formula():
    """-y log(yhat) - (1-y) log(1-yhat) where that form is itself accurate."""
    rng = np.random.default_rng(5)
    z, y = rng.normal(size=20), rng.uniform(size=20)
    yhat = 1 / (1 + np.exp(-z))
    naive = -y * np.log(yhat) - (1 - y) * np.log(1 - yhat)
    loss, grad = sigmoid_binary_cross_entropy(z, y, reduction="sum")
    np.testing.assert_allclose(loss, naive.sum(), rtol=1e-12)
    np.testing.assert_allclose(grad, yhat - y, rtol=1e-12, atol=1e-15)


@functools.lru_cache(maxsize=None)
def _extreme_bce(dtype, scale):
    rng = np.random.default_rng(7)
    logits = _rounded(scale * np.sign(rng.normal(size=(3, 2, 4))), dtype)
    targets = _rounded(rng.uniform(size=(3, 2, 4)) < 0.5, dtype)
    return logits, targets, _bce_reference(logits, targets, None, "mean")


@pytest.mark.parametrize("scale", [1e2, 1e3, 1e4])
def test_sigmoid_bce_extreme_logits(backend, dtype, scale):
    logits, targets, (expected_loss, expected_grad) = _extreme_bce(dtype, scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = sigmoid_binary_cross_entropy(backend.asarray(logits, dtype), backend.asarray(targets, dtype))
        loss_np, grad_np = backend.to_numpy(loss), backend.to_numpy(grad)
    assert np.isfinite(loss_np) and np.all(np.isfinite(grad_np))
    rtol, atol = LOSS_TOL[dtype]
    np.testing.assert_allclose(loss_np, expected_loss, rtol=rtol)
    np.testing.assert_allclose(grad_np, expected_grad, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- contracts


LOSSES = [softmax_cross_entropy, sigmoid_binary_cross_entropy]


def _inputs(backend, fn, dtype="float64"):
    rng = np.random.default_rng(8)
    logits = backend.asarray(rng.normal(size=(3, 2, 4)), dtype)
    if fn is softmax_cross_entropy:
        return logits, backend.asarray(rng.integers(0, 4, size=(3, 2)), "int64"), (3, 2)
    return logits, backend.asarray(rng.uniform(size=(3, 2, 4)), dtype), (3, 2, 4)


@pytest.mark.parametrize("fn", LOSSES, ids=lambda f: f.__name__)
def test_bad_arguments(backend, fn):
    logits, targets, mask_shape = _inputs(backend, fn)
    with pytest.raises(TypeError, match="logits"):
        fn(backend.asarray(np.ones((3, 2, 4)), "int64"), targets)
    with pytest.raises(ValueError, match="targets"):
        fn(logits, backend.asarray(np.ones((2, 3)), "int64" if fn is softmax_cross_entropy else "float64"))
    with pytest.raises(ValueError, match="mask"):
        fn(logits, targets, backend.asarray(np.ones((3, 5)), "bool"))
    with pytest.raises(TypeError, match="mask"):
        fn(logits, targets, backend.asarray(np.ones(mask_shape), "int64"))
    with pytest.raises(TypeError, match="mask"):
        fn(logits, targets, backend.asarray(np.ones(mask_shape), "float32"))
    with pytest.raises(ValueError, match="reduction"):
        fn(logits, targets, reduction="none")
    with pytest.raises(TypeError, match="targets"):
        bad = np.ones(targets.shape)
        fn(logits, backend.asarray(bad, "float64" if fn is softmax_cross_entropy else "int64"))
    with pytest.raises(TypeError, match="array"):
        fn(logits, [0, 1])


def test_softmax_cross_entropy_shape_errors(backend):
    with pytest.raises(ValueError, match="class"):
        softmax_cross_entropy(backend.asarray(np.ones((3, 0))), backend.asarray(np.zeros(3), "int64"))
    with pytest.raises(ValueError, match="logits"):
        softmax_cross_entropy(backend.asarray(np.float64(1.0)), backend.asarray(np.int64(0), "int64"))
    with pytest.raises(TypeError, match="targets"):
        softmax_cross_entropy(backend.asarray(np.ones((3, 2))), backend.asarray(np.ones(3, dtype=bool), "bool"))


def test_mixed_libraries_and_devices():
    strict = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match="library"):
        softmax_cross_entropy(np.ones((3, 2)), strict.asarray([0, 1, 0]))
    dev1 = strict.Device("device1")
    logits = strict.asarray(np.ones((3, 2)), device=dev1)
    with pytest.raises(ValueError, match="device"):
        softmax_cross_entropy(logits, strict.asarray([0, 1, 0]))
    with pytest.raises(ValueError, match="device"):
        sigmoid_binary_cross_entropy(logits, strict.asarray(np.ones((3, 2))))


@pytest.mark.parametrize("fn", LOSSES, ids=lambda f: f.__name__)
def test_inputs_are_never_mutated(fn):
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(3, 2, 4))
    targets = rng.integers(0, 4, size=(3, 2)) if fn is softmax_cross_entropy else rng.uniform(size=(3, 2, 4))
    mask = rng.uniform(size=targets.shape[:2]) < 0.5
    arrays = (logits, targets, mask)
    snapshot = [a.copy() for a in arrays]
    for a in arrays:
        a.setflags(write=False)
    fn(*arrays)
    for a, s in zip(arrays, snapshot):
        np.testing.assert_array_equal(a, s)


def test_sigmoid_pair_is_sigmoid_of_x_and_of_minus_x_bit_for_bit():
    """``sigmoid_pair(x)`` shares one exponential and still gives :func:`sigmoid`'s own numbers, NaN included."""
    from portable_rnn.activations import sigmoid, sigmoid_pair

    x = np.concatenate([np.linspace(-800, 800, 4001), [0.0, -0.0, np.nan, np.inf, -np.inf]])
    for dtype in (np.float32, np.float64):
        pos, neg = sigmoid_pair(x.astype(dtype))
        np.testing.assert_array_equal(pos, sigmoid(x.astype(dtype)))
        np.testing.assert_array_equal(neg, sigmoid(-x.astype(dtype)))
