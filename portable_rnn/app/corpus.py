r"""The text a character model trains on: reading it, its vocabulary, and the batch schedule.

The default corpus, used when no text is given, is a selection of
Shakespeare's Sonnets (1609, public domain) shipped in
``portable_rnn/data/sonnets.txt`` (16 KB, 66 distinct characters).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

from ..io import open_regular
from .errors import UsageError

__all__ = ["DEFAULT_CORPUS", "MAX_TEXT_BYTES", "default_corpus", "read_text", "Vocabulary", "BatchSchedule"]

DEFAULT_CORPUS = "sonnets.txt"
#: Largest text file read: 1 GiB (enwik8, the largest usual character corpus, is 100 MB).
MAX_TEXT_BYTES = 1 << 30


def default_corpus() -> str:
    """The embedded default text (a selection of Shakespeare's Sonnets, public domain)."""
    return (resources.files("portable_rnn") / "data" / DEFAULT_CORPUS).read_text(encoding="utf-8")


def read_text(path) -> str:
    """Read a non-empty UTF-8 text file of at most :data:`MAX_TEXT_BYTES`.

    Only a regular file (or a link to one) is read, and never past the size
    it had when opened: a FIFO or a device such as ``/dev/zero`` (a
    checkpoint names the text it was trained on) is refused at once.

    Raises
    ------
    UsageError
        One line naming the file and the problem: missing, a folder or
        another file that is not regular, too large, unreadable, not UTF-8
        (with the byte offset) or empty.
    """
    name = repr(str(path))
    try:
        with open_regular(path) as (f, size):
            if size > MAX_TEXT_BYTES:
                raise UsageError(
                    f"text file {name} is {size:,} bytes, more than the {MAX_TEXT_BYTES:,} portable-rnn "
                    "trains on (it holds 4 bytes per character while training)"
                )
            data = f.read(size)
    except FileNotFoundError:
        raise UsageError(f"text file {name} does not exist") from None
    except ValueError as error:  # not a regular file: the message starts with the path
        raise UsageError(f"text file {error}") from None
    except OSError as error:
        raise UsageError(f"cannot read text file {name}: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(
            f"text file {name} is not UTF-8 (byte {error.start}: {error.reason}); "
            "convert it, e.g. iconv -t utf-8"
        ) from None
    if not text:
        raise UsageError(f"text file {name} is empty")
    return text


@dataclass(frozen=True)
class Vocabulary:
    """The sorted distinct characters of a text, and the maps to and from token ids.

    Attributes
    ----------
    chars : str
        The characters; token ``i`` is ``chars[i]``.

    Raises
    ------
    ValueError
        ``chars`` is not a non-empty string of distinct characters (a
        checkpoint's vocabulary is checked with it).
    """

    chars: str

    def __post_init__(self):
        chars = self.chars
        if not isinstance(chars, str) or not chars:
            raise ValueError(f"the vocabulary must be a non-empty string of characters, got {type(chars).__name__}")
        if len(set(chars)) != len(chars):
            raise ValueError("the vocabulary repeats characters")
        if any("\ud800" <= c <= "\udfff" for c in chars):  # never in a text read as UTF-8
            raise ValueError("the vocabulary holds a lone surrogate, which is not a character")

    @classmethod
    def of(cls, text: str) -> "Vocabulary":
        """The vocabulary of ``text``: its distinct characters, sorted."""
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int32) of ``text``; raises :class:`UsageError` naming unknown characters."""
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted({c for c in text if c not in index})
        if unknown:
            raise UsageError(f"characters not in the model's vocabulary: {''.join(unknown)[:20]!r}")
        return np.fromiter((index[c] for c in text), dtype=np.int32, count=len(text))

    def decode(self, tokens) -> str:
        """The text of a sequence of token ids."""
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

    Because a batch depends only on ``(data, seed, step)``, a resumed run sees
    exactly the batches an uninterrupted one would.

    Parameters
    ----------
    data : numpy.ndarray (M,)
        Token ids.
    batch, seq_len : int
        N streams, T tokens per window.
    seed : int

    Raises
    ------
    UsageError
        When the text is too short for one step of ``batch`` x ``seq_len``.
    """

    def __init__(self, data: np.ndarray, batch: int, seq_len: int, seed: int):
        M = int(data.shape[0])
        self.stream = (M - seq_len) // batch if M > seq_len else 0
        self.per_epoch = self.stream // seq_len
        if self.per_epoch < 1:
            need = batch * seq_len + seq_len
            raise UsageError(
                f"the text has {M} characters; --batch {batch} x --seq-len {seq_len} needs at least "
                f"{need}: lower --batch or --seq-len"
            )
        self.data, self.batch, self.seq_len, self.seed = data, batch, seq_len, seed

    def offset(self, epoch: int) -> int:
        """Where ``epoch``'s streams start, in ``[0, seq_len)``."""
        return int(np.random.default_rng([self.seed, epoch]).integers(self.seq_len))

    def __call__(self, step: int):
        """``(inputs, targets, reset)`` of ``step``: int32 arrays (batch, seq_len) and a bool."""
        epoch, k = divmod(step, self.per_epoch)
        T, L = self.seq_len, self.stream
        starts = self.offset(epoch) + np.arange(self.batch) * L + k * T
        rows = starts[:, None] + np.arange(T + 1)[None, :]
        window = self.data[rows]
        return window[:, :-1], window[:, 1:], k == 0
