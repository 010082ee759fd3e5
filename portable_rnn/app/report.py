"""What a run shows and writes besides its checkpoint: progress, plots, the loss history and samples."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..io import atomic_write

__all__ = ["Progress", "WorkProgress", "PROGRESS_MODES", "PROGRESS_EVERY_S", "plot_curves", "smooth",
           "write_history", "append_sample"]


#: The ``--progress`` choices of train, eval and score.
PROGRESS_MODES = ("auto", "bar", "lines", "none")
#: Seconds between the lines of :class:`WorkProgress` (work shorter than that prints none).
PROGRESS_EVERY_S = 5.0


def _display(mode: str, **bar):
    """``(mode, tqdm bar or None)``: ``auto`` is a bar on a terminal (stderr), else lines; no tqdm, lines."""
    if mode == "auto":
        mode = "bar" if getattr(sys.stderr, "isatty", lambda: False)() else "lines"
    if mode == "bar":
        try:
            from tqdm import tqdm
        except ImportError:
            return "lines", None
        return "bar", tqdm(file=sys.stderr, dynamic_ncols=True, **bar)
    return mode, None


class Progress:
    """tqdm bar on a terminal (``sys.stderr``), else plain lines on ``out``; a context manager.

    The loss shown is the mean over the steps since the last update; tokens/s
    is measured over the same steps (bar) or since the last line (lines).

    Parameters
    ----------
    mode : {"auto", "bar", "lines", "none"}
        ``auto`` is a bar when ``sys.stderr`` is a terminal. Without tqdm a
        bar falls back to lines.
    total, initial : int
        The last step and the step the run starts from.
    out : file
        Where lines and :meth:`write` go.
    log_every : int
        Steps between lines (the last step always gets one).
    tokens_per_step : int
    """

    def __init__(self, mode, total, initial, out, log_every, tokens_per_step):
        self.out, self.log_every, self.bar = out, log_every, None
        self.tokens_per_step = tokens_per_step
        self.start = self.mark_time = time.perf_counter()
        self.mark_step = initial
        self.losses = []
        self.mode, self.bar = _display(mode, total=total, initial=initial, unit="step", leave=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, step, total, losses, val=None):
        """Record ``losses`` (host floats) up to ``step``; show them when a line or the bar is due.

        ``val`` is the latest held-out loss (nats per character), shown with
        its bits per character, or ``None`` before the first evaluation.
        """
        if not losses:
            return
        self.losses += losses
        if self.mode == "none" or (self.bar is None and step % self.log_every != 0 and step != total):
            return
        now = time.perf_counter()
        tok_s = self.tokens_per_step * (step - self.mark_step) / max(now - self.mark_time, 1e-9)
        loss = float(np.mean(self.losses))
        self.mark_time, self.mark_step, self.losses = now, step, []
        held_out = {} if val is None else {"val": f"{val:.4f}", "val_bpc": f"{val / math.log(2):.3f}"}
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", **held_out, tok_s=f"{tok_s:,.0f}", refresh=False)
            self.bar.update(step - self.bar.n)
        else:
            shown = f"  val {held_out['val']} ({held_out['val_bpc']} bits/char)" if held_out else ""
            print(f"step {step:>6d}/{total}  loss {loss:.4f}{shown}  {tok_s:>9,.0f} tok/s  {now - self.start:7.1f} s",
                  file=self.out, flush=True)

    def write(self, text):
        """Print ``text`` without breaking the bar (nothing in mode ``none``)."""
        if self.mode == "none":
            return
        if self.bar is not None:
            self.bar.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def close(self):
        """Close the bar, if any."""
        if self.bar is not None:
            self.bar.close()


class WorkProgress:
    """Progress of a counted piece of work (eval's windows, score's blocks); a context manager.

    A tqdm bar on a terminal (``sys.stderr``), else lines on ``out``, the
    first after :data:`PROGRESS_EVERY_S` seconds and then as often, so that
    work shorter than that prints nothing; nothing in mode ``none``.

    Parameters
    ----------
    mode : {"auto", "bar", "lines", "none"}
    total : int
        Units of work in all.
    unit : str
        Their name, e.g. ``"window"``.
    out : file, optional
        Default ``sys.stderr`` (the results go to ``sys.stdout``).
    """

    def __init__(self, mode, total, unit, out=None):
        self.total, self.unit, self.done, self.every_s = total, unit, 0, PROGRESS_EVERY_S
        self.out = sys.stderr if out is None else out
        self.start = self.shown = time.perf_counter()
        self.mode, self.bar = _display(mode, total=total, unit=unit, leave=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def advance(self, n: int = 1) -> None:
        """``n`` more units are done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if self.mode == "lines" and now - self.shown >= self.every_s:
            self.shown = now
            print(f"{self.done:,}/{self.total:,} {self.unit}s ({100 * self.done / max(self.total, 1):.0f}%), "
                  f"{now - self.start:.0f} s", file=self.out, flush=True)


def plot_curves(path, curves: dict, *, title: str, xlabel: str, ylabel: str, log_y: bool = False) -> str | None:
    """Save ``{label: (x, y)}`` as a PNG, atomically; return ``None``, or why it was skipped.

    A curve may be ``(x, y, style)``, ``style`` a dict of keyword arguments
    of ``Axes.plot`` (``marker``, ``alpha``, ...).

    Uses matplotlib's object API: no pyplot state, no display needed, safe in
    a process that plots more than once.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed (pip install 'portable-rnn[plot]')"
    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, (x, y, *style) in curves.items():
        ax.plot(x, y, label=label, **{"linewidth": 1.2, **(style[0] if style else {})})
    if log_y:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(Path(path), lambda f: fig.savefig(f, format="png"))
    return None


def smooth(values, beta: float = 0.95) -> list:
    """Bias-corrected exponential moving average (as Adam's moments, and TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for t, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**t))
    return out


def write_history(path, history: dict) -> None:
    """Write the histories (``{"step": [...], "loss": [...], ...}``) as JSON, atomically."""
    atomic_write(Path(path), lambda f: f.write(json.dumps(history).encode("utf-8")))


def append_sample(path, block: str) -> None:
    """Append a printed sample block (and a blank line) to the samples file."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(block + "\n")
