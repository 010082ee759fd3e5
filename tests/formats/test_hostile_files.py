"""Hostile files: every reader refuses them in one line, at once, in bounded memory.

Each attack is built here at a small scale (megabytes where the real one
claims gigabytes) and checked twice: the refusal (a one-line ``ValueError``
naming the problem; for the command line, exit status 2 and one line on
stderr) and what it cost (the ``tracemalloc`` peak, which counts NumPy's
arrays too). Files that never end (a FIFO, ``/dev/zero``) are read in a
subprocess under an address-space limit and a timeout, so a regression fails
instead of hanging or exhausting the machine. None of this depends on the
array backend: every test runs once.
"""

from __future__ import annotations

import bz2
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import portable_rnn
from portable_rnn import io as prnn_io
from portable_rnn.app import cli
from portable_rnn.app.checkpoint import CHECKPOINT, load_checkpoint
from portable_rnn.layers import RNN

MiB = 1 << 20
#: What a refusal may cost at most, whatever the file claims.
SMALL = 2 * MiB
#: Longest one-line message accepted.
SHORT = 300

HAVE_FIFO = hasattr(os, "mkfifo")
HAVE_DEV_ZERO = os.path.exists("/dev/zero")


# --------------------------------------------------------------------------- building files


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _npy_header(shape, descr="<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def _json_member(text: str) -> bytes:
    return _npy(np.frombuffer(text.encode(), dtype=np.uint8))


def _model_meta(**spec) -> str:
    return json.dumps({"format": "portable_rnn", "version": 1, "writer": "test", "spec": spec})


def _zip(members: dict, compression=zipfile.ZIP_STORED) -> bytes:
    """A zip of ``name -> bytes``, or ``name -> (header, n zero bytes)`` streamed (the zeros never in memory)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, raw in members.items():
            if isinstance(raw, bytes):
                zf.writestr(name, raw)
                continue
            header, n = raw
            with zf.open(name, "w", force_zip64=True) as member:
                member.write(header)
                for start in range(0, n, MiB):
                    member.write(bytes(min(MiB, n - start)))
    return buf.getvalue()


def _raw_zip(entries) -> bytes:
    """A zip written by hand, whose directory may lie: ``entries`` are dicts with ``name``, ``data``, and
    optionally ``method`` (0), ``crc`` (of data), ``size`` and ``csize`` (declared sizes, default the
    data's) and ``alias`` (point this directory entry at another entry's bytes, writing none)."""
    out, directory, offsets = bytearray(), bytearray(), {}
    for entry in entries:
        name, data = entry["name"].encode(), entry.get("data", b"")
        method, crc = entry.get("method", 0), entry.get("crc", zlib.crc32(data))
        size, csize = entry.get("size", len(data)), entry.get("csize", len(data))
        if "alias" in entry:
            offset, method, crc, size, csize = offsets[entry["alias"]]
        else:
            offset = len(out)
            offsets[entry["name"]] = offset, method, crc, size, csize
            out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, csize, size, len(name), 0)
            out += name + data
        directory += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, csize, size,
                                 len(name), 0, 0, 0, 0, 0, offset) + name
    n = len(entries)
    return bytes(out + directory + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(directory), len(out), 0))


def _compress(method, prefix: bytes, zeros: int) -> bytes:
    """``prefix`` and ``zeros`` zero bytes, compressed with a zip method."""
    compressor = {
        zipfile.ZIP_DEFLATED: lambda: zlib.compressobj(9, zlib.DEFLATED, -15),
        zipfile.ZIP_BZIP2: lambda: bz2.BZ2Compressor(9),
        zipfile.ZIP_LZMA: zipfile.LZMACompressor,
    }[method]()
    parts = [compressor.compress(prefix)]
    parts += [compressor.compress(bytes(min(MiB, zeros - start))) for start in range(0, zeros, MiB)]
    return b"".join([*parts, compressor.flush()])


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _safetensors(header: dict | bytes, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


def _safetensors_header(meta: str, **tensors) -> dict:
    return {"__metadata__": {"portable_rnn": meta}, **tensors}


# --------------------------------------------------------------------------- measuring


def _refused(call, match: str):
    """Run ``call()``: it must raise a short one-line ``ValueError`` matching ``match``; return its tracemalloc peak."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match) as info:
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "\n" not in message and len(message) <= SHORT, message[:1000]
    return peak


def _run_isolated(code: str, *args, timeout=30, memory=512 * MiB) -> str:
    """Run ``code`` in a fresh Python on this very portable_rnn, under ``memory`` bytes of address space."""
    prelude = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(portable_rnn.__file__).parents[1]), "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *map(str, args)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still reading after {timeout} s: it blocks or never ends")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


# --------------------------------------------------------------------------- sizes claimed by the spec


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_a_spec_with_absurd_sizes_is_refused_before_its_names_are_listed(tmp_path, fmt):
    """``num_layers=10**5`` asks for 400,000 arrays in a file holding none: refused by arithmetic."""
    path = tmp_path / f"m.{fmt}"
    for layers, held in [(10**5, "0"), (10**12, "0")]:
        meta = _model_meta(mode="lstm", input_size=2, hidden_size=2, num_layers=layers)
        raw = (_zip({"__spec__.npy": _json_member(meta)}) if fmt == "npz"
               else _safetensors(_safetensors_header(meta)))
        path.write_bytes(raw)
        peak = _refused(lambda: prnn_io.load(path), rf"asks for {4 * layers:,}, the file holds {held}$")
        assert peak < SMALL, peak


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_a_spec_asking_for_more_bytes_than_the_file_holds_is_refused(tmp_path, fmt):
    """``input_size=2**27`` needs 512 MiB of weights; the two tiny arrays present cannot hold them."""
    meta = _model_meta(mode="rnn", input_size=2**27, hidden_size=1, bias=False)
    small = np.zeros((1, 1), "<f4")
    path = tmp_path / f"m.{fmt}"
    if fmt == "npz":
        path.write_bytes(_zip({"__spec__.npy": _json_member(meta), "weight_ih_l0.npy": _npy(small),
                               "weight_hh_l0.npy": _npy(small)}))
    else:
        entry = {"dtype": "F32", "shape": [1, 1]}
        header = _safetensors_header(meta, weight_ih_l0={**entry, "data_offsets": [0, 4]},
                                     weight_hh_l0={**entry, "data_offsets": [4, 8]})
        path.write_bytes(_safetensors(header, bytes(8)))
    peak = _refused(lambda: prnn_io.load(path), r"holds at most \d+ bytes of arrays; its metadata asks for 536,870,9")
    assert peak < SMALL, peak


def test_a_compressed_member_costs_its_array_once(tmp_path):
    """An honest, highly compressed 8 MiB weight (a 10 KB file) loads with one copy of it, not three."""
    n = MiB  # float64: 8 MiB
    path = tmp_path / "m.npz"
    path.write_bytes(_zip({
        "__spec__.npy": _json_member(_model_meta(mode="rnn", input_size=n, hidden_size=1, bias=False)),
        "weight_ih_l0.npy": (_npy_header((1, n)), 8 * n),
        "weight_hh_l0.npy": _npy(np.zeros((1, 1))),
    }, zipfile.ZIP_DEFLATED))
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    try:
        spec, params = prnn_io.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert spec.input_size == n and params["weight_ih_l0"].shape == (1, n) and not params["weight_ih_l0"].any()
    assert peak < 8 * n * 1.25 + SMALL, peak


# --------------------------------------------------------------------------- zip members


def _rnn_meta(input_size=2, hidden_size=3) -> bytes:
    return _json_member(_model_meta(mode="rnn", input_size=input_size, hidden_size=hidden_size, bias=False))


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA],
                         ids=["deflated", "bzip2", "lzma"])
def test_a_member_that_expands_past_its_declared_size_is_refused(tmp_path, method):
    """The zip directory says 152 bytes (the right .npy header and data); the stream goes on for 32 MiB."""
    weight = _npy(np.zeros((3, 2), "<f4"))
    path = tmp_path / "m.npz"
    path.write_bytes(_raw_zip([
        {"name": "__spec__.npy", "data": _rnn_meta()},
        {"name": "weight_ih_l0.npy", "data": _compress(method, weight, 32 * MiB), "method": method,
         "crc": zlib.crc32(weight), "size": len(weight)},
        {"name": "weight_hh_l0.npy", "data": _npy(np.zeros((3, 3), "<f4"))},
    ]))
    match = ("inflates past its declared 152 bytes" if method == zipfile.ZIP_DEFLATED
             else "only stored and deflated members are read")
    assert _refused(lambda: prnn_io.load(path), match) < SMALL


def test_members_are_not_read_before_the_metadata_is_checked(tmp_path):
    """Three members declaring 16 MiB each (a few KB of deflate) beside missing, foreign or nested metadata."""
    huge = {f"m{i}.npy": (_npy_header((2 * MiB,)), 16 * MiB) for i in range(3)}
    path = tmp_path / "a.npz"
    for meta, match in [(None, "no '__spec__' member"),
                        ('{"format": "someone.else"}', "not portable_rnn metadata"),
                        ('{"a": ' + _nested(40) + "}", "nests JSON deeper than 32 levels")]:
        members = huge if meta is None else {"__spec__.npy": _json_member(meta), **huge}
        path.write_bytes(_zip(members, zipfile.ZIP_DEFLATED))
        assert path.stat().st_size < 200_000
        assert _refused(lambda: prnn_io.load(path), match) < SMALL


def test_a_stored_member_reaching_past_the_end_of_the_file_is_refused_before_its_array_exists(tmp_path):
    """The spec needs a 32 MiB weight and the directory declares it, but the file holds only its header."""
    header = _npy_header((1, 8 * MiB), "<f4")
    path = tmp_path / "m.npz"
    path.write_bytes(_raw_zip([
        {"name": "__spec__.npy", "data": _rnn_meta(input_size=8 * MiB, hidden_size=1)},
        {"name": "weight_ih_l0.npy", "data": header, "size": len(header) + 32 * MiB,
         "csize": len(header) + 32 * MiB},
        {"name": "weight_hh_l0.npy", "data": _npy(np.zeros((1, 1), "<f4"))},
    ]))
    assert _refused(lambda: prnn_io.load(path), "member 'weight_ih_l0.npy' ends past the end of the file") < SMALL


def test_members_that_share_their_bytes_are_refused(tmp_path):
    """A zip bomb's trick: two directory entries pointing at the same bytes."""
    path = tmp_path / "m.npz"
    path.write_bytes(_raw_zip([
        {"name": "__spec__.npy", "data": _rnn_meta(input_size=2048)},
        {"name": "weight_ih_l0.npy", "data": _npy(np.zeros((3, 2048), "<f4"))},
        {"name": "weight_hh_l0.npy", "alias": "weight_ih_l0.npy"},
    ]))
    assert _refused(lambda: prnn_io.load(path), "its zip members overlap") < SMALL


# --------------------------------------------------------------------------- JSON


@pytest.mark.parametrize("depth", [33, 100, 5000])
def test_deeply_nested_json_is_refused_in_every_place_it_is_read(tmp_path, depth):
    spec = {"mode": "rnn", "input_size": 2, "hidden_size": 3}
    nested_meta = json.dumps({"format": "portable_rnn", "version": 1, "spec": spec}).replace(
        '"version": 1', f'"version": {_nested(depth)}')
    files = {
        "meta.npz": _zip({"__spec__.npy": _json_member(nested_meta)}),
        "meta.safetensors": _safetensors(_safetensors_header(nested_meta)),
        "header.safetensors": _safetensors(b'{"__metadata__": {"portable_rnn": "{}"}, "x": ' + _nested(depth).encode()
                                           + b"}"),
    }
    for name, raw in files.items():
        path = tmp_path / name
        path.write_bytes(raw)
        assert _refused(lambda: prnn_io.load(path), "nests JSON deeper than 32 levels") < SMALL, name
    with pytest.raises(ValueError, match="nests JSON deeper than 32 levels"):
        prnn_io.write_archive(tmp_path / "w.npz", {}, {"a": json.loads(_nested(min(depth, 500)))})
    assert not (tmp_path / "w.npz").exists()


def test_metadata_and_headers_have_a_size_limit(tmp_path):
    """1 MiB of JSON at most, in an archive (read or written) and in a safetensors header."""
    path = tmp_path / "a.npz"
    big = json.dumps({"pad": " " * MiB})
    path.write_bytes(_zip({"__spec__.npy": _json_member(big)}))
    assert _refused(lambda: prnn_io.load(path), r"more than the 1048576 accepted|more than it can need") < SMALL
    with pytest.raises(ValueError, match="more than the 1048576 a reader accepts"):
        prnn_io.write_archive(tmp_path / "w.npz", {}, json.loads(big))
    path = tmp_path / "a.safetensors"
    path.write_bytes(_safetensors(b"{" + b" " * (4 * MiB) + b"}"))
    assert _refused(lambda: prnn_io.load(path), "has a 4194306-byte header, more than the 1048576 accepted") < SMALL
    path.write_bytes((1 << 62).to_bytes(8, "little") + b'{"a": 1}')
    assert _refused(lambda: prnn_io.load(path), "its header claims 4611686018427387904 bytes but only 8") < SMALL


# --------------------------------------------------------------------------- safetensors offsets


@pytest.mark.parametrize("offsets, length, match", [
    ([[0, 1 << 40], [24, 60]], 60, r"has data offsets \[0, 1099511627776\]; expected two ints 24 apart"),
    ([[-24, 0], [0, 36]], 60, r"has data offsets \[-24, 0\]"),
    ([[0, 24], [12, 48]], 60, "overlap or leave gaps"),
    ([[0, 24], [30, 66]], 60, "overlap or leave gaps"),
    ([[0, 24], [24, 60]], 66, "has 66 bytes of tensor data; its header accounts for 60"),
])
def test_safetensors_offsets_are_checked_before_any_data_is_read(tmp_path, offsets, length, match):
    meta = _model_meta(mode="rnn", input_size=2, hidden_size=3, bias=False)
    header = _safetensors_header(meta, weight_ih_l0={"dtype": "F32", "shape": [3, 2], "data_offsets": offsets[0]},
                                 weight_hh_l0={"dtype": "F32", "shape": [3, 3], "data_offsets": offsets[1]})
    path = tmp_path / "m.safetensors"
    path.write_bytes(_safetensors(header, bytes(length)))
    assert _refused(lambda: prnn_io.load(path), match) < SMALL


# --------------------------------------------------------------------------- files that are not regular


_READ = """
    import contextlib, io as _io
    from portable_rnn import io
    from portable_rnn.app import cli
    kind, path = sys.argv[1:3]
    try:
        if kind == "load":
            io.load(path)
        elif kind == "archive":
            io.read_archive(path, lambda meta: {})
        else:
            argv = ["sample", path] if kind == "sample" else ["train", "--text", path, "--out", sys.argv[3]]
            err = _io.StringIO()
            with contextlib.redirect_stderr(err):
                code = cli.main(argv)
            print(f"exit {code}: {err.getvalue()}")
            sys.exit(0)
        print("read it")
    except ValueError as error:
        print(f"ValueError: {error}")
"""


@pytest.mark.parametrize("kind", ["load", "archive", "sample", "train --text"])
@pytest.mark.parametrize("target", [
    pytest.param("fifo", marks=pytest.mark.skipif(not HAVE_FIFO, reason="no FIFOs (os.mkfifo) on this platform")),
    pytest.param("/dev/zero", marks=pytest.mark.skipif(not HAVE_DEV_ZERO, reason="no /dev/zero on this platform")),
])
@pytest.mark.processes
def test_fifos_and_devices_are_refused_at_once(tmp_path, kind, target):
    """A FIFO nobody writes to would block ``open``; ``/dev/zero`` never ends: both are refused, promptly."""
    path = tmp_path / "model.npz"
    if target == "fifo":
        os.mkfifo(path)
        problem = f"{path}: is a FIFO (named pipe), not a regular file"
    else:
        path.symlink_to(target)
        problem = f"{path}: is a character device, not a regular file"
    out = _run_isolated(_READ, kind.split()[0], path, tmp_path / "run", timeout=30)
    expected = {
        "load": f"ValueError: {problem}",
        "archive": f"ValueError: {problem}",
        "sample": f"exit 2: portable-rnn sample: error: checkpoint {problem}",
        "train --text": f"exit 2: portable-rnn train: error: text file {problem}",
    }[kind]
    assert out == expected


def test_a_directory_is_refused_and_a_link_to_a_regular_file_is_read(tmp_path):
    (tmp_path / "folder").mkdir()
    assert _refused(lambda: prnn_io.load(tmp_path / "folder"), "folder: is a directory, not a regular file") < SMALL
    spec = RNN(2, 3)
    prnn_io.save(tmp_path / "real.npz", spec, spec.init())
    try:
        (tmp_path / "link.npz").symlink_to(tmp_path / "real.npz")
    except OSError as error:  # Windows without the privilege
        pytest.skip(f"cannot make a symbolic link here: {error}")
    assert prnn_io.load(tmp_path / "link.npz")[0] == spec


# --------------------------------------------------------------------------- checkpoints on the command line


TINY = ["--hidden", "8", "--embed", "4", "--seq-len", "8", "--batch", "4", "--progress", "none"]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A tiny checkpoint's members (raw bytes) and its metadata as JSON text."""
    out = tmp_path_factory.mktemp("good")
    assert cli.main(["train", *TINY, "--steps", "2", "--out", str(out)]) == 0
    with zipfile.ZipFile(out / CHECKPOINT) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    meta = np.load(io.BytesIO(members.pop("__spec__.npy"))).tobytes().decode()
    return members, meta


def _edit(change):
    """A change of the metadata (a dict, changed in place) as a change of its JSON text."""

    def edit(text):
        meta = json.loads(text)
        change(meta)
        return json.dumps(meta)

    return edit


def _set(*keys_and_value):
    """``_set("train", "dtype", "int64")``: one value of the metadata replaced."""
    *keys, value = keys_and_value

    def change(meta):
        for key in keys[:-1]:
            meta = meta[key]
        meta[keys[-1]] = value

    return _edit(change)


def _text(old, new):
    """A change of the metadata's JSON text itself (for what ``json.dumps`` never writes, like 1e400)."""

    def edit(text):
        assert old in text, (old, text)
        return text.replace(old, new)

    return edit


def _layers(meta):
    meta["model"]["num_layers"] = meta["train"]["layers"] = 10**8


#: Hostile checkpoints: a change of the good metadata, and what the one line on stderr must say.
HOSTILE = {
    "nested metadata": (_set("extra", json.loads(_nested(40))), "nests JSON deeper than 32 levels"),
    "nested model": (_text('"hidden_size": 8', f'"hidden_size": {_nested(900)}'), "nests JSON deeper than 32"),
    "nested but not too deep": (_set("model", "hidden_size", json.loads(_nested(30))),
                                "model: hidden_size must be an int >= 1, got [[[["),
    "step 1e400": (_text('"step": 2', '"step": 1e400'), "step must be an int >= 0, got inf"),
    "step NaN": (_text('"step": 2', '"step": NaN'), "step must be an int >= 0, got nan"),
    "step a string": (_set("step", "2"), "step must be an int >= 0, got '2'"),
    "dtype int64": (_set("train", "dtype", "int64"), "train.dtype must be one of ['float32', 'float64'], got 'int64'"),
    "a list in the vocabulary": (_edit(lambda m: m.update(vocab=[*m["vocab"][:-1], ["x"]])),
                                 "vocab: the vocabulary must be a non-empty string"),
    "duplicates in the vocabulary": (_edit(lambda m: m.update(vocab=m["vocab"][:-1] + m["vocab"][0])),
                                     "vocab: the vocabulary repeats characters"),
    "a lone surrogate in the vocabulary": (_edit(lambda m: m.update(vocab=m["vocab"][:-1] + "\ud800")),
                                           "vocab: the vocabulary holds a lone surrogate"),
    "vocabulary of another size": (_edit(lambda m: m.update(vocab=m["vocab"][:-1])), "the vocabulary has"),
    "negative hidden size": (_set("model", "hidden_size", -8), "model: hidden_size must be an int >= 1, got -8"),
    "absurd hidden size": (_edit(lambda m: (m["model"].update(hidden_size=10**9), m["train"].update(hidden=10**9))),
                           "bytes of arrays; its metadata asks for"),
    "10**8 layers": (_edit(_layers), "is missing member(s): its metadata asks for 1,200,000,016"),
    "absurd batch": (_set("train", "batch", 10**12), "its metadata asks for 64,000,000,0"),
    "train and model disagree": (_set("train", "hidden", 16), "train.hidden is 16 but model.hidden_size is 8"),
    "lr infinite": (_text('"lr": 0.003', '"lr": Infinity'), "train.lr must be a finite number > 0"),
    "truncate zero": (_set("train", "truncate", 0), "train.truncate must be None or a positive int"),
    "batch a bool": (_set("train", "batch", True), "train.batch must be an int >= 1, got True"),
    "groups a string": (_set("groups", "opt carry"), "groups must be a list of distinct names"),
    "groups unknown": (_set("groups", ["opt", ["carry"]]), "groups must be a list of distinct names"),
    "prime a list": (_set("prime", ["x"]), "prime must be a non-empty string, got list"),
    "prime outside the vocabulary": (_set("prime", "\u00e9"), "prime has characters outside the vocabulary"),
    "sha256 not hex": (_set("text", "sha256", "x" * 64), "text.sha256 must be 64 lowercase hexadecimal digits"),
    "model with an unknown field": (_set("model", "dropout", 0.5), "model: unexpected ['dropout']"),
    "wall time negative": (_set("wall_s", -1.0), "wall_s must be a finite number >= 0"),
    "history length negative": (_set("history_len", -1), "history_len must be an int >= 0"),
    "no history length": (_edit(lambda m: m.pop("history_len")), "metadata lacks ['history_len']"),
    "model without a field": (_edit(lambda m: m["model"].pop("embed_size")), "model: missing ['embed_size']"),
    "rotated vocabulary": (_edit(lambda m: m.update(vocab=m["vocab"][1:] + m["vocab"][0])),
                           "vocab is not in sorted order, as training writes it"),
    "split shifted": (_edit(lambda m: m["split"].update(train_chars=m["split"]["train_chars"] - m["split"]["val_chars"],
                                                        val_chars=2 * m["split"]["val_chars"])),
                      "-character text with train.val_fraction 0.1 splits at"),
    "step 2**40": (_set("step", 2**40), "must satisfy step <= train.steps <= 2147483647"),
    "train.steps past the Adam counter": (_set("train", "steps", 2**31), "train.steps 2147483648 must satisfy"),
    "seq_len 10**12": (_set("train", "seq_len", 10**12), "train.seq_len 1000000000000 is not shorter than the"),
}


def _hostile(good, tmp_path, edit=None) -> Path:
    """The good checkpoint with its metadata text passed through ``edit``, in a folder of its own."""
    members, text = good
    folder = tmp_path / "run"
    folder.mkdir()
    meta = _json_member(text if edit is None else edit(text))
    (folder / CHECKPOINT).write_bytes(_zip({"__spec__.npy": meta, **members}))
    return folder


def _one_line_exit_2(argv, capsys):
    """Run the CLI: exit status 2 and one line on stderr, in bounded memory; return the line."""
    capsys.readouterr()
    tracemalloc.start()
    try:
        code = cli.main(argv)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (code, err[-2000:])
    assert len(err) <= SHORT + 100 and peak < 4 * MiB, (len(err), peak)
    return err


def _every_reader(folder, tmp_path):
    """The commands that read a checkpoint, each given ``folder``."""
    pytest.importorskip("dask.array", reason="score runs on Dask: the dask extra is not installed")
    pytest.importorskip("distributed", reason="score runs on Dask: the dask extra is not installed")
    other = tmp_path / "other.txt"
    other.write_text("abc abc\n" * 20)
    return (["sample", str(folder)], ["eval", str(folder), "--text", str(other)], ["score", str(folder), str(other)],
            ["train", "--resume", "--out", str(folder), *TINY])


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_checkpoint_is_one_line_and_exit_2(good, tmp_path, capsys, case):
    change, expected = HOSTILE[case]
    folder = _hostile(good, tmp_path, change)
    for argv in _every_reader(folder, tmp_path):
        err = _one_line_exit_2(argv, capsys)
        assert err.startswith(f"portable-rnn {argv[0]}: error: checkpoint {folder / CHECKPOINT}: ")
        assert expected in err, err


def _member(name, change):
    """A change of one array member of the good checkpoint (``change(array) -> array``)."""

    def edit(members):
        a = np.load(io.BytesIO(members[name]))
        return {**members, name: _npy(change(a))}

    return edit


#: Hostile arrays: a change of the good checkpoint's members, and what the one line must say.
HOSTILE_ARRAYS = {
    "Adam step out of range": (_member("opt/step.npy", lambda a: np.asarray(-5, dtype=np.int64)),
                               "opt/step is -5 but the run's step is 2"),
    "Adam step at the counter's maximum": (_member("opt/step.npy", lambda a: np.asarray(2**31 - 1, dtype=np.int64)),
                                           "opt/step is 2147483647 but the run's step is 2"),
    "NaN weights": (_member("params/rnn.weight_hh_l0.npy", lambda a: np.full_like(a, np.nan)),
                    "params/rnn.weight_hh_l0 holds values that are not finite"),
    "infinite carried state": (_member("carry/c.npy", lambda a: np.full_like(a, np.inf)),
                               "carry/c holds values that are not finite"),
    "negative second moments": (_member("opt/exp_avg_sq/rnn.weight_ih_l0.npy", lambda a: -1 - a),
                                "opt/exp_avg_sq/rnn.weight_ih_l0 holds negative values"),
}


@pytest.mark.parametrize("case", list(HOSTILE_ARRAYS))
def test_hostile_arrays_are_refused_by_every_command(good, tmp_path, capsys, case):
    change, expected = HOSTILE_ARRAYS[case]
    members, text = good
    folder = _hostile((change(members), text), tmp_path)
    for argv in _every_reader(folder, tmp_path):
        err = _one_line_exit_2(argv, capsys)
        assert err.startswith(f"portable-rnn {argv[0]}: error: checkpoint {folder / CHECKPOINT}: "), err
        assert expected in err, err


def test_resume_refuses_a_text_source_that_is_not_a_regular_file(good, tmp_path, capsys):
    """The checkpoint names the text it was trained on; ``--resume`` reads it, but never a device."""
    if not HAVE_DEV_ZERO:
        pytest.skip("no /dev/zero on this platform")
    folder = _hostile(good, tmp_path, _set("text", "source", "/dev/zero"))
    err = _one_line_exit_2(["train", "--resume", "--out", str(folder), *TINY], capsys)
    assert "text file /dev/zero: is a character device, not a regular file" in err


def test_a_text_file_over_the_limit_is_refused_unread(tmp_path, capsys):
    path = tmp_path / "huge.txt"
    with open(path, "wb") as f:
        f.truncate((1 << 30) + 1)  # 1 GiB is the limit; sparse where the file system allows it
    err = _one_line_exit_2(["train", "--text", str(path), "--out", str(tmp_path / "run")], capsys)
    assert f"text file {str(path)!r} is 1,073,741,825 bytes, more than the 1,073,741,824" in err


def test_the_good_checkpoint_still_loads(good, tmp_path):
    """The crafting above changes only what each case says: unchanged, the checkpoint loads."""
    folder = _hostile(good, tmp_path)
    ckpt = load_checkpoint(folder)
    assert ckpt.meta["step"] == 2 and ckpt.meta["history"]["step"] == [1, 2]


def test_a_replaced_vocabulary_character_is_refused_where_the_text_is_read(good, tmp_path, capsys):
    """Sorted still, so the file alone cannot tell; the run's text can: --resume and eval rebuild its vocabulary."""
    folder = _hostile(good, tmp_path, _edit(lambda m: m.update(vocab=m["vocab"][:-1] + "\u2603")))
    for argv in (["train", "--resume", "--out", str(folder), *TINY], ["eval", str(folder)]):
        err = _one_line_exit_2(argv, capsys)
        assert "the checkpoint's vocabulary is not the one" in err and "produces (the file was edited)" in err, err
