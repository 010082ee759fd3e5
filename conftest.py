"""Test matrix: every backend that is installed and works, in float64 and float32.

Choose backends with ``--backend NAME`` (repeatable) or the comma-separated
``PORTABLE_RNN_BACKEND`` environment variable; by default every name in
:data:`MATRIX` is probed. A backend that is not installed, or has no device,
appears as a skip whose reason says why.

The matrix is :data:`portable_rnn.backends.BACKEND_NAMES` plus ``jax:jit``: the
JAX backend whose :meth:`tests.helpers.MatrixBackend.run` calls the function
under test through ``jax.jit``. A test opts in to it with ``@pytest.mark.jit``
and calls the code under test as ``backend.run(fn, *arrays, **static)``; on
every other backend ``run`` is a plain call. A ``jit`` test that never calls
``backend.run`` fails on ``jax:jit``: it would only repeat the ``jax`` test.
``jax:jit`` runs float64 only, and ``@pytest.mark.jit(name=[...])`` limits it to
some values of a parameter: each compile costs a second or more.

Tests of an identity of the mathematics carry ``@pytest.mark.backends("numpy",
"array_api_strict")``: NumPy runs the NumPy fast path, array-api-strict the
portable path, and every other backend is held to equality with them (or with
a float64 reference) by the tests that run on the whole matrix.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import subprocess
import tempfile

import pytest

from portable_rnn import backends
from portable_rnn.backends import BACKEND_NAMES, discover

from tests.helpers import JIT, MatrixBackend

#: Every backend id of the test matrix, in the order tables and tests use.
MATRIX = tuple(n for name in BACKEND_NAMES for n in ((name, JIT) if name == "jax" else (name,)))

#: The floating dtypes of the matrix.
DTYPES = ("float64", "float32")

#: Tolerances fitted to each dtype for comparisons with documented numbers.
TOLERANCES = {
    "float64": {"rtol": 1e-7, "atol": 1e-8},
    "float32": {"rtol": 1e-4, "atol": 1e-5},
}


def pytest_addoption(parser):
    parser.addoption(
        "--backend", action="append", default=None, choices=MATRIX,
        help="run only this backend (repeatable); default: all, or PORTABLE_RNN_BACKEND",
    )
    parser.addoption("--soak", action="store_true", default=False, help="run the soak tests")
    parser.addoption(
        "--matrix-only", action="store_true", default=False,
        help="deselect the backend-independent tests: run only what the selected backends parametrize "
             "(.ci/gpu-check runs the GPU backends so)",
    )


def _selected(config) -> list[str]:
    names = config.getoption("--backend")
    if names is None:
        env = os.environ.get("PORTABLE_RNN_BACKEND", "").strip()
        names = [n.strip() for n in env.split(",") if n.strip()] if env else MATRIX
    unknown = [n for n in names if n not in MATRIX]
    if unknown:
        raise pytest.UsageError(f"unknown backend(s) {unknown}; expected some of {list(MATRIX)}")
    return list(dict.fromkeys(names))


def _discover(names):
    """``discover`` for the matrix: ``jax:jit`` is the ``jax`` backend whose ``run`` jits."""
    library_names = [n for n in names if n != JIT]
    if JIT in names and "jax" not in library_names:
        library_names.append("jax")
    found, missing = discover(library_names)
    available, unavailable = {}, {}
    for name in names:
        library_name = "jax" if name == JIT else name
        if library_name in found:
            available[name] = MatrixBackend(found[library_name], name=name, jit=name == JIT)
        else:
            unavailable[name] = missing[library_name]
    return available, unavailable


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: long-running soak test, run with --soak")
    config.addinivalue_line(
        "markers", "jit(**subset): calls the code under test through backend.run, so it also runs on "
                   "jax:jit (float64; only for the parameter values in subset, when given)")
    config.addinivalue_line(
        "markers", "eager_jax(**subset): eager JAX (the jax id) runs only the parameter values in subset "
                   "(e.g. dtype=['float32']), where jax:jit and the other eager backends cover the rest")
    config.addinivalue_line(
        "markers", "backends(*names): run only on these backends of the matrix (an identity proven "
                   "on the reference backends, or code that serves only these)")
    config.addinivalue_line(
        "markers", "shared_program: reads the findings of a program run once per session "
                   "(tests.helpers.once_per_session); such tests are collected first, together, so that "
                   "pytest-xdist gives them to one worker and the other never waits for the program")
    config.addinivalue_line(
        "markers", "processes: starts other processes (the CLI, several JAX or torch processes, a Dask "
                   "cluster, forced host devices); -m 'not processes' leaves them out of the inner loop")
    # The test program opts in to float64 on JAX for the whole session (the library never
    # switches it): references and the float64 half of the matrix need it. float32 matmuls
    # run at full precision (no TF32 on GPUs), which the float32 tolerances assume.
    stack = contextlib.ExitStack()
    stack.enter_context(backends.jax_float64())
    stack.enter_context(backends.full_precision_matmuls())
    # Hypothesis keeps a cache under ./.hypothesis: send it to a temporary folder, so the
    # suite writes nothing into the working directory.
    try:
        import hypothesis.configuration
    except ImportError:
        pass
    else:
        home = tempfile.mkdtemp(prefix="portable-rnn-hypothesis-")
        hypothesis.configuration.set_hypothesis_home_dir(home)
        stack.callback(shutil.rmtree, home, ignore_errors=True)
        stack.callback(hypothesis.configuration.set_hypothesis_home_dir, None)
    config._prnn_stack = stack
    config._prnn_backends = _discover(_selected(config))


def pytest_unconfigure(config):
    stack = getattr(config, "_prnn_stack", None)
    if stack is not None:
        stack.close()


def _parametrized_by_the_test(metafunc, name: str) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if name in ([n.strip() for n in names.split(",")] if isinstance(names, str) else names):
            return True
    return False


def pytest_generate_tests(metafunc):
    """Parametrize ``backend`` (and ``dtype``, unless the test does) over the selected matrix."""
    uses_dtype = "dtype" in metafunc.fixturenames and not _parametrized_by_the_test(metafunc, "dtype")
    if "backend" not in metafunc.fixturenames:
        if uses_dtype:
            metafunc.parametrize("dtype", DTYPES)
        return
    available, unavailable = metafunc.config._prnn_backends
    only = metafunc.definition.get_closest_marker("backends")
    jit = metafunc.definition.get_closest_marker("jit") is not None
    params = []  # (id, MatrixBackend or None, marks)
    for name in MATRIX:
        if (name == JIT and not jit) or (only is not None and name not in only.args):
            continue
        if name in available:
            params.append((name, available[name], ()))
        elif name in unavailable:
            params.append((name, None, (pytest.mark.skip(reason=unavailable[name]),)))
    if not params:
        if only is not None:
            reason = f"runs on {', '.join(only.args)} only, and none of them is selected"
        else:
            reason = "jax:jit, the only backend selected, runs only the tests marked jit"
        params.append(("no-backend", None, (pytest.mark.skip(reason=reason),)))
    if not uses_dtype:
        metafunc.parametrize("backend", [pytest.param(value, id=name, marks=marks) for name, value, marks in params],
                             indirect=True)
        return
    # jax:jit runs the float64 half: what jax.jit changes (tracing, lax.scan, pytrees) does
    # not depend on the dtype, float32 numerics are eager JAX's, and a compile costs seconds.
    metafunc.parametrize(["dtype", "backend"], [
        pytest.param(dtype, value, id=f"{dtype}-{name}", marks=marks)
        for dtype in DTYPES for name, value, marks in params if not (name == JIT and dtype != "float64")
    ], indirect=["backend"])


@pytest.fixture
def backend(request):
    """The backend under test: a fresh :class:`~tests.helpers.MatrixBackend` per test."""
    chosen = request.param
    fresh = MatrixBackend(chosen.backend, name=chosen.name, jit=chosen.jit)
    yield fresh
    if fresh.jit and fresh.runs == 0:
        pytest.fail(f"{request.node.name} is marked jit but never called backend.run: "
                    "on jax:jit it only repeats the jax test", pytrace=False)


def _outside_subset(item, marker_name: str, backend_id: str) -> bool:
    """A ``backend_id`` item outside its ``marker_name`` marker's ``param=[values]`` subset."""
    callspec = getattr(item, "callspec", None)
    marker = item.get_closest_marker(marker_name)
    if callspec is None or marker is None or not marker.kwargs:
        return False
    if getattr(callspec.params.get("backend"), "name", None) != backend_id:
        return False
    return any(callspec.params[param] not in values for param, values in marker.kwargs.items())


def _jit_excluded(item) -> bool:
    """A ``jax:jit`` item outside its ``jit`` marker's ``param=[values]`` subset.

    Each compile costs seconds: a test may name the parameter values worth
    compiling (``@pytest.mark.jit(name=["lstm-2l-bi-lengths"])``).
    """
    return _outside_subset(item, "jit", JIT)


def _eager_jax_excluded(item) -> bool:
    """An eager ``jax`` item outside its ``eager_jax`` marker's ``param=[values]`` subset.

    Eager JAX compiles every operation once per shape and dtype: a test whose other values
    jax:jit and the other eager backends cover may name the ones eager JAX runs
    (``@pytest.mark.eager_jax(dtype=["float32"])``).
    """
    return _outside_subset(item, "eager_jax", "jax")


def pytest_collection_modifyitems(config, items):
    skip_soak = pytest.mark.skip(reason="soak test: opt in with --soak")
    for item in items:
        if "soak" in item.keywords and not config.getoption("--soak"):
            item.add_marker(skip_soak)
    if config.getoption("--matrix-only"):
        kept, independent = [], []
        for item in items:
            (kept if "backend" in getattr(item, "fixturenames", ()) else independent).append(item)
        if independent:
            config.hook.pytest_deselected(items=independent)
            items[:] = kept
    # Stable: the tests of a once-per-session program first, in their order, then every other test.
    items.sort(key=lambda item: item.get_closest_marker("shared_program") is None)
    for rule, attribute in ((_jit_excluded, "_prnn_jit_deselected"), (_eager_jax_excluded, "_prnn_eager_deselected")):
        excluded = [item for item in items if rule(item)]
        if excluded:
            config.hook.pytest_deselected(items=excluded)
            items[:] = [item for item in items if not rule(item)]
        setattr(config, attribute, len(excluded))


def _backend_of(nodeid: str) -> str:
    """The backend named in a test id's parameters (works under pytest-xdist too)."""
    if "[" in nodeid:
        for part in nodeid[nodeid.index("[") + 1 : -1].split("-"):
            if part in MATRIX:
                return part
    return "(backend-independent)"


def pytest_runtest_logreport(report):
    counts = _COUNTS
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        counts[_backend_of(report.nodeid)][report.outcome] += 1
    elif report.when == "teardown" and report.outcome == "failed":
        counts[_backend_of(report.nodeid)]["failed"] += 1


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
    deselected = getattr(config, "_prnn_jit_deselected", 0)
    if deselected:
        terminalreporter.write_line(
            f"{JIT} compiles the parameter values its tests name (@pytest.mark.jit(...)): "
            f"{deselected} other parametrizations deselected")
    deselected = getattr(config, "_prnn_eager_deselected", 0)
    if deselected:
        terminalreporter.write_line(
            f"jax (eager) runs the parameter values its tests name (@pytest.mark.eager_jax(...)): "
            f"{deselected} other parametrizations deselected")
    reasons = collections.Counter(_skip_reason(r) for r in terminalreporter.stats.get("skipped", []))
    if reasons:
        terminalreporter.section("skipped, by reason")
        for reason, n in reasons.most_common():
            terminalreporter.write_line(f"{n:5d}  {reason}")


def _skip_reason(report) -> str:
    """A skip's reason without its file and line (``-rs`` prints one line per test and place)."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.fixture
def dtype(request):
    """Floating dtype name under test (parametrized by ``pytest_generate_tests``)."""
    return request.param


@pytest.fixture
def tol(dtype):
    """assert_allclose keyword arguments fitted to ``dtype``."""
    return TOLERANCES[dtype]


@pytest.fixture(autouse=True)
def _processes_are_marked(request, monkeypatch):
    """A test that starts a process carries ``@pytest.mark.processes`` (else it fails, saying so)."""
    if request.node.get_closest_marker("processes") is None:
        def refuse(*args, **kwargs):
            raise AssertionError("this test starts a process: mark it @pytest.mark.processes")

        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
