r"""``portable-rnn bench --train``: the whole training job against a plain ``torch.nn`` + ``torch.optim`` loop.

The same model (embedding, LSTM, linear decoder, softmax cross-entropy,
Adam, global-norm clipping), the same initial numbers, the same batches
(:class:`~portable_rnn.app.corpus.BatchSchedule`, the state carried across
batches and reset at each epoch) and the same number of steps, on the
default corpus: once with this package's trainer on every installed backend
and once with the loop a PyTorch user would write. Reported per contender:
characters per second of the training steps and the held-out loss after
them, computed the same way for all (:func:`portable_rnn.app.eval.mean_loss`
on the trained parameters). Same maths, so the held-out losses agree within
float32 noise; the speed ratio is the figure.
"""

from __future__ import annotations

import io
import tempfile
import time

import numpy as np

from ... import backends
from ...model import CharModel
from ..checkpoint import DEFAULTS
from ..corpus import BatchSchedule, Vocabulary, load_text, split_text
from ..eval import LN2, mean_loss
from ..train import TrainConfig, train

__all__ = ["run_training_bench"]


def _ours(backend: str, steps: int) -> tuple[float, float]:
    """``(seconds of the training steps, held-out loss)`` of ``portable-rnn train`` on ``backend``."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(out=out, backend=backend, steps=steps, sample_every=0, checkpoint_every=0,
                             val_every=0, progress="none")
        result = train(config, out=io.StringIO())
    return result.wall_s, result.val_losses[-1]


def _torch_loop(model: CharModel, params: dict, schedule: BatchSchedule, steps: int):
    """The loop a PyTorch user writes; returns ``(seconds, trained parameters as NumPy)``."""
    import torch

    embed = torch.nn.Embedding(model.vocab_size, model.embed_size)
    lstm = torch.nn.LSTM(model.embed_size, model.hidden_size, model.num_layers, batch_first=True)
    decoder = torch.nn.Linear(model.hidden_size, model.vocab_size)
    modules = {"embedding": embed, "rnn": lstm, "decoder": decoder}
    with torch.no_grad():
        for name, value in params.items():
            owner, key = name.split(".", 1)
            getattr(modules[owner], key).copy_(torch.from_numpy(np.asarray(value)))
    weights = [p for m in modules.values() for p in m.parameters()]
    opt = torch.optim.Adam(weights, lr=DEFAULTS["lr"])
    state, t0 = None, time.perf_counter()
    for step in range(steps):
        inputs, targets, reset = schedule(step)
        if reset:
            state = None
        out, state = lstm(embed(torch.from_numpy(inputs).long()), state)
        state = tuple(s.detach() for s in state)  # truncated BPTT across batches
        logits = decoder(out)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, model.vocab_size),
                                                 torch.from_numpy(targets).long().reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(weights, DEFAULTS["clip"])
        opt.step()
    seconds = time.perf_counter() - t0
    trained = {f"{owner}.{k}": v.detach().numpy().copy()
               for owner, m in modules.items() for k, v in m.state_dict().items()}
    return seconds, trained


def run_training_bench(steps: int = 200, backend_names=None, out=None) -> dict:
    """Time ``steps`` training steps of the default model on every contender and print a table.

    Parameters
    ----------
    steps : int
        Training steps per contender (the default run has 1000).
    backend_names : iterable of str, optional
        This package's backends to run (default: numpy, jax and torch, those installed).
    out : file, optional

    Returns
    -------
    dict
        ``{contender: {"chars_per_s", "val_loss", "val_bits_per_char", "seconds"}}``.
    """
    import sys

    out = sys.stdout if out is None else out
    text, _ = load_text(None)
    train_text, val_text = split_text(text, DEFAULTS["val_fraction"])
    vocab = Vocabulary.of(text)
    batch, seq_len = DEFAULTS["batch"], DEFAULTS["seq_len"]
    chars = steps * batch * seq_len
    model = CharModel(len(vocab), DEFAULTS["hidden"], DEFAULTS["layers"], DEFAULTS["cell"], DEFAULTS["embed"])
    numpy_runtime = backends.resolve("numpy")
    val_tokens = vocab.encode(val_text)
    report = {}

    available, _ = backends.discover(backend_names or ("numpy", "jax", "torch"))
    for name in available:
        seconds, val = _ours(name, steps)
        report[f"portable_rnn ({name})"] = {"seconds": seconds, "val_loss": val}
    try:
        import torch  # noqa: F401  (the reference is run whenever torch is installed)
    except ImportError:
        print("torch is not installed: no torch.nn + torch.optim reference", file=out)
    else:
        params = model.init(DEFAULTS["seed"], dtype=DEFAULTS["dtype"])
        schedule = BatchSchedule(vocab.encode(train_text), batch, seq_len, DEFAULTS["seed"])
        seconds, trained = _torch_loop(model, params, schedule, steps)
        val = mean_loss(model, trained, val_tokens, batch=batch, seq_len=seq_len, runtime=numpy_runtime)
        report["torch.nn + torch.optim"] = {"seconds": seconds, "val_loss": val}
    print(f"training bench: {steps} steps of batch {batch} x seq-len {seq_len} ({chars:,} characters), "
          f"LSTM {model.hidden_size}, default corpus", file=out)
    reference = report.get("torch.nn + torch.optim", {}).get("seconds")
    for name, entry in report.items():
        entry["chars_per_s"] = chars / entry["seconds"]
        entry["val_bits_per_char"] = entry["val_loss"] / LN2
        ratio = f"{entry['seconds'] / reference:5.2f}x torch" if reference else ""
        print(f"  {name:28s} {entry['chars_per_s']:10,.0f} chars/s  {entry['seconds']:7.2f} s  "
              f"held-out {entry['val_loss']:.4f} nats ({entry['val_bits_per_char']:.3f} bits/char)  {ratio}",
              file=out)
    return report
