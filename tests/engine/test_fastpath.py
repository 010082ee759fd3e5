"""The NumPy / torch-CPU fast path of the engine gives the portable path's numbers, and runs.

``portable_rnn.engine.kernels`` is chosen automatically by ``sequence.forward`` and
``sequence.backward``; ``kernels.portable_only()`` forces the portable path
and ``kernels.calls`` counts the fast runs. Every output is compared: the
layer output, final state, the whole tape (states and the cell tape in the
portable layout) and every gradient, relative to the largest magnitude of the
portable result (float64 1e-12, float32 5e-6: float32 sums over up to 37 steps).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from portable_rnn.engine import kernels, sequence
from portable_rnn.engine.cells import GRUCell, LSTMCell, RNNCell
from portable_rnn.layers import GRU, LSTM, RNN

from ..helpers import rel_error

CELLS = [RNNCell("tanh"), RNNCell("relu"), LSTMCell(), GRUCell()]
CELL_IDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
KIND = {RNNCell: "rnn", LSTMCell: "lstm", GRUCell: "gru"}
TOL = {"float64": 1e-12, "float32": 5e-6}


#: The fast path serves NumPy and CPU torch: the tests that take ``lib`` run on those of
#: the selected backends.
pytestmark = pytest.mark.backends("numpy", "torch")


class _Lib:
    """NumPy or torch (CPU): namespace and conversions."""

    def __init__(self, name):
        self.name = name
        if name == "numpy":
            import array_api_compat.numpy as xp

            self.xp = xp
            self.conv = lambda a: a
            self.back = np.asarray
        else:
            import torch
            import array_api_compat.torch as xp

            self.torch = torch
            self.xp = xp
            # NumPy data becomes a tensor (a copy); a tensor is used as it is
            self.conv = lambda a: a if a is None or isinstance(a, torch.Tensor) else torch.from_numpy(np.array(a))
            self.back = lambda a: a.detach().numpy()


@pytest.fixture
def lib(backend):
    """The backend under test as the fast path sees it."""
    return _Lib(backend.name)


def _inputs(cell, dtype, T=5, N=3, D=2, H=4, seed=0, masked=False):
    rng = np.random.default_rng(seed)
    G = cell.n_gates
    d = {
        "x": rng.normal(size=(T, N, D)),
        "W_ih": rng.normal(size=(G * H, D)) / 2,
        "W_hh": rng.normal(size=(G * H, H)) / 2,
        "b_ih": rng.normal(size=(G * H,)),
        "b_hh": rng.normal(size=(G * H,)),
        "d_out": rng.normal(size=(T, N, H)),
        "d_final": rng.normal(size=(N, H)),
    }
    d = {k: v.astype(dtype) for k, v in d.items()}
    d["state0"] = tuple(rng.normal(size=(N, H)).astype(dtype) for _ in range(cell.n_states))
    d["mask"] = None
    if masked:
        lengths = rng.integers(1, T + 1, size=N)
        lengths[0] = T
        d["mask"] = (np.arange(T)[:, None] < lengths[None, :])[..., None].astype(dtype)
    return d


def _run(lib, cell, d, truncate=None, with_d_out=True, with_d_final=True, biases=(True, True)):
    c = lib.conv
    b_ih = c(d["b_ih"]) if biases[0] else None
    b_hh = c(d["b_hh"]) if biases[1] else None
    out, final, tape = sequence.forward(
        cell, c(d["x"]), tuple(c(s) for s in d["state0"]), c(d["W_ih"]), c(d["W_hh"]), b_ih, b_hh,
        c(d["mask"]), xp=lib.xp,
    )
    d_final = (c(d["d_final"]),) + (None,) * (cell.n_states - 1) if with_d_final else None
    g = sequence.backward(cell, tape, c(d["d_out"]) if with_d_out else None, d_final,
                          c(d["W_ih"]), c(d["W_hh"]), xp=lib.xp, truncate=truncate,
                          bias=biases != (False, False))
    named = {"out": out, "dx": g.dx, "dW_ih": g.dW_ih, "dW_hh": g.dW_hh}
    named.update({f"final{j}": s for j, s in enumerate(final)})
    named.update({f"states{j}": s for j, s in enumerate(tape.states)})
    named.update({f"dstate0{j}": s for j, s in enumerate(g.dstate0)})
    if tape.cell_tape is not None:
        named.update({f"cell_tape{j}": s for j, s in enumerate(tape.cell_tape)})
    if g.db_ih is not None:
        named.update(db_ih=g.db_ih, db_hh=g.db_hh)
    return {k: lib.back(v) for k, v in named.items()}


def _fast_and_portable(lib, cell, d, **kw):
    kind = KIND[type(cell)]
    before = dict(kernels.calls)
    fast = _run(lib, cell, d, **kw)
    for direction in ("forward", "backward"):
        key = (lib.name, direction, kind)
        assert kernels.calls[key] == before.get(key, 0) + 1, f"the fast {direction} did not run"
    with kernels.portable_only():
        portable = _run(lib, cell, d, **kw)
    assert dict(kernels.calls) == _plus_one_run(before, lib.name, kind), "portable_only() ran the fast path"
    return fast, portable


def _plus_one_run(before, lib_name, kind):
    """``before`` plus exactly one fast forward and one fast backward of ``kind``."""
    expected = dict(before)
    for direction in ("forward", "backward"):
        key = (lib_name, direction, kind)
        expected[key] = expected.get(key, 0) + 1
    return expected


def _assert_same(fast, portable, dtype, context=""):
    assert fast.keys() == portable.keys()
    for key in portable:
        f, p = fast[key], portable[key]
        assert f.dtype == p.dtype == np.dtype(dtype), f"{context} {key}: dtype {f.dtype} vs {p.dtype}"
        assert f.shape == p.shape, f"{context} {key}: shape {f.shape} vs {p.shape}"
        err = rel_error(f, p)
        assert err <= TOL[dtype], f"{context} {key}: relative error {err:.2e}"


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fast_path_equals_portable_path(lib, cell, dtype):
    for masked, truncate, with_d_out, with_d_final in itertools.product(
        (False, True), (None, 2, 3), (True, False), (True, False)
    ):
        d = _inputs(cell, dtype, masked=masked)
        context = f"masked={masked} truncate={truncate} d_out={with_d_out} d_final={with_d_final}"
        fast, portable = _fast_and_portable(lib, cell, d, truncate=truncate, with_d_out=with_d_out,
                                            with_d_final=with_d_final)
        _assert_same(fast, portable, dtype, context)


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("biases", [(False, False), (True, False), (False, True)])
def test_fast_path_without_biases(lib, cell, biases):
    d = _inputs(cell, "float64", masked=True)
    fast, portable = _fast_and_portable(lib, cell, d, truncate=2, biases=biases)
    _assert_same(fast, portable, "float64", f"biases={biases}")


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("chunk_rows", [1, 5])
def test_fast_path_across_gradient_chunks(lib, cell, chunk_rows, monkeypatch):
    """Chunks of 1 step, and chunks that do not divide T, for the weight-gradient matmuls."""
    monkeypatch.setattr(kernels.tuning, "CHUNK_ROWS", chunk_rows)
    d = _inputs(cell, "float64", T=37, N=3, D=5, H=6, seed=3, masked=True)
    fast, portable = _fast_and_portable(lib, cell, d, truncate=4)
    _assert_same(fast, portable, "float64", f"CHUNK_ROWS={chunk_rows}")


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_tapes_are_interchangeable(cell):
    """The fast backward reads a portable tape and the portable backward a fast tape."""
    d = _inputs(cell, "float64", masked=True)
    args = (d["x"], d["state0"], d["W_ih"], d["W_hh"], d["b_ih"], d["b_hh"], d["mask"])
    import array_api_compat.numpy as xp

    _, _, fast_tape = sequence.forward(cell, *args, xp=xp)
    with kernels.portable_only():
        _, _, portable_tape = sequence.forward(cell, *args, xp=xp)
    d_final = (d["d_final"],) + (None,) * (cell.n_states - 1)
    results = []
    for tape, portable in [(fast_tape, False), (portable_tape, False), (fast_tape, True), (portable_tape, True)]:
        if portable:
            with kernels.portable_only():
                g = sequence.backward(cell, tape, d["d_out"], d_final, d["W_ih"], d["W_hh"], xp=xp, truncate=2)
        else:
            g = sequence.backward(cell, tape, d["d_out"], d_final, d["W_ih"], d["W_hh"], xp=xp, truncate=2)
        results.append(g)
    for g in results[1:]:
        for a, b in zip((g.dx, g.dW_ih, g.dW_hh, g.db_ih, *g.dstate0),
                        (results[0].dx, results[0].dW_ih, results[0].dW_hh, results[0].db_ih, *results[0].dstate0)):
            assert rel_error(a, b) <= 1e-12


def test_lstm_tape_keeps_the_portable_layout():
    """cell_tape is (i, f, g, o, tanh_c) as (T, N, H) arrays, whatever the internal gate order."""
    cell = LSTMCell()
    d = _inputs(cell, "float64")
    import array_api_compat.numpy as xp

    args = (d["x"], d["state0"], d["W_ih"], d["W_hh"], d["b_ih"], d["b_hh"], None)
    _, _, fast = sequence.forward(cell, *args, xp=xp)
    with kernels.portable_only():
        _, _, portable = sequence.forward(cell, *args, xp=xp)
    assert len(fast.cell_tape) == 5
    for a, b in zip(fast.cell_tape, portable.cell_tape):
        assert a.shape == b.shape == (5, 3, 4)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("Layer", [RNN, LSTM, GRU])
def test_public_layers_take_the_fast_path(lib, Layer):
    """Stacked, bidirectional, with lengths and batch_first: every layer and direction runs fast."""
    spec = Layer(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    rng = np.random.default_rng(7)
    x = lib.conv(rng.normal(size=(3, 6, 3)))
    lengths = lib.conv(np.array([6, 2, 4])) if lib.name == "torch" else np.array([6, 2, 4])
    params = spec.init(0, like=x)
    kind = Layer.mode
    before = dict(kernels.calls)
    out, state, tape = spec.forward(params, x, lengths=lengths)
    d_out = lib.conv(rng.normal(size=tuple(out.shape)))
    grads, dx, _ = spec.backward(params, tape, d_out, truncate=3)
    for direction in ("forward", "backward"):
        key = (lib.name, direction, kind)
        assert kernels.calls[key] == before.get(key, 0) + 4  # 2 layers x 2 directions
    with kernels.portable_only():
        p_out, p_state, p_tape = spec.forward(params, x, lengths=lengths)
        p_grads, p_dx, _ = spec.backward(params, p_tape, d_out, truncate=3)
    assert rel_error(lib.back(out), lib.back(p_out)) <= 1e-12
    assert rel_error(lib.back(dx), lib.back(p_dx)) <= 1e-12
    for k in grads:
        assert rel_error(lib.back(grads[k]), lib.back(p_grads[k])) <= 1e-12, k


def test_fast_path_never_writes_into_inputs():
    cell = LSTMCell()
    d = _inputs(cell, "float32", masked=True)
    frozen = {}
    for k, v in d.items():
        if isinstance(v, np.ndarray):
            v.setflags(write=False)
            frozen[k] = v.copy()
    for s in d["state0"]:
        s.setflags(write=False)
    states = tuple(s.copy() for s in d["state0"])
    import array_api_compat.numpy as xp

    out, final, tape = sequence.forward(cell, d["x"], d["state0"], d["W_ih"], d["W_hh"], d["b_ih"],
                                        d["b_hh"], d["mask"], xp=xp)
    d_final = (d["d_final"], d["d_final"])
    g = sequence.backward(cell, tape, d["d_out"], d_final, d["W_ih"], d["W_hh"], xp=xp, truncate=2)
    for k, v in frozen.items():
        np.testing.assert_array_equal(d[k], v)
    for a, b in zip(d["state0"], states):
        np.testing.assert_array_equal(a, b)
    # Outputs do not alias inputs, and the returned final state is not a view of the tape.
    assert not np.shares_memory(final[0], tape.states[0])
    assert not any(np.shares_memory(g.dstate0[j], d_final[j]) for j in range(2))


def test_float32_stays_float32_with_python_and_numpy_scalars():
    """No float64 temporary leaks into a float32 run (outputs, tape and gradients)."""
    for cell in CELLS:
        d = _inputs(cell, "float32", masked=True)
        fast = _run(_Lib("numpy"), cell, d, truncate=2)
        assert all(v.dtype == np.float32 for v in fast.values()), cell


def test_fallbacks_take_the_portable_path():
    """Mixed dtypes, subclassed cells, torch tensors requiring grad: the portable path."""
    import array_api_compat.numpy as xp

    cell = LSTMCell()
    d = _inputs(cell, "float64")
    before = dict(kernels.calls)
    # mixed dtypes: promotion is the portable path's business
    sequence.forward(cell, d["x"].astype(np.float32), d["state0"], d["W_ih"], d["W_hh"], None, None,
                     xp=xp)

    class MyLSTM(LSTMCell):
        pass

    sequence.forward(MyLSTM(), d["x"], d["state0"], d["W_ih"], d["W_hh"], None, None, xp=xp)
    assert dict(kernels.calls) == before
    torch = pytest.importorskip("torch", reason="torch: not installed")
    import array_api_compat.torch as xt

    W = torch.from_numpy(d["W_ih"]).requires_grad_(True)
    out, _, _ = sequence.forward(cell, torch.from_numpy(d["x"]), tuple(torch.from_numpy(s) for s in d["state0"]),
                                 W, torch.from_numpy(d["W_hh"]), None, None, xp=xt)
    assert out.requires_grad  # autograd still works through the portable path
    assert dict(kernels.calls) == before


def test_calls_counter_and_switch_are_per_thread():
    import threading

    import array_api_compat.numpy as xp

    cell = RNNCell()
    d = _inputs(cell, "float64")
    seen = []

    def worker():
        sequence.forward(cell, d["x"], d["state0"], d["W_ih"], d["W_hh"], None, None, xp=xp)
        seen.append(kernels.enabled())

    with kernels.portable_only():
        assert not kernels.enabled()
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert seen == [True] and kernels.enabled()


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_fast_path_with_an_empty_batch(lib, cell):
    """N = 0 is ordinary empty work on the fast path too: shapes right, gradients zero."""
    d = _inputs(cell, "float64", N=0)
    fast, portable = _fast_and_portable(lib, cell, d, truncate=2)
    _assert_same(fast, portable, "float64", "N=0")
    assert fast["dx"].shape == (5, 0, 2) and not np.any(fast["dW_hh"])


@pytest.mark.backends("torch")
@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_torch_tensors_run_the_numpy_kernels_in_place(backend, cell):
    """CPU torch inputs, even strided views, run the NumPy kernels with no copy either way."""
    import array_api_compat.torch as xt
    import torch

    d = _inputs(cell, "float64", masked=True)
    # x as a transposed (strided) view of a batch-first tensor
    x = torch.from_numpy(np.ascontiguousarray(d["x"].transpose(1, 0, 2))).transpose(0, 1)
    t = {k: torch.from_numpy(d[k]) for k in ("W_ih", "W_hh", "b_ih", "b_hh", "mask", "d_out")}
    state0 = tuple(torch.from_numpy(s) for s in d["state0"])
    out, final, tape = sequence.forward(cell, x, state0, t["W_ih"], t["W_hh"], t["b_ih"], t["b_hh"],
                                        t["mask"], xp=xt)
    g = sequence.backward(cell, tape, t["d_out"], None, t["W_ih"], t["W_hh"], xp=xt, truncate=2)
    outputs = [out, *final, *tape.states, *(tape.cell_tape or ()), g.dx, *g.dstate0, g.dW_ih, g.dW_hh, g.db_ih]
    for a in outputs:
        assert type(a) is torch.Tensor and a.device.type == "cpu" and a.dtype == torch.float64
    # outputs are views of the kernels' buffers, not copies: the i and f gates sit side by side
    if isinstance(cell, LSTMCell):
        i, f = tape.cell_tape[0], tape.cell_tape[1]
        assert f.data_ptr() - i.data_ptr() == 4 * 8 and i.stride() == (3 * 16, 16, 1)
    with kernels.portable_only():
        p_out, _, p_tape = sequence.forward(cell, x, state0, t["W_ih"], t["W_hh"], t["b_ih"], t["b_hh"],
                                            t["mask"], xp=xt)
        p_g = sequence.backward(cell, p_tape, t["d_out"], None, t["W_ih"], t["W_hh"], xp=xt, truncate=2)
    assert rel_error(out.numpy(), p_out.numpy()) <= 1e-12
    for a, b in zip((g.dx, g.dW_ih, g.dW_hh, g.db_ih, g.db_hh), (p_g.dx, p_g.dW_ih, p_g.dW_hh, p_g.db_ih, p_g.db_hh)):
        assert rel_error(a.numpy(), b.numpy()) <= 1e-12


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_fast_path_takes_a_broadcast_output_gradient(lib, cell):
    """d(sum)/d(out) as autograd builds it, one 1 broadcast (stride 0, read-only in NumPy):
    the fast path reads it in place and gives the numbers of a filled array (the bench uses it)."""
    d = _inputs(cell, "float64", masked=True)
    T, N, H = d["d_out"].shape
    filled = dict(d, d_out=np.ones((T, N, H)))
    if lib.name == "numpy":
        lib_ones = np.broadcast_to(np.ones(()), (T, N, H))
        assert lib_ones.strides == (0, 0, 0) and not lib_ones.flags.writeable
    else:
        lib_ones = lib.torch.ones((), dtype=lib.torch.float64).expand(T, N, H)
        assert lib_ones.stride() == (0, 0, 0)
    fast_b, portable_b = _fast_and_portable(lib, cell, dict(d, d_out=lib_ones), truncate=2)
    fast_f, _ = _fast_and_portable(lib, cell, filled, truncate=2)
    _assert_same(fast_b, portable_b, "float64", "broadcast d_out")
    for key in fast_f:
        np.testing.assert_array_equal(fast_b[key], fast_f[key], err_msg=key)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_blas_products_equal_the_portable_path(backend, cell, dtype, monkeypatch):
    """RNN, LSTM and (smaller) GRU kernels on torch tensors run their large products with torch's BLAS
    (``torch.from_numpy`` views, ``out=`` and ``addmm_``), and the LSTM its activations with torch's
    sigmoid (tanh a = 2 sigma(2a) - 1): forced on for every product and step here,
    forward (projection, recurrent step) and backward (recurrent step, ``dx``, weight gradients),
    including strided x, masks, truncation, chunks that do not divide T and an empty batch."""
    lib = _Lib("torch")
    asked = []

    def always(m, k, n):
        asked.append((m, k, n))
        return True

    monkeypatch.setattr(kernels._shared.TorchBLAS, "_torch_is_faster", staticmethod(always))
    monkeypatch.setattr(kernels.tuning, "TORCH_GATES_MIN", 0)  # the LSTM's cell update by torch too
    monkeypatch.setattr(kernels.tuning, "CHUNK_ROWS", 5)
    for N, masked, truncate in ((3, True, 2), (4, False, None), (0, False, 2)):
        d = _inputs(cell, dtype, T=11, N=N, D=5, H=6, seed=4, masked=masked)
        d["x"] = lib.torch.from_numpy(np.ascontiguousarray(d["x"].transpose(1, 0, 2))).transpose(0, 1)
        asked.clear()
        fast, portable = _fast_and_portable(lib, cell, d, truncate=truncate)
        _assert_same(fast, portable, dtype, f"N={N} masked={masked} truncate={truncate}")
        assert asked, "the torch BLAS chooser was never asked"
    # NumPy inputs never ask it
    asked.clear()
    _fast_and_portable(_Lib("numpy"), cell, _inputs(cell, dtype), truncate=2)
    assert not asked


@pytest.mark.backends("torch")
def test_torch_blas_is_chosen_by_size():
    """Only large enough products go to torch's BLAS, not those of large GRUs; NumPy inputs keep NumPy's."""
    W_hh = {H: np.zeros((3 * H, H)) for H in (256, 512)}
    blas = kernels._blas("torch", "gru", 64, W_hh[256])
    assert blas.matmul(1, 64, 192) is np.matmul  # N = 1 steps: NumPy's single-threaded call is cheaper
    assert blas.matmul(1000, 32, 64) is not np.matmul  # any product OpenBLAS would run on two threads
    assert blas.matmul(64, 256, 768) is not np.matmul
    numpy_blas, lstm_kernel = kernels._shared.NUMPY_BLAS, kernels.lstm
    assert kernels._blas("torch", "gru", 256, W_hh[512]) is numpy_blas
    assert kernels._blas("torch", "rnn", 256, W_hh[512][:512]) is not numpy_blas
    lstm = kernels._blas("torch", "lstm", 256, np.zeros((4 * 512, 512)))  # every LSTM, however large
    assert lstm is not numpy_blas
    np_matmul_add = kernels._shared.np_matmul_add
    assert lstm.matmul(1, 64, 256) is np.matmul and lstm.matmul_add(1, 64, 256) is np_matmul_add
    assert lstm.matmul(64, 256, 1024) is not np.matmul and lstm.matmul_add(1024, 6400, 256) is not np_matmul_add
    assert lstm_kernel.update_for(lstm, 64, 256) is lstm_kernel.TorchUpdate
    assert lstm_kernel.update_for(lstm, 32, 128) is lstm_kernel.NumPyUpdate  # (32, 50, 64, 128): NumPy's passes were faster
    assert lstm_kernel.update_for(lstm, 1, 64) is lstm_kernel.NumPyUpdate  # N = 1: NumPy's cheaper calls
    assert kernels._blas("numpy", "lstm", 256, np.zeros((4 * 512, 512))) is numpy_blas
    assert lstm_kernel.update_for(numpy_blas, 64, 256) is lstm_kernel.NumPyUpdate
    assert kernels._blas("numpy", "gru", 64, W_hh[256]) is numpy_blas


@pytest.mark.parametrize("fast_path", ["auto", True, False])
def test_fast_path_is_a_visible_choice(lib, fast_path):
    """``fast_path`` chooses the kernel per call: "auto" and True run the fast one, False the portable one,
    with the same numbers; True raises, saying why, where no fast kernel runs the case."""
    spec = LSTM(3, 4, num_layers=2, bidirectional=True)
    params = {k: lib.conv(v) for k, v in spec.init(seed=0, dtype="float64").items()}
    x = lib.conv(np.random.default_rng(0).normal(size=(5, 2, 3)))
    before = dict(kernels.calls)
    out, _, tape = spec.forward(params, x, fast_path=fast_path)
    grads, _, _ = spec.backward(params, tape, out, fast_path=fast_path)
    ran = dict(kernels.calls) != before
    assert ran == (fast_path is not False)
    with kernels.portable_only():
        out_p, _, tape_p = spec.forward(params, x)
        grads_p, _, _ = spec.backward(params, tape_p, out_p)
    assert rel_error(lib.back(out), lib.back(out_p)) < 1e-12
    assert max(rel_error(lib.back(grads[k]), lib.back(grads_p[k])) for k in grads) < 1e-12
    projected = LSTM(3, 4, proj_size=2)
    p = {k: lib.conv(v) for k, v in projected.init(seed=0, dtype="float64").items()}
    if fast_path is True:
        with pytest.raises(ValueError, match=r"fast_path=True, but no fast kernel runs this layer: "
                                             r"an LSTM with a projection \(proj_size\) has no fast kernel"):
            projected.forward(p, x, fast_path=True)
        with kernels.portable_only(), pytest.raises(ValueError, match="switched off in this thread"):
            spec.forward(params, x, fast_path=True)
    else:
        projected.forward(p, x, fast_path=fast_path)  # the portable kernel, silently


@pytest.mark.backends("array_api_strict")
def test_fast_path_true_names_the_library_it_does_not_run(backend):
    spec = LSTM(3, 4)
    params = spec.init(xp=backend.xp, seed=0, dtype="float64")
    x = backend.xp.zeros((5, 2, 3), dtype=backend.xp.float64)
    with pytest.raises(ValueError, match=r"run NumPy arrays and CPU torch tensors, not array_api_strict's"):
        spec.forward(params, x, fast_path=True)
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match=r"fast_path must be 'auto', True or False"):
            spec.forward(params, x, fast_path=bad)
