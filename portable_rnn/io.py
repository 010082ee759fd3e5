r"""Save and load a layer spec with its parameters: ``.npz`` and ``.safetensors``.

A file holds one :mod:`portable_rnn.layers` spec and its parameters (PyTorch's
``state_dict`` names)::

    save("model.npz", spec, params)            # or "model.safetensors"
    spec, params = load("model.npz", like=x)   # arrays on x's backend and device

Formats
-------
``.npz``
    A zip of ``.npy`` members written by :func:`numpy.savez` from host copies:
    one per parameter, plus ``__spec__``, a 1-D ``uint8`` array holding the
    UTF-8 JSON metadata.
``.safetensors``
    Needs the ``safetensors`` package. The tensors are the parameters; the
    JSON metadata is the ``"portable_rnn"`` entry of the header's
    ``__metadata__``.

The metadata is ``{"format": "portable_rnn", "version": 1, "spec": {...},
"writer": "portable_rnn <version>"}`` where ``spec`` is :func:`spec_to_dict`
(``{"mode": "lstm", "input_size": 5, ...}``). A reader refuses a newer
``version``.

Safety
------
- Writes are atomic: a temporary file in the target directory, ``fsync``,
  then :func:`os.replace`; a failed save leaves any previous file intact.
- Nothing is ever unpickled (``allow_pickle=False`` throughout): an entry that
  holds an object array is refused.
- The whole file is read once and checked before anything is returned:
  corrupt, truncated or foreign files, unknown or missing entries, shapes
  that do not fit the spec, dtypes other than float32/float64, or entries
  larger than their shape needs raise ``ValueError`` naming the file and what
  is wrong. Nothing is half-loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io as _io
import json
import os
import secrets
import zipfile
from collections.abc import Mapping

import numpy as np

from .interop import _SPECS, _check_names, _check_spec, _convert, _host_params

__all__ = ["save", "load", "spec_to_dict", "spec_from_dict", "FORMAT_VERSION"]

#: Version of the metadata this module writes (and the newest it reads).
FORMAT_VERSION = 1
_FORMAT = "portable_rnn"
_SPEC_KEY = "__spec__"
_SAFETENSORS_KEY = "portable_rnn"
_MAX_META_BYTES = 1 << 20  # the JSON is a few hundred bytes
_NPY_HEADER_SLACK = 1 << 16  # .npy header (v1 caps it at 64 KiB)


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
    _check_spec(spec)
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
    if mode not in _SPECS:
        raise ValueError(f"spec 'mode' must be one of {list(_SPECS)}, got {mode!r}")
    cls = _SPECS[mode]
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k != "mode" and k not in fields]
    if unknown:
        raise ValueError(f"spec data has unknown key(s) {unknown} for {cls.__name__}; known: {['mode', *fields]}")
    kwargs = {k: v for k, v in data.items() if k != "mode"}
    try:
        return cls(**kwargs)
    except TypeError as error:  # missing required fields
        raise ValueError(f"spec data does not describe a {cls.__name__}: {error}") from None


# --------------------------------------------------------------------------- save


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

    Missing parent folders are created. Used by :func:`save` and by the
    training checkpoints, history and plots.
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


def _metadata(spec) -> str:
    from . import __version__

    return json.dumps(
        {"format": _FORMAT, "version": FORMAT_VERSION, "spec": spec_to_dict(spec),
         "writer": f"portable_rnn {__version__}"},
        sort_keys=True,
    )


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
    host, _ = _host_params(spec, params)
    meta = _metadata(spec)
    if fmt == "npz":
        entries = {_SPEC_KEY: np.frombuffer(meta.encode("utf-8"), dtype=np.uint8).copy(), **host}
        atomic_write(path, lambda f: np.savez(f, **entries))
    else:
        st = _safetensors()
        blob = st.save(host, metadata={_SAFETENSORS_KEY: meta})
        atomic_write(path, lambda f: f.write(blob))


# --------------------------------------------------------------------------- load


class _Bad(Exception):
    """Internal: what is wrong with a file (re-raised as ValueError naming the file)."""


def _parse_metadata(raw: bytes, where: str):
    if len(raw) > _MAX_META_BYTES:
        raise _Bad(f"{where} is {len(raw)} bytes, larger than any portable_rnn metadata")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise _Bad(f"{where} is not UTF-8 JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise _Bad(f"{where} is not portable_rnn metadata (no \"format\": \"{_FORMAT}\")")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _Bad(f"{where} has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise _Bad(
            f"was written by a newer portable_rnn (format version {version}); "
            f"this version reads up to {FORMAT_VERSION}"
        )
    try:
        return spec_from_dict(meta.get("spec"))
    except (TypeError, ValueError) as error:
        raise _Bad(f"{where} has an invalid spec: {error}") from None


def _check_entries(spec, arrays: dict) -> tuple[dict, str]:
    """Names, shapes and dtypes of the loaded host arrays against ``spec``."""
    shapes = spec.param_shapes()
    _check_names(f"entries do not fit {spec!r}", arrays, shapes, error=_Bad)
    out, dtype = {}, None
    for key, shape in shapes.items():
        a = arrays[key]
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
            what = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise _Bad(f"entry {key!r} has dtype {what}; expected float32 or float64")
        if tuple(a.shape) != tuple(shape):
            raise _Bad(f"entry {key!r} has shape {tuple(a.shape)}; {spec!r} needs {tuple(shape)}")
        a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("="), copy=False))
        if dtype is None:
            dtype = a.dtype
        elif a.dtype != dtype:
            raise _Bad(f"entry {key!r} has dtype {a.dtype} but the others have {dtype}")
        out[key] = a
    return out, ("float64" if dtype == np.float64 else "float32")


def _npy_header(raw: bytes, key: str):
    """Shape and dtype from a .npy header, read without touching the data (or any pickle)."""
    fp = _io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            shape, _, dtype = np.lib.format._read_array_header(fp, version)
    except Exception as error:
        raise _Bad(f"entry {key!r} is not a valid .npy array ({type(error).__name__}: {error})") from None
    if dtype.hasobject:
        raise _Bad(
            f"entry {key!r} holds a pickled object array (dtype {dtype}); portable_rnn never "
            "unpickles, refusing to load it"
        )
    return tuple(shape), dtype


def _read_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, check):
    """Read one member after ``check(shape, dtype)`` has approved its header."""
    raw = zf.read(info)
    shape, dtype = _npy_header(raw, key)
    check(shape, dtype)
    try:
        return np.lib.format.read_array(_io.BytesIO(raw), allow_pickle=False)
    except Exception as error:
        raise _Bad(f"entry {key!r} is not a valid .npy array ({type(error).__name__}: {error})") from None


def _check_size(info: zipfile.ZipInfo, key: str, limit: int):
    if info.file_size > limit:
        raise _Bad(f"entry {key!r} declares {info.file_size} bytes, more than it can need ({limit})")


def _load_npz(data: bytes):
    try:
        zf = zipfile.ZipFile(_io.BytesIO(data))
        infos = zf.infolist()
    except Exception as error:
        raise _Bad(f"is not a readable .npz (zip) file ({type(error).__name__}: {error})") from None
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise _Bad("has duplicate zip members")
    bad = [n for n in names if not n.endswith(".npy")]
    if bad:
        raise _Bad(f"has zip members that are not .npy arrays: {bad}")
    by_key = {n[: -len(".npy")]: i for n, i in zip(names, infos)}
    if _SPEC_KEY not in by_key:
        raise _Bad(f"has no {_SPEC_KEY!r} entry: it was not written by portable_rnn.io.save")
    try:
        def spec_entry(shape, dtype):
            if dtype != np.uint8 or len(shape) != 1:
                raise _Bad(f"entry {_SPEC_KEY!r} must be a 1-D uint8 array, got {dtype} {shape}")

        _check_size(by_key[_SPEC_KEY], _SPEC_KEY, _MAX_META_BYTES + _NPY_HEADER_SLACK)
        raw = _read_npy(zf, by_key[_SPEC_KEY], _SPEC_KEY, spec_entry)
        spec = _parse_metadata(raw.tobytes(), f"entry {_SPEC_KEY!r}")
        shapes = spec.param_shapes()
        _check_names(f"entries do not fit {spec!r}", [k for k in by_key if k != _SPEC_KEY], shapes, error=_Bad)
        arrays = {}
        for key, expected in shapes.items():

            def param_entry(shape, dtype, key=key, expected=expected):
                if dtype.kind != "f" or dtype.itemsize not in (4, 8):
                    raise _Bad(f"entry {key!r} has dtype {dtype}; expected float32 or float64")
                if shape != tuple(expected):
                    raise _Bad(f"entry {key!r} has shape {shape}; {spec!r} needs {tuple(expected)}")

            _check_size(by_key[key], key, int(np.prod(expected, dtype=np.int64)) * 8 + _NPY_HEADER_SLACK)
            arrays[key] = _read_npy(zf, by_key[key], key, param_entry)
    except _Bad:
        raise
    except Exception as error:  # CRC errors, truncated members, bad compression
        raise _Bad(f"is corrupt ({type(error).__name__}: {error})") from None
    return spec, arrays


def _load_safetensors(data: bytes):
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise _Bad(f"is truncated: its header claims {n} bytes but only {len(data) - 8} follow")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise _Bad(f"has a header that is not UTF-8 JSON ({error})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or _SAFETENSORS_KEY not in meta:
        raise _Bad(f"has no {_SAFETENSORS_KEY!r} metadata: it was not written by portable_rnn.io.save")
    if not isinstance(meta[_SAFETENSORS_KEY], str):
        raise _Bad(f"has non-string {_SAFETENSORS_KEY!r} metadata")
    spec = _parse_metadata(meta[_SAFETENSORS_KEY].encode("utf-8"), "the metadata")
    st = _safetensors()
    try:
        arrays = st.load(data)
    except Exception as error:  # safetensors' own SafetensorError and friends
        raise _Bad(f"is corrupt ({type(error).__name__}: {error})") from None
    return spec, arrays


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
        entries do not fit its spec. The message starts with the path.
    OSError
        The file cannot be read (e.g. ``FileNotFoundError``).
    ImportError
        A ``.safetensors`` file without the ``safetensors`` package.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            spec, arrays = _load_npz(data)
        elif len(data) >= 9 and data[8:9] == b"{":
            spec, arrays = _load_safetensors(data)
        elif not data:
            raise _Bad("is empty")
        else:
            raise _Bad("is neither a .npz (zip) nor a .safetensors file")
        host, source_dtype = _check_entries(spec, arrays)
    except _Bad as error:
        raise ValueError(f"{os.fsdecode(path)}: {error}") from None
    return spec, _convert(host, like, xp, dtype, device, source_dtype=source_dtype)
