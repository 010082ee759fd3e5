r"""Save and load a layer spec with its parameters, and the archive format every portable_rnn file uses.

A model file holds one :mod:`portable_rnn.layers` spec and its parameters
(PyTorch's ``state_dict`` names)::

    save("model.npz", spec, params)            # or "model.safetensors"
    spec, params = load("model.npz", like=x)   # arrays on x's backend and device

Archives
--------
An *archive* (:func:`write_archive`, :func:`read_archive`) is a ``.npz``: a
zip of ``.npy`` members, one per array (``name.npy``; names may contain
``/``), plus the metadata member ``__spec__.npy``, a 1-D ``uint8`` array
holding UTF-8 JSON. Plain ``numpy.load(path, allow_pickle=False)`` reads it.
Model files are archives, and so are the training checkpoints
(:mod:`portable_rnn.app.checkpoint`): one format, one reader.

Formats of :func:`save`
-----------------------
``.npz``
    An archive with one member per parameter; its metadata is ``{"format":
    "portable_rnn", "version": 1, "spec": {...}, "writer": "portable_rnn
    <version>"}`` where ``spec`` is :func:`spec_to_dict` (``{"mode": "lstm",
    "input_size": 5, ...}``). A reader refuses a newer ``version``.
``.safetensors``
    Writing needs the ``safetensors`` package; :func:`load` reads the format
    itself. The tensors are the parameters; the same JSON metadata is the
    ``"portable_rnn"`` entry of the header's ``__metadata__``.

Safety
------
- Writes are atomic (:func:`atomic_write`): a temporary file in the target
  directory, ``fsync``, then :func:`os.replace`; a failed write leaves any
  previous file intact.
- Nothing is ever pickled or unpickled: object arrays are refused on both
  sides.
- A reader opens regular files only (a FIFO, a device such as ``/dev/zero``
  or a directory is refused at once, without blocking), parses the metadata
  first (at most 1 MiB of JSON nested at most 32 levels deep), checks the
  number and the total size of the arrays it asks for against the file
  before listing their names, and checks each member's declared size and
  ``.npy`` header (or each safetensors header entry and its offsets)
  against the spec *before* it allocates the member's array: a member or a
  spec that claims gigabytes is refused without being read. Members are
  read, or inflated in 1 MiB steps, straight into their arrays; one that
  inflates past its declared size is refused the moment it does. Only
  stored and deflated zip members are read. Corrupt, truncated or foreign
  files, unknown or missing members, wrong shapes or dtypes raise a one-line
  ``ValueError`` whose message starts with the path. Nothing is half-loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import os
import re
import secrets
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping

import numpy as np

from ._version import __version__
from .backends import DTYPES
from .interop._common import check_spec, host_dtype, host_params, param_count, to_target
from .layers import LAYERS

__all__ = [
    "save",
    "load",
    "spec_to_dict",
    "spec_from_dict",
    "write_archive",
    "read_archive",
    "atomic_write",
    "remove_stale_temporaries",
    "open_regular",
    "FORMAT_VERSION",
]

#: Version of the model metadata this module writes (and the newest it reads).
FORMAT_VERSION = 1
_FORMAT = "portable_rnn"
#: The archive member holding the metadata (the name model files carry).
_META = "__spec__"
_SAFETENSORS_KEY = "portable_rnn"
#: Largest metadata (UTF-8 JSON) read or written: a model's is a few hundred
#: bytes, a training checkpoint's (settings and vocabulary) a few kilobytes.
#: Parsed JSON can take 25 times its size in Python objects; this bounds that.
_MAX_META_BYTES = 1 << 20
#: Largest safetensors header: the metadata and about 100 bytes per tensor.
_MAX_HEADER_BYTES = 1 << 20
#: Deepest nesting of JSON lists and objects accepted (metadata nests 2 or 3 deep).
_MAX_DEPTH = 32
#: Longest .npy header read (NumPy itself writes and reads at most 10,000 bytes).
_NPY_HEADER_SLACK = 1 << 16
#: Bytes read or inflated per step: all that streaming a member costs beside its array.
_CHUNK = 1 << 20
#: Deflate turns at most 2 bits into 258 bytes: no deflated member holds more than 1032 times its size.
_DEFLATE_RATIO = 1032
#: Longest error message about a file (metadata may quote huge values).
_MAX_MESSAGE = 300
#: The kinds of files that are not regular, as ``os.stat`` tells them apart.
_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


# --------------------------------------------------------------------------- spec <-> dict


def spec_to_dict(spec) -> dict:
    """A JSON-ready dict of a spec: ``{"mode": ..., <every dataclass field>: ...}``.

    Parameters
    ----------
    spec : RNN, LSTM or GRU

    Returns
    -------
    dict
        ``{"mode": "rnn" | "lstm" | "gru", "input_size": int, "hidden_size":
        int, "num_layers": int, "bidirectional": bool, "batch_first": bool,
        "bias": bool, "dropout": float}`` plus ``"nonlinearity"`` for RNN and
        ``"proj_size"`` for LSTM (every field of the dataclass, so fields
        added later round-trip too).
    """
    check_spec(spec)
    out = {"mode": spec.mode}
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        if not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"spec field {field.name}={value!r} is not a JSON bool, int, float or str")
        out[field.name] = value
    return out


def spec_from_dict(data: object):
    """The spec described by a dict from :func:`spec_to_dict`.

    Parameters
    ----------
    data : mapping
        ``"mode"`` and the dataclass fields of that spec; missing fields take
        their defaults, unknown keys are refused.

    Returns
    -------
    RNN, LSTM or GRU

    Raises
    ------
    TypeError
        ``data`` is not a mapping.
    ValueError
        Unknown mode, unknown keys, missing required fields or invalid values
        (the spec's own checks).
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"spec data must be a dict, got {type(data).__name__}")
    mode = data.get("mode")
    if not isinstance(mode, str) or mode not in LAYERS:
        raise ValueError(f"spec 'mode' must be one of {list(LAYERS)}, got {mode!r}")
    cls = LAYERS[mode]
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k != "mode" and k not in fields]
    if unknown:
        raise ValueError(f"spec data has unknown key(s) {unknown} for {cls.__name__}; known: {['mode', *fields]}")
    kwargs = {k: v for k, v in data.items() if k != "mode"}
    try:
        return cls(**kwargs)
    except TypeError as error:  # missing required fields
        raise ValueError(f"spec data does not describe a {cls.__name__}: {error}") from None


# --------------------------------------------------------------------------- files


def _format_of(path: str, format):
    if format is None:
        lower = path.lower()
        if lower.endswith(".npz"):
            return "npz"
        if lower.endswith(".safetensors"):
            return "safetensors"
        raise ValueError(
            f"{path}: cannot tell the format from the extension; use .npz or .safetensors "
            "(or pass format='npz' / 'safetensors')"
        )
    if format not in ("npz", "safetensors"):
        raise ValueError(f"format must be 'npz' or 'safetensors', got {format!r}")
    return format


def _safetensors():
    try:
        import safetensors.numpy as st
    except ImportError as error:
        raise ImportError(
            f"the .safetensors format needs the safetensors package (pip install safetensors): {error}"
        ) from None
    return st


#: Hexadecimal digits of the random part of :func:`atomic_write`'s temporary names.
_TMP_HEX = 16
_TMP_NAME = re.compile(rf"\.(.+)\.[0-9a-f]{{{_TMP_HEX}}}\.tmp")


def remove_stale_temporaries(folder) -> list[str]:
    """Remove the temporary files of :func:`atomic_write` that an interrupted write left in ``folder``.

    Only names of the form ``.<name>.<16 hex digits>.tmp`` that are regular
    files are removed. Call it when no write into ``folder`` is under way
    (e.g. when a program that writes there starts). Returns the names removed.
    """
    removed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if _TMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return removed


def atomic_write(path, write) -> None:
    """Write through ``write(fileobj)`` to a temporary sibling, fsync, then replace ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Missing parent folders are created.
    write : callable
        ``write(f)`` writes the whole content to the binary file ``f``. If
        it raises, the temporary file is removed and ``path`` is untouched.

    Used by :func:`write_archive` and :func:`save`, and by the training
    program for its history and plots.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(_TMP_HEX // 2)}.tmp")
    # O_EXCL: never follow or reuse an existing name; mode 0o666 is filtered by the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.errno is not None and error.filename is None:
            error.filename = os.fspath(path)  # a write through a file object names no file
        raise
    # Make the rename itself durable (not possible on every platform).
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# --------------------------------------------------------------------------- untrusted files


class _Bad(Exception):
    """What is wrong with a file; re-raised as ``ValueError`` starting with the path."""


def _one_line(error) -> str:
    """``error``'s message on one line of at most :data:`_MAX_MESSAGE` characters (metadata may quote huge values)."""
    text = " ".join(str(error).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _few(names) -> str:
    """A list of names for a message: the first eight, then how many there are in all."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:8])
    return f"[{shown}]" if len(names) <= 8 else f"[{shown}, ... ({len(names)} in all)]"


def _is_count(value) -> bool:
    """A non-negative int (never a bool): a size, a shape entry, an offset."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0


@contextlib.contextmanager
def open_regular(path):
    """Open a regular file for binary reading; refuse FIFOs, devices and directories without blocking on them.

    Parameters
    ----------
    path : str or os.PathLike
        Symbolic links are followed: a link to a regular file is fine, a
        link to ``/dev/zero`` is not.

    Yields
    ------
    f : binary file
    size : int
        Its size in bytes when it was opened; the readers of this module
        never read past it.

    Raises
    ------
    ValueError
        ``"<path>: is a FIFO (named pipe), not a regular file"``, or a
        directory, a character or block device, a socket.
    OSError
        It cannot be opened (e.g. ``FileNotFoundError``).
    """
    path = os.fspath(path)
    # O_NONBLOCK: opening a FIFO that no one writes to returns at once instead
    # of waiting for a writer; on a regular file the flag changes nothing.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)  # of what was opened, so a swapped link cannot slip past
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _NOT_REGULAR if test(info.st_mode)), "a special file")
            raise ValueError(f"{os.fsdecode(path)}: is {kind}, not a regular file")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f, info.st_size


def _json_depth(value) -> int:
    """How deeply lists and dicts nest in ``value`` (0 for a scalar), found without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > _MAX_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _parse_json(raw: bytes, where: str) -> dict:
    """The JSON object in ``raw``: UTF-8, an object, nested at most :data:`_MAX_DEPTH` levels."""
    nested = f"{where} nests JSON deeper than {_MAX_DEPTH} levels"
    try:
        value = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise _Bad(nested) from None
    except (UnicodeDecodeError, ValueError) as error:
        raise _Bad(f"{where} is not UTF-8 JSON ({_one_line(error)})") from None
    if not isinstance(value, dict):
        raise _Bad(f"{where} is not a JSON object")
    if _json_depth(value) > _MAX_DEPTH:
        raise _Bad(nested)
    return value


# --------------------------------------------------------------------------- archives


def _check_member_name(name) -> None:
    """A member name that every zip tool stores and extracts safely: relative, no ``..``, no backslash."""
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or name == _META or "\\" in name or "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"archive member name {name!r} is not allowed: use non-empty '/'-separated parts "
            f"without '.', '..', backslashes or NUL, other than {_META!r}"
        )


def write_archive(path, arrays: Mapping[str, np.ndarray], metadata: Mapping) -> None:
    """Write host arrays and JSON metadata to an ``.npz`` archive, atomically.

    Parameters
    ----------
    path : str or os.PathLike
    arrays : mapping of str to numpy.ndarray
        One ``.npy`` member per entry, any shape and non-object dtype, stored
        bit for bit (uncompressed). Names are '/'-separated relative paths
        (``"params/embed"``).
    metadata : mapping
        JSON-serialisable (``json.dumps``, keys sorted; NaN and infinities as
        Python writes them), at most 1 MiB of JSON nested at most 32 levels
        deep: what :func:`read_archive` accepts. Whatever the reader needs to
        know which members to expect, e.g. which optional groups were
        written, belongs here; long series belong in arrays.

    Raises
    ------
    TypeError
        An array that is not a host ``numpy.ndarray`` or holds objects, or
        metadata that is not a JSON-serialisable mapping.
    ValueError
        A member name that is not allowed, or metadata over 1 MiB or nested
        deeper than 32 levels.
    """
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a mapping of names to numpy arrays, got {type(arrays).__name__}")
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    for name, a in arrays.items():
        _check_member_name(name)
        if not isinstance(a, np.ndarray):
            raise TypeError(
                f"arrays[{name!r}] must be a numpy.ndarray, got {type(a).__name__}; copy it to the host "
                "first (portable_rnn.backends.to_host)"
            )
        if a.dtype.hasobject:
            raise TypeError(f"arrays[{name!r}] has dtype {a.dtype}: object arrays would need pickles")
    try:
        text = json.dumps(dict(metadata), sort_keys=True)
    except (TypeError, ValueError, RecursionError) as error:
        raise TypeError(f"metadata is not JSON-serialisable ({_one_line(error)})") from None
    raw = text.encode("utf-8")
    if len(raw) > _MAX_META_BYTES:
        raise ValueError(f"metadata is {len(raw)} bytes of JSON, more than the {_MAX_META_BYTES} a reader accepts")
    try:
        _parse_json(raw, "metadata")  # what every reader will do with it
    except _Bad as error:
        raise ValueError(str(error)) from None
    members = {_META: np.frombuffer(raw, dtype=np.uint8), **arrays}

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, a in members.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, a, allow_pickle=False)

    atomic_write(path, write)


def read_archive(path, expected: Callable[[dict], Mapping], *, count: Callable[[dict], tuple] | None = None
                 ) -> tuple[dict[str, np.ndarray], dict]:
    """Read an archive written by :func:`write_archive`, checking every member before reading it.

    Parameters
    ----------
    path : str or os.PathLike
        A regular file (or a link to one).
    expected : callable
        ``expected(metadata) -> {member name: (shape, dtype names)}``, e.g.
        ``{"params/embed": ((65, 32), ("float32", "float64"))}``: the members
        the file must hold, given its metadata. It may raise ``ValueError``,
        ``KeyError`` or ``TypeError`` for metadata it cannot use.
    count : callable, optional
        ``count(metadata) -> (members, nbytes)``: how many members the
        metadata asks for and the fewest bytes of array data they hold,
        computed without listing them. Both are checked against the file
        before ``expected`` is called, so metadata that claims 10**8 layers
        is refused before 10**8 names are built. Give it whenever the
        metadata sets how many members there are.

    Returns
    -------
    arrays : dict of str to numpy.ndarray
        In the order of ``expected``'s result; fresh, writable, C-contiguous,
        native byte order.
    metadata : dict
        The parsed JSON.

    Raises
    ------
    ValueError
        One line, starting with the path: not a regular file (a FIFO, a
        device, a directory), not a zip, corrupt or truncated, duplicate or
        non-``.npy`` members, members compressed other than by deflate, no
        or invalid metadata (not a 1-D ``uint8`` member of UTF-8 JSON
        holding an object, over 1 MiB or nested deeper than 32 levels), an
        error raised by ``count`` or ``expected``, more members or bytes
        asked for than the file holds, an unknown or a missing member, a
        member whose declared size, shape or dtype is not what ``expected``
        says (checked from the zip directory and the ``.npy`` header before
        its data is read), a member that inflates past its declared size,
        or a pickled object array.
    OSError
        The file cannot be opened (e.g. ``FileNotFoundError``).

    Notes
    -----
    Memory: besides the arrays returned, the zip directory (in proportion
    to its size in the file), the metadata and one 1 MiB chunk; a member is
    read or inflated straight into its array, which is allocated only once
    its size has been checked.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.npz")
    >>> write_archive(path, {"w": np.eye(2)}, {"rows": 2})
    >>> arrays, meta = read_archive(path, lambda m: {"w": ((m["rows"], 2), ("float64",))})
    >>> arrays["w"].shape, meta
    ((2, 2), {'rows': 2})
    """
    with open_regular(path) as (f, size):
        try:
            return _read_zip(f, size, expected, count)
        except _Bad as error:
            raise ValueError(f"{os.fsdecode(os.fspath(path))}: {_one_line(error)}") from None


def _read_zip(f, size: int, expected, count) -> tuple[dict, dict]:
    """:func:`read_archive` on an open file of ``size`` bytes, raising :class:`_Bad`."""
    if size == 0:
        raise _Bad("is empty")
    found = _zip_members(f, size)
    if _META not in found:
        raise _Bad(f"has no {_META!r} member (metadata): it was not written by portable_rnn")
    meta = _corrupt_guard(_read_metadata, f, found[_META])
    held = {name: info for name, info in found.items() if name != _META}
    members = _expected_members(expected, count, meta, len(held), sum(info.file_size for info in held.values()))
    _check_member_names(held, members)
    arrays = {
        name: _corrupt_guard(_read_npy, f, found[name], name, _member_check(name, *spec), _limit(*spec))
        for name, spec in members.items()
    }
    return arrays, meta


def _zip_members(f, size: int) -> dict:
    """``name without .npy -> ZipInfo``, checked from the zip directory alone: nothing is read or inflated."""
    try:
        infos = zipfile.ZipFile(f).infolist()  # parses the directory only; f stays open
    except Exception as error:  # BadZipFile, truncated directories, bad offsets
        raise _Bad(f"is not a readable .npz (zip) file ({type(error).__name__}: {_one_line(error)})") from None
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise _Bad("has duplicate zip members")
    bad = [n for n in names if not n.endswith(".npy")]
    if bad:
        raise _Bad(f"has zip members that are not .npy arrays: {_few(bad)}")
    for info in infos:
        _check_zip_entry(info, size)
    # Members sharing their bytes (a zip bomb's trick) would add up to more than the file.
    if sum(info.compress_size for info in infos) > size:
        raise _Bad("is corrupt (its zip members overlap)")
    return {n[: -len(".npy")]: info for n, info in zip(names, infos)}


def _check_zip_entry(info, size: int) -> None:
    """One entry of the zip directory: readable in bounded steps, with sizes its bytes in the file can hold."""
    name = info.filename
    if info.flag_bits & 0x1:
        raise _Bad(f"member {name!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        method = getattr(zipfile, "compressor_names", {}).get(info.compress_type, "unknown")
        raise _Bad(
            f"member {name!r} is compressed with method {info.compress_type} ({method}); "
            "only stored and deflated members are read"
        )
    if info.header_offset + info.compress_size > size:
        raise _Bad(f"is truncated (member {name!r} ends past the end of the file)")
    stored = info.compress_type == zipfile.ZIP_STORED
    if (stored and info.file_size != info.compress_size) or info.file_size > _DEFLATE_RATIO * info.compress_size:
        raise _Bad(
            f"member {name!r} declares {info.file_size} bytes from {info.compress_size} bytes "
            f"{'stored' if stored else 'deflated'}, which is impossible"
        )


class _MemberData:
    """The bytes of one zip member, read or inflated a chunk at a time, never past its declared size.

    Stored bytes go straight from the file into the destination; deflated
    ones are inflated at most :data:`_CHUNK` bytes per step. :meth:`finish`
    refuses a member that goes on past its declared size and checks the CRC.
    """

    def __init__(self, f, info):
        f.seek(info.header_offset)
        fixed = f.read(30)
        if len(fixed) != 30 or fixed[:4] != b"PK\x03\x04":
            raise _Bad(f"is corrupt (member {info.filename!r} has no local header)")
        n_name, n_extra = struct.unpack("<HH", fixed[26:30])
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        if f.read(n_name).decode(encoding, "replace") != info.orig_filename:
            raise _Bad(f"is corrupt (member {info.filename!r} has another name in its local header)")
        f.seek(n_extra, os.SEEK_CUR)
        self.f, self.name, self.declared = f, info.filename, info.file_size
        self.left_in, self.left_out, self.crc, self.expected_crc = info.compress_size, info.file_size, 0, info.CRC
        self.inflate = zlib.decompressobj(-zlib.MAX_WBITS) if info.compress_type == zipfile.ZIP_DEFLATED else None

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the declared end)."""
        buf = bytearray(min(n, self.left_out))
        self.readinto(buf)
        return bytes(buf)

    def readinto(self, destination) -> None:
        """Fill ``destination`` (a writable buffer) exactly; :class:`_Bad` if the member ends first."""
        view, got = memoryview(destination).cast("B"), 0
        while got < len(view):
            n = self._step(view[got : got + min(_CHUNK, self.left_out)])
            if not n:
                raise _Bad(f"is truncated (member {self.name!r} ends before its declared {self.declared} bytes)")
            got += n

    def _step(self, view) -> int:
        """Read or inflate up to ``len(view)`` bytes into ``view``; how many (0: no more)."""
        if not len(view):
            return 0
        if self.inflate is None:
            n = self.f.readinto(view[: self.left_in])
            self.left_in -= n
        else:
            data = self._inflate(len(view))
            n = len(data)
            view[:n] = data
        self.crc = zlib.crc32(view[:n], self.crc)
        self.left_out -= n
        return n

    def _inflate(self, most: int) -> bytes:
        """At most ``most`` inflated bytes; empty when the deflate stream (or the member) is over."""
        assert self.inflate is not None  # _step calls this only for a deflated member
        while True:
            source = self.inflate.unconsumed_tail
            if not source and self.left_in and not self.inflate.eof:
                source = self.f.read(min(self.left_in, _CHUNK))
                if not source:
                    return b""
                self.left_in -= len(source)
            data = self.inflate.decompress(source, most)
            if data or self.inflate.eof or not (self.left_in or self.inflate.unconsumed_tail):
                return data

    def finish(self) -> None:
        """After the declared bytes: nothing may follow, and the CRC must match."""
        if self.inflate is not None:
            if self._inflate(1):
                raise _Bad(f"member {self.name!r} inflates past its declared {self.declared} bytes")
            if not self.inflate.eof or self.left_in or self.inflate.unused_data:
                raise _Bad(f"is corrupt (the deflate stream of member {self.name!r} does not end where declared)")
        if self.crc != self.expected_crc:
            raise _Bad(f"is corrupt (CRC-32 mismatch in member {self.name!r})")


def _corrupt_guard(read, *args):
    """``read(*args)``, with zip-level failures (inflating, reading) as :class:`_Bad`."""
    try:
        return read(*args)
    except _Bad:
        raise
    except Exception as error:
        raise _Bad(f"is corrupt ({type(error).__name__}: {_one_line(error)})") from None


def _read_metadata(f, info) -> dict:
    def check(shape, dtype_name):
        if dtype_name != "uint8" or len(shape) != 1:
            raise _Bad(f"member {_META!r} must be a 1-D uint8 array, got {dtype_name} {shape}")
        if shape[0] > _MAX_META_BYTES:
            raise _Bad(f"has {shape[0]} bytes of metadata, more than the {_MAX_META_BYTES} accepted")

    raw = _read_npy(f, info, _META, check, _MAX_META_BYTES + _NPY_HEADER_SLACK)
    return _parse_json(raw.tobytes(), f"member {_META!r}")


def _expectation(name, value) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """``(shape, dtype names)`` of one entry of ``expected(metadata)``, checked."""
    _check_member_name(name)
    shape, dtypes = value
    shape, dtypes = tuple(shape), tuple(dtypes)
    if not all(_is_count(d) for d in shape):
        raise ValueError("the shape must hold non-negative ints")
    if not dtypes or not all(isinstance(t, str) and not np.dtype(t).hasobject for t in dtypes):
        raise ValueError("the dtypes must be NumPy dtype names of arrays without objects")
    return tuple(int(d) for d in shape), dtypes


def _ask(hook, meta):
    """``hook(meta)`` (``expected`` or ``count``); its complaints become :class:`_Bad`."""
    try:
        return hook(meta)
    except ValueError as error:
        raise _Bad(_one_line(error)) from None
    except (KeyError, TypeError) as error:
        raise _Bad(f"has unusable metadata ({type(error).__name__}: {_one_line(error)})") from None


def _amount(n: int) -> str:
    """``n`` for a message (metadata can make numbers too long for ``str``)."""
    return f"{n:,}" if n < 10**18 else "more than 10**18"


def _check_claim(members: int, nbytes: int, held: int, capacity: int) -> None:
    """Refuse metadata asking for more members, or more bytes of arrays, than the file holds."""
    if members > held:
        raise _Bad(f"is missing member(s): its metadata asks for {_amount(members)}, the file holds {held:,}")
    if nbytes > capacity:
        raise _Bad(f"holds at most {capacity:,} bytes of arrays; its metadata asks for {_amount(nbytes)}")


def _expected_members(expected, count, meta, held: int, capacity: int) -> dict:
    """The checked result of ``expected(meta)``, after ``count(meta)`` fits ``held`` members and ``capacity`` bytes."""
    if count is not None:
        claim = _ask(count, meta)
        if not (isinstance(claim, tuple) and len(claim) == 2 and all(_is_count(c) for c in claim)):
            raise TypeError(f"count must return (members, nbytes), two non-negative ints; got {claim!r}")
        _check_claim(*claim, held, capacity)
    members = _ask(expected, meta)
    if not isinstance(members, Mapping):
        raise _Bad(f"has metadata that gives no member list ({type(members).__name__})")
    out = {}
    for name, value in members.items():
        try:
            out[name] = _expectation(name, value)
        except (TypeError, ValueError) as error:
            raise _Bad(f"has metadata that asks for member {name!r} as {value!r} ({_one_line(error)})") from None
    least = sum(math.prod(shape) * min(np.dtype(t).itemsize for t in dtypes) for shape, dtypes in out.values())
    _check_claim(0, least, held, capacity)
    return out


def _check_member_names(found, members: dict) -> None:
    extra = [n for n in found if n not in members]
    if extra:
        raise _Bad(f"has unexpected member(s) {_few(extra)}; its metadata lists {_few(members)}")
    missing = [n for n in members if n not in found]
    if missing:
        raise _Bad(f"is missing member(s) {_few(missing)}")


def _member_check(name, shape, dtypes):
    """``check(shape, dtype name)`` refusing anything but ``shape`` and one of ``dtypes``."""

    def check(got_shape, dtype_name):
        if dtype_name not in dtypes:
            raise _Bad(f"member {name!r} has dtype {dtype_name}; expected {' or '.join(dtypes)}")
        if got_shape != shape:
            raise _Bad(f"member {name!r} has shape {got_shape}; expected {shape}")

    return check


def _limit(shape, dtypes) -> int:
    """The most bytes a member of ``shape`` and one of ``dtypes`` can need, header included."""
    return _NPY_HEADER_SLACK + math.prod(shape) * max(np.dtype(t).itemsize for t in dtypes)


class _Header:
    """The start of a member's bytes as NumPy's header parser reads it: counted, and at most 64 KiB."""

    def __init__(self, data: _MemberData, name: str):
        self.data, self.name, self.count = data, name, 0

    def read(self, n=-1):
        if n < 0 or self.count + n > _NPY_HEADER_SLACK:
            raise _Bad(f"member {self.name!r} has a .npy header over {_NPY_HEADER_SLACK} bytes")
        data = self.data.read(n)
        self.count += len(data)
        return data


def _npy_header(fp, name):
    """Shape, Fortran order and dtype from a .npy header, read without touching the data."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise _Bad(f"member {name!r} is a .npy version {version} array; expected version 1.0 or 2.0")
    except (_Bad, zlib.error):
        raise  # a damaged zip, not a bad header: the caller says "corrupt"
    except Exception as error:
        raise _Bad(f"member {name!r} is not a valid .npy array ({type(error).__name__}: {_one_line(error)})") from None
    if dtype.hasobject:
        raise _Bad(
            f"member {name!r} holds a pickled object array (dtype {dtype}); portable_rnn never "
            "unpickles, refusing to read it"
        )
    return tuple(shape), fortran, dtype


def _read_npy(f, info, name, check, limit) -> np.ndarray:
    """One member, read into its array only after its declared size and ``check(shape, dtype name)`` pass."""
    if info.file_size > limit:
        raise _Bad(f"member {name!r} declares {info.file_size} bytes, more than it can need ({limit})")
    data = _MemberData(f, info)
    header = _Header(data, name)
    shape, fortran, dtype = _npy_header(header, name)
    check(shape, dtype.name)
    n_data = math.prod(shape) * dtype.itemsize
    if info.file_size != header.count + n_data:
        raise _Bad(f"member {name!r} is {info.file_size} bytes; its .npy header declares {header.count + n_data}")
    raw = np.empty(n_data, dtype=np.uint8)
    data.readinto(raw)
    data.finish()
    return _native(raw.view(dtype).reshape(shape, order="F" if fortran else "C"))


def _native(a: np.ndarray) -> np.ndarray:
    """``a`` in native byte order, C-contiguous and writable (a copy where needed)."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = np.array(a, order="C", copy=True)  # not ascontiguousarray: it makes 0-d arrays 1-d
    return a


# --------------------------------------------------------------------------- save and load


def _metadata(spec) -> dict:
    return {"format": _FORMAT, "version": FORMAT_VERSION, "spec": spec_to_dict(spec),
            "writer": f"portable_rnn {__version__}"}


def save(path, spec, params, *, format=None) -> None:
    """Write ``spec`` and ``params`` to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        ``*.npz`` or ``*.safetensors`` (or any name with ``format=``).
    spec : RNN, LSTM or GRU
    params : dict of str to array
        Exactly the spec's parameters (names and shapes of
        ``spec.param_shapes()``), float32 or float64, from any backend and
        device; they are copied to the host and stored bit for bit.
    format : {"npz", "safetensors"}, optional
        Default: from the extension.

    Raises
    ------
    ValueError, TypeError
        Unknown format, or parameters that do not fit the spec.
    ImportError
        ``.safetensors`` without the ``safetensors`` package.
    """
    path = os.fspath(path)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    fmt = _format_of(path, format)
    host, _ = host_params(spec, params)
    meta = _metadata(spec)
    if fmt == "npz":
        write_archive(path, host, meta)
    else:
        st = _safetensors()
        blob = st.save(host, metadata={_SAFETENSORS_KEY: json.dumps(meta, sort_keys=True)})
        atomic_write(path, lambda f: f.write(blob))


def _model_spec(meta: dict):
    """The spec described by model metadata; ``ValueError`` for anything else."""
    if meta.get("format") != _FORMAT:
        raise ValueError(f"is not portable_rnn metadata (no \"format\": \"{_FORMAT}\")")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"was written by a newer portable_rnn (format version {version}); "
            f"this version reads up to {FORMAT_VERSION}"
        )
    try:
        return spec_from_dict(meta.get("spec"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"has an invalid spec: {error}") from None


def _model_members(meta: dict) -> dict:
    """``expected`` of a model file: the spec's parameters, float32 or float64."""
    return {k: (shape, DTYPES) for k, shape in _model_spec(meta).param_shapes().items()}


def _model_count(meta: dict) -> tuple[int, int]:
    """``count`` of a model file: the spec's parameter arrays and their bytes in float32, by arithmetic."""
    arrays, numbers = param_count(_model_spec(meta))
    return arrays, numbers * min(np.dtype(t).itemsize for t in DTYPES)


#: safetensors dtype codes, as NumPy names (the data is little-endian).
_SAFETENSORS_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "F16": "float16",
    "BF16": "bfloat16", "U32": "uint32", "I32": "int32", "F32": "float32", "U64": "uint64", "I64": "int64",
    "F64": "float64",
}


def _read_safetensors(f, size: int, expected, count) -> tuple[dict, dict]:
    """Check the header (length, metadata, names, shapes, dtypes, offsets), then read each tensor into its array."""
    n = int.from_bytes(f.read(8), "little")
    if n > size - 8:
        raise _Bad(f"is truncated: its header claims {n} bytes but only {size - 8} follow")
    if n > _MAX_HEADER_BYTES:
        raise _Bad(f"has a {n}-byte header, more than the {_MAX_HEADER_BYTES} accepted")
    header = _parse_json(f.read(n), "its header")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not isinstance(meta.get(_SAFETENSORS_KEY), str):
        raise _Bad(f"has no {_SAFETENSORS_KEY!r} metadata: it was not written by portable_rnn.io.save")
    meta = _parse_json(meta[_SAFETENSORS_KEY].encode("utf-8", "surrogatepass"), "its metadata")
    declared = {k: v for k, v in header.items() if k != "__metadata__"}
    start, length = 8 + n, size - 8 - n
    members = _expected_members(expected, count, meta, len(declared), length)
    _check_member_names(declared, members)
    arrays = {}
    for name, (offset, dtype, shape) in _tensor_spans(declared, members, length).items():
        raw = np.empty(math.prod(shape) * dtype.itemsize, dtype=np.uint8)
        f.seek(start + offset)
        if f.readinto(raw) != raw.size:  # a regular file gives all it has in one call
            raise _Bad("is truncated (it changed while being read)")
        arrays[name] = _native(raw.view(dtype).reshape(shape))
    return arrays, meta


def _tensor_spans(declared: dict, members: dict, length: int) -> dict:
    """``name -> (offset, dtype, shape)`` from the header: the expected shape and dtype, offsets that tile the data."""
    spans = {}
    for name, (shape, dtypes) in members.items():
        entry = declared[name] if isinstance(declared[name], dict) else {}
        got, code, offsets = entry.get("shape"), entry.get("dtype"), entry.get("data_offsets")
        if not isinstance(got, list) or not all(_is_count(d) for d in got):
            raise _Bad(f"member {name!r} has no valid shape in the header")
        dtype_name = _SAFETENSORS_DTYPES.get(str(code), str(code))
        _member_check(name, shape, dtypes)(tuple(got), dtype_name)
        dtype = np.dtype(dtype_name).newbyteorder("<")
        nbytes = math.prod(shape) * dtype.itemsize
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
                and offsets[1] - offsets[0] == nbytes):
            raise _Bad(f"member {name!r} has data offsets {offsets!r}; expected two ints {nbytes} apart")
        spans[name] = (offsets[0], dtype, shape)
    end = 0
    for offset, dtype, shape in sorted(spans.values(), key=lambda span: span[0]):
        if offset != end:
            raise _Bad("has tensors whose data overlap or leave gaps")
        end += math.prod(shape) * dtype.itemsize
    if end != length:
        raise _Bad(f"has {length} bytes of tensor data; its header accounts for {end}")
    return spans


def load(path, *, like=None, xp=None, dtype=None, device=None):
    """Read a spec and its parameters written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
        An ``.npz`` or ``.safetensors`` regular file (or a link to one); the
        format is recognised from the content, not the name. Reading
        ``.safetensors`` needs no package.
    like : array, optional
        Put the parameters in this array's namespace, dtype and device.
    xp : module, optional
        Target library (``numpy``, ``jax.numpy``, ``torch``, ...); default NumPy.
    dtype : dtype or {"float32", "float64"}, optional
        Default: the stored dtype (or the dtype of ``like``).
    device : device, optional
        Default: the library's default device (or the device of ``like``).

    Returns
    -------
    spec : RNN, LSTM or GRU
    params : dict of str to array
        In ``spec.param_shapes()`` order.

    Raises
    ------
    ValueError
        The file is not a regular file, is truncated, corrupt, not a
        portable_rnn file, holds a pickled object array, was written by a
        newer format version, or its members do not fit its spec (a spec
        asking for more arrays or bytes than the file holds is refused before
        its parameter names are listed). One line, starting with the path.
    OSError
        The file cannot be read (e.g. ``FileNotFoundError``).

    Notes
    -----
    Memory: the parameters returned (twice while a Fortran-ordered or
    big-endian member is converted), plus the limits of :func:`read_archive`;
    see the README's Reliability section.
    """
    with open_regular(path) as (f, size):
        head = f.read(9)
        f.seek(0)
        try:
            if not head:
                raise _Bad("is empty")
            if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
                host, meta = _read_zip(f, size, _model_members, _model_count)
            elif len(head) >= 9 and head[8:9] == b"{":
                host, meta = _read_safetensors(f, size, _model_members, _model_count)
            else:
                raise _Bad("is neither a .npz (zip) nor a .safetensors file")
            try:
                source_dtype = host_dtype(host, "members")
            except TypeError as error:
                raise _Bad(str(error)) from None
        except _Bad as error:
            raise ValueError(f"{os.fsdecode(os.fspath(path))}: {_one_line(error)}") from None
    return _model_spec(meta), to_target(host, like, xp, dtype, device, source_dtype=source_dtype)
