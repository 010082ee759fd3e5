r"""Run the bench: build the contenders of each case, time them, and report a table and a JSON document.

JSON (``--json FILE``)
----------------------
``schema``
    ``"portable_rnn.bench/1"``.
``machine``
    ``cpu``, ``cores``, ``threads``, ``platform``, ``python``, ``versions``
    (library -> version), ``blas`` (threadpoolctl: ``internal_api``,
    ``architecture`` = the BLAS kernel that ran, ``num_threads``, ``version``),
    ``env`` (``OPENBLAS_CORETYPE``, ``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``, ``XLA_FLAGS``, ...),
    ``numpy_simd`` (the SIMD extensions NumPy found), ``elementwise`` (dtype ->
    ``tanh_ns``, ``exp_ns``, ``multiply_ns``: NumPy's cost per element on one
    thread, see :func:`~portable_rnn.app.bench.machine.elementwise_costs`),
    ``load_before``/``load_after`` (1-minute load average), ``cuda``,
    ``matmul_precision`` (backend -> how it ran float32 matmuls: the bench
    runs inside :func:`portable_rnn.backends.full_precision_matmuls`, TF32 off,
    like ``torch.nn``'s default, so every contender does the same arithmetic).
``settings``
    ``quick``, ``repeats``, ``threads``, ``settle_s``, ``backends``, ``cells``, ``configs``.
``results``
    One entry per (cell, config): ``cell``, ``N``, ``T``, ``D``, ``H``,
    ``dtype``, ``flops``, and ``contenders``: name -> ``{"kind": "ours" |
    "reference" | "bound", "device", "group", "median_s", "times_s", "gflops",
    "compile_s", "peak_bytes", "tape_bytes", "peak_over_tape",
    "peak_over_tape_and_grads", "err"}`` (unknown fields are ``null``).
    Contender names: a backend (this package's layer called by hand),
    ``jax.apply`` / ``jax.apply:gpu`` (``jax.value_and_grad`` through
    :func:`portable_rnn.jax.apply`), ``torch.module`` / ``torch.module:cuda``
    (:mod:`portable_rnn.torch`'s module through autograd), ``torch.nn``,
    ``jax.grad`` (``jax.value_and_grad`` of a ``lax.scan`` layer), ``gemm``.
    ``ratios``: ``"A/B"`` -> median ratio of each of ours against the
    references of its group (``jax.apply/jax.grad``,
    ``torch.module/torch.nn``, ...) and of a framework face against the layer
    it wraps (``jax.apply/jax``, ``torch.module/torch``); ``skipped``: name -> reason, and
    ``kernels_per_step``: contender (``torch``, ``torch.nn``, ``jax``,
    ``jax.grad``) -> ``{"forward", "backward", "unit"}``, the ops one time step
    launches (:mod:`~portable_rnn.app.bench.kernels`; counted on the CPU).
``compile_vs_T``
    JAX compile times (``jax.jit(...).lower().compile()``) of our LSTM
    forward + backward and of the ``jax.grad`` reference at (1, T, 32, 64),
    for several T.
``targets``
    :func:`~portable_rnn.app.bench.targets.targets`.

``err`` is the max abs difference over ``dx`` and all parameter gradients
from the contender's warm-up run, divided by the max abs value of
``torch.nn``'s. GFLOP/s counts the matmul FLOPs only (:attr:`Case.flops`).
Nothing here asserts a timing; the numbers are for reading.
"""

from __future__ import annotations

import contextlib
import functools
import json
import statistics
import sys
import time

import numpy as np

from ... import backends
from . import contenders as ours
from . import references as refs
from .cases import BENCH_BACKENDS, BENCH_CELLS, CONFIGS, QUICK_CONFIGS, Case, host_inputs
from .contenders import Skip, fwd_bwd
from .kernels import kernels_per_step
from .machine import cores, format_load, load, machine_info
from .targets import targets
from .timing import SETTLE_S, pin_threads, time_all

__all__ = ["SCHEMA", "run", "compile_vs_T", "write_json"]

SCHEMA = "portable_rnn.bench/1"


#: Our contenders on each non-NumPy backend, ``(label, build(case, spec, params, x, backend))``: the
#: layer called by hand, then its framework face (``jax.apply``, ``torch.module``) on the same device.
_OURS = {
    "jax": [("jax", ours.ours_jax), ("jax.apply", ours.ours_apply)],
    "torch": [("torch", ours.ours_torch), ("torch.module", ours.ours_torch_module)],
    "torch:cuda": [("torch:cuda", ours.ours_torch), ("torch.module:cuda", ours.ours_torch_module)],
    "cupy": [("cupy", ours.ours_cupy)],
    "jax:gpu": [("jax:gpu", ours.ours_jax), ("jax.apply:gpu", ours.ours_apply)],
}


#: What ``--quick`` runs for its first configuration and cell only: each is a JAX program compiled
#: for every case (about a second each on two cores), and a smoke run needs each to run once.
QUICK_ONCE = frozenset({"jax.apply", "jax.grad", "jax.apply:gpu", "jax.grad:gpu"})


def _builders(case, want, portable):
    """``(name, build)`` of every contender for ``case`` and the backends in ``want``, in table order."""
    spec, params, x = host_inputs(case)
    b = []
    if "numpy" in want:
        b.append(("numpy", lambda: ours.ours_numpy(case, spec, params, x)))
        if portable:
            b.append(("numpy:portable", lambda: ours.ours_numpy(case, spec, params, x, portable=True)))
    for name in ("jax", "torch", "torch:cuda", "cupy", "jax:gpu"):
        if name in want:
            b += [(label, functools.partial(build, case, spec, params, x, name)) for label, build in _OURS[name]]
    if want & {"numpy", "jax", "torch"}:
        b.append(("torch.nn", lambda: refs.torch_nn(case, spec, params, x)))
        if "jax" in want:
            b.append(("jax.grad", lambda: refs.jax_grad(case, spec, params, x)))
        b.append(("gemm", lambda: refs.gemm_numpy(case)))
        if "torch" in want:
            b.append(("gemm:torch", lambda: refs.gemm_torch(case)))
    if want & {"torch:cuda", "cupy", "jax:gpu"}:
        b.append(("torch.nn:cuda", lambda: refs.torch_nn(case, spec, params, x, "torch:cuda")))
        if "jax:gpu" in want:
            b.append(("jax.grad:gpu", lambda: refs.jax_grad(case, spec, params, x, "jax:gpu")))
        b.append(("gemm:torch:cuda", lambda: refs.gemm_torch(case, "torch:cuda")))
    return b


def _lineup(case, backend_names, portable, skipped, leave_out=frozenset()):
    """Every contender for ``case`` that can run here, but ``leave_out``; the others go to ``skipped``, with why."""
    out = []
    for name, build in _builders(case, set(backend_names), portable):
        if name in leave_out:
            skipped[name] = "--quick runs it for the first configuration and cell only"
            continue
        try:
            out.append(build())
        except Skip as why:
            skipped[name] = str(why)
        except ImportError as error:
            skipped[name] = f"{name.split(':')[0].split('.')[0]}: not installed ({error})"
    return out


#: Each framework face and the contender it wraps: their ratio is what the framework's machinery costs.
_FACE_OF = {"jax.apply": "jax", "torch.module": "torch"}


def _ratios(contenders: dict) -> dict:
    """``"ours/reference" -> median ratio`` for each of our contenders against the references of its group.

    Every one of ours is compared with ``torch.nn`` and the GEMM bound of its
    group; JAX contenders also with ``jax.grad``, CPU torch ones with
    torch's GEMM bound, and a framework face (``jax.apply``,
    ``torch.module``) with the layer it wraps called by hand.
    """
    med = {name: v["median_s"] for name, v in contenders.items()}
    ratios = {}
    for name, v in contenders.items():
        if v["kind"] != "ours":
            continue
        g = v["group"]
        base, _, device = name.partition(":")
        wanted = ["torch.nn" if g == "cpu" else f"torch.nn:{g}"]
        if name.startswith("jax"):
            wanted.append("jax.grad" if g == "cpu" else "jax.grad:gpu")
        wanted.append("gemm" if g == "cpu" else f"gemm:torch:{g}")
        if g == "cpu" and name.startswith("torch"):
            wanted.append("gemm:torch")
        if base in _FACE_OF:
            wanted.append(_FACE_OF[base] + (f":{device}" if device else ""))
        for r in wanted:
            if r in med:
                ratios[f"{name}/{r}"] = med[name] / med[r]
    return ratios


def relative_error(got: dict, ref: dict) -> float:
    """Max abs difference over the shared keys, each divided by the reference's max abs value."""
    worst = 0.0
    for key, r in ref.items():
        if key not in got:
            continue
        r = np.asarray(r, dtype=np.float64)
        g = np.asarray(got[key], dtype=np.float64)
        scale = max(float(np.max(np.abs(r), initial=0.0)), 1e-300)
        worst = max(worst, float(np.max(np.abs(g - r), initial=0.0)) / scale)
    return worst


def measure(case, backend_names, repeats, portable, check, settle, stretch=True, leave_out=frozenset()) -> dict:
    """Time every contender of ``case`` but ``leave_out``; the report's ``results`` entry.

    ``stretch`` is :func:`~portable_rnn.app.bench.timing.time_all`'s.
    """
    skipped: dict[str, str] = {}
    contenders = _lineup(case, backend_names, portable, skipped, leave_out)
    times, warm = time_all(contenders, repeats, settle, stretch)
    ref = None
    if check:
        ref = next((c.grads(warm[c.name]) for c in contenders
                    if c.name.startswith("torch.nn") and c.grads is not None), None)
    entry = {"cell": case.cell, "N": case.N, "T": case.T, "D": case.D, "H": case.H,
             "dtype": case.dtype, "flops": case.flops, "contenders": {}, "ratios": {}, "skipped": skipped,
             "kernels_per_step": kernels_per_step(case.cell, backend_names)}
    for c in contenders:
        med = statistics.median(times[c.name])
        info = {"kind": c.kind, "device": c.device, "group": c.group, "median_s": med,
                "times_s": times[c.name], "gflops": case.flops / med / 1e9,
                "compile_s": c.compile_s, "peak_bytes": None, "tape_bytes": None,
                "peak_over_tape": None, "peak_over_tape_and_grads": None, "err": None}
        if ref is not None and c.grads is not None and not c.name.startswith("torch.nn"):
            info["err"] = relative_error(c.grads(warm[c.name]), ref)
        if c.memory is not None:
            info.update(c.memory())
        entry["contenders"][c.name] = info
    del warm
    entry["ratios"] = _ratios(entry["contenders"])
    return entry


def compile_vs_T(steps=(10, 100, 1000), N=1, D=32, H=64, dtype="float32"):
    """Compile times of our jitted LSTM forward + backward and of the ``jax.grad`` reference, per T."""
    import jax
    import jax.numpy as jnp

    rows = []
    for T in steps:
        case = Case("lstm", N, T, D, H, dtype)
        spec, params, x = host_inputs(case)
        p = {k: jnp.asarray(v) for k, v in params.items()}
        xj = jnp.asarray(x)

        def fwd_bwd_jax(p, x, spec=spec):
            return fwd_bwd(spec, p, x, jnp.ones_like)

        row = {"T": T}
        for name, fn in (("ours", fwd_bwd_jax), ("jax.grad", refs.jax_grad_fn("lstm"))):
            start = time.perf_counter()
            jax.jit(fn).lower(p, xj).compile()
            row[name] = time.perf_counter() - start
        rows.append(row)
    return rows


def _default_backends() -> list:
    """The bench backends that import and have their device here."""
    available, _ = backends.discover(BENCH_BACKENDS)
    return list(available)


def run(*, configs=None, cells=BENCH_CELLS, backend_names=None, repeats=5, threads=None, quick=False,
        portable=False, check=True, compile_study=None, settle=None, out=None) -> dict:
    """Run the benchmark and return the JSON-able report (see the module docstring).

    Parameters
    ----------
    configs : list of (N, T, D, H, dtype), optional
        Default :data:`~portable_rnn.app.bench.cases.CONFIGS` (``QUICK_CONFIGS`` when ``quick``).
    cells : iterable of {"rnn", "lstm", "gru"}
    backend_names : iterable of str, optional
        From :data:`~portable_rnn.app.bench.cases.BENCH_BACKENDS`; default every one that works here.
    repeats : int
        Timed rounds (median reported).
    threads : int, optional
        Threads for torch and NumPy's BLAS; default the usable CPUs (1 when ``quick``).
    quick : bool
        Tiny configurations, no compile study, one thread, ``repeats`` rounds
        even for short runs, and :data:`QUICK_ONCE` for the first configuration
        and cell only: a smoke run that the plumbing works.
    portable : bool
        Also time the NumPy portable path (``numpy:portable``).
    check : bool
        Compare gradients with torch.nn.
    compile_study : bool, optional
        JAX compile time against T; default on unless ``quick``.
    settle : float, optional
        Pause in seconds before every timed run; default
        :data:`~portable_rnn.app.bench.timing.SETTLE_S`, 0 when ``quick``.
    out : file or False, optional
        Where the tables go (default ``sys.stdout``); ``False`` prints nothing.
    """
    out = sys.stdout if out is None else out
    say = (lambda *a: None) if out is False else (lambda *a: print(*a, file=out, flush=True))
    configs = list(configs or (QUICK_CONFIGS if quick else CONFIGS))
    backend_names = _default_backends() if backend_names is None else list(backend_names)
    # A smoke run needs no parallel BLAS, and on a shared 2-core machine two pinned threads timed a
    # torch.nn LSTM of about 1 ms at 470 ms (one thread: 1.2 ms at the same load).
    threads = threads or (1 if quick else cores())
    settle = (0.0 if quick else SETTLE_S) if settle is None else settle
    if compile_study is None:
        compile_study = not quick
    settings = {"quick": quick, "repeats": repeats, "threads": threads, "settle_s": settle,
                "backends": backend_names, "cells": list(cells), "configs": [list(c) for c in configs]}
    with contextlib.ExitStack() as stack:
        if any(b.startswith("jax") for b in backend_names) and any(c[4] == "float64" for c in configs):
            stack.enter_context(backends.jax_float64())
        stack.enter_context(backends.full_precision_matmuls())
        stack.callback(pin_threads(threads))
        return _report(settings, portable, check, compile_study, say)


def _say_machine(m, threads, say) -> None:
    say(f"machine: {m['cpu']}, {m['cores']} cores, {threads} threads pinned (torch, BLAS); "
        f"load {format_load(m['load_before'])}")
    for b in m["blas"]:
        if b.get("user_api") == "blas":
            say(f"BLAS: {b.get('internal_api')} {b.get('version')} kernel={b.get('architecture')} "
                f"threads={b.get('num_threads')}; OPENBLAS_CORETYPE={m['env']['OPENBLAS_CORETYPE']}")
    say("NumPy elementwise, ns/element on 1 thread (SIMD found: "
        + ", ".join(m["numpy_simd"] or ["unknown"]) + "): "
        + "; ".join(f"{dt} " + " ".join(f"{k[:-3]} {v:.2f}" for k, v in c.items())
                    for dt, c in m["elementwise"].items()))
    say(f"XLA CPU threads: {m['xla_threads']}")
    say("float32 matmuls: " + "; ".join(f"{k} {v}" for k, v in m["matmul_precision"].items()))


def _fmt_bytes(n):
    return "-" if n is None else f"{n / 2**20:.1f}M"


def _say_entry(entry, say) -> None:
    say(f"\n{entry['cell'].upper()} N={entry['N']} T={entry['T']} D={entry['D']} H={entry['H']} "
        f"{entry['dtype']}  ({entry['flops'] / 1e9:.2f} GFLOP)")
    say(f"  {'contender':18s} {'median ms':>10s} {'GFLOP/s':>8s} {'compile s':>9s} "
        f"{'peak':>8s} {'peak/tape':>9s} {'err':>8s}")
    for name, c in entry["contenders"].items():
        comp = "-" if c["compile_s"] is None else f"{c['compile_s']:.2f}"
        pt = "-" if c["peak_over_tape"] is None else f"{c['peak_over_tape']:.2f}"
        err = "-" if c["err"] is None else f"{c['err']:.1e}"
        say(f"  {name:18s} {1e3 * c['median_s']:10.2f} {c['gflops']:8.1f} {comp:>9s} "
            f"{_fmt_bytes(c['peak_bytes']):>8s} {pt:>9s} {err:>8s}")
    if entry["ratios"]:
        say("  ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in entry["ratios"].items()))
    if entry["kernels_per_step"]:
        say("  kernels per step (forward/backward): " + ", ".join(
            f"{k} {v['forward']:.3g}/{v['backward']:.3g}" for k, v in entry["kernels_per_step"].items()))
    for name, why in entry["skipped"].items():
        say(f"  skipped {name}: {why}")


def _say_targets(report, say) -> None:
    say("\ntargets:" if report["targets"] else "\ntargets: none at these configurations")
    for t in report["targets"]:
        mark = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        val = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        say(f"  {t['name']:48s} {val:>7s} (limit {t['limit']})  {mark}")
    say(f"load after: {format_load(report['machine']['load_after'])}")


def _report(settings, portable, check, compile_study, say) -> dict:
    """Measure every (config, cell) and the compile study; print as it goes; return the report."""
    report = {"schema": SCHEMA, "machine": machine_info(settings["backends"], settings["threads"]),
              "settings": settings, "results": [], "compile_vs_T": [], "targets": []}
    report["machine"]["load_before"] = load()
    _say_machine(report["machine"], settings["threads"], say)
    quick = settings["quick"]
    for i, config in enumerate(settings["configs"]):
        for j, cell in enumerate(settings["cells"]):
            entry = measure(Case(cell, *config), settings["backends"], settings["repeats"], portable, check,
                            settings["settle_s"], stretch=not quick,
                            leave_out=QUICK_ONCE if quick and (i, j) != (0, 0) else frozenset())
            report["results"].append(entry)
            _say_entry(entry, say)
    if compile_study and "jax" in settings["backends"]:
        with contextlib.suppress(ImportError):
            report["compile_vs_T"] = compile_vs_T()
            say("\nJAX compile time (s) of LSTM fwd+bwd at (1, T, 32, 64):")
            for row in report["compile_vs_T"]:
                say(f"  T={row['T']:5d}  ours {row['ours']:.2f}  jax.grad {row['jax.grad']:.2f}")
    report["targets"] = targets(report["results"], report["compile_vs_T"])
    report["machine"]["load_after"] = load()
    _say_targets(report, say)
    return report


def write_json(path, report) -> None:
    """Write ``report`` as indented JSON."""
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
