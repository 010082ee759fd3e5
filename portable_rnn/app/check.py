"""``portable-rnn check``: the documented numbers of the two exercises on every backend and dtype."""

from __future__ import annotations

import sys
import time

from .. import backends
from ..testing.fixtures import FIXTURES
from .errors import UsageError

__all__ = ["TOLERANCES", "fixture_failures", "run_check"]

#: ``dtype -> (rtol, atol)`` against the printed numbers (8 significant digits). The float32
#: pair holds for full-precision float32 matmuls; TF32 matmuls miss it (tests/backends/test_tf32.py).
TOLERANCES = {"float64": (1e-7, 1e-8), "float32": (1e-4, 1e-5)}


def fixture_failures(convert, to_numpy, dtype: str) -> list[str]:
    """Every fixture at ``dtype``'s tolerance: one line per mismatch or error.

    Parameters
    ----------
    convert : callable
        Float64 NumPy input -> the array the fixture runs on.
    to_numpy : callable
        A result array -> NumPy.
    dtype : {"float32", "float64"}
        Picks the tolerance from :data:`TOLERANCES`.
    """
    rtol, atol = TOLERANCES[dtype]
    failures = []
    for fixture in FIXTURES:
        try:
            results = fixture.run(fixture.draw(), convert, **fixture.options)
            failures += [f"{fixture.name}: {p}" for p in fixture.mismatches(results, to_numpy, rtol, atol)]
        except Exception as error:  # report every backend, never stop at the first
            failures.append(f"{fixture.name}: {type(error).__name__}: {error}")
    return failures


def _backend_failures(backend: backends.Backend, dtype: str) -> list[str]:
    """:func:`fixture_failures` on ``backend``, inside its device context (CuPy's current GPU)."""
    with backend.context():
        return fixture_failures(lambda a: backend.asarray(a, dtype), backend.to_numpy, dtype)


def run_check(backend_names=None, out=None) -> bool:
    """Run every documented fixture on every backend and dtype; print a table.

    JAX runs with float64 enabled (:func:`portable_rnn.backends.jax_float64`)
    and every library with full-precision float32 matmuls
    (:func:`portable_rnn.backends.full_precision_matmuls`: TF32 would miss
    the float32 tolerance) for the duration of the call; the lines after the
    table say how each backend ran its float32 matmuls.

    Parameters
    ----------
    backend_names : list of str, optional
        Names from :data:`portable_rnn.backends.BACKEND_NAMES`; default every
        one (those that cannot run are listed as skipped).

    Raises
    ------
    UsageError
        A backend named in ``backend_names`` cannot run here (not installed,
        no device): one line saying why.
    out : file, optional
        Where the table goes (default ``sys.stdout`` at call time).

    Returns
    -------
    bool
        True when every fixture passed on every available backend.
    """
    out = sys.stdout if out is None else out
    all_ok = True
    with backends.jax_float64(), backends.full_precision_matmuls():
        available, unavailable = backends.discover(backend_names)
        if backend_names and unavailable:  # asked for by name: checking nothing is not a pass
            name, reason = next(iter(unavailable.items()))
            raise UsageError(f"--backend {name}: {reason}")
        header = f"{'backend':26s} {'dtype':8s} {'fixtures':>9s} {'time':>9s}  result"
        print(header, file=out)
        print("-" * len(header), file=out)
        for name, backend in available.items():
            for dtype in backends.DTYPES:
                start = time.perf_counter()
                failures = _backend_failures(backend, dtype)
                elapsed = time.perf_counter() - start
                passed = len(FIXTURES) - len({f.split(":")[0] for f in failures})
                all_ok &= not failures
                print(f"{name:26s} {dtype:8s} {passed:>4d}/{len(FIXTURES):<4d} {elapsed * 1e3:7.1f}ms  "
                      f"{'FAIL' if failures else 'PASS'}", file=out)
                for failure in failures:
                    print(f"    {failure}", file=out)
        for name, reason in unavailable.items():
            print(f"{name:26s} {'-':8s} {'-':>9s} {'-':>9s}  skipped: {reason}", file=out)
        print("\nfloat32 matmuls:", file=out)
        for name, backend in available.items():
            print(f"  {name:24s} {backends.matmul_precision(backend)}", file=out)
    print(f"\n{'all documented numbers reproduced' if all_ok else 'SOME FIXTURES FAILED'} "
          f"on {len(available)} backend(s)", file=out)
    return all_ok
