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
(``chunk_size`` per block), and each block is one task. A task runs
:meth:`CharModel.forward` on the chosen backend and device (NumPy by
default; ``jax.jit``-compiled on JAX), copies the logits to the host and sums
the negative log-likelihood of its block there in float64, as ``eval`` does.
The parameters travel as host NumPy arrays, once per task inside the graph,
and each worker process moves them to its backend: the backend and device are
resolved on every worker, so they must exist there (they are checked here
first, before a cluster starts). Without ``scheduler`` a
``distributed.LocalCluster`` of ``workers`` processes on 127.0.0.1 (no
dashboard) is started and closed; with it, the cluster at that address is
used, whose workers must have ``portable-rnn`` installed.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

from .. import backends
from .checkpoint import load_checkpoint, pick_checkpoint
from .corpus import read_text
from .errors import UsageError
from .eval import LN2, _forward_function, _nll_sum
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
    """``(dask, dask.array, distributed)``, or one line naming the extra to install."""
    try:
        import dask
        import dask.array as da
        import distributed
    except ImportError as error:
        raise UsageError(f"score runs on Dask, which is not installed ({error.name} is missing): "
                         "pip install 'portable-rnn[dask]'") from None
    return dask, da, distributed


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


@functools.lru_cache(maxsize=4)
def _forward_on(model, backend: str, device: str | None):
    """``(runtime, forward)`` for a worker: resolved once per process, so JAX compiles once per block shape."""
    runtime = backends.resolve(backend, device)
    return runtime, _forward_function(model, runtime)


def _block_nll(model, params: dict, backend: str, device: str | None, inputs: np.ndarray,
               targets: np.ndarray) -> np.ndarray:
    """Summed negative log-likelihood (nats) of one block of windows, as a host float64 array of shape (1,).

    ``params`` are host arrays, moved to ``backend``'s ``device`` in the
    worker; the log-softmax is taken on the host in float64.
    """
    runtime, forward = _forward_on(model, backend, device)
    dtype = str(params["decoder.weight"].dtype)
    x64 = backends.jax_float64() if runtime.library == "jax" and dtype == "float64" else contextlib.nullcontext()
    with runtime.context(), x64:
        logits, _ = forward({k: runtime.asarray(v, dtype) for k, v in params.items()}, runtime.asarray(inputs))
        logits = runtime.to_numpy(logits)
    return np.array([_nll_sum(logits, targets, np.ones(targets.shape, dtype=bool))])


def _nll_parts(dask, da, model, params, tokens, seq_len, chunk_size, backend, device) -> list:
    """One file's negative log-likelihood (nats) as ``dask.delayed`` parts, one per chunk of windows."""
    task = dask.delayed(_block_nll)
    parts = []
    for x, y in windows(tokens, seq_len):
        xs = da.from_array(x, chunks=(chunk_size, -1)).to_delayed().ravel()
        ys = da.from_array(y, chunks=(chunk_size, -1)).to_delayed().ravel()
        parts += [task(model, params, backend, device, bx, by) for bx, by in zip(xs, ys)]
    return parts


def run_score(checkpoint, files, *, seq_len=None, scheduler=None, workers=DEFAULT_WORKERS,
              chunk_size=DEFAULT_CHUNK_SIZE, backend="numpy", device=None, out=None, progress="auto") -> dict:
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
    backend, device : str
        Where each task runs the model, as for ``eval`` (default NumPy on
        the CPU); every worker must have them.
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
    dask, da, distributed = _dask_modules()
    runtime = backends.resolve(backend, device)  # a missing backend or device: one line, before any cluster
    path = pick_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    seq_len = ckpt.meta["train"]["seq_len"] if seq_len is None else seq_len
    tokens = _file_tokens(files, ckpt.vocab)
    model = ckpt.model
    parts = [_nll_parts(dask, da, model, ckpt.params, t, seq_len, chunk_size, backend, device) for t in tokens]
    with _client(distributed, scheduler, workers) as client:
        where = scheduler if scheduler is not None else f"a local cluster of {workers} worker process(es)"
        futures = [client.compute(file_parts) for file_parts in parts]
        with WorkProgress(progress, sum(map(len, parts)), "block") as shown:
            for _ in distributed.as_completed([f for file_futures in futures for f in file_futures]):
                shown.advance()
        totals = [float(np.sum(client.gather(file_futures))) for file_futures in futures]
    counts = [int(t.shape[0]) - 1 for t in tokens]
    print(f"{path} (step {ckpt.meta['step']}) on {where} ({runtime.name} on {runtime.device}), independent windows "
          f"of {seq_len} characters:", file=out)
    scores = [(str(name), float(total) / count / LN2, count) for name, total, count in zip(files, totals, counts)]
    for name, bits, count in scores:
        print(f"  {name}: {bits:.4f} bits per character ({count:,} predictions)", file=out)
    overall = float(sum(totals)) / sum(counts) / LN2
    print(f"  overall: {overall:.4f} bits per character ({sum(counts):,} predictions)", file=out)
    return {"files": scores, "overall": overall}
