"""Discovery of the array backends that are installed *and work* here.

Used by ``portable-rnn check`` and by the test suite, so both agree on what
"available" means. A backend that imports but cannot run (CuPy without a
CUDA device) is reported unavailable, with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Backend", "discover", "BACKEND_NAMES", "EXTRAS"]

#: Every backend name, in the order tables and tests use.
BACKEND_NAMES = (
    "numpy",
    "array_api_strict",
    "array_api_strict:device1",
    "jax",
    "torch",
    "torch:cuda",
    "cupy",
)

#: The extra that installs each backend.
EXTRAS = {"jax": "jax", "torch": "torch", "cupy": "cupy", "array_api_strict": "strict"}


@dataclass(frozen=True)
class Backend:
    """A usable backend: its namespace, device and host conversions.

    Attributes
    ----------
    name : str
        e.g. ``"torch"`` or ``"array_api_strict:device1"``.
    xp : namespace
        The array-api-compat namespace of its arrays.
    device : object
        The device arrays are created on.
    """

    name: str
    xp: object
    device: object
    _from_numpy: Callable
    _to_numpy: Callable
    dtypes: tuple = ("float64", "float32")

    def asarray(self, a, dtype: str = "float64"):
        """NumPy array (or nested sequence) -> backend array of ``dtype`` on ``device``."""
        return self._from_numpy(np.asarray(a, dtype=dtype), dtype)

    def to_numpy(self, a):
        """Backend array -> NumPy array on the host."""
        return self._to_numpy(a)

    @property
    def library(self) -> str:
        return self.name.split(":")[0]


def _numpy():
    import array_api_compat.numpy as xp

    return Backend("numpy", xp, "cpu", lambda a, dt: a, np.asarray)


def _strict(device_name=None):
    import array_api_strict as xp

    dev = xp.Device(device_name) if device_name else xp.Device("CPU_DEVICE")
    host = xp.Device("CPU_DEVICE")
    name = "array_api_strict" + (f":{device_name}" if device_name else "")
    return Backend(
        name, xp, dev,
        lambda a, dt: xp.asarray(a, dtype=getattr(xp, dt), device=dev),
        lambda a: np.asarray(xp.asarray(a, device=host) if a.device != host else a),
    )


def _jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    dev = jax.devices()[0]
    return Backend(
        "jax", jnp, dev,
        lambda a, dt: jax.device_put(jnp.asarray(a, dtype=getattr(jnp, dt)), dev),
        np.asarray,
    )


def _torch(device_name="cpu"):
    import array_api_compat.torch as xp
    import torch

    if device_name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    dev = torch.device(device_name)
    torch.zeros(1, device=dev)
    return Backend(
        "torch" + ("" if device_name == "cpu" else f":{device_name}"), xp, dev,
        lambda a, dt: torch.asarray(a, dtype=getattr(torch, dt), device=dev),
        lambda a: a.detach().cpu().numpy(),
    )


def _cupy():
    import array_api_compat.cupy as xp
    import cupy

    (cupy.zeros(1) + 1).get()  # imports without a GPU, fails at first use
    dev = cupy.cuda.Device()
    return Backend(
        "cupy", xp, dev, lambda a, dt: cupy.asarray(a, dtype=dt), cupy.asnumpy
    )


_FACTORIES = {
    "numpy": _numpy,
    "array_api_strict": _strict,
    "array_api_strict:device1": lambda: _strict("device1"),
    "jax": _jax,
    "torch": _torch,
    "torch:cuda": lambda: _torch("cuda"),
    "cupy": _cupy,
}


def _reason(name: str, error: BaseException) -> str:
    library = name.split(":")[0]
    if isinstance(error, ImportError):
        extra = EXTRAS.get(library, library)
        return f"{library}: not installed (pip install 'portable-rnn[{extra}]')"
    if name in ("cupy", "torch:cuda"):
        return f"{library}: no CUDA device ({type(error).__name__}: {error})".strip()
    return f"{name}: unusable ({type(error).__name__}: {error})"


def discover(names=None) -> tuple[dict[str, Backend], dict[str, str]]:
    """Probe backends.

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
        if name not in _FACTORIES:
            raise ValueError(f"unknown backend {name!r}; expected one of {list(BACKEND_NAMES)}")
        try:
            available[name] = _FACTORIES[name]()
        except Exception as error:  # ImportError, CUDA errors: report, never hide
            unavailable[name] = _reason(name, error)
    return available, unavailable
