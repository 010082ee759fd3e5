r"""``portable-rnn bench --long``: peak memory and time of an LSTM layer over long sequences, per tape.

One LSTM layer (N = 8, H = 256, D = ``--long-input``, float32, time-major,
on the CPU) runs forward + backward with ``d_out`` = ones (a broadcast 1, as
autograd makes it for ``sum(out)``: nothing filled) at T = 1,000, 10,000 and
100,000 (``--long-lengths``), each (contender, T) in a fresh Python process.

Contenders
----------
``numpy full``, ``numpy checkpoint``
    This package's layer on NumPy arrays, ``spec.forward(..., retain=...)``
    then ``spec.backward``.
``numpy none``
    The forward alone with ``retain="none"`` (inference): its peak should be
    the output plus a constant, whatever T.
``jax full``, ``jax checkpoint``
    This package's layer on ``jax.numpy`` arrays, forward and backward in one
    ``jax.jit`` function.
``torch.nn``
    ``torch.nn.LSTM`` with the same weights, ``x`` requiring grad,
    ``out.backward(d_out)`` through autograd.
``jax.grad``
    ``jax.jit`` of ``jax.vjp`` of the ``lax.scan`` layer
    :func:`~portable_rnn.app.bench.references.jax_reference_forward`.
``jax.grad+checkpoint``
    The same layer with the standard sqrt(T) rematerialisation
    (:func:`sqrt_checkpoint_forward`): an outer ``lax.scan`` over segments
    whose body is ``jax.checkpoint`` of the segment's input projection and
    inner scan. The segments are this package's
    (:func:`portable_rnn.engine.sequence.segment_length`): S = ceil(T / ceil(sqrt T))
    segments of k = ceil(T / S) steps but the last, which holds the
    remaining 1..k steps; when it is shorter than k it runs as one more
    checkpointed call after the outer scan over the others, and the outputs
    are concatenated (so any T works, no padding), as this package's layer
    does under ``jax.jit``. Both checkpointed sides keep the same states and
    recompute the same segments.

Every contender returns ``out``, ``dx`` and the parameter gradients (the
forward-only one: ``out``), so all hold the same results; ``out_bytes`` and
``dx_bytes`` in the report are that floor.

How memory is measured
----------------------
In the fresh process (``python -m portable_rnn.app.bench.long --worker``)
the contender first runs once at T = :data:`WARMUP_T`, untimed: first calls
set up what every later call reuses (BLAS buffers, oneDNN and XLA runtime
state; without it ``jax.grad``'s peak at T = 200 read 9.5 MiB more, and
``torch.nn``'s first call took seconds). Then the inputs at T are built
and, for JAX, the function compiled (``jax.jit(f).lower(...).compile()``,
not executed at that T before the measurement). Then the garbage
collector runs, glibc's ``malloc_trim(0)`` gives freed heap back, the peak
resident set is reset (``5`` into ``/proc/self/clear_refs``), ``VmRSS`` is
read, the contender runs once, and ``VmHWM`` is read:
``peak_bytes = VmHWM - VmRSS before``. It is what the run added to the
process, the floor included. Where ``/proc/self/clear_refs`` cannot be
written the peak is ``null``: never guessed.

That first run is also the first timed run; the median of 5 runs is
reported up to T = 2,000, of 3 up to T = 20,000 and the single run beyond
(a long run is dominated by the work, and each costs minutes). Torch and
NumPy's BLAS use ``--threads`` threads (default: the usable cores); XLA its
default. The processes run one at a time.

``--quick`` runs T = 50 and 200, skips the warm-up and runs the contenders
of one T side by side, one thread each (two-thread BLAS calls in processes
side by side on two cores ran 100x slower): its numbers only show that
everything runs.

"Only where it fits": before a (contender, T) runs, its peak is estimated
from the same contender's at the previous T, linearly in T (an
over-estimate for the checkpointed tapes), and it is skipped, with the
reason, when the estimate exceeds :data:`MEMORY_FRACTION` of
``MemAvailable`` (``/proc/meminfo``).

JSON (``--json FILE``)
----------------------
``schema`` (``"portable_rnn.bench.long/1"``), ``machine`` (as in
:mod:`~portable_rnn.app.bench.run`, plus ``mem_total_bytes``,
``mem_available_bytes``), ``settings`` (``cell``, ``N``, ``H``, ``D``,
``dtype``, ``lengths``, ``quick``, ``threads``, ``memory_fraction``),
``results``: one row per (T, contender) with ``contender``, ``T``,
``status`` (``"ok"``, ``"skipped"`` or ``"failed"``), ``reason``,
``peak_bytes``, ``median_s``, ``times_s``, ``compile_s``, ``out_bytes``,
``dx_bytes``, ``estimate_bytes`` (``null`` where unknown), ``ratios``:
``str(T)`` -> ``"A/B"`` -> ``{"peak", "time"}``, ``targets``: ``{"name",
"value", "limit", "met"}`` as in :mod:`~portable_rnn.app.bench.targets`,
and ``wall_s``. Nothing here asserts a timing; the numbers are for reading.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import ctypes.util
import functools
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

__all__ = ["SCHEMA", "CONTENDERS", "LENGTHS", "QUICK_LENGTHS", "DEFAULT_INPUT", "MEMORY_FRACTION",
           "parse_lengths", "sqrt_checkpoint_forward", "measure_in_worker", "plan", "run_long_bench",
           "mem_available"]

SCHEMA = "portable_rnn.bench.long/1"
#: Batch and hidden size of the issue; the input size is a flag (audio or sensor features).
N, H, DTYPE = 8, 256, "float32"
DEFAULT_INPUT = 32
LENGTHS = (1000, 10000, 100000)
QUICK_LENGTHS = (50, 200)
#: The length of the untimed, unmeasured warm-up run each worker does first.
WARMUP_T = 8
#: A (contender, T) whose estimated peak exceeds this share of MemAvailable is skipped.
MEMORY_FRACTION = 0.8
#: Each contender: the library it needs, and the contender its peak and time are divided by in the table.
CONTENDERS = {
    "numpy full": ("numpy", None),
    "numpy checkpoint": ("numpy", "numpy full"),
    "numpy none": ("numpy", None),
    "jax full": ("jax", None),
    "jax checkpoint": ("jax", "jax full"),
    "torch.nn": ("torch", None),
    "jax.grad": ("jax", None),
    "jax.grad+checkpoint": ("jax", "jax.grad"),
}
#: Ratios reported at every T: the tapes against each other, and ours against the references.
RATIOS = (
    ("numpy checkpoint", "numpy full"), ("jax checkpoint", "jax full"), ("jax.grad+checkpoint", "jax.grad"),
    ("numpy full", "torch.nn"), ("numpy checkpoint", "torch.nn"), ("jax full", "jax.grad"),
    ("jax checkpoint", "jax.grad+checkpoint"), ("jax full", "torch.nn"), ("jax checkpoint", "torch.nn"),
)
#: The issue's targets: checkpoint/full at this T (or the largest measured below it).
TARGET_T, PEAK_LIMIT, TIME_LIMIT = 10000, 0.15, 1.4
#: "none": growth of (peak - out) from the shortest to the longest T, over out at the longest.
NONE_GROWTH_LIMIT = 0.10


def parse_lengths(text: str) -> tuple:
    """An argparse type: comma-separated sequence lengths, each an integer >= 2."""
    try:
        lengths = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        lengths = ()
    if not lengths or min(lengths) < 2:
        raise argparse.ArgumentTypeError(f"expected comma-separated lengths >= 2, e.g. 1000,10000; got {text!r}")
    return tuple(sorted(set(lengths)))


def _runs(T: int) -> int:
    """Runs whose median is the time: fewer as a run gets longer (the first one also measures memory)."""
    return 5 if T <= 2000 else 3 if T <= 20000 else 1


# --------------------------------------------------------------------------- the contenders (in the worker)


def _inputs(T: int, D: int):
    """``(spec, params, x)``: the LSTM, its NumPy parameters (torch.nn names) and x (T, N, D), float32."""
    from ...layers import LSTM

    x = np.random.default_rng(1).standard_normal((T, N, D)).astype(DTYPE)
    spec = LSTM(D, H)
    return spec, {k: np.asarray(v) for k, v in spec.init(seed=0, like=x).items()}, x


def _numpy_ours(retain):
    """The builder of ``numpy <retain>``: ``build(T, D) -> (run, None)``."""

    def build(T, D):
        spec, params, x = _inputs(T, D)
        if retain == "none":
            return lambda: spec.forward(params, x, retain="none")[0], None
        d_out = np.broadcast_to(np.ones((), x.dtype), (T, N, H))

        def run():
            out, _, kept = spec.forward(params, x, retain=retain)
            grads, dx, _ = spec.backward(params, kept, d_out)
            return out, grads, dx

        return run, None

    return build


def _jitted(fn, params, x):
    """``(run, compile_s)``: ``fn(params, x)`` compiled for JAX's CPU, not executed yet."""
    import jax
    import jax.numpy as jnp

    p = {k: jnp.asarray(v) for k, v in params.items()}
    xj = jax.block_until_ready(jnp.asarray(x))
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(p, xj).compile()
    compile_s = time.perf_counter() - start
    return (lambda: jax.block_until_ready(compiled(p, xj))), compile_s


def _jax_ours(retain):
    """The builder of ``jax <retain>``: forward and backward in one compiled function."""

    def build(T, D):
        import jax.numpy as jnp

        spec, params, x = _inputs(T, D)

        def fwd_bwd(p, x):
            out, _, kept = spec.forward(p, x, retain=retain)
            grads, dx, _ = spec.backward(p, kept, jnp.ones_like(out))
            return out, grads, dx

        return _jitted(fwd_bwd, params, x)

    return build


def _jax_reference(checkpointed):
    """The builder of ``jax.grad`` (or ``jax.grad+checkpoint``): ``jax.vjp`` of the ``lax.scan`` layer, compiled."""

    def build(T, D):
        import jax
        import jax.numpy as jnp

        from .references import jax_reference_forward

        _, params, x = _inputs(T, D)

        def forward(p, x):
            return sqrt_checkpoint_forward(p, x) if checkpointed else jax_reference_forward("lstm", p, x)

        def fwd_bwd(p, x):
            out, vjp = jax.vjp(forward, p, x)
            grads, dx = vjp(jnp.ones_like(out))
            return out, grads, dx

        return _jitted(fwd_bwd, params, x)

    return build


def _torch_nn(T, D):
    """``torch.nn.LSTM`` loaded with the same parameters; autograd computes ``dx`` too."""
    import torch

    _, params, x = _inputs(T, D)
    module = torch.nn.LSTM(D, H)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    xt = torch.from_numpy(x).requires_grad_(True)
    d_out = torch.ones((), dtype=xt.dtype).expand(T, N, H)

    def run():
        module.zero_grad(set_to_none=True)
        xt.grad = None
        out, _ = module(xt)
        out.backward(d_out)
        return out, xt.grad, [p.grad for p in module.parameters()]

    return run, None


def _probe(T, D):
    """Not a contender: allocates and fills T bytes, so a test can see the measurement work."""
    return (lambda: np.ones(T, dtype=np.uint8)), None


_BUILDERS = {
    "numpy full": _numpy_ours("full"), "numpy checkpoint": _numpy_ours("checkpoint"),
    "numpy none": _numpy_ours("none"), "jax full": _jax_ours("full"), "jax checkpoint": _jax_ours("checkpoint"),
    "torch.nn": _torch_nn, "jax.grad": _jax_reference(False), "jax.grad+checkpoint": _jax_reference(True),
    "probe": _probe,
}


def sqrt_checkpoint_forward(p, x, checkpoint_every=None):
    """The ``jax_reference_forward`` LSTM with sqrt(T) rematerialisation: outputs (T, N, H).

    An outer ``lax.scan`` over the segments of k steps whose body is
    ``jax.checkpoint`` of :func:`~portable_rnn.app.bench.references.jax_lstm_scan`,
    then, when k does not divide T, the shorter last segment as one more checkpointed call and a
    concatenation of the outputs (as :func:`portable_rnn.engine.sequence.forward`
    does); k is :func:`portable_rnn.engine.sequence.segment_length`'s. Only the
    states entering each segment are kept for the backward.
    """
    import jax
    import jax.numpy as jnp

    from ...engine.sequence import segment_length
    from .references import jax_lstm_scan

    T, n, d = x.shape
    k = segment_length(T, checkpoint_every)
    n_full, tail = divmod(T, k)
    segment = jax.checkpoint(jax_lstm_scan)
    zeros = jnp.zeros((n, p["weight_hh_l0"].shape[1]), x.dtype)
    carry, outs = (zeros, zeros), []
    if n_full:
        head = jnp.reshape(x[: n_full * k], (n_full, k, n, d))
        carry, ys = jax.lax.scan(lambda c, x_s: segment(p, c, x_s), carry, head)
        outs.append(jnp.reshape(ys, (n_full * k, n, -1)))
    if tail:
        outs.append(segment(p, carry, x[n_full * k :])[1])
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)


# --------------------------------------------------------------------------- measuring (in the worker)


def _proc_kib(path: str, key: str) -> int | None:
    """``key``'s value in bytes from a ``/proc`` file of ``key: value kB`` lines; ``None`` if unreadable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _malloc_trim() -> None:
    """Give glibc's freed heap back to the system, so the baseline RSS holds only live memory."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to trim
        pass


def _reset_peak() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS; whether that was possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_in_worker(run, runs: int) -> dict:
    """Peak memory of one ``run()`` (then kept as the first timed run), and the times of ``runs`` runs.

    Returns
    -------
    dict
        ``peak_bytes`` (VmHWM during the run minus VmRSS before it; ``None``
        where the peak cannot be reset or read) and ``times_s``.
    """
    gc.collect()
    _malloc_trim()
    can_reset = _reset_peak()
    before = _proc_kib("/proc/self/status", "VmRSS")
    start = time.perf_counter()
    result = run()
    times = [time.perf_counter() - start]
    hwm = _proc_kib("/proc/self/status", "VmHWM")
    peak = hwm - before if can_reset and hwm is not None and before is not None else None
    del result
    for _ in range(runs - 1):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"peak_bytes": peak, "times_s": times}


def _pin_threads(threads: int, library: str) -> None:
    """The bench's thread pinning for this worker's library (XLA's pool is fixed when JAX is imported).

    Not :func:`~portable_rnn.app.bench.timing.pin_threads`, which pins torch and
    NumPy's BLAS together: that would import torch into every worker, seconds
    per fresh process, for a pool only the torch worker uses.
    """
    if library == "torch":
        import torch

        torch.set_num_threads(threads)
    elif library == "numpy":
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        _KEEP.append(threadpool_limits(limits=threads, user_api="blas"))  # held for the worker's life


_KEEP: list = []


def _worker(argv) -> int:
    """``--worker CONTENDER T D THREADS warm|cold``: measure and time one (contender, T); one JSON line out."""
    name, T, D, threads, warm_up = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), argv[4] == "warm"
    _pin_threads(threads, CONTENDERS.get(name, ("numpy", None))[0])
    if warm_up and name != "probe":  # first calls set up thread pools, buffers and caches that later runs reuse
        _BUILDERS[name](WARMUP_T, D)[0]()
    run, compile_s = _BUILDERS[name](T, D)
    row = measure_in_worker(run, _runs(T))
    row["compile_s"] = compile_s
    print(json.dumps(row), flush=True)
    return 0


# --------------------------------------------------------------------------- the bench (in the parent)


def _mib(n) -> str:
    """Bytes as MiB for the table; ``-`` when unknown."""
    return "-" if n is None else f"{n / 2**20:,.1f} MiB"


def plan(previous, T: int, available: int | None):
    """``(estimate_bytes, reason to skip or None)`` for a contender at ``T``, from its row at the previous T.

    Parameters
    ----------
    previous : dict or None
        The contender's row at the previous T: its ``peak_bytes`` if it ran,
        its ``estimate_bytes`` if it was skipped.
    T : int
    available : int or None
        ``MemAvailable`` in bytes now.
    """
    if previous is None:
        return None, None
    if previous["status"] == "failed":
        return None, f"failed at T={previous['T']:,}"
    known = previous["peak_bytes"] if previous["status"] == "ok" else previous["estimate_bytes"]
    if known is None:
        return None, previous["reason"] if previous["status"] == "skipped" else None
    estimate = int(known * T / previous["T"])
    if available is not None and estimate > MEMORY_FRACTION * available:
        return estimate, (f"estimated peak {_mib(estimate)} (linear from {_mib(known)} at T={previous['T']:,}) "
                          f"exceeds {MEMORY_FRACTION:.0%} of MemAvailable {_mib(available)}")
    return estimate, None


def _installed(library: str) -> bool:
    """Whether ``library`` can be imported (checked in the parent, which need not import it)."""
    return importlib.util.find_spec(library) is not None


def mem_available() -> int | None:
    """``MemAvailable`` in bytes, ``None`` where ``/proc/meminfo`` cannot be read (train's memory check too)."""
    return _proc_kib("/proc/meminfo", "MemAvailable")


def _spawn(name: str, T: int, D: int, threads: int, warm_up: bool = True) -> dict:
    """One (contender, T) in a fresh process: ``{"peak_bytes", "times_s", "compile_s"}`` or ``{"error"}``."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = dict(os.environ, JAX_PLATFORMS="cpu",  # the memory measured is the host's
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    command = [sys.executable, "-m", "portable_rnn.app.bench.long", "--worker", name, str(T), str(D), str(threads),
               "warm" if warm_up else "cold"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode == 0:
        try:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"unreadable worker output {proc.stdout[-200:]!r}"}
    if proc.returncode < 0:
        return {"error": f"worker killed by signal {-proc.returncode} (out of memory?)"}
    lines = proc.stderr.strip().splitlines()
    return {"error": f"worker exited {proc.returncode}: {lines[-1] if lines else 'no message'}"}


def _row(name: str, T: int, D: int, previous, threads: int, worker) -> dict:
    """Plan, then measure (or skip) one (contender, T): the report's row."""
    row: dict[str, Any] = {"contender": name, "T": T, "status": "ok", "reason": None, "peak_bytes": None, "median_s": None,
           "times_s": [], "compile_s": None, "out_bytes": T * N * H * 4,
           "dx_bytes": 0 if name == "numpy none" else T * N * D * 4, "estimate_bytes": None}
    library = CONTENDERS[name][0]
    if not _installed(library):
        row.update(status="skipped", reason=f"{library} is not installed")
        return row
    row["estimate_bytes"], reason = plan(previous, T, mem_available())
    if reason is not None:
        row.update(status="skipped", reason=reason)
        return row
    measured = worker(name, T, D, threads)
    if "error" in measured:
        row.update(status="failed", reason=measured["error"])
        return row
    row.update({k: measured[k] for k in ("peak_bytes", "times_s", "compile_s")})
    row["median_s"] = statistics.median(row["times_s"])
    if row["peak_bytes"] is None:
        row["reason"] = "peak unknown: /proc/self/clear_refs cannot be written here"
    return row



def _ratio(rows: dict, T: int, a: str, b: str) -> dict | None:
    """``{"peak", "time"}`` of contender ``a`` over ``b`` at ``T`` (an entry ``None`` where unknown)."""
    ra, rb = rows.get((a, T)), rows.get((b, T))
    if not ra or not rb or ra["status"] != "ok" or rb["status"] != "ok":
        return None
    peak = None
    if ra["peak_bytes"] is not None and rb["peak_bytes"]:
        peak = ra["peak_bytes"] / rb["peak_bytes"]
    return {"peak": peak, "time": ra["median_s"] / rb["median_s"]}


def _target_length(rows: dict, lengths, a: str, b: str) -> int:
    """:data:`TARGET_T` if both ran there, else the longest T at which both ran (else TARGET_T)."""
    both = [T for T in lengths if _ratio(rows, T, a, b) is not None]
    if TARGET_T in both or not both:
        return TARGET_T
    below = [T for T in both if T < TARGET_T]
    return max(below) if below else min(both)


def _none_growth(rows: dict, lengths):
    """``(name, value)``: growth of ``numpy none``'s peak minus ``out`` from the shortest to the longest T."""
    ran = [rows[("numpy none", T)] for T in lengths
           if rows[("numpy none", T)]["status"] == "ok" and rows[("numpy none", T)]["peak_bytes"] is not None]
    if len(ran) < 2:
        return "numpy none: growth of peak - out, shortest..longest T, / out", None
    lo, hi = ran[0], ran[-1]
    growth = (hi["peak_bytes"] - hi["out_bytes"]) - (lo["peak_bytes"] - lo["out_bytes"])
    return (f"numpy none: growth of peak - out, T={lo['T']:,}..{hi['T']:,}, / out",
            growth / hi["out_bytes"])


def _targets(rows: dict, lengths) -> list:
    """The issue's targets, each ``{"name", "value", "limit", "met"}`` (``met`` is ``None`` when not measured)."""
    out = []

    def entry(name, value, limit):
        out.append({"name": name, "value": value, "limit": limit,
                    "met": None if value is None else bool(value <= limit)})

    for family in ("numpy", "jax"):
        a, b = f"{family} checkpoint", f"{family} full"
        T = _target_length(rows, lengths, a, b)
        ratio = _ratio(rows, T, a, b) or {"peak": None, "time": None}
        entry(f"{family} checkpoint/full peak at T={T:,}", ratio["peak"], PEAK_LIMIT)
        entry(f"{family} checkpoint/full time at T={T:,}", ratio["time"], TIME_LIMIT)
    growth_name, growth = _none_growth(rows, lengths)
    entry(growth_name, growth, NONE_GROWTH_LIMIT)
    return out


def _say_row(row: dict, rows: dict, say) -> None:
    """One line of the table: the row and its peak and time over its base (``CONTENDERS``)."""
    head = f"  {row['T']:>7,}  {row['contender']:20s}"
    if row["status"] != "ok":
        say(f"{head}  {row['status']}: {row['reason']}")
        return
    peak = "-" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:,.1f}"
    floor = row["out_bytes"] + row["dx_bytes"]
    above = "-" if row["peak_bytes"] is None else f"{(row['peak_bytes'] - floor) / 2**20:,.1f}"
    compile_s = "-" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
    base = CONTENDERS[row["contender"]][1]
    ratio = _ratio(rows, row["T"], row["contender"], base) if base else None
    vs = ""
    if ratio:
        p = "-" if ratio["peak"] is None else f"{ratio['peak']:.3f}"
        vs = f"  {p:>6s} {ratio['time']:5.2f}x  {base}"
    say(f"{head}  {peak:>10s} {above:>10s} {row['median_s']:9.3f} {len(row['times_s']):2d} {compile_s:>7s}{vs}")


def _say_ratios(T: int, ratios: dict, say) -> None:
    """The cross ratios at ``T`` on one line."""
    parts = [f"{k} peak {'-' if v['peak'] is None else format(v['peak'], '.2f')} time {v['time']:.2f}"
             for k, v in ratios.items()]
    if parts:
        say(f"  ratios at T={T:,}: " + "; ".join(parts))


def _say_machine(m: dict, threads: int, say) -> None:
    """The machine on one line: CPU, cores, threads, load, memory, versions."""
    from .machine import format_load

    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if k in ("numpy", "torch", "jax") and v)
    say(f"machine: {m['cpu']}, {m['cores']} cores, {threads} threads (torch, BLAS), "
        f"load {format_load(m['load_before'])}, MemTotal {_mib(m['mem_total_bytes'])}, "
        f"MemAvailable {_mib(m['mem_available_bytes'])}; {versions}")



def run_long_bench(lengths=None, D=None, *, quick=False, threads=None, out=None, worker=None) -> dict:
    """Measure every contender at every T, print the table as it goes, and return the report.

    Parameters
    ----------
    lengths : iterable of int, optional
        Sequence lengths, run from the shortest; default :data:`LENGTHS`
        (:data:`QUICK_LENGTHS` with ``quick``).
    D : int, optional
        Input size; default :data:`DEFAULT_INPUT`.
    quick : bool
        Tiny lengths, for CI.
    threads : int, optional
        Threads for torch and NumPy's BLAS; default the usable CPUs (1 with ``quick``).
    out : file, optional
        Where the table goes (default ``sys.stdout``).
    worker : callable, optional
        ``(contender, T, D, threads) -> {"peak_bytes", "times_s", "compile_s"}``
        or ``{"error": reason}``; default a fresh process per call.

    Returns
    -------
    dict
        The JSON report (see the module docstring).
    """
    from .machine import cores, load, machine_info

    started = time.perf_counter()
    out = sys.stdout if out is None else out

    def say(line=""):
        print(line, file=out, flush=True)

    lengths = tuple(sorted(set(lengths or (QUICK_LENGTHS if quick else LENGTHS))))
    D, threads = D or DEFAULT_INPUT, threads or (1 if quick else cores())
    worker = worker or functools.partial(_spawn, warm_up=not quick)
    machine = machine_info(["numpy", "jax", "torch"], threads)
    machine.update(load_before=load(), mem_total_bytes=_proc_kib("/proc/meminfo", "MemTotal"),
                   mem_available_bytes=mem_available())
    settings = {"cell": "lstm", "N": N, "H": H, "D": D, "dtype": DTYPE, "lengths": list(lengths), "quick": quick,
                "threads": threads, "memory_fraction": MEMORY_FRACTION}
    say(f"long-sequence bench: LSTM N={N} H={H} D={D} {DTYPE}, forward + backward with d_out = ones "
        "(numpy none: forward only), each (contender, T) in a fresh process")
    _say_machine(machine, threads, say)
    say(f"  {'T':>7s}  {'contender':20s}  {'peak MiB':>10s} {'over floor':>10s} {'time s':>9s} {'n':>2s} "
        f"{'compile':>7s}  {'peak':>6s} {'time':>6s}  over")
    rows: dict = {}
    ratios: dict = {}
    # One process at a time, so that runs neither slow each other down nor share the memory; --quick,
    # whose numbers only show the plumbing works, runs the contenders of each T side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=cores() if quick else 1) as pool:
        for i, T in enumerate(lengths):
            say(f"  T={T:,}: floor out {_mib(T * N * H * 4)}, dx {_mib(T * N * D * 4)}")
            pending = {name: pool.submit(_row, name, T, D, rows.get((name, lengths[i - 1])) if i else None,
                                         threads, worker) for name in CONTENDERS}
            for name, row in pending.items():
                rows[(name, T)] = row.result()
                _say_row(rows[(name, T)], rows, say)
            ratios[str(T)] = {f"{a}/{b}": r for a, b in RATIOS if (r := _ratio(rows, T, a, b)) is not None}
            _say_ratios(T, ratios[str(T)], say)
    report = {"schema": SCHEMA, "machine": machine, "settings": settings, "results": list(rows.values()),
              "ratios": ratios, "targets": _targets(rows, lengths)}
    machine["load_after"] = load()
    say("targets:")
    for t in report["targets"]:
        mark = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        say(f"  {t['name']:56s} {value:>7s} (limit {t['limit']})  {mark}")
    report["wall_s"] = time.perf_counter() - started
    from .machine import format_load

    say(f"wall time {report['wall_s']:.0f} s, load after {format_load(machine['load_after'])}")
    return report


if __name__ == "__main__":
    if sys.argv[1:2] != ["--worker"]:
        sys.exit("usage: python -m portable_rnn.app.bench.long --worker CONTENDER T D THREADS warm|cold "
                 "(the bench itself is `portable-rnn bench --long`)")
    sys.exit(_worker(sys.argv[2:]))
