"""Facts about the machine that move the bench's numbers: CPU, cores, load, versions, BLAS, SIMD, CUDA, precision."""

from __future__ import annotations

import importlib
import os
import platform
import time

import numpy as np

from ... import backends

__all__ = ["cores", "load", "cuda_info", "elementwise_costs", "machine_info", "matmul_precisions"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load() -> float | None:
    """The 1-minute load average, where the platform has one."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def format_load(value) -> str:
    """A load average as ``uptime`` prints it (two decimals), or ``unknown``."""
    return "unknown" if value is None else f"{value:.2f}"


def _versions(backend_names):
    out = {"numpy": np.__version__}
    libs = ["array_api_compat", "threadpoolctl", "torch", "jax", "jaxlib"]
    if "cupy" in backend_names:
        libs.append("cupy")
    for lib in libs:
        try:
            out[lib] = getattr(importlib.import_module(lib), "__version__", None)
        except Exception:
            out[lib] = None
    return out


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed: BLAS kernel unknown"}]
    keep = ("user_api", "internal_api", "prefix", "architecture", "num_threads", "version", "threading_layer")
    return [{k: d.get(k) for k in keep if k in d} for d in threadpool_info()]


def cuda_info():
    """``{"device", "cudnn"}`` of the first CUDA device torch sees, or ``None``."""
    try:
        import torch

        if torch.cuda.is_available():
            return {"device": torch.cuda.get_device_name(0), "cudnn": torch.backends.cudnn.version()}
    except ImportError:
        pass
    return None


def _simd_found():
    """The SIMD extensions NumPy found on this CPU (its dispatch picks kernels from them)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # NumPy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__  # type: ignore[no-redef]
        except ImportError:
            return None
    return sorted(k for k, v in __cpu_features__.items() if v and k.startswith(("AVX", "FMA", "SSE4", "ASIMD", "SVE")))


def _timed(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def elementwise_costs(size=1 << 16, repeats=20):
    """NumPy's single-thread cost per element (ns) of the elementwise ops the cells use.

    ``tanh`` and ``exp`` are where machines differ most: NumPy dispatches them to
    SIMD kernels on some CPUs and runs scalar code on others (about 0.4 vs 4 ns
    per float32 ``tanh``), which moves the elementwise share of a layer by
    several times between machines with the same GEMM speed.
    """
    out = {}
    for dtype in ("float32", "float64"):
        a = np.linspace(-4, 4, size, dtype=dtype)
        b = np.empty_like(a)
        costs = {}
        for name, call in (("tanh", lambda: np.tanh(a, out=b)), ("exp", lambda: np.exp(a, out=b)),
                           ("multiply", lambda: np.multiply(a, a, out=b))):
            call()
            best = min(_timed(call) for _ in range(repeats))
            costs[f"{name}_ns"] = round(best / size * 1e9, 3)
        out[dtype] = costs
    return out


def machine_info(backend_names, threads):
    """The ``machine`` section of the report (see :mod:`portable_rnn.app.bench.run`)."""
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                          "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "XLA_FLAGS")}
    return {
        "cpu": _cpu_model(), "cores": cores(), "threads": threads,
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": _versions(backend_names), "blas": _blas_info(), "env": env,
        "numpy_simd": _simd_found(), "elementwise": elementwise_costs(),
        "xla_threads": "not settable after import; XLA_FLAGS=" + repr(env["XLA_FLAGS"]),
        "cuda": cuda_info(), "matmul_precision": matmul_precisions(backend_names),
    }


def matmul_precisions(backend_names) -> dict:
    """``backend -> how it runs float32 matmuls now`` (:func:`portable_rnn.backends.matmul_precision`)."""
    available, _ = backends.discover(backend_names)
    return {name: backends.matmul_precision(b) for name, b in available.items()}
