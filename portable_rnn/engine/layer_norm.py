r"""Layer-normalised LSTM and GRU cells (Ba, Kiros & Hinton 2016), with their hand-written backward.

Layer normalisation rescales a vector of features to zero mean and unit
variance, then applies a learned gain and bias, per step and per sequence:

.. math::

    \mathrm{LN}(a;\, \gamma, \beta) = \gamma \odot \hat a + \beta, \qquad
    \hat a = (a - \mu) \cdot \rho, \quad
    \mu = \overline{a}, \quad \rho = \big(\overline{(a - \mu)^2} + \epsilon\big)^{-1/2}

with the means over the feature axis and :math:`\epsilon =` :data:`EPS`
(``torch.nn.LayerNorm``'s default). The input and recurrent parts of the gate
pre-activations are normalised separately, each over all G*H gate features,
and the LSTM also normalises its cell state before the output ``tanh``.
``bias_ih`` and ``bias_hh`` enter before the normalisation (a per-feature
shift of what is normalised), so the gate biases after it are the
normalisations' own; this keeps the engine's bias gradients, and the layers'
parameter names, those of the plain cells.

The backward of a normalisation is
:math:`da = \rho\,\big(d\hat a - \overline{d\hat a} - \hat a\, \overline{d\hat a \odot \hat a}\big)`
with :math:`d\hat a = \gamma \odot dy`: two means over the features, so it
runs in the step's backward, while the elementwise factors of the gates are
the step's local derivatives as in the plain cells. The gradients of the
gains and biases are sums over steps and batch of ``dy * \hat a`` and
``dy``; each step's backward hands the engine its ``dy`` for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from .cells import Cell, _dropped

__all__ = ["EPS", "LayerNormLSTMCell", "LayerNormGRUCell", "LayerNormLSTMTape", "LayerNormGRUTape",
           "LAYER_NORM_CELLS"]

#: The variance offset :math:`\epsilon` of every normalisation (``torch.nn.LayerNorm``'s default).
EPS = 1e-5


def _mean(a, xp):
    """The mean over the last axis, kept: a sum times 1/F (NumPy's ``mean`` costs a Python call more per step)."""
    return xp.sum(a, axis=-1, keepdims=True) * (1.0 / a.shape[-1])


def _normalise(a, xp):
    r"""``(a_hat, rho)``: :math:`(a - \mu)\rho` (..., F) and :math:`\rho` (..., 1) over the last axis."""
    centred = a - _mean(a, xp)
    rho = 1 / xp.sqrt(_mean(centred * centred, xp) + EPS)
    return centred * rho, rho


def _normalised_parts(xw, h_prev, W_hh, b_hh, h_mask, xp):
    r"""The normalised input and recurrent pre-activations, each ``(a_hat, rho)`` of :func:`_normalise`.

    ``xw`` is :math:`x_t W_{ih}^T + b_{ih}`; the recurrent part is
    :math:`h_{t-1} W_{hh}^T + b_{hh}`, with recurrent dropout's factor on :math:`h_{t-1}`.
    """
    hw = _dropped(h_prev, h_mask) @ xp.matrix_transpose(W_hh)
    if b_hh is not None:
        hw = hw + b_hh
    return _normalise(xw, xp), _normalise(hw, xp)


def _normalise_backward(d_hat, a_hat, rho, xp):
    r"""The gradient of the normalised input :math:`a` from that of :math:`\hat a` (..., F)."""
    return rho * (d_hat - _mean(d_hat, xp) - a_hat * _mean(d_hat * a_hat, xp))


def _gain_and_bias_grads(d_y, a_hat, xp) -> tuple:
    r"""``(d_gain, d_bias)``: :math:`\sum d_y \odot \hat a` and :math:`\sum d_y` over steps and batch."""
    return xp.sum(d_y * a_hat, axis=(0, 1)), xp.sum(d_y, axis=(0, 1))


def _gate_norm_params(n_features: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The gains and biases of the input and recurrent normalisations, ``{keyword: (name stem, shape)}``."""
    return {f"{kind}_{part}": (f"{'weight' if kind == 'gain' else 'bias'}_ln_{part}", (n_features,))
            for part in ("ih", "hh") for kind in ("gain", "bias")}


def _sigmoid(z, xp):
    """:math:`\\sigma(z) = \\tfrac12 \\tanh(z/2) + \\tfrac12`: never overflows, exact to an ulp of 1."""
    return 0.5 * xp.tanh(0.5 * z) + 0.5


class LayerNormLSTMTape(NamedTuple):
    """What a layer-normalised LSTM step keeps: gates, :math:`\\tanh(\\hat c)` and the normalisations.

    ``i, f, g, o, tanh_c`` (..., H) as :class:`~portable_rnn.engine.cells.LSTMTape`
    (with :math:`\\tanh` of the normalised cell state); ``x_hat, h_hat`` (..., 4H)
    the normalised input and recurrent pre-activations and ``c_hat`` (..., H)
    the normalised cell state, with their ``rho_*`` (..., 1).
    """

    i: object
    f: object
    g: object
    o: object
    tanh_c: object
    x_hat: object
    rho_x: object
    h_hat: object
    rho_h: object
    c_hat: object
    rho_c: object


class LayerNormGRUTape(NamedTuple):
    """What a layer-normalised GRU step keeps: gates r, z, n and :math:`y_{hn}` (..., H), and the normalisations.

    ``y_hn`` is the recurrent n block after its normalisation, which r scales;
    ``x_hat, h_hat`` (..., 3H) are the normalised input and recurrent
    pre-activations with their ``rho_*`` (..., 1).
    """

    r: object
    z: object
    n: object
    y_hn: object
    x_hat: object
    rho_x: object
    h_hat: object
    rho_h: object


@dataclass(frozen=True)
class LayerNormLSTMCell(Cell):
    r"""Layer-normalised LSTM (Ba, Kiros & Hinton 2016), gate order i, f, g, o.

    .. math::

        z &= \mathrm{LN}(x_t W_{ih}^T + b_{ih};\, \gamma_{ih}, \beta_{ih})
           + \mathrm{LN}(h_{t-1} W_{hh}^T + b_{hh};\, \gamma_{hh}, \beta_{hh})
           = [z_i, z_f, z_g, z_o] \\
        c_t &= \sigma(z_f) \odot c_{t-1} + \sigma(z_i) \odot \tanh(z_g) \\
        h_t &= \sigma(z_o) \odot \tanh(\mathrm{LN}(c_t;\, \gamma_c, \beta_c))

    The state c is carried unnormalised. Its own parameters
    (:meth:`cell_params`) are the gains ``weight_ln_ih``, ``weight_ln_hh``
    (4H,) and ``weight_ln_c`` (H,), starting at 1, and the biases
    ``bias_ln_ih``, ``bias_ln_hh`` (4H,) and ``bias_ln_c`` (H,), starting at 0.
    """

    mode: ClassVar[str] = "lstm"
    gates: ClassVar[tuple] = ("i", "f", "g", "o")
    states: ClassVar[tuple] = ("h", "c")
    n_gates: ClassVar[int] = 4
    n_states: ClassVar[int] = 2
    recurrent_bias_inside: ClassVar[bool] = True  # b_hh is normalised with h W_hh^T, in the step
    tape_type: ClassVar[type] = LayerNormLSTMTape
    fixed_init: ClassVar[dict] = {"weight_ln_ih": 1.0, "weight_ln_hh": 1.0, "weight_ln_c": 1.0,
                                  "bias_ln_ih": 0.0, "bias_ln_hh": 0.0, "bias_ln_c": 0.0}
    takes_h_mask: ClassVar[bool] = True

    def cell_params(self, hidden_size):
        return {**_gate_norm_params(4 * hidden_size),
                "gain_c": ("weight_ln_c", (hidden_size,)), "bias_c": ("bias_ln_c", (hidden_size,))}

    def step(self, xw, state, W_hh, b_hh, *, xp, gain_ih=None, bias_ih=None, gain_hh=None, bias_hh=None,
             gain_c=None, bias_c=None, h_mask=None):
        h_prev, c_prev = state
        H = c_prev.shape[-1]
        (x_hat, rho_x), (h_hat, rho_h) = _normalised_parts(xw, h_prev, W_hh, b_hh, h_mask, xp)
        z = gain_ih * x_hat + bias_ih + gain_hh * h_hat + bias_hh
        s = _sigmoid(z, xp)  # the g block is unused
        i, f, o = s[..., :H], s[..., H : 2 * H], s[..., 3 * H :]
        g = xp.tanh(z[..., 2 * H : 3 * H])
        c = f * c_prev + i * g
        c_hat, rho_c = _normalise(c, xp)
        tanh_c = xp.tanh(gain_c * c_hat + bias_c)
        return (o * tanh_c, c), LayerNormLSTMTape(i, f, g, o, tanh_c, x_hat, rho_x, h_hat, rho_h, c_hat, rho_c)

    def step_derivatives(self, state, state_prev, tape, *, xp):
        r"""``(gates, tape)``: the gate factors of :class:`~portable_rnn.engine.cells.LSTMDerivatives`, and the tape.

        ``gates`` (..., 4H) is :math:`[g\,\sigma'(z_i),\ c_{t-1}\sigma'(z_f),\ i\tanh'(z_g),\ \tanh(\hat c)\,\sigma'(z_o)]`.
        """
        _, c_prev = state_prev
        i, f, g, o, tanh_c = tape[:5]
        gates = xp.concat(
            [g * (i * (1 - i)), c_prev * (f * (1 - f)), i * (1 - g * g), tanh_c * (o * (1 - o))], axis=-1
        )
        return gates, tape

    def step_backward(self, d_state, derivatives, *, xp, gain_ih=None, bias_ih=None, gain_hh=None, bias_hh=None,
                      gain_c=None, bias_c=None):
        """``(d_xw, d_hw, (None, dc_prev), (dz, dy_c))``: the last pair feeds :meth:`cell_params_grads`."""
        dh, dc_next = d_state
        gates, tape = derivatives
        dy_c = dh * tape.o * (1 - tape.tanh_c * tape.tanh_c)  # through h = o tanh(y_c)
        dc = dc_next + _normalise_backward(dy_c * gain_c, tape.c_hat, tape.rho_c, xp)
        dz = xp.concat([dc, dc, dc, dh], axis=-1) * gates
        d_xw = _normalise_backward(dz * gain_ih, tape.x_hat, tape.rho_x, xp)
        d_hw = _normalise_backward(dz * gain_hh, tape.h_hat, tape.rho_h, xp)
        return d_xw, d_hw, (None, dc * tape.f), (dz, dy_c)

    def cell_params_grads(self, d_xw, d_h, states_prev, states, tape, step_terms=None, *, xp, **params):
        dz, dy_c = step_terms
        grads = {}
        for part, a_hat in (("ih", tape.x_hat), ("hh", tape.h_hat)):
            grads[f"gain_{part}"], grads[f"bias_{part}"] = _gain_and_bias_grads(dz, a_hat, xp)
        grads["gain_c"], grads["bias_c"] = _gain_and_bias_grads(dy_c, tape.c_hat, xp)
        return grads


@dataclass(frozen=True)
class LayerNormGRUCell(Cell):
    r"""Layer-normalised GRU (Ba, Kiros & Hinton 2016 on PyTorch's GRU), gate order r, z, n.

    .. math::

        y^x &= \mathrm{LN}(x_t W_{ih}^T + b_{ih};\, \gamma_{ih}, \beta_{ih}), \qquad
        y^h = \mathrm{LN}(h_{t-1} W_{hh}^T + b_{hh};\, \gamma_{hh}, \beta_{hh}) \\
        r &= \sigma(y^x_r + y^h_r), \quad z = \sigma(y^x_z + y^h_z), \quad
        n = \tanh(y^x_n + r \odot y^h_n) \\
        h_t &= (1 - z) \odot n + z \odot h_{t-1}

    Its own parameters (:meth:`cell_params`) are the gains ``weight_ln_ih``,
    ``weight_ln_hh`` (3H,), starting at 1, and the biases ``bias_ln_ih``,
    ``bias_ln_hh`` (3H,), starting at 0.
    """

    mode: ClassVar[str] = "gru"
    gates: ClassVar[tuple] = ("r", "z", "n")
    n_gates: ClassVar[int] = 3
    recurrent_bias_inside: ClassVar[bool] = True
    tape_type: ClassVar[type] = LayerNormGRUTape
    fixed_init: ClassVar[dict] = {"weight_ln_ih": 1.0, "weight_ln_hh": 1.0, "bias_ln_ih": 0.0, "bias_ln_hh": 0.0}
    takes_h_mask: ClassVar[bool] = True

    def cell_params(self, hidden_size):
        return _gate_norm_params(3 * hidden_size)

    def step(self, xw, state, W_hh, b_hh, *, xp, gain_ih=None, bias_ih=None, gain_hh=None, bias_hh=None,
             h_mask=None):
        (h_prev,) = state
        H = h_prev.shape[-1]
        (x_hat, rho_x), (h_hat, rho_h) = _normalised_parts(xw, h_prev, W_hh, b_hh, h_mask, xp)
        y_x, y_h = gain_ih * x_hat + bias_ih, gain_hh * h_hat + bias_hh
        rz = _sigmoid(y_x[..., : 2 * H] + y_h[..., : 2 * H], xp)
        r, z = rz[..., :H], rz[..., H:]
        y_hn = y_h[..., 2 * H :]
        n = xp.tanh(y_x[..., 2 * H :] + r * y_hn)
        return (n + z * (h_prev - n),), LayerNormGRUTape(r, z, n, y_hn, x_hat, rho_x, h_hat, rho_h)

    def step_derivatives(self, state, state_prev, tape, *, xp):
        r"""``(through_r, through_z, through_n, tape)``: the factors of dh in each gate's pre-activation (..., H)."""
        (h_prev,) = state_prev
        r, z, n, y_hn = tape[:4]
        through_n = (1 - z) * (1 - n * n)
        return through_n * (y_hn * (r * (1 - r))), (h_prev - n) * (z * (1 - z)), through_n, tape

    def step_backward(self, d_state, derivatives, *, xp, gain_ih=None, bias_ih=None, gain_hh=None, bias_hh=None):
        """``(d_xw, d_hw, (dh z,), (dy_x, dy_h))``: the last pair feeds :meth:`cell_params_grads`."""
        (dh,) = d_state
        through_r, through_z, through_n, tape = derivatives
        dr, dz, dn = dh * through_r, dh * through_z, dh * through_n
        dy_x = xp.concat([dr, dz, dn], axis=-1)
        dy_h = xp.concat([dr, dz, dn * tape.r], axis=-1)
        d_xw = _normalise_backward(dy_x * gain_ih, tape.x_hat, tape.rho_x, xp)
        d_hw = _normalise_backward(dy_h * gain_hh, tape.h_hat, tape.rho_h, xp)
        return d_xw, d_hw, (dh * tape.z,), (dy_x, dy_h)

    def cell_params_grads(self, d_xw, d_h, states_prev, states, tape, step_terms=None, *, xp, **params):
        dy_x, dy_h = step_terms
        grads = {}
        grads["gain_ih"], grads["bias_ih"] = _gain_and_bias_grads(dy_x, tape.x_hat, xp)
        grads["gain_hh"], grads["bias_hh"] = _gain_and_bias_grads(dy_h, tape.h_hat, xp)
        return grads


#: The layer-normalised cell of each built-in mode that has one.
LAYER_NORM_CELLS = {cls.mode: cls for cls in (LayerNormLSTMCell, LayerNormGRUCell)}
