"""Inputs that NumPy accepts but the library cannot compute with honestly get a clear TypeError."""

from __future__ import annotations

import numpy as np
import pytest

from portable_rnn import GRU, LSTM, losses


def _layer():
    spec = GRU(2, 3)
    x = np.zeros((4, 2, 2))
    return spec, spec.init(like=x), x


def test_a_parameter_given_as_a_list_is_named():
    spec, params, x = _layer()
    params["weight_hh_l0"] = params["weight_hh_l0"].tolist()
    with pytest.raises(TypeError, match=r"params\['weight_hh_l0'\] must be an array .* got list"):
        spec.forward(params, x)


def test_big_endian_input_is_refused_with_its_byte_order():
    spec, params, x = _layer()
    with pytest.raises(TypeError, match=r"x has dtype >f8, a non-native byte order; convert it"):
        spec.forward(params, x.astype(">f8"))
    params["bias_ih_l0"] = params["bias_ih_l0"].astype(">f8")
    with pytest.raises(TypeError, match=r"params\['bias_ih_l0'\] has dtype >f8"):
        spec.forward(params, x)


def test_masked_arrays_are_refused_not_silently_unmasked():
    spec, params, x = _layer()
    with pytest.raises(TypeError, match="x is a NumPy masked array"):
        spec.forward(params, np.ma.masked_array(x, mask=x < 0))
    logits, targets = np.zeros((2, 3, 4)), np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(TypeError, match="logits is a NumPy masked array"):
        losses.softmax_cross_entropy(np.ma.masked_array(logits), targets)


def test_non_finite_values_at_valid_steps_propagate_as_in_ieee_arithmetic():
    """The documented policy: no check on the hot path (it would cost a host sync per call)."""
    spec = LSTM(2, 3)
    x = np.zeros((4, 2, 2))
    x[1, 0, 0] = np.nan
    params = spec.init(like=x)
    out, (h, c), tape = spec.forward(params, x)
    assert np.isnan(out[1:, 0]).all() and np.isfinite(out[:, 1]).all()
    grads, dx, _ = spec.backward(params, tape, np.ones_like(out))
    assert all(np.isnan(g).any() for g in grads.values())
