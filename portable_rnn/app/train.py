r"""``portable-rnn train``: train (or resume) a :class:`~portable_rnn.model.CharModel` on a text.

What a run does
---------------
The text (:mod:`~portable_rnn.app.corpus`) is cut into ``batch`` parallel
streams; step ``k`` of an epoch feeds each stream's next ``seq_len``
characters and the recurrent state is carried from one step to the next
(truncated BPTT: no gradient crosses a batch boundary, and ``--truncate K``
also cuts inside the batch). The batch of step ``s`` is a pure function of
``(text, seed, s)`` (:class:`~portable_rnn.app.corpus.BatchSchedule`), so a
resumed run sees exactly the batches an uninterrupted one would.

The tail of the text (``--val-fraction``, default 10%; whole sonnets for
the default corpus: :func:`~portable_rnn.app.corpus.split_text` says why)
is held out: training never sees it. Every ``--val-every`` steps and at the
last step the model's mean loss on the whole held-out split is computed
(:func:`~portable_rnn.app.eval.mean_loss`, forward passes only) and shown in
nats and bits per character.

Each step is :meth:`CharModel.loss_and_grads`, :func:`clip_by_global_norm`
and :func:`adam`, as one function; on JAX that function is ``jax.jit``-
compiled. Parameters are initialised on the host (:meth:`CharModel.init`) and
batches are drawn on the host, so the same seed gives the same loss curve on
every backend, up to float32 rounding. Loss values stay on the device and are
copied to the host every :data:`SYNC_EVERY` steps, so the device never waits
for the progress display.

Data parallel
-------------
``devices`` splits each batch over that many JAX devices of this process
(a mesh; parameters replicated, XLA adds the all-reduce). With
``coordinator``, ``num_processes`` and ``process_id``, every process calls
``jax.distributed.initialize`` and the mesh holds every device of every
process (on CPUs, collectives go over Gloo). Every process reads the same
text and draws the same batches (a pure function of the step), and fills
only its own devices' rows. Reads of global arrays on the host (losses,
the held-out evaluation, checkpoints, samples) go through
:func:`portable_rnn.parallel.to_host`, which gathers what is split over
processes; every process takes part, and process 0 alone prints and writes
files. ``--resume`` has every process read the same checkpoint, so ``out``
must be on a file system every host sees. A process that fails or is
stopped ends without JAX's shutdown barrier (which would wait for the
others); the others' next collective then fails, and they stop with one
line (:class:`~portable_rnn.backends.BackendError`). Under ``torchrun``
(``--backend torch``), each process computes its rows and the gradients
are averaged with one ``all_reduce``.

What a run writes into ``out``
------------------------------
``checkpoint.npz``
    Parameters, Adam state, the carried recurrent state and the metadata
    (:mod:`~portable_rnn.app.checkpoint`), written every ``checkpoint_every``
    steps, at the end and on Ctrl-C. Writes are atomic: an interrupted
    write leaves the previous checkpoint intact.
``best.npz``
    The same, at the evaluation with the lowest held-out loss so far
    (written when that loss improves; removed when a new run starts in
    ``out``). ``sample`` and ``eval`` use it when given the folder.
``history.json``
    ``{"step": [...], "loss": [...], "val_step": [...], "val_loss": [...]}``:
    the training loss of every step and the held-out loss of every
    evaluation, in nats per character (atomic too).
``loss.png``
    The training and held-out loss curves (needs matplotlib; skipped with a
    message otherwise). The training curve's regular spikes are the first
    step of each epoch, which starts from a zero state and so predicts its
    first characters without context.
``samples.txt``
    The samples printed during training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import backends
from .._validation import check_retain
from ..model import VARIANTS, CharModel
from ..optim import adam, clip_by_global_norm
from .checkpoint import (BEST, CHECKPOINT, DEFAULTS, HISTORY_KEYS, Checkpoint, CheckpointError, load_checkpoint,
                         nonfinite_member, save_checkpoint)
from ..io import remove_stale_temporaries
from .bench.long import mem_available
from .corpus import BatchSchedule, Vocabulary, load_text, split_text
from .errors import Terminated, UsageError
from .eval import LN2, mean_loss
from .report import Progress, append_sample, plot_curves, smooth, write_history

__all__ = ["TrainConfig", "TrainResult", "DEFAULT_STEPS", "DEFAULT_VAL_EVERY", "train", "HISTORY", "PLOT", "SAMPLES"]

#: Loss values are copied to the host every this many steps.
SYNC_EVERY = 10
#: Total steps of a new run without ``--steps``.
DEFAULT_STEPS = 1000
#: Steps between held-out evaluations without ``--val-every``.
DEFAULT_VAL_EVERY = 100
HISTORY, PLOT, SAMPLES = "history.json", "loss.png", "samples.txt"


@dataclass
class TrainConfig:
    """Settings of ``portable-rnn train``.

    Settings a checkpoint remembers (:data:`~portable_rnn.app.checkpoint.DEFAULTS`:
    ``cell``, ``hidden``, ``layers``, ``embed``, ``seq_len``, ``batch``, ``truncate``, ``lr``,
    ``clip``, ``seed``, ``dtype``, ``val_fraction`` and the layer's variants and regularisers
    ``layer_norm``, ``peephole``, ``weight_drop``, ``recurrent_dropout``, ``zoneout``
    (:data:`~portable_rnn.model.VARIANTS`)) default to ``None``, meaning "the default"
    for a new run and "the checkpoint's" with ``resume``; giving a value that
    differs from the checkpoint's is an error. ``steps`` is the total step
    count of the run (default :data:`DEFAULT_STEPS`, or the checkpoint's).
    ``val_every`` is the steps between held-out evaluations (0: only at the
    last step). ``devices`` (JAX: data parallel over that many devices) and
    ``coordinator``, ``num_processes``, ``process_id`` (JAX on several hosts)
    are described in the section "Data parallel" of the module docstring.
    ``retain`` (``"full"`` or ``"checkpoint"``) and ``segment_steps`` choose
    what the recurrent layers keep for the backward
    (:meth:`CharModel.loss_and_grads`); the gradients are the same, so a
    checkpoint does not record them and a resumed run may change them.
    """

    text: str | None = None
    out: str = "runs/char-model"
    resume: bool = False
    overwrite: bool = False
    backend: str = "numpy"
    device: str | None = None
    steps: int | None = None
    cell: str | None = None
    hidden: int | None = None
    layers: int | None = None
    embed: int | None = None
    seq_len: int | None = None
    batch: int | None = None
    truncate: int | None = None
    lr: float | None = None
    clip: float | None = None
    seed: int | None = None
    dtype: str | None = None
    val_fraction: float | None = None
    layer_norm: bool | None = None
    peephole: bool | None = None
    weight_drop: float | None = None
    recurrent_dropout: float | None = None
    zoneout: float | None = None
    val_every: int = DEFAULT_VAL_EVERY
    log_every: int = 100
    sample_every: int = 250
    sample_length: int = 200
    temperature: float = 0.8
    checkpoint_every: int = 100
    progress: str = "auto"
    devices: int | None = None
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    retain: str = "full"
    segment_steps: int | None = None


@dataclass
class TrainResult:
    """What :func:`train` returns: the loss histories (nats per character) and where things were written."""

    steps: list
    losses: list
    wall_s: float
    out: Path
    status: int = 0
    val_steps: list = field(default_factory=list)
    val_losses: list = field(default_factory=list)


@dataclass
class _Run:
    """One run in progress: what the loop reads, and the state it updates (on the device)."""

    config: TrainConfig
    settings: dict
    steps: int
    model: CharModel
    runtime: backends.Backend
    vocab: Vocabulary
    schedule: BatchSchedule
    meta: dict
    params: dict
    opt_state: dict
    carry: object
    start: int
    wall_before: float
    history_steps: list
    history_losses: list
    val: np.ndarray | None  # the held-out tokens, None with --val-fraction 0
    val_steps: list
    val_losses: list
    step: int = 0
    pending: list = field(default_factory=list)  # (step, loss on the device), not yet on the host
    zeros: object = None  # the zero state a new epoch starts from, placed like ``carry``
    mesh: Any = None  # the JAX mesh the batch is split along, or None
    world: Any = None  # the torch.distributed group (_TorchWorld), or None

    @property
    def writer(self) -> bool:
        """Whether this process writes files and prints: the only one, or rank / process 0 of several."""
        if self.world is not None:
            return self.world.rank == 0
        if self.mesh is not None:
            import jax

            return jax.process_index() == 0
        return True

    @property
    def best(self) -> float:
        """The lowest held-out loss so far (infinity before the first evaluation)."""
        return min(self.val_losses, default=math.inf)

    @property
    def history(self) -> dict:
        """The four histories, as ``history.json`` and a checkpoint's metadata hold them."""
        return {"step": self.history_steps, "loss": self.history_losses,
                "val_step": self.val_steps, "val_loss": self.val_losses}

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out)


# --------------------------------------------------------------------------- setting up


def _checkpoint_to_resume(config: TrainConfig, out_dir: Path) -> Checkpoint | None:
    """The checkpoint ``--resume`` continues, or ``None``; refuses to overwrite one by accident."""
    path = out_dir / CHECKPOINT
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {str(out_dir)!r} exists and is not a folder")
    if config.resume:
        if not path.exists():
            raise UsageError(f"nothing to resume: {str(path)!r} does not exist")
        ckpt = load_checkpoint(path)
        if ckpt.opt_state is None:
            raise CheckpointError(f"{str(path)!r} has no optimiser state; it cannot be resumed")
        return ckpt
    if path.exists() and not config.overwrite:
        raise UsageError(
            f"{str(path)!r} already exists: pass --resume to continue it, --overwrite to "
            "start again, or choose another --out"
        )
    return None


def _settings(config: TrainConfig, ckpt: Checkpoint | None) -> dict:
    """Every setting of :data:`DEFAULTS`: the flag, else the checkpoint's, else the default."""
    settings = {}
    for key, default in DEFAULTS.items():
        given = getattr(config, key)
        if ckpt is None:
            settings[key] = default if given is None else given
            continue
        stored = ckpt.meta["train"][key]
        if given is not None and given != stored:
            flag = "--" + key.replace("_", "-")
            raise UsageError(
                f"the checkpoint was trained with {flag} {stored}, not {given}: drop {flag} "
                "to resume, or train into a new --out"
            )
        settings[key] = stored
    return settings


def _flags(model: CharModel) -> str:
    """The model's variants as their flags, e.g. ``"--layer-norm, --zoneout 0.1, "`` (empty for the plain layer)."""
    flags = [f"--{name.replace('_', '-')}" + ("" if value is True else f" {value:g}")
             for name, value in model._options().items()]
    return "".join(f"{flag}, " for flag in flags)


def _model(vocab, s: dict, data_parallel: bool) -> CharModel:
    """The run's :class:`CharModel`; an option it refuses is a one-line error."""
    try:
        model = CharModel(len(vocab), s["hidden"], s["layers"], s["cell"], s["embed"],
                          **{name: s[name] for name in VARIANTS})
    except ValueError as error:  # e.g. "mode 'gru' has no peephole"
        raise UsageError(f"--cell {s['cell']}: {error}") from None
    if data_parallel and model.regularised:
        raise UsageError("--weight-drop, --recurrent-dropout and --zoneout train on one device or process; "
                         "drop them or --devices/torchrun")
    return model


def _text_for(config: TrainConfig, ckpt: Checkpoint | None) -> tuple[str, str]:
    """``(text, source)`` (:func:`~portable_rnn.app.corpus.load_text`) of ``--text``, else of the checkpoint's."""
    source = config.text
    if source is None and ckpt is not None:
        source = ckpt.meta["text"]["source"]
    return load_text(source)


def _vocabulary(text: str, source: str, digest: str, ckpt: Checkpoint | None) -> Vocabulary:
    """The text's vocabulary, or the checkpoint's after checking the text is the one it was trained on."""
    if ckpt is None:
        vocab = Vocabulary.of(text)
    elif digest != ckpt.meta["text"]["sha256"]:
        raise UsageError(
            f"the text ({'default corpus' if source == 'default' else source}) is not the one "
            "the checkpoint was trained on (its SHA-256 differs)"
        )
    else:
        vocab = ckpt.vocab
        if vocab != Vocabulary.of(text):
            raise CheckpointError("the checkpoint's vocabulary is not the one its text produces (the file was edited)")
    if len(vocab) < 2:
        raise UsageError("the text has a single distinct character; there is nothing to learn")
    return vocab


def _data(text: str, vocab: Vocabulary, settings: dict, ckpt: Checkpoint | None):
    """``(schedule, held_out, split)``: the training part's batches, the held-out tokens and the split's record.

    ``held_out`` is ``None`` with ``val_fraction`` 0. When resuming, the
    record must equal the checkpoint's: the split is rebuilt, never stored.
    """
    s, fraction = settings, settings["val_fraction"]
    train_text, val_text = split_text(text, fraction)
    split = {"train_chars": len(train_text), "val_chars": len(val_text),
             "sha256": hashlib.sha256(val_text.encode("utf-8")).hexdigest()}
    if ckpt is not None and split != ckpt.meta["split"]:
        raise UsageError("the text's held-out split is not the one the checkpoint records; train into a new --out")
    data = vocab.encode(train_text)
    if s["seq_len"] >= len(data):
        held_out = f"--val-fraction {fraction:g} holds out {len(val_text)}" if fraction else "none held out"
        raise UsageError(f"--seq-len {s['seq_len']} is not shorter than the text's training part "
                         f"({len(data)} of its {len(text)} characters; {held_out})")
    schedule = BatchSchedule(data, s["batch"], s["seq_len"], s["seed"])
    if fraction and len(val_text) < 2:
        raise UsageError(f"--val-fraction {fraction:g} holds out {len(val_text)} of the text's {len(text)} "
                         "characters; evaluating needs at least 2: raise it, or pass 0 to hold nothing out")
    return schedule, (vocab.encode(val_text) if fraction else None), split


def _check_memory(model: CharModel, s: dict, runtime) -> None:
    """Refuse, before allocating, a run whose arrays cannot fit the host's available memory.

    The estimate: the initial draw (float64, on the host), the parameters
    with their gradients, Adam's two moments and the update's temporary (5
    copies), and one step's tape (about 7 numbers per layer, step, sequence
    and hidden unit, plus the embeddings and three (T, N, V) arrays of the
    logits, their softmax and gradient). Runs on an accelerator are not
    checked here (their library reports what it cannot allocate).
    """
    device_type = getattr(runtime.device, "type", None) or getattr(runtime.device, "platform", None)
    if not (runtime.library in ("numpy", "array_api_strict") or device_type == "cpu"):
        return
    available = mem_available()
    if available is None:
        return
    size = 8 if s["dtype"] == "float64" else 4
    n_params = sum(math.prod(shape) for shape in model.param_shapes().values())
    steps = s["seq_len"] * s["batch"]
    tape = steps * (7 * model.hidden_size * model.num_layers + model.embed_size + 3 * model.vocab_size)
    need = 8 * n_params + size * (5 * n_params + tape)
    if need > available:
        raise UsageError(f"this run needs about {need / 2**30:,.1f} GiB ({n_params:,} parameters and a tape of "
                         f"--batch {s['batch']} x --seq-len {s['seq_len']}) but {available / 2**30:,.1f} GiB is "
                         "available: lower --hidden, --layers, --batch or --seq-len")


def _tree_to_device(runtime, tree, dtype):
    """A host tree (dicts, tuples of NumPy arrays) on the backend; floating leaves cast to ``dtype``."""
    if isinstance(tree, dict):
        return {k: _tree_to_device(runtime, v, dtype) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return tuple(_tree_to_device(runtime, v, dtype) for v in tree)
    a = np.asarray(tree)
    return runtime.asarray(a, dtype if a.dtype.kind == "f" else None)


def _tree_to_host(tree):
    """A backend tree (dicts, tuples of arrays) as NumPy arrays on the host."""
    if isinstance(tree, dict):
        return {k: _tree_to_host(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return tuple(_tree_to_host(v) for v in tree)
    return backends.to_host(tree)


def _metadata(model, vocab, settings, steps, source, digest, text, split) -> dict:
    """The checkpoint metadata that stays fixed for the run."""
    return {
        "model": dataclasses.asdict(model),
        "vocab": vocab.chars,
        "train": dict(settings, steps=steps),
        "text": {"source": source, "sha256": digest, "chars": len(text)},
        "split": split,
        "prime": "\n" if "\n" in vocab.chars else text[0],
    }


def _prepare(config: TrainConfig, stack: contextlib.ExitStack) -> _Run:
    """Check the input, resolve the backend and build the starting state of the run.

    Enters :func:`portable_rnn.backends.jax_float64` on ``stack`` for a float64 run on JAX.
    """
    if config.segment_steps is not None and config.retain != "checkpoint":
        raise UsageError(f"--segment-steps {config.segment_steps} needs --retain checkpoint "
                         "(the full tape has no segments)")
    try:
        check_retain(config.retain, config.segment_steps, backward_by="training")
    except ValueError as error:
        raise UsageError(f"retain / segment_steps: {error}") from None
    world = _check_scale_out(config)
    if config.coordinator is not None:  # early: an input error then stops every process at once
        _start_jax_processes(config)
    out_dir = Path(config.out)
    ckpt = _checkpoint_to_resume(config, out_dir)
    s = _settings(config, ckpt)
    steps = config.steps if config.steps is not None else (
        ckpt.meta["train"]["steps"] if ckpt is not None else DEFAULT_STEPS)
    text, source = _text_for(config, ckpt)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    vocab = _vocabulary(text, source, digest, ckpt)
    schedule, val, split = _data(text, vocab, s, ckpt)
    runtime = backends.resolve(config.backend, _torch_device(config, world))
    stack.enter_context(runtime.context())  # CuPy creates some arrays on its current device
    if runtime.library == "jax" and s["dtype"] == "float64":
        stack.enter_context(backends.jax_float64())
    mesh = _jax_mesh(config, runtime, s["batch"])
    if world is not None:
        _check_split(s["batch"], world.size, f"the {world.size} torchrun processes")
        _join_torch_world(world, runtime, stack)
    model = _model(vocab, s, mesh is not None or world is not None)
    _check_memory(model, s, runtime)
    if ckpt is None:
        params = model.init(s["seed"], xp=runtime.xp, dtype=s["dtype"], device=runtime.device)
        opt_state, carry = adam(s["lr"]).init(params), model.init_state(params, s["batch"])
        history: dict[str, list] = {key: [] for key in HISTORY_KEYS}
        start, wall_before = 0, 0.0
    else:
        params = _tree_to_device(runtime, ckpt.params, s["dtype"])
        opt_state = _tree_to_device(runtime, ckpt.opt_state, s["dtype"])
        carry = (model.init_state(params, s["batch"]) if ckpt.carry is None
                 else model.rnn.state_value(_tree_to_device(runtime, ckpt.carry, s["dtype"])))
        start, history = int(ckpt.meta["step"]), ckpt.meta["history"]
        wall_before = float(ckpt.meta.get("wall_s", 0.0))
    meta = _metadata(model, vocab, s, steps, source, digest, text, split)
    run = _Run(config, s, steps, model, runtime, vocab, schedule, meta, params, opt_state, carry, start,
               wall_before, list(history["step"]), list(history["loss"]), val, list(history["val_step"]),
               list(history["val_loss"]), step=start, mesh=mesh, world=world)
    _place(run)
    return run


# --------------------------------------------------------------------------- data parallel


@dataclass(frozen=True)
class _TorchWorld:
    """This process's place among the ``torchrun`` processes: ``rank`` of ``size``."""

    rank: int
    size: int


def _library(backend: str) -> str:
    return backend.split(":", 1)[0]


def _environment_int(name: str) -> int:
    """An integer that ``torchrun`` sets in the environment; one line when it is not one."""
    value = os.environ.get(name, "")
    if not value.isdigit():
        raise UsageError(f"the environment variable {name} is {value!r}; expected the integer torchrun sets")
    return int(value)


def _check_scale_out(config: TrainConfig) -> _TorchWorld | None:
    """The data-parallel flags and environment, checked together; returns the torch world, if any.

    ``--devices`` and the multi-host flags need JAX; the three multi-host
    flags come together; a ``WORLD_SIZE`` above 1 (``torchrun``) needs torch.
    """
    given = [flag for flag, value in (("--devices", config.devices), ("--coordinator", config.coordinator),
                                      ("--num-processes", config.num_processes),
                                      ("--process-id", config.process_id)) if value is not None]
    if given and _library(config.backend) != "jax":
        raise UsageError(f"{given[0]} is data parallel over JAX devices: it needs --backend jax")
    multi_host = (config.coordinator, config.num_processes, config.process_id)
    if any(v is not None for v in multi_host) and any(v is None for v in multi_host):
        raise UsageError("multi-host training needs --coordinator HOST:PORT, --num-processes P and "
                         "--process-id I together")
    if config.coordinator is not None and config.process_id is not None and config.num_processes is not None:
        host, _, port = config.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--coordinator must be HOST:PORT, got {config.coordinator!r}")
        if config.process_id >= config.num_processes:
            raise UsageError(f"--process-id {config.process_id} is not below --num-processes {config.num_processes}")
    if "WORLD_SIZE" not in os.environ or _environment_int("WORLD_SIZE") <= 1:
        return None
    if _library(config.backend) != "torch" or given:
        raise UsageError(f"started by torchrun ({os.environ['WORLD_SIZE']} processes): data parallel over "
                         "processes needs --backend torch, without the JAX flags")
    return _TorchWorld(_environment_int("RANK"), _environment_int("WORLD_SIZE"))


def _torch_device(config: TrainConfig, world: _TorchWorld | None) -> str | None:
    """The device of this process: with torchrun on CUDA, the GPU of its ``LOCAL_RANK``."""
    device = config.device
    if world is not None and "cuda" in f"{config.backend}:{device}" and ":" not in (device or "cuda"):
        return f"cuda:{_environment_int('LOCAL_RANK')}"
    return device


def _start_jax_processes(config: TrainConfig) -> None:
    """``jax.distributed.initialize`` for a multi-host run (before JAX touches a device).

    CPU devices exchange over Gloo (XLA has no CPU collectives without
    one). JAX's preemption service is left off: it takes SIGTERM, which
    the CLI turns into an orderly stop. :func:`_exit_without_barrier` is
    registered here so that it runs before JAX's own exit handler.
    """
    import atexit

    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_preemption_service", False)
    try:
        jax.distributed.initialize(config.coordinator, config.num_processes, config.process_id)
    except (RuntimeError, ValueError) as error:
        raise UsageError(f"jax.distributed.initialize failed: {str(error).splitlines()[0]}") from None
    atexit.register(_exit_without_barrier)


#: The exit status of a multi-host process whose run failed, or ``None`` (set by :func:`_stop_together`).
_FAILED_STATUS = None


def _exit_without_barrier() -> None:
    """At exit after a failed multi-host run, leave at once with its status (an ``atexit`` handler).

    JAX's own exit handler waits at a shutdown barrier for every process,
    which a dead or diverged process never reaches; the wait ends after
    minutes, in a fatal error many lines long. Leaving with ``os._exit``
    closes this process's connections, so the others' next collective fails
    at once and they stop with one line too.
    """
    if _FAILED_STATUS is None:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(_FAILED_STATUS)


def _lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective or the coordination service failing (another process is gone)."""
    import jax

    text = str(error)
    return isinstance(error, jax.errors.JaxRuntimeError) or any(
        word in text for word in ("Gloo", "coordination service", "DEADLINE_EXCEEDED"))


@contextlib.contextmanager
def _stop_together(config: TrainConfig):
    """Around a multi-host run: a lost peer becomes one line, and a failure skips JAX's exit barrier.

    Every exception still reaches the caller (the CLI prints it as usual);
    the status it will exit with is recorded for :func:`_exit_without_barrier`.
    """
    global _FAILED_STATUS
    if config.coordinator is None:
        yield
        return
    import jax

    try:
        yield
    except KeyboardInterrupt as stop:
        _FAILED_STATUS = 143 if isinstance(stop, Terminated) else 130
        raise
    except (UsageError, backends.BackendError, OSError, MemoryError):
        _FAILED_STATUS = 2
        raise
    except Exception as error:
        if not (jax.distributed.is_initialized() and _lost_peer(error)):
            _FAILED_STATUS = 1
            raise
        _FAILED_STATUS = 2
        raise backends.BackendError(
            f"process {jax.process_index()} of {jax.process_count()} stopped: another process failed, was "
            f"stopped or cannot be reached ({str(error).splitlines()[0]})") from None


def _jax_mesh(config: TrainConfig, runtime, batch: int):
    """The one-axis mesh of ``--devices`` (every device of every process on several hosts), or ``None``."""
    if config.devices is None and config.coordinator is None:
        return None
    import jax

    from .. import parallel

    devices = jax.devices(runtime.device.platform)
    n = len(devices) if config.devices is None else config.devices
    if n > len(devices) or (config.coordinator is not None and n != len(devices)):
        hint = f"; on CPU set XLA_FLAGS=--xla_force_host_platform_device_count={n}" if n > len(devices) else ""
        raise UsageError(f"--devices {n}: JAX has {len(devices)} {runtime.device.platform} device(s) "
                         f"(a multi-host run uses all of them){hint}")
    _check_split(batch, n, f"--devices {n}")
    return parallel.batch_mesh(devices[:n])


def _check_split(batch: int, parts: int, what: str) -> None:
    """The global batch divides evenly, so every part counts the same number of tokens."""
    if batch % parts:
        raise UsageError(f"--batch {batch} does not split evenly over {what}: choose a multiple of {parts}")


def _join_torch_world(world: _TorchWorld, runtime, stack: contextlib.ExitStack) -> None:
    """``torch.distributed.init_process_group`` (nccl on CUDA, gloo on CPU) from torchrun's environment."""
    import torch.distributed as dist

    dist.init_process_group("nccl" if runtime.device.type == "cuda" else "gloo")
    stack.callback(dist.destroy_process_group)


def _rows(run: _Run, batch_size: int) -> slice:
    """This torch process's rows of the global batch."""
    part = batch_size // run.world.size
    return slice(run.world.rank * part, (run.world.rank + 1) * part)


def _place(run: _Run) -> None:
    """Put the starting arrays where the steps run: replicated parameters, the state split like the batch."""
    batch = run.settings["batch"]
    if run.mesh is not None:
        from .. import parallel

        specs = parallel.model_partition_specs(run.model)
        run.params, run.opt_state = parallel.from_host(
            run.mesh, _tree_to_host((run.params, run.opt_state)), specs["params"])
        run.carry = run.model.rnn.state_value(parallel.from_host(
            run.mesh, _tree_to_host(run.model.rnn.state_parts(run.carry)), specs["state"]))
        zero = np.zeros((run.model.num_layers, batch, run.model.hidden_size), run.settings["dtype"])
        run.zeros = run.model.rnn.state_value(parallel.from_host(
            run.mesh, (zero,) * run.model.cell.n_states, specs["state"]))
    elif run.world is not None:
        rows = _rows(run, batch)
        run.carry = run.model.rnn.state_value(tuple(p[:, rows] for p in run.model.rnn.state_parts(run.carry)))
        run.zeros = run.model.init_state(run.params, batch // run.world.size)
    else:
        run.zeros = run.model.init_state(run.params, batch)


def _put_batch(run: _Run, a: np.ndarray):
    """A host batch (N, T) where the step reads it: split along the mesh, this process's rows, or whole."""
    if run.mesh is not None:
        from .. import parallel

        return parallel.from_host(run.mesh, a, parallel.model_partition_specs(run.model)["tokens"])
    if run.world is not None:
        return run.runtime.asarray(a[_rows(run, a.shape[0])])
    return run.runtime.asarray(a)


def _host(run: _Run, tree, batch_split: bool = False):
    """A tree of the run's arrays whole on the host; ``batch_split`` marks torch per-process state (gathered).

    Collective when the run is parallel: every process calls it.
    """
    if run.mesh is not None:
        from .. import parallel

        return parallel.to_host(tree)
    if run.world is not None and batch_split:
        import torch
        import torch.distributed as dist

        def gather(a):
            parts = [torch.empty_like(a) for _ in range(run.world.size)]
            dist.all_gather(parts, a.contiguous())
            return backends.to_host(torch.cat(parts, dim=1))

        return tuple(gather(a) for a in tree)
    return _tree_to_host(tree)


def _one_device_params(run: _Run) -> dict:
    """The parameters on the backend's one device, for evaluation and sampling."""
    if run.mesh is None:
        return run.params
    return _tree_to_device(run.runtime, _host(run, run.params), run.settings["dtype"])


def _all_reduce_mean(run: _Run, grads: dict, loss):
    """Gradients and loss averaged over the torch processes, in one ``all_reduce``.

    Every process holds the same number of tokens (the batch splits evenly),
    so the mean of the per-process means is the mean over the global batch.
    """
    import torch
    import torch.distributed as dist

    names = list(grads)
    flat = torch.cat([grads[k].reshape(-1) for k in names] + [loss.reshape(1)])
    dist.all_reduce(flat)
    flat = flat / run.world.size
    sizes = [grads[k].numel() for k in names]
    pieces = torch.split(flat[:-1], sizes)
    return {k: p.reshape(grads[k].shape) for k, p in zip(names, pieces)}, flat[-1]


# --------------------------------------------------------------------------- the loop


def _step_function(run: _Run):
    """``(params, opt_state, state, tokens, targets) -> (params, opt_state, state, loss)``; jitted on JAX.

    Data parallel: on a mesh, the same step compiled with the batch split
    (XLA adds the one all-reduce); under torchrun, the gradients and loss of
    this process's rows averaged over the processes before clipping.
    """
    model, truncate, clip = run.model, run.settings["truncate"], run.settings["clip"]
    opt, world = adam(run.settings["lr"]), run.world
    retain = dict(retain=run.config.retain, checkpoint_every=run.config.segment_steps)

    def train_step(params, opt_state, state, tokens, targets, masks):
        loss, grads, state = model.loss_and_grads(params, tokens, targets, state, truncate, masks=masks, **retain)
        if world is not None:
            grads, loss = _all_reduce_mean(run, grads, loss)
        grads, _ = clip_by_global_norm(grads, clip)
        params, opt_state = opt.update(grads, opt_state, params)
        return params, opt_state, state, loss

    if run.mesh is not None:
        from .. import parallel

        specs = parallel.model_partition_specs(model)
        rep, tok, state = specs["params"], specs["tokens"], specs["state"]
        return parallel.data_parallel(train_step, run.mesh, in_specs=(rep, rep, state, tok, tok, rep),
                                      out_specs=(rep, rep, state, rep))
    if run.runtime.library == "jax":
        import jax

        return jax.jit(train_step)
    return train_step


def _flush(run: _Run) -> list:
    """Copy the pending losses to the host (one sync), record them and return them."""
    values = [float(v) for v in _host(run, [loss for _, loss in run.pending])]
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"the loss is not finite at steps {run.pending[0][0]}..{run.pending[-1][0]}; lower --lr")
    run.history_steps.extend(k for k, _ in run.pending)
    run.history_losses.extend(values)
    run.pending = []
    return values


def _save(run: _Run, wall: float, name: str = CHECKPOINT) -> None:
    """Write the checkpoint ``name`` (the latest, or :data:`BEST`) and ``history.json`` at the current step."""
    meta = dict(run.meta, step=run.step, wall_s=wall, backend=run.runtime.name, history=run.history)
    carry = _host(run, run.model.rnn.state_parts(run.carry), batch_split=True)
    params, opt_state = _host(run, run.params), _host(run, run.opt_state)  # collective: before the writer test
    ckpt = Checkpoint(params, opt_state, carry, meta)
    bad = nonfinite_member(ckpt)  # checked by every process, so that all stop together
    if bad is not None:
        kept = f"{name} of an earlier step is kept" if (run.out_dir / name).exists() else f"no {name} was written"
        raise UsageError(f"step {run.step}: {bad} is not finite (NaN or inf); {kept}; lower --lr")
    if not run.writer:
        return
    save_checkpoint(run.out_dir / name, ckpt)
    write_history(run.out_dir / HISTORY, run.history)


def _validate(run: _Run, wall: float) -> None:
    """Record the held-out loss at the current step; write :data:`BEST` when it is the lowest so far.

    Call after :func:`_flush`, so that ``best.npz`` holds the whole history up to its step.
    """
    s = run.settings
    assert run.val is not None, "held-out loss asked for without a held-out text"
    loss = mean_loss(run.model, _one_device_params(run), run.val, batch=s["batch"], seq_len=s["seq_len"],
                     runtime=run.runtime)
    if not math.isfinite(loss):
        raise UsageError(f"the held-out loss is not finite at step {run.step}; lower --lr")
    improved = loss < run.best
    if run.config.coordinator is not None:
        # Process 0 decides for all: writing best.npz is a collective, so every process must make the
        # same choice, even where hosts' CPUs round the held-out loss differently.
        from jax.experimental import multihost_utils

        improved = bool(multihost_utils.broadcast_one_to_all(np.int32(improved)))
    run.val_steps.append(run.step)
    run.val_losses.append(loss)
    if improved:
        _save(run, wall, BEST)


def _show_sample(run: _Run, progress: Progress) -> None:
    """Print a sample of the model at the current step and append it to ``samples.txt``."""
    if not run.writer:
        return
    config, prime = run.config, run.meta["prime"]
    tokens = run.model.sample(_one_device_params(run), run.vocab.encode(prime), config.sample_length,
                              temperature=config.temperature, seed=run.settings["seed"] + run.step)
    text = prime + run.vocab.decode(tokens)
    block = f"----- sample at step {run.step} (temperature {config.temperature}) -----\n{text.strip()}\n"
    progress.write(block)
    append_sample(run.out_dir / SAMPLES, block)


def _banner(run: _Run) -> str:
    model, s, source, runtime = run.model, run.settings, run.meta["text"]["source"], run.runtime
    n_params = sum(int(np.prod(v)) for v in model.param_shapes().values())
    return (
        f"training {model.mode.upper()} ({_flags(model)}hidden {model.hidden_size}, layers {model.num_layers}, "
        f"embed {model.embed_size}, {n_params:,} parameters) on "
        f"{'the default corpus' if source == 'default' else source} "
        f"({run.meta['text']['chars']:,} characters, {run.meta['split']['val_chars']:,} of them held out; "
        f"vocabulary {len(run.vocab)}) with {runtime.name} on "
        f"{runtime.device}{_parallel_words(run)}; steps {run.start}->{run.steps}, batch {s['batch']} x "
        f"seq-len {s['seq_len']}"
    )


def _parallel_words(run: _Run) -> str:
    """How the run splits its batch, for the banner: nothing, a JAX mesh, or torch processes."""
    if run.mesh is not None:
        return f", data parallel over {run.mesh.devices.size} devices"
    if run.world is not None:
        return f", data parallel over {run.world.size} torch processes"
    return ""


def _single_threaded(runtime: backends.Backend):
    """One thread for NumPy's BLAS, and for torch's ops on the CPU, while training (a context manager).

    The matrices of a character model are small (N x H times H x 4H per
    step): a second thread gains little on an idle machine, and costs far
    more than it gains when threads wait on each other. NumPy's BLAS is
    limited (with threadpoolctl, when installed) for NumPy and for torch on
    the CPU, whose tensors run the same NumPy kernels. Torch on the CPU also
    runs its own ops (embedding, decoder, loss, optimiser) on one thread
    (``torch.set_num_threads(1)``, restored on exit): a parallel torch op
    wakes torch's OpenMP pool, whose workers spin after it and take the
    cores from the NumPy kernels and from torch's next op, so that on two
    threads an op of microseconds waits milliseconds for its workers (the
    default job: 2,400 characters/s on two threads against 55,000 on one, on
    a 2-core machine with other work beside it). Other libraries and devices
    are left as they are.
    """
    stack = contextlib.ExitStack()
    on_cpu_torch = runtime.library == "torch" and getattr(runtime.device, "type", None) == "cpu"
    if runtime.library == "numpy" or on_cpu_torch:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
    if on_cpu_torch:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        stack.callback(torch.set_num_threads, before)
    return stack


def _loop(run: _Run, progress: Progress) -> None:
    """Train from ``run.step`` to ``run.steps``, evaluating, sampling and checkpointing on schedule."""
    config, steps, t0 = run.config, run.steps, time.perf_counter()
    train_step = _step_function(run)
    while run.step < steps:
        inputs, targets, reset = run.schedule(run.step)
        # training-mode factors of the regularisers (none without): drawn for the step, so a resumed run draws the same
        masks = run.model.training_masks(run.settings["seed"] * 2**32 + run.step, run.params, *inputs.shape)
        run.params, run.opt_state, run.carry, loss = train_step(
            run.params, run.opt_state, run.zeros if reset else run.carry,
            _put_batch(run, inputs), _put_batch(run, targets), masks)
        run.step += 1
        run.pending.append((run.step, loss))
        val_due = run.val is not None and (run.step == steps or (
            config.val_every and run.step % config.val_every == 0))
        if run.step % SYNC_EVERY == 0 or run.step == steps or val_due:
            losses = _flush(run)
            if val_due:
                _validate(run, run.wall_before + time.perf_counter() - t0)
            progress.update(run.step, steps, losses, run.val_losses[-1] if run.val_losses else None)
        if config.sample_every and run.step % config.sample_every == 0 and run.step < steps:
            _show_sample(run, progress)
        if config.checkpoint_every and run.step % config.checkpoint_every == 0 and run.step < steps:
            progress.update(run.step, steps, _flush(run))  # the history stays in step with the checkpoint
            _save(run, run.wall_before + time.perf_counter() - t0)


def _run_steps(run: _Run, progress: Progress) -> tuple[int, float]:
    """Run the loop; returns ``(status, seconds)``: 130 after Ctrl-C, 143 after SIGTERM, with the history flushed."""
    with _single_threaded(run.runtime):
        progress.write(_banner(run))
        t0 = time.perf_counter()
        try:
            _loop(run, progress)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (Terminated)
            if run.config.coordinator is not None:
                raise  # saving is a collective the other processes, still stepping, would not join
            _flush(run)
            return (143 if isinstance(stop, Terminated) else 130), time.perf_counter() - t0
        return 0, time.perf_counter() - t0


# --------------------------------------------------------------------------- the end


def _plot_loss(run: _Run) -> str | None:
    """Write ``loss.png``; ``None``, or why it was skipped."""
    if not run.history_losses:
        return "no steps yet"
    curves: dict[str, tuple]
    model, curves = run.model, {
        "training loss": (run.history_steps, run.history_losses, {"alpha": 0.35}),
        "training, moving average (0.95)": (run.history_steps, smooth(run.history_losses)),
    }
    if run.val_steps:
        curves[f"held-out ({run.meta['split']['val_chars']:,} characters)"] = (
            run.val_steps, run.val_losses, {"marker": "o", "markersize": 3})
    return plot_curves(
        run.out_dir / PLOT, curves,
        title=f"{model.mode.upper()} H={model.hidden_size} L={model.num_layers} on {run.runtime.name}",
        xlabel="step", ylabel="cross-entropy (nats per character)",
    )


def _summary(run: _Run, wall: float, skipped_plot: str | None, out) -> None:
    """Print the closing lines: speed and loss, and the files written."""
    ran, losses = run.step - run.start, run.history_losses
    if ran:
        last = losses[-min(len(losses), 50):]
        tokens = run.settings["batch"] * run.settings["seq_len"] * ran
        print(
            f"done: steps {run.start}->{run.step} in {wall:.1f} s ({tokens / max(wall, 1e-9):,.0f} tok/s); "
            f"loss {losses[-1]:.4f} at step {run.step} (mean of the last {len(last)} steps: {np.mean(last):.4f} "
            f"nats = {np.mean(last) / LN2:.3f} bits per character)",
            file=out,
        )
    if run.val_losses:
        best = int(np.argmin(run.val_losses))
        print(f"held-out: {run.val_losses[-1]:.4f} nats = {run.val_losses[-1] / LN2:.3f} bits per character at "
              f"step {run.val_steps[-1]} ({run.meta['split']['val_chars'] - 1:,} predictions); best "
              f"{run.val_losses[best] / LN2:.3f} bits per character at step {run.val_steps[best]} ({BEST})", file=out)
    samples = [SAMPLES] if (run.out_dir / SAMPLES).exists() else []  # none before the first sample
    written = [CHECKPOINT] + ([BEST] if run.val_losses else []) + [HISTORY, *samples] + ([] if skipped_plot else [PLOT])
    print(f"wrote {', '.join(str(run.out_dir / w) for w in written)}", file=out)
    if skipped_plot:
        print(f"skipped {run.out_dir / PLOT}: {skipped_plot}", file=out)


def train(config: TrainConfig, out=None) -> TrainResult:
    """Train (or resume) a character model; see the module docstring.

    Parameters
    ----------
    config : TrainConfig
    out : file, optional
        Where progress lines and samples go (default ``sys.stdout``); the
        tqdm bar, when used, goes to ``sys.stderr``.

    Returns
    -------
    TrainResult
        ``status`` is 0, or 130 when the run was interrupted (Ctrl-C) after
        saving a checkpoint.

    Raises
    ------
    UsageError
        Bad input: text, flags or checkpoint.
    portable_rnn.backends.BackendError
        A backend that is not installed, or a device that is not there.
    """
    out = sys.stdout if out is None else out
    with _stop_together(config), contextlib.ExitStack() as stack:
        run = _prepare(config, stack)
        if not run.writer:  # one process of several: the first one prints and writes
            out, config = stack.enter_context(open(os.devnull, "w")), dataclasses.replace(config, progress="none")
        if run.start >= run.steps:
            print(f"the checkpoint is already at step {run.start} of {run.steps}; pass --steps > {run.start} "
                  "to train further", file=out)
            return _result(run, run.wall_before, 0)
        if run.writer:
            run.out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(run.out_dir)  # left by a run killed while writing
        if run.writer and not config.resume:  # a new run: a new log, and no best model of an older run to sample from
            (run.out_dir / SAMPLES).unlink(missing_ok=True)
            (run.out_dir / BEST).unlink(missing_ok=True)
        s = run.settings
        progress = stack.enter_context(Progress(
            config.progress, run.steps, run.start, out, config.log_every, s["batch"] * s["seq_len"]))
        status, wall = _run_steps(run, progress)
        progress.close()  # the bar's last line comes before the closing lines
        _save(run, run.wall_before + wall)
        if status:
            print(f"interrupted at step {run.step}: checkpoint saved; continue with --resume", file=out)
        else:
            _show_sample(run, progress)
        _summary(run, wall, _plot_loss(run) if run.writer else "not the first process", out)
    return _result(run, run.wall_before + wall, status)


def _result(run: _Run, wall: float, status: int) -> TrainResult:
    return TrainResult(run.history_steps, run.history_losses, wall, run.out_dir, status, run.val_steps,
                       run.val_losses)
