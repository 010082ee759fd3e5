"""PyTorch's generic module tests, held against the drop-ins.

``torch.testing._internal.common_modules.module_db`` (shipped in the torch
wheel) has one ``ModuleInfo`` entry for each of ``nn.RNN``, ``nn.GRU`` and
``nn.LSTM``: constructor and forward samples (unbatched inputs checked against
the ``no_batch_dim`` references), error samples with the exception type and a
regex for its message, and the flags PyTorch's ``test/test_modules.py`` reads
(``train_and_eval_differ``, dtypes, decorators, ``gradcheck_fast_mode``). This
file walks those entries of the installed torch, substitutes
``portable_rnn.torch.RNN/GRU/LSTM`` for the entry's class, and checks for every
sample what ``test_modules.py`` checks (our own code, one test function per
check, parametrized over (entry, dtype); training and eval modes, and the
``swap``/``set_grad`` variants of ``test_to``, are looped inside as PyTorch
parametrizes them). Each failure names the sample.

As in ``test_modules.py``: ``test_grad``/``test_gradgrad`` run in float64 only
(``gradcheck``/``gradgradcheck`` with ``check_batched_grad=True`` and fast
mode, first the total derivative over the input, ``hx`` and every parameter,
then each parameter alone; PyTorch's whole schedule of them takes minutes on
two cores, so it runs with ``--soak`` and a documented subset by default, see
``_gradient_checks``; ``test_non_contiguous_tensors`` likewise runs eval mode
with ``--soak`` only); ``test_to``/``test_to_empty`` in float32 only;
``test_if_train_and_eval_modes_differ`` in training mode only; every other
check in float32 and float64 and, the entries having
``train_and_eval_differ=True``, in both modes. Tolerances are those of
``TestModule.assertEqual``: at least 1e-5 absolute and relative, dtypes exact.
The entries' decorators that are active on the device are honoured (on a CPU
today only ``skipMPS``, which skips nothing there); an ``expectedFailure`` or
skip active on the device would make the check skip, saying so. The device is
the CPU unless ``PORTABLE_RNN_TORCH_DEVICE`` names another (``cuda``: what
``.ci/gpu-check`` runs on a GPU machine); ``test_device_ctx_init`` is
PyTorch's CPU-only check and stays on the CPU.

``test_check_inplace`` runs in PyTorch only for modules whose constructor
takes ``inplace``; the recurrent modules do not, so here it checks that the
drop-in does not take it either, then skips, saying so.

Importing ``common_modules`` costs about 10 s (once per session) and needs
``expecttest`` (``common_utils`` subclasses its ``TestCase``); where that
package is missing, a stand-in exposing ``unittest.TestCase`` is used for the
import only. The import's global side effects (``disable_global_flags`` on
``torch.backends``, a Hypothesis profile, profiling wrappers around
TorchScript calls) are undone at once so the rest of the suite is unaffected.

The private switch ``_PRNN_MODULE_DB_SUBJECT=torch.nn`` runs every check
against ``torch.nn``'s own classes, to show the checks are PyTorch's: all of
them pass there (torch 2.13, CPU). ``tests/faces/test_torch_nn_contract.py`` reads
the same switch.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import itertools
import os
import sys
import types
import unittest
from unittest import mock

import pytest

torch = pytest.importorskip("torch")
from torch.utils import _pytree as pytree  # noqa: E402

import portable_rnn.torch as prt  # noqa: E402

# The device the checks run on, as test_modules.py runs once per device type: the CPU, or the one
# PORTABLE_RNN_TORCH_DEVICE names (.ci/gpu-check sets cuda on a GPU machine).
DEVICE = torch.device(os.environ.get("PORTABLE_RNN_TORCH_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip(f"PORTABLE_RNN_TORCH_DEVICE={DEVICE} but torch sees no CUDA device", allow_module_level=True)


def _load_module_db():
    """``module_db`` and ``ModuleErrorEnum``, with the import's side effects undone."""
    stub = None
    try:
        import expecttest  # noqa: F401
    except ImportError:
        stub = types.ModuleType("expecttest")
        stub.TestCase = unittest.TestCase
        sys.modules["expecttest"] = stub
    try:
        import hypothesis
    except ImportError:
        hypothesis = None
    profile = getattr(hypothesis.settings, "_current_profile", None) if hypothesis else None
    frozen = torch.backends.flags_frozen()
    script_calls = torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__
    try:
        from torch.testing._internal.common_modules import ModuleErrorEnum, module_db
    finally:
        if stub is not None and sys.modules.get("expecttest") is stub:
            del sys.modules["expecttest"]
        if not frozen:  # common_utils calls torch.backends.disable_global_flags() at import
            torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
            assert not torch.backends.flags_frozen()
        if hypothesis is not None and profile is not None:  # and loads its own Hypothesis profile
            hypothesis.settings.load_profile(profile)
        torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__ = script_calls
    return module_db, ModuleErrorEnum


MODULE_DB, ModuleErrorEnum = _load_module_db()
RECURRENT = (torch.nn.RNN, torch.nn.GRU, torch.nn.LSTM)
ENTRIES = [info for info in MODULE_DB if info.module_cls in RECURRENT]

# Private switch, for proving these tests honest: with _PRNN_MODULE_DB_SUBJECT=torch.nn the
# checks run against torch.nn's own classes (every one must pass).
_AGAINST_TORCH_NN = os.environ.get("_PRNN_MODULE_DB_SUBJECT") == "torch.nn"
DROP_INS = {torch.nn.RNN: prt.RNN, torch.nn.GRU: prt.GRU, torch.nn.LSTM: prt.LSTM}


def _subject(info):
    return info.module_cls if _AGAINST_TORCH_NN else DROP_INS[info.module_cls]


def test_module_db_has_the_three_recurrent_entries():
    assert sorted(info.name for info in ENTRIES) == ["nn.GRU", "nn.LSTM", "nn.RNN"]


def _cases(allowed=None):
    """(entry, dtype) pairs as ``@modules(module_db, allowed_dtypes=...)`` makes them on ``DEVICE``."""
    return [pytest.param(info, dtype, id=f"{info.name}-{str(dtype).removeprefix('torch.')}")
            for info in ENTRIES for dtype in info.supported_dtypes(DEVICE.type)
            if allowed is None or dtype in allowed]


def _trainings(info, train_only=False):
    """The training flags ``@modules`` runs: both when the entry says train and eval differ."""
    return [True] if train_only or not info.train_and_eval_differ else [True, False]


def _honour_decorators(info, test_name, dtype, training, cls_name="TestModule", device_type=None):
    """Skip, saying why, where the entry marks this check expected-to-fail or skipped on this device type."""
    device_type = DEVICE.type if device_type is None else device_type
    for decorator in info.get_decorators(cls_name, test_name, device_type, dtype, {"training": training}):
        name = getattr(decorator, "__name__", repr(decorator))
        if name == "skipMPS":  # skips on an MPS device only
            continue
        pytest.skip(f"module_db marks {info.name} {test_name} on {device_type} ({dtype}, training={training}) "
                    f"with {name}: PyTorch does not hold its own module to this check")


@contextlib.contextmanager
def _frozen_rng():
    """``freeze_rng_state``: the CPU generator's state is restored on exit."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)


def _shapes(obj):
    if isinstance(obj, torch.Tensor):
        return "x".join(map(str, obj.shape)) or "scalar"
    if isinstance(obj, (tuple, list)):
        return "(" + ", ".join(_shapes(o) for o in obj) + ")"
    return type(obj).__name__


def _describe(sample, training=None, extra=""):
    c = sample.constructor_input
    text = ", ".join([*map(repr, c.args), *(f"{k}={v!r}" for k, v in c.kwargs.items())])
    if sample.forward_input is not None:
        text += f" <- {_shapes(sample.forward_input.args)}"
    if training is not None:
        text += " [train]" if training else " [eval]"
    return text + extra


class _Failures:
    """Runs every sample; the test fails at the end listing each failing sample and its error."""

    def __init__(self):
        self.items = []
        self.ran = 0

    @contextlib.contextmanager
    def sample(self, name):
        self.ran += 1
        try:
            yield
        except Exception as error:  # noqa: BLE001 - reported, with the sample's name, by check()
            text = " ".join(str(error).split())
            self.items.append(f"{name}: {type(error).__name__}: {text[:400]}")

    def check(self):
        assert self.ran, "no sample ran"
        if self.items:
            pytest.fail(f"{len(self.items)} of {self.ran} samples failed:\n" + "\n".join(self.items),
                        pytrace=False)


def _assert_equal(actual, expected, *, atol=None, rtol=None):
    """``TestModule.assertEqual``: tolerances at least its precision and rel_tol (1e-5), dtypes exact."""
    torch.testing.assert_close(actual, expected, atol=max(atol or 0.0, 1e-5), rtol=max(rtol or 0.0, 1e-5))


def _build(cls, sample, dtype, training, **extra):
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    m = cls(*args, **kwargs, **extra)
    m.to(DEVICE).to(dtype)
    m.train(training)
    return m


def _forward_samples(info, dtype, requires_grad, training):
    samples = info.module_inputs_func(info, device=DEVICE, dtype=dtype, requires_grad=requires_grad,
                                      training=training)
    return [s for s in samples if s.forward_input is not None]


def _traverse(obj, fn):
    if isinstance(obj, (tuple, list)):
        return type(obj)(_traverse(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _traverse(o, fn) for k, o in obj.items()}
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    return obj


def _grads_of(obj):
    return _traverse(obj, lambda t: t.grad if t.requires_grad else None)


def _clear_grads(obj):
    def clear(t):
        t.grad = None
    _traverse(obj, clear)


@pytest.fixture
def full(request):
    """``--soak``: PyTorch's whole schedule of the costly checks (gradcheck, gradgradcheck,
    non-contiguous inputs); a documented subset otherwise."""
    return request.config.getoption("--soak")


# --- test_forward ---------------------------------------------------------------------------------

@pytest.mark.parametrize("info, dtype", _cases())
def test_forward(info, dtype):
    """Outputs equal the entry's reference (unbatched input against a batch of one); ``.float()`` /
    ``.double()`` then a forward leave every parameter in that dtype."""
    cls, failures = _subject(info), _Failures()
    for training in _trainings(info):
        _honour_decorators(info, "test_forward", dtype, training)
        for sample in _forward_samples(info, dtype, False, training):
            with failures.sample(_describe(sample, training)), _frozen_rng():
                m = _build(cls, sample, dtype, training)
                args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
                outputs = m(*args, **kwargs)
                if sample.reference_fn is not None:
                    _assert_equal(outputs, sample.reference_fn(m, *args, **kwargs))
                if dtype == torch.float32:
                    m.float()
                else:
                    m.double()
                m(*args, **kwargs)
                for name, p in itertools.chain(m.named_parameters(), m.named_buffers()):
                    assert p.device.type == DEVICE.type and (not p.dtype.is_floating_point or p.dtype == dtype), \
                        f"{name}: {p.device} {p.dtype} after .{str(dtype)[6:]}()"
    failures.check()


# --- test_factory_kwargs --------------------------------------------------------------------------

def _creates_parameters_or_buffers(cls, args, kwargs):
    """Whether constructing ``cls`` makes a Parameter or buffer from a tensor it was not given."""
    calls = []

    def record(method):
        def wrapper(self, *a, **k):
            calls.append((a, k))
            return method(self, *a, **k)
        return wrapper

    with mock.patch.object(torch.nn.Parameter, "__new__", record(torch.nn.Parameter.__new__)), \
            mock.patch.object(torch.nn.Module, "register_buffer", record(torch.nn.Module.register_buffer)):
        cls(*args, **kwargs)
    given = {id(t) for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)}
    for a, k in calls:
        tensors = [t for t in (*a, *k.values()) if isinstance(t, torch.Tensor)]
        if tensors and not given.intersection(map(id, tensors)):
            return True
    return False


@pytest.mark.parametrize("info, dtype", _cases())
def test_factory_kwargs(info, dtype):
    """``device=`` and ``dtype=`` reach every parameter and buffer the module creates."""
    cls, failures = _subject(info), _Failures()
    for training in _trainings(info):
        _honour_decorators(info, "test_factory_kwargs", dtype, training)
        samples = info.module_inputs_func(info, device=DEVICE, dtype=dtype, requires_grad=False, training=training)
        for sample in samples:
            with failures.sample(_describe(sample, training)):
                args, kwargs = sample.constructor_input.args, dict(sample.constructor_input.kwargs)
                creates = _creates_parameters_or_buffers(cls, args, kwargs)
                # torch.nn's class creates parameters: a drop-in that did not would skip the check
                assert creates == _creates_parameters_or_buffers(info.module_cls, args, kwargs)
                if not creates:
                    continue
                m = cls(*args, **kwargs, device=DEVICE, dtype=dtype)
                m.train(training)
                for name, p in itertools.chain(m.named_parameters(), m.named_buffers()):
                    assert p.device.type == DEVICE.type, f"{name} on {p.device}"
                    assert not p.dtype.is_floating_point or p.dtype == dtype, f"{name} is {p.dtype}"
    failures.check()


# --- test_repr ------------------------------------------------------------------------------------

@pytest.mark.parametrize("info, dtype", _cases())
def test_repr(info, dtype):
    cls, failures = _subject(info), _Failures()
    for training in _trainings(info):
        _honour_decorators(info, "test_repr", dtype, training)
        samples = info.module_inputs_func(info, device=DEVICE, dtype=dtype, requires_grad=False, training=training)
        for sample in samples:
            with failures.sample(_describe(sample, training)):
                m = _build(cls, sample, dtype, training)
                assert isinstance(repr(m), str) and isinstance(str(m), str)
    failures.check()


# --- test_save_load -------------------------------------------------------------------------------

@pytest.mark.parametrize("info, dtype", _cases())
def test_save_load(info, dtype):
    """A ``torch.save``d module loads and gives the same outputs; its state_dict round-trips, also
    with ``weights_only=True``. In memory: nothing is written to disk."""
    cls, failures = _subject(info), _Failures()
    for training in _trainings(info):
        _honour_decorators(info, "test_save_load", dtype, training)
        for sample in _forward_samples(info, dtype, False, training):
            with failures.sample(_describe(sample, training)), _frozen_rng():
                m = _build(cls, sample, dtype, training)
                sd = m.state_dict()
                args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
                output = m(*args, **kwargs)
                buffer = io.BytesIO()
                torch.save(m, buffer)
                buffer.seek(0)
                copy = torch.load(buffer, weights_only=False)
                _assert_equal(copy(*args, **kwargs), output)
                buffer = io.BytesIO()
                torch.save(sd, buffer)
                buffer.seek(0)
                _assert_equal(torch.load(buffer), sd)
                buffer.seek(0)
                _assert_equal(torch.load(buffer, weights_only=True), sd)
    failures.check()


# --- test_check_inplace ---------------------------------------------------------------------------

@pytest.mark.parametrize("info, dtype", _cases())
def test_check_inplace(info, dtype):
    takes = "inplace" in inspect.signature(_subject(info)).parameters
    assert takes == ("inplace" in inspect.signature(info.module_cls).parameters)
    if not takes:
        pytest.skip(f"test_modules.py runs test_check_inplace only for modules taking `inplace`; "
                    f"{info.name} does not, nor does the drop-in (checked)")
    raise AssertionError("torch.nn's recurrent modules now take `inplace`: port test_check_inplace")


# --- test_non_contiguous_tensors ------------------------------------------------------------------

def _non_contiguous(obj):
    def make(t):
        if t.dim() == 0:
            return t
        out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
        out.requires_grad = t.requires_grad
        return out
    return _traverse(obj, make)


def _backward_each(outputs, grads):
    """Backward from every output that requires grad, each with its grad (graph retained)."""
    for o, g in zip(pytree.tree_leaves(outputs), pytree.tree_leaves(grads), strict=True):
        if o.requires_grad:
            o.backward(g, retain_graph=True)


@pytest.mark.parametrize("info, dtype", _cases())
def test_non_contiguous_tensors(info, dtype, full):
    """Non-contiguous inputs, ``hx`` and output gradients give the contiguous outputs and
    gradients. Training mode only unless ``--soak`` (the samples have no dropout; eval mode
    doubles the time for the flag alone)."""
    cls, failures = _subject(info), _Failures()
    for training in _trainings(info) if full else [True]:
        _honour_decorators(info, "test_non_contiguous_tensors", dtype, training)
        for sample in _forward_samples(info, dtype, True, training):
            with failures.sample(_describe(sample, training)):
                in_args, in_kwargs = sample.forward_input.args, sample.forward_input.kwargs
                m = _build(cls, sample, dtype, training)
                with _frozen_rng():
                    default = m(*in_args, **in_kwargs)
                    grad_out = tuple(_traverse(o, lambda t: t.detach().clone().normal_()) for o in default)
                    _backward_each(default, grad_out)
                default_in_grads = _traverse(_grads_of((in_args, in_kwargs)),
                                             lambda t: t.detach().clone())
                default_param_grads = [p.grad.detach().clone() for p in m.parameters()]
                nc_inputs = _non_contiguous((in_args, in_kwargs))
                for (a, k), g in itertools.product([(in_args, in_kwargs), nc_inputs],
                                                   [grad_out, _non_contiguous(grad_out)]):
                    _clear_grads((a, k))
                    _clear_grads(list(m.parameters()))
                    with _frozen_rng():
                        out = m(*a, **k)
                        _backward_each(out, _traverse(g, lambda t: t.clone()))
                    _assert_equal(out, default)
                    _assert_equal(_grads_of((a, k)), default_in_grads, atol=1e-4, rtol=0)
                    _assert_equal([p.grad for p in m.parameters()], default_param_grads)
    failures.check()


# --- test_grad / test_gradgrad --------------------------------------------------------------------

def _gradient_checks(info, dtype, test_name, check, full):
    """``_test_gradients_helper``: the total derivative, then each parameter's alone.

    ``full`` (``--soak``) runs PyTorch's whole schedule: both modes, every sample, every
    parameter alone (minutes on two cores). By default, to keep the file fast: training mode
    only (these samples have no dropout: eval differs by the flag alone), and the samples of
    two configurations, the entry's first (every option off: no bias, time-major,
    unidirectional, no projection; RNN: relu) and its last (every option on; RNN: tanh).
    ``test_grad``: the total derivative with and without ``hx``, and alone on the last
    sample (with ``hx``) ``weight_ih_l0`` and each parameter of the last layer's last
    direction (every kind: ih, hh, both biases, ``weight_hr``). ``test_gradgrad`` (each
    check costs ~10x more): the total derivative with ``hx`` (input, ``hx`` and every
    parameter), and ``weight_ih_l0`` and the last parameter alone on the last sample.
    """
    cls, failures = _subject(info), _Failures()
    fast = True if info.gradcheck_fast_mode is None else info.gradcheck_fast_mode
    for training in _trainings(info) if full else [True]:
        _honour_decorators(info, test_name, dtype, training)
        samples = _forward_samples(info, dtype, True, training)
        for index, sample in enumerate(samples):
            last = index == len(samples) - 1
            in_subset = index < 2 or index >= len(samples) - 2  # first and last configurations
            if test_name == "test_gradgrad":
                in_subset = in_subset and len(sample.forward_input.args) > 1  # given hx
            if not (full or in_subset):
                continue
            with failures.sample(_describe(sample, training)):
                m = _build(cls, sample, dtype, training)
                params = tuple(m.parameters())
                in_args, in_kwargs = sample.forward_input.args, sample.forward_input.kwargs
                kwarg_tensors = [(k, v) for k, v in in_kwargs.items() if isinstance(v, torch.Tensor)]
                others = {k: v for k, v in in_kwargs.items() if not isinstance(v, torch.Tensor)}

                def do_check(what):
                    flat, spec = pytree.tree_flatten(in_args + params + tuple(v for _, v in kwarg_tensors))
                    keys = [k for k, _ in kwarg_tensors]

                    def fn(*leaves):
                        rebuilt = pytree.tree_unflatten(list(leaves), spec)
                        new_kwargs = dict(zip(keys, rebuilt[len(rebuilt) - len(keys):]))
                        with _frozen_rng():
                            return pytree.tree_leaves(m(*rebuilt[:len(in_args)], **new_kwargs, **others))

                    try:
                        assert check(fn, flat, nondet_tol=0.0, fast_mode=fast, check_batched_grad=True)
                    except Exception as error:
                        raise type(error)(f"{what}: {error}") from error

                do_check("total derivative")
                if not (full or last):
                    continue
                named = list(m.named_parameters())
                if not full:  # each kind of parameter: weight_ih_l0 and those of the last layer and direction
                    suffix = named[-1][0].split("_", 2)[-1]  # e.g. "l1_reverse"
                    named = [named[0]] + [(n, p) for n, p in named if n.endswith(suffix)]
                    if test_name == "test_gradgrad":
                        named = [named[0], named[-1]]
                old = [p.requires_grad for p in params]
                for p in params:
                    p.requires_grad = False
                old_kw = [v.requires_grad for _, v in kwarg_tensors]
                for _, v in kwarg_tensors:
                    v.requires_grad = False
                for name, p in named:
                    p.requires_grad = True
                    do_check(f"d/d{name} alone")
                    p.requires_grad = False
                for (name, v), was in zip(kwarg_tensors, old_kw):
                    v.requires_grad = was
                    do_check(f"d/d{name} alone")
                    v.requires_grad = False
                for p, was in zip(params, old):
                    p.requires_grad = was
    failures.check()


@pytest.mark.parametrize("info, dtype", _cases(allowed={torch.float64}))
def test_grad(info, dtype, full):
    _gradient_checks(info, dtype, "test_grad", torch.autograd.gradcheck, full)


@pytest.mark.parametrize("info, dtype", _cases(allowed={torch.float64}))
def test_gradgrad(info, dtype, full):
    assert info.supports_gradgrad  # test_modules.py runs test_gradgrad only for these entries
    _gradient_checks(info, dtype, "test_gradgrad", torch.autograd.gradgradcheck, full)


# --- test_memory_format ---------------------------------------------------------------------------

@pytest.mark.parametrize("info, dtype", _cases())
def test_memory_format(info, dtype):
    """Inputs have no 4-D/5-D tensor, so only the contiguous input format and the preserve /
    contiguous module formats apply: same outputs and gradients, every output and gradient
    contiguous."""
    cls, failures = _subject(info), _Failures()

    def contiguous_copy(t):
        return t.clone().to(memory_format=torch.contiguous_format).detach().requires_grad_(t.requires_grad)

    def assert_contiguous(obj):
        _traverse(obj, lambda t: None if t.is_contiguous() else pytest.fail("a non-contiguous result"))

    for training in _trainings(info):
        _honour_decorators(info, "test_memory_format", dtype, training)
        for sample in _forward_samples(info, dtype, True, training):
            with failures.sample(_describe(sample, training)), _frozen_rng():
                assert not any(t.dim() in (4, 5) for t in pytree.tree_leaves(sample.forward_input.args)
                               if isinstance(t, torch.Tensor))
                m = _build(cls, sample, dtype, training)
                args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
                desired = m(*args, **kwargs)

                def diff(outputs, args, kwargs):
                    def needing_grad(tree):
                        return tuple(t for t in pytree.tree_leaves(tree)
                                     if isinstance(t, torch.Tensor) and t.requires_grad)
                    return needing_grad(outputs), needing_grad((args, kwargs, tuple(m.parameters())))

                ref_outs, ref_ins = diff(desired, args, kwargs)
                if training and ref_outs:
                    ref_grad_outs = tuple(torch.rand_like(t) for t in ref_outs)
                    ref_grads = torch.autograd.grad(ref_outs, ref_ins, grad_outputs=ref_grad_outs)
                args, kwargs = _traverse(args, contiguous_copy), _traverse(kwargs, contiguous_copy)
                for module_format in (torch.preserve_format, torch.contiguous_format):
                    m.to(memory_format=module_format)
                    outputs = m(*args, **kwargs)
                    if module_format != torch.contiguous_format:
                        _assert_equal(outputs, desired)
                    assert_contiguous(outputs)
                    outs, ins = diff(outputs, args, kwargs)
                    if training and outs:
                        grads = torch.autograd.grad(outs, ins, grad_outputs=tuple(
                            torch.empty_like(a).copy_(b) for a, b in zip(outs, ref_grad_outs, strict=True)))
                        if module_format != torch.contiguous_format:
                            _assert_equal(grads, ref_grads)
                        assert_contiguous(grads)
    failures.check()


# --- test_if_train_and_eval_modes_differ ----------------------------------------------------------

@pytest.mark.parametrize("info, dtype", _cases())
def test_if_train_and_eval_modes_differ(info, dtype):
    """With ``training`` deleted, a forward that reads it must belong to an entry that says so."""
    cls, failures = _subject(info), _Failures()
    _honour_decorators(info, "test_if_train_and_eval_modes_differ", dtype, True)
    for sample in _forward_samples(info, dtype, False, True):
        with failures.sample(_describe(sample, True)):
            m = _build(cls, sample, dtype, True)
            delattr(m, "training")
            try:
                m(*sample.forward_input.args, **sample.forward_input.kwargs)
            except AttributeError as error:
                if "'training'" not in str(error):
                    raise
                assert info.train_and_eval_differ, "the forward reads `training` but the entry says it does not"
    failures.check()


# --- test_errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("info, dtype", _cases())
def test_errors(info, dtype):
    """Every error sample: the entry's exception type (or a subclass) and a message its regex finds."""
    assert info.module_error_inputs_func is not None
    cls, failures = _subject(info), _Failures()
    for training in _trainings(info):
        _honour_decorators(info, "test_errors", dtype, training)
        for error_input in info.module_error_inputs_func(info, device=DEVICE, dtype=dtype, requires_grad=False,
                                                         training=training):
            sample = error_input.module_error_input
            name = _describe(sample, training, f" -> {error_input.error_type.__name__}({error_input.error_regex!r})")
            with failures.sample(name):
                c_args, c_kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
                if error_input.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
                    with pytest.raises(error_input.error_type, match=error_input.error_regex):
                        cls(*c_args, **c_kwargs)
                elif error_input.error_on == ModuleErrorEnum.FORWARD_ERROR:
                    m = cls(*c_args, **c_kwargs)
                    with pytest.raises(error_input.error_type, match=error_input.error_regex):
                        m(*sample.forward_input.args, **sample.forward_input.kwargs)
                else:
                    raise NotImplementedError(f"unknown error_on {error_input.error_on}")
    failures.check()


# --- test_to / test_to_empty ----------------------------------------------------------------------

@contextlib.contextmanager
def _swap_module_params(swap):
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(swap)
    try:
        yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)


def _cdatas(tensors):
    return [t._cdata for t in tensors]


@pytest.mark.parametrize("info, dtype", _cases(allowed={torch.float32}))
def test_to(info, dtype):
    """``module.to(device, dtype)`` over the entry's dtypes, with and without swapping tensors and
    with and without gradients set: parameters stay Parameters in the new dtype, the same Python
    objects (``_cdata`` swapped with ``swap``, kept without), gradients converted alike; with swap,
    ``.to(half)`` and back after a forward and backward works."""
    cls, failures = _subject(info), _Failures()
    for training, swap, set_grad in itertools.product(_trainings(info), (True, False), (True, False)):
        _honour_decorators(info, "test_to", dtype, training)
        samples = info.module_inputs_func(info, device=DEVICE, dtype=dtype, requires_grad=False, training=training)
        for sample in samples:
            with failures.sample(_describe(sample, training, f" swap={swap} set_grad={set_grad}")), \
                    _swap_module_params(swap):
                m = cls(*sample.constructor_input.args, **sample.constructor_input.kwargs)
                m.train(training)
                for mod in m.modules():  # not module.to(): that is what is tested
                    for n, p in list(mod.named_parameters(recurse=False)):
                        new_p = torch.nn.Parameter(p.detach().clone().to(DEVICE, dtype))
                        setattr(mod, n, new_p)
                        if set_grad:
                            new_p.grad = torch.randn_like(new_p)
                    for n, b in list(mod.named_buffers(recurse=False)):
                        setattr(mod, n, b.detach().clone().to(DEVICE, dtype))
                if swap and not set_grad and list(m.parameters()):
                    out = m(*sample.forward_input.args, **sample.forward_input.kwargs)
                    (out[0] if isinstance(out, tuple) else out).sum().backward()
                    m.to(dtype=torch.half)
                    m.to(dtype=torch.float32)
                prev = (DEVICE.type, dtype)
                for new_dtype in info.dtypes:
                    unchanged = prev == (DEVICE.type, new_dtype)
                    prev = (DEVICE.type, new_dtype)
                    ids, cdatas = [id(p) for p in m.parameters()], _cdatas(m.parameters())
                    if set_grad:
                        g_ids, g_cdatas = [id(p.grad) for p in m.parameters()], _cdatas(p.grad for p in m.parameters())
                    m.to(device=DEVICE, dtype=new_dtype)
                    params = list(m.parameters())
                    assert all(isinstance(p, torch.nn.Parameter) for p in params)
                    assert all(p.device.type == DEVICE.type and p.dtype == new_dtype for p in params)
                    assert [id(p) for p in params] == ids, "parameters replaced by new objects"
                    if set_grad:
                        assert all(p.grad.device.type == DEVICE.type and p.grad.dtype == new_dtype for p in params)
                    if swap:
                        assert all(a != b for a, b in zip(cdatas, _cdatas(params))), "_cdata not swapped"
                        if set_grad:
                            after = _cdatas(p.grad for p in params)
                            assert all((a == b) if unchanged else (a != b) for a, b in zip(g_cdatas, after))
                    else:
                        assert _cdatas(params) == cdatas
                        if set_grad:
                            assert _cdatas(p.grad for p in params) == g_cdatas
                            assert [id(p.grad) for p in params] == g_ids
    failures.check()


@pytest.mark.parametrize("info, dtype", _cases(allowed={torch.float32}))
def test_to_empty(info, dtype):
    """Built on the meta device, ``to_empty(device=DEVICE)`` gives Parameters on that device (same objects with a
    swapped ``_cdata`` when swapping, new objects otherwise)."""
    cls, failures = _subject(info), _Failures()
    for training, swap in itertools.product(_trainings(info), (True, False)):
        _honour_decorators(info, "test_to_empty", dtype, training)
        with torch.device("meta"):
            samples = info.module_inputs_func(info, device=None, dtype=dtype, requires_grad=False, training=training)
        for sample in samples:
            with failures.sample(_describe(sample, training, f" swap={swap}")), _swap_module_params(swap):
                with torch.device("meta"):
                    m = cls(*sample.constructor_input.args, **sample.constructor_input.kwargs)
                ids, cdatas = [id(p) for p in m.parameters()], _cdatas(m.parameters())
                m.to_empty(device=DEVICE)
                params = list(m.parameters())
                assert all(isinstance(p, torch.nn.Parameter) for p in params)
                assert all(p.device.type == DEVICE.type and p.dtype == dtype for p in params)
                assert all(a != b for a, b in zip(cdatas, _cdatas(params)))
                if swap:
                    assert [id(p) for p in params] == ids
                else:
                    assert all(a != b for a, b in zip(ids, (id(p) for p in params)))
    failures.check()


# --- test_device_ctx_init (TestModuleCPUOnly) -----------------------------------------------------

def _eq(a, b):
    assert a == b, f"{a!r} != {b!r}"


@pytest.mark.parametrize("info, dtype", _cases())
def test_device_ctx_init(info, dtype):
    """Built under ``with torch.device('meta')``, every parameter and buffer is meta, with the
    metadata (dtype, shape, strides, offset, view-ness, requires_grad, ...) of the CPU build."""
    from torch._subclasses.meta_utils import assert_metadata_eq

    cls, failures = _subject(info), _Failures()
    for training in _trainings(info):
        _honour_decorators(info, "test_device_ctx_init", dtype, training, cls_name="TestModuleCPUOnly",
                           device_type="cpu")
        samples = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False, training=training)
        with torch.device("meta"):
            meta_samples = info.module_inputs_func(info, device=None, dtype=dtype, requires_grad=False,
                                                   training=training)
        for sample, meta_sample in zip(samples, meta_samples, strict=True):
            with failures.sample(_describe(sample, training)):
                m_cpu = cls(*sample.constructor_input.args, **sample.constructor_input.kwargs)
                with torch.device("meta"):
                    m = cls(*meta_sample.constructor_input.args, **meta_sample.constructor_input.kwargs)
                pairs = list(zip(m.parameters(), m_cpu.parameters(), strict=True))
                pairs += list(zip(m.buffers(), m_cpu.buffers(), strict=True))
                for p_meta, p_cpu in pairs:
                    assert p_meta.is_meta
                    assert_metadata_eq(_eq, p_meta, p_cpu)
    failures.check()
