r"""Train a :class:`~portable_rnn.model.CharModel` on a text: the host-side driver of ``portable-rnn train``.

What a run does
---------------
The text is read as UTF-8 and its distinct characters, sorted, are the
vocabulary. It is cut into ``batch`` parallel *streams* of consecutive
characters; step ``k`` of an epoch feeds each stream's next ``seq_len``
characters and the recurrent state is carried from one step to the next
(truncated BPTT: no gradient crosses a batch boundary, and ``--truncate K``
also cuts inside the batch). Every epoch starts from a zero state at an
offset in ``[0, seq_len)`` drawn from ``numpy.random.default_rng([seed,
epoch])``, so the batch of step ``s`` is a pure function of ``(text, seed,
s)``: a resumed run sees exactly the batches an uninterrupted one would.

Each step is :meth:`CharModel.loss_and_grads`, :func:`clip_by_global_norm`
and :func:`adam`, as one function; on JAX that function is ``jax.jit``-
compiled. Parameters are initialised on the host (:meth:`CharModel.init`) and
batches are drawn on the host, so the same seed gives the same loss curve on
every backend, up to float32 rounding. Loss values stay on the device and are
copied to the host every :data:`SYNC_EVERY` steps for the progress display.

What a run writes into ``out``
------------------------------
``checkpoint.npz``
    Parameters, Adam state, the carried recurrent state and JSON metadata
    (model sizes, vocabulary, training settings, text hash, loss history),
    written every ``checkpoint_every`` steps, at the end and on Ctrl-C.
    A NumPy ``.npz`` loaded with ``allow_pickle=False``; the metadata is a
    ``uint8`` array of UTF-8 JSON. Writes go to a temporary file in the same
    folder, then :func:`os.replace`, so an interrupted write leaves the
    previous checkpoint intact.
``history.json``
    ``{"step": [...], "loss": [...]}``, one entry per step (atomic too).
``loss.png``
    The loss curve (needs matplotlib; skipped with a message otherwise). Its
    regular spikes are the first step of each epoch, which starts from a zero
    state and so predicts its first characters without context.
``samples.txt``
    The samples printed during training.

The default corpus, used when no text is given, is a selection of
Shakespeare's Sonnets (1609, public domain) shipped in
``portable_rnn/data/sonnets.txt`` (16 KB, 66 distinct characters).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .io import atomic_write
from .model import CharModel
from .optim import adam, clip_by_global_norm

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainError",
    "CheckpointError",
    "Runtime",
    "Vocabulary",
    "BatchSchedule",
    "Checkpoint",
    "BACKENDS",
    "DEFAULTS",
    "default_corpus",
    "read_text",
    "resolve_runtime",
    "save_checkpoint",
    "load_checkpoint",
    "plot_curves",
    "train",
    "sample_text",
]

#: Backends ``train`` and ``sample`` accept.
BACKENDS = ("numpy", "jax", "torch", "cupy", "array_api_strict")

#: How to install each optional backend.
INSTALL_HINTS = {
    "jax": "pip install 'portable-rnn[jax]'",
    "torch": "pip install torch",
    "cupy": "pip install 'portable-rnn[cupy]'",
    "array_api_strict": "pip install 'portable-rnn[strict]'",
}

#: Loss values are copied to the host every this many steps.
SYNC_EVERY = 10

#: The default of every setting a checkpoint remembers.
DEFAULTS = {
    "cell": "lstm",
    "hidden": 128,
    "layers": 1,
    "embed": 32,
    "seq_len": 64,
    "batch": 32,
    "truncate": None,
    "lr": 3e-3,
    "clip": 5.0,
    "seed": 0,
    "dtype": "float32",
}
DEFAULT_STEPS = 1000

FORMAT = "portable_rnn.CharModel"
FORMAT_VERSION = 1
CHECKPOINT, HISTORY, PLOT, SAMPLES = "checkpoint.npz", "history.json", "loss.png", "samples.txt"
DEFAULT_CORPUS = "sonnets.txt"


class TrainError(Exception):
    """A problem with the user's input (file, flag, backend, device): the CLI prints it and exits 2."""


class CheckpointError(TrainError):
    """A checkpoint that is missing, corrupt or not written by :func:`save_checkpoint`."""


# --------------------------------------------------------------------------- text


def default_corpus() -> str:
    """The embedded default text (a selection of Shakespeare's Sonnets, public domain)."""
    return (resources.files("portable_rnn") / "data" / DEFAULT_CORPUS).read_text(encoding="utf-8")


def read_text(path) -> str:
    """Read a UTF-8 text file; every problem becomes one :class:`TrainError` line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TrainError(f"text file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise TrainError(f"text file {str(path)!r} is a directory") from None
    except OSError as error:
        raise TrainError(f"cannot read text file {str(path)!r}: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TrainError(
            f"text file {str(path)!r} is not UTF-8 (byte {error.start}: {error.reason}); "
            "convert it, e.g. iconv -t utf-8"
        ) from None
    if not text:
        raise TrainError(f"text file {str(path)!r} is empty")
    return text


@dataclass(frozen=True)
class Vocabulary:
    """The sorted distinct characters of a text, and the maps to and from token ids."""

    chars: str

    @classmethod
    def of(cls, text: str) -> "Vocabulary":
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int32) of ``text``; raises :class:`TrainError` naming unknown characters."""
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted({c for c in text if c not in index})
        if unknown:
            raise TrainError(
                f"characters not in the model's vocabulary: {''.join(unknown)[:20]!r}"
            )
        return np.fromiter((index[c] for c in text), dtype=np.int32, count=len(text))

    def decode(self, tokens) -> str:
        return "".join(self.chars[int(t)] for t in tokens)


class BatchSchedule:
    r"""Batches of consecutive windows, a pure function of the step number.

    The text ``data`` (M tokens) is read as ``batch`` streams of ``L = (M -
    seq_len) // batch`` tokens; an epoch has ``K = L // seq_len`` steps and
    starts at an offset :math:`o_e \in [0, \text{seq\_len})` drawn from
    ``default_rng([seed, e])``. Step ``s`` (epoch ``e = s // K``, position
    ``k = s % K``) gives, for stream ``n``, the inputs
    ``data[o_e + n L + k T : ... + T]`` and the same window shifted by one as
    targets. The state is reset (zeros) at the first step of each epoch.
    """

    def __init__(self, data: np.ndarray, batch: int, seq_len: int, seed: int):
        M = int(data.shape[0])
        self.stream = (M - seq_len) // batch if M > seq_len else 0
        self.per_epoch = self.stream // seq_len
        if self.per_epoch < 1:
            need = batch * seq_len + seq_len
            raise TrainError(
                f"the text has {M} characters; --batch {batch} x --seq-len {seq_len} needs at least "
                f"{need}: lower --batch or --seq-len"
            )
        self.data, self.batch, self.seq_len, self.seed = data, batch, seq_len, seed

    def offset(self, epoch: int) -> int:
        return int(np.random.default_rng([self.seed, epoch]).integers(self.seq_len))

    def __call__(self, step: int):
        """``(inputs, targets, reset)`` of ``step``: int32 arrays (batch, seq_len) and a bool."""
        epoch, k = divmod(step, self.per_epoch)
        T, L = self.seq_len, self.stream
        starts = self.offset(epoch) + np.arange(self.batch) * L + k * T
        rows = starts[:, None] + np.arange(T + 1)[None, :]
        window = self.data[rows]
        return window[:, :-1], window[:, 1:], k == 0


# --------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class Runtime:
    """A backend resolved for a run: namespace, device and host conversions.

    Attributes
    ----------
    name : str
        One of :data:`BACKENDS`.
    xp : namespace
        The array-api-compat namespace.
    device : object
        Where arrays are created.
    """

    name: str
    xp: object
    device: object
    _from_host: object
    _to_host: object

    def asarray(self, a):
        """NumPy array -> backend array on :attr:`device` (dtype kept)."""
        return self._from_host(np.asarray(a, order="C"))

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(self._to_host(a))


def _device_error(name, device, error=None):
    reason = f": {type(error).__name__}: {error}" if error is not None else ""
    reason = reason.splitlines()[0] if reason else ""
    return TrainError(f"device {device!r} is not available for backend {name!r}{reason}")


def resolve_runtime(name: str, device: str | None = None, dtype: str = "float32") -> Runtime:
    """Import backend ``name`` and find ``device``; raise :class:`TrainError` if either is missing.

    Parameters
    ----------
    name : {"numpy", "jax", "torch", "cupy", "array_api_strict"}
    device : str, optional
        ``cpu`` (numpy); ``cpu``, ``gpu``, ``cuda`` or ``tpu``, optionally
        ``:index`` (jax); any ``torch.device`` string such as ``cuda:1``
        (torch); a CUDA device index (cupy); ``CPU_DEVICE``, ``device1`` or
        ``device2`` (array_api_strict). Default: the library's default.
    dtype : {"float32", "float64"}
        JAX needs ``jax_enable_x64`` for float64; it is switched on then.
    """
    if name not in BACKENDS:
        raise TrainError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    try:
        if name == "numpy":
            import array_api_compat.numpy as xp
        elif name == "jax":
            import jax
            import jax.numpy as xp
        elif name == "torch":
            import array_api_compat.torch as xp
            import torch
        elif name == "cupy":
            import array_api_compat.cupy as xp
            import cupy
        else:
            import array_api_strict as xp
    except ImportError:
        raise TrainError(f"backend {name!r} is not installed: {INSTALL_HINTS[name]}") from None

    if name == "numpy":
        if device not in (None, "cpu"):
            raise TrainError(f"backend 'numpy' runs on the CPU only; got --device {device!r}")
        return Runtime(name, xp, "cpu", lambda a: a.copy(), lambda a: a)
    if name == "jax":
        if dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        try:
            if device is None:
                dev = jax.devices()[0]
            else:
                platform, _, index = device.partition(":")
                platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform.lower(), platform.lower())
                dev = jax.devices(platform)[int(index or 0)]
        except (RuntimeError, ValueError, IndexError) as error:
            raise _device_error(name, device, error) from None
        return Runtime(name, xp, dev, lambda a: jax.device_put(a, dev), np.asarray)
    if name == "torch":
        try:
            dev = torch.device(device or "cpu")
            torch.zeros(1, device=dev)
        except Exception as error:  # bad strings, no CUDA, no such index
            raise _device_error(name, device, error) from None
        return Runtime(
            name, xp, dev, lambda a: torch.asarray(a, device=dev), lambda a: a.detach().cpu().numpy()
        )
    if name == "cupy":
        try:
            dev = cupy.cuda.Device(int(device or 0))
            with dev:
                (cupy.zeros(1) + 1).get()
        except Exception as error:  # no driver, no such device, not an int
            raise _device_error(name, device if device is not None else "0", error) from None

        def to_cupy(a):
            with dev:
                return cupy.asarray(a)

        return Runtime(name, xp, dev, to_cupy, cupy.asnumpy)
    try:
        dev = xp.Device(device or "CPU_DEVICE")
    except Exception as error:
        raise _device_error(name, device, error) from None
    host = xp.Device("CPU_DEVICE")
    return Runtime(
        name, xp, dev, lambda a: xp.asarray(a, device=dev), lambda a: np.asarray(xp.asarray(a, device=host))
    )


# --------------------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """A checkpoint on the host.

    Attributes
    ----------
    params : dict of str to numpy.ndarray
    opt_state : dict or None
        ``{"step": int32 0-d, "exp_avg": {...}, "exp_avg_sq": {...}}``.
    carry : tuple of numpy.ndarray or None
        The recurrent state carried into the next step, ``(h,)`` or ``(h, c)``.
    meta : dict
        JSON metadata (``format``, ``version``, ``model``, ``vocab``, ``train``,
        ``text``, ``step``, ``history``, ...).
    """

    params: dict
    opt_state: dict | None
    carry: tuple | None
    meta: dict

    @property
    def model(self) -> CharModel:
        m = self.meta["model"]
        return CharModel(m["vocab_size"], m["hidden_size"], m["num_layers"], m["cell"], m["embed_size"])

    @property
    def vocab(self) -> Vocabulary:
        return Vocabulary(self.meta["vocab"])


def save_checkpoint(path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically (``.npz``, no pickles)."""
    arrays = {f"params/{k}": np.asarray(v) for k, v in ckpt.params.items()}
    if ckpt.opt_state is not None:
        arrays["opt/step"] = np.asarray(ckpt.opt_state["step"])
        for buf in ("exp_avg", "exp_avg_sq"):
            arrays.update({f"opt/{buf}/{k}": np.asarray(v) for k, v in ckpt.opt_state[buf].items()})
    if ckpt.carry is not None:
        arrays.update({f"carry/{i}": np.asarray(s) for i, s in enumerate(ckpt.carry)})
    arrays["meta"] = np.frombuffer(json.dumps(ckpt.meta).encode("utf-8"), dtype=np.uint8)
    atomic_write(Path(path), lambda f: np.savez(f, **arrays))


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``path`` may also be the folder holding ``checkpoint.npz``. Anything else
    (missing, truncated, foreign, a pickle) raises :class:`CheckpointError`
    with one line saying which.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {error.strerror or error}") from None
    if magic != b"PK\x03\x04":  # every .npz is a zip archive; np.load would try a pickle next
        raise CheckpointError(f"{str(path)!r} is not a portable-rnn checkpoint (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as error:  # BadZipFile, ValueError (pickles, garbage), OSError, EOFError
        raise CheckpointError(
            f"{str(path)!r} is not a readable portable-rnn checkpoint "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'corrupt'})"
        ) from None
    if not isinstance(arrays, dict) or "meta" not in arrays:
        raise CheckpointError(f"{str(path)!r} is not a portable-rnn checkpoint (no metadata)")
    try:
        meta = json.loads(arrays.pop("meta").astype(np.uint8).tobytes().decode("utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"version {meta.get('version')!r}, this portable-rnn reads {FORMAT_VERSION}")
        ckpt = Checkpoint({}, None, None, meta)
        model, vocab = ckpt.model, ckpt.vocab
        if len(vocab) != model.vocab_size:
            raise ValueError("vocabulary does not match the model")
        ckpt.params = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
        shapes = model.param_shapes()
        for key, shape in shapes.items():
            if key not in ckpt.params or tuple(ckpt.params[key].shape) != shape:
                raise ValueError(f"parameter {key!r} is missing or has the wrong shape")
            if ckpt.params[key].dtype not in (np.float32, np.float64):
                raise ValueError(f"parameter {key!r} has dtype {ckpt.params[key].dtype}")
        if set(ckpt.params) != set(shapes):
            raise ValueError(f"unexpected parameters {sorted(set(ckpt.params) - set(shapes))}")
        int(meta["step"])
        missing = [k for k in (*DEFAULTS, "steps") if k not in meta["train"]]
        missing += [f"text.{k}" for k in ("source", "sha256") if k not in meta["text"]]
        missing += [f"history.{k}" for k in ("step", "loss") if k not in meta["history"]]
        if missing:
            raise ValueError(f"metadata lacks {missing}")
        if "opt/step" in arrays:
            if arrays["opt/step"].shape != () or arrays["opt/step"].dtype.kind not in "iu":
                raise ValueError("the optimiser step is not an integer scalar")
            ckpt.opt_state = {"step": arrays["opt/step"].astype(np.int32)}
            for buf in ("exp_avg", "exp_avg_sq"):
                ckpt.opt_state[buf] = {k: arrays[f"opt/{buf}/{k}"] for k in shapes}
                if any(v.shape != shapes[k] or v.dtype.kind != "f" for k, v in ckpt.opt_state[buf].items()):
                    raise ValueError(f"the optimiser buffer {buf!r} does not match the parameters")
        carry = [arrays[f"carry/{i}"] for i in range(2) if f"carry/{i}" in arrays]
        if carry:
            expected = (model.num_layers, int(meta["train"]["batch"]), model.hidden_size)
            if len(carry) != (2 if model.cell == "lstm" else 1) or any(c.shape != expected for c in carry):
                raise ValueError("the carried state does not match the model")
        ckpt.carry = tuple(carry) or None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError) as error:
        raise CheckpointError(f"{str(path)!r} is not a valid portable-rnn checkpoint ({error})") from None
    return ckpt


# --------------------------------------------------------------------------- plots


def plot_curves(path, curves: dict, *, title: str, xlabel: str, ylabel: str, log_y: bool = False) -> str | None:
    """Save ``{label: (x, y)}`` as a PNG; return ``None``, or why it was skipped.

    Uses matplotlib's object API (no pyplot state, no display needed).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed (pip install 'portable-rnn[plot]')"
    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label, linewidth=1.2)
    if log_y:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(Path(path), lambda f: fig.savefig(f, format="png"))
    return None


def _smooth(values, beta: float = 0.95):
    """Bias-corrected exponential moving average (as Adam's moments, and TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for t, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**t))
    return out


# --------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    """Settings of ``portable-rnn train``.

    Settings a checkpoint remembers (:data:`DEFAULTS`: ``cell``, ``hidden``,
    ``layers``, ``embed``, ``seq_len``, ``batch``, ``truncate``, ``lr``,
    ``clip``, ``seed``, ``dtype``) default to ``None``, meaning "the default"
    for a new run and "the checkpoint's" with ``resume``; giving a value that
    differs from the checkpoint's is an error. ``steps`` is the total step
    count of the run (default :data:`DEFAULT_STEPS`, or the checkpoint's).
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
    log_every: int = 100
    sample_every: int = 250
    sample_length: int = 200
    temperature: float = 0.8
    checkpoint_every: int = 100
    progress: str = "auto"


@dataclass
class TrainResult:
    """What :func:`train` returns: the loss history and where things were written."""

    steps: list
    losses: list
    wall_s: float
    out: Path
    status: int = 0


def _settings(config: TrainConfig, ckpt: Checkpoint | None) -> dict:
    settings = {}
    for key, default in DEFAULTS.items():
        given = getattr(config, key)
        if ckpt is None:
            settings[key] = default if given is None else given
            continue
        stored = ckpt.meta["train"][key]
        if given is not None and given != stored:
            flag = "--" + key.replace("_", "-")
            raise TrainError(
                f"the checkpoint was trained with {flag} {stored}, not {given}: drop {flag} "
                "to resume, or train into a new --out"
            )
        settings[key] = stored
    return settings


def _text_for(config: TrainConfig, ckpt: Checkpoint | None):
    """``(text, source)``: the file's text or the default corpus."""
    source = config.text
    if source is None and ckpt is not None:
        source = ckpt.meta["text"]["source"]
    if source is None or source == "default":
        return default_corpus(), "default"
    return read_text(source), str(Path(source).resolve())


class _Progress:
    """tqdm bar on a terminal (``sys.stderr``), else plain lines on ``out``.

    The loss shown is the mean over the steps since the last update; tokens/s
    is measured over the same steps (bar) or since the last line (lines).
    """

    def __init__(self, mode, total, initial, out, log_every, tokens_per_step):
        self.out, self.log_every, self.bar = out, log_every, None
        self.tokens_per_step = tokens_per_step
        self.start = self.mark_time = time.perf_counter()
        self.mark_step = initial
        self.losses = []
        if mode == "auto":
            mode = "bar" if getattr(sys.stderr, "isatty", lambda: False)() else "lines"
        if mode == "bar":
            try:
                from tqdm import tqdm
            except ImportError:
                mode = "lines"
            else:
                self.bar = tqdm(total=total, initial=initial, unit="step", file=sys.stderr,
                                dynamic_ncols=True, leave=True)
        self.mode = mode

    def update(self, step, total, losses):
        if not losses:
            return
        self.losses += losses
        if self.mode == "none" or (
            self.bar is None and step % self.log_every != 0 and step != total
        ):
            return
        now = time.perf_counter()
        tok_s = self.tokens_per_step * (step - self.mark_step) / max(now - self.mark_time, 1e-9)
        loss = float(np.mean(self.losses))
        self.mark_time, self.mark_step, self.losses = now, step, []
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
            self.bar.update(step - self.bar.n)
        else:
            print(f"step {step:>6d}/{total}  loss {loss:.4f}  {tok_s:>9,.0f} tok/s  {now - self.start:7.1f} s",
                  file=self.out, flush=True)

    def write(self, text):
        if self.mode == "none":
            return
        if self.bar is not None:
            self.bar.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _blas_single_thread():
    """Limit NumPy's BLAS to one thread while training, when threadpoolctl is installed.

    The matrices of a character model are small (N x H times H x 4H per
    step): a second BLAS thread gains little on an idle machine, and on a
    busy one OpenBLAS's spinning threads slow every step down several-fold.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _tree_to_host(runtime, tree):
    if isinstance(tree, dict):
        return {k: _tree_to_host(runtime, v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return tuple(_tree_to_host(runtime, v) for v in tree)
    return runtime.to_numpy(tree)


def _tree_from_host(runtime, tree, dtype=None):
    if isinstance(tree, dict):
        return {k: _tree_from_host(runtime, v, dtype) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return tuple(_tree_from_host(runtime, v, dtype) for v in tree)
    a = np.asarray(tree)
    return runtime.asarray(a.astype(dtype) if dtype is not None and a.dtype.kind == "f" else a)


def _state_tree(model, state):
    """Layer state -> tuple of arrays ``(h,)`` or ``(h, c)`` and back."""
    return tuple(state) if model.cell == "lstm" else (state,)


def _layer_state(model, parts):
    return tuple(parts) if model.cell == "lstm" else parts[0]


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
    TrainError
        Bad input: text, flags, backend, device or checkpoint.
    """
    out = sys.stdout if out is None else out
    out_dir = Path(config.out)
    ckpt_path = out_dir / CHECKPOINT
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainError(f"--out {str(out_dir)!r} exists and is not a folder")
    ckpt = None
    if config.resume:
        if not ckpt_path.exists():
            raise TrainError(f"nothing to resume: {str(ckpt_path)!r} does not exist")
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.opt_state is None:
            raise CheckpointError(f"{str(ckpt_path)!r} has no optimiser state; it cannot be resumed")
    elif ckpt_path.exists() and not config.overwrite:
        raise TrainError(
            f"{str(ckpt_path)!r} already exists: pass --resume to continue it, --overwrite to "
            "start again, or choose another --out"
        )
    s = _settings(config, ckpt)
    steps = config.steps if config.steps is not None else (
        ckpt.meta["train"]["steps"] if ckpt is not None else DEFAULT_STEPS)

    text, source = _text_for(config, ckpt)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if ckpt is not None:
        if digest != ckpt.meta["text"]["sha256"]:
            raise TrainError(
                f"the text ({'default corpus' if source == 'default' else source}) is not the one "
                "the checkpoint was trained on (its SHA-256 differs)"
            )
        vocab = ckpt.vocab
    else:
        vocab = Vocabulary.of(text)
    if len(vocab) < 2:
        raise TrainError("the text has a single distinct character; there is nothing to learn")
    data = vocab.encode(text)
    if s["seq_len"] >= len(data):
        raise TrainError(f"--seq-len {s['seq_len']} is not shorter than the text ({len(data)} characters)")
    schedule = BatchSchedule(data, s["batch"], s["seq_len"], s["seed"])
    runtime = resolve_runtime(config.backend, config.device, s["dtype"])
    xp = runtime.xp

    model = CharModel(len(vocab), s["hidden"], s["layers"], s["cell"], s["embed"])
    opt = adam(s["lr"])
    start = 0
    history_steps, history_losses = [], []
    if ckpt is None:
        params = model.init(s["seed"], xp=xp, dtype=s["dtype"], device=runtime.device)
        opt_state = opt.init(params)
        carry = model.init_state(params, s["batch"])
        wall_before = 0.0
    else:
        params = _tree_from_host(runtime, ckpt.params, s["dtype"])
        opt_state = _tree_from_host(runtime, ckpt.opt_state, s["dtype"])
        carry = (model.init_state(params, s["batch"]) if ckpt.carry is None
                 else _layer_state(model, _tree_from_host(runtime, ckpt.carry, s["dtype"])))
        start = int(ckpt.meta["step"])
        history_steps = list(ckpt.meta["history"]["step"])
        history_losses = list(ckpt.meta["history"]["loss"])
        wall_before = float(ckpt.meta.get("wall_s", 0.0))
    zeros = model.init_state(params, s["batch"])

    if start >= steps:
        print(f"the checkpoint is already at step {start} of {steps}; pass --steps > {start} to train further",
              file=out)
        return TrainResult(history_steps, history_losses, wall_before, out_dir)

    truncate, clip = s["truncate"], s["clip"]

    def train_step(params, opt_state, state, tokens, targets):
        loss, grads, state = model.loss_and_grads(params, tokens, targets, state, truncate)
        grads, _ = clip_by_global_norm(grads, clip)
        params, opt_state = opt.update(grads, opt_state, params)
        return params, opt_state, state, loss

    if runtime.name == "jax":
        import jax

        train_step = jax.jit(train_step)

    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": dataclasses.asdict(model),
        "vocab": vocab.chars,
        "train": dict(s, steps=steps),
        "text": {"source": source, "sha256": digest, "chars": len(text)},
        "prime": "\n" if "\n" in vocab.chars else text[0],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    samples_file = out_dir / SAMPLES
    if ckpt is None and samples_file.exists():  # --overwrite: a new run, a new log
        samples_file.unlink()

    def checkpoint(step, wall):
        meta.update(step=step, wall_s=wall, backend=runtime.name,
                    history={"step": history_steps, "loss": history_losses})
        save_checkpoint(ckpt_path, Checkpoint(
            _tree_to_host(runtime, params), _tree_to_host(runtime, opt_state),
            _tree_to_host(runtime, _state_tree(model, carry)), meta))
        atomic_write(out_dir / HISTORY, lambda f: f.write(
            json.dumps({"step": history_steps, "loss": history_losses}).encode("utf-8")))

    def show_sample(step):
        tokens = model.sample(params, vocab.encode(meta["prime"]), config.sample_length,
                              temperature=config.temperature, seed=s["seed"] + step)
        text_out = meta["prime"] + vocab.decode(tokens)
        block = f"----- sample at step {step} (temperature {config.temperature}) -----\n{text_out.strip()}\n"
        progress.write(block)
        with open(samples_file, "a", encoding="utf-8") as f:
            f.write(block + "\n")

    tokens_per_step = s["batch"] * s["seq_len"]
    progress = _Progress(config.progress, steps, start, out, config.log_every, tokens_per_step)
    progress.write(
        f"training {model.cell.upper()} (hidden {model.hidden_size}, layers {model.num_layers}, "
        f"embed {model.embed_size}, {sum(int(np.prod(v)) for v in model.param_shapes().values()):,} "
        f"parameters) on {'the default corpus' if source == 'default' else source} "
        f"({len(text):,} characters, vocabulary {len(vocab)}) with {runtime.name} on {runtime.device}; "
        f"steps {start}->{steps}, batch {s['batch']} x seq-len {s['seq_len']}"
    )
    t0 = time.perf_counter()
    pending = []  # (step, loss on the device) not yet copied to the host
    step = start
    status = 0

    def flush():
        """Copy the pending losses to the host (one sync) and record them."""
        nonlocal pending
        values = [float(runtime.to_numpy(loss)) for _, loss in pending]
        if not all(math.isfinite(v) for v in values):
            raise TrainError(f"the loss is not finite at steps {pending[0][0]}..{pending[-1][0]}; lower --lr")
        history_steps.extend(k for k, _ in pending)
        history_losses.extend(values)
        pending = []
        return values

    limits = _blas_single_thread() if runtime.name == "numpy" else contextlib.nullcontext()
    try:
        limits.__enter__()
        while step < steps:
            inputs, targets, reset = schedule(step)
            state = zeros if reset else carry
            params, opt_state, carry, loss = train_step(
                params, opt_state, state, runtime.asarray(inputs), runtime.asarray(targets))
            step += 1
            pending.append((step, loss))
            if step % SYNC_EVERY == 0 or step == steps:
                progress.update(step, steps, flush())
            if config.sample_every and step % config.sample_every == 0 and step < steps:
                show_sample(step)
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < steps:
                progress.update(step, steps, flush())  # the history stays in step with the checkpoint
                checkpoint(step, wall_before + time.perf_counter() - t0)
    except KeyboardInterrupt:
        status = 130
        flush()
    finally:
        limits.__exit__(None, None, None)
        progress.close()
    wall = time.perf_counter() - t0
    checkpoint(step, wall_before + wall)
    if status:
        print(f"interrupted at step {step}: checkpoint saved; continue with --resume", file=out)
    else:
        show_sample(step)
    why = plot_curves(
        out_dir / PLOT,
        {"loss": (history_steps, history_losses),
         "exponential moving average (0.95)": (history_steps, _smooth(history_losses))},
        title=f"{model.cell.upper()} H={model.hidden_size} L={model.num_layers} on {runtime.name}",
        xlabel="step", ylabel="cross-entropy (nats per character)",
    ) if history_losses else "no steps yet"
    ran = step - start
    if ran:
        last = history_losses[-min(len(history_losses), 50):]
        print(
            f"done: steps {start}->{step} in {wall:.1f} s ({tokens_per_step * ran / max(wall, 1e-9):,.0f} tok/s); "
            f"loss {history_losses[-1]:.4f} at step {step} (mean of the last {len(last)} steps: "
            f"{np.mean(last):.4f})",
            file=out,
        )
    written = [CHECKPOINT, HISTORY, SAMPLES] + ([] if why else [PLOT])
    print(f"wrote {', '.join(str(out_dir / w) for w in written)}", file=out)
    if why:
        print(f"skipped {out_dir / PLOT}: {why}", file=out)
    return TrainResult(history_steps, history_losses, wall_before + wall, out_dir, status)


# --------------------------------------------------------------------------- sampling


def sample_text(checkpoint, *, prime=None, length=500, temperature=0.8, top_k=None, seed=0,
                backend="numpy", device=None) -> str:
    """Load ``checkpoint`` and generate text after ``prime`` (default: the checkpoint's prime).

    Returns
    -------
    str
        ``prime`` followed by ``length`` generated characters.
    """
    ckpt = load_checkpoint(checkpoint)
    model, vocab = ckpt.model, ckpt.vocab
    prime = ckpt.meta.get("prime", vocab.chars[0]) if prime is None else prime
    if not prime:
        raise TrainError("--prime must not be empty")
    unknown = sorted({c for c in prime if c not in vocab.chars})
    if unknown:
        raise TrainError(f"--prime has characters the model never saw: {''.join(unknown)[:20]!r}")
    dtype = ckpt.meta["train"].get("dtype", "float32")
    runtime = resolve_runtime(backend, device, dtype)
    params = _tree_from_host(runtime, ckpt.params, dtype)
    tokens = model.sample(params, vocab.encode(prime), length, temperature=temperature, top_k=top_k, seed=seed)
    return prime + vocab.decode(tokens)
