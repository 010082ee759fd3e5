"""The ratios this package aims for on the reference configurations, checked against a report.

Each target is ``{"name", "value", "limit", "met"}``: ``met`` is whether
``value <= limit``, ``None`` when not measured. Ratios are medians from one
run, so both sides of a ratio saw the same machine load.
"""

from __future__ import annotations

from .cases import CONFIGS

__all__ = ["TARGET_SHAPES", "LONG_SEQUENCE", "TORCH_MODULE_CELLS", "targets"]

#: Shapes (N, T, D, H) with the NumPy targets: against torch.nn, and within 1.25x of the GEMM bound.
TARGET_SHAPES = [(64, 100, 128, 256), (256, 50, 512, 512)]
#: The long single sequence, where jitted JAX should beat torch.nn.
LONG_SEQUENCE = (1, 1000, 32, 64)
#: Cells whose ``portable_rnn.torch`` module should be at least as fast as ``torch.nn`` on the CPU; the
#: LSTM is not among them: oneDNN runs ``torch.nn.LSTM``'s whole loop as one fused kernel.
TORCH_MODULE_CELLS = ("gru", "rnn")


def _ratio_targets(result) -> list:
    """``(name, ratio key, limit)`` of the ratio targets of one result."""
    shape = tuple(result[k] for k in ("N", "T", "D", "H"))
    wanted = [("numpy/torch.nn", 1.0), ("numpy/gemm", 1.25)] if shape in TARGET_SHAPES else []
    wanted.append(("jax/jax.grad", 1.0))
    if shape == LONG_SEQUENCE:
        wanted.append(("jax/torch.nn", 1.0))
    wanted.append(("torch/torch.nn", 1.2))
    # The hand-written backward inside jax.grad must beat JAX's own differentiation everywhere.
    wanted += [("jax.apply/jax.grad", 1.0), ("jax.apply:gpu/jax.grad:gpu", 1.0)]
    if result["cell"] in TORCH_MODULE_CELLS:
        wanted.append(("torch.module/torch.nn", 1.0))
    return [(key, limit) for key, limit in wanted if key in result["ratios"]]


def targets(results, compile_rows) -> list:
    """The targets met or missed by ``results`` (reference configurations only) and the compile study.

    Parameters
    ----------
    results : list of dict
        The report's ``results``.
    compile_rows : list of dict
        The report's ``compile_vs_T``: ``{"T", "ours", "jax.grad"}``.
    """
    out = []

    def entry(name, value, limit):
        out.append({"name": name, "value": value, "limit": limit,
                    "met": None if value is None else bool(value <= limit)})

    reference = {tuple(c) for c in CONFIGS}
    for r in results:
        config = tuple(r[k] for k in ("N", "T", "D", "H", "dtype"))
        if config not in reference:
            continue
        tag = f"{r['cell']} ({','.join(str(v) for v in config[:4])}) {config[4]}"
        for key, limit in _ratio_targets(r):
            entry(f"{key} {tag}", r["ratios"][key], limit)
        numpy = r["contenders"].get("numpy")
        if numpy and numpy.get("peak_over_tape_and_grads") is not None:
            # The returned gradients are alive at the peak whatever the implementation, so the
            # 1.2x budget is for the scratch on top of the tape and the results.
            entry(f"numpy peak/(tape+grads) {tag}", numpy["peak_over_tape_and_grads"], 1.2)
    if compile_rows:
        big = max(compile_rows, key=lambda row: row["T"])
        small = min(compile_rows, key=lambda row: row["T"])
        entry(f"jax compile s at T={big['T']}", big["ours"], 3.0)
        entry(f"jax compile T={big['T']}/T={small['T']} (flat in T)", big["ours"] / small["ours"], 1.5)
    return out
