"""Assertions shared by the test modules."""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, device


def assert_on_backend(backend, result, dtype: str, shape=None):
    """``result`` is an array of ``backend``'s namespace, ``dtype`` and device."""
    assert array_namespace(result) is backend.xp, (
        f"namespace {array_namespace(result).__name__}, expected {backend.xp.__name__}"
    )
    assert result.dtype == getattr(backend.xp, dtype), f"dtype {result.dtype}, expected {dtype}"
    assert device(result) == backend.device, f"device {device(result)}, expected {backend.device}"
    if shape is not None:
        assert tuple(result.shape) == tuple(shape), f"shape {tuple(result.shape)}, expected {shape}"


def assert_close(backend, result, expected, dtype: str, rtol: float, atol: float = 0.0, shape=None):
    """Check namespace, dtype, device and shape, then the values on the host."""
    assert_on_backend(backend, result, dtype, shape)
    np.testing.assert_allclose(backend.to_numpy(result), expected, rtol=rtol, atol=atol)


def rel_error(a, b, floor: float = 1e-300) -> float:
    """Largest elementwise error relative to the largest magnitude of ``b``.

    ``floor`` bounds the scale from below, for references that are zero up to
    their own noise (a finite difference of ~1e-14 where the gradient is 0).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.max(np.abs(b), initial=0.0), floor)
    return float(np.max(np.abs(a - b), initial=0.0) / scale)
