"""The training checkpoint: parameters, optimiser state and carried state, in io's one archive format.

``checkpoint.npz`` is written by :func:`portable_rnn.io.write_archive` (atomic,
no pickles) and read by :func:`portable_rnn.io.read_archive`, which checks
every member's name, shape and dtype against what the metadata says must be
there before it reads any data. Members:

``params/<name>``
    The :class:`~portable_rnn.model.CharModel` parameters, in the run's dtype.
``opt/step``, ``opt/exp_avg/<name>``, ``opt/exp_avg_sq/<name>``
    Adam's state (group ``"opt"``).
``carry/<state>``
    The recurrent state carried into the next step, one member per state of
    the cell (``h``, and ``c`` for an LSTM), each (L, N, H) (group ``"carry"``).

The metadata (JSON) holds ``format``, ``version``, ``groups`` (which optional
groups were written), ``model`` (the ``CharModel`` fields), ``vocab``,
``train`` (the settings of the run), ``text`` (source, SHA-256, length),
``prime``, ``step``, ``wall_s``, ``backend`` and the loss ``history``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import read_archive, write_archive
from ..model import CharModel
from .corpus import Vocabulary
from .errors import UsageError

__all__ = ["CHECKPOINT", "DEFAULTS", "FORMAT", "FORMAT_VERSION", "Checkpoint", "CheckpointError",
           "save_checkpoint", "load_checkpoint"]

CHECKPOINT = "checkpoint.npz"
FORMAT = "portable_rnn.CharModel"
FORMAT_VERSION = 2
_OPT_BUFFERS = ("exp_avg", "exp_avg_sq")

#: The settings a checkpoint remembers under ``train`` (with ``steps``), and their defaults for a new run.
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
        JSON metadata (see the module docstring).
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


def save_checkpoint(path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically; ``meta["groups"]`` records the optional groups written."""
    arrays = {f"params/{k}": np.asarray(v) for k, v in ckpt.params.items()}
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
    write_archive(Path(path), arrays, {**ckpt.meta, "format": FORMAT, "version": FORMAT_VERSION,
                                       "groups": groups})


def _expected(meta: dict) -> dict:
    """The members a checkpoint with metadata ``meta`` must hold: ``name -> (shape, dtypes)``.

    Raises ``ValueError`` (one line) for metadata this reader cannot use.
    """
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"not a portable-rnn checkpoint (format {found!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint version {meta.get('version')!r}; this portable-rnn reads {FORMAT_VERSION}")
    try:
        ckpt = Checkpoint({}, None, None, meta)
        model, vocab = ckpt.model, ckpt.vocab
        train, groups = meta["train"], meta["groups"]
        missing = [k for k in (*DEFAULTS, "steps") if k not in train]
        missing += [f"text.{k}" for k in ("source", "sha256") if k not in meta["text"]]
        missing += [f"history.{k}" for k in ("step", "loss") if k not in meta["history"]]
        if missing:
            raise ValueError(f"metadata lacks {missing}")
        int(meta["step"])
        floats = (train["dtype"],)
        shape = (model.num_layers, int(train["batch"]), model.hidden_size)
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"metadata is incomplete ({type(error).__name__}: {error})") from None
    if len(vocab) != model.vocab_size:
        raise ValueError("vocabulary does not match the model")
    shapes = model.param_shapes()
    members = {f"params/{k}": (s, floats) for k, s in shapes.items()}
    if "opt" in groups:
        members["opt/step"] = ((), ("int32", "int64"))
        members.update({f"opt/{buf}/{k}": (s, floats) for buf in _OPT_BUFFERS for k, s in shapes.items()})
    if "carry" in groups:
        members.update({f"carry/{name}": (shape, floats) for name in model.cell.states})
    return members


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``path`` may also be the folder holding ``checkpoint.npz``.

    Raises
    ------
    CheckpointError
        One line saying what is wrong: missing, unreadable, truncated, not an
        archive, foreign, a pickle, or members that do not fit the metadata.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        arrays, meta = read_archive(path, _expected)
    except ValueError as error:  # one line that starts with the path
        raise CheckpointError(f"checkpoint {error}") from None
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {error.strerror or error}") from None
    shapes = CharModel(**meta["model"]).param_shapes()
    ckpt = Checkpoint({k: arrays[f"params/{k}"] for k in shapes}, None, None, meta)
    if "opt" in meta["groups"]:
        ckpt.opt_state = {"step": arrays["opt/step"].astype(np.int32)}
        ckpt.opt_state.update({buf: {k: arrays[f"opt/{buf}/{k}"] for k in shapes} for buf in _OPT_BUFFERS})
    if "carry" in meta["groups"]:
        ckpt.carry = tuple(arrays[f"carry/{name}"] for name in ckpt.model.cell.states)
    return ckpt
