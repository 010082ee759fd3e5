"""What the three kernels share: views of torch memory, the BLAS choice, buffers and the reverse loop."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import tuning


def rows_steps(N: int, T: int) -> int:
    """Steps per chunk so that a chunk has about :data:`~.tuning.CHUNK_ROWS` rows."""
    return max(1, min(T, -(-tuning.CHUNK_ROWS // max(N, 1))))


def chunk_steps(N: int, T: int) -> int:
    """Steps per backward chunk: about ``CHUNK_ROWS`` rows and at most 1/8 of the sequence.

    The chunk buffers are the backward's only scratch of size O(steps); an
    eighth of T keeps them around a tenth of the tape's bytes.
    """
    return max(1, min(rows_steps(N, T), -(-T // 8)))


def rows(a, t0, t1):
    """``a[t0:t1]`` (steps, N, F) as a 2-D (rows, F) array (a view when ``a`` is contiguous)."""
    return a[t0:t1].reshape(-1, a.shape[-1])


def np_matmul_add(a, b, acc):
    """``acc += a @ b`` (NumPy's BLAS)."""
    acc += a @ b


class NumPyBLAS:
    """Which matmul a kernel runs for an (m, k) @ (k, n) product: NumPy's, always.

    ``matmul(m, k, n)`` returns an ``(a, b, out) -> out`` function and
    ``matmul_add(m, k, n)`` an ``(a, b, acc)`` one that adds ``a @ b`` to ``acc``;
    a kernel asks once per product shape, not once per call.
    """

    torch = False

    def matmul(self, m, k, n):
        return np.matmul

    def matmul_add(self, m, k, n):
        return np_matmul_add


class TorchBLAS(NumPyBLAS):
    """Torch's BLAS for products from :data:`~.tuning.TORCH_MATMUL_MIN` multiply-adds, on ``torch.from_numpy`` views.

    On torch tensors the training loop around a kernel wakes torch's thread
    pool; NumPy's BLAS running two threads of its own beside it makes each
    library's threads spin while the other's work, so every product large
    enough for OpenBLAS to thread goes to torch, and smaller ones keep NumPy's
    cheaper call (~1 us against ~5 us).
    """

    torch = True

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
        return m * k * n >= tuning.TORCH_MATMUL_MIN

    def matmul(self, m, k, n):
        return self._matmul if self._torch_is_faster(m, k, n) else np.matmul

    def matmul_add(self, m, k, n):
        return self._matmul_add if self._torch_is_faster(m, k, n) else np_matmul_add


NUMPY_BLAS = NumPyBLAS()


def project(x, Wx, b, Z, blas=NUMPY_BLAS):
    """``Z[t] = x[t] @ Wx.T + b`` for all t, in chunks (x may have any strides)."""
    T, N, D = x.shape
    K = rows_steps(N, T)
    matmul = blas.matmul(K * N, D, Wx.shape[0])
    for t0 in range(0, T, K):
        z = rows(Z, t0, min(T, t0 + K))
        matmul(rows(x, t0, t0 + K), Wx.T, out=z)
        if b is not None:
            np.add(z, b, out=z)


def prepared(cell, W_ih, W_hh, b_ih, b_hh):
    """:meth:`~portable_rnn.engine.cells.Cell.prepared` on NumPy arrays: the portable loop's weights and biases."""
    from array_api_compat import numpy as xp

    return cell.prepared(W_ih, W_hh, b_ih, b_hh, xp=xp)


def sigmoid_from_tanh_(s):
    """In place: ``s`` holds tanh(z/2); make it sigma(z)."""
    np.multiply(s, 0.5, out=s)
    np.add(s, 0.5, out=s)


def sigmoid_grad(s, out):
    """``out = s (1 - s)``: the derivative of a sigmoid gate from its value."""
    np.subtract(1, s, out=out)
    np.multiply(out, s, out=out)


def split_last(a, parts):
    """View of ``a`` (..., parts*H) as (..., parts, H); raises rather than copy."""
    return np.reshape(a, (*a.shape[:-1], parts, a.shape[-1] // parts), copy=False)


class Mask:
    """The forward's masked blend, ``new = m new + (1 - m) old``, in the portable path's order."""

    def __init__(self, mask, N, H, dtype):
        self.mask, self.om, self.tmp = mask, 1 - mask, np.empty((N, H), dtype)

    def blend_(self, t, new, old):
        np.multiply(new, self.mask[t], out=new)
        np.multiply(self.om[t], old, out=self.tmp)
        np.add(new, self.tmp, out=new)


def finish(states, mask):
    """``(out, final)`` from the (T, N, H) states: out masked, the final states copied out of the buffers."""
    out = states[0] if mask is None else states[0] * mask
    final = tuple(np.array(s[-1], copy=True) for s in states)
    return out, final


class Backward:
    """The reverse loop shared by the three kernels.

    Going back one chunk of steps at a time, :meth:`_factors` writes into the
    chunk buffer ``B`` (chunk, N, width) the gradient factors that do not
    depend on the carried gradient, for several steps at once; each step then
    multiplies them by its ``dh`` (and the LSTM's ``dc``) and runs the
    recurrent matmul (:meth:`_step`); :meth:`_flush` turns the chunk into
    ``dx``, weight and bias gradients with a few large matmuls, so no
    (T, N, G*H) gradient is ever held. ``B`` holds ``d_xw`` in columns
    ``x_cols`` (``W_ih``'s row order) and ``d_hw`` in ``h_cols``, matching
    :attr:`W_hh_cols` (``W_hh``'s rows in that order).
    """

    width = 1  # B's columns per hidden unit

    def __init__(self, cell, tape, d_out, d_final, W_ih, W_hh, keep, bias, blas):
        x, self.state0, self.states, self.cell_tape, self.mask = tape[:5]
        self.cell, self.blas = cell, blas
        self.x, self.d_out, self.W_ih, self.W_hh, self.keep = x, d_out, W_ih, W_hh, keep
        self.T, self.N, self.D = x.shape
        self.H, self.GH = W_hh.shape[-1], W_hh.shape[0]
        self.dtype = x.dtype
        self.K = chunk_steps(self.N, self.T)
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
        """``(dx, dstate0, dW_ih, dW_hh, db_ih, db_hh)``."""
        T, K = self.T, self.K
        self.matmul_step = self.blas.matmul(self.N, self.W_hh_cols.shape[0], self.H)  # the recurrent product
        S = max(1, tuning.FACTOR_ELEMENTS // max(1, self.N * self.H))  # steps per factor pass
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
        chunk = rows(self.B, 0, n)
        dxw, dhw = chunk[:, self.x_cols], chunk[:, self.h_cols]
        rows_n, blas = chunk.shape[0], self.blas
        blas.matmul(rows_n, self.GH, self.D)(dxw, self.W_ih, out=rows(self.dx, t0, t1))
        blas.matmul_add(self.GH, rows_n, self.D)(dxw.T, rows(self.x, t0, t1), self.dW_ih)
        matmul_add = blas.matmul_add(self.GH, rows_n, self.H)
        for steps, h_prev in self._prev_parts(0, t0, t1):
            matmul_add(dhw[steps.start * N : steps.stop * N].T, h_prev.reshape(-1, self.H), self.dW_hh_cols)
        if self.db_ih is not None:
            self.db_ih += np.sum(dxw, axis=0)
            if self.db_hh_cols is not self.db_ih:
                self.db_hh_cols += np.sum(dhw, axis=0)
