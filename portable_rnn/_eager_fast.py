r"""Fast paths of the sequence engine for NumPy and torch on CPU (behind the portable one).

:func:`portable_rnn.sequence.forward` and :func:`~portable_rnn.sequence.backward`
hand their work to this module when every array is a plain ``numpy.ndarray``,
or every array is a plain CPU ``torch.Tensor`` that does not require grad, of
one dtype (float32 or float64) with the documented shapes, and the cell is one
of the three built-in cells. Anything else (JAX, CuPy, torch on CUDA, a
subclassed cell, mixed dtypes, broadcasting shapes, autograd) takes the
portable path, which stays the definition of the maths.
``tests/test_fastpath.py`` checks that both paths give the same numbers
(float64 to ~1e-12, float32 to ~1e-6) and that this one really runs
(:data:`calls` counts every run; :func:`portable_only` switches it off).

What it does that the portable code may not (it mutates arrays, which only
these two libraries allow, and only arrays it allocated itself):

* **Preallocated buffers and ``out=``.** The input projection is written
  straight into the (T, N, G*H) gate buffer of the tape; each step adds its
  recurrent matmul and computes its gates *in place* in its slice of that
  buffer, and writes its states into preallocated (T, N, H) arrays. No per-step
  allocation, no ``stack`` copy at the end, no concatenation in the backward.
* **One contiguous block of sigmoid gates.** The LSTM gate columns are
  reordered to ``i, f, o, g`` (the weights' rows, once per call), so the three
  sigmoid gates are one block; GRU's ``r, z`` already are. NumPy: the rows that
  feed a sigmoid are also halved (exact: a power of two), so *one* ``tanh`` over
  the whole LSTM block gives ``tanh(g)`` and ``tanh(z/2)``, and
  :math:`\sigma(z) = \tfrac12\tanh(z/2) + \tfrac12` finishes the gates in two
  cheap passes (NumPy's float32 ``tanh`` is faster than its ``exp``). torch:
  ``sigmoid_`` on the block and ``tanh_`` on the candidate (fused kernels).
  The tape exposes the portable layout ``(i, f, g, o, tanh_c)`` as views.
* **Fused updates where the library has them** (torch ``addmm_``,
  ``addcmul_``; NumPy a matmul into a scratch buffer plus an add).
* **Chunked weight gradients.** The backward writes the pre-activation
  gradients of a chunk of steps (:data:`CHUNK_ROWS` rows) into a small buffer
  and turns each full chunk into ``dx``, ``dW_ih``, ``dW_hh`` and the bias
  gradients with a few large matmuls, so it never holds a (T, N, G*H)
  gradient: peak memory stays close to the tape plus the outputs.

The backward accepts any tape with the portable layout (e.g. one built by
:mod:`portable_rnn.stepbystep` or by the portable forward).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections import Counter

import numpy as np
from array_api_compat import is_numpy_namespace, is_torch_namespace

from .cells import GRUCell, LSTMCell, RNNCell

__all__ = ["calls", "portable_only", "enabled", "accepts_forward", "accepts_backward",
           "forward", "backward", "CHUNK_ROWS"]

#: How often each fast kernel ran, keyed ``(library, "forward" | "backward", cell)``,
#: e.g. ``calls["numpy", "forward", "lstm"]`` (a spy for the tests).
calls: Counter = Counter()

#: Rows (steps x batch) per chunk of the backward's weight-gradient matmuls.
CHUNK_ROWS = 1024

_local = threading.local()


def enabled() -> bool:
    """Whether a fast path may be chosen in this thread."""
    return getattr(_local, "disabled", 0) == 0


@contextlib.contextmanager
def portable_only():
    """Within this block (and thread), NumPy and torch inputs take the portable path."""
    _local.disabled = getattr(_local, "disabled", 0) + 1
    try:
        yield
    finally:
        _local.disabled -= 1


# --------------------------------------------------------------------------- the two libraries


class _NumpyOps:
    """NumPy primitives; every ``out`` is an array this module allocated."""

    name = "numpy"
    halve_sigmoid_rows = True
    mm, add, sub, mul, tanh = np.matmul, np.add, np.subtract, np.multiply, np.tanh

    def __init__(self, dtype):
        self.dtype = dtype

    def empty(self, shape):
        return np.empty(shape, self.dtype)

    def zeros(self, shape):
        return np.zeros(shape, self.dtype)

    def clone(self, a):
        return np.array(a, dtype=self.dtype, copy=True)

    def index(self, n):
        return np.arange(n)

    @staticmethod
    def cat(parts):
        return np.concatenate(parts)

    @staticmethod
    def contiguous(a):
        return np.ascontiguousarray(a)

    @staticmethod
    def copyto(dst, src):
        np.copyto(dst, src)

    @staticmethod
    def rsub1(a, out):
        np.subtract(1, a, out=out)

    @staticmethod
    def addmm_(c, a, b, tmp):
        np.matmul(a, b, out=tmp)
        np.add(c, tmp, out=c)

    @staticmethod
    def addcmul_(c, a, b, tmp):
        np.multiply(a, b, out=tmp)
        np.add(c, tmp, out=c)

    @staticmethod
    def sum0(a):
        return np.sum(a, axis=0)

    @staticmethod
    def sigmoid_(s):
        """``s`` holds z/2 (halved rows): sigma(z) = tanh(z/2)/2 + 1/2, in place."""
        np.tanh(s, out=s)
        np.multiply(s, 0.5, out=s)
        np.add(s, 0.5, out=s)

    @staticmethod
    def lstm_gates_(z, H):
        """In place on (N, 4H) in order i, f, o, g with the i, f, o rows halved."""
        np.tanh(z, out=z)  # one call: tanh(z/2) for i, f, o and tanh(g)
        s = z[:, : 3 * H]
        np.multiply(s, 0.5, out=s)
        np.add(s, 0.5, out=s)

    @staticmethod
    def relu_(a):
        np.maximum(a, 0, out=a)

    def relu_grad(self, dh, h, out, scratch):
        np.greater(h, 0, out=scratch)
        out[...] = 0
        np.copyto(out, dh, where=scratch)

    def bool_scratch(self, shape):
        return np.empty(shape, bool)


class _TorchOps:
    """torch (CPU) primitives; every ``out`` is a tensor this module allocated."""

    name = "torch"
    halve_sigmoid_rows = False

    def __init__(self, dtype):
        import torch

        self.torch = torch
        self.dtype = dtype
        self.mm, self.add, self.sub, self.mul, self.tanh = torch.matmul, torch.add, torch.sub, torch.mul, torch.tanh
        self.one = torch.ones((), dtype=dtype)
        self.zero = torch.zeros((), dtype=dtype)

    def empty(self, shape):
        return self.torch.empty(shape, dtype=self.dtype)

    def zeros(self, shape):
        return self.torch.zeros(shape, dtype=self.dtype)

    def clone(self, a):
        return a.detach().clone()

    def index(self, n):
        return self.torch.arange(n)

    def cat(self, parts):
        return self.torch.cat(parts)

    @staticmethod
    def contiguous(a):
        return a.contiguous()

    @staticmethod
    def copyto(dst, src):
        dst.copy_(src)

    def rsub1(self, a, out):
        self.torch.sub(self.one, a, out=out)

    @staticmethod
    def addmm_(c, a, b, tmp):
        c.addmm_(a, b)

    @staticmethod
    def addcmul_(c, a, b, tmp):
        c.addcmul_(a, b)

    def sum0(self, a):
        return self.torch.sum(a, dim=0)

    @staticmethod
    def sigmoid_(s):
        s.sigmoid_()

    @staticmethod
    def lstm_gates_(z, H):
        z[:, : 3 * H].sigmoid_()
        z[:, 3 * H :].tanh_()

    def relu_(self, a):
        self.torch.maximum(a, self.zero, out=a)

    def relu_grad(self, dh, h, out, scratch):
        self.torch.where(h > 0, dh, self.zero, out=out)

    def bool_scratch(self, shape):
        return None


_FLOATS_NP = (np.dtype(np.float32), np.dtype(np.float64))


def _library(xp):
    if is_numpy_namespace(xp):
        return "numpy"
    if "torch" in sys.modules and is_torch_namespace(xp):
        return "torch"
    return None


def _plain_numpy(a) -> bool:
    return type(a) is np.ndarray and a.dtype in _FLOATS_NP


def _plain_torch(a) -> bool:
    import torch

    return (type(a) is torch.Tensor and a.dtype in (torch.float32, torch.float64)
            and a.device.type == "cpu" and not a.requires_grad and a.layout == torch.strided
            and not a.is_conj() and not a.is_neg())


def _common_dtype(library, arrays):
    """The dtype shared by the non-None arrays when all are plain arrays of ``library``, else None."""
    plain = _plain_numpy if library == "numpy" else _plain_torch
    dtype = None
    for a in arrays:
        if a is None:
            continue
        if not plain(a) or (dtype is not None and a.dtype != dtype):
            return None
        dtype = a.dtype
    return dtype


def _ops(library, dtype):
    return _NumpyOps(dtype) if library == "numpy" else _TorchOps(dtype)


def _kind(cell):
    t = type(cell)
    if t is LSTMCell:
        return "lstm"
    if t is GRUCell:
        return "gru"
    if t is RNNCell and cell.nonlinearity in ("tanh", "relu"):
        return "rnn"
    return None


def _shaped(a, shape):
    return a is None or tuple(a.shape) == shape


def _layer_sizes(cell, library, x, W_ih, W_hh, mask, others):
    """(T, N, D, H, G*H) when the layer's arrays share a fast dtype and fit; else None."""
    if _common_dtype(library, [x, W_ih, W_hh, mask, *others]) is None:
        return None
    if x.ndim != 3 or x.shape[0] == 0 or W_hh.ndim != 2:
        return None
    T, N, D = x.shape
    H = W_hh.shape[1]
    GH = cell.n_gates * H
    if not (_shaped(W_ih, (GH, D)) and _shaped(W_hh, (GH, H)) and _shaped(mask, (T, N, 1))):
        return None
    return T, N, D, H, GH


def accepts_forward(cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask, xp) -> bool:
    """Whether :func:`forward` can run these inputs (else: the portable path)."""
    if _kind(cell) is None or not enabled():
        return False
    library = _library(xp)
    if library is None:
        return False
    if not isinstance(state0, (tuple, list)) or len(state0) != cell.n_states or any(s is None for s in state0):
        return False
    if any(a is None for a in (x, W_ih, W_hh)):
        return False
    sizes = _layer_sizes(cell, library, x, W_ih, W_hh, mask, [b_ih, b_hh, *state0])
    if sizes is None:
        return False
    T, N, D, H, GH = sizes
    return all(_shaped(s, (N, H)) for s in state0) and _shaped(b_ih, (GH,)) and _shaped(b_hh, (GH,))


def accepts_backward(cell, tape, d_out, d_final, W_ih, W_hh, xp) -> bool:
    """Whether :func:`backward` can run this tape (else: the portable path)."""
    kind = _kind(cell)
    if kind is None or not enabled():
        return False
    library = _library(xp)
    if library is None:
        return False
    try:
        x, state0, states, cell_tape, mask = tape
    except (TypeError, ValueError):
        return False
    n = cell.n_states
    if not (isinstance(state0, (tuple, list)) and isinstance(states, (tuple, list))
            and len(state0) == n and len(states) == n):
        return False
    if d_final is None:
        d_final = (None,) * n
    if not isinstance(d_final, (tuple, list)) or len(d_final) != n:
        return False
    n_leaves = {"lstm": 5, "gru": 4, "rnn": 0}[kind]
    if n_leaves:
        if not (isinstance(cell_tape, (tuple, list)) and len(cell_tape) == n_leaves):
            return False
        leaves = tuple(cell_tape)
    else:
        leaves = ()
    if any(a is None for a in (x, W_ih, W_hh, *state0, *states, *leaves)):
        return False
    sizes = _layer_sizes(cell, library, x, W_ih, W_hh, mask, [d_out, *state0, *states, *leaves, *d_final])
    if sizes is None:
        return False
    T, N, D, H, GH = sizes
    return (
        _shaped(d_out, (T, N, H))
        and all(_shaped(s, (N, H)) for s in (*state0, *d_final))
        and all(_shaped(s, (T, N, H)) for s in (*states, *leaves))
    )


# --------------------------------------------------------------------------- helpers


def _chunk_steps(N: int, T: int) -> int:
    return max(1, min(T, -(-CHUNK_ROWS // max(N, 1))))


def _rows(a, t0, t1):
    """``a[t0:t1]`` (steps, N, F) as a 2-D (rows, F) array (a view when ``a`` is contiguous)."""
    return a[t0:t1].reshape(-1, a.shape[-1])


def _project(ops, x, Wx, b, Z, K):
    """``Z[t] = x[t] @ Wx.T + b`` for all t, in chunks of K steps (x may have any strides)."""
    T = x.shape[0]
    WxT = Wx.T
    for t0 in range(0, T, K):
        t1 = min(T, t0 + K)
        z = _rows(Z, t0, t1)
        ops.mm(_rows(x, t0, t1), WxT, out=z)
        if b is not None:
            ops.add(z, b, out=z)


def _scaled(ops, W, n_sigmoid_rows):
    """Copy of W (or b) with its first ``n_sigmoid_rows`` rows halved (NumPy's tanh trick)."""
    out = ops.clone(W)
    if ops.halve_sigmoid_rows:
        out[:n_sigmoid_rows] *= 0.5
    return out


def _blend(ops, new, old, m, om, tmp):
    """In place: new = m * new + (1 - m) * old (the portable masking, same order)."""
    ops.mul(new, m, out=new)
    ops.mul(om, old, out=tmp)
    ops.add(new, tmp, out=new)


class _Acc:
    """Accumulates ``a.T @ b`` (or column sums) chunk by chunk into one array."""

    def __init__(self, ops):
        self.ops = ops
        self.value = None
        self._tmp = None

    def add_matmul(self, a_T, b):
        if self.value is None:
            self.value = self.ops.mm(a_T, b)
            return
        if self._tmp is None and self.ops.name == "numpy":
            self._tmp = self.ops.empty(tuple(self.value.shape))
        self.ops.addmm_(self.value, a_T, b, self._tmp)

    def add_sum(self, a):
        s = self.ops.sum0(a)
        if self.value is None:
            self.value = s
        else:
            self.ops.add(self.value, s, out=self.value)


# --------------------------------------------------------------------------- forward


def forward(cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask, xp):
    """Fast :func:`portable_rnn.sequence.forward`.

    Returns ``(out, final, states, cell_tape)``; the caller builds the Tape.
    """
    kind = _kind(cell)
    library = _library(xp)
    ops = _ops(library, x.dtype)
    calls[library, "forward", kind] += 1
    if kind == "lstm":
        return _lstm_forward(ops, x, state0, W_ih, W_hh, b_ih, b_hh, mask)
    if kind == "gru":
        return _gru_forward(ops, x, state0, W_ih, W_hh, b_ih, b_hh, mask)
    return _rnn_forward(ops, cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask)


def _folded(b_ih, b_hh):
    if b_ih is None:
        return b_hh
    if b_hh is None:
        return b_ih
    return b_ih + b_hh


def _finish(ops, states, mask):
    out = states[0] if mask is None else states[0] * mask
    final = tuple(ops.clone(s[-1]) for s in states)
    return out, final


def _lstm_forward(ops, x, state0, W_ih, W_hh, b_ih, b_hh, mask):
    T, N, _ = x.shape
    h_prev, c_prev = state0
    H = h_prev.shape[-1]
    # Internal column order i, f, o, g: the sigmoid gates form one block [0, 3H).
    i = ops.index(H)
    order = ops.cat([i, i + H, i + 3 * H, i + 2 * H])
    Wx = _scaled(ops, W_ih[order], 3 * H)
    WhT = ops.contiguous(_scaled(ops, W_hh[order], 3 * H).T)
    b = _folded(b_ih, b_hh)
    b = None if b is None else _scaled(ops, b[order], 3 * H)

    Z = ops.empty((T, N, 4 * H))  # pre-activations, then the gates i, f, o, g in place
    Hs, Cs, TC = ops.empty((T, N, H)), ops.empty((T, N, H)), ops.empty((T, N, H))
    _project(ops, x, Wx, b, Z, _chunk_steps(N, T))
    tmp, tH = ops.empty((N, 4 * H)), ops.empty((N, H))
    om = None if mask is None else 1 - mask
    for t in range(T):
        z = Z[t]
        ops.addmm_(z, h_prev, WhT, tmp)
        ops.lstm_gates_(z, H)
        i, f, o, g = z[:, :H], z[:, H : 2 * H], z[:, 2 * H : 3 * H], z[:, 3 * H :]
        c = Cs[t]
        ops.mul(f, c_prev, out=c)
        ops.addcmul_(c, i, g, tH)
        tc = TC[t]
        ops.tanh(c, out=tc)
        h = Hs[t]
        ops.mul(o, tc, out=h)
        if mask is not None:
            _blend(ops, h, h_prev, mask[t], om[t], tH)
            _blend(ops, c, c_prev, mask[t], om[t], tH)
        h_prev, c_prev = h, c
    cell_tape = (Z[..., :H], Z[..., H : 2 * H], Z[..., 3 * H :], Z[..., 2 * H : 3 * H], TC)
    out, final = _finish(ops, (Hs, Cs), mask)
    return out, final, (Hs, Cs), cell_tape


def _gru_forward(ops, x, state0, W_ih, W_hh, b_ih, b_hh, mask):
    T, N, _ = x.shape
    (h_prev,) = state0
    H = h_prev.shape[-1]
    Wx = _scaled(ops, W_ih, 2 * H)
    WhT = ops.contiguous(_scaled(ops, W_hh, 2 * H).T)
    # b_hr, b_hz join the hoisted projection; b_hn stays inside the reset gate.
    b = None
    if b_ih is not None or b_hh is not None:
        b = ops.zeros((3 * H,)) if b_ih is None else ops.clone(b_ih)
        if b_hh is not None:
            b[: 2 * H] += b_hh[: 2 * H]
        b = _scaled(ops, b, 2 * H)
    b_hn = None if b_hh is None else b_hh[2 * H :]

    Z = ops.empty((T, N, 3 * H))  # pre-activations, then r, z, n in place
    HWN, Hs = ops.empty((T, N, H)), ops.empty((T, N, H))
    _project(ops, x, Wx, b, Z, _chunk_steps(N, T))
    tmp, tH = ops.empty((N, 3 * H)), ops.empty((N, H))
    om = None if mask is None else 1 - mask
    for t in range(T):
        zt = Z[t]
        ops.mm(h_prev, WhT, out=tmp)
        rz = zt[:, : 2 * H]
        ops.add(rz, tmp[:, : 2 * H], out=rz)
        ops.sigmoid_(rz)
        hwn = HWN[t]
        if b_hn is None:
            ops.copyto(hwn, tmp[:, 2 * H :])
        else:
            ops.add(tmp[:, 2 * H :], b_hn, out=hwn)
        r, z, n = zt[:, :H], zt[:, H : 2 * H], zt[:, 2 * H :]
        ops.addcmul_(n, r, hwn, tH)
        ops.tanh(n, out=n)
        h = Hs[t]  # h = (1 - z) n + z h_prev = n + z (h_prev - n)
        ops.sub(h_prev, n, out=tH)
        ops.mul(tH, z, out=tH)
        ops.add(n, tH, out=h)
        if mask is not None:
            _blend(ops, h, h_prev, mask[t], om[t], tH)
        h_prev = h
    cell_tape = (Z[..., :H], Z[..., H : 2 * H], Z[..., 2 * H :], HWN)
    out, final = _finish(ops, (Hs,), mask)
    return out, final, (Hs,), cell_tape


def _rnn_forward(ops, cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask):
    T, N, _ = x.shape
    (h_prev,) = state0
    H = h_prev.shape[-1]
    WhT = ops.contiguous(W_hh.T)
    Hs = ops.empty((T, N, H))  # pre-activations, then the states in place
    _project(ops, x, W_ih, _folded(b_ih, b_hh), Hs, _chunk_steps(N, T))
    tmp = ops.empty((N, H))
    om = None if mask is None else 1 - mask
    relu = cell.nonlinearity == "relu"
    for t in range(T):
        h = Hs[t]
        ops.addmm_(h, h_prev, WhT, tmp)
        if relu:
            ops.relu_(h)
        else:
            ops.tanh(h, out=h)
        if mask is not None:
            _blend(ops, h, h_prev, mask[t], om[t], tmp)
        h_prev = h
    out, final = _finish(ops, (Hs,), mask)
    return out, final, (Hs,), None


# --------------------------------------------------------------------------- backward


def backward(cell, tape, d_out, d_final, W_ih, W_hh, keep, bias, xp):
    """Fast :func:`portable_rnn.sequence.backward`.

    ``keep`` is :func:`portable_rnn.sequence.window_keep`'s result. Returns
    ``(dx, dstate0, dW_ih, dW_hh, db_ih, db_hh)``.
    """
    kind = _kind(cell)
    library = _library(xp)
    calls[library, "backward", kind] += 1
    ops = _ops(library, tape[0].dtype)
    return _Backward(ops, cell, kind, tape, d_out, d_final, W_ih, W_hh, keep, bias).run()


class _Backward:
    """The reverse loop shared by the three cells; ``_step_*`` is each cell's maths."""

    def __init__(self, ops, cell, kind, tape, d_out, d_final, W_ih, W_hh, keep, bias):
        x, state0, states, cell_tape, mask = tape
        self.ops, self.kind, self.cell = ops, kind, cell
        self.x, self.state0, self.states = x, tuple(state0), tuple(states)
        self.cell_tape, self.mask = cell_tape, mask
        self.d_out, self.W_ih, self.W_hh, self.keep, self.bias = d_out, W_ih, W_hh, keep, bias
        T, N, _ = x.shape
        H = W_hh.shape[-1]
        self.T, self.N, self.H = T, N, H
        if d_final is None:
            d_final = (None,) * len(self.state0)
        self.carry = [ops.zeros((N, H)) if d is None else ops.clone(d) for d in d_final]

    def run(self):
        ops, T, N, H = self.ops, self.T, self.N, self.H
        G = self.cell.n_gates
        K = _chunk_steps(N, T)
        D = self.x.shape[-1]
        self.om = None if self.mask is None else 1 - self.mask
        self.dx = ops.empty((T, N, D))
        self.DX = ops.empty((K, N, G * H))  # d pre-activation (input side) of a chunk
        self.DH = ops.empty((K, N, G * H)) if self.kind == "gru" else self.DX
        self.new = [ops.empty((N, H)) for _ in self.carry]
        self.a, self.b, self.dh, self.dc = (ops.empty((N, H)) for _ in range(4))
        self.pos = ops.bool_scratch((N, H)) if self.kind == "rnn" else None
        self.dW_ih, self.dW_hh, self.db_ih, self.db_hh = _Acc(ops), _Acc(ops), _Acc(ops), _Acc(ops)
        step = {"lstm": self._step_lstm, "gru": self._step_gru, "rnn": self._step_rnn}[self.kind]
        for t1 in range(T, 0, -K):
            t0 = max(0, t1 - K)
            for t in range(t1 - 1, t0 - 1, -1):
                self._step(step, t, t - t0)
            self._flush(t0, t1)
        db_ih = db_hh = None
        if self.bias:
            db_ih = self.db_ih.value
            db_hh = self.db_hh.value if self.kind == "gru" else db_ih
        return self.dx, tuple(self.carry), self.dW_ih.value, self.dW_hh.value, db_ih, db_hh

    def _prev(self, j, t):
        return self.states[j][t - 1] if t > 0 else self.state0[j]

    def _step(self, step, t, k):
        ops, carry, new, mask = self.ops, self.carry, self.new, self.mask
        if self.keep is not None:
            kt = self.keep[t]
            for d in carry:
                ops.mul(d, kt, out=d)
        dh = carry[0]
        if self.d_out is not None:
            ops.add(dh, self.d_out[t], out=self.dh)
            dh = self.dh
        if mask is not None:
            ops.mul(dh, mask[t], out=self.dh)
            dh = self.dh
        step(t, k, dh)  # writes DX[k] (and DH[k]) and new[...] (without the mask pass-through)
        if mask is not None:
            om = self.om[t]
            for n, d in zip(new, carry):
                ops.mul(om, d, out=self.a)
                ops.add(n, self.a, out=n)
        self.carry, self.new = new, carry

    def _step_lstm(self, t, k, dh):
        ops, H, a, b, dc = self.ops, self.H, self.a, self.b, self.dc
        i, f, g, o, tc = (leaf[t] for leaf in self.cell_tape)
        dc_next = self.carry[1]
        if self.mask is not None:
            ops.mul(dc_next, self.mask[t], out=self.new[1])  # scratch until overwritten below
            dc_next = self.new[1]
        c_prev = self._prev(1, t)
        dz = self.DX[k]
        # dc = dc_next + dh * o * (1 - tanh_c^2)
        ops.mul(tc, tc, out=a)
        ops.rsub1(a, out=a)
        ops.mul(a, o, out=a)
        ops.mul(a, dh, out=a)
        ops.add(a, dc_next, out=dc)
        # o: dh * tanh_c * o (1 - o)
        ops.rsub1(o, out=b)
        ops.mul(b, o, out=b)
        ops.mul(b, tc, out=b)
        ops.mul(b, dh, out=dz[:, 3 * H :])
        # i: dc * g * i (1 - i)
        ops.rsub1(i, out=b)
        ops.mul(b, i, out=b)
        ops.mul(b, g, out=b)
        ops.mul(b, dc, out=dz[:, :H])
        # f: dc * c_prev * f (1 - f)
        ops.rsub1(f, out=b)
        ops.mul(b, f, out=b)
        ops.mul(b, c_prev, out=b)
        ops.mul(b, dc, out=dz[:, H : 2 * H])
        # g: dc * i * (1 - g^2)
        ops.mul(g, g, out=b)
        ops.rsub1(b, out=b)
        ops.mul(b, i, out=b)
        ops.mul(b, dc, out=dz[:, 2 * H : 3 * H])
        ops.mul(dc, f, out=self.new[1])
        ops.mm(dz, self.W_hh, out=self.new[0])

    def _step_gru(self, t, k, dh):
        ops, H, a, b = self.ops, self.H, self.a, self.b
        r, z, n, hwn = (leaf[t] for leaf in self.cell_tape)
        h_prev = self._prev(0, t)
        dxw, dhw = self.DX[k], self.DH[k]
        dn = dxw[:, 2 * H :]
        # dn = dh (1 - z)(1 - n^2)
        ops.mul(n, n, out=a)
        ops.rsub1(a, out=a)
        ops.rsub1(z, out=b)
        ops.mul(a, b, out=a)
        ops.mul(a, dh, out=dn)
        # dz = dh (h_prev - n) z (1 - z)
        ops.sub(h_prev, n, out=a)
        ops.mul(a, dh, out=a)
        ops.mul(b, z, out=b)
        ops.mul(a, b, out=dxw[:, H : 2 * H])
        # dr = dn hw_n r (1 - r)
        ops.rsub1(r, out=a)
        ops.mul(a, r, out=a)
        ops.mul(a, hwn, out=a)
        ops.mul(a, dn, out=dxw[:, :H])
        ops.copyto(dhw[:, : 2 * H], dxw[:, : 2 * H])
        ops.mul(dn, r, out=dhw[:, 2 * H :])
        new = self.new[0]
        ops.mul(dh, z, out=new)
        ops.addmm_(new, dhw, self.W_hh, a)

    def _step_rnn(self, t, k, dh):
        ops = self.ops
        h = self.states[0][t]
        dz = self.DX[k]
        if self.cell.nonlinearity == "tanh":
            ops.mul(h, h, out=self.a)
            ops.rsub1(self.a, out=self.a)
            ops.mul(dh, self.a, out=dz)
        else:
            ops.relu_grad(dh, h, dz, self.pos)
        ops.mm(dz, self.W_hh, out=self.new[0])

    def _flush(self, t0, t1):
        """Weight, bias and input gradients of steps [t0, t1) from the chunk buffers."""
        ops, N = self.ops, self.N
        n = t1 - t0
        dxw = _rows(self.DX, 0, n)
        dhw = _rows(self.DH, 0, n)
        ops.mm(dxw, self.W_ih, out=_rows(self.dx, t0, t1))
        self.dW_ih.add_matmul(dxw.T, _rows(self.x, t0, t1))
        h = self.states[0]
        if t0 > 0:
            self.dW_hh.add_matmul(dhw.T, _rows(h, t0 - 1, t1 - 1))
        else:
            self.dW_hh.add_matmul(dhw[:N].T, self.state0[0])
            if n > 1:
                self.dW_hh.add_matmul(dhw[N:].T, _rows(h, 0, t1 - 1))
        if self.bias:
            self.db_ih.add_sum(dxw)
            if self.kind == "gru":
                self.db_hh.add_sum(dhw)
