"""Device discipline without a GPU: what the core may call, and what it may not copy.

Three stand-ins for a GPU catch, on a CPU-only machine, the defects that only
show on one:

- **The core's vocabulary** (``ast``, runs once): the core modules call only
  the functions of the Array API standard through ``xp`` (the names of
  ``array_api_strict``, which every array-api-compat namespace provides) and
  read only ``shape``, ``ndim`` and ``dtype`` of an array. ``.mT`` is missing
  from CuPy before 14, ``.T`` is 2-D only in the standard, ``.device`` is
  missing from NumPy before 2 (use ``array_api_compat.device``), and
  ``.size`` is a method in torch.
- **Counted host transfers** (torch on the CPU, portable path): a
  ``TorchFunctionMode`` records every tensor made from host data (what
  becomes a blocking host-to-device copy on CUDA), every move between
  devices, and every read of values on the host (``bool``, ``float``,
  ``.item()``, ``.numpy()``, ...: a device sync). The counts per call are
  the same at T = 3 and T = 9 (nothing happens per step) and equal
  :data:`PER_CALL`: no copy anywhere, and one read, the range check of
  ``lengths`` in a layer's forward.
- **Tensors without values** (torch's ``meta`` device): every public surface
  runs on them, with no host transfer; a host read would raise. The fast path
  never takes them (it would call ``.numpy()``).
"""

from __future__ import annotations

import ast
import collections
import functools
import pathlib

import pytest

import portable_rnn
from portable_rnn import cs231n, losses, optim, stepbystep
from portable_rnn.engine import kernels
from portable_rnn.layers import LAYERS
from portable_rnn.model import CharModel

ROOT = pathlib.Path(portable_rnn.__file__).parent

#: The modules that run on every backend and device. Not here: ``backends``,
#: ``_validation`` (the backend layer: library-specific code behind library
#: checks), ``init``, ``io``, ``interop`` but its course layouts, ``testing``,
#: ``app`` (host side) and ``engine/kernels`` (NumPy and CPU torch only).
CORE = ("engine/cells", "engine/sequence", "engine/loop", "trees", "activations", "layers", "stepbystep", "cs231n",
        "losses", "optim", "model", "interop/courses")

#: The array attributes the core may read: those every supported version of
#: every backend has, with one meaning.
ARRAY_ATTRIBUTES = frozenset({"shape", "ndim", "dtype"})

#: Attribute names that some array also has, read in the core on objects that
#: are not arrays.
NOT_ARRAYS = {
    "mode": "a cell's or a spec's mode, a str (torch.Tensor.mode is a reduction)",
    "values": "dict.values() of a pytree's leaves (torch.Tensor.values is for sparse tensors)",
    "max": "xp.iinfo(...).max, the standard's integer limits",
}

#: Names used as ``xp.NAME`` that are not in the standard, with why each is kept.
#: Empty: the core needs none of array-api-compat's extensions.
EXTENSIONS: dict[str, str] = {}

#: Functions that run on the host by design, documented so (``CharModel.sample``
#: draws tokens in NumPy from logits copied to the host).
HOST_SIDE = {("model", "CharModel.sample"), ("model", "_draw")}

#: Attributes of arrays of every library, whatever is installed here: CuPy's
#: host copies and the transposes and conversions that differ between libraries.
KNOWN_ARRAY_ATTRIBUTES = frozenset({
    "mT", "T", "H", "mH", "device", "size", "to_device", "astype", "reshape", "copy", "item",
    "tolist", "numpy", "cpu", "cuda", "to", "get", "set", "toDlpack", "data", "at", "sum",
})

#: Host transfers per call, by surface, on the portable path: (tensors made
#: from host data or moved between devices, reads of values on the host).
PER_CALL = {
    "layer forward and backward, with lengths": (0, 1),  # the range check of lengths
    "layer forward and backward": (0, 0),
    "losses": (0, 0),
    "optimiser step": (0, 0),
    "CharModel.loss_and_grads": (0, 0),
}


# --------------------------------------------------------------------------- the core's vocabulary


@functools.lru_cache(maxsize=1)
def _array_attributes() -> frozenset:
    """Every non-dunder attribute of an array of an installed library, and :data:`KNOWN_ARRAY_ATTRIBUTES`."""
    import array_api_strict
    import numpy as np

    arrays = [np.ones(2), array_api_strict.ones(2)]
    for library in ("torch", "jax.numpy", "cupy"):
        try:
            module = __import__(library, fromlist=["ones"])
            arrays.append(module.ones(2))
        except Exception:  # not installed, or (CuPy) no GPU
            pass
    names = {name for a in arrays for name in dir(a) if not name.startswith("__")}
    return frozenset(names | KNOWN_ARRAY_ATTRIBUTES)


def _standard_names() -> frozenset:
    import array_api_strict

    flags = {"ArrayAPIStrictFlags", "Device", "get_array_api_strict_flags",
             "reset_array_api_strict_flags", "set_array_api_strict_flags"}
    return frozenset(set(array_api_strict.__all__) - flags)


class _Uses(ast.NodeVisitor):
    """``xp.NAME`` calls and attribute reads of one module, with where they are."""

    def __init__(self, module: str, imported: set):
        self.module, self.imported = module, imported
        self.scope: list[str] = []
        self.xp_names: list[tuple[str, str]] = []  # (name, where)
        self.attributes: list[tuple[str, str]] = []  # (attribute, where)
        self.imports: list[tuple[str, str]] = []  # (module imported, where)

    def _where(self, node) -> str:
        return f"portable_rnn/{self.module}.py:{node.lineno} ({ast.unparse(node)[:60]})"

    def _host_side(self) -> bool:
        return (self.module, ".".join(self.scope)) in HOST_SIDE

    def _scoped(self, node):
        self.scope.append(node.name)
        if not self._host_side():
            self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Import(self, node):
        self.imports.extend((alias.name, self._where(node)) for alias in node.names)

    def visit_ImportFrom(self, node):
        self.imports.append((node.module or "", self._where(node)))

    def visit_Attribute(self, node):
        receiver, root = node.value, node.value
        while isinstance(root, (ast.Attribute, ast.Subscript, ast.Call)):
            root = root.func if isinstance(root, ast.Call) else root.value
        if isinstance(receiver, ast.Name) and receiver.id == "xp":
            self.xp_names.append((node.attr, self._where(node)))
        elif isinstance(root, ast.Constant):
            pass  # a method of a str literal
        elif isinstance(root, ast.Name) and root.id in self.imported | {"self", "cls"}:
            pass  # a module's function; a spec's own field (specs hold no arrays)
        else:
            self.attributes.append((node.attr, self._where(node)))
        self.generic_visit(node)


def _uses(module: str) -> _Uses:
    tree = ast.parse((ROOT / f"{module}.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imported.update((a.asname or a.name).split(".")[0] for a in node.names)
    uses = _Uses(module, imported)
    uses.visit(tree)
    return uses


@pytest.mark.parametrize("module", CORE)
def test_core_calls_only_the_standard_through_xp(module):
    """Every ``xp.NAME`` is a name of the standard (or an extension listed with its reason)."""
    standard = _standard_names() | set(EXTENSIONS)
    bad = [where for name, where in _uses(module).xp_names if name not in standard]
    assert not bad, "not in the Array API standard (array_api_strict's namespace): " + "; ".join(bad)


def test_the_standard_names_used_exist_in_every_installed_namespace():
    """array-api-compat provides every name the core calls, for each installed library."""
    import importlib

    used = {name for module in CORE for name, _ in _uses(module).xp_names}
    assert {"matrix_transpose", "permute_dims"} <= used  # the scan sees the transposes
    for library in ("array_api_compat.numpy", "array_api_compat.torch", "jax.numpy", "array_api_strict"):
        try:
            xp = importlib.import_module(library)
        except ImportError:
            continue
        missing = sorted(name for name in used if not hasattr(xp, name))
        assert not missing, f"{library} lacks {missing}"


@pytest.mark.parametrize("module", CORE)
def test_core_reads_only_portable_array_attributes(module):
    """No ``.mT``, ``.T``, ``.device``, ``.item()``, ``.numpy()``, ...: what not every backend has."""
    array_only = _array_attributes() - ARRAY_ATTRIBUTES - set(NOT_ARRAYS)
    bad = [where for attr, where in _uses(module).attributes if attr in array_only]
    assert not bad, "array attributes outside shape/ndim/dtype: " + "; ".join(bad)


@pytest.mark.parametrize("module", CORE)
def test_core_never_imports_numpy(module):
    """NumPy only inside the host-side functions of :data:`HOST_SIDE`."""
    bad = [where for name, where in _uses(module).imports if name.split(".")[0] == "numpy"]
    assert not bad, "; ".join(bad)


def test_the_scan_finds_what_it_forbids():
    """The checker itself: ``.mT``, ``.T``, ``.item()`` and ``xp.linalg_norm`` are caught."""
    source = "def f(a, xp):\n    return a.mT @ a.T + a.sum(0).item() + xp.linalg_norm(a) + xp.tanh(a)\n"
    uses = _Uses("example", set())
    uses.visit(ast.parse(source))
    array_only = _array_attributes() - ARRAY_ATTRIBUTES - set(NOT_ARRAYS)
    assert [a for a, _ in uses.attributes if a in array_only] == ["mT", "T", "item", "sum"]
    assert [n for n, _ in uses.xp_names if n not in _standard_names()] == ["linalg_norm"]


# --------------------------------------------------------------------------- counted host transfers


def _torch():
    return pytest.importorskip("torch", reason="torch: not installed, needed as the stand-in for a GPU")


def _counter():
    """A ``TorchFunctionMode`` that counts host-to-device copies and host reads."""
    torch = _torch()
    from torch.overrides import TorchFunctionMode

    from_host = {torch.asarray, torch.tensor, torch.as_tensor, torch.from_numpy, torch.scalar_tensor}
    reads = {"item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "__array__"}

    def moved(tensor, target) -> bool:
        return target is not None and torch.device(target) != tensor.device

    def target_of_to(args, kwargs):
        """The device ``Tensor.to(...)`` moves to, or None (a dtype change only)."""
        if kwargs.get("device") is not None:
            return kwargs["device"]
        for a in args[1:]:
            if isinstance(a, (str, torch.device)):
                return a
            if isinstance(a, torch.Tensor):
                return a.device
        return None

    class Count(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.copies, self.reads = collections.Counter(), collections.Counter()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", str(func))
            if func in from_host and args:
                data = args[0]
                if not isinstance(data, torch.Tensor) or moved(data, kwargs.get("device")):
                    self.copies[f"{name}({type(data).__name__})"] += 1
            elif name in reads:
                self.reads[name] += 1
            elif name == "to" and isinstance(args[0], torch.Tensor):
                if moved(args[0], target_of_to(args, kwargs)):
                    self.copies["to"] += 1
            elif name in ("cpu", "cuda", "copy_"):
                src = args[1] if name == "copy_" else args[0]
                if name != "copy_" or src.device != args[0].device:
                    (self.reads if name == "cpu" else self.copies)[name] += 1
            return func(*args, **kwargs)

        @property
        def totals(self) -> tuple[int, int]:
            return sum(self.copies.values()), sum(self.reads.values())

    return Count()


def _layer_surface(mode, dev, T, lengths, seed=0):
    """A 2-layer bidirectional layer: forward and backward with truncated BPTT."""
    torch = _torch()
    spec = LAYERS[mode](3, 4, 2, bidirectional=True)
    params = spec.init(seed, xp=torch, dtype="float64", device=dev)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, 5, 3, dtype=torch.float64, generator=gen).to(dev)
    ell = torch.tensor([T, 1, 2, T, T - 1], device=dev) if lengths else None

    def run():
        out, final, tape = spec.forward(params, x, lengths=ell)
        return spec.backward(params, tape, torch.ones_like(out), final, truncate=2)

    return run


def _losses_surface(dev, T, seed=0):
    torch = _torch()
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(T, 4, 7, dtype=torch.float64, generator=gen).to(dev)
    y = torch.randint(0, 7, (T, 4), generator=gen).to(dev)
    p = torch.rand(T, 4, 7, dtype=torch.float64, generator=gen).to(dev)
    mask = (torch.rand(T, 4, generator=gen) > 0.3).to(dev)

    def run():
        return [loss(z, t, m, reduction=r)
                for loss, t in ((losses.softmax_cross_entropy, y), (losses.sigmoid_binary_cross_entropy, p))
                for m in (None, mask) for r in ("mean", "sum")]

    return run


def _optimiser_surface(dev, T, seed=0):
    torch = _torch()
    params = LAYERS["lstm"](3, 4).init(seed, xp=torch, dtype="float64", device=dev)
    grads = {k: v * 3.0 for k, v in params.items()}
    optimisers = [optim.adam(1e-3), optim.adamw(1e-3), optim.adam(1e-3, b1=0.0, b2=0.0),
                  optim.sgd(0.1, momentum=0.9, dampening=0.1)]
    states = [opt.init(params) for opt in optimisers]

    def run():
        clipped, _ = optim.clip_by_global_norm(grads, 1.0)
        clipped = optim.clip_by_value(clipped, 0.5)
        return [opt.update(clipped, s, params) for opt, s in zip(optimisers, states)]

    return run


def _model_surface(dev, T, seed=0):
    torch = _torch()
    model = CharModel(11, 8, num_layers=2)
    params = model.init(seed, xp=torch, dtype="float64", device=dev)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 11, (3, T), generator=gen).to(dev)
    targets = torch.randint(0, 11, (3, T), generator=gen).to(dev)
    return lambda: model.loss_and_grads(params, tokens, targets, truncate=2)


SURFACES = {
    "layer forward and backward, with lengths": lambda dev, T: _layer_surface("lstm", dev, T, True),
    "layer forward and backward": lambda dev, T: _layer_surface("gru", dev, T, False),
    "losses": _losses_surface,
    "optimiser step": _optimiser_surface,
    "CharModel.loss_and_grads": _model_surface,
}


@pytest.mark.parametrize("surface", list(PER_CALL))
def test_host_transfers_per_call_do_not_grow_with_time(surface):
    """Torch on the CPU, portable path (the one CUDA runs): :data:`PER_CALL` at T = 3 and T = 9."""
    counts = {}
    for T in (3, 9):
        run = SURFACES[surface]("cpu", T)
        counter = _counter()
        with kernels.portable_only(), counter:
            run()
        counts[T] = counter.totals
        details = dict(counter.copies) | dict(counter.reads)
        assert counter.totals == PER_CALL[surface], f"T={T}: {details}"
    assert counts[3] == counts[9]


def test_the_counter_sees_copies_and_reads():
    """The counter itself: a Python scalar made a tensor, a device move and a host read."""
    torch = _torch()
    import array_api_compat.torch as xp

    x = torch.ones(3, dtype=torch.float64)
    counter = _counter()
    with counter:
        torch.asarray(1.0, dtype=x.dtype, device=x.device)  # what xp.maximum(x, 1.0) does on torch
        xp.asarray([0.0, 1.0], dtype=x.dtype, device=x.device)
        x.to("meta")
        bool(xp.all(x > 0))
        float(xp.sum(x))
        xp.ones((), dtype=x.dtype, device=x.device) + 1.0 - x * 0.5  # made on the device: nothing
    assert counter.totals == (3, 2), (counter.copies, counter.reads)


# --------------------------------------------------------------------------- tensors without values


def _meta(*shape, dtype="float64"):
    torch = _torch()
    return torch.empty(shape, dtype=getattr(torch, dtype), device="meta")


def _stepbystep_surface():
    """Every function of the step-by-step face, forward and backward."""
    n_x, n_a, n_y, m, T = 3, 4, 2, 5, 6
    rnn_p = {"Wax": _meta(n_a, n_x), "Waa": _meta(n_a, n_a), "Wya": _meta(n_y, n_a),
             "ba": _meta(n_a, 1), "by": _meta(n_y, 1)}
    lstm_p = {f"W{g}": _meta(n_a, n_a + n_x) for g in "fico"}
    lstm_p.update({f"b{g}": _meta(n_a, 1) for g in "fico"}, Wy=_meta(n_y, n_a), by=_meta(n_y, 1))
    x, a0, da = _meta(n_x, m, T), _meta(n_a, m), _meta(n_a, m, T)
    step = _meta(n_a, m)

    def run():
        a_next, _, cache = stepbystep.rnn_cell_forward(x[:, :, 0], a0, rnn_p)
        stepbystep.rnn_cell_backward(step, cache)
        _, _, caches = stepbystep.rnn_forward(x, a0, rnn_p)
        stepbystep.rnn_backward(da, caches, truncate=2)
        _, _, _, cache = stepbystep.lstm_cell_forward(x[:, :, 0], a0, a0, lstm_p)
        stepbystep.lstm_cell_backward(step, step, cache)
        _, _, _, caches = stepbystep.lstm_forward(x, a0, lstm_p)
        stepbystep.lstm_backward(da, caches, truncate=2)

    return run


def _cs231n_surface():
    """Every function of the CS231n face, forward and backward."""
    torch = _torch()
    N, T, D, H, V = 2, 5, 3, 4, 7
    x, h0 = _meta(N, T, D), _meta(N, H)
    words = torch.empty((N, T), dtype=torch.int64, device="meta")
    mask = torch.empty((N, T), dtype=torch.bool, device="meta")

    def run():
        h, cache = cs231n.rnn_step_forward(x[:, 0, :], h0, _meta(D, H), _meta(H, H), _meta(H))
        cs231n.rnn_step_backward(h, cache)
        hs, cache = cs231n.rnn_forward(x, h0, _meta(D, H), _meta(H, H), _meta(H))
        cs231n.rnn_backward(hs, cache)
        lstm_w = (_meta(D, 4 * H), _meta(H, 4 * H), _meta(4 * H))
        h, c, cache = cs231n.lstm_step_forward(x[:, 0, :], h0, h0, *lstm_w)
        cs231n.lstm_step_backward(h, c, cache)
        hs, cache = cs231n.lstm_forward(x, h0, *lstm_w)
        cs231n.lstm_backward(hs, cache)
        out, cache = cs231n.word_embedding_forward(words, _meta(V, D))
        cs231n.word_embedding_backward(out, cache)
        scores, cache = cs231n.temporal_affine_forward(hs, _meta(H, V), _meta(V))
        _, dscores = cs231n.temporal_softmax_loss(scores, words, mask)
        cs231n.temporal_affine_backward(dscores, cache)

    return run


META_SURFACES = {
    "layers rnn": lambda: _layer_surface("rnn", "meta", 6, False),
    "layers lstm": lambda: _layer_surface("lstm", "meta", 6, False),
    "layers gru": lambda: _layer_surface("gru", "meta", 6, False),
    "stepbystep": _stepbystep_surface,
    "cs231n": _cs231n_surface,
    "losses": lambda: _losses_surface("meta", 6),
    "optim": lambda: _optimiser_surface("meta", 6),
    "CharModel.loss_and_grads": lambda: _model_surface("meta", 6),
}


@pytest.mark.parametrize("surface", list(META_SURFACES))
def test_public_surfaces_run_on_tensors_without_values(surface):
    """On the ``meta`` device a host read raises; nothing is copied to the device either."""
    run = META_SURFACES[surface]()
    counter = _counter()
    before = dict(kernels.calls)
    with counter:
        run()
    assert counter.totals == (0, 0), (counter.copies, counter.reads)
    assert dict(kernels.calls) == before  # the fast path would call .numpy()


def test_lengths_without_values_say_they_need_the_host():
    """The range check of ``lengths`` is the one documented host read: without values, a clear error."""
    torch = _torch()
    spec = LAYERS["lstm"](3, 4)
    params = spec.init(0, xp=torch, dtype="float64", device="meta")
    lengths = torch.empty((2,), dtype=torch.int64, device="meta")
    with pytest.raises(TypeError, match=r"lengths cannot be read on the host.*1 <= lengths <= T"):
        spec.forward(params, _meta(5, 2, 3), lengths=lengths)


def test_sampling_says_it_needs_host_values():
    """``CharModel.sample`` draws on the host (documented): without values it says so."""
    torch = _torch()
    model = CharModel(5, 4)
    params = model.init(0, xp=torch, device="meta")
    with pytest.raises(TypeError, match="cannot be copied to the host"):
        model.sample(params, [1, 2], 3)


def test_fast_path_refuses_tensors_without_values():
    _torch()
    import array_api_compat.torch as xt

    cell = LAYERS["lstm"](3, 4).cell
    x, h = _meta(5, 2, 3), _meta(2, 4)
    W_ih, W_hh = _meta(16, 3), _meta(16, 4)
    assert kernels.why_not_forward(cell, x, (h, h), W_ih, W_hh, None, None, None, xp=xt) is not None


# --------------------------------------------------------------------------- the dtype the library made


INITS = {
    "layer": lambda jnp: LAYERS["lstm"](3, 4).init(xp=jnp, dtype="float64"),
    "layer like x": lambda jnp: LAYERS["gru"](3, 4).init(like=jnp.ones((2, 1, 3)), dtype="float64"),
    "CharModel": lambda jnp: CharModel(5, 4).init(xp=jnp, dtype="float64"),
}


@pytest.mark.parametrize("make", list(INITS))
def test_init_refuses_float64_that_jax_makes_float32(make):
    """Without x64 JAX silently makes float32: ``init`` refuses, saying how to get float64."""
    import warnings

    jax = pytest.importorskip("jax", reason="jax: not installed")
    import jax.numpy as jnp

    from portable_rnn.backends import BackendError, jax_float64

    previous = bool(jax.config.jax_enable_x64)  # the test session turns x64 on (conftest)
    jax.config.update("jax_enable_x64", False)
    try:
        with warnings.catch_warnings(), pytest.raises(BackendError, match=r"float32 .*float64.*jax_float64"):
            warnings.simplefilter("ignore", UserWarning)  # JAX's own "not available" warning
            INITS[make](jnp)
        with jax_float64():
            made = INITS[make](jnp)
        assert {str(a.dtype) for a in made.values()} == {"float64"}
    finally:
        jax.config.update("jax_enable_x64", previous)
