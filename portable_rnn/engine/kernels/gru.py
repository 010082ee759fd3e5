r"""The GRU kernel: :class:`~portable_rnn.engine.cells.GRUCell` on NumPy memory.

Buffers, in the cell's gate order r, z, n:

``Z`` (T, N, 3H)
    each step's input pre-activations (with ``b_hr``, ``b_hz`` folded in),
    then in place its gates; the tape's ``r``, ``z``, ``n``
    (:class:`~portable_rnn.engine.cells.GRUTape`) are views of its three blocks;
``HWN`` (T, N, H)
    the tape's ``hw_n``, :math:`h_{prev} W_{hn}^T + b_{hn}`;
``Hs`` (T, N, H)
    the state h of every step.

The backward's chunk buffer ``B`` (K, N, 4H) holds [dn r, dr, dz, dn]: its
last three blocks are ``d_xw`` (``W_ih``'s order r, z, n) and its first three
``d_hw`` in the order n, r, z, matched by ``W_hh_cols`` (``W_hh``'s rows in that
order), so both sides are contiguous column windows of one buffer.
"""

from __future__ import annotations

import numpy as np

from . import tuning
from ._shared import Backward as _Backward
from ._shared import Mask, finish, prepared, project, sigmoid_from_tanh_, sigmoid_grad, split_last


def torch_blas(N, W_hh) -> bool:
    """Whether the kernel runs its large products with torch's BLAS on torch tensors.

    Below :data:`~.tuning.GRU_TORCH_BLAS_MAX` multiply-adds per recurrent
    product; above, NumPy's BLAS was faster for all of them.
    """
    return N * W_hh.shape[0] * W_hh.shape[1] < tuning.GRU_TORCH_BLAS_MAX


def forward(cell, blas, x, state0, W_ih, W_hh, b_ih, b_hh, mask):
    """``(out, final, states, tape)`` of :func:`~portable_rnn.engine.sequence.forward` (a full tape)."""
    T, N, _ = x.shape
    (h_prev,) = state0
    H = h_prev.shape[-1]
    W_ih, W_hh, b_x, b_h = prepared(cell, W_ih, W_hh, b_ih, b_hh)
    # b_hr, b_hz join the hoisted projection; b_hn stays inside the reset gate.
    b, b_hn = b_x, None
    if b_h is not None:
        b_rz = np.concatenate([b_h[: 2 * H], np.zeros((H,), x.dtype)])
        b, b_hn = (b_rz if b_x is None else b_x + b_rz), b_h[2 * H :]
    WhT = np.ascontiguousarray(W_hh.T)
    Z = np.empty((T, N, 3 * H), x.dtype)
    HWN, Hs = np.empty((T, N, H), x.dtype), np.empty((T, N, H), x.dtype)
    project(x, W_ih, b, Z, blas)
    matmul = blas.matmul(N, H, 3 * H)
    RZ, R, Zg, Nc = Z[..., : 2 * H], Z[..., :H], Z[..., H : 2 * H], Z[..., 2 * H :]
    hw, tH = np.empty((N, 3 * H), x.dtype), np.empty((N, H), x.dtype)
    hw_rz, hw_n = hw[:, : 2 * H], hw[:, 2 * H :]
    masked = None if mask is None else Mask(mask, N, H, x.dtype)
    for t in range(T):
        rz, n, hwn, h = RZ[t], Nc[t], HWN[t], Hs[t]
        matmul(h_prev, WhT, out=hw)
        np.add(rz, hw_rz, out=rz)
        np.tanh(rz, out=rz)
        sigmoid_from_tanh_(rz)
        if b_hn is None:
            np.copyto(hwn, hw_n)
        else:
            np.add(hw_n, b_hn, out=hwn)
        np.multiply(R[t], hwn, out=tH)  # n = tanh(x W_in + r (h W_hn + b_hn))
        np.add(n, tH, out=n)
        np.tanh(n, out=n)
        np.subtract(h_prev, n, out=tH)  # h = (1 - z) n + z h_prev = n + z (h_prev - n)
        np.multiply(tH, Zg[t], out=tH)
        np.add(n, tH, out=h)
        if masked is not None:
            masked.blend_(t, h, h_prev)
        h_prev = h
    out, final = finish((Hs,), mask)
    return out, final, (Hs,), (R, Zg, Nc, HWN)


class Backward(_Backward):
    r"""Through :math:`h = n + z (h_{prev} - n)` and :math:`n = \tanh(x W_{in} + r\, hw_n)`:

    :math:`dn = dh (1 - z)(1 - n^2)`, :math:`dz = dh (h_{prev} - n)\, z(1-z)`,
    :math:`dr = dn\, hw_n\, r(1-r)`, the hidden side of n gets :math:`dn\, r`,
    and :math:`dh_{prev} = dh\, z + [dn\, r, dr, dz] W_{hh,(n,r,z)}`. Every
    entry of ``B`` is ``dh`` times a factor of the tape, so a step is one
    multiply and one matmul.
    """

    width = 4

    def __init__(self, *args):
        super().__init__(*args)
        H = self.H
        self.x_cols, self.h_cols = slice(H, 4 * H), slice(0, 3 * H)
        self.W_hh_cols = np.concatenate([self.W_hh[2 * H :], self.W_hh[: 2 * H]])
        if self.db_ih is not None:
            self.db_hh_cols = self._zeros(self.GH)
        self.B4 = split_last(self.B, 4)

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
        sigmoid_grad(r, out=Fr)
        np.multiply(Fr, hwn, out=Fr)
        np.multiply(Fr, Fn, out=Fr)

    def _step(self, t, k, dh):
        np.multiply(self.B4[k], dh[:, None, :], out=self.B4[k])
        new = self.new[0]
        self.matmul_step(self.B[k][:, self.h_cols], self.W_hh_cols, out=new)
        np.multiply(dh, self.cell_tape[1][t], out=self.tmp)
        np.add(new, self.tmp, out=new)
