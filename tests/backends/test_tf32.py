"""TF32 matmuls miss ``portable-rnn check``'s float32 tolerance; full precision meets it.

NVIDIA GPUs from Ampere on multiply float32 matrices in TF32 when allowed (JAX
does by default): each operand keeps 10 of its 23 mantissa bits, products
are accumulated in float32. Without a GPU the rounding is simulated on NumPy:
:class:`TF32Array` is an ``ndarray`` subclass whose matmul-like calls round
their float32 operands to TF32 (round to nearest, ties to even, on the bit
pattern) before NumPy multiplies them in float32. The exact-type check of the
NumPy fast path refuses the subclass, so the fixtures run the portable code,
and every call keeps the subclass (checked), so no matmul escapes the
rounding. Hardware may truncate instead of rounding, which is only worse.
"""

from __future__ import annotations

import numpy as np
import pytest

from portable_rnn import backends
from portable_rnn.app import check
from portable_rnn.backends import to_host
from portable_rnn.testing.fixtures import FIXTURES

_DOT_UFUNCS = tuple(u for u in (np.matmul, getattr(np, "vecdot", None), getattr(np, "matvec", None),
                                getattr(np, "vecmat", None)) if u is not None)
_DOT_FUNCTIONS = (np.dot, np.vdot, np.tensordot, np.inner, np.einsum)


def to_tf32(a) -> np.ndarray:
    """float32 -> the nearest TF32 value (10 explicit mantissa bits, ties to even), still float32."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    odd = (bits >> 13) & np.uint32(1)
    rounded = (bits + np.uint32(0x0FFF) + odd) & np.uint32(0xFFFFE000)
    finite = (bits & np.uint32(0x7F800000)) != np.uint32(0x7F800000)
    return np.where(finite, rounded, bits).view(np.float32)


def _plain(x):
    """``x`` with every :class:`TF32Array` in it (nested in tuples, lists, dicts) viewed as ``ndarray``."""
    if isinstance(x, TF32Array):
        return x.view(np.ndarray)
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def _wrapped(x):
    """NumPy results back as :class:`TF32Array`, so that the next call is intercepted too."""
    if type(x) is np.ndarray:
        return x.view(TF32Array)
    if isinstance(x, tuple):
        return tuple(_wrapped(v) for v in x)
    return x


class TF32Array(np.ndarray):
    """An ndarray whose matmuls round float32 operands to TF32 when :attr:`rounding` is on.

    ``matmuls`` counts the matmul-like calls it intercepted.
    """

    rounding = True
    matmuls = 0

    @classmethod
    def _operand(cls, a):
        a = _plain(a)
        if cls.rounding and isinstance(a, np.ndarray) and a.dtype == np.float32:
            return to_tf32(a)
        return a

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        dot = ufunc in _DOT_UFUNCS and method == "__call__"
        TF32Array.matmuls += dot
        inputs = tuple(TF32Array._operand(a) if dot else _plain(a) for a in inputs)
        return _wrapped(getattr(ufunc, method)(*inputs, **_plain(kwargs)))

    def __array_function__(self, func, types, args, kwargs):
        dot = func in _DOT_FUNCTIONS
        TF32Array.matmuls += dot
        args = tuple(TF32Array._operand(a) if dot else _plain(a) for a in args)
        return _wrapped(func(*args, **_plain(kwargs)))


@pytest.fixture
def tf32():
    """Sets ``TF32Array.rounding``; leaves the class as it found it."""
    saved = TF32Array.rounding, TF32Array.matmuls

    def set_rounding(on):
        TF32Array.rounding, TF32Array.matmuls = on, 0

    yield set_rounding
    TF32Array.rounding, TF32Array.matmuls = saved


def _convert(a):
    return np.asarray(a, dtype=np.float32).view(TF32Array)


def _arrays(x):
    if isinstance(x, np.ndarray):
        yield x
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _arrays(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _arrays(v)


def test_tf32_rounding_keeps_ten_mantissa_bits_to_nearest_even():
    eps = 2.0**-10  # TF32's spacing at 1
    x = np.array([1 + eps / 2, 1 + 3 * eps / 2, 1 + eps, -(1 + eps / 2 + 2**-20), np.inf, np.nan], np.float32)
    got = to_tf32(x)
    assert got[:4].tolist() == [1.0, 1 + 2 * eps, 1 + eps, -(1 + eps)]
    assert np.isposinf(got[4]) and np.isnan(got[5])
    y = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    r = to_tf32(y)
    assert not np.any(r.view(np.uint32) & np.uint32(0x1FFF))
    assert np.max(np.abs(r - y) / np.abs(y)) <= 2.0**-11


def test_the_simulation_covers_every_matmul_of_every_fixture(tf32):
    tf32(True)
    for fixture in FIXTURES:
        before = TF32Array.matmuls
        results = fixture.run(fixture.draw(), _convert, **fixture.options)
        assert TF32Array.matmuls > before, fixture.name
        leaked = [type(a).__name__ for a in _arrays(results) if not isinstance(a, TF32Array)]
        assert not leaked, (fixture.name, leaked)  # a plain ndarray would multiply unrounded


def test_tf32_misses_checks_float32_tolerance_on_every_fixture_and_full_precision_meets_it(tf32):
    tf32(False)
    assert check.fixture_failures(_convert, to_host, "float32") == []
    tf32(True)
    failed = {line.split(":")[0] for line in check.fixture_failures(_convert, to_host, "float32")}
    assert failed == {f.name for f in FIXTURES}


# --------------------------------------------------------------------------- the policy


def test_the_test_session_runs_float32_matmuls_at_full_precision():
    jax = pytest.importorskip("jax")
    assert jax.config.jax_default_matmul_precision == "highest"


def test_full_precision_matmuls_turns_tf32_off_and_restores_the_settings():
    jax = pytest.importorskip("jax")
    backend = backends.resolve("jax")
    before = jax.config.jax_default_matmul_precision
    with backends.full_precision_matmuls():
        assert jax.config.jax_default_matmul_precision == "highest"
        assert backends.matmul_precision(backend) == "jax_default_matmul_precision='highest' (TF32 off)"
    assert jax.config.jax_default_matmul_precision == before


def test_full_precision_matmuls_sets_torch_and_restores_it():
    torch = pytest.importorskip("torch")
    backend = backends.resolve("torch")
    before = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("high")
    try:
        assert backends.matmul_precision(backend).endswith("(TF32 on for CUDA matmuls)")
        with backends.full_precision_matmuls():
            assert backends.matmul_precision(backend) == (
                "allow_tf32=False, float32_matmul_precision='highest' (TF32 off)")
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cuda.matmul.allow_tf32 = before[1]


def test_cupy_precision_follows_cupy_tf32(monkeypatch):
    cupy_like = backends.Backend("cupy", "cupy", None, None)
    monkeypatch.delenv("CUPY_TF32", raising=False)
    assert backends.matmul_precision(cupy_like) == "CUPY_TF32='0' (TF32 off)"
    monkeypatch.setenv("CUPY_TF32", "1")
    assert backends.matmul_precision(cupy_like) == "CUPY_TF32='1' (TF32 on)"


def test_check_prints_the_precision_each_backend_ran_with(monkeypatch, capsys):
    names = ["numpy"] + [n for n in ("jax", "torch") if n in backends.discover([n])[0]]
    seen = {}

    def no_fixtures(backend, dtype):  # the fixtures are tested above; here only what check prints
        seen[backend.name] = backends.matmul_precision(backend)
        return []

    monkeypatch.setattr(check, "_backend_failures", no_fixtures)
    assert check.run_check(names)
    text = capsys.readouterr().out
    lines = text.split("float32 matmuls:\n", 1)[1].splitlines()
    for name in names:
        assert f"  {name:24s} {seen[name]}" in lines, (name, lines)
        assert seen[name].endswith("(TF32 off)"), seen[name]
