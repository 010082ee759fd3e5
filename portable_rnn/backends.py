"""The one place for array backends: names, devices, host transfer and the dtype policy.

A *backend* is a library plus a device. Everything that names one goes
through :func:`resolve`: ``portable-rnn check``/``train``/``bench``, the test
matrix, :mod:`portable_rnn.io` and :mod:`portable_rnn.interop`. The library
itself never needs a name: its functions take the namespace from their inputs.

Names
    ``numpy``, ``array_api_strict``, ``array_api_strict:device1`` (a simulated
    second device that catches device bugs without a GPU), ``jax``,
    ``jax:gpu``, ``torch``, ``torch:cuda`` and ``cupy``; see
    :data:`BACKEND_NAMES`. :func:`resolve` also takes a library name with an
    explicit device string.

Dtype policy
    Parameters and inputs are float32 by default, as ``torch.nn``; float64 is
    supported on every backend. JAX makes float64 arrays only with
    ``jax_enable_x64``, a process-wide switch, so the library never turns it
    on: a program that wants float64 on JAX enters :func:`jax_float64` for
    its duration, and :meth:`Backend.asarray` refuses to hand back an array
    of another dtype than the one asked for.

Matmul precision policy
    NVIDIA GPUs from Ampere on can multiply float32 matrices in TF32 (10
    mantissa bits instead of 23, a relative rounding of about 5e-4 per
    operand). JAX does so by default on those GPUs, CuPy with
    ``CUPY_TF32=1``, torch with ``torch.backends.cuda.matmul.allow_tf32`` or
    ``torch.set_float32_matmul_precision("high")``. The library leaves the
    choice to the user; ``portable-rnn check`` and the test suite run inside
    :func:`full_precision_matmuls`, and :func:`matmul_precision` says what a
    backend runs with.

Host memory
    NumPy arrays and plain CPU torch tensors live in memory NumPy can read
    and write in place (:func:`in_host_memory`); the engine's fast kernels
    run on such arrays through views, never copies (:func:`on_host_memory`).

Availability
    A backend is available when it imports *and* an allocation on its device
    works: CuPy imports on machines without a GPU and fails only at its first
    allocation.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass

import numpy as np
from array_api_compat import array_namespace, is_numpy_namespace, is_torch_namespace

from ._validation import library_name as _library_name
from ._validation import namespace_of, placement

__all__ = [
    "BACKEND_NAMES",
    "LIBRARIES",
    "DTYPES",
    "EXTRAS",
    "Backend",
    "BackendError",
    "resolve",
    "discover",
    "to_host",
    "jax_float64",
    "full_precision_matmuls",
    "matmul_precision",
    "resolve_namespace",
    "resolve_dtype",
    "resolve_target",
    "to_namespace",
    "host_memory_library",
    "in_host_memory",
    "functorch_wrapped",
    "on_host_memory",
]

#: Every backend name, in the order tables and tests use.
BACKEND_NAMES = (
    "numpy",
    "array_api_strict",
    "array_api_strict:device1",
    "jax",
    "jax:gpu",
    "torch",
    "torch:cuda",
    "cupy",
)

#: The libraries, as ``resolve`` accepts them with a device string.
LIBRARIES = ("numpy", "array_api_strict", "jax", "torch", "cupy")

#: Floating dtypes the library supports, the default first.
DTYPES = ("float32", "float64")

#: The pip extra that installs each library.
EXTRAS = {"jax": "jax", "torch": "torch", "cupy": "cupy", "array_api_strict": "strict"}


class BackendError(ValueError):
    """A backend that is unknown, not installed, or has no such device (one-line message)."""


@dataclass(frozen=True)
class Backend:
    """A usable backend: its namespace and the device arrays are created on.

    Attributes
    ----------
    name : str
        e.g. ``"torch"``, ``"torch:cuda:1"`` or ``"array_api_strict:device1"``.
    library : str
        One of :data:`LIBRARIES`.
    xp : namespace
        The array-api-compat namespace of its arrays.
    device : object
        The device arrays are created on.
    """

    name: str
    library: str
    xp: object
    device: object

    def asarray(self, a, dtype: str | None = None):
        """Host data -> an array of this backend on :attr:`device`.

        Parameters
        ----------
        a : numpy.ndarray or nested sequence
        dtype : {"float32", "float64"} or None
            ``None`` keeps the dtype of ``a``.

        Raises
        ------
        BackendError
            When the library made another dtype than the one asked for (JAX
            float64 outside :func:`jax_float64`).
        """
        host = np.asarray(a, dtype=dtype, order="C")
        out = _FROM_HOST[self.library](host, self)
        if host.dtype.kind == "f":
            _check_made(out, host.dtype.name, self.name)
        return out

    def to_numpy(self, a) -> np.ndarray:
        """An array of this backend -> a fresh NumPy array on the host (see :func:`to_host`)."""
        return to_host(a)

    def context(self):
        """A context manager that makes :attr:`device` the current device where the library has one.

        CuPy creates some arrays on its *current* device whatever ``device=``
        says (array-api-compat drops it for ``zeros``, ``ones``, ``arange``,
        ``zeros_like``), so a program on a CuPy GPU other than the current
        one runs inside ``with backend.context():`` (``cupy.cuda.Device(i)``).
        Every other library honours ``device=``: a null context.
        """
        if self.library == "cupy":
            return self.device
        return contextlib.nullcontext()


def _dtype_name(dtype) -> str:
    """``"float32"`` for NumPy/JAX dtypes and scalar types, torch's and array-api-strict's dtypes."""
    try:
        return np.dtype(dtype).name
    except TypeError:  # torch.float32, array_api_strict.float32
        return str(dtype).rsplit(".", 1)[-1]


def _check_made(array, dtype_name: str, library: str) -> None:
    """Refuse an array of another dtype than the one asked for (JAX float64 without x64)."""
    made = _dtype_name(array.dtype)
    if made != dtype_name:
        hint = (" (JAX makes float64 only with x64 enabled: jax.config.update('jax_enable_x64', True), "
                "or inside `with portable_rnn.backends.jax_float64():`)") if made == "float32" else ""
        raise BackendError(f"{library} made a {made} array when {dtype_name} was asked for{hint}")


# --------------------------------------------------------------------------- host transfer


def to_host(a, name: str = "array") -> np.ndarray:
    """A fresh, writable, C-contiguous NumPy copy of ``a``, from any backend and device.

    Parameters
    ----------
    a : array
        NumPy, CuPy, JAX, torch or array-api-strict; on any device.
    name : str
        What to call ``a`` in an error message.

    Raises
    ------
    TypeError
        For arrays with no values to copy: JAX tracers (inside ``jax.jit``),
        torch meta or fake tensors.
    """
    from array_api_compat import (
        array_namespace,
        is_array_api_obj,
        is_array_api_strict_namespace,
        is_cupy_array,
        is_torch_array,
    )

    if not is_array_api_obj(a):
        raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    try:
        if is_torch_array(a):
            a = a.detach().to("cpu").numpy()
        elif is_cupy_array(a):
            a = a.get()
        elif is_array_api_strict_namespace(xp := array_namespace(a)):
            a = np.from_dlpack(xp.asarray(a, device=xp.Device("CPU_DEVICE")))
        return np.array(a, copy=True, order="C")
    except Exception as error:  # tracers, meta tensors, devices without a host path
        raise TypeError(
            f"{name} cannot be copied to the host ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); pass concrete arrays, outside jax.jit"
        ) from None


def _numpy_from_host(host, backend):
    return host.copy()


def _strict_from_host(host, backend):
    return backend.xp.asarray(host, device=backend.device)


def _jax_from_host(host, backend):
    import jax

    return jax.device_put(host, backend.device)


def _torch_from_host(host, backend):
    import torch

    return torch.asarray(host, device=backend.device, copy=True)


def _cupy_from_host(host, backend):
    import cupy

    with backend.context():
        return cupy.asarray(host)


_FROM_HOST = {
    "numpy": _numpy_from_host,
    "array_api_strict": _strict_from_host,
    "jax": _jax_from_host,
    "torch": _torch_from_host,
    "cupy": _cupy_from_host,
}


# --------------------------------------------------------------------------- resolving names


def _numpy(device):
    import array_api_compat.numpy as xp

    if device not in (None, "cpu"):
        raise BackendError(f"numpy runs on the CPU only; got device {device!r}")
    return xp, "cpu"


def _strict(device):
    import array_api_strict as xp

    return xp, xp.Device(device or "CPU_DEVICE")


def _jax(device):
    import jax
    import jax.numpy as xp

    # This process's devices: after jax.distributed.initialize, jax.devices() lists every
    # process's, and arrays placed on another process's device cannot be read here.
    if device is None:
        return xp, jax.local_devices()[0]
    platform, _, index = device.partition(":")
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform.lower(), platform.lower())
    return xp, jax.local_devices(backend=platform)[int(index or 0)]


def _torch(device):
    import array_api_compat.torch as xp
    import torch

    dev = torch.device(device or "cpu")
    torch.zeros(1, device=dev)  # CUDA errors surface at the first allocation
    return xp, dev


def _cupy(device):
    import array_api_compat.cupy as xp
    import cupy

    dev = cupy.cuda.Device(int(device or 0))
    with dev:
        (cupy.zeros(1) + 1).get()  # CuPy imports without a GPU and fails at first use
    return xp, dev


_RESOLVERS = {"numpy": _numpy, "array_api_strict": _strict, "jax": _jax, "torch": _torch, "cupy": _cupy}


def _split(name: str, device: str | None) -> tuple[str, str | None]:
    if not isinstance(name, str):
        raise BackendError(f"backend must be a string, got {type(name).__name__}")
    library, _, named_device = name.partition(":")
    if library not in _RESOLVERS:
        raise BackendError(f"unknown backend {name!r}; expected one of {', '.join(BACKEND_NAMES)}")
    if named_device and device is not None and named_device != device:
        raise BackendError(f"backend {name!r} names device {named_device!r} but device {device!r} was given")
    return library, (device if device is not None else named_device or None)


def _install_hint(library: str) -> str:
    if library == "torch":  # the extra's bare `torch` can pull a multi-GB CUDA build
        return "pip install torch, the build for your machine from pytorch.org"
    if library == "cupy":
        return "pip install 'portable-rnn[cupy]' for CUDA 12 or 'portable-rnn[cupy13]' for CUDA 13"
    return f"pip install 'portable-rnn[{EXTRAS.get(library, library)}]'"


def resolve(name: str, device: str | None = None) -> Backend:
    """Import a backend, find its device and probe that it works.

    Parameters
    ----------
    name : str
        A library (``numpy``, ``array_api_strict``, ``jax``, ``torch``,
        ``cupy``) or a backend name ``library:device`` (``torch:cuda``,
        ``array_api_strict:device1``, ``jax:gpu``).
    device : str, optional
        ``cpu`` (numpy); ``cpu``, ``gpu``, ``cuda`` or ``tpu``, optionally
        ``:index`` (jax); any ``torch.device`` string such as ``cuda:1``
        (torch); a CUDA device index (cupy); ``CPU_DEVICE``, ``device1`` or
        ``device2`` (array_api_strict). Default: the library's default.

    Raises
    ------
    BackendError
        Unknown name, library not installed, or the device is missing.
    """
    library, device = _split(name, device)
    try:
        xp, dev = _RESOLVERS[library](device)
    except BackendError:
        raise
    except ImportError:
        raise BackendError(f"{library} is not installed ({_install_hint(library)})") from None
    except Exception as error:  # bad strings, no driver, no such index
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        where = f"device {device!r}" if device is not None else "its default device"
        raise BackendError(f"{library} cannot use {where} ({reason})") from None
    return Backend(library if device is None else f"{library}:{device}", library, xp, dev)


def discover(names=None) -> tuple[dict[str, Backend], dict[str, str]]:
    """Probe backends by name.

    Parameters
    ----------
    names : iterable of str, optional
        Backends to probe; default :data:`BACKEND_NAMES`, or the
        comma-separated ``PORTABLE_RNN_BACKEND`` environment variable.

    Returns
    -------
    available : dict
        ``name -> Backend`` for those that work.
    unavailable : dict
        ``name -> reason`` for the others.
    """
    if names is None:
        env = os.environ.get("PORTABLE_RNN_BACKEND", "").strip()
        names = [n.strip() for n in env.split(",") if n.strip()] if env else BACKEND_NAMES
    available, unavailable = {}, {}
    for name in names:
        if name not in BACKEND_NAMES:
            raise BackendError(f"unknown backend {name!r}; expected one of {', '.join(BACKEND_NAMES)}")
        try:
            backend = resolve(name)
        except BackendError as error:
            unavailable[name] = str(error)
        else:
            available[name] = Backend(name, backend.library, backend.xp, backend.device)
    return available, unavailable


# --------------------------------------------------------------------------- where new arrays go


def resolve_namespace(xp):
    """The array-api-compat namespace for a module such as ``numpy``, ``jax.numpy``, ``torch``.

    Accepts the library module itself or an already compatible namespace
    (``array_api_compat.numpy``, ``array_api_strict``); ``None`` means NumPy.
    Raises ``TypeError`` for anything that cannot create an array.
    """
    if xp is None:
        xp = np
    empty = getattr(xp, "empty", None)
    if not callable(empty):
        raise TypeError(
            f"xp must be an array namespace module such as numpy, jax.numpy, torch, cupy "
            f"or array_api_strict, got {xp!r}"
        )
    try:
        return array_namespace(empty((0,)))
    except Exception as error:
        raise TypeError(
            f"xp must be an array namespace module such as numpy, jax.numpy, torch, cupy "
            f"or array_api_strict, got {xp!r} ({type(error).__name__}: {error})"
        ) from None


def resolve_dtype(xp, dtype):
    """float32 or float64 of ``xp``, from a dtype object or its name (see :data:`DTYPES`)."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        dtype = getattr(xp, dtype)
    try:
        ok = xp.isdtype(dtype, "real floating") and f"float{xp.finfo(dtype).bits}" in DTYPES
    except Exception:
        ok = False
    if not ok:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return dtype


def resolve_target(like=None, xp=None, dtype=None, device=None, *, default_dtype="float32"):
    """Namespace, dtype and device for new parameter arrays.

    ``like=x`` takes all three from ``x`` (``dtype``/``device`` given too
    override it); otherwise ``xp`` (a library module, ``None`` for NumPy),
    ``dtype`` (default ``default_dtype``) and ``device`` (default: the
    library's default device). The device of a JAX array sharded over
    several devices is a sharding that replicates over the same devices
    (:func:`portable_rnn._validation.placement`): parameters made like a
    batch-sharded input are whole on each of its devices.
    """
    if like is not None:
        if xp is not None:
            raise TypeError("pass either like= or xp=, not both")
        xp = namespace_of(like=like)
        dtype = like.dtype if dtype is None else dtype
        if device is None:
            device = placement(like)  # replicated over the devices of a sharded JAX array
    else:
        xp = resolve_namespace(xp)
        dtype = default_dtype if dtype is None else dtype
    return xp, resolve_dtype(xp, dtype), device




def to_namespace(arrays: dict[str, np.ndarray], xp, dtype, device) -> dict:
    """Convert host arrays to ``xp`` arrays of ``dtype`` on ``device`` (same keys, same order).

    Raises :class:`BackendError` when the library makes another dtype (JAX
    float64 outside :func:`jax_float64`) instead of handing it back silently.
    """
    out = {name: xp.asarray(a, dtype=dtype, device=device) for name, a in arrays.items()}
    for a in out.values():
        _check_made(a, _dtype_name(dtype), _library_name(xp))
    return out


# --------------------------------------------------------------------------- dtype policy


@contextlib.contextmanager
def jax_float64():
    """Let JAX make float64 arrays inside the ``with`` block; restore the setting after.

    JAX's ``jax_enable_x64`` is process-wide and changes what every JAX call
    returns, so only programs switch it (``portable-rnn check``, ``train
    --dtype float64``, the bench, the test session), never library functions.
    Does nothing when JAX is not installed.
    """
    try:
        import jax
    except ImportError:
        yield
        return
    previous = bool(getattr(jax.config, "jax_enable_x64"))
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


# --------------------------------------------------------------------------- matmul precision


@contextlib.contextmanager
def full_precision_matmuls():
    """Run float32 matmuls in full float32 (TF32 off) inside the ``with`` block; restore after.

    JAX: ``jax_default_matmul_precision="highest"``; torch: float32 matmul
    precision ``"highest"`` and ``allow_tf32`` off. Both are process-wide, so
    only programs and the test session enter this, never library functions.
    CuPy reads ``CUPY_TF32`` from the environment itself (off unless > 0):
    :func:`matmul_precision` reports it. Libraries not installed are skipped.
    """
    with contextlib.ExitStack() as stack:
        try:
            import jax
        except ImportError:
            pass
        else:  # the config option, not the thread-local context: every thread of the program
            previous = getattr(jax.config, "jax_default_matmul_precision")
            jax.config.update("jax_default_matmul_precision", "highest")
            stack.callback(jax.config.update, "jax_default_matmul_precision", previous)
        try:
            import torch
        except ImportError:
            pass
        else:
            matmul, before = torch.backends.cuda.matmul, torch.get_float32_matmul_precision()
            allowed = matmul.allow_tf32
            torch.set_float32_matmul_precision("highest")
            matmul.allow_tf32 = False
            stack.callback(setattr, matmul, "allow_tf32", allowed)
            stack.callback(torch.set_float32_matmul_precision, before)
        yield


def matmul_precision(backend: Backend) -> str:
    """How ``backend`` runs float32 matmuls now, as one line ending in whether TF32 is on.

    Reads the library's settings: ``jax_default_matmul_precision`` (JAX),
    ``allow_tf32`` and ``get_float32_matmul_precision()`` (torch),
    ``CUPY_TF32`` (CuPy). NumPy and array-api-strict multiply on the host in
    full float32.
    """
    if backend.library == "jax":
        import jax

        setting = getattr(jax.config, "jax_default_matmul_precision")
        full = str(setting).lower() in ("highest", "float32")
        tf32 = "TF32 off" if full else "TF32 on NVIDIA GPUs from Ampere on"
        return f"jax_default_matmul_precision={setting!r} ({tf32})"
    if backend.library == "torch":
        import torch

        allowed, precision = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
        full = not allowed and precision == "highest"
        tf32 = "TF32 off" if full else "TF32 on for CUDA matmuls"
        return f"allow_tf32={allowed}, float32_matmul_precision={precision!r} ({tf32})"
    if backend.library == "cupy":
        setting = os.environ.get("CUPY_TF32", "0")
        on = setting.strip().isdigit() and int(setting) > 0  # as CuPy reads it at its first float32 matmul
        return f"CUPY_TF32={setting!r} ({'TF32 on' if on else 'TF32 off'})"
    return "full float32 on the host (TF32 off)"


# --------------------------------------------------------------------------- host memory

_HOST_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def host_memory_library(xp) -> str | None:
    """``"numpy"`` or ``"torch"`` when ``xp``'s arrays may be in host memory NumPy can view, else ``None``."""
    if is_numpy_namespace(xp):
        return "numpy"
    if "torch" in sys.modules and is_torch_namespace(xp):
        return "torch"
    return None


@functools.lru_cache(maxsize=1)
def functorch_wrapped():
    """A test for a transform's wrapper tensor: ``torch.func``'s, or the batched gradients of
    ``torch.autograd.grad(..., is_grads_batched=True)``; always false where torch has neither."""
    try:
        from torch._C._functorch import is_functorch_wrapped_tensor, is_legacy_batchedtensor
    except ImportError:  # a torch without functorch has no wrapped tensors either
        return lambda a: False
    return lambda a: is_functorch_wrapped_tensor(a) or is_legacy_batchedtensor(a)


def in_host_memory(a, library: str) -> bool:
    """Whether ``a`` is a float32 or float64 array of ``library`` whose own memory NumPy can view.

    For torch: an exact ``torch.Tensor`` or ``torch.nn.Parameter`` on the CPU,
    strided, outside autograd and ``torch.func``. Each refusal has its reason: a
    subclass (fake, functional or distributed tensors) may have no memory of its
    own; a meta or CUDA tensor has none on the host; autograd
    (``requires_grad``, which also marks ``torch.func.grad``'s tensors) must see
    every operation; and a ``vmap`` or ``functionalize`` wrapper looks like a
    plain tensor but has no memory NumPy can view.
    """
    if library == "numpy":
        return type(a) is np.ndarray and a.dtype in _HOST_FLOATS
    import torch

    return (type(a) in (torch.Tensor, torch.nn.Parameter) and a.dtype in (torch.float32, torch.float64)
            and a.device.type == "cpu" and not a.requires_grad and a.layout == torch.strided
            and not a.is_conj() and not a.is_neg() and not functorch_wrapped()(a))


def _numpy_views(tree):
    if isinstance(tree, (tuple, list)):
        return tuple(_numpy_views(t) for t in tree)
    return None if tree is None else tree.numpy()


def _torch_views(tree):
    import torch

    if isinstance(tree, (tuple, list)):
        return tuple(_torch_views(t) for t in tree)
    return None if tree is None else torch.from_numpy(tree)


def on_host_memory(library: str, fn, *args):
    """``fn(*args)`` on NumPy arrays: torch tensors go in and come out as views of the same memory."""
    if library == "numpy":
        return fn(*args)
    return _torch_views(fn(*_numpy_views(args)))
