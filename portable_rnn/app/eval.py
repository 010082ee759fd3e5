r"""``portable-rnn eval``, and the held-out loss ``train`` reports: bits per character of a model on a text.

What the figure is
------------------
The mean, over every character of the text but the first, of
:math:`-\ln p(x_{t+1} \mid x_{\le t})` (nats per character), and the same
divided by :math:`\ln 2` (bits per character). The text of ``n`` tokens
gives ``n - 1`` predictions, read as ``R`` streams of ``S = ceil((n - 1) /
batch)`` consecutive predictions (``R <= batch``, the run's batch size, so
that the figure of a checkpoint does not depend on the machine): each
stream starts from a zero state, as an epoch of training does, and its
windows of ``seq_len`` characters carry the state from one to the next.
The last stream may be shorter; its padding is never counted. Every
prediction is counted exactly once.

How it runs
-----------
:meth:`~portable_rnn.model.CharModel.forward` per window (``jax.jit``-
compiled on JAX), so no gradient is computed and each window's tape is
dropped when the call returns: memory is that of one window whatever the
text's length. The
logits of each window are copied to the host and the log-softmax is taken
there in float64, so the figure does not depend on the backend's reduction
order beyond the logits themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from pathlib import Path

import numpy as np

from .. import backends
from .checkpoint import Checkpoint, load_checkpoint, pick_checkpoint
from .corpus import Vocabulary, load_text, split_text
from .errors import UsageError
from .report import WorkProgress

__all__ = ["LN2", "mean_loss", "stream_layout", "held_out_text", "evaluate_checkpoint", "run_eval"]

LN2 = math.log(2.0)


def stream_layout(n_tokens: int, batch: int) -> tuple[int, int]:
    """``(R, S)``: the streams and predictions per stream that cover the ``n_tokens - 1`` predictions."""
    predictions = n_tokens - 1
    if predictions < 1:
        raise UsageError(f"the text has {n_tokens} character(s); evaluating needs at least 2")
    length = -(-predictions // batch)
    return -(-predictions // length), length


def _streams(tokens: np.ndarray, batch: int):
    """``(inputs, targets, counted)``: (R, S) int32 arrays and the bool mask of real predictions."""
    rows, length = stream_layout(int(tokens.shape[0]), batch)
    predictions = tokens.shape[0] - 1
    padded = rows * length

    def grid(values):
        return np.concatenate([values, np.zeros(padded - predictions, np.int32)]).reshape(rows, length)

    counted = (np.arange(padded) < predictions).reshape(rows, length)
    return grid(tokens[:-1].astype(np.int32)), grid(tokens[1:].astype(np.int32)), counted


def _forward_function(model, runtime):
    """``model.forward``, ``jax.jit``-compiled on JAX (one compile per window length)."""
    if runtime.library == "jax":
        import jax

        return jax.jit(model.forward)
    return model.forward


def _nll_sum(logits: np.ndarray, targets: np.ndarray, counted: np.ndarray) -> float:
    """Sum of ``-log softmax(logits)[target]`` over the counted positions, in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=-1))
    picked = np.take_along_axis(z, targets[..., None].astype(np.int64), axis=-1)[..., 0]
    return float(np.sum((log_norm - picked)[counted]))


def mean_loss(model, params, tokens: np.ndarray, *, batch: int, seq_len: int, runtime, progress=None) -> float:
    """Mean cross-entropy (nats per character) of ``model`` on ``tokens``; see the module docstring.

    Parameters
    ----------
    model : CharModel
    params : dict of str to array
        On ``runtime``'s device.
    tokens : numpy.ndarray (n,)
        Token ids, ``n >= 2``.
    batch, seq_len : int
        At most ``batch`` streams, windows of ``seq_len`` characters.
    runtime : portable_rnn.backends.Backend
    progress : callable, optional
        ``progress(total_windows)`` returning a context manager with
        ``advance()``, called once per window (:class:`~.report.WorkProgress`).

    Returns
    -------
    float
        Nats per character; divide by :data:`LN2` for bits.
    """
    inputs, targets, counted = _streams(tokens, batch)
    forward = _forward_function(model, runtime)
    state, total = model.init_state(params, inputs.shape[0]), 0.0
    starts = range(0, inputs.shape[1], seq_len)
    with (progress or _silent)(len(starts)) as shown:
        for t in starts:
            window = slice(t, t + seq_len)
            logits, state = forward(params, runtime.asarray(inputs[:, window]), state)
            total += _nll_sum(runtime.to_numpy(logits), targets[:, window], counted[:, window])
            shown.advance()
    return total / int(counted.sum())


class _silent(contextlib.nullcontext):
    """No progress display: ``_silent(total)`` with an ``advance()`` that does nothing."""

    def __init__(self, total):
        super().__init__(self)

    def advance(self, n: int = 1) -> None:
        pass


def held_out_text(ckpt: Checkpoint) -> tuple[str, str]:
    """``(text, where)``: the held-out split a checkpoint was validated on, rebuilt and checked.

    Raises
    ------
    UsageError
        The run held nothing out, its text cannot be read, or the text or
        its split is not the one the checkpoint records.
    """
    fraction = ckpt.meta["train"]["val_fraction"]
    if fraction == 0:
        raise UsageError("the checkpoint's run held nothing out (--val-fraction 0); pass --text FILE")
    text, source = load_text(ckpt.meta["text"]["source"])
    name = "the default corpus" if source == "default" else repr(source)
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != ckpt.meta["text"]["sha256"]:
        raise UsageError(f"{name} is not the text the checkpoint was trained on (its SHA-256 differs); "
                         "pass --text FILE")
    if Vocabulary.of(text) != ckpt.vocab:
        raise UsageError(f"the checkpoint's vocabulary is not the one {name} produces (the file was edited)")
    _, held_out = split_text(text, fraction)
    if hashlib.sha256(held_out.encode("utf-8")).hexdigest() != ckpt.meta["split"]["sha256"]:
        raise UsageError(f"the held-out split of {name} is not the one the checkpoint records")
    return held_out, f"the held-out {fraction:g} of {name}"


def evaluate_checkpoint(ckpt: Checkpoint, text: str, *, backend="numpy", device=None, progress=None) -> float:
    """Nats per character of ``ckpt``'s parameters on ``text``, with the run's batch and window.

    ``progress`` is :func:`mean_loss`'s.
    """
    tokens = ckpt.vocab.encode(text)
    train, model = ckpt.meta["train"], ckpt.model
    runtime = backends.resolve(backend, device)
    x64 = (backends.jax_float64() if runtime.library == "jax" and train["dtype"] == "float64"
           else contextlib.nullcontext())
    with runtime.context(), x64:
        params = {k: runtime.asarray(v, train["dtype"]) for k, v in ckpt.params.items()}
        return mean_loss(model, params, tokens, batch=train["batch"], seq_len=train["seq_len"], runtime=runtime,
                         progress=progress)


def run_eval(checkpoint, text=None, *, backend="numpy", device=None, out=None, progress="auto") -> float:
    """``portable-rnn eval``: print and return the bits per character of a checkpoint on a text.

    Parameters
    ----------
    checkpoint : str or path
        A checkpoint file, or the folder ``train`` wrote (its ``best.npz``
        when there is one, else its ``checkpoint.npz``).
    text : str or path, optional
        A UTF-8 text file; default: the checkpoint's held-out split.
    backend, device : str
    out : file, optional
        Default ``sys.stdout``.
    progress : {"auto", "bar", "lines", "none"}
        How the windows done are shown (:class:`~.report.WorkProgress`, on stderr).

    Returns
    -------
    float
        Bits per character.
    """
    path = pick_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    if text is None:
        content, where = held_out_text(ckpt)
    else:
        content, where = load_text(text)[0], repr(str(Path(text).resolve()))
    nats = evaluate_checkpoint(ckpt, content, backend=backend, device=device,
                               progress=lambda total: WorkProgress(progress, total, "window"))
    print(f"{path} (step {ckpt.meta['step']}) on {where} ({len(content) - 1:,} predictions): "
          f"{nats:.4f} nats = {nats / LN2:.4f} bits per character", file=out)
    return nats / LN2
