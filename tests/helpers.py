"""The backend of the test matrix, and assertions shared by the test modules."""

from __future__ import annotations

import functools
import json
import os

import numpy as np
import pytest
from array_api_compat import array_namespace, device

from portable_rnn.backends import BACKEND_NAMES
from portable_rnn.engine.cells import CELLS

#: The matrix id of JAX under ``jax.jit`` (a test-matrix id, not a backend of the library).
JIT = "jax:jit"

#: Every backend but eager JAX: for tests whose eager-JAX run would only repeat ``jax:jit``'s
#: numbers, at seconds per case (eager JAX compiles each new operation shape).
NOT_EAGER_JAX = pytest.mark.backends(*(name for name in (*BACKEND_NAMES, JIT) if name != "jax"))


class MatrixBackend:
    """A :class:`portable_rnn.backends.Backend` of the test matrix, and how a test calls the code under test.

    Attributes are those of the wrapped backend (``xp``, ``device``, ``library``,
    ``asarray``, ``to_numpy``), except ``name``, the matrix id: ``jax:jit`` wraps
    the ``jax`` backend with ``jit=True``.
    """

    def __init__(self, backend, name: str | None = None, jit: bool = False):
        self.backend = backend
        self.name = name or backend.name
        self.jit = jit
        self.runs = 0

    def __getattr__(self, attr):
        if attr == "backend":  # not set yet (copy, pickle): no recursion
            raise AttributeError(attr)
        return getattr(self.backend, attr)

    def __repr__(self):
        return f"MatrixBackend({self.name!r})"

    def run(self, fn, *args, **static):
        """``fn(*args, **static)``; on ``jax:jit`` compiled by ``jax.jit``.

        ``args`` are pytrees of arrays (traced under jit); ``static`` are the
        Python values the function is specialised on (``truncate=2``), bound
        before compiling.
        """
        self.runs += 1
        if not self.jit:
            return fn(*args, **static)
        key = tuple(sorted(static.items()))
        try:
            hash(key)
        except TypeError:  # an unhashable static value: compile for this call only
            return _jitted.__wrapped__(fn, key)(*args)
        return _jitted(fn, key)(*args)


@functools.lru_cache(maxsize=256)
def _jitted(fn, static):
    """One compiled function per (function, static arguments), shared by the tests that call it."""
    import jax

    return jax.jit(functools.partial(fn, **dict(static)))


def once_per_session(tmp_path_factory, name: str, compute) -> dict:
    """``compute(folder)`` (a JSON-able dict) once per test session, shared by the pytest-xdist workers.

    For an expensive program whose findings tests in several workers read (a subprocess with
    forced JAX devices): the first worker to ask runs it in a fresh folder under the session's
    temporary root, holding a lock; the others wait and read what it wrote. Nothing is kept
    between sessions. A failed ``compute`` writes nothing, so each test that asks fails alike.
    """
    import fcntl  # POSIX, like the process handling of the tests that need this

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base folders sit side by side in the session's root
    found = root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not found.is_file():
            result = compute(tmp_path_factory.mktemp(name))
            found.with_suffix(".partial").write_text(json.dumps(result))
            found.with_suffix(".partial").replace(found)
        return json.loads(found.read_text())


def every_cell() -> dict:
    """Every cell of :data:`portable_rnn.engine.cells.CELLS` by test id; the RNN with each nonlinearity.

    Tests that iterate over it cover a new cell without being edited.
    """
    cells = {}
    for mode, cls in CELLS.items():
        if mode == "rnn":
            cells.update({f"rnn_{nl}": cls(nl) for nl in ("tanh", "relu")})
        else:
            cells[mode] = cls()
    return cells


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


def float64_close(backend, got, ref, what: str) -> None:
    """``got`` (an array of ``backend``) equals the float64 reference ``ref`` to 1e-10."""
    np.testing.assert_allclose(backend.to_numpy(got), ref, rtol=1e-10, atol=1e-12, err_msg=what)


def rel_error(a, b, floor: float = 1e-300) -> float:
    """Largest elementwise error relative to the largest magnitude of ``b``.

    ``floor`` bounds the scale from below, for references that are zero up to
    their own noise (a finite difference of ~1e-14 where the gradient is 0).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.max(np.abs(b), initial=0.0), floor)
    return float(np.max(np.abs(a - b), initial=0.0) / scale)


def _reversed_within(x, lengths):
    """Each sequence of time-major torch ``x`` reversed within its own length (padding stays in place)."""
    import torch

    steps = torch.arange(x.shape[0])
    idx = torch.stack([torch.where(steps < n, n - 1 - steps, steps) for n in lengths], dim=1)
    return torch.take_along_dim(x, idx[:, :, None], dim=0)


def torch_stacked_reference(spec, params, x, state0: dict, lengths, truncate, direction):
    """Eager torch float64 autograd of a stacked, possibly bidirectional layer from its equations.

    ``direction(x, state, weights, lengths, truncate) -> (out, final_state)`` runs one
    direction over time-major ``x`` (already reversed), ``state`` a tuple of (N, *) tensors and
    ``weights`` that layer and direction's parameters by their name without the ``_l{k}``
    suffix. ``state0`` maps a name to a NumPy array (L*dirs, N, *) per state part.

    Returns the leaves (parameters, ``"x"`` and the names of ``state0``, each requiring
    grad), the last layer's output and the final states, one (L*dirs, N, *) tensor per part.
    """
    import torch

    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in {**params, "x": x, **state0}.items()}
    lens = torch.tensor(lengths)
    inp, finals = leaves["x"], []
    for k in range(spec.num_layers):
        outs = []
        for d in range(spec.num_directions):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            weights = {stem: leaves[name] for name in params
                       for stem, _, rest in [name.rpartition("_l")] if stem and "_l" + rest == suffix}
            state = tuple(leaves[name][k * spec.num_directions + d] for name in state0)
            out, final = direction(_reversed_within(inp, lens) if d else inp, state, weights, lens, truncate)
            outs.append(_reversed_within(out, lens) if d else out)
            finals.append(final)
        inp = torch.cat(outs, dim=-1)
    return leaves, inp, tuple(torch.stack(part) for part in zip(*finals))
