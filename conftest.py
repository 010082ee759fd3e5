"""Test matrix: every backend that is installed and works, in float64 and float32.

Choose backends with ``--backend NAME`` (repeatable) or the comma-separated
``PORTABLE_RNN_BACKEND`` environment variable; by default every backend in
:data:`portable_rnn.backends.BACKEND_NAMES` is probed. A backend that is not
installed, or has no device, appears as a skip whose reason says why.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from portable_rnn.backends import BACKEND_NAMES, discover

#: Tolerances fitted to each dtype for comparisons with documented numbers.
TOLERANCES = {
    "float64": {"rtol": 1e-7, "atol": 1e-8},
    "float32": {"rtol": 1e-4, "atol": 1e-5},
}


def pytest_addoption(parser):
    parser.addoption(
        "--backend", action="append", default=None, choices=BACKEND_NAMES,
        help="run only this backend (repeatable); default: all, or PORTABLE_RNN_BACKEND",
    )
    parser.addoption("--soak", action="store_true", default=False, help="run the soak tests")


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: long-running soak test, run with --soak")
    available, unavailable = discover(config.getoption("--backend"))
    config._prnn_backends = (available, unavailable)


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    available, unavailable = metafunc.config._prnn_backends
    params = [pytest.param(b, id=name) for name, b in available.items()]
    params += [
        pytest.param(None, id=name, marks=pytest.mark.skip(reason=reason))
        for name, reason in unavailable.items()
    ]
    metafunc.parametrize("backend", params)


def pytest_collection_modifyitems(config, items):
    skip_soak = pytest.mark.skip(reason="soak test: opt in with --soak")
    for item in items:
        if "soak" in item.keywords and not config.getoption("--soak"):
            item.add_marker(skip_soak)


def _backend_of(nodeid: str) -> str:
    """The backend named in a test id's parameters (works under pytest-xdist too)."""
    if "[" in nodeid:
        for part in nodeid[nodeid.index("[") + 1 : -1].split("-"):
            if part in BACKEND_NAMES:
                return part
    return "(backend-independent)"


def pytest_runtest_logreport(report):
    counts = _COUNTS
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        counts[_backend_of(report.nodeid)][report.outcome] += 1


_COUNTS = collections.defaultdict(collections.Counter)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _COUNTS:
        return
    terminalreporter.section("tests per backend")
    for backend in sorted(_COUNTS):
        c = _COUNTS[backend]
        terminalreporter.write_line(
            f"{backend:28s} passed {c['passed']:5d}  failed {c['failed']:3d}  skipped {c['skipped']:3d}"
        )


@pytest.fixture(params=["float64", "float32"])
def dtype(request):
    """Floating dtype name under test."""
    return request.param


@pytest.fixture
def tol(dtype):
    """assert_allclose keyword arguments fitted to ``dtype``."""
    return TOLERANCES[dtype]


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)
