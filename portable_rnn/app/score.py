r"""``portable-rnn score``: bits per character of a checkpoint on many files, computed on a Dask cluster.

What the figure is
------------------
A file of ``n`` characters gives ``n - 1`` predictions, cut into
*independent windows* of ``seq_len`` consecutive predictions (the last
window may be shorter): window ``i`` reads characters ``i L .. i L + L - 1``
from a zero state and predicts the next character of each. Every prediction
is counted exactly once; the figure of a file is the mean of
:math:`-\log_2 p(x_{t+1} \mid \text{its window up to } x_t)`, and the
overall figure the mean over the predictions of all files.

This is not the figure of ``portable-rnn eval``, which carries the state
across windows (at most ``batch`` long streams): with no context carried
over, a window's first characters are predicted with less, so ``score`` is
a little higher. Independent windows are what makes the work divide into
as many tasks as there are windows, and keep every task's memory that of
``chunk_size`` windows whatever the file's length.

How it runs
-----------
The windows of each file are a dask array chunked along the windows
(``chunk_size`` per block); :func:`portable_rnn.dask.char_model_nll` makes
one task per block, which runs :meth:`CharModel.forward` on NumPy and sums
the negative log-likelihood of its block. The parameters are shipped once
per task inside the graph. Without ``scheduler`` a
``distributed.LocalCluster`` of ``workers`` processes on 127.0.0.1 (no
dashboard) is started and closed; with it, the cluster at that address is
used, whose workers must have ``portable-rnn`` installed.
"""

from __future__ import annotations

import contextlib
import numpy as np

from .checkpoint import load_checkpoint, pick_checkpoint
from .corpus import read_text
from .errors import UsageError
from .eval import LN2
from .report import WorkProgress

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_WORKERS", "CONNECT_TIMEOUT_S", "windows", "run_score"]

#: Windows per Dask task without ``--chunk-size``.
DEFAULT_CHUNK_SIZE = 256
#: Worker processes of the local cluster without ``--workers``.
DEFAULT_WORKERS = 2
#: Seconds to wait for an existing scheduler before giving up with one line.
CONNECT_TIMEOUT_S = 10


def windows(tokens: np.ndarray, seq_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The independent windows of ``tokens``, as ``(inputs, targets)`` int32 pairs of shape (rows, width).

    The full windows come first, (``(n - 1) // seq_len``, ``seq_len``); a
    shorter last window, when there is one, is a second pair of one row.
    Together they hold each of the ``n - 1`` predictions once.
    """
    predictions = int(tokens.shape[0]) - 1
    full, rest = divmod(predictions, seq_len)
    tokens = tokens.astype(np.int32)
    pairs = []
    if full:
        pairs.append((tokens[:full * seq_len].reshape(full, seq_len),
                      tokens[1:full * seq_len + 1].reshape(full, seq_len)))
    if rest:
        pairs.append((tokens[full * seq_len:-1][None, :], tokens[full * seq_len + 1:][None, :]))
    return pairs


def _dask_modules():
    """``(dask.array, distributed, portable_rnn.dask)``, or one line naming the extra to install."""
    try:
        import dask.array as da
        import distributed

        from .. import dask as prnn_dask
    except ImportError as error:
        raise UsageError(f"score runs on Dask, which is not installed ({error.name} is missing): "
                         "pip install 'portable-rnn[dask]'") from None
    return da, distributed, prnn_dask


@contextlib.contextmanager
def _client(distributed, scheduler: str | None, workers: int):
    """A Dask client: of the cluster at ``scheduler``, or of a local cluster of ``workers`` processes."""
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError, TypeError) as error:
            raise UsageError(f"cannot reach the Dask scheduler {scheduler!r}: {str(error).splitlines()[0]}") from None
        with client:
            yield client
        return
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        yield client


def _file_tokens(paths, vocab) -> list[np.ndarray]:
    """Each file's token ids; one line naming the file for anything unreadable, too short or out of vocabulary."""
    encoded = []
    for path in paths:
        text = read_text(path)
        if len(text) < 2:
            raise UsageError(f"text file {str(path)!r} has 1 character; scoring needs at least 2")
        try:
            encoded.append(vocab.encode(text))
        except UsageError as error:
            raise UsageError(f"text file {str(path)!r}: {error}") from None
    return encoded


def _nll_parts(da, prnn_dask, model, params, tokens, seq_len, chunk_size) -> list:
    """One file's negative log-likelihood (nats) as ``dask.delayed`` parts, one per chunk of windows."""
    return [part for x, y in windows(tokens, seq_len)
            for part in prnn_dask.char_model_nll_parts(model, params, da.from_array(x, chunks=(chunk_size, -1)),
                                                       da.from_array(y, chunks=(chunk_size, -1)))]


def run_score(checkpoint, files, *, seq_len=None, scheduler=None, workers=DEFAULT_WORKERS,
              chunk_size=DEFAULT_CHUNK_SIZE, out=None, progress="auto") -> dict:
    """``portable-rnn score``: print and return the bits per character of each file and overall.

    Parameters
    ----------
    checkpoint : str or path
        A checkpoint file, or a run's folder (its ``best.npz`` if any).
    files : list of str or path
        UTF-8 text files, each of at least 2 characters in the model's vocabulary.
    seq_len : int, optional
        Predictions per independent window (default: the run's ``--seq-len``).
    scheduler : str, optional
        Address of a running Dask scheduler, e.g. ``tcp://10.0.0.5:8786``.
    workers : int
        Worker processes of the local cluster (ignored with ``scheduler``).
    chunk_size : int
        Windows per Dask task.
    out : file, optional
        Default ``sys.stdout``.
    progress : {"auto", "bar", "lines", "none"}
        How the blocks done are shown (:class:`~.report.WorkProgress`, on stderr).

    Returns
    -------
    dict
        ``{"files": [(file, bits per character, predictions), ...], "overall": bits per character}``
        (a file given twice is scored twice and counted twice overall).
    """
    da, distributed, prnn_dask = _dask_modules()
    path = pick_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    seq_len = ckpt.meta["train"]["seq_len"] if seq_len is None else seq_len
    tokens = _file_tokens(files, ckpt.vocab)
    model = ckpt.model
    parts = [_nll_parts(da, prnn_dask, model, ckpt.params, t, seq_len, chunk_size) for t in tokens]
    with _client(distributed, scheduler, workers) as client:
        where = scheduler if scheduler is not None else f"a local cluster of {workers} worker process(es)"
        futures = [client.compute(file_parts) for file_parts in parts]
        with WorkProgress(progress, sum(map(len, parts)), "block") as shown:
            for _ in distributed.as_completed([f for file_futures in futures for f in file_futures]):
                shown.advance()
        totals = [float(np.sum(client.gather(file_futures))) for file_futures in futures]
    counts = [int(t.shape[0]) - 1 for t in tokens]
    print(f"{path} (step {ckpt.meta['step']}) on {where}, independent windows of {seq_len} characters:", file=out)
    scores = [(str(name), float(total) / count / LN2, count) for name, total, count in zip(files, totals, counts)]
    for name, bits, count in scores:
        print(f"  {name}: {bits:.4f} bits per character ({count:,} predictions)", file=out)
    overall = float(sum(totals)) / sum(counts) / LN2
    print(f"  overall: {overall:.4f} bits per character ({sum(counts):,} predictions)", file=out)
    return {"files": scores, "overall": overall}
