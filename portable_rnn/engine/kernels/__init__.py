r"""Fast path of the sequence engine for NumPy, and torch on CPU (behind the portable one).

:func:`portable_rnn.engine.sequence.forward` and :func:`~portable_rnn.engine.sequence.backward`
hand their work to this module when every array is a plain ``numpy.ndarray``,
or every array is a plain CPU ``torch.Tensor`` that does not require grad, of
one dtype (float32 or float64) with the documented shapes, and the cell is one
of the three built-in cells without a projection. Anything else (JAX, CuPy,
torch on CUDA or on the ``meta`` device, a subclassed cell, an LSTM with
``proj_size``, mixed dtypes, broadcasting shapes, autograd, the ``torch.func``
transforms) takes the portable path, which stays the definition of the maths.

Which torch tensors count as plain (:func:`_plain_torch`): an exact
``torch.Tensor``, or a ``torch.nn.Parameter`` that does not require grad (a
frozen weight: the same memory and the same numbers; one that requires grad
is autograd's, like any tensor that does). Tensors wrapped by ``torch.func``
(``vmap``'s batched tensors, ``grad``'s and ``jacrev``'s grad-tracking ones,
``functionalize``'s) do not: they look like plain CPU tensors but have no
memory NumPy could view, or must record what is done to them, so they run
the portable code, which those transforms trace op by op.
``tests/test_fastpath.py`` checks that both paths give the same numbers
(float64 to ~1e-12, float32 to ~1e-6) and that this one really runs
(:data:`calls` counts every run; :func:`portable_only` switches it off).

The kernels are written once, in NumPy. CPU torch tensors run them on the
same memory: ``Tensor.numpy()`` views go in and ``torch.from_numpy`` views
come out, nothing is copied. NumPy's per-call overhead (~1 us) is a third of
torch's eager dispatch (~3 us), which dominates at small sizes. The one
exception is BLAS: on torch tensors the RNN and LSTM kernels, and the GRU
kernel below :data:`GRU_TORCH_BLAS_MAX`, run their large products (at least
:data:`TORCH_MATMUL_MIN` multiply-adds) with torch's
``matmul`` / ``addmm_`` on ``torch.from_numpy`` views (:class:`_TorchBLAS`),
so that only torch's threads run beside torch's (see that class).

What it does that the portable code may not (it mutates arrays, but only
arrays it allocated itself):

* **Preallocated buffers and ``out=``.** The input projection is written
  straight into the (T, N, G*H) gate buffer of the tape; each step adds its
  recurrent matmul and computes its gates *in place* in its slice of that
  buffer, and writes its states into preallocated (T, N, H) arrays. No per-step
  allocation, no ``stack`` copy at the end, no concatenation in the backward.
* **One tanh for all LSTM gates.** The LSTM gate columns are reordered to
  ``i, f, o, g`` (the weights' rows, once per call), so the three sigmoid gates
  are one block (GRU's ``r, z`` already are), and the rows that feed a sigmoid
  are halved (exact: a power of two): *one* ``tanh`` over the whole block gives
  ``tanh(g)`` and ``tanh(z/2)``, and :math:`\sigma(z) = \tfrac12\tanh(z/2) +
  \tfrac12` finishes the gates in two cheap passes (NumPy's float32 ``tanh``
  is faster than its ``exp``). The tape exposes the portable layout
  :class:`~portable_rnn.engine.cells.LSTMTape` ``(i, f, g, o, tanh_c)`` of views;
  ``tanh(c)`` is computed once, there.
* **Gate derivatives batched over steps.** Every pre-activation gradient is
  ``dh`` (or LSTM's ``dc``) times a factor that only depends on the tape. The
  backward computes those factors for several steps per NumPy call
  (:data:`FACTOR_ELEMENTS`), so a step is about seven calls instead of
  twenty-five: 1.5x faster when N*H is small; ~5% slower at N*H = 16k, where
  the extra trip of the factors through memory costs more than the calls saved.
* **Segments written in place.** A checkpointed backward's ``dx`` and a
  segmented forward's ``out`` are copied into one preallocated (T, ...)
  array segment by segment (:func:`over_segments`), instead of being joined
  at the end, which would hold them twice.
* **Chunked weight gradients.** The backward writes the pre-activation
  gradients of a chunk of steps (about :data:`CHUNK_ROWS` rows, at most an
  eighth of the sequence) into a small buffer and turns each chunk into
  ``dx``, ``dW_ih``, ``dW_hh`` and the bias gradients with a few large
  matmuls, so it never holds a (T, N, G*H) gradient: its scratch stays near a
  tenth of the tape.

The backward accepts any tape with the portable layout (e.g. one built by
:mod:`portable_rnn.stepbystep` or by the portable forward).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from array_api_compat import is_numpy_namespace, is_torch_namespace

from ..loop import leaves, stack_trees, tree_map

__all__ = ["calls", "portable_only", "enabled", "why_not_forward", "why_not_backward", "why_not_segments",
           "forward", "backward", "over_segments", "CHUNK_ROWS", "FACTOR_ELEMENTS", "TORCH_MATMUL_MIN",
           "GRU_TORCH_BLAS_MAX", "TORCH_GATES_MIN"]

#: How often each fast kernel ran, keyed ``(library, "forward" | "backward", cell)``,
#: e.g. ``calls["numpy", "forward", "lstm"]`` (a spy for the tests).
calls: Counter = Counter()

#: Rows (steps x batch) per chunk of the backward's weight-gradient matmuls.
CHUNK_ROWS = 1024
#: Elements (steps x batch x hidden) per pass of the backward's gate-derivative
#: factors: enough steps per call to amortise NumPy's call overhead when N*H is
#: small, one step (cache-resident) when it is large.
FACTOR_ELEMENTS = 1 << 14
#: Multiply-adds (rows x inner x columns) from which the RNN, LSTM and GRU kernels on
#: torch tensors run a matmul with torch's BLAS rather than NumPy's
#: (:class:`_TorchBLAS`): where OpenBLAS starts running a product on more than
#: the calling thread (it uses M N K / 2^18 threads), so NumPy's BLAS never
#: wakes threads of its own beside torch's.
TORCH_MATMUL_MIN = 1 << 19
#: Multiply-adds of the GRU's recurrent product (N x 3H x H) from which its
#: kernel keeps NumPy's BLAS on torch tensors too (:class:`_TorchBLAS`).
GRU_TORCH_BLAS_MAX = 1 << 26
#: Hidden units per step (N * H) from which the LSTM kernel on torch tensors takes its
#: activations from torch (:class:`_TorchLSTMGates`): below it, NumPy's ~1 us per call
#: beats torch's dispatch more than torch's faster sigmoid gains back.
TORCH_GATES_MIN = 1 << 13

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


_FLOATS_NP = (np.dtype(np.float32), np.dtype(np.float64))


def _library(xp):
    if is_numpy_namespace(xp):
        return "numpy"
    if "torch" in sys.modules and is_torch_namespace(xp):
        return "torch"
    return None


def _plain_numpy(a) -> bool:
    return type(a) is np.ndarray and a.dtype in _FLOATS_NP


@functools.lru_cache(maxsize=1)
def _torch_plain_types() -> tuple:
    """``torch.Tensor`` and ``torch.nn.Parameter``: the tensor types whose memory NumPy can view."""
    import torch

    return (torch.Tensor, torch.nn.Parameter)


@functools.lru_cache(maxsize=1)
def _functorch_wrapped():
    """Whether a tensor is a transform's wrapper: ``torch.func``'s, or the batched gradients of
    ``torch.autograd.grad(..., is_grads_batched=True)`` (torch's first vmap); a function that is
    always false where torch has neither."""
    try:
        from torch._C._functorch import is_functorch_wrapped_tensor, is_legacy_batchedtensor
    except ImportError:  # a torch without functorch has no wrapped tensors either
        return lambda a: False
    return lambda a: is_functorch_wrapped_tensor(a) or is_legacy_batchedtensor(a)


def _plain_torch(a) -> bool:
    """A CPU tensor with values in its own strided memory, outside autograd and ``torch.func``.

    Checked on every tensor, since each refusal has its reason: a subclass
    (fake, functional or distributed tensors) may have no memory of its own;
    a meta or CUDA tensor has none on the host; autograd (``requires_grad``,
    which also marks ``torch.func.grad``'s tensors) must see the portable
    path's operations; and a ``torch.func.vmap`` or ``functionalize`` wrapper
    has the type, device and flags of a plain tensor but no memory NumPy can
    view (``.numpy()`` fails with "Cannot access data pointer").
    """
    import torch

    return (type(a) in _torch_plain_types() and a.dtype in (torch.float32, torch.float64)
            and a.device.type == "cpu" and not a.requires_grad and a.layout == torch.strided
            and not a.is_conj() and not a.is_neg() and not _functorch_wrapped()(a))


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


def _fast_mode(cell):
    """The kernel this module runs for ``cell`` ("rnn", "lstm" or "gru"), or None.

    The cell's class names it itself (``fast_kernel`` in its own body; a
    subclass does not inherit it). An LSTM with a projection (``proj_size``)
    has no kernel here: the portable path runs it.
    """
    if getattr(cell, "proj_size", 0):
        return None
    mode = vars(type(cell)).get("fast_kernel")
    return mode if isinstance(mode, str) and mode in _KERNELS else None


def _shaped(a, shape):
    return a is None or tuple(a.shape) == shape


class _Declined(Exception):
    """Why the fast kernels do not run a case (the portable path then does)."""


def _check(condition, reason: str) -> None:
    if not condition:
        raise _Declined(reason)


def _fast_library(xp) -> str:
    """The library the fast path runs on ``xp`` ("numpy" or "torch"), or :class:`_Declined`."""
    _check(enabled(), "the fast path is switched off in this thread (portable_only)")
    library = _library(xp)
    _check(library is not None, f"the fast kernels run NumPy arrays and CPU torch tensors, not {xp.__name__}'s")
    return library


def _checked_library(cell, xp) -> str:
    """:func:`_fast_library`, once ``cell`` has a fast kernel (else :class:`_Declined`)."""
    library = _fast_library(xp)
    if _fast_mode(cell) is None:
        _check(not getattr(cell, "proj_size", 0), "an LSTM with a projection (proj_size) has no fast kernel")
        raise _Declined(f"{type(cell).__name__} names no fast kernel (fast_kernel, set in its own class body)")
    return library


def _check_plain(library, arrays) -> None:
    _check(_common_dtype(library, arrays) is not None,
           f"not every array is a plain float32 or float64 {_PLAIN[library]} of one dtype")


def _layer_sizes(cell, library, x, W_ih, W_hh, mask, others):
    """(T, N, D, H, G*H) when the layer's arrays share a fast dtype and fit; else :class:`_Declined`."""
    _check_plain(library, [x, W_ih, W_hh, mask, *others])
    _check(x.ndim == 3 and x.shape[0] > 0 and W_hh.ndim == 2, "x is not (T, N, D) with T > 0")
    T, N, D = x.shape
    H = W_hh.shape[1]
    GH = cell.n_gates * H
    _check(_shaped(W_ih, (GH, D)) and _shaped(W_hh, (GH, H)) and _shaped(mask, (T, N, 1)),
           "the weights or the mask do not have the layer's own shapes (broadcasting)")
    return T, N, D, H, GH


#: What counts as a plain array of each library (see :func:`_plain_numpy`, :func:`_plain_torch`).
_PLAIN = {"numpy": "numpy.ndarray",
          "torch": "CPU torch.Tensor (strided, outside autograd and torch.func)"}


def _reason(check, *args):
    """``None`` when ``check(*args)`` accepts, else why it declines."""
    try:
        check(*args)
    except _Declined as declined:
        return str(declined)
    return None


def why_not_forward(cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask, xp) -> str | None:
    """``None`` when :func:`forward` runs these inputs, else why not (the portable path then does)."""
    return _reason(_accept_forward, cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask, xp)


def _accept_forward(cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask, xp):
    library = _checked_library(cell, xp)
    _check(isinstance(state0, (tuple, list)) and len(state0) == cell.n_states
           and not any(s is None for s in state0), "the initial state is not one array per state")
    _check(not any(a is None for a in (x, W_ih, W_hh)), "x or a weight is None")
    T, N, D, H, GH = _layer_sizes(cell, library, x, W_ih, W_hh, mask, [b_ih, b_hh, *state0])
    _check(all(_shaped(s, (N, H)) for s in state0) and _shaped(b_ih, (GH,)) and _shaped(b_hh, (GH,)),
           "a state or a bias does not have the layer's own shape (broadcasting)")


def why_not_backward(cell, tape, d_out, d_final, W_ih, W_hh, xp) -> str | None:
    """``None`` when :func:`backward` runs this tape, else why not (the portable path then does)."""
    return _reason(_accept_backward, cell, tape, d_out, d_final, W_ih, W_hh, xp)


def _accept_backward(cell, tape, d_out, d_final, W_ih, W_hh, xp):
    library = _checked_library(cell, xp)
    try:
        x, state0, states, cell_tape, mask = tape
    except (TypeError, ValueError):
        raise _Declined("the tape is not a full Tape") from None
    n = cell.n_states
    d_final = (None,) * n if d_final is None else d_final
    _check(isinstance(state0, (tuple, list)) and isinstance(states, (tuple, list))
           and len(state0) == n and len(states) == n
           and isinstance(d_final, (tuple, list)) and len(d_final) == n, "the tape's states do not fit the cell")
    n_leaves = 0 if cell.tape_type is None else len(cell.tape_type._fields)
    _check(not n_leaves or (isinstance(cell_tape, (tuple, list)) and len(cell_tape) == n_leaves),
           "the cell's tape does not have the cell's fields")
    leaves = tuple(cell_tape) if n_leaves else ()
    _check(not any(a is None for a in (x, W_ih, W_hh, *state0, *states, *leaves)), "an array of the tape is None")
    T, N, D, H, GH = _layer_sizes(cell, library, x, W_ih, W_hh, mask, [d_out, *state0, *states, *leaves, *d_final])
    _check(_shaped(d_out, (T, N, H)) and all(_shaped(s, (N, H)) for s in (*state0, *d_final))
           and all(_shaped(s, (T, N, H)) for s in (*states, *leaves)),
           "a gradient or a tape entry does not have the layer's own shape (broadcasting)")


def why_not_segments(xp, *trees) -> str | None:
    """``None`` when :func:`over_segments` runs (every leaf a plain array of one dtype), else why not."""
    return _reason(lambda: _check_plain(_fast_library(xp), [a for t in trees for a in leaves(t)]))


def over_segments(fn, carry, step_xs, segment_xs, k, xp, reverse):
    """:func:`portable_rnn.engine.sequence._over_segments`, writing each segment's per-step results in place.

    The same segments (``k`` steps each, the last shorter) in the same order
    and the same numbers; the (T, ...) results are allocated when the first
    segment's come back and every segment's are copied into their rows and
    dropped, so they are never held twice.
    """
    n_steps = next(a.shape[0] for a in leaves(step_xs))
    starts = range(0, n_steps, k)
    order = reversed(range(len(starts))) if reverse else range(len(starts))
    joined, per_segment = None, [None] * len(starts)
    for s in order:
        t0, t1 = starts[s], min(starts[s] + k, n_steps)
        xs = (tree_map(lambda a: a[t0:t1, ...], step_xs), tree_map(lambda a: a[s, ...], segment_xs))
        carry, (step_ys, per_segment[s]) = fn(carry, xs)
        if joined is None:
            joined = tree_map(
                lambda a: xp.empty((n_steps, *a.shape[1:]), dtype=a.dtype, device=a.device), step_ys
            )
        for buffer, rows in zip(leaves(joined), leaves(step_ys)):
            buffer[t0:t1, ...] = rows
    return carry, (joined, stack_trees(per_segment, xp))


# --------------------------------------------------------------------------- torch tensors


def _numpy_views(tree):
    """The NumPy views of the torch tensors in ``tree`` (tuples / lists / None kept)."""
    if isinstance(tree, (tuple, list)):
        return tuple(_numpy_views(t) for t in tree)
    return None if tree is None else tree.numpy()


def _torch_views(tree):
    """``tree``'s NumPy arrays as torch tensors on the same memory."""
    import torch

    if isinstance(tree, (tuple, list)):
        return tuple(_torch_views(t) for t in tree)
    return None if tree is None else torch.from_numpy(tree)


def _on_numpy(library, kernel, *args):
    """Run a NumPy ``kernel``; torch tensors go in and come out as views, never copied."""
    if library == "numpy":
        return kernel(*args)
    return _torch_views(kernel(*_numpy_views(args)))


# --------------------------------------------------------------------------- helpers


def _rows_steps(N: int, T: int) -> int:
    """Steps per chunk so that a chunk has about :data:`CHUNK_ROWS` rows."""
    return max(1, min(T, -(-CHUNK_ROWS // max(N, 1))))


def _chunk_steps(N: int, T: int) -> int:
    """Steps per backward chunk: about :data:`CHUNK_ROWS` rows and at most 1/8 of the sequence.

    The chunk buffers are the backward's only scratch of size O(steps); an
    eighth of T keeps them around a tenth of the tape's bytes.
    """
    return max(1, min(_rows_steps(N, T), -(-T // 8)))


def _rows(a, t0, t1):
    """``a[t0:t1]`` (steps, N, F) as a 2-D (rows, F) array (a view when ``a`` is contiguous)."""
    return a[t0:t1].reshape(-1, a.shape[-1])


def _np_matmul_add(a, b, acc):
    """``acc += a @ b`` (NumPy's BLAS)."""
    acc += a @ b


class _NumPyBLAS:
    """Which matmul a kernel runs for an (m, k) @ (k, n) product: NumPy's, always.

    ``matmul(m, k, n)`` returns a ``(a, b, out) -> out`` function and
    ``matmul_add(m, k, n)`` an ``(a, b, acc)`` one that adds ``a @ b`` to ``acc``;
    a kernel asks once per product shape, not once per call.
    """

    def matmul(self, m, k, n):
        return np.matmul

    def matmul_add(self, m, k, n):
        return _np_matmul_add

    def lstm_gates(self, elements):
        """The LSTM's activations for a step of ``elements`` (N * H) hidden units."""
        return _NumPyLSTMGates


class _TorchBLAS(_NumPyBLAS):
    """Torch's BLAS for the RNN, LSTM and smaller GRU kernels on torch tensors' memory.

    The products run on ``torch.from_numpy`` views: no copy.

    Each choice was made from the whole layer timed against ``torch.nn``
    (interleaved in one process, float32, 2 threads) on a 2-core AMD EPYC
    (NumPy's OpenBLAS on its Haswell kernels, torch's MKL), not from products
    timed alone, which predicted neither result:

    * Never both libraries' threads: with NumPy's BLAS running products on
      two threads beside torch's thread pool (which any torch op of the
      training loop wakes), each library's threads spin while the other's
      work. Products under :data:`TORCH_MATMUL_MIN`, the size from which
      OpenBLAS uses more than the calling thread, stay with NumPy (its ~1 us
      per call beats torch's ~5 us at N = 1); every larger one goes to
      torch. With products of an inner size under 64 on NumPy's BLAS, the
      modules take 1.65x ``torch.nn``'s time instead of 0.82x (GRU) and 2.9x
      instead of 0.88x (RNN) at (32, 50, 64, 128), and 0.98x instead of 0.15x
      (GRU) at (1, 1000, 32, 64).
    * The RNN module at (64, 100, 128, 256) runs in 0.80-0.86x ``torch.nn``'s
      time with torch's BLAS and 0.91-1.12x with NumPy's (equal at N = 256).
    * The GRU module runs in 0.90-1.00x with torch's BLAS and 1.00-1.09x with
      NumPy's at (64, 100, 128, 256), but in 1.03-1.09x with torch's and
      0.91-0.98x with NumPy's at (256, 50, 512, 512), hence
      :data:`GRU_TORCH_BLAS_MAX` between the two.
    * The LSTM follows the RNN's rule for the first bullet's reason (4.1x
      ``torch.nn``'s time with torch's BLAS against 10.2x with NumPy's at
      (32, 50, 64, 128), under load); at (64, 100, 128, 256) in float32 the
      two BLAS tie within this machine's spread. With torch's BLAS it takes
      its activations from torch too (:class:`_TorchLSTMGates`), so that
      only torch's pool runs.
    """

    def __init__(self):
        import torch

        view = torch.from_numpy

        def matmul(a, b, out):
            torch.matmul(view(a), view(b), out=view(out))
            return out

        def matmul_add(a, b, acc):
            view(acc).addmm_(view(a), view(b))

        self._matmul, self._matmul_add = matmul, matmul_add

    @staticmethod
    def _torch_is_faster(m, k, n):
        return m * k * n >= TORCH_MATMUL_MIN

    def matmul(self, m, k, n):
        return self._matmul if self._torch_is_faster(m, k, n) else np.matmul

    def matmul_add(self, m, k, n):
        return self._matmul_add if self._torch_is_faster(m, k, n) else _np_matmul_add

    def lstm_gates(self, elements):
        return _TorchLSTMGates if elements >= TORCH_GATES_MIN else _NumPyLSTMGates


_NUMPY_BLAS = _NumPyBLAS()


def _blas(library, mode, N, W_hh):
    """The BLAS chooser of a kernel of batch ``N``.

    Torch's for the RNN, LSTM and smaller GRUs on torch tensors, else NumPy's.
    """
    recurrent = N * W_hh.shape[0] * W_hh.shape[1]
    if library == "torch" and (mode in ("rnn", "lstm") or (mode == "gru" and recurrent < GRU_TORCH_BLAS_MAX)):
        return _TorchBLAS()
    return _NUMPY_BLAS


def _project(x, Wx, b, Z, blas=_NUMPY_BLAS):
    """``Z[t] = x[t] @ Wx.T + b`` for all t, in chunks (x may have any strides)."""
    T, N, D = x.shape
    K = _rows_steps(N, T)
    matmul = blas.matmul(K * N, D, Wx.shape[0])
    for t0 in range(0, T, K):
        z = _rows(Z, t0, min(T, t0 + K))
        matmul(_rows(x, t0, t0 + K), Wx.T, out=z)
        if b is not None:
            np.add(z, b, out=z)


def _scaled(W, rows, factor):
    """Copy of W (or b) with ``W[rows]`` times ``factor`` (a power of two: exact)."""
    out = np.array(W, copy=True)
    out[rows] *= factor
    return out


def _halved(W, n_rows):
    """Copy of W (or b) with its first ``n_rows`` rows halved: they feed sigma(z) = tanh(z/2)/2 + 1/2."""
    return _scaled(W, slice(0, n_rows), 0.5)


def _sigmoid_from_tanh_(s):
    """In place: ``s`` holds tanh(z/2); make it sigma(z)."""
    np.multiply(s, 0.5, out=s)
    np.add(s, 0.5, out=s)


class _NumPyLSTMGates:
    """The LSTM's cell update with NumPy: one ``tanh`` for the gate block.

    The gate pre-activations come in the order i, f, o, g with the sigmoid
    rows halved by :meth:`scaled`, so that one ``tanh`` over the whole block
    gives ``tanh(g)`` and ``tanh(z/2)``, and sigma(z) = tanh(z/2)/2 + 1/2
    (NumPy's float32 ``tanh`` is faster than its ``exp``).
    """

    @staticmethod
    def scaled(W, H):
        return _halved(W, 3 * H)

    def __init__(self, N, H, dtype):
        self.H, self.scratch = H, np.empty((N, H), dtype)

    def step_(self, z, c_prev, c, tc, h):
        """In place: the gates ``z`` (N, 4H) from their pre-activations, then ``c``, ``tanh(c)`` and ``h``."""
        H = self.H
        np.tanh(z, out=z)
        _sigmoid_from_tanh_(z[:, : 3 * H])
        np.multiply(z[:, H : 2 * H], c_prev, out=c)  # c = f c_prev + i g
        np.multiply(z[:, :H], z[:, 3 * H :], out=self.scratch)
        np.add(c, self.scratch, out=c)
        np.tanh(c, out=tc)
        np.multiply(z[:, 2 * H : 3 * H], tc, out=h)


class _TorchLSTMGates:
    """The LSTM's cell update with torch's ops on the same memory.

    Torch's vectorised ``sigmoid`` costs a fifth of NumPy's ``tanh`` per
    element on this AVX2 CPU (float32 and float64) and runs on torch's thread
    pool, beside which only torch's ops may run (see :class:`_TorchBLAS`), so
    the whole update is torch's. Its ``tanh`` is slower than its ``sigmoid``,
    so every tanh is taken as tanh(a) = 2 sigma(2a) - 1: the g rows are doubled
    by :meth:`scaled` (exact) and one ``sigmoid`` covers the whole gate block.
    """

    @staticmethod
    def scaled(W, H):
        return _scaled(W, slice(3 * H, 4 * H), 2.0)

    def __init__(self, N, H, dtype):
        self.H = H

    def step_(self, z, c_prev, c, tc, h):
        """In place: the gates ``z`` (N, 4H) from their pre-activations, then ``c``, ``tanh(c)`` and ``h``."""
        import torch

        H, view = self.H, torch.from_numpy
        z, c_prev, c, tc, h = view(z), view(c_prev), view(c), view(tc), view(h)
        torch.sigmoid(z, out=z)
        g = z[:, 3 * H :]
        g.mul_(2).sub_(1)
        torch.mul(z[:, H : 2 * H], c_prev, out=c)  # c = f c_prev + i g
        c.addcmul_(z[:, :H], g)
        torch.mul(c, 2, out=tc)
        torch.sigmoid(tc, out=tc)
        tc.mul_(2).sub_(1)
        torch.mul(z[:, 2 * H : 3 * H], tc, out=h)


def _blend(new, old, m, om, tmp):
    """In place: new = m * new + (1 - m) * old (the portable masking, same order)."""
    np.multiply(new, m, out=new)
    np.multiply(om, old, out=tmp)
    np.add(new, tmp, out=new)


def _folded(b_ih, b_hh):
    if b_ih is None:
        return b_hh
    if b_hh is None:
        return b_ih
    return b_ih + b_hh


def _finish(states, mask):
    out = states[0] if mask is None else states[0] * mask
    final = tuple(np.array(s[-1], copy=True) for s in states)
    return out, final


# --------------------------------------------------------------------------- forward


def forward(cell, x, state0, W_ih, W_hh, b_ih, b_hh, mask, xp):
    """Fast :func:`portable_rnn.engine.sequence.forward`.

    Returns ``(out, final, states, cell_tape)``; the caller builds the Tape.
    """
    mode, library = _fast_mode(cell), _library(xp)
    calls[library, "forward", mode] += 1
    if mode == "rnn":
        kernel = functools.partial(_rnn_forward, cell.nonlinearity == "relu", _blas(library, mode, x.shape[1], W_hh))
    elif mode == "gru":
        kernel = functools.partial(_gru_forward, _blas(library, mode, x.shape[1], W_hh))
    else:
        kernel = functools.partial(_lstm_forward, _blas(library, mode, x.shape[1], W_hh))
    out, final, states, leaves = _on_numpy(library, kernel, x, state0, W_ih, W_hh, b_ih, b_hh, mask)
    return out, final, states, (None if leaves is None else cell.tape_type(*leaves))


def _lstm_forward(blas, x, state0, W_ih, W_hh, b_ih, b_hh, mask):
    T, N, _ = x.shape
    h_prev, c_prev = state0
    H = h_prev.shape[-1]
    # Internal column order i, f, o, g: the sigmoid gates form one block [0, 3H).
    i = np.arange(H)
    order = np.concatenate([i, i + H, i + 3 * H, i + 2 * H])
    gates = blas.lstm_gates(N * H)
    WhT = np.ascontiguousarray(gates.scaled(W_hh[order], H).T)
    b = _folded(b_ih, b_hh)
    b = None if b is None else gates.scaled(b[order], H)

    Z = np.empty((T, N, 4 * H), x.dtype)  # pre-activations, then the gates i, f, o, g in place
    Hs, Cs, TC = (np.empty((T, N, H), x.dtype) for _ in range(3))
    _project(x, gates.scaled(W_ih[order], H), b, Z, blas)
    matmul_add = blas.matmul_add(N, H, 4 * H)
    I, F, O, G = Z[..., :H], Z[..., H : 2 * H], Z[..., 2 * H : 3 * H], Z[..., 3 * H :]
    update = gates(N, H, x.dtype)
    if mask is not None:
        om, tH = 1 - mask, np.empty((N, H), x.dtype)
    for t in range(T):
        c, h = Cs[t], Hs[t]
        matmul_add(h_prev, WhT, Z[t])
        update.step_(Z[t], c_prev, c, TC[t], h)
        if mask is not None:
            _blend(h, h_prev, mask[t], om[t], tH)
            _blend(c, c_prev, mask[t], om[t], tH)
        h_prev, c_prev = h, c
    out, final = _finish((Hs, Cs), mask)
    return out, final, (Hs, Cs), (I, F, G, O, TC)


def _gru_forward(blas, x, state0, W_ih, W_hh, b_ih, b_hh, mask):
    T, N, _ = x.shape
    (h_prev,) = state0
    H = h_prev.shape[-1]
    WhT = np.ascontiguousarray(_halved(W_hh, 2 * H).T)
    # b_hr, b_hz join the hoisted projection; b_hn stays inside the reset gate.
    b = None
    if b_ih is not None or b_hh is not None:
        b = np.zeros((3 * H,), x.dtype) if b_ih is None else np.array(b_ih, copy=True)
        if b_hh is not None:
            b[: 2 * H] += b_hh[: 2 * H]
        b = _halved(b, 2 * H)
    b_hn = None if b_hh is None else b_hh[2 * H :]

    Z = np.empty((T, N, 3 * H), x.dtype)  # pre-activations, then r, z, n in place
    HWN, Hs = np.empty((T, N, H), x.dtype), np.empty((T, N, H), x.dtype)
    _project(x, _halved(W_ih, 2 * H), b, Z, blas)
    matmul = blas.matmul(N, H, 3 * H)
    RZ, R, Zg, Nc = Z[..., : 2 * H], Z[..., :H], Z[..., H : 2 * H], Z[..., 2 * H :]
    tmp, tH = np.empty((N, 3 * H), x.dtype), np.empty((N, H), x.dtype)
    tmp_rz, tmp_n = tmp[:, : 2 * H], tmp[:, 2 * H :]
    om: Any = None if mask is None else 1 - mask  # indexed only where mask is given
    for t in range(T):
        rz, n, hwn, h = RZ[t], Nc[t], HWN[t], Hs[t]
        matmul(h_prev, WhT, out=tmp)
        np.add(rz, tmp_rz, out=rz)
        np.tanh(rz, out=rz)
        _sigmoid_from_tanh_(rz)
        if b_hn is None:
            np.copyto(hwn, tmp_n)
        else:
            np.add(tmp_n, b_hn, out=hwn)
        np.multiply(R[t], hwn, out=tH)  # n = tanh(x W_in + r (h W_hn + b_hn))
        np.add(n, tH, out=n)
        np.tanh(n, out=n)
        np.subtract(h_prev, n, out=tH)  # h = (1 - z) n + z h_prev = n + z (h_prev - n)
        np.multiply(tH, Zg[t], out=tH)
        np.add(n, tH, out=h)
        if mask is not None:
            _blend(h, h_prev, mask[t], om[t], tH)
        h_prev = h
    out, final = _finish((Hs,), mask)
    return out, final, (Hs,), (R, Zg, Nc, HWN)


def _rnn_forward(relu, blas, x, state0, W_ih, W_hh, b_ih, b_hh, mask):
    T, N, _ = x.shape
    (h_prev,) = state0
    H = h_prev.shape[-1]
    WhT = np.ascontiguousarray(W_hh.T)
    Hs = np.empty((T, N, H), x.dtype)  # pre-activations, then the states in place
    _project(x, W_ih, _folded(b_ih, b_hh), Hs, blas)
    matmul = blas.matmul(N, H, H)
    tmp = np.empty((N, H), x.dtype)
    om: Any = None if mask is None else 1 - mask  # indexed only where mask is given
    for t in range(T):
        h = Hs[t]
        matmul(h_prev, WhT, out=tmp)
        np.add(h, tmp, out=h)
        if relu:
            np.maximum(h, 0, out=h)
        else:
            np.tanh(h, out=h)
        if mask is not None:
            _blend(h, h_prev, mask[t], om[t], tmp)
        h_prev = h
    out, final = _finish((Hs,), mask)
    return out, final, (Hs,), None


# --------------------------------------------------------------------------- backward


def backward(cell, tape, d_out, d_final, W_ih, W_hh, keep, bias, xp):
    """Fast :func:`portable_rnn.engine.sequence.backward`.

    ``keep`` is :func:`portable_rnn.engine.sequence.window_keep`'s result. Returns
    ``(dx, dstate0, dW_ih, dW_hh, db_ih, db_hh)``.
    """
    mode, library = _fast_mode(cell), _library(xp)
    calls[library, "backward", mode] += 1
    backward_class: Callable[..., _Backward]
    if mode == "rnn":
        backward_class = functools.partial(_RNNBackward, cell.nonlinearity == "relu")
    else:
        backward_class = _BACKWARD[mode]
    x, state0, states, cell_tape, mask = tape
    tape = (x, tuple(state0), tuple(states), None if cell_tape is None else tuple(cell_tape), mask)
    d_final = (None,) * cell.n_states if d_final is None else tuple(d_final)

    blas = _blas(library, mode, tape[0].shape[1], W_hh)

    def kernel(*arrays):
        b = backward_class(*arrays, bias)
        b.blas = blas
        return b.run()

    return _on_numpy(library, kernel, tape, d_out, d_final, W_ih, W_hh, keep)


def _sigmoid_grad(s, out):
    """``out = s (1 - s)``: the derivative of a sigmoid gate from its value."""
    np.subtract(1, s, out=out)
    np.multiply(out, s, out=out)


def _split_last(a, parts):
    """View of ``a`` (..., parts*H) as (..., parts, H); raises rather than copy."""
    return np.reshape(a, (*a.shape[:-1], parts, a.shape[-1] // parts), copy=False)


class _Backward:
    """The reverse loop shared by the three cells.

    Going back one chunk of steps at a time, :meth:`_factors` writes into the
    chunk buffer ``B`` (chunk, N, width) the parts of the pre-activation
    gradients that do not depend on the carried gradient (gate derivatives
    times tape values), for all the chunk's steps at once; each step then
    only multiplies them by its ``dh`` (and LSTM's ``dc``) and runs the
    recurrent matmul (:meth:`_step`); :meth:`_flush` turns the chunk into
    ``dx``, weight and bias gradients with a few large matmuls. ``B`` holds the
    input-side gradient in columns ``x_cols`` (W_ih's order) and the
    hidden-side one in ``h_cols``, which matches :attr:`W_hh_cols` (W_hh
    with its rows in that order); subclasses hold each cell's maths.
    """

    width = 1  # B's columns per hidden unit
    blas = _NUMPY_BLAS  # which BLAS runs each product (see _blas)

    def __init__(self, tape, d_out, d_final, W_ih, W_hh, keep, bias):
        x, self.state0, self.states, self.cell_tape, self.mask = tape
        self.x, self.d_out, self.W_ih, self.W_hh, self.keep = x, d_out, W_ih, W_hh, keep
        self.T, self.N, self.D = x.shape
        self.H, self.GH = W_hh.shape[-1], W_hh.shape[0]
        self.dtype = x.dtype
        self.K = _chunk_steps(self.N, self.T)
        N, H = self.N, self.H
        self.carry = [self._zeros(N, H) if d is None else np.array(d, copy=True) for d in d_final]
        self.new = [self._empty(N, H) for _ in self.carry]
        self.dh, self.tmp = self._empty(N, H), self._empty(N, H)
        self.om: Any = None if self.mask is None else 1 - self.mask
        self.B = self._empty(self.K, N, self.width * H)
        self.x_cols = self.h_cols = slice(None)
        self.W_hh_cols = W_hh
        self.dx = self._empty(self.T, N, self.D)
        self.dW_ih, self.dW_hh_cols = self._zeros(self.GH, self.D), self._zeros(self.GH, H)
        self.db_ih = self._zeros(self.GH) if bias else None
        self.db_hh_cols = self.db_ih  # the same gradient unless a subclass splits the sides

    def _empty(self, *shape):
        return np.empty(shape, self.dtype)

    def _zeros(self, *shape):
        return np.zeros(shape, self.dtype)

    def _unpermute(self, a):
        """A W_hh-shaped gradient from :attr:`W_hh_cols`' row order (identity by default)."""
        return a

    def _factors(self, t0, t1, k0):
        """Write the factors of steps [t0, t1) into ``B[k0:]`` (each cell's own)."""
        raise NotImplementedError

    def _step(self, t, k, dh):
        """Apply step t's factors (``B[k]``) to its carried gradient ``dh`` (each cell's own)."""
        raise NotImplementedError

    def run(self):
        T, K = self.T, self.K
        self.matmul_step = self.blas.matmul(self.N, self.W_hh_cols.shape[0], self.H)  # the recurrent product
        S = max(1, FACTOR_ELEMENTS // max(1, self.N * self.H))  # steps per factor pass
        for t1 in range(T, 0, -K):
            t0 = max(0, t1 - K)
            for s1 in range(t1, t0, -S):
                s0 = max(t0, s1 - S)
                self._factors(s0, s1, s0 - t0)
                for t in range(s1 - 1, s0 - 1, -1):
                    self._carry_step(t, t - t0)
            self._flush(t0, t1)
        dW_hh = self._unpermute(self.dW_hh_cols)
        db_hh = None if self.db_ih is None else self._unpermute(self.db_hh_cols)
        return self.dx, tuple(self.carry), self.dW_ih, dW_hh, self.db_ih, db_hh

    def _prev_parts(self, j, t0, t1):
        """``(local steps, states entering them)`` pairs covering steps [t0, t1) of state ``j``."""
        s = self.states[j]
        if t0 > 0:
            return [(slice(0, t1 - t0), s[t0 - 1 : t1 - 1])]
        parts = [(slice(0, 1), self.state0[j][None])]
        if t1 > 1:
            parts.append((slice(1, t1), s[: t1 - 1]))
        return parts

    def _carry_step(self, t, k):
        carry, new, mask = self.carry, self.new, self.mask
        if self.keep is not None:
            for d in carry:
                np.multiply(d, self.keep[t], out=d)
        dh = carry[0]
        if self.d_out is not None:
            np.add(dh, self.d_out[t], out=self.dh)
            dh = self.dh
        if mask is not None:
            np.multiply(dh, mask[t], out=self.dh)
            dh = self.dh
        self._step(t, k, dh)  # writes B[k] and new[...] (without the mask pass-through)
        if mask is not None:
            om = self.om[t]
            for n, d in zip(new, carry):
                np.multiply(om, d, out=self.tmp)
                np.add(n, self.tmp, out=n)
        self.carry, self.new = new, carry

    def _flush(self, t0, t1):
        """Input, weight and bias gradients of steps [t0, t1) from the chunk buffer."""
        n, N = t1 - t0, self.N
        rows = _rows(self.B, 0, n)
        dxw, dhw = rows[:, self.x_cols], rows[:, self.h_cols]
        rows_n, blas = rows.shape[0], self.blas
        blas.matmul(rows_n, self.GH, self.D)(dxw, self.W_ih, out=_rows(self.dx, t0, t1))
        blas.matmul_add(self.GH, rows_n, self.D)(dxw.T, _rows(self.x, t0, t1), self.dW_ih)
        matmul_add = blas.matmul_add(self.GH, rows_n, self.H)
        for steps, h_prev in self._prev_parts(0, t0, t1):
            matmul_add(dhw[steps.start * N : steps.stop * N].T, h_prev.reshape(-1, self.H), self.dW_hh_cols)
        if self.db_ih is not None:
            self.db_ih += np.sum(dxw, axis=0)
            if self.db_hh_cols is not self.db_ih:
                self.db_hh_cols += np.sum(dhw, axis=0)


class _RNNBackward(_Backward):
    """h = phi(z): dz = dh phi'(z), with phi' from h (1 - h^2 for tanh, h > 0 for relu)."""

    def __init__(self, relu, *args):
        self.relu = relu
        super().__init__(*args)

    def _factors(self, t0, t1, k0):
        h, F = self.states[0][t0:t1], self.B[k0 : k0 + t1 - t0]
        if self.relu:
            np.greater(h, 0, out=F)
        else:
            np.multiply(h, h, out=F)
            np.subtract(1, F, out=F)

    def _step(self, t, k, dh):
        dz = self.B[k]
        np.multiply(dz, dh, out=dz)
        self.matmul_step(dz, self.W_hh, out=self.new[0])


class _LSTMBackward(_Backward):
    r"""B = [di, df, dg, do] (W_ih's and W_hh's order).

    Through :math:`h = o \tanh(c)` and :math:`c = f c_{prev} + i g`:
    :math:`dc = dc_{next} + dh\, o (1 - \tanh^2 c)`, :math:`do = dh \tanh(c)\, o(1-o)`,
    :math:`di = dc\, g\, i(1-i)`, :math:`df = dc\, c_{prev} f(1-f)`,
    :math:`dg = dc\, i (1-g^2)`, :math:`dc_{prev} = dc\, f`.
    """

    width = 4

    def __init__(self, *args):
        super().__init__(*args)
        H = self.H
        self.A = self._empty(self.K, self.N, H)  # o (1 - tanh(c)^2)
        self.dc = self._empty(self.N, H)
        self.B_ifg = _split_last(self.B[..., : 3 * H], 3)  # (K, N, 3, H): the gates scaled by dc
        self.B_o = self.B[..., 3 * H :]

    def _factors(self, t0, t1, k0):
        H, k1 = self.H, k0 + t1 - t0
        i, f, g, o, tc = (leaf[t0:t1] for leaf in self.cell_tape)
        F, A = self.B[k0:k1], self.A[k0:k1]
        Fi, Ff, Fg, Fo = F[..., :H], F[..., H : 2 * H], F[..., 2 * H : 3 * H], F[..., 3 * H :]
        np.multiply(tc, tc, out=A)
        np.subtract(1, A, out=A)
        np.multiply(A, o, out=A)
        _sigmoid_grad(o, out=Fo)
        np.multiply(Fo, tc, out=Fo)
        _sigmoid_grad(i, out=Fi)
        np.multiply(Fi, g, out=Fi)
        _sigmoid_grad(f, out=Ff)
        for steps, c_prev in self._prev_parts(1, t0, t1):
            np.multiply(Ff[steps], c_prev, out=Ff[steps])
        np.multiply(g, g, out=Fg)
        np.subtract(1, Fg, out=Fg)
        np.multiply(Fg, i, out=Fg)

    def _step(self, t, k, dh):
        dc, dc_next = self.dc, self.carry[1]
        if self.mask is not None:
            np.multiply(dc_next, self.mask[t], out=self.new[1])  # scratch until overwritten below
            dc_next = self.new[1]
        np.multiply(dh, self.A[k], out=dc)
        np.add(dc, dc_next, out=dc)
        np.multiply(self.B_ifg[k], dc[:, None, :], out=self.B_ifg[k])
        np.multiply(self.B_o[k], dh, out=self.B_o[k])
        np.multiply(dc, self.cell_tape[1][t], out=self.new[1])
        self.matmul_step(self.B[k], self.W_hh, out=self.new[0])


class _GRUBackward(_Backward):
    r"""B = [dn r, dr, dz, dn]: hidden side ``[:3H]`` (W_hh rows n, r, z), input side ``[H:]``.

    Through :math:`h = n + z (h_{prev} - n)` and :math:`n = \tanh(x W_{in} + r\, hw_n)`:
    :math:`dn = dh (1 - z)(1 - n^2)`, :math:`dz = dh (h_{prev} - n)\, z(1-z)`,
    :math:`dr = dn\, hw_n\, r(1-r)`, the hidden side of n gets :math:`dn\, r`,
    and :math:`dh_{prev} = dh\, z + [dr, dz, dn\, r] W_{hh}`. Every entry of B is
    ``dh`` times a factor of the tape, so a step is one multiply and one matmul.
    """

    width = 4

    def __init__(self, *args):
        super().__init__(*args)
        H = self.H
        self.x_cols, self.h_cols = slice(H, 4 * H), slice(0, 3 * H)
        self.W_hh_cols = np.concatenate([self.W_hh[2 * H :], self.W_hh[: 2 * H]])
        if self.db_ih is not None:
            self.db_hh_cols = self._zeros(self.GH)
        self.B4 = _split_last(self.B, 4)

    def _unpermute(self, a):
        H = self.H
        return np.concatenate([a[H:], a[:H]])

    def _factors(self, t0, t1, k0):
        H = self.H
        r, z, nn, hwn = (leaf[t0:t1] for leaf in self.cell_tape)
        F = self.B[k0 : k0 + t1 - t0]
        Fnr, Fr, Fz, Fn = F[..., :H], F[..., H : 2 * H], F[..., 2 * H : 3 * H], F[..., 3 * H :]
        np.multiply(nn, nn, out=Fn)
        np.subtract(1, Fn, out=Fn)
        np.subtract(1, z, out=Fz)
        np.multiply(Fn, Fz, out=Fn)
        np.multiply(Fz, z, out=Fz)
        for steps, h_prev in self._prev_parts(0, t0, t1):
            np.subtract(h_prev, nn[steps], out=Fnr[steps])  # scratch: h_prev - n
        np.multiply(Fz, Fnr, out=Fz)
        np.multiply(Fn, r, out=Fnr)
        _sigmoid_grad(r, out=Fr)
        np.multiply(Fr, hwn, out=Fr)
        np.multiply(Fr, Fn, out=Fr)

    def _step(self, t, k, dh):
        np.multiply(self.B4[k], dh[:, None, :], out=self.B4[k])
        new = self.new[0]
        self.matmul_step(self.B[k][:, self.h_cols], self.W_hh_cols, out=new)
        np.multiply(dh, self.cell_tape[1][t], out=self.tmp)
        np.add(new, self.tmp, out=new)


_BACKWARD = {"lstm": _LSTMBackward, "gru": _GRUBackward}
#: The kernels of this module, by the name a cell gives in ``fast_kernel``.
_KERNELS = ("rnn", "lstm", "gru")
