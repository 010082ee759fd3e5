"""The ``portable-rnn`` command line.

``portable-rnn check`` (also plain ``python -m portable_rnn``) runs the
documented fixtures on every installed backend and device and prints a
pass/fail table with timings: the first thing to run after installing.
"""

from __future__ import annotations

import argparse
import sys
import time

from .backends import BACKEND_NAMES, discover
from .fixtures import FIXTURES

__all__ = ["main", "run_check"]

TOLERANCES = {"float64": (1e-7, 1e-8), "float32": (1e-4, 1e-5)}


def run_check(backends=None, out=sys.stdout) -> bool:
    """Run every documented fixture on every backend and dtype; print a table.

    Returns
    -------
    bool
        True when every fixture passed on every available backend.
    """
    available, unavailable = discover(backends)
    header = f"{'backend':26s} {'dtype':8s} {'fixtures':>9s} {'time':>9s}  result"
    print(header, file=out)
    print("-" * len(header), file=out)
    all_ok = True
    for name, backend in available.items():
        for dtype in backend.dtypes:
            rtol, atol = TOLERANCES[dtype]
            failures, start = [], time.perf_counter()
            for fixture in FIXTURES:
                try:
                    results = fixture.run(fixture.draw(), lambda a: backend.asarray(a, dtype), **fixture.options)
                    failures += [f"{fixture.name}: {p}" for p in fixture.mismatches(results, backend.to_numpy, rtol, atol)]
                except Exception as error:  # report every backend, never stop at the first
                    failures.append(f"{fixture.name}: {type(error).__name__}: {error}")
            elapsed = time.perf_counter() - start
            passed = len(FIXTURES) - len({f.split(":")[0] for f in failures})
            verdict = "PASS" if not failures else "FAIL"
            all_ok &= not failures
            print(f"{name:26s} {dtype:8s} {passed:>4d}/{len(FIXTURES):<4d} {elapsed * 1e3:7.1f}ms  {verdict}", file=out)
            for failure in failures:
                print(f"    {failure}", file=out)
    for name, reason in unavailable.items():
        print(f"{name:26s} {'-':8s} {'-':>9s} {'-':>9s}  skipped: {reason}", file=out)
    print(f"\n{'all documented numbers reproduced' if all_ok else 'SOME FIXTURES FAILED'} "
          f"on {len(available)} backend(s)", file=out)
    return all_ok


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portable-rnn",
        description="Recurrent networks with hand-written BPTT on any Array API backend.",
    )
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("check", help="run the documented fixtures on every installed backend")
    check.add_argument("--backend", action="append", choices=BACKEND_NAMES,
                       help="only this backend (repeatable); default: every one installed")
    return parser


def main(argv=None) -> int:
    """Entry point of ``portable-rnn`` and ``python -m portable_rnn``."""
    args = _parser().parse_args(argv)
    if args.command in (None, "check"):
        return 0 if run_check(getattr(args, "backend", None)) else 1
    raise AssertionError(args.command)  # argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
