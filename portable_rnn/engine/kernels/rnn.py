"""The RNN kernel: :class:`~portable_rnn.engine.cells.RNNCell` (tanh or relu) on NumPy memory.

Buffers: ``Hs`` (T, N, H) holds each step's pre-activation, then in place its
state h (the tape's ``states``; the cell keeps no other tape). The backward's
chunk buffer ``B`` (K, N, H) holds ``d_xw``, which is also ``d_hw``.
"""

from __future__ import annotations

import numpy as np

from ._shared import Backward as _Backward
from ._shared import Mask, finish, prepared, project


def torch_blas(N, W_hh) -> bool:
    """Whether the kernel runs its large products with torch's BLAS on torch tensors: always."""
    return True


def forward(cell, blas, x, state0, W_ih, W_hh, b_ih, b_hh, mask):
    """``(out, final, states, None)`` of :func:`~portable_rnn.engine.sequence.forward` (a full tape)."""
    T, N, _ = x.shape
    (h_prev,) = state0
    H = h_prev.shape[-1]
    W_ih, W_hh, b, _ = prepared(cell, W_ih, W_hh, b_ih, b_hh)
    WhT = np.ascontiguousarray(W_hh.T)
    Hs = np.empty((T, N, H), x.dtype)
    project(x, W_ih, b, Hs, blas)
    matmul_add = blas.matmul_add(N, H, H)
    masked = None if mask is None else Mask(mask, N, H, x.dtype)
    relu = cell.nonlinearity == "relu"
    for t in range(T):
        h = Hs[t]
        matmul_add(h_prev, WhT, h)
        if relu:
            np.maximum(h, 0, out=h)
        else:
            np.tanh(h, out=h)
        if masked is not None:
            masked.blend_(t, h, h_prev)
        h_prev = h
    out, final = finish((Hs,), mask)
    return out, final, (Hs,), None


class Backward(_Backward):
    """h = phi(z): dz = dh phi'(z), with phi' from h (1 - h^2 for tanh, h > 0 for relu)."""

    def _factors(self, t0, t1, k0):
        h, F = self.states[0][t0:t1], self.B[k0 : k0 + t1 - t0]
        if self.cell.nonlinearity == "relu":
            np.greater(h, 0, out=F)
        else:
            np.multiply(h, h, out=F)
            np.subtract(1, F, out=F)

    def _step(self, t, k, dh):
        dz = self.B[k]
        np.multiply(dz, dh, out=dz)
        self.matmul_step(dz, self.W_hh, out=self.new[0])
