r"""One time step of each recurrent cell, forward and backward.

A cell sees *pre-activations*: the sequence loop hoists the input projection
:math:`x_t W_{ih}^T + b` out of the time loop (one matmul for all steps) and
hands each step its slice ``xw`` (N, G*H), G being the number of gates. The
step adds the recurrent projection :math:`h_{t-1} W_{hh}^T` and applies the
gate equations. Layout is PyTorch's: batch-major states (N, H), gates stacked
along the last axis in PyTorch's order (LSTM i, f, g, o; GRU r, z, n).

The backward of a step is split in two so that the time loop holds only what
is sequential: :meth:`Cell.step_derivatives` computes every factor of the
chain rule that depends on the forward's values alone, elementwise, so an
eager engine calls it on many steps at once before the loop (a compiled
``lax.scan`` calls it in the step, where XLA fuses it), and
:meth:`Cell.step_backward` applies them to the carried gradient. On a GPU,
where an eager step is launch-bound, this is what makes the backward cheap:
an LSTM step applies its derivatives in five kernels, where computing them in
the step took twenty-three.

Sigmoid gates use :math:`\sigma(z) = \tfrac12\tanh(z/2) + \tfrac12` on the
rows :meth:`Cell.prepared` halved: a gate only multiplies other terms, so an
absolute error of an ulp of 1 is all it needs (6.5e-8 in float32, 2.2e-16 in
float64 over [-40, 40]), it never overflows, and the sigmoid gates and a
tanh candidate share one ``tanh``. The derivatives reuse post-activations:
:math:`\sigma' = \sigma(1-\sigma)`, :math:`\tanh' = 1 - \tanh^2`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from .._validation import check_bool, check_int
from .._validation import placement as device

__all__ = ["Cell", "RNNCell", "LSTMCell", "GRUCell", "LSTMTape", "GRUTape", "LSTMDerivatives", "GRUDerivatives",
           "ResetBeforeDerivatives", "CELLS", "cell_for"]


class LSTMTape(NamedTuple):
    """What an LSTM step keeps for its backward: the four gates and tanh(c_t), each (..., H)."""

    i: object
    f: object
    g: object
    o: object
    tanh_c: object


class GRUTape(NamedTuple):
    """What a GRU step keeps: gates r, z, candidate n and hw_n = h_{t-1} W_hn^T + b_hn, each (..., H)."""

    r: object
    z: object
    n: object
    hw_n: object


class LSTMDerivatives(NamedTuple):
    r"""An LSTM step's local derivatives (:meth:`LSTMCell.step_derivatives`).

    ``gates`` (..., 4H) is :math:`[g\,\sigma'(z_i),\ c_{t-1}\sigma'(z_f),\ i\tanh'(z_g),\ \tanh(c_t)\,\sigma'(z_o)]`,
    whose product with :math:`[dc, dc, dc, dm]` is the pre-activation gradient;
    ``m_to_c`` (..., H) is :math:`\partial m_t / \partial c_t = o (1 - \tanh^2 c_t)`
    and ``f`` (..., H) is :math:`\partial c_t / \partial c_{t-1}`.
    """

    gates: object
    m_to_c: object
    f: object


class GRUDerivatives(NamedTuple):
    r"""A GRU step's local derivatives (:meth:`GRUCell.step_derivatives`).

    The input and recurrent pre-activation gradients are ``dh`` (repeated over
    the three gates) times ``input_side`` and ``hidden_side`` (..., 3H), which
    differ in the n block by the factor r on :math:`h_{t-1} W_{hn}^T`; ``z``
    (..., H) is :math:`\partial h_t / \partial h_{t-1}` outside :math:`W_{hh}`.
    """

    input_side: object
    hidden_side: object
    z: object


class ResetBeforeDerivatives(NamedTuple):
    r"""A ``GRUCell(reset_after=False)`` step's local derivatives, each (..., H).

    The pre-activation gradients of n and z are ``dh`` times ``through_n`` and
    ``through_z``; r's is :math:`d(r h_{t-1}) = dn\, W_{hn}` times ``through_r``.
    """

    through_n: object
    through_z: object
    through_r: object
    r: object
    z: object


class Cell:
    """What the engine asks of a cell: declarations with defaults, and three methods.

    A cell class subclasses this (usually as a frozen dataclass whose fields
    are its options) and declares as class attributes:

    ``mode``
        its name in :data:`CELLS` and in the layer specs ("rnn", "lstm", "gru");
    ``gates``, ``n_gates``
        the names of its gate blocks, in the row order of ``W_ih``, ``W_hh``
        and the biases, and their number G;
    ``states``, ``n_states``
        the names of its states, h first, and their number (default ``("h",)``);
    ``recurrent_bias_inside``
        whether ``b_hh`` is added in the step (GRU) rather than folded into
        the hoisted input projection (default ``False``);
    ``halved_gates``
        the gate blocks whose weight and bias rows :meth:`prepared` halves, so
        the step receives :math:`z/2` there (default none);
    ``tape_type``
        the NamedTuple a step keeps for its backward (default ``None``: the
        states suffice);
    ``proj_size``
        the size of a projected h, 0 for none (default);
    :meth:`cell_params`
        the cell's parameters beyond ``W_ih``, ``W_hh`` and the biases (none
        by default), which :meth:`step`, :meth:`step_backward` and
        :meth:`cell_params_grads` take as keywords;
    ``applies_W_hh``
        whether :meth:`step_backward` takes ``W_hh=`` and returns the whole
        gradient of the previous state (default ``False``: the engine adds
        ``d_hw @ W_hh``, right when the recurrent product is
        :math:`h_{t-1} W_{hh}^T` for all gates; otherwise also write
        :meth:`weight_hh_grad`);
    ``fixed_init``
        the constant a :meth:`cell_params` parameter starts at, by name stem
        (a normalisation's gain starts at 1); the others are drawn as the
        weights (default none);
    ``takes_h_mask``
        whether :meth:`step` takes ``h_mask=`` (N, R), recurrent dropout's
        factor on :math:`h_{t-1}` where it enters :math:`h_{t-1} W_{hh}^T`
        (the engine applies it in the backward; default ``False``);
    ``fast_kernel``
        the NumPy / CPU-torch kernel (:mod:`portable_rnn.engine.kernels`)
        computing exactly this class's maths, or ``None`` (default). Only the
        class that sets it gets it: a subclass may change the maths.

    and writes :meth:`step`, :meth:`step_derivatives` and :meth:`step_backward`.
    """

    mode: ClassVar[str]
    gates: ClassVar[tuple]
    states: ClassVar[tuple] = ("h",)
    n_gates: ClassVar[int]
    n_states: ClassVar[int] = 1
    recurrent_bias_inside: ClassVar[bool] = False
    halved_gates: ClassVar[tuple] = ()
    tape_type: ClassVar[type | None] = None
    proj_size: int = 0
    applies_W_hh: ClassVar[bool] = False
    fast_kernel: ClassVar[str | None] = None
    fixed_init: ClassVar[dict] = {}
    takes_h_mask: ClassVar[bool] = False

    def prepared(self, W_ih, W_hh, b_ih, b_hh, *, xp):
        """``(W_ih, W_hh, b_x, b_h)`` as the time loop uses them, made once per sequence.

        ``b_x`` joins the hoisted input projection and ``b_h`` is added inside
        the step: ``b_hh`` is folded into ``b_x`` unless
        ``recurrent_bias_inside``. Then the rows of ``halved_gates`` are halved
        (exact: a power of two), so the step gets :math:`z/2` there. The fast
        kernels start from the same arrays.
        """
        b_x, b_h = b_ih, b_hh
        if not self.recurrent_bias_inside:
            b_x, b_h = (b_ih if b_hh is None else b_hh if b_ih is None else b_ih + b_hh), None
        if not self.halved_gates:
            return W_ih, W_hh, b_x, b_h
        H, dev = W_hh.shape[0] // self.n_gates, device(W_hh)
        scale = xp.concat([xp.full((H,), 0.5 if gate in self.halved_gates else 1.0, dtype=W_hh.dtype, device=dev)
                           for gate in range(self.n_gates)])
        rows = scale[:, None]
        return (W_ih * rows, W_hh * rows, None if b_x is None else b_x * scale, None if b_h is None else b_h * scale)

    def cell_params(self, hidden_size: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        """``{keyword: (name, shape)}`` of the cell's own parameters per layer and direction.

        ``name`` is the stem of the layers' parameter name (``{name}_l{k}``,
        as ``weight_hh_l{k}``); an LSTM's projection is ``{"W_hr": ("weight_hr", (P, H))}``.
        """
        return {}

    def cell_params_grads(self, d_xw, d_h, states_prev, states, tape, step_terms=None, *, xp, **params) -> dict:
        """The gradients of :meth:`cell_params`, ``{keyword: array}``, summed over steps and batch.

        ``d_xw`` (T, N, G*H) and ``d_h`` (T, N, R) are every step's
        pre-activation and h gradients, ``states_prev`` and ``states`` the
        states entering and leaving each step, ``tape`` the cell's tapes, and
        ``step_terms`` every step's fourth value of :meth:`step_backward`
        stacked over time (``None`` when it returns three).
        """
        return {}

    def step(self, xw, state, W_hh, b_hh, *, xp):
        """One step: ``(new_state, tape)`` from the input pre-activation ``xw`` (N, G*H) and ``state``."""
        raise NotImplementedError

    def step_derivatives(self, state, state_prev, tape, *, xp):
        """The step's local derivatives (gate derivatives times tape values), elementwise over any leading axes."""
        raise NotImplementedError

    def step_backward(self, d_state, derivatives, *, xp):
        """``(d_xw, d_hw, d_state_prev)`` from the carried gradient ``d_state`` of one step.

        ``d_xw`` (N, G*H) is the gradient of the input pre-activation;
        ``d_hw`` that of the recurrent one, or ``None`` when it equals
        ``d_xw``; ``d_state_prev`` the previous state's gradient without the
        path through ``W_hh`` (the engine adds ``d_hw @ W_hh``), with
        ``None`` for a part that has no other path (the RNN's h).
        """
        raise NotImplementedError

    def weight_hh_grad(self, d_hw, h_prev, tape, *, xp):
        r""":math:`dW_{hh} = \sum_{t,n} d_{hw}^T h_{t-1}` (G*H, H) from every step's ``d_hw`` (T, N, G*H).

        A contraction over time and batch together, never a reshape that
        would merge them (a batch-sharded array would be gathered).
        """
        return xp.tensordot(d_hw, h_prev, axes=([0, 1], [0, 1]))


@dataclass(frozen=True)
class RNNCell(Cell):
    r"""Elman RNN cell.

    .. math::

        h_t = \phi(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh}),
        \qquad \phi \in \{\tanh, \mathrm{relu}\}

    Both biases are folded into the hoisted input projection.
    """

    nonlinearity: str = "tanh"
    mode: ClassVar[str] = "rnn"
    gates: ClassVar[tuple] = ("h",)
    n_gates: ClassVar[int] = 1
    fast_kernel: ClassVar[str | None] = "rnn"
    takes_h_mask: ClassVar[bool] = True

    def __post_init__(self):
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"nonlinearity must be 'tanh' or 'relu', got {self.nonlinearity!r}"
            )

    def step(self, xw, state, W_hh, b_hh, *, xp, h_mask=None):
        (h_prev,) = state
        z = xw + _dropped(h_prev, h_mask) @ xp.matrix_transpose(W_hh)
        h = xp.tanh(z) if self.nonlinearity == "tanh" else xp.maximum(z, xp.zeros_like(z))
        return (h,), None

    def step_derivatives(self, state, state_prev, tape, *, xp):
        r""":math:`\phi'(z)` from :math:`h = \phi(z)`: :math:`1 - h^2` for tanh, :math:`[h > 0]` for relu (..., H)."""
        (h,) = state
        if self.nonlinearity == "tanh":
            return 1 - h * h
        return xp.astype(h > 0, h.dtype)

    def step_backward(self, d_state, derivatives, *, xp):
        (dh,) = d_state
        return dh * derivatives, None, (None,)


@dataclass(frozen=True)
class LSTMCell(Cell):
    r"""Long short-term memory cell (PyTorch gate order i, f, g, o), optionally projected or with peepholes.

    .. math::

        z &= x_t W_{ih}^T + h_{t-1} W_{hh}^T + b_{ih} + b_{hh}
             = [z_i, z_f, z_g, z_o] \\
        i &= \sigma(z_i), \quad f = \sigma(z_f), \quad
        g = \tanh(z_g), \quad o = \sigma(z_o) \\
        c_t &= f \odot c_{t-1} + i \odot g \\
        m_t &= o \odot \tanh(c_t) \\
        h_t &= m_t \quad\text{or, with } \texttt{proj\_size} = P > 0, \quad
        h_t = m_t W_{hr}^T

    With a projection, ``W_hr`` (P, H) is a keyword of :meth:`step` and
    :meth:`step_backward`, h is (N, P) and ``W_hh`` (4H, P); c stays (N, H).
    With ``peephole=True`` (Gers & Schmidhuber 2000) the gates also see the
    cell state through diagonal weights ``w_ci``, ``w_cf``, ``w_co`` (H,):

    .. math::

        i = \sigma(z_i + w_{ci} \odot c_{t-1}), \quad
        f = \sigma(z_f + w_{cf} \odot c_{t-1}), \quad
        o = \sigma(z_o + w_{co} \odot c_t)

    The tape of a step is an :class:`LSTMTape` ``(i, f, g, o, tanh(c_t))``
    either way: :math:`m_t` is recomputed from it. :meth:`step` receives
    ``xw`` and ``W_hh`` with the i, f and o rows halved (``halved_gates``),
    so that one ``tanh`` serves all four gates.

    Parameters
    ----------
    proj_size : int, default 0
        P, the size of h; 0 is no projection (h has H features).
    peephole : bool, default False
    """

    proj_size: int = 0
    peephole: bool = False
    mode: ClassVar[str] = "lstm"
    gates: ClassVar[tuple] = ("i", "f", "g", "o")
    states: ClassVar[tuple] = ("h", "c")
    n_gates: ClassVar[int] = 4
    n_states: ClassVar[int] = 2
    halved_gates: ClassVar[tuple] = (0, 1, 3)
    tape_type: ClassVar[type] = LSTMTape
    fast_kernel: ClassVar[str | None] = "lstm"
    takes_h_mask: ClassVar[bool] = True

    def __post_init__(self):
        object.__setattr__(self, "proj_size", check_int("proj_size", self.proj_size, minimum=0))
        check_bool("peephole", self.peephole)

    def cell_params(self, hidden_size):
        H, params = hidden_size, dict[str, tuple[str, tuple[int, ...]]]()
        if self.proj_size:
            params["W_hr"] = ("weight_hr", (self.proj_size, H))
        if self.peephole:
            params.update({f"w_c{gate}": (f"weight_c{gate}", (H,)) for gate in "ifo"})
        return params

    def step(self, xw, state, W_hh, b_hh, *, xp, W_hr=None, w_ci=None, w_cf=None, w_co=None, h_mask=None):
        h_prev, c_prev = state
        H = c_prev.shape[-1]
        z = xw + _dropped(h_prev, h_mask) @ xp.matrix_transpose(W_hh)  # [z_i/2, z_f/2, z_g, z_o/2]
        if self.peephole:  # the halved rows take half the peephole terms
            half_c = 0.5 * c_prev
            z = xp.concat([z[..., :H] + w_ci * half_c, z[..., H : 2 * H] + w_cf * half_c, z[..., 2 * H :]], axis=-1)
        t = xp.tanh(z)
        s = 0.5 * t + 0.5  # sigmoid(z_i), sigmoid(z_f), sigmoid(z_o); the g block is unused
        i, f = s[..., :H], s[..., H : 2 * H]
        g = t[..., 2 * H : 3 * H]
        c = f * c_prev + i * g
        o = 0.5 * xp.tanh(z[..., 3 * H :] + 0.5 * w_co * c) + 0.5 if self.peephole else s[..., 3 * H :]
        tanh_c = xp.tanh(c)
        m = o * tanh_c
        h = m @ xp.matrix_transpose(W_hr) if self.proj_size else m
        return (h, c), LSTMTape(i, f, g, o, tanh_c)

    def unprojected(self, tape):
        r""":math:`m_t = o \odot \tanh(c_t)` (..., H) from a tape: what ``W_hr`` projects to h."""
        return tape.o * tape.tanh_c

    def step_derivatives(self, state, state_prev, tape, *, xp):
        r"""The :class:`LSTMDerivatives` of steps (any leading axes).

        Through :math:`m = o \tanh(c)` and :math:`c = f c_{t-1} + i g`, each
        gate's pre-activation gradient is :math:`dc` (i, f, g) or :math:`dm`
        (o) times a factor of the forward's values.
        """
        _, c_prev = state_prev
        i, f, g, o, tanh_c = tape
        gates = xp.concat(
            [g * (i * (1 - i)), c_prev * (f * (1 - f)), i * (1 - g * g), tanh_c * (o * (1 - o))], axis=-1
        )
        return LSTMDerivatives(gates, o * (1 - tanh_c * tanh_c), f)

    def step_backward(self, d_state, derivatives, *, xp, W_hr=None, w_ci=None, w_cf=None, w_co=None):
        dh, dc_next = d_state
        dm = dh @ W_hr if self.proj_size else dh  # h = m W_hr^T
        H = dm.shape[-1]
        dc = dc_next + dm * derivatives.m_to_c
        if self.peephole:  # o sees c_t
            dc = dc + dm * derivatives.gates[..., 3 * H :] * w_co
        dz = xp.concat([dc, dc, dc, dm], axis=-1) * derivatives.gates  # i, f, g from c; o from m
        dc_prev = dc * derivatives.f
        if self.peephole:  # i and f see c_{t-1}
            dc_prev = dc_prev + dz[..., :H] * w_ci + dz[..., H : 2 * H] * w_cf
        return dz, None, (None, dc_prev)

    def cell_params_grads(self, d_xw, d_h, states_prev, states, tape, step_terms=None, *, xp, **params):
        grads, H = {}, d_xw.shape[-1] // 4
        if self.proj_size:
            grads["W_hr"] = xp.tensordot(d_h, self.unprojected(tape), axes=([0, 1], [0, 1]))
        if self.peephole:
            c_prev, c = states_prev[1], states[1]
            grads["w_ci"] = xp.sum(d_xw[..., :H] * c_prev, axis=(0, 1))
            grads["w_cf"] = xp.sum(d_xw[..., H : 2 * H] * c_prev, axis=(0, 1))
            grads["w_co"] = xp.sum(d_xw[..., 3 * H :] * c, axis=(0, 1))
        return grads


@dataclass(frozen=True)
class GRUCell(Cell):
    r"""Gated recurrent unit (PyTorch's equations, gate order r, z, n).

    .. math::

        r &= \sigma(x_r + h_{t-1} W_{hr}^T + b_{hr}) \\
        z &= \sigma(x_z + h_{t-1} W_{hz}^T + b_{hz}) \\
        n &= \tanh(x_n + r \odot (h_{t-1} W_{hn}^T + b_{hn})) \\
        h_t &= (1 - z) \odot n + z \odot h_{t-1}

    where :math:`x_\cdot` are the slices of :math:`x_t W_{ih}^T + b_{ih}`.
    :math:`b_{hn}` sits inside the reset gate, so the recurrent bias is added
    in the step. The tape of a step is a :class:`GRUTape`
    ``(r, z, n, h_{t-1} W_{hn}^T + b_{hn})``. :meth:`step` receives ``xw``,
    ``W_hh`` and ``b_hh`` with the r and z rows halved (``halved_gates``).

    With ``reset_after=False``, the form of Cho et al. (2014) and Keras's
    ``GRU(reset_after=False)``, the reset gate scales the state before the
    recurrent product:

    .. math::

        n = \tanh(x_n + (r \odot h_{t-1}) W_{hn}^T + b_{hn})

    so :math:`b_{hn}` joins the hoisted projection, the tape's ``hw_n`` is
    :math:`(r \odot h_{t-1}) W_{hn}^T`, and the step's backward applies
    ``W_hh`` itself (r's gradient needs :math:`dn\, W_{hn}`).

    Parameters
    ----------
    reset_after : bool, default True
    """

    reset_after: bool = True
    mode: ClassVar[str] = "gru"
    gates: ClassVar[tuple] = ("r", "z", "n")
    n_gates: ClassVar[int] = 3
    halved_gates: ClassVar[tuple] = (0, 1)
    tape_type: ClassVar[type] = GRUTape
    fast_kernel: ClassVar[str | None] = "gru"

    def __post_init__(self):
        check_bool("reset_after", self.reset_after)

    @property
    def recurrent_bias_inside(self):  # type: ignore[override]
        return self.reset_after

    @property
    def applies_W_hh(self):  # type: ignore[override]
        return not self.reset_after

    @property
    def takes_h_mask(self):  # type: ignore[override]
        """Only with ``reset_after``: otherwise r's gradient would need the dropped state too."""
        return self.reset_after

    def step(self, xw, state, W_hh, b_hh, *, xp, h_mask=None):
        (h_prev,) = state
        H = h_prev.shape[-1]
        if not self.reset_after:
            W_hrz, W_hn = W_hh[: 2 * H, ...], W_hh[2 * H :, ...]
            rz = 0.5 * xp.tanh(xw[..., : 2 * H] + h_prev @ xp.matrix_transpose(W_hrz)) + 0.5
            r, z = rz[..., :H], rz[..., H:]
            hw_n = (r * h_prev) @ xp.matrix_transpose(W_hn)
            n = xp.tanh(xw[..., 2 * H :] + hw_n)
            return (n + z * (h_prev - n),), GRUTape(r, z, n, hw_n)
        hw = _dropped(h_prev, h_mask) @ xp.matrix_transpose(W_hh)
        if b_hh is not None:
            hw = hw + b_hh
        rz = 0.5 * xp.tanh(xw[..., : 2 * H] + hw[..., : 2 * H]) + 0.5  # halved rows: sigmoid
        r, z = rz[..., :H], rz[..., H:]
        hw_n = hw[..., 2 * H :]
        n = xp.tanh(xw[..., 2 * H :] + r * hw_n)
        h = n + z * (h_prev - n)  # = (1 - z) n + z h_prev
        return (h,), GRUTape(r, z, n, hw_n)

    def step_derivatives(self, state, state_prev, tape, *, xp):
        r"""The :class:`GRUDerivatives` of steps (any leading axes).

        Through :math:`h = (1-z) n + z h_{t-1}` and
        :math:`n = \tanh(x_n + r\, hw_n)`: the n pre-activation gets
        :math:`(1-z)(1-n^2)`, z's :math:`(h_{t-1} - n)\, z(1-z)`, r's the
        n factor times :math:`hw_n\, r(1-r)`; the recurrent side of n is
        scaled by r.
        """
        (h_prev,) = state_prev
        r, z, n, hw_n = tape
        through_n = (1 - z) * (1 - n * n)
        through_z = (h_prev - n) * (z * (1 - z))
        if not self.reset_after:
            return ResetBeforeDerivatives(through_n, through_z, h_prev * (r * (1 - r)), r, z)
        through_r = through_n * (hw_n * (r * (1 - r)))
        return GRUDerivatives(
            xp.concat([through_r, through_z, through_n], axis=-1),
            xp.concat([through_r, through_z, through_n * r], axis=-1),
            z,
        )

    def step_backward(self, d_state, derivatives, *, xp, W_hh=None):
        (dh,) = d_state
        if not self.reset_after:  # d(r h_prev) = dn W_hn feeds r and h_prev
            H = dh.shape[-1]
            d = derivatives
            dn, dz = dh * d.through_n, dh * d.through_z
            d_rh = dn @ W_hh[2 * H :, ...]
            dr = d_rh * d.through_r
            d_h_prev = dh * d.z + xp.concat([dr, dz], axis=-1) @ W_hh[: 2 * H, ...] + d_rh * d.r
            return xp.concat([dr, dz, dn], axis=-1), None, (d_h_prev,)
        dh3 = xp.concat([dh, dh, dh], axis=-1)
        return dh3 * derivatives.input_side, dh3 * derivatives.hidden_side, (dh * derivatives.z,)

    def weight_hh_grad(self, d_hw, h_prev, tape, *, xp):
        """With ``reset_after=False`` the n rows of ``W_hh`` multiply :math:`r \\odot h_{t-1}`."""
        if self.reset_after:
            return super().weight_hh_grad(d_hw, h_prev, tape, xp=xp)
        H, steps_and_batch = h_prev.shape[-1], ([0, 1], [0, 1])
        return xp.concat([xp.tensordot(d_hw[..., : 2 * H], h_prev, axes=steps_and_batch),
                          xp.tensordot(d_hw[..., 2 * H :], tape.r * h_prev, axes=steps_and_batch)], axis=0)


def _dropped(h_prev, h_mask):
    """:math:`h_{t-1}` as the recurrent product reads it: times recurrent dropout's factor, if any."""
    return h_prev if h_mask is None else h_prev * h_mask


#: Every cell class by its ``mode``: the one table of cells (a new cell is added here).
# type[Any]: each class's constructor takes its own arguments (cell_for passes them).
CELLS: dict[str, type[Any]] = {cls.mode: cls for cls in (RNNCell, LSTMCell, GRUCell)}


def cell_for(mode: str, nonlinearity: str = "tanh", proj_size: int = 0, reset_after: bool = True,
             peephole: bool = False):
    """The cell for ``mode`` (a key of :data:`CELLS`), with the RNN's ``nonlinearity``, the LSTM's
    ``proj_size`` and ``peephole`` or the GRU's ``reset_after``."""
    if mode not in CELLS:
        raise ValueError(f"mode must be one of {list(CELLS)}, got {mode!r}")
    options = {"rnn": (nonlinearity,), "lstm": (proj_size, peephole), "gru": (reset_after,)}
    return CELLS[mode](*(options[mode] if mode in options else ()))
