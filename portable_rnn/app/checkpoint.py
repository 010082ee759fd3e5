"""The training checkpoint: parameters, optimiser state and carried state, in io's one archive format.

``checkpoint.npz`` is written by :func:`portable_rnn.io.write_archive` (atomic,
no pickles) and read by :func:`portable_rnn.io.read_archive`, which checks
how many members the metadata asks for and how many bytes they need against
the file, then every member's name, shape and dtype, before it reads any
data. Members:

``params/<name>``
    The :class:`~portable_rnn.model.CharModel` parameters, in the run's dtype.
``opt/step``, ``opt/exp_avg/<name>``, ``opt/exp_avg_sq/<name>``
    Adam's state (group ``"opt"``).
``carry/<state>``
    The recurrent state carried into the next step, one member per state of
    the cell (``h``, and ``c`` for an LSTM), each (L, N, H) (group ``"carry"``).
``history/step``, ``history/loss``
    The training loss history: int64 and float64, ``history_len`` entries each.
``history/val_step``, ``history/val_loss``
    The held-out loss history (nats per character, :mod:`~portable_rnn.app.eval`):
    int64 and float64, ``val_history_len`` entries each; steps increasing,
    at most ``step``, losses finite and >= 0.

The metadata (JSON, a few kilobytes) holds ``format``, ``version``,
``groups`` (which optional groups were written), ``model`` (the
``CharModel`` fields), ``vocab``, ``train`` (the settings of the run),
``text`` (source, SHA-256, length), ``split`` (the held-out split of
:func:`~portable_rnn.app.corpus.split_text` with ``train.val_fraction``:
``train_chars``, ``val_chars`` and the held-out text's ``sha256``, so that
``eval`` and ``--resume`` rebuild it and check it), ``prime``, ``step``,
``wall_s``, ``backend``, ``history_len`` and ``val_history_len``. A reader
checks every one of them (type, range, agreement with the others) before
using any; other keys are ignored. In memory, :attr:`Checkpoint.meta` holds
the histories as ``"history": {"step": [...], "loss": [...], "val_step":
[...], "val_loss": [...]}`` instead of the two lengths.

A run writes two of these files: ``checkpoint.npz``, the latest state (what
``--resume`` continues), and ``best.npz``, the state at the lowest held-out
loss so far (what ``sample`` and ``eval`` use when given the run's folder:
:func:`pick_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import check_int, check_real, check_truncate
from ..backends import DTYPES
from ..interop._common import check_names, param_count
from ..io import read_archive, write_archive
from ..model import MODES, VARIANTS, CharModel
from .corpus import Vocabulary
from .errors import UsageError

__all__ = ["CHECKPOINT", "BEST", "DEFAULTS", "FORMAT", "FORMAT_VERSION", "Checkpoint", "CheckpointError",
           "NonFiniteError", "nonfinite_member",
           "save_checkpoint", "load_checkpoint", "pick_checkpoint", "HISTORY_KEYS"]

CHECKPOINT = "checkpoint.npz"
BEST = "best.npz"
FORMAT = "portable_rnn.CharModel"
#: 4 added the held-out split (``train.val_fraction``, ``split``) and its loss history.
FORMAT_VERSION = 4
_OPT_BUFFERS = ("exp_avg", "exp_avg_sq")
_GROUPS = ("opt", "carry")
#: ``opt/step`` is stored as an int32 or int64; it must fit the int32 Adam counts in.
_MAX_STEP = 2**31 - 1

#: The settings a checkpoint remembers under ``train`` (with ``steps``), and their defaults for a new run.
DEFAULTS: dict[str, Any] = {
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
    "val_fraction": 0.1,
    **VARIANTS,
}
#: The histories: ``meta["history"]`` keys, their member dtypes, and the metadata key of their length.
HISTORY_KEYS = {"step": ("int64", "history_len"), "loss": ("float64", "history_len"),
                "val_step": ("int64", "val_history_len"), "val_loss": ("float64", "val_history_len")}
#: The ``train`` settings that repeat a field of ``model``.
_SAME_AS_MODEL = {"cell": "mode", "hidden": "hidden_size", "layers": "num_layers", "embed": "embed_size",
                  **{name: name for name in VARIANTS}}


class CheckpointError(UsageError):
    """A checkpoint that is missing, corrupt or not written by :func:`save_checkpoint`."""


@dataclass
class Checkpoint:
    """A checkpoint on the host.

    Attributes
    ----------
    params : dict of str to numpy.ndarray
    opt_state : dict or None
        ``{"step": int32 0-d, "exp_avg": {...}, "exp_avg_sq": {...}}``.
    carry : tuple of numpy.ndarray or None
        The recurrent state carried into the next step, one array per state
        of the cell (``(h,)`` or ``(h, c)``), each (L, N, H).
    meta : dict
        JSON metadata (see the module docstring), with the loss history as
        ``"history": {"step": [...], "loss": [...]}``.
    """

    params: dict
    opt_state: dict | None
    carry: tuple | None
    meta: dict

    @property
    def model(self) -> CharModel:
        """The model the parameters belong to."""
        return CharModel(**self.meta["model"])

    @property
    def vocab(self) -> Vocabulary:
        """The vocabulary the model was trained with."""
        return Vocabulary(self.meta["vocab"])


class NonFiniteError(ValueError):
    """A checkpoint member holds NaN or an infinity: it is never written (:attr:`member` names it)."""

    def __init__(self, member: str):
        super().__init__(f"{member} holds values that are not finite (NaN or inf)")
        self.member = member


def save_checkpoint(path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically; ``meta["groups"]`` records the optional groups written.

    Raises
    ------
    NonFiniteError
        A parameter, optimiser buffer or carried state is not finite; nothing
        is written and a previous file at ``path`` stays as it was.
    OSError
        The file system refused the write (full, read-only, a file size
        limit); ``path`` stays as it was and no temporary file is left.
    """
    arrays, meta = _members(ckpt)
    bad = _first_nonfinite(arrays)
    if bad is not None:
        raise NonFiniteError(bad)
    write_archive(Path(path), arrays, {**meta, "format": FORMAT, "version": FORMAT_VERSION})


def nonfinite_member(ckpt: Checkpoint) -> str | None:
    """The first member of ``ckpt`` that :func:`save_checkpoint` would refuse as not finite, else ``None``."""
    return _first_nonfinite(_members(ckpt)[0])


def _members(ckpt: Checkpoint) -> tuple[dict, dict]:
    """``(arrays, metadata)`` of the file: every member by name, and the metadata with the history lengths."""
    meta = dict(ckpt.meta)
    history = meta.pop("history", {})
    arrays = {f"params/{k}": np.asarray(v) for k, v in ckpt.params.items()}
    for key, (dtype, length) in HISTORY_KEYS.items():
        arrays[f"history/{key}"] = np.asarray(history.get(key, []), dtype=dtype).reshape(-1)
        meta[length] = int(arrays[f"history/{key}"].shape[0])
    groups = []
    if ckpt.opt_state is not None:
        groups.append("opt")
        arrays["opt/step"] = np.asarray(ckpt.opt_state["step"])
        for buf in _OPT_BUFFERS:
            arrays.update({f"opt/{buf}/{k}": np.asarray(v) for k, v in ckpt.opt_state[buf].items()})
    if ckpt.carry is not None:
        groups.append("carry")
        states = ckpt.model.cell.states
        arrays.update({f"carry/{name}": np.asarray(s) for name, s in zip(states, ckpt.carry, strict=True)})
    meta["groups"] = groups
    return arrays, meta


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Layout:
    """The members a checkpoint's checked metadata asks for."""

    model: CharModel
    dtype: str
    batch: int
    groups: tuple
    history: dict  # metadata key of a history's length -> that length

    def count(self) -> tuple[int, int]:
        """``(members, bytes of data)``, computed without listing the members (see :func:`read_archive`)."""
        V, E, H, L = self.model.vocab_size, self.model.embed_size, self.model.hidden_size, self.model.num_layers
        arrays, numbers = param_count(self.model.rnn)
        arrays, numbers = arrays + 3, numbers + V * E + V * H + V
        size = np.dtype(self.dtype).itemsize
        members = arrays + len(HISTORY_KEYS)
        nbytes = numbers * size + sum(np.dtype(d).itemsize * self.history[n] for d, n in HISTORY_KEYS.values())
        if "opt" in self.groups:
            members, nbytes = members + 2 * arrays + 1, nbytes + 2 * numbers * size + 4
        if "carry" in self.groups:
            n_states = self.model.cell.n_states
            members, nbytes = members + n_states, nbytes + n_states * L * self.batch * H * size
        return members, nbytes

    def members(self) -> dict:
        """``name -> (shape, dtype names)`` of every member."""
        shapes, floats = self.model.param_shapes(), (self.dtype,)
        members: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
            f"params/{k}": (s, floats) for k, s in shapes.items()}
        members.update({f"history/{key}": ((self.history[length],), (dtype,))
                        for key, (dtype, length) in HISTORY_KEYS.items()})
        if "opt" in self.groups:
            members["opt/step"] = ((), ("int32", "int64"))
            members.update({f"opt/{buf}/{k}": (s, floats) for buf in _OPT_BUFFERS for k, s in shapes.items()})
        if "carry" in self.groups:
            shape = (self.model.num_layers, self.batch, self.model.hidden_size)
            members.update({f"carry/{name}": (shape, floats) for name in self.model.cell.states})
        return members


def _check_mapping(name: str, value, keys) -> dict:
    """A JSON object with exactly the keys ``keys``."""
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {type(value).__name__}")
    check_names(name, value, keys)
    return value


def _check_str(name: str, value) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {type(value).__name__}")
    return value


def _check_train(train, model: CharModel) -> dict:
    """The ``train`` settings: every key of :data:`DEFAULTS` and ``steps``, each of its type and range."""
    _check_mapping("train", train, (*DEFAULTS, "steps"))
    if not isinstance(train["cell"], str) or train["cell"] not in MODES:
        raise ValueError(f"train.cell must be one of {list(MODES)}, got {train['cell']!r}")
    for key in ("hidden", "layers", "embed", "seq_len", "batch", "steps"):
        check_int(f"train.{key}", train[key])
    check_int("train.seed", train["seed"], minimum=0)
    try:
        check_truncate(train["truncate"])
    except ValueError as error:
        raise ValueError(f"train.{error}") from None
    for key in ("lr", "clip"):
        check_real(f"train.{key}", train[key], 0, low_open=True)
    if check_real("train.val_fraction", train["val_fraction"], 0) >= 1:
        raise ValueError(f"train.val_fraction must be < 1, got {train['val_fraction']!r}")
    if train["dtype"] not in DTYPES:
        raise ValueError(f"train.dtype must be one of {list(DTYPES)}, got {train['dtype']!r}")
    for key, field in _SAME_AS_MODEL.items():
        if train[key] != getattr(model, field):
            raise ValueError(f"train.{key} is {train[key]!r} but model.{field} is {getattr(model, field)!r}")
    return train


def _check_model(meta: dict) -> tuple[CharModel, Vocabulary]:
    """``model`` (the ``CharModel`` fields) and ``vocab`` (its characters, one per token)."""
    fields = [f.name for f in dataclasses.fields(CharModel)]
    given = _check_mapping("model", meta["model"], fields)
    try:
        model = CharModel(**given)
    except (TypeError, ValueError) as error:  # its own checks
        raise ValueError(f"model: {error}") from None
    try:
        vocab = Vocabulary(meta["vocab"])
    except ValueError as error:
        raise ValueError(f"vocab: {error}") from None
    if len(vocab) != model.vocab_size:
        raise ValueError(f"the vocabulary has {len(vocab)} characters but model.vocab_size is {model.vocab_size}")
    if vocab.chars != Vocabulary.of(vocab.chars).chars:
        # Training writes the text's distinct characters sorted; any other order
        # maps every token to another character than the one it was trained on.
        raise ValueError("vocab is not in sorted order, as training writes it (the file was edited)")
    return model, vocab


def _check_sha256(name: str, value) -> str:
    """A SHA-256 digest as 64 lowercase hexadecimal digits."""
    if not isinstance(value, str) or not re.fullmatch("[0-9a-f]{64}", value):
        raise ValueError(f"{name} must be 64 lowercase hexadecimal digits")
    return value


def _check_split(meta: dict, fraction: float) -> None:
    """``split``: the sizes of the two parts (adding up to ``text.chars``) and the held-out text's SHA-256."""
    split = _check_mapping("split", meta["split"], ("train_chars", "val_chars", "sha256"))
    train_chars = check_int("split.train_chars", split["train_chars"])
    val_chars = check_int("split.val_chars", split["val_chars"], minimum=0)
    _check_sha256("split.sha256", split["sha256"])
    if train_chars + val_chars != meta["text"]["chars"]:
        raise ValueError(f"split.train_chars + split.val_chars is {train_chars + val_chars} but text.chars is "
                         f"{meta['text']['chars']}")
    if (val_chars == 0) != (fraction == 0):
        raise ValueError(f"split.val_chars is {val_chars} but train.val_fraction is {fraction}")
    if fraction:
        # split_text cuts at round(n (1 - f)) or at the first boundary after it that
        # leaves at least half the requested tail; training refuses a tail under 2.
        n = train_chars + val_chars
        first = round(n * (1 - fraction))
        last = n - max((n - first) // 2, 2)
        if not first <= train_chars <= last:
            raise ValueError(f"split.train_chars is {train_chars} but a {n}-character text with train.val_fraction "
                             f"{fraction:g} splits at {first} to {last}")


def _check_run(meta: dict, vocab: Vocabulary) -> None:
    """``text``, ``prime``, ``step``, ``wall_s``, ``backend``: what the run was and how far it got."""
    text = _check_mapping("text", meta["text"], ("source", "sha256", "chars"))
    _check_str("text.source", text["source"])
    _check_sha256("text.sha256", text["sha256"])
    check_int("text.chars", text["chars"], minimum=0)
    prime = _check_str("prime", meta["prime"])
    if not set(prime) <= set(vocab.chars):
        raise ValueError("prime has characters outside the vocabulary")
    check_int("step", meta["step"], minimum=0)
    if "wall_s" in meta:
        check_real("wall_s", meta["wall_s"], 0)
    if "backend" in meta:
        _check_str("backend", meta["backend"])


def _layout(meta) -> _Layout:
    """Check every key of a checkpoint's metadata (type, range, agreement), then say what its members are.

    Raises ``ValueError`` (one line) for metadata this reader cannot use.
    """
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"not a portable-rnn checkpoint (format {found!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint version {meta.get('version')!r}; this portable-rnn reads {FORMAT_VERSION}")
    required = ("groups", "model", "vocab", "train", "text", "split", "prime", "step", "history_len",
                "val_history_len")
    missing = [k for k in required if k not in meta]
    if missing:
        raise ValueError(f"metadata lacks {missing}")
    groups = meta["groups"]
    if (not isinstance(groups, list) or not all(isinstance(g, str) for g in groups)
            or len(set(groups)) != len(groups) or not set(groups) <= set(_GROUPS)):
        raise ValueError(f"groups must be a list of distinct names from {list(_GROUPS)}")
    for part in ("model", "train"):  # a file without the variants has the plain layer
        if isinstance(meta[part], dict):
            meta[part] = {**VARIANTS, **meta[part]}
    model, vocab = _check_model(meta)
    train = _check_train(meta["train"], model)
    _check_run(meta, vocab)
    _check_split(meta, train["val_fraction"])
    if not meta["step"] <= train["steps"] <= _MAX_STEP:
        raise ValueError(f"step {meta['step']} and train.steps {train['steps']} must satisfy "
                         f"step <= train.steps <= {_MAX_STEP}")
    if train["seq_len"] >= meta["split"]["train_chars"]:
        raise ValueError(f"train.seq_len {train['seq_len']} is not shorter than the training part of the text "
                         f"(split.train_chars {meta['split']['train_chars']})")
    history = {n: check_int(n, meta[n], minimum=0) for _, n in HISTORY_KEYS.values()}
    return _Layout(model, train["dtype"], train["batch"], tuple(groups), history)


def _check_val_history(path: Path, history: dict, step: int) -> None:
    """The held-out history: steps increasing within ``[1, step]``, losses finite and >= 0."""
    steps, losses = np.asarray(history["val_step"]), np.asarray(history["val_loss"])
    if steps.size and (steps[0] < 1 or steps[-1] > step or np.any(np.diff(steps) <= 0)):
        raise CheckpointError(f"checkpoint {path}: history/val_step must increase within [1, step {step}]")
    if not np.all(np.isfinite(losses) & (losses >= 0)):
        raise CheckpointError(f"checkpoint {path}: history/val_loss must be finite and >= 0")


def pick_checkpoint(path) -> Path:
    """The file ``sample`` and ``eval`` read: ``path`` itself, or in a run's folder ``best.npz`` if any.

    A folder's ``best.npz`` (the lowest held-out loss) is the model to use;
    its ``checkpoint.npz`` (the latest state, what ``--resume`` continues)
    is taken when the run held nothing out.
    """
    path = Path(path)
    if path.is_dir():
        return path / BEST if (path / BEST).is_file() else path / CHECKPOINT
    return path


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``path`` may also be the folder holding ``checkpoint.npz``.

    Raises
    ------
    CheckpointError
        One line saying what is wrong: missing, not a regular file,
        unreadable, truncated, not an archive, foreign, a pickle, metadata
        of the wrong type or range, or members that do not fit the metadata.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        arrays, meta = read_archive(path, lambda m: _layout(m).members(), count=lambda m: _layout(m).count())
    except ValueError as error:  # one line that starts with the path
        raise CheckpointError(f"checkpoint {error}") from None
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {error.strerror or error}") from None
    meta = {k: v for k, v in meta.items() if k not in ("history_len", "val_history_len")}
    meta["history"] = {key: arrays[f"history/{key}"].tolist() for key in HISTORY_KEYS}
    _check_val_history(path, meta["history"], meta["step"])
    bad = _first_nonfinite(arrays)
    if bad is not None:
        raise CheckpointError(f"checkpoint {path}: {NonFiniteError(bad)}")
    ckpt = Checkpoint({k: arrays[f"params/{k}"] for k in CharModel(**meta["model"]).param_shapes()}, None, None,
                      meta)
    if "opt" in meta["groups"]:
        step = int(arrays["opt/step"])
        if step != meta["step"]:
            raise CheckpointError(f"checkpoint {path}: opt/step is {step} but the run's step is {meta['step']}; "
                                  "Adam counts one step per training step")
        negative = next((k for k in ckpt.params if np.any(arrays[f"opt/exp_avg_sq/{k}"] < 0)), None)
        if negative is not None:
            raise CheckpointError(f"checkpoint {path}: opt/exp_avg_sq/{negative} holds negative values; "
                                  "second moments are >= 0")
        ckpt.opt_state = {"step": np.asarray(step, dtype=np.int32)}
        ckpt.opt_state.update({buf: {k: arrays[f"opt/{buf}/{k}"] for k in ckpt.params} for buf in _OPT_BUFFERS})
    if "carry" in meta["groups"]:
        ckpt.carry = tuple(arrays[f"carry/{name}"] for name in ckpt.model.cell.states)
    return ckpt


def _first_nonfinite(arrays: dict):
    """The name of the first floating member of ``arrays`` with a NaN or an infinity, else ``None``."""
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return name
    return None
