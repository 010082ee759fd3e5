r"""The LSTM kernel: :class:`~portable_rnn.engine.cells.LSTMCell` (no projection) on NumPy memory.

Buffers, in the cell's gate order i, f, g, o:

``Z`` (T, N, 4H)
    each step's pre-activations, then in place its gates; the tape's ``i``,
    ``f``, ``g``, ``o`` (:class:`~portable_rnn.engine.cells.LSTMTape`) are views
    of its four blocks;
``Hs``, ``Cs`` (T, N, H)
    the states h and c of every step;
``TC`` (T, N, H)
    the tape's ``tanh_c``.

The backward's chunk buffer ``B`` (K, N, 4H) holds ``d_xw`` (which is also
``d_hw``) in the same gate order, and ``A`` (K, N, H) the factor
:math:`o (1 - \tanh^2 c)` of ``dc``.
"""

from __future__ import annotations

import numpy as np

from . import tuning
from ._shared import Backward as _Backward
from ._shared import Mask, finish, prepared, project, sigmoid_from_tanh_, sigmoid_grad, split_last


def torch_blas(N, W_hh) -> bool:
    """Whether the kernel runs its large products with torch's BLAS on torch tensors: always."""
    return True


class NumPyUpdate:
    """The cell update with NumPy: one ``tanh`` over the gate block.

    The weights are the cell's own :meth:`~portable_rnn.engine.cells.Cell.prepared`
    ones, whose sigmoid rows (i, f, o) are halved, so one ``tanh`` gives
    ``tanh(g)`` and ``tanh(z/2)``, and sigma(z) = tanh(z/2)/2 + 1/2.
    """

    @staticmethod
    def scaled(a):
        return a

    def __init__(self, N, H, dtype):
        self.H, self.scratch = H, np.empty((N, H), dtype)

    def step_(self, z, c_prev, c, tc, h):
        """In place: the gates ``z`` (N, 4H) from their pre-activations, then ``c``, ``tanh(c)`` and ``h``."""
        H = self.H
        np.tanh(z, out=z)
        sigmoid_from_tanh_(z[:, : 2 * H])
        sigmoid_from_tanh_(z[:, 3 * H :])
        np.multiply(z[:, H : 2 * H], c_prev, out=c)  # c = f c_prev + i g
        np.multiply(z[:, :H], z[:, 2 * H : 3 * H], out=self.scratch)
        np.add(c, self.scratch, out=c)
        np.tanh(c, out=tc)
        np.multiply(z[:, 3 * H :], tc, out=h)


class TorchUpdate:
    """The cell update with torch's ops on the same memory.

    Torch's vectorised ``sigmoid`` is several times cheaper per element than
    NumPy's ``tanh``, and its ``tanh`` slower than its ``sigmoid``, so every tanh
    is taken as tanh(a) = 2 sigma(2a) - 1: the prepared weights are doubled
    (exact), which makes the halved sigmoid rows whole again and the g rows
    2g, and one ``sigmoid`` covers the gate block. Only torch's ops run, since
    NumPy's beside torch's thread pool would wait on it.
    """

    @staticmethod
    def scaled(a):
        return None if a is None else a * 2

    def __init__(self, N, H, dtype):
        self.H = H

    def step_(self, z, c_prev, c, tc, h):
        """In place: the gates ``z`` (N, 4H) from their pre-activations, then ``c``, ``tanh(c)`` and ``h``."""
        import torch

        H, view = self.H, torch.from_numpy
        z, c_prev, c, tc, h = view(z), view(c_prev), view(c), view(tc), view(h)
        torch.sigmoid(z, out=z)
        g = z[:, 2 * H : 3 * H]
        g.mul_(2).sub_(1)
        torch.mul(z[:, H : 2 * H], c_prev, out=c)  # c = f c_prev + i g
        c.addcmul_(z[:, :H], g)
        torch.mul(c, 2, out=tc)
        torch.sigmoid(tc, out=tc)
        tc.mul_(2).sub_(1)
        torch.mul(z[:, 3 * H :], tc, out=h)


def update_for(blas, N, H):
    """Torch's update for torch tensors from :data:`~.tuning.TORCH_GATES_MIN` hidden units per step, else NumPy's."""
    return TorchUpdate if blas.torch and N * H >= tuning.TORCH_GATES_MIN else NumPyUpdate


def forward(cell, blas, x, state0, W_ih, W_hh, b_ih, b_hh, mask):
    """``(out, final, states, tape)`` of :func:`~portable_rnn.engine.sequence.forward` (a full tape)."""
    T, N, _ = x.shape
    h_prev, c_prev = state0
    H = h_prev.shape[-1]
    Update = update_for(blas, N, H)
    W_ih, W_hh, b, _ = (Update.scaled(a) for a in prepared(cell, W_ih, W_hh, b_ih, b_hh))
    WhT = np.ascontiguousarray(W_hh.T)
    Z = np.empty((T, N, 4 * H), x.dtype)
    Hs, Cs, TC = (np.empty((T, N, H), x.dtype) for _ in range(3))
    project(x, W_ih, b, Z, blas)
    matmul_add = blas.matmul_add(N, H, 4 * H)
    update = Update(N, H, x.dtype)
    masked = None if mask is None else Mask(mask, N, H, x.dtype)
    for t in range(T):
        matmul_add(h_prev, WhT, Z[t])
        update.step_(Z[t], c_prev, Cs[t], TC[t], Hs[t])
        if masked is not None:
            masked.blend_(t, Hs[t], h_prev)
            masked.blend_(t, Cs[t], c_prev)
        h_prev, c_prev = Hs[t], Cs[t]
    out, final = finish((Hs, Cs), mask)
    i, f, g, o = (Z[..., k * H : (k + 1) * H] for k in range(4))
    return out, final, (Hs, Cs), (i, f, g, o, TC)


class Backward(_Backward):
    r"""``B`` = [di, df, dg, do], ``W_ih``'s and ``W_hh``'s row order.

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
        self.B_ifg = split_last(self.B[..., : 3 * H], 3)  # (K, N, 3, H): the gates scaled by dc
        self.B_o = self.B[..., 3 * H :]

    def _factors(self, t0, t1, k0):
        H, k1 = self.H, k0 + t1 - t0
        i, f, g, o, tc = (leaf[t0:t1] for leaf in self.cell_tape)
        F, A = self.B[k0:k1], self.A[k0:k1]
        Fi, Ff, Fg, Fo = F[..., :H], F[..., H : 2 * H], F[..., 2 * H : 3 * H], F[..., 3 * H :]
        np.multiply(tc, tc, out=A)
        np.subtract(1, A, out=A)
        np.multiply(A, o, out=A)
        sigmoid_grad(o, out=Fo)
        np.multiply(Fo, tc, out=Fo)
        sigmoid_grad(i, out=Fi)
        np.multiply(Fi, g, out=Fi)
        sigmoid_grad(f, out=Ff)
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
