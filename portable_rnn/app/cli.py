"""The ``portable-rnn`` command line (also ``python -m portable_rnn``): argument parsing and dispatch.

``portable-rnn check``
    Run the documented fixtures on every installed backend and device and
    print a pass/fail table with timings: the first thing to run after
    installing (:mod:`portable_rnn.app.check`).
``portable-rnn train``
    Train a character language model (default: an LSTM on Shakespeare's
    Sonnets shipped with the package, the last 10% held out, about a minute
    on two CPU cores); see :mod:`portable_rnn.app.train`.
``portable-rnn sample CHECKPOINT``
    Generate text from a checkpoint written by ``train``.
``portable-rnn eval CHECKPOINT``
    Bits per character of a checkpoint on a text, by default its held-out
    split (:mod:`portable_rnn.app.eval`).
``portable-rnn score CHECKPOINT FILE...``
    Bits per character of each file and overall, in independent windows,
    computed on a Dask cluster (:mod:`portable_rnn.app.score`).

``sample`` and ``eval`` given a run's folder use its ``best.npz`` (the
lowest held-out loss) when there is one, else its ``checkpoint.npz``; ``eval``
names the file in its result line, ``sample`` on stderr (stdout is the text).
``portable-rnn gradients``
    The vanishing-gradient picture (:mod:`portable_rnn.app.gradients`).
``portable-rnn bench``
    Forward + backward timings against torch.nn, jax.grad and the GEMM bound
    (:mod:`portable_rnn.app.bench`).

With no command it prints this help. Bad input (files, flags, backends,
devices, checkpoints) gives one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from .._version import __version__
from ..backends import BACKEND_NAMES, BackendError
from ..model import MODES
from .bench.cases import BENCH_BACKENDS, BENCH_CELLS
from .bench.run import run as run_bench
from .bench.run import write_json
from .bench.timing import SETTLE_S
from .check import run_check
from .errors import Terminated, UsageError
from .eval import run_eval
from .gradients import run_gradients
from .sample import sample_text
from .report import PROGRESS_MODES
from .score import DEFAULT_CHUNK_SIZE, DEFAULT_WORKERS, run_score
from .checkpoint import DEFAULTS, pick_checkpoint
from .train import DEFAULT_STEPS, DEFAULT_VAL_EVERY, TrainConfig, train

__all__ = ["main"]

PROG = "portable-rnn"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind, minimum, strict, what):
    """An argparse type: a finite ``kind`` >= ``minimum`` (> with ``strict``)."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_POS_INT = _number(int, 0, True, "a positive integer")
_NONNEG_INT = _number(int, 0, False, "a non-negative integer")
_POS_FLOAT = _number(float, 0.0, True, "a positive number")
_NONNEG_FLOAT = _number(float, 0.0, False, "a non-negative number")


def _fraction(text):
    """An argparse type: a number in [0, 1)."""
    value = _NONNEG_FLOAT(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _names(choices, what):
    """An argparse type: a comma-separated list of names from ``choices``."""

    def parse(text):
        names = [n.strip() for n in text.split(",") if n.strip()]
        for name in names:
            if name not in choices:
                raise argparse.ArgumentTypeError(f"unknown {what} {name!r}; expected one of {', '.join(choices)}")
        return names

    return parse


def _renamed(new: str):
    """An argparse action for an old spelling of ``new``: stores as ``new`` does and says it is deprecated.

    Old spellings keep working for one release (a line on stderr each time).
    """

    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"{PROG}: {option_string} is deprecated, use {new} (the old spelling goes in the next release)",
                  file=sys.stderr)
            if isinstance(values, list):  # a comma-separated list: extend what --backend gave
                values = (getattr(namespace, self.dest, None) or []) + values
            setattr(namespace, self.dest, values)

    return Renamed


def _bench_config(text):
    """An argparse type: ``NxTxDxH[:float32|float64]`` -> ``(N, T, D, H, dtype)``."""
    try:
        shape, _, dtype = text.partition(":")
        N, T, D, H = (int(v) for v in shape.lower().split("x"))
        dtype = dtype or "float32"
        if dtype not in ("float32", "float64") or min(N, T, D, H) < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad config {text!r}: expected NxTxDxH[:float32|float64], e.g. 64x100x128x256:float32"
        ) from None
    return (N, T, D, H, dtype)


def _backend_flags(p, default="numpy"):
    p.add_argument("--backend", choices=BACKEND_NAMES, default=default, help=f"array backend (default {default})")
    p.add_argument("--device", help="device, e.g. cpu, cuda:0 (torch), gpu (jax), 0 (cupy)")


def _add_train(sub):
    p = sub.add_parser(
        "train", help="train a character language model (default: LSTM on Shakespeare's Sonnets)",
        description="Train a character language model with truncated BPTT, Adam and gradient clipping, "
                    "holding out the tail of the text to report the loss on text it never trained on. "
                    "Without --text it trains on Shakespeare's 154 Sonnets, shipped with the package.",
    )
    d = DEFAULTS
    p.add_argument("--text", metavar="FILE", help="UTF-8 text file (default: the embedded sonnets)")
    p.add_argument("--cell", choices=tuple(MODES),
                   help=f"recurrent cell (default {d['cell']}); mingru and minlstm are the minimal RNNs, whose "
                        "gates read only the input")
    _backend_flags(p)
    p.add_argument("--hidden", type=_POS_INT, metavar="H", help=f"hidden size (default {d['hidden']})")
    p.add_argument("--layers", type=_POS_INT, metavar="L", help=f"stacked layers (default {d['layers']})")
    p.add_argument("--layer-norm", action="store_const", const=True,
                   help="layer-normalised LSTM or GRU (Ba et al. 2016)")
    p.add_argument("--peephole", action="store_const", const=True, help="LSTM with peephole connections")
    p.add_argument("--weight-drop", type=_fraction, metavar="P",
                   help="DropConnect on the recurrent weights in training (AWD-LSTM; default 0)")
    p.add_argument("--recurrent-dropout", type=_fraction, metavar="P",
                   help="variational dropout of the state entering the recurrent product (default 0)")
    p.add_argument("--zoneout", type=_fraction, metavar="P",
                   help="each unit keeps its previous value with probability P in training (default 0)")
    p.add_argument("--embed", type=_POS_INT, metavar="E", help=f"embedding size (default {d['embed']})")
    p.add_argument("--seq-len", type=_POS_INT, metavar="T", help=f"characters per window (default {d['seq_len']})")
    p.add_argument("--batch", type=_POS_INT, metavar="N", help=f"windows per step (default {d['batch']})")
    p.add_argument("--steps", type=_POS_INT, metavar="S",
                   help=f"total optimiser steps (default {DEFAULT_STEPS}; with --resume, the checkpoint's)")
    p.add_argument("--truncate", type=_POS_INT, metavar="K",
                   help="truncated BPTT window inside a sequence (default: full BPTT over --seq-len)")
    p.add_argument("--retain", choices=("full", "checkpoint"), default="full",
                   help="what the layers keep for the backward: every step, or only the states entering "
                        "segments that the backward recomputes (memory like sqrt(seq-len); default full)")
    p.add_argument("--tape", dest="retain", choices=("full", "checkpoint"), action=_renamed("--retain"),
                   help=argparse.SUPPRESS)
    p.add_argument("--segment-steps", type=_POS_INT, metavar="K",
                   help="steps per recomputed segment with --retain checkpoint (default: ceil(sqrt(seq-len)))")
    p.add_argument("--tape-segment", dest="segment_steps", type=_POS_INT, action=_renamed("--segment-steps"),
                   help=argparse.SUPPRESS)
    p.add_argument("--lr", type=_POS_FLOAT, help=f"Adam learning rate (default {d['lr']})")
    p.add_argument("--clip", type=_POS_FLOAT, help=f"global gradient-norm clip (default {d['clip']})")
    p.add_argument("--seed", type=_NONNEG_INT, help=f"initialisation and batch seed (default {d['seed']})")
    p.add_argument("--dtype", choices=("float32", "float64"), help="parameter dtype (default float32)")
    p.add_argument("--val-fraction", type=_fraction, metavar="F",
                   help=f"hold out the last F of the text, cut at a paragraph (default {d['val_fraction']}; "
                        "0: none)")
    p.add_argument("--val-every", type=_NONNEG_INT, default=DEFAULT_VAL_EVERY, metavar="S",
                   help=f"held-out loss every S steps (0: only at the end; default {DEFAULT_VAL_EVERY})")
    p.add_argument("--out", metavar="DIR", default="runs/char-model",
                   help="folder for checkpoint.npz, best.npz, history.json, loss.png, samples.txt "
                        "(default runs/char-model)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.npz")
    p.add_argument("--overwrite", action="store_true", help="start again even if DIR holds a checkpoint")
    p.add_argument("--sample-every", type=_NONNEG_INT, default=250, metavar="S",
                   help="print a sample every S steps (0: only at the end; default 250)")
    p.add_argument("--checkpoint-every", type=_NONNEG_INT, default=100, metavar="S",
                   help="save a checkpoint every S steps (0: only at the end; default 100)")
    p.add_argument("--log-every", type=_POS_INT, default=100, metavar="S",
                   help="progress line every S steps when not on a terminal (default 100)")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                   help="tqdm bar on a terminal, plain lines otherwise (default auto)")
    g = p.add_argument_group("data parallel", "JAX over a device mesh (the batch split, parameters replicated); "
                                              "torch: start with torchrun --nproc-per-node N -m portable_rnn train "
                                              "--backend torch ... (detected from WORLD_SIZE and RANK)")
    g.add_argument("--devices", type=_POS_INT, metavar="N",
                   help="split each batch over N local JAX devices (--batch must be a multiple of N)")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="multi-host JAX: the address of process 0 (jax.distributed.initialize)")
    g.add_argument("--num-processes", type=_POS_INT, metavar="P", help="multi-host JAX: processes in all")
    g.add_argument("--process-id", type=_NONNEG_INT, metavar="I", help="multi-host JAX: this process, 0..P-1")


def _add_sample(sub):
    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help=_CHECKPOINT_HELP)
    p.add_argument("--prime", help="text to start from (default: a newline)")
    p.add_argument("--length", type=_NONNEG_INT, default=500, help="characters to generate (default 500)")
    p.add_argument("--temperature", type=_NONNEG_FLOAT, default=0.8,
                   help="softmax temperature; 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=_POS_INT, metavar="K", help="draw among the K most likely characters only")
    p.add_argument("--seed", type=_NONNEG_INT, default=0, help="sampling seed (default 0)")
    _backend_flags(p)


_CHECKPOINT_HELP = "a checkpoint file, or the --out folder of train (its best.npz if any, else checkpoint.npz)"


def _add_eval(sub):
    p = sub.add_parser("eval", help="bits per character of a checkpoint on a text (default: its held-out split)")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help=_CHECKPOINT_HELP)
    p.add_argument("--text", metavar="FILE", help="UTF-8 text file (default: the held-out split of the run's text)")
    _backend_flags(p)
    _progress_flag(p, "windows")


def _add_score(sub):
    p = sub.add_parser("score", help="bits per character of a checkpoint on files, on a Dask cluster",
                       description="Bits per character of each file and overall, in independent windows of "
                                   "--seq-len characters (each from a zero state), computed on Dask: a local "
                                   "cluster by default, an existing one with --scheduler. Needs the extra "
                                   "portable-rnn[dask].")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help=_CHECKPOINT_HELP)
    p.add_argument("files", metavar="FILE", nargs="+", help="UTF-8 text files")
    p.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://10.0.0.5:8786 "
                                                           "(default: start a local cluster)")
    p.add_argument("--workers", type=_POS_INT, metavar="N",
                   help=f"worker processes of the local cluster (default {DEFAULT_WORKERS})")
    p.add_argument("--chunk-size", type=_POS_INT, default=DEFAULT_CHUNK_SIZE, metavar="N",
                   help=f"windows per Dask task (default {DEFAULT_CHUNK_SIZE})")
    p.add_argument("--seq-len", type=_POS_INT, metavar="T", help="characters per window (default: the run's)")
    _backend_flags(p)
    _progress_flag(p, "blocks of windows")


def _progress_flag(p, what):
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                   help=f"how the {what} done are shown on stderr: a bar on a terminal, else a line every "
                        "5 s (auto, the default), bar, lines or none")


def _add_gradients(sub):
    p = sub.add_parser("gradients", help="plot the vanishing gradient of a vanilla RNN against an LSTM")
    p.add_argument("--seq-len", type=_POS_INT, default=100, metavar="T", help="sequence length (default 100)")
    p.add_argument("--steps", dest="seq_len", type=_POS_INT, action=_renamed("--seq-len"), help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=_POS_INT, default=32, metavar="H", help="hidden size (default 32)")
    p.add_argument("--inputs", type=_POS_INT, default=8, metavar="D", help="input size (default 8)")
    p.add_argument("--forget-bias", type=float, default=1.0, help="LSTM forget-gate bias (default 1.0)")
    p.add_argument("--seed", type=_NONNEG_INT, default=0, help="seed (default 0)")
    p.add_argument("--out", metavar="DIR", default="runs/gradients", help="folder for gradients.png")
    _backend_flags(p)


def _add_bench(sub):
    from .bench.long import DEFAULT_INPUT as LONG_INPUT
    from .bench.long import parse_lengths

    p = sub.add_parser(
        "bench", help="time forward+backward against torch.nn, jax.grad(lax.scan) and the GEMM bound",
        description="Time forward+backward of RNN/LSTM/GRU layers on every backend against torch.nn, "
                    "jax.grad(lax.scan) and the pure-GEMM bound.")
    p.add_argument("--quick", action="store_true", help="tiny configurations for CI (a few seconds)")
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    p.add_argument("--backend", dest="backends", action="extend", type=_names(BENCH_BACKENDS, "backend"),
                   help=f"comma-separated or repeated, from {', '.join(BENCH_BACKENDS)} (default: all that work here)")
    p.add_argument("--backends", dest="backends", type=_names(BENCH_BACKENDS, "backend"),
                   action=_renamed("--backend"), help=argparse.SUPPRESS)
    p.add_argument("--cells", type=_names(BENCH_CELLS, "cell"), default=list(BENCH_CELLS),
                   help=f"comma-separated from {', '.join(BENCH_CELLS)}")
    p.add_argument("--configs", type=lambda s: [_bench_config(c) for c in s.split(",") if c.strip()],
                   help="comma-separated NxTxDxH[:dtype], e.g. 64x100x128x256:float32")
    p.add_argument("--repeats", type=_POS_INT, default=5, help="timed rounds, median reported (default 5)")
    p.add_argument("--threads", type=_POS_INT,
                   help="threads for torch and BLAS (default: usable CPUs; 1 with --quick)")
    p.add_argument("--portable", action="store_true", help="also time the NumPy portable path")
    p.add_argument("--no-check", action="store_true", help="skip the gradient check against torch.nn")
    p.add_argument("--no-compile-study", action="store_true", help="skip JAX compile time against T")
    p.add_argument("--settle", type=_NONNEG_FLOAT, metavar="S",
                   help=f"seconds of pause before every timed run (default {SETTLE_S}; 0 with --quick)")
    p.add_argument("--train", action="store_true",
                   help="instead: the whole default training job against a torch.nn + torch.optim loop")
    p.add_argument("--train-steps", type=_POS_INT, default=200, metavar="N",
                   help="training steps per contender with --train (default 200)")
    p.add_argument("--layer-norm", action="store_true",
                   help="time the layer-normalised LSTM against an eager torch cell with autograd and jax.grad of "
                        "a lax.scan (the first of --configs, default 32x100x64x128)")
    p.add_argument("--minimal", action="store_true",
                   help="time minGRU and minLSTM, parallel and sequential, against T, with the GRU, LSTM and "
                        "lax.associative_scan and log-space references")
    p.add_argument("--minimal-lengths", type=parse_lengths, metavar="T,T,...",
                   help="sequence lengths of --minimal (default 512,1024,4096,16384)")
    p.add_argument("--minimal-hidden", type=parse_lengths, metavar="H,H,...",
                   help="hidden sizes (= input sizes) of --minimal (default 64)")
    p.add_argument("--long", action="store_true",
                   help="instead: peak memory and time of an LSTM layer (N=8, H=256) over long sequences, "
                        "tapes full/checkpoint/none against torch.nn and jax.grad, each in a fresh process")
    p.add_argument("--long-lengths", type=parse_lengths, metavar="T,T,...",
                   help="sequence lengths with --long (default 1000,10000,100000; 50,200 with --quick)")
    p.add_argument("--long-input", type=_POS_INT, metavar="D",
                   help=f"input size with --long (default {LONG_INPUT})")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Recurrent networks with hand-written BPTT on any Array API backend.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    check = sub.add_parser("check", help="run the documented fixtures on every installed backend")
    check.add_argument("--backend", action="extend", type=_names(BACKEND_NAMES, "backend"),
                       help="only these backends (comma-separated or repeated); default: every one installed")
    _add_train(sub)
    _add_sample(sub)
    _add_eval(sub)
    _add_score(sub)
    _add_gradients(sub)
    _add_bench(sub)
    return parser


def _train(args) -> int:
    fields = ("text", "out", "resume", "overwrite", "backend", "device", "steps", "cell", "hidden", "layers",
              "embed", "seq_len", "batch", "truncate", "lr", "clip", "seed", "dtype", "val_fraction", "val_every",
              "sample_every",
              "checkpoint_every", "log_every", "progress", "devices", "coordinator", "num_processes", "process_id",
              "retain", "segment_steps", "layer_norm", "peephole", "weight_drop", "recurrent_dropout", "zoneout")
    return train(TrainConfig(**{k: getattr(args, k) for k in fields})).status


def _sample(args) -> int:
    path = pick_checkpoint(args.checkpoint)
    text = sample_text(path, prime=args.prime, length=args.length, temperature=args.temperature,
                       top_k=args.top_k, seed=args.seed, backend=args.backend, device=args.device)
    if path != Path(args.checkpoint):  # picked in a folder: say which (after loading, so errors stay one line)
        print(f"{PROG} sample: from {path}", file=sys.stderr)
    print(text)
    return 0


def _eval(args) -> int:
    run_eval(args.checkpoint, args.text, backend=args.backend, device=args.device, progress=args.progress)
    return 0


def _score(args) -> int:
    if args.scheduler is not None and args.workers is not None:
        raise UsageError("--workers sizes the local cluster; it cannot be given with --scheduler")
    run_score(args.checkpoint, args.files, seq_len=args.seq_len, scheduler=args.scheduler,
              workers=DEFAULT_WORKERS if args.workers is None else args.workers, chunk_size=args.chunk_size,
              backend=args.backend, device=args.device, progress=args.progress)
    return 0


def _gradients(args) -> int:
    if args.seq_len < 2:
        raise UsageError("--seq-len must be at least 2")
    run_gradients(steps=args.seq_len, hidden=args.hidden, inputs=args.inputs, seed=args.seed,
                  forget_bias=args.forget_bias, backend=args.backend, device=args.device, out_dir=args.out)
    return 0


def _check(args) -> int:
    return 0 if run_check(args.backend) else 1


def _bench(args) -> int:
    if args.long + args.train + args.layer_norm + args.minimal > 1:
        raise UsageError("--long, --train, --layer-norm and --minimal are different benches: give one of them")
    if not args.minimal and (args.minimal_lengths is not None or args.minimal_hidden is not None):
        raise UsageError("--minimal-lengths and --minimal-hidden need --minimal")
    if args.minimal:
        from .bench.minimal import run_minimal_bench

        report = run_minimal_bench(args.minimal_lengths, args.minimal_hidden or (64,), args.repeats, args.threads,
                                   args.settle)
        if args.json:
            write_json(args.json, {"schema": "portable_rnn.bench.minimal/1", **report})
        return 0
    if args.layer_norm:
        from .bench.layer_norm import run_layer_norm_bench

        report = run_layer_norm_bench(args.configs[0] if args.configs else None, args.repeats, args.threads,
                                      args.settle)
        if args.json:
            write_json(args.json, {"schema": "portable_rnn.bench.layer_norm/1", **report})
        return 0
    if not args.long and (args.long_lengths is not None or args.long_input is not None):
        raise UsageError("--long-lengths and --long-input need --long")
    if args.long:
        from .bench.long import run_long_bench

        report = run_long_bench(args.long_lengths, args.long_input, quick=args.quick, threads=args.threads)
        if args.json:
            write_json(args.json, report)
        return 0
    if args.train:
        from .bench.training import run_training_bench

        report = run_training_bench(args.train_steps, args.backends)
        if args.json:
            write_json(args.json, {"schema": "portable_rnn.bench.train/1", "steps": args.train_steps,
                                   "contenders": report})
        return 0
    report = run_bench(configs=args.configs, cells=args.cells, backend_names=args.backends, repeats=args.repeats,
                       threads=args.threads, quick=args.quick, portable=args.portable,
                       check=not args.no_check,
                       compile_study=False if args.no_compile_study else None, settle=args.settle)
    if args.json:
        write_json(args.json, report)
    return 0


_COMMANDS = {"train": _train, "sample": _sample, "eval": _eval, "score": _score, "gradients": _gradients,
             "check": _check, "bench": _bench}


def main(argv=None) -> int:
    """Entry point of ``portable-rnn`` and ``python -m portable_rnn``; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success; 1 when ``check`` finds a mismatch; 2 for bad input
        (one line on stderr); 130 after Ctrl-C; 143 after SIGTERM (handled as
        Ctrl-C: a training run saves its checkpoint); 141 when stdout closed early.
    """
    with _sigterm_as_interrupt():
        return _main(argv)


def _main(argv) -> int:
    parser, args = _parser(), None
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        # Overflow to inf or NaN is checked where it matters (losses, what is written);
        # NumPy's warnings would name lines inside the library instead.
        with np.errstate(all="ignore"):
            return _COMMANDS[args.command](args)
    except SystemExit as stop:  # argparse: --help (0) and usage errors (2)
        return stop.code if isinstance(stop.code, int) else 2
    except (UsageError, BackendError) as error:
        return _error(args, error)
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        print(f"{PROG}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # e.g. `portable-rnn sample ... | head`: stop quietly, as cat does
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a real file (captured)
            pass
        return 141
    except OSError as error:  # disk full, a file size limit, a read-only folder: files already written stay
        where = f" ({error.filename})" if error.filename else ""
        return _error(args, f"{error.strerror or error}{where}; files written before are kept")
    except MemoryError as error:
        size = f" ({error})" if str(error) else ""
        return _error(args, f"not enough memory{size}; try a smaller --hidden, --batch or --seq-len")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within the block, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt): a run stops as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _error(args, message) -> int:
    """Print one line naming the command and return exit status 2."""
    print(f"{PROG} {args.command}: error: {str(message).splitlines()[0]}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
