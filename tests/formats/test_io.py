"""portable_rnn.io: save/load round trips on every backend, and hostile files.

Round trips must be bit for bit. Every damaged, foreign or malicious file must
raise ``ValueError`` whose message starts with the path (never a zipfile,
KeyError or pickle error), and nothing may be returned half-loaded.
"""

from __future__ import annotations

import collections
import io
import itertools
import json
import math
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portable_rnn import io as prnn_io
from portable_rnn.interop._common import param_count
from portable_rnn.layers import GRU, LSTM, RNN

from ..helpers import assert_on_backend

try:
    import safetensors  # noqa: F401

    _ST_SKIP = None
except ImportError:
    _ST_SKIP = "safetensors: not installed (pip install safetensors)"

FORMATS = [
    pytest.param("npz", id="npz"),
    pytest.param("safetensors", id="safetensors",
                 marks=pytest.mark.skipif(_ST_SKIP is not None, reason=_ST_SKIP or "")),
]
SPECS = {
    "rnn-relu": RNN(3, 4, num_layers=2, nonlinearity="relu", batch_first=True),
    "lstm-bidir": LSTM(3, 4, num_layers=2, bidirectional=True),
    "gru-nobias": GRU(2, 3, bias=False),
}


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.dtype.str, a.shape, a.view(np.uint8).tobytes()


def _same(backend, got, expected, expected_backend=None):
    assert list(got) == list(expected)
    for k in expected:
        e = expected_backend.to_numpy(expected[k]) if expected_backend else np.asarray(expected[k])
        assert _bits(backend.to_numpy(got[k]) if backend else np.asarray(got[k])) == _bits(e), k


def _saved(tmp_path, fmt, spec=None, seed=0, dtype="float64"):
    spec = spec or SPECS["lstm-bidir"]
    params = spec.init(seed=seed, dtype=dtype)
    path = tmp_path / f"model.{fmt}"
    prnn_io.save(path, spec, params)
    return path, spec, params


def _raises_value_error(path, match=None):
    with pytest.raises(ValueError, match=match) as info:
        prnn_io.load(path)
    assert str(info.value).startswith(os.fsdecode(path)), str(info.value)
    return info.value


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(SPECS))
def test_round_trip_on_every_backend(tmp_path, backend, dtype, fmt, name):
    spec = SPECS[name]
    params = spec.init(seed=1, xp=backend.xp, dtype=dtype, device=backend.device)
    path = tmp_path / f"m.{fmt}"
    prnn_io.save(path, spec, params)
    x = backend.asarray(np.zeros((2, 3, spec.input_size)), dtype)
    got_spec, got = prnn_io.load(path, like=x)
    assert got_spec == spec
    _same(backend, got, params, backend)
    for key, v in got.items():
        assert_on_backend(backend, v, dtype, spec.param_shapes()[key])
    # default target: NumPy arrays of the stored dtype
    _, host = prnn_io.load(str(path))
    assert all(type(v) is np.ndarray and v.dtype == np.dtype(dtype) for v in host.values())
    _same(None, host, params, backend)


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_casts_and_places_on_request(tmp_path, backend, fmt):
    path, spec, params = _saved(tmp_path, fmt)
    _, got = prnn_io.load(path, xp=backend.xp, dtype="float32", device=backend.device)
    for key, v in got.items():
        assert_on_backend(backend, v, "float32")
        np.testing.assert_array_equal(backend.to_numpy(v), params[key].astype(np.float32))
    with pytest.raises(TypeError, match="like= or xp="):
        prnn_io.load(path, like=np.zeros(1), xp=np)


def test_the_format_is_read_from_the_content_and_documented(tmp_path):
    path, spec, params = _saved(tmp_path, "npz")
    renamed = tmp_path / "model.bin"
    os.replace(path, renamed)
    assert prnn_io.load(renamed)[0] == spec
    with zipfile.ZipFile(renamed) as zf:
        names = sorted(zf.namelist())
        meta = json.loads(np.load(io.BytesIO(zf.read("__spec__.npy")), allow_pickle=False).tobytes())
    assert names == sorted([f"{k}.npy" for k in params] + ["__spec__.npy"])
    assert meta["format"] == "portable_rnn" and meta["version"] == prnn_io.FORMAT_VERSION
    assert meta["spec"] == prnn_io.spec_to_dict(spec)
    # plain numpy reads it too, without pickles
    with np.load(renamed, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["weight_hh_l1_reverse"], params["weight_hh_l1_reverse"])


@pytest.mark.skipif(_ST_SKIP is not None, reason=_ST_SKIP or "")
def test_safetensors_file_is_standard(tmp_path):
    from safetensors import safe_open

    path, spec, params = _saved(tmp_path, "safetensors")
    with safe_open(os.fspath(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["portable_rnn"])
        assert sorted(f.keys()) == sorted(params)
        np.testing.assert_array_equal(f.get_tensor("bias_ih_l0"), params["bias_ih_l0"])
    assert prnn_io.spec_from_dict(meta["spec"]) == spec


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_param_count_is_what_param_shapes_lists(cls):
    """The arithmetic a reader checks a file against before it lists any name."""
    for layers, bidirectional, bias, inputs, hidden in itertools.product((1, 3), (False, True), (False, True),
                                                                         (1, 5), (1, 4)):
        spec = cls(inputs, hidden, layers, bidirectional=bidirectional, bias=bias)
        shapes = spec.param_shapes()
        assert param_count(spec) == (len(shapes), sum(math.prod(s) for s in shapes.values())), spec
    assert param_count(LSTM(2, 2, 10**8)) == (4 * 10**8, 48 * 10**8)  # 4e8 names are never built


def test_spec_dict_round_trip_and_refusals():
    for spec in SPECS.values():
        d = prnn_io.spec_to_dict(spec)
        assert json.loads(json.dumps(d)) == d
        assert prnn_io.spec_from_dict(d) == spec
    assert prnn_io.spec_from_dict({"mode": "gru", "input_size": 2, "hidden_size": 3}) == GRU(2, 3)
    with pytest.raises(ValueError, match="mode"):
        prnn_io.spec_from_dict({"mode": "transformer", "input_size": 2, "hidden_size": 3})
    with pytest.raises(ValueError, match="unknown key"):
        prnn_io.spec_from_dict({"mode": "lstm", "input_size": 2, "hidden_size": 3, "peepholes": True})
    with pytest.raises(ValueError, match="unknown key"):  # only RNN has a nonlinearity
        prnn_io.spec_from_dict({"mode": "lstm", "input_size": 2, "hidden_size": 3, "nonlinearity": "relu"})
    with pytest.raises(ValueError, match="hidden_size"):
        prnn_io.spec_from_dict({"mode": "rnn", "input_size": 2})
    with pytest.raises(ValueError, match="input_size"):
        prnn_io.spec_from_dict({"mode": "rnn", "input_size": 2.0, "hidden_size": 3})
    with pytest.raises(ValueError, match="bidirectional"):
        prnn_io.spec_from_dict({"mode": "rnn", "input_size": 2, "hidden_size": 3, "bidirectional": 1})
    with pytest.raises(TypeError, match="dict"):
        prnn_io.spec_from_dict([("mode", "rnn")])
    with pytest.raises(TypeError, match="spec"):
        prnn_io.spec_to_dict({"mode": "rnn"})


# --------------------------------------------------------------------------- save


def test_save_checks_params_and_format(tmp_path):
    spec = GRU(2, 3)
    params = spec.init(seed=0)
    with pytest.raises(ValueError, match="missing"):
        prnn_io.save(tmp_path / "a.npz", spec, {k: v for k, v in params.items() if k != "bias_hh_l0"})
    with pytest.raises(ValueError, match="unexpected"):
        prnn_io.save(tmp_path / "a.npz", spec, {**params, "extra": params["bias_hh_l0"]})
    with pytest.raises(ValueError, match="shape"):
        prnn_io.save(tmp_path / "a.npz", spec, {**params, "bias_hh_l0": params["weight_hh_l0"]})
    with pytest.raises(TypeError, match="dtype"):
        prnn_io.save(tmp_path / "a.npz", spec, {**params, "bias_hh_l0": params["bias_hh_l0"].astype(np.float64)})
    with pytest.raises(ValueError, match="extension"):
        prnn_io.save(tmp_path / "a.pt", spec, params)
    with pytest.raises(ValueError, match="format"):
        prnn_io.save(tmp_path / "a.npz", spec, params, format="pickle")
    prnn_io.save(tmp_path / "a.weights", spec, params, format="npz")
    assert prnn_io.load(tmp_path / "a.weights")[0] == spec
    assert sorted(os.listdir(tmp_path)) == ["a.weights"]  # nothing else was written


def test_save_is_atomic(tmp_path, monkeypatch):
    path, spec, params = _saved(tmp_path, "npz")
    before = path.read_bytes()

    def broken(fp, array, **kwargs):  # fails half-way through the first member
        fp.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", broken)
    with pytest.raises(OSError, match="disk full"):
        prnn_io.save(path, GRU(2, 3), GRU(2, 3).init())
    assert path.read_bytes() == before  # the old file is intact
    assert sorted(os.listdir(tmp_path)) == [path.name]  # and no temporary file is left
    monkeypatch.undo()
    prnn_io.save(path, GRU(2, 3), GRU(2, 3).init())  # overwriting works
    assert prnn_io.load(path)[0] == GRU(2, 3)
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_save_never_writes_into_params(tmp_path):
    spec = RNN(2, 3)
    params = spec.init(seed=0)
    for v in params.values():
        v.setflags(write=False)
    prnn_io.save(tmp_path / "m.npz", spec, params)
    _, got = prnn_io.load(tmp_path / "m.npz")
    got["weight_ih_l0"][...] = 0  # loaded arrays are fresh and writable
    assert np.any(params["weight_ih_l0"] != 0)


# --------------------------------------------------------------------------- hostile files


def _npz_bytes(entries: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **entries)
    return buf.getvalue()


def _spec_entry(spec_obj=None, **changes):
    meta = {"format": "portable_rnn", "version": 1, "spec": prnn_io.spec_to_dict(spec_obj or GRU(2, 3))}
    meta.update(changes)
    return np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


def test_pickled_object_arrays_are_refused(tmp_path):
    spec = GRU(2, 3)
    params = spec.init(seed=0)
    evil = np.empty(params["bias_ih_l0"].shape, dtype=object)  # np.savez pickles object arrays
    path = tmp_path / "evil.npz"
    path.write_bytes(_npz_bytes({"__spec__": _spec_entry(spec), **params, "bias_ih_l0": evil}))
    _raises_value_error(path, "pickled object array")
    path.write_bytes(_npz_bytes({"__spec__": np.array([{"format": "portable_rnn"}], dtype=object), **params}))
    _raises_value_error(path, "pickled object array")


def test_foreign_and_inconsistent_files_are_refused(tmp_path):
    spec = GRU(2, 3)
    params = spec.init(seed=0)
    path = tmp_path / "f.npz"
    cases = [
        ({**params}, "no '__spec__' member"),
        ({"__spec__": _spec_entry(spec, format="other"), **params}, "not portable_rnn metadata"),
        ({"__spec__": _spec_entry(spec, version=2), **params}, "newer portable_rnn"),
        ({"__spec__": _spec_entry(spec, version="1"), **params}, "invalid format version"),
        ({"__spec__": _spec_entry(spec, spec={"mode": "gru"}), **params}, "invalid spec"),
        ({"__spec__": np.frombuffer(b"\xff{", np.uint8), **params}, "not UTF-8 JSON"),
        ({"__spec__": _spec_entry(spec).astype(np.int64), **params}, "1-D uint8"),
        ({"__spec__": _spec_entry(GRU(2, 4)), **params}, "shape"),
        ({"__spec__": _spec_entry(spec), **params, "weight_hr_l0": params["bias_ih_l0"]}, "unexpected"),
        ({"__spec__": _spec_entry(spec), **{k: v for k, v in params.items() if k != "bias_hh_l0"}}, "missing"),
        ({"__spec__": _spec_entry(spec), **params, "bias_hh_l0": params["bias_hh_l0"].astype(np.int32)}, "dtype"),
        ({"__spec__": _spec_entry(spec), **params, "bias_hh_l0": params["bias_hh_l0"].astype(np.float64)}, "dtype"),
    ]
    for entries, match in cases:
        path.write_bytes(_npz_bytes(entries))
        _raises_value_error(path, match)
    # a zip with a non-.npy member
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("__spec__.npy", b"")
        zf.writestr("payload.pkl", b"\x80\x04.")
    path.write_bytes(buf.getvalue())
    _raises_value_error(path, "not .npy")
    # big-endian floats are fine (converted to native order)
    path.write_bytes(_npz_bytes({"__spec__": _spec_entry(spec), **{k: v.astype(">f4") for k, v in params.items()}}))
    _, got = prnn_io.load(path)
    _same(None, got, params)


def test_an_entry_larger_than_its_shape_needs_is_refused(tmp_path):
    spec = GRU(2, 3)
    params = spec.init(seed=0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__spec__.npy", _npz_member(_spec_entry(spec)))
        for k, v in params.items():
            zf.writestr(f"{k}.npy", _npz_member(v) + (b"\0" * (1 << 20) if k == "bias_ih_l0" else b""))
    path = tmp_path / "bomb.npz"
    path.write_bytes(buf.getvalue())
    _raises_value_error(path, "more than it can need")


def _npz_member(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_truncation_is_a_value_error(tmp_path, fmt):
    path, spec, params = _saved(tmp_path, fmt, GRU(2, 3))
    data = path.read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    for n in sorted(set(range(0, len(data), max(1, len(data) // 97))) | {1, 8, 9, len(data) - 1}):
        cut.write_bytes(data[:n])
        _raises_value_error(cut)


def test_foreign_files_are_refused(tmp_path):
    path = tmp_path / "x.npz"
    for data, match in [
        (b"", "empty"),
        (b"\x80\x04\x95.", "neither"),  # a pickle
        (_npz_member(np.zeros(3)), "neither"),  # a bare .npy
        (b"PK\x05\x06" + b"\0" * 18, "no '__spec__'"),  # an empty zip
        (b"PK\x03\x04garbage", "not a readable"),
        ((8).to_bytes(8, "little") + b'{"a": 1}', "no 'portable_rnn' metadata"),
        ((99).to_bytes(8, "little") + b'{"a"', "truncated"),
    ]:
        path.write_bytes(data)
        _raises_value_error(path, match)
    with pytest.raises(FileNotFoundError):
        prnn_io.load(tmp_path / "missing.npz")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_random_bytes_are_a_value_error(tmp_path, data):
    path = tmp_path / "random.npz"
    path.write_bytes(data)
    _raises_value_error(path)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4))
def test_corrupted_bytes_load_cleanly_or_raise_value_error(tmp_path, fmt, flips):
    """A damaged file either fails with ValueError or (a flipped weight byte in
    .safetensors, which has no checksum) loads a complete, well-formed result."""
    spec = GRU(2, 3)
    params = spec.init(seed=0)
    path = tmp_path / f"m.{fmt}"
    prnn_io.save(path, spec, params)
    data = bytearray(path.read_bytes())
    for where, xor in flips:
        data[int(where * len(data))] ^= xor
    path.write_bytes(bytes(data))
    try:
        got_spec, got = prnn_io.load(path)
    except ValueError as error:
        assert str(error).startswith(os.fsdecode(path))
        return
    assert list(got) == list(got_spec.param_shapes())
    for k, shape in got_spec.param_shapes().items():
        assert got[k].shape == shape and got[k].dtype in (np.float32, np.float64)


def test_safetensors_without_the_package_is_a_clear_import_error(tmp_path, monkeypatch):
    import sys

    spec = GRU(2, 3)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install safetensors"):
        prnn_io.save(tmp_path / "m.safetensors", spec, spec.init())
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- archives (write_archive / read_archive)


def _archive_arrays():
    rng = np.random.default_rng(5)
    return {
        "params/w": rng.standard_normal((3, 4)).astype(np.float32),
        "params/w_fortran": np.asfortranarray(rng.standard_normal((2, 5))),
        "big_endian": rng.standard_normal(4).astype(">f8"),
        "opt/step": np.asarray(7, dtype=np.int32),
        "flags": np.array([True, False]),
        "empty": np.zeros((0, 3), dtype=np.float64),
    }


def _expect_all(arrays):
    """An ``expected`` callback listing exactly ``arrays`` (dtype names in native order)."""
    return lambda meta: {k: (a.shape, (a.dtype.newbyteorder("=").name,)) for k, a in arrays.items()}


def _zip_bytes(members: dict, compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    return buf.getvalue()


def _meta_member(meta) -> bytes:
    return _npz_member(np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


def _read_refused(path, expected, match):
    with pytest.raises(ValueError, match=match) as info:
        prnn_io.read_archive(path, expected)
    message = str(info.value)
    assert message.startswith(os.fsdecode(path)) and "\n" not in message, message
    return message


def test_archive_round_trip_is_exact_and_fresh(tmp_path):
    arrays = _archive_arrays()
    meta = {"format": "test", "groups": ["opt"], "nested": {"a": [1, 2.5, None]}, "text": "héllo"}
    path = tmp_path / "sub" / "a.npz"  # missing folders are created
    prnn_io.write_archive(path, arrays, meta)
    seen = []

    def expected(m):
        seen.append(m)
        return dict(reversed(list(_expect_all(arrays)(m).items())))

    got, got_meta = prnn_io.read_archive(path, expected)
    assert got_meta == meta and seen == [meta]
    assert list(got) == list(reversed(list(arrays)))  # the order of expected()
    for k, a in arrays.items():
        assert got[k].dtype.isnative and got[k].flags.c_contiguous and got[k].flags.writeable, k
        assert got[k].shape == a.shape and got[k].dtype == a.dtype.newbyteorder("=")
        np.testing.assert_array_equal(got[k], a)
    assert _bits(got["params/w"]) == _bits(arrays["params/w"])
    # a plain .npz: NumPy reads it without pickles
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted([*arrays, "__spec__"])
        np.testing.assert_array_equal(npz["params/w_fortran"], arrays["params/w_fortran"])
    assert sorted(os.listdir(path.parent)) == ["a.npz"]


def test_write_archive_refuses_what_it_cannot_store(tmp_path):
    path = tmp_path / "a.npz"
    ok = {"w": np.zeros(2)}
    cases = [
        (TypeError, "numpy.ndarray", {"w": [1.0, 2.0]}, {}),
        (TypeError, "object", {"w": np.array([{}], dtype=object)}, {}),
        (TypeError, "JSON", ok, {"f": object()}),
        (TypeError, "mapping", ok, [("a", 1)]),
        (TypeError, "mapping", [("w", np.zeros(2))], {}),
    ] + [(ValueError, "not allowed", {name: np.zeros(2)}, {}) for name in
         ("", "/abs", "a/../b", "a//b", "a\\b", "__spec__", "./a", 3)]
    for error, match, arrays, meta in cases:
        with pytest.raises(error, match=match):
            prnn_io.write_archive(path, arrays, meta)
    assert os.listdir(tmp_path) == []  # nothing was written, not even a temporary file


def test_read_archive_refuses_members_that_do_not_fit(tmp_path):
    path = tmp_path / "a.npz"
    arrays = {"w": np.ones((2, 3)), "b": np.ones(3)}
    prnn_io.write_archive(path, arrays, {"n": 3})
    f64 = ("float64",)
    _read_refused(path, lambda m: {"w": ((2, 3), f64)}, r"unexpected member\(s\) \['b'\]")
    _read_refused(path, lambda m: {"w": ((2, 3), f64), "b": ((3,), f64), "c": ((1,), f64)},
                  r"missing member\(s\) \['c'\]")
    _read_refused(path, lambda m: {"w": ((3, 2), f64), "b": ((3,), f64)}, r"'w' has shape \(2, 3\); expected \(3, 2\)")
    _read_refused(path, lambda m: {"w": ((2, 3), ("float32",)), "b": ((3,), f64)}, "'w' has dtype float64")
    _read_refused(path, lambda m: {"w": ((2, -3), f64), "b": ((3,), f64)}, "non-negative")
    _read_refused(path, lambda m: {"w": ((2, 3), ("object",)), "b": ((3,), f64)}, "without objects")
    _read_refused(path, lambda m: [("w", ((2, 3), f64))], "no member list")
    got, meta = prnn_io.read_archive(
        path, lambda m: {"w": ((2, m["n"]), f64), "b": ((m["n"],), ("float32", "float64"))}
    )
    assert meta == {"n": 3} and got["w"].shape == (2, 3)


@pytest.mark.parametrize("error", [ValueError("bad format\nsecond line"), KeyError("groups"), TypeError("not a dict")])
def test_read_archive_turns_metadata_complaints_into_one_line(tmp_path, error):
    path = tmp_path / "a.npz"
    prnn_io.write_archive(path, {"w": np.ones(2)}, {"format": "other"})

    def expected(meta):
        raise error

    message = _read_refused(path, expected, "bad format second line" if isinstance(error, ValueError) else "metadata")
    assert type(error).__name__ in message or isinstance(error, ValueError)


def test_read_archive_refuses_bad_metadata(tmp_path):
    path = tmp_path / "a.npz"
    expect = {"w": ((2,), ("float64",))}
    w = _npz_member(np.ones(2))
    for members, match in [
        ({"w.npy": w}, "no '__spec__' member"),
        ({"__spec__.npy": _npz_member(np.frombuffer(b"\xff{", np.uint8)), "w.npy": w}, "not UTF-8 JSON"),
        ({"__spec__.npy": _npz_member(np.frombuffer(b"[" * 5000 + b"]" * 5000, np.uint8)), "w.npy": w}, "JSON"),
        ({"__spec__.npy": _meta_member([1, 2]), "w.npy": w}, "not a JSON object"),
        ({"__spec__.npy": _npz_member(np.zeros((2, 2), np.uint8)), "w.npy": w}, "1-D uint8"),
        ({"__spec__.npy": b"not a npy", "w.npy": w}, "not a valid .npy"),
        ({"__spec__.npy": _meta_member({}), "w.npy": w, "w.pkl": b""}, "not .npy"),
    ]:
        path.write_bytes(_zip_bytes(members))
        _read_refused(path, lambda m: expect, match)


def test_read_archive_refuses_corrupt_and_truncated_files(tmp_path):
    path = tmp_path / "a.npz"
    prnn_io.write_archive(path, {"w": np.arange(64.0)}, {})
    data = path.read_bytes()
    expect = {"w": ((64,), ("float64",))}
    at = data.index(np.arange(64.0).tobytes())  # the stored data of member w
    path.write_bytes(data[:at] + b"\x01" + data[at + 1 :])
    _read_refused(path, lambda m: expect, "corrupt")  # the CRC catches the flipped byte
    for n in (0, 3, at, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:n])
        _read_refused(path, lambda m: expect, "empty|readable|corrupt|truncated")
    # a member with a few bytes more than its header declares
    path.write_bytes(_zip_bytes({"__spec__.npy": _meta_member({}), "w.npy": _npz_member(np.ones(2)) + b"\0" * 8}))
    _read_refused(path, lambda m: {"w": ((2,), ("float64",))}, "its .npy header declares")
    with pytest.raises(FileNotFoundError):
        prnn_io.read_archive(tmp_path / "missing.npz", lambda m: expect)


def _count_member_reads(monkeypatch) -> dict:
    """Bytes read (or inflated) from each zip member by the reader, by member name."""
    counts = collections.Counter()
    step = prnn_io._MemberData._step

    def counted_step(self, view):
        n = step(self, view)
        counts[self.name] += n
        return n

    monkeypatch.setattr(prnn_io._MemberData, "_step", counted_step)
    return counts


def test_a_member_larger_than_expected_is_refused_before_its_data_is_read(tmp_path, monkeypatch):
    path = tmp_path / "bomb.npz"
    expect = {"w": ((3,), ("float64",))}
    counts = _count_member_reads(monkeypatch)
    # 1. the zip directory declares 16 MiB (deflated zeros: a few KiB in the file)
    bomb = _npz_member(np.zeros(2 << 20))
    path.write_bytes(_zip_bytes({"__spec__.npy": _meta_member({}), "w.npy": bomb}, zipfile.ZIP_DEFLATED))
    assert path.stat().st_size < 100_000
    _read_refused(path, lambda m: expect, "declares 16777344 bytes, more than it can need")
    assert counts["w.npy"] == 0
    # 2. a small member whose .npy header declares 16 GiB
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (2 << 30,)})
    liar = header.getvalue() + np.zeros(3).tobytes()
    path.write_bytes(_zip_bytes({"__spec__.npy": _meta_member({}), "w.npy": liar}))
    _read_refused(path, lambda m: expect, r"'w' has shape \(2147483648,\); expected \(3,\)")
    assert 0 < counts["w.npy"] <= len(header.getvalue())  # the header, not one byte of data
