"""The ``portable-rnn`` command line (also ``python -m portable_rnn``).

``portable-rnn check``
    Run the documented fixtures on every installed backend and device and
    print a pass/fail table with timings: the first thing to run after installing.
``portable-rnn train``
    Train a character language model (default: an LSTM on a selection of
    Shakespeare's Sonnets shipped with the package, about a minute on two CPU
    cores); see :mod:`portable_rnn.train`.
``portable-rnn sample CHECKPOINT``
    Generate text from a checkpoint written by ``train``.
``portable-rnn gradients``
    The vanishing-gradient picture: the norm of the gradient reaching each
    hidden state of a vanilla RNN and an LSTM when the loss reads only the
    last one.

With no command it prints this help. Bad input (files, flags, backends,
devices, checkpoints) gives one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .backends import BACKEND_NAMES, discover
from .fixtures import FIXTURES

__all__ = ["main", "run_check", "run_gradients"]

TOLERANCES = {"float64": (1e-7, 1e-8), "float32": (1e-4, 1e-5)}


def run_check(backends=None, out=None) -> bool:
    """Run every documented fixture on every backend and dtype; print a table.

    Parameters
    ----------
    backends : list of str, optional
        Names from :data:`portable_rnn.backends.BACKEND_NAMES`; default every one.
    out : file, optional
        Where the table goes (default ``sys.stdout`` at call time).

    Returns
    -------
    bool
        True when every fixture passed on every available backend.
    """
    out = sys.stdout if out is None else out
    available, unavailable = discover(backends)
    header = f"{'backend':26s} {'dtype':8s} {'fixtures':>9s} {'time':>9s}  result"
    print(header, file=out)
    print("-" * len(header), file=out)
    all_ok = True
    for name, backend in available.items():
        for dtype in backend.dtypes:
            rtol, atol = TOLERANCES[dtype]
            failures, start = [], time.perf_counter()
            for fixture in FIXTURES:
                try:
                    results = fixture.run(fixture.draw(), lambda a: backend.asarray(a, dtype), **fixture.options)
                    failures += [f"{fixture.name}: {p}" for p in fixture.mismatches(results, backend.to_numpy, rtol, atol)]
                except Exception as error:  # report every backend, never stop at the first
                    failures.append(f"{fixture.name}: {type(error).__name__}: {error}")
            elapsed = time.perf_counter() - start
            passed = len(FIXTURES) - len({f.split(":")[0] for f in failures})
            verdict = "PASS" if not failures else "FAIL"
            all_ok &= not failures
            print(f"{name:26s} {dtype:8s} {passed:>4d}/{len(FIXTURES):<4d} {elapsed * 1e3:7.1f}ms  {verdict}", file=out)
            for failure in failures:
                print(f"    {failure}", file=out)
    for name, reason in unavailable.items():
        print(f"{name:26s} {'-':8s} {'-':>9s} {'-':>9s}  skipped: {reason}", file=out)
    print(f"\n{'all documented numbers reproduced' if all_ok else 'SOME FIXTURES FAILED'} "
          f"on {len(available)} backend(s)", file=out)
    return all_ok


# --------------------------------------------------------------------------- gradients


def run_gradients(*, steps=100, hidden=32, inputs=8, seed=0, forget_bias=1.0, backend="numpy",
                  device=None, out_dir="runs/gradients", out=None) -> dict:
    r"""Norm of :math:`\partial L / \partial a^{\langle t \rangle}` for a vanilla RNN and an LSTM.

    Both layers (PyTorch's default initialisation, seed ``seed``; the LSTM's
    forget-gate bias set to ``forget_bias``) read the same random sequence
    :math:`x \sim \mathcal N(0, 1)` of ``steps`` steps; the loss is
    :math:`L = \langle v, a^{\langle T \rangle} \rangle` with a random unit
    vector :math:`v`, so only the last step has a loss. The gradients are
    exact, from one forward and one backward pass each
    (:func:`portable_rnn.model.hidden_state_gradients`), in float64.

    Returns
    -------
    dict
        ``{"rnn": norms, "lstm": norms}``, each a NumPy array (steps + 1,)
        indexed by ``t`` (0 is the initial state), and ``"png"``: the plot's
        path or ``None``.
    """
    import numpy as np

    from .layers import LSTM, RNN

    out = sys.stdout if out is None else out
    from .model import hidden_state_gradients
    from .train import plot_curves, resolve_runtime

    runtime = resolve_runtime(backend, device, "float64")
    rng = np.random.default_rng(seed)
    x = runtime.asarray(rng.standard_normal((steps, 1, inputs)))
    v = rng.standard_normal((1, hidden))
    v = runtime.asarray(v / np.linalg.norm(v))
    norms = {}
    for name, spec, extra in (("rnn", RNN(inputs, hidden), {}),
                              ("lstm", LSTM(inputs, hidden), {"forget_bias": forget_bias})):
        params = spec.init(seed, xp=runtime.xp, dtype="float64", device=runtime.device, **extra)
        grads = runtime.to_numpy(hidden_state_gradients(spec, params, x, v))
        norms[name] = np.linalg.norm(grads[:, 0, :], axis=-1)
    t = np.arange(steps + 1)
    print(f"||dL/da<t>|| with the loss on the last step only (T = {steps}, hidden {hidden}, "
          f"{inputs} inputs, seed {seed}, LSTM forget-gate bias {forget_bias}, {runtime.name})", file=out)
    print(f"{'t':>5s} {'vanilla RNN':>14s} {'LSTM':>14s}", file=out)
    shown = sorted({0, 1, steps // 4, steps // 2, 3 * steps // 4, steps - 1, steps})
    for k in shown:
        print(f"{k:>5d} {norms['rnn'][k]:14.3e} {norms['lstm'][k]:14.3e}", file=out)
    for name, label in (("rnn", "vanilla RNN"), ("lstm", "LSTM")):
        ratio = norms[name][1] / norms[name][steps]
        print(f"{label}: ||dL/da<1>|| / ||dL/da<{steps}>|| = {ratio:.3e}", file=out)
    png = Path(out_dir) / "gradients.png"
    why = plot_curves(
        png, {"vanilla RNN (tanh)": (t, norms["rnn"]), f"LSTM (forget bias {forget_bias})": (t, norms["lstm"])},
        title=f"Gradient reaching step t from a loss at step {steps}", xlabel="t",
        ylabel="||dL/da<t>||", log_y=True,
    )
    print(f"skipped the plot: {why}" if why else f"wrote {png}", file=out)
    return {**norms, "png": None if why else png}


# --------------------------------------------------------------------------- parsing


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind, minimum, strict, what):
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


def _parser() -> argparse.ArgumentParser:
    from .train import BACKENDS, DEFAULT_STEPS, DEFAULTS

    parser = _Parser(
        prog="portable-rnn",
        description="Recurrent networks with hand-written BPTT on any Array API backend.",
        epilog="Run 'portable-rnn COMMAND --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    check = sub.add_parser("check", help="run the documented fixtures on every installed backend")
    check.add_argument("--backend", action="append", choices=BACKEND_NAMES,
                       help="only this backend (repeatable); default: every one installed")

    def backend_flags(p, default="numpy"):
        p.add_argument("--backend", choices=BACKENDS, default=default, help=f"array library (default {default})")
        p.add_argument("--device", help="device, e.g. cpu, cuda:0 (torch), gpu (jax), 0 (cupy)")

    train = sub.add_parser(
        "train", help="train a character language model (default: LSTM on Shakespeare's Sonnets)",
        description="Train a character language model with truncated BPTT, Adam and gradient clipping. "
                    "Without --text it trains on a selection of Shakespeare's Sonnets shipped with the package.",
    )
    train.add_argument("--text", metavar="FILE", help="UTF-8 text file (default: the embedded sonnets)")
    train.add_argument("--cell", choices=("lstm", "gru", "rnn"), help=f"recurrent cell (default {DEFAULTS['cell']})")
    backend_flags(train)
    train.add_argument("--hidden", type=_POS_INT, metavar="H", help=f"hidden size (default {DEFAULTS['hidden']})")
    train.add_argument("--layers", type=_POS_INT, metavar="L", help=f"stacked layers (default {DEFAULTS['layers']})")
    train.add_argument("--embed", type=_POS_INT, metavar="E", help=f"embedding size (default {DEFAULTS['embed']})")
    train.add_argument("--seq-len", type=_POS_INT, metavar="T",
                       help=f"characters per window (default {DEFAULTS['seq_len']})")
    train.add_argument("--batch", type=_POS_INT, metavar="N", help=f"windows per step (default {DEFAULTS['batch']})")
    train.add_argument("--steps", type=_POS_INT, metavar="S",
                       help=f"total optimiser steps (default {DEFAULT_STEPS}; with --resume, the checkpoint's)")
    train.add_argument("--truncate", type=_POS_INT, metavar="K",
                       help="truncated BPTT window inside a sequence (default: full BPTT over --seq-len)")
    train.add_argument("--lr", type=_POS_FLOAT, help=f"Adam learning rate (default {DEFAULTS['lr']})")
    train.add_argument("--clip", type=_POS_FLOAT, help=f"global gradient-norm clip (default {DEFAULTS['clip']})")
    train.add_argument("--seed", type=_NONNEG_INT, help=f"initialisation and batch seed (default {DEFAULTS['seed']})")
    train.add_argument("--dtype", choices=("float32", "float64"), help="parameter dtype (default float32)")
    train.add_argument("--out", metavar="DIR", default="runs/char-model",
                       help="folder for checkpoint.npz, history.json, loss.png, samples.txt (default runs/char-model)")
    train.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.npz")
    train.add_argument("--overwrite", action="store_true", help="start again even if DIR holds a checkpoint")
    train.add_argument("--sample-every", type=_NONNEG_INT, default=250, metavar="S",
                       help="print a sample every S steps (0: only at the end; default 250)")
    train.add_argument("--checkpoint-every", type=_NONNEG_INT, default=100, metavar="S",
                       help="save a checkpoint every S steps (0: only at the end; default 100)")
    train.add_argument("--log-every", type=_POS_INT, default=100, metavar="S",
                       help="progress line every S steps when not on a terminal (default 100)")
    train.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                       help="tqdm bar on a terminal, plain lines otherwise (default auto)")

    sample = sub.add_parser("sample", help="generate text from a checkpoint")
    sample.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint.npz, or the --out folder of train")
    sample.add_argument("--prime", help="text to start from (default: a newline)")
    sample.add_argument("--length", type=_NONNEG_INT, default=500, help="characters to generate (default 500)")
    sample.add_argument("--temperature", type=_NONNEG_FLOAT, default=0.8,
                        help="softmax temperature; 0 is greedy (default 0.8)")
    sample.add_argument("--top-k", type=_POS_INT, metavar="K", help="draw among the K most likely characters only")
    sample.add_argument("--seed", type=_NONNEG_INT, default=0, help="sampling seed (default 0)")
    backend_flags(sample)

    grads = sub.add_parser("gradients", help="plot the vanishing gradient of a vanilla RNN against an LSTM")
    grads.add_argument("--steps", type=_POS_INT, default=100, metavar="T", help="sequence length (default 100)")
    grads.add_argument("--hidden", type=_POS_INT, default=32, metavar="H", help="hidden size (default 32)")
    grads.add_argument("--inputs", type=_POS_INT, default=8, metavar="D", help="input size (default 8)")
    grads.add_argument("--forget-bias", type=float, default=1.0, help="LSTM forget-gate bias (default 1.0)")
    grads.add_argument("--seed", type=_NONNEG_INT, default=0, help="seed (default 0)")
    grads.add_argument("--out", metavar="DIR", default="runs/gradients", help="folder for gradients.png")
    backend_flags(grads)
    from . import bench

    bench.add_arguments(sub.add_parser(
        "bench", help="time forward+backward against torch.nn, jax.grad(lax.scan) and the GEMM bound"))
    return parser


def _run(args, parser) -> int:
    from .train import TrainConfig, sample_text, train

    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "check":
        return 0 if run_check(args.backend) else 1
    if args.command == "train":
        config = TrainConfig(**{k: getattr(args, k) for k in (
            "text", "out", "resume", "overwrite", "backend", "device", "steps", "cell", "hidden", "layers",
            "embed", "seq_len", "batch", "truncate", "lr", "clip", "seed", "dtype", "sample_every",
            "checkpoint_every", "log_every", "progress")})
        return train(config).status
    if args.command == "sample":
        print(sample_text(args.checkpoint, prime=args.prime, length=args.length, temperature=args.temperature,
                          top_k=args.top_k, seed=args.seed, backend=args.backend, device=args.device))
        return 0
    if args.command == "gradients":
        if args.steps < 2:
            parser.exit(2, "portable-rnn gradients: error: --steps must be at least 2\n")
        run_gradients(steps=args.steps, hidden=args.hidden, inputs=args.inputs, seed=args.seed,
                      forget_bias=args.forget_bias, backend=args.backend, device=args.device, out_dir=args.out)
        return 0
    if args.command == "bench":
        from . import bench

        return bench.run_args(args)
    raise AssertionError(args.command)  # argparse rejects unknown commands


def main(argv=None) -> int:
    """Entry point of ``portable-rnn`` and ``python -m portable_rnn``; returns the exit status."""
    from .train import TrainError

    parser, args = _parser(), None
    try:
        args = parser.parse_args(argv)
        return _run(args, parser)
    except SystemExit as stop:  # argparse: --help (0) and usage errors (2)
        return stop.code if isinstance(stop.code, int) else 2
    except TrainError as error:
        print(f"portable-rnn {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("portable-rnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `portable-rnn sample ... | head`: stop quietly, as cat does
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a real file (captured)
            pass
        return 141


if __name__ == "__main__":
    sys.exit(main())
