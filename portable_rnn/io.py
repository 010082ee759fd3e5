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
    Needs the ``safetensors`` package. The tensors are the parameters; the
    same JSON metadata is the ``"portable_rnn"`` entry of the header's
    ``__metadata__``.

Safety
------
- Writes are atomic (:func:`atomic_write`): a temporary file in the target
  directory, ``fsync``, then :func:`os.replace`; a failed write leaves any
  previous file intact.
- Nothing is ever pickled or unpickled: object arrays are refused on both
  sides.
- A reader parses the metadata first, derives from it the name, shape and
  dtype of every member there must be, and checks each member's declared
  size and ``.npy`` header against that *before* it reads the member's data:
  a member that claims gigabytes is refused without being read. Corrupt,
  truncated or foreign files, unknown or missing members, wrong shapes or
  dtypes raise ``ValueError`` whose message starts with the path. Nothing is
  half-loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import os
import secrets
import zipfile
import zlib
from collections.abc import Callable, Mapping

import numpy as np

from .backends import DTYPES
from .interop._common import check_spec, host_dtype, host_params, to_target
from .layers import LAYERS

__all__ = [
    "save",
    "load",
    "spec_to_dict",
    "spec_from_dict",
    "write_archive",
    "read_archive",
    "atomic_write",
    "FORMAT_VERSION",
]

#: Version of the model metadata this module writes (and the newest it reads).
FORMAT_VERSION = 1
_FORMAT = "portable_rnn"
#: The archive member holding the metadata (the name model files carry).
_META = "__spec__"
_SAFETENSORS_KEY = "portable_rnn"
#: Largest metadata accepted: model metadata is a few hundred bytes, a training
#: checkpoint's (with its loss history) a few megabytes.
_MAX_META_BYTES = 64 << 20
#: Room for a .npy header (NumPy refuses headers over 10,000 bytes).
_NPY_HEADER_SLACK = 1 << 16


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
        "bias": bool}`` plus ``"nonlinearity"`` for RNN (every field of the
        dataclass, so fields added later round-trip too).
    """
    check_spec(spec)
    out = {"mode": spec.mode}
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        if not isinstance(value, (bool, int, str)):
            raise TypeError(f"spec field {field.name}={value!r} is not a JSON bool, int or str")
        out[field.name] = value
    return out


def spec_from_dict(data: Mapping):
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
    if mode not in LAYERS:
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
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    # O_EXCL: never follow or reuse an existing name; mode 0o666 is filtered by the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable (not possible on every platform).
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# --------------------------------------------------------------------------- archives


class _Bad(Exception):
    """What is wrong with a file; re-raised as ``ValueError`` starting with the path."""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


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
        bit for bit. Names are '/'-separated relative paths (``"params/embed"``).
    metadata : mapping
        JSON-serialisable (``json.dumps``, keys sorted; NaN and infinities as
        Python writes them). Whatever the reader needs to know which members
        to expect, e.g. which optional groups were written, belongs here.

    Raises
    ------
    TypeError
        An array that is not a host ``numpy.ndarray`` or holds objects, or
        metadata that is not a JSON-serialisable mapping.
    ValueError
        A member name that is not allowed, or metadata over 64 MiB.
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
    except (TypeError, ValueError) as error:
        raise TypeError(f"metadata is not JSON-serialisable ({_one_line(error)})") from None
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    if raw.size > _MAX_META_BYTES:
        raise ValueError(f"metadata is {raw.size} bytes of JSON, more than the {_MAX_META_BYTES} a reader accepts")
    members = {_META: raw, **arrays}

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, a in members.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, a, allow_pickle=False)

    atomic_write(path, write)


def read_archive(path, expected: Callable[[dict], Mapping]) -> tuple[dict[str, np.ndarray], dict]:
    """Read an archive written by :func:`write_archive`, checking every member before reading it.

    Parameters
    ----------
    path : str or os.PathLike
    expected : callable
        ``expected(metadata) -> {member name: (shape, dtype names)}``, e.g.
        ``{"params/embed": ((65, 32), ("float32", "float64"))}``: the members
        the file must hold, given its metadata. It may raise ``ValueError``,
        ``KeyError`` or ``TypeError`` for metadata it cannot use.

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
        One line, starting with the path: not a zip, corrupt or truncated,
        duplicate or non-``.npy`` members, no or invalid metadata (not a
        1-D ``uint8`` member of UTF-8 JSON holding an object, or over 64 MiB),
        an error raised by ``expected``, an unknown or a missing member, a
        member whose declared size, shape or dtype is not what ``expected``
        says (checked from the zip directory and the ``.npy`` header before
        its data is read), or a pickled object array.
    OSError
        The file cannot be opened (e.g. ``FileNotFoundError``).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.npz")
    >>> write_archive(path, {"w": np.eye(2)}, {"rows": 2})
    >>> arrays, meta = read_archive(path, lambda m: {"w": ((m["rows"], 2), ("float64",))})
    >>> arrays["w"].shape, meta
    ((2, 2), {'rows': 2})
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            return _read_zip(f, expected)
        except _Bad as error:
            raise ValueError(f"{os.fsdecode(path)}: {error}") from None


def _read_zip(f, expected) -> tuple[dict, dict]:
    """:func:`read_archive` on an open file, raising :class:`_Bad`."""
    if not f.read(1):
        raise _Bad("is empty")
    f.seek(0)
    try:
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
    except Exception as error:  # BadZipFile, truncated directories, bad offsets
        raise _Bad(f"is not a readable .npz (zip) file ({type(error).__name__}: {_one_line(error)})") from None
    with zf:
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise _Bad("has duplicate zip members")
        bad = [n for n in names if not n.endswith(".npy")]
        if bad:
            raise _Bad(f"has zip members that are not .npy arrays: {bad}")
        found = {n[: -len(".npy")]: info for n, info in zip(names, infos)}
        if _META not in found:
            raise _Bad(f"has no {_META!r} member (metadata): it was not written by portable_rnn")
        meta = _corrupt_guard(_read_metadata, zf, found[_META])
        members = _expected_members(expected, meta)
        _check_member_names(found, members)
        arrays = {
            name: _corrupt_guard(_read_npy, zf, found[name], name, _member_check(name, *spec), _limit(*spec))
            for name, spec in members.items()
        }
    return arrays, meta


def _corrupt_guard(read, *args):
    """``read(*args)``, with zip-level failures (CRC, truncation, compression) as :class:`_Bad`."""
    try:
        return read(*args)
    except _Bad:
        raise
    except Exception as error:
        raise _Bad(f"is corrupt ({type(error).__name__}: {_one_line(error)})") from None


def _parse_json(raw: bytes, where: str) -> dict:
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise _Bad(f"{where} is not UTF-8 JSON ({_one_line(error)})") from None
    if not isinstance(meta, dict):
        raise _Bad(f"{where} is not a JSON object")
    return meta


def _read_metadata(zf, info) -> dict:
    def check(shape, dtype_name):
        if dtype_name != "uint8" or len(shape) != 1:
            raise _Bad(f"member {_META!r} must be a 1-D uint8 array, got {dtype_name} {shape}")

    raw = _read_npy(zf, info, _META, check, _MAX_META_BYTES + _NPY_HEADER_SLACK)
    return _parse_json(raw.tobytes(), f"member {_META!r}")


def _expectation(name, value) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """``(shape, dtype names)`` of one entry of ``expected(metadata)``, checked."""
    _check_member_name(name)
    shape, dtypes = value
    shape, dtypes = tuple(shape), tuple(dtypes)
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError("the shape must hold non-negative ints")
    if not dtypes or not all(isinstance(t, str) and not np.dtype(t).hasobject for t in dtypes):
        raise ValueError("the dtypes must be NumPy dtype names of arrays without objects")
    return tuple(int(d) for d in shape), dtypes


def _expected_members(expected, meta) -> dict:
    """Call ``expected(meta)`` and check what it returns; its complaints become :class:`_Bad`."""
    try:
        members = expected(meta)
    except ValueError as error:
        raise _Bad(_one_line(error)) from None
    except (KeyError, TypeError) as error:
        raise _Bad(f"has unusable metadata ({type(error).__name__}: {_one_line(error)})") from None
    if not isinstance(members, Mapping):
        raise _Bad(f"has metadata that gives no member list ({type(members).__name__})")
    out = {}
    for name, value in members.items():
        try:
            out[name] = _expectation(name, value)
        except (TypeError, ValueError) as error:
            raise _Bad(f"has metadata that asks for member {name!r} as {value!r} ({_one_line(error)})") from None
    return out


def _check_member_names(found, members: dict) -> None:
    extra = [n for n in found if n != _META and n not in members]
    if extra:
        raise _Bad(f"has unexpected member(s) {extra}; its metadata lists {list(members)}")
    missing = [n for n in members if n not in found]
    if missing:
        raise _Bad(f"is missing member(s) {missing}")


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


class _Counted:
    """A read-only stream that counts the bytes read through it (the .npy header's length)."""

    def __init__(self, stream):
        self.stream, self.count = stream, 0

    def read(self, n=-1):
        data = self.stream.read(n)
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
    except (_Bad, zipfile.BadZipFile, zlib.error, EOFError):
        raise  # a damaged zip, not a bad header: the caller says "corrupt"
    except Exception as error:
        raise _Bad(f"member {name!r} is not a valid .npy array ({type(error).__name__}: {_one_line(error)})") from None
    if dtype.hasobject:
        raise _Bad(
            f"member {name!r} holds a pickled object array (dtype {dtype}); portable_rnn never "
            "unpickles, refusing to read it"
        )
    return tuple(shape), fortran, dtype


def _read_npy(zf, info, name, check, limit) -> np.ndarray:
    """One member, read only after its declared size and ``check(shape, dtype name)`` of its header pass."""
    if info.file_size > limit:
        raise _Bad(f"member {name!r} declares {info.file_size} bytes, more than it can need ({limit})")
    with zf.open(info) as stream:
        counted = _Counted(stream)
        shape, fortran, dtype = _npy_header(counted, name)
        check(shape, dtype.name)
        n_data = math.prod(shape) * dtype.itemsize
        if info.file_size != counted.count + n_data:
            raise _Bad(f"member {name!r} is {info.file_size} bytes; its .npy header declares {counted.count + n_data}")
        data = bytearray(n_data)
        view, got = memoryview(data), 0
        while got < n_data:
            n = stream.readinto(view[got:])
            if not n:
                raise _Bad(f"member {name!r} is truncated")
            got += n
        stream.read(1)  # reaching the end makes zipfile check the CRC
    a = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return _native(a)


def _native(a: np.ndarray) -> np.ndarray:
    """``a`` in native byte order, C-contiguous and writable (a copy where needed)."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = np.array(a, order="C", copy=True)  # not ascontiguousarray: it makes 0-d arrays 1-d
    return a


# --------------------------------------------------------------------------- save and load


def _metadata(spec) -> dict:
    from . import __version__

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


#: safetensors dtype codes of floating tensors, as NumPy names.
_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def _read_safetensors(data: bytes, expected) -> tuple[dict, dict]:
    """Check the header (metadata, names, shapes, dtypes) against ``expected``, then load the tensors."""
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise _Bad(f"is truncated: its header claims {n} bytes but only {len(data) - 8} follow")
    header = _parse_json(data[8 : 8 + n], "its header")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not isinstance(meta.get(_SAFETENSORS_KEY), str):
        raise _Bad(f"has no {_SAFETENSORS_KEY!r} metadata: it was not written by portable_rnn.io.save")
    meta = _parse_json(meta[_SAFETENSORS_KEY].encode("utf-8"), "its metadata")
    members = _expected_members(expected, meta)
    declared = {k: v for k, v in header.items() if k != "__metadata__"}
    _check_member_names(declared, members)
    for name, (shape, dtypes) in members.items():
        entry = declared[name]
        got = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(got, list) or not all(isinstance(d, int) for d in got):
            raise _Bad(f"member {name!r} has no valid shape in the header")
        code = entry.get("dtype")
        _member_check(name, shape, dtypes)(tuple(got), _SAFETENSORS_DTYPES.get(code, str(code)))
    st = _safetensors()
    try:
        tensors = st.load(data)
    except Exception as error:  # safetensors' own SafetensorError and friends
        raise _Bad(f"is corrupt ({type(error).__name__}: {_one_line(error)})") from None
    return {name: _native(np.asarray(tensors[name])) for name in members}, meta


def load(path, *, like=None, xp=None, dtype=None, device=None):
    """Read a spec and its parameters written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
        An ``.npz`` or ``.safetensors`` file; the format is recognised from
        the content, not the name.
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
        The file is truncated, corrupt, not a portable_rnn file, holds a
        pickled object array, was written by a newer format version, or its
        members do not fit its spec. The message starts with the path.
    OSError
        The file cannot be read (e.g. ``FileNotFoundError``).
    ImportError
        A ``.safetensors`` file without the ``safetensors`` package.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(9)
        f.seek(0)
        try:
            if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
                host, meta = _read_zip(f, _model_members)
            elif len(head) >= 9 and head[8:9] == b"{":
                host, meta = _read_safetensors(f.read(), _model_members)
            elif not head:
                raise _Bad("is empty")
            else:
                raise _Bad("is neither a .npz (zip) nor a .safetensors file")
            try:
                source_dtype = host_dtype(host, "members")
            except TypeError as error:
                raise _Bad(str(error)) from None
        except _Bad as error:
            raise ValueError(f"{os.fsdecode(path)}: {error}") from None
    return _model_spec(meta), to_target(host, like, xp, dtype, device, source_dtype=source_dtype)
